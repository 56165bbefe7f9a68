//! The incoming XML stream, sans I/O: bytes in, stream header / stanzas / close out.
//!
//! XMPP is one long XML document whose root (`<stream:stream>`) never closes until the session
//! ends; every depth-1 child is a stanza or nonza (RFC 6120 §4.1). [`StreamParser`] frames the
//! bytes into complete depth-1 children with a small quote-aware scanner, enforcing the limits a
//! server-facing parser needs (stanza size, nesting depth), and then parses each complete stanza
//! into an [`Element`] with quick-xml. RFC 6120 §11.1 restricted XML is enforced: comments,
//! processing instructions, DTDs and entity references other than the five predefined ones and
//! character references are rejected. Invalid UTF-8 is an error.
//!
//! Being sans I/O, this module never blocks and never loses state between reads: the session's
//! reader task feeds it whatever the socket gave and drains events until it needs more bytes.

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::element::Element;
use crate::ns;

/// Limits on what one peer may send.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Maximum size of one stanza in bytes (RFC 6120 §13.12: at least 10,000 must be accepted).
    pub max_stanza_bytes: usize,
    /// Maximum element nesting inside one stanza (the stanza itself is depth 1).
    pub max_depth: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
        }
    }
}

/// The attributes of the peer's `<stream:stream>` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// `from`: the server's domain.
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `id`: the stream id.
    pub id: Option<String>,
    /// `version`, `1.0` for RFC 6120 streams.
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// The default namespace of the stream content (`jabber:client`).
    pub default_ns: String,
}

/// What the parser found in the bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The peer opened (or re-opened, after a restart) the stream.
    Open(StreamHeader),
    /// A complete depth-1 element: a stanza or a nonza such as `<stream:features/>`.
    Stanza(Element),
    /// The peer closed the stream (`</stream:stream>`).
    Close,
}

/// Why the stream is unacceptable. Each maps to an RFC 6120 §4.9.3 stream error condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Comments, processing instructions, DTDs or non-predefined entities (`restricted-xml`).
    #[error("restricted XML: {0} is not allowed in an XMPP stream")]
    Restricted(&'static str),
    /// One stanza exceeded [`StreamLimits::max_stanza_bytes`] (`policy-violation`).
    #[error("stanza larger than the limit of {limit} bytes")]
    StanzaTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// Elements nested deeper than [`StreamLimits::max_depth`] (`policy-violation`).
    #[error("elements nested deeper than the limit of {limit}")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// Bytes that are not UTF-8 (`unsupported-encoding`).
    #[error("the stream is not valid UTF-8")]
    InvalidUtf8,
    /// Not well-formed XML (`not-well-formed` / `bad-format`).
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The document element is not `<stream:stream>` in the streams namespace
    /// (`invalid-namespace`).
    #[error("not an XMPP stream: {0}")]
    NotAStream(String),
}

impl XmlError {
    /// The RFC 6120 §4.9.3 condition to report to the peer.
    pub fn condition(&self) -> &'static str {
        match self {
            Self::Restricted(_) => "restricted-xml",
            Self::StanzaTooLarge { .. } | Self::TooDeep { .. } => "policy-violation",
            Self::InvalidUtf8 => "unsupported-encoding",
            Self::Malformed(_) => "not-well-formed",
            Self::NotAStream(_) => "invalid-namespace",
        }
    }
}

/// Incremental parser for one direction of one XMPP stream. See the module docs.
#[derive(Debug)]
pub struct StreamParser {
    limits: StreamLimits,
    buf: Vec<u8>,
    /// Scan position in `buf`: everything before it is consumed or part of the current stanza.
    pos: usize,
    /// 0 before the header, 1 inside the stream, 2+ inside a stanza.
    depth: usize,
    /// Offset in `buf` where the current stanza began.
    stanza_start: Option<usize>,
    /// Names of the elements open inside the current stanza, as (offset, length) in `buf`, so
    /// a mismatched end tag is caught at once instead of when the stanza never completes.
    open: Vec<(usize, usize)>,
    header: Option<StreamHeader>,
    closed: bool,
    failed: Option<XmlError>,
}

impl StreamParser {
    /// A parser expecting a stream header.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            buf: Vec::with_capacity(4096),
            pos: 0,
            depth: 0,
            stanza_start: None,
            open: Vec::new(),
            header: None,
            closed: false,
            failed: None,
        }
    }

    /// Forgets everything and expects a new stream header (RFC 6120 §4.3.3 stream restart,
    /// after STARTTLS and after SASL success). Bytes already buffered are kept: the peer may have
    /// sent its new header in the same segment as `<success/>`.
    pub fn restart(&mut self) {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.depth = 0;
        self.stanza_start = None;
        self.open.clear();
        self.header = None;
        self.closed = false;
    }

    /// Bytes received but not yet parsed. Must be empty when TLS starts (RFC 6120 §5.4.3.3:
    /// the server sends nothing after `<proceed/>` before the handshake).
    pub fn has_pending_bytes(&self) -> bool {
        self.buf[self.pos..]
            .iter()
            .any(|b| !b.is_ascii_whitespace())
    }

    /// The peer's current stream header, once seen.
    pub fn header(&self) -> Option<&StreamHeader> {
        self.header.as_ref()
    }

    /// Feeds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        // Drop what is fully consumed before growing the buffer.
        let keep_from = self.stanza_start.unwrap_or(self.pos);
        if keep_from > 0 && keep_from >= self.buf.len() / 2 {
            self.buf.drain(..keep_from);
            self.pos -= keep_from;
            if let Some(s) = &mut self.stanza_start {
                *s -= keep_from;
            }
            for (start, _) in &mut self.open {
                *start -= keep_from;
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, `Ok(None)` when more bytes are needed. After an error every
    /// further call returns the same error: the stream is dead.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.scan();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn scan(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        loop {
            if self.closed {
                return Ok(None);
            }
            let Some(rel) = memchr::memchr(b'<', &self.buf[self.pos..]) else {
                self.check_text(self.buf.len())?;
                self.pos = self.buf.len();
                self.check_size(self.buf.len())?;
                return Ok(None);
            };
            let lt = self.pos + rel;
            self.check_text(lt)?;
            self.pos = lt;
            let rest = &self.buf[lt + 1..];
            let Some(&first) = rest.first() else {
                return Ok(None);
            };
            match first {
                b'!' => {
                    const CDATA: &[u8] = b"[CDATA[";
                    let after = &rest[1..];
                    let n = after.len().min(CDATA.len());
                    if after[..n] != CDATA[..n] {
                        // `<!--`, `<!DOCTYPE`, `<!ENTITY`: never allowed (RFC 6120 §11.1).
                        // Only a comment starts with `<!-`; decide on the first byte so the
                        // answer does not depend on where a read ended.
                        return Err(XmlError::Restricted(if after.starts_with(b"-") {
                            "a comment"
                        } else {
                            "a DTD"
                        }));
                    }
                    if n < CDATA.len() {
                        return self.need_more(lt);
                    }
                    if self.depth < 2 {
                        return Err(XmlError::Malformed(
                            "character data outside a stanza".into(),
                        ));
                    }
                    let body = lt + 2 + CDATA.len();
                    match memchr::memmem::find(&self.buf[body..], b"]]>") {
                        Some(end) => self.pos = body + end + 3,
                        None => return self.need_more(lt),
                    }
                }
                b'?' => {
                    // Only the XML declaration may appear, and only before the stream header
                    // (RFC 6120 §11.1): decide as soon as the bytes allow, without waiting for `?>`.
                    let target = &rest[1..];
                    let n = target.len().min(3);
                    let decl_so_far = self.depth == 0 && target[..n] == b"xml"[..n];
                    if !decl_so_far
                        || target
                            .get(3)
                            .is_some_and(|b| !b.is_ascii_whitespace() && *b != b'?')
                    {
                        return Err(XmlError::Restricted("a processing instruction"));
                    }
                    match memchr::memmem::find(target, b"?>") {
                        Some(end) if end >= 3 => self.pos = lt + 2 + end + 2,
                        Some(_) => return Err(XmlError::Restricted("a processing instruction")),
                        None => return self.need_more(lt),
                    }
                }
                b'/' => {
                    let Some(gt) = find_tag_end(&self.buf, lt + 2) else {
                        return self.need_more(lt);
                    };
                    self.pos = gt + 1;
                    if self.depth >= 2 {
                        let (start, len) = self.open.pop().unwrap_or((0, 0));
                        let name = trim_ascii_end(&self.buf[lt + 2..gt]);
                        if name != &self.buf[start..start + len] {
                            return Err(XmlError::Malformed(format!(
                                "end tag </{}> does not match <{}>",
                                String::from_utf8_lossy(name),
                                String::from_utf8_lossy(&self.buf[start..start + len])
                            )));
                        }
                    }
                    match self.depth {
                        0 => return Err(XmlError::Malformed("end tag before the stream".into())),
                        1 => {
                            self.depth = 0;
                            self.closed = true;
                            self.validate_stream_end(lt + 2, gt)?;
                            return Ok(Some(StreamEvent::Close));
                        }
                        2 => {
                            self.depth = 1;
                            return self.finish_stanza(gt + 1).map(Some);
                        }
                        _ => self.depth -= 1,
                    }
                }
                _ => {
                    let Some(gt) = find_tag_end(&self.buf, lt + 1) else {
                        return self.need_more(lt);
                    };
                    let empty = self.buf[gt - 1] == b'/';
                    self.pos = gt + 1;
                    match self.depth {
                        0 => {
                            if empty {
                                return Err(XmlError::NotAStream("empty stream header".into()));
                            }
                            let header = self.parse_header(lt, gt + 1)?;
                            self.depth = 1;
                            self.header = Some(header.clone());
                            return Ok(Some(StreamEvent::Open(header)));
                        }
                        1 => {
                            self.stanza_start = Some(lt);
                            if empty {
                                return self.finish_stanza(gt + 1).map(Some);
                            }
                            self.open.push(tag_name(&self.buf, lt + 1, gt));
                            self.depth = 2;
                        }
                        d => {
                            if !empty {
                                if d > self.limits.max_depth {
                                    return Err(XmlError::TooDeep {
                                        limit: self.limits.max_depth,
                                    });
                                }
                                self.open.push(tag_name(&self.buf, lt + 1, gt));
                                self.depth += 1;
                            }
                        }
                    }
                }
            }
            self.check_size(self.pos)?;
        }
    }

    /// Waits for more bytes for a construct starting at `from`, within the size limit.
    fn need_more(&self, from: usize) -> Result<Option<StreamEvent>, XmlError> {
        let start = self.stanza_start.unwrap_or(from);
        if self.buf.len() - start > self.limits.max_stanza_bytes {
            return Err(XmlError::StanzaTooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        }
        Ok(None)
    }

    fn check_size(&self, upto: usize) -> Result<(), XmlError> {
        if let Some(start) = self.stanza_start
            && upto - start > self.limits.max_stanza_bytes
        {
            return Err(XmlError::StanzaTooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        }
        Ok(())
    }

    /// Between stanzas only whitespace (keepalives) may appear.
    fn check_text(&self, upto: usize) -> Result<(), XmlError> {
        if self.depth <= 1 && !self.buf[self.pos..upto].iter().all(u8::is_ascii_whitespace) {
            return Err(XmlError::Malformed("text outside a stanza".into()));
        }
        Ok(())
    }

    fn finish_stanza(&mut self, end: usize) -> Result<StreamEvent, XmlError> {
        let Some(start) = self.stanza_start.take() else {
            return Err(XmlError::Malformed("stanza end without a start".into()));
        };
        // A stanza that arrived whole in one read was never checked while it grew.
        if end - start > self.limits.max_stanza_bytes {
            return Err(XmlError::StanzaTooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        }
        let text = std::str::from_utf8(&self.buf[start..end]).map_err(|_| XmlError::InvalidUtf8)?;
        let default_ns = self
            .header
            .as_ref()
            .map_or(ns::CLIENT, |h| h.default_ns.as_str());
        let element = parse_element(text, default_ns)?;
        Ok(StreamEvent::Stanza(element))
    }

    fn parse_header(&self, start: usize, end: usize) -> Result<StreamHeader, XmlError> {
        if end - start > self.limits.max_stanza_bytes {
            return Err(XmlError::StanzaTooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        }
        let text = std::str::from_utf8(&self.buf[start..end]).map_err(|_| XmlError::InvalidUtf8)?;
        let mut reader = Reader::from_str(text);
        let tag = match reader.read_event() {
            Ok(Event::Start(tag)) => tag,
            Ok(other) => return Err(XmlError::NotAStream(format!("unexpected {other:?}"))),
            Err(e) => return Err(XmlError::Malformed(e.to_string())),
        };
        let mut header = StreamHeader {
            default_ns: String::new(),
            ..Default::default()
        };
        let mut prefixes: Vec<(String, String)> = Vec::new();
        for attr in tag.attributes() {
            let attr = attr.map_err(|e| XmlError::Malformed(e.to_string()))?;
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| XmlError::Malformed(e.to_string()))?
                .into_owned();
            match attr.key.0 {
                "xmlns" => header.default_ns = value,
                "from" => header.from = Some(value),
                "to" => header.to = Some(value),
                "id" => header.id = Some(value),
                "version" => header.version = Some(value),
                "xml:lang" => header.lang = Some(value),
                k => {
                    if let Some(p) = k.strip_prefix("xmlns:") {
                        prefixes.push((p.to_owned(), value));
                    }
                }
            }
        }
        let qname = tag.name();
        let (prefix, local) = split_qname(qname.0);
        let resolved = match prefix {
            None => Some(header.default_ns.as_str()),
            Some(p) => prefixes
                .iter()
                .find(|(k, _)| k == p)
                .map(|(_, v)| v.as_str()),
        };
        if local != "stream" || resolved != Some(ns::STREAM) {
            return Err(XmlError::NotAStream(format!(
                "document element is <{}>",
                qname.0
            )));
        }
        if header.default_ns.is_empty() {
            header.default_ns = ns::CLIENT.to_owned();
        }
        Ok(header)
    }

    fn validate_stream_end(&self, name_start: usize, gt: usize) -> Result<(), XmlError> {
        let name =
            std::str::from_utf8(&self.buf[name_start..gt]).map_err(|_| XmlError::InvalidUtf8)?;
        if split_qname(name.trim()).1 != "stream" {
            return Err(XmlError::Malformed(format!(
                "unexpected end tag </{}>",
                name.trim()
            )));
        }
        Ok(())
    }
}

/// Finds the `>` closing the tag whose name starts at `from`, skipping quoted attribute values.
fn find_tag_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let rel = memchr::memchr3(b'>', b'"', b'\'', &buf[i..])?;
        let at = i + rel;
        match buf[at] {
            b'>' => return Some(at),
            quote => {
                let close = memchr::memchr(quote, &buf[at + 1..])?;
                i = at + 1 + close + 1;
            }
        }
    }
}

/// The (offset, length) of the name of the start tag whose name begins at `from`.
fn tag_name(buf: &[u8], from: usize, gt: usize) -> (usize, usize) {
    let len = buf[from..gt]
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>')
        .unwrap_or(gt - from);
    (from, len)
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

fn split_qname(q: &str) -> (Option<&str>, &str) {
    match q.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, q),
    }
}

/// One namespace declaration in scope while parsing a stanza.
struct Binding {
    prefix: String,
    uri: String,
    /// Nesting level of the element that declared it.
    level: usize,
}

/// Parses one complete, framed stanza. `default_ns` is the stream's default namespace; the
/// `stream` and `xml` prefixes are always bound (stanzas such as `<stream:error>` use them).
pub fn parse_element(text: &str, default_ns: &str) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(text);
    // Declarations made inside the stanza; the stream's own bindings are the fallback.
    let mut scope: Vec<Binding> = Vec::new();
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            Event::Start(tag) => {
                let el = start_element(&tag, &mut scope, stack.len() + 1, default_ns)?;
                stack.push(el);
            }
            Event::Empty(tag) => {
                let level = stack.len() + 1;
                let el = start_element(&tag, &mut scope, level, default_ns)?;
                scope.retain(|b| b.level < level);
                match stack.last_mut() {
                    Some(parent) => parent.push_child(el),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                let level = stack.len();
                scope.retain(|b| b.level < level);
                let Some(el) = stack.pop() else {
                    return Err(XmlError::Malformed("unbalanced end tag".into()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.push_child(el),
                    None => return Ok(el),
                }
            }
            Event::Text(t) => {
                if let Some(el) = stack.last_mut() {
                    el.push_text(t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(el) = stack.last_mut() {
                    el.push_text(t.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => {
                            return Err(XmlError::Malformed(format!(
                                "bad character reference &{};",
                                &*r
                            )));
                        }
                    }
                } else {
                    match quick_xml::escape::resolve_predefined_entity(&r) {
                        Some(s) => s.to_owned(),
                        None => return Err(XmlError::Restricted("an undeclared entity reference")),
                    }
                };
                if let Some(el) = stack.last_mut() {
                    el.push_text(resolved);
                }
            }
            Event::Comment(_) => return Err(XmlError::Restricted("a comment")),
            Event::PI(_) | Event::Decl(_) => {
                return Err(XmlError::Restricted("a processing instruction"));
            }
            Event::DocType(_) => return Err(XmlError::Restricted("a DTD")),
            Event::Eof => return Err(XmlError::Malformed("stanza ended early".into())),
        }
    }
}

fn start_element(
    tag: &BytesStart<'_>,
    scope: &mut Vec<Binding>,
    level: usize,
    default_ns: &str,
) -> Result<Element, XmlError> {
    let qname = tag.name();
    let (prefix, local) = split_qname(qname.0);
    let mut el = Element::new(super::element::intern(local), "");
    for attr in tag.attributes() {
        let attr = attr.map_err(|e| XmlError::Malformed(e.to_string()))?;
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| match e {
                quick_xml::Error::Escape(_) => {
                    XmlError::Restricted("an undeclared entity reference")
                }
                other => XmlError::Malformed(other.to_string()),
            })?
            .into_owned();
        let key = attr.key.0;
        if key == "xmlns" {
            scope.push(Binding {
                prefix: String::new(),
                uri: value,
                level,
            });
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            scope.push(Binding {
                prefix: p.to_owned(),
                uri: value,
                level,
            });
        } else {
            el.push_attr(super::element::intern(key), value);
        }
    }
    let prefix = prefix.unwrap_or("");
    let uri = match scope.iter().rev().find(|b| b.prefix == prefix) {
        Some(b) => b.uri.as_str(),
        None => match prefix {
            "" => default_ns,
            "stream" => ns::STREAM,
            "xml" => ns::XML,
            other => {
                return Err(XmlError::Malformed(format!(
                    "undeclared namespace prefix '{other}'"
                )));
            }
        },
    };
    el.set_ns(uri);
    Ok(el)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='s1' \
        version='1.0'>";

    fn parser_with(input: &str) -> StreamParser {
        let mut p = StreamParser::new(StreamLimits::default());
        p.push(input.as_bytes());
        p
    }

    fn all_events(p: &mut StreamParser) -> Result<Vec<StreamEvent>, XmlError> {
        let mut out = Vec::new();
        while let Some(e) = p.next_event()? {
            out.push(e);
        }
        Ok(out)
    }

    fn first_stanza(body: &str) -> Result<Element, XmlError> {
        let mut p = parser_with(&format!("{HEADER}{body}"));
        let events = all_events(&mut p)?;
        match events.into_iter().nth(1) {
            Some(StreamEvent::Stanza(el)) => Ok(el),
            other => panic!("no stanza: {other:?}"),
        }
    }

    #[test]
    fn parses_header_stanzas_and_close() {
        let mut p = parser_with(&format!(
            "{HEADER}<message to='a@b' type='chat'><body>hi &amp; bye &#x263A;</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message> \n\
             <presence/></stream:stream>"
        ));
        let events = all_events(&mut p).unwrap();
        assert_eq!(events.len(), 4);
        let StreamEvent::Open(h) = &events[0] else {
            panic!()
        };
        assert_eq!(h.from.as_deref(), Some("example.org"));
        assert_eq!(h.id.as_deref(), Some("s1"));
        assert_eq!(h.default_ns, ns::CLIENT);
        let StreamEvent::Stanza(m) = &events[1] else {
            panic!()
        };
        assert!(m.is("message", ns::CLIENT));
        assert_eq!(m.attr("type"), Some("chat"));
        assert_eq!(
            m.child_text("body", ns::CLIENT).as_deref(),
            Some("hi & bye ☺")
        );
        assert!(m.child("active", ns::CHATSTATES).is_some());
        assert_eq!(
            events[2],
            StreamEvent::Stanza(Element::new("presence", ns::CLIENT))
        );
        assert_eq!(events[3], StreamEvent::Close);
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let input = format!(
            "{HEADER}<iq type='result' id='r1'><query xmlns='jabber:iq:roster'>\
             <item jid='b@x' name='B &apos;b&apos;'><group>G</group></item></query></iq>\
             <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        );
        let whole = all_events(&mut parser_with(&input)).unwrap();
        let mut p = StreamParser::new(StreamLimits::default());
        let mut pieces = Vec::new();
        for b in input.as_bytes() {
            p.push(std::slice::from_ref(b));
            pieces.extend(all_events(&mut p).unwrap());
        }
        assert_eq!(whole, pieces);
        let StreamEvent::Stanza(f) = &whole[2] else {
            panic!()
        };
        assert!(f.is("features", ns::STREAM));
        assert!(f.child("bind", ns::BIND).is_some());
        let StreamEvent::Stanza(iq) = &whole[1] else {
            panic!()
        };
        let item = iq
            .child("query", ns::ROSTER)
            .unwrap()
            .child("item", ns::ROSTER)
            .unwrap();
        assert_eq!(item.attr("name"), Some("B 'b'"));
    }

    #[test]
    fn prefixed_namespaces_resolve_and_go_out_of_scope() {
        let el =
            first_stanza("<message><x:a xmlns:x='urn:x'><x:b/></x:a><c/><stream:error/></message>")
                .unwrap();
        let a = el.child("a", "urn:x").unwrap();
        assert!(a.child("b", "urn:x").is_some());
        assert!(el.child("c", ns::CLIENT).is_some());
        assert!(el.child("error", ns::STREAM).is_some());
        assert!(matches!(
            first_stanza("<message><y:a/></message>"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn cdata_and_quoted_gt_in_attributes() {
        let el = first_stanza("<message id='a>b' x=\"'\"><body><![CDATA[<b>&]]></body></message>")
            .unwrap();
        assert_eq!(el.attr("id"), Some("a>b"));
        assert_eq!(el.attr("x"), Some("'"));
        assert_eq!(el.child_text("body", ns::CLIENT).as_deref(), Some("<b>&"));
    }

    #[test]
    fn billion_laughs_doctype_is_restricted() {
        let input = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>\
            <!ENTITY lol2 '&lol;&lol;&lol;'>]><stream:stream>&lol2;";
        let mut p = parser_with(input);
        assert_eq!(all_events(&mut p), Err(XmlError::Restricted("a DTD")));
        // The error sticks: the stream is dead.
        assert!(p.next_event().is_err());
    }

    #[test]
    fn doctype_inside_a_stanza_is_restricted() {
        assert_eq!(
            first_stanza("<message><!DOCTYPE x [<!ENTITY e 'boom'>]></message>"),
            Err(XmlError::Restricted("a DTD"))
        );
    }

    #[test]
    fn comments_pis_and_unknown_entities_are_restricted() {
        assert_eq!(
            first_stanza("<message><!-- c --></message>"),
            Err(XmlError::Restricted("a comment"))
        );
        assert_eq!(
            first_stanza("<message><?php x?></message>"),
            Err(XmlError::Restricted("a processing instruction"))
        );
        assert_eq!(
            first_stanza("<message><body>&lol;</body></message>"),
            Err(XmlError::Restricted("an undeclared entity reference"))
        );
        assert_eq!(
            first_stanza("<message id='&lol;'/>"),
            Err(XmlError::Restricted("an undeclared entity reference"))
        );
    }

    #[test]
    fn oversized_stanza_is_refused_before_it_completes() {
        let mut p = StreamParser::new(StreamLimits {
            max_stanza_bytes: 1000,
            max_depth: 32,
        });
        p.push(HEADER.as_bytes());
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Open(_)))));
        p.push(b"<message><body>");
        assert_eq!(p.next_event(), Ok(None));
        for _ in 0..20 {
            p.push(&[b'a'; 100]);
            if let Err(e) = p.next_event() {
                assert_eq!(e, XmlError::StanzaTooLarge { limit: 1000 });
                return;
            }
        }
        panic!("limit not enforced");
    }

    #[test]
    fn unclosed_attribute_is_bounded_too() {
        let mut p = StreamParser::new(StreamLimits {
            max_stanza_bytes: 1000,
            max_depth: 32,
        });
        p.push(HEADER.as_bytes());
        p.push(b"<message id='");
        p.push(&[b'x'; 2000]);
        assert_eq!(
            all_events(&mut p),
            Err(XmlError::StanzaTooLarge { limit: 1000 })
        );
    }

    #[test]
    fn nesting_depth_is_capped() {
        let limits = StreamLimits {
            max_stanza_bytes: 1 << 20,
            max_depth: 4,
        };
        let mut ok = StreamParser::new(limits);
        ok.push(format!("{HEADER}<a><b><c><d/></c></b></a>").as_bytes());
        assert_eq!(all_events(&mut ok).unwrap().len(), 2);
        let mut deep = StreamParser::new(limits);
        deep.push(format!("{HEADER}<a><b><c><d><e>").as_bytes());
        assert_eq!(all_events(&mut deep), Err(XmlError::TooDeep { limit: 4 }));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut p = parser_with(HEADER);
        p.push(b"<message><body>\xff\xfe</body></message>");
        assert_eq!(all_events(&mut p), Err(XmlError::InvalidUtf8));
    }

    #[test]
    fn malformed_xml_is_an_error() {
        assert!(matches!(
            first_stanza("<message></presence>"),
            Err(XmlError::Malformed(_))
        ));
        let mut p = parser_with(HEADER);
        p.push(b"text at the top");
        p.push(b"<presence/>");
        assert!(matches!(all_events(&mut p), Err(XmlError::Malformed(_))));
    }

    #[test]
    fn mismatched_end_tag_is_caught_before_the_stanza_ends() {
        let mut p = parser_with(HEADER);
        p.push(b"<message><body>x</presence>");
        let err = all_events(&mut p).unwrap_err();
        assert!(
            matches!(&err, XmlError::Malformed(m) if m.contains("</presence>")),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_root_is_not_a_stream() {
        let mut p = parser_with("<html><body/></html>");
        assert!(matches!(all_events(&mut p), Err(XmlError::NotAStream(_))));
        let mut p = parser_with("<stream:stream xmlns:stream='urn:wrong'>");
        assert!(matches!(all_events(&mut p), Err(XmlError::NotAStream(_))));
    }

    #[test]
    fn a_cut_stanza_waits_for_more_bytes() {
        let mut p = parser_with(&format!("{HEADER}<message><body>half"));
        assert_eq!(all_events(&mut p).unwrap().len(), 1);
        p.push(b" more</body></message>");
        let events = all_events(&mut p).unwrap();
        let StreamEvent::Stanza(m) = &events[0] else {
            panic!()
        };
        assert_eq!(
            m.child_text("body", ns::CLIENT).as_deref(),
            Some("half more")
        );
    }

    #[test]
    fn restart_expects_a_new_header_and_keeps_buffered_bytes() {
        let mut p = parser_with(&format!(
            "{HEADER}<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
        ));
        assert_eq!(all_events(&mut p).unwrap().len(), 2);
        p.push(HEADER.as_bytes());
        p.restart();
        let events = all_events(&mut p).unwrap();
        assert!(matches!(events[0], StreamEvent::Open(_)));
    }

    #[test]
    fn buffer_is_compacted_between_stanzas() {
        let mut p = parser_with(HEADER);
        all_events(&mut p).unwrap();
        for _ in 0..10_000 {
            p.push(b"<presence/> ");
            assert_eq!(all_events(&mut p).unwrap().len(), 1);
        }
        assert!(
            p.buf.capacity() < 64 * 1024,
            "buffer grew to {}",
            p.buf.capacity()
        );
    }
}
