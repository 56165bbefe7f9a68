//! Test databases for both backends and the macro that runs a scenario on each.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;
use store::{Keyring, Store, StoreConfig, StoreKey};

/// Runs `$body` once per backend: `scenario!(name, |db| async { ... })`.
macro_rules! scenario {
    ($name:ident, |$db:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $db = $crate::support::TestDb::new($crate::support::Kind::Sqlite).await;
                $body
                $db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let $db = $crate::support::TestDb::new($crate::support::Kind::Postgres).await;
                $body
                $db.finish().await;
            }
        }
    };
}
pub(crate) use scenario;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

pub(crate) struct TestDb {
    pub(crate) kind: Kind,
    pub(crate) url: String,
    pub(crate) store: Store,
    dir: Option<PathBuf>,
    admin: Option<(PgPool, String)>,
}

pub(crate) fn key(id: &str, byte: u8) -> StoreKey {
    StoreKey::new(id, [byte; 32]).unwrap()
}

pub(crate) fn keyring() -> Keyring {
    Keyring::new(key("k1", 1))
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn pg_base_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub(crate) fn config(url: &str, keyring: Keyring) -> StoreConfig {
    let mut config = StoreConfig::new(url, keyring);
    config.connect_attempts = 2;
    config.connect_backoff = Duration::from_millis(50);
    config
}

impl TestDb {
    pub(crate) async fn new(kind: Kind) -> Self {
        let (url, dir, admin) = match kind {
            Kind::Sqlite => {
                let dir = std::env::temp_dir().join(unique("store-it"));
                std::fs::create_dir_all(&dir).unwrap();
                (
                    format!("sqlite://{}", dir.join("bridge.db").display()),
                    Some(dir),
                    None,
                )
            }
            Kind::Postgres => {
                let base = pg_base_url();
                let admin = PgPool::connect(&base).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL at {base} is unreachable ({e}); these tests need it — start \
                         it or set TEST_DATABASE_URL"
                    )
                });
                let schema = unique("store_it");
                sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&admin)
                    .await
                    .unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                (
                    format!("{base}{sep}options[search_path]={schema}"),
                    None,
                    Some((admin, schema)),
                )
            }
        };
        let store = Store::open(config(&url, keyring())).await.unwrap();
        Self {
            kind,
            url,
            store,
            dir,
            admin,
        }
    }

    /// Opens a second store on the same database (e.g. a restarted bridge).
    pub(crate) async fn reopen(&self, keyring: Keyring) -> store::Result<Store> {
        Store::open(config(&self.url, keyring)).await
    }

    /// Runs raw SQL outside the store (to tamper with rows like an attacker or a bug would).
    pub(crate) async fn raw_exec(&self, sqlite_sql: &str, pg_sql: &str) {
        match self.kind {
            Kind::Sqlite => {
                let pool = self.raw_sqlite().await;
                sqlx::query(AssertSqlSafe(sqlite_sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            Kind::Postgres => {
                let pool = PgPool::connect(&self.url).await.unwrap();
                sqlx::query(AssertSqlSafe(pg_sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
        }
    }

    /// Every byte the database holds about user secrets: for SQLite the raw files (main and
    /// WAL), for PostgreSQL the raw `sealed` column.
    pub(crate) async fn raw_secret_bytes(&self) -> Vec<u8> {
        match self.kind {
            Kind::Sqlite => {
                let dir = self.dir.as_ref().unwrap();
                let mut all = Vec::new();
                for entry in std::fs::read_dir(dir).unwrap() {
                    all.extend(std::fs::read(entry.unwrap().path()).unwrap());
                }
                assert!(!all.is_empty());
                all
            }
            Kind::Postgres => {
                let pool = PgPool::connect(&self.url).await.unwrap();
                let rows: Vec<(Vec<u8>, String)> =
                    sqlx::query_as("SELECT sealed, key_id FROM user_secrets")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                pool.close().await;
                assert!(!rows.is_empty());
                rows.into_iter()
                    .flat_map(|(s, k)| s.into_iter().chain(k.into_bytes()))
                    .collect()
            }
        }
    }

    async fn raw_sqlite(&self) -> sqlx::SqlitePool {
        let path = self.url.strip_prefix("sqlite://").unwrap();
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        sqlx::SqlitePool::connect_with(opts).await.unwrap()
    }

    pub(crate) async fn finish(self) {
        self.store.close().await;
        if let Some((admin, schema)) = self.admin {
            sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
