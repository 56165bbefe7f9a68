//! The durable outbox: deliveries waiting to go out in either direction, ordered per queue.
//!
//! Each item belongs to a queue (the bridge uses the portal) and a [`Direction`]. Within one
//! queue only the head — the oldest item not yet done or failed — is ever handed out, so item
//! N+1 never leaves while item N is claimed or waiting for a retry. A claim is a lease: if the
//! claimer dies, the item is handed out again once the lease expires. Acked items never come
//! back; items that exhaust their attempts are kept as failed for the bridge to report.

use std::time::Duration;

use crate::backend::{PoolExt as _, RowExt, on_pool};
use crate::error::{Error, QueryContext as _, Result};
use crate::{Store, now_millis};

/// Which way an outbox item travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Matrix → XMPP.
    ToXmpp,
    /// XMPP → Matrix.
    ToMatrix,
}

impl Direction {
    /// The stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ToXmpp => "to_xmpp",
            Self::ToMatrix => "to_matrix",
        }
    }
}

/// The result of [`Store::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// A new item with this id was added.
    Added(i64),
    /// An item with the same dedupe key already exists (pending, done or failed); nothing added.
    Duplicate(i64),
}

impl Enqueued {
    /// The item id, new or existing.
    pub fn id(self) -> i64 {
        match self {
            Self::Added(id) | Self::Duplicate(id) => id,
        }
    }
}

/// An item handed out by [`Store::claim`]; pass it back to ack, retry or give up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedItem {
    /// The item id (increasing in enqueue order).
    pub id: i64,
    /// Which way it travels.
    pub direction: Direction,
    /// The queue (portal) it belongs to.
    pub queue_key: String,
    /// The dedupe key given at enqueue, if any.
    pub dedupe_key: Option<String>,
    /// The bridge's payload, opaque to the store.
    pub payload: Vec<u8>,
    /// Delivery attempts so far, including this one.
    pub attempts: i64,
    /// When it was enqueued (unix ms).
    pub created_at: i64,
    lease_token: String,
}

/// What [`Store::retry`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The item will be handed out again at this time (unix ms).
    Scheduled(i64),
    /// The item used up its attempts and is now failed.
    GaveUp,
}

/// An item that could not be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedItem {
    /// The item id.
    pub id: i64,
    /// The queue (portal) it belonged to.
    pub queue_key: String,
    /// The dedupe key given at enqueue, if any.
    pub dedupe_key: Option<String>,
    /// The bridge's payload.
    pub payload: Vec<u8>,
    /// Delivery attempts made.
    pub attempts: i64,
    /// The last error the bridge recorded.
    pub last_error: Option<String>,
    /// When it was enqueued (unix ms).
    pub created_at: i64,
    /// When it was given up (unix ms).
    pub failed_at: Option<i64>,
}

const INSERT_ITEM: &str = "INSERT INTO outbox (direction, queue_key, dedupe_key, payload, \
    state, attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) \
    ON CONFLICT (direction, dedupe_key) DO NOTHING RETURNING id";
const SELECT_BY_DEDUPE: &str = "SELECT id FROM outbox WHERE direction = $1 AND dedupe_key = $2";

/// Claims queue heads that are due. The inner SELECT picks, per queue, the oldest unfinished
/// item, and only if it is pending and due or claimed with an expired lease. Conditions are on
/// `o` itself so PostgreSQL re-checks them on the locked row version.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE outbox SET state = 'claimed', lease_token = $4, lease_until = $5, \
             attempts = attempts + 1 \
             WHERE id IN (SELECT o.id FROM outbox o \
               WHERE o.direction = $1 AND o.state IN ('pending', 'claimed') \
               AND ((o.state = 'pending' AND o.next_attempt_at <= $2) \
                 OR (o.state = 'claimed' AND o.lease_until <= $2)) \
               AND o.id = (SELECT MIN(i.id) FROM outbox i WHERE i.direction = o.direction \
                 AND i.queue_key = o.queue_key AND i.state IN ('pending', 'claimed')) \
               ORDER BY o.id LIMIT $3",
            $lock,
            ") AND ((state = 'pending' AND next_attempt_at <= $2) \
               OR (state = 'claimed' AND lease_until <= $2)) \
             RETURNING id, queue_key, dedupe_key, payload, attempts, created_at"
        )
    };
}
/// SQLite: run inside `BEGIN IMMEDIATE`, so the whole claim holds the write lock.
pub(crate) const CLAIM_SQLITE: &str = claim_sql!("");
/// PostgreSQL: rows another claimer has locked are skipped, not waited for.
pub(crate) const CLAIM_POSTGRES: &str = claim_sql!(" FOR UPDATE OF o SKIP LOCKED");

const ACK: &str = "UPDATE outbox SET state = 'done', finished_at = $3, lease_token = NULL, \
    lease_until = NULL, payload = $4 WHERE id = $1 AND lease_token = $2 AND state = 'claimed'";
const RETRY: &str = "UPDATE outbox SET \
    state = CASE WHEN attempts >= $4 THEN 'failed' ELSE 'pending' END, \
    finished_at = CASE WHEN attempts >= $4 THEN $6 ELSE NULL END, \
    next_attempt_at = $3, last_error = $5, lease_token = NULL, lease_until = NULL \
    WHERE id = $1 AND lease_token = $2 AND state = 'claimed' RETURNING state";
const GIVE_UP: &str = "UPDATE outbox SET state = 'failed', finished_at = $3, last_error = $4, \
    lease_token = NULL, lease_until = NULL WHERE id = $1 AND lease_token = $2 AND state = 'claimed'";
const SELECT_FAILED: &str = "SELECT id, queue_key, dedupe_key, payload, attempts, last_error, \
    created_at, finished_at FROM outbox WHERE direction = $1 AND state = 'failed' \
    ORDER BY id LIMIT $2";
const DISMISS_FAILED: &str = "DELETE FROM outbox WHERE id = $1 AND state = 'failed'";
const PRUNE_DONE: &str = "DELETE FROM outbox WHERE state = 'done' AND finished_at < $1";
const COUNT_UNFINISHED: &str = "SELECT COUNT(*) AS n FROM outbox \
    WHERE direction = $1 AND state IN ('pending', 'claimed')";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn claimed_from_row(r: &impl RowExt, direction: Direction, token: &str) -> Result<ClaimedItem> {
    Ok(ClaimedItem {
        id: r.int("id")?,
        direction,
        queue_key: r.text("queue_key")?,
        dedupe_key: r.opt_text("dedupe_key")?,
        payload: r.bytes("payload")?,
        attempts: r.int("attempts")?,
        created_at: r.int("created_at")?,
        lease_token: token.to_owned(),
    })
}

fn failed_from_row(r: &impl RowExt) -> Result<FailedItem> {
    Ok(FailedItem {
        id: r.int("id")?,
        queue_key: r.text("queue_key")?,
        dedupe_key: r.opt_text("dedupe_key")?,
        payload: r.bytes("payload")?,
        attempts: r.int("attempts")?,
        last_error: r.opt_text("last_error")?,
        created_at: r.int("created_at")?,
        failed_at: r.opt_int("finished_at")?,
    })
}

impl Store {
    /// Durably adds an item to the end of `queue_key`'s queue. With a `dedupe_key` (e.g. the
    /// Matrix event id), enqueueing the same key twice in one direction adds it once.
    pub async fn enqueue(
        &self,
        direction: Direction,
        queue_key: &str,
        payload: &[u8],
        dedupe_key: Option<&str>,
    ) -> Result<Enqueued> {
        const OP: &str = "enqueue an outbox item";
        on_pool!(self, pool => {
            let row = sqlx::query(INSERT_ITEM)
                .bind(direction.as_str()).bind(queue_key).bind(dedupe_key).bind(payload)
                .bind(now_millis())
                .fetch_optional(pool).await.ctx(OP)?;
            match row {
                Some(row) => Ok(Enqueued::Added(row.int("id")?)),
                None => {
                    let row = sqlx::query(SELECT_BY_DEDUPE).bind(direction.as_str())
                        .bind(dedupe_key).fetch_one(pool).await.ctx(OP)?;
                    Ok(Enqueued::Duplicate(row.int("id")?))
                }
            }
        })
    }

    /// Claims up to `limit` due items, at most one per queue (its head), for `lease`. The
    /// result is in enqueue order. Concurrent claimers never get the same item.
    pub async fn claim(
        &self,
        direction: Direction,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedItem>> {
        const OP: &str = "claim outbox items";
        let now = now_millis();
        let token = format!("{:032x}", rand::random::<u128>());
        let mut items = on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let rows = sqlx::query(pool.claim_sql())
                .bind(direction.as_str()).bind(now).bind(i64::from(limit)).bind(&token)
                .bind(now.saturating_add(millis(lease)))
                .fetch_all(&mut *tx).await.ctx(OP)?;
            tx.commit().await.ctx(OP)?;
            rows.iter().map(|r| claimed_from_row(r, direction, &token)).collect::<Result<Vec<_>>>()?
        });
        items.sort_by_key(|i| i.id);
        Ok(items)
    }

    /// Marks a claimed item delivered; it never comes back. Fails with [`Error::LeaseLost`]
    /// if the lease expired and the item was claimed again meanwhile.
    pub async fn ack(&self, item: &ClaimedItem) -> Result<()> {
        let n = on_pool!(self, pool => sqlx::query(ACK)
            .bind(item.id).bind(&item.lease_token).bind(now_millis()).bind(&[] as &[u8])
            .execute(pool).await.ctx("ack an outbox item")?.rows_affected());
        if n == 0 {
            Err(Error::LeaseLost { id: item.id })
        } else {
            Ok(())
        }
    }

    /// Releases a claimed item after a failed attempt: it is handed out again after
    /// `delay`, or, if it has used the configured maximum of attempts, becomes failed.
    /// The queue stays blocked behind it until then.
    pub async fn retry(
        &self,
        item: &ClaimedItem,
        error: &str,
        delay: Duration,
    ) -> Result<RetryOutcome> {
        let now = now_millis();
        let at = now.saturating_add(millis(delay));
        let row = on_pool!(self, pool => {
            let row = sqlx::query(RETRY)
                .bind(item.id).bind(&item.lease_token).bind(at)
                .bind(i64::from(self.outbox_max_attempts)).bind(error).bind(now)
                .fetch_optional(pool).await.ctx("schedule an outbox retry")?;
            row.map(|r| r.text("state")).transpose()?
        });
        match row.as_deref() {
            None => Err(Error::LeaseLost { id: item.id }),
            Some("failed") => Ok(RetryOutcome::GaveUp),
            Some(_) => Ok(RetryOutcome::Scheduled(at)),
        }
    }

    /// Gives up on a claimed item now (a permanent error); it becomes failed and the queue
    /// moves on.
    pub async fn give_up(&self, item: &ClaimedItem, error: &str) -> Result<()> {
        let n = on_pool!(self, pool => sqlx::query(GIVE_UP)
            .bind(item.id).bind(&item.lease_token).bind(now_millis()).bind(error)
            .execute(pool).await.ctx("fail an outbox item")?.rows_affected());
        if n == 0 {
            Err(Error::LeaseLost { id: item.id })
        } else {
            Ok(())
        }
    }

    /// Failed items to report, oldest first.
    pub async fn failed_items(&self, direction: Direction, limit: u32) -> Result<Vec<FailedItem>> {
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_FAILED).bind(direction.as_str()).bind(i64::from(limit))
                .fetch_all(pool).await.ctx("load failed outbox items")?;
            rows.iter().map(failed_from_row).collect()
        })
    }

    /// Deletes a failed item once it has been reported. Returns whether it existed.
    pub async fn dismiss_failed(&self, id: i64) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(DISMISS_FAILED).bind(id)
            .execute(pool).await.ctx("dismiss a failed outbox item")?.rows_affected());
        Ok(n > 0)
    }

    /// Deletes delivered items finished before `before` (unix ms); their dedupe keys are
    /// forgotten with them. Returns how many were removed.
    pub async fn prune_delivered(&self, before: i64) -> Result<u64> {
        Ok(on_pool!(self, pool => sqlx::query(PRUNE_DONE).bind(before)
            .execute(pool).await.ctx("prune delivered outbox items")?.rows_affected()))
    }

    /// Items not yet delivered or failed (pending or claimed), e.g. for metrics.
    pub async fn outbox_backlog(&self, direction: Direction) -> Result<i64> {
        on_pool!(self, pool => sqlx::query(COUNT_UNFINISHED).bind(direction.as_str())
            .fetch_one(pool).await.ctx("count outbox items")?.int("n"))
    }
}
