//! Encrypted secrets: unreadable at rest, bound to their row, per-user failures, rotation.

use store::{Error, Keyring, OAuthTokens};

use crate::records::user;
use crate::support::{Kind, key, keyring, scenario};

const ACCESS: &str = "ya29.ACCESS-PLAINTEXT-do-not-leak";
const REFRESH: &str = "1//REFRESH-PLAINTEXT-do-not-leak";
const PASSWORD: &str = "hunter2-PASSWORD-do-not-leak";

fn tokens() -> OAuthTokens {
    OAuthTokens {
        access_token: ACCESS.into(),
        refresh_token: Some(REFRESH.into()),
        expires_at: Some(1_700_000_000_000),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

scenario!(tokens_round_trip_and_are_unreadable_in_the_database, |db| {
    let s = &db.store;
    s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
    s.upsert_linked_user(&user("@b:x", "b@xmpp")).await.unwrap();
    s.set_oauth_tokens("@a:x", &tokens()).await.unwrap();
    s.set_password("@b:x", PASSWORD).await.unwrap();
    assert_eq!(s.oauth_tokens("@a:x").await.unwrap().unwrap(), tokens());
    assert_eq!(s.password("@b:x").await.unwrap().as_deref(), Some(PASSWORD));
    assert!(s.oauth_tokens("@b:x").await.unwrap().is_none());
    assert!(!format!("{:?}", tokens()).contains(ACCESS));

    let raw = db.raw_secret_bytes().await;
    if db.kind == Kind::Sqlite {
        // Sanity: the raw file bytes do hold readable data (the JID).
        assert!(contains(&raw, "a@xmpp"));
    }
    for secret in [ACCESS, REFRESH, PASSWORD] {
        assert!(!contains(&raw, secret), "{secret} readable in the database");
    }

    // Tokens without a refresh token replace the old refresh token.
    let only_access = OAuthTokens {
        refresh_token: None,
        ..tokens()
    };
    s.set_oauth_tokens("@a:x", &only_access).await.unwrap();
    assert_eq!(s.oauth_tokens("@a:x").await.unwrap().unwrap(), only_access);
});

scenario!(corrupted_ciphertext_fails_for_that_user_only, |db| {
    let s = &db.store;
    for (u, j) in [("@a:x", "a@xmpp"), ("@b:x", "b@xmpp")] {
        s.upsert_linked_user(&user(u, j)).await.unwrap();
        s.set_oauth_tokens(u, &tokens()).await.unwrap();
    }
    // Change the last byte of @a:x's access token ciphertext (to a value it surely did not have).
    db.raw_exec(
        "UPDATE user_secrets SET sealed = substr(sealed, 1, length(sealed) - 1) || \
         CASE WHEN substr(sealed, -1) = x'00' THEN x'01' ELSE x'00' END \
         WHERE matrix_user = '@a:x' AND slot = 'oauth_access'",
        "UPDATE user_secrets SET sealed = set_byte(sealed, length(sealed) - 1, \
         get_byte(sealed, length(sealed) - 1) # 1) \
         WHERE matrix_user = '@a:x' AND slot = 'oauth_access'",
    )
    .await;
    let err = s.oauth_tokens("@a:x").await.unwrap_err();
    assert!(
        matches!(err, Error::Decrypt { ref matrix_user, .. } if matrix_user == "@a:x"),
        "{err}"
    );
    assert!(err.to_string().contains("@a:x"), "{err}");
    assert_eq!(s.oauth_tokens("@b:x").await.unwrap().unwrap(), tokens());
});

scenario!(ciphertext_swapped_between_users_does_not_decrypt, |db| {
    let s = &db.store;
    for (u, j) in [("@a:x", "a@xmpp"), ("@b:x", "b@xmpp")] {
        s.upsert_linked_user(&user(u, j)).await.unwrap();
    }
    s.set_password("@a:x", "pw-a").await.unwrap();
    s.set_password("@b:x", "pw-b").await.unwrap();
    let copy = "UPDATE user_secrets SET sealed = (SELECT sealed FROM user_secrets \
                WHERE matrix_user = '@a:x' AND slot = 'password') \
                WHERE matrix_user = '@b:x' AND slot = 'password'";
    db.raw_exec(copy, copy).await;
    assert!(matches!(
        s.password("@b:x").await.unwrap_err(),
        Error::Decrypt { .. }
    ));
    assert_eq!(s.password("@a:x").await.unwrap().as_deref(), Some("pw-a"));
});

scenario!(wrong_key_or_unknown_key_id_is_a_clear_error, |db| {
    let s = &db.store;
    s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
    s.set_oauth_tokens("@a:x", &tokens()).await.unwrap();

    let wrong_bytes = db.reopen(Keyring::new(key("k1", 99))).await.unwrap();
    let err = wrong_bytes.oauth_tokens("@a:x").await.unwrap_err();
    assert!(matches!(err, Error::Decrypt { .. }), "{err}");
    wrong_bytes.close().await;

    let other_id = db.reopen(Keyring::new(key("k2", 1))).await.unwrap();
    let err = other_id.oauth_tokens("@a:x").await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownKeyId { ref key_id, .. } if key_id == "k1"),
        "{err}"
    );
    other_id.close().await;
});

scenario!(
    rotation_reencrypts_with_the_current_key_and_skips_broken_rows,
    |db| {
        let s = &db.store;
        for (u, j) in [("@a:x", "a@xmpp"), ("@b:x", "b@xmpp"), ("@c:x", "c@xmpp")] {
            s.upsert_linked_user(&user(u, j)).await.unwrap();
            s.set_oauth_tokens(u, &tokens()).await.unwrap();
        }
        s.set_password("@a:x", PASSWORD).await.unwrap();
        db.raw_exec(
        "UPDATE user_secrets SET sealed = x'0011' WHERE matrix_user = '@c:x' AND slot = 'oauth_access'",
        "UPDATE user_secrets SET sealed = '\\x0011'::bytea WHERE matrix_user = '@c:x' AND slot = 'oauth_access'",
    )
    .await;

        let rotating = db
            .reopen(
                Keyring::new(key("k2", 2))
                    .with_previous(key("k1", 1))
                    .unwrap(),
            )
            .await
            .unwrap();
        let report = rotating.rotate_secrets().await.unwrap();
        // a: access, refresh, password; b: access, refresh; c: refresh (access is broken).
        assert_eq!(report.reencrypted, 6);
        assert_eq!(report.failed.len(), 1);
        assert!(
            matches!(&report.failed[0], Error::Decrypt { matrix_user, .. } if matrix_user == "@c:x")
        );
        assert_eq!(rotating.rotate_secrets().await.unwrap().reencrypted, 0);
        rotating.close().await;

        // The old key can now be dropped.
        let new_only = db.reopen(Keyring::new(key("k2", 2))).await.unwrap();
        assert_eq!(
            new_only.oauth_tokens("@a:x").await.unwrap().unwrap(),
            tokens()
        );
        assert_eq!(
            new_only.password("@a:x").await.unwrap().as_deref(),
            Some(PASSWORD)
        );
        assert_eq!(
            new_only.oauth_tokens("@b:x").await.unwrap().unwrap(),
            tokens()
        );
        new_only.close().await;
        let _ = keyring();
    }
);
