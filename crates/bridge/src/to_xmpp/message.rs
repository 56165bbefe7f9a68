//! The user's message in a portal, sent to the contact as `type="chat"` (split to the configured
//! size); lines for the bot (`!msn …`, or anything in a room with the bot) are commands.

use serde_json::Value;
use xmpp_core::Jid;
use xmpp_core::session::IqError;
use xmpp_core::stanza::{ChatState, Message};

use super::{HandleError, Sent};
use crate::context::{Bridge, short_hash};
use crate::mapping;

pub(super) async fn on_message(
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
            // No answer: in a room an allowed user shared with the bot, a stranger must not get a
            // bot reply to every message (their invites are rejected; see membership).
            tracing::debug!(%sender, room = room_id, "ignored a message from a user the permissions do not allow");
            return Ok(None);
        }
        crate::commands::handle(bridge, sender, room_id, body.trim()).await;
        return Ok(None);
    };
    if portal_user != sender {
        return Ok(None);
    }
    if inner.config.bridge.level(sender).is_none() {
        // A user removed from the permissions: told at start-up, their session is not running.
        tracing::info!(%sender, room = room_id, "ignored a portal message from a user no longer allowed");
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
        // XEP-0359: servers keep the origin id through carbons and the archive, which is how
        // the bridge knows its own messages there.
        message.origin_id.clone_from(&message.id);
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
