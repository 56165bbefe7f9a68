//! What a real user meets: a hung or stopped homeserver, a crash in the middle, a ghost kicked
//! out of its portal, an encrypted DM with the bot (Element's default). Nothing is lost, nothing
//! arrives twice, every message keeps its own time, and the user is never left in silence.

use std::time::Duration;

use ruma::UserId;
use serde_json::Value;
use testkit::{StackEnv, repo_root};

use crate::harness::*;
use crate::linking::{bot, bot_said};

fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn synapse_pid(env: &StackEnv) -> String {
    let file = std::path::Path::new(env.get("STACK_DIR")).join("run/synapse.pid");
    std::fs::read_to_string(file).unwrap().trim().to_owned()
}

async fn signal(pid: &str, sig: &str) {
    let status = tokio::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Each of `sent` (body, send time) is in the room exactly once, in this order, with an
/// `origin_server_ts` within 3 s of when it was sent.
fn assert_once_in_order_on_time(msgs: &[Value], ghost: &str, sent: &[(String, i64)]) {
    let from_ghost: Vec<&Value> = msgs.iter().filter(|m| m["sender"] == ghost).collect();
    let mut last_index = 0;
    for (body, at) in sent {
        let found: Vec<(usize, &&Value)> = from_ghost
            .iter()
            .enumerate()
            .filter(|(_, m)| m["content"]["body"] == body.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{body:?} should be in the room once");
        let (index, event) = found[0];
        assert!(index >= last_index, "{body:?} is out of order");
        last_index = index;
        let ts = event["origin_server_ts"].as_i64().unwrap();
        assert!(
            (ts - at).abs() <= 3_000,
            "{body:?} sent at {at} shows {ts} ({} ms off)",
            ts - at
        );
    }
}

/// A hung homeserver while contacts write (every stanza with `<active/>`, as real clients send),
/// then the bridge killed: what it had read was recorded before any homeserver call, and arrives
/// after the restart once, in order, with the time it was received, not the redelivery time.
#[tokio::test]
async fn messages_read_before_a_crash_during_a_hung_homeserver_keep_their_time() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = testkit::XmppContact::start(&env, "bob", testkit::ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));

    let pid = synapse_pid(&env);
    signal(&pid, "-STOP").await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let body = unique(&format!("hung {i} "));
        sent.push((body.clone(), now_ms()));
        bob.send_chat(&alice_jid, Some(&body), Some("active")).await;
    }
    // The bridge has read them; its homeserver calls hang. Then it dies.
    tokio::time::sleep(Duration::from_secs(4)).await;
    bridge.kill().await;
    signal(&pid, "-CONT").await;
    bridge.start().await;

    let msgs = user
        .wait_messages(&room, T * 2, "messages read before the crash", |m| {
            let bodies = bodies_from(m, &ghost);
            sent.iter().all(|(b, _)| bodies.contains(&b.as_str()))
        })
        .await;
    assert_once_in_order_on_time(&msgs, &ghost, &sent);
    bob.quit().await;
    bridge.stop().await;
}

/// The homeserver is down for longer than ten retries at the configured backoff cap: the bridge
/// keeps retrying (for `retry_for_secs`), and once the homeserver is back nothing is missing.
#[tokio::test]
async fn homeserver_down_for_many_retries_loses_nothing() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.configure("retry_max_delay_secs", "1");
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = testkit::XmppContact::start(&env, "bob", testkit::ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));

    signal(&synapse_pid(&env), "-TERM").await;
    let mut sent = Vec::new();
    for i in 0..2 {
        let body = unique(&format!("outage {i} "));
        sent.push((body.clone(), now_ms()));
        bob.send_chat(&alice_jid, Some(&body), Some("active")).await;
    }
    // At a 1 s cap, 25 s down is well past the ten attempts the bridge used to give up after.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let retries: f64 = bridge
        .metrics()
        .await
        .lines()
        .filter(|l| l.contains("matrix_retry") && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(retries >= 10.0, "only {retries} retries while down");
    let status = tokio::process::Command::new(repo_root().join("deploy/local/stack"))
        .arg("up")
        .status()
        .await
        .unwrap();
    assert!(status.success(), "starting Synapse again failed");

    let msgs = user
        .wait_messages(&room, T * 2, "messages from the outage", |m| {
            let bodies = bodies_from(m, &ghost);
            sent.iter().all(|(b, _)| bodies.contains(&b.as_str()))
        })
        .await;
    assert_once_in_order_on_time(&msgs, &ghost, &sent);
    assert!(
        !bridge.metrics().await.contains("matrix_gave_up"),
        "a message was given up"
    );
    bob.quit().await;
    bridge.stop().await;
}

/// The user opened a DM with the contact's ghost (so the user can kick it), then kicks the ghost
/// out: the contact's next message opens a new portal and arrives there, instead of being
/// refused and dropped.
#[tokio::test]
async fn a_kicked_ghost_gets_a_new_portal_and_its_message_arrives() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = testkit::XmppContact::start(&env, "bob", testkit::ContactLogin::Messenger).await;
    bridge.link(&user.user_id, "alice").await;
    bridge.start().await;
    let ghost = UserId::parse(format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"))).unwrap();
    let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));

    // The user's own DM with the ghost becomes the portal once the ghost has joined.
    // A private chat (not a trusted one, where the invitee gets the creator's power level).
    let mut request = ruma::api::client::room::create_room::v3::Request::new();
    request.invite = vec![ghost.clone()];
    request.is_direct = true;
    request.preset = Some(ruma::api::client::room::create_room::v3::RoomPreset::PrivateChat);
    let dm = user.client.create_room(request).await.unwrap();
    let dm_id = dm.room_id().to_owned();
    let hello = unique("hello from my DM ");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let joined = dm
            .get_member_no_sync(&ghost)
            .await
            .ok()
            .flatten()
            .is_some_and(|m| *m.membership() == ruma::events::room::member::MembershipState::Join);
        if joined {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ghost never joined the DM"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = dm.sync_members().await;
    }
    user.send_text(&dm_id, &hello).await;
    bob.wait_for(T, |e| {
        e["event"] == "message" && e["body"] == hello.as_str()
    })
    .await;

    dm.kick_user(&ghost, Some("testing")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let body = unique("after the kick ");
    bob.send_chat(&alice_jid, Some(&body), Some("active")).await;
    let new_room = user.accept_invite_from(&ghost, T).await;
    assert_ne!(new_room.room_id(), dm_id, "a new portal");
    let new_id = new_room.room_id().to_owned();
    user.wait_messages(&new_id, T, "the message after the kick", |m| {
        bodies_from(m, ghost.as_str()).contains(&body.as_str())
    })
    .await;
    // And the user's answer there reaches the contact.
    let answer = unique("answer in the new portal ");
    user.send_text(&new_id, &answer).await;
    bob.wait_for(T, |e| {
        e["event"] == "message" && e["body"] == answer.as_str()
    })
    .await;
    bob.quit().await;
    bridge.stop().await;
}

/// Element makes DMs encrypted by default. A user who opens an encrypted DM with the bot gets a
/// plain answer there and an unencrypted room where `login` works, not silence.
#[tokio::test]
async fn an_encrypted_dm_with_the_bot_gets_an_answer_and_a_room_that_works() {
    use ruma::api::client::room::create_room::v3::Request;
    use ruma::events::InitialStateEvent;
    use ruma::events::room::encryption::RoomEncryptionEventContent;

    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.start().await;
    let user = MatrixUser::new(&env, "element").await;
    let bot = bot(&env);

    let mut request = Request::new();
    request.invite = vec![bot.clone()];
    request.is_direct = true;
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let encrypted = user.client.create_room(request).await.unwrap();
    let encrypted_id = encrypted.room_id().to_owned();
    let notice = bot_said(&user, &encrypted_id, &env, |b| b.starts_with("🔒")).await;
    assert!(notice.contains("unencrypted room"), "{notice}");

    let plain = user.accept_invite_from(&bot, T).await;
    let plain_id = plain.room_id().to_owned();
    bot_said(&user, &plain_id, &env, |b| b.contains("login")).await;
    user.send_text(&plain_id, "login").await;
    bot_said(&user, &plain_id, &env, |b| b.contains("/login/")).await;
    bridge.stop().await;
}

/// `check-xmpp` says whether the XMPP server is reachable and its certificate trusted before
/// anyone signs in; for Prosody's default self-signed certificate it names the fingerprint and
/// the fix, and the pinned certificate then passes.
#[tokio::test]
async fn check_xmpp_reports_the_servers_certificate_before_anyone_signs_in() {
    let env = StackEnv::load();
    let bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let check = || async {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_messenger-bridge"))
            .arg("-c")
            .arg(&bridge.config)
            .arg("check-xmpp")
            .output()
            .await
            .unwrap()
    };
    let out = check().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("TLS certificate verified"), "{text}");

    // A standard server with the certificate `prosodyctl cert generate` made.
    bridge.edit_config("profile: messenger", "profile: standard");
    bridge.edit_config(
        &format!("domain: {}", env.get("XMPP_MESSENGER_DOMAIN")),
        &format!("domain: {}", env.get("XMPP_SELFSIGNED_DOMAIN")),
    );
    let out = check().await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("xmpp.tls_fingerprint"), "{err}");
    bridge.edit_config(
        &format!("ca_file: {}", env.get("XMPP_CA_FILE")),
        &format!("ca_file: {}", env.get("XMPP_SELFSIGNED_CERT")),
    );
    let out = check().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The database goes away under the bridge (its tables renamed, so every query fails) while a
/// contact writes and the user answers: each side's messages are retried until the database is
/// back, then arrive once, in order, on time; the bridge neither crashes nor drops anything.
#[tokio::test]
async fn a_database_outage_loses_nothing_either_way() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Postgres).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = testkit::XmppContact::start(&env, "bob", testkit::ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));

    bridge
        .psql(
            "ALTER TABLE outbox RENAME TO outbox_away; \
             ALTER TABLE appservice_txns RENAME TO appservice_txns_away;",
        )
        .await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let body = unique(&format!("during the outage {i} "));
        sent.push((body.clone(), now_ms()));
        bob.send_chat(&alice_jid, Some(&body), Some("active")).await;
    }
    let answer = unique("answer during the outage ");
    user.send_text(&room, &answer).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    bridge
        .psql(
            "ALTER TABLE outbox_away RENAME TO outbox; \
             ALTER TABLE appservice_txns_away RENAME TO appservice_txns;",
        )
        .await;

    let msgs = user
        .wait_messages(
            &room,
            Duration::from_secs(60),
            "messages after the outage",
            |m| {
                let got = bodies_from(m, &ghost);
                sent.iter().all(|(b, _)| got.contains(&b.as_str()))
            },
        )
        .await;
    assert_once_in_order_on_time(&msgs, &ghost, &sent);
    bob.wait_for(Duration::from_secs(60), |e| {
        e["event"] == "message" && e["body"] == answer.as_str()
    })
    .await;
    let again = bob.drain(Duration::from_secs(2)).await;
    assert!(
        !again.iter().any(|e| e["body"] == answer.as_str()),
        "the answer arrived twice"
    );
    let log = std::fs::read_to_string(bridge.dir.join("bridge.log")).unwrap();
    assert!(
        log.contains("cannot record an incoming message; retrying"),
        "the outage was not noticed:\n{}",
        bridge.log_tail()
    );
    bob.quit().await;
    bridge.stop().await;
}

/// While the user's XMPP session is offline, a portal holds at most
/// `bridge.max_queued_per_portal` messages: more are refused with a notice in the room (not
/// recorded, so nobody fills the database), and the ones taken go out in order once the session
/// is back.
#[tokio::test]
async fn a_portal_queue_is_capped_while_xmpp_is_offline_and_the_user_is_told() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.configure("max_queued_per_portal", "3");
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = testkit::XmppContact::start(&env, "bob", testkit::ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));

    // The XMPP server unreachable for the bridge (a closed port) while bob stays online.
    bridge.stop().await;
    let port_line = format!("port: {}", env.get("XMPP_PORT"));
    bridge.edit_config(&port_line, "port: 1");
    bridge.start().await;
    let tag = unique("queued ");
    for i in 0..5 {
        user.send_text(&room, &format!("{tag}{i}")).await;
    }
    user.wait_messages(&room, T, "two refusals", |m| {
        bodies_from(m, &ghost)
            .iter()
            .filter(|b| b.starts_with("⚠ Not sent: 3 messages"))
            .count()
            >= 2
    })
    .await;

    bridge.stop().await;
    bridge.edit_config("port: 1", &port_line);
    bridge.start().await;
    let got = bob
        .bodies_starting_with(&tag, 3, Duration::from_secs(60), Duration::from_secs(3))
        .await;
    let want: Vec<String> = (0..3).map(|i| format!("{tag}{i}")).collect();
    assert_eq!(
        got, want,
        "the three taken, in order, and not the refused ones"
    );
    bob.quit().await;
    bridge.stop().await;
}
