//! What a contact's message says about an earlier one, in Matrix terms: a correction
//! (XEP-0308) becomes an `m.replace` edit, a reply (XEP-0461) an `m.in_reply_to` without its
//! quote, a retraction (XEP-0424) a redaction, reactions (XEP-0444) `m.reaction` annotations
//! (added and redacted to match the contact's set). The earlier message is found in the
//! bridge's message map; when it is not there, a correction or a reply is shown as the plain
//! message it also is, and a retraction or reactions are dropped (logged).

use ruma::{EventId, RoomId, UserId};
use serde_json::{Value, json};
use xmpp_core::stanza::Fallback;
use xmpp_core::stanza::relations::strip_fallback;

use xmpp_core::Jid;

use crate::context::{Bridge, short_hash};
use crate::mapping;
use crate::matrix::MatrixError;
use crate::payload::{ReplyTo, ToMatrix, ToMatrixKind};
use crate::portals::store_err;

/// How a message relates to an earlier event of the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Relation {
    /// None the bridge knows.
    None,
    /// It replaces this event's text.
    Edit(String),
    /// It answers this event.
    Reply(String),
}

impl Relation {
    /// Puts the relation into a message's content (the first part of a message).
    pub(super) fn apply(&self, content: &mut Value) {
        match self {
            Self::None => {}
            Self::Edit(event) => {
                let new_content = content.clone();
                let body = new_content["body"].as_str().unwrap_or_default();
                content["body"] = Value::String(format!("* {body}"));
                content["m.new_content"] = new_content;
                content["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": event});
            }
            Self::Reply(event) => {
                content["m.relates_to"] = json!({"m.in_reply_to": {"event_id": event}});
            }
        }
    }
}

/// Reactions taken from one stanza, at most: each becomes an event in the room.
const MAX_REACTIONS: usize = 20;
/// A reaction longer than this (bytes) is no emoji; it is left out.
const MAX_REACTION_BYTES: usize = 64;

impl Bridge {
    /// The Matrix event of a message of the portal by its XMPP id, if the bridge bridged it (a
    /// later part of a message the bridge split counts as its first).
    pub(super) async fn event_of(
        &self,
        room: &RoomId,
        stanza: &str,
    ) -> Result<Option<String>, MatrixError> {
        let store = &self.inner.store;
        if let Some(m) = store
            .message_by_stanza(room.as_str(), stanza)
            .await
            .map_err(store_err)?
        {
            return Ok(Some(m.matrix_event_id));
        }
        let Some(first) = mapping::first_part_id(stanza) else {
            return Ok(None);
        };
        Ok(store
            .message_by_stanza(room.as_str(), first)
            .await
            .map_err(store_err)?
            .map(|m| m.matrix_event_id))
    }

    /// The text to post for a message and how it relates to an earlier event. A correction is
    /// an edit only of a message its `poster` wrote (the original, when the one named is itself
    /// an edit), else new text marked "✎"; a reply's quote is dropped only when the message
    /// answered is found. The portal's ghost reads the room.
    pub(super) async fn message_relation(
        &self,
        room: &RoomId,
        (reader, poster): (&UserId, &UserId),
        body: &str,
        replaces: Option<&str>,
        reply_to: Option<&ReplyTo>,
    ) -> Result<(String, Relation), MatrixError> {
        let without_quote = |body: &str| match reply_to {
            Some(reply) if !reply.fallback.is_empty() => {
                let fallback = [Fallback {
                    for_ns: xmpp_core::ns::REPLY.into(),
                    ranges: reply.fallback.clone(),
                }];
                strip_fallback(body, &fallback, xmpp_core::ns::REPLY)
                    .trim_start_matches('\n')
                    .to_owned()
            }
            _ => body.to_owned(),
        };
        if let Some(stanza) = replaces {
            if let Some(original) = self.edit_target(room, reader, poster, stanza).await? {
                return Ok((without_quote(body), Relation::Edit(original)));
            }
            return Ok((format!("✎ {}", without_quote(body)), Relation::None));
        }
        if let Some(reply) = reply_to
            && let Some(event) = self.event_of(room, &reply.id).await?
        {
            return Ok((without_quote(body), Relation::Reply(event)));
        }
        Ok((body.to_owned(), Relation::None))
    }

    /// The event a correction of `stanza` edits: the original message, if `poster` wrote it.
    async fn edit_target(
        &self,
        room: &RoomId,
        reader: &UserId,
        poster: &UserId,
        stanza: &str,
    ) -> Result<Option<String>, MatrixError> {
        let Some(event) = self.event_of(room, stanza).await? else {
            return Ok(None);
        };
        let Ok(event_id) = EventId::parse(&event) else {
            return Ok(None);
        };
        let target = self.inner.matrix.event(reader, room, &event_id).await?;
        if target["sender"] != poster.as_str() {
            tracing::warn!(%room, stanza, "a correction of a message its sender did not write; posted as new text");
            return Ok(None);
        }
        // A client that names the previous correction: Matrix edits name the original.
        let relates = &target["content"]["m.relates_to"];
        if relates["rel_type"] == "m.replace"
            && let Some(original) = relates["event_id"].as_str()
        {
            return Ok(Some(original.to_owned()));
        }
        Ok(Some(event))
    }

    /// A contact's retraction or reactions, into the portal they have (never a new one).
    pub(super) async fn relation_to_matrix(
        &self,
        item_id: i64,
        payload: &ToMatrix,
        contact: &Jid,
    ) -> Result<(), MatrixError> {
        let cached = self.portals().room(&payload.user, &payload.contact);
        let room = match cached {
            Some(room) => room,
            None => {
                let stored = self
                    .inner
                    .store
                    .portal(&payload.user, &payload.contact)
                    .await
                    .map_err(store_err)?;
                match stored.and_then(|p| RoomId::parse(&p.room_id).ok()) {
                    Some(room) => room,
                    None => {
                        tracing::info!(user = %payload.user, contact = %payload.contact, "a retraction or reactions from a contact without a portal; nothing to change");
                        return Ok(());
                    }
                }
            }
        };
        let ghost = self.inner.ghosts.user_id(contact);
        match &payload.kind {
            ToMatrixKind::Retract { stanza } => {
                self.deliver_retraction(item_id, &ghost, &room, stanza)
                    .await
            }
            ToMatrixKind::Reactions { stanza, keys } => {
                let keys: Vec<String> = keys
                    .iter()
                    .filter(|k| k.len() <= MAX_REACTION_BYTES)
                    .take(MAX_REACTIONS)
                    .cloned()
                    .collect();
                self.deliver_reactions(item_id, &ghost, &room, stanza, &keys)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// The contact took back a message: the ghost redacts it, if it is the ghost's, and its
    /// edits (they hold its text too).
    async fn deliver_retraction(
        &self,
        item_id: i64,
        ghost: &UserId,
        room: &RoomId,
        stanza: &str,
    ) -> Result<(), MatrixError> {
        let Some(event) = self.event_of(room, stanza).await? else {
            tracing::info!(%room, stanza, "the contact retracted a message the bridge does not know");
            return Ok(());
        };
        let Ok(event_id) = EventId::parse(&event) else {
            return Ok(());
        };
        let matrix = &self.inner.matrix;
        // Only their own: a ghost may have the power to remove anyone's message in its portal.
        let target = matrix.event(ghost, room, &event_id).await?;
        if target["sender"] != ghost.as_str() {
            tracing::warn!(%room, stanza, "the contact tried to retract a message that is not theirs; ignored");
            return Ok(());
        }
        for edit in matrix.edits_of(ghost, room, &event_id).await? {
            let Some(edit_id) = edit["event_id"]
                .as_str()
                .and_then(|e| EventId::parse(e).ok())
            else {
                continue;
            };
            if edit["sender"] == ghost.as_str() {
                let txn = format!("xmpp-{item_id}-e{}", short_hash(edit_id.as_str()));
                matrix.redact(ghost, room, &edit_id, &txn).await?;
            }
        }
        matrix
            .redact(ghost, room, &event_id, &format!("xmpp-{item_id}"))
            .await
    }

    /// The contact's whole set of reactions to a message: the ghost's annotations are added and
    /// redacted to match it.
    async fn deliver_reactions(
        &self,
        item_id: i64,
        ghost: &UserId,
        room: &RoomId,
        stanza: &str,
        keys: &[String],
    ) -> Result<(), MatrixError> {
        let Some(event) = self.event_of(room, stanza).await? else {
            tracing::info!(%room, stanza, "the contact reacted to a message the bridge does not know");
            return Ok(());
        };
        let Ok(event_id) = EventId::parse(&event) else {
            return Ok(());
        };
        let matrix = &self.inner.matrix;
        let existing: Vec<(String, String)> = matrix
            .reactions_to(ghost, room, &event_id)
            .await?
            .iter()
            .filter(|r| r["sender"] == ghost.as_str() && r["type"] == "m.reaction")
            .filter_map(|r| {
                Some((
                    r["content"]["m.relates_to"]["key"].as_str()?.to_owned(),
                    r["event_id"].as_str()?.to_owned(),
                ))
            })
            .collect();
        for key in keys {
            if existing.iter().any(|(k, _)| k == key) {
                continue;
            }
            let content = json!({
                "m.relates_to": {"rel_type": "m.annotation", "event_id": event, "key": key}
            });
            let txn = format!("xmpp-{item_id}-{}", short_hash(key));
            matrix
                .send_message(
                    ghost,
                    room,
                    &txn,
                    super::deliver::raw(&content),
                    "m.reaction",
                    None,
                )
                .await?;
        }
        for (key, reaction) in &existing {
            if keys.contains(key) {
                continue;
            }
            let Ok(reaction_id) = EventId::parse(reaction) else {
                continue;
            };
            let txn = format!("xmpp-{item_id}-r{}", short_hash(reaction));
            matrix.redact(ghost, room, &reaction_id, &txn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_carries_the_new_text_and_a_star_fallback() {
        let mut content = json!({"msgtype": "m.text", "body": "fixed"});
        Relation::Edit("$e".into()).apply(&mut content);
        assert_eq!(
            content,
            json!({
                "msgtype": "m.text",
                "body": "* fixed",
                "m.new_content": {"msgtype": "m.text", "body": "fixed"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$e"}
            })
        );
        let mut content = json!({"msgtype": "m.text", "body": "yes"});
        Relation::Reply("$q".into()).apply(&mut content);
        assert_eq!(content["m.relates_to"]["m.in_reply_to"]["event_id"], "$q");
        assert_eq!(
            content["body"], "yes",
            "no reply fallback since Matrix 1.13"
        );
    }
}
