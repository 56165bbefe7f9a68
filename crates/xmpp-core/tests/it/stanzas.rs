//! Roster, presence, messages with chat states, offline delivery and vCards, with slixmpp as
//! the contact on the other side.

use std::time::Duration;

use serde_json::json;
use testkit::{ContactLogin, StackEnv, XmppContact, oauth_tokens};
use xmpp_core::manager::{AccountEvent, ConnectionState, ManagerEvent, SessionManager};
use xmpp_core::sasl::Credentials;
use xmpp_core::session::SessionEvent;
use xmpp_core::stanza::{ChatState, Message, MessageType, Presence, PresenceType, Show};
use xmpp_core::{Jid, ServerProfile};

use crate::harness::*;

/// Logs `user` in on the Messenger host through a manager; returns it with its events.
async fn logged_in(
    env: &StackEnv,
    user: &str,
    key: &str,
) -> (SessionManager, tokio::sync::mpsc::Receiver<AccountEvent>) {
    let tokens = oauth_tokens(env, user, "smoke-test").await;
    let (mgr, mut rx) = manager(env);
    mgr.start(
        messenger_account(env, key),
        FixedCredentials::new(Credentials::AccessToken(tokens.access_token)),
    );
    let ev = wait_for(&mut rx, key, T, |e| {
        matches!(
            e,
            ManagerEvent::State(
                ConnectionState::Connected { .. } | ConnectionState::BadCredentials { .. }
            )
        )
    })
    .await;
    assert!(
        matches!(ev, ManagerEvent::State(ConnectionState::Connected { .. })),
        "{ev:?}"
    );
    (mgr, rx)
}

fn unique(tag: &str) -> String {
    format!("{tag}-{:x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id())
}

#[tokio::test]
async fn roster_is_read_after_login_with_names() {
    let env = StackEnv::load();
    let (mgr, mut rx) = logged_in(&env, "alice", "roster").await;
    let ev = wait_for(&mut rx, "roster", T, |e| {
        matches!(e, ManagerEvent::Roster(_))
    })
    .await;
    let ManagerEvent::Roster(items) = ev else {
        unreachable!()
    };
    let domain = env.get("XMPP_MESSENGER_DOMAIN");
    let bob = items
        .iter()
        .find(|i| i.jid.to_string() == format!("bob@{domain}"))
        .expect("bob on alice's roster");
    assert_eq!(bob.name.as_deref(), Some("Bob Builder"));
    assert!(
        items
            .iter()
            .any(|i| i.jid.to_string() == format!("carol@{domain}"))
    );
    // The same roster on request.
    assert_eq!(mgr.roster("roster").await.unwrap().len(), items.len());
    mgr.shutdown().await;
}

#[tokio::test]
async fn vcard_is_fetched_with_its_photo() {
    let env = StackEnv::load();
    let (mgr, _rx) = logged_in(&env, "alice", "vcard").await;
    let bob = Jid::parse(&format!("bob@{}", env.get("XMPP_MESSENGER_DOMAIN"))).unwrap();
    let vcard = mgr.vcard("vcard", &bob).await.unwrap();
    assert_eq!(vcard.full_name.as_deref(), Some("Bob Builder"));
    assert_eq!(vcard.nickname.as_deref(), Some("Bob"));
    let photo = vcard.photo.expect("bob has a photo");
    assert_eq!(photo.mime, "image/png");
    assert!(
        photo.data.starts_with(b"\x89PNG"),
        "the photo is the seeded PNG"
    );
    mgr.shutdown().await;
}

#[tokio::test]
async fn chat_messages_and_chat_states_flow_both_ways() {
    let env = StackEnv::load();
    let (mgr, mut rx) = logged_in(&env, "alice", "chat").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let alice_bare = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));

    // Contact → us: composing, then a message with active.
    let text = unique("hello from bob");
    bob.send_chat(&alice_bare, None, Some("composing")).await;
    bob.send_chat(&alice_bare, Some(&text), Some("active"))
        .await;
    let ev = wait_for(&mut rx, "chat", T, |e| matches!(e, ManagerEvent::Session(SessionEvent::Message(m)) if m.chat_state == Some(ChatState::Composing))).await;
    let ManagerEvent::Session(SessionEvent::Message(typing)) = ev else {
        unreachable!()
    };
    assert_eq!(typing.body, None);
    let ev = wait_for(&mut rx, "chat", T, |e| matches!(e, ManagerEvent::Session(SessionEvent::Message(m)) if m.body.as_deref() == Some(text.as_str()))).await;
    let ManagerEvent::Session(SessionEvent::Message(m)) = ev else {
        unreachable!()
    };
    assert_eq!(m.kind, MessageType::Chat);
    assert_eq!(m.chat_state, Some(ChatState::Active));
    assert_eq!(
        m.from.as_ref().unwrap().to_bare().to_string(),
        bob.bare_jid()
    );
    assert!(m.delay.is_none(), "a live message has no delay");

    // Us → contact: paused state, then a message.
    let bob_jid = Jid::parse(bob.bare_jid()).unwrap();
    mgr.send_message(
        "chat",
        &Message::chat_state(bob_jid.clone(), ChatState::Composing),
    )
    .await
    .unwrap();
    let reply = unique("hi bob & co <3");
    let mut msg = Message::chat(bob_jid, reply.clone());
    msg.chat_state = Some(ChatState::Active);
    mgr.send_message("chat", &msg).await.unwrap();
    let ev = bob
        .wait_for(T, |e| e["event"] == "message" && e["state"] == "composing")
        .await;
    assert_eq!(ev["body"], serde_json::Value::Null);
    let ev = bob
        .wait_for(T, |e| {
            e["event"] == "message" && e["body"] == reply.as_str()
        })
        .await;
    assert_eq!(ev["type"], "chat");
    assert_eq!(ev["state"], "active");
    assert!(ev["from"].as_str().unwrap().starts_with(&alice_bare));
    bob.quit().await;
    mgr.shutdown().await;
}

#[tokio::test]
async fn presence_flows_both_ways() {
    let env = StackEnv::load();
    let (mgr, mut rx) = logged_in(&env, "carol", "presence").await;
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;

    let status = unique("at lunch");
    bob.command(json!({"op": "presence", "show": "away", "status": status}))
        .await;
    let ev = wait_for(&mut rx, "presence", T, |e| matches!(e, ManagerEvent::Session(SessionEvent::Presence(p)) if p.status.as_deref() == Some(status.as_str()))).await;
    let ManagerEvent::Session(SessionEvent::Presence(p)) = ev else {
        unreachable!()
    };
    assert_eq!(p.kind, PresenceType::Available);
    assert_eq!(p.show, Some(Show::Away));
    assert_eq!(p.from.unwrap().to_bare().to_string(), bob.bare_jid());

    let mine = unique("busy coding");
    mgr.set_presence(
        "presence",
        Presence::available(Some(Show::Dnd), Some(mine.clone())),
    )
    .await
    .unwrap();
    let ev = bob
        .wait_for(T, |e| {
            e["event"] == "presence" && e["status"] == mine.as_str()
        })
        .await;
    assert_eq!(ev["show"], "dnd");
    assert!(ev["from"].as_str().unwrap().starts_with("carol@"));

    bob.command(json!({"op": "presence", "type": "unavailable"}))
        .await;
    wait_for(&mut rx, "presence", T, |e| matches!(e, ManagerEvent::Session(SessionEvent::Presence(p)) if p.kind == PresenceType::Unavailable && p.from.as_ref().is_some_and(|f| f.local() == Some("bob")))).await;
    bob.quit().await;
    mgr.shutdown().await;
}

#[tokio::test]
async fn offline_message_arrives_with_its_original_timestamp() {
    let env = StackEnv::load();
    // dave is used by no other test, so he is really offline here.
    let mut alice = XmppContact::start(&env, "alice", ContactLogin::Messenger).await;
    let dave_bare = format!("dave@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let text = unique("while you were away");
    let sent_at = std::time::SystemTime::now();
    alice
        .send_chat(&dave_bare, Some(&text), Some("active"))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    alice.quit().await;

    let (mgr, mut rx) = logged_in(&env, "dave", "offline").await;
    let ev = wait_for(&mut rx, "offline", T, |e| matches!(e, ManagerEvent::Session(SessionEvent::Message(m)) if m.body.as_deref() == Some(text.as_str()))).await;
    let ManagerEvent::Session(SessionEvent::Message(m)) = ev else {
        unreachable!()
    };
    let delay = m.delay.expect("offline messages carry a XEP-0203 delay");
    let sent_ms = sent_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The stamp is the time the server stored it: within a second or two of sending, well
    // before we logged in.
    assert!(
        (delay.unix_millis() - sent_ms).abs() < 2_000,
        "stamp {} vs sent {sent_ms}",
        delay.unix_millis()
    );
    mgr.shutdown().await;
}

#[tokio::test]
async fn roster_changes_are_refused_on_the_messenger_profile() {
    assert!(!ServerProfile::Messenger.roster_writable());
    let env = StackEnv::load();
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    bob.command(json!({"op": "roster_set", "jid": format!("dave@{}", env.get("XMPP_MESSENGER_DOMAIN")), "name": "D"})).await;
    let ev = bob.wait_for(T, |e| e["event"] == "iq_result").await;
    assert_eq!(ev["ok"], false);
    assert_eq!(ev["condition"], "not-allowed");
    bob.quit().await;
}
