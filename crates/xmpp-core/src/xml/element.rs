//! A small, owned XML element tree: what one stanza parses into and what we serialize.
//!
//! Names are stored as (local name, namespace URI). Prefixes are resolved while parsing and
//! re-created only where needed while serializing (`xmlns` on the element whose namespace
//! differs from its parent's), which is all XMPP stanzas need.

use std::borrow::Cow;

/// A name or namespace: the common ones are static strings, so parsing a stanza does not
/// allocate for them.
pub type Name = Cow<'static, str>;

/// An XML element with its namespace, attributes and children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    name: Name,
    ns: Name,
    attrs: Vec<(Name, String)>,
    children: Vec<Node>,
}

/// The static copy of a common XMPP name, namespace or attribute key, or an owned one.
pub(crate) fn intern(s: &str) -> Name {
    use crate::ns;
    let known: &'static str = match s {
        ns::CLIENT => ns::CLIENT,
        ns::STREAM => ns::STREAM,
        ns::CHATSTATES => ns::CHATSTATES,
        ns::DELAY => ns::DELAY,
        ns::ROSTER => ns::ROSTER,
        ns::VCARD => ns::VCARD,
        ns::STANZAS => ns::STANZAS,
        ns::STREAMS => ns::STREAMS,
        ns::SASL => ns::SASL,
        ns::TLS => ns::TLS,
        ns::BIND => ns::BIND,
        ns::SESSION => ns::SESSION,
        ns::PING => ns::PING,
        ns::NICK => ns::NICK,
        "vcard-temp:x:update" => "vcard-temp:x:update",
        "jabber:x:delay" => "jabber:x:delay",
        "http://jabber.org/protocol/caps" => "http://jabber.org/protocol/caps",
        "urn:xmpp:receipts" => "urn:xmpp:receipts",
        "message" => "message",
        "presence" => "presence",
        "iq" => "iq",
        "body" => "body",
        "show" => "show",
        "status" => "status",
        "priority" => "priority",
        "thread" => "thread",
        "subject" => "subject",
        "error" => "error",
        "text" => "text",
        "query" => "query",
        "item" => "item",
        "group" => "group",
        "delay" => "delay",
        "x" => "x",
        "c" => "c",
        "active" => "active",
        "composing" => "composing",
        "paused" => "paused",
        "inactive" => "inactive",
        "gone" => "gone",
        "nick" => "nick",
        "photo" => "photo",
        "ping" => "ping",
        "vCard" => "vCard",
        "FN" => "FN",
        "NICKNAME" => "NICKNAME",
        "PHOTO" => "PHOTO",
        "TYPE" => "TYPE",
        "BINVAL" => "BINVAL",
        "bind" => "bind",
        "jid" => "jid",
        "resource" => "resource",
        "features" => "features",
        "to" => "to",
        "from" => "from",
        "id" => "id",
        "type" => "type",
        "xml:lang" => "xml:lang",
        "name" => "name",
        "subscription" => "subscription",
        "ask" => "ask",
        "stamp" => "stamp",
        "ver" => "ver",
        "hash" => "hash",
        "node" => "node",
        _ => return Cow::Owned(s.to_owned()),
    };
    Cow::Borrowed(known)
}

/// A child of an [`Element`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (already unescaped).
    Text(String),
}

impl Element {
    /// A new empty element `<name xmlns='ns'/>`.
    pub fn new(name: impl Into<Name>, ns: impl Into<Name>) -> Self {
        Self {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The local name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace URI.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub(crate) fn set_ns(&mut self, ns: &str) {
        self.ns = intern(ns);
    }

    /// Appends an attribute without checking for an existing one (the parser has already
    /// rejected duplicates).
    pub(crate) fn push_attr(&mut self, name: Name, value: String) {
        self.attrs.push((name, value));
    }

    /// Whether this element is `name` in namespace `ns`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// The value of attribute `name` (unprefixed, or `xml:lang` style with its prefix).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All attributes in document order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: impl Into<Name>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Builder form of [`Element::set_attr`].
    #[must_use]
    pub fn with_attr(mut self, name: impl Into<Name>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder form: sets the attribute only when `value` is `Some`.
    #[must_use]
    pub fn with_opt_attr(self, name: &'static str, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.with_attr(name, v),
            None => self,
        }
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Builder form of [`Element::push_child`].
    #[must_use]
    pub fn with_child(mut self, child: Element) -> Self {
        self.push_child(child);
        self
    }

    /// Appends character data.
    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        match self.children.last_mut() {
            Some(Node::Text(prev)) => prev.push_str(&text),
            _ => self.children.push(Node::Text(text)),
        }
    }

    /// Builder form of [`Element::push_text`].
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text);
        self
    }

    /// All child nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// Child elements in order.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element `name` in namespace `ns`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(name, ns))
    }

    /// The concatenated text content of this element's direct text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(t) = node {
                out.push_str(t);
            }
        }
        out
    }

    /// The text of child `name` in `ns`, if that child exists.
    pub fn child_text(&self, name: &str, ns: &str) -> Option<String> {
        self.child(name, ns).map(Element::text)
    }

    /// Serializes this element, declaring its namespace unless it equals `parent_ns`
    /// (the namespace in scope: `jabber:client` for stanzas written into a client stream).
    pub fn write_to(&self, out: &mut String, parent_ns: &str) {
        out.push('<');
        out.push_str(&self.name);
        if self.ns != parent_ns {
            out.push_str(" xmlns='");
            escape_into(out, &self.ns);
            out.push('\'');
        }
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            escape_into(out, v);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for node in &self.children {
            match node {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => escape_into(out, t),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// Serializes for a `jabber:client` stream.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(128);
        self.write_to(&mut out, crate::ns::CLIENT);
        out
    }
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_xml())
    }
}

/// Escapes text or an attribute value (quoted with `'`) into `out`.
pub(crate) fn escape_into(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'\'' => "&apos;",
            b'"' => "&quot;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_namespaces_only_where_they_change() {
        let el = Element::new("message", crate::ns::CLIENT)
            .with_attr("to", "bob@example.org")
            .with_child(Element::new("body", crate::ns::CLIENT).with_text("a < b & 'c'"))
            .with_child(Element::new("active", crate::ns::CHATSTATES));
        assert_eq!(
            el.to_xml(),
            "<message to='bob@example.org'><body>a &lt; b &amp; &apos;c&apos;</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        );
    }

    #[test]
    fn adjacent_text_is_merged() {
        let el = Element::new("body", crate::ns::CLIENT)
            .with_text("a")
            .with_text("b");
        assert_eq!(el.nodes().len(), 1);
        assert_eq!(el.text(), "ab");
    }
}
