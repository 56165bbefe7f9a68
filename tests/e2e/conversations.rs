//! Whole conversations on a standard XMPP server (the stack's Prosody host with carbons and an
//! archive), where the user also has a phone: what they write there shows in the portal (as
//! the user with double puppeting, else as their XMPP account's ghost), what
//! contacts write while the bridge is down arrives from the archive in order with its time, and
//! a contact cannot forge the user's messages with a fake carbon.

use std::time::Duration;

use ruma::{OwnedRoomId, UserId};
use serde_json::json;
use testkit::{ContactLogin, CutRelay, StackEnv, XmppContact};

use crate::harness::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) fn ghost_of(env: &StackEnv, who: &str) -> ruma::OwnedUserId {
    UserId::parse(format!("@msn_{who}:{}", env.get("MATRIX_SERVER_NAME"))).unwrap()
}

/// A bridge on the standard host with alice linked, and her portal with bob open.
pub(crate) async fn standard_portal_with_bob(
    env: &StackEnv,
    user: &MatrixUser,
    bob: &mut XmppContact,
    double_puppet: bool,
) -> (TestBridge, OwnedRoomId) {
    standard_portal_through(env, user, bob, double_puppet, Server::Prosody, None).await
}

/// Like [`standard_portal_with_bob`], with the bridge's XMPP connection going to `xmpp_port`
/// (a relay in front of the server) when given.
pub(crate) async fn standard_portal_through(
    env: &StackEnv,
    user: &MatrixUser,
    bob: &mut XmppContact,
    double_puppet: bool,
    server: Server,
    xmpp_port: Option<u16>,
) -> (TestBridge, OwnedRoomId) {
    let mut bridge = TestBridge::new(env, Backend::Sqlite).await;
    server.configure(&mut bridge);
    if let Some(port) = xmpp_port {
        bridge.edit_config(
            &format!("port: {}\n", server.port(env)),
            &format!("port: {port}\n"),
        );
    }
    if double_puppet {
        bridge.use_double_puppeting();
    }
    bridge.link_with_password(&user.user_id, "alice").await;
    bridge.start().await;
    // A contact's message before the login reaches only the user's other clients: write once
    // bob sees the bridge's session online.
    wait_until_online(env, &bridge, bob, server).await;
    let ghost = ghost_of(env, "bob");
    let hello = unique("open ");
    bob.send_chat(&server.jid(env, "alice"), Some(&hello), Some("active"))
        .await;
    let room = tokio::time::timeout(T, user.accept_invite_from(&ghost, T + T))
        .await
        .unwrap_or_else(|_| panic!("no portal within {T:?}\n{}", bridge.log_tail()))
        .room_id()
        .to_owned();
    user.wait_messages(&room, T, "portal opened", |m| {
        bodies_from(m, ghost.as_str()).contains(&hello.as_str())
    })
    .await;
    (bridge, room)
}

/// A standard XMPP server of the stack: these tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    /// Prosody's standard host (carbons, MAM, stream management).
    Prosody,
    /// ejabberd (carbons, MAM, stream management).
    Ejabberd,
}

impl Server {
    fn domain(self, env: &StackEnv) -> &str {
        match self {
            Self::Prosody => env.get("XMPP_STANDARD_DOMAIN"),
            Self::Ejabberd => env.get("EJABBERD_DOMAIN"),
        }
    }

    /// `who@` this server.
    pub(crate) fn jid(self, env: &StackEnv, who: &str) -> String {
        format!("{who}@{}", self.domain(env))
    }

    fn port(self, env: &StackEnv) -> u16 {
        match self {
            Self::Prosody => env.xmpp_port(),
            Self::Ejabberd => env.get("EJABBERD_PORT").parse().unwrap(),
        }
    }

    fn login(self) -> ContactLogin {
        match self {
            Self::Prosody => ContactLogin::Standard,
            Self::Ejabberd => ContactLogin::Ejabberd,
        }
    }

    /// Points the bridge at this server.
    fn configure(self, bridge: &mut TestBridge) {
        match self {
            Self::Prosody => bridge.use_standard_host(),
            Self::Ejabberd => bridge.use_ejabberd(),
        }
    }
}

/// Waits until the contact sees the bridge's session online (its initial presence): before
/// that, what the contact writes reaches only the user's other clients. The login count rises
/// earlier, at the bind.
async fn wait_until_online(
    env: &StackEnv,
    bridge: &TestBridge,
    bob: &mut XmppContact,
    server: Server,
) {
    wait_logged_in(bridge, 1).await;
    let bridge_resource = format!("{}/messenger-bridge", server.jid(env, "alice"));
    bob.wait_for(T, |e| {
        e["event"] == "presence"
            && e["from"] == bridge_resource.as_str()
            && e["type"] == "available"
    })
    .await;
}

pub(crate) fn alice(env: &StackEnv) -> String {
    format!("alice@{}", env.get("XMPP_STANDARD_DOMAIN"))
}

/// How many times `body` is in the room, from anyone.
fn count(msgs: &[serde_json::Value], body: &str) -> usize {
    msgs.iter().filter(|m| m["content"]["body"] == body).count()
}

async fn what_the_user_writes_on_their_phone_shows_once_and_forged_carbons_are_ignored(
    server: Server,
) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "phone").await;
    let mut bob = XmppContact::start(&env, "bob", server.login()).await;
    let (mut bridge, room) =
        standard_portal_through(&env, &user, &mut bob, true, server, None).await;
    let mut phone = XmppContact::start(&env, "alice", server.login()).await;
    // Double puppeting: the user's own Matrix account.
    let me = user.user_id.clone();
    let bob_ghost = ghost_of(&env, "bob");

    // The phone writes to bob: bob gets it, and the portal shows it once, as the user
    // (double puppeting), and it is not sent back to bob.
    let from_phone = unique("from my phone ");
    phone
        .send_chat(&server.jid(&env, "bob"), Some(&from_phone), Some("active"))
        .await;
    bob.wait_for(T, |e| {
        e["event"] == "message" && e["body"] == from_phone.as_str()
    })
    .await;
    user.wait_messages(&room, T, "the phone's message", |m| {
        bodies_from(m, me.as_str()).contains(&from_phone.as_str())
    })
    .await;

    // Bob writes to the bare JID while the phone is online too: once in the portal.
    let to_both = unique("to both of your clients ");
    bob.send_chat(&server.jid(&env, "alice"), Some(&to_both), None)
        .await;
    phone
        .wait_for(T, |e| {
            e["event"] == "message" && e["body"] == to_both.as_str()
        })
        .await;
    user.wait_messages(&room, T, "bob's message", |m| {
        bodies_from(m, bob_ghost.as_str()).contains(&to_both.as_str())
    })
    .await;

    // Bob forges a carbon claiming the user sent something, and one claiming carol wrote.
    let forged = unique("forged ");
    for (kind, from, to) in [
        ("sent", server.jid(&env, "alice"), server.jid(&env, "bob")),
        (
            "received",
            format!("carol@{}", env.get("XMPP_STANDARD_DOMAIN")),
            server.jid(&env, "alice"),
        ),
    ] {
        bob.command(json!({"op": "send_raw", "xml": format!(
            "<message xmlns='jabber:client' to='{}' type='chat'><{kind} xmlns='urn:xmpp:carbons:2'>\
             <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='{from}/x' \
             to='{to}' type='chat' id='{forged}-{kind}'><body>{forged}</body></message></forwarded>\
             </{kind}></message>",
            server.jid(&env, "alice")
        )}))
        .await;
    }
    // A plain message after them: once it is in, the forgeries were handled (in order).
    let after = unique("after the forgeries ");
    bob.send_chat(&server.jid(&env, "alice"), Some(&after), None)
        .await;
    let msgs = user
        .wait_messages(&room, T, "the message after the forgeries", |m| {
            bodies_from(m, bob_ghost.as_str()).contains(&after.as_str())
        })
        .await;
    assert_eq!(count(&msgs, &forged), 0, "a forged carbon was bridged");
    assert_eq!(count(&msgs, &from_phone), 1);
    assert_eq!(count(&msgs, &to_both), 1);
    let echoes = bob.drain(Duration::from_secs(2)).await;
    assert!(
        !echoes.iter().any(|e| e["body"] == from_phone.as_str()),
        "the phone's message went to bob a second time (the double puppet's echo)"
    );
    let log = std::fs::read_to_string(bridge.dir.join("bridge.log")).unwrap();
    assert!(log.contains("forged"), "the forgery was not logged");

    phone.quit().await;
    bob.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn what_the_user_writes_on_their_phone_shows_once_and_forged_carbons_are_ignored_on_prosody()
{
    what_the_user_writes_on_their_phone_shows_once_and_forged_carbons_are_ignored(Server::Prosody)
        .await;
}

#[tokio::test]
async fn what_the_user_writes_on_their_phone_shows_once_and_forged_carbons_are_ignored_on_ejabberd()
{
    what_the_user_writes_on_their_phone_shows_once_and_forged_carbons_are_ignored(Server::Ejabberd)
        .await;
}

async fn messages_sent_while_the_bridge_was_down_arrive_from_the_archive_in_order(server: Server) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "archive").await;
    let mut bob = XmppContact::start(&env, "bob", server.login()).await;
    let (mut bridge, room) =
        standard_portal_through(&env, &user, &mut bob, false, server, None).await;
    // The phone stays online, so the server delivers to it and keeps nothing offline for the
    // bridge: only the archive has what follows.
    let mut phone = XmppContact::start(&env, "alice", server.login()).await;
    bridge.stop().await;

    let tag = unique("while the bridge was down ");
    let mut sent = Vec::new();
    for i in 0..5 {
        let body = format!("{tag}{i}");
        sent.push((body.clone(), now_ms()));
        bob.send_chat(&server.jid(&env, "alice"), Some(&body), Some("active"))
            .await;
        phone
            .wait_for(T, |e| e["event"] == "message" && e["body"] == body.as_str())
            .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let mine = unique("my answer from the phone ");
    phone
        .send_chat(&server.jid(&env, "bob"), Some(&mine), None)
        .await;
    bob.wait_for(T, |e| e["event"] == "message" && e["body"] == mine.as_str())
        .await;

    bridge.start().await;
    let bob_ghost = ghost_of(&env, "bob");
    let me = ghost_of(&env, "alice");
    let msgs = user
        .wait_messages(
            &room,
            Duration::from_secs(60),
            "the archived messages",
            |m| {
                let got = bodies_from(m, bob_ghost.as_str());
                sent.iter().all(|(b, _)| got.contains(&b.as_str()))
                    && bodies_from(m, me.as_str()).contains(&mine.as_str())
            },
        )
        .await;
    let from_bob: Vec<&serde_json::Value> = msgs
        .iter()
        .filter(|m| m["sender"] == bob_ghost.as_str())
        .filter(|m| {
            m["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with(&tag))
        })
        .collect();
    let order: Vec<&str> = from_bob
        .iter()
        .map(|m| m["content"]["body"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = sent.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(order, want, "each once, in order");
    for (event, (_, at)) in from_bob.iter().zip(&sent) {
        let ts = event["origin_server_ts"].as_i64().unwrap();
        assert!((ts - at).abs() <= 3_000, "sent at {at}, shown at {ts}");
    }

    // A restart reads the archive again from where it stopped: nothing comes twice.
    bridge.stop().await;
    bridge.start().await;
    let check = unique("after the second restart ");
    bob.send_chat(&server.jid(&env, "alice"), Some(&check), None)
        .await;
    let msgs = user
        .wait_messages(&room, T, "a live message after the restart", |m| {
            bodies_from(m, bob_ghost.as_str()).contains(&check.as_str())
        })
        .await;
    for (body, _) in &sent {
        assert_eq!(count(&msgs, body), 1, "{body} twice");
    }
    assert_eq!(count(&msgs, &mine), 1);

    phone.quit().await;
    bob.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn messages_sent_while_the_bridge_was_down_arrive_from_the_archive_in_order_on_prosody() {
    messages_sent_while_the_bridge_was_down_arrive_from_the_archive_in_order(Server::Prosody).await;
}

#[tokio::test]
async fn messages_sent_while_the_bridge_was_down_arrive_from_the_archive_in_order_on_ejabberd() {
    messages_sent_while_the_bridge_was_down_arrive_from_the_archive_in_order(Server::Ejabberd)
        .await;
}

/// On a server with an archive, even `kill -9` loses nothing: what the bridge had read but not
/// recorded, and what came while it was dead, is in the archive, and the next login reads it
/// from the last message recorded. Three kills during an unpaced 100-message burst.
async fn kill_9_three_times_in_an_unpaced_burst_loses_and_duplicates_nothing(server: Server) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "kill9").await;
    let mut bob = XmppContact::start(&env, "bob", server.login()).await;
    let (mut bridge, room) =
        standard_portal_through(&env, &user, &mut bob, false, server, None).await;
    let tag = unique("k");
    let n = 100;
    for i in 0..n {
        bob.send_chat(
            &server.jid(&env, "alice"),
            Some(&format!("{tag} {i:03}")),
            Some("active"),
        )
        .await;
    }
    for pause in [100, 400, 50] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        bridge.kill().await;
        bridge.start().await;
    }
    let ghost = ghost_of(&env, "bob");
    user.wait_messages(&room, Duration::from_secs(120), "the whole burst", |m| {
        bodies_from(m, ghost.as_str())
            .iter()
            .filter(|b| b.starts_with(&tag))
            .count()
            >= n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let msgs = user.messages(&room).await;
    let got: Vec<&str> = bodies_from(&msgs, ghost.as_str())
        .into_iter()
        .filter(|b| b.starts_with(&tag))
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("{tag} {i:03}")).collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        want,
        "every message once (none lost, none twice)\n{}",
        bridge.log_tail()
    );
    if server == Server::Prosody {
        // ejabberd gives a message the killed session held back to the next login only when
        // that login replaces the old session, after the archive's newer ones: it can come
        // last (with its own time). Prosody's order is kept.
        assert_eq!(got, want, "in order\n{}", bridge.log_tail());
    }
    bob.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn kill_9_three_times_in_an_unpaced_burst_loses_and_duplicates_nothing_on_prosody() {
    kill_9_three_times_in_an_unpaced_burst_loses_and_duplicates_nothing(Server::Prosody).await;
}

#[tokio::test]
async fn kill_9_three_times_in_an_unpaced_burst_loses_and_duplicates_nothing_on_ejabberd() {
    kill_9_three_times_in_an_unpaced_burst_loses_and_duplicates_nothing(Server::Ejabberd).await;
}

/// A network cut of 10 s between the bridge and its XMPP server, in the middle of unpaced
/// traffic both ways: the stream resumes (XEP-0198) without a new login, and nothing is lost or
/// repeated — neither what was in flight when the link broke nor what both sides sent during
/// the cut.
async fn a_ten_second_network_cut_resumes_the_stream_and_loses_nothing(server: Server) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "netcut").await;
    let mut bob = XmppContact::start(&env, "bob", server.login()).await;
    let mut relay = CutRelay::start("127.0.0.1", server.port(&env)).await;
    let (mut bridge, room) =
        standard_portal_through(&env, &user, &mut bob, false, server, Some(relay.port())).await;
    let logins = metric(&bridge, "messenger_bridge_xmpp_logins_total").await;
    let tag = unique("cut");
    let to_alice = server.jid(&env, "alice");
    let both = |i: usize| (format!("{tag} m {i:02}"), format!("{tag} x {i:02}"));
    // Before, during and after the cut; nothing waits for anything.
    for i in 0..30 {
        if i == 10 {
            relay.cut();
        }
        if i == 20 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            relay.restore().await;
        }
        let (m, x) = both(i);
        user.send_text(&room, &m).await;
        bob.send_chat(&to_alice, Some(&x), None).await;
    }
    let got = bob
        .bodies_starting_with(
            &format!("{tag} m "),
            30,
            Duration::from_secs(90),
            Duration::from_secs(3),
        )
        .await;
    let want: Vec<String> = (0..30).map(|i| both(i).0).collect();
    assert_eq!(
        got,
        want,
        "the contact gets every message from Matrix once, in order\n{}",
        bridge.log_tail()
    );
    let ghost = ghost_of(&env, "bob");
    let want: Vec<String> = (0..30).map(|i| both(i).1).collect();
    let prefix = format!("{tag} x ");
    user.wait_messages(
        &room,
        Duration::from_secs(60),
        "the contact's messages",
        |m| {
            bodies_from(m, ghost.as_str())
                .iter()
                .filter(|b| b.starts_with(&prefix))
                .count()
                >= want.len()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msgs = user.messages(&room).await;
    let got: Vec<&str> = bodies_from(&msgs, ghost.as_str())
        .into_iter()
        .filter(|b| b.starts_with(&prefix))
        .collect();
    assert_eq!(
        got,
        want,
        "the portal shows every message of the contact once, in order\n{}",
        bridge.log_tail()
    );
    assert_eq!(
        metric(&bridge, "messenger_bridge_xmpp_logins_total").await,
        logins,
        "the stream was resumed, not logged in again\n{}",
        bridge.log_tail()
    );
    assert!(metric(&bridge, "messenger_bridge_xmpp_resumptions_total").await >= 1);
    // The cut swallowed messages the bridge had written: they went again on the resumed stream.
    let log = std::fs::read_to_string(bridge.dir.join("bridge.log")).unwrap();
    assert!(
        log.contains("sending again what the server had not acknowledged"),
        "the cut caught no message in flight, so the test showed nothing\n{}",
        bridge.log_tail()
    );
    bob.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn a_ten_second_network_cut_resumes_the_stream_and_loses_nothing_on_prosody() {
    a_ten_second_network_cut_resumes_the_stream_and_loses_nothing(Server::Prosody).await;
}

#[tokio::test]
async fn a_ten_second_network_cut_resumes_the_stream_and_loses_nothing_on_ejabberd() {
    a_ten_second_network_cut_resumes_the_stream_and_loses_nothing(Server::Ejabberd).await;
}

/// A portal opened by a contact's message starts with the conversation's last messages from
/// the archive (`bridge.backfill_messages`, here 5): both sides' (what the user wrote on the
/// phone too), oldest first, each once, with its original time; the opening message itself
/// last, not twice.
async fn a_new_portal_opens_with_the_last_messages_of_the_conversation_from_the_archive(
    server: Server,
) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let user = MatrixUser::new(&env, "backfill").await;
    let mut bob = XmppContact::start(&env, "bob", server.login()).await;
    let mut phone = XmppContact::start(&env, "alice", server.login()).await;
    // Six messages before the bridge was ever linked: bob and the phone take turns.
    let tag = unique("earlier ");
    let mut sent = Vec::new();
    for i in 0..6 {
        let body = format!("{tag}{i}");
        sent.push((body.clone(), now_ms()));
        if i % 2 == 0 {
            bob.send_chat(&server.jid(&env, "alice"), Some(&body), None)
                .await;
            phone
                .wait_for(T, |e| e["event"] == "message" && e["body"] == body.as_str())
                .await;
        } else {
            phone
                .send_chat(&server.jid(&env, "bob"), Some(&body), None)
                .await;
            bob.wait_for(T, |e| e["event"] == "message" && e["body"] == body.as_str())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    server.configure(&mut bridge);
    // Off in the other tests (every test's bob writes to the same alice, whose archive they
    // share); on here.
    bridge.edit_config("backfill_messages: 0", "backfill_messages: 5");
    bridge.link_with_password(&user.user_id, "alice").await;
    bridge.start().await;
    wait_until_online(&env, &bridge, &mut bob, server).await;
    let opening = unique("hello again ");
    bob.send_chat(&server.jid(&env, "alice"), Some(&opening), None)
        .await;
    let ghost = ghost_of(&env, "bob");
    let room = user
        .accept_invite_from(&ghost, T)
        .await
        .room_id()
        .to_owned();
    let msgs = user
        .wait_messages(&room, T, "the opening message", |m| {
            bodies_from(m, ghost.as_str()).contains(&opening.as_str())
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msgs = {
        let later = user.messages(&room).await;
        if later.len() >= msgs.len() {
            later
        } else {
            msgs
        }
    };
    let shown: Vec<&serde_json::Value> = msgs
        .iter()
        .filter(|m| {
            m["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with(&tag) || b == opening)
        })
        .collect();
    let bodies: Vec<&str> = shown
        .iter()
        .map(|m| m["content"]["body"].as_str().unwrap())
        .collect();
    // The last five of the conversation: the opening message and the four before it.
    let mut want: Vec<&str> = sent[2..].iter().map(|(b, _)| b.as_str()).collect();
    want.push(&opening);
    assert_eq!(
        bodies,
        want,
        "the last five, oldest first, each once\n{}",
        bridge.log_tail()
    );
    let me = ghost_of(&env, "alice");
    for (event, (body, at)) in shown.iter().zip(&sent[2..]) {
        let ts = event["origin_server_ts"].as_i64().unwrap();
        assert!(
            (ts - at).abs() <= 3_000,
            "{body} sent at {at}, shown at {ts}"
        );
        let from_phone = body.ends_with(['1', '3', '5']);
        let sender = if from_phone {
            me.as_str()
        } else {
            ghost.as_str()
        };
        assert_eq!(event["sender"], sender, "{body}");
    }
    phone.quit().await;
    bob.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn a_new_portal_opens_with_the_last_messages_of_the_conversation_from_the_archive_on_prosody()
{
    a_new_portal_opens_with_the_last_messages_of_the_conversation_from_the_archive(Server::Prosody)
        .await;
}

#[tokio::test]
async fn a_new_portal_opens_with_the_last_messages_of_the_conversation_from_the_archive_on_ejabberd()
 {
    a_new_portal_opens_with_the_last_messages_of_the_conversation_from_the_archive(
        Server::Ejabberd,
    )
    .await;
}
