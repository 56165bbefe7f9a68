//! Notices: the bot's answers and warnings in the management room, and notices in portals.

use ruma::{OwnedUserId, UserId};
use xmpp_core::Jid;

use crate::context::{Bridge, now_ms};
use crate::mapping;

impl Bridge {
    /// Posts a notice in a room as the portal's ghost (or the bot elsewhere).
    pub(crate) async fn notice_in_room(&self, room_id: &str, text: &str) {
        let sender = self.ghost_or_bot_in(room_id).await;
        self.post_notice(&sender, room_id, text).await;
    }

    /// Who speaks in (and reads) a room: the portal's ghost, or the bot elsewhere.
    pub(crate) async fn ghost_or_bot_in(&self, room_id: &str) -> OwnedUserId {
        match self.portal_by_room(room_id).await {
            Ok(Some((_, contact))) => Jid::parse(&contact).map_or_else(
                |_| self.inner.bot.clone(),
                |j| self.inner.ghosts.user_id(&j),
            ),
            _ => self.inner.bot.clone(),
        }
    }

    /// Posts an `m.notice` in a room as `sender`; failures are logged, never fatal.
    pub(crate) async fn post_notice(&self, sender: &UserId, room_id: &str, text: &str) {
        let Ok(room) = ruma::RoomId::parse(room_id) else {
            return;
        };
        let Ok(raw) = serde_json::value::to_raw_value(&mapping::notice(text)) else {
            return;
        };
        let txn = format!("notice-{}-{}", now_ms(), rand::random::<u32>());
        let content = ruma::serde::Raw::from_json(raw);
        if let Err(e) = self
            .inner
            .matrix
            .send_message(sender, &room, &txn, content, "m.room.message", None)
            .await
        {
            tracing::warn!(room = room_id, %sender, error = %e, "could not post a notice");
        }
    }

    /// Tells a user something in their management room, if they have one.
    /// A user without one (linked by the operator's `link` command) gets one opened by the
    /// bot. A database error is retried a few times, then logged, never dropped silently.
    pub(crate) async fn notify_user(&self, matrix_user: &str, text: &str) {
        let mut wait = std::time::Duration::from_millis(500);
        for attempt in 1..=4 {
            match self.inner.store.linked_user(matrix_user).await {
                Ok(Some(user)) => {
                    let room = match user.management_room {
                        Some(room) => Some(room),
                        None => self.open_management_room(matrix_user).await,
                    };
                    if let Some(room) = room {
                        self.bot_say(&room, text).await;
                    }
                    return;
                }
                Ok(None) => return,
                Err(e) if attempt < 4 => {
                    tracing::warn!(user = %matrix_user, error = %e, "cannot read the user's management room; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    tracing::error!(user = %matrix_user, error = %e, "could not tell the user something (database unavailable)");
                }
            }
        }
    }

    /// The bot says something in a room.
    pub(crate) async fn bot_say(&self, room_id: &str, text: &str) {
        self.post_notice(&self.inner.bot, room_id, text).await;
    }

    /// Opens a DM between the bot and a linked user and makes it their management room.
    async fn open_management_room(&self, matrix_user: &str) -> Option<String> {
        use ruma::api::client::room::create_room;
        let inner = &self.inner;
        let invitee = crate::context::parse_user(matrix_user).ok()?;
        let mut request = create_room::v3::Request::new();
        request.invite = vec![invitee];
        request.is_direct = true;
        request.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
        request.name = Some(inner.config.appservice.bot_displayname.clone());
        let room = match inner.matrix.create_room(&inner.bot, request).await {
            Ok(room) => room.to_string(),
            Err(e) => {
                tracing::warn!(user = %matrix_user, error = %e, "could not open a management room");
                return None;
            }
        };
        if let Err(e) = inner
            .store
            .set_management_room(matrix_user, Some(&room))
            .await
        {
            tracing::warn!(user = %matrix_user, error = %e, "could not save the new management room");
        }
        tracing::info!(user = %matrix_user, %room, "opened a management room");
        Some(room)
    }
}
