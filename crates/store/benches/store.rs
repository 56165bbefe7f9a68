//! Store benchmarks (plain std timing): outbox enqueue→claim→ack round trips per second on
//! SQLite and PostgreSQL, and the time to load 10,000 linked users at start.
//!
//! Run with `cargo bench -p store`. PostgreSQL comes from `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), in a throwaway schema.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use sqlx::AssertSqlSafe;
use store::{Direction, Keyring, LinkedUser, ServerProfile, Store, StoreConfig, StoreKey};

const ROUND_TRIPS: u32 = 2_000;
const USERS: u32 = 10_000;

fn keyring() -> Keyring {
    Keyring::new(StoreKey::new("bench", [3; 32]).unwrap())
}

async fn bench(label: &str, url: &str) {
    let store = Store::open(StoreConfig::new(url, keyring())).await.unwrap();

    // Sequential enqueue → claim → ack, one item at a time (the latency-bound worst case).
    let started = Instant::now();
    for n in 0..ROUND_TRIPS {
        let q = format!("portal{}", n % 16);
        store
            .enqueue(Direction::ToXmpp, &q, b"payload", None)
            .await
            .unwrap();
        let items = store
            .claim(Direction::ToXmpp, 1, Duration::from_secs(30))
            .await
            .unwrap();
        store.ack(&items[0]).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label}: outbox enqueue→claim→ack: {ROUND_TRIPS} round trips in {secs:.2} s = {:.0}/s",
        f64::from(ROUND_TRIPS) / secs
    );

    // 10,000 linked users, then time a cold start: open + load them all.
    for n in 0..USERS {
        let user = LinkedUser {
            matrix_user: format!("@user{n:05}:example.org"),
            jid: format!("user{n:05}@xmpp.example.org"),
            server_profile: ServerProfile::Messenger,
            connection_state: "disconnected".into(),
            management_room: Some(format!("!mgmt{n}:example.org")),
            created_at: 0,
            updated_at: 0,
        };
        store.upsert_linked_user(&user).await.unwrap();
    }
    store.close().await;
    let started = Instant::now();
    let store = Store::open(StoreConfig::new(url, keyring())).await.unwrap();
    let opened = started.elapsed();
    let users = store.linked_users().await.unwrap();
    let total = started.elapsed();
    assert_eq!(users.len(), USERS as usize);
    println!(
        "{label}: load {USERS} linked users: {:.1} ms (open+migration check {:.1} ms, query {:.1} ms)",
        total.as_secs_f64() * 1e3,
        opened.as_secs_f64() * 1e3,
        (total - opened).as_secs_f64() * 1e3
    );
    store.close().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too — run either way.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("store-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        bench(
            "sqlite",
            &format!("sqlite://{}", dir.join("bench.db").display()),
        )
        .await;
        std::fs::remove_dir_all(&dir).unwrap();

        let base = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let admin = sqlx::PgPool::connect(&base)
            .await
            .expect("PostgreSQL for the benchmark");
        let schema = format!("store_bench_{}", std::process::id());
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        bench(
            "postgres",
            &format!("{base}{sep}options[search_path]={schema}"),
        )
        .await;
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    });
}
