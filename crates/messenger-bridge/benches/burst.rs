//! Burst benchmark on the real stack (not a test): 2,000 messages XMPP → Matrix and 2,000
//! Matrix → XMPP through a release build of the bridge. Reports the bridge's CPU seconds per
//! 1,000 messages next to Synapse's in the same run, and the bridge-added latency from its
//! `/metrics` histograms (stanza received → homeserver accepted; transaction received → stanza
//! written).
//!
//!   deploy/local/stack up
//!   cargo build --release -p messenger-bridge
//!   cargo bench -p messenger-bridge --bench burst [-- N]

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{BenchBridge, Matrix, cpu_times, enc};
use testkit::{ContactLogin, StackEnv, XmppContact};

mod support;

/// The user's Matrix client keeps syncing for the whole run, as a real client does: Synapse's
/// CPU then includes delivering every event to one client, and the bench learns from the sync
/// (not by paging the room again and again) when the burst has arrived.
fn spawn_sync_loop(
    matrix: Arc<Matrix>,
    room: String,
    ghost: String,
    since: String,
    tag: String,
    seen: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let filter = enc(&json!({"room": {"timeline": {"limit": 5000}}}).to_string());
        let mut since = since;
        loop {
            let page = matrix
                .call(
                    reqwest::Method::GET,
                    &format!(
                        "/_matrix/client/v3/sync?timeout=30000&filter={filter}&since={}",
                        enc(&since)
                    ),
                    None,
                )
                .await;
            let timeline = &page["rooms"]["join"][&room]["timeline"];
            if timeline["limited"] == true {
                eprintln!("warning: the sync timeline was limited; the count may be short");
            }
            let new = timeline["events"].as_array().map_or(0, |events| {
                events
                    .iter()
                    .filter(|e| {
                        e["sender"] == ghost.as_str()
                            && e["content"]["body"]
                                .as_str()
                                .is_some_and(|b| b.starts_with(tag.as_str()))
                    })
                    .count()
            });
            seen.fetch_add(new, Ordering::SeqCst);
            if let Some(next) = page["next_batch"].as_str() {
                since = next.to_owned();
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

/// The `q` quantile of one part of `messenger_bridge_latency_seconds` as its histogram bucket
/// bound ("≤ 4 ms"), the only precision the histogram gives.
fn quantile(metrics: &str, direction: &str, part: &str, q: f64) -> String {
    let prefix = format!(
        "messenger_bridge_latency_seconds_bucket{{direction=\"{direction}\",part=\"{part}\",le=\""
    );
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.to_owned(), rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let largest = buckets
        .iter()
        .rev()
        .nth(1)
        .map_or(0.0, |b| b.0.parse::<f64>().unwrap_or(0.0));
    match buckets.iter().find(|(_, c)| *c >= q * total) {
        Some((le, _)) if le == "+Inf" => format!("> {largest} s"),
        Some((le, _)) => {
            let secs = le.parse::<f64>().unwrap();
            if secs < 1.0 {
                format!("≤ {} ms", secs * 1000.0)
            } else {
                format!("≤ {secs} s")
            }
        }
        None => "n/a".to_owned(),
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let env = StackEnv::load();
    let mut bench = BenchBridge::start(&env, "").await;
    let (bridge_pid, matrix, http) = (bench.pid, bench.matrix.clone(), bench.matrix.http.clone());
    eprintln!("bridge pid {bridge_pid}");
    let synapse_pid: u32 = env.get("SYNAPSE_PID").parse().unwrap();
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let alice = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    let room = bench.open_portal(&env, &mut bob).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = matrix
        .call(
            reqwest::Method::GET,
            "/_matrix/client/v3/sync?timeout=0",
            None,
        )
        .await;
    let tag = format!("x{}", std::process::id());
    let seen = Arc::new(AtomicUsize::new(0));
    let sync = spawn_sync_loop(
        matrix.clone(),
        room.clone(),
        ghost.clone(),
        first["next_batch"].as_str().unwrap().to_owned(),
        tag.clone(),
        seen.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // XMPP → Matrix.
    let (b0, s0, t0) = (
        cpu_times(bridge_pid),
        cpu_times(synapse_pid),
        Instant::now(),
    );
    for i in 0..n {
        bob.send_chat(&alice, Some(&format!("{tag} {i}")), Some("active"))
            .await;
    }
    while seen.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (b1, s1, x_secs) = (
        cpu_times(bridge_pid),
        cpu_times(synapse_pid),
        t0.elapsed().as_secs_f64(),
    );

    // Matrix → XMPP.
    let tag2 = format!("m{}", std::process::id());
    let (b2, s2, t2) = (
        cpu_times(bridge_pid),
        cpu_times(synapse_pid),
        Instant::now(),
    );
    // Sent from a task while Bob's events are read here: a contact whose output is not read
    // stops reading its XMPP stream too, and the server closes it as idle.
    let sender = {
        let (matrix, room, tag2) = (matrix.clone(), room.clone(), tag2.clone());
        tokio::spawn(async move {
            for i in 0..n {
                matrix
                    .call(
                        reqwest::Method::PUT,
                        &format!(
                            "/_matrix/client/v3/rooms/{}/send/m.room.message/b{i}",
                            enc(&room)
                        ),
                        Some(json!({"msgtype": "m.text", "body": format!("{tag2} {i}")})),
                    )
                    .await;
            }
        })
    };
    let mut got = 0;
    while got < n {
        bob.wait_for(Duration::from_secs(120), |e| {
            e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.starts_with(&tag2))
        })
        .await;
        got += 1;
    }
    sender.await.unwrap();
    let (b3, s3, m_secs) = (
        cpu_times(bridge_pid),
        cpu_times(synapse_pid),
        t2.elapsed().as_secs_f64(),
    );
    let extra = bob.drain(Duration::from_secs(2)).await;
    let dupes = extra
        .iter()
        .filter(|e| {
            e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.starts_with(&tag2))
        })
        .count();
    assert_eq!(dupes, 0, "Matrix → XMPP: {dupes} messages arrived twice");
    // Outside the measured spans: every message arrived exactly once.
    sync.abort();
    let in_room = matrix.count_from(&room, &ghost, &tag).await;
    assert_eq!(
        in_room, n,
        "XMPP → Matrix: {in_room} of {n} messages in the room"
    );
    let metrics = http
        .get("http://127.0.0.1:29317/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let per_k = |cpu: f64| cpu * 1000.0 / n as f64;
    let diff = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0, b.1 - a.1);
    println!("burst of {n} messages each way (bridge release build, SQLite, 2 cores)");
    println!();
    println!(
        "| direction | wall s | bridge CPU s / 1,000 msgs (user + sys) | Synapse CPU s / 1,000 msgs | bridge / Synapse |"
    );
    println!("|---|---:|---:|---:|---:|");
    let runs = [
        (
            "XMPP → Matrix",
            "xmpp_to_matrix",
            x_secs,
            diff(b0, b1),
            diff(s0, s1),
        ),
        (
            "Matrix → XMPP",
            "matrix_to_xmpp",
            m_secs,
            diff(b2, b3),
            diff(s2, s3),
        ),
    ];
    for (name, _, wall, b, s) in runs {
        println!(
            "| {name} | {wall:.1} | {:.3} ({:.3} + {:.3}) | {:.3} | {:.1}% |",
            per_k(b.0 + b.1),
            per_k(b.0),
            per_k(b.1),
            per_k(s.0 + s.1),
            100.0 * (b.0 + b.1) / (s.0 + s.1).max(1e-9),
        );
    }
    println!();
    println!("| direction | part | p50 | p99 |");
    println!("|---|---|---|---|");
    for (name, d, ..) in runs {
        for part in ["total", "queue", "remote", "bridge"] {
            println!(
                "| {name} | {part} | {} | {} |",
                quantile(&metrics, d, part, 0.5),
                quantile(&metrics, d, part, 0.99),
            );
        }
    }
    bob.quit().await;
    let _ = bench.process.kill().await;
}
