//! XEP-0085 chat states of contacts as the ghosts' typing notifications.

use std::time::Duration;

use xmpp_core::Jid;

use crate::context::Bridge;

impl Bridge {
    pub(crate) async fn set_ghost_typing(&self, account: &str, contact: &Jid, typing: bool) {
        let jid = contact.to_string();
        let cached = self.portals().room(account, &jid);
        let room = match cached {
            Some(room) => room,
            None => {
                let Ok(Some(portal)) = self.inner.store.portal(account, &jid).await else {
                    return;
                };
                let Ok(room) = ruma::RoomId::parse(&portal.room_id) else {
                    return;
                };
                self.portals().insert(account, &jid, &room);
                room
            }
        };
        let ghost = self.inner.ghosts.user_id(contact);
        {
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
            };
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
}
