//! Shared set-up: managers, accounts, credential sources, event waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use testkit::StackEnv;
use tokio::sync::mpsc;
use xmpp_core::connection::{ConnectionConfig, TlsSettings, tls_client_config};
use xmpp_core::manager::{
    AccountConfig, AccountEvent, BoxFuture, CredentialSource, ManagerConfig, ManagerEvent,
    SessionManager,
};
use xmpp_core::sasl::Credentials;
use xmpp_core::{Jid, ServerProfile};

pub(crate) fn manager(env: &StackEnv) -> (SessionManager, mpsc::Receiver<AccountEvent>) {
    manager_with(env, |_| {})
}

pub(crate) fn manager_with(
    env: &StackEnv,
    tune: impl FnOnce(&mut ManagerConfig),
) -> (SessionManager, mpsc::Receiver<AccountEvent>) {
    let tls = tls_client_config(&TlsSettings {
        ca_file: Some(env.get("XMPP_CA_FILE").into()),
        insecure_skip_verify: false,
        ..TlsSettings::default()
    })
    .unwrap();
    let mut config = ManagerConfig::new(tls);
    config.backoff_initial = Duration::from_millis(200);
    config.backoff_max = Duration::from_secs(2);
    tune(&mut config);
    SessionManager::new(config)
}

pub(crate) fn messenger_account(env: &StackEnv, key: &str) -> AccountConfig {
    let domain = env.get("XMPP_MESSENGER_DOMAIN");
    AccountConfig {
        account: key.to_owned(),
        profile: ServerProfile::Messenger,
        connection: ConnectionConfig::new(domain, env.get("XMPP_HOST"), env.xmpp_port()),
        jid: None,
        resource: Some(format!("it-{key}")),
        mechanisms: None,
    }
}

pub(crate) fn standard_account(env: &StackEnv, key: &str, user: &str) -> AccountConfig {
    let domain = env.get("XMPP_STANDARD_DOMAIN");
    AccountConfig {
        account: key.to_owned(),
        profile: ServerProfile::Standard,
        connection: ConnectionConfig::new(domain, env.get("XMPP_HOST"), env.xmpp_port()),
        jid: Some(Jid::parse(&format!("{user}@{domain}")).unwrap()),
        resource: Some(format!("it-{key}")),
        mechanisms: None,
    }
}

/// Hands out fixed credentials and counts how often it was asked.
pub(crate) struct FixedCredentials {
    pub(crate) credentials: Credentials,
    /// What `rejected` returns: fresh credentials, or a refusal.
    pub(crate) on_rejected: Result<Credentials, String>,
    pub(crate) asked: AtomicUsize,
    pub(crate) rejected: AtomicUsize,
}

impl FixedCredentials {
    pub(crate) fn new(credentials: Credentials) -> Arc<Self> {
        Arc::new(Self {
            credentials,
            on_rejected: Err("the refresh token was refused".into()),
            asked: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
        })
    }
}

impl CredentialSource for FixedCredentials {
    fn credentials<'a>(&'a self, _account: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(self.credentials.clone()) })
    }

    fn rejected<'a>(&'a self, _account: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        self.rejected.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { self.on_rejected.clone() })
    }
}

/// Waits for the first event of `account` matching `pred`; panics after `limit` with what was seen.
pub(crate) async fn wait_for(
    rx: &mut mpsc::Receiver<AccountEvent>,
    account: &str,
    limit: Duration,
    pred: impl Fn(&ManagerEvent) -> bool,
) -> ManagerEvent {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if ev.account == account && pred(&ev.event) => return ev.event,
            Ok(Some(ev)) => seen.push(ev),
            Ok(None) => panic!("event channel closed; seen {seen:#?}"),
            Err(_) => panic!("no matching event for {account} within {limit:?}; seen {seen:#?}"),
        }
    }
}

pub(crate) const T: Duration = Duration::from_secs(20);
