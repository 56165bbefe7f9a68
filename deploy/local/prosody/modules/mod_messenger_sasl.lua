-- mod_messenger_sasl: OAuth 2.0 SASL mechanisms for the messenger-bridge test stack.
--
-- Prosody 0.12 ships only PLAIN, SCRAM-SHA-1, ANONYMOUS and EXTERNAL (util/sasl/). This module
-- adds three token mechanisms, each validated against the stack's OAuth 2.0 provider with
-- RFC 7662 token introspection (asynchronous net.http, so the server is never blocked):
--
--   X-MESSENGER-OAUTH2  The retired Messenger XMPP interface's mechanism. The <auth/> element's
--                       text is the access token AS IS: it is not base64 of the token (RFC 6120
--                       §6.4.2 would say it must be). mod_saslauth base64-decodes every <auth/>
--                       and <response/> text before the mechanism sees it, so for this mechanism
--                       we re-encode the text just before mod_saslauth decodes it (hooks at
--                       priority +10, before mod_saslauth's at 0): the mechanism then gets the
--                       exact token. One step: <auth/> -> <success/> or <failure/>.
--                       The identity is taken from the token (introspection "sub" -> localpart);
--                       the JID the client offered is ignored, and the client learns its JID
--                       from resource binding (RFC 6120 §7). The token must carry the scope in
--                       `messenger_oauth_required_scope` (default "wl.messenger").
--   OAUTHBEARER         RFC 7628 §3.1: gs2-header "n,a=<authzid>," (authzid optional) followed
--                       by kvpairs separated by %x01, one of them "auth=Bearer <token>", ended
--                       by %x01%x01. On a bad token we follow §3.2.2: a challenge carrying the
--                       JSON error status, the client answers %x01, then <failure/>.
--   X-OAUTH2            Google Talk / ejabberd style: PLAIN-shaped "[authzid]\0user\0token".
--
-- For OAUTHBEARER (with authzid) and X-OAUTH2 the offered user must equal the token's subject.
-- Every mechanism requires that the account exists on the virtual host (accounts are seeded).
--
-- Which mechanisms a host offers is per-host config `messenger_sasl_mechanisms`; PLAIN/SCRAM are
-- removed on a host by listing them in mod_saslauth's `disable_sasl_mechanisms` (mod_saslauth
-- then refuses them with <invalid-mechanism/>, and we leave them out of the feature list).
-- Mechanisms are offered only on encrypted streams (c2s_require_encryption, RFC 6120 §5.3.1).
--
-- The auth provider stays internal_hashed: we only add a backend and mechanisms to the SASL
-- handler that mod_saslauth obtained from it, so password logins keep working where enabled.

local st = require "util.stanza";
local set = require "util.set";
local json = require "util.json";
local http = require "net.http";
local async = require "util.async";
local base64 = require "util.encodings".base64;
local nodeprep = require "util.encodings".stringprep.nodeprep;
local jid_split = require "util.jid".split;
local usermanager = require "core.usermanager";
local sasl = require "util.sasl";

local xmlns_sasl = "urn:ietf:params:xml:ns:xmpp-sasl";
local BACKEND = "messenger_oauth_token";

local host = module.host;
local offered = module:get_option_set("messenger_sasl_mechanisms", {});
local disabled = module:get_option_set("disable_sasl_mechanisms", { "DIGEST-MD5" });
local required_scope = module:get_option_string("messenger_oauth_required_scope", nil);
local introspection_url = module:get_option_string("oauth_introspection_url");
local client_id = module:get_option_string("oauth_introspection_client_id");
local client_secret = module:get_option_string("oauth_introspection_client_secret");
local http_timeout = module:get_option_number("oauth_introspection_timeout", 5);

assert(introspection_url, "oauth_introspection_url is required");

-- util.sasl keeps a process-wide registry; register each mechanism once per process.
-- The mechanism functions get the SASL handler as `self` and call self.profile[BACKEND].
local function url_encode(s)
	return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()); end));
end

-- RFC 7662 §2: POST token=...&token_type_hint=access_token, client authenticated with HTTP Basic.
-- Returns the introspection JSON object of an active token, or nil, reason.
local function introspect(token)
	if not token or token == "" then return nil, "empty token"; end
	local body = "token=" .. url_encode(token) .. "&token_type_hint=access_token";
	local ok, response = pcall(async.wait_for, http.request(introspection_url, {
		method = "POST";
		body = body;
		headers = {
			["Content-Type"] = "application/x-www-form-urlencoded";
			["Accept"] = "application/json";
			["Authorization"] = "Basic " .. base64.encode(client_id .. ":" .. client_secret);
		};
	}));
	if not ok or not response then
		module:log("warn", "Token introspection failed: %s", tostring(response));
		return nil, "OAuth provider unreachable";
	end
	if response.code ~= 200 then
		module:log("warn", "Token introspection answered HTTP %s: %s", tostring(response.code), tostring(response.body));
		return nil, "OAuth provider error";
	end
	local info = json.decode(response.body or "");
	if type(info) ~= "table" or info.active ~= true then
		return nil, "Invalid or expired access token";
	end
	-- A refresh token is not an access token: oidc-provider reports token_type "Bearer" only
	-- for access tokens (refresh tokens come back active, without token_type).
	if info.token_type ~= "Bearer" then
		return nil, "Not an access token";
	end
	return info;
end

local function has_scope(info, scope)
	for s in (info.scope or ""):gmatch("%S+") do
		if s == scope then return true; end
	end
	return false;
end

-- Validate `token`, optionally for the user `claimed` (a localpart or a bare JID on this host).
-- Returns the username (localpart) or nil, reason.
local function authorize(token, claimed)
	local info, err = introspect(token);
	if not info then return nil, err; end
	if required_scope and not has_scope(info, required_scope) then
		return nil, "Token lacks the " .. required_scope .. " scope";
	end
	local username = info.sub and nodeprep(tostring(info.sub):lower());
	if not username then return nil, "Token has no usable subject"; end
	if claimed and claimed ~= "" then
		local node, claimed_host = jid_split(claimed);
		if not node then node, claimed_host = claimed, nil; end
		if (claimed_host and claimed_host ~= host) or nodeprep(node:lower()) ~= username then
			return nil, "Token does not belong to " .. claimed;
		end
	end
	if not usermanager.user_exists(username, host) then
		return nil, "No such account on " .. host;
	end
	return username;
end

-- Backend function stored in the handler's profile; each host binds its own.
local function backend(_, token, claimed)
	return authorize(token, claimed);
end

local function finish(self, username, err)
	if not username then
		return "failure", "not-authorized", err;
	end
	self.username = username;
	return "success";
end

local function x_messenger_oauth2(self, message)
	-- Real Messenger clients always sent the token with <auth/>; tolerate an empty initial
	-- response by asking for it with an empty challenge (RFC 6120 §6.4.3).
	if message == nil then return "challenge", ""; end
	return finish(self, self.profile[BACKEND](self, message, nil));
end

local function oauthbearer(self, message)
	if self.oauthbearer_failed then
		-- RFC 7628 §3.2.3: after the error challenge the client sends %x01; then we fail.
		return "failure", "not-authorized", self.oauthbearer_failed;
	end
	if message == nil then return "challenge", ""; end
	local gs2, rest = message:match("^([^,]*,[^,]*),(.*)$");
	if not gs2 then return "failure", "malformed-request", "Bad GS2 header"; end
	local cb, authzid = gs2:match("^([^,]*),(.*)$");
	if cb:sub(1, 1) == "p" then return "failure", "malformed-request", "Channel binding not supported"; end
	if authzid ~= "" then
		authzid = authzid:match("^a=(.+)$");
		if not authzid then return "failure", "malformed-request", "Bad authzid"; end
		authzid = authzid:gsub("=2C", ","):gsub("=3D", "=");
	else
		authzid = nil;
	end
	local token;
	for kv in rest:gmatch("([^\1]+)") do
		local k, v = kv:match("^([^=]+)=(.*)$");
		if k == "auth" then
			token = v:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +(.+)$");
		end
	end
	if not token then return "failure", "malformed-request", "No bearer token"; end
	local username, err = self.profile[BACKEND](self, token, authzid);
	if not username then
		self.oauthbearer_failed = err;
		local scope = required_scope or "";
		return "challenge", json.encode({ status = "invalid_token", scope = scope });
	end
	return finish(self, username);
end

local function x_oauth2(self, message)
	if message == nil then return "challenge", ""; end
	local _, user, token = message:match("^([^%z]*)%z([^%z]+)%z(.+)$");
	if not user then return "failure", "malformed-request", "Expected [authzid]\\0user\\0token"; end
	return finish(self, self.profile[BACKEND](self, token, user));
end

local mechanisms = {
	["X-MESSENGER-OAUTH2"] = x_messenger_oauth2;
	["OAUTHBEARER"] = oauthbearer;
	["X-OAUTH2"] = x_oauth2;
};

-- registerMechanism is process-wide; guard against double registration when several hosts
-- load this module (re-registering would list the mechanism twice for the backend).
prosody.messenger_sasl_registered = prosody.messenger_sasl_registered or {};
for name, f in pairs(mechanisms) do
	if not prosody.messenger_sasl_registered[name] then
		sasl.registerMechanism(name, { BACKEND }, f);
		prosody.messenger_sasl_registered[name] = true;
	end
end

-- Add this host's token mechanisms to a SASL handler built by the auth provider and drop the
-- disabled ones. `mechs` is the profile's cached mechanism table, shared by clean_clone()s.
local function augment(handler)
	if handler.profile[BACKEND] then return handler; end
	handler.profile[BACKEND] = backend;
	for name in offered do handler.mechs[name] = true; end
	for name in disabled do handler.mechs[name] = nil; end
	return handler;
end

-- Runs after mod_saslauth (priority 0) built the handler and the <mechanisms/> element.
module:hook("stream-features", function(event)
	local origin, features = event.origin, event.features;
	if origin.username or not origin.secure or not origin.sasl_handler then return; end
	augment(origin.sasl_handler);
	features:remove_children("mechanisms", xmlns_sasl);
	local list = st.stanza("mechanisms", { xmlns = xmlns_sasl });
	local names = {};
	for name in pairs(origin.sasl_handler:mechanisms()) do names[#names + 1] = name; end
	table.sort(names);
	for _, name in ipairs(names) do list:text_tag("mechanism", name); end
	if #names > 0 then features:add_child(list); end
end, -10);

local function ensure_handler(session)
	if not session.sasl_handler or session.sasl_handler.selected then
		session.sasl_handler = usermanager.get_sasl_handler(host, session);
	end
	augment(session.sasl_handler);
end

-- Runs before mod_saslauth: make sure the handler knows our mechanisms, and turn a raw
-- X-MESSENGER-OAUTH2 token into the base64 that mod_saslauth insists on decoding.
local function reencode_raw(stanza)
	local text = stanza[1];
	if type(text) == "string" and text ~= "" and text ~= "=" then
		stanza[1] = base64.encode(text);
	end
end

module:hook("stanza/" .. xmlns_sasl .. ":auth", function(event)
	local session, stanza = event.origin, event.stanza;
	if session.type ~= "c2s_unauthed" then return; end
	local mechanism = stanza.attr.mechanism;
	if not offered:contains(mechanism) then return; end
	ensure_handler(session);
	if mechanism == "X-MESSENGER-OAUTH2" then reencode_raw(stanza); end
end, 10);

module:hook("stanza/" .. xmlns_sasl .. ":response", function(event)
	local session, stanza = event.origin, event.stanza;
	local handler = session.sasl_handler;
	if session.type ~= "c2s_unauthed" or not handler then return; end
	if handler.selected == "X-MESSENGER-OAUTH2" then reencode_raw(stanza); end
end, 10);

module:log("info", "Token SASL mechanisms on %s: %s", host, tostring(offered));
