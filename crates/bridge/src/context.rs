//! The bridge's shared context: configuration, store, Matrix client, XMPP session manager, ghost
//! names and the in-memory state of this run. No logic lives here: every concern (delivery,
//! portals, ghosts, sessions, both directions of messages) adds its methods to [`Bridge`] in its
//! own module.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ruma::presence::PresenceState;
use ruma::{OwnedUserId, UserId};
use store::{Direction, Store};
use tokio::sync::{Notify, Semaphore};
use xmpp_core::manager::{ConnectionState, SessionManager};

use crate::config::BridgeConfig;
use crate::credentials::StoreCredentials;
use crate::ghost::GhostNames;
use crate::matrix::{MatrixClient, MatrixError, client::user_id};

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
    pub(crate) presence_sent: Mutex<HashMap<String, (PresenceState, Option<String>)>>,
    /// Ghosts registered during this run.
    pub(crate) registered: Mutex<HashSet<String>>,
    /// Roster names per (user, contact).
    pub(crate) roster_names: Mutex<HashMap<(String, String), String>>,
    /// Portals whose last Matrix event queued behind others: their backlog is checked against
    /// `bridge.max_queued_per_portal` before recording more.
    pub(crate) backlogged: Mutex<HashSet<String>>,
    /// The homeserver as the double-puppet appservice (`appservice.double_puppet_token`).
    pub(crate) double_puppet: Option<MatrixClient>,
    /// Per account, the archive id of the last message recorded (see `note_archive_id`).
    pub(crate) archive_cursors: Mutex<HashMap<String, Cursor>>,
    /// Per account, the bare JID its last `Connected` event named.
    pub(crate) own_jids: Mutex<HashMap<String, xmpp_core::Jid>>,
    /// Accounts whose catch-up in the current session read the archive to the end.
    pub(crate) archive_caught_up: Mutex<HashSet<String>>,
    /// Accounts whose server keeps an archive (XEP-0313), as discovery found after the login.
    pub(crate) archive_accounts: Mutex<HashSet<String>>,
    /// `account|contact` pairs whose new portal's history was read from the archive in this
    /// process (once is enough; a second time would only be dropped as duplicates).
    pub(crate) backfilled: Mutex<HashSet<String>>,
    /// What contacts' clients support (XEP-0115).
    pub(crate) client_caps: Mutex<crate::client_caps::ClientCaps>,
    /// The XEP-0363 upload service of each account's server, from discovery at its login.
    pub(crate) upload_services: Mutex<HashMap<String, xmpp_core::stanza::UploadService>>,
    /// `room|ghost` of the user's own ghosts known to be in a portal.
    pub(crate) own_ghost_joined: Mutex<HashSet<String>>,
    /// The task handling XMPP events; it ends after the session manager's shutdown.
    pub(crate) xmpp_events: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Per-key async locks (ghost set-up, portal creation).
    pub(crate) locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Portal rooms where the linked user is typing (for chat states).
    pub(crate) typing_in: Mutex<HashSet<String>>,
    /// `room|ghost` pairs where a ghost is shown typing, so a message turns it off only then.
    pub(crate) ghost_typing: Mutex<HashSet<String>>,
    /// Contacts whose ghost is set up (registered, named) in this run: the hot path skips the
    /// store for them.
    pub(crate) ghosts_ready: Mutex<HashSet<String>>,
    /// Portal rooms both ways, as stored.
    pub(crate) portals: Mutex<crate::portal_cache::PortalCache>,
    /// Rooms the homeserver sent events of, with when it last did: read after an outage.
    pub(crate) matrix_activity: Mutex<HashMap<String, std::time::Instant>>,
    /// Events refused over their portal's cap in this run (a catch-up leaves them out).
    pub(crate) refused_events: Mutex<HashSet<String>>,
    /// `room|stanza id` of the contacts' messages delivered in this run that asked for read
    /// markers (XEP-0333), until the user has read them.
    pub(crate) markable: Mutex<HashSet<String>>,
    /// The linked users' last Matrix presence sent to XMPP.
    pub(crate) user_presence: Mutex<HashMap<String, (String, Option<String>)>>,
    /// Connection state per user and whether its disconnect was announced.
    pub(crate) states: Mutex<HashMap<String, (ConnectionState, bool)>>,
    pub(crate) metrics: crate::metrics::Metrics,
    /// Receive times of messages in flight, for the latency metrics.
    pub(crate) timings: crate::latency::Timings,
    /// Queues with an item waiting behind one in flight: when that one ends, the delivery loop
    /// is woken to claim the next.
    pub(crate) waiting: Mutex<HashSet<(Direction, String)>>,
    /// Per linked user, the rooms whose next message to XMPP waits for their session.
    pub(crate) waiting_for_session: Mutex<HashMap<String, HashSet<String>>>,
    pub(crate) profile_sync: Semaphore,
    /// Contacts' files being fetched into the homeserver, at most four at a time.
    pub(crate) media_fetches: Semaphore,
    /// Rooms told that the bridge cannot read encryption (once per run).
    pub(crate) encryption_told: Mutex<HashSet<String>>,
    /// Users the bot opened an unencrypted room for in this run.
    pub(crate) plain_rooms_opened: Mutex<HashSet<String>>,
    /// Logins in progress.
    pub(crate) logins: crate::linking::pending::Logins,
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

/// Where an account's archive catch-up resumes, as last recorded.
#[derive(Debug)]
pub(crate) struct Cursor {
    /// The account the archive belongs to: a save never lands on another account's row.
    pub(crate) jid: String,
    pub(crate) id: String,
    pub(crate) saved_at: Option<std::time::Instant>,
    pub(crate) dirty: bool,
    pub(crate) flush_scheduled: bool,
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
        let double_puppet = config
            .appservice
            .double_puppet_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| matrix.with_token(t, "messenger-bridge-doublepuppet"));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                matrix,
                double_puppet,
                xmpp,
                credentials,
                ghosts,
                bot,
                wake_to_xmpp: Notify::new(),
                wake_to_matrix: Notify::new(),
                presence_sent: Mutex::default(),
                registered: Mutex::default(),
                roster_names: Mutex::default(),
                xmpp_events: Mutex::default(),
                backlogged: Mutex::default(),
                archive_cursors: Mutex::default(),
                own_ghost_joined: Mutex::default(),
                own_jids: Mutex::default(),
                archive_caught_up: Mutex::default(),
                archive_accounts: Mutex::default(),
                backfilled: Mutex::default(),
                client_caps: Mutex::default(),
                upload_services: Mutex::default(),
                locks: Mutex::default(),
                typing_in: Mutex::default(),
                ghost_typing: Mutex::default(),
                ghosts_ready: Mutex::default(),
                portals: Mutex::default(),
                matrix_activity: Mutex::default(),
                refused_events: Mutex::default(),
                markable: Mutex::default(),
                user_presence: Mutex::default(),
                states: Mutex::default(),
                metrics: crate::metrics::Metrics::default(),
                timings: crate::latency::Timings::default(),
                waiting: Mutex::default(),
                waiting_for_session: Mutex::default(),
                profile_sync: Semaphore::new(4),
                media_fetches: Semaphore::new(4),
                encryption_told: Mutex::default(),
                plain_rooms_opened: Mutex::default(),
                logins: crate::linking::pending::Logins::new(link_lifetime),
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

    /// A lock per key (ghost set-up, portal creation), so one task at a time does it.
    pub(crate) fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(key.to_owned()).or_default().clone()
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
