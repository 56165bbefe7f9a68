//! The store's error type: what went wrong, for whom, and what to do about it.

/// Everything that can go wrong in the store.
///
/// Messages are meant for operators: they name the URL (never with a password), the user or
/// item concerned, and the next step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configured database URL could not be understood.
    #[error(
        "invalid database URL `{url}`: {reason}; use `sqlite://path/to/bridge.db` or \
         `postgres://user@host/dbname`"
    )]
    InvalidUrl {
        /// The URL as configured, password removed.
        url: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The database could not be reached at start, even after retrying.
    #[error(
        "database {url} unreachable after {attempts} attempt(s): {source}; check that the \
         server is running and the URL, user and permissions are right"
    )]
    Unreachable {
        /// The URL, password removed.
        url: String,
        /// How many connection attempts were made.
        attempts: u32,
        /// The last connection error.
        #[source]
        source: sqlx::Error,
    },

    /// The database was written by a newer version of the bridge; it was left untouched.
    #[error(
        "database {url} has migration {unknown_version} applied, which this version of the \
         bridge does not know (newest known: {newest_known}); it was written by a newer bridge \
         — upgrade the bridge or restore a matching backup. The database was not modified"
    )]
    DatabaseTooNew {
        /// The URL, password removed.
        url: String,
        /// The first applied migration version this binary does not know.
        unknown_version: i64,
        /// The newest migration version this binary ships.
        newest_known: i64,
    },

    /// Applying the schema migrations failed.
    #[error("applying database migrations to {url} failed: {source}")]
    Migrate {
        /// The URL, password removed.
        url: String,
        /// The migration error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A database operation failed.
    #[error("database error while trying to {operation}: {source}")]
    Query {
        /// What the store was doing, e.g. "load linked users".
        operation: &'static str,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },

    /// Key material given to the store is malformed.
    #[error(
        "invalid store key: {reason}; a key is `id:BASE64` where BASE64 encodes exactly 32 \
         random bytes (e.g. `k1:$(head -c32 /dev/urandom | base64)`)"
    )]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },

    /// A secret was encrypted with a key id the configured keyring does not contain.
    #[error(
        "the {slot} of {matrix_user} is encrypted with key `{key_id}`, which is not configured; \
         add that key to the keyring, or have the user link again"
    )]
    UnknownKeyId {
        /// The user whose secret could not be read.
        matrix_user: String,
        /// Which secret.
        slot: &'static str,
        /// The key id recorded with the ciphertext.
        key_id: String,
    },

    /// A secret failed authentication: wrong key material or corrupted/tampered data.
    #[error(
        "the {slot} of {matrix_user} could not be decrypted with key `{key_id}` (wrong key or \
         corrupted data); check the key material, or have the user link again"
    )]
    Decrypt {
        /// The user whose secret could not be read.
        matrix_user: String,
        /// Which secret.
        slot: &'static str,
        /// The key id recorded with the ciphertext.
        key_id: String,
    },

    /// The referenced record does not exist.
    #[error("{what} `{id}` not found")]
    NotFound {
        /// The kind of record, e.g. "linked user".
        what: &'static str,
        /// Its id.
        id: String,
    },

    /// The JID is already linked to a different Matrix user.
    #[error("{jid} is already linked to {other_user}; unlink it there first")]
    JidTaken {
        /// The JID.
        jid: String,
        /// The Matrix user it is linked to.
        other_user: String,
    },

    /// An outbox item's lease expired and it was claimed again (or finished) by someone else.
    #[error(
        "outbox item {id}: the lease expired and the item was claimed again; this worker must \
         not ack or retry it (consider a longer lease)"
    )]
    LeaseLost {
        /// The outbox item id.
        id: i64,
    },

    /// A stored value is not what this version of the store expects.
    #[error("invalid stored data in {what}: {detail}")]
    InvalidData {
        /// Which column or record.
        what: &'static str,
        /// What was found.
        detail: String,
    },
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the operation name to driver errors.
pub(crate) trait QueryContext<T> {
    fn ctx(self, operation: &'static str) -> Result<T>;
}

impl<T> QueryContext<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, operation: &'static str) -> Result<T> {
        self.map_err(|source| Error::Query { operation, source })
    }
}
