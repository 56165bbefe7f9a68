//! Parser throughput: xmpp-core's `StreamParser` against bare quick-xml tokenization and
//! against xmpp-rs (minidom + xmpp-parsers), on one recorded ~20 MB stream of mixed stanzas.
//!
//! Run: `cd benches/xmpp-parse && cargo run --release` (`-- <MiB>` for another stream size;
//! `-- 20 element`, `-- 20 typed`, `-- 20 quick` or `-- 20 xmpp-rs` runs only that variant,
//! for a profiler).
//! Each variant runs 5 times over the same bytes; the best run is reported.
//!
//! What each variant does:
//! - `quick-xml tokens`: `quick_xml::Reader::from_str` over the whole stream, every event read
//!   and dropped; no unescaping, no attribute parsing, no tree. The floor for any XML parser
//!   built on quick-xml.
//! - `xmpp-core Element`: `StreamParser` fed 16 KiB chunks; framing, limits, restricted-XML
//!   checks, UTF-8 validation, namespace resolution, unescaping, one owned `Element` per stanza.
//! - `xmpp-core typed`: the above plus `Message`/`Presence`/`Iq::try_from(Element)` for every
//!   stanza (JIDs parsed, chat state and delay extracted; the element is given up, so the IQ
//!   payload and the body/status text are moved, not copied, as xmpp-parsers' `try_from` does).
//! - `xmpp-rs typed`: per stanza, `minidom::Element` parsed from the stanza's text (framed in
//!   advance, outside the timing, with `xmlns='jabber:client'` added since minidom needs it)
//!   then `xmpp_parsers` `Message`/`Presence`/`Iq::try_from`, and for messages the chat state and
//!   delay payloads extracted (`extract_payload`) so the work matches ours. It gets framing for
//!   free, so it is favoured.

use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use xmpp_core::stanza::{Iq, Message, Presence};
use xmpp_core::xml::{StreamEvent, StreamLimits, StreamParser};

const RUNS: usize = 5;
const CHUNK: usize = 16 * 1024;
const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='bench' \
    version='1.0' xml:lang='en'>";

/// SplitMix64, so the stream is the same on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "hello", "are", "you", "there", "see", "you", "tomorrow", "at", "the", "café", "ok", "👍",
    "lunch?", "sure", "what", "about", "5pm", "&", "<3", "'quoted'", "meeting", "notes",
];

fn sentence(rng: &mut Rng, words: u64) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
}

fn contact(rng: &mut Rng) -> String {
    format!("contact{}@example.org", rng.below(500))
}

/// One stanza of the recorded mix; returns its kind for the counts.
fn stanza(rng: &mut Rng, n: u64, out: &mut String) -> &'static str {
    let me = "alice@example.org/bridge";
    match rng.below(100) {
        // Chat message with a body and an XEP-0085 chat state.
        0..40 => {
            let body = {
                let n = 3 + rng.below(20);
                sentence(rng, n)
            };
            out.push_str(&format!(
                "<message from='{}/phone' to='{me}' type='chat' id='m{n}'><body>{body}</body>\
                 <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                contact(rng)
            ));
            "chat message"
        }
        // Chat state only.
        40..60 => {
            let state = ["composing", "paused", "inactive", "gone"][rng.below(4) as usize];
            out.push_str(&format!(
                "<message from='{}/phone' to='{me}' type='chat' id='cs{n}'>\
                 <{state} xmlns='http://jabber.org/protocol/chatstates'/></message>",
                contact(rng)
            ));
            "chat state"
        }
        // Presence with show, status, priority.
        60..85 => {
            let show = ["away", "chat", "dnd", "xa"][rng.below(4) as usize];
            let status = {
                let n = 1 + rng.below(6);
                sentence(rng, n)
            };
            out.push_str(&format!(
                "<presence from='{}/laptop' to='{me}'><show>{show}</show>\
                 <status>{status}</status><priority>{}</priority></presence>",
                contact(rng),
                rng.below(20)
            ));
            "presence"
        }
        // Offline message with an XEP-0203 delay.
        85..93 => {
            let body = {
                let n = 3 + rng.below(15);
                sentence(rng, n)
            };
            out.push_str(&format!(
                "<message from='{}/phone' to='{me}' type='chat' id='off{n}'><body>{body}</body>\
                 <delay xmlns='urn:xmpp:delay' from='example.org' \
                 stamp='2026-11-2{}T1{}:3{}:0{}Z'>Offline Storage</delay></message>",
                contact(rng),
                rng.below(10),
                rng.below(10),
                rng.below(10),
                rng.below(10)
            ));
            "offline message"
        }
        // vCard result with a ~2 KiB base64 photo.
        93..97 => {
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut photo = String::with_capacity(2900);
            for i in 0..2048 {
                if i > 0 && i % 76 == 0 {
                    photo.push('\n');
                }
                photo.push(B64[rng.below(64) as usize] as char);
            }
            let who = contact(rng);
            out.push_str(&format!(
                "<iq from='{who}' to='{me}' type='result' id='v{n}'><vCard xmlns='vcard-temp'>\
                 <FN>{}</FN><NICKNAME>{}</NICKNAME><PHOTO><TYPE>image/jpeg</TYPE>\
                 <BINVAL>{photo}</BINVAL></PHOTO></vCard></iq>",
                sentence(rng, 2),
                sentence(rng, 1)
            ));
            "vcard result"
        }
        // Roster result.
        _ => {
            out.push_str(&format!(
                "<iq to='{me}' type='result' id='r{n}'><query xmlns='jabber:iq:roster' ver='v{n}'>"
            ));
            for _ in 0..5 + rng.below(30) {
                let sub = ["both", "to", "from", "none"][rng.below(4) as usize];
                out.push_str(&format!(
                    "<item jid='{}' name='{}' subscription='{sub}'><group>Friends</group></item>",
                    contact(rng),
                    sentence(rng, 2)
                ));
            }
            out.push_str("</query></iq>");
            "roster result"
        }
    }
}

struct Recorded {
    stream: String,
    /// Each stanza's text with `xmlns='jabber:client'` added, for minidom.
    framed: Vec<String>,
    kinds: Vec<(&'static str, usize, usize)>,
}

fn record(target_bytes: usize) -> Recorded {
    let mut rng = Rng(0x00C0_FFEE);
    let mut stream = String::with_capacity(target_bytes + 4096);
    stream.push_str(HEADER);
    let mut framed = Vec::new();
    let mut kinds: Vec<(&'static str, usize, usize)> = Vec::new();
    let mut n = 0;
    while stream.len() < target_bytes {
        let start = stream.len();
        let kind = stanza(&mut rng, n, &mut stream);
        let text = &stream[start..];
        let name_end = text.find([' ', '>']).expect("a tag");
        framed.push(format!(
            "{} xmlns='jabber:client'{}",
            &text[..name_end],
            &text[name_end..]
        ));
        match kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += 1;
                k.2 += text.len();
            }
            None => kinds.push((kind, 1, text.len())),
        }
        if rng.below(4) == 0 {
            stream.push('\n'); // whitespace keepalive / pretty-printing between stanzas
        }
        n += 1;
    }
    stream.push_str("</stream:stream>");
    Recorded {
        stream,
        framed,
        kinds,
    }
}

fn best_of(mut run: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut count = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        count = black_box(run());
        best = best.min(t.elapsed());
    }
    (best, count)
}

fn quick_xml_tokens(stream: &str) -> usize {
    let mut reader = quick_xml::Reader::from_str(stream);
    let mut events = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => return events,
            Ok(e) => {
                black_box(&e);
                events += 1;
            }
            Err(e) => panic!("quick-xml: {e}"),
        }
    }
}

fn xmpp_core_elements(stream: &str, typed: bool) -> usize {
    let mut parser = StreamParser::new(StreamLimits::default());
    let mut stanzas = 0;
    for chunk in stream.as_bytes().chunks(CHUNK) {
        parser.push(chunk);
        while let Some(event) = parser.next_event().expect("valid stream") {
            if let StreamEvent::Stanza(el) = event {
                stanzas += 1;
                if typed {
                    match el.name() {
                        "message" => {
                            black_box(Message::try_from(el).expect("message"));
                        }
                        "presence" => {
                            black_box(Presence::try_from(el).expect("presence"));
                        }
                        "iq" => {
                            black_box(Iq::try_from(el).expect("iq"));
                        }
                        other => panic!("unexpected <{other}>"),
                    }
                } else {
                    black_box(el);
                }
            }
        }
    }
    stanzas
}

fn xmpp_rs_typed(framed: &[String]) -> usize {
    use xmpp_parsers::chatstates::ChatState;
    use xmpp_parsers::delay::Delay;
    use xmpp_parsers::minidom::Element;
    let mut stanzas = 0;
    for text in framed {
        let el = Element::from_str(text).expect("minidom");
        stanzas += 1;
        match el.name() {
            "message" => {
                let mut m = xmpp_parsers::message::Message::try_from(el).expect("message");
                black_box(m.extract_payload::<ChatState>().expect("chat state"));
                black_box(m.extract_payload::<Delay>().expect("delay"));
                black_box(m);
            }
            "presence" => {
                black_box(xmpp_parsers::presence::Presence::try_from(el).expect("presence"));
            }
            "iq" => {
                black_box(xmpp_parsers::iq::Iq::try_from(el).expect("iq"));
            }
            other => panic!("unexpected <{other}>"),
        }
    }
    stanzas
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let rec = record(mib * 1024 * 1024);
    let bytes = rec.stream.len();
    let stanzas = rec.framed.len();
    println!(
        "stream: {:.1} MiB, {stanzas} stanzas, best of {RUNS} runs",
        bytes as f64 / (1024.0 * 1024.0)
    );
    for (kind, n, b) in &rec.kinds {
        println!("  {kind:<16} {n:>7} stanzas, avg {:>5} bytes", b / n);
    }

    // `-- <MiB> element|typed|quick|xmpp-rs`: run one variant alone (for a profiler).
    match std::env::args().nth(2).as_deref() {
        Some("element") => {
            return println!("{:?}", best_of(|| xmpp_core_elements(&rec.stream, false)));
        }
        Some("typed") => {
            return println!("{:?}", best_of(|| xmpp_core_elements(&rec.stream, true)));
        }
        Some("quick") => {
            return println!("{:?}", best_of(|| quick_xml_tokens(&rec.stream)));
        }
        Some("xmpp-rs") => {
            return println!("{:?}", best_of(|| xmpp_rs_typed(&rec.framed)));
        }
        _ => {}
    }
    let quick = best_of(|| quick_xml_tokens(&rec.stream));
    let ours = best_of(|| xmpp_core_elements(&rec.stream, false));
    let ours_typed = best_of(|| xmpp_core_elements(&rec.stream, true));
    let xmpp_rs = best_of(|| xmpp_rs_typed(&rec.framed));
    assert_eq!(ours.1, stanzas);
    assert_eq!(ours_typed.1, stanzas);
    assert_eq!(xmpp_rs.1, stanzas);

    println!();
    println!("| variant | best time | MiB/s | stanzas/s |\n|---|---:|---:|---:|");
    let row = |name: &str, (t, _): (Duration, usize)| {
        let s = t.as_secs_f64();
        println!(
            "| {name} | {:.1} ms | {:.1} | {:.0} |",
            s * 1000.0,
            bytes as f64 / (1024.0 * 1024.0) / s,
            stanzas as f64 / s
        );
        s
    };
    let q = row(&format!("quick-xml tokens ({} events)", quick.1), quick);
    let o = row("xmpp-core Element", ours);
    let ot = row("xmpp-core typed", ours_typed);
    let x = row("xmpp-rs typed (minidom + xmpp-parsers)", xmpp_rs);
    println!();
    println!(
        "xmpp-core typed vs xmpp-rs typed: {:.2}x throughput (target >= 5x)",
        x / ot
    );
    println!(
        "xmpp-core Element vs quick-xml tokens: {:.0}% (target >= 40%)",
        q / o * 100.0
    );
    println!(
        "xmpp-core typed vs quick-xml tokens: {:.0}%",
        q / ot * 100.0
    );
}
