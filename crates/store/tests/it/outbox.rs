//! The outbox: leases, acks, retries, failure, ordering per queue, concurrent claimers.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use store::{Direction, Enqueued, Error, Queued, RetryOutcome, Store};

use crate::support::{config, keyring, scenario};

const LONG: Duration = Duration::from_secs(60);
const IN: Direction = Direction::ToXmpp;

async fn enqueue(s: &Store, queue: &str, payload: &str) -> i64 {
    s.enqueue(IN, queue, payload.as_bytes(), None)
        .await
        .unwrap()
        .id()
}

scenario!(acked_item_never_comes_back, |db| {
    let s = &db.store;
    let id = enqueue(s, "q", "hello").await;
    let items = s.claim(IN, 10, LONG).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].id, items[0].payload.as_slice(), items[0].attempts),
        (id, &b"hello"[..], 1)
    );
    s.ack(&items[0]).await.unwrap();
    assert!(s.claim(IN, 10, Duration::ZERO).await.unwrap().is_empty());
    // Even after a restart and with expired leases.
    let again = db.reopen(keyring()).await.unwrap();
    assert!(
        again
            .claim(IN, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(again.outbox_backlog(IN).await.unwrap(), 0);
    // A second ack of the same claim reports the lost lease instead of succeeding silently.
    assert!(matches!(
        s.ack(&items[0]).await,
        Err(Error::LeaseLost { .. })
    ));
    again.close().await;
});

scenario!(
    item_of_a_dead_claimer_is_claimed_again_after_the_lease,
    |db| {
        let s = &db.store;
        let id = enqueue(s, "q", "m").await;
        let restarted = db.reopen(keyring()).await.unwrap();
        // Claimer 1 "dies" holding a short lease.
        let dead = s.claim(IN, 10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(dead[0].id, id);
        // Another process sees nothing while the lease is live...
        assert!(restarted.claim(IN, 10, LONG).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // ...and gets the item once it expired.
        let again = restarted.claim(IN, 10, LONG).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id, again[0].attempts), (id, 2));
        // The dead claimer's late ack must not count.
        assert!(matches!(s.ack(&dead[0]).await, Err(Error::LeaseLost { id: lost }) if lost == id));
        restarted.ack(&again[0]).await.unwrap();
        restarted.close().await;
    }
);

scenario!(queue_order_is_kept_through_claims_and_retries, |db| {
    let s = &db.store;
    let a1 = enqueue(s, "a", "a1").await;
    let b1 = enqueue(s, "b", "b1").await;
    let a2 = enqueue(s, "a", "a2").await;
    let b2 = enqueue(s, "b", "b2").await;

    // One head per queue.
    let first = s.claim(IN, 10, LONG).await.unwrap();
    assert_eq!(first.iter().map(|i| i.id).collect::<Vec<_>>(), [a1, b1]);
    // Nothing else while the heads are claimed.
    assert!(s.claim(IN, 10, LONG).await.unwrap().is_empty());

    // a1 fails and waits for a retry: a2 must not overtake it.
    let outcome = s
        .retry(&first[0], "timeout", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(outcome, RetryOutcome::Scheduled(_)));
    s.ack(&first[1]).await.unwrap();
    let next = s.claim(IN, 10, LONG).await.unwrap();
    assert_eq!(next.iter().map(|i| i.id).collect::<Vec<_>>(), [b2]);
    s.ack(&next[0]).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let retried = s.claim(IN, 10, LONG).await.unwrap();
    assert_eq!(
        retried
            .iter()
            .map(|i| (i.id, i.attempts))
            .collect::<Vec<_>>(),
        [(a1, 2)]
    );
    s.ack(&retried[0]).await.unwrap();
    let last = s.claim(IN, 10, LONG).await.unwrap();
    assert_eq!(last.iter().map(|i| i.id).collect::<Vec<_>>(), [a2]);
    // The other direction is a separate set of queues.
    assert!(
        s.claim(Direction::ToMatrix, 10, LONG)
            .await
            .unwrap()
            .is_empty()
    );
});

scenario!(
    exhausted_retries_become_failed_and_unblock_the_queue,
    |db| {
        let mut cfg = config(&db.url, keyring());
        cfg.outbox_max_attempts = 2;
        let s = Store::open(cfg).await.unwrap();
        let x1 = enqueue(&s, "q", "x1").await;
        let x2 = enqueue(&s, "q", "x2").await;
        let c = s.claim(IN, 1, LONG).await.unwrap();
        let outcome = s.retry(&c[0], "boom 1", Duration::ZERO).await.unwrap();
        assert!(matches!(outcome, RetryOutcome::Scheduled(_)));
        // The released claim cannot be used again.
        assert!(matches!(
            s.retry(&c[0], "", Duration::ZERO).await,
            Err(Error::LeaseLost { .. })
        ));
        let c = s.claim(IN, 1, LONG).await.unwrap();
        assert_eq!(c[0].id, x1);
        assert_eq!(
            s.retry(&c[0], "boom 2", Duration::ZERO).await.unwrap(),
            RetryOutcome::GaveUp
        );

        let next = s.claim(IN, 1, LONG).await.unwrap();
        assert_eq!(next[0].id, x2);
        s.give_up(&next[0], "permanent: recipient unknown")
            .await
            .unwrap();

        let failed = s.failed_items(IN, 10).await.unwrap();
        assert_eq!(failed.iter().map(|f| f.id).collect::<Vec<_>>(), [x1, x2]);
        assert_eq!(failed[0].last_error.as_deref(), Some("boom 2"));
        assert_eq!(failed[0].attempts, 2);
        assert_eq!(failed[0].payload, b"x1");
        assert!(s.claim(IN, 1, Duration::ZERO).await.unwrap().is_empty());
        assert!(s.dismiss_failed(x1).await.unwrap());
        assert_eq!(s.failed_items(IN, 10).await.unwrap().len(), 1);
        s.close().await;
    }
);

scenario!(dedupe_key_enqueues_once, |db| {
    let s = &db.store;
    let first = s.enqueue(IN, "q", b"e", Some("$event1")).await.unwrap();
    let again = s.enqueue(IN, "q", b"e", Some("$event1")).await.unwrap();
    assert!(matches!(first, Enqueued::Added(_)));
    assert_eq!(again, Enqueued::Duplicate(first.id()));
    // Same key in the other direction is unrelated.
    let other = s
        .enqueue(Direction::ToMatrix, "q", b"e", Some("$event1"))
        .await
        .unwrap();
    assert!(matches!(other, Enqueued::Added(_)));
    let c = s.claim(IN, 10, LONG).await.unwrap();
    s.ack(&c[0]).await.unwrap();
    // Still a duplicate after delivery, until pruned.
    assert_eq!(
        s.enqueue(IN, "q", b"e", Some("$event1")).await.unwrap(),
        Enqueued::Duplicate(first.id())
    );
    assert_eq!(s.prune_delivered(i64::MAX).await.unwrap(), 1);
    assert!(matches!(
        s.enqueue(IN, "q", b"e", Some("$event1")).await.unwrap(),
        Enqueued::Added(_)
    ));
});

scenario!(
    concurrent_claimers_never_share_an_item_and_keep_queue_order,
    |db| {
        const QUEUES: usize = 8;
        const PER_QUEUE: usize = 15;
        let s = &db.store;
        for n in 0..PER_QUEUE {
            for q in 0..QUEUES {
                enqueue(s, &format!("q{q}"), &format!("{q}:{n}")).await;
            }
        }
        let mut workers = Vec::new();
        for w in 0..4 {
            // Each worker is its own store (pool), like separate bridge processes.
            let store = db.reopen(keyring()).await.unwrap();
            workers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 20 {
                    let items = store.claim(IN, 3, LONG).await.unwrap();
                    if items.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    idle = 0;
                    for item in items {
                        let text = String::from_utf8(item.payload.clone()).unwrap();
                        got.push((item.id, text, w));
                        store.ack(&item).await.unwrap();
                    }
                }
                store.close().await;
                got
            }));
        }
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        let ids: HashSet<i64> = all.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(ids.len(), all.len(), "an item was handed out twice");
        assert_eq!(all.len(), QUEUES * PER_QUEUE);
        // Sorting by id gives enqueue order; per queue the payload sequence must be 0, 1, 2, ...
        // and since a queue's next item is only handed out after the previous ack, ids per queue
        // rise in claim order too.
        all.sort_by_key(|(id, _, _)| *id);
        let mut per_queue: HashMap<String, Vec<usize>> = HashMap::new();
        for (_, text, _) in &all {
            let (q, n) = text.split_once(':').unwrap();
            per_queue
                .entry(q.to_owned())
                .or_default()
                .push(n.parse().unwrap());
        }
        for (q, seq) in per_queue {
            assert_eq!(seq, (0..PER_QUEUE).collect::<Vec<_>>(), "queue {q}");
        }
    }
);

scenario!(
    enqueue_and_claim_claims_only_the_head_of_an_idle_queue,
    |db| {
        let s = &db.store;
        let first = match s
            .enqueue_and_claim(IN, "q", b"one", Some("$1"), LONG)
            .await
            .unwrap()
        {
            Queued::Claimed(item) => item,
            other => panic!("the head of an idle queue is claimed at once: {other:?}"),
        };
        assert_eq!((first.payload.as_slice(), first.attempts), (&b"one"[..], 1));
        // Behind it: waiting, and not handed out while the head is in flight.
        let second = s
            .enqueue_and_claim(IN, "q", b"two", Some("$2"), LONG)
            .await
            .unwrap();
        assert!(matches!(second, Queued::Waiting(_)), "{second:?}");
        assert!(matches!(
            s.enqueue_and_claim(IN, "q", b"one", Some("$1"), LONG)
                .await
                .unwrap(),
            Queued::Duplicate(id) if id == first.id
        ));
        // Another queue is independent.
        assert!(matches!(
            s.enqueue_and_claim(IN, "other", b"x", None, LONG)
                .await
                .unwrap(),
            Queued::Claimed(_)
        ));
        assert!(s.claim(IN, 10, LONG).await.unwrap().is_empty());
        s.ack(&first).await.unwrap();
        let next = s.claim(IN, 10, LONG).await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].payload, b"two");
    }
);

scenario!(a_directly_claimed_item_of_a_dead_claimer_comes_back, |db| {
    let s = &db.store;
    let Queued::Claimed(item) = s
        .enqueue_and_claim(IN, "q", b"m", None, Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("expected a claim");
    };
    let restarted = db.reopen(keyring()).await.unwrap();
    assert!(restarted.claim(IN, 10, LONG).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = restarted.claim(IN, 10, LONG).await.unwrap();
    assert_eq!((again[0].id, again[0].attempts), (item.id, 2));
    // The dead claimer's lease is gone.
    assert!(matches!(s.ack(&item).await, Err(Error::LeaseLost { .. })));
    restarted.close().await;
});

scenario!(ack_and_claim_next_drains_one_queue_in_order, |db| {
    let s = &db.store;
    for p in ["a1", "a2", "a3"] {
        enqueue(s, "a", p).await;
    }
    enqueue(s, "b", "b1").await;
    let first = s.claim(IN, 1, LONG).await.unwrap().remove(0);
    assert_eq!(first.payload, b"a1");
    let mut seen = vec!["a1".to_owned()];
    let mut item = first;
    while let Some(next) = s.ack_and_claim_next(&item, None, LONG).await.unwrap() {
        assert_eq!((next.queue_key.as_str(), next.attempts), ("a", 1));
        seen.push(String::from_utf8(next.payload.clone()).unwrap());
        item = next;
    }
    assert_eq!(seen, ["a1", "a2", "a3"]);
    // The other queue was never touched by the chain.
    let b = s.claim(IN, 10, LONG).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].payload, b"b1");
});

scenario!(
    ack_and_claim_next_leaves_a_successor_that_is_not_due,
    |db| {
        let s = &db.store;
        enqueue(s, "a", "a1").await;
        enqueue(s, "a", "a2").await;
        let a1 = s.claim(IN, 1, LONG).await.unwrap().remove(0);
        let a2 = s
            .ack_and_claim_next(&a1, None, LONG)
            .await
            .unwrap()
            .unwrap();
        enqueue(s, "a", "a3").await;
        // a2 fails and is scheduled for later: nothing else in the queue may overtake it.
        s.retry(&a2, "down", LONG).await.unwrap();
        assert!(s.claim(IN, 10, LONG).await.unwrap().is_empty());
    }
);

scenario!(a_claim_never_hands_out_more_than_its_limit, |db| {
    let s = &db.store;
    for q in ["a", "b", "c", "d", "e"] {
        enqueue(s, q, q).await;
    }
    let first = s.claim(IN, 2, LONG).await.unwrap();
    let keys: Vec<&str> = first.iter().map(|i| i.queue_key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    let rest = s.claim(IN, 10, LONG).await.unwrap();
    assert_eq!(rest.len(), 3);
});

scenario!(claims_of_a_crashed_run_are_released_at_start, |db| {
    let s = &db.store;
    let id = enqueue(s, "q", "m").await;
    let dead = s.claim(IN, 10, LONG).await.unwrap();
    assert_eq!(dead[0].id, id);
    let restarted = db.reopen(keyring()).await.unwrap();
    assert_eq!(restarted.release_claims().await.unwrap(), 1);
    let again = restarted.claim(IN, 10, LONG).await.unwrap();
    assert_eq!((again[0].id, again[0].attempts), (id, 2));
    assert!(matches!(
        s.ack(&dead[0]).await,
        Err(Error::LeaseLost { .. })
    ));
    restarted.close().await;
});

scenario!(
    a_cancelled_ack_is_all_or_nothing_and_later_writes_still_commit,
    |db| {
        let s = &db.store;
        enqueue(s, "a", "a1").await;
        enqueue(s, "a", "a2").await;
        let a1 = s.claim(IN, 1, LONG).await.unwrap().remove(0);
        // Polled once, then dropped: the database may be in the middle of the ack's
        // transaction when its caller goes away.
        {
            let ack = s.ack_and_claim_next(&a1, None, LONG);
            tokio::pin!(ack);
            let _ = poll_once(ack.as_mut()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A later write commits: it does not run inside what the cancelled ack left open.
        enqueue(s, "b", "b1").await;
        let reopened = db.reopen(keyring()).await.unwrap();
        let heads = reopened
            .claim(IN, 10, LONG)
            .await
            .expect("the write lock was released");
        let heads: Vec<_> = heads.iter().map(|i| i.payload.as_slice()).collect();
        assert_eq!(heads, [&b"b1"[..]], "b1 committed, queue a still held");
        let backlog = reopened.outbox_backlog(IN).await.unwrap();
        // Either the whole ack happened (a1 done, a2 claimed) or none of it (a1 still
        // claimed); b1 is there in both cases.
        assert!(
            backlog == 2 || backlog == 3,
            "backlog {backlog}: a half-done ack, or b1 not committed"
        );
        reopened.close().await;
    }
);

/// Polls a future once, as a `select!` with a ready branch would, and reports whether it was
/// done.
async fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
    let mut f = Some(f);
    std::future::poll_fn(move |cx| {
        let done = f.take().is_some_and(|f| f.poll(cx).is_ready());
        std::task::Poll::Ready(done)
    })
    .await
}

scenario!(items_waiting_for_a_retry_can_be_made_due_at_once, |db| {
    let s = &db.store;
    enqueue(s, "a", "a1").await;
    enqueue(s, "a", "a2").await;
    enqueue(s, "b", "b1").await;
    let claimed = s.claim(IN, 10, LONG).await.unwrap();
    for item in &claimed {
        s.retry(item, "session down", LONG).await.unwrap();
    }
    assert!(s.claim(IN, 10, LONG).await.unwrap().is_empty());
    // Queue a's session is back: its head is due now, b still waits out its delay.
    assert_eq!(s.due_now(IN, "a").await.unwrap(), 1);
    let again = s.claim(IN, 10, LONG).await.unwrap();
    let got: Vec<_> = again
        .iter()
        .map(|i| (i.payload.as_slice(), i.attempts))
        .collect();
    assert_eq!(got, [(&b"a1"[..], 2)]);
});

scenario!(queue_backlog_counts_one_queues_unfinished_items, |db| {
    let s = &db.store;
    for p in ["a", "b", "c"] {
        enqueue(s, "room1", p).await;
    }
    enqueue(s, "room2", "x").await;
    assert_eq!(s.queue_backlog(IN, "room1").await.unwrap(), 3);
    assert_eq!(
        s.queue_backlog(Direction::ToMatrix, "room1").await.unwrap(),
        0
    );
    // Claimed items are still unfinished; acked ones are not.
    for left in [2, 1, 0] {
        let claimed = s.claim(IN, 10, LONG).await.unwrap();
        let item = claimed.iter().find(|i| i.queue_key == "room1").unwrap();
        assert_eq!(s.queue_backlog(IN, "room1").await.unwrap(), left + 1);
        s.ack(item).await.unwrap();
        assert_eq!(s.queue_backlog(IN, "room1").await.unwrap(), left);
    }
    assert_eq!(s.queue_backlog(IN, "room2").await.unwrap(), 1);
});

scenario!(is_recorded_finds_an_item_by_its_dedupe_key, |db| {
    let s = &db.store;
    assert!(!s.is_recorded(IN, "$event").await.unwrap());
    s.enqueue(IN, "room", b"x", Some("$event")).await.unwrap();
    assert!(s.is_recorded(IN, "$event").await.unwrap());
    assert!(!s.is_recorded(Direction::ToMatrix, "$event").await.unwrap());
});
