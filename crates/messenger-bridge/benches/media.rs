//! Media benchmark on the real stack (not a test): one file (50 MB by default) each way
//! through a release build of the bridge. Reports how far the transfer moved the bridge's peak
//! resident memory (VmHWM, reset just before) and its time next to a plain `curl` of the same
//! file on the same machine.
//!
//!   deploy/local/stack up
//!   cargo build --release -p messenger-bridge
//!   cargo bench -p messenger-bridge --bench media [-- MEGABYTES]

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{BenchBridge, enc, peak_rss_kib, reset_peak_rss, rss_kib};
use testkit::{ContactLogin, StackEnv, XmppContact};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

/// Serves `data` to every request on loopback; its URL.
async fn serve(data: Arc<Vec<u8>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    data.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&data).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/big.bin")
}

/// Seconds `curl` takes to fetch `url` to /dev/null.
fn curl(url: &str, token: Option<&str>) -> f64 {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-f", "-o", "/dev/null", "-w", "%{time_total}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    assert!(out.status.success(), "curl {url} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let megabytes: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let size = megabytes * 1_000_000;
    let env = StackEnv::load();
    let bridge = BenchBridge::start(&env, "media_from_private_addresses: true").await;
    let pid = bridge.pid;
    let matrix = bridge.matrix.clone();
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let room = bridge.open_portal(&env, &mut bob).await;
    let alice = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let data: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i * 31 + i / 977) as u8).collect());
    let http = reqwest::Client::new();

    // Matrix → XMPP: the file in the homeserver, the contact fetching the bridge's link.
    let upload: Value = serde_json::from_slice(
        &http
            .post(format!(
                "{}/_matrix/media/v3/upload?filename=big.bin",
                env.get("SYNAPSE_URL")
            ))
            .bearer_auth(&matrix.token)
            .header("content-type", "application/octet-stream")
            .body(data.as_ref().clone())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let mxc = upload["content_uri"]
        .as_str()
        .expect("upload refused")
        .to_owned();
    let before_mx = rss_kib(pid);
    reset_peak_rss(pid);
    let t = Instant::now();
    matrix
        .call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/bench-file", enc(&room)),
            Some(json!({"msgtype": "m.file", "body": "big.bin", "url": mxc, "info": {"mimetype": "application/octet-stream", "size": size}})),
        )
        .await;
    let message = bob
        .wait_for(Duration::from_secs(120), |e| {
            e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.contains("/media/"))
        })
        .await;
    let link = message["body"].as_str().unwrap().to_owned();
    let mut stream = http.get(&link).send().await.unwrap().bytes_stream();
    let mut received = 0usize;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len();
    }
    let secs_mx = t.elapsed().as_secs_f64();
    let peak_mx = peak_rss_kib(pid).saturating_sub(before_mx);
    assert_eq!(received, size, "the contact got the whole file");
    let path = mxc.strip_prefix("mxc://").unwrap();
    let curl_mx = curl(
        &format!(
            "{}/_matrix/client/v1/media/download/{path}",
            env.get("SYNAPSE_URL")
        ),
        Some(&matrix.token),
    );

    // XMPP → Matrix: the contact's link fetched into the homeserver.
    let url = serve(data.clone()).await;
    let before_xm = rss_kib(pid);
    reset_peak_rss(pid);
    let t = Instant::now();
    bob.command(json!({"op": "send_raw", "xml": format!(
        "<message to='{alice}' type='chat' id='bench-oob'><body>{url}</body>\
         <x xmlns='jabber:x:oob'><url>{url}</url></x></message>")}))
        .await;
    let event = loop {
        let page = matrix
            .call(
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20",
                    enc(&room)
                ),
                None,
            )
            .await;
        let found = page["chunk"].as_array().and_then(|c| {
            c.iter()
                .find(|e| e["sender"] == ghost.as_str() && e["content"]["url"].is_string())
                .cloned()
        });
        if let Some(e) = found {
            break e;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the file did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let secs_xm = t.elapsed().as_secs_f64();
    let peak_xm = peak_rss_kib(pid).saturating_sub(before_xm);
    assert_eq!(event["content"]["info"]["size"], size, "the whole file");
    let curl_xm = curl(&url, None);

    println!("one {megabytes} MB file each way (bridge release build, SQLite, 2 cores)");
    println!();
    println!(
        "| direction | time through the bridge | plain curl of the same file | bridge peak RSS growth |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| Matrix → XMPP (homeserver → bridge link → contact) | {secs_mx:.2} s | {curl_mx:.2} s (homeserver download) | {:.1} MiB |",
        mib(peak_mx)
    );
    println!(
        "| XMPP → Matrix (contact's link → bridge → homeserver upload) | {secs_xm:.2} s | {curl_xm:.2} s (the link) | {:.1} MiB |",
        mib(peak_xm)
    );
    println!();
    println!(
        "bridge RSS before: {:.1} MiB; log: {}",
        mib(before_mx),
        bridge.dir.join("bridge.log").display()
    );
    let _ = bridge.user_id;
    bob.quit().await;
}
