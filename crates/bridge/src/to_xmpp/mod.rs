//! Matrix → XMPP: events taken from the outbox. Messages in portals go to the contact,
//! invitations and membership changes manage portals, messages to the bot are commands, and
//! ephemeral data (typing, presence) goes straight out.

mod catch_up;
mod encrypted;
mod ephemeral;
mod membership;
mod message;
mod record;
mod relations;
mod upload;

pub(crate) use record::Source;

use std::time::{Duration, Instant};

use serde_json::Value;
use store::ClaimedItem;

use crate::context::Bridge;
use crate::delivery::DeliveryEnd;

/// Why an event could not be handled now.
#[derive(Debug)]
pub(crate) enum HandleError {
    /// Try again later (the homeserver is busy, a write failed).
    Retry(String),
    /// Try again once this user's XMPP session is connected.
    NotConnected { user: String, reason: String },
    /// It will never work; tell the user.
    Fail(String),
}

/// A message that went to XMPP: `(room id, event id, stanza id)`, to remember the mapping.
pub(crate) type Sent = (String, String, String);

/// Handles one Matrix event; `Ok(Some(_))` when a message went to XMPP (written to the server).
pub(crate) async fn handle_matrix_event(
    bridge: &Bridge,
    event: &Value,
) -> Result<Option<Sent>, HandleError> {
    let inner = &bridge.inner;
    let (Some(kind), Some(sender), Some(room_id)) = (
        event["type"].as_str(),
        event["sender"].as_str(),
        event["room_id"].as_str(),
    ) else {
        return Ok(None);
    };
    if inner.ghosts.is_ghost(sender) || sender == inner.bot.as_str() {
        return Ok(None);
    }
    match kind {
        "m.room.member" => {
            membership::on_membership(bridge, event, sender, room_id).await?;
            Ok(None)
        }
        "m.room.encrypted" => {
            bridge.on_encrypted_message(sender, room_id).await;
            Ok(None)
        }
        "m.room.encryption" => {
            bridge.on_encryption_enabled(sender, room_id).await;
            Ok(None)
        }
        "m.room.message" => message::on_message(bridge, event, sender, room_id).await,
        "m.reaction" => relations::on_reaction(bridge, event, sender, room_id).await,
        "m.room.redaction" => relations::on_redaction(bridge, event, sender, room_id).await,
        _ => Ok(None),
    }
}

impl Bridge {
    /// Delivers one item to XMPP; returns the next item of its queue if the ack took one.
    pub(crate) async fn deliver_to_xmpp(&self, item: ClaimedItem) -> Option<ClaimedItem> {
        let event: Value = match serde_json::from_slice(&item.payload) {
            Ok(event) => event,
            Err(e) => {
                // Never taken for delivered: kept as failed, with the reason, for the operator.
                self.inner.metrics.failure("outbox_unreadable");
                tracing::error!(item = item.id, room = %item.queue_key, error = %e, "cannot read a Matrix event waiting for XMPP; it is kept as failed");
                self.give_up(&item, &format!("unreadable outbox item: {e}"))
                    .await;
                return None;
            }
        };
        match handle_matrix_event(self, &event).await {
            Ok(delivered) => {
                let done = Instant::now();
                let next = self.ack(&item, delivered.as_ref()).await;
                let outcome = if delivered.is_some() {
                    DeliveryEnd::Message {
                        remote: Duration::ZERO,
                        done,
                    }
                } else {
                    DeliveryEnd::Other
                };
                self.delivery_ended(&item, outcome, next.is_some());
                return next;
            }
            Err(HandleError::NotConnected { user, reason }) => {
                // Due again as soon as the session is up, not after its backoff.
                self.inner
                    .waiting_for_session
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(user)
                    .or_default()
                    .insert(item.queue_key.clone());
                self.retry_to_xmpp(&item, &reason).await;
            }
            Err(HandleError::Retry(reason)) => self.retry_to_xmpp(&item, &reason).await,
            Err(HandleError::Fail(reason)) => {
                self.inner.metrics.failure("xmpp_refused");
                self.give_up(&item, &reason).await;
                self.notice_in_room(
                    &item.queue_key,
                    &format!("⚠ Your message was not delivered: {reason}"),
                )
                .await;
            }
        }
        None
    }

    /// Schedules another attempt of an item that could not go to XMPP now, or gives it up
    /// with a notice in its room once it has waited `bridge.retry_for_secs`.
    pub(crate) async fn retry_to_xmpp(&self, item: &ClaimedItem, reason: &str) {
        tracing::info!(room = %item.queue_key, %reason, "cannot deliver to XMPP yet; will retry");
        if self.retry_later(item, reason).await {
            self.inner.metrics.failure("xmpp_gave_up");
            self.notice_in_room(
                &item.queue_key,
                &format!("⚠ Your message was not delivered: {reason}"),
            )
            .await;
        }
    }
}
