//! After a homeserver outage: the events it may never have sent (see `matrix::outage`), read
//! from the rooms' history and recorded in order before anything newer.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ruma::RoomId;
use serde_json::Value;

use super::Source;
use crate::context::Bridge;
use crate::matrix::MatrixError;

/// How far before the first sign of an outage events may have been lost: Synapse holds them in
/// memory while a transaction is in flight, and gives a transaction up to a minute.
const LOOKBACK: Duration = Duration::from_secs(120);
/// Rooms whose events the homeserver sent this recently are read after any outage.
const ACTIVE: Duration = Duration::from_secs(600);
/// Events read per room (newest first).
const PAGE: u32 = 100;

impl Bridge {
    /// Catches up an open outage, if any: reads the history of the portals (every one after the
    /// homeserver was unreachable, the recently active ones after a closed connection) from
    /// shortly before the outage, and records the events it never got, oldest first. Runs once
    /// at a time; a transaction waits for it. An error leaves the outage open.
    pub(crate) async fn catch_up_from_homeserver(&self) -> Result<(), MatrixError> {
        let outages = self.inner.matrix.outages();
        if outages.open().is_none() {
            return Ok(());
        }
        let _running = outages.catching_up.lock().await;
        let Some(gap) = outages.open() else {
            return Ok(());
        };
        let since = gap.since_ms - i64::try_from(LOOKBACK.as_millis()).unwrap_or(0);
        let rooms = self.rooms_to_catch_up(gap.every_portal).await?;
        let started = Instant::now();
        let mut recovered = 0;
        for room in &rooms {
            recovered += self.catch_up_room(room, since).await?;
        }
        outages.close(&gap);
        self.inner.metrics.catch_up(recovered);
        if recovered > 0 {
            tracing::warn!(
                count = recovered,
                rooms = rooms.len(),
                "recorded messages the homeserver had not sent before its outage (a Synapse restart loses what it has not yet sent to appservices)"
            );
        } else {
            tracing::debug!(rooms = rooms.len(), elapsed = ?started.elapsed(), "nothing missed during the homeserver outage");
        }
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
            Err(e) if !e.is_transient() => {
                // Left, forgotten, or never joined: nothing of ours to catch up there.
                tracing::debug!(%room, error = %e, "cannot read a room's history after an outage");
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let in_window = |e: &Value| {
            e["origin_server_ts"]
                .as_i64()
                .is_some_and(|ts| ts >= since_ms)
        };
        if events.len() == PAGE as usize && events.iter().all(in_window) {
            tracing::warn!(%room, "more than {PAGE} events around a homeserver outage; only the last {PAGE} are checked");
        }
        // Newest first from the homeserver: recorded oldest first, as they were sent.
        let mut recent: Vec<Value> = events.into_iter().filter(in_window).collect();
        recent.reverse();
        self.record_from_homeserver(recent.into_iter(), Instant::now(), Source::CatchUp)
            .await
            .map_err(crate::portals::store_err)
    }
}
