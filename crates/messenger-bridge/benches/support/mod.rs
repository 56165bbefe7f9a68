//! What the benchmarks share: a small client-server API caller, process CPU times, URL encoding.

#![allow(dead_code, unreachable_pub)]

use serde_json::Value;

/// User and system CPU seconds of a process so far.
pub fn cpu_times(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of /proc/PID/stat (1-based, counting pid and comm).
    let tick = |i: usize| fields[i].parse::<f64>().unwrap() / 100.0;
    (tick(11), tick(12))
}

pub struct Matrix {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Matrix {
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null)
    }

    pub async fn count_from(&self, room: &str, sender: &str, prefix: &str) -> usize {
        let mut count = 0;
        let mut from: Option<String> = None;
        for _ in 0..20 {
            let mut path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                enc(room)
            );
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let page = self.call(reqwest::Method::GET, &path, None).await;
            let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
            count += chunk
                .iter()
                .filter(|e| {
                    e["sender"] == sender
                        && e["content"]["body"]
                            .as_str()
                            .is_some_and(|b| b.starts_with(prefix))
                })
                .count();
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
        count
    }
}

/// Percent-encodes a path or query component.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
