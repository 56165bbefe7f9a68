//! Portals: a DM room per (linked user, contact), created as the contact's ghost (inviting the
//! user) on the first message either way, with MSC2346 bridge state.

use ruma::api::client::room::create_room;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde_json::json;
use xmpp_core::Jid;

use crate::context::{Bridge, parse_user};
use crate::matrix::MatrixError;
use crate::portal_cache::PortalCache;

impl Bridge {
    /// Forgets a portal that can no longer be used (the user left it, or the ghost was kicked):
    /// the next message either way opens a new one. The ghost leaves the old room.
    pub(crate) async fn forget_portal(
        &self,
        user: &str,
        contact: &str,
        room: &RoomId,
    ) -> Result<(), store::Error> {
        self.inner.store.delete_portal(room.as_str()).await?;
        self.portals().remove_room(room.as_str());
        tracing::info!(%user, %contact, %room, "forgot a portal");
        if let Ok(contact) = Jid::parse(contact) {
            let _ = self
                .inner
                .matrix
                .leave(&self.inner.ghosts.user_id(&contact), room)
                .await;
        }
        Ok(())
    }

    /// The portal room of (`account`, `contact`), created (as the ghost, inviting the user) if
    /// there is none.
    pub(crate) async fn ensure_portal(
        &self,
        account: &str,
        contact: &Jid,
    ) -> Result<OwnedRoomId, MatrixError> {
        let inner = &self.inner;
        let jid = contact.to_string();
        if let Some(room) = self.portals().room(account, &jid) {
            return Ok(room);
        }
        let lock = self.lock_for(&format!("portal|{account}|{jid}"));
        let _guard = lock.lock().await;
        if let Some(p) = inner.store.portal(account, &jid).await.map_err(store_err)?
            && let Ok(room) = RoomId::parse(&p.room_id)
        {
            self.portals().insert(account, &jid, &room);
            return Ok(room);
        }
        let ghost = inner.ghosts.user_id(contact);
        let user = parse_user(account)?;
        let name = inner
            .store
            .ghost(&jid)
            .await
            .ok()
            .flatten()
            .and_then(|g| g.display_name)
            .unwrap_or_else(|| jid.clone());
        let mut request = create_room::v3::Request::new();
        request.invite = vec![user];
        request.is_direct = true;
        request.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
        // The user's own alias for this contact names their portal (only theirs).
        request.name = inner
            .roster_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(account.to_owned(), jid.clone()))
            .cloned();
        request.initial_state = self
            .bridge_state(contact, &ghost, &name)
            .into_iter()
            .filter_map(|v| serde_json::value::to_raw_value(&v).ok().map(Raw::from_json))
            .collect();
        let room = inner.matrix.create_room(&ghost, request).await?;
        tracing::info!(user = account, contact = %jid, room = %room, "created a portal");
        // The room exists now: a delivery retried after a failed save must not create a second
        // one, and an unsaved portal would make the user's lines in it bot commands after a
        // restart. So the save is retried until the store takes it.
        self.portals().insert(account, &jid, &room);
        let mut delay = std::time::Duration::from_millis(100);
        while let Err(e) = inner
            .store
            .upsert_portal(account, &jid, room.as_str())
            .await
        {
            tracing::error!(user = account, contact = %jid, room = %room, error = %e, "cannot save a new portal; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(10));
        }
        // Forgotten while the save was retried (the user left, or logged out): undo the save.
        if self.portals().room(account, &jid).as_ref() != Some(&room)
            && let Err(e) = inner.store.delete_portal(room.as_str()).await
        {
            tracing::warn!(user = account, contact = %jid, room = %room, error = %e, "cannot remove a portal forgotten while it was saved");
        }
        Ok(room)
    }

    /// MSC2346 `m.bridge` (and the older `uk.half-shot.bridge`) state for a portal.
    fn bridge_state(
        &self,
        contact: &Jid,
        ghost: &OwnedUserId,
        name: &str,
    ) -> Vec<serde_json::Value> {
        let profile = &self.inner.config.xmpp;
        let content = json!({
            "bridgebot": self.inner.bot.as_str(),
            "creator": ghost.as_str(),
            "protocol": {"id": "messenger", "displayname": "Messenger (XMPP)"},
            "network": {"id": profile.domain, "displayname": profile.domain},
            "channel": {"id": contact.to_string(), "displayname": name},
        });
        let key = format!("net.messenger-bridge://{}/{}", profile.domain, contact);
        vec![
            json!({"type": "m.bridge", "state_key": key, "content": content}),
            json!({"type": "uk.half-shot.bridge", "state_key": key, "content": content}),
        ]
    }

    /// The portal cache, locked.
    pub(crate) fn portals(&self) -> std::sync::MutexGuard<'_, PortalCache> {
        self.inner
            .portals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `(user, contact)` of a portal room, from the cache or the store.
    pub(crate) async fn portal_by_room(
        &self,
        room_id: &str,
    ) -> Result<Option<(String, String)>, store::Error> {
        if let Some(p) = self.portals().portal(room_id) {
            return Ok(Some(p));
        }
        let Some(p) = self.inner.store.portal_by_room(room_id).await? else {
            return Ok(None);
        };
        if let Ok(room) = RoomId::parse(&p.room_id) {
            self.portals().insert(&p.matrix_user, &p.contact_jid, &room);
        }
        Ok(Some((p.matrix_user, p.contact_jid)))
    }
}

pub(crate) fn store_err(e: store::Error) -> MatrixError {
    // The store's own errors say what to do; surface them as retryable delivery failures.
    MatrixError::Unreachable {
        url: "the bridge's database".into(),
        reason: e.to_string(),
    }
}
