//! Membership in portals and the bot's rooms: the bot joins when invited (by allowed users), a
//! DM opened with a ghost becomes that contact's portal, and a portal the user left (or whose
//! ghost they kicked) is forgotten, so the next message opens a new one.

use ruma::RoomId;
use serde_json::Value;

use super::HandleError;
use crate::context::Bridge;

/// A store error while handling an event: the event is tried again later, never half done.
fn retry(e: store::Error) -> HandleError {
    HandleError::Retry(format!("the bridge's database: {e}"))
}

pub(super) async fn on_membership(
    bridge: &Bridge,
    event: &Value,
    sender: &str,
    room_id: &str,
) -> Result<(), HandleError> {
    let inner = &bridge.inner;
    let (Some(target), Some(membership)) = (
        event["state_key"].as_str(),
        event["content"]["membership"].as_str(),
    ) else {
        return Ok(());
    };
    let Ok(room) = RoomId::parse(room_id) else {
        return Ok(());
    };
    let allowed = inner.config.bridge.level(sender).is_some();
    if target == inner.bot.as_str() && membership == "invite" {
        if !allowed {
            // Rejected without joining: a stranger cannot pull the bot into rooms.
            tracing::info!(%sender, room = room_id, "rejected an invite from a user the permissions do not allow");
            let _ = inner.matrix.leave(&inner.bot, &room).await;
            return Ok(());
        }
        if let Err(e) = inner.matrix.join(&inner.bot, &room).await {
            tracing::warn!(room = room_id, error = %e, "the bot could not join");
            return Ok(());
        }
        if super::encrypted::invite_is_encrypted(event) {
            // Element makes DMs encrypted; the bot cannot read them (yet). Say so in plain text
            // and open an unencrypted room where commands work.
            bridge.encrypted_bot_room(sender, room_id).await;
            return Ok(());
        }
        if let Some(user) = inner.store.linked_user(sender).await.map_err(retry)?
            && user.management_room.is_none()
        {
            inner
                .store
                .set_management_room(sender, Some(room_id))
                .await
                .map_err(retry)?;
        }
        bridge
            .bot_say(room_id, &crate::commands::welcome(bridge, sender).await)
            .await;
        return Ok(());
    }
    if let Some(contact) = ruma::UserId::parse(target)
        .ok()
        .and_then(|u| inner.ghosts.contact(&u))
    {
        if membership == "invite" && allowed {
            // The user opened a DM with a ghost: that room becomes the portal.
            if inner
                .store
                .linked_user(sender)
                .await
                .map_err(retry)?
                .is_none()
            {
                return Ok(());
            }
            let ghost = inner.ghosts.user_id(&contact);
            if bridge.ensure_registered(&ghost).await.is_ok()
                && inner.matrix.join(&ghost, &room).await.is_ok()
            {
                inner
                    .store
                    .upsert_portal(sender, &contact.to_string(), room_id)
                    .await
                    .map_err(retry)?;
                bridge.portals().insert(sender, &contact.to_string(), &room);
                let _ = bridge.ensure_ghost(sender, &contact, false).await;
            }
        } else if matches!(membership, "leave" | "ban")
            && let Some((portal_user, portal_contact)) =
                bridge.portal_by_room(room_id).await.map_err(retry)?
            && portal_contact == contact.to_string()
        {
            // The user kicked the ghost out of its portal: the ghost cannot write there again.
            bridge
                .forget_portal(&portal_user, &portal_contact, &room)
                .await
                .map_err(retry)?;
        }
        return Ok(());
    }
    if matches!(membership, "leave" | "ban")
        && let Some((portal_user, portal_contact)) =
            bridge.portal_by_room(room_id).await.map_err(retry)?
        && portal_user == target
    {
        // The user left the portal: forget it; the next message opens a new one.
        bridge
            .forget_portal(&portal_user, &portal_contact, &room)
            .await
            .map_err(retry)?;
    }
    Ok(())
}
