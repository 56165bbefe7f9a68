//! Where a bridged message's time goes, for the latency metrics.
//!
//! A message's end-to-end time (received by the bridge → accepted by the other side) has three
//! parts, reported separately so a self-hoster can tell which one is slow:
//! - **queue**: waiting behind the earlier messages of the same portal, which are delivered one
//!   at a time to keep their order; set by how fast the other side accepts them;
//! - **remote**: the other side's own time answering our requests (the homeserver's request
//!   time for XMPP → Matrix; nothing for Matrix → XMPP, which ends when the stanza is written);
//! - **bridge**: the rest — recording, scheduling, mapping, writing: the bridge's own cost.
//!
//! Timestamps are in-memory [`Instant`]s keyed by the outbox item's dedupe key; a message
//! received before a restart has no receive time and is left out of the histograms.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use store::Direction;

/// More entries than this means items are not being delivered; the timings are dropped rather
/// than growing without bound (they only feed metrics).
const MAX_TRACKED: usize = 100_000;

/// One delivered message's time, split up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breakdown {
    /// Received → accepted by the other side.
    pub total: Duration,
    /// Waiting behind earlier messages of the same portal.
    pub queue: Duration,
    /// The other side's request time.
    pub remote: Duration,
    /// The bridge's own share: `total - queue - remote`.
    pub bridge: Duration,
}

impl Breakdown {
    /// Splits `received → done` given when the portal's previous message was done
    /// (`queue_free`) and the time spent in requests to the other side.
    pub fn new(
        received: Instant,
        queue_free: Option<Instant>,
        remote: Duration,
        done: Instant,
    ) -> Self {
        let total = done.saturating_duration_since(received);
        let queue = queue_free
            .map_or(Duration::ZERO, |free| {
                free.saturating_duration_since(received)
            })
            .min(total);
        let remote = remote.min(total - queue);
        Self {
            total,
            queue,
            remote,
            bridge: total - queue - remote,
        }
    }
}

/// Receive times of messages in flight and when each portal's last delivery finished.
#[derive(Debug, Default)]
pub(crate) struct Timings {
    received: Mutex<HashMap<(Direction, String), Instant>>,
    queue_free: Mutex<HashMap<(Direction, String), Instant>>,
}

impl Timings {
    /// A message that will be delivered under `key` (its outbox dedupe key) arrived at `at`.
    pub(crate) fn received(&self, direction: Direction, key: &str, at: Instant) {
        let mut map = lock(&self.received);
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
        map.entry((direction, key.to_owned())).or_insert(at);
    }

    /// The message under `key` left the bridge (delivered or given up): its receive time, if
    /// known.
    pub(crate) fn take_received(&self, direction: Direction, key: &str) -> Option<Instant> {
        lock(&self.received).remove(&(direction, key.to_owned()))
    }

    /// When the previous message of `queue` was done, if it was in this run.
    pub(crate) fn queue_free(&self, direction: Direction, queue: &str) -> Option<Instant> {
        lock(&self.queue_free)
            .get(&(direction, queue.to_owned()))
            .copied()
    }

    /// A message of `queue` is done at `at`; the next one may go.
    pub(crate) fn queue_done(&self, direction: Direction, queue: &str, at: Instant) {
        let mut map = lock(&self.queue_free);
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
        map.insert((direction, queue.to_owned()), at);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_message_that_never_waited_is_all_bridge_and_remote() {
        let t0 = Instant::now();
        let b = Breakdown::new(t0, None, 30 * MS, t0 + 32 * MS);
        assert_eq!(
            (b.total, b.queue, b.remote, b.bridge),
            (32 * MS, Duration::ZERO, 30 * MS, 2 * MS)
        );
        // The previous message was done before this one arrived: no queue either.
        let b = Breakdown::new(t0, Some(t0 - 5 * MS), 30 * MS, t0 + 32 * MS);
        assert_eq!(b.queue, Duration::ZERO);
    }

    #[test]
    fn waiting_behind_the_portal_is_queue_not_bridge() {
        let t0 = Instant::now();
        // Arrived at t0, the previous message finished at t0+900ms, this one took 31 ms more,
        // 30 of them in the homeserver.
        let b = Breakdown::new(t0, Some(t0 + 900 * MS), 30 * MS, t0 + 931 * MS);
        assert_eq!((b.queue, b.remote, b.bridge), (900 * MS, 30 * MS, MS));
        assert_eq!(b.total, b.queue + b.remote + b.bridge);
    }

    #[test]
    fn parts_never_exceed_the_total() {
        let t0 = Instant::now();
        let b = Breakdown::new(t0, Some(t0 + 50 * MS), 80 * MS, t0 + 60 * MS);
        assert_eq!(
            (b.total, b.queue, b.remote, b.bridge),
            (60 * MS, 50 * MS, 10 * MS, Duration::ZERO)
        );
    }

    #[test]
    fn receive_times_are_taken_once() {
        let t = Timings::default();
        let at = Instant::now();
        t.received(Direction::ToXmpp, "$e", at);
        t.received(Direction::ToXmpp, "$e", at + MS); // a replay keeps the first time
        assert_eq!(t.take_received(Direction::ToMatrix, "$e"), None);
        assert_eq!(t.take_received(Direction::ToXmpp, "$e"), Some(at));
        assert_eq!(t.take_received(Direction::ToXmpp, "$e"), None);
        assert_eq!(t.queue_free(Direction::ToXmpp, "!r"), None);
        t.queue_done(Direction::ToXmpp, "!r", at);
        assert_eq!(t.queue_free(Direction::ToXmpp, "!r"), Some(at));
    }
}
