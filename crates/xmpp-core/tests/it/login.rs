//! Logging in: every mechanism the real server offers, redirects, rejected tokens.

use std::sync::atomic::Ordering;
use std::time::Duration;

use testkit::{StackEnv, oauth_tokens, revoke_token};
use xmpp_core::manager::{ConnectionState, ManagerEvent};
use xmpp_core::sasl::Credentials;

use crate::harness::*;

async fn connected_jid(
    rx: &mut tokio::sync::mpsc::Receiver<xmpp_core::manager::AccountEvent>,
    key: &str,
) -> String {
    let ev = wait_for(rx, key, T, |e| {
        matches!(
            e,
            ManagerEvent::State(
                ConnectionState::Connected { .. }
                    | ConnectionState::BadCredentials { .. }
                    | ConnectionState::Failed { .. }
            )
        )
    })
    .await;
    match ev {
        ManagerEvent::State(ConnectionState::Connected { jid, .. }) => jid.to_string(),
        other => panic!("{key} did not connect: {other:?}"),
    }
}

#[tokio::test]
async fn messenger_oauth2_login_binds_the_jid_the_server_picks() {
    let env = StackEnv::load();
    let tokens = oauth_tokens(&env, "alice", "smoke-test").await;
    let (mgr, mut rx) = manager(&env);
    let mut account = messenger_account(&env, "m-login");
    // The JID we claim is ignored: identity comes from the token.
    account.jid = Some(
        xmpp_core::Jid::parse(&format!("mallory@{}", env.get("XMPP_MESSENGER_DOMAIN"))).unwrap(),
    );
    mgr.start(
        account,
        FixedCredentials::new(Credentials::AccessToken(tokens.access_token)),
    );
    let jid = connected_jid(&mut rx, "m-login").await;
    assert!(
        jid.starts_with(&format!("alice@{}/", env.get("XMPP_MESSENGER_DOMAIN"))),
        "{jid}"
    );
    mgr.shutdown().await;
}

#[tokio::test]
async fn standard_host_logins_with_each_mechanism() {
    let env = StackEnv::load();
    let tokens = oauth_tokens(&env, "carol", "smoke-test").await;
    let domain = env.get("XMPP_STANDARD_DOMAIN").to_owned();
    use xmpp_core::sasl::Mechanism::*;
    for (mechanism, credentials) in [
        (
            OAuthBearer,
            Credentials::AccessToken(tokens.access_token.clone()),
        ),
        (
            XOAuth2,
            Credentials::AccessToken(tokens.access_token.clone()),
        ),
        (ScramSha1, Credentials::Password("carolpass".into())),
        (Plain, Credentials::Password("carolpass".into())),
    ] {
        let (mgr, mut rx) = manager(&env);
        let key = format!("std-{}", mechanism.name());
        let mut account = standard_account(&env, &key, "carol");
        account.mechanisms = Some(vec![mechanism]);
        mgr.start(account, FixedCredentials::new(credentials));
        let jid = connected_jid(&mut rx, &key).await;
        assert!(jid.starts_with(&format!("carol@{domain}/")), "{jid}");
        mgr.shutdown().await;
    }
}

#[tokio::test]
async fn plain_is_refused_on_the_messenger_host() {
    let env = StackEnv::load();
    let (mgr, mut rx) = manager(&env);
    let mut account = messenger_account(&env, "m-plain");
    account.profile = xmpp_core::ServerProfile::Standard;
    account.jid = Some(
        xmpp_core::Jid::parse(&format!("alice@{}", env.get("XMPP_MESSENGER_DOMAIN"))).unwrap(),
    );
    let creds = FixedCredentials::new(Credentials::Password("alicepass".into()));
    mgr.start(account, creds.clone());
    let ev = wait_for(&mut rx, "m-plain", T, |e| {
        matches!(e, ManagerEvent::State(ConnectionState::Failed { .. }))
    })
    .await;
    let ManagerEvent::State(ConnectionState::Failed { reason }) = ev else {
        unreachable!()
    };
    assert!(
        reason.contains("X-MESSENGER-OAUTH2"),
        "the error should say what the server offers: {reason}"
    );
    assert_eq!(
        creds.asked.load(Ordering::SeqCst),
        1,
        "a permanent failure must not retry"
    );
    mgr.shutdown().await;
}

#[tokio::test]
async fn see_other_host_is_followed() {
    let env = StackEnv::load();
    let tokens = oauth_tokens(&env, "alice", "smoke-test").await;
    let (mgr, mut rx) = manager(&env);
    let mut account = messenger_account(&env, "m-redirect");
    account.connection.port = env.get("XMPP_REDIRECT_PORT").parse().unwrap();
    mgr.start(
        account,
        FixedCredentials::new(Credentials::AccessToken(tokens.access_token)),
    );
    let jid = connected_jid(&mut rx, "m-redirect").await;
    assert!(jid.starts_with("alice@"), "{jid}");
    mgr.shutdown().await;
}

#[tokio::test]
async fn revoked_token_is_refreshed_once_then_reported_not_retried() {
    let env = StackEnv::load();
    let tokens = oauth_tokens(&env, "bob", "smoke-test").await;
    revoke_token(&env, &tokens.access_token).await;
    let (mgr, mut rx) = manager(&env);
    let creds = FixedCredentials::new(Credentials::AccessToken(tokens.access_token));
    mgr.start(messenger_account(&env, "m-revoked"), creds.clone());
    let ev = wait_for(&mut rx, "m-revoked", T, |e| {
        matches!(
            e,
            ManagerEvent::State(
                ConnectionState::BadCredentials { .. } | ConnectionState::Connected { .. }
            )
        )
    })
    .await;
    assert!(
        matches!(
            ev,
            ManagerEvent::State(ConnectionState::BadCredentials { .. })
        ),
        "{ev:?}"
    );
    // No retry loop: one login, one refresh attempt, then nothing more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(creds.asked.load(Ordering::SeqCst), 1);
    assert_eq!(creds.rejected.load(Ordering::SeqCst), 1);
    assert!(mgr.session("m-revoked").is_none());
}

#[tokio::test]
async fn rejected_token_is_replaced_by_the_refreshed_one() {
    let env = StackEnv::load();
    let good = oauth_tokens(&env, "bob", "smoke-test").await;
    let (mgr, mut rx) = manager(&env);
    let creds = std::sync::Arc::new(FixedCredentials {
        credentials: Credentials::AccessToken("not-a-valid-token".into()),
        on_rejected: Ok(Credentials::AccessToken(good.access_token)),
        asked: Default::default(),
        rejected: Default::default(),
    });
    mgr.start(messenger_account(&env, "m-refresh"), creds.clone());
    let jid = connected_jid(&mut rx, "m-refresh").await;
    assert!(jid.starts_with("bob@"), "{jid}");
    assert_eq!(creds.rejected.load(Ordering::SeqCst), 1);
    mgr.shutdown().await;
}

#[tokio::test]
async fn keepalive_keeps_an_idle_session_past_the_servers_idle_timeout() {
    let env = StackEnv::load();
    let idle: u64 = env.get("XMPP_IDLE_TIMEOUT").parse().unwrap();
    let pinging = oauth_tokens(&env, "bob", "smoke-test").await;
    let silent = oauth_tokens(&env, "carol", "smoke-test").await;
    let (with_keepalive, mut rx_a) =
        manager_with(&env, |c| c.timers.keepalive = Duration::from_secs(idle / 3));
    // The control: pings far apart, so the server's idle timeout bites.
    let (without, mut rx_b) =
        manager_with(&env, |c| c.timers.keepalive = Duration::from_secs(3600));
    with_keepalive.start(
        messenger_account(&env, "idle-a"),
        FixedCredentials::new(Credentials::AccessToken(pinging.access_token)),
    );
    without.start(
        messenger_account(&env, "idle-b"),
        FixedCredentials::new(Credentials::AccessToken(silent.access_token)),
    );
    wait_for(&mut rx_a, "idle-a", T, |e| {
        matches!(e, ManagerEvent::State(ConnectionState::Connected { .. }))
    })
    .await;
    wait_for(&mut rx_b, "idle-b", T, |e| {
        matches!(e, ManagerEvent::State(ConnectionState::Connected { .. }))
    })
    .await;

    // The silent session is cut once the idle timeout passes…
    let limit = Duration::from_secs(idle + 30);
    let ev = wait_for(&mut rx_b, "idle-b", limit, |e| {
        matches!(
            e,
            ManagerEvent::State(ConnectionState::TransientDisconnect { .. })
        )
    })
    .await;
    let ManagerEvent::State(ConnectionState::TransientDisconnect { reason, .. }) = ev else {
        unreachable!()
    };
    assert!(
        reason.contains("connection-timeout") || reason.contains("closed"),
        "{reason}"
    );
    // …while the pinging one, idle just as long, is still up and never dropped.
    let mut dropped = Vec::new();
    while let Ok(ev) = rx_a.try_recv() {
        if matches!(
            ev.event,
            ManagerEvent::State(ConnectionState::TransientDisconnect { .. })
        ) {
            dropped.push(ev);
        }
    }
    assert!(
        dropped.is_empty(),
        "the session with keepalive was dropped: {dropped:?}"
    );
    assert!(
        with_keepalive.roster("idle-a").await.is_ok(),
        "the session with keepalive still answers"
    );
    with_keepalive.shutdown().await;
    without.shutdown().await;
}
