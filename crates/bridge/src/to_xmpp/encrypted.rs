//! Encrypted rooms. The bridge cannot read end-to-end encrypted messages (yet), and Element
//! creates DMs encrypted by default: instead of silence, the bot says so in plain text and opens
//! an unencrypted room where commands work; a portal where the user turned encryption on gets a
//! notice that their messages no longer reach the contact.

use ruma::api::client::room::create_room;
use serde_json::Value;

use crate::context::Bridge;

/// Whether an invite's stripped room state (`unsigned.invite_room_state`) says the room is
/// encrypted.
pub(super) fn invite_is_encrypted(event: &Value) -> bool {
    event["unsigned"]["invite_room_state"]
        .as_array()
        .is_some_and(|state| state.iter().any(|e| e["type"] == "m.room.encryption"))
}

impl Bridge {
    /// An encrypted message (`m.room.encrypted`) from `sender` in `room_id`.
    pub(super) async fn on_encrypted_message(&self, sender: &str, room_id: &str) {
        if self.inner.config.bridge.level(sender).is_none() {
            return;
        }
        match self.portal_by_room(room_id).await {
            Ok(Some((user, contact))) if user == sender => {
                self.tell_once(
                    room_id,
                    &format!("🔒 This room is encrypted, and the bridge cannot read encrypted messages: what you write here does not reach {contact}. Their messages still arrive. To write to them, leave this room; their next message (or `pm {contact}` to the bot) opens a new, unencrypted one."),
                )
                .await;
            }
            Ok(Some(_)) => {}
            Ok(None) => self.encrypted_bot_room(sender, room_id).await,
            Err(e) => {
                tracing::warn!(room = room_id, error = %e, "cannot tell whether an encrypted room is a portal");
            }
        }
    }

    /// Encryption was turned on (`m.room.encryption`) in `room_id`.
    pub(super) async fn on_encryption_enabled(&self, sender: &str, room_id: &str) {
        if let Ok(Some((user, _))) = self.portal_by_room(room_id).await
            && user == sender
        {
            self.on_encrypted_message(sender, room_id).await;
        }
    }

    /// The user talks to the bot in an encrypted room: say so there in plain text (once), and
    /// open an unencrypted room with them (once per run) where commands work.
    pub(crate) async fn encrypted_bot_room(&self, user: &str, room_id: &str) {
        let inner = &self.inner;
        let first_for_user = inner
            .plain_rooms_opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user.to_owned());
        if !first_for_user {
            self.tell_once(room_id, "🔒 This room is encrypted and the bridge cannot read it. Use the unencrypted room I invited you to.").await;
            return;
        }
        let Ok(invitee) = crate::context::parse_user(user) else {
            return;
        };
        let mut request = create_room::v3::Request::new();
        request.invite = vec![invitee];
        request.is_direct = true;
        request.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
        request.name = Some(inner.config.appservice.bot_displayname.clone());
        match inner.matrix.create_room(&inner.bot, request).await {
            Ok(plain) => {
                tracing::info!(%user, encrypted = room_id, room = %plain, "opened an unencrypted room for the bot's commands");
                if let Ok(Some(_)) = inner.store.linked_user(user).await
                    && let Err(e) = inner
                        .store
                        .set_management_room(user, Some(plain.as_str()))
                        .await
                {
                    tracing::warn!(%user, error = %e, "could not save the new management room");
                }
                self.tell_once(room_id, "🔒 This room is encrypted, and the bridge cannot read encrypted messages yet. I invited you to an unencrypted room: send `login` (or `help`) there.").await;
                self.bot_say(plain.as_str(), &crate::commands::welcome(self, user).await)
                    .await;
            }
            Err(e) => {
                tracing::warn!(%user, error = %e, "could not open an unencrypted room");
                self.tell_once(room_id, "🔒 This room is encrypted, and the bridge cannot read encrypted messages yet. Start a chat with me with encryption turned off, and send `login` there.").await;
            }
        }
    }

    /// Posts a notice in `room_id` once per run.
    async fn tell_once(&self, room_id: &str, text: &str) {
        let first = self
            .inner
            .encryption_told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(room_id.to_owned());
        if first {
            self.notice_in_room(room_id, text).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_invite_says_whether_the_room_is_encrypted() {
        let encrypted = json!({"unsigned": {"invite_room_state": [
            {"type": "m.room.create", "state_key": "", "content": {}},
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
        ]}});
        assert!(invite_is_encrypted(&encrypted));
        let plain = json!({"unsigned": {"invite_room_state": [{"type": "m.room.name"}]}});
        assert!(!invite_is_encrypted(&plain));
        assert!(!invite_is_encrypted(&json!({})));
    }
}
