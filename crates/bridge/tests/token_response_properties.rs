//! Seeded property tests of what the bridge reads from an OAuth provider's token endpoint
//! ([`TokenResponse::parse`]) and the expiry it derives from it ([`expires_at`]): whatever the
//! provider answers, the bridge does not panic, keeps only usable tokens, never repeats a token
//! in an error message (those reach the user and the log), and never overflows a lifetime.
//!
//! A small PRNG (no dependency) makes the same cases on every machine. To search longer:
//! `TOKEN_FUZZ_ITERATIONS=50 cargo test -p bridge --test token_response_properties`; a failure
//! prints its seed.

#![allow(clippy::unwrap_used)]

use bridge::credentials::{TokenResponse, expires_at};
use serde_json::{Map, Value, json};

const CASES: u64 = 4_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn iterations() -> u64 {
    std::env::var("TOKEN_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A string of one of the shapes providers (or attackers) send.
fn string(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => "a".repeat(16 * 1024 + rng.below(3)),
        2 => format!("tok\n{}", rng.next()),
        3 => format!("tök-ünïcode-{}", rng.next()),
        4 => format!("tok\u{0}{}", rng.next()),
        5 => " ".repeat(1 + rng.below(3)),
        _ => format!("tok-{:x}-{:x}", rng.next(), rng.next()),
    }
}

fn value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!([i64::MIN, -1, 0, 1, 30, 3600, i64::MAX / 1000 + 1, i64::MAX][rng.below(8)]),
        3 => json!(u64::MAX),
        4 => json!(1.5e300),
        5 => Value::String(string(rng)),
        6 => Value::Array((0..rng.below(3)).map(|_| value(rng, depth + 1)).collect()),
        _ => {
            let mut m = Map::new();
            for i in 0..rng.below(3) {
                m.insert(format!("k{i}"), value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// A token response: mostly well typed, with one field often of the wrong type or shape.
fn response(rng: &mut Rng) -> Map<String, Value> {
    let mut m = Map::new();
    for key in [
        "access_token",
        "refresh_token",
        "expires_in",
        "token_type",
        "scope",
        "error",
        "error_description",
    ] {
        if rng.chance(25) {
            continue;
        }
        let v = if rng.chance(70) {
            match key {
                "expires_in" => value(rng, 0),
                _ => Value::String(string(rng)),
            }
        } else {
            value(rng, 0)
        };
        m.insert(key.to_owned(), v);
    }
    m
}

fn body(rng: &mut Rng, fields: &Map<String, Value>) -> Vec<u8> {
    let text = serde_json::to_vec(fields).unwrap();
    match rng.below(10) {
        0 => text[..rng.below(text.len() + 1)].to_vec(),
        1 => {
            let mut t = text;
            if !t.is_empty() {
                let i = rng.below(t.len());
                t[i] = (rng.next() & 0xff) as u8;
            }
            t
        }
        2 => (0..rng.below(64))
            .map(|_| (rng.next() & 0xff) as u8)
            .collect(),
        3 => b"<html>Bad Gateway</html>".to_vec(),
        _ => text,
    }
}

/// Whether the model expects a token: a 2xx answer that is a JSON object whose tokens are
/// usable and whose `expires_in` is an integer or absent.
fn acceptable(status: u16, body: &[u8]) -> bool {
    let usable = |t: &str| {
        !t.is_empty() && t.len() <= 16 * 1024 && t.bytes().all(|b| (0x20..=0x7e).contains(&b))
    };
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    (200..300).contains(&status)
        && m.get("access_token")
            .and_then(Value::as_str)
            .is_some_and(usable)
        && match m.get("refresh_token") {
            None | Some(Value::Null) => true,
            Some(Value::String(t)) => usable(t),
            Some(_) => false,
        }
        && match m.get("expires_in") {
            None | Some(Value::Null) => true,
            Some(v) => v.as_i64().is_some(),
        }
}

/// The token-like strings of a body, which no error may repeat.
fn secrets(fields: &Map<String, Value>) -> Vec<String> {
    ["access_token", "refresh_token"]
        .iter()
        .filter_map(|k| fields.get(*k)?.as_str())
        .filter(|s| s.len() >= 8)
        .map(str::to_owned)
        .collect()
}

fn case(seed: u64) {
    let mut rng = Rng(seed | 1);
    let status = [200, 201, 204, 302, 400, 401, 500, 503][rng.below(8)];
    let fields = response(&mut rng);
    let body = body(&mut rng, &fields);
    let expected = acceptable(status, &body);
    match TokenResponse::parse(status, &body) {
        Ok(t) => {
            assert!(
                expected,
                "seed {seed}: accepted {t:?} from status {status}: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(!t.access_token.is_empty());
        }
        Err(e) => {
            // A duplicate key is the one case the typed reader refuses and the model accepts.
            assert!(!expected, "seed {seed}: refused a usable answer: {e}");
            for s in secrets(&fields) {
                assert!(
                    !e.contains(&s),
                    "seed {seed}: the error repeats a token: {e}"
                );
            }
            assert!(
                e.chars().count() < 600,
                "seed {seed}: an error of {} characters",
                e.len()
            );
        }
    }
}

#[test]
fn whatever_the_provider_answers_only_usable_tokens_are_kept_and_no_error_repeats_one() {
    for base in [0x70C3_0001u64, 0xBADC_0FFE, 42] {
        for i in 0..CASES * iterations() {
            case(base.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i));
        }
    }
}

#[test]
fn a_lifetime_never_overflows_and_stays_believable() {
    let now = 1_796_000_000_000i64;
    let mut rng = Rng(7);
    let mut lifetimes = vec![i64::MIN, -1, 0, 1, 29, 30, 3600, i64::MAX / 1000, i64::MAX];
    lifetimes.extend((0..1000).map(|_| rng.next() as i64));
    for s in lifetimes {
        let at = expires_at(now, Some(s)).unwrap();
        assert!(
            (now + 30_000..=now + 10 * 365 * 24 * 3600 * 1000).contains(&at),
            "expires_in {s} gave {at}"
        );
        if (30..=3600).contains(&s) {
            assert_eq!(at, now + s * 1000);
        }
    }
    assert_eq!(expires_at(now, None), None);
    assert!(expires_at(i64::MAX - 5, Some(3600)).is_some());
}

#[test]
fn a_refusal_names_the_providers_error_code_and_nothing_unprintable() {
    let e = TokenResponse::parse(
        400,
        br#"{"error":"invalid_grant","error_description":"refresh token revoked"}"#,
    )
    .unwrap_err();
    assert!(e.contains("invalid_grant: refresh token revoked"), "{e}");
    let e = TokenResponse::parse(400, "{\"error\":\"bad\\u001b[31m\"}".as_bytes()).unwrap_err();
    assert!(!e.contains('\u{1b}'), "{e}");
    assert!(e.contains("HTTP 400"), "{e}");
}
