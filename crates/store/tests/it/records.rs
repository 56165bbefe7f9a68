//! Linked users, ghosts, portals, the message map and transaction marks.

use store::{Direction, Error, Ghost, LinkedUser, ServerProfile, TxnStatus};

use crate::support::{keyring, scenario};

pub(crate) fn user(mxid: &str, jid: &str) -> LinkedUser {
    LinkedUser {
        matrix_user: mxid.to_owned(),
        jid: jid.to_owned(),
        server_profile: ServerProfile::Messenger,
        connection_state: "connected".to_owned(),
        management_room: Some("!mgmt:x".to_owned()),
        created_at: 0,
        updated_at: 0,
    }
}

scenario!(linked_user_round_trips_and_survives_restart, |db| {
    let s = &db.store;
    s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
    let mut b = user("@b:x", "b@xmpp");
    b.server_profile = ServerProfile::Standard;
    b.management_room = None;
    s.upsert_linked_user(&b).await.unwrap();
    s.set_connection_state("@b:x", "login_failed")
        .await
        .unwrap();

    let again = db.reopen(keyring()).await.unwrap();
    let all = again.linked_users().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].matrix_user, "@a:x");
    assert_eq!(all[0].management_room.as_deref(), Some("!mgmt:x"));
    assert_eq!(all[1].server_profile, ServerProfile::Standard);
    assert_eq!(all[1].connection_state, "login_failed");
    assert_eq!(
        again
            .linked_user_by_jid("a@xmpp")
            .await
            .unwrap()
            .unwrap()
            .matrix_user,
        "@a:x"
    );
    assert!(again.linked_user("@nobody:x").await.unwrap().is_none());
    again.close().await;
});

scenario!(jid_linked_to_another_user_is_refused, |db| {
    let s = &db.store;
    s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
    let err = s
        .upsert_linked_user(&user("@b:x", "a@xmpp"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::JidTaken { ref other_user, .. } if other_user == "@a:x"),
        "{err}"
    );
    // Re-saving the same user with the same JID is fine.
    s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
});

scenario!(state_update_for_unknown_user_is_not_found, |db| {
    let err = db
        .store
        .set_connection_state("@ghost:x", "connected")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = db.store.set_password("@ghost:x", "pw").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
});

scenario!(unlinking_removes_portals_messages_and_secrets, |db| {
    let s = &db.store;
    s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
    s.set_password("@a:x", "pw").await.unwrap();
    s.upsert_portal("@a:x", "c@xmpp", "!room:x").await.unwrap();
    s.map_message("!room:x", "$ev", "st1").await.unwrap();
    assert!(s.unlink_user("@a:x").await.unwrap());
    assert!(s.portal_by_room("!room:x").await.unwrap().is_none());
    assert!(
        s.message_by_event("!room:x", "$ev")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.password("@a:x").await.unwrap().is_none());
    assert!(!s.unlink_user("@a:x").await.unwrap());
});

scenario!(ghost_upsert_and_lookup_both_ways, |db| {
    let s = &db.store;
    let mut g = Ghost {
        jid: "c@xmpp".into(),
        matrix_user: "@_xmpp_c:x".into(),
        display_name: Some("Carol".into()),
        avatar_hash: None,
        avatar_mxc: None,
        updated_at: 0,
    };
    s.upsert_ghost(&g).await.unwrap();
    g.avatar_hash = Some("abc".into());
    g.avatar_mxc = Some("mxc://x/abc".into());
    s.upsert_ghost(&g).await.unwrap();
    let got = s.ghost("c@xmpp").await.unwrap().unwrap();
    assert_eq!(got.avatar_mxc.as_deref(), Some("mxc://x/abc"));
    assert_eq!(got.display_name.as_deref(), Some("Carol"));
    assert_eq!(
        s.ghost_by_matrix_user("@_xmpp_c:x")
            .await
            .unwrap()
            .unwrap()
            .jid,
        "c@xmpp"
    );
    assert!(s.ghost("nobody@xmpp").await.unwrap().is_none());
});

scenario!(portal_and_message_map_lookups_both_directions, |db| {
    let s = &db.store;
    s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
    let p = s.upsert_portal("@a:x", "c@xmpp", "!r1:x").await.unwrap();
    assert_eq!(p.room_id, "!r1:x");
    s.upsert_portal("@a:x", "d@xmpp", "!r2:x").await.unwrap();
    assert_eq!(
        s.portal("@a:x", "c@xmpp").await.unwrap().unwrap().room_id,
        "!r1:x"
    );
    assert_eq!(
        s.portal_by_room("!r2:x")
            .await
            .unwrap()
            .unwrap()
            .contact_jid,
        "d@xmpp"
    );
    assert_eq!(s.portals_of_user("@a:x").await.unwrap().len(), 2);

    s.map_message("!r1:x", "$e1", "s1").await.unwrap();
    s.map_message("!r1:x", "$e1", "s1").await.unwrap(); // idempotent
    assert_eq!(
        s.message_by_event("!r1:x", "$e1")
            .await
            .unwrap()
            .unwrap()
            .xmpp_stanza_id,
        "s1"
    );
    assert_eq!(
        s.message_by_stanza("!r1:x", "s1")
            .await
            .unwrap()
            .unwrap()
            .matrix_event_id,
        "$e1"
    );
    // Per portal: the same stanza id in another portal is a different message.
    assert!(s.message_by_stanza("!r2:x", "s1").await.unwrap().is_none());
    let err = s.map_message("!unknown:x", "$e", "s").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = s
        .upsert_portal("@nobody:x", "c@xmpp", "!r3:x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(s.delete_portal("!r1:x").await.unwrap());
    assert!(s.message_by_event("!r1:x", "$e1").await.unwrap().is_none());
});

scenario!(txn_marks_dedupe_by_id_and_content, |db| {
    let s = &db.store;
    assert_eq!(s.txn_status("1", "fp-a").await.unwrap(), TxnStatus::New);
    s.mark_txn("1", "fp-a").await.unwrap();
    assert_eq!(
        s.txn_status("1", "fp-a").await.unwrap(),
        TxnStatus::Duplicate
    );
    // Homeserver restarted its ids at 1: same id, different content, must be processed.
    assert_eq!(s.txn_status("1", "fp-b").await.unwrap(), TxnStatus::New);
    s.mark_txn("1", "fp-b").await.unwrap();
    assert_eq!(
        s.txn_status("1", "fp-b").await.unwrap(),
        TxnStatus::Duplicate
    );
    s.mark_txn("2", "fp-c").await.unwrap();
    assert_eq!(s.forget_txns_before(0).await.unwrap(), 0);
    assert_eq!(s.forget_txns_before(i64::MAX).await.unwrap(), 2);
    s.mark_txn("3", "fp-d").await.unwrap();
    assert_eq!(s.forget_all_txns().await.unwrap(), 1);
    assert_eq!(s.txn_status("3", "fp-d").await.unwrap(), TxnStatus::New);
});

scenario!(
    ack_and_claim_next_saves_the_mapping_or_reports_the_lost_lease,
    |db| {
        let s = &db.store;
        s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
        s.upsert_portal("@a:x", "c@xmpp", "!room:x").await.unwrap();
        let long = std::time::Duration::from_secs(60);
        s.enqueue(Direction::ToMatrix, "q", b"m", None)
            .await
            .unwrap();
        let item = s
            .claim(Direction::ToMatrix, 1, long)
            .await
            .unwrap()
            .remove(0);
        s.ack_and_claim_next(&item, Some(("!room:x", "$ev", "st1")), long)
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog(Direction::ToMatrix).await.unwrap(), 0);
        let m = s.message_by_event("!room:x", "$ev").await.unwrap().unwrap();
        assert_eq!(m.xmpp_stanza_id, "st1");
        // Acked twice: the lease is gone and nothing else changes.
        assert!(matches!(
            s.ack_and_claim_next(&item, Some(("!room:x", "$ev2", "st2")), long)
                .await,
            Err(Error::LeaseLost { .. })
        ));
        assert!(
            s.message_by_event("!room:x", "$ev2")
                .await
                .unwrap()
                .is_none()
        );
        // A portal deleted meanwhile: the item is still acked, the mapping skipped.
        s.enqueue(Direction::ToMatrix, "q", b"n", None)
            .await
            .unwrap();
        let item = s
            .claim(Direction::ToMatrix, 1, long)
            .await
            .unwrap()
            .remove(0);
        s.delete_portal("!room:x").await.unwrap();
        s.ack_and_claim_next(&item, Some(("!room:x", "$ev3", "st3")), long)
            .await
            .unwrap();
        assert_eq!(s.outbox_backlog(Direction::ToMatrix).await.unwrap(), 0);
    }
);

scenario!(
    archive_cursor_is_kept_per_user_and_cleared_for_another_account,
    |db| {
        let s = &db.store;
        s.upsert_linked_user(&user("@a:x", "a@xmpp")).await.unwrap();
        assert_eq!(s.archive_cursor("@a:x").await.unwrap(), None);
        s.set_archive_cursor("@a:x", "a@xmpp", "id:42")
            .await
            .unwrap();
        // A save for an account the user no longer has lands nowhere.
        s.set_archive_cursor("@a:x", "old@xmpp", "id:7")
            .await
            .unwrap();
        let again = db.reopen(keyring()).await.unwrap();
        assert_eq!(
            again.archive_cursor("@a:x").await.unwrap().as_deref(),
            Some("id:42")
        );
        // Relinking the same account keeps it; linking another account's archive forgets it.
        again
            .upsert_linked_user(&user("@a:x", "a@xmpp"))
            .await
            .unwrap();
        assert_eq!(
            again.archive_cursor("@a:x").await.unwrap().as_deref(),
            Some("id:42")
        );
        again
            .upsert_linked_user(&user("@a:x", "other@xmpp"))
            .await
            .unwrap();
        assert_eq!(again.archive_cursor("@a:x").await.unwrap(), None);
        assert_eq!(again.archive_cursor("@nobody:x").await.unwrap(), None);
    }
);
