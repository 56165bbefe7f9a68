//! The appservice API refuses what it must, and bad input never loses or crashes anything.

use std::time::Duration;

use serde_json::json;
use testkit::StackEnv;

use crate::harness::*;

const BASE: &str = "http://127.0.0.1:29317";

#[tokio::test]
async fn forged_or_missing_tokens_and_bad_json_are_refused_and_nothing_is_recorded() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.start().await;
    let http = reqwest::Client::new();
    let event = json!({"events": [{"type": "m.room.message", "room_id": "!x:localhost", "sender": "@mallory:localhost",
        "event_id": "$forged", "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "forged"}}]})
    .to_string();
    let put = |path: &str, token: Option<&str>, body: String| {
        let mut r = http
            .put(format!("{BASE}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = put(
        "/_matrix/app/v1/transactions/f1",
        Some("not-the-token"),
        event.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("M_FORBIDDEN"), "{body}");
    let r = put("/_matrix/app/v1/transactions/f2", None, event.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{BASE}/_matrix/app/v1/users/@msn_x:localhost"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let hs = env.get("HS_TOKEN");
    let r = put(
        "/_matrix/app/v1/transactions/bad1",
        Some(hs),
        "{not json".into(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("M_BAD_JSON"));
    let r = put(
        "/_matrix/app/v1/transactions/bad2",
        Some(hs),
        json!({"events": "nope"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    // Unknown event types are accepted and ignored.
    let r = put("/_matrix/app/v1/transactions/odd1", Some(hs), json!({"events": [{"type": "org.example.weird", "room_id": "!x:localhost",
        "sender": "@someone:localhost", "event_id": "$weird", "origin_server_ts": 1, "content": {}}]}).to_string()).await.unwrap();
    assert_eq!(r.status(), 200);

    bridge.stop().await;
    let store = bridge.open_store().await;
    assert_eq!(
        store
            .outbox_backlog(store::Direction::ToXmpp)
            .await
            .unwrap(),
        0,
        "nothing was recorded"
    );
    assert_eq!(
        store.txn_status("f1", "x").await.unwrap(),
        store::TxnStatus::New
    );
}

#[tokio::test]
async fn users_outside_the_permissions_are_refused_without_the_bot_joining() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.start().await;
    // Everyone on the server is allowed in the test config except @outsider…; register one.
    testkit::register_matrix_user(&env, "outsider", "pass-word-1").await;
    let client = matrix_sdk::Client::builder()
        .homeserver_url(env.get("SYNAPSE_URL"))
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .login_username("outsider", "pass-word-1")
        .send()
        .await
        .unwrap();
    client
        .sync_once(matrix_sdk::config::SyncSettings::default())
        .await
        .unwrap();
    let bot = ruma::UserId::parse(format!("@msnbot:{}", env.get("MATRIX_SERVER_NAME"))).unwrap();
    let room = client.create_dm(&bot).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        client
            .sync_once(matrix_sdk::config::SyncSettings::default())
            .await
            .unwrap();
        let _ = room.sync_members().await;
        let member = room.get_member_no_sync(&bot).await.ok().flatten();
        let state = member.as_ref().map(|m| m.membership().clone());
        if state == Some(ruma::events::room::member::MembershipState::Leave) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bot's invite was not rejected: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Rejected, never joined: the bot said nothing in the room.
    let mut options = matrix_sdk::room::MessagesOptions::backward();
    options.limit = 50u32.into();
    let msgs = room.messages(options).await.unwrap();
    let from_bot = msgs
        .chunk
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e.raw().json().get()).ok())
        .filter(|v| v["sender"] == bot.as_str() && v["type"] == "m.room.message")
        .count();
    assert_eq!(from_bot, 0);

    // Their messages, even in a room the bridge knows, are not even recorded: an outsider
    // cannot fill the bridge's outbox.
    let events: Vec<_> = (0..20)
        .map(|i| {
            json!({"type": "m.room.message", "room_id": room.room_id().as_str(),
                "sender": client.user_id().unwrap().as_str(), "event_id": format!("$outsider{i}"),
                "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "login"}})
        })
        .collect();
    let r = reqwest::Client::new()
        .put(format!("{BASE}/_matrix/app/v1/transactions/outsider1"))
        .bearer_auth(env.get("HS_TOKEN"))
        .header("content-type", "application/json")
        .body(json!({ "events": events }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    bridge.stop().await;
    let store = bridge.open_store().await;
    let added = store
        .enqueue(
            store::Direction::ToXmpp,
            room.room_id().as_str(),
            b"{}",
            Some("$outsider0"),
        )
        .await
        .unwrap();
    assert!(
        matches!(added, store::Enqueued::Added(_)),
        "an outsider's event was recorded: {added:?}"
    );
}

/// A seeded stream of malformed requests at every public endpoint of the running bridge
/// (transactions with mutated or hostile bodies, user and room queries, the login pages and the
/// OAuth callback with random parameters): each gets a clear answer below 500 in time, and
/// afterwards the bridge is healthy and bridges both ways as before.
#[tokio::test]
async fn malformed_requests_get_clear_answers_and_the_bridge_keeps_serving() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = testkit::XmppContact::start(&env, "bob", testkit::ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    // A new connection per request: the server may answer a refused request before reading
    // its whole body and close the connection, which a reused connection would report as no
    // answer (a browser retries then; reqwest does not).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let hs = env.get("HS_TOKEN");
    let valid = json!({"events": [{"type": "m.room.message", "room_id": room.as_str(),
        "sender": user.user_id.as_str(), "event_id": "$valid", "origin_server_ts": 1,
        "content": {"msgtype": "m.text", "body": "hello"}}]});
    let hostile_events = [
        json!({"type": "m.room.message", "room_id": room.as_str(), "sender": user.user_id.as_str(), "content": {"body": 5}}),
        json!({"type": "m.room.message", "room_id": room.as_str(), "sender": user.user_id.as_str(),
            "content": {"msgtype": "m.text", "body": "x", "format": "org.matrix.custom.html", "formatted_body": "<b>".repeat(5000)}}),
        json!({"type": "m.room.message", "room_id": room.as_str(), "sender": user.user_id.as_str(),
            "content": {"msgtype": "m.image", "body": "p.png", "url": "mxc://../../etc/passwd"}}),
        json!({"type": "m.room.message", "room_id": room.as_str(), "sender": user.user_id.as_str(),
            "content": {"msgtype": "m.text", "body": "edit", "m.relates_to": {"rel_type": "m.replace", "event_id": 7}}}),
        json!({"type": "m.room.member", "room_id": room.as_str(), "sender": user.user_id.as_str(), "state_key": null, "content": {"membership": ["leave"]}}),
        json!({"type": "m.room.message", "room_id": "not a room", "sender": "not a user", "content": {}}),
        json!({"type": "m.receipt", "content": {"$x": {"m.read": {"@a:b": "yes"}}}}),
        json!({"type": "m.typing", "room_id": room.as_str(), "content": {"user_ids": [1, 2]}}),
    ];
    let mut rng = 0x5EC0_1234_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..300 {
        let pick = next() % 9;
        let request = match pick {
            0..=3 => {
                let body = match pick {
                    0 => {
                        let mut b = valid.to_string().into_bytes();
                        let at = (next() as usize) % b.len();
                        if next() % 2 == 0 {
                            b.truncate(at);
                        } else {
                            b[at] = (next() & 0xff) as u8;
                        }
                        b
                    }
                    1 => {
                        let mut event =
                            hostile_events[(next() as usize) % hostile_events.len()].clone();
                        event["event_id"] = json!(format!("$hostile{i}"));
                        let key = if next() % 4 == 0 {
                            "ephemeral"
                        } else {
                            "events"
                        };
                        json!({ key: [event] }).to_string().into_bytes()
                    }
                    2 => {
                        let depth = 50 + (next() as usize) % 5000;
                        format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
                    }
                    _ => (0..(next() as usize) % 512)
                        .map(|_| (next() & 0xff) as u8)
                        .collect(),
                };
                http.put(format!("{BASE}/_matrix/app/v1/transactions/fuzz{i}"))
                    .bearer_auth(hs)
                    .header("content-type", "application/json")
                    .body(body)
            }
            4 => http
                .get(format!(
                    "{BASE}/_matrix/app/v1/users/{}",
                    odd_segment(next())
                ))
                .bearer_auth(hs),
            5 => http
                .get(format!(
                    "{BASE}/_matrix/app/v1/rooms/{}",
                    odd_segment(next())
                ))
                .bearer_auth(hs),
            6 => http.get(format!("{BASE}/login/{}", odd_segment(next()))),
            7 => http
                .post(format!("{BASE}/login/{}", odd_segment(next())))
                .header("cookie", format!("mb_login={}", odd_segment(next())))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "confirm={}&jid={}&password={}",
                    odd_segment(next()),
                    odd_segment(next()),
                    "p".repeat((next() as usize) % 100_000)
                )),
            _ => http.get(format!(
                "{BASE}/login/callback?code={}&state={}&error={}",
                odd_segment(next()),
                odd_segment(next()),
                odd_segment(next())
            )),
        };
        let r = request.send().await.unwrap_or_else(|e| {
            panic!(
                "request {i} (kind {pick}) got no answer: {e}\n{}",
                bridge.log_tail()
            )
        });
        assert!(
            r.status().as_u16() < 500,
            "request {i} (kind {pick}): {}\n{}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }

    let health = http.get(format!("{BASE}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
    let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let hello = unique("still bridging ");
    bob.send_chat(&alice_jid, Some(&hello), None).await;
    user.wait_messages(&room, T, "a message after the fuzzing", |m| {
        bodies_from(m, &ghost).contains(&hello.as_str())
    })
    .await;
    let answer = unique("answer after the fuzzing ");
    user.send_text(&room, &answer).await;
    bob.wait_for(Duration::from_secs(60), |e| {
        e["event"] == "message" && e["body"] == answer.as_str()
    })
    .await;
    let log = std::fs::read_to_string(bridge.dir.join("bridge.log")).unwrap();
    assert!(!log.contains("panicked"), "{}", bridge.log_tail());
    bob.quit().await;
    bridge.stop().await;
}

/// A path segment or parameter of one of the shapes an attacker tries.
fn odd_segment(n: u64) -> String {
    match n % 8 {
        0 => String::new(),
        1 => "%00%ff%fe".into(),
        2 => "..%2F..%2Fetc%2Fpasswd".into(),
        3 => "x".repeat(8_000),
        4 => "%F0%9F%98%80%E2%80%AE".into(),
        5 => "@msn_%22%3Cscript%3E:localhost".into(),
        6 => format!("#msn_{n}:localhost"),
        _ => format!("{n:x}"),
    }
}
