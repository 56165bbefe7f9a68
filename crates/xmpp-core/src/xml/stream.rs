//! The incoming XML stream, sans I/O: bytes in, stream header / stanzas / close out.
//!
//! XMPP is one long XML document whose root (`<stream:stream>`) never closes until the session
//! ends; every depth-1 child is a stanza or nonza (RFC 6120 §4.1). [`StreamParser`] scans the
//! bytes once with a small quote-aware scanner that finds every tag, enforces the limits a
//! server-facing parser needs (stanza size, nesting depth, matching end tags) and notes where
//! each tag and run of text lies; when the stanza's end tag arrives, the stanza is checked for
//! UTF-8 once and its [`Element`] is built from those positions, so its bytes are not tokenized
//! a second time. RFC 6120 §11.1 restricted XML is enforced: comments, processing
//! instructions, DTDs and entity references other than the five predefined ones and character
//! references are rejected. Invalid UTF-8 is an error. Attribute values are normalised and
//! character references resolved by quick-xml's own functions; the stream header is parsed by
//! quick-xml.
//!
//! Being sans I/O, this module never blocks and never loses state between reads: the session's
//! reader task feeds it whatever the socket gave and drains events until it needs more bytes.

use std::borrow::Cow;
use std::collections::HashSet;

use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesRef, Event};
use quick_xml::name::QName;
use quick_xml::{Reader, XmlVersion};

use super::element::{Element, Name, intern, intern_cow, intern_prefixed, prefix};
use crate::ns;

/// Limits on what one peer may send.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Maximum size of one stanza in bytes (RFC 6120 §13.12: at least 10,000 must be accepted).
    pub max_stanza_bytes: usize,
    /// Maximum element nesting inside one stanza (the stanza itself is depth 1).
    pub max_depth: usize,
    /// A stanza over `max_stanza_bytes` is read to its end without being kept and reported as
    /// [`StreamEvent::Skipped`], so that one oversized stanza (a contact's vCard with a huge
    /// photo) does not end the session; only one larger than this fails the stream. At most
    /// `max_stanza_bytes` is buffered meanwhile. `0` makes every oversized stanza fatal.
    pub max_skip_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_skip_bytes: 16 * 1024 * 1024,
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
    /// A stanza over [`StreamLimits::max_stanza_bytes`] was read to its end and dropped.
    Skipped(SkippedStanza),
}

/// What is known of a stanza that was too large to keep: its start tag's name and addressing
/// attributes, so that the session can answer or report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkippedStanza {
    /// The element name (`message`, `iq`, `presence`, ...), without prefix.
    pub name: String,
    /// `id`.
    pub id: Option<String>,
    /// `type`.
    pub kind: Option<String>,
    /// `from`.
    pub from: Option<String>,
    /// The stanza's size in bytes.
    pub bytes: usize,
}

/// Where the parser is while it reads past an oversized stanza.
#[derive(Debug)]
struct Skipping {
    stanza: SkippedStanza,
    /// The names of the elements still open, outermost first, to match their end tags.
    open: Vec<Box<[u8]>>,
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
    /// The elements open inside the current stanza: where their name is in `buf` (offset,
    /// length), so that a mismatched end tag is caught at once instead of when the stanza never
    /// completes, and the index of their start tag in `tokens`.
    open: Vec<(usize, usize, usize)>,
    /// Where character data inside a stanza began when a read ended before the next `<`.
    text_start: Option<usize>,
    /// The tags and text of the current stanza, in order, as offsets from its start.
    tokens: Vec<Token>,
    /// Builds the element of a complete stanza from `tokens`.
    tree: TreeBuilder,
    header: Option<StreamHeader>,
    closed: bool,
    failed: Option<XmlError>,
    /// Set while an oversized stanza is being read past.
    skipping: Option<Skipping>,
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
            text_start: None,
            tokens: Vec::new(),
            tree: TreeBuilder::new(Cow::Borrowed(ns::CLIENT)),
            header: None,
            closed: false,
            failed: None,
            skipping: None,
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
        self.text_start = None;
        self.tokens.clear();
        self.tree.clear();
        self.header = None;
        self.closed = false;
        self.skipping = None;
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
            if let Some(t) = &mut self.text_start {
                *t -= keep_from;
            }
            for (start, _, _) in &mut self.open {
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
            if self.skipping.is_some() {
                return self.skip();
            }
            if self.closed {
                return Ok(None);
            }
            let rest = &self.buf[self.pos..];
            // Tags often follow each other directly: no search needed then.
            let next = match rest.first() {
                Some(b'<') => Some(0),
                _ => memchr::memchr(b'<', rest),
            };
            let Some(rel) = next else {
                if self.depth >= 2 {
                    // Character data that may continue in the next read.
                    self.text_start.get_or_insert(self.pos);
                } else {
                    self.check_text(self.buf.len())?;
                }
                self.pos = self.buf.len();
                if self.oversized(self.buf.len())? {
                    continue;
                }
                return Ok(None);
            };
            let lt = self.pos + rel;
            if self.depth >= 2 {
                let from = self.text_start.take().unwrap_or(self.pos);
                if from < lt {
                    self.token(Token::Text, from, lt);
                }
            } else {
                self.check_text(lt)?;
            }
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
                    let Some(end) = memchr::memmem::find(&self.buf[body..], b"]]>") else {
                        return self.need_more(lt);
                    };
                    self.construct_fits(lt, body + end + 3)?;
                    self.pos = body + end + 3;
                    self.token(Token::CData, body, body + end);
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
                    let Some((gt, _)) = find_tag_end(&self.buf, lt + 2) else {
                        return self.need_more(lt);
                    };
                    self.construct_fits(lt, gt + 1)?;
                    self.pos = gt + 1;
                    match self.depth {
                        0 => return Err(XmlError::Malformed("end tag before the stream".into())),
                        1 => {
                            self.depth = 0;
                            self.closed = true;
                            self.validate_stream_end(lt + 2, gt)?;
                            return Ok(Some(StreamEvent::Close));
                        }
                        _ => {
                            // XML 1.0 §3.1: the end tag repeats the start tag's name; only
                            // white space may follow it.
                            let (start, len, _) = self.open.pop().unwrap_or((0, 0, 0));
                            let name = trim_xml_space_end(&self.buf[lt + 2..gt]);
                            if !same_bytes(name, &self.buf[start..start + len]) {
                                return Err(XmlError::Malformed(format!(
                                    "end tag </{}> does not match <{}>",
                                    String::from_utf8_lossy(name),
                                    String::from_utf8_lossy(&self.buf[start..start + len])
                                )));
                            }
                            self.depth -= 1;
                            self.tokens.push(Token::End);
                            if self.depth == 1 {
                                return self.finish_stanza(gt + 1).map(Some);
                            }
                        }
                    }
                }
                _ => {
                    let Some((gt, quoted)) = find_tag_end(&self.buf, lt + 1) else {
                        return self.need_more(lt);
                    };
                    self.construct_fits(lt, gt + 1)?;
                    let empty = self.buf[gt - 1] == b'/';
                    self.pos = gt + 1;
                    if self.depth == 0 {
                        if empty {
                            return Err(XmlError::NotAStream("empty stream header".into()));
                        }
                        let header = self.parse_header(lt, gt + 1)?;
                        self.depth = 1;
                        self.tree.default_ns = intern(&header.default_ns);
                        self.header = Some(header.clone());
                        return Ok(Some(StreamEvent::Open(header)));
                    }
                    if self.depth == 1 {
                        self.stanza_start = Some(lt);
                    } else if !empty && self.depth > self.limits.max_depth {
                        return Err(XmlError::TooDeep {
                            limit: self.limits.max_depth,
                        });
                    }
                    let end = if empty { gt - 1 } else { gt };
                    let name_len = name_len(&self.buf[lt + 1..end])?;
                    let base = self.stanza_start.unwrap_or(lt);
                    // The builder sizes the parent's children and this element's attributes
                    // from these counts.
                    if let Some(&(_, _, parent)) = self.open.last()
                        && let Some(Token::Start { children, .. }) = self.tokens.get_mut(parent)
                    {
                        *children += 1;
                    }
                    self.tokens.push(Token::Start {
                        from: lt + 1 - base,
                        to: end - base,
                        name_len,
                        empty,
                        children: 0,
                        quoted,
                    });
                    if empty {
                        if self.depth == 1 {
                            return self.finish_stanza(gt + 1).map(Some);
                        }
                    } else {
                        self.open.push((lt + 1, name_len, self.tokens.len() - 1));
                        self.depth += 1;
                    }
                }
            }
            self.oversized(self.pos)?;
        }
    }

    /// Waits for more bytes for a construct (a tag, a CDATA section) starting at `from`. The
    /// construct alone must fit the stanza limit; a stanza that outgrows it is skipped.
    fn need_more(&mut self, from: usize) -> Result<Option<StreamEvent>, XmlError> {
        self.construct_fits(from, self.buf.len())?;
        let start = self.stanza_start.unwrap_or(from);
        if self.buf.len() - start > self.limits.max_stanza_bytes {
            self.start_skipping(from)?;
            return self.skip();
        }
        Ok(None)
    }

    /// One tag or CDATA section (`from..to`) larger than the stanza limit is never skipped:
    /// the parser would have to buffer it whole.
    fn construct_fits(&self, from: usize, to: usize) -> Result<(), XmlError> {
        if to - from > self.limits.max_stanza_bytes {
            return Err(XmlError::StanzaTooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        }
        Ok(())
    }

    /// The oversized stanza that began at `start`, read up to `upto`, as far as it can be
    /// skipped: fails when skipping is off, the stanza's own start tag is incomplete, or it is
    /// already over the skip limit.
    fn skipped_so_far(&self, start: usize, upto: usize) -> Result<SkippedStanza, XmlError> {
        let too_large = XmlError::StanzaTooLarge {
            limit: self.limits.max_stanza_bytes,
        };
        let Some(&Token::Start { from, to, .. }) = self.tokens.first() else {
            return Err(too_large);
        };
        if self.limits.max_skip_bytes <= self.limits.max_stanza_bytes {
            return Err(too_large);
        }
        if upto - start > self.limits.max_skip_bytes {
            return Err(self.too_large_to_skip());
        }
        let mut stanza = skipped_stanza(&self.buf[start + from..start + to]);
        stanza.bytes = upto - start;
        Ok(stanza)
    }

    /// The error for a stanza too large even to skip.
    fn too_large_to_skip(&self) -> XmlError {
        XmlError::StanzaTooLarge {
            limit: self.limits.max_skip_bytes.max(self.limits.max_stanza_bytes),
        }
    }

    /// Whether the current stanza, scanned up to `upto`, went over the size limit; if so the
    /// parser now skips it (or fails, when it cannot).
    fn oversized(&mut self, upto: usize) -> Result<bool, XmlError> {
        match self.stanza_start {
            Some(start) if upto - start > self.limits.max_stanza_bytes => {
                self.start_skipping(upto.min(self.pos))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The stanza being framed is over the limit: keeps only what [`Self::skip`] needs (the
    /// names of the open elements and the start tag's attributes) and drops its bytes before
    /// `from`. Fails when skipping is off or the stanza's own start tag is incomplete.
    fn start_skipping(&mut self, from: usize) -> Result<(), XmlError> {
        let Some(start) = self.stanza_start else {
            return Err(XmlError::StanzaTooLarge {
                limit: self.limits.max_stanza_bytes,
            });
        };
        let stanza = self.skipped_so_far(start, from)?;
        let open = self
            .open
            .iter()
            .map(|&(at, len, _)| Box::from(&self.buf[at..at + len]))
            .collect();
        self.skipping = Some(Skipping { stanza, open });
        self.pos = from;
        self.stanza_start = None;
        self.open.clear();
        self.text_start = None;
        self.tokens.clear();
        Ok(())
    }

    /// Reads past the rest of an oversized stanza: tags are matched and counted, nothing is
    /// kept. Restricted XML is still refused, so the stream stays in step.
    fn skip(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        loop {
            if self.skipping.is_none() {
                return Ok(None);
            }
            let rest = &self.buf[self.pos..];
            let Some(rel) = memchr::memchr(b'<', rest) else {
                let n = rest.len();
                return self.skipped(n).map(|()| None);
            };
            self.skipped(rel)?;
            let lt = self.pos;
            let rest = &self.buf[lt + 1..];
            let Some(&first) = rest.first() else {
                return self.skip_need_more(lt);
            };
            let end = match first {
                b'!' => {
                    const CDATA: &[u8] = b"[CDATA[";
                    let after = &rest[1..];
                    let n = after.len().min(CDATA.len());
                    if after[..n] != CDATA[..n] {
                        return Err(XmlError::Restricted(if after.starts_with(b"-") {
                            "a comment"
                        } else {
                            "a DTD"
                        }));
                    }
                    let body = lt + 2 + CDATA.len();
                    match (n == CDATA.len())
                        .then(|| memchr::memmem::find(&self.buf[body..], b"]]>"))
                        .flatten()
                    {
                        Some(end) => body + end + 3,
                        None => return self.skip_need_more(lt),
                    }
                }
                b'?' => return Err(XmlError::Restricted("a processing instruction")),
                b'/' => {
                    let Some((gt, _)) = find_tag_end(&self.buf, lt + 2) else {
                        return self.skip_need_more(lt);
                    };
                    self.construct_fits(lt, gt + 1)?;
                    let Some(skipping) = self.skipping.as_mut() else {
                        return Ok(None);
                    };
                    let name = trim_xml_space_end(&self.buf[lt + 2..gt]);
                    let open = skipping.open.pop().unwrap_or_default();
                    if !same_bytes(name, &open) {
                        return Err(XmlError::Malformed(format!(
                            "end tag </{}> does not match <{}>",
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(&open)
                        )));
                    }
                    if skipping.open.is_empty() {
                        self.skipped(gt + 1 - lt)?;
                        let done = self.skipping.take().map(|s| s.stanza).unwrap_or_default();
                        self.depth = 1;
                        return Ok(Some(StreamEvent::Skipped(done)));
                    }
                    gt + 1
                }
                _ => {
                    let Some((gt, _)) = find_tag_end(&self.buf, lt + 1) else {
                        return self.skip_need_more(lt);
                    };
                    self.construct_fits(lt, gt + 1)?;
                    if self.buf[gt - 1] != b'/' {
                        let Some(skipping) = self.skipping.as_mut() else {
                            return Ok(None);
                        };
                        if skipping.open.len() >= self.limits.max_depth {
                            return Err(XmlError::TooDeep {
                                limit: self.limits.max_depth,
                            });
                        }
                        let len = name_len(&self.buf[lt + 1..gt])?;
                        skipping
                            .open
                            .push(Box::from(&self.buf[lt + 1..lt + 1 + len]));
                    } else {
                        name_len(&self.buf[lt + 1..gt - 1])?;
                    }
                    gt + 1
                }
            };
            self.construct_fits(lt, end)?;
            self.skipped(end - lt)?;
        }
    }

    /// Counts `n` more bytes of the stanza being skipped, within [`StreamLimits::max_skip_bytes`].
    fn skipped(&mut self, n: usize) -> Result<(), XmlError> {
        self.pos += n;
        let Some(skipping) = &mut self.skipping else {
            return Ok(());
        };
        skipping.stanza.bytes += n;
        if skipping.stanza.bytes > self.limits.max_skip_bytes {
            return Err(self.too_large_to_skip());
        }
        Ok(())
    }

    /// While skipping, one construct (a tag, a CDATA section) must still fit the stanza limit.
    fn skip_need_more(&self, from: usize) -> Result<Option<StreamEvent>, XmlError> {
        self.construct_fits(from, self.buf.len())?;
        Ok(None)
    }

    /// Between stanzas only whitespace (keepalives) may appear.
    fn check_text(&self, upto: usize) -> Result<(), XmlError> {
        if self.depth <= 1 && !self.buf[self.pos..upto].iter().all(u8::is_ascii_whitespace) {
            return Err(XmlError::Malformed("text outside a stanza".into()));
        }
        Ok(())
    }

    /// Notes a tag or run of text of the current stanza (`from..to` in `buf`).
    fn token(&mut self, kind: fn(usize, usize) -> Token, from: usize, to: usize) {
        let start = self.stanza_start.unwrap_or(from);
        self.tokens.push(kind(from - start, to - start));
    }

    /// The stanza's end tag ends at `end`: checks its size and UTF-8, then builds its element.
    fn finish_stanza(&mut self, end: usize) -> Result<StreamEvent, XmlError> {
        let Some(start) = self.stanza_start.take() else {
            return Err(XmlError::Malformed("stanza end without a start".into()));
        };
        // A stanza that arrived whole in one read was never checked while it grew.
        if end - start > self.limits.max_stanza_bytes {
            let stanza = self.skipped_so_far(start, end)?;
            self.tokens.clear();
            return Ok(StreamEvent::Skipped(stanza));
        }
        let text = utf8(&self.buf[start..end])?;
        let element = self.tree.build(text, &self.tokens)?;
        self.tokens.clear();
        if self.tokens.capacity() > TreeBuilder::KEEP {
            self.tokens.shrink_to(TreeBuilder::KEEP);
        }
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

/// Finds the `>` closing the tag whose name starts at `from`, skipping quoted attribute values;
/// also returns how many quoted values it skipped.
fn find_tag_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    let mut quoted = 0;
    loop {
        // Names and white space between values are short: a plain loop beats a search call.
        let at = i + buf
            .get(i..)?
            .iter()
            .position(|b| matches!(b, b'>' | b'"' | b'\''))?;
        match buf[at] {
            b'>' => return Some((at, quoted)),
            quote => {
                let close = memchr::memchr(quote, &buf[at + 1..])?;
                i = at + 1 + close + 1;
                quoted += 1;
            }
        }
    }
}

/// The name and addressing attributes of a start tag (the bytes between `<` and `>`);
/// what cannot be read is left out: the stanza is dropped anyway.
fn skipped_stanza(tag: &[u8]) -> SkippedStanza {
    let text = String::from_utf8_lossy(tag);
    let text = text.strip_suffix('/').unwrap_or(&text);
    let element = format!("<{text}/>");
    let mut reader = Reader::from_str(&element);
    let mut stanza = SkippedStanza::default();
    if let Ok(Event::Empty(tag)) = reader.read_event() {
        stanza.name = split_qname(tag.name().0).1.to_owned();
        for attr in tag.attributes().flatten() {
            let Ok(value) = attr.normalized_value(XmlVersion::Implicit1_0) else {
                continue;
            };
            let slot = match attr.key.0 {
                "id" => &mut stanza.id,
                "type" => &mut stanza.kind,
                "from" => &mut stanza.from,
                _ => continue,
            };
            *slot = Some(value.into_owned());
        }
    }
    stanza
}

/// Trailing XML white space (XML 1.0 §2.3 `S`: space, tab, CR, LF) removed.
fn trim_xml_space_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !is_xml_space(*b))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Byte equality without a library call for the short names compared here (most are a few
/// bytes, many empty).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.len() > 8 && a == b || a.len() <= 8 && prefix(a) == prefix(b))
}

/// XML 1.0 §2.3 `S`. Form feed and other ASCII white space are not XML white space.
fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn utf8(bytes: &[u8]) -> Result<&str, XmlError> {
    std::str::from_utf8(bytes).map_err(|_| XmlError::InvalidUtf8)
}

fn split_qname(q: &str) -> (Option<&str>, &str) {
    match q.bytes().position(|b| b == b':') {
        Some(i) => (Some(&q[..i]), &q[i + 1..]),
        None => (None, q),
    }
}

/// Bytes that cannot appear in an XML name and would let the tag scanner and the end-tag
/// comparison disagree: `/`, quotes, `<`, `>`, `=`, `&`, control characters.
const NOT_IN_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[0x7f] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'/' as usize] = true;
    t[b'=' as usize] = true;
    t[b'"' as usize] = true;
    t[b'\'' as usize] = true;
    t[b'&' as usize] = true;
    t
};

/// The length of the element name that starts `tag` (the text after `<`): it runs to the
/// first white space, as quick-xml reads it, and must be a name.
fn name_len(tag: &[u8]) -> Result<usize, XmlError> {
    let len = tag
        .iter()
        .position(|b| is_xml_space(*b))
        .unwrap_or(tag.len());
    let name = &tag[..len];
    if name.is_empty() || name.iter().any(|b| NOT_IN_NAME[usize::from(*b)]) {
        return Err(XmlError::Malformed(format!(
            "invalid element name '{}'",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(len)
}

/// A tag or run of text of the stanza being framed, as offsets from the stanza's start.
#[derive(Debug, Clone, Copy)]
enum Token {
    /// Character data.
    Text(usize, usize),
    /// The content of a CDATA section.
    CData(usize, usize),
    /// A start tag between `<` and `>`, or `/>` when `empty`; its name is `name_len` bytes,
    /// it has `children` child elements and `quoted` quoted values (attributes and namespace
    /// declarations, in a well-formed tag).
    Start {
        from: usize,
        to: usize,
        name_len: usize,
        empty: bool,
        children: usize,
        quoted: usize,
    },
    /// An end tag (already matched against its start tag).
    End,
}

/// Start tags with more attributes than this check duplicates with a hash set, so that a tag
/// with thousands of attributes costs O(n), not O(n²).
const LINEAR_DUPLICATE_CHECK: usize = 16;

/// Builds the element tree of a framed stanza. Its vectors live as long as the parser, so
/// that a stanza allocates only what it hands out: per element one string (attribute values
/// and text) and vectors of attribute names and of children sized from the framer's counts,
/// plus names and namespaces that are not well known.
#[derive(Debug)]
struct TreeBuilder {
    /// The stream's default namespace (`jabber:client`).
    default_ns: Name,
    /// Elements whose end tag has not come yet, outermost first, with their attributes and the
    /// text and children so far.
    open: Vec<Element>,
    /// Namespace declarations in scope, innermost last.
    scope: Vec<Binding>,
    /// The attribute names of the start tag being parsed: first 8 bytes, range in the tag.
    keys: Vec<(u64, usize, usize)>,
}

/// One namespace declaration in scope while parsing a stanza.
#[derive(Debug)]
struct Binding {
    /// Empty for the default namespace (`xmlns='…'`).
    prefix: Name,
    uri: Name,
    /// Nesting level of the element that declared it.
    level: usize,
}

impl TreeBuilder {
    fn new(default_ns: Name) -> Self {
        Self {
            default_ns,
            open: Vec::new(),
            scope: Vec::new(),
            keys: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.open.clear();
        self.scope.clear();
        self.keys.clear();
    }

    /// Vector capacity kept between stanzas (enough for a chat message); what a larger stanza
    /// (a roster, a vCard) grew beyond it is given back, so that an idle session keeps only a
    /// small parser.
    const KEEP: usize = 16;

    /// The element of the stanza `text` (checked UTF-8) whose tags and text are `tokens`.
    fn build(&mut self, text: &str, tokens: &[Token]) -> Result<Element, XmlError> {
        let result = self.replay(text, tokens);
        self.clear();
        if self.open.capacity() > Self::KEEP {
            self.open.shrink_to(Self::KEEP);
        }
        if self.scope.capacity() > Self::KEEP {
            self.scope.shrink_to(Self::KEEP);
        }
        if self.keys.capacity() > Self::KEEP {
            self.keys.shrink_to(Self::KEEP);
        }
        result
    }

    fn replay(&mut self, text: &str, tokens: &[Token]) -> Result<Element, XmlError> {
        // Token boundaries are ASCII delimiters, so always character boundaries.
        let piece = |from: usize, to: usize| text.get(from..to).ok_or(XmlError::InvalidUtf8);
        let mut stanza = None;
        for token in tokens {
            match *token {
                Token::Text(from, to) => self.text(piece(from, to)?)?,
                Token::CData(from, to) => self.cdata(piece(from, to)?)?,
                Token::Start {
                    from,
                    to,
                    name_len,
                    empty,
                    children,
                    quoted,
                } => {
                    self.start(piece(from, to)?, name_len, children, quoted)?;
                    if empty {
                        stanza = self.end();
                    }
                }
                Token::End => stanza = self.end(),
            }
        }
        stanza.ok_or_else(|| XmlError::Malformed("stanza end without a start".into()))
    }

    /// A start tag: its text between `<` and `>` (without the `/` of an empty-element tag),
    /// whose name (`name_len` bytes) the framer has checked, with the framer's counts of its
    /// children and quoted values.
    fn start(
        &mut self,
        tag: &str,
        name_len: usize,
        children: usize,
        quoted: usize,
    ) -> Result<(), XmlError> {
        let qname = tag.get(..name_len).ok_or(XmlError::InvalidUtf8)?;
        let level = self.open.len() + 1;
        let mut attrs = Vec::new();
        let mut text = String::new();
        self.attributes(tag, name_len, level, quoted, &mut attrs, &mut text)?;
        let (prefix, local) = split_qname(qname);
        let ns = self.resolve(prefix.unwrap_or(""))?;
        self.open.push(Element::from_parts(
            intern(local),
            ns,
            attrs,
            text,
            Vec::with_capacity(children),
        ));
        Ok(())
    }

    /// Parses the attributes after the name with the rules of quick-xml's attribute iterator
    /// (`name = 'value'` or `"value"`, white space allowed around `=`, duplicates rejected),
    /// plus: a name cannot be empty. Namespace declarations go into `scope`, the others into
    /// `attrs` (allocated for at most `quoted` entries) with their values appended to `values`.
    fn attributes(
        &mut self,
        tag: &str,
        from: usize,
        level: usize,
        quoted: usize,
        attrs: &mut Vec<(Name, usize)>,
        values: &mut String,
    ) -> Result<(), XmlError> {
        self.keys.clear();
        let b = tag.as_bytes();
        let skip_space = |mut i: usize| {
            while b.get(i).copied().is_some_and(is_xml_space) {
                i += 1;
            }
            i
        };
        let mut seen: Option<HashSet<&str>> = None;
        let mut i = from;
        loop {
            i = skip_space(i);
            if i == b.len() {
                return Ok(());
            }
            let key_start = i;
            while b.get(i).is_some_and(|&c| c != b'=' && !is_xml_space(c)) {
                i += 1;
            }
            let key = &tag[key_start..i];
            i = skip_space(i);
            if b.get(i) != Some(&b'=') {
                return Err(XmlError::Malformed(format!(
                    "attribute '{key}' has no value"
                )));
            }
            if key.is_empty() {
                return Err(XmlError::Malformed("attribute without a name".into()));
            }
            // Duplicates: names are compared by their first 8 bytes and length first.
            let head = prefix(key.as_bytes());
            let duplicate = match &mut seen {
                Some(set) => !set.insert(key),
                None => {
                    let dup = self.keys.iter().any(|&(h, s, e)| {
                        h == head && e - s == key.len() && (key.len() <= 8 || &tag[s..e] == key)
                    });
                    if self.keys.len() >= LINEAR_DUPLICATE_CHECK {
                        let mut set: HashSet<&str> =
                            self.keys.iter().map(|&(_, s, e)| &tag[s..e]).collect();
                        set.insert(key);
                        seen = Some(set);
                    } else {
                        self.keys.push((head, key_start, key_start + key.len()));
                    }
                    dup
                }
            };
            if duplicate {
                return Err(XmlError::Malformed(format!("duplicate attribute '{key}'")));
            }
            i = skip_space(i + 1);
            let quote = match b.get(i) {
                Some(&q @ (b'"' | b'\'')) => q,
                Some(_) => {
                    return Err(XmlError::Malformed(format!(
                        "the value of attribute '{key}' is not quoted"
                    )));
                }
                None => {
                    return Err(XmlError::Malformed(format!(
                        "attribute '{key}' has no value"
                    )));
                }
            };
            let value_start = i + 1;
            let Some(len) = memchr::memchr(quote, &b[value_start..]) else {
                return Err(XmlError::Malformed(format!(
                    "the value of attribute '{key}' is not closed"
                )));
            };
            let end = value_start + len;
            let plain = !needs_normalising(&b[value_start..end]);
            i = end + 1;
            let raw = &tag[value_start..end];
            let value = if plain {
                Cow::Borrowed(raw)
            } else {
                normalize_attribute_value(key, raw)?
            };
            if key == "xmlns" {
                self.scope.push(Binding {
                    prefix: Cow::Borrowed(""),
                    uri: intern_cow(value),
                    level,
                });
            } else if let Some(prefix) = key.strip_prefix("xmlns:") {
                self.scope.push(Binding {
                    prefix: intern(prefix),
                    uri: intern_cow(value),
                    level,
                });
            } else {
                if values.capacity() == 0 {
                    // The values left are at most the rest of the tag.
                    *values = String::with_capacity(tag.len() - value_start);
                }
                if attrs.capacity() == 0 {
                    *attrs = Vec::with_capacity(quoted.max(1));
                }
                values.push_str(&value);
                attrs.push((intern_prefixed(key, head), values.len()));
            }
        }
    }

    /// The namespace of `prefix` (empty: the default namespace). The stream's own bindings are
    /// the fallback; `stream` and `xml` are always bound (stanzas such as `<stream:error>` use
    /// them).
    fn resolve(&self, prefix: &str) -> Result<Name, XmlError> {
        let wanted = prefix.as_bytes();
        if let Some(b) = self
            .scope
            .iter()
            .rev()
            .find(|b| same_bytes(b.prefix.as_bytes(), wanted))
        {
            return Ok(b.uri.clone());
        }
        match prefix {
            "" => Ok(self.default_ns.clone()),
            "stream" => Ok(Cow::Borrowed(ns::STREAM)),
            "xml" => Ok(Cow::Borrowed(ns::XML)),
            other => Err(XmlError::Malformed(format!(
                "undeclared namespace prefix '{other}'"
            ))),
        }
    }

    /// The end of the innermost open element (already matched against its start tag). Returns
    /// the element when it was the outermost one.
    fn end(&mut self) -> Option<Element> {
        let el = self.open.pop()?;
        let level = self.open.len() + 1;
        while self.scope.last().is_some_and(|b| b.level >= level) {
            self.scope.pop();
        }
        match self.open.last_mut() {
            Some(parent) => {
                parent.push_child(el);
                None
            }
            None => Some(el),
        }
    }

    /// The text of the innermost open element.
    fn open_text(&mut self) -> Result<&mut String, XmlError> {
        match self.open.last_mut() {
            Some(open) => Ok(open.text_mut()),
            None => Err(XmlError::Malformed("text outside an element".into())),
        }
    }

    /// Character data between two tags: line ends normalised, references resolved, appended to
    /// the innermost open element's text.
    fn text(&mut self, raw: &str) -> Result<(), XmlError> {
        let text = self.open_text()?;
        if text.capacity() == 0 {
            // The decoded text is never longer than the raw one.
            *text = String::with_capacity(raw.len());
        }
        decode_text(text, raw)
    }

    /// The content of a CDATA section, taken as it is.
    fn cdata(&mut self, raw: &str) -> Result<(), XmlError> {
        self.open_text()?.push_str(raw);
        Ok(())
    }
}

/// Whether an attribute value has `&` or a control character (tab, CR and LF among them; the
/// others only take the slower path, which finds nothing to change). Eight bytes at a time.
fn needs_normalising(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    // Bit 7 of a byte is set where the byte is below `n` (exact for n <= 128).
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS;
    let mut chunks = value.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if below(x, 0x0e) | below(x ^ (ONES * u64::from(b'&')), 1) != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&c| c == b'&' || c < 0x0e)
}

/// XML 1.0 §3.3.3: white space in an attribute value becomes a space, references are resolved
/// (by quick-xml).
fn normalize_attribute_value<'a>(key: &'a str, raw: &'a str) -> Result<Cow<'a, str>, XmlError> {
    Attribute {
        key: QName(key),
        value: Cow::Borrowed(raw),
    }
    .normalized_value(XmlVersion::Implicit1_0)
    .map_err(|e| match e {
        quick_xml::Error::Escape(_) => XmlError::Restricted("an undeclared entity reference"),
        other => XmlError::Malformed(other.to_string()),
    })
}

/// Appends character data to `out`: XML 1.0 §2.11 line ends (CR LF and a lone CR become LF),
/// the five predefined entities and character references resolved, any other reference refused
/// (RFC 6120 §11.1).
fn decode_text(out: &mut String, raw: &str) -> Result<(), XmlError> {
    let bytes = raw.as_bytes();
    let mut done = 0;
    while let Some(rel) = memchr::memchr2(b'&', b'\r', &bytes[done..]) {
        let at = done + rel;
        out.push_str(&raw[done..at]);
        if bytes[at] == b'\r' {
            out.push('\n');
            done = at + 1;
            if bytes.get(done) == Some(&b'\n') {
                done += 1;
            }
            continue;
        }
        // A reference runs to the next ';', which must come before any other '&'.
        let rest = &bytes[at + 1..];
        let Some(len) = memchr::memchr2(b';', b'&', rest).filter(|&i| rest[i] == b';') else {
            return Err(XmlError::Malformed("'&' without a reference".into()));
        };
        let name = &raw[at + 1..at + 1 + len];
        if name.starts_with('#') {
            match BytesRef::new(name).resolve_char_ref() {
                Ok(Some(c)) => out.push(c),
                _ => {
                    return Err(XmlError::Malformed(format!(
                        "bad character reference &{name};"
                    )));
                }
            }
        } else {
            match quick_xml::escape::resolve_predefined_entity(name) {
                Some(s) => out.push_str(s),
                None => return Err(XmlError::Restricted("an undeclared entity reference")),
            }
        }
        done = at + 1 + len + 1;
    }
    out.push_str(&raw[done..]);
    Ok(())
}

/// Parses one complete element, as a stanza inside a stream whose default namespace is
/// `default_ns` (the `stream` and `xml` prefixes are always bound). White space may surround
/// it; anything after its end tag is ignored. No size or depth limit applies.
pub fn parse_element(text: &str, default_ns: &str) -> Result<Element, XmlError> {
    let mut parser = StreamParser::new(StreamLimits {
        max_stanza_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_skip_bytes: 0,
    });
    parser.depth = 1;
    parser.tree.default_ns = intern(default_ns);
    parser.push(text.as_bytes());
    match parser.next_event()? {
        Some(StreamEvent::Stanza(el)) => Ok(el),
        Some(_) => Err(XmlError::Malformed("not an element".into())),
        None => Err(XmlError::Malformed("element ended early".into())),
    }
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
            max_skip_bytes: 0,
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
            max_skip_bytes: 0,
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
            max_skip_bytes: 0,
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
    fn needs_normalising_finds_every_amp_and_control_character() {
        let plain = |v: &[u8]| !v.iter().any(|&c| c == b'&' || c < 0x0e);
        for len in 0..40 {
            let base: Vec<u8> = (0..len)
                .map(|i| b"az AZ09'\"<>=/:\xc3\xa9"[i % 15])
                .collect();
            assert_eq!(needs_normalising(&base), !plain(&base), "{base:?}");
            for at in 0..len {
                for c in [b'&', b'\t', b'\n', b'\r', 0, 0x0d, 0x0e, 0x25, 0x27, 0xff] {
                    let mut v = base.clone();
                    v[at] = c;
                    assert_eq!(needs_normalising(&v), !plain(&v), "{v:?}");
                }
            }
        }
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
