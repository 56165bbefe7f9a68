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

use crate::context::{Bridge, short_hash};
use crate::matrix::MatrixError;
use crate::payload::ReplyTo;
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

impl Bridge {
    /// The Matrix event of a message of the portal by its XMPP id, if the bridge bridged it.
    async fn event_of(&self, room: &RoomId, stanza: &str) -> Result<Option<String>, MatrixError> {
        Ok(self
            .inner
            .store
            .message_by_stanza(room.as_str(), stanza)
            .await
            .map_err(store_err)?
            .map(|m| m.matrix_event_id))
    }

    /// The text to post for a message and how it relates to an earlier event: a reply's quote
    /// is dropped only when the message answered is found.
    pub(super) async fn message_relation(
        &self,
        room: &RoomId,
        body: &str,
        replaces: Option<&str>,
        reply_to: Option<&ReplyTo>,
    ) -> Result<(String, Relation), MatrixError> {
        if let Some(stanza) = replaces
            && let Some(event) = self.event_of(room, stanza).await?
        {
            return Ok((body.to_owned(), Relation::Edit(event)));
        }
        if let Some(reply) = reply_to
            && let Some(event) = self.event_of(room, &reply.id).await?
        {
            let fallback = [Fallback {
                for_ns: xmpp_core::ns::REPLY.into(),
                ranges: reply.fallback.clone(),
            }];
            let text = match reply.fallback.is_empty() {
                true => body.to_owned(),
                false => strip_fallback(body, &fallback, xmpp_core::ns::REPLY),
            };
            return Ok((
                text.trim_start_matches('\n').to_owned(),
                Relation::Reply(event),
            ));
        }
        Ok((body.to_owned(), Relation::None))
    }

    /// The contact took back a message: the ghost redacts it, if it is the ghost's.
    pub(super) async fn deliver_retraction(
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
        matrix
            .redact(ghost, room, &event_id, &format!("xmpp-{item_id}"))
            .await
    }

    /// The contact's whole set of reactions to a message: the ghost's annotations are added and
    /// redacted to match it.
    pub(super) async fn deliver_reactions(
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
