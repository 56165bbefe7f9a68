//! The portals known in this run, both ways, so the per-message path does no database read.

use std::collections::HashMap;

use ruma::{OwnedRoomId, RoomId};

/// The portals known in this run, both ways: (user, contact) → room and room → portal. Filled
/// from the store on first use, so the per-message path does no database read.
#[derive(Debug, Default)]
pub(crate) struct PortalCache {
    rooms: HashMap<(String, String), OwnedRoomId>,
    by_room: HashMap<String, (String, String)>,
}

impl PortalCache {
    pub(crate) fn room(&self, user: &str, contact: &str) -> Option<OwnedRoomId> {
        self.rooms
            .get(&(user.to_owned(), contact.to_owned()))
            .cloned()
    }

    /// `(user, contact)` of a portal room.
    pub(crate) fn portal(&self, room: &str) -> Option<(String, String)> {
        self.by_room.get(room).cloned()
    }

    pub(crate) fn insert(&mut self, user: &str, contact: &str, room: &RoomId) {
        let key = (user.to_owned(), contact.to_owned());
        if let Some(old) = self.rooms.insert(key.clone(), room.to_owned()) {
            self.by_room.remove(old.as_str());
        }
        self.by_room.insert(room.to_string(), key);
    }

    pub(crate) fn remove_room(&mut self, room: &str) {
        if let Some(key) = self.by_room.remove(room) {
            self.rooms.remove(&key);
        }
    }

    /// Forgets every portal of a user (after logout).
    pub(crate) fn remove_user(&mut self, user: &str) {
        self.rooms.retain(|(u, _), _| u != user);
        self.by_room.retain(|_, (u, _)| u != user);
    }
}
