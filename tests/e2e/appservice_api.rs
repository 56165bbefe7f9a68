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
    bridge.stop().await;
}
