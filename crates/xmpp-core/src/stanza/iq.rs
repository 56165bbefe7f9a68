//! `<iq/>` stanzas (RFC 6120 §8.2.3): request/response with exactly one payload.
//!
//! ```xml
//! <iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>
//! <iq type='result' id='r1' from='messenger.live.com'/>
//! ```

use super::{ParseError, StanzaError, jid_attr};
use crate::jid::Jid;
use crate::ns;
use crate::xml::Element;

/// The four IQ types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqType {
    /// Request data.
    Get,
    /// Provide data or make a change.
    Set,
    /// Successful response.
    Result,
    /// Failed response.
    Error,
}

/// An IQ stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iq {
    /// The id that ties request and response.
    pub id: String,
    /// Sender.
    pub from: Option<Jid>,
    /// Recipient.
    pub to: Option<Jid>,
    /// `type`.
    pub kind: IqType,
    /// The payload element (requests must have one; results may).
    pub payload: Option<Element>,
    /// The error, for `type='error'`.
    pub error: Option<StanzaError>,
}

impl Iq {
    /// A `get` request.
    pub fn get(id: impl Into<String>, to: Option<Jid>, payload: Element) -> Self {
        Self {
            id: id.into(),
            from: None,
            to,
            kind: IqType::Get,
            payload: Some(payload),
            error: None,
        }
    }

    /// A `set` request.
    pub fn set(id: impl Into<String>, to: Option<Jid>, payload: Element) -> Self {
        Self {
            kind: IqType::Set,
            ..Self::get(id, to, payload)
        }
    }

    /// The `result` answering `request`.
    pub fn result_for(request: &Iq, payload: Option<Element>) -> Self {
        Self {
            id: request.id.clone(),
            from: None,
            to: request.from.clone(),
            kind: IqType::Result,
            payload,
            error: None,
        }
    }

    /// The `error` answering `request`.
    pub fn error_for(request: &Iq, error: StanzaError) -> Self {
        Self {
            id: request.id.clone(),
            from: None,
            to: request.from.clone(),
            kind: IqType::Error,
            payload: None,
            error: Some(error),
        }
    }

    /// Parses an `<iq/>`; the payload is cloned (see the `TryFrom<Element>` impl to move it).
    pub fn from_element(el: &Element) -> Result<Self, ParseError> {
        let mut iq = Self::parse(el)?;
        iq.payload = el.children().find(|c| is_payload(c)).cloned();
        Ok(iq)
    }

    /// Everything but the payload, checked in the order of RFC 6120 §8.2.3.
    fn parse(el: &Element) -> Result<Self, ParseError> {
        if !el.is("iq", ns::CLIENT) {
            return Err(ParseError::new("iq", format!("not an iq: <{}>", el.name())));
        }
        let id = el
            .attr("id")
            .ok_or_else(|| ParseError::new("iq", "no id"))?
            .to_owned();
        let kind = match el.attr("type") {
            Some("get") => IqType::Get,
            Some("set") => IqType::Set,
            Some("result") => IqType::Result,
            Some("error") => IqType::Error,
            other => return Err(ParseError::new("iq", format!("bad type {other:?}"))),
        };
        if matches!(kind, IqType::Get | IqType::Set) && !el.children().any(is_payload) {
            return Err(ParseError::new("iq", "request without a payload"));
        }
        Ok(Self {
            id,
            from: jid_attr(el, "from", "iq")?,
            to: jid_attr(el, "to", "iq")?,
            kind,
            payload: None,
            error: if kind == IqType::Error {
                StanzaError::from_children(el)
            } else {
                None
            },
        })
    }

    /// Serializes to an `<iq/>` element.
    pub fn to_element(&self) -> Element {
        let kind = match self.kind {
            IqType::Get => "get",
            IqType::Set => "set",
            IqType::Result => "result",
            IqType::Error => "error",
        };
        let mut el = Element::new("iq", ns::CLIENT)
            .with_attr("type", kind)
            .with_attr("id", self.id.clone())
            .with_opt_attr("to", self.to.as_ref().map(Jid::to_string));
        if let Some(p) = &self.payload {
            el.push_child(p.clone());
        }
        if let Some(e) = &self.error {
            el.push_child(e.to_element());
        }
        el
    }
}

/// Parses an `<iq/>` it takes: the payload is moved, not copied.
impl TryFrom<Element> for Iq {
    type Error = ParseError;

    fn try_from(el: Element) -> Result<Self, ParseError> {
        let mut iq = Self::parse(&el)?;
        iq.payload = el.into_children().find(is_payload);
        Ok(iq)
    }
}

/// The payload is the first child that is not the `<error/>` of an error reply.
fn is_payload(child: &Element) -> bool {
    child.name() != "error" || child.ns() != ns::CLIENT
}

/// XEP-0199 `<ping xmlns='urn:xmpp:ping'/>`.
pub fn ping() -> Element {
    Element::new("ping", ns::PING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    #[test]
    fn parses_result_without_payload_and_request_with() {
        let el = parse_element(
            "<iq type='result' id='a' from='messenger.live.com'/>",
            ns::CLIENT,
        )
        .unwrap();
        let iq = Iq::from_element(&el).unwrap();
        assert_eq!(iq.kind, IqType::Result);
        assert_eq!(iq.payload, None);
        let el = parse_element(
            "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
            ns::CLIENT,
        )
        .unwrap();
        assert!(
            Iq::from_element(&el)
                .unwrap()
                .payload
                .unwrap()
                .is("ping", ns::PING)
        );
    }

    #[test]
    fn rejects_missing_id_type_or_payload() {
        for bad in [
            "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq id='x'/>",
            "<iq id='x' type='set'/>",
        ] {
            let el = parse_element(bad, ns::CLIENT).unwrap();
            assert!(Iq::from_element(&el).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_reply_carries_the_condition() {
        let el = parse_element(
            "<iq type='error' id='s1'><query xmlns='jabber:iq:roster'/><error type='cancel'>\
             <not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            ns::CLIENT,
        )
        .unwrap();
        let iq = Iq::from_element(&el).unwrap();
        assert_eq!(iq.error.unwrap().condition, "not-allowed");
        assert!(iq.payload.unwrap().is("query", ns::ROSTER));
    }

    #[test]
    fn taking_the_element_gives_the_same_iq() {
        for xml in [
            "<iq type='result' id='a' from='messenger.live.com'/>",
            "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq type='error' id='s1'><query xmlns='jabber:iq:roster'/><error type='cancel'>\
             <not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            "<iq type='error' id='s2'><error type='cancel'/><query xmlns='jabber:iq:roster'/></iq>",
        ] {
            let el = parse_element(xml, ns::CLIENT).unwrap();
            assert_eq!(Iq::try_from(el.clone()), Iq::from_element(&el), "{xml}");
        }
        for bad in ["<iq type='set' id='x'/>", "<iq id='x'/>", "<message/>"] {
            let el = parse_element(bad, ns::CLIENT).unwrap();
            assert!(Iq::try_from(el).is_err(), "{bad}");
        }
    }

    #[test]
    fn serializes_exactly() {
        let iq = Iq::get("r1", None, Element::new("query", ns::ROSTER));
        assert_eq!(
            iq.to_element().to_xml(),
            "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
        );
    }
}
