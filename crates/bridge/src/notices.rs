//! Notices: the bot's answers and warnings in the management room, and notices in portals.

use ruma::UserId;
use xmpp_core::Jid;

use crate::context::{Bridge, now_ms};
use crate::mapping;

impl Bridge {
    /// Posts a notice in a room as the portal's ghost (or the bot elsewhere).
    pub(crate) async fn notice_in_room(&self, room_id: &str, text: &str) {
        let sender = match self.portal_by_room(room_id).await {
            Ok(Some((_, contact))) => Jid::parse(&contact).map_or_else(
                |_| self.inner.bot.clone(),
                |j| self.inner.ghosts.user_id(&j),
            ),
            _ => self.inner.bot.clone(),
        };
        self.post_notice(&sender, room_id, text).await;
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
    pub(crate) async fn notify_user(&self, matrix_user: &str, text: &str) {
        if let Ok(Some(user)) = self.inner.store.linked_user(matrix_user).await
            && let Some(room) = user.management_room
        {
            self.bot_say(&room, text).await;
        }
    }

    /// The bot says something in a room.
    pub(crate) async fn bot_say(&self, room_id: &str, text: &str) {
        self.post_notice(&self.inner.bot, room_id, text).await;
    }
}
