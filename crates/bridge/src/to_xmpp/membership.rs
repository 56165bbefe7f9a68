//! Membership in portals and the bot's rooms: the bot joins when invited (by allowed users), a
//! DM opened with a ghost becomes that contact's portal, and a portal the user left is forgotten.

use ruma::RoomId;
use serde_json::Value;
use xmpp_core::Jid;

use crate::context::Bridge;

pub(super) async fn on_membership(bridge: &Bridge, event: &Value, sender: &str, room_id: &str) {
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
