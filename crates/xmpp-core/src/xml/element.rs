//! A small, owned XML element tree: what one stanza parses into and what we serialize.
//!
//! Names are stored as (local name, namespace URI). Prefixes are resolved while parsing and
//! re-created only where needed while serializing (`xmlns` on the element whose namespace
//! differs from its parent's), which is all XMPP stanzas need.

use std::borrow::Cow;

use crate::ns;

/// A name or namespace: the common ones are static strings, so parsing a stanza does not
/// allocate for them.
pub type Name = Cow<'static, str>;

/// An XML element with its namespace, attributes and children.
///
/// One string holds the attribute values followed by the character data, so that an element
/// costs at most three allocations however many attributes and text pieces it has (the names
/// are mostly static strings, see [`Name`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Element {
    name: Name,
    ns: Name,
    /// Attribute names in document order, each with the end of its value in `text`.
    attrs: Vec<(Name, usize)>,
    /// The attribute values, then the character data (already unescaped), concatenated.
    text: String,
    /// Child elements in order, each with the offset in `text` where it stands among the
    /// character data.
    children: Vec<(usize, Element)>,
}

/// The static copy of a common XMPP name, namespace or attribute key, or an owned one.
pub(crate) fn intern(s: &str) -> Name {
    intern_prefixed(s, prefix(s.as_bytes()))
}

/// [`intern`] when [`prefix`] of `s` is already known.
pub(crate) fn intern_prefixed(s: &str, head: u64) -> Name {
    match known(s, head) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(s.to_owned()),
    }
}

/// [`intern`] for a string that may already be owned: no second copy when it is not known.
pub(crate) fn intern_cow(s: Cow<'_, str>) -> Name {
    match known(&s, prefix(s.as_bytes())) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(s.into_owned()),
    }
}

/// A well-known string with the first 8 bytes packed into an integer.
type Known = (u64, &'static str);

/// The first (up to) 8 bytes of `b`, little-endian, zero-padded: a cheap first comparison of
/// short names.
pub(crate) const fn prefix(b: &[u8]) -> u64 {
    let mut x = 0;
    let mut i = 0;
    while i < b.len() && i < 8 {
        x |= (b[i] as u64) << (8 * i);
        i += 1;
    }
    x
}

const fn k(s: &'static str) -> Known {
    (prefix(s.as_bytes()), s)
}

/// Common XMPP names, namespaces and attribute keys, by length: an unknown string costs one
/// bounds check or a few integer comparisons.
const KNOWN_BY_LEN: &[&[Known]] = &[
    /*  0 */ &[],
    /*  1 */ &[k("x"), k("c")],
    /*  2 */ &[k("to"), k("id"), k("iq"), k("FN")],
    /*  3 */ &[k("jid"), k("ask"), k("ver")],
    /*  4 */
    &[
        k("from"),
        k("type"),
        k("body"),
        k("item"),
        k("name"),
        k("show"),
        k("text"),
        k("gone"),
        k("nick"),
        k("ping"),
        k("TYPE"),
        k("bind"),
        k("hash"),
        k("node"),
    ],
    /*  5 */
    &[
        k("group"),
        k("error"),
        k("query"),
        k("delay"),
        k("stamp"),
        k("photo"),
        k("vCard"),
        k("PHOTO"),
    ],
    /*  6 */
    &[
        k("status"),
        k("thread"),
        k("active"),
        k("paused"),
        k("BINVAL"),
        k("stream"),
    ],
    /*  7 */ &[k("message"), k("subject")],
    /*  8 */
    &[
        k("presence"),
        k("priority"),
        k("xml:lang"),
        k("inactive"),
        k("NICKNAME"),
        k("resource"),
        k("features"),
    ],
    /*  9 */ &[k("composing")],
    /* 10 */ &[k(ns::VCARD)],
    /* 11 */ &[],
    /* 12 */ &[k("subscription")],
    /* 13 */ &[k(ns::CLIENT), k(ns::PING)],
    /* 14 */ &[k(ns::DELAY), k("jabber:x:delay")],
    /* 15 */ &[],
    /* 16 */ &[k(ns::ROSTER)],
    /* 17 */ &[k("urn:xmpp:receipts")],
    /* 18 */ &[],
    /* 19 */ &[k("vcard-temp:x:update")],
    /* 20 */ &[],
    /* 21 */ &[],
    /* 22 */ &[],
    /* 23 */ &[],
    /* 24 */ &[],
    /* 25 */ &[],
    /* 26 */ &[],
    /* 27 */ &[],
    /* 28 */ &[],
    /* 29 */ &[],
    /* 30 */ &[],
    /* 31 */
    &[
        k(ns::TLS),
        k(ns::NICK),
        k("http://jabber.org/protocol/caps"),
    ],
    /* 32 */ &[k(ns::STREAM), k(ns::SASL), k(ns::BIND)],
    /* 33 */ &[],
    /* 34 */ &[],
    /* 35 */ &[k(ns::STANZAS), k(ns::STREAMS), k(ns::SESSION)],
    /* 36 */ &[],
    /* 37 */ &[k(ns::CHATSTATES)],
];

/// The static copy of `s` (whose [`prefix`] is `head`) if it is a common XMPP name, namespace
/// or attribute key.
fn known(s: &str, head: u64) -> Option<&'static str> {
    let b = s.as_bytes();
    let candidates = KNOWN_BY_LEN.get(b.len())?;
    // Up to 8 bytes the prefix is the whole string.
    candidates
        .iter()
        .find(|(p, k)| *p == head && (b.len() <= 8 || k.as_bytes() == b))
        .map(|(_, k)| *k)
}

/// A child of an [`Element`], as [`Element::nodes`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node<'a> {
    /// A child element.
    Element(&'a Element),
    /// Character data (already unescaped; adjacent text is one node).
    Text(&'a str),
}

impl Element {
    /// A new empty element `<name xmlns='ns'/>`.
    pub fn new(name: impl Into<Name>, ns: impl Into<Name>) -> Self {
        Self {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            text: String::new(),
            children: Vec::new(),
        }
    }

    /// An element as the parser builds it: attribute names with the end of their value in
    /// `text` (checked for duplicates), then the character data, and the children with their
    /// offsets in `text`.
    pub(crate) fn from_parts(
        name: Name,
        ns: Name,
        attrs: Vec<(Name, usize)>,
        text: String,
        children: Vec<(usize, Element)>,
    ) -> Self {
        Self {
            name,
            ns,
            attrs,
            text,
            children,
        }
    }

    /// The parser appends character data here (after the attribute values).
    pub(crate) fn text_mut(&mut self) -> &mut String {
        &mut self.text
    }

    /// The local name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace URI.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Whether this element is `name` in namespace `ns`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// Where the character data starts in `text`: after the last attribute value.
    fn text_start(&self) -> usize {
        self.attrs.last().map_or(0, |(_, end)| *end)
    }

    /// The range in `text` of the value of attribute number `i`.
    fn value_range(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.attrs[i - 1].1 };
        start..self.attrs[i].1
    }

    /// The value of attribute `name` (unprefixed, or `xml:lang` style with its prefix).
    pub fn attr(&self, name: &str) -> Option<&str> {
        let i = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(&self.text[self.value_range(i)])
    }

    /// All attributes in document order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.attrs.iter().map(move |(k, end)| {
            let value = &self.text[start..*end];
            start = *end;
            (k.as_ref(), value)
        })
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: impl Into<Name>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        let (range, from) = match self.attrs.iter().position(|(k, _)| *k == name) {
            Some(i) => (self.value_range(i), i),
            None => {
                let end = self.text_start();
                self.attrs.push((name, end));
                (end..end, self.attrs.len() - 1)
            }
        };
        let shift = value.len().wrapping_sub(range.len());
        self.text.replace_range(range, &value);
        // Everything after the value moves by the change in its length.
        for (_, end) in &mut self.attrs[from..] {
            *end = end.wrapping_add(shift);
        }
        for (at, _) in &mut self.children {
            *at = at.wrapping_add(shift);
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
        self.children.push((self.text.len(), child));
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
        if self.text.is_empty() {
            self.text = text;
        } else {
            self.text.push_str(&text);
        }
    }

    /// Builder form of [`Element::push_text`].
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text);
        self
    }

    /// All child nodes in document order: elements, and the text between them.
    pub fn nodes(&self) -> impl Iterator<Item = Node<'_>> {
        let mut at = self.text_start();
        let mut children = self.children.iter();
        let mut next = children.next();
        std::iter::from_fn(move || {
            let upto = next.map_or(self.text.len(), |(pos, _)| *pos);
            if at < upto {
                let text = &self.text[at..upto];
                at = upto;
                return Some(Node::Text(text));
            }
            let (_, child) = next?;
            next = children.next();
            Some(Node::Element(child))
        })
    }

    /// Child elements in order.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().map(|(_, e)| e)
    }

    /// The first child element `name` in namespace `ns`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(name, ns))
    }

    /// The concatenated text content of this element's direct text children.
    pub fn text(&self) -> String {
        self.text_ref().to_owned()
    }

    /// The text of child `name` in `ns`, if that child exists.
    pub fn child_text(&self, name: &str, ns: &str) -> Option<String> {
        self.child(name, ns).map(Element::text)
    }

    /// [`Element::text`] without a copy.
    pub(crate) fn text_ref(&self) -> &str {
        &self.text[self.text_start()..]
    }

    /// [`Element::text`] of an element given up: moved out, not copied, when it has no
    /// attributes.
    pub(crate) fn into_text(mut self) -> String {
        match self.text_start() {
            0 => self.text,
            start => self.text.split_off(start),
        }
    }

    /// Gives up this element's children (for typed stanzas that keep a child by value).
    pub(crate) fn into_children(self) -> impl Iterator<Item = Element> {
        self.children.into_iter().map(|(_, e)| e)
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
        for (k, v) in self.attrs() {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            escape_into(out, v);
            out.push('\'');
        }
        if self.children.is_empty() && self.text_ref().is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for node in self.nodes() {
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
        self.write_to(&mut out, ns::CLIENT);
        out
    }
}

impl std::fmt::Debug for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Attrs<'a>(&'a Element);
        impl std::fmt::Debug for Attrs<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_list().entries(self.0.attrs()).finish()
            }
        }
        struct Nodes<'a>(&'a Element);
        impl std::fmt::Debug for Nodes<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_list().entries(self.0.nodes()).finish()
            }
        }
        f.debug_struct("Element")
            .field("name", &self.name)
            .field("ns", &self.ns)
            .field("attrs", &Attrs(self))
            .field("children", &Nodes(self))
            .finish()
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
        let el = Element::new("message", ns::CLIENT)
            .with_attr("to", "bob@example.org")
            .with_child(Element::new("body", ns::CLIENT).with_text("a < b & 'c'"))
            .with_child(Element::new("active", ns::CHATSTATES));
        assert_eq!(
            el.to_xml(),
            "<message to='bob@example.org'><body>a &lt; b &amp; &apos;c&apos;</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        );
    }

    #[test]
    fn known_names_are_filed_under_their_length() {
        for (len, bucket) in KNOWN_BY_LEN.iter().enumerate() {
            for (_, k) in *bucket {
                assert_eq!(k.len(), len, "{k}");
                assert!(matches!(intern(k), Cow::Borrowed(_)), "{k}");
            }
        }
        for k in [
            ns::CLIENT,
            ns::CHATSTATES,
            ns::DELAY,
            ns::ROSTER,
            ns::VCARD,
            "xml:lang",
        ] {
            assert!(matches!(intern(k), Cow::Borrowed(_)), "{k}");
        }
        assert!(matches!(intern("urn:x:unknown"), Cow::Owned(_)));
        assert!(matches!(intern(&"y".repeat(500)), Cow::Owned(_)));
    }

    #[test]
    fn adjacent_text_is_merged() {
        let el = Element::new("body", ns::CLIENT)
            .with_text("a")
            .with_text("b");
        assert_eq!(el.nodes().count(), 1);
        assert_eq!(el.text(), "ab");
    }
}
