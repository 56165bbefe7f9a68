-- mod_see_other_host: a listener that redirects every client to another host[:port].
--
-- Messenger's XMPP front ends answered some connections with the stream error <see-other-host/>
-- (RFC 6120 §4.9.3.19): the client must reconnect to the given host[:port] from plain TCP,
-- keeping the same `to` domain and TLS policy. Prosody never sends it, so clients could not
-- test their redirect handling against a real server. This global module opens its own port
-- (`see_other_host_ports`, default 5223; interfaces from the global `interfaces` option) and
-- for every connection:
--   1. waits for the client's stream header (RFC 6120 §4.2),
--   2. answers with a response stream header (from = the requested `to`, version 1.0),
--      immediately followed by
--        <stream:error><see-other-host xmlns="urn:ietf:params:xml:ns:xmpp-streams">
--          `see_other_host_target`</see-other-host></stream:error></stream:stream>
--      (RFC 6120 §4.9.1.3: the error is sent after the stream header, then the stream closes),
--   3. closes the TCP connection.
-- It never reads further or offers features, so it holds no state beyond one connection.

module:set_global();

local target = module:get_option_string("see_other_host_target", "127.0.0.1:5222");
local xml_escape = require "util.stanza".xml_escape;
local uuid = require "util.uuid".generate;

local listener = {};
local buffers = {};

local function respond(conn, header)
	local to = header:match("%sto%s*=%s*[\"']([^\"']*)[\"']") or "localhost";
	local ns = header:match("%sxmlns%s*=%s*[\"']([^\"']*)[\"']") or "jabber:client";
	conn:write(("<?xml version='1.0'?><stream:stream xmlns='%s' xmlns:stream='http://etherx.jabber.org/streams'"
		.. " from='%s' id='%s' version='1.0'>"):format(xml_escape(ns), xml_escape(to), uuid()));
	conn:write("<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>"
		.. xml_escape(target) .. "</see-other-host></stream:error></stream:stream>");
	module:log("debug", "Redirected a client for %s to %s", to, target);
	conn:close();
end

function listener.onconnect(conn)
	buffers[conn] = "";
end

function listener.onincoming(conn, data)
	local buf = (buffers[conn] or "") .. data;
	local header = buf:match("(<[%w:]*stream[^>]*>)");
	if header then
		buffers[conn] = nil;
		respond(conn, header);
	elseif #buf > 4096 then
		buffers[conn] = nil;
		conn:close();
	else
		buffers[conn] = buf;
	end
end

function listener.ondisconnect(conn)
	buffers[conn] = nil;
end

module:provides("net", {
	name = "see_other_host";
	listener = listener;
	default_port = 5223;
});
