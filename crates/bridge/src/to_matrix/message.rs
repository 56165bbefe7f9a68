//! A contact's message: recorded in the outbox as it arrives, then sent into the portal as the
//! contact's ghost, idempotently.

use std::time::{Duration, Instant};

use store::{Direction, Queued};
use xmpp_core::Jid;
use xmpp_core::stanza::{Message, MessageType};

use crate::context::{Bridge, short_hash};
use crate::delivery::LEASE;
use crate::mapping;
use crate::payload::ToMatrix;

impl Bridge {
    /// `received` (Unix ms) and `arrived` are when the bridge read the stanza.
    pub(crate) async fn on_xmpp_message(
        &self,
        account: &str,
        m: Message,
        received: i64,
        arrived: Instant,
    ) {
        let Some(from) = m.from.as_ref().map(Jid::to_bare) else {
            return;
        };
        let contact = from.to_string();
        match m.kind {
            MessageType::Error => {
                let reason = m
                    .error
                    .as_ref()
                    .map_or_else(|| "unknown error".to_owned(), ToString::to_string);
                self.inner.metrics.failure("xmpp_error_reply");
                let payload = ToMatrix::notice(
                    account,
                    &contact,
                    format!("⚠ Your message was not delivered: {reason}"),
                );
                self.enqueue_to_matrix(account, &contact, &payload, None, arrived)
                    .await;
                return;
            }
            MessageType::Groupchat | MessageType::Headline => {
                tracing::debug!(user = %account, kind = ?m.kind, "ignoring a non-chat message");
                return;
            }
            MessageType::Chat | MessageType::Normal => {}
        }
        let body = m.body.filter(|b| !b.is_empty());
        let Some(body) = body else {
            // A chat state alone (XEP-0085): the ghost's typing, sent only when it changes.
            if let Some(state) = m.chat_state {
                self.set_ghost_typing(account, &from, mapping::chat_state_is_typing(state))
                    .await;
            }
            return;
        };
        // Recorded before anything else is done with it: the store is the only place a
        // received stanza lives. Its delivery ends the ghost's typing (XEP-0085 §5.3).
        let ts = m.delay.as_ref().map(xmpp_core::stanza::Delay::unix_millis);
        // With the body's hash: a resend (same id, same text) is caught, while a client that
        // reuses ids (RFC 6120 only says SHOULD be unique) loses no different message.
        let dedupe = match &m.id {
            Some(id) => format!("{account}|{contact}|{id}|{}", short_hash(&body)),
            None => format!(
                "{account}|{contact}|{}|{}",
                short_hash(&body),
                ts.unwrap_or(received)
            ),
        };
        let payload = ToMatrix::message(account, &contact, body, ts, m.id, received);
        self.enqueue_to_matrix(account, &contact, &payload, Some(&dedupe), arrived)
            .await;
    }

    /// Records a stanza for delivery to Matrix, retrying until the store has it, and starts
    /// its delivery at once if its portal is idle. `arrived` is when the stanza was received.
    pub(crate) async fn enqueue_to_matrix(
        &self,
        account: &str,
        contact: &str,
        payload: &ToMatrix,
        dedupe: Option<&str>,
        arrived: Instant,
    ) {
        let queue = format!("{account}|{contact}");
        let bytes = payload.to_bytes();
        // The store is the only place a received stanza lives: retry until it is recorded.
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .inner
                .store
                .enqueue_and_claim(Direction::ToMatrix, &queue, &bytes, dedupe, LEASE)
                .await
            {
                Ok(queued @ (Queued::Claimed(_) | Queued::Waiting(_))) => {
                    // Noted before delivery starts, so a fast delivery finds it.
                    if let Some(key) = dedupe {
                        self.note_received(Direction::ToMatrix, key, arrived);
                    }
                    match queued {
                        Queued::Claimed(item) => self.dispatch(item),
                        _ => self.queue_waiting(Direction::ToMatrix, &queue),
                    }
                    return;
                }
                Ok(Queued::Duplicate(_)) => {
                    tracing::debug!(user = %account, contact, "a stanza we already have; not bridged twice");
                    return;
                }
                Err(e) => {
                    tracing::error!(user = %account, error = %e, "cannot record an incoming message; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
