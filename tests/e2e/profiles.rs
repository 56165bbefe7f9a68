//! Contacts' profiles on a standard XMPP server, where contacts publish their own vCards and the
//! user renames contacts from their phone: the ghost's avatar follows the XEP-0153 photo hash
//! (fetched once per photo), the user's private alias names only their portal, and a vCard or
//! message over the stanza limit is skipped without ending the session.
//!
//! These tests change carol's vCard and alice's name for carol on the standard host; they put
//! the seeded values back afterwards, even when they fail.

use std::time::Duration;

use ruma::{OwnedRoomId, UserId};
use serde_json::{Value, json};
use testkit::{ContactLogin, StackEnv, XmppContact};

use crate::harness::*;
use crate::linking::bot;

/// Two different small images (the bytes only need to differ: Synapse stores what it gets).
const PHOTO_A: &[u8] = b"\x89PNG\r\n\x1a\nmessenger-bridge test avatar A";
const PHOTO_B: &[u8] = b"\x89PNG\r\n\x1a\nmessenger-bridge test avatar B";

#[tokio::test]
async fn avatars_follow_the_photo_hash_and_a_roster_alias_names_only_the_portal() {
    restoring_seed(avatar_and_alias).await;
}

async fn avatar_and_alias(env: StackEnv) {
    let mut carol = XmppContact::start(&env, "carol", ContactLogin::Standard).await;
    let full_name = unique("Carol Vcard ");
    let hash_a = set_vcard(&mut carol, &full_name, Some(PHOTO_A)).await;
    // The user's phone: another session of the same account, renaming carol privately.
    let mut phone = XmppContact::start_with(&env, "alice", ContactLogin::Standard, false).await;
    let alias = unique("Caz from work ");
    rename(&mut phone, &carol, &alias).await;

    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.use_standard_host();
    let user = MatrixUser::new(&env, "profiles").await;
    bridge.link_with_password(&user.user_id, "alice").await;
    bridge.start().await;
    let ghost = ghost_of(&env, "carol");
    let alice = format!("alice@{}", env.get("XMPP_STANDARD_DOMAIN"));

    presence(&mut carol, None).await;
    let hello = unique("hello from carol ");
    carol.send_chat(&alice, Some(&hello), Some("active")).await;
    let room = user
        .accept_invite_from(&ghost, T)
        .await
        .room_id()
        .to_owned();
    wait_for_body(&user, &room, &ghost, &hello).await;

    // The alias names the user's portal; the ghost, shared by everyone who has carol as a
    // contact, is named by carol's own vCard.
    assert_eq!(room_name(&user, &room).await, alias);
    let profile = ghost_profile(&user, &ghost).await;
    assert_eq!(profile["displayname"], full_name.as_str(), "{profile}");
    let avatar_a = profile["avatar_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(avatar_a.starts_with("mxc://"), "{profile}");
    // The roster read at login fetches every contact's vCard once: wait for those to finish.
    let mut fetched = vcard_fetches(&bridge).await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = vcard_fetches(&bridge).await;
        if now == fetched {
            break;
        }
        fetched = now;
    }
    assert!(fetched >= 1);

    // Presence changes announcing the same photo (SHA-1, XEP-0153) fetch nothing.
    for show in ["away", "dnd", "chat", "away"] {
        presence(&mut carol, Some(show)).await;
    }
    let after = unique("after the presences ");
    carol.send_chat(&alice, Some(&after), None).await;
    wait_for_body(&user, &room, &ghost, &after).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        vcard_fetches(&bridge).await,
        fetched,
        "a presence with the known photo hash ({hash_a}) fetched the vCard again"
    );

    // A new photo: one fetch, and the ghost's avatar changes.
    let hash_b = set_vcard(&mut carol, &full_name, Some(PHOTO_B)).await;
    assert_ne!(hash_a, hash_b);
    presence(&mut carol, None).await;
    let avatar_b = poll(T, "the new avatar", || async {
        let url = ghost_profile(&user, &ghost).await["avatar_url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (url != avatar_a && url.starts_with("mxc://")).then_some(url)
    })
    .await;
    assert_ne!(avatar_b, avatar_a);
    assert_eq!(vcard_fetches(&bridge).await, fetched + 1);

    // A new alias from the phone renames the portal, and only the portal.
    let alias2 = unique("Carol (neighbour) ");
    rename(&mut phone, &carol, &alias2).await;
    poll(T, "the portal renamed", || async {
        (room_name(&user, &room).await == alias2).then_some(())
    })
    .await;
    assert_eq!(
        ghost_profile(&user, &ghost).await["displayname"],
        full_name.as_str()
    );

    bridge.stop().await;
    carol.quit().await;
    phone.quit().await;
}

#[tokio::test]
async fn an_oversized_vcard_or_message_is_skipped_and_the_session_stays_up() {
    restoring_seed(oversized).await;
}

async fn oversized(env: StackEnv) {
    let mut carol = XmppContact::start(&env, "carol", ContactLogin::Standard).await;
    // 24 KiB of photo: about 33 KiB of base64 in the vCard, over the bridge's 16 KiB limit.
    let photo: Vec<u8> = (0..24 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    set_vcard(&mut carol, &unique("Carol Huge "), Some(&photo)).await;

    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.use_standard_host();
    bridge.configure_xmpp("max_stanza_bytes", "16384");
    let user = MatrixUser::new(&env, "oversized").await;
    bridge.link_with_password(&user.user_id, "alice").await;
    bridge.start().await;
    let ghost = ghost_of(&env, "carol");
    let alice = format!("alice@{}", env.get("XMPP_STANDARD_DOMAIN"));

    presence(&mut carol, None).await;
    let hello = unique("hello despite the vcard ");
    carol.send_chat(&alice, Some(&hello), None).await;
    let room = user
        .accept_invite_from(&ghost, T)
        .await
        .room_id()
        .to_owned();
    wait_for_body(&user, &room, &ghost, &hello).await;
    poll(T, "the oversized vCard skipped", || async {
        (metric(
            &bridge,
            "messenger_bridge_vcard_fetches_total{result=\"too_large\"}",
        )
        .await
            >= 1)
            .then_some(())
    })
    .await;

    // A message over the limit: the user is told, in the management room, who sent what size.
    let big = "x".repeat(20_000);
    carol.send_chat(&alice, Some(&big), None).await;
    let management = user
        .accept_invite_from(&bot(&env), T)
        .await
        .room_id()
        .to_owned();
    let carol_jid = format!("carol@{}", env.get("XMPP_STANDARD_DOMAIN"));
    user.wait_messages(&management, T, "the oversized message notice", |m| {
        bodies_from(m, bot(&env).as_str())
            .iter()
            .any(|b| b.contains(&carol_jid) && b.contains("KiB") && b.contains("not delivered"))
    })
    .await;

    // The session never dropped: the next message flows, and there was one login.
    let after = unique("still here ");
    carol.send_chat(&alice, Some(&after), None).await;
    wait_for_body(&user, &room, &ghost, &after).await;
    assert_eq!(
        metric(&bridge, "messenger_bridge_xmpp_logins_total").await,
        1,
        "the session reconnected:\n{}",
        bridge.log_tail()
    );
    bridge.stop().await;
    carol.quit().await;
}

/// Runs `test` alone on the stack, then puts the seed back, even when it failed.
async fn restoring_seed<F: Future<Output = ()> + Send + 'static>(test: fn(StackEnv) -> F) {
    let _serial = serial().await;
    let env = StackEnv::load();
    let outcome = tokio::spawn(test(env.clone())).await;
    restore_seed(&env).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Puts carol's seeded vCard and alice's seeded name for carol back on the standard host.
async fn restore_seed(env: &StackEnv) {
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(testkit::repo_root().join("deploy/local/seed/accounts.json"))
            .unwrap(),
    )
    .unwrap();
    let account = &seed["accounts"]["carol"];
    let mut carol = XmppContact::start_with(env, "carol", ContactLogin::Standard, false).await;
    carol
        .command(json!({
            "op": "set_vcard",
            "fn": account["fn"],
            "photo_base64": account["photo_base64"],
            "photo_type": account["photo_type"],
        }))
        .await;
    assert_eq!(iq_result(&mut carol).await["ok"], true);
    let mut phone = XmppContact::start_with(env, "alice", ContactLogin::Standard, false).await;
    rename(&mut phone, &carol, "Carol Singer").await;
    carol.quit().await;
    phone.quit().await;
}

fn ghost_of(env: &StackEnv, contact: &str) -> ruma::OwnedUserId {
    UserId::parse(format!("@msn_{contact}:{}", env.get("MATRIX_SERVER_NAME"))).unwrap()
}

/// Publishes `contact`'s vCard; returns the photo's SHA-1 as later presences announce it.
async fn set_vcard(contact: &mut XmppContact, full_name: &str, photo: Option<&[u8]>) -> String {
    use base64::Engine as _;
    let photo = photo.map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    contact
        .command(json!({"op": "set_vcard", "fn": full_name, "photo_base64": photo}))
        .await;
    let result = iq_result(contact).await;
    assert_eq!(result["ok"], true, "{result}");
    result["photo_hash"].as_str().unwrap().to_owned()
}

async fn rename(phone: &mut XmppContact, contact: &XmppContact, name: &str) {
    phone
        .command(json!({"op": "roster_set", "jid": contact.bare_jid(), "name": name}))
        .await;
    let result = iq_result(phone).await;
    assert_eq!(result["ok"], true, "{result}");
}

async fn iq_result(contact: &mut XmppContact) -> Value {
    contact.wait_for(T, |e| e["event"] == "iq_result").await
}

async fn presence(contact: &mut XmppContact, show: Option<&str>) {
    contact
        .command(json!({"op": "presence", "show": show}))
        .await;
}

async fn wait_for_body(user: &MatrixUser, room: &OwnedRoomId, ghost: &UserId, body: &str) {
    user.wait_messages(room, T, body, |m| {
        bodies_from(m, ghost.as_str()).contains(&body)
    })
    .await;
}

async fn room_name(user: &MatrixUser, room: &OwnedRoomId) -> String {
    let path = format!(
        "_matrix/client/v3/rooms/{}/state/m.room.name/",
        urlencode(room.as_str())
    );
    get_json(user, &path).await["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn ghost_profile(user: &MatrixUser, ghost: &UserId) -> Value {
    get_json(
        user,
        &format!("_matrix/client/v3/profile/{}", urlencode(ghost.as_str())),
    )
    .await
}

async fn vcard_fetches(bridge: &TestBridge) -> u64 {
    metric(
        bridge,
        "messenger_bridge_vcard_fetches_total{result=\"ok\"}",
    )
    .await
}

/// Calls `check` every 300 ms until it gives a value, for at most `limit`.
async fn poll<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
