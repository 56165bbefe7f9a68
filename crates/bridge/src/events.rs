//! Matrix events taken from the outbox: messages in portals go to XMPP, invitations and
//! membership changes manage portals, and messages to the bot are commands.

use ruma::RoomId;
use serde_json::Value;
use xmpp_core::Jid;
use xmpp_core::session::IqError;
use xmpp_core::stanza::{ChatState, Message};

use crate::mapping;
use crate::runtime::{Bridge, short_hash};

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
            on_membership(bridge, event, sender, room_id).await;
            Ok(None)
        }
        "m.room.message" => on_message(bridge, event, sender, room_id).await,
        _ => Ok(None),
    }
}

async fn on_membership(bridge: &Bridge, event: &Value, sender: &str, room_id: &str) {
    let inner = &bridge.inner;
    let (Some(target), Some(membership)) = (
        event["state_key"].as_str(),
        event["content"]["membership"].as_str(),
    ) else {
        return;
    };
    let Ok(room) = RoomId::parse(room_id) else {
        return;
    };
    let allowed = inner.config.bridge.level(sender).is_some();
    if target == inner.bot.as_str() && membership == "invite" {
        if let Err(e) = inner.matrix.join(&inner.bot, &room).await {
            tracing::warn!(room = room_id, error = %e, "the bot could not join");
            return;
        }
        if !allowed {
            bridge.bot_say(room_id, "Sorry, you are not allowed to use this bridge. Ask the bridge administrator to add you to the permissions.").await;
            let _ = inner.matrix.leave(&inner.bot, &room).await;
            return;
        }
        if let Ok(Some(user)) = inner.store.linked_user(sender).await
            && user.management_room.is_none()
        {
            let _ = inner.store.set_management_room(sender, Some(room_id)).await;
        }
        bridge
            .bot_say(room_id, &crate::commands::welcome(bridge, sender).await)
            .await;
        return;
    }
    if let Some(contact) = ruma::UserId::parse(target)
        .ok()
        .and_then(|u| inner.ghosts.contact(&u))
    {
        // The user opened a DM with a ghost: that room becomes the portal.
        if membership == "invite"
            && allowed
            && inner
                .store
                .linked_user(sender)
                .await
                .ok()
                .flatten()
                .is_some()
        {
            let ghost = inner.ghosts.user_id(&contact);
            if bridge.ensure_registered(&ghost).await.is_ok()
                && inner.matrix.join(&ghost, &room).await.is_ok()
            {
                let _ = inner
                    .store
                    .upsert_portal(sender, &contact.to_string(), room_id)
                    .await;
                bridge.portals().insert(sender, &contact.to_string(), &room);
                let _ = bridge.ensure_ghost(sender, &contact, false).await;
            }
        }
        return;
    }
    if matches!(membership, "leave" | "ban")
        && let Ok(Some((portal_user, portal_contact))) = bridge.portal_by_room(room_id).await
        && portal_user == target
    {
        // The user left the portal: forget it; the next message opens a new one.
        let _ = inner.store.delete_portal(room_id).await;
        bridge.portals().remove_room(room_id);
        if let Ok(contact) = Jid::parse(&portal_contact) {
            let _ = inner
                .matrix
                .leave(&inner.ghosts.user_id(&contact), &room)
                .await;
        }
    }
}

async fn on_message(
    bridge: &Bridge,
    event: &Value,
    sender: &str,
    room_id: &str,
) -> Result<Option<Sent>, HandleError> {
    let inner = &bridge.inner;
    let content = &event["content"];
    let body = content["body"].as_str().unwrap_or("");
    let portal = bridge
        .portal_by_room(room_id)
        .await
        .map_err(|e| HandleError::Retry(e.to_string()))?;
    let Some((portal_user, portal_contact)) = portal else {
        // Not a portal: a room with the bot. Everything there is a command.
        if inner.config.bridge.level(sender).is_none() {
            bridge
                .bot_say(room_id, "Sorry, you are not allowed to use this bridge.")
                .await;
            return Ok(None);
        }
        crate::commands::handle(bridge, sender, room_id, body.trim()).await;
        return Ok(None);
    };
    if portal_user != sender {
        return Ok(None);
    }
    if let Some(command) = body.strip_prefix("!msn ") {
        crate::commands::handle(bridge, sender, room_id, command.trim()).await;
        return Ok(None);
    }
    let contact = Jid::parse(&portal_contact).map_err(|e| HandleError::Fail(e.to_string()))?;
    let text = mapping::matrix_to_xmpp_body(content, inner.matrix.base_url()).ok_or_else(|| {
        HandleError::Fail("this kind of message cannot be sent to Messenger".into())
    })?;
    let event_id = event["event_id"].as_str().unwrap_or("");
    let parts = mapping::split_text(&text, inner.config.bridge.max_message_bytes);
    let base_id = format!("mx{}", short_hash(event_id));
    for (i, part) in parts.iter().enumerate() {
        let mut message = Message::chat(contact.clone(), part.clone());
        message.id = Some(if parts.len() == 1 {
            base_id.clone()
        } else {
            format!("{base_id}-{i}")
        });
        message.chat_state = Some(ChatState::Active);
        match inner.xmpp.send_message(sender, &message).await {
            Ok(()) => {}
            Err(IqError::NotConnected) => {
                let state = inner
                    .store
                    .linked_user(sender)
                    .await
                    .ok()
                    .flatten()
                    .map(|u| u.connection_state)
                    .unwrap_or_default();
                return Err(HandleError::NotConnected {
                    user: sender.to_owned(),
                    reason: format!("your XMPP account is not connected ({state})"),
                });
            }
            Err(e) => return Err(HandleError::Retry(e.to_string())),
        }
    }
    if parts.len() > 1 {
        tracing::info!(
            room = room_id,
            parts = parts.len(),
            "split a long message for XMPP"
        );
    }
    inner.typing_clear(room_id);
    Ok(Some((room_id.to_owned(), event_id.to_owned(), base_id)))
}
