//! XEP-0085 chat states of contacts as the ghosts' typing notifications, sent only when the
//! ghost's typing state changes (a contact that was never typing costs no request).

use std::time::Duration;

use ruma::{RoomId, UserId};
use xmpp_core::Jid;

use crate::context::Bridge;

impl Bridge {
    /// Shows or hides the contact's ghost typing in its portal, if that changes anything. A
    /// contact without a portal has nowhere to type.
    pub(crate) async fn set_ghost_typing(&self, account: &str, contact: &Jid, typing: bool) {
        let jid = contact.to_string();
        let cached = self.portals().room(account, &jid);
        let room = match cached {
            Some(room) => room,
            None => match self.inner.store.portal(account, &jid).await {
                Ok(Some(portal)) => {
                    let Ok(room) = RoomId::parse(&portal.room_id) else {
                        return;
                    };
                    self.portals().insert(account, &jid, &room);
                    room
                }
                Ok(None) => return,
                Err(e) => {
                    // Typing is ephemeral: not worth holding up the account's messages for.
                    tracing::warn!(user = %account, error = %e, "cannot look up a portal for typing");
                    return;
                }
            },
        };
        let ghost = self.inner.ghosts.user_id(contact);
        if !self.note_ghost_typing(&ghost, &room, typing) {
            return;
        }
        if let Err(e) = self
            .inner
            .matrix
            .set_typing(&ghost, &room, typing, Duration::from_secs(30))
            .await
        {
            tracing::debug!(error = %e, "could not set typing");
        }
    }

    /// Ends the ghost's typing after it sent a message, if it was shown typing.
    pub(crate) async fn end_ghost_typing(&self, ghost: &UserId, room: &RoomId) {
        if self.note_ghost_typing(ghost, room, false) {
            let _ = self
                .inner
                .matrix
                .set_typing(ghost, room, false, Duration::from_secs(1))
                .await;
        }
    }

    /// Records the ghost's typing state in `room`; whether it changed.
    fn note_ghost_typing(&self, ghost: &UserId, room: &RoomId, typing: bool) -> bool {
        let mut typing_now = self
            .inner
            .ghost_typing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = format!("{room}|{ghost}");
        if typing {
            typing_now.insert(key)
        } else {
            typing_now.remove(&key)
        }
    }
}
