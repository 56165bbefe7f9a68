//! Delivery of recorded XMPP messages into their portals, as the contact's ghost, idempotently:
//! a retry after a crash reuses the transaction id, a portal the ghost can no longer write to is
//! repaired, and what truly cannot be delivered is told to the user.

use std::time::{Duration, Instant};

use ruma::OwnedRoomId;
use serde_json::Value;
use store::ClaimedItem;
use xmpp_core::Jid;

use crate::context::Bridge;
use crate::delivery::DeliveryEnd;
use crate::mapping;
use crate::matrix::MatrixError;
use crate::payload::{ToMatrix, ToMatrixKind};

use super::relations::Relation;

/// Content key marking the events the bridge sent, with the transaction id they were sent
/// with; lets a retry find out whether an earlier attempt went through.
const TXN_MARKER: &str = "net.messenger-bridge.txn";
/// Matrix caps events at 64 KiB; keep message bodies well inside.
const MAX_MATRIX_BODY: usize = 48 * 1024;
/// How many times a portal is rebuilt for one message before the bridge stops trying.
const PORTAL_REPAIRS: i64 = 3;

/// A message that went to Matrix: `(room id, event id, stanza id)`, for the message map.
type Delivered = (String, String, String);

impl Bridge {
    /// Delivers one item to Matrix; returns the next item of its queue if the ack took one.
    pub(crate) async fn deliver_to_matrix(&self, item: ClaimedItem) -> Option<ClaimedItem> {
        let payload = match ToMatrix::from_bytes(&item.payload) {
            Ok(p) => p,
            Err(e) => {
                // Never taken for delivered: kept as failed, with the reason, for the operator.
                self.inner.metrics.failure("outbox_unreadable");
                tracing::error!(item = item.id, queue = %item.queue_key, error = %e, "cannot read a message waiting for Matrix; it is kept as failed");
                self.give_up(&item, &e.to_string()).await;
                return None;
            }
        };
        let mut remote = Duration::ZERO;
        match self.send_to_matrix(&item, &payload, &mut remote).await {
            Ok(mapping) => {
                let done = Instant::now();
                let next = self.ack(&item, mapping.as_ref()).await;
                let outcome = match payload.kind {
                    ToMatrixKind::Message { .. } => DeliveryEnd::Message { remote, done },
                    ToMatrixKind::Notice { .. }
                    | ToMatrixKind::Retract { .. }
                    | ToMatrixKind::Reactions { .. } => DeliveryEnd::Other,
                };
                self.delivery_ended(&item, outcome, next.is_some());
                return next;
            }
            Err((e, _)) if e.is_transient() => {
                tracing::warn!(queue = %item.queue_key, error = %e, "delivery to Matrix failed; will retry");
                if self.retry_later(&item, &e.to_string()).await {
                    self.inner.metrics.failure("matrix_gave_up");
                    self.tell_undelivered(&payload, &item, &e).await;
                }
            }
            Err((e, Some(room)))
                if e.errcode() == Some("M_FORBIDDEN") && item.attempts <= PORTAL_REPAIRS =>
            {
                // The user left, or kicked the ghost, while the bridge was not looking: this
                // portal is dead. Forget it; the next attempt opens a new one and delivers.
                tracing::warn!(queue = %item.queue_key, room = %room, error = %e, "the ghost cannot write to its portal; opening a new one");
                self.inner.metrics.failure("portal_repaired");
                if let Err(e) = self
                    .forget_portal(&payload.user, &payload.contact, &room)
                    .await
                {
                    tracing::error!(room = %room, error = %e, "could not forget a dead portal; will retry");
                }
                self.retry_now(&item, "portal repaired").await;
            }
            Err((e, _)) => {
                self.inner.metrics.failure("matrix_refused");
                tracing::error!(queue = %item.queue_key, error = %e, "Matrix refused a message; not retrying");
                self.give_up(&item, &e.to_string()).await;
                self.tell_undelivered(&payload, &item, &e).await;
            }
        }
        None
    }

    /// Tells the user in their management room what could not be delivered: who, when, what.
    async fn tell_undelivered(&self, payload: &ToMatrix, item: &ClaimedItem, error: &MatrixError) {
        let ToMatrixKind::Message { body, .. } = &payload.kind else {
            return;
        };
        let when = payload.origin_ts().unwrap_or(item.created_at);
        let when = time::OffsetDateTime::from_unix_timestamp(when / 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        self.notify_user(
            &payload.user,
            &format!(
                "⚠ A message from {} ({when}) could not be delivered to Matrix ({}):\n{body}",
                payload.contact,
                error.to_string().chars().take(200).collect::<String>()
            ),
        )
        .await;
    }

    /// Sends one outbox item to Matrix; `remote` accumulates the time spent waiting for the
    /// homeserver. Returns the `(room, event, stanza id)` mapping of a bridged message, or the
    /// error with the portal it happened in.
    async fn send_to_matrix(
        &self,
        item: &ClaimedItem,
        payload: &ToMatrix,
        remote: &mut Duration,
    ) -> Result<Option<Delivered>, (MatrixError, Option<OwnedRoomId>)> {
        let contact = Jid::parse(&payload.contact).map_err(|e| {
            let e = MatrixError::Invalid {
                what: "an outbox item",
                reason: e.to_string(),
            };
            (e, None)
        })?;
        if let ToMatrixKind::Retract { .. } | ToMatrixKind::Reactions { .. } = &payload.kind {
            // Never a reason to open a portal, nor to rebuild one (no room given back).
            return self
                .relation_to_matrix(item.id, payload, &contact)
                .await
                .map(|()| None)
                .map_err(|e| (e, None));
        }
        let ghost = self
            .ensure_ghost(&payload.user, &contact, false)
            .await
            .map_err(|e| (e, None))?;
        let room = self
            .ensure_portal(&payload.user, &contact)
            .await
            .map_err(|e| (e, None))?;
        let in_room = |e| (e, Some(room.clone()));
        match &payload.kind {
            ToMatrixKind::Message {
                body,
                stanza_id,
                own,
                replaces,
                reply_to,
                markable,
                file_url,
                ..
            } => {
                let ts = payload.origin_ts();
                // The user's own message from another client: posted as the user themselves
                // with double puppeting, else by their own XMPP account's ghost.
                let puppet = own.as_ref().and_then(|_| self.double_puppet(&payload.user));
                let sender = match (own, &puppet) {
                    (_, Some((_, user))) => user.clone(),
                    (Some(own), None) => self
                        .own_ghost_in(&payload.user, own, &ghost, &room)
                        .await
                        .map_err(in_room)?,
                    (None, None) => ghost.clone(),
                };
                let client = puppet.as_ref().map_or(&self.inner.matrix, |(c, _)| c);
                let (body, relation) = self
                    .message_relation(
                        &room,
                        (&ghost, &sender),
                        body,
                        replaces.as_deref(),
                        reply_to.as_ref(),
                    )
                    .await
                    .map_err(in_room)?;
                let mut parts = mapping::split_text(&body, MAX_MATRIX_BODY);
                // The map keeps the first part: what later names the message (a correction,
                // a reply) is shown on its beginning.
                let mut first_event = None;
                let mut file_failed = None;
                // A retry may follow an attempt the homeserver did accept (its answer was lost,
                // or it restarted and forgot the transaction id): look for our own marker first.
                let already = if item.attempts > 1 {
                    let t = Instant::now();
                    let events = self
                        .inner
                        .matrix
                        .recent_events(&ghost, &room, 100)
                        .await
                        .map_err(in_room)?;
                    *remote += t.elapsed();
                    events
                } else {
                    Vec::new()
                };
                if let Some(url) = file_url {
                    // The file first, as its own event; the text after it only if it says more
                    // than the link.
                    let txn = format!("xmpp-{}-file", item.id);
                    let sent = already
                        .iter()
                        .find(|e| e["content"][TXN_MARKER] == txn.as_str())
                        .and_then(|e| e["event_id"].as_str())
                        .and_then(|id| ruma::EventId::parse(id).ok());
                    let event = match sent {
                        Some(event) => Some(event),
                        None => match self.file_into_matrix(url, &ghost).await {
                            Ok(mut content) => {
                                content[TXN_MARKER] = Value::String(txn.clone());
                                if puppet.is_some() {
                                    content[DOUBLE_PUPPET_SOURCE] =
                                        Value::String(DOUBLE_PUPPET_NAME.into());
                                }
                                let t = Instant::now();
                                let event = client
                                    .send_message(
                                        &sender,
                                        &room,
                                        &txn,
                                        raw(&content),
                                        "m.room.message",
                                        ts,
                                    )
                                    .await
                                    .map_err(in_room)?;
                                *remote += t.elapsed();
                                Some(event)
                            }
                            Err(super::media::FileError::Retry(e)) => return Err(in_room(e)),
                            Err(super::media::FileError::Refused(reason)) => {
                                tracing::warn!(%room, %url, %reason, "a contact's file could not be brought into Matrix; its link is posted");
                                self.inner.metrics.failure("media_not_bridged");
                                file_failed = Some(reason);
                                None
                            }
                        },
                    };
                    if event.is_some() {
                        first_event = event;
                        if body.trim() == url.trim() {
                            parts.clear();
                        }
                    }
                }
                for (i, part) in parts.iter().enumerate() {
                    // Derived from the outbox item: a retry after a crash reuses it, and the
                    // homeserver answers with the event it already has.
                    let txn = format!("xmpp-{}-{i}", item.id);
                    if let Some(event) = already
                        .iter()
                        .find(|e| e["content"][TXN_MARKER] == txn.as_str())
                    {
                        if first_event.is_none() {
                            first_event = event["event_id"]
                                .as_str()
                                .and_then(|id| ruma::EventId::parse(id).ok());
                        }
                        continue;
                    }
                    let mut content = mapping::xmpp_body_to_matrix(part);
                    // An edit only when it is whole; a long correction is posted as new text.
                    if i == 0 && (parts.len() == 1 || !matches!(relation, Relation::Edit(_))) {
                        relation.apply(&mut content);
                    }
                    content[TXN_MARKER] = Value::String(txn.clone());
                    if puppet.is_some() {
                        // The bridge's own echo of it is not sent back to XMPP (the mautrix key).
                        content[DOUBLE_PUPPET_SOURCE] = Value::String(DOUBLE_PUPPET_NAME.into());
                    }
                    let t = Instant::now();
                    let mut sent = client
                        .send_message(&sender, &room, &txn, raw(&content), "m.room.message", ts)
                        .await;
                    if let (Err(e), Some(own), None) = (&sent, own, &puppet)
                        && e.errcode() == Some("M_FORBIDDEN")
                    {
                        // The user's own ghost was kicked: invite it again, once, and resend.
                        self.inner
                            .own_ghost_joined
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&format!("{room}|{sender}"));
                        let me = self
                            .own_ghost_in(&payload.user, own, &ghost, &room)
                            .await
                            .map_err(in_room)?;
                        sent = client
                            .send_message(&me, &room, &txn, raw(&content), "m.room.message", ts)
                            .await;
                    }
                    let event = match (sent, own) {
                        (Ok(event), _) => event,
                        (Err(e), Some(own)) if puppet.is_some() && !e.is_transient() => {
                            // Not allowed as the user (not in the room, not a local user the
                            // registration covers): the user's own ghost posts it instead.
                            tracing::warn!(user = %payload.user, error = %e, "double puppeting refused; posting as the user's XMPP ghost");
                            let me = self
                                .own_ghost_in(&payload.user, own, &ghost, &room)
                                .await
                                .map_err(in_room)?;
                            if let Some(obj) = content.as_object_mut() {
                                obj.remove(DOUBLE_PUPPET_SOURCE);
                            }
                            self.inner
                                .matrix
                                .send_message(&me, &room, &txn, raw(&content), "m.room.message", ts)
                                .await
                                .map_err(in_room)?
                        }
                        (Err(e), _) => return Err(in_room(e)),
                    };
                    *remote += t.elapsed();
                    first_event.get_or_insert(event);
                }
                if let Some(reason) = file_failed {
                    let txn = format!("xmpp-{}-file-notice", item.id);
                    let notice = mapping::notice(&format!(
                        "⚠ The file above could not be brought into Matrix: {reason}."
                    ));
                    if !already
                        .iter()
                        .any(|e| e["content"][TXN_MARKER] == txn.as_str())
                    {
                        let mut notice = notice;
                        notice[TXN_MARKER] = Value::String(txn.clone());
                        self.inner
                            .matrix
                            .send_message(&ghost, &room, &txn, raw(&notice), "m.room.message", None)
                            .await
                            .map_err(in_room)?;
                    }
                }
                let mapping = match (first_event, stanza_id) {
                    // A contact's id that looks like the map's reaction entries is not kept.
                    (Some(_), Some(stanza)) if stanza.starts_with(mapping::REACTION_ID_PREFIX) => {
                        None
                    }
                    (Some(event), Some(stanza)) => {
                        Some((room.to_string(), event.to_string(), stanza.clone()))
                    }
                    _ => None,
                };
                if let (true, Some((room, _, stanza))) = (*markable, &mapping) {
                    self.remember_markable(room, stanza);
                }
                // A message ends typing (XEP-0085 §5.3), if the ghost was shown typing.
                if own.is_none() {
                    let t = Instant::now();
                    self.end_ghost_typing(&ghost, &room).await;
                    *remote += t.elapsed();
                }
                Ok(mapping)
            }
            ToMatrixKind::Retract { .. } | ToMatrixKind::Reactions { .. } => Ok(None),
            ToMatrixKind::Notice { text } => {
                let txn = format!("xmpp-{}", item.id);
                let content = mapping::notice(text);
                self.inner
                    .matrix
                    .send_message(&ghost, &room, &txn, raw(&content), "m.room.message", None)
                    .await
                    .map_err(in_room)?;
                Ok(None)
            }
        }
    }
}

/// Marks what the bridge posts as a user (mautrix's key, which other bridges know too).
pub(crate) const DOUBLE_PUPPET_SOURCE: &str = "fi.mau.double_puppet_source";
/// This bridge's value of [`DOUBLE_PUPPET_SOURCE`].
pub(crate) const DOUBLE_PUPPET_NAME: &str = "messenger-bridge";

impl Bridge {
    /// The double-puppet client and the user, when configured and the user is on the bridge's
    /// homeserver (the only users a registration there can cover).
    fn double_puppet(
        &self,
        user: &str,
    ) -> Option<(crate::matrix::client::MatrixClient, ruma::OwnedUserId)> {
        let client = self.inner.double_puppet.clone()?;
        let user = ruma::UserId::parse(user).ok()?;
        (user.server_name().as_str() == self.inner.config.homeserver.server_name)
            .then_some((client, user))
    }

    /// The ghost of the user's own XMPP account (`own`), made a member of the portal `room` by
    /// the contact's `ghost` the first time it posts there.
    async fn own_ghost_in(
        &self,
        user: &str,
        own: &str,
        ghost: &ruma::UserId,
        room: &ruma::RoomId,
    ) -> Result<ruma::OwnedUserId, MatrixError> {
        let own = Jid::parse(own).map_err(|e| MatrixError::Invalid {
            what: "an outbox item",
            reason: e.to_string(),
        })?;
        let me = self.ensure_ghost(user, &own, false).await?;
        let key = format!("{room}|{me}");
        let known = self
            .inner
            .own_ghost_joined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&key);
        if !known {
            // Already invited or joined (an earlier run): the invite fails, the join succeeds.
            if let Err(e) = self.inner.matrix.invite(ghost, room, &me).await {
                tracing::debug!(%room, error = %e, "invite of the user's own ghost");
            }
            self.inner.matrix.join(&me, room).await?;
            self.inner
                .own_ghost_joined
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key);
        }
        Ok(me)
    }
}

/// Event content as the raw JSON the client sends.
pub(super) fn raw(content: &Value) -> ruma::serde::Raw<ruma::events::AnyMessageLikeEventContent> {
    // A `Value` always serializes.
    let json = serde_json::value::to_raw_value(content).unwrap_or_else(|_| {
        serde_json::value::to_raw_value(&serde_json::json!({})).unwrap_or_default()
    });
    ruma::serde::Raw::from_json(json)
}
