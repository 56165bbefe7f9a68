//! After a homeserver outage: the events it may never have sent (see `matrix::outage`), read
//! from the rooms' history and recorded in order before anything newer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ruma::RoomId;
use serde_json::Value;

use super::Source;
use crate::context::{Bridge, now_ms};
use crate::matrix::MatrixError;

/// How far before the gap events may have been lost: Synapse holds them in memory while a
/// transaction is in flight, and gives a transaction up to a minute.
const LOOKBACK: Duration = Duration::from_secs(120);
/// A gap is never read further back than this (a homeserver down for days).
const LONGEST: Duration = Duration::from_secs(24 * 3600);
/// Rooms whose events the homeserver sent this recently are read after any outage.
const ACTIVE: Duration = Duration::from_secs(600);
/// Events read per room (newest first).
const PAGE: u32 = 100;
/// Rooms read at once.
const CONCURRENT_ROOMS: usize = 4;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Bridge {
    /// Records a transaction's events, after catching up an open outage (so the events the
    /// homeserver lost come first). A failed catch-up does not hold the transaction back: it is
    /// retried by the watcher, and what it finds then is recorded late rather than never.
    pub(crate) async fn record_transaction(
        &self,
        events: impl Iterator<Item = Value>,
        arrived: Instant,
    ) -> Result<usize, store::Error> {
        let outages = self.inner.matrix.outages();
        outages.note_transaction();
        let _recording = outages.recording.lock().await;
        if let Err(e) = self.catch_up_locked().await {
            tracing::warn!(error = %e, "cannot read what the homeserver may not have sent yet; recording this transaction first, the catch-up is retried");
        }
        self.record_from_homeserver(events, arrived, Source::Transaction)
            .await
    }

    /// Catches up an open outage, if any (see [`Self::catch_up_locked`]).
    pub(crate) async fn catch_up_from_homeserver(&self) -> Result<(), MatrixError> {
        let outages = self.inner.matrix.outages();
        if outages.open().is_none() {
            return Ok(());
        }
        let _recording = outages.recording.lock().await;
        self.catch_up_locked().await
    }

    /// Reads the history of the portals (every one after the homeserver was unreachable, the
    /// recently active ones after a closed connection) from shortly before the gap, and records
    /// the events it never got, oldest first. The caller holds `recording`. An error (the
    /// homeserver unreachable, the store failing) leaves the gap open; a room that cannot be
    /// read is skipped with a warning.
    async fn catch_up_locked(&self) -> Result<(), MatrixError> {
        let outages = self.inner.matrix.outages();
        let Some(gap) = outages.open() else {
            return Ok(());
        };
        let since = (gap.since_ms - millis(LOOKBACK)).max(now_ms() - millis(LONGEST));
        let rooms = self.rooms_to_catch_up(gap.every_portal).await?;
        let count = rooms.len();
        let started = Instant::now();
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_ROOMS));
        let mut reads = tokio::task::JoinSet::new();
        for room in rooms {
            let (this, slots) = (self.clone(), slots.clone());
            reads.spawn(async move {
                let _slot = slots.acquire_owned().await;
                this.catch_up_room(&room, since).await
            });
        }
        let mut recovered = 0;
        let mut failed = None;
        while let Some(done) = reads.join_next().await {
            match done {
                Ok(Ok(n)) => recovered += n,
                Ok(Err(e)) => failed = Some(e),
                Err(e) => {
                    failed = Some(MatrixError::Invalid {
                        what: "a room's catch-up",
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.inner.metrics.catch_up(recovered);
        if recovered > 0 {
            tracing::warn!(
                count = recovered,
                rooms = count,
                "recorded messages the homeserver had not sent (a Synapse restart loses what it has not yet sent to appservices)"
            );
        }
        if let Some(e) = failed {
            return Err(e);
        }
        outages.close(&gap);
        tracing::debug!(rooms = count, elapsed = ?started.elapsed(), "caught up after signs of a homeserver outage");
        Ok(())
    }

    /// The rooms to read: the recently active ones, and every portal when asked.
    async fn rooms_to_catch_up(&self, every_portal: bool) -> Result<BTreeSet<String>, MatrixError> {
        let mut rooms: BTreeSet<String> = {
            let mut active = self
                .inner
                .matrix_activity
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            active.retain(|_, at| at.elapsed() < ACTIVE);
            active.keys().cloned().collect()
        };
        if every_portal {
            let store = &self.inner.store;
            for user in store
                .linked_users()
                .await
                .map_err(crate::portals::store_err)?
            {
                let portals = store
                    .portals_of_user(&user.matrix_user)
                    .await
                    .map_err(crate::portals::store_err)?;
                rooms.extend(portals.into_iter().map(|p| p.room_id));
            }
        }
        Ok(rooms)
    }

    /// Records the events of `room` since `since_ms` that were never recorded; returns how many.
    /// Only what the bridge could have been sent: events after its reader joined, not redacted,
    /// and none it refused (a full portal queue) and told the user about.
    async fn catch_up_room(&self, room: &str, since_ms: i64) -> Result<usize, MatrixError> {
        let Ok(room_id) = RoomId::parse(room) else {
            return Ok(0);
        };
        let reader = self.ghost_or_bot_in(room).await;
        let events = match self
            .inner
            .matrix
            .recent_events(&reader, &room_id, PAGE)
            .await
        {
            Ok(events) => events,
            Err(e @ MatrixError::Unreachable { .. }) => return Err(e),
            Err(e) => {
                // Left, forgotten, never joined, or broken on the homeserver's side: this room
                // cannot be read now; the others still are.
                tracing::warn!(%room, error = %e, "cannot read a room's history after a homeserver outage; skipped");
                return Ok(0);
            }
        };
        if events.len() == PAGE as usize
            && events
                .iter()
                .all(|e| e["origin_server_ts"].as_i64() >= Some(since_ms))
        {
            tracing::warn!(%room, "more than {PAGE} events around a homeserver outage; only the last {PAGE} are checked");
        }
        let refused = self
            .inner
            .refused_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Newest first from the homeserver, back to the reader's own join: before it, the
        // room was not the bridge's (a room becomes a portal when the user invites the ghost).
        let mut recent: Vec<Value> = events
            .into_iter()
            .take_while(|e| {
                !(e["type"] == "m.room.member"
                    && e["state_key"] == reader.as_str()
                    && e["content"]["membership"] == "join")
            })
            .filter(|e| e["origin_server_ts"].as_i64() >= Some(since_ms))
            .filter(|e| e["unsigned"]["redacted_because"].is_null())
            .filter(|e| {
                e["event_id"]
                    .as_str()
                    .is_some_and(|id| !refused.contains(id))
            })
            .collect();
        recent.reverse();
        self.record_from_homeserver(recent.into_iter(), Instant::now(), Source::CatchUp)
            .await
            .map_err(crate::portals::store_err)
    }
}
