//! Recording what the homeserver sends (a transaction, or a catch-up after an outage) in the
//! outbox, once per event id, before it is acknowledged.

use std::time::Instant;

use serde_json::Value;
use store::{Direction, Queued};

use crate::context::Bridge;
use crate::delivery::LEASE;

/// Where events to record come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A transaction the homeserver pushed.
    Transaction,
    /// A portal's history read after an outage: mostly events recorded already, so one over
    /// the portal's cap is skipped without telling the room again.
    CatchUp,
}

impl Bridge {
    /// Records the events worth acting on, in the order given; returns how many were new.
    ///
    /// Each event is recorded under its event id, so one sent again (Synapse retries a
    /// transaction until it gets a 200, reuses ids after its own restart, and a catch-up reads
    /// events already sent) is recorded once. An error means the store failed: nothing may be
    /// acknowledged. An event at the head of an idle portal comes back claimed and is delivered
    /// at once.
    pub(crate) async fn record_from_homeserver(
        &self,
        events: impl Iterator<Item = Value>,
        arrived: Instant,
        source: Source,
    ) -> Result<usize, store::Error> {
        // Only real users' messages and memberships are recorded; most transactions carry just
        // the echoes of our own ghosts, and those need no database work at all.
        let events: Vec<(String, String, Vec<u8>, bool)> = events
            .inspect(|event| {
                if source == Source::Transaction {
                    self.note_matrix_activity(event);
                }
            })
            .filter(|event| should_record(self, event))
            .filter_map(|event| {
                let room = event["room_id"].as_str()?.to_owned();
                let event_id = event["event_id"].as_str()?.to_owned();
                let message = event["type"] == "m.room.message";
                Some((room, event_id, serde_json::to_vec(&event).ok()?, message))
            })
            .collect();
        let mut new = 0;
        for (room, event_id, bytes, message) in &events {
            // Only messages count against the cap: a leave or an encryption change must go
            // through.
            if *message && self.portal_full(room, event_id).await? {
                if source == Source::Transaction {
                    self.remember_refused(event_id);
                    refuse_over_cap(self, room);
                }
                continue;
            }
            let queued = self
                .inner
                .store
                .enqueue_and_claim(Direction::ToXmpp, room, bytes, Some(event_id), LEASE)
                .await?;
            if matches!(queued, Queued::Duplicate(_)) {
                continue;
            }
            new += 1;
            // Noted before delivery starts, so a fast delivery finds it.
            self.note_received(Direction::ToXmpp, event_id, arrived);
            self.mark_backlogged(room, matches!(queued, Queued::Waiting(_)));
            match queued {
                Queued::Claimed(item) => self.dispatch(item),
                _ => self.queue_waiting(Direction::ToXmpp, room),
            }
        }
        Ok(new)
    }

    /// Remembers an event refused over its portal's cap (the user was told to send it again),
    /// so a catch-up does not take it after all. Kept in memory, for the last 10,000.
    fn remember_refused(&self, event_id: &str) {
        let mut refused = self
            .inner
            .refused_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if refused.len() >= 10_000 {
            refused.clear();
        }
        refused.insert(event_id.to_owned());
    }

    /// Remembers that the homeserver sent an event of this room now (read after an outage).
    fn note_matrix_activity(&self, event: &Value) {
        if let Some(room) = event["room_id"].as_str() {
            let mut rooms = self
                .inner
                .matrix_activity
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match rooms.get_mut(room) {
                Some(at) => *at = Instant::now(),
                None => {
                    rooms.insert(room.to_owned(), Instant::now());
                }
            }
        }
    }
}

/// Tells the room that a message was not taken: its portal has too many waiting already.
fn refuse_over_cap(bridge: &Bridge, room: &str) {
    let cap = bridge.inner.config.bridge.max_queued_per_portal;
    tracing::warn!(
        room,
        cap,
        "a portal's queue to XMPP is full; refused a message"
    );
    bridge.inner.metrics.failure("portal_queue_full");
    let (bridge, room) = (bridge.clone(), room.to_owned());
    tokio::spawn(async move {
        bridge
            .notice_in_room(
                &room,
                &format!(
                    "⚠ Not sent: {cap} messages in this room are already waiting for XMPP (your \
                     XMPP session is offline). Send it again once they have gone out."
                ),
            )
            .await;
    });
}

/// Events worth recording: from real users (not our own ghosts' echoes), of the kinds the
/// bridge acts on.
fn should_record(bridge: &Bridge, event: &Value) -> bool {
    let sender = event["sender"].as_str().unwrap_or("");
    if bridge.inner.ghosts.is_ghost(sender) || sender == bridge.inner.bot.as_str() {
        return false;
    }
    // Posted by the bridge itself as the user (double puppeting): already on the XMPP side.
    if event["content"][crate::to_matrix::DOUBLE_PUPPET_SOURCE]
        == crate::to_matrix::DOUBLE_PUPPET_NAME
    {
        return false;
    }
    // Someone the permissions do not allow gets nothing recorded (they could fill the outbox),
    // except an invite: it is refused, without the bot or a ghost joining.
    let allowed = bridge.inner.config.bridge.level(sender).is_some();
    match event["type"].as_str() {
        Some(
            "m.room.message" | "m.room.encrypted" | "m.room.encryption" | "m.reaction"
            | "m.room.redaction",
        ) => allowed,
        Some("m.room.member") => allowed || event["content"]["membership"] == "invite",
        _ => false,
    }
}
