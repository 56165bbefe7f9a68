//! XEP-0333 chat markers, XMPP → Matrix: the contact's `<displayed/>` becomes their ghost's
//! read receipt on the user's message; and which of the contact's messages asked for a marker
//! when the user reads them (see `to_xmpp::ephemeral`).

use ruma::{EventId, RoomId};
use xmpp_core::Jid;

use crate::context::Bridge;

/// Messages remembered as asking for a marker, at most (the oldest are forgotten first… in
/// bulk: the set is cleared when full).
const MARKABLE_KEPT: usize = 10_000;

impl Bridge {
    /// Remembers that the contact's message `stanza`, delivered into `room`, asked for a
    /// marker.
    pub(crate) fn remember_markable(&self, room: &str, stanza: &str) {
        let mut set = self
            .inner
            .markable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.len() >= MARKABLE_KEPT {
            set.clear();
        }
        set.insert(format!("{room}|{stanza}"));
    }

    /// Takes the mark off a contact's message: true if it asked for a marker and none was sent.
    pub(crate) fn take_markable(&self, room: &str, stanza: &str) -> bool {
        self.inner
            .markable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&format!("{room}|{stanza}"))
    }

    /// The contact has read up to the user's message `read` (its XMPP id): their ghost's read
    /// receipt moves there.
    pub(crate) async fn on_contact_read(&self, account: &str, contact: &Jid, read: &str) {
        let Some(room) = self.portals().room(account, &contact.to_string()) else {
            return;
        };
        let Ok(room_id) = RoomId::parse(room.as_str()) else {
            return;
        };
        let event = match self.event_of(&room_id, read).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                tracing::debug!(%room, read, "the contact read a message the bridge does not know");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up the message the contact read");
                return;
            }
        };
        let Ok(event) = EventId::parse(&event) else {
            return;
        };
        let ghost = self.inner.ghosts.user_id(contact);
        if let Err(e) = self
            .inner
            .matrix
            .read_receipt(&ghost, &room_id, &event)
            .await
        {
            tracing::debug!(%room, error = %e, "cannot set the contact's read receipt");
        }
    }
}
