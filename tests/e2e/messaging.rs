//! The mapping table, end to end: a contact writes, a portal appears with a named ghost, and
//! messages, emotes, HTML, typing and presence flow both ways, in order, once.

use std::time::Duration;

use ruma::UserId;
use serde_json::json;
use testkit::{ContactLogin, StackEnv, XmppContact};

use crate::harness::*;

async fn conversation(backend: Backend) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, backend).await;
    let user = MatrixUser::new(&env, "alice").await;
    bridge.link(&user.user_id, "alice").await;
    bridge.start().await;

    let domain = env.get("XMPP_MESSENGER_DOMAIN");
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let alice_jid = format!("alice@{domain}");
    let ghost = UserId::parse(format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"))).unwrap();

    // Contact → Matrix: the first message opens the portal.
    let hello = unique("hello from bob ");
    // The bridge's session may still be logging in: resend until the portal invite shows up.
    bob.send_chat(&alice_jid, Some(&hello), Some("active"))
        .await;
    let room = user.accept_invite_from(&ghost, T).await;
    let room_id = room.room_id().to_owned();
    let msgs = user
        .wait_messages(&room_id, T, "first message", |m| {
            bodies_from(m, ghost.as_str()).contains(&hello.as_str())
        })
        .await;
    let first = msgs
        .iter()
        .find(|m| m["content"]["body"] == hello.as_str())
        .unwrap();
    assert_eq!(first["content"]["msgtype"], "m.text");

    // The ghost had its name and avatar before it spoke.
    let profile = get_json(
        &user,
        &format!("_matrix/client/v3/profile/{}", urlencode(ghost.as_str())),
    )
    .await;
    assert_eq!(profile["displayname"], "Bob Builder", "{profile}");
    assert!(
        profile["avatar_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("mxc://")),
        "{profile}"
    );

    // The portal carries m.bridge state.
    let state = get_json(
        &user,
        &format!(
            "_matrix/client/v3/rooms/{}/state",
            urlencode(room_id.as_str())
        ),
    )
    .await;
    let bridge_state: Vec<_> = state
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.bridge")
        .collect();
    assert_eq!(bridge_state.len(), 1, "one m.bridge state event: {state}");
    assert_eq!(
        bridge_state[0]["content"]["channel"]["id"],
        format!("bob@{domain}")
    );

    // Matrix → contact: plain text, emote, HTML.
    let reply = unique("hi bob ");
    user.send_text(&room_id, &reply).await;
    let ev = bob
        .wait_for(T, |e| {
            e["event"] == "message" && e["body"] == reply.as_str()
        })
        .await;
    assert_eq!(ev["type"], "chat");
    assert!(ev["from"].as_str().unwrap().starts_with(&alice_jid));
    {
        use ruma::events::room::message::RoomMessageEventContent;
        room.send(RoomMessageEventContent::emote_plain("waves"))
            .await
            .unwrap();
        bob.wait_for(T, |e| e["event"] == "message" && e["body"] == "/me waves")
            .await;
        room.send(RoomMessageEventContent::text_html(
            "**bold** & co",
            "<strong>bold</strong> &amp; co",
        ))
        .await
        .unwrap();
        // The Messenger profile has no styling: the plain body goes, with the user's marks
        // (on a standard server it is `*bold* & co`: rich::formatting_becomes_styling_and_back).
        bob.wait_for(T, |e| {
            e["event"] == "message" && e["body"] == "**bold** & co"
        })
        .await;
    }

    // Contact emote → m.emote.
    bob.send_chat(&alice_jid, Some("/me nods"), None).await;
    user.wait_messages(&room_id, T, "emote", |m| {
        m.iter().any(|e| {
            e["sender"] == ghost.as_str()
                && e["content"]["msgtype"] == "m.emote"
                && e["content"]["body"] == "nods"
        })
    })
    .await;

    // Typing, Matrix → XMPP (composing / paused).
    room.typing_notice(true).await.unwrap();
    bob.wait_for(T, |e| {
        e["event"] == "message" && e["state"] == "composing" && e["body"].is_null()
    })
    .await;
    room.typing_notice(false).await.unwrap();
    bob.wait_for(T, |e| e["event"] == "message" && e["state"] == "paused")
        .await;

    // Typing, XMPP → Matrix.
    bob.send_chat(&alice_jid, None, Some("composing")).await;
    wait_typing(&user, &room_id, &ghost, true).await;
    bob.send_chat(&alice_jid, None, Some("paused")).await;
    wait_typing(&user, &room_id, &ghost, false).await;

    // Ten each way, once, in order.
    let tag = unique("burst");
    for i in 0..10 {
        bob.send_chat(&alice_jid, Some(&format!("{tag} x→m {i}")), None)
            .await;
        user.send_text(&room_id, &format!("{tag} m→x {i}")).await;
    }
    let want: Vec<String> = (0..10).map(|i| format!("{tag} x→m {i}")).collect();
    let msgs = user
        .wait_messages(&room_id, T, "ten from the contact", |m| {
            bodies_from(m, ghost.as_str())
                .iter()
                .filter(|b| b.starts_with(&tag))
                .count()
                >= 10
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let msgs = {
        let later = user.messages(&room_id).await;
        if later.len() > msgs.len() {
            later
        } else {
            msgs
        }
    };
    let got: Vec<&str> = bodies_from(&msgs, ghost.as_str())
        .into_iter()
        .filter(|b| b.starts_with(&tag))
        .collect();
    assert_eq!(got, want, "contact → Matrix: once and in order");
    let got = bob
        .bodies_starting_with(&tag, 10, T, Duration::from_secs(1))
        .await;
    let want: Vec<String> = (0..10).map(|i| format!("{tag} m→x {i}")).collect();
    assert_eq!(got, want, "Matrix → contact: once and in order");

    // The metrics count them.
    let metrics = reqwest::get("http://127.0.0.1:29317/metrics")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |dir: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "messenger_bridge_messages_total{{direction=\"{dir}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("xmpp_to_matrix") >= 12 && count("matrix_to_xmpp") >= 13,
        "{metrics}"
    );

    bob.quit().await;
    bridge.stop().await;
}

async fn wait_typing(user: &MatrixUser, room: &ruma::OwnedRoomId, ghost: &UserId, typing: bool) {
    // Typing is ephemeral: read it through a fresh sync of the room's ephemeral events.
    let deadline = tokio::time::Instant::now() + T;
    let http = reqwest::Client::new();
    let token = user.client.access_token().unwrap();
    let base = user.client.homeserver();
    loop {
        // Synapse caches identical initial syncs for a while: make each one different.
        let filter = json!({"room": {"rooms": [room.as_str()], "timeline": {"limit": 0, "not_senders": [format!("@{}:x", unique("n"))]}, "state": {"limit": 0}, "ephemeral": {"types": ["m.typing"]}}, "presence": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]}});
        let url = format!(
            "{}_matrix/client/v3/sync?filter={}",
            base,
            urlencode(&filter.to_string())
        );
        let v: serde_json::Value = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap_or_default())
            .unwrap_or_default();
        let ids = v
            .pointer(&format!(
                "/rooms/join/{}/ephemeral/events",
                room.as_str().replace('~', "~0").replace('/', "~1")
            ))
            .and_then(|e| e.as_array())
            .and_then(|evs| evs.iter().find(|e| e["type"] == "m.typing"))
            .map(|e| e["content"]["user_ids"].clone());
        let is_typing = ids
            .as_ref()
            .and_then(|i| i.as_array())
            .is_some_and(|a| a.iter().any(|u| u == ghost.as_str()));
        if is_typing == typing {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ghost} typing={typing} not seen (last: {ids:?})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn conversation_on_sqlite() {
    conversation(Backend::Sqlite).await;
}

#[tokio::test]
async fn conversation_on_postgres() {
    conversation(Backend::Postgres).await;
}

#[tokio::test]
async fn presence_flows_both_ways() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    // Synapse shows presence only to users who share a room: open the portal first.
    portal_with_bob(&env, &mut bridge, &user, &mut bob).await;
    let ghost = UserId::parse(format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"))).unwrap();

    // Contact → ghost presence.
    let status = unique("lunch ");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        bob.command(json!({"op": "presence", "show": "away", "status": status}))
            .await;
        let p = get_presence(&user, &ghost).await;
        if p["presence"] == "unavailable" && p["status_msg"] == status.as_str() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ghost presence never became away/{status}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // User → XMPP presence, through Matrix presence.
    let mine = unique("coding ");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        set_presence(&user, "unavailable", &mine).await;
        let seen = bob.drain(Duration::from_millis(500)).await;
        if seen.iter().any(|e| {
            e["event"] == "presence"
                && e["from"].as_str().is_some_and(|f| f.starts_with("alice@"))
                && e["show"] == "away"
                && e["status"] == mine.as_str()
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never saw alice away/{mine}"
        );
    }
    bob.quit().await;
    bridge.stop().await;
}

pub(crate) async fn get_presence(user: &MatrixUser, of: &UserId) -> serde_json::Value {
    get_json(
        user,
        &format!(
            "_matrix/client/v3/presence/{}/status",
            urlencode(of.as_str())
        ),
    )
    .await
}

async fn set_presence(user: &MatrixUser, presence: &str, status: &str) {
    let url = format!(
        "{}_matrix/client/v3/presence/{}/status",
        user.client.homeserver(),
        urlencode(user.user_id.as_str())
    );
    let body = json!({"presence": presence, "status_msg": status}).to_string();
    let r = reqwest::Client::new()
        .put(url)
        .bearer_auth(user.client.access_token().unwrap())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

#[tokio::test]
async fn huge_messages_are_split_not_dropped_and_errors_become_notices() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "alice").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let room = portal_with_bob(&env, &mut bridge, &user, &mut bob).await;

    // 10,000 characters with max_message_bytes 4000 in the test config: three stanzas, in order.
    let tag = unique("huge");
    let words: Vec<String> = (0..1200).map(|i| format!("w{i:04}")).collect();
    let text = format!("{tag} {}", words.join(" "));
    user.send_text(&room, &text).await;
    let mut parts: Vec<String> = Vec::new();
    while parts.concat().split_whitespace().count() < text.split_whitespace().count() {
        let ev = bob
            .wait_for(T, |e| {
                e["event"] == "message"
                    && e["body"].is_string()
                    && !e["body"].as_str().unwrap().starts_with("open")
            })
            .await;
        let body = ev["body"].as_str().unwrap().to_owned();
        assert!(body.len() <= 4000, "a part of {} bytes", body.len());
        parts.push(format!("{body} "));
    }
    assert!(parts.len() >= 2, "the message was split");
    let joined: Vec<String> = parts
        .concat()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let original: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    assert_eq!(joined, original, "nothing lost, nothing reordered");

    // A message the server cannot deliver comes back as an error: the user sees a notice.
    let nobody = UserId::parse(format!(
        "@msn_nobody{}:{}",
        unique(""),
        env.get("MATRIX_SERVER_NAME")
    ))
    .unwrap();
    let dm = user.client.create_dm(&nobody).await.unwrap();
    let dm_id = dm.room_id().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    user.send_text(&dm_id, "is anyone there?").await;
    let msgs = user
        .wait_messages(&dm_id, T, "an error notice", |m| {
            m.iter().any(|e| {
                e["content"]["msgtype"] == "m.notice"
                    && e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.contains("not delivered"))
            })
        })
        .await;
    let notice = msgs
        .iter()
        .find(|e| e["content"]["msgtype"] == "m.notice")
        .unwrap();
    assert_eq!(
        notice["sender"],
        nobody.as_str(),
        "the notice comes from the contact's ghost in its portal"
    );
    bob.quit().await;
    bridge.stop().await;
}
