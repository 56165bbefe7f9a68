//! `<message/>` stanzas (RFC 6121 §5) with the payloads the bridge maps: body, XEP-0085 chat
//! state, XEP-0203 delay, errors, and what a message says about an earlier one (replies,
//! corrections, retractions, reactions, markers: [`super::relations`]).
//!
//! ```xml
//! <message from='bob@x/phone' to='alice@x' type='chat' id='m1'>
//!   <body>hi</body><active xmlns='http://jabber.org/protocol/chatstates'/>
//! </message>
//! ```

use super::{ChatState, Delay, ParseError, StanzaError, jid_attr};
use crate::jid::Jid;
use crate::ns;
use crate::xml::Element;

/// RFC 6121 §5.2.2 message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// One-to-one chat: the only type the Messenger profile routes.
    Chat,
    /// An error reply to a message we sent.
    Error,
    /// Multi-user chat.
    Groupchat,
    /// An alert or notice.
    Headline,
    /// A standalone message (the default when `type` is absent).
    Normal,
}

impl MessageType {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("chat") => Self::Chat,
            Some("error") => Self::Error,
            Some("groupchat") => Self::Groupchat,
            Some("headline") => Self::Headline,
            // RFC 6121 §5.2.2: absent or unknown is treated as normal.
            _ => Self::Normal,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Error => "error",
            Self::Groupchat => "groupchat",
            Self::Headline => "headline",
            Self::Normal => "normal",
        }
    }
}

/// A message stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stanza id (used to map to Matrix events and to match error replies).
    pub id: Option<String>,
    /// Sender.
    pub from: Option<Jid>,
    /// Recipient.
    pub to: Option<Jid>,
    /// `type`.
    pub kind: MessageType,
    /// `<body/>` text (the one without `xml:lang`, or the first).
    pub body: Option<String>,
    /// `<thread/>`.
    pub thread: Option<String>,
    /// XEP-0085 chat state.
    pub chat_state: Option<ChatState>,
    /// XEP-0203 original send time.
    pub delay: Option<Delay>,
    /// The error, for `type='error'`.
    pub error: Option<StanzaError>,
    /// XEP-0359 `<stanza-id/>`s: (`by`, `id`), as given; only the one `by` the account's own bare
    /// JID (its archive) is to be trusted, which the receiver checks.
    pub stanza_ids: Vec<(String, String)>,
    /// XEP-0359 `<origin-id/>`: the sender's own id for the message.
    pub origin_id: Option<String>,
    /// XEP-0461: the message this one answers.
    pub reply: Option<super::Reply>,
    /// XEP-0428: parts of the body only there for clients without some XEP.
    pub fallbacks: Vec<super::Fallback>,
    /// XEP-0308: the id of the message this one corrects (its new text is the body).
    pub replace: Option<String>,
    /// XEP-0424: the id of the message the sender takes back.
    pub retract: Option<String>,
    /// XEP-0444: the sender's reactions to a message.
    pub reactions: Option<super::Reactions>,
    /// XEP-0333: the sender asks for chat markers.
    pub markable: bool,
    /// XEP-0333: the id of the last message the sender has read.
    pub displayed: Option<String>,
    /// XEP-0334 `<store/>`: to be kept (offline storage, archive) although it has no body.
    pub store_hint: bool,
    /// XEP-0066 `<x xmlns='jabber:x:oob'><url/>`: a file the message carries.
    pub oob_url: Option<String>,
}

impl Message {
    /// The archive id the account's own server gave this message (XEP-0359 `stanza-id` with
    /// `by` = `own`, the account's bare JID).
    pub fn stanza_id_by(&self, own: &Jid) -> Option<&str> {
        let own = own.to_bare().to_string();
        self.stanza_ids
            .iter()
            .find(|(by, _)| by.eq_ignore_ascii_case(&own))
            .map(|(_, id)| id.as_str())
    }

    /// A `type='chat'` message with a body.
    pub fn chat(to: Jid, body: impl Into<String>) -> Self {
        Self {
            id: None,
            from: None,
            to: Some(to),
            kind: MessageType::Chat,
            body: Some(body.into()),
            thread: None,
            chat_state: None,
            delay: None,
            error: None,
            stanza_ids: Vec::new(),
            origin_id: None,
            reply: None,
            fallbacks: Vec::new(),
            replace: None,
            retract: None,
            reactions: None,
            markable: false,
            displayed: None,
            store_hint: false,
            oob_url: None,
        }
    }

    /// A `type='chat'` message carrying only a chat state (XEP-0085 §5.5: no body).
    pub fn chat_state(to: Jid, state: ChatState) -> Self {
        Self {
            body: None,
            chat_state: Some(state),
            ..Self::chat(to, "")
        }
    }

    /// Parses a `<message/>`.
    pub fn from_element(el: &Element) -> Result<Self, ParseError> {
        let (mut message, body) = Self::parse(el)?;
        message.body = body.and_then(|i| el.children().nth(i)).map(Element::text);
        Ok(message)
    }

    /// Everything but the body, and which child is the body: the one without `xml:lang`, or
    /// the first.
    fn parse(el: &Element) -> Result<(Self, Option<usize>), ParseError> {
        if !el.is("message", ns::CLIENT) {
            return Err(ParseError::new(
                "message",
                format!("not a message: <{}>", el.name()),
            ));
        }
        let kind = MessageType::parse(el.attr("type"));
        let is_body = |c: &Element| c.is("body", ns::CLIENT);
        let body = el
            .children()
            .position(|c| is_body(c) && c.attr("xml:lang").is_none())
            .or_else(|| el.children().position(is_body));
        let message = Self {
            id: el.attr("id").map(str::to_owned),
            from: jid_attr(el, "from", "message")?,
            to: jid_attr(el, "to", "message")?,
            kind,
            body: None,
            thread: el.child_text("thread", ns::CLIENT),
            chat_state: ChatState::from_children(el),
            delay: Delay::from_children(el)?,
            error: if kind == MessageType::Error {
                StanzaError::from_children(el)
            } else {
                None
            },
            stanza_ids: el
                .children()
                .filter(|c| c.is("stanza-id", ns::SID))
                .filter_map(|c| Some((c.attr("by")?.to_owned(), c.attr("id")?.to_owned())))
                .collect(),
            origin_id: el
                .child("origin-id", ns::SID)
                .and_then(|c| c.attr("id"))
                .map(str::to_owned),
            reply: super::relations::reply(el),
            fallbacks: super::relations::fallbacks(el),
            replace: super::relations::replace(el),
            retract: super::relations::retract(el),
            reactions: super::relations::reactions(el),
            markable: el.child("markable", ns::MARKERS).is_some(),
            displayed: super::relations::displayed(el),
            store_hint: el.child("store", ns::HINTS).is_some(),
            oob_url: el
                .child("x", ns::OOB)
                .and_then(|x| x.child_text("url", ns::OOB))
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty()),
        };
        Ok((message, body))
    }

    /// Serializes to a `<message/>` element.
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("message", ns::CLIENT)
            .with_attr("type", self.kind.as_str())
            .with_opt_attr("id", self.id.clone())
            .with_opt_attr("from", self.from.as_ref().map(Jid::to_string))
            .with_opt_attr("to", self.to.as_ref().map(Jid::to_string));
        if let Some(b) = &self.body {
            el.push_child(Element::new("body", ns::CLIENT).with_text(b.clone()));
        }
        if let Some(t) = &self.thread {
            el.push_child(Element::new("thread", ns::CLIENT).with_text(t.clone()));
        }
        if let Some(s) = self.chat_state {
            el.push_child(s.to_element());
        }
        if let Some(d) = &self.delay {
            el.push_child(d.to_element());
        }
        if let Some(e) = &self.error {
            el.push_child(e.to_element());
        }
        for (by, id) in &self.stanza_ids {
            el.push_child(
                Element::new("stanza-id", ns::SID)
                    .with_attr("by", by.clone())
                    .with_attr("id", id.clone()),
            );
        }
        if let Some(id) = &self.origin_id {
            el.push_child(Element::new("origin-id", ns::SID).with_attr("id", id.clone()));
        }
        super::relations::push_elements(&mut el, self);
        el
    }
}

/// Parses a `<message/>` it takes: the body text is moved, not copied.
impl TryFrom<Element> for Message {
    type Error = ParseError;

    fn try_from(el: Element) -> Result<Self, ParseError> {
        let (mut message, body) = Self::parse(&el)?;
        message.body = body
            .and_then(|i| el.into_children().nth(i))
            .map(Element::into_text);
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    #[test]
    fn parses_chat_with_state_and_delay() {
        let el = parse_element(
            "<message from='Bob@x/phone' to='alice@x' type='chat' id='m1'>\
             <body xml:lang='de'>hallo</body><body>hello</body>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/>\
             <delay xmlns='urn:xmpp:delay' stamp='2024-01-01T00:00:00Z'/></message>",
            ns::CLIENT,
        )
        .unwrap();
        let m = Message::from_element(&el).unwrap();
        assert_eq!(m.kind, MessageType::Chat);
        assert_eq!(m.body.as_deref(), Some("hello"));
        assert_eq!(m.from.unwrap().to_string(), "bob@x/phone");
        assert_eq!(m.chat_state, Some(ChatState::Composing));
        assert_eq!(m.delay.unwrap().unix_millis(), 1_704_067_200_000);
    }

    #[test]
    fn taking_the_element_gives_the_same_message() {
        for xml in [
            "<message from='Bob@x/phone' to='alice@x' type='chat' id='m1'>\
             <body xml:lang='de'>hallo</body><body>hello</body>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message><body xml:lang='de'>nur</body><thread>t</thread></message>",
            "<message type='chat'><body>a <![CDATA[b]]> &amp; c</body></message>",
            "<message type='chat'><body a='x'>text</body></message>",
            "<message type='error' id='m9'><error type='cancel'><service-unavailable \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        ] {
            let el = parse_element(xml, ns::CLIENT).unwrap();
            assert_eq!(
                Message::try_from(el.clone()),
                Message::from_element(&el),
                "{xml}"
            );
        }
        let el = parse_element("<message from='@x'/>", ns::CLIENT).unwrap();
        assert!(Message::try_from(el).is_err());
    }

    #[test]
    fn serializes_exactly() {
        let mut m = Message::chat(Jid::parse("bob@x").unwrap(), "a&b");
        m.id = Some("i1".into());
        m.chat_state = Some(ChatState::Active);
        assert_eq!(
            m.to_element().to_xml(),
            "<message type='chat' id='i1' to='bob@x'><body>a&amp;b</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        );
        let back =
            Message::from_element(&parse_element(&m.to_element().to_xml(), ns::CLIENT).unwrap())
                .unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn missing_type_is_normal_and_error_is_parsed() {
        let el = parse_element("<message from='b@x'><body>x</body></message>", ns::CLIENT).unwrap();
        assert_eq!(
            Message::from_element(&el).unwrap().kind,
            MessageType::Normal
        );
        let el = parse_element(
            "<message type='error' id='m9'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
            ns::CLIENT,
        )
        .unwrap();
        let m = Message::from_element(&el).unwrap();
        assert_eq!(m.error.unwrap().condition, "service-unavailable");
    }

    #[test]
    fn invalid_jid_is_an_error() {
        let el = parse_element("<message from='@x'/>", ns::CLIENT).unwrap();
        assert!(Message::from_element(&el).is_err());
    }
}
