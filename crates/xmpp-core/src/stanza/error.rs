//! Stanza errors (RFC 6120 §8.3) and stream errors (RFC 6120 §4.9).
//!
//! ```xml
//! <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>
//! <stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>[2001:db8::1]:5222</see-other-host></stream:error>
//! ```

use crate::ns;
use crate::xml::Element;

/// An `<error/>` child of a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaError {
    /// `type`: auth, cancel, continue, modify or wait.
    pub kind: String,
    /// The defined condition, e.g. `service-unavailable`.
    pub condition: String,
    /// Human-readable text, if the peer gave any.
    pub text: Option<String>,
}

impl StanzaError {
    /// A new error with a condition and type.
    pub fn new(kind: &str, condition: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            condition: condition.to_owned(),
            text: None,
        }
    }

    /// The `<error/>` among a stanza's children.
    pub fn from_children(stanza: &Element) -> Option<Self> {
        let el = stanza.children().find(|c| c.name() == "error")?;
        let condition = el
            .children()
            .find(|c| c.ns() == ns::STANZAS && c.name() != "text")
            .map_or("undefined-condition", Element::name)
            .to_owned();
        Some(Self {
            kind: el.attr("type").unwrap_or("cancel").to_owned(),
            condition,
            text: el.child_text("text", ns::STANZAS).filter(|t| !t.is_empty()),
        })
    }

    /// `<error type='…'><condition xmlns='…'/></error>`.
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("error", ns::CLIENT)
            .with_attr("type", self.kind.clone())
            .with_child(Element::new(self.condition.clone(), ns::STANZAS));
        if let Some(t) = &self.text {
            el.push_child(Element::new("text", ns::STANZAS).with_text(t.clone()));
        }
        el
    }
}

impl std::fmt::Display for StanzaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.condition, self.kind)?;
        if let Some(t) = &self.text {
            write!(f, ": {t}")?;
        }
        Ok(())
    }
}

/// A `<stream:error/>`: the peer is ending the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The defined condition, e.g. `see-other-host`, `conflict`, `policy-violation`.
    pub condition: String,
    /// The condition element's text: for `see-other-host`, the `host[:port]` to go to.
    pub condition_text: Option<String>,
    /// Human-readable text.
    pub text: Option<String>,
}

impl StreamError {
    /// Parses `<stream:error>`.
    pub fn from_element(el: &Element) -> Option<Self> {
        if !el.is("error", ns::STREAM) {
            return None;
        }
        let cond = el
            .children()
            .find(|c| c.ns() == ns::STREAMS && c.name() != "text");
        Some(Self {
            condition: cond.map_or("undefined-condition", Element::name).to_owned(),
            condition_text: cond
                .map(|c| c.text().trim().to_owned())
                .filter(|t| !t.is_empty()),
            text: el.child_text("text", ns::STREAMS).filter(|t| !t.is_empty()),
        })
    }

    /// `<stream:error><condition/></stream:error>` as text, ready to write.
    pub fn to_xml(condition: &str) -> String {
        let mut out = String::from("<stream:error>");
        Element::new(condition.to_owned(), ns::STREAMS).write_to(&mut out, ns::STREAM);
        out.push_str("</stream:error>");
        out
    }

    /// For `see-other-host`: the host and optional port (RFC 6120 §4.9.3.19, IPv6 in brackets).
    pub fn see_other_host(&self) -> Option<(String, Option<u16>)> {
        if self.condition != "see-other-host" {
            return None;
        }
        parse_host_port(self.condition_text.as_deref()?)
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.condition)?;
        if let Some(t) = &self.text {
            write!(f, ": {t}")?;
        }
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn parse_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_owned(), Some(p.parse().ok()?))),
        Some(_) => None, // a bare IPv6 address must be bracketed
        None if !s.is_empty() => Some((s.to_owned(), None)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stream::parse_element;

    #[test]
    fn stanza_error_parses_condition_and_text() {
        let m = parse_element(
            "<message type='error'><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>only chat</text></error></message>",
            ns::CLIENT,
        )
        .unwrap();
        let e = StanzaError::from_children(&m).unwrap();
        assert_eq!(
            e,
            StanzaError {
                kind: "cancel".into(),
                condition: "not-allowed".into(),
                text: Some("only chat".into())
            }
        );
        let back = Element::new("message", ns::CLIENT).with_child(e.to_element());
        assert_eq!(StanzaError::from_children(&back).unwrap(), e);
    }

    #[test]
    fn see_other_host_forms() {
        let parse = |t: &str| {
            let el = parse_element(
                &format!("<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{t}</see-other-host></stream:error>"),
                ns::CLIENT,
            )
            .unwrap();
            StreamError::from_element(&el).unwrap().see_other_host()
        };
        assert_eq!(
            parse("xmpp2.example.org"),
            Some(("xmpp2.example.org".into(), None))
        );
        assert_eq!(
            parse("127.0.0.1:5222"),
            Some(("127.0.0.1".into(), Some(5222)))
        );
        assert_eq!(
            parse("[2001:db8::1]:5223"),
            Some(("2001:db8::1".into(), Some(5223)))
        );
        assert_eq!(parse("[2001:db8::1]"), Some(("2001:db8::1".into(), None)));
        assert_eq!(parse("2001:db8::1"), None);
        assert_eq!(parse("host:notaport"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn other_stream_errors_have_no_redirect() {
        let el = parse_element(
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>replaced</text></stream:error>",
            ns::CLIENT,
        )
        .unwrap();
        let e = StreamError::from_element(&el).unwrap();
        assert_eq!(e.condition, "conflict");
        assert_eq!(e.text.as_deref(), Some("replaced"));
        assert_eq!(e.see_other_host(), None);
        assert_eq!(
            StreamError::to_xml("policy-violation"),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
    }
}
