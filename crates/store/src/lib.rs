//! The bridge's persistent state: linked users, encrypted tokens, ghosts, portals, outbox.
//!
//! One [`Store`] wraps either an embedded SQLite file or a PostgreSQL pool, chosen by the URL
//! scheme; the bridge calls the same async methods on both. Migrations from
//! `migrations/sqlite` and `migrations/postgres` are embedded and applied by [`Store::open`],
//! which refuses (without touching it) a database written by a newer bridge.

mod backend;
mod crypto;
mod database_url;
mod error;
mod ghosts;
mod outbox;
mod portals;
mod txns;
mod users;

use std::time::Duration;

pub use crypto::{Keyring, StoreKey};
pub use database_url::DatabaseUrl;
pub use error::{Error, Result};
pub use ghosts::Ghost;
pub use outbox::{ClaimedItem, Direction, Enqueued, FailedItem, Queued, RetryOutcome};
pub use portals::{MessageMapping, Portal};
pub use txns::TxnStatus;
pub use users::{LinkedUser, OAuthTokens, RotationReport, SecretSlot, ServerProfile};

use backend::Backend;

/// How to open the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `sqlite://path`, `sqlite:path`, `postgres://…` or `postgresql://…`.
    pub url: String,
    /// Keys for encrypting secrets at rest.
    pub keyring: Keyring,
    /// Pool size (PostgreSQL; SQLite uses at most this many, capped at 4).
    pub max_connections: u32,
    /// Connection attempts at start before giving up (at least 1).
    pub connect_attempts: u32,
    /// Delay after the first failed attempt; doubled each time up to `connect_backoff_max`.
    pub connect_backoff: Duration,
    /// Upper bound for the delay between connection attempts.
    pub connect_backoff_max: Duration,
    /// How many delivery attempts an outbox item gets before it is given up as failed.
    pub outbox_max_attempts: u32,
    /// SQLite only: when a commit is synced to disk.
    pub sqlite_sync: SqliteSync,
}

/// When SQLite syncs a commit to disk (`PRAGMA synchronous` in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSync {
    /// Every commit is synced: a recorded message survives a power cut.
    #[default]
    Full,
    /// Synced at WAL checkpoints only: a recorded message survives a crash or kill of the
    /// bridge, but the last commits can be lost if the machine loses power. Cheaper per commit.
    Normal,
}

impl StoreConfig {
    /// Defaults: 8 connections, 10 attempts from 500 ms backoff up to 30 s, 10 outbox attempts.
    pub fn new(url: impl Into<String>, keyring: Keyring) -> Self {
        Self {
            url: url.into(),
            keyring,
            max_connections: 8,
            connect_attempts: 10,
            connect_backoff: Duration::from_millis(500),
            connect_backoff_max: Duration::from_secs(30),
            outbox_max_attempts: 10,
            sqlite_sync: SqliteSync::Full,
        }
    }
}

/// The bridge's store, backed by SQLite or PostgreSQL. Cheap to clone (shares the pool).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    keyring: Keyring,
    url: DatabaseUrl,
    outbox_max_attempts: u32,
}

impl Store {
    /// Connects (retrying with backoff), checks the schema version and applies migrations.
    pub async fn open(config: StoreConfig) -> Result<Self> {
        let url = DatabaseUrl::parse(&config.url)?;
        let backend = backend::connect(&url, &config).await?;
        backend.migrate(&url).await?;
        Ok(Self {
            backend,
            keyring: config.keyring,
            url,
            outbox_max_attempts: config.outbox_max_attempts.max(1),
        })
    }

    /// The database URL, password removed.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes all connections, waiting for in-flight queries.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { pool, writer } => {
                writer.close().await;
                pool.close().await;
            }
            Backend::Postgres(p) => p.close().await,
        }
    }
}

/// Current time as unix milliseconds.
pub(crate) fn now_millis() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
