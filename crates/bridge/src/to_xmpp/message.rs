//! The user's message in a portal, sent to the contact as `type="chat"` (split to the configured
//! size), with its reply (XEP-0461 and a quote line) or as a correction (XEP-0308) where the
//! user's server carries them, a quote line and "✎ new text" where not; lines for the bot
//! (`!msn …`, or anything in a room with the bot) are commands.

use serde_json::Value;
use xmpp_core::Jid;
use xmpp_core::ns;
use xmpp_core::session::IqError;
use xmpp_core::stanza::{ChatState, Fallback, Message, Reply};

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
    let relates = &content["m.relates_to"];
    let is_edit = relates["rel_type"] == "m.replace";
    // An edit carries its new text in `m.new_content`; its `body` is a "* …" fallback.
    let shown = match &content["m.new_content"] {
        new if is_edit && new.is_object() => new,
        _ => content,
    };
    let standard = speaks_relations(bridge, sender).await;
    // A file goes as a link to the bridge (the first part), with its caption after it.
    let file = mapping::matrix_file(shown);
    let mut text = match &file {
        Some(f) => f.caption.clone().unwrap_or_default(),
        None => mapping::matrix_to_xmpp_body(shown, standard).ok_or_else(|| {
            HandleError::Fail("this kind of message cannot be sent to Messenger".into())
        })?,
    };
    let event_id = event["event_id"].as_str().unwrap_or("");
    // XEP-0308 names the first message of a correction chain, as Matrix edits do.
    let mut replace = None;
    if is_edit {
        let target = relates["event_id"].as_str().unwrap_or("");
        // Only the user's own messages, and never a reaction sent as text.
        if standard
            && bridge.client_supports(sender, &contact, ns::CORRECT)
            && sent_by(bridge, room_id, target, sender).await?
        {
            replace = stanza_of(bridge, room_id, target)
                .await?
                .filter(|id| !id.starts_with(mapping::REACTION_ID_PREFIX));
        }
    }
    let mut reply = None;
    let mut fallback_len = 0;
    if let Some(target) = relates["m.in_reply_to"]["event_id"]
        .as_str()
        .filter(|_| !is_edit)
    {
        let quoted = quote_of(bridge, room_id, target).await;
        if let Some((quote, _)) = &quoted {
            let line = format!("> {quote}\n");
            fallback_len = line.chars().count();
            text = format!("{line}{text}");
        }
        if standard && bridge.client_supports(sender, &contact, ns::REPLY) {
            // XEP-0461 `to` names the author: the contact, or left out for the user's own.
            let to = quoted
                .as_ref()
                .filter(|(_, author)| author != sender)
                .map(|_| contact.to_string());
            reply = stanza_of(bridge, room_id, target)
                .await?
                .map(|id| Reply { to, id });
        }
    }
    let max = inner.config.bridge.max_message_bytes;
    let split = |text: &str| match text.is_empty() {
        true => Vec::new(),
        false => mapping::split_text(text, max),
    };
    let mut parts = split(&text);
    let link = match &file {
        // XEP-0363 where the user's server offers it (not again for an edit of a file).
        Some(f) if standard && !is_edit => Some(
            match super::upload::to_users_server(bridge, sender, f).await {
                Some(url) => url,
                None => crate::media::link(bridge, &f.mxc, &f.mime, &f.name),
            },
        ),
        Some(f) => Some(crate::media::link(bridge, &f.mxc, &f.mime, &f.name)),
        None => None,
    };
    if let Some(link) = &link {
        parts.insert(0, link.clone());
    }
    if replace.is_some() && parts.len() > 1 {
        // A correction is one message; a long one goes as new text.
        replace = None;
    }
    if is_edit && replace.is_none() {
        parts = split(&format!("✎ {text}"));
        if let Some(link) = &link {
            parts.insert(0, link.clone());
        }
    }
    // The first part carries the id the message map keeps, so what names the message (a
    // reply, a correction, a reaction) names a part the contact has.
    let base_id = format!("mx{}", short_hash(event_id));
    for (i, part) in parts.iter().enumerate() {
        let mut message = Message::chat(contact.clone(), part.clone());
        message.id = Some(if i == 0 {
            base_id.clone()
        } else {
            format!("{base_id}-{i}")
        });
        // XEP-0359: servers keep the origin id through carbons and the archive, which is how
        // the bridge knows its own messages there.
        message.origin_id.clone_from(&message.id);
        message.chat_state = Some(ChatState::Active);
        // XEP-0333: the contact's client says when it was read (the ghost's read receipt).
        message.markable = standard;
        if i == 0 && standard {
            // XEP-0066: clients show the file inline when the body is its URL.
            message.oob_url.clone_from(&link);
        }
        if i == 0 {
            if let Some(reply) = &reply {
                message.reply = Some(reply.clone());
                if link.is_none() && fallback_len > 0 && fallback_len <= part.chars().count() {
                    message.fallbacks = vec![Fallback {
                        for_ns: ns::REPLY.into(),
                        ranges: vec![(0, fallback_len)],
                    }];
                }
            }
            if parts.len() == 1 {
                message.replace.clone_from(&replace);
            }
        }
        send_to_contact(bridge, sender, &message).await?;
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

/// Sends a stanza on the user's session: not connected is retried once it is, anything else
/// later.
pub(super) async fn send_to_contact(
    bridge: &Bridge,
    user: &str,
    message: &Message,
) -> Result<(), HandleError> {
    let inner = &bridge.inner;
    match inner.xmpp.send_message(user, message).await {
        Ok(()) => Ok(()),
        Err(IqError::NotConnected) => {
            let state = inner
                .store
                .linked_user(user)
                .await
                .ok()
                .flatten()
                .map(|u| u.connection_state)
                .unwrap_or_default();
            Err(HandleError::NotConnected {
                user: user.to_owned(),
                reason: format!("your XMPP account is not connected ({state})"),
            })
        }
        Err(e) => Err(HandleError::Retry(e.to_string())),
    }
}

/// Whether the user's server carries replies, corrections, retractions and reactions
/// (XEP-0461, 0308, 0424, 0444): a standard server does; the Messenger profile gets the text
/// fallbacks.
pub(super) async fn speaks_relations(bridge: &Bridge, user: &str) -> bool {
    // From the running session's account, not a database query per message; a user without
    // one is read from the store (its messages wait for the session anyway).
    if let Some(profile) = bridge.inner.xmpp.profile(user) {
        return profile == xmpp_core::ServerProfile::Standard;
    }
    matches!(
        bridge.inner.store.linked_user(user).await,
        Ok(Some(u)) if u.server_profile == store::ServerProfile::Standard
    )
}

/// The XMPP id of a bridged message of a portal, if the bridge knows it.
pub(super) async fn stanza_of(
    bridge: &Bridge,
    room: &str,
    event: &str,
) -> Result<Option<String>, HandleError> {
    let found = bridge
        .inner
        .store
        .message_by_event(room, event)
        .await
        .map_err(|e| HandleError::Retry(e.to_string()))?;
    Ok(found.map(|m| m.xmpp_stanza_id))
}

/// Whether `event` of the room was sent by `user` (a redacted event keeps its sender); an
/// unreachable homeserver is retried.
pub(super) async fn sent_by(
    bridge: &Bridge,
    room: &str,
    event: &str,
    user: &str,
) -> Result<bool, HandleError> {
    let (Ok(room_id), Ok(event_id)) = (ruma::RoomId::parse(room), ruma::EventId::parse(event))
    else {
        return Ok(false);
    };
    let reader = bridge.ghost_or_bot_in(room).await;
    match bridge
        .inner
        .matrix
        .event(&reader, &room_id, &event_id)
        .await
    {
        Ok(e) => Ok(e["sender"] == user),
        Err(e) if e.is_transient() => Err(HandleError::Retry(e.to_string())),
        Err(e) => {
            tracing::debug!(room, event, error = %e, "cannot read an earlier message");
            Ok(false)
        }
    }
}

/// The first line of a message of the room, shortened, to quote it, and its sender; `None` if
/// it cannot be read.
pub(super) async fn quote_of(bridge: &Bridge, room: &str, event: &str) -> Option<(String, String)> {
    let (Ok(room_id), Ok(event_id)) = (ruma::RoomId::parse(room), ruma::EventId::parse(event))
    else {
        return None;
    };
    let reader = bridge.ghost_or_bot_in(room).await;
    let target = match bridge
        .inner
        .matrix
        .event(&reader, &room_id, &event_id)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(room, event, error = %e, "cannot read the message replied to");
            return None;
        }
    };
    let content = match &target["content"]["m.new_content"] {
        new if new.is_object() => new,
        _ => &target["content"],
    };
    // A quote is plain: its marks would style the line around it.
    let text = mapping::matrix_to_xmpp_body(content, false)?;
    let sender = target["sender"].as_str().unwrap_or_default().to_owned();
    Some((mapping::excerpt(&text, 80), sender))
}
