//! Namespace URIs used by the protocols this crate speaks.

/// RFC 6120 client stream content.
pub const CLIENT: &str = "jabber:client";
/// RFC 6120 stream wrapper.
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// The `xml:` prefix.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
/// RFC 6120 §5 STARTTLS.
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// RFC 6120 §6 SASL.
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// RFC 6120 §7 resource binding.
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// RFC 3921 session establishment (optional in RFC 6121).
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// RFC 6120 §4.9 stream errors.
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// RFC 6120 §8.3 stanza errors.
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// RFC 6121 §2 roster.
pub const ROSTER: &str = "jabber:iq:roster";
/// XEP-0085 chat state notifications.
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0203 delayed delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0054 vcard-temp.
pub const VCARD: &str = "vcard-temp";
/// XEP-0199 XMPP ping.
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0172 user nickname.
pub const NICK: &str = "http://jabber.org/protocol/nick";
/// XEP-0115 entity capabilities.
pub const CAPS: &str = "http://jabber.org/protocol/caps";
/// XEP-0198 stream management.
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0030 service discovery (items).
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0030 service discovery (information).
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0280 message carbons.
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0297 stanza forwarding (inside carbons and archive results).
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0313 message archive management.
pub const MAM: &str = "urn:xmpp:mam:2";
/// XEP-0059 result set management.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0004 data forms.
pub const DATA: &str = "jabber:x:data";
/// XEP-0359 unique and stable stanza ids.
pub const SID: &str = "urn:xmpp:sid:0";
/// XEP-0334 message processing hints.
pub const HINTS: &str = "urn:xmpp:hints";
/// XEP-0461 message replies.
pub const REPLY: &str = "urn:xmpp:reply:0";
/// XEP-0428 fallback indication.
pub const FALLBACK: &str = "urn:xmpp:fallback:0";
/// XEP-0308 last message correction.
pub const CORRECT: &str = "urn:xmpp:message-correct:0";
/// XEP-0424 message retraction.
pub const RETRACT: &str = "urn:xmpp:message-retract:1";
/// XEP-0424 message retraction, version 0 (inside XEP-0422 `<apply-to/>`).
pub const RETRACT_0: &str = "urn:xmpp:message-retract:0";
/// XEP-0422 message fastening.
pub const FASTEN: &str = "urn:xmpp:fasten:0";
/// XEP-0444 message reactions.
pub const REACTIONS: &str = "urn:xmpp:reactions:0";
/// XEP-0333 chat markers.
pub const MARKERS: &str = "urn:xmpp:chat-markers:0";
/// XEP-0066 out-of-band data (a file's URL in a message).
pub const OOB: &str = "jabber:x:oob";
/// XEP-0363 HTTP file upload.
pub const HTTP_UPLOAD: &str = "urn:xmpp:http:upload:0";
