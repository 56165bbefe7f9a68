//! The session manager: one supervised XMPP session per linked account.
//!
//! Each account gets a supervisor task that connects (with bounded concurrency, so a restart
//! with thousands of accounts does not stampede the server), reads the roster, sends the
//! account's presence, and reconnects with exponential backoff and full jitter when the link
//! drops. A rejected OAuth token is refreshed once through the [`CredentialSource`]; if the
//! fresh token is rejected too, the account goes to [`ConnectionState::BadCredentials`] and the
//! supervisor stops — it never loops on bad credentials. Sessions are independent: one bad
//! stream never touches another account.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::rustls::ClientConfig;

use crate::connection::{self, ConnectionConfig, FailureKind};
use crate::jid::Jid;
use crate::negotiation::NegotiationConfig;
use crate::ns;
use crate::profile::ServerProfile;
use crate::sasl::{AuthIdentity, Credentials, Mechanism};
use crate::session::{self, IqError, SessionEnd, SessionEvent, SessionHandle, SessionTimers};
use crate::stanza::forward::{archive_page_end, archive_query, enable_carbons};
use crate::stanza::{
    ArchiveCursor, Iq, Message, Presence, RosterItem, ServerFeatures, VCard, disco, vcard,
};
use crate::stream_management::{Receipt, Resumable};
use crate::xml::Element;

/// A boxed future, for the object-safe [`CredentialSource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the manager gets secrets. The bridge implements it over its store and OAuth client.
pub trait CredentialSource: Send + Sync + 'static {
    /// The credentials to log in with now (refreshing an access token that is about to expire
    /// is the source's job). `Err` carries a message for the user.
    fn credentials<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Credentials, String>>;

    /// The server rejected the last credentials: return fresh ones (refresh the token), or
    /// `Err` with a message for the user when that is impossible.
    fn rejected<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Credentials, String>>;

    /// Where to resume reading the account's archive (XEP-0313) after a login on a server that
    /// keeps one: after the last archived message the caller recorded, or from when it last had
    /// a session. `None` (the default): no catch-up.
    fn archive_cursor<'a>(&'a self, _account: &'a str) -> BoxFuture<'a, Option<ArchiveCursor>> {
        Box::pin(async { None })
    }
}

/// Everything needed to log one account in.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// An opaque key for the account (the bridge uses the Matrix user id). Appears in logs.
    pub account: String,
    /// The server profile.
    pub profile: ServerProfile,
    /// Where to connect.
    pub connection: ConnectionConfig,
    /// The account's JID when known (required for password logins; Messenger assigns it).
    pub jid: Option<Jid>,
    /// The resource to ask for.
    pub resource: Option<String>,
    /// Restricts the SASL mechanisms further than the profile does.
    pub mechanisms: Option<Vec<Mechanism>>,
}

/// The connection state of one account, as the user should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting or logging in.
    Connecting,
    /// Logged in.
    Connected {
        /// The JID the server bound.
        jid: Jid,
        /// The broken stream was resumed (XEP-0198): no new login, the server kept the
        /// session's presence, carbons and subscriptions, and sends again what it had not seen
        /// acknowledged.
        resumed: bool,
    },
    /// Lost or failed to connect; retrying by itself.
    TransientDisconnect {
        /// What went wrong.
        reason: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// The server refused the credentials and a refresh did not help: the user must log in
    /// again. The manager has stopped trying.
    BadCredentials {
        /// What the server or the credential source said.
        reason: String,
    },
    /// A configuration problem retrying cannot fix (no usable mechanism, no TLS).
    Failed {
        /// What is wrong.
        reason: String,
    },
    /// Stopped on request.
    LoggedOut,
}

/// What happened, for which account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountEvent {
    /// The account's key.
    pub account: String,
    /// What happened.
    pub event: ManagerEvent,
    /// Drop it once the event is handled (recorded): with stream management, the server learns
    /// only then that the stanza behind it arrived (see [`crate::stream_management`]).
    pub receipt: Receipt,
}

/// The events the manager publishes.
// Boxing would cost an allocation per stanza; events are moved through one channel, so the
// size difference only costs channel slots.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ManagerEvent {
    /// The connection state changed.
    State(ConnectionState),
    /// The full roster, read after each login.
    Roster(Vec<RosterItem>),
    /// What the server offers, found by discovery after each login (standard servers only:
    /// the Messenger profile offers none of it).
    Features(ServerFeatures),
    /// The archive catch-up after a login is over: `complete` when it read to the end (then
    /// live messages may move the archive cursor on; otherwise only archived ones may).
    CaughtUp {
        /// Whether every archived message since the cursor was read.
        complete: bool,
    },
    /// A stanza-level event from the session.
    Session(SessionEvent),
}

/// Tuning for the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// TLS client configuration shared by all sessions.
    pub tls: Arc<ClientConfig>,
    /// How many accounts may be connecting at the same time.
    pub max_concurrent_connects: usize,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Session timers.
    pub timers: SessionTimers,
    /// Capacity of the event channel (backpressure beyond it).
    pub event_capacity: usize,
}

impl ManagerConfig {
    /// Defaults with the given TLS configuration.
    pub fn new(tls: Arc<ClientConfig>) -> Self {
        Self {
            tls,
            max_concurrent_connects: 8,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timers: SessionTimers::default(),
            event_capacity: 1024,
        }
    }
}

struct Entry {
    handle: Option<SessionHandle>,
    profile: ServerProfile,
    presence: Presence,
    stop: watch::Sender<bool>,
    generation: u64,
    /// The supervising task: done once its session is closed and its last event sent.
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    config: ManagerConfig,
    accounts: Mutex<HashMap<String, Entry>>,
    /// Set by [`SessionManager::shutdown`] under the `accounts` lock: no session starts after.
    closed: std::sync::atomic::AtomicBool,
    /// Taken at shutdown, so that the channel closes once the last session's events are in.
    events: Mutex<Option<mpsc::Sender<AccountEvent>>>,
    permits: Semaphore,
    generation: std::sync::atomic::AtomicU64,
}

/// Owns all sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager").finish_non_exhaustive()
    }
}

impl SessionManager {
    /// A manager and the receiver of its events.
    pub fn new(config: ManagerConfig) -> (Self, mpsc::Receiver<AccountEvent>) {
        let (tx, rx) = mpsc::channel(config.event_capacity);
        let permits = Semaphore::new(config.max_concurrent_connects.max(1));
        let inner = Inner {
            config,
            accounts: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            events: Mutex::new(Some(tx)),
            permits,
            generation: std::sync::atomic::AtomicU64::new(0),
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock would be a bug elsewhere; keep serving.
        self.inner
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts (or restarts) the supervised session of an account. Does nothing after
    /// [`SessionManager::shutdown`].
    pub fn start(&self, account: AccountConfig, credentials: Arc<dyn CredentialSource>) {
        // Checked again under the lock below; this only spares a spawn.
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let generation = self
            .inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = account.account.clone();
        let profile = account.profile;
        let mut accounts = self.accounts();
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let manager = self.clone();
        let task = tokio::spawn(async move {
            let key = account.account.clone();
            manager
                .supervise(account, credentials, stop_rx, generation)
                .await;
            manager.clear_handle(&key, generation);
        });
        let presence = match accounts.remove(&key) {
            Some(old) => {
                let _ = old.stop.send(true);
                old.presence
            }
            None => Presence::available(None, None),
        };
        accounts.insert(
            key,
            Entry {
                handle: None,
                profile,
                presence,
                stop: stop_tx,
                generation,
                task: Some(task),
            },
        );
    }

    /// Stops an account's session cleanly (`</stream:stream>`, then what the server had already
    /// sent is handled); no reconnect follows. Returns once the session's last event is sent.
    pub async fn stop(&self, account: &str) {
        let entry = self.accounts().remove(account);
        if let Some(entry) = entry {
            Self::finish(entry).await;
        }
    }

    async fn finish(mut entry: Entry) {
        let _ = entry.stop.send(true);
        if let Some(h) = entry.handle.take() {
            h.close().await;
        }
        if let Some(task) = entry.task.take() {
            // The supervisor bounds its own wait for the session (see `supervise`).
            let _ = task.await;
        }
    }

    /// Stops every session, all at once, and waits until each has handled what its server had
    /// sent. Then the event channel closes: its receiver sees the end once it has read the
    /// last event. No session starts afterwards.
    pub async fn shutdown(&self) {
        let entries: Vec<Entry> = {
            let mut accounts = self.accounts();
            self.inner
                .closed
                .store(true, std::sync::atomic::Ordering::Release);
            accounts.drain().map(|(_, e)| e).collect()
        };
        let mut finishing = tokio::task::JoinSet::new();
        for entry in entries {
            finishing.spawn(Self::finish(entry));
        }
        while finishing.join_next().await.is_some() {}
        self.inner
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    fn events(&self) -> Option<mpsc::Sender<AccountEvent>> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The live session of an account, if connected.
    pub fn session(&self, account: &str) -> Option<SessionHandle> {
        self.accounts().get(account).and_then(|e| e.handle.clone())
    }

    /// The server profile an account was started with (connected or not).
    pub fn profile(&self, account: &str) -> Option<ServerProfile> {
        self.accounts().get(account).map(|e| e.profile)
    }

    fn clear_handle(&self, account: &str, generation: u64) {
        if let Some(e) = self
            .accounts()
            .get_mut(account)
            .filter(|e| e.generation == generation)
        {
            e.handle = None;
        }
    }

    fn connected(&self, account: &str) -> Result<SessionHandle, IqError> {
        self.session(account).ok_or(IqError::NotConnected)
    }

    /// Sends any stanza.
    pub async fn send(&self, account: &str, stanza: &Element) -> Result<(), IqError> {
        self.connected(account)?.send(stanza).await
    }

    /// Sends a message and returns once the server has it: acknowledged with stream management,
    /// written otherwise (see
    /// [`SessionHandle::send_confirmed`]).
    pub async fn send_message(&self, account: &str, message: &Message) -> Result<(), IqError> {
        self.connected(account)?
            .send_confirmed(&message.to_element())
            .await
    }

    /// Sets the account's own presence: remembered, sent now if connected, and sent again after
    /// every reconnect.
    pub async fn set_presence(&self, account: &str, presence: Presence) -> Result<(), IqError> {
        let handle = {
            let mut accounts = self.accounts();
            let entry = accounts.get_mut(account).ok_or(IqError::NotConnected)?;
            entry.presence = presence.clone();
            entry.handle.clone()
        };
        match handle {
            Some(h) => h.send(&presence.to_element()).await,
            None => Ok(()),
        }
    }

    /// Reads the roster.
    pub async fn roster(&self, account: &str) -> Result<Vec<RosterItem>, IqError> {
        self.connected(account)?.roster().await
    }

    /// The last `max` messages exchanged with `with` in the account's archive (XEP-0313), oldest
    /// first, with their archive ids (see [`SessionHandle::archive_with`]).
    pub async fn archive_with(
        &self,
        account: &str,
        with: &Jid,
        max: u32,
    ) -> Result<Vec<(String, Message)>, IqError> {
        self.connected(account)?.archive_with(with, max).await
    }

    /// A slot on the user's server for a file (XEP-0363).
    pub async fn upload_slot(
        &self,
        account: &str,
        service: &Jid,
        filename: &str,
        size: u64,
        content_type: &str,
    ) -> Result<crate::stanza::Slot, IqError> {
        let handle = self.connected(account)?;
        let answer = handle
            .iq(Iq::get(
                "",
                Some(service.clone()),
                crate::stanza::upload::slot_request(filename, size, content_type),
            ))
            .await?;
        crate::stanza::upload::parse_slot(answer.payload.as_ref()).ok_or_else(|| {
            IqError::Error(crate::stanza::StanzaError {
                kind: "modify".into(),
                condition: "bad-request".into(),
                text: Some("the upload service's answer has no usable slot".into()),
            })
        })
    }

    /// What a contact's client supports (XEP-0030 features), asked of its full JID about the
    /// `node#ver` its presence announced (XEP-0115).
    pub async fn client_features(
        &self,
        account: &str,
        client: &Jid,
        node: &str,
    ) -> Result<Vec<String>, IqError> {
        let handle = self.connected(account)?;
        let answer = handle
            .iq(Iq::get(
                "",
                Some(client.clone()),
                disco::info_query_node(node),
            ))
            .await?;
        Ok(disco::features(answer.payload.as_ref()))
    }

    /// Fetches a contact's vCard (XEP-0054). No vCard is an empty one.
    pub async fn vcard(&self, account: &str, contact: &Jid) -> Result<VCard, IqError> {
        let handle = self.connected(account)?;
        let result = handle
            .iq(Iq::get("", Some(contact.to_bare()), vcard::query()))
            .await?;
        match result.payload {
            Some(p) => VCard::from_element(&p).map_err(|e| {
                IqError::Error(crate::stanza::StanzaError {
                    kind: "modify".into(),
                    condition: "bad-request".into(),
                    text: Some(e.to_string()),
                })
            }),
            None => Ok(VCard::default()),
        }
    }

    async fn emit(&self, account: &str, event: ManagerEvent) {
        let Some(events) = self.events() else {
            return;
        };
        let _ = events
            .send(AccountEvent {
                account: account.to_owned(),
                event,
                receipt: Receipt::none(),
            })
            .await;
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let exp = c.backoff_initial.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(c.backoff_max);
        // "Full jitter" between half and the whole delay: spreads a reconnect storm.
        let half = cap / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    async fn supervise(
        &self,
        account: AccountConfig,
        credentials: Arc<dyn CredentialSource>,
        mut stop: watch::Receiver<bool>,
        generation: u64,
    ) {
        let key = account.account.as_str();
        let mut attempt: u32 = 0;
        let mut fresh: Option<Credentials> = None;
        let mut refreshed_once = false;
        // What the last broken stream left to resume (XEP-0198), kept across failed attempts.
        let mut resumable: Option<Resumable> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            self.emit(key, ManagerEvent::State(ConnectionState::Connecting))
                .await;
            let creds = match fresh.take() {
                Some(c) => c,
                None => match credentials.credentials(key).await {
                    Ok(c) => c,
                    Err(reason) => {
                        tracing::warn!(account = key, %reason, "no usable credentials");
                        self.emit(
                            key,
                            ManagerEvent::State(ConnectionState::BadCredentials { reason }),
                        )
                        .await;
                        return;
                    }
                },
            };
            let negotiation = NegotiationConfig {
                domain: account.connection.domain.clone(),
                profile: account.profile,
                credentials: creds,
                identity: AuthIdentity {
                    username: account
                        .jid
                        .as_ref()
                        .and_then(|j| j.local().map(str::to_owned)),
                    bare_jid: account.jid.as_ref().map(|j| j.to_bare().to_string()),
                },
                resource: account.resource.clone(),
                mechanisms: account.mechanisms.clone(),
                // The retired Messenger service offered none of it: its profile stays as it was.
                stream_management: account.profile == ServerProfile::Standard,
                resume: resumable.as_mut().and_then(Resumable::request),
            };
            let attempt_result = {
                let connect = Box::pin(async {
                    let _permit = self.inner.permits.acquire().await;
                    connection::establish(
                        &account.connection,
                        self.inner.config.tls.clone(),
                        &negotiation,
                    )
                    .await
                });
                tokio::select! {
                    r = connect => Some(r),
                    _ = stop.changed() => None,
                }
            };
            let Some(result) = attempt_result else { break };
            match result {
                Ok(established) => {
                    // `attempt` is reset only once the session has proved stable (below): a
                    // session that dies right after login must not reconnect in a tight loop.
                    let established_at = tokio::time::Instant::now();
                    refreshed_once = false;
                    let jid = established.negotiated.jid.clone();
                    let resumed = established.negotiated.resumed;
                    let peer = format!("{}:{}", established.peer.0, established.peer.1);
                    if resumed {
                        tracing::info!(account = key, %jid, %peer, "XMPP stream resumed");
                    } else {
                        if negotiation.resume.is_some() {
                            tracing::info!(
                                account = key,
                                "the server could not resume the stream; a new session"
                            );
                        }
                        tracing::info!(account = key, %jid, %peer, stream_management = established.negotiated.stream_management.is_some(), "XMPP session established");
                    }
                    // The session sends its events straight into the manager's channel, already
                    // tagged with the account: no per-session channel to pay for while idle.
                    self.emit(
                        key,
                        ManagerEvent::State(ConnectionState::Connected { jid, resumed }),
                    )
                    .await;
                    let Some(events) = self.events() else { break };
                    let (handle, mut join) = session::start(
                        established,
                        self.inner.config.timers,
                        events,
                        key.to_owned(),
                        resumable.take(),
                    );
                    let presence = {
                        let mut accounts = self.accounts();
                        match accounts.get_mut(key) {
                            Some(e) if e.generation == generation => {
                                e.handle = Some(handle.clone());
                                Some(e.presence.clone())
                            }
                            _ => None,
                        }
                    };
                    let Some(presence) = presence else {
                        // Replaced or stopped while we were logging in.
                        handle.close().await;
                        break;
                    };
                    // RFC 6121 §2.2: roster first, then initial presence, so that presence pushes
                    // arrive for contacts the bridge already knows.
                    let mut after_login = Box::pin(async {
                        if resumed {
                            // The server kept the session: roster, presence, carbons and the
                            // archive position are as they were.
                            return;
                        }
                        match handle.roster().await {
                            Ok(items) => self.emit(key, ManagerEvent::Roster(items)).await,
                            Err(e) => {
                                tracing::warn!(account = key, error = %e, "could not read the roster")
                            }
                        }
                        if account.profile == ServerProfile::Standard {
                            let features = discover(&handle, key).await;
                            self.emit(key, ManagerEvent::Features(features.clone()))
                                .await;
                            // Carbons first: a message the user's other clients get while the
                            // archive is read comes as a carbon (a duplicate of an archived one is
                            // dropped by its dedupe key); enabled after the catch-up, one arriving
                            // between its last page and the carbons would reach only the phone,
                            // and the next live message would move the cursor past it.
                            if features.carbons
                                && let Err(e) = handle.iq(Iq::set("", None, enable_carbons())).await
                            {
                                tracing::warn!(account = key, error = %e, "the server offers carbons but did not enable them");
                            }
                            // Before the initial presence: no message to the bare JID is routed
                            // here until then (RFC 6121 §4.7.2), so the archive's come first.
                            if features.archive {
                                let complete = match credentials.archive_cursor(key).await {
                                    Some(cursor) => catch_up(&handle, key, cursor).await,
                                    // Nothing to catch up with (a first login): done.
                                    None => true,
                                };
                                self.emit(key, ManagerEvent::CaughtUp { complete }).await;
                            }
                        }
                        let _ = handle.send(&presence.to_element()).await;
                    });
                    let mut login_done = false;
                    let end = loop {
                        tokio::select! {
                            () = &mut after_login, if !login_done => login_done = true,
                            ended = &mut join => {
                                let (end, left) = ended.unwrap_or((SessionEnd::Io("session task failed".into()), None));
                                resumable = left;
                                if !login_done && let Some(r) = resumable.as_mut() {
                                    // Resuming would skip the login steps it never finished.
                                    r.forget_stream();
                                }
                                break end;
                            }
                            _ = stop.changed() => {
                                handle.close().await;
                                // The session closes within 12 s (10 s for the server's side
                                // of the stream, 2 s for the socket); never longer than this.
                                if tokio::time::timeout(Duration::from_secs(15), &mut join).await.is_err() {
                                    join.abort();
                                }
                                break SessionEnd::Closed;
                            }
                        }
                    };
                    drop(after_login);
                    self.clear_handle(key, generation);
                    if matches!(end, SessionEnd::Closed) {
                        break;
                    }
                    if let SessionEnd::StreamError(e) = &end
                        && e.condition == "conflict"
                    {
                        tracing::error!(
                            account = key,
                            "another client logged in to this XMPP account with the bridge's resource and replaced its session; if a second bridge uses this account, stop one of them or give each its own xmpp.resource"
                        );
                    }
                    attempt = attempt_after_session(attempt, established_at.elapsed());
                    let delay = self.backoff(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(account = key, reason = %end, retry_in = ?delay, "XMPP session lost; reconnecting");
                    self.emit(
                        key,
                        ManagerEvent::State(ConnectionState::TransientDisconnect {
                            reason: end.to_string(),
                            retry_in: delay,
                        }),
                    )
                    .await;
                    if sleep_or_stop(delay, &mut stop).await {
                        break;
                    }
                }
                Err(e) => match e.kind() {
                    FailureKind::CredentialsRejected if !refreshed_once => {
                        refreshed_once = true;
                        tracing::info!(account = key, error = %e, "credentials rejected; refreshing once");
                        match credentials.rejected(key).await {
                            Ok(c) => fresh = Some(c),
                            Err(reason) => {
                                self.emit(
                                    key,
                                    ManagerEvent::State(ConnectionState::BadCredentials { reason }),
                                )
                                .await;
                                return;
                            }
                        }
                    }
                    FailureKind::CredentialsRejected => {
                        tracing::warn!(account = key, error = %e, "credentials rejected again; the user must log in again");
                        self.emit(
                            key,
                            ManagerEvent::State(ConnectionState::BadCredentials {
                                reason: e.to_string(),
                            }),
                        )
                        .await;
                        return;
                    }
                    FailureKind::Permanent => {
                        tracing::error!(account = key, error = %e, "cannot log in until the configuration changes");
                        self.emit(
                            key,
                            ManagerEvent::State(ConnectionState::Failed {
                                reason: e.to_string(),
                            }),
                        )
                        .await;
                        return;
                    }
                    FailureKind::Transient => {
                        let delay = self.backoff(attempt);
                        attempt = attempt.saturating_add(1);
                        tracing::warn!(account = key, error = %e, retry_in = ?delay, "XMPP connection failed");
                        self.emit(
                            key,
                            ManagerEvent::State(ConnectionState::TransientDisconnect {
                                reason: e.to_string(),
                                retry_in: delay,
                            }),
                        )
                        .await;
                        if sleep_or_stop(delay, &mut stop).await {
                            break;
                        }
                    }
                },
            }
        }
        self.emit(key, ManagerEvent::State(ConnectionState::LoggedOut))
            .await;
    }
}

/// Asks the server and the account what they offer. A server that does not answer offers
/// nothing.
async fn discover(handle: &SessionHandle, account: &str) -> ServerFeatures {
    let server = handle.jid().domain().to_owned();
    let info = |to: Option<Jid>| async move {
        match handle.iq(Iq::get("", to, disco::info_query())).await {
            Ok(answer) => disco::features(answer.payload.as_ref()),
            Err(e) => {
                tracing::debug!(account, error = %e, "no service discovery answer");
                Vec::new()
            }
        }
    };
    let server_features = info(Jid::parse(&server).ok()).await;
    let account_features = info(None).await;
    let mut features = ServerFeatures::from_features(&server_features, &account_features);
    features.upload = find_upload(handle, &server, account).await;
    tracing::info!(
        account,
        carbons = features.carbons,
        archive = features.archive,
        upload = features.upload.as_ref().map(|u| u.jid.to_string()),
        "server features"
    );
    features
}

/// The server's XEP-0363 upload service, among its items (the first 20 asked).
async fn find_upload(
    handle: &SessionHandle,
    server: &str,
    account: &str,
) -> Option<crate::stanza::UploadService> {
    let items = handle
        .iq(Iq::get("", Jid::parse(server).ok(), disco::items_query()))
        .await
        .map(|answer| disco::items(answer.payload.as_ref(), 20))
        .unwrap_or_default();
    for item in items {
        match handle
            .iq(Iq::get("", Some(item.clone()), disco::info_query()))
            .await
        {
            Ok(answer)
                if disco::features(answer.payload.as_ref())
                    .iter()
                    .any(|f| f == ns::HTTP_UPLOAD) =>
            {
                return Some(crate::stanza::UploadService {
                    jid: item,
                    max_size: crate::stanza::upload::max_size(answer.payload.as_ref()),
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(account, item = %item, error = %e, "no discovery answer from a server item")
            }
        }
    }
    None
}

/// The most archive pages read in one catch-up; a larger gap is read on at the next login
/// (the bridge's cursor stays at the last archived message it recorded).
const MAX_ARCHIVE_PAGES: u32 = 200;
/// How far back a catch-up goes when the server no longer has the cursor's message.
const ARCHIVE_FALLBACK_MS: i64 = 7 * 24 * 3600 * 1000;

/// Reads the account's archive from `cursor` on, page by page; the messages arrive as
/// [`SessionEvent::Archived`] before each page's answer. Returns whether it read to the end.
async fn catch_up(handle: &SessionHandle, account: &str, mut cursor: ArchiveCursor) -> bool {
    let mut fell_back = false;
    for page in 1..=MAX_ARCHIVE_PAGES {
        let query = archive_query(&session::next_id(), &cursor, 100);
        match handle.iq(Iq::set("", None, query)).await {
            Ok(answer) => match archive_page_end(answer.payload.as_ref()) {
                Some((true, _)) => {
                    tracing::info!(account, pages = page, "caught up with the archive");
                    return true;
                }
                Some((false, Some(last))) if !matches!(&cursor, ArchiveCursor::After(c) if *c == last) =>
                {
                    cursor = ArchiveCursor::After(last);
                }
                other => {
                    tracing::warn!(account, answer = ?other, "the archive's answer does not say where it goes on; catch-up stopped, to be resumed at the next login");
                    return false;
                }
            },
            Err(IqError::Error(e)) if e.condition == "item-not-found" && !fell_back => {
                // The cursor's message has expired from the archive: read the last week.
                tracing::warn!(
                    account,
                    "the archive no longer has the last message the bridge saw; reading the last 7 days"
                );
                fell_back = true;
                let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
                cursor = ArchiveCursor::Since(now - ARCHIVE_FALLBACK_MS);
            }
            Err(e) => {
                tracing::warn!(account, error = %e, "could not read the archive; catch-up stopped, to be resumed at the next login");
                return false;
            }
        }
    }
    tracing::warn!(
        account,
        pages = MAX_ARCHIVE_PAGES,
        "the archive gap is larger than one catch-up reads; the rest follows at the next login"
    );
    false
}

/// Sleeps; returns true when stopped meanwhile.
/// How long a session must have lasted to count as stable: losing it then reconnects at once,
/// while a session that keeps dying sooner backs off further each time.
const STABLE_SESSION: Duration = Duration::from_secs(60);

/// The backoff attempt to use after a session that lived `lived` ends.
fn attempt_after_session(attempt: u32, lived: Duration) -> u32 {
    if lived >= STABLE_SESSION { 0 } else { attempt }
}

async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_dies_soon_after_login_backs_off_further() {
        // Dies after 1 s, three times: the attempts grow (1, 2, 3 → longer delays).
        let mut attempt = 0;
        for expected in [0, 1, 2] {
            attempt = attempt_after_session(attempt, Duration::from_secs(1));
            assert_eq!(attempt, expected);
            attempt += 1;
        }
        // A session that lasted is lost by bad luck: reconnect at the first delay again.
        assert_eq!(attempt_after_session(attempt, STABLE_SESSION), 0);
    }
}
