//! The XMPP server restarts under a live session: the session comes back by itself.
//! Its own test binary, because restarting Prosody disturbs every session on the stack
//! (cargo runs test binaries one after another).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use testkit::{ContactLogin, StackEnv, XmppContact, oauth_tokens, repo_root};
use xmpp_core::connection::{ConnectionConfig, TlsSettings, tls_client_config};
use xmpp_core::manager::{
    AccountConfig, BoxFuture, ConnectionState, CredentialSource, ManagerConfig, ManagerEvent,
    SessionManager,
};
use xmpp_core::sasl::Credentials;
use xmpp_core::session::SessionEvent;
use xmpp_core::{Jid, ServerProfile};

struct Token(String);

impl CredentialSource for Token {
    fn credentials<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        Box::pin(async move { Ok(Credentials::AccessToken(self.0.clone())) })
    }
    fn rejected<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        Box::pin(async move { Err("rejected".to_owned()) })
    }
}

async fn wait(
    rx: &mut tokio::sync::mpsc::Receiver<xmpp_core::manager::AccountEvent>,
    pred: fn(&ManagerEvent) -> bool,
) -> Result<ManagerEvent, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let ev = rx.recv().await.unwrap();
            if pred(&ev.event) {
                return ev.event;
            }
        }
    })
    .await
}

#[tokio::test]
async fn session_comes_back_after_the_xmpp_server_restarts() {
    let env = StackEnv::load();
    let tokens = oauth_tokens(&env, "carol", "smoke-test").await;
    let tls = tls_client_config(&TlsSettings {
        ca_file: Some(env.get("XMPP_CA_FILE").into()),
        insecure_skip_verify: false,
        ..TlsSettings::default()
    })
    .unwrap();
    let mut config = ManagerConfig::new(tls);
    config.backoff_initial = Duration::from_millis(300);
    config.backoff_max = Duration::from_secs(2);
    let (mgr, mut rx) = SessionManager::new(config);
    let account = AccountConfig {
        account: "restart".into(),
        profile: ServerProfile::Messenger,
        connection: ConnectionConfig::new(
            env.get("XMPP_MESSENGER_DOMAIN"),
            env.get("XMPP_HOST"),
            env.xmpp_port(),
        ),
        jid: None,
        resource: Some("restart-test".into()),
        mechanisms: None,
    };
    mgr.start(account, Arc::new(Token(tokens.access_token)));
    wait(&mut rx, |e| {
        matches!(e, ManagerEvent::State(ConnectionState::Connected { .. }))
    })
    .await
    .expect("first login");

    let status = tokio::process::Command::new(repo_root().join("deploy/local/stack"))
        .args(["restart", "prosody"])
        .status()
        .await
        .unwrap();
    assert!(
        status.success(),
        "deploy/local/stack restart prosody failed"
    );

    wait(&mut rx, |e| {
        matches!(
            e,
            ManagerEvent::State(ConnectionState::TransientDisconnect { .. })
        )
    })
    .await
    .expect("the drop is noticed");
    wait(&mut rx, |e| {
        matches!(e, ManagerEvent::State(ConnectionState::Connected { .. }))
    })
    .await
    .expect("the session comes back by itself");

    // And it works: a contact's message arrives.
    let mut bob = XmppContact::start(&env, "bob", ContactLogin::Messenger).await;
    let carol = format!("carol@{}", env.get("XMPP_MESSENGER_DOMAIN"));
    bob.send_chat(&carol, Some("after the restart"), None).await;
    let ev = wait(&mut rx, |e| matches!(e, ManagerEvent::Session(SessionEvent::Message(m)) if m.body.as_deref() == Some("after the restart"))).await.expect("message after reconnect");
    let ManagerEvent::Session(SessionEvent::Message(m)) = ev else {
        unreachable!()
    };
    assert_eq!(
        m.from.unwrap().to_bare(),
        Jid::parse(bob.bare_jid()).unwrap()
    );
    bob.quit().await;
    mgr.shutdown().await;
}
