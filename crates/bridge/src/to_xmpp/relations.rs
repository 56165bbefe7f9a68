//! The user's reactions and deletions in a portal: XEP-0444 reactions (the user's whole set for
//! the message each time, so a removal is a smaller set) and XEP-0424 retractions where the
//! user's server carries them; on the Messenger profile a "reacted 👍 to “…”" line, and a
//! notice that a deletion did not reach the contact.

use serde_json::Value;
use xmpp_core::Jid;
use xmpp_core::ns;
use xmpp_core::stanza::{Fallback, Message, Reactions};

use super::message::{quote_of, send_to_contact, sent_by, speaks_relations, stanza_of};
use super::{HandleError, Sent};
use crate::context::{Bridge, short_hash};
use crate::mapping::REACTION_ID_PREFIX as REACTION_PREFIX;

/// XEP-0424's body for clients that do not know retractions.
const RETRACT_FALLBACK: &str =
    "This person attempted to retract a previous message, but it's unsupported by your client.";

/// The portal's contact, when `sender` is the portal's user and still allowed.
async fn contact_of(bridge: &Bridge, sender: &str, room: &str) -> Result<Option<Jid>, HandleError> {
    let portal = bridge
        .portal_by_room(room)
        .await
        .map_err(|e| HandleError::Retry(e.to_string()))?;
    let Some((user, contact)) = portal else {
        return Ok(None);
    };
    if user != sender || bridge.inner.config.bridge.level(sender).is_none() {
        return Ok(None);
    }
    Jid::parse(&contact)
        .map(Some)
        .map_err(|e| HandleError::Fail(e.to_string()))
}

/// The user's reaction (`m.annotation`) to a message of the portal.
pub(super) async fn on_reaction(
    bridge: &Bridge,
    event: &Value,
    sender: &str,
    room: &str,
) -> Result<Option<Sent>, HandleError> {
    let Some(contact) = contact_of(bridge, sender, room).await? else {
        return Ok(None);
    };
    let relates = &event["content"]["m.relates_to"];
    let (Some(target), Some(key)) = (relates["event_id"].as_str(), relates["key"].as_str()) else {
        return Ok(None);
    };
    if relates["rel_type"] != "m.annotation" {
        return Ok(None);
    }
    let event_id = event["event_id"].as_str().unwrap_or("");
    let id = format!("mx{}", short_hash(event_id));
    let stanza = stanza_of(bridge, room, target).await?;
    let capable = bridge.client_supports(sender, &contact, ns::REACTIONS);
    let mut message = Message::chat(contact, "");
    message.id = Some(id.clone());
    message.origin_id = Some(id);
    match stanza.as_deref() {
        Some(reacted) if capable && speaks_relations(bridge, sender).await => {
            let mut keys = reactions_of(bridge, sender, room, target).await?;
            if !keys.iter().any(|k| k == key) {
                // This very reaction, even if the homeserver does not list it yet.
                keys.push(key.to_owned());
            }
            message.body = None;
            message.reactions = Some(Reactions {
                id: reacted.to_owned(),
                keys,
            });
            // No body: without the hint a server may neither store it offline nor archive it.
            message.store_hint = true;
        }
        _ => {
            let quote = quote_of(bridge, room, target)
                .await
                .map(|(q, _)| q)
                .unwrap_or_default();
            message.body = Some(format!("reacted {key} to “{quote}”"));
        }
    }
    send_to_contact(bridge, sender, &message).await?;
    let reacted = stanza.unwrap_or_default();
    Ok(Some((
        room.to_owned(),
        event_id.to_owned(),
        format!("{REACTION_PREFIX}{reacted}:{}", short_hash(event_id)),
    )))
}

/// The keys of the user's current reactions to `target`, as the homeserver has them (a
/// redacted reaction is no longer among them).
async fn reactions_of(
    bridge: &Bridge,
    user: &str,
    room: &str,
    target: &str,
) -> Result<Vec<String>, HandleError> {
    let (Ok(room_id), Ok(event_id)) = (ruma::RoomId::parse(room), ruma::EventId::parse(target))
    else {
        return Ok(Vec::new());
    };
    let reader = bridge.ghost_or_bot_in(room).await;
    let related = bridge
        .inner
        .matrix
        .reactions_to(&reader, &room_id, &event_id)
        .await
        .map_err(|e| HandleError::Retry(e.to_string()))?;
    let mut keys: Vec<String> = Vec::new();
    // Oldest first, as the user added them.
    for r in related.iter().rev() {
        if r["sender"] != user || r["type"] != "m.reaction" {
            continue;
        }
        if let Some(key) = r["content"]["m.relates_to"]["key"].as_str()
            && !keys.iter().any(|k| k == key)
        {
            keys.push(key.to_owned());
        }
    }
    Ok(keys)
}

/// The user deleted something in the portal: one of their messages (retracted) or one of
/// their reactions (the message's reactions are sent again without it).
pub(super) async fn on_redaction(
    bridge: &Bridge,
    event: &Value,
    sender: &str,
    room: &str,
) -> Result<Option<Sent>, HandleError> {
    let Some(contact) = contact_of(bridge, sender, room).await? else {
        return Ok(None);
    };
    // Room version 11 moved `redacts` into the content.
    let Some(redacted) = event["redacts"]
        .as_str()
        .or_else(|| event["content"]["redacts"].as_str())
    else {
        return Ok(None);
    };
    let Some(stanza) = stanza_of(bridge, room, redacted).await? else {
        tracing::debug!(room, redacted, "a redaction of nothing the bridge sent");
        return Ok(None);
    };
    let standard = speaks_relations(bridge, sender).await
        && bridge.client_supports(sender, &contact, ns::RETRACT);
    let event_id = event["event_id"].as_str().unwrap_or("");
    let id = format!("mx{}", short_hash(event_id));
    let mut message = Message::chat(contact, "");
    message.id = Some(id.clone());
    message.origin_id = Some(id);
    if !sent_by(bridge, room, redacted, sender).await? {
        // A moderator's removal of the contact's message: nothing the user can take back.
        tracing::debug!(
            room,
            redacted,
            "a redaction of someone else's message; not sent"
        );
        return Ok(None);
    }
    if let Some(rest) = stanza.strip_prefix(REACTION_PREFIX) {
        let reacted = rest.rsplit_once(':').map_or("", |(r, _)| r);
        if !standard || reacted.is_empty() {
            bridge
                .notice_in_room(
                    room,
                    "⚠ Messenger cannot take back a reaction: the contact still sees it.",
                )
                .await;
            return Ok(None);
        }
        // The message reacted to, by the bridge's map, and the user's reactions left on it.
        let target = bridge
            .inner
            .store
            .message_by_stanza(room, reacted)
            .await
            .map_err(|e| HandleError::Retry(e.to_string()))?;
        let keys = match &target {
            Some(t) => reactions_of(bridge, sender, room, &t.matrix_event_id).await?,
            None => Vec::new(),
        };
        message.body = None;
        message.reactions = Some(Reactions {
            id: reacted.to_owned(),
            keys,
        });
        message.store_hint = true;
        send_to_contact(bridge, sender, &message).await?;
        return Ok(None);
    }
    if !standard {
        bridge
            .notice_in_room(
                room,
                "⚠ Messenger cannot delete messages: the contact still sees the one you deleted.",
            )
            .await;
        return Ok(None);
    }
    message.body = Some(RETRACT_FALLBACK.to_owned());
    message.retract = Some(stanza);
    message.fallbacks = vec![Fallback {
        for_ns: ns::RETRACT.into(),
        ranges: Vec::new(),
    }];
    message.store_hint = true;
    send_to_contact(bridge, sender, &message).await?;
    Ok(None)
}
