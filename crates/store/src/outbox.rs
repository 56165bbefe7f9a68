//! The durable outbox: deliveries waiting to go out in either direction, ordered per queue.
//!
//! Each item belongs to a queue (the bridge uses the portal) and a [`Direction`]. Within one
//! queue only the head — the oldest item not yet done or failed — is ever handed out, so item
//! N+1 never leaves while item N is claimed or waiting for a retry. A claim is a lease: if the
//! claimer dies, the item is handed out again once the lease expires. Acked items never come
//! back; items that exhaust their attempts are kept as failed for the bridge to report.

use std::time::Duration;

use crate::backend::{Backend, PoolExt as _, RowExt, on_pool, on_writer};
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

/// The result of [`Store::enqueue_and_claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Queued {
    /// Added at the head of an idle queue and claimed at once: deliver it now.
    Claimed(ClaimedItem),
    /// Added behind unfinished items of its queue; a later [`Store::claim`] hands it out.
    Waiting(i64),
    /// An item with the same dedupe key already exists; nothing added.
    Duplicate(i64),
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

pub(crate) const INSERT_ITEM: &str = "INSERT INTO outbox (direction, queue_key, dedupe_key, payload, \
    state, attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) \
    ON CONFLICT (direction, dedupe_key) DO NOTHING RETURNING id";
/// Enqueues and, if the queue has nothing unfinished (the new item is its head), claims it in
/// the same statement. `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join.
const INSERT_CLAIMED_IF_HEAD: &str = "INSERT INTO outbox (direction, queue_key, dedupe_key, \
    payload, state, attempts, next_attempt_at, created_at, lease_token, lease_until) \
    SELECT $1, $2, $3, $4, CASE WHEN h.busy THEN 'pending' ELSE 'claimed' END, \
    CASE WHEN h.busy THEN 0 ELSE 1 END, $5, $5, \
    CASE WHEN h.busy THEN NULL ELSE $6 END, CASE WHEN h.busy THEN NULL ELSE $7 END \
    FROM (SELECT EXISTS (SELECT 1 FROM outbox WHERE direction = $1 AND queue_key = $2 \
      AND state IN ('pending', 'claimed')) AS busy) h WHERE true \
    ON CONFLICT (direction, dedupe_key) DO NOTHING RETURNING id, state";
const SELECT_BY_DEDUPE: &str = "SELECT id FROM outbox WHERE direction = $1 AND dedupe_key = $2";

/// Claims queue heads that are due. `queues` walks the distinct queues that have unfinished
/// items (a loose index scan: one seek per queue on `outbox_unfinished`), `heads` takes each
/// one's oldest unfinished item, and only heads that are pending and due, or claimed with an
/// expired lease, are claimed. The cost grows with the number of queues, not with the backlog.
/// `picked` is a CTE so PostgreSQL evaluates it (and its row locks and LIMIT) once; as a
/// subquery of the UPDATE it may run again per row and hand out more than LIMIT items.
/// Conditions are repeated on the updated row so PostgreSQL re-checks them on the locked row
/// version.
///
/// The text is split around the LIMIT value, which is written in, not bound: SQLite's planner
/// looks at a bound LIMIT, and a statement whose planner looked at a parameter is compiled
/// again every time that parameter is bound, even to the same value.
macro_rules! claim_sql {
    ($dir:literal, $lock:literal) => {
        (
            concat!(
                "WITH RECURSIVE queues(k) AS ( \
               SELECT MIN(queue_key) FROM outbox \
                 WHERE direction = '",
                $dir,
                "' AND state IN ('pending', 'claimed') \
               UNION ALL \
               SELECT (SELECT MIN(i.queue_key) FROM outbox i WHERE i.direction = '",
                $dir,
                "' \
                   AND i.state IN ('pending', 'claimed') AND i.queue_key > queues.k) \
                 FROM queues WHERE queues.k IS NOT NULL), \
             heads(id) AS ( \
               SELECT (SELECT MIN(h.id) FROM outbox h WHERE h.direction = '",
                $dir,
                "' \
                   AND h.queue_key = queues.k AND h.state IN ('pending', 'claimed')) \
                 FROM queues WHERE queues.k IS NOT NULL), \
             picked(id) AS (SELECT o.id FROM outbox o \
               WHERE o.id IN (SELECT id FROM heads) \
               AND ((o.state = 'pending' AND o.next_attempt_at <= $1) \
                 OR (o.state = 'claimed' AND o.lease_until <= $1)) \
               ORDER BY o.id LIMIT "
            ),
            concat!(
                $lock,
                ") \
             UPDATE outbox SET state = 'claimed', lease_token = $2, lease_until = $3, \
               attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM picked) \
             AND ((state = 'pending' AND next_attempt_at <= $1) \
               OR (state = 'claimed' AND lease_until <= $1)) \
             RETURNING id, queue_key, dedupe_key, payload, attempts, created_at"
            ),
        )
    };
}
/// The claim statement for a direction and a limit, from its text around the limit.
fn claim_sql(parts: [(&str, &str); 2], direction: Direction, limit: u32) -> String {
    let (head, tail) = for_direction(parts, direction);
    format!("{head}{limit}{tail}")
}
/// The entry of a `[to_xmpp, to_matrix]` pair of statements for `direction`.
fn for_direction<T>([to_xmpp, to_matrix]: [T; 2], direction: Direction) -> T {
    match direction {
        Direction::ToXmpp => to_xmpp,
        Direction::ToMatrix => to_matrix,
    }
}
/// SQLite: run inside `BEGIN IMMEDIATE`, so the whole claim holds the write lock. The direction
/// is written in too, for the same reason as the limit.
const CLAIM_SQLITE: [(&str, &str); 2] = [claim_sql!("to_xmpp", ""), claim_sql!("to_matrix", "")];
/// PostgreSQL: rows another claimer has locked are skipped, not waited for.
const CLAIM_POSTGRES: [(&str, &str); 2] = [
    claim_sql!("to_xmpp", " FOR UPDATE OF o SKIP LOCKED"),
    claim_sql!("to_matrix", " FOR UPDATE OF o SKIP LOCKED"),
];

const ACK: &str = "UPDATE outbox SET state = 'done', finished_at = $3, lease_token = NULL, \
    lease_until = NULL, payload = $4 WHERE id = $1 AND lease_token = $2 AND state = 'claimed'";
/// Claims the next item of one queue if it is its head, pending and due (after an ack, in the
/// same transaction). An item never tried is always due: its time was taken when it was
/// recorded, which may be a moment after the acker took its own. The direction is part of the
/// text, as in the claim.
macro_rules! claim_next_sql {
    ($dir:literal) => {
        concat!(
            "UPDATE outbox SET state = 'claimed', lease_token = $1, lease_until = $2, \
               attempts = attempts + 1 \
             WHERE id = (SELECT MIN(h.id) FROM outbox h WHERE h.direction = '",
            $dir,
            "' \
               AND h.queue_key = $3 AND h.state IN ('pending', 'claimed')) \
             AND state = 'pending' AND (attempts = 0 OR next_attempt_at <= $4) \
             RETURNING id, queue_key, dedupe_key, payload, attempts, created_at"
        )
    };
}
const CLAIM_NEXT: [&str; 2] = [claim_next_sql!("to_xmpp"), claim_next_sql!("to_matrix")];

/// SQLite: [`Store::ack_and_claim_next`] as one transaction in one text, run in one round trip
/// to the connection's thread. `$1` id, `$2` lease token, `$3` now, `$4` lease token of the
/// next item, `$5` its lease end, `$6` queue, `$7`–`$9` the mapping (room, event, stanza; NULL
/// for none). The ack returns a row when it took (no row: the lease was lost); the next item is
/// claimed only if the ack took (`changes()` counts the statement just before); the mapping is
/// saved only for an item we delivered.
macro_rules! ack_and_claim_next_sqlite {
    ($dir:literal) => {
        concat!(
            "BEGIN IMMEDIATE; \
             UPDATE outbox SET state = 'done', finished_at = $3, lease_token = NULL, \
               lease_until = NULL, payload = x'' \
             WHERE id = $1 AND lease_token = $2 AND state = 'claimed' RETURNING 'ack' AS step; \
             UPDATE outbox SET state = 'claimed', lease_token = $4, lease_until = $5, \
               attempts = attempts + 1 \
             WHERE changes() = 1 AND id = (SELECT MIN(h.id) FROM outbox h WHERE h.direction = '",
            $dir,
            "' \
               AND h.queue_key = $6 AND h.state IN ('pending', 'claimed')) \
             AND state = 'pending' AND (attempts = 0 OR next_attempt_at <= $3) \
             RETURNING 'next' AS step, id, queue_key, dedupe_key, payload, attempts, created_at; \
             INSERT INTO message_map (room_id, matrix_event_id, xmpp_stanza_id, created_at) \
             SELECT $7, $8, $9, $3 WHERE $7 IS NOT NULL \
               AND EXISTS (SELECT 1 FROM outbox WHERE id = $1 AND state = 'done' AND finished_at = $3) \
               AND EXISTS (SELECT 1 FROM portals WHERE room_id = $7) ON CONFLICT DO NOTHING; \
             COMMIT;"
        )
    };
}
const ACK_AND_CLAIM_NEXT_SQLITE: [&str; 2] = [
    ack_and_claim_next_sqlite!("to_xmpp"),
    ack_and_claim_next_sqlite!("to_matrix"),
];

/// Saves the message mapping with an ack; skipped (not an error) if the portal is gone.
const INSERT_MAPPING_IF_PORTAL: &str = "INSERT INTO message_map (room_id, matrix_event_id, \
    xmpp_stanza_id, created_at) SELECT $1, $2, $3, $4 WHERE EXISTS \
    (SELECT 1 FROM portals WHERE room_id = $1) ON CONFLICT DO NOTHING";
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
const DUE_NOW: &str = "UPDATE outbox SET next_attempt_at = $3 WHERE direction = $1 \
    AND queue_key = $2 AND state = 'pending' AND next_attempt_at > $3";
const DISMISS_FAILED: &str = "DELETE FROM outbox WHERE id = $1 AND state = 'failed'";
const RELEASE_CLAIMS: &str = "UPDATE outbox SET state = 'pending', lease_token = NULL, \
    lease_until = NULL WHERE state = 'claimed'";
const PRUNE_DONE: &str = "DELETE FROM outbox WHERE state = 'done' AND finished_at < $1";
const COUNT_UNFINISHED: &str = "SELECT COUNT(*) AS n FROM outbox \
    WHERE direction = $1 AND state IN ('pending', 'claimed')";
const COUNT_QUEUE_UNFINISHED: &str = "SELECT COUNT(*) AS n FROM outbox \
    WHERE direction = $1 AND queue_key = $2 AND state IN ('pending', 'claimed')";

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
        on_writer!(self, conn => {
            let row = sqlx::query(INSERT_ITEM)
                .bind(direction.as_str()).bind(queue_key).bind(dedupe_key).bind(payload)
                .bind(now_millis())
                .fetch_optional(&mut *conn).await.ctx(OP)?;
            match row {
                Some(row) => Ok(Enqueued::Added(row.int("id")?)),
                None => {
                    let row = sqlx::query(SELECT_BY_DEDUPE).bind(direction.as_str())
                        .bind(dedupe_key).fetch_one(&mut *conn).await.ctx(OP)?;
                    Ok(Enqueued::Duplicate(row.int("id")?))
                }
            }
        })
    }

    /// [`Store::enqueue`], and if the queue has nothing unfinished — the usual case for a
    /// conversation at a human pace — the new item is claimed for `lease` in the same statement
    /// and returned for delivery, which saves a claim. One statement, one commit.
    ///
    /// Order per queue holds as long as one queue is not enqueued into concurrently (the bridge
    /// records each portal's messages from one task); PostgreSQL does not serialize two
    /// concurrent enqueues that both find the queue idle.
    pub async fn enqueue_and_claim(
        &self,
        direction: Direction,
        queue_key: &str,
        payload: &[u8],
        dedupe_key: Option<&str>,
        lease: Duration,
    ) -> Result<Queued> {
        const OP: &str = "enqueue an outbox item";
        let now = now_millis();
        let token = format!("{:032x}", rand::random::<u128>());
        let inserted = on_writer!(self, conn => {
            let row = sqlx::query(INSERT_CLAIMED_IF_HEAD)
                .bind(direction.as_str()).bind(queue_key).bind(dedupe_key).bind(payload)
                .bind(now).bind(&token).bind(now.saturating_add(millis(lease)))
                .fetch_optional(&mut *conn).await.ctx(OP)?;
            match row {
                Some(row) => Ok::<_, Error>(Ok((row.int("id")?, row.text("state")?))),
                None => {
                    let row = sqlx::query(SELECT_BY_DEDUPE).bind(direction.as_str())
                        .bind(dedupe_key).fetch_one(&mut *conn).await.ctx(OP)?;
                    Ok(Err(row.int("id")?))
                }
            }
        })?;
        Ok(match inserted {
            Ok((id, state)) if state == "claimed" => Queued::Claimed(ClaimedItem {
                id,
                direction,
                queue_key: queue_key.to_owned(),
                dedupe_key: dedupe_key.map(str::to_owned),
                payload: payload.to_vec(),
                attempts: 1,
                created_at: now,
                lease_token: token,
            }),
            Ok((id, _)) => Queued::Waiting(id),
            Err(existing) => Queued::Duplicate(existing),
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
        let lease_end = now.saturating_add(millis(lease));
        let rows = match &self.backend {
            Backend::Sqlite { writer, .. } => {
                let sql = format!(
                    "BEGIN IMMEDIATE; {}; COMMIT;",
                    claim_sql(CLAIM_SQLITE, direction, limit)
                );
                let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(&token)
                    .bind(lease_end);
                let rows = writer.transaction_in_one_trip(query, OP).await?;
                rows.iter()
                    .map(|r| claimed_from_row(r, direction, &token))
                    .collect::<Result<Vec<_>>>()
            }
            Backend::Postgres(pool) => {
                let sql = sqlx::AssertSqlSafe(claim_sql(CLAIM_POSTGRES, direction, limit));
                let mut tx = pool.begin_write().await?;
                let rows = sqlx::query(sql)
                    .bind(now)
                    .bind(&token)
                    .bind(lease_end)
                    .fetch_all(&mut *tx)
                    .await
                    .ctx(OP)?;
                tx.commit().await.ctx(OP)?;
                rows.iter()
                    .map(|r| claimed_from_row(r, direction, &token))
                    .collect::<Result<Vec<_>>>()
            }
        };
        let mut items = rows?;
        items.sort_by_key(|i| i.id);
        Ok(items)
    }

    /// Marks a claimed item delivered; it never comes back. Fails with [`Error::LeaseLost`]
    /// if the lease expired and the item was claimed again meanwhile.
    pub async fn ack(&self, item: &ClaimedItem) -> Result<()> {
        let n = on_writer!(self, conn => sqlx::query(ACK)
            .bind(item.id).bind(&item.lease_token).bind(now_millis()).bind(&[] as &[u8])
            .execute(&mut *conn).await.ctx("ack an outbox item").map(|r| r.rows_affected()))?;
        if n == 0 {
            Err(Error::LeaseLost { id: item.id })
        } else {
            Ok(())
        }
    }

    /// [`Store::ack`], and in the same database transaction (one commit): remembers which
    /// Matrix event and XMPP stanza id the delivered message became (`mapping` = `(room_id,
    /// event_id, stanza_id)`, skipped if the portal no longer exists), and claims the next item
    /// of the same queue for `lease` if one is due. A queue with a backlog is thus drained by
    /// its deliverer without a separate claim per item, and still strictly in order.
    pub async fn ack_and_claim_next(
        &self,
        item: &ClaimedItem,
        mapping: Option<(&str, &str, &str)>,
        lease: Duration,
    ) -> Result<Option<ClaimedItem>> {
        const OP: &str = "ack an outbox item";
        let now = now_millis();
        let token = format!("{:032x}", rand::random::<u128>());
        let lease_end = now.saturating_add(millis(lease));
        let next = match &self.backend {
            Backend::Sqlite { writer, .. } => {
                let (room, event, stanza) = match mapping {
                    Some((room, event, stanza)) => (Some(room), Some(event), Some(stanza)),
                    None => (None, None, None),
                };
                let query = sqlx::query(for_direction(ACK_AND_CLAIM_NEXT_SQLITE, item.direction))
                    .bind(item.id)
                    .bind(&item.lease_token)
                    .bind(now)
                    .bind(&token)
                    .bind(lease_end)
                    .bind(&item.queue_key)
                    .bind(room)
                    .bind(event)
                    .bind(stanza);
                let rows = writer.transaction_in_one_trip(query, OP).await?;
                let (mut acked, mut next) = (false, None);
                for row in &rows {
                    match row.text("step")?.as_str() {
                        "ack" => acked = true,
                        _ => next = Some(claimed_from_row(row, item.direction, &token)?),
                    }
                }
                if !acked {
                    return Err(Error::LeaseLost { id: item.id });
                }
                next
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                let n = sqlx::query(ACK)
                    .bind(item.id)
                    .bind(&item.lease_token)
                    .bind(now)
                    .bind(&[] as &[u8])
                    .execute(&mut *tx)
                    .await
                    .ctx(OP)?
                    .rows_affected();
                if n == 0 {
                    return Err(Error::LeaseLost { id: item.id });
                }
                if let Some((room_id, event_id, stanza_id)) = mapping {
                    sqlx::query(INSERT_MAPPING_IF_PORTAL)
                        .bind(room_id)
                        .bind(event_id)
                        .bind(stanza_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .ctx(OP)?;
                }
                let row = sqlx::query(for_direction(CLAIM_NEXT, item.direction))
                    .bind(&token)
                    .bind(lease_end)
                    .bind(&item.queue_key)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await
                    .ctx(OP)?;
                tx.commit().await.ctx(OP)?;
                row.map(|r| claimed_from_row(&r, item.direction, &token))
                    .transpose()?
            }
        };
        Ok(next)
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
        let row = on_writer!(self, conn => {
            let row = sqlx::query(RETRY)
                .bind(item.id).bind(&item.lease_token).bind(at)
                .bind(i64::from(self.outbox_max_attempts)).bind(error).bind(now)
                .fetch_optional(&mut *conn).await.ctx("schedule an outbox retry")?;
            row.map(|r| r.text("state")).transpose()
        })?;
        match row.as_deref() {
            None => Err(Error::LeaseLost { id: item.id }),
            Some("failed") => Ok(RetryOutcome::GaveUp),
            Some(_) => Ok(RetryOutcome::Scheduled(at)),
        }
    }

    /// Makes the items of a queue that wait for a retry due now: what they failed on is back
    /// (the user's XMPP session reconnected), so they need not sit out their backoff. Their
    /// attempts stay counted. Returns how many items were moved.
    pub async fn due_now(&self, direction: Direction, queue_key: &str) -> Result<u64> {
        Ok(on_writer!(self, conn => sqlx::query(DUE_NOW)
            .bind(direction.as_str()).bind(queue_key).bind(now_millis())
            .execute(&mut *conn).await.ctx("retry outbox items now").map(|r| r.rows_affected()))?)
    }

    /// Gives up on a claimed item now (a permanent error); it becomes failed and the queue
    /// moves on.
    pub async fn give_up(&self, item: &ClaimedItem, error: &str) -> Result<()> {
        let n = on_writer!(self, conn => sqlx::query(GIVE_UP)
            .bind(item.id).bind(&item.lease_token).bind(now_millis()).bind(error)
            .execute(&mut *conn).await.ctx("fail an outbox item").map(|r| r.rows_affected()))?;
        if n == 0 {
            Err(Error::LeaseLost { id: item.id })
        } else {
            Ok(())
        }
    }

    /// Hands every claimed item back as pending, for a bridge starting after a crash: its
    /// earlier claims died with it and need not wait for their leases to expire. Only for a
    /// store used by one bridge process (the only supported setup). Their attempts stay
    /// counted, so a redelivery knows an earlier attempt may have gone through. Returns how
    /// many were released.
    pub async fn release_claims(&self) -> Result<u64> {
        Ok(on_writer!(self, conn => sqlx::query(RELEASE_CLAIMS)
            .execute(&mut *conn).await.ctx("release claimed outbox items").map(|r| r.rows_affected()))?)
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
        let n = on_writer!(self, conn => sqlx::query(DISMISS_FAILED).bind(id)
            .execute(&mut *conn).await.ctx("dismiss a failed outbox item").map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Deletes delivered items finished before `before` (unix ms); their dedupe keys are
    /// forgotten with them. Returns how many were removed.
    pub async fn prune_delivered(&self, before: i64) -> Result<u64> {
        Ok(
            on_writer!(self, conn => sqlx::query(PRUNE_DONE).bind(before)
            .execute(&mut *conn).await.ctx("prune delivered outbox items").map(|r| r.rows_affected()))?,
        )
    }

    /// Whether an item with this dedupe key was ever recorded (and not yet pruned).
    pub async fn is_recorded(&self, direction: Direction, dedupe_key: &str) -> Result<bool> {
        on_pool!(self, pool => Ok(sqlx::query(SELECT_BY_DEDUPE).bind(direction.as_str())
            .bind(dedupe_key).fetch_optional(pool).await.ctx("look up an outbox item")?.is_some()))
    }

    /// Items of one queue not yet delivered or failed (pending or claimed).
    pub async fn queue_backlog(&self, direction: Direction, queue_key: &str) -> Result<i64> {
        on_pool!(self, pool => sqlx::query(COUNT_QUEUE_UNFINISHED).bind(direction.as_str())
            .bind(queue_key).fetch_one(pool).await.ctx("count a queue's outbox items")?.int("n"))
    }

    /// Items not yet delivered or failed (pending or claimed), e.g. for metrics.
    pub async fn outbox_backlog(&self, direction: Direction) -> Result<i64> {
        on_pool!(self, pool => sqlx::query(COUNT_UNFINISHED).bind(direction.as_str())
            .fetch_one(pool).await.ctx("count outbox items")?.int("n"))
    }
}
