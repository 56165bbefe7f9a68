//! The outbox delivery loops, both directions: claim, deliver, ack (taking the next item of the
//! queue), retry with backoff, wake-ups, latency bookkeeping and pruning.

use std::time::{Duration, Instant};

use store::{ClaimedItem, Direction};
use tokio::sync::Notify;

use crate::context::{Bridge, now_ms};

/// How long a claimed outbox item is ours before another worker may take it over.
pub(crate) const LEASE: Duration = Duration::from_secs(120);
/// How often an idle delivery loop looks at the outbox anyway.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long delivered outbox items are kept: their dedupe keys stop a stanza or event that
/// comes again (a server resending after a reconnect) from being bridged twice.
const OUTBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a delivery attempt ended, for [`Bridge::delivery_ended`].
pub(crate) enum DeliveryEnd {
    /// A message reached the other side at `done`, `remote` of it spent waiting for that side.
    Message { remote: Duration, done: Instant },
    /// Something else was delivered, or the item was given up: the queue moves on.
    Other,
    /// The item will be tried again later: the queue stays blocked.
    Retry,
}

impl Bridge {
    /// Whether `room`'s queue to XMPP is at `bridge.max_queued_per_portal`. Counted only for
    /// portals whose last event had to wait: an idle portal costs nothing.
    /// An event already recorded (a transaction sent again) is never refused.
    pub(crate) async fn portal_full(
        &self,
        room: &str,
        event_id: &str,
    ) -> Result<bool, store::Error> {
        if !self
            .inner
            .backlogged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(room)
        {
            return Ok(false);
        }
        let waiting = self
            .inner
            .store
            .queue_backlog(Direction::ToXmpp, room)
            .await?;
        let cap = i64::try_from(self.inner.config.bridge.max_queued_per_portal).unwrap_or(i64::MAX);
        if waiting < cap {
            return Ok(false);
        }
        Ok(!self
            .inner
            .store
            .is_recorded(Direction::ToXmpp, event_id)
            .await?)
    }

    /// Notes whether `room`'s last recorded event queued behind others.
    pub(crate) fn mark_backlogged(&self, room: &str, waiting: bool) {
        let mut set = self
            .inner
            .backlogged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if waiting {
            set.insert(room.to_owned());
        } else {
            set.remove(room);
        }
    }

    /// After a failed attempt that may work later: schedules the next one (capped backoff) for
    /// as long as the configured `retry_for_secs` since the item was recorded, then gives it up.
    /// Returns whether it gave up (the caller tells the user).
    pub(crate) async fn retry_later(&self, item: &ClaimedItem, reason: &str) -> bool {
        let config = &self.inner.config.bridge;
        let retry_for =
            i64::try_from(config.retry_for_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if now_ms().saturating_sub(item.created_at) > retry_for {
            tracing::error!(queue = %item.queue_key, %reason, "giving up a message after retrying it for bridge.retry_for_secs");
            self.give_up(item, reason).await;
            return true;
        }
        // `attempts` counts this one: the first retry waits 2 s.
        let delay = retry_delay(
            item.attempts - 1,
            Duration::from_secs(config.retry_max_delay_secs),
        );
        self.schedule_retry(item, reason, delay).await
    }

    /// Tries an item again at once (what it failed on was mended).
    pub(crate) async fn retry_now(&self, item: &ClaimedItem, reason: &str) {
        self.schedule_retry(item, reason, Duration::ZERO).await;
    }

    async fn schedule_retry(&self, item: &ClaimedItem, reason: &str, delay: Duration) -> bool {
        self.inner.metrics.failure(match item.direction {
            Direction::ToMatrix => "matrix_retry",
            Direction::ToXmpp => "xmpp_retry",
        });
        match self.inner.store.retry(item, reason, delay).await {
            Ok(store::RetryOutcome::Scheduled(_)) => {
                self.wake_after(item.direction, delay);
                self.delivery_ended(item, DeliveryEnd::Retry, false);
                false
            }
            Ok(store::RetryOutcome::GaveUp) => {
                self.delivery_ended(item, DeliveryEnd::Other, false);
                true
            }
            Err(e) => {
                // The item stays claimed until its lease runs out; then it is handed out again.
                tracing::error!(queue = %item.queue_key, error = %e, "cannot schedule a retry; the item comes back when its lease expires");
                self.delivery_ended(item, DeliveryEnd::Retry, false);
                false
            }
        }
    }

    /// Marks an item failed for good (kept in the outbox with its reason); its queue moves on.
    pub(crate) async fn give_up(&self, item: &ClaimedItem, reason: &str) {
        if let Err(e) = self.inner.store.give_up(item, reason).await {
            // Its lease runs out and it is tried (and given up) again.
            tracing::error!(queue = %item.queue_key, error = %e, "cannot mark an item failed; it comes back when its lease expires");
            self.delivery_ended(item, DeliveryEnd::Retry, false);
            return;
        }
        self.delivery_ended(item, DeliveryEnd::Other, false);
    }

    /// Claims outbox items of one direction and delivers them, concurrently across queues. The
    /// store hands out only a queue's head, never an item behind one in flight, so each portal
    /// stays in order; the loop claims again as soon as any delivery ends, so a slow portal
    /// never holds up the others.
    pub(crate) async fn deliver_forever(self, direction: Direction) {
        // Claims always ask for the same number of items: the limit is part of the statement's
        // text, so one value keeps one prepared statement. Up to 2×BATCH-1 deliveries may be
        // in flight.
        const BATCH: u32 = 32;
        let wake = self.wake_signal(direction);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if tasks.len() < BATCH as usize {
                match self.inner.store.claim(direction, BATCH, LEASE).await {
                    Ok(items) => {
                        for item in items {
                            let this = self.clone();
                            tasks.spawn(async move { this.deliver(item).await });
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the outbox; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            tokio::select! {
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = wake.notified() => {}
                // Every way an item becomes due wakes the loop (recorded, a queue freed, a
                // retry's time come, a session up); this only catches an expired lease.
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// Delivers an item, then each next item of its queue that the store hands over with the
    /// ack: a portal with a backlog is drained by one task, in order, without separate claims.
    pub(crate) async fn deliver(&self, mut item: ClaimedItem) {
        loop {
            let next = match item.direction {
                Direction::ToMatrix => self.deliver_to_matrix(item).await,
                Direction::ToXmpp => self.deliver_to_xmpp(item).await,
            };
            match next {
                Some(next) => item = next,
                None => return,
            }
        }
    }

    /// Acks a delivered item (with its message mapping) and takes the next one of its queue.
    pub(crate) async fn ack(
        &self,
        item: &ClaimedItem,
        mapping: Option<&(String, String, String)>,
    ) -> Option<ClaimedItem> {
        let mapping =
            mapping.map(|(room, event, stanza)| (room.as_str(), event.as_str(), stanza.as_str()));
        match self
            .inner
            .store
            .ack_and_claim_next(item, mapping, LEASE)
            .await
        {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "could not acknowledge a delivered item");
                None
            }
        }
    }

    /// Bookkeeping once an item left the bridge: its portal may go on (the delivery loop is
    /// woken for an item waiting behind it, unless `chained` — already taken with the ack), and
    /// a message delivered on its first attempt feeds the latency metrics.
    pub(crate) fn delivery_ended(&self, item: &ClaimedItem, outcome: DeliveryEnd, chained: bool) {
        let timings = &self.inner.timings;
        let received = item
            .dedupe_key
            .as_deref()
            .and_then(|key| timings.take_received(item.direction, key));
        let now = Instant::now();
        let queue_free = timings.queue_free(item.direction, &item.queue_key);
        if !matches!(outcome, DeliveryEnd::Retry) {
            timings.queue_done(item.direction, &item.queue_key, now);
            let next_waits = self
                .inner
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(item.direction, item.queue_key.clone()));
            if next_waits && !chained {
                self.wake(item.direction);
            }
        }
        if let DeliveryEnd::Message { remote, done } = outcome {
            let timing = received
                .filter(|_| item.attempts == 1)
                .map(|r| crate::latency::Breakdown::new(r, queue_free, remote, done));
            let label = match item.direction {
                Direction::ToMatrix => "xmpp_to_matrix",
                Direction::ToXmpp => "matrix_to_xmpp",
            };
            self.inner.metrics.bridged(label, timing);
        }
    }

    /// Remembers when a message to be delivered under `key` (its outbox dedupe key) arrived,
    /// for the latency metrics.
    pub(crate) fn note_received(&self, direction: Direction, key: &str, at: Instant) {
        self.inner.timings.received(direction, key, at);
    }

    /// An item was recorded behind another of its queue. The one in flight takes it with its
    /// ack, or wakes the delivery loop when it ends; a head waiting for a retry is picked up by
    /// the loop when due.
    pub(crate) fn queue_waiting(&self, direction: Direction, queue: &str) {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((direction, queue.to_owned()));
    }

    /// The signal that wakes the delivery loop of `direction`.
    pub(crate) fn wake_signal(&self, direction: Direction) -> &Notify {
        match direction {
            Direction::ToMatrix => &self.inner.wake_to_matrix,
            Direction::ToXmpp => &self.inner.wake_to_xmpp,
        }
    }

    pub(crate) fn wake(&self, direction: Direction) {
        self.wake_signal(direction).notify_one();
    }

    /// Wakes the delivery loop of `direction` once `delay` has passed (a retry falls due).
    pub(crate) fn wake_after(&self, direction: Direction, delay: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            this.wake(direction);
        });
    }

    /// Delivers an item claimed outside the delivery loop (recorded at the head of an idle
    /// queue), in its own task.
    pub(crate) fn dispatch(&self, item: ClaimedItem) {
        let this = self.clone();
        tokio::spawn(async move { this.deliver(item).await });
    }

    /// Forgets delivered outbox items once they are older than [`OUTBOX_RETENTION`], hourly,
    /// so the database does not grow with every message ever bridged.
    pub(crate) async fn prune_outbox_forever(self) {
        loop {
            let before = now_ms()
                .saturating_sub(i64::try_from(OUTBOX_RETENTION.as_millis()).unwrap_or(i64::MAX));
            match self.inner.store.prune_delivered(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "forgot delivered messages older than a week"),
                Err(e) => tracing::warn!(error = %e, "could not prune delivered messages"),
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

/// Exponential retry delay: 2 s, 4 s, … up to `max`.
pub(crate) fn retry_delay(attempts: i64, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(2u64 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_its_cap() {
        let cap = Duration::from_secs(300);
        assert_eq!(retry_delay(0, cap), Duration::from_secs(2));
        assert_eq!(retry_delay(3, cap), Duration::from_secs(16));
        assert_eq!(retry_delay(10, cap), cap);
        assert_eq!(retry_delay(i64::MAX, cap), cap);
        assert_eq!(
            retry_delay(5, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
