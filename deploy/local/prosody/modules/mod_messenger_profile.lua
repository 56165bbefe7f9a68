-- mod_messenger_profile: the restrictions of the retired Messenger XMPP interface, enforced by
-- the server, so the bridge's "messenger" server profile is tested against the real behaviour.
-- Load it on the Messenger-profile virtual host only.
--
-- What Messenger's XMPP interface allowed (see DESIGN.md §2) and what this module does:
--
-- * Read-only roster (RFC 6121 §2). A roster set (<iq type="set"><query xmlns="jabber:iq:roster">)
--   is answered with <not-allowed/> (RFC 6120 §8.3.3.10), and so are the subscription
--   presences (subscribe, subscribed, unsubscribe, unsubscribed; RFC 6121 §3) that would change
--   a roster. Contacts are provisioned server-side (mod_messenger_seed).
-- * vCards are fetch only (XEP-0054 §3.1); a vCard update (iq set of vcard-temp) gets
--   <not-allowed/>.
-- * Only one-to-one chat: a <message/> whose type is not "chat" (normal, headline, groupchat,
--   or no type, which means normal: RFC 6121 §5.2.2) is bounced with <not-allowed/>. Error
--   messages are dropped, never bounced (RFC 6120 §8.3.1: no error in reply to an error).
--   Checked both for messages sent by this host's clients and for messages addressed to them.
-- * No presence probes (RFC 6121 §4.3): a probe sent by a client is silently ignored, so a
--   client cannot refresh a contact's presence on demand; it must keep the last presence it
--   saw. (The server's own probes at initial presence still run, so a client learns its
--   contacts' presence when it logs in, as it did with Messenger.)
--
-- The `pre-*` events fire for stanzas that come from this host's own c2s sessions, before
-- routing; `message/bare` and `message/full` fire for stanzas addressed to this host's users.

local st = require "util.stanza";

local xmlns_roster = "jabber:iq:roster";
local xmlns_vcard = "vcard-temp";

local function refuse_iq(event)
	local origin, stanza = event.origin, event.stanza;
	if stanza.attr.type ~= "set" then return; end
	local child = stanza.tags[1];
	if not child then return; end
	if child.attr.xmlns == xmlns_roster and child.name == "query" then
		origin.send(st.error_reply(stanza, "cancel", "not-allowed", "The roster is read-only on this service"));
		return true;
	elseif child.attr.xmlns == xmlns_vcard and child.name == "vCard" then
		origin.send(st.error_reply(stanza, "cancel", "not-allowed", "vCard updates are not supported on this service"));
		return true;
	end
end

module:hook("pre-iq/bare", refuse_iq, 100);
module:hook("pre-iq/host", refuse_iq, 100);
module:hook("pre-iq/full", refuse_iq, 100);

local function check_message(event)
	local origin, stanza = event.origin, event.stanza;
	local t = stanza.attr.type;
	if t == "chat" then return; end
	if t == "error" then return true; end -- never bounce an error
	if origin and origin.send then
		origin.send(st.error_reply(stanza, "cancel", "not-allowed", "Only type='chat' messages are supported on this service"));
	end
	return true;
end

module:hook("pre-message/bare", check_message, 100);
module:hook("pre-message/full", check_message, 100);
module:hook("pre-message/host", check_message, 100);
module:hook("message/bare", check_message, 100);
module:hook("message/full", check_message, 100);

local roster_changing = { subscribe = true, subscribed = true, unsubscribe = true, unsubscribed = true };

local function check_presence(event)
	local origin, stanza = event.origin, event.stanza;
	local t = stanza.attr.type;
	if t == "probe" then
		module:log("debug", "Ignoring presence probe from %s to %s", tostring(origin.full_jid), tostring(stanza.attr.to));
		return true;
	elseif roster_changing[t] then
		origin.send(st.error_reply(stanza, "cancel", "not-allowed", "The roster is read-only on this service"));
		return true;
	end
end

module:hook("pre-presence/bare", check_presence, 100);
module:hook("pre-presence/full", check_presence, 100);
module:hook("pre-presence/host", check_presence, 100);

-- Idle connections: the Messenger service dropped connections that were idle for one or two
-- minutes, so clients had to keep them alive (XEP-0199 pings or whitespace). Prosody fires
-- c2s-read-timeout when nothing was read for network_settings.read_timeout seconds; on this host
-- the session is closed instead of probed (mod_c2s's own handler runs at priority -1).
module:hook("c2s-read-timeout", function (event)
	local session = event.session;
	session.log("info", "Closing an idle connection (Messenger profile idle timeout)");
	session:close({ condition = "connection-timeout", text = "Idle connection closed" });
	return true;
end, 10);
