//! Opening the store: bad URLs, unreachable databases, databases from a newer bridge.

use std::time::{Duration, Instant};

use store::{Error, Store, StoreConfig};

use crate::support::{keyring, scenario};

#[tokio::test]
async fn unreachable_postgres_is_retried_then_reported_without_password() {
    // Port 1 on localhost: nothing listens there.
    let url = "postgres://bridge:s3cret-pw@127.0.0.1:1/bridge";
    let mut config = StoreConfig::new(url, keyring());
    config.connect_attempts = 3;
    config.connect_backoff = Duration::from_millis(20);
    let started = Instant::now();
    let err = Store::open(config).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Unreachable { attempts: 3, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("postgres://bridge:***@127.0.0.1:1/bridge"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret-pw"), "{msg}");
    // Two backoff sleeps happened (20 ms + 40 ms); a lower bound only, not a timing assertion.
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn sqlite_in_missing_directory_is_a_clear_error() {
    let url = "sqlite:///nonexistent-dir-for-store-tests/x/bridge.db";
    let mut config = StoreConfig::new(url, keyring());
    config.connect_attempts = 1;
    let err = Store::open(config).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent-dir-for-store-tests/x/bridge.db"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_scheme_is_rejected() {
    let err = Store::open(StoreConfig::new("mysql://h/db", keyring()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
}

scenario!(reopening_applies_nothing_new_and_keeps_data, |db| {
    db.store
        .enqueue(store::Direction::ToMatrix, "q", b"x", None)
        .await
        .unwrap();
    let again = db.reopen(keyring()).await.unwrap();
    assert_eq!(
        again
            .outbox_backlog(store::Direction::ToMatrix)
            .await
            .unwrap(),
        1
    );
    again.close().await;
});

scenario!(database_from_a_newer_bridge_is_refused_untouched, |db| {
    db.store
        .enqueue(store::Direction::ToMatrix, "q", b"x", None)
        .await
        .unwrap();
    db.raw_exec(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', 1, x'00', 0)",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, '\\x00'::bytea, 0)",
    )
    .await;
    let err = db.reopen(keyring()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::DatabaseTooNew {
                unknown_version: 99990101000000,
                newest_known: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not modified"), "{err}");
    assert!(!err.to_string().contains("s3cret"));
    // Untouched: the running store still reads the data.
    assert_eq!(
        db.store
            .outbox_backlog(store::Direction::ToMatrix)
            .await
            .unwrap(),
        1
    );
});
