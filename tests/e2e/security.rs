//! Attacks on the running bridge, as a hostile Matrix user, a stranger on the network or a
//! careless operator would make them (issue #14); each checks that nothing is linked, stored,
//! shown or served that should not be.

use testkit::StackEnv;

use crate::harness::*;
use crate::linking::{bot_said, dm_with_bot, link_in, walk_to_callback};

/// An attacker sends their own `login` link to a victim. Opening it (or a chat app's link
/// preview fetching it) shows whose Matrix account would be linked and uses nothing up; a
/// confirmation that does not come from the browser showing that page (a forged cross-site
/// POST) is refused; only the genuine confirmation goes on to the provider.
#[tokio::test]
async fn a_login_link_needs_the_confirmation_of_the_browser_that_shows_it() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.start().await;
    let attacker = MatrixUser::new(&env, "mallory").await;
    let room = dm_with_bot(&env, &attacker).await;
    attacker.send_text(&room, "login").await;
    let reply = bot_said(&attacker, &room, &env, |b| b.contains("/login/")).await;
    let link = link_in(&reply);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Link previews: the page names the account, twice, and the link still works.
    for _ in 0..2 {
        let page = http.get(&link).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        assert!(html.contains(attacker.user_id.as_str()), "{html}");
        assert!(
            !html.contains("oauth20_authorize"),
            "no redirect before confirming"
        );
    }
    // A forged confirmation: the attacker read a nonce from their own view of the page, but the
    // victim's browser has no matching cookie (SameSite=Strict would not send it anyway).
    let html = http.get(&link).send().await.unwrap().text().await.unwrap();
    let nonce = html
        .split("name=\"confirm\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let forged = http
        .post(&link)
        .form(&[("confirm", nonce.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "a confirmation without the cookie");
    let mismatched = http
        .post(&link)
        .header("cookie", "mb_login_confirm=something-else")
        .form(&[("confirm", nonce.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), 403, "a cookie of another view");

    // The genuine confirmation goes to the provider, once.
    let (_, answer) = confirm_link(&http, &link, &[]).await;
    assert_eq!(answer.status(), 303);
    assert!(
        answer.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(env.get("OAUTH_AUTHORIZE_URL"))
    );
    assert_eq!(
        http.get(&link).send().await.unwrap().status(),
        400,
        "used up"
    );
    bridge.stop().await;
    let store = bridge.open_store().await;
    assert!(
        store
            .linked_user(attacker.user_id.as_str())
            .await
            .unwrap()
            .is_none()
    );
}

/// The password form links accounts of the allowed domains only (default: the configured one),
/// and a failed sign-in shows no server detail.
#[tokio::test]
async fn the_password_form_links_only_allowed_domains_and_shows_no_server_details() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.edit_config("profile: messenger", "profile: standard");
    bridge.edit_config(
        &format!("domain: {}", env.get("XMPP_MESSENGER_DOMAIN")),
        &format!("domain: {}", env.get("XMPP_STANDARD_DOMAIN")),
    );
    bridge.start().await;
    let user = MatrixUser::new(&env, "prober").await;
    let room = dm_with_bot(&env, &user).await;
    let http = reqwest::Client::new();
    let mut last_link = String::new();
    let mut next_link = async || {
        user.send_text(&room, "login").await;
        let reply = bot_said(&user, &room, &env, |b| {
            b.contains("/login/") && (last_link.is_empty() || !b.contains(&last_link))
        })
        .await;
        last_link = link_in(&reply);
        last_link.clone()
    };

    // Another domain (here a real server on the same host): refused before any connection.
    let other = format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    let link = next_link().await;
    let (_, r) = confirm_link(&http, &link, &[("jid", other.as_str()), ("password", "x")]).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("Not on this bridge"), "{text}");
    assert!(text.contains(env.get("XMPP_STANDARD_DOMAIN")), "{text}");

    // A wrong password on the allowed domain: a generic answer, no address or server error.
    let link = next_link().await;
    let jid = format!("carol@{}", env.get("XMPP_STANDARD_DOMAIN"));
    let (_, r) = confirm_link(
        &http,
        &link,
        &[("jid", jid.as_str()), ("password", "wrong")],
    )
    .await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("Login failed"), "{text}");
    for detail in ["127.0.0.1", "5222", "not-authorized", "SASL"] {
        assert!(!text.contains(detail), "{detail} shown: {text}");
    }
    bridge.stop().await;
    assert!(
        bridge
            .open_store()
            .await
            .linked_user(user.user_id.as_str())
            .await
            .unwrap()
            .is_none()
    );
}

/// `/metrics` is for the configured bearer token only; `/health` says ready or not, nothing
/// more.
#[tokio::test]
async fn metrics_need_the_token_and_health_says_only_ready() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.edit_config(
        "  listen: 127.0.0.1:29317\n",
        "  listen: 127.0.0.1:29317\n  metrics_token: metrics-token-for-the-test\n",
    );
    bridge.start().await;
    let http = reqwest::Client::new();
    let url = "http://127.0.0.1:29317/metrics";
    assert_eq!(http.get(url).send().await.unwrap().status(), 403);
    let wrong = http.get(url).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 403);
    let right = http
        .get(url)
        .bearer_auth("metrics-token-for-the-test")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().await.unwrap().contains("messenger_bridge_"));
    let health: serde_json::Value = serde_json::from_slice(
        &http
            .get("http://127.0.0.1:29317/health")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(health, serde_json::json!({"ready": true}));
    bridge.stop().await;
}

/// A linked user whom the administrator removed from `permissions` gets no XMPP session when the
/// bridge starts, and is told why.
#[tokio::test]
async fn a_user_removed_from_the_permissions_gets_no_session_and_is_told() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    let user = MatrixUser::new(&env, "removed").await;
    bridge.link(&user.user_id, "alice").await;
    bridge.edit_config(
        &format!("\"@outsider:{}\": none", env.get("MATRIX_SERVER_NAME")),
        &format!(
            "\"@outsider:{}\": none\n    \"{}\": none",
            env.get("MATRIX_SERVER_NAME"),
            user.user_id
        ),
    );
    bridge.start().await;
    let bot = crate::linking::bot(&env);
    let room = user.accept_invite_from(&bot, T).await.room_id().to_owned();
    let notice = bot_said(&user, &room, &env, |b| b.starts_with("⛔")).await;
    assert!(notice.contains("no longer allows"), "{notice}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    bridge.stop().await;
    let log = std::fs::read_to_string(bridge.dir.join("bridge.log")).unwrap();
    assert!(
        log.contains("not starting the session of a user no longer allowed")
            && !log.contains("XMPP session established"),
        "the session must not start:\n{}",
        bridge.log_tail()
    );
}

/// The attacker confirms their own link, keeps the provider's sign-in URL (a real provider
/// address) and sends it to a victim. The victim signs in at the provider, and the provider sends
/// the victim's browser back to the bridge: the bridge refuses, because the sign-in did not come
/// back to the browser that confirmed the link. Nothing is linked.
#[tokio::test]
async fn a_provider_sign_in_url_sent_to_someone_else_links_nothing() {
    let _serial = serial().await;
    let env = StackEnv::load();
    let mut bridge = TestBridge::new(&env, Backend::Sqlite).await;
    bridge.start().await;
    let attacker = MatrixUser::new(&env, "mallory").await;
    let room = dm_with_bot(&env, &attacker).await;
    attacker.send_text(&room, "login").await;
    let reply = bot_said(&attacker, &room, &env, |b| b.contains("/login/")).await;
    let link = link_in(&reply);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (_, confirmed) = confirm_link(&http, &link, &[]).await;
    assert_eq!(confirmed.status(), 303);
    let authorize = confirmed.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        confirmed.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("mb_login_oauth="),
        "the confirming browser gets the callback cookie"
    );

    // The victim (bob) signs in for real; their browser has no cookie of the attacker's.
    let code = walk_to_callback(&env, &authorize, "bob").await;
    let state = authorize
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let r = http
        .get(format!(
            "http://127.0.0.1:29317/login/callback?code={code}&state={state}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("not started in this browser"), "{text}");
    bridge.stop().await;
    assert!(
        bridge
            .open_store()
            .await
            .linked_user(attacker.user_id.as_str())
            .await
            .unwrap()
            .is_none(),
        "nothing linked"
    );
}
