//! Backend plumbing: the pool enum, connecting with retries, the migration guard, row access.

use std::str::FromStr as _;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection as _, Row as _};

use crate::StoreConfig;
use crate::database_url::DatabaseUrl;
use crate::error::{Error, QueryContext as _, Result};

/// The schema migrations, embedded at build time. Every file in `migrations/<backend>/` must be
/// listed here (a unit test checks); the version is the file's numeric prefix.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "outbox claim by queue",
        include_str!("../../../migrations/sqlite/0002_outbox_claim_by_queue.sql"),
    ),
    (
        3,
        "outbox with fewer indexes",
        include_str!("../../../migrations/sqlite/0003_outbox_fewer_indexes.sql"),
    ),
    (
        4,
        "archive cursor",
        include_str!("../../../migrations/sqlite/0004_archive_cursor.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "outbox claim by queue",
        include_str!("../../../migrations/postgres/0002_outbox_claim_by_queue.sql"),
    ),
    (
        3,
        "outbox with fewer indexes",
        include_str!("../../../migrations/postgres/0003_outbox_fewer_indexes.sql"),
    ),
    (
        4,
        "archive cursor",
        include_str!("../../../migrations/postgres/0004_archive_cursor.sql"),
    ),
];

fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

static SQLITE_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(SQLITE_MIGRATIONS));
static POSTGRES_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(POSTGRES_MIGRATIONS));

/// The pool underneath a [`crate::Store`].
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// SQLite: a pool for most queries, and one connection for the outbox's writes.
    Sqlite {
        pool: SqlitePool,
        writer: Arc<SqliteWriter>,
    },
    Postgres(PgPool),
}

/// SQLite: the one connection the outbox's hot path (record, claim, ack) writes through.
///
/// SQLite runs one write transaction at a time in any case. Queueing writers on this lock,
/// rather than in SQLite's busy handler (which sleeps and polls), keeps them in arrival order,
/// and a held connection is not pinged by the pool before and after every use — two extra
/// round trips to the connection's worker thread per operation, which were a measurable share
/// of the bridge's CPU per message (BENCHMARKS.md).
#[derive(Debug)]
pub(crate) struct SqliteWriter {
    opts: SqliteConnectOptions,
    /// `None` once the store is closed.
    pub(crate) slot: tokio::sync::Mutex<Option<SqliteConnection>>,
    /// Set while a [`SqliteWriter::transaction_in_one_trip`] runs: if it is still set when the
    /// next writer takes the connection, that transaction did not finish (its caller was
    /// cancelled, or a statement failed) and may still be open on the connection.
    unsettled: AtomicBool,
}

impl SqliteWriter {
    async fn open(opts: SqliteConnectOptions) -> std::result::Result<Self, sqlx::Error> {
        let conn = SqliteConnection::connect_with(&opts).await?;
        Ok(Self {
            opts,
            slot: tokio::sync::Mutex::new(Some(conn)),
            unsettled: AtomicBool::new(false),
        })
    }

    /// Rolls back what an unfinished [`SqliteWriter::transaction_in_one_trip`] left open, so
    /// the next writer does not run inside it. Called with the connection held.
    pub(crate) async fn settle(&self, conn: &mut SqliteConnection) {
        if self.unsettled.swap(false, Ordering::AcqRel) {
            // "no transaction is active" when it had ended after all: nothing to undo.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        }
    }

    /// Runs a whole write transaction — `BEGIN IMMEDIATE; …; COMMIT` in one text, with `$N`
    /// parameters numbered across its statements — as one command to the connection's worker
    /// thread, and returns the rows of all its statements in order. A transaction through
    /// [`sqlx::Transaction`] costs a round trip to that thread (two thread wake-ups) per
    /// statement plus one each for BEGIN and COMMIT, which was the largest share of the
    /// bridge's CPU per message (BENCHMARKS.md). If a statement fails, the transaction is rolled
    /// back before the error is returned.
    pub(crate) async fn transaction_in_one_trip(
        &self,
        query: sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
        operation: &'static str,
    ) -> Result<Vec<SqliteRow>> {
        let mut slot = self.slot.lock().await;
        let result = async {
            let Some(conn) = slot.as_mut() else {
                return Err(Error::Query {
                    operation,
                    source: sqlx::Error::PoolClosed,
                });
            };
            self.settle(conn).await;
            self.unsettled.store(true, Ordering::Release);
            // `fetch_all`, never `fetch_optional`: asked for one row, the worker stops at the
            // first row and the statements after it (the COMMIT) would not run.
            let rows = query.fetch_all(&mut *conn).await.ctx(operation);
            if rows.is_err() {
                self.settle(conn).await;
            } else {
                self.unsettled.store(false, Ordering::Release);
            }
            rows
        }
        .await;
        self.reopen_if_lost(&mut slot, &result).await;
        result
    }

    /// After a failed operation: if the connection itself is gone (its worker thread died or
    /// the file could not be read), opens a new one for the next caller.
    pub(crate) async fn reopen_if_lost<T>(
        &self,
        slot: &mut Option<SqliteConnection>,
        result: &Result<T>,
    ) {
        let Err(Error::Query { source, .. }) = result else {
            return;
        };
        if !matches!(source, sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed) || slot.is_none() {
            return;
        }
        match SqliteConnection::connect_with(&self.opts).await {
            Ok(conn) => *slot = Some(conn),
            Err(e) => tracing::warn!(error = %e, "cannot reopen the database; will try again"),
        }
    }

    /// Closes the connection; later writes fail as on a closed pool.
    pub(crate) async fn close(&self) {
        if let Some(conn) = self.slot.lock().await.take()
            && let Err(e) = conn.close().await
        {
            tracing::warn!(error = %e, "closing the database connection failed");
        }
    }
}

/// Runs the same code against whichever pool the store has. Inside `$body`, `$pool` is a
/// `&SqlitePool` or a `&PgPool`; the code is compiled once per backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::backend::Backend::Sqlite { pool: $pool, .. } => $body,
            $crate::backend::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Runs `$body` (which evaluates to a `Result`) on a connection for writing: SQLite's writer
/// connection, held for the whole body, or a PostgreSQL connection from the pool. Inside
/// `$body`, `$conn` is a `&mut SqliteConnection` or a `&mut PgConnection`; the code is compiled
/// once per backend.
macro_rules! on_writer {
    ($store:expr, $conn:ident => $body:expr) => {
        match &$store.backend {
            $crate::backend::Backend::Sqlite { writer, .. } => {
                let mut slot = writer.slot.lock().await;
                let result = async {
                    let Some($conn) = slot.as_mut() else {
                        return Err($crate::error::Error::Query {
                            operation: "write to the database",
                            source: sqlx::Error::PoolClosed,
                        });
                    };
                    writer.settle($conn).await;
                    $body
                }
                .await;
                writer.reopen_if_lost(&mut slot, &result).await;
                result
            }
            $crate::backend::Backend::Postgres(pool) => {
                let mut pooled = $crate::error::QueryContext::ctx(
                    pool.acquire().await,
                    "get a database connection",
                )?;
                let $conn: &mut sqlx::PgConnection = &mut pooled;
                $body
            }
        }
    };
}
pub(crate) use on_writer;

/// What differs per backend beyond portable SQL, on a pool.
pub(crate) trait PoolExt {
    type Db: sqlx::Database;
    /// Starts a write transaction. SQLite: `BEGIN IMMEDIATE` so the write lock is taken up
    /// front (a deferred transaction that reads then writes can fail with SQLITE_BUSY).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>>;
}

impl PoolExt for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("begin a write transaction")
    }
}

impl PoolExt for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.begin().await.ctx("begin a write transaction")
    }
}

/// Typed column access shared by both row types.
pub(crate) trait RowExt {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
}

macro_rules! impl_row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn text(&self, col: &str) -> Result<String> {
                self.try_get(col).ctx("read a text column")
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>> {
                self.try_get(col).ctx("read a text column")
            }
            fn int(&self, col: &str) -> Result<i64> {
                self.try_get(col).ctx("read an integer column")
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                self.try_get(col).ctx("read an integer column")
            }
            fn bytes(&self, col: &str) -> Result<Vec<u8>> {
                self.try_get(col).ctx("read a bytes column")
            }
        }
    };
}
impl_row_ext!(SqliteRow);
impl_row_ext!(PgRow);

/// Connects to the database, retrying with exponential backoff.
pub(crate) async fn connect(url: &DatabaseUrl, config: &StoreConfig) -> Result<Backend> {
    let redacted = url.redacted();
    match url {
        DatabaseUrl::Sqlite { path } => {
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a committed outbox entry survives power loss, not just a crash.
                // NORMAL (in WAL mode): it survives a crash of the bridge, not of the machine.
                .synchronous(match config.sqlite_sync {
                    crate::SqliteSync::Full => SqliteSynchronous::Full,
                    crate::SqliteSync::Normal => SqliteSynchronous::Normal,
                })
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            retry(config, &redacted, || async {
                SqliteConnection::connect_with(&opts).await?.close().await
            })
            .await?;
            let pool = SqlitePoolOptions::new()
                .max_connections(config.max_connections.clamp(1, 4))
                .connect_with(opts.clone())
                .await
                .map_err(|source| unreachable(&redacted, 1, source))?;
            let writer = SqliteWriter::open(opts)
                .await
                .map_err(|source| unreachable(&redacted, 1, source))?;
            Ok(Backend::Sqlite {
                pool,
                writer: Arc::new(writer),
            })
        }
        DatabaseUrl::Postgres { url: raw } => {
            let opts = PgConnectOptions::from_str(raw).map_err(|e| Error::InvalidUrl {
                url: redacted.clone(),
                reason: e.to_string(),
            })?;
            retry(config, &redacted, || async {
                sqlx::PgConnection::connect_with(&opts).await?.close().await
            })
            .await?;
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await
                .map_err(|source| unreachable(&redacted, 1, source))?;
            Ok(Backend::Postgres(pool))
        }
    }
}

fn unreachable(url: &str, attempts: u32, source: sqlx::Error) -> Error {
    Error::Unreachable {
        url: url.to_owned(),
        attempts,
        source,
    }
}

async fn retry<F, Fut>(config: &StoreConfig, url: &str, mut attempt: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<(), sqlx::Error>>,
{
    let attempts = config.connect_attempts.max(1);
    let mut delay = config.connect_backoff;
    for n in 1..=attempts {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(source) if n == attempts => return Err(unreachable(url, n, source)),
            Err(e) => {
                tracing::warn!(
                    database = url, attempt = n, of = attempts, retry_in = ?delay,
                    "database unreachable: {e}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(config.connect_backoff_max);
            }
        }
    }
    Ok(())
}

const SQLITE_HAS_MIGRATIONS_TABLE: &str =
    "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
const POSTGRES_HAS_MIGRATIONS_TABLE: &str =
    "SELECT COUNT(*) AS n FROM (SELECT to_regclass('_sqlx_migrations') AS t) r WHERE t IS NOT NULL";
const APPLIED_VERSIONS: &str = "SELECT version FROM _sqlx_migrations ORDER BY version";

impl Backend {
    /// Refuses a database from a newer bridge, then applies pending migrations.
    pub(crate) async fn migrate(&self, url: &DatabaseUrl) -> Result<()> {
        let (migrator, applied) = match self {
            Self::Sqlite { pool, .. } => (
                &*SQLITE_MIGRATOR,
                applied_versions(pool, SQLITE_HAS_MIGRATIONS_TABLE).await?,
            ),
            Self::Postgres(pool) => (
                &*POSTGRES_MIGRATOR,
                applied_versions(pool, POSTGRES_HAS_MIGRATIONS_TABLE).await?,
            ),
        };
        if let Some(&unknown) = applied.iter().find(|v| !migrator.version_exists(**v)) {
            let newest_known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
            return Err(Error::DatabaseTooNew {
                url: url.redacted(),
                unknown_version: unknown,
                newest_known,
            });
        }
        let result = match self {
            Self::Sqlite { pool, .. } => migrator.run(pool).await,
            Self::Postgres(pool) => migrator.run(pool).await,
        };
        result.map_err(|source| Error::Migrate {
            url: url.redacted(),
            source,
        })
    }
}

async fn applied_versions<P>(pool: &P, has_table_sql: &'static str) -> Result<Vec<i64>>
where
    P: AppliedVersions,
{
    pool.applied_versions(has_table_sql).await
}

trait AppliedVersions {
    async fn applied_versions(&self, has_table_sql: &'static str) -> Result<Vec<i64>>;
}

macro_rules! impl_applied_versions {
    ($pool:ty) => {
        impl AppliedVersions for $pool {
            async fn applied_versions(&self, has_table_sql: &'static str) -> Result<Vec<i64>> {
                const OP: &str = "read the applied schema migrations";
                let n: i64 = sqlx::query(has_table_sql)
                    .fetch_one(self)
                    .await
                    .ctx(OP)?
                    .int("n")?;
                if n == 0 {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query(APPLIED_VERSIONS)
                    .fetch_all(self)
                    .await
                    .ctx(OP)?;
                rows.iter().map(|r| r.int("version")).collect()
            }
        }
    };
}
impl_applied_versions!(SqlitePool);
impl_applied_versions!(PgPool);

#[cfg(test)]
mod tests {
    use super::*;

    /// A database of the first schema version with items waiting in the outbox is upgraded in
    /// place, and the waiting items are then claimed in order.
    #[tokio::test]
    async fn a_version_1_database_with_a_backlog_is_upgraded() {
        let dir = std::env::temp_dir().join(format!("store-upgrade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("v1.db").display());
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(opts).await.unwrap();
        migrator(&SQLITE_MIGRATIONS[..1]).run(&pool).await.unwrap();
        for (q, p) in [("a", "a1"), ("b", "b1"), ("a", "a2")] {
            sqlx::query(crate::outbox::INSERT_ITEM)
                .bind("to_matrix")
                .bind(q)
                .bind(None::<&str>)
                .bind(p.as_bytes())
                .bind(0_i64)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;

        let config = StoreConfig::new(
            url,
            crate::Keyring::new(crate::StoreKey::new("k", [1; 32]).unwrap()),
        );
        let store = crate::Store::open(config).await.unwrap();
        let mut seen = Vec::new();
        loop {
            let items = store
                .claim(crate::Direction::ToMatrix, 10, Duration::from_secs(60))
                .await
                .unwrap();
            if items.is_empty() {
                break;
            }
            for item in items {
                seen.push(String::from_utf8(item.payload.clone()).unwrap());
                store.ack(&item).await.unwrap();
            }
        }
        assert_eq!(seen, ["a1", "b1", "a2"]);
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_migration_file_is_embedded() {
        for (dir, embedded) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let path = format!("{}/../../migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
            let mut on_disk: Vec<i64> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".sql"))
                .map(|n| n.split('_').next().unwrap().parse().unwrap())
                .collect();
            on_disk.sort_unstable();
            let listed: Vec<i64> = embedded.iter().map(|m| m.0).collect();
            assert_eq!(
                on_disk, listed,
                "migrations/{dir} and the embedded list differ"
            );
        }
    }
}
