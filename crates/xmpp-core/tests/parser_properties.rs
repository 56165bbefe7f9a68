//! Seeded property tests for the incremental stream parser ([`StreamParser`]).
//!
//! Three properties, each over generated input from a small seeded PRNG (no dependency, same
//! cases on every machine):
//! - well-formed streams of random stanzas parse to exactly the generated elements, whatever
//!   the points where the bytes are split, and survive a round trip through `Element::to_xml`;
//! - mutated, truncated and random bytes never panic or spin; the parser returns events or an
//!   `XmlError`, the outcome does not depend on how the bytes were split, and an error sticks;
//! - an endless unclosed stanza is refused with `StanzaTooLarge` before more than
//!   `max_stanza_bytes` plus one read chunk has been buffered, and so is one that is being
//!   skipped (`max_skip_bytes`), which is refused when it outgrows that limit.
//!
//! The default case counts keep this under a few seconds in a debug build. To search longer,
//! multiply them: `PARSER_FUZZ_ITERATIONS=50 cargo test -p xmpp-core --test parser_properties`.
//! A failure prints the case seed; `PARSER_FUZZ_SEED=<seed>` reruns only that case.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use xmpp_core::ns;
use xmpp_core::xml::{Element, StreamEvent, StreamHeader, StreamLimits, StreamParser, XmlError};

/// Base seeds; every case seed is derived from one of these and the case number.
const SEEDS: [u64; 4] = [0x5EED_0001, 0xC0FF_EE00_1234, 0x0BAD_F00D, 42];
/// Cases per seed and property at `PARSER_FUZZ_ITERATIONS=1`.
const WELL_FORMED_CASES: u64 = 250;
const MUTATION_CASES: u64 = 750;
const RANDOM_BYTES_CASES: u64 = 250;
/// A case that takes longer than this is treated as a hang.
const WATCHDOG: Duration = Duration::from_secs(120);

const STREAM_NS: &str = "http://etherx.jabber.org/streams";

// ---------------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------------

/// SplitMix64: tiny, fast and good enough to drive generators.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn iterations() -> u64 {
    std::env::var("PARSER_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The case seeds of one property: `PARSER_FUZZ_SEED` alone, or `per_seed` cases per base seed.
fn case_seeds(property: u64, per_seed: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("PARSER_FUZZ_SEED")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
    {
        return vec![seed];
    }
    let per_seed = per_seed * iterations();
    SEEDS
        .iter()
        .flat_map(|base| {
            (0..per_seed).map(move |i| Rng::new(base ^ (property << 56) ^ i).next_u64())
        })
        .collect()
}

/// What the worker of [`run_cases`] reports.
enum Report {
    /// A case passed.
    Passed,
    /// The case with this seed panicked.
    Failed(u64),
    /// All cases passed.
    Done,
}

/// Runs `case` for every seed on a worker thread, failing with the seed on a panic and on a
/// hang (the parser must never loop forever): every case must finish within [`WATCHDOG`], so
/// that long runs (`PARSER_FUZZ_ITERATIONS`) are not mistaken for one.
fn run_cases(property: u64, per_seed: u64, case: fn(u64)) {
    let seeds = case_seeds(property, per_seed);
    let current = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let worker_current = Arc::clone(&current);
    let worker = std::thread::spawn(move || {
        for seed in seeds {
            worker_current.store(seed, Ordering::SeqCst);
            let outcome = std::panic::catch_unwind(|| case(seed));
            if outcome.is_err() {
                let _ = done_tx.send(Report::Failed(seed));
                return;
            }
            let _ = done_tx.send(Report::Passed);
        }
        let _ = done_tx.send(Report::Done);
    });
    loop {
        match done_rx.recv_timeout(WATCHDOG) {
            Ok(Report::Passed) => {}
            Ok(Report::Done) => return worker.join().expect("worker finished"),
            Ok(Report::Failed(seed)) => {
                panic!("case failed; rerun with PARSER_FUZZ_SEED={seed:x}")
            }
            Err(_) => panic!(
                "no answer within {WATCHDOG:?}: the parser may be looping; last case \
                 PARSER_FUZZ_SEED={:x}",
                current.load(Ordering::SeqCst)
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generating well-formed streams together with what they must parse to
// ---------------------------------------------------------------------------------------------

/// Characters for names after the first; 'é' keeps non-ASCII names covered.
const NAME_REST: &[char] = &[
    'a', 'b', 'c', 'm', 'q', 'z', 'A', 'Z', '0', '7', '9', '-', '_', '.', 'é',
];
const NAME_FIRST: &[char] = &['a', 'b', 'c', 'm', 'q', 'z', 'A', 'Z', '_', 'é'];
/// Literal text characters. No '<', '&' (need escaping), ']' (avoids `]]>`), '\r' (line-end
/// normalisation would change it).
const TEXT_CHARS: &[char] = &[
    'a', 'b', 'z', ' ', ' ', '\n', '\t', '>', '\'', '"', '/', '=', '?', '!', 'é', '☺', '😀', '0',
];
/// Characters written as character references (no '\r', which a round trip cannot keep).
const REF_CHARS: &[char] = &[
    '<', '&', '>', '\'', '"', 'A', 'é', '☺', '😀', '\n', '\t', ']',
];
/// CDATA content may hold markup characters; `]]>` is filtered out.
const CDATA_CHARS: &[char] = &['<', '&', '>', ']', '\'', '"', 'x', ' ', '\n', '☺', '/', '!'];
const ATTR_CHARS: &[char] = &['a', 'z', ' ', '>', '/', '=', '?', 'é', '😀', '0', ':'];
const WELL_KNOWN_STANZAS: &[&str] = &["message", "presence", "iq"];

/// Generated XML text plus the tree it must parse to.
struct Generator<'r> {
    rng: &'r mut Rng,
    max_depth: usize,
    /// Prefixes declared so far, each unique, with their namespace.
    next_ns: usize,
}

/// What is in scope for an element being generated.
#[derive(Clone)]
struct Scope {
    default_ns: String,
    prefixes: Vec<(String, String)>,
}

impl Generator<'_> {
    fn name(&mut self) -> String {
        loop {
            let len = 1 + self.rng.below(8);
            let mut s = String::new();
            s.push(*self.rng.pick(NAME_FIRST));
            for _ in 1..len {
                s.push(*self.rng.pick(NAME_REST));
            }
            // Names starting with "xml" are reserved (XML 1.0 §2.3).
            if !s.to_ascii_lowercase().starts_with("xml") {
                return s;
            }
        }
    }

    fn fresh_ns(&mut self) -> String {
        self.next_ns += 1;
        // Escapes in namespace URIs must be resolved before the URI is compared.
        if self.rng.chance(20) {
            format!("urn:x:{}&amp;y", self.next_ns)
        } else {
            format!("urn:x:{}", self.next_ns)
        }
    }

    fn space(&mut self) -> &'static str {
        const SPACES: [&str; 7] = [" ", " ", " ", "  ", "\n", "\t", " \n "];
        SPACES[self.rng.below(SPACES.len())]
    }

    /// An attribute value as written and as parsed.
    fn attr_value(&mut self, quote: char) -> (String, String) {
        let mut raw = String::new();
        let mut value = String::new();
        for _ in 0..self.rng.below(12) {
            match self.rng.below(10) {
                0 => {
                    let (esc, c) = *self.rng.pick(&[
                        ("&amp;", '&'),
                        ("&lt;", '<'),
                        ("&gt;", '>'),
                        ("&apos;", '\''),
                        ("&quot;", '"'),
                    ]);
                    raw.push_str(esc);
                    value.push(c);
                }
                1 => {
                    // Character references; whitespace ones are left out because a literal
                    // newline in a value does not survive attribute-value normalisation on
                    // the way back in.
                    let c = *self.rng.pick(&['<', '&', 'A', 'é', '😀', '\'', '"']);
                    raw.push_str(&char_ref(self.rng, c));
                    value.push(c);
                }
                2 => {
                    // The other quote needs no escape.
                    let other = if quote == '\'' { '"' } else { '\'' };
                    raw.push(other);
                    value.push(other);
                }
                3 => {
                    // XML 1.0 §3.3.3: literal tab, newline, CR and CR LF become one space (a
                    // lone CR is followed by a letter, so that the next piece cannot make it
                    // CR LF).
                    let (raw_ws, read) =
                        *self
                            .rng
                            .pick(&[("\t", " "), ("\n", " "), ("\r\n", " "), ("\rz", " z")]);
                    raw.push_str(raw_ws);
                    value.push_str(read);
                }
                _ => {
                    let c = *self.rng.pick(ATTR_CHARS);
                    raw.push(c);
                    value.push(c);
                }
            }
        }
        (raw, value)
    }

    /// Generates one element at nesting `level` (the stanza is 1) into `out`.
    fn element(&mut self, out: &mut String, level: usize, scope: &Scope, name: String) -> Element {
        let mut scope = scope.clone();
        let mut decls = Vec::new();
        if level > 1 && self.rng.chance(30) {
            let uri = self.fresh_ns();
            decls.push((String::from("xmlns"), uri.clone()));
            scope.default_ns = uri.replace("&amp;", "&");
        }
        // Element prefix: none, one in scope, or a new one declared here.
        let mut prefix = None;
        if level > 1 && self.rng.chance(25) {
            if !scope.prefixes.is_empty() && self.rng.chance(50) {
                prefix = Some(self.rng.pick(&scope.prefixes).0.clone());
            } else {
                let p = format!("p{}", self.next_ns);
                let uri = self.fresh_ns();
                decls.push((format!("xmlns:{p}"), uri.clone()));
                scope.prefixes.push((p.clone(), uri.replace("&amp;", "&")));
                prefix = Some(p);
            }
        }
        let element_ns = match &prefix {
            Some(p) => scope
                .prefixes
                .iter()
                .rev()
                .find(|(k, _)| k == p)
                .map(|(_, v)| v.clone())
                .expect("prefix in scope"),
            None => scope.default_ns.clone(),
        };
        let qname = match &prefix {
            Some(p) => format!("{p}:{name}"),
            None => name.clone(),
        };
        let mut expected = Element::new(name, element_ns);

        out.push('<');
        out.push_str(&qname);
        let mut attrs: Vec<(String, String, bool)> =
            decls.into_iter().map(|(k, v)| (k, v, true)).collect();
        let mut used: Vec<String> = Vec::new();
        for _ in 0..self.rng.below(4) {
            let key = if self.rng.chance(10) {
                String::from("xml:lang")
            } else {
                self.name()
            };
            if used.contains(&key) {
                continue;
            }
            used.push(key.clone());
            attrs.push((key, String::new(), false));
        }
        // Declarations may come anywhere among the attributes.
        for i in (1..attrs.len()).rev() {
            attrs.swap(i, self.rng.below(i + 1));
        }
        let mut parsed_attrs = Vec::new();
        for (key, decl_value, is_decl) in attrs {
            let quote = if self.rng.chance(50) { '\'' } else { '"' };
            let (raw, value) = if is_decl {
                (decl_value, String::new())
            } else {
                self.attr_value(quote)
            };
            out.push_str(self.space());
            out.push_str(&key);
            if self.rng.chance(10) {
                out.push_str(self.space());
                out.push('=');
                out.push_str(self.space());
            } else {
                out.push('=');
            }
            out.push(quote);
            out.push_str(&raw);
            out.push(quote);
            if !is_decl {
                parsed_attrs.push((key, value));
            }
        }
        for (k, v) in parsed_attrs {
            expected.set_attr(k, v);
        }
        if self.rng.chance(10) {
            out.push_str(self.space());
        }

        let childless = self
            .rng
            .chance(if level >= self.max_depth { 60 } else { 25 });
        if childless && self.rng.chance(70) {
            out.push_str("/>");
            return expected;
        }
        out.push('>');
        if !childless {
            for _ in 0..self.rng.below(5) {
                if level < self.max_depth && self.rng.chance(45) {
                    let child_name = self.name();
                    let child = self.element(out, level + 1, &scope, child_name);
                    expected.push_child(child);
                } else {
                    let text = self.text(out);
                    expected.push_text(text);
                }
            }
        }
        out.push_str("</");
        out.push_str(&qname);
        if self.rng.chance(10) {
            out.push_str(self.space());
        }
        out.push('>');
        expected
    }

    /// A run of character data (literal, escaped, character references, CDATA); returns the
    /// text it stands for.
    fn text(&mut self, out: &mut String) -> String {
        let mut text = String::new();
        for _ in 0..1 + self.rng.below(6) {
            match self.rng.below(8) {
                0 => {
                    let (esc, c) = *self.rng.pick(&[
                        ("&amp;", '&'),
                        ("&lt;", '<'),
                        ("&gt;", '>'),
                        ("&apos;", '\''),
                        ("&quot;", '"'),
                    ]);
                    out.push_str(esc);
                    text.push(c);
                }
                1 => {
                    let c = *self.rng.pick(REF_CHARS);
                    out.push_str(&char_ref(self.rng, c));
                    text.push(c);
                }
                3 if self.rng.chance(30) => {
                    // XML 1.0 §2.11: CR LF and a lone CR are read as LF (a lone CR is followed
                    // by a letter, so that the next piece cannot make it CR LF).
                    let (raw, read) =
                        *self
                            .rng
                            .pick(&[("\r\n", "\n"), ("\rz", "\nz"), ("\r\r\n", "\n\n")]);
                    out.push_str(raw);
                    text.push_str(read);
                }
                2 => {
                    let mut body = String::new();
                    for _ in 0..self.rng.below(10) {
                        body.push(*self.rng.pick(CDATA_CHARS));
                    }
                    let body = body.replace("]]>", "]] >");
                    out.push_str("<![CDATA[");
                    out.push_str(&body);
                    out.push_str("]]>");
                    text.push_str(&body);
                }
                _ => {
                    for _ in 0..1 + self.rng.below(10) {
                        let c = *self.rng.pick(TEXT_CHARS);
                        out.push(c);
                        text.push(c);
                    }
                }
            }
        }
        text
    }

    /// A stanza (or nonza) at depth 1.
    fn stanza(&mut self, out: &mut String) -> Element {
        let scope = Scope {
            default_ns: ns::CLIENT.to_owned(),
            prefixes: Vec::new(),
        };
        let name = if self.rng.chance(60) {
            (*self.rng.pick(WELL_KNOWN_STANZAS)).to_owned()
        } else {
            self.name()
        };
        self.element(out, 1, &scope, name)
    }
}

fn char_ref(rng: &mut Rng, c: char) -> String {
    if rng.chance(50) {
        format!("&#{};", c as u32)
    } else if rng.chance(50) {
        format!("&#x{:X};", c as u32)
    } else {
        format!("&#x{:x};", c as u32)
    }
}

/// A stream header, opening tag only, and what it parses to.
fn header(rng: &mut Rng) -> (String, StreamHeader) {
    let q = if rng.chance(50) { '\'' } else { '"' };
    let id = format!("s{}", rng.below(100_000));
    let mut out = String::new();
    if rng.chance(70) {
        out.push_str(&format!("<?xml version={q}1.0{q}?>"));
        if rng.chance(30) {
            out.push('\n');
        }
    }
    let mut attrs = vec![
        format!("xmlns={q}jabber:client{q}"),
        format!("xmlns:stream={q}{STREAM_NS}{q}"),
        format!("from={q}example.org{q}"),
        format!("id={q}{id}{q}"),
        format!("version={q}1.0{q}"),
        format!("xml:lang={q}en{q}"),
    ];
    for i in (1..attrs.len()).rev() {
        attrs.swap(i, rng.below(i + 1));
    }
    out.push_str("<stream:stream");
    for a in attrs {
        out.push(' ');
        out.push_str(&a);
    }
    out.push('>');
    let expected = StreamHeader {
        from: Some("example.org".into()),
        to: None,
        id: Some(id),
        version: Some("1.0".into()),
        lang: Some("en".into()),
        default_ns: ns::CLIENT.to_owned(),
    };
    (out, expected)
}

/// A whole well-formed stream and the events it must produce.
fn well_formed_stream(rng: &mut Rng, max_depth: usize) -> (Vec<u8>, Vec<StreamEvent>) {
    let (mut out, head) = header(rng);
    let mut events = vec![StreamEvent::Open(head)];
    let mut generator = Generator {
        rng,
        max_depth,
        next_ns: 0,
    };
    for _ in 0..1 + generator.rng.below(8) {
        if generator.rng.chance(30) {
            // Whitespace keepalives between stanzas (RFC 6120 §4.6.1).
            const KEEPALIVES: [&str; 4] = [" ", "\n", "\r\n", "\t \n"];
            out.push_str(KEEPALIVES[generator.rng.below(KEEPALIVES.len())]);
        }
        let el = generator.stanza(&mut out);
        events.push(StreamEvent::Stanza(el));
    }
    if generator.rng.chance(70) {
        out.push_str("</stream:stream>");
        events.push(StreamEvent::Close);
    }
    (out.into_bytes(), events)
}

// ---------------------------------------------------------------------------------------------
// Driving the parser
// ---------------------------------------------------------------------------------------------

/// What feeding a byte sequence produced: the events and, if it failed, the error.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<StreamEvent>,
    error: Option<XmlError>,
}

/// Random split points: mostly small pieces, sometimes single bytes, sometimes large ones.
fn split_points(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < len {
        let step = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(8),
            2 => 1 + rng.below(64),
            _ => 1 + rng.below(len.max(1)),
        };
        at = (at + step).min(len);
        cuts.push(at);
    }
    cuts
}

/// Feeds `bytes` in the given pieces, draining events after every push. Checks on the way that
/// the parser never produces more events than it got bytes (no spinning) and that an error,
/// once returned, is returned again for every later call and push.
fn feed(limits: StreamLimits, bytes: &[u8], cuts: &[usize]) -> Outcome {
    let mut parser = StreamParser::new(limits);
    let mut events = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if to < from {
            continue;
        }
        parser.push(&bytes[from..to]);
        let pushed = to - from;
        from = to;
        let mut produced = 0;
        loop {
            match parser.next_event() {
                Ok(Some(e)) => {
                    produced += 1;
                    // Every event consumes at least one byte; more events than bytes means
                    // the parser is repeating itself.
                    assert!(
                        produced <= pushed + 1,
                        "{produced} events from a push of {pushed} bytes"
                    );
                    events.push(e);
                }
                Ok(None) => break,
                Err(e) => {
                    assert_error_sticks(&mut parser, &e);
                    return Outcome {
                        events,
                        error: Some(e),
                    };
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
    }
}

fn assert_error_sticks(parser: &mut StreamParser, e: &XmlError) {
    for _ in 0..3 {
        assert_eq!(parser.next_event().as_ref(), Err(e), "the error must stick");
    }
    parser.push(b"<presence/></stream:stream>");
    assert_eq!(
        parser.next_event().as_ref(),
        Err(e),
        "the error must stick after more bytes"
    );
}

fn limits(max_depth: usize) -> StreamLimits {
    StreamLimits {
        max_stanza_bytes: 256 * 1024,
        max_depth,
        max_skip_bytes: 0,
    }
}

/// Parses one element through a fresh stream.
fn reparse(xml: &str) -> Element {
    let stream = format!(
        "<stream:stream xmlns='jabber:client' xmlns:stream='{STREAM_NS}'>{xml}</stream:stream>"
    );
    let out = feed(limits(64), stream.as_bytes(), &[]);
    assert_eq!(out.error, None, "re-parsing {xml}");
    match out.events.as_slice() {
        [
            StreamEvent::Open(_),
            StreamEvent::Stanza(el),
            StreamEvent::Close,
        ] => el.clone(),
        other => panic!("re-parsing {xml} gave {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn well_formed_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let max_depth = 2 + rng.below(8);
    let (bytes, expected) = well_formed_stream(&mut rng, max_depth);
    let text = String::from_utf8_lossy(&bytes).into_owned();

    let whole = feed(limits(max_depth), &bytes, &[]);
    assert_eq!(whole.error, None, "stream: {text}");
    assert_eq!(whole.events, expected, "stream: {text}");

    for _ in 0..3 {
        let cuts = split_points(&mut rng, bytes.len());
        let split = feed(limits(max_depth), &bytes, &cuts);
        assert_eq!(split, whole, "cuts {cuts:?} of {text}");
    }
    let bytewise: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(feed(limits(max_depth), &bytes, &bytewise), whole);

    for event in &whole.events {
        if let StreamEvent::Stanza(el) = event {
            let xml = el.to_xml();
            assert_eq!(&reparse(&xml), el, "round trip of {xml}");
        }
    }
}

#[test]
fn well_formed_streams_parse_to_the_generated_elements_however_split() {
    run_cases(1, WELL_FORMED_CASES, well_formed_case);
}

/// Byte strings that make mutations hit the parser's interesting paths.
const TOKENS: &[&[u8]] = &[
    b"<",
    b">",
    b"/>",
    b"</",
    b"'",
    b"\"",
    b"&",
    b"&amp;",
    b"&#",
    b"&#x110000;",
    b"&#0;",
    b"&lol;",
    b"<![CDATA[",
    b"]]>",
    b"<!--",
    b"<!DOCTYPE x>",
    b"<?xml version='1.0'?>",
    b"<?pi?>",
    b"</stream:stream>",
    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
    b"xmlns='urn:x'",
    b"xmlns:p='urn:p'",
    b"p:",
    b"=",
    b" ",
    b"\xff",
    b"\xc3",
    b"\xe2\x98",
    b"\0",
];

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                bytes[i] = rng.next_u64() as u8;
            }
            1 if len > 0 => {
                let i = rng.below(len);
                let end = (i + 1 + rng.below(16)).min(len);
                bytes.drain(i..end);
            }
            2 => {
                let i = rng.below(len + 1);
                let token = *rng.pick(TOKENS);
                bytes.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => bytes.truncate(rng.below(len)),
            4 if len > 0 => {
                // Duplicate a slice elsewhere (unbalanced tags, repeated attributes).
                let i = rng.below(len);
                let end = (i + 1 + rng.below(32)).min(len);
                let piece = bytes[i..end].to_vec();
                let at = rng.below(len + 1);
                bytes.splice(at..at, piece);
            }
            _ => {
                let i = rng.below(len + 1);
                let b = rng.next_u64() as u8;
                bytes.insert(i, b);
            }
        }
    }
}

/// Random input is parsed the same whether fed whole or split: the same events, then the same
/// error. Two differences are tolerated: the detail text of `Restricted` (the condition must still
/// agree), and which events precede a size-limit error, since split input is checked as it
/// grows and whole input when it completes.
fn same_outcome_however_split(rng: &mut Rng, limits: StreamLimits, bytes: &[u8]) {
    let whole = feed(limits, bytes, &[]);
    let cuts = split_points(rng, bytes.len());
    let split = feed(limits, bytes, &cuts);
    let context = || format!("cuts {cuts:?} of {:?}", String::from_utf8_lossy(bytes));
    let too_large = |o: &Outcome| matches!(o.error, Some(XmlError::StanzaTooLarge { .. }));
    if too_large(&whole) || too_large(&split) {
        let n = whole.events.len().min(split.events.len());
        assert_eq!(whole.events[..n], split.events[..n], "{}", context());
        return;
    }
    assert_eq!(whole.events, split.events, "{}", context());
    assert_eq!(
        whole.error.as_ref().map(XmlError::condition),
        split.error.as_ref().map(XmlError::condition),
        "{}: {:?} / {:?}",
        context(),
        whole.error,
        split.error
    );
    if !matches!(whole.error, Some(XmlError::Restricted(_))) {
        assert_eq!(whole.error, split.error, "{}", context());
    }
}

fn mutation_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let max_depth = 2 + rng.below(6);
    let (mut bytes, _) = well_formed_stream(&mut rng, max_depth);
    mutate(&mut rng, &mut bytes);
    // Small limits now and then, so that the size checks meet broken input too.
    let limits = StreamLimits {
        max_stanza_bytes: if rng.chance(20) {
            64 + rng.below(512)
        } else {
            256 * 1024
        },
        max_depth,
        max_skip_bytes: 0,
    };
    // Half the cases skip oversized stanzas instead of failing: the outcome must still not
    // depend on where the reads end.
    let limits = StreamLimits {
        max_skip_bytes: if rng.chance(50) {
            limits.max_stanza_bytes + rng.below(4 * limits.max_stanza_bytes)
        } else {
            0
        },
        ..limits
    };
    same_outcome_however_split(&mut rng, limits, &bytes);
}

#[test]
fn mutated_streams_give_events_or_a_sticky_error_however_split() {
    run_cases(2, MUTATION_CASES, mutation_case);
}

fn random_bytes_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let len = rng.below(600);
    // Half the cases start with a valid header so that the random part reaches the framer.
    let mut bytes = if rng.chance(50) {
        header(&mut rng).0.into_bytes()
    } else {
        Vec::new()
    };
    let markup_heavy = rng.chance(50);
    for _ in 0..len {
        if markup_heavy && rng.chance(30) {
            bytes.extend_from_slice(TOKENS[rng.below(TOKENS.len())]);
        } else {
            bytes.push(rng.next_u64() as u8);
        }
    }
    same_outcome_however_split(&mut rng, limits(8), &bytes);
}

#[test]
fn random_bytes_give_events_or_a_sticky_error_however_split() {
    run_cases(3, RANDOM_BYTES_CASES, random_bytes_case);
}

// ---------------------------------------------------------------------------------------------
// Differential: the current parser against the previous implementation
// ---------------------------------------------------------------------------------------------

const DIFFERENTIAL_CASES: u64 = 750;

/// Feeds `bytes` whole to the previous implementation ([`reference`]).
fn feed_reference(limits: StreamLimits, bytes: &[u8]) -> Outcome {
    let mut parser = reference::StreamParser::new(limits);
    parser.push(bytes);
    let mut events = Vec::new();
    loop {
        match parser.next_event() {
            Ok(Some(e)) => events.push(e),
            Ok(None) => {
                return Outcome {
                    events,
                    error: None,
                };
            }
            Err(e) => {
                return Outcome {
                    events,
                    error: Some(e),
                };
            }
        }
    }
}

/// Rules the current parser adds: an element name must be a name (not empty, no `/`, quotes,
/// `<`, `>`, `=`, `&` or control characters) and an attribute needs a name. The previous parser
/// accepted `<a/b></a/b>`, `<></>` and `<a ='x'/>`.
fn added_rule(e: &XmlError) -> bool {
    matches!(e, XmlError::Malformed(m)
        if m.starts_with("invalid element name") || m == "attribute without a name")
}

/// The current parser accepts nothing the previous one refused, and what both accept is the
/// same. It may refuse more, but only by [`added_rule`], and it may report a mismatched end
/// tag of a stanza that has not completed yet, which the previous parser found only once the
/// stanza completed (it compared names with ASCII white space, form feed included, trimmed).
fn same_as_reference(limits: StreamLimits, bytes: &[u8]) {
    let new = feed(limits, bytes, &[]);
    let old = feed_reference(limits, bytes);
    let context = || {
        format!(
            "{:?}\ncurrent:  {:?}\nprevious: {:?}",
            String::from_utf8_lossy(bytes),
            new.error,
            old.error
        )
    };
    let n = new.events.len();
    assert!(
        n <= old.events.len(),
        "more events than before: {}",
        context()
    );
    assert_eq!(new.events[..], old.events[..n], "{}", context());
    if old.error.is_some() {
        assert!(
            new.error.is_some(),
            "accepted what was refused: {}",
            context()
        );
    }
    let Some(error) = &new.error else {
        assert_eq!(n, old.events.len(), "{}", context());
        return;
    };
    // A mismatched end tag found at the tag, where the previous parser found it (or another
    // error of the same stanza) when the stanza completed.
    let earlier = matches!(error, XmlError::Malformed(m) if m.starts_with("end tag"));
    if n < old.events.len() {
        // A stanza the previous parser accepted.
        assert!(added_rule(error), "refused: {}", context());
    } else if old.error.is_none() {
        // The stanza in progress at the end.
        assert!(added_rule(error) || earlier, "refused early: {}", context());
    } else if !added_rule(error) && !earlier {
        assert_eq!(
            error.condition(),
            old.error.as_ref().map_or("", XmlError::condition),
            "{}",
            context()
        );
    }
}

fn differential_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let max_depth = 2 + rng.below(6);
    let limits = StreamLimits {
        max_stanza_bytes: if rng.chance(10) {
            64 + rng.below(512)
        } else {
            256 * 1024
        },
        max_depth,
        max_skip_bytes: 0,
    };
    let bytes = match rng.below(3) {
        0 => well_formed_stream(&mut rng, max_depth).0,
        1 => {
            let (mut bytes, _) = well_formed_stream(&mut rng, max_depth);
            mutate(&mut rng, &mut bytes);
            bytes
        }
        _ => {
            let mut bytes = header(&mut rng).0.into_bytes();
            for _ in 0..rng.below(400) {
                if rng.chance(40) {
                    bytes.extend_from_slice(TOKENS[rng.below(TOKENS.len())]);
                } else {
                    bytes.push(*rng.pick(b"<>/='\"ab:x &;#\n\r\x0c\xc3"));
                }
            }
            bytes
        }
    };
    same_as_reference(limits, &bytes);
}

#[test]
fn the_parser_agrees_with_the_previous_implementation() {
    run_cases(4, DIFFERENTIAL_CASES, differential_case);
}

// ---------------------------------------------------------------------------------------------
// Memory bound, observed from outside: an endless stanza is refused in time
// ---------------------------------------------------------------------------------------------

/// The socket read size the session uses is 4 KiB; 16 KiB covers larger reads too.
const CHUNK: usize = 16 * 1024;

/// Opens a stream, starts a stanza with `opening`, then pushes `filler` in `CHUNK`-sized reads
/// until the parser refuses. Returns the bytes of the stanza buffered when it did.
fn bytes_until_refused(max_stanza_bytes: usize, opening: &[u8], filler: &[u8]) -> usize {
    let mut parser = StreamParser::new(StreamLimits {
        max_stanza_bytes,
        max_depth: 1 << 20,
        max_skip_bytes: 0,
    });
    parser.push(
        format!("<stream:stream xmlns='jabber:client' xmlns:stream='{STREAM_NS}'>").as_bytes(),
    );
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Open(_)))
    ));
    // Whole fillers only, so that every read continues the same construct.
    let chunk = filler.repeat(CHUNK / filler.len());
    parser.push(opening);
    let mut buffered = opening.len();
    loop {
        match parser.next_event() {
            Ok(None) => {}
            Ok(Some(e)) => panic!("unexpected event {e:?}"),
            Err(e) => {
                assert_eq!(
                    e,
                    XmlError::StanzaTooLarge {
                        limit: max_stanza_bytes
                    }
                );
                assert_error_sticks(&mut parser, &e);
                return buffered;
            }
        }
        assert!(
            buffered <= max_stanza_bytes + CHUNK,
            "{buffered} bytes of one stanza buffered with a limit of {max_stanza_bytes}"
        );
        parser.push(&chunk);
        buffered += chunk.len();
    }
}

#[test]
fn endless_stanzas_are_refused_within_the_limit_plus_one_read() {
    let cases: &[(&str, &[u8], &[u8])] = &[
        ("text", b"<message><body>", b"a"),
        ("escaped text", b"<message><body>", b"&amp;&#x263A;"),
        ("unclosed attribute", b"<message id='", b"x"),
        ("unclosed start tag", b"<message", b" a='1' b=\"2\""),
        ("long element name", b"<m", b"e"),
        ("many children", b"<message>", b"<x a='1'/>"),
        ("unclosed CDATA", b"<message><body><![CDATA[", b"]]"),
        ("children never closed", b"<iq>", b"<q>t</q><r>"),
    ];
    for max in [1_000, 10_000, 64 * 1024, 256 * 1024] {
        for (what, opening, filler) in cases {
            let buffered = bytes_until_refused(max, opening, filler);
            assert!(
                buffered > max,
                "{what}: refused a stanza of only {buffered} bytes"
            );
            assert!(
                buffered <= max + CHUNK,
                "{what}: {buffered} bytes buffered with a limit of {max}"
            );
        }
    }
}

#[test]
fn endless_stream_header_is_refused_within_the_limit_plus_one_read() {
    // Before the header there is no stanza yet; an unfinished header is still bounded.
    for (opening, filler) in [
        (&b"<stream:stream a='"[..], &b"x"[..]),
        (b"<?xml version='1.0'", b" "),
    ] {
        let mut parser = StreamParser::new(StreamLimits {
            max_stanza_bytes: 10_000,
            max_depth: 8,
            max_skip_bytes: 0,
        });
        parser.push(opening);
        let chunk = filler.repeat(CHUNK / filler.len());
        let mut buffered = opening.len();
        let err = loop {
            match parser.next_event() {
                Ok(None) => {}
                Ok(Some(e)) => panic!("unexpected event {e:?}"),
                Err(e) => break e,
            }
            assert!(buffered <= 10_000 + CHUNK, "{buffered} bytes buffered");
            parser.push(&chunk);
            buffered += chunk.len();
        };
        assert_eq!(err, XmlError::StanzaTooLarge { limit: 10_000 });
    }
}

#[test]
fn endless_keepalives_and_small_stanzas_are_not_refused() {
    // The limit is per stanza: a long stream of small ones and whitespace never trips it.
    let mut parser = StreamParser::new(StreamLimits {
        max_stanza_bytes: 1_000,
        max_depth: 8,
        max_skip_bytes: 0,
    });
    parser.push(
        format!("<stream:stream xmlns='jabber:client' xmlns:stream='{STREAM_NS}'>").as_bytes(),
    );
    assert!(matches!(
        parser.next_event(),
        Ok(Some(StreamEvent::Open(_)))
    ));
    let mut stanzas = 0;
    for i in 0..2_000 {
        let piece = if i % 2 == 0 {
            " \n".repeat(400)
        } else {
            "<presence><show>away</show></presence> ".to_owned()
        };
        parser.push(piece.as_bytes());
        while let Some(e) = parser.next_event().expect("small stanzas are fine") {
            assert!(matches!(e, StreamEvent::Stanza(_)));
            stanzas += 1;
        }
    }
    assert_eq!(stanzas, 1_000);
}

#[test]
fn nesting_one_deeper_than_the_limit_is_refused() {
    for max_depth in 1..10 {
        let mut ok = String::new();
        let mut deep = String::new();
        for level in 1..=max_depth + 1 {
            if level <= max_depth {
                ok.push_str(&format!("<e{level}>"));
            }
            deep.push_str(&format!("<e{level}>"));
        }
        for level in (1..=max_depth).rev() {
            ok.push_str(&format!("</e{level}>"));
        }
        let open = format!("<stream:stream xmlns='jabber:client' xmlns:stream='{STREAM_NS}'>");
        let fine = feed(limits(max_depth), format!("{open}{ok}").as_bytes(), &[]);
        assert_eq!(fine.error, None, "depth {max_depth}: {ok}");
        assert_eq!(fine.events.len(), 2);
        let refused = feed(limits(max_depth), format!("{open}{deep}").as_bytes(), &[]);
        assert_eq!(
            refused.error,
            Some(XmlError::TooDeep { limit: max_depth }),
            "depth {max_depth}: {deep}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the properties above (all fixed in src/xml/stream.rs).
// ---------------------------------------------------------------------------------------------

const OPEN: &str = "<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams'>";

#[test]
fn oversized_stanza_is_refused_even_when_it_arrives_in_one_read() {
    let limits = StreamLimits {
        max_stanza_bytes: 100,
        max_depth: 8,
        max_skip_bytes: 0,
    };
    let empty_tag = format!("{OPEN}<presence id='{}'/>", "x".repeat(500));
    let padded_end = format!("{OPEN}<message></message{}>", " ".repeat(200));
    for input in [empty_tag, padded_end] {
        assert_eq!(
            feed(limits, input.as_bytes(), &[]).error,
            Some(XmlError::StanzaTooLarge { limit: 100 }),
            "{input}"
        );
    }
}

#[test]
fn oversized_stream_header_is_refused_even_when_it_arrives_in_one_read() {
    let limits = StreamLimits {
        max_stanza_bytes: 100,
        max_depth: 8,
        max_skip_bytes: 0,
    };
    let header = format!(
        "<stream:stream xmlns='jabber:client' a='{}' xmlns:stream='{STREAM_NS}'>",
        "y".repeat(300)
    );
    let split = feed(limits, header.as_bytes(), &[50]);
    assert_eq!(split.error, Some(XmlError::StanzaTooLarge { limit: 100 }));
    assert_eq!(feed(limits, header.as_bytes(), &[]), split);
}

#[test]
fn comment_split_after_its_first_dash_is_still_a_comment() {
    let input = format!("{OPEN}<message><!-- x --></message>");
    let cut = input.find("<!-").expect("comment") + 3;
    let whole = feed(limits(8), input.as_bytes(), &[]);
    assert_eq!(whole.error, Some(XmlError::Restricted("a comment")));
    assert_eq!(feed(limits(8), input.as_bytes(), &[cut]), whole);
}

#[test]
fn processing_instruction_without_a_target_is_an_error_not_a_panic() {
    // Found by the mutation property (PARSER_FUZZ_ITERATIONS=40, seed c7861edcd1cf462b).
    for input in [
        "<?>",
        "<?><stream:stream>",
        &format!("{OPEN}<message><?></message>"),
    ] {
        let outcome = std::panic::catch_unwind(|| feed(limits(8), input.as_bytes(), &[]));
        let outcome = outcome.unwrap_or_else(|_| panic!("the parser panicked on {input:?}"));
        assert!(outcome.error.is_some(), "{input:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The previous implementation, as a reference
// ---------------------------------------------------------------------------------------------

/// The stream parser as it was before the single-pass rewrite (framer, then quick-xml's reader
/// over each complete stanza), kept here unchanged except that it builds elements through the
/// public [`Element`] API. The differential property below checks the current parser against
/// it: it must never accept what this one refused, and what both accept must be identical.
mod reference {
    use quick_xml::events::{BytesStart, Event};
    use quick_xml::{Reader, XmlVersion};
    use xmpp_core::ns;
    use xmpp_core::xml::{Element, StreamEvent, StreamHeader, StreamLimits, XmlError};

    /// Incremental parser for one direction of one XMPP stream. See the module docs.
    #[derive(Debug)]
    pub(super) struct StreamParser {
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
        pub(super) fn new(limits: StreamLimits) -> Self {
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

        /// Feeds bytes read from the connection.
        pub(super) fn push(&mut self, bytes: &[u8]) {
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
        pub(super) fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
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
                            Some(_) => {
                                return Err(XmlError::Restricted("a processing instruction"));
                            }
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
                            0 => {
                                return Err(XmlError::Malformed(
                                    "end tag before the stream".into(),
                                ));
                            }
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
            let text =
                std::str::from_utf8(&self.buf[start..end]).map_err(|_| XmlError::InvalidUtf8)?;
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
            let text =
                std::str::from_utf8(&self.buf[start..end]).map_err(|_| XmlError::InvalidUtf8)?;
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
            let name = std::str::from_utf8(&self.buf[name_start..gt])
                .map_err(|_| XmlError::InvalidUtf8)?;
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
    fn parse_element(text: &str, default_ns: &str) -> Result<Element, XmlError> {
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
                            None => {
                                return Err(XmlError::Restricted("an undeclared entity reference"));
                            }
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
        // (The original built the element first and set its namespace last; the public API
        // takes the namespace up front, so attributes are collected first.)
        let mut attrs: Vec<(String, String)> = Vec::new();
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
                attrs.push((key.to_owned(), value));
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
        let mut el = Element::new(local.to_owned(), uri.to_owned());
        for (k, v) in attrs {
            el.set_attr(k, v);
        }
        Ok(el)
    }
}

// ---------------------------------------------------------------------------------------------
// Skipping oversized stanzas: the session goes on, memory stays bounded
// ---------------------------------------------------------------------------------------------

#[test]
fn endless_stanzas_being_skipped_are_refused_without_buffering_them() {
    // Text and many small tags are read past with at most one stanza limit buffered; a single
    // construct over the limit (an endless attribute, name or CDATA) is refused at that limit.
    let cases: &[(&str, &[u8], &[u8], bool)] = &[
        ("text", b"<message><body>", b"a", true),
        ("escaped text", b"<message><body>", b"&amp;&#x263A;", true),
        ("many children", b"<message>", b"<x a='1'/>", true),
        ("children never closed", b"<iq>", b"<q>t</q><r>", false),
        ("unclosed attribute", b"<message id='", b"x", false),
        ("unclosed CDATA", b"<message><body><![CDATA[", b"]]", false),
    ];
    let max = 10_000;
    let max_skip = 200_000;
    for (what, opening, filler, reaches_skip_limit) in cases {
        let mut parser = StreamParser::new(StreamLimits {
            max_stanza_bytes: max,
            max_depth: 1 << 20,
            max_skip_bytes: max_skip,
        });
        parser.push(OPEN.as_bytes());
        assert!(matches!(
            parser.next_event(),
            Ok(Some(StreamEvent::Open(_)))
        ));
        let chunk = filler.repeat(CHUNK / filler.len());
        parser.push(opening);
        let mut pushed = opening.len();
        let err = loop {
            match parser.next_event() {
                Ok(None) => {}
                Ok(Some(e)) => panic!("{what}: unexpected event {e:?}"),
                Err(e) => break e,
            }
            assert!(pushed <= max_skip + CHUNK, "{what}: never refused");
            parser.push(&chunk);
            pushed += chunk.len();
        };
        if *reaches_skip_limit {
            assert_eq!(err, XmlError::StanzaTooLarge { limit: max_skip }, "{what}");
            assert!(
                pushed > max_skip,
                "{what}: refused after only {pushed} bytes"
            );
        } else {
            assert!(
                matches!(
                    err,
                    XmlError::StanzaTooLarge { .. } | XmlError::TooDeep { .. }
                ),
                "{what}: {err:?}"
            );
        }
        assert_error_sticks(&mut parser, &err);
    }
}

#[test]
fn a_skipped_stanza_is_reported_and_the_next_one_parses_however_split() {
    let limits = StreamLimits {
        max_stanza_bytes: 200,
        max_depth: 8,
        max_skip_bytes: 5_000,
    };
    let photo = "QUJD".repeat(300);
    let input = format!(
        "{OPEN}<iq type='result' id='v1' from='bob@example.net'><vCard xmlns='vcard-temp'>\
         <PHOTO><TYPE>image/png</TYPE><BINVAL>{photo}</BINVAL></PHOTO><![CDATA[x]]></vCard></iq>\
         <message from='bob@example.net/a' id='m2'><body>after</body></message>"
    );
    let size = input.find("<message").unwrap() - OPEN.len();
    let mut rng = Rng::new(7);
    for round in 0..200 {
        let cuts = if round == 0 {
            Vec::new()
        } else {
            split_points(&mut rng, input.len())
        };
        let out = feed(limits, input.as_bytes(), &cuts);
        assert_eq!(out.error, None, "cuts {cuts:?}");
        assert_eq!(out.events.len(), 3, "cuts {cuts:?}: {:?}", out.events);
        let StreamEvent::Skipped(skipped) = &out.events[1] else {
            panic!("cuts {cuts:?}: {:?}", out.events[1]);
        };
        assert_eq!(skipped.name, "iq");
        assert_eq!(skipped.id.as_deref(), Some("v1"));
        assert_eq!(skipped.kind.as_deref(), Some("result"));
        assert_eq!(skipped.from.as_deref(), Some("bob@example.net"));
        assert_eq!(skipped.bytes, size, "cuts {cuts:?}");
        let StreamEvent::Stanza(next) = &out.events[2] else {
            panic!("cuts {cuts:?}: {:?}", out.events[2]);
        };
        assert_eq!(next.attr("id"), Some("m2"));
    }
}

#[test]
fn a_stanza_over_the_skip_limit_or_broken_while_skipped_still_fails() {
    let limits = StreamLimits {
        max_stanza_bytes: 100,
        max_depth: 4,
        max_skip_bytes: 1_000,
    };
    let body = "a".repeat(2_000);
    let too_big = format!("{OPEN}<message><body>{body}</body></message>");
    let mismatched = format!("{OPEN}<message><body>{}</bodx></message>", "a".repeat(300));
    let comment = format!(
        "{OPEN}<message><body>{}<!-- x --></body></message>",
        "a".repeat(300)
    );
    let deep = format!("{OPEN}<message>{}<a><b><c><d>", "a".repeat(300));
    for (input, expected) in [
        (too_big, XmlError::StanzaTooLarge { limit: 1_000 }),
        (comment, XmlError::Restricted("a comment")),
        (deep, XmlError::TooDeep { limit: 4 }),
    ] {
        for cuts in [
            vec![],
            vec![OPEN.len() + 150],
            vec![OPEN.len() + 20, OPEN.len() + 320],
        ] {
            assert_eq!(
                feed(limits, input.as_bytes(), &cuts).error,
                Some(expected.clone()),
                "{input} cut at {cuts:?}"
            );
        }
    }
    assert!(matches!(
        feed(limits, mismatched.as_bytes(), &[]).error,
        Some(XmlError::Malformed(_))
    ));
}
