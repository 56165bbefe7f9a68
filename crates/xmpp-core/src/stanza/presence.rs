//! `<presence/>` stanzas (RFC 6121 §3–4), with the XEP-0172 nickname carried on subscription
//! requests and the XEP-0153 vCard photo hash.
//!
//! ```xml
//! <presence from='bob@x/phone'><show>away</show><status>lunch</status><priority>5</priority></presence>
//! <presence from='carol@x' type='subscribe'><nick xmlns='http://jabber.org/protocol/nick'>Carol</nick></presence>
//! ```

use super::{ParseError, StanzaError, jid_attr};
use crate::jid::Jid;
use crate::ns;
use crate::xml::Element;

const VCARD_UPDATE_NS: &str = "vcard-temp:x:update";

/// RFC 6121 presence types (absent = available).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceType {
    /// Available (no `type`).
    Available,
    /// Gone offline.
    Unavailable,
    /// Asks to subscribe.
    Subscribe,
    /// Approved a subscription.
    Subscribed,
    /// Cancels our subscription to them.
    Unsubscribe,
    /// Denied or revoked a subscription.
    Unsubscribed,
    /// A presence probe (the Messenger profile never answers these).
    Probe,
    /// An error.
    Error,
}

impl PresenceType {
    fn parse(s: Option<&str>) -> Result<Self, ParseError> {
        Ok(match s {
            None => Self::Available,
            Some("unavailable") => Self::Unavailable,
            Some("subscribe") => Self::Subscribe,
            Some("subscribed") => Self::Subscribed,
            Some("unsubscribe") => Self::Unsubscribe,
            Some("unsubscribed") => Self::Unsubscribed,
            Some("probe") => Self::Probe,
            Some("error") => Self::Error,
            Some(other) => {
                return Err(ParseError::new(
                    "presence",
                    format!("unknown type {other:?}"),
                ));
            }
        })
    }

    fn as_str(self) -> Option<&'static str> {
        match self {
            Self::Available => None,
            Self::Unavailable => Some("unavailable"),
            Self::Subscribe => Some("subscribe"),
            Self::Subscribed => Some("subscribed"),
            Self::Unsubscribe => Some("unsubscribe"),
            Self::Unsubscribed => Some("unsubscribed"),
            Self::Probe => Some("probe"),
            Self::Error => Some("error"),
        }
    }
}

/// RFC 6121 §4.7.2.1 `<show/>` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Show {
    /// Temporarily away.
    Away,
    /// Actively interested in chatting.
    Chat,
    /// Do not disturb (busy).
    Dnd,
    /// Extended away.
    Xa,
}

impl Show {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Away => "away",
            Self::Chat => "chat",
            Self::Dnd => "dnd",
            Self::Xa => "xa",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "away" => Some(Self::Away),
            "chat" => Some(Self::Chat),
            "dnd" => Some(Self::Dnd),
            "xa" => Some(Self::Xa),
            _ => None,
        }
    }
}

/// A presence stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// Sender.
    pub from: Option<Jid>,
    /// Recipient (absent for broadcast presence).
    pub to: Option<Jid>,
    /// Stanza id.
    pub id: Option<String>,
    /// `type`.
    pub kind: PresenceType,
    /// `<show/>` (unknown values are ignored, RFC 6121 §4.7.2.1).
    pub show: Option<Show>,
    /// `<status/>`.
    pub status: Option<String>,
    /// `<priority/>` (-128..127, default 0).
    pub priority: i8,
    /// XEP-0172 nickname.
    pub nick: Option<String>,
    /// XEP-0153 SHA-1 of the vCard photo, when the sender advertises one (empty = no photo).
    pub photo_hash: Option<String>,
    /// XEP-0115 capabilities: `node#ver`, what to ask the sender's disco#info about (its
    /// features are the same for every presence with the same string).
    pub caps: Option<String>,
    /// The error, for `type='error'`.
    pub error: Option<StanzaError>,
}

impl Presence {
    /// An available presence with optional show and status.
    pub fn available(show: Option<Show>, status: Option<String>) -> Self {
        Self {
            from: None,
            to: None,
            id: None,
            kind: PresenceType::Available,
            show,
            status,
            priority: 0,
            nick: None,
            photo_hash: None,
            caps: None,
            error: None,
        }
    }

    /// `<presence type='unavailable'/>`.
    pub fn unavailable() -> Self {
        Self {
            kind: PresenceType::Unavailable,
            ..Self::available(None, None)
        }
    }

    /// Parses a `<presence/>`.
    pub fn from_element(el: &Element) -> Result<Self, ParseError> {
        let mut presence = Self::parse(el)?;
        presence.status = el
            .child("status", ns::CLIENT)
            .map(Element::text)
            .filter(|s| !s.is_empty());
        Ok(presence)
    }

    /// Everything but the status text.
    fn parse(el: &Element) -> Result<Self, ParseError> {
        if !el.is("presence", ns::CLIENT) {
            return Err(ParseError::new(
                "presence",
                format!("not a presence: <{}>", el.name()),
            ));
        }
        let kind = PresenceType::parse(el.attr("type"))?;
        let priority = match el.child("priority", ns::CLIENT) {
            // RFC 6121 §4.7.2.3: out-of-range or junk priorities are treated as 0.
            Some(p) => p.text_ref().trim().parse::<i8>().unwrap_or(0),
            None => 0,
        };
        Ok(Self {
            from: jid_attr(el, "from", "presence")?,
            to: jid_attr(el, "to", "presence")?,
            id: el.attr("id").map(str::to_owned),
            kind,
            show: el
                .child("show", ns::CLIENT)
                .and_then(|s| Show::parse(s.text_ref())),
            status: None,
            priority,
            nick: el.child_text("nick", ns::NICK).filter(|s| !s.is_empty()),
            photo_hash: el
                .child("x", VCARD_UPDATE_NS)
                .and_then(|x| x.child("photo", VCARD_UPDATE_NS))
                .map(|h| h.text_ref().trim().to_lowercase()),
            caps: el
                .child("c", ns::CAPS)
                .and_then(|c| Some((c.attr("node")?, c.attr("ver")?)))
                .filter(|(node, ver)| node.len() + ver.len() <= 512 && !ver.is_empty())
                .map(|(node, ver)| format!("{node}#{ver}")),
            error: if kind == PresenceType::Error {
                StanzaError::from_children(el)
            } else {
                None
            },
        })
    }
    /// Serializes to a `<presence/>` element.
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("presence", ns::CLIENT)
            .with_opt_attr("type", self.kind.as_str())
            .with_opt_attr("id", self.id.clone())
            .with_opt_attr("to", self.to.as_ref().map(Jid::to_string));
        if let Some(s) = self.show {
            el.push_child(Element::new("show", ns::CLIENT).with_text(s.as_str()));
        }
        if let Some(s) = &self.status {
            el.push_child(Element::new("status", ns::CLIENT).with_text(s.clone()));
        }
        if self.priority != 0 {
            el.push_child(
                Element::new("priority", ns::CLIENT).with_text(self.priority.to_string()),
            );
        }
        if let Some(n) = &self.nick {
            el.push_child(Element::new("nick", ns::NICK).with_text(n.clone()));
        }
        el
    }
}

/// Parses a `<presence/>` it takes: the status text is moved, not copied.
impl TryFrom<Element> for Presence {
    type Error = ParseError;

    fn try_from(el: Element) -> Result<Self, ParseError> {
        let mut presence = Self::parse(&el)?;
        presence.status = el
            .into_children()
            .find(|c| c.is("status", ns::CLIENT))
            .map(Element::into_text)
            .filter(|s| !s.is_empty());
        Ok(presence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    fn parse(s: &str) -> Result<Presence, ParseError> {
        Presence::from_element(&parse_element(s, ns::CLIENT).unwrap())
    }

    #[test]
    fn parses_show_status_priority_and_photo_hash() {
        let p = parse(
            "<presence from='bob@x/phone'><show>dnd</show><status>busy</status><priority>-5</priority>\
             <x xmlns='vcard-temp:x:update'><photo>ABC123</photo></x></presence>",
        )
        .unwrap();
        assert_eq!(p.kind, PresenceType::Available);
        assert_eq!(p.show, Some(Show::Dnd));
        assert_eq!(p.status.as_deref(), Some("busy"));
        assert_eq!(p.priority, -5);
        assert_eq!(p.photo_hash.as_deref(), Some("abc123"));
    }

    #[test]
    fn entity_capabilities_give_the_node_to_ask_about() {
        let p = parse(
            "<presence from='bob@x/phone'><c xmlns='http://jabber.org/protocol/caps' \
             hash='sha-1' node='https://dino.im' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>",
        )
        .unwrap();
        assert_eq!(
            p.caps.as_deref(),
            Some("https://dino.im#QgayPKawpkPSDYmwT/WM94uAlu0=")
        );
        let p = parse("<presence from='bob@x/phone'><c xmlns='http://jabber.org/protocol/caps' node='n'/></presence>").unwrap();
        assert_eq!(p.caps, None, "no ver, nothing to ask about");
    }

    #[test]
    fn taking_the_element_gives_the_same_presence() {
        for xml in [
            "<presence from='bob@x/phone'><show>dnd</show><status>busy</status>\
             <priority>-5</priority><x xmlns='vcard-temp:x:update'><photo>ABC123</photo></x>\
             </presence>",
            "<presence><status xml:lang='en'>a</status><status>b</status></presence>",
            "<presence><status/><show> away </show></presence>",
            "<presence type='unavailable'/>",
        ] {
            let el = parse_element(xml, ns::CLIENT).unwrap();
            assert_eq!(
                Presence::try_from(el.clone()),
                Presence::from_element(&el),
                "{xml}"
            );
        }
        let el = parse_element("<presence type='bogus'/>", ns::CLIENT).unwrap();
        assert!(Presence::try_from(el).is_err());
    }

    #[test]
    fn subscription_request_with_nick() {
        let p = parse(
            "<presence from='carol@x' type='subscribe'><nick xmlns='http://jabber.org/protocol/nick'>Carol</nick></presence>",
        )
        .unwrap();
        assert_eq!(p.kind, PresenceType::Subscribe);
        assert_eq!(p.nick.as_deref(), Some("Carol"));
    }

    #[test]
    fn junk_priority_and_show_are_tolerated_but_unknown_type_is_not() {
        let p =
            parse("<presence><show>sleeping</show><priority>999</priority></presence>").unwrap();
        assert_eq!(p.show, None);
        assert_eq!(p.priority, 0);
        assert!(parse("<presence type='bogus'/>").is_err());
    }

    #[test]
    fn serializes_exactly() {
        let mut p = Presence::available(Some(Show::Away), Some("out".into()));
        p.priority = 1;
        assert_eq!(
            p.to_element().to_xml(),
            "<presence><show>away</show><status>out</status><priority>1</priority></presence>"
        );
        assert_eq!(
            Presence::unavailable().to_element().to_xml(),
            "<presence type='unavailable'/>"
        );
    }
}
