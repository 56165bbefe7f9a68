//! A contact's message: recorded in the outbox as it arrives, then sent into the portal as the
//! contact's ghost, idempotently.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store::{ClaimedItem, Direction, Queued};
use xmpp_core::Jid;
use xmpp_core::stanza::{ChatState, Message, MessageType};

use crate::context::{Bridge, now_ms, short_hash};
use crate::delivery::{DeliveryEnd, LEASE, retry_delay};
use crate::mapping;
use crate::matrix::MatrixError;

/// Content key marking the events the bridge sent, with the transaction id they were sent
/// with; lets a retry find out whether an earlier attempt went through.
const TXN_MARKER: &str = "net.messenger-bridge.txn";
/// Matrix caps events at 64 KiB; keep message bodies well inside.
const MAX_MATRIX_BODY: usize = 48 * 1024;

impl Bridge {
    pub(crate) async fn on_xmpp_message(&self, account: &str, m: Message) {
        let arrived = Instant::now();
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
                let payload = json!({"kind": "notice", "user": account, "contact": contact,
                    "text": format!("⚠ Your message was not delivered: {reason}")});
                self.enqueue_to_matrix(account, &contact, &payload, None, Instant::now())
                    .await;
                return;
            }
            MessageType::Groupchat | MessageType::Headline => {
                tracing::debug!(user = %account, kind = ?m.kind, "ignoring a non-chat message");
                return;
            }
            MessageType::Chat | MessageType::Normal => {}
        }
        if let Some(state) = m.chat_state {
            let typing = m.body.is_none() && mapping::chat_state_is_typing(state);
            if m.body.is_none() || state != ChatState::Composing {
                self.set_ghost_typing(account, &from, typing).await;
            }
        }
        let Some(body) = m.body.filter(|b| !b.is_empty()) else {
            return;
        };
        let received = now_ms();
        let ts = m.delay.as_ref().map(xmpp_core::stanza::Delay::unix_millis);
        let dedupe = match &m.id {
            Some(id) => format!("{account}|{contact}|{id}"),
            None => format!(
                "{account}|{contact}|{}|{}",
                short_hash(&body),
                ts.unwrap_or(received)
            ),
        };
        let payload = json!({"kind": "message", "user": account, "contact": contact, "body": body,
            "ts": ts, "stanza_id": m.id, "received": received});
        self.enqueue_to_matrix(account, &contact, &payload, Some(&dedupe), arrived)
            .await;
    }

    /// Records a stanza for delivery to Matrix, retrying until the store has it, and starts
    /// its delivery at once if its portal is idle. `arrived` is when the stanza was received.
    pub(crate) async fn enqueue_to_matrix(
        &self,
        account: &str,
        contact: &str,
        payload: &Value,
        dedupe: Option<&str>,
        arrived: Instant,
    ) {
        let queue = format!("{account}|{contact}");
        let bytes = serde_json::to_vec(payload).unwrap_or_default();
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

    /// Delivers one item to Matrix; returns the next item of its queue if the ack took one.
    pub(crate) async fn deliver_to_matrix(&self, item: ClaimedItem) -> Option<ClaimedItem> {
        let payload: Value = serde_json::from_slice(&item.payload).unwrap_or(Value::Null);
        let mut remote = Duration::ZERO;
        let result = self.send_to_matrix(&item, &payload, &mut remote).await;
        let store = &self.inner.store;
        match result {
            Ok(mapping) => {
                let done = Instant::now();
                let next = self.ack(&item, mapping.as_ref()).await;
                let outcome = if payload["kind"] == "message" {
                    DeliveryEnd::Message { remote, done }
                } else {
                    DeliveryEnd::Other
                };
                self.delivery_ended(&item, outcome, next.is_some());
                return next;
            }
            Err(e) if e.is_transient() => {
                let delay = retry_delay(item.attempts);
                tracing::warn!(queue = %item.queue_key, error = %e, retry_in = ?delay, "delivery to Matrix failed; will retry");
                match store.retry(&item, &e.to_string(), delay).await {
                    Ok(store::RetryOutcome::GaveUp) => {
                        self.inner.metrics.failure("matrix_gave_up");
                        tracing::error!(queue = %item.queue_key, error = %e, "gave up delivering a message to Matrix");
                        self.delivery_ended(&item, DeliveryEnd::Other, false);
                    }
                    _ => {
                        self.wake_after(item.direction, delay);
                        self.delivery_ended(&item, DeliveryEnd::Retry, false);
                    }
                }
            }
            Err(e) => {
                self.inner.metrics.failure("matrix_refused");
                tracing::error!(queue = %item.queue_key, error = %e, "Matrix refused a message; not retrying");
                let _ = store.give_up(&item, &e.to_string()).await;
                self.delivery_ended(&item, DeliveryEnd::Other, false);
            }
        }
        None
    }

    /// Sends one outbox item to Matrix; `remote` accumulates the time spent waiting for the
    /// homeserver. Returns the `(room, event, stanza id)` mapping of a bridged message.
    pub(crate) async fn send_to_matrix(
        &self,
        item: &ClaimedItem,
        payload: &Value,
        remote: &mut Duration,
    ) -> Result<Option<(String, String, String)>, MatrixError> {
        let (Some(user), Some(contact)) = (payload["user"].as_str(), payload["contact"].as_str())
        else {
            return Err(MatrixError::Invalid {
                what: "an outbox item",
                reason: "missing user or contact".into(),
            });
        };
        let contact_jid = Jid::parse(contact).map_err(|e| MatrixError::Invalid {
            what: "an outbox item",
            reason: e.to_string(),
        })?;
        let ghost = self.ensure_ghost(user, &contact_jid, false).await?;
        let room = self.ensure_portal(user, &contact_jid).await?;
        match payload["kind"].as_str() {
            Some("message") => {
                let body = payload["body"].as_str().unwrap_or_default();
                let ts = payload["ts"].as_i64();
                let parts = mapping::split_text(body, MAX_MATRIX_BODY);
                let mut last_event = None;
                // A retry may follow an attempt the homeserver did accept (its answer was lost,
                // or it restarted and forgot the transaction id): look for our own marker first.
                let already = if item.attempts > 1 {
                    let t = Instant::now();
                    let events = self.inner.matrix.recent_events(&ghost, &room, 100).await?;
                    *remote += t.elapsed();
                    events
                } else {
                    Vec::new()
                };
                for (i, part) in parts.iter().enumerate() {
                    // Derived from the outbox item: a retry after a crash reuses it, and the
                    // homeserver answers with the event it already has.
                    let txn = format!("xmpp-{}-{i}", item.id);
                    if let Some(event) = already
                        .iter()
                        .find(|e| e["content"][TXN_MARKER] == txn.as_str())
                    {
                        last_event = event["event_id"]
                            .as_str()
                            .and_then(|id| ruma::EventId::parse(id).ok());
                        continue;
                    }
                    let mut content = mapping::xmpp_body_to_matrix(part);
                    content[TXN_MARKER] = Value::String(txn.clone());
                    let raw = ruma::serde::Raw::from_json(
                        serde_json::value::to_raw_value(&content).map_err(|e| {
                            MatrixError::Invalid {
                                what: "a message",
                                reason: e.to_string(),
                            }
                        })?,
                    );
                    let t = Instant::now();
                    let event = self
                        .inner
                        .matrix
                        .send_message(&ghost, &room, &txn, raw, "m.room.message", ts)
                        .await?;
                    *remote += t.elapsed();
                    last_event = Some(event);
                }
                let mapping = match (last_event, payload["stanza_id"].as_str()) {
                    (Some(event), Some(stanza)) => {
                        Some((room.to_string(), event.to_string(), stanza.to_owned()))
                    }
                    _ => None,
                };
                // A message ends typing (XEP-0085 §5.3), if the ghost was shown typing.
                let was_typing = self
                    .inner
                    .ghost_typing
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&format!("{room}|{ghost}"));
                if was_typing {
                    let t = Instant::now();
                    let _ = self
                        .inner
                        .matrix
                        .set_typing(&ghost, &room, false, Duration::from_secs(1))
                        .await;
                    *remote += t.elapsed();
                }
                Ok(mapping)
            }
            Some("notice") => {
                let text = payload["text"].as_str().unwrap_or("⚠");
                let raw = ruma::serde::Raw::from_json(
                    serde_json::value::to_raw_value(&mapping::notice(text)).map_err(|e| {
                        MatrixError::Invalid {
                            what: "a notice",
                            reason: e.to_string(),
                        }
                    })?,
                );
                self.inner
                    .matrix
                    .send_message(
                        &ghost,
                        &room,
                        &format!("xmpp-{}", item.id),
                        raw,
                        "m.room.message",
                        None,
                    )
                    .await?;
                Ok(None)
            }
            other => Err(MatrixError::Invalid {
                what: "an outbox item",
                reason: format!("unknown kind {other:?}"),
            }),
        }
    }
}
