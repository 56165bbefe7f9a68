//! Memory per idle connected session: RSS of this process before and after `N` sessions of one
//! account (distinct resources) are logged in through `SessionManager`, over STARTTLS, to the
//! local stack's standard XMPP host.
//!
//! Run (stack up: `deploy/local/stack up`):
//! `cd benches/xmpp-parse && cargo run --release --bin sessions -- 1000`
//!
//! Reads `$STACK_DIR/env` (default `../../.stack/env`). Logs in as `alice@<XMPP_STANDARD_DOMAIN>`
//! with password `alicepass`. Every login makes the server send the new resource's presence to
//! all others, so the run drains O(N²) presence events; RSS is read once they have stopped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xmpp_core::connection::{ConnectionConfig, TlsSettings, tls_client_config};
use xmpp_core::manager::{
    AccountConfig, AccountEvent, BoxFuture, ConnectionState, CredentialSource, ManagerConfig,
    ManagerEvent, SessionManager,
};
use xmpp_core::sasl::Credentials;
use xmpp_core::{Jid, ServerProfile};

struct Password(String);

impl CredentialSource for Password {
    fn credentials<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        Box::pin(async move { Ok(Credentials::Password(self.0.clone())) })
    }
    fn rejected<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        Box::pin(async { Err("the password was refused".to_owned()) })
    }
}

fn stack_env() -> HashMap<String, String> {
    let dir = std::env::var("STACK_DIR")
        .unwrap_or_else(|_| format!("{}/../../.stack", env!("CARGO_MANIFEST_DIR")));
    let text = std::fs::read_to_string(format!("{dir}/env"))
        .unwrap_or_else(|e| panic!("{dir}/env: {e}; run `deploy/local/stack up` first"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches(['"', '\'']).to_owned()))
        .collect()
}

/// (VmRSS, RssAnon) of this process in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn trim_heap() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let env = stack_env();
    let domain = env["XMPP_STANDARD_DOMAIN"].clone();
    let tls = tls_client_config(&TlsSettings {
        ca_file: Some(env["XMPP_CA_FILE"].clone().into()),
        insecure_skip_verify: false,
    })
    .expect("TLS config");
    let mut config = ManagerConfig::new(tls);
    config.backoff_initial = Duration::from_millis(500);
    config.backoff_max = Duration::from_secs(5);
    let (manager, mut events) = SessionManager::new(config);
    let credentials: Arc<dyn CredentialSource> = Arc::new(Password("alicepass".into()));
    let jid = Jid::parse(&format!("alice@{domain}")).expect("JID");
    let port: u16 = env["XMPP_PORT"].parse().expect("XMPP_PORT");

    // Warm up the runtime and the TLS stack with one session, so that the baseline includes
    // what is paid once per process (rustls provider, certificate store, worker threads).
    let accounts: Vec<AccountConfig> = (0..=n)
        .map(|i| AccountConfig {
            account: format!("rss-{i}"),
            profile: ServerProfile::Standard,
            connection: ConnectionConfig::new(&domain, &env["XMPP_HOST"], port),
            jid: Some(jid.clone()),
            resource: Some(format!("rss-{i}")),
            mechanisms: None,
        })
        .collect();
    let mut accounts = accounts.into_iter();
    manager.start(accounts.next().expect("one"), Arc::clone(&credentials));
    let mut connected = HashSet::new();
    let mut other_events = 0u64;
    wait_connected(1, &mut events, &mut connected, &mut other_events).await;
    // Settle: let the first session finish its roster and presence.
    drain_until_quiet(&mut events, &mut other_events).await;
    trim_heap();
    let before = rss_kib();

    let started = Instant::now();
    for account in accounts {
        manager.start(account, Arc::clone(&credentials));
    }
    wait_connected(n + 1, &mut events, &mut connected, &mut other_events).await;
    let login_time = started.elapsed();
    drain_until_quiet(&mut events, &mut other_events).await;
    let after = rss_kib();
    trim_heap();
    let after_trim = rss_kib();

    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / n as f64;
    println!(
        "{n} sessions connected in {:.1} s; {other_events} other events drained \
         (presence of the account's other resources, rosters)",
        login_time.as_secs_f64()
    );
    println!(
        "RSS before: {} KiB (anon {} KiB); after: {} KiB (anon {} KiB); after malloc_trim: {} KiB \
         (anon {} KiB)",
        before.0, before.1, after.0, after.1, after_trim.0, after_trim.1
    );
    println!(
        "per session: {:.1} KiB VmRSS ({:.1} KiB after malloc_trim); target <= 64 KiB",
        per(after.0, before.0),
        per(after_trim.0, before.0)
    );
    if std::env::var_os("SESSIONS_EXIT_CONNECTED").is_some() {
        // For heap profilers: end with every session still allocated.
        std::process::exit(0);
    }
    println!(
        "channel slot sizes: SessionEvent {} B, AccountEvent {} B (tokio mpsc allocates 32 slots \
         per block)",
        size_of::<xmpp_core::session::SessionEvent>(),
        size_of::<AccountEvent>()
    );
    manager.shutdown().await;
}

/// Drains events until none has arrived for two seconds.
async fn drain_until_quiet(
    events: &mut tokio::sync::mpsc::Receiver<AccountEvent>,
    count: &mut u64,
) {
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        *count += 1;
    }
}

/// Waits until `want` accounts are connected, counting the other events.
async fn wait_connected(
    want: usize,
    events: &mut tokio::sync::mpsc::Receiver<AccountEvent>,
    connected: &mut HashSet<String>,
    other_events: &mut u64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while connected.len() < want {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {want} connected", connected.len()))
            .expect("manager alive");
        match ev.event {
            ManagerEvent::State(ConnectionState::Connected { .. }) => {
                connected.insert(ev.account);
            }
            ManagerEvent::State(ConnectionState::TransientDisconnect { reason, .. }) => {
                eprintln!("{}: disconnected: {reason}", ev.account);
                connected.remove(&ev.account);
            }
            ManagerEvent::State(
                s @ (ConnectionState::BadCredentials { .. } | ConnectionState::Failed { .. }),
            ) => panic!("{}: {s:?}", ev.account),
            _ => *other_events += 1,
        }
    }
}
