//! Nothing is lost and nothing is duplicated when the bridge or the homeserver goes down.

use std::time::Duration;

use testkit::{ContactLogin, StackEnv, XmppContact, repo_root};

use crate::harness::*;

#[tokio::test]
async fn message_sent_while_the_bridge_is_down_arrives_with_its_original_timestamp() {
    offline_message_keeps_its_timestamp(Backend::Sqlite).await;
}

#[tokio::test]
async fn message_sent_while_the_bridge_is_down_arrives_with_its_original_timestamp_on_postgres() {
    offline_message_keeps_its_timestamp(Backend::Postgres).await;
}

async fn offline_message_keeps_its_timestamp(backend: Backend) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, backend).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    bridge.stop().await;

    let text = unique("while you were away ");
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    bob.send_chat(
        &format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN")),
        Some(&text),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    bridge.start().await;
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    let msgs = user
        .wait_messages(&room, T, "offline message", |m| {
            bodies_from(m, &ghost).contains(&text.as_str())
        })
        .await;
    let ev = msgs
        .iter()
        .find(|m| m["content"]["body"] == text.as_str())
        .unwrap();
    let ts = ev["origin_server_ts"].as_i64().unwrap();
    assert!(
        (ts - sent_at).abs() < 2_000,
        "origin_server_ts {ts} should be the original time {sent_at}, not the delivery time"
    );
    bob.quit().await;
    bridge.stop().await;
}

/// Sends `n` messages each way while `disrupt` runs, then checks every message arrived once,
/// in order.
async fn burst_survives(disruption: &str, n: usize, backend: Backend) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, backend).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    let tag = unique("b");

    for i in 0..n {
        bob.send_chat(&alice_jid, Some(&format!("{tag} x→m {i:03}")), None)
            .await;
        // The homeserver may be down in the middle: a Matrix client retries its sends.
        let text = format!("{tag} m→x {i:03}");
        let mut tries = 0;
        loop {
            use ruma::events::room::message::RoomMessageEventContent;
            let r = user
                .client
                .get_room(&room)
                .unwrap()
                .send(RoomMessageEventContent::text_plain(&text))
                .await;
            match r {
                Ok(_) => break,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 120, "could not send {text}: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if i == n / 3 {
            match disruption {
                "kill-bridge" => {
                    bridge.kill().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    bridge.start().await;
                }
                "restart-synapse" => {
                    let status =
                        tokio::process::Command::new(repo_root().join("deploy/local/stack"))
                            .args(["restart", "synapse"])
                            .status()
                            .await
                            .unwrap();
                    assert!(status.success(), "restarting Synapse failed");
                }
                _ => unreachable!(),
            }
        }
    }

    let want_m: Vec<String> = (0..n).map(|i| format!("{tag} x→m {i:03}")).collect();
    let msgs = user
        .wait_messages(&room, Duration::from_secs(120), "burst to Matrix", |m| {
            bodies_from(m, &ghost)
                .iter()
                .filter(|b| b.starts_with(&tag))
                .count()
                >= n
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msgs = {
        let later = user.messages(&room).await;
        if later.len() > msgs.len() {
            later
        } else {
            msgs
        }
    };
    let got: Vec<&str> = bodies_from(&msgs, &ghost)
        .into_iter()
        .filter(|b| b.starts_with(&tag))
        .collect();
    assert_eq!(
        got, want_m,
        "XMPP → Matrix after {disruption}: every message once, in order"
    );

    let mut got = Vec::new();
    while got.len() < n {
        let ev = bob
            .wait_for(Duration::from_secs(120), |e| {
                e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.starts_with(&tag))
            })
            .await;
        got.push(ev["body"].as_str().unwrap().to_owned());
    }
    let extra = bob.drain(Duration::from_secs(2)).await;
    got.extend(
        extra
            .iter()
            .filter_map(|e| e["body"].as_str())
            .filter(|b| b.starts_with(&tag))
            .map(str::to_owned),
    );
    let want_x: Vec<String> = (0..n).map(|i| format!("{tag} m→x {i:03}")).collect();
    assert_eq!(
        got,
        want_x,
        "Matrix → XMPP after {disruption}: every message once, in order\nbridge log:\n{}",
        bridge.log_tail()
    );
    bob.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn bridge_killed_mid_burst_loses_and_duplicates_nothing() {
    burst_survives("kill-bridge", 100, Backend::Sqlite).await;
}

#[tokio::test]
async fn bridge_killed_mid_burst_loses_and_duplicates_nothing_on_postgres() {
    burst_survives("kill-bridge", 100, Backend::Postgres).await;
}

#[tokio::test]
async fn synapse_restarted_mid_burst_loses_and_duplicates_nothing() {
    burst_survives("restart-synapse", 100, Backend::Sqlite).await;
}

#[tokio::test]
async fn synapse_restarted_mid_burst_loses_and_duplicates_nothing_on_postgres() {
    burst_survives("restart-synapse", 100, Backend::Postgres).await;
}

/// SIGTERM while a contact's unpaced burst is being read (each stanza with `<active/>`, as real
/// clients send): the bridge records every stanza it has read, closes its stream, and the rest
/// reaches it from the server's offline storage at the next start. Nothing lost, nothing twice,
/// in order.
#[tokio::test]
async fn bridge_stopped_mid_burst_records_what_it_read() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    let tag = unique("t");
    let n = 450;
    for i in 0..n {
        bob.send_chat(&alice_jid, Some(&format!("{tag} {i:04}")), Some("active"))
            .await;
    }
    // The contact's process sends as fast as it reads its commands: stop the bridge while the
    // stanzas are arriving.
    tokio::time::sleep(Duration::from_millis(150)).await;
    bridge.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    bridge.start().await;

    let want: Vec<String> = (0..n).map(|i| format!("{tag} {i:04}")).collect();
    user.wait_messages(&room, Duration::from_secs(120), "the whole burst", |m| {
        bodies_from(m, &ghost)
            .iter()
            .filter(|b| b.starts_with(&tag))
            .count()
            >= n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msgs = user.messages(&room).await;
    let got: Vec<&str> = bodies_from(&msgs, &ghost)
        .into_iter()
        .filter(|b| b.starts_with(&tag))
        .collect();
    assert_eq!(
        got,
        want,
        "every message once, in order\nbridge log:\n{}",
        bridge.log_tail()
    );
    bob.quit().await;
    bridge.stop().await;
}
