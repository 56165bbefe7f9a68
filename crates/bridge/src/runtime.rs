//! The running bridge: shared state, start-up, and the two delivery loops.
//!
//! Delivery is durable both ways through the store's outbox:
//! - Matrix → XMPP: the appservice records every event of a transaction (queue = room) before it
//!   answers 200; the to-XMPP delivery loop delivers them once the user's session is up.
//! - XMPP → Matrix: each stanza is recorded (queue = portal) as it arrives;
//!   the to-Matrix delivery loop sends it with a transaction id derived from the outbox item, so a
//!   retry after a crash is idempotent.
//!
//! The store hands out only the oldest unfinished item of each queue, so order is kept per
//! portal while different portals are delivered concurrently.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::presence::PresenceState;
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};
use store::{ClaimedItem, Direction, Queued, Store};
use tokio::sync::{Notify, Semaphore, mpsc};
use xmpp_core::manager::{
    AccountConfig, AccountEvent, ConnectionState, ManagerEvent, SessionManager,
};
use xmpp_core::session::SessionEvent;
use xmpp_core::stanza::{ChatState, Message, MessageType, Presence, PresenceType};
use xmpp_core::{Jid, ServerProfile};

use crate::config::BridgeConfig;
use crate::credentials::StoreCredentials;
use crate::events::HandleError;
use crate::ghost::GhostNames;
use crate::mapping;
use crate::matrix::{MatrixClient, MatrixError, client::user_id};

/// Content key marking the events the bridge sent, with the transaction id they were sent
/// with; lets a retry find out whether an earlier attempt went through.
const TXN_MARKER: &str = "net.messenger-bridge.txn";
/// How long a claimed outbox item is ours before another worker may take it over.
pub(crate) const LEASE: Duration = Duration::from_secs(120);
/// How often an idle delivery loop looks at the outbox anyway.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long delivered outbox items are kept: their dedupe keys stop a stanza or event that
/// comes again (a server resending after a reconnect) from being bridged twice.
const OUTBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Matrix caps events at 64 KiB; keep message bodies well inside.
const MAX_MATRIX_BODY: usize = 48 * 1024;

/// How a delivery attempt ended, for [`Bridge::delivery_ended`].
enum DeliveryEnd {
    /// A message reached the other side at `done`, `remote` of it spent waiting for that side.
    Message { remote: Duration, done: Instant },
    /// Something else was delivered, or the item was given up: the queue moves on.
    Other,
    /// The item will be tried again later: the queue stays blocked.
    Retry,
}

/// Shared state of the bridge. Cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: BridgeConfig,
    pub(crate) store: Store,
    pub(crate) matrix: MatrixClient,
    pub(crate) xmpp: SessionManager,
    pub(crate) credentials: Arc<StoreCredentials>,
    pub(crate) ghosts: GhostNames,
    pub(crate) bot: OwnedUserId,
    pub(crate) wake_to_xmpp: Notify,
    pub(crate) wake_to_matrix: Notify,
    /// Contacts' last presence sent to Matrix, to send only changes.
    presence_sent: Mutex<HashMap<String, (PresenceState, Option<String>)>>,
    /// Ghosts registered during this run.
    registered: Mutex<HashSet<String>>,
    /// Roster names per (user, contact).
    pub(crate) roster_names: Mutex<HashMap<(String, String), String>>,
    /// Per-key async locks (ghost set-up, portal creation).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Portal rooms where the linked user is typing (for chat states).
    typing_in: Mutex<HashSet<String>>,
    /// `room|ghost` pairs where a ghost is shown typing, so a message turns it off only then.
    ghost_typing: Mutex<HashSet<String>>,
    /// Contacts whose ghost is set up (registered, named) in this run: the hot path skips the
    /// store for them.
    pub(crate) ghosts_ready: Mutex<HashSet<String>>,
    /// Portal rooms both ways, as stored.
    pub(crate) portals: Mutex<crate::portal::PortalCache>,
    /// The linked users' last Matrix presence sent to XMPP.
    user_presence: Mutex<HashMap<String, (String, Option<String>)>>,
    /// Connection state per user and whether its disconnect was announced.
    pub(crate) states: Mutex<HashMap<String, (ConnectionState, bool)>>,
    pub(crate) metrics: crate::metrics::Metrics,
    /// Receive times of messages in flight, for the latency metrics.
    pub(crate) timings: crate::latency::Timings,
    /// Queues with an item waiting behind one in flight: when that one ends, the delivery loop
    /// is woken to claim the next.
    waiting: Mutex<HashSet<(Direction, String)>>,
    /// Per linked user, the rooms whose next message to XMPP waits for their session.
    waiting_for_session: Mutex<HashMap<String, HashSet<String>>>,
    profile_sync: Semaphore,
    /// Logins in progress.
    pub(crate) logins: crate::linking::Logins,
    /// The OAuth provider's token endpoint (refresh, device flow).
    pub(crate) oauth: Option<crate::credentials::OAuthClient>,
    /// TLS settings for XMPP (used to check a new login before storing it).
    pub(crate) xmpp_tls: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("bot", &self.inner.bot)
            .finish_non_exhaustive()
    }
}

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The homeserver is unreachable or refuses us.
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Bridge {
    /// Wires the parts together.
    pub fn new(
        config: BridgeConfig,
        store: Store,
        matrix: MatrixClient,
        xmpp: SessionManager,
        xmpp_tls: Arc<tokio_rustls::rustls::ClientConfig>,
        oauth: Option<crate::credentials::OAuthClient>,
    ) -> Result<Self, StartError> {
        let credentials = StoreCredentials::new(store.clone(), oauth.clone());
        let link_lifetime = Duration::from_secs(config.bridge.login_link_lifetime_secs);
        let server = &config.homeserver.server_name;
        let bot = UserId::parse(format!("@{}:{server}", config.appservice.bot_localpart)).map_err(
            |e| {
                StartError::Config(format!(
                    "homeserver.server_name / appservice.bot_localpart: {e}"
                ))
            },
        )?;
        let ghosts = GhostNames::new(&config.appservice.ghost_prefix, server, &config.xmpp.domain);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                matrix,
                xmpp,
                credentials,
                ghosts,
                bot,
                wake_to_xmpp: Notify::new(),
                wake_to_matrix: Notify::new(),
                presence_sent: Mutex::default(),
                registered: Mutex::default(),
                roster_names: Mutex::default(),
                locks: Mutex::default(),
                typing_in: Mutex::default(),
                ghost_typing: Mutex::default(),
                ghosts_ready: Mutex::default(),
                portals: Mutex::default(),
                user_presence: Mutex::default(),
                states: Mutex::default(),
                metrics: crate::metrics::Metrics::default(),
                timings: crate::latency::Timings::default(),
                waiting: Mutex::default(),
                waiting_for_session: Mutex::default(),
                profile_sync: Semaphore::new(4),
                logins: crate::linking::Logins::new(link_lifetime),
                oauth,
                xmpp_tls,
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Metrics for `/metrics`.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The bot's user id.
    pub fn bot(&self) -> &UserId {
        &self.inner.bot
    }

    /// Starts the background loops and every linked user's XMPP session. `events` is the
    /// session manager's event receiver.
    pub async fn start(&self, events: mpsc::Receiver<AccountEvent>) -> Result<(), StartError> {
        let inner = &self.inner;
        inner.matrix.register(inner.bot.localpart()).await?;
        if let Err(e) = inner
            .matrix
            .set_display_name(&inner.bot, &inner.config.appservice.bot_displayname)
            .await
        {
            tracing::warn!(error = %e, "could not set the bot's display name");
        }
        // One bridge per database: whatever a previous run had claimed died with it.
        let released = inner.store.release_claims().await?;
        if released > 0 {
            tracing::info!(
                count = released,
                "redelivering messages the previous run had in flight"
            );
        }
        tokio::spawn(self.clone().xmpp_event_loop(events));
        tokio::spawn(self.clone().deliver_forever(Direction::ToMatrix));
        tokio::spawn(self.clone().deliver_forever(Direction::ToXmpp));
        tokio::spawn(self.clone().refresh_tokens_forever());
        tokio::spawn(self.clone().prune_outbox_forever());
        let users = inner.store.linked_users().await?;
        tracing::info!(
            count = users.len(),
            "starting XMPP sessions of linked users"
        );
        for user in users {
            self.start_session(&user.matrix_user, &user.jid, user.server_profile);
        }
        Ok(())
    }

    pub(crate) fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// The XMPP account configuration of a linked user.
    pub(crate) fn account_config(
        &self,
        matrix_user: &str,
        jid: &str,
        profile: store::ServerProfile,
    ) -> AccountConfig {
        let x = &self.inner.config.xmpp;
        let jid = Jid::parse(jid).ok();
        let domain = jid
            .as_ref()
            .map_or_else(|| x.domain.clone(), |j| j.domain().to_owned());
        let host = x.host.clone().unwrap_or_else(|| domain.clone());
        let mut connection = xmpp_core::connection::ConnectionConfig::new(domain, host, x.port);
        connection.limits.max_stanza_bytes = x.max_stanza_bytes;
        AccountConfig {
            account: matrix_user.to_owned(),
            profile: match profile {
                store::ServerProfile::Messenger => ServerProfile::Messenger,
                store::ServerProfile::Standard => ServerProfile::Standard,
            },
            connection,
            jid,
            resource: x.resource.clone(),
            mechanisms: None,
        }
    }

    /// Starts (or restarts) a linked user's XMPP session.
    pub fn start_session(&self, matrix_user: &str, jid: &str, profile: store::ServerProfile) {
        let account = self.account_config(matrix_user, jid, profile);
        self.inner
            .xmpp
            .start(account, self.inner.credentials.clone());
    }

    // ---------------------------------------------------------------- XMPP → Matrix

    async fn xmpp_event_loop(self, mut events: mpsc::Receiver<AccountEvent>) {
        while let Some(AccountEvent { account, event }) = events.recv().await {
            match event {
                ManagerEvent::State(state) => self.on_state(&account, state).await,
                ManagerEvent::Roster(items) => {
                    for item in items {
                        self.remember_roster_name(&account, &item);
                        self.spawn_profile_sync(&account, item.jid.clone());
                    }
                }
                ManagerEvent::Session(SessionEvent::RosterPush(items)) => {
                    for item in items {
                        self.remember_roster_name(&account, &item);
                    }
                }
                ManagerEvent::Session(SessionEvent::Message(m)) => {
                    self.on_xmpp_message(&account, m).await
                }
                ManagerEvent::Session(SessionEvent::Presence(p)) => {
                    self.on_xmpp_presence(&account, p).await
                }
                ManagerEvent::Session(SessionEvent::Invalid { reason }) => {
                    tracing::warn!(user = %account, %reason, "ignored a stanza the bridge cannot understand");
                }
            }
        }
    }

    fn remember_roster_name(&self, account: &str, item: &xmpp_core::stanza::RosterItem) {
        if let Some(name) = &item.name {
            let mut names = self
                .inner
                .roster_names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            names.insert((account.to_owned(), item.jid.to_string()), name.clone());
        }
    }

    fn spawn_profile_sync(&self, account: &str, contact: Jid) {
        let this = self.clone();
        let account = account.to_owned();
        tokio::spawn(async move {
            let _permit = this.inner.profile_sync.acquire().await;
            if let Err(e) = this.ensure_ghost(&account, &contact, true).await {
                tracing::warn!(user = %account, contact = %contact, error = %e, "could not update a contact's profile");
            }
        });
    }

    async fn on_xmpp_message(&self, account: &str, m: Message) {
        let arrived = Instant::now();
        let Some(from) = m.from.as_ref().map(Jid::to_bare) else {
            return;
        };
        let contact = from.to_string();
        match m.kind {
            MessageType::Error => {
                let reason = m
                    .error
                    .as_ref()
                    .map_or_else(|| "unknown error".to_owned(), ToString::to_string);
                self.inner.metrics.failure("xmpp_error_reply");
                let payload = json!({"kind": "notice", "user": account, "contact": contact,
                    "text": format!("⚠ Your message was not delivered: {reason}")});
                self.enqueue_to_matrix(account, &contact, &payload, None, Instant::now())
                    .await;
                return;
            }
            MessageType::Groupchat | MessageType::Headline => {
                tracing::debug!(user = %account, kind = ?m.kind, "ignoring a non-chat message");
                return;
            }
            MessageType::Chat | MessageType::Normal => {}
        }
        if let Some(state) = m.chat_state {
            let typing = m.body.is_none() && mapping::chat_state_is_typing(state);
            if m.body.is_none() || state != ChatState::Composing {
                self.set_ghost_typing(account, &from, typing).await;
            }
        }
        let Some(body) = m.body.filter(|b| !b.is_empty()) else {
            return;
        };
        let received = now_ms();
        let ts = m.delay.as_ref().map(xmpp_core::stanza::Delay::unix_millis);
        let dedupe = match &m.id {
            Some(id) => format!("{account}|{contact}|{id}"),
            None => format!(
                "{account}|{contact}|{}|{}",
                short_hash(&body),
                ts.unwrap_or(received)
            ),
        };
        let payload = json!({"kind": "message", "user": account, "contact": contact, "body": body,
            "ts": ts, "stanza_id": m.id, "received": received});
        self.enqueue_to_matrix(account, &contact, &payload, Some(&dedupe), arrived)
            .await;
    }

    /// Records a stanza for delivery to Matrix, retrying until the store has it, and starts
    /// its delivery at once if its portal is idle. `arrived` is when the stanza was received.
    async fn enqueue_to_matrix(
        &self,
        account: &str,
        contact: &str,
        payload: &Value,
        dedupe: Option<&str>,
        arrived: Instant,
    ) {
        let queue = format!("{account}|{contact}");
        let bytes = serde_json::to_vec(payload).unwrap_or_default();
        // The store is the only place a received stanza lives: retry until it is recorded.
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .inner
                .store
                .enqueue_and_claim(Direction::ToMatrix, &queue, &bytes, dedupe, LEASE)
                .await
            {
                Ok(queued @ (Queued::Claimed(_) | Queued::Waiting(_))) => {
                    // Noted before delivery starts, so a fast delivery finds it.
                    if let Some(key) = dedupe {
                        self.note_received(Direction::ToMatrix, key, arrived);
                    }
                    match queued {
                        Queued::Claimed(item) => self.dispatch(item),
                        _ => self.queue_waiting(Direction::ToMatrix, &queue),
                    }
                    return;
                }
                Ok(Queued::Duplicate(_)) => {
                    tracing::debug!(user = %account, contact, "a stanza we already have; not bridged twice");
                    return;
                }
                Err(e) => {
                    tracing::error!(user = %account, error = %e, "cannot record an incoming message; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn set_ghost_typing(&self, account: &str, contact: &Jid, typing: bool) {
        let jid = contact.to_string();
        let cached = self.portals().room(account, &jid);
        let room = match cached {
            Some(room) => room,
            None => {
                let Ok(Some(portal)) = self.inner.store.portal(account, &jid).await else {
                    return;
                };
                let Ok(room) = ruma::RoomId::parse(&portal.room_id) else {
                    return;
                };
                self.portals().insert(account, &jid, &room);
                room
            }
        };
        let ghost = self.inner.ghosts.user_id(contact);
        {
            let mut typing_now = self
                .inner
                .ghost_typing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = format!("{room}|{ghost}");
            if typing {
                typing_now.insert(key)
            } else {
                typing_now.remove(&key)
            };
        }
        if let Err(e) = self
            .inner
            .matrix
            .set_typing(&ghost, &room, typing, Duration::from_secs(30))
            .await
        {
            tracing::debug!(error = %e, "could not set typing");
        }
    }

    async fn on_xmpp_presence(&self, account: &str, p: Presence) {
        let Some(from) = p.from.as_ref().map(Jid::to_bare) else {
            return;
        };
        match p.kind {
            PresenceType::Subscribe => {
                let who = p
                    .nick
                    .as_deref()
                    .map_or_else(|| from.to_string(), |n| format!("{n} ({from})"));
                self.notify_user(account, &format!("{who} wants to add you as a contact. The Messenger service does not allow changing contacts from here; accept it in another client.")).await;
                return;
            }
            PresenceType::Available | PresenceType::Unavailable => {}
            _ => return,
        }
        // Our own other resources are not contacts.
        if self
            .inner
            .xmpp
            .session(account)
            .is_some_and(|s| s.jid().bare_eq(&from))
        {
            return;
        }
        let (state, status) = mapping::xmpp_presence_to_matrix(&p);
        let key = from.to_string();
        {
            let mut sent = self
                .inner
                .presence_sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if sent.get(&key) == Some(&(state.clone(), status.clone())) {
                return;
            }
            sent.insert(key, (state.clone(), status.clone()));
        }
        if let Some(hash) = &p.photo_hash {
            let known = self
                .inner
                .store
                .ghost(&from.to_string())
                .await
                .ok()
                .flatten()
                .and_then(|g| g.avatar_hash);
            if known.as_deref() != Some(hash.as_str()) && !hash.is_empty() {
                self.spawn_profile_sync(account, from.clone());
            }
        }
        let ghost = self.inner.ghosts.user_id(&from);
        if let Err(e) = self.ensure_registered(&ghost).await {
            tracing::debug!(error = %e, "could not register a ghost for presence");
            return;
        }
        if let Err(e) = self.inner.matrix.set_presence(&ghost, state, status).await {
            tracing::debug!(ghost = %ghost, error = %e, "could not set a ghost's presence");
        }
    }

    /// Registers a ghost once per run (registering an existing user is fine).
    pub(crate) async fn ensure_registered(&self, user: &UserId) -> Result<(), MatrixError> {
        let known = self
            .inner
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(user.as_str());
        if known {
            return Ok(());
        }
        self.inner.matrix.register(user.localpart()).await?;
        self.inner
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user.to_string());
        Ok(())
    }

    /// Claims outbox items of one direction and delivers them, concurrently across queues. The
    /// store hands out only a queue's head, never an item behind one in flight, so each portal
    /// stays in order; the loop claims again as soon as any delivery ends, so a slow portal
    /// never holds up the others.
    async fn deliver_forever(self, direction: Direction) {
        // Claims always ask for the same number of items: the limit is part of the statement's
        // text, so one value keeps one prepared statement. Up to 2×BATCH-1 deliveries may be
        // in flight.
        const BATCH: u32 = 32;
        let wake = self.wake_signal(direction);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if tasks.len() < BATCH as usize {
                match self.inner.store.claim(direction, BATCH, LEASE).await {
                    Ok(items) => {
                        for item in items {
                            let this = self.clone();
                            tasks.spawn(async move { this.deliver(item).await });
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the outbox; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            tokio::select! {
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = wake.notified() => {}
                // Every way an item becomes due wakes the loop (recorded, a queue freed, a
                // retry's time come, a session up); this only catches an expired lease.
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// Delivers an item, then each next item of its queue that the store hands over with the
    /// ack: a portal with a backlog is drained by one task, in order, without separate claims.
    async fn deliver(&self, mut item: ClaimedItem) {
        loop {
            let next = match item.direction {
                Direction::ToMatrix => self.deliver_to_matrix(item).await,
                Direction::ToXmpp => self.deliver_to_xmpp(item).await,
            };
            match next {
                Some(next) => item = next,
                None => return,
            }
        }
    }

    /// Acks a delivered item (with its message mapping) and takes the next one of its queue.
    async fn ack(
        &self,
        item: &ClaimedItem,
        mapping: Option<&(String, String, String)>,
    ) -> Option<ClaimedItem> {
        let mapping =
            mapping.map(|(room, event, stanza)| (room.as_str(), event.as_str(), stanza.as_str()));
        match self
            .inner
            .store
            .ack_and_claim_next(item, mapping, LEASE)
            .await
        {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "could not acknowledge a delivered item");
                None
            }
        }
    }

    /// Bookkeeping once an item left the bridge: its portal may go on (the delivery loop is
    /// woken for an item waiting behind it, unless `chained` — already taken with the ack), and
    /// a message delivered on its first attempt feeds the latency metrics.
    fn delivery_ended(&self, item: &ClaimedItem, outcome: DeliveryEnd, chained: bool) {
        let timings = &self.inner.timings;
        let received = item
            .dedupe_key
            .as_deref()
            .and_then(|key| timings.take_received(item.direction, key));
        let now = Instant::now();
        let queue_free = timings.queue_free(item.direction, &item.queue_key);
        if !matches!(outcome, DeliveryEnd::Retry) {
            timings.queue_done(item.direction, &item.queue_key, now);
            let next_waits = self
                .inner
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(item.direction, item.queue_key.clone()));
            if next_waits && !chained {
                self.wake(item.direction);
            }
        }
        if let DeliveryEnd::Message { remote, done } = outcome {
            let timing = received
                .filter(|_| item.attempts == 1)
                .map(|r| crate::latency::Breakdown::new(r, queue_free, remote, done));
            let label = match item.direction {
                Direction::ToMatrix => "xmpp_to_matrix",
                Direction::ToXmpp => "matrix_to_xmpp",
            };
            self.inner.metrics.bridged(label, timing);
        }
    }

    /// Delivers one item to Matrix; returns the next item of its queue if the ack took one.
    async fn deliver_to_matrix(&self, item: ClaimedItem) -> Option<ClaimedItem> {
        let payload: Value = serde_json::from_slice(&item.payload).unwrap_or(Value::Null);
        let mut remote = Duration::ZERO;
        let result = self.send_to_matrix(&item, &payload, &mut remote).await;
        let store = &self.inner.store;
        match result {
            Ok(mapping) => {
                let done = Instant::now();
                let next = self.ack(&item, mapping.as_ref()).await;
                let outcome = if payload["kind"] == "message" {
                    DeliveryEnd::Message { remote, done }
                } else {
                    DeliveryEnd::Other
                };
                self.delivery_ended(&item, outcome, next.is_some());
                return next;
            }
            Err(e) if e.is_transient() => {
                let delay = retry_delay(item.attempts);
                tracing::warn!(queue = %item.queue_key, error = %e, retry_in = ?delay, "delivery to Matrix failed; will retry");
                match store.retry(&item, &e.to_string(), delay).await {
                    Ok(store::RetryOutcome::GaveUp) => {
                        self.inner.metrics.failure("matrix_gave_up");
                        tracing::error!(queue = %item.queue_key, error = %e, "gave up delivering a message to Matrix");
                        self.delivery_ended(&item, DeliveryEnd::Other, false);
                    }
                    _ => {
                        self.wake_after(item.direction, delay);
                        self.delivery_ended(&item, DeliveryEnd::Retry, false);
                    }
                }
            }
            Err(e) => {
                self.inner.metrics.failure("matrix_refused");
                tracing::error!(queue = %item.queue_key, error = %e, "Matrix refused a message; not retrying");
                let _ = store.give_up(&item, &e.to_string()).await;
                self.delivery_ended(&item, DeliveryEnd::Other, false);
            }
        }
        None
    }

    /// Sends one outbox item to Matrix; `remote` accumulates the time spent waiting for the
    /// homeserver. Returns the `(room, event, stanza id)` mapping of a bridged message.
    async fn send_to_matrix(
        &self,
        item: &ClaimedItem,
        payload: &Value,
        remote: &mut Duration,
    ) -> Result<Option<(String, String, String)>, MatrixError> {
        let (Some(user), Some(contact)) = (payload["user"].as_str(), payload["contact"].as_str())
        else {
            return Err(MatrixError::Invalid {
                what: "an outbox item",
                reason: "missing user or contact".into(),
            });
        };
        let contact_jid = Jid::parse(contact).map_err(|e| MatrixError::Invalid {
            what: "an outbox item",
            reason: e.to_string(),
        })?;
        let ghost = self.ensure_ghost(user, &contact_jid, false).await?;
        let room = self.ensure_portal(user, &contact_jid).await?;
        match payload["kind"].as_str() {
            Some("message") => {
                let body = payload["body"].as_str().unwrap_or_default();
                let ts = payload["ts"].as_i64();
                let parts = mapping::split_text(body, MAX_MATRIX_BODY);
                let mut last_event = None;
                // A retry may follow an attempt the homeserver did accept (its answer was lost,
                // or it restarted and forgot the transaction id): look for our own marker first.
                let already = if item.attempts > 1 {
                    let t = Instant::now();
                    let events = self.inner.matrix.recent_events(&ghost, &room, 100).await?;
                    *remote += t.elapsed();
                    events
                } else {
                    Vec::new()
                };
                for (i, part) in parts.iter().enumerate() {
                    // Derived from the outbox item: a retry after a crash reuses it, and the
                    // homeserver answers with the event it already has.
                    let txn = format!("xmpp-{}-{i}", item.id);
                    if let Some(event) = already
                        .iter()
                        .find(|e| e["content"][TXN_MARKER] == txn.as_str())
                    {
                        last_event = event["event_id"]
                            .as_str()
                            .and_then(|id| ruma::EventId::parse(id).ok());
                        continue;
                    }
                    let mut content = mapping::xmpp_body_to_matrix(part);
                    content[TXN_MARKER] = Value::String(txn.clone());
                    let raw = ruma::serde::Raw::from_json(
                        serde_json::value::to_raw_value(&content).map_err(|e| {
                            MatrixError::Invalid {
                                what: "a message",
                                reason: e.to_string(),
                            }
                        })?,
                    );
                    let t = Instant::now();
                    let event = self
                        .inner
                        .matrix
                        .send_message(&ghost, &room, &txn, raw, "m.room.message", ts)
                        .await?;
                    *remote += t.elapsed();
                    last_event = Some(event);
                }
                let mapping = match (last_event, payload["stanza_id"].as_str()) {
                    (Some(event), Some(stanza)) => {
                        Some((room.to_string(), event.to_string(), stanza.to_owned()))
                    }
                    _ => None,
                };
                // A message ends typing (XEP-0085 §5.3), if the ghost was shown typing.
                let was_typing = self
                    .inner
                    .ghost_typing
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&format!("{room}|{ghost}"));
                if was_typing {
                    let t = Instant::now();
                    let _ = self
                        .inner
                        .matrix
                        .set_typing(&ghost, &room, false, Duration::from_secs(1))
                        .await;
                    *remote += t.elapsed();
                }
                Ok(mapping)
            }
            Some("notice") => {
                let text = payload["text"].as_str().unwrap_or("⚠");
                let raw = ruma::serde::Raw::from_json(
                    serde_json::value::to_raw_value(&mapping::notice(text)).map_err(|e| {
                        MatrixError::Invalid {
                            what: "a notice",
                            reason: e.to_string(),
                        }
                    })?,
                );
                self.inner
                    .matrix
                    .send_message(
                        &ghost,
                        &room,
                        &format!("xmpp-{}", item.id),
                        raw,
                        "m.room.message",
                        None,
                    )
                    .await?;
                Ok(None)
            }
            other => Err(MatrixError::Invalid {
                what: "an outbox item",
                reason: format!("unknown kind {other:?}"),
            }),
        }
    }

    // ---------------------------------------------------------------- Matrix → XMPP

    /// Delivers one item to XMPP; returns the next item of its queue if the ack took one.
    async fn deliver_to_xmpp(&self, item: ClaimedItem) -> Option<ClaimedItem> {
        let event: Value = serde_json::from_slice(&item.payload).unwrap_or(Value::Null);
        let store = &self.inner.store;
        match crate::events::handle_matrix_event(self, &event).await {
            Ok(delivered) => {
                let done = Instant::now();
                let next = self.ack(&item, delivered.as_ref()).await;
                let outcome = if delivered.is_some() {
                    DeliveryEnd::Message {
                        remote: Duration::ZERO,
                        done,
                    }
                } else {
                    DeliveryEnd::Other
                };
                self.delivery_ended(&item, outcome, next.is_some());
                return next;
            }
            Err(HandleError::NotConnected { user, reason }) => {
                // Due again as soon as the session is up, not after its backoff.
                self.inner
                    .waiting_for_session
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(user)
                    .or_default()
                    .insert(item.queue_key.clone());
                self.retry_to_xmpp(&item, &reason).await;
            }
            Err(HandleError::Retry(reason)) => self.retry_to_xmpp(&item, &reason).await,
            Err(HandleError::Fail(reason)) => {
                self.inner.metrics.failure("xmpp_refused");
                let _ = store.give_up(&item, &reason).await;
                self.delivery_ended(&item, DeliveryEnd::Other, false);
                self.notice_in_room(
                    &item.queue_key,
                    &format!("⚠ Your message was not delivered: {reason}"),
                )
                .await;
            }
        }
        None
    }

    /// Schedules another attempt of an item that could not go to XMPP now, or gives it up
    /// with a notice in its room once it has used its attempts.
    async fn retry_to_xmpp(&self, item: &ClaimedItem, reason: &str) {
        let delay = retry_delay(item.attempts);
        tracing::info!(room = %item.queue_key, %reason, retry_in = ?delay, "cannot deliver to XMPP yet; will retry");
        if let Ok(store::RetryOutcome::GaveUp) = self.inner.store.retry(item, reason, delay).await {
            self.inner.metrics.failure("xmpp_gave_up");
            self.delivery_ended(item, DeliveryEnd::Other, false);
            self.notice_in_room(
                &item.queue_key,
                &format!("⚠ Your message was not delivered: {reason}"),
            )
            .await;
        } else {
            self.wake_after(item.direction, delay);
            self.delivery_ended(item, DeliveryEnd::Retry, false);
        }
    }

    /// Remembers when a message to be delivered under `key` (its outbox dedupe key) arrived,
    /// for the latency metrics.
    pub(crate) fn note_received(&self, direction: Direction, key: &str, at: Instant) {
        self.inner.timings.received(direction, key, at);
    }

    /// An item was recorded behind another of its queue. The one in flight takes it with its
    /// ack, or wakes the delivery loop when it ends; a head waiting for a retry is picked up by
    /// the loop when due.
    pub(crate) fn queue_waiting(&self, direction: Direction, queue: &str) {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((direction, queue.to_owned()));
    }

    /// The signal that wakes the delivery loop of `direction`.
    fn wake_signal(&self, direction: Direction) -> &Notify {
        match direction {
            Direction::ToMatrix => &self.inner.wake_to_matrix,
            Direction::ToXmpp => &self.inner.wake_to_xmpp,
        }
    }

    fn wake(&self, direction: Direction) {
        self.wake_signal(direction).notify_one();
    }

    /// Wakes the delivery loop of `direction` once `delay` has passed (a retry falls due).
    fn wake_after(&self, direction: Direction, delay: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            this.wake(direction);
        });
    }

    /// Delivers an item claimed outside the delivery loop (recorded at the head of an idle
    /// queue), in its own task.
    pub(crate) fn dispatch(&self, item: ClaimedItem) {
        let this = self.clone();
        tokio::spawn(async move { this.deliver(item).await });
    }

    /// Posts a notice in a room as the portal's ghost (or the bot elsewhere).
    pub(crate) async fn notice_in_room(&self, room_id: &str, text: &str) {
        let sender = match self.portal_by_room(room_id).await {
            Ok(Some((_, contact))) => Jid::parse(&contact).map_or_else(
                |_| self.inner.bot.clone(),
                |j| self.inner.ghosts.user_id(&j),
            ),
            _ => self.inner.bot.clone(),
        };
        self.post_notice(&sender, room_id, text).await;
    }

    /// Posts an `m.notice` in a room as `sender`; failures are logged, never fatal.
    async fn post_notice(&self, sender: &UserId, room_id: &str, text: &str) {
        let Ok(room) = ruma::RoomId::parse(room_id) else {
            return;
        };
        let Ok(raw) = serde_json::value::to_raw_value(&mapping::notice(text)) else {
            return;
        };
        let txn = format!("notice-{}-{}", now_ms(), rand::random::<u32>());
        let content = ruma::serde::Raw::from_json(raw);
        if let Err(e) = self
            .inner
            .matrix
            .send_message(sender, &room, &txn, content, "m.room.message", None)
            .await
        {
            tracing::warn!(room = room_id, %sender, error = %e, "could not post a notice");
        }
    }

    /// Tells a user something in their management room, if they have one.
    pub(crate) async fn notify_user(&self, matrix_user: &str, text: &str) {
        if let Ok(Some(user)) = self.inner.store.linked_user(matrix_user).await
            && let Some(room) = user.management_room
        {
            self.bot_say(&room, text).await;
        }
    }

    /// The bot says something in a room.
    pub(crate) async fn bot_say(&self, room_id: &str, text: &str) {
        self.post_notice(&self.inner.bot, room_id, text).await;
    }

    /// Forgets delivered outbox items once they are older than [`OUTBOX_RETENTION`], hourly,
    /// so the database does not grow with every message ever bridged.
    async fn prune_outbox_forever(self) {
        loop {
            let before = now_ms()
                .saturating_sub(i64::try_from(OUTBOX_RETENTION.as_millis()).unwrap_or(i64::MAX));
            match self.inner.store.prune_delivered(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "forgot delivered messages older than a week"),
                Err(e) => tracing::warn!(error = %e, "could not prune delivered messages"),
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }

    /// Access tokens are refreshed ahead of expiry (rotating refresh tokens are saved at once),
    /// whether or not a reconnect needs them now.
    async fn refresh_tokens_forever(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            let Ok(users) = self.inner.store.linked_users().await else {
                continue;
            };
            for user in users
                .iter()
                .filter(|u| u.connection_state != "bad_credentials")
            {
                if let Err(e) = self
                    .inner
                    .credentials
                    .refresh_if_expiring(&user.matrix_user)
                    .await
                {
                    tracing::warn!(user = %user.matrix_user, error = %e, "could not refresh the access token");
                }
            }
        }
    }

    // ---------------------------------------------------------------- connection state

    async fn on_state(&self, account: &str, state: ConnectionState) {
        let label = match &state {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected { .. } => "connected",
            ConnectionState::TransientDisconnect { .. } => "transient_disconnect",
            ConnectionState::BadCredentials { .. } => "bad_credentials",
            ConnectionState::Failed { .. } => "failed",
            ConnectionState::LoggedOut => "logged_out",
        };
        self.inner.metrics.session_state(account, label);
        if let Err(e) = self.inner.store.set_connection_state(account, label).await {
            tracing::debug!(error = %e, "could not save the connection state");
        }
        let previous_notified = {
            let mut states = self
                .inner
                .states
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let prev = states
                .get(account)
                .map(|(_, notified)| *notified)
                .unwrap_or(false);
            let keep = matches!(
                state,
                ConnectionState::TransientDisconnect { .. } | ConnectionState::Connecting
            ) && prev;
            states.insert(account.to_owned(), (state.clone(), keep));
            prev
        };
        match state {
            ConnectionState::Connected { jid } => {
                let rooms = self
                    .inner
                    .waiting_for_session
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(account)
                    .unwrap_or_default();
                for room in rooms {
                    if let Err(e) = self.inner.store.due_now(Direction::ToXmpp, &room).await {
                        tracing::warn!(user = %account, error = %e, "could not retry waiting messages at once; they go at their retry time");
                    }
                }
                self.inner.wake_to_xmpp.notify_one();
                if previous_notified {
                    self.notify_user(
                        account,
                        &format!("✅ Connected again as {}.", jid.to_bare()),
                    )
                    .await;
                }
            }
            ConnectionState::BadCredentials { reason } => {
                self.notify_user(account, &format!("❌ The XMPP login was refused: {reason}. Send `login` to link your account again.")).await;
            }
            ConnectionState::Failed { reason } => {
                self.notify_user(account, &format!("❌ Cannot connect to XMPP: {reason}. The bridge administrator needs to fix the configuration.")).await;
            }
            ConnectionState::TransientDisconnect { reason, .. } => {
                // Debounced: only a disconnect that lasts gets a notice.
                let this = self.clone();
                let account = account.to_owned();
                let delay = Duration::from_secs(self.inner.config.bridge.state_notice_delay_secs);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let still_down = {
                        let mut states = this
                            .inner
                            .states
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        match states.get_mut(&account) {
                            Some((
                                ConnectionState::TransientDisconnect { .. }
                                | ConnectionState::Connecting,
                                notified,
                            )) if !*notified => {
                                *notified = true;
                                true
                            }
                            _ => false,
                        }
                    };
                    if still_down {
                        this.notify_user(&account, &format!("⚠ Lost the connection to XMPP ({reason}); reconnecting by itself. Messages you send meanwhile are delivered once it is back.")).await;
                    }
                });
            }
            ConnectionState::Connecting | ConnectionState::LoggedOut => {}
        }
    }
}

impl Inner {
    /// The user sent a message in `room`: their typing there has ended.
    pub(crate) fn typing_clear(&self, room: &str) {
        self.typing_in
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(room);
    }
}

impl Bridge {
    /// Ephemeral data from a transaction: typing in portals becomes XEP-0085 chat states, and
    /// the linked users' presence becomes their XMPP presence.
    pub(crate) async fn on_ephemeral(&self, data: &Value) {
        let inner = &self.inner;
        match data["type"].as_str() {
            Some("m.typing") => {
                let Some(room) = data["room_id"].as_str() else {
                    return;
                };
                let Ok(Some((portal_user, portal_contact))) = self.portal_by_room(room).await
                else {
                    return;
                };
                let typing = data["content"]["user_ids"].as_array().is_some_and(|ids| {
                    ids.iter().any(|u| u.as_str() == Some(portal_user.as_str()))
                });
                let changed = {
                    let mut set = inner
                        .typing_in
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if typing {
                        set.insert(room.to_owned())
                    } else {
                        set.remove(room)
                    }
                };
                if !changed {
                    return;
                }
                let Ok(contact) = Jid::parse(&portal_contact) else {
                    return;
                };
                let state = if typing {
                    ChatState::Composing
                } else {
                    ChatState::Paused
                };
                if let Err(e) = inner
                    .xmpp
                    .send_message(&portal_user, &Message::chat_state(contact, state))
                    .await
                {
                    tracing::debug!(error = %e, "could not send a chat state");
                }
            }
            Some("m.presence") if inner.config.bridge.presence_from_matrix => {
                let Some(user) = data["sender"].as_str() else {
                    return;
                };
                let Some(state) = data["content"]["presence"].as_str() else {
                    return;
                };
                let status = data["content"]["status_msg"].as_str().map(str::to_owned);
                if inner.xmpp.session(user).is_none() {
                    return;
                }
                {
                    let mut last = inner
                        .user_presence
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let now = (state.to_owned(), status.clone());
                    if last.get(user) == Some(&now) {
                        return;
                    }
                    last.insert(user.to_owned(), now);
                }
                let presence = mapping::matrix_presence_to_xmpp(state, status);
                if let Err(e) = inner.xmpp.set_presence(user, presence).await {
                    tracing::debug!(error = %e, "could not send the user's presence");
                }
            }
            _ => {}
        }
    }
}

/// Exponential retry delay: 2 s, 4 s, … up to 5 minutes.
fn retry_delay(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 8)).unwrap_or(8);
    Duration::from_secs(2u64 << exp).min(Duration::from_secs(300))
}

pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn short_hash(s: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(s.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The id string of a user, checked.
pub(crate) fn parse_user(s: &str) -> Result<OwnedUserId, MatrixError> {
    user_id(s)
}
