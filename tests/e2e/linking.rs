//! Account linking as a person does it: `login` in a DM with the bot, the link opened in a real
//! browser (headless Chromium), the provider's sign-in page, back to the bridge's page; and the
//! device-code login. Forged, replayed and expired links store nothing.

use std::time::Duration;

use ruma::{OwnedRoomId, UserId};
use serde_json::Value;
use testkit::{StackEnv, repo_root};

use crate::harness::*;

pub(crate) fn bot(env: &StackEnv) -> ruma::OwnedUserId {
    UserId::parse(format!("@msnbot:{}", env.get("MATRIX_SERVER_NAME"))).unwrap()
}

/// Opens a DM with the bot and waits until it greets.
pub(crate) async fn dm_with_bot(env: &StackEnv, user: &MatrixUser) -> OwnedRoomId {
    let room = user.client.create_dm(&bot(env)).await.unwrap();
    let room_id = room.room_id().to_owned();
    bot_said(user, &room_id, env, |b| b.contains("login")).await;
    room_id
}

/// Waits for a bot message matching `pred`; returns its body.
pub(crate) async fn bot_said(
    user: &MatrixUser,
    room: &OwnedRoomId,
    env: &StackEnv,
    pred: impl Fn(&str) -> bool,
) -> String {
    let bot = bot(env);
    let msgs = user
        .wait_messages(room, T, "bot reply", |m| {
            bodies_from(m, bot.as_str()).iter().any(|b| pred(b))
        })
        .await;
    bodies_from(&msgs, bot.as_str())
        .into_iter()
        .rev()
        .find(|b| pred(b))
        .unwrap()
        .to_owned()
}

/// Sends `status` until the bot reports the session connected as `who`: the session starts
/// right after linking and may still be connecting when the first `status` is handled.
async fn status_shows_connected(user: &MatrixUser, room: &OwnedRoomId, env: &StackEnv, who: &str) {
    let bot = bot(env);
    let want = format!("connected as {who}");
    for _ in 0..30 {
        user.send_text(room, "status").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let msgs = user.messages(room).await;
        if bodies_from(&msgs, bot.as_str())
            .iter()
            .any(|b| b.contains(&want))
        {
            return;
        }
    }
    panic!("`status` never said \"{want}\" within 30 s");
}

pub(crate) fn link_in(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with("http"))
        .unwrap()
        .to_owned()
}

/// Whether the provider still considers a token active (RFC 7662 introspection).
async fn introspect_active(env: &StackEnv, token: &str) -> bool {
    let code = "import json, sys; sys.path.insert(0, sys.argv[1]); import oauth_flow as o; \
                print(json.dumps(o.introspect(o.load_env(), sys.argv[2], 'messenger-bridge')))";
    let out = tokio::process::Command::new(env.python())
        .args(["-c", code])
        .arg(repo_root().join("tests/stack"))
        .arg(token)
        .env("STACK_DIR", env.get("STACK_DIR"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "introspection failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["active"] == true
}

/// Signs in at the provider over HTTP (tests/stack/oauth_flow.py) and returns the code it sends
/// to the bridge's callback, without calling the callback.
pub(crate) async fn walk_to_callback(env: &StackEnv, authorize_url: &str, account: &str) -> String {
    let code = "import json, sys, requests; sys.path.insert(0, sys.argv[1]); import oauth_flow as o; \
                q = o._walk(requests.Session(), sys.argv[2], sys.argv[3], sys.argv[3] + 'pass', False, \
                stop=lambda u: '/login/callback' in u); print(q['code'][0])";
    let out = tokio::process::Command::new(env.python())
        .args(["-c", code])
        .arg(repo_root().join("tests/stack"))
        .arg(authorize_url)
        .arg(account)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "walking the sign-in failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs the browser script; returns its JSON report.
async fn browser(args: &[&str]) -> Value {
    let out = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/browser/sign_in.mjs"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the browser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn login_in_a_real_browser_links_the_account_and_lists_contacts() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.trace_logging();
    bridge.start().await;
    let user = MatrixUser::new(&env, "linker").await;
    let room = dm_with_bot(&env, &user).await;

    user.send_text(&room, "login").await;
    let reply = bot_said(&user, &room, &env, |b| b.contains("/login/")).await;
    let report = browser(&[&link_in(&reply), "alice", "alicepass"]).await;
    assert_eq!(report["title"], "Linked", "{report}");
    assert_eq!(report["confirmed_for"], user.user_id.as_str(), "{report}");
    assert!(
        report["message"].as_str().unwrap().contains("alice@")
            && report["message"]
                .as_str()
                .unwrap()
                .contains(user.user_id.as_str()),
        "the result page names both accounts: {report}"
    );

    bot_said(&user, &room, &env, |b| b.starts_with("✅ Linked as alice@")).await;
    user.send_text(&room, "contacts").await;
    let contacts = bot_said(&user, &room, &env, |b| b.starts_with("Contacts:")).await;
    assert!(
        contacts.contains("Bob Builder") && contacts.contains("Carol Singer"),
        "{contacts}"
    );
    status_shows_connected(&user, &room, &env, "alice@").await;

    // The tokens are stored (encrypted; the store's own tests read the raw rows).
    let store = bridge.open_store().await;
    let linked = store
        .linked_user(user.user_id.as_str())
        .await
        .unwrap()
        .expect("linked");
    assert!(linked.jid.starts_with("alice@"));
    let tokens = store
        .oauth_tokens(user.user_id.as_str())
        .await
        .unwrap()
        .expect("tokens");
    assert!(tokens.refresh_token.is_some());

    // `logout` revokes the refresh token at the provider and forgets everything.
    user.send_text(&room, "logout").await;
    bot_said(&user, &room, &env, |b| {
        b.starts_with("Logged out of alice@")
    })
    .await;
    assert!(
        !introspect_active(&env, tokens.refresh_token.as_deref().unwrap()).await,
        "the refresh token was revoked"
    );
    assert!(
        store
            .linked_user(user.user_id.as_str())
            .await
            .unwrap()
            .is_none()
    );
    bridge.stop().await;
    // At `trace`, through linking and logout, the log holds no secret.
    bridge.assert_log_has_no_secrets(&[
        &tokens.access_token,
        tokens.refresh_token.as_deref().unwrap(),
    ]);
}

#[tokio::test]
async fn device_code_login_completes_with_the_code_entered_in_the_browser() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.start().await;
    let user = MatrixUser::new(&env, "devicer").await;
    let room = dm_with_bot(&env, &user).await;

    user.send_text(&room, "login --device").await;
    let reply = bot_said(&user, &room, &env, |b| b.contains("enter the code")).await;
    let code = reply
        .split("enter the code ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let url = link_in(&reply);
    let report = browser(&[&url, "carol", "carolpass", "--code", &code]).await;
    assert!(
        report["text"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("success"),
        "{report}"
    );
    bot_said(&user, &room, &env, |b| b.starts_with("✅ Linked as carol@")).await;
    bridge.stop().await;
}

#[tokio::test]
async fn forged_replayed_and_foreign_sign_ins_store_nothing() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.start().await;
    let user = MatrixUser::new(&env, "forger").await;
    let room = dm_with_bot(&env, &user).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A forged state.
    let r = http
        .get("http://127.0.0.1:29317/login/callback?code=abc&state=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("does not work"));

    // Login 1: the link redirects to the provider with state and PKCE, and works once.
    user.send_text(&room, "login").await;
    let link1 = link_in(&bot_said(&user, &room, &env, |b| b.contains("/login/")).await);
    let (confirm_page, first) = confirm_link(&http, &link1, &[]).await;
    assert!(
        confirm_page.contains(user.user_id.as_str()),
        "the confirm page names the Matrix account"
    );
    assert_eq!(
        first.status(),
        303,
        "the first use redirects to the provider"
    );
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    // The browser that confirmed gets the cookie the callback checks (see security.rs).
    let cookie1 = set_cookie(&first);
    assert!(
        location.starts_with(env.get("OAUTH_AUTHORIZE_URL"))
            && location.contains("code_challenge=")
            && location.contains("state="),
        "{location}"
    );
    assert_eq!(
        http.get(&link1).send().await.unwrap().status(),
        400,
        "a link works once"
    );
    let state1 = location
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();

    // Login 2, signed in for real at the provider, stopped before the callback (the provider's
    // pages are walked over HTTP here: the browser cannot be kept from following a redirect).
    user.send_text(&room, "login").await;
    let link2 = link_in(
        &bot_said(&user, &room, &env, |b| {
            b.contains("/login/") && !b.contains(&link1)
        })
        .await,
    );
    let authorize2 = confirm_link(&http, &link2, &[]).await.1.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let code2 = walk_to_callback(&env, &authorize2, "alice").await;

    // Login 2's code with login 1's state (in login 1's browser): PKCE ties the code to its
    // own login.
    let r = http
        .get(format!(
            "http://127.0.0.1:29317/login/callback?code={code2}&state={state1}"
        ))
        .header("cookie", &cookie1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a code from another sign-in is refused");
    assert!(r.text().await.unwrap().contains("Sign-in failed"));
    // Login 1's state again: a replay.
    let r = http
        .get(format!(
            "http://127.0.0.1:29317/login/callback?code={code2}&state={state1}"
        ))
        .header("cookie", &cookie1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a replayed state is refused");

    bridge.stop().await;
    let store = bridge.open_store().await;
    assert!(
        store
            .linked_user(user.user_id.as_str())
            .await
            .unwrap()
            .is_none(),
        "nothing was stored"
    );
    assert!(
        store
            .oauth_tokens(user.user_id.as_str())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_expired_link_is_refused() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.configure("login_link_lifetime_secs", "2");
    bridge.start().await;
    let user = MatrixUser::new(&env, "late").await;
    let room = dm_with_bot(&env, &user).await;
    user.send_text(&room, "login").await;
    let link = link_in(&bot_said(&user, &room, &env, |b| b.contains("/login/")).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 400, "an expired link is refused");
    bridge.stop().await;
    let store = bridge.open_store().await;
    assert!(
        store
            .linked_user(user.user_id.as_str())
            .await
            .unwrap()
            .is_none()
    );
}

/// Restarts the OAuth provider with another access-token lifetime.
async fn oauth_token_ttl(seconds: u32) {
    let status = tokio::process::Command::new(repo_root().join("deploy/local/stack"))
        .args(["restart", "oauth"])
        .env("OAUTH_ACCESS_TOKEN_TTL", seconds.to_string())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "restarting the OAuth provider failed");
}

#[tokio::test]
async fn conversation_keeps_flowing_with_30_second_tokens() {
    conversation_across_token_refreshes(false).await;
}

/// The bridge configured as a public OAuth client (no client secret): every refresh carries
/// `client_id` in the form, and the login survives the first access token's expiry.
#[tokio::test]
async fn public_oauth_client_keeps_the_login_across_token_refreshes() {
    conversation_across_token_refreshes(true).await;
}

async fn conversation_across_token_refreshes(public_client: bool) {
    let _serial = serial().await;
    let env = StackEnv::load();
    oauth_token_ttl(30).await;
    let result = tokio::spawn(async move {
        let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
        bridge.trace_logging();
        let user = MatrixUser::new(&env, "alice").await;
        let mut bob =
            testkit::XmppContact::start(&env, "bob", testkit::ContactLogin::Messenger).await;
        let room = if public_client {
            bridge.use_public_client();
            let tokens =
                testkit::bridge_tokens_json_for(&env, "alice", "messenger-bridge-public").await;
            bridge
                .link_with_tokens(&user.user_id, "alice", &tokens)
                .await;
            open_portal_with_bob(&env, &mut bridge, &user, &mut bob).await
        } else {
            portal_with_bob(&env, &mut bridge, &user, &mut bob).await
        };
        let ghost = format!("@msn_bob:{}", env.get("MATRIX_SERVER_NAME"));
        let alice_jid = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
        let store_tokens = || async {
            bridge
                .open_store()
                .await
                .oauth_tokens(user.user_id.as_str())
                .await
                .unwrap()
                .unwrap()
        };
        let first = store_tokens().await;
        let started = tokio::time::Instant::now();
        let mut round = 0;
        while started.elapsed() < Duration::from_secs(80) {
            round += 1;
            let tag = unique(&format!("r{round} "));
            bob.send_chat(&alice_jid, Some(&tag), None).await;
            user.wait_messages(&room, T, "a message during the token test", |m| {
                bodies_from(m, &ghost).contains(&tag.as_str())
            })
            .await;
            user.send_text(&room, &format!("{tag} back")).await;
            bob.wait_for(T, |e| {
                e["event"] == "message" && e["body"] == format!("{tag} back").as_str()
            })
            .await;
            if round == 4 {
                // Force a reconnect: the new login needs a token that is still valid.
                let s = tokio::process::Command::new(repo_root().join("deploy/local/stack"))
                    .args(["restart", "prosody"])
                    .status()
                    .await
                    .unwrap();
                assert!(s.success());
                bob = testkit::XmppContact::start(&env, "bob", testkit::ContactLogin::Messenger)
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let last = store_tokens().await;
        assert_ne!(
            first.access_token, last.access_token,
            "the access token was refreshed"
        );
        assert_ne!(
            first.refresh_token, last.refresh_token,
            "the rotated refresh token was saved"
        );
        // The user saw nothing from the bot about logins.
        let msgs = user.messages(&room).await;
        assert!(
            !msgs.iter().any(|m| m["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("login") || b.contains("⚠"))),
            "the user saw a notice"
        );
        bob.quit().await;
        bridge.stop().await;
        // At `trace`, through refreshes and a reconnect, the log holds no token.
        bridge.assert_log_has_no_secrets(&[
            &first.access_token,
            first.refresh_token.as_deref().unwrap(),
            &last.access_token,
            last.refresh_token.as_deref().unwrap(),
        ]);
        let linked = bridge
            .open_store()
            .await
            .linked_user(user.user_id.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            linked.connection_state, "bad_credentials",
            "the login was never refused"
        );
    })
    .await;
    oauth_token_ttl(3600).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn standard_server_login_uses_the_password_form() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.edit_config("profile: messenger", "profile: standard");
    bridge.edit_config(
        &format!("domain: {}", env.get("XMPP_MESSENGER_DOMAIN")),
        &format!("domain: {}", env.get("XMPP_STANDARD_DOMAIN")),
    );
    bridge.start().await;
    let user = MatrixUser::new(&env, "std").await;
    let room = dm_with_bot(&env, &user).await;
    let http = reqwest::Client::new();
    let jid = format!("carol@{}", env.get("XMPP_STANDARD_DOMAIN"));

    // A wrong password: a clear page and nothing stored; links work once, so the user sends
    // `login` again.
    user.send_text(&room, "login").await;
    let link = link_in(&bot_said(&user, &room, &env, |b| b.contains("/login/")).await);
    let (form, r) = confirm_link(
        &http,
        &link,
        &[("jid", jid.as_str()), ("password", "wrong")],
    )
    .await;
    assert!(
        form.contains("type=\"password\"") && form.contains("name=\"jid\""),
        "{form}"
    );
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Login failed"));

    user.send_text(&room, "login").await;
    let link = link_in(
        &bot_said(&user, &room, &env, |b| {
            b.contains("/login/") && !b.contains(&link)
        })
        .await,
    );
    let (_, r) = confirm_link(
        &http,
        &link,
        &[("jid", jid.as_str()), ("password", "carolpass")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("linked to carol@"));
    bot_said(&user, &room, &env, |b| b.starts_with("✅ Linked as carol@")).await;
    status_shows_connected(&user, &room, &env, "carol@").await;

    // `logout` forgets the password.
    user.send_text(&room, "logout").await;
    bot_said(&user, &room, &env, |b| {
        b.starts_with("Logged out of carol@")
    })
    .await;
    bridge.stop().await;
    let store = bridge.open_store().await;
    assert!(
        store
            .linked_user(user.user_id.as_str())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store.password(user.user_id.as_str()).await.is_err()
            || store
                .password(user.user_id.as_str())
                .await
                .unwrap()
                .is_none()
    );
}

#[tokio::test]
async fn provider_down_or_answering_garbage_gets_a_clear_message_and_a_retry_works() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    // Device endpoint: first a closed port, then a page that is not JSON.
    bridge.edit_config(
        &format!("device_url: {}", env.get("OAUTH_DEVICE_URL")),
        "device_url: http://127.0.0.1:1/device",
    );
    bridge.start().await;
    let user = MatrixUser::new(&env, "unlucky").await;
    let room = dm_with_bot(&env, &user).await;
    user.send_text(&room, "login --device").await;
    bot_said(&user, &room, &env, |b| {
        b.contains("unreachable") && b.contains("try again later")
    })
    .await;
    bridge.stop().await;
    bridge.edit_config(
        "device_url: http://127.0.0.1:1/device",
        &format!("device_url: {}/health", env.get("SYNAPSE_URL")),
    );
    bridge.start().await;
    user.send_text(&room, "login --device").await;
    bot_said(&user, &room, &env, |b| {
        b.contains("unexpected") || b.contains("refused")
    })
    .await;
    // The bridge is still fine: a browser login works.
    user.send_text(&room, "login").await;
    let reply = bot_said(&user, &room, &env, |b| b.contains("/login/")).await;
    let report = browser(&[&link_in(&reply), "alice", "alicepass"]).await;
    assert_eq!(report["title"], "Linked", "{report}");
    bridge.stop().await;
}

/// After the provider refused the stored sign-in (revoked, expired), the user is told in a room
/// the bot opens, without provider internals, and `login` there starts a new sign-in instead of
/// answering "already linked".
#[tokio::test]
async fn login_works_again_after_the_sign_in_was_refused() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "relinker").await;
    // Tokens the provider never issued, already expired: the refresh is refused.
    let refused =
        r#"{"access_token":"revoked-access","refresh_token":"revoked-refresh","expires_in":1}"#;
    bridge
        .link_with_tokens(&user.user_id, "alice", refused)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    bridge.start().await;
    // The user never talked to the bot (the operator linked them): the bot opens a room to
    // tell them.
    let room = user
        .accept_invite_from(&bot(&env), T)
        .await
        .room_id()
        .to_owned();
    let notice = bot_said(&user, &room, &env, |b| b.starts_with("❌")).await;
    assert!(notice.contains("Send `login`"), "{notice}");
    assert_eq!(notice.matches("login").count(), 1, "said once: {notice}");
    for internal in ["grant", "OAuth provider", "invalid_", "unsupported"] {
        assert!(
            !notice.contains(internal),
            "provider internals in {notice:?}"
        );
    }

    user.send_text(&room, "login").await;
    let reply = bot_said(&user, &room, &env, |b| b.contains("/login/")).await;
    assert!(!reply.contains("logout"), "{reply}");
    let report = browser(&[&link_in(&reply), "alice", "alicepass"]).await;
    assert_eq!(report["title"], "Linked", "{report}");
    bot_said(&user, &room, &env, |b| b.starts_with("✅ Linked as alice@")).await;
    status_shows_connected(&user, &room, &env, "alice@").await;
}
