//! Ghosts and portals on the Matrix side: a ghost is registered and given its contact's name and
//! avatar before it says anything; a portal is a DM room per (linked user, contact), created on
//! the first message either way.

use std::collections::HashMap;
use std::time::Duration;

use ruma::api::client::room::create_room;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde_json::json;
use sha2::Digest;
use store::Ghost;
use xmpp_core::Jid;

use crate::matrix::MatrixError;
use crate::runtime::{Bridge, parse_user};

impl Bridge {
    /// Makes sure the ghost of `contact` exists with a name (and avatar): on its first use, or
    /// when `refresh` is set (roster read, new photo hash), the contact's vCard is fetched
    /// through `account`'s session.
    pub(crate) async fn ensure_ghost(
        &self,
        account: &str,
        contact: &Jid,
        refresh: bool,
    ) -> Result<OwnedUserId, MatrixError> {
        let inner = &self.inner;
        let ghost = inner.ghosts.user_id(contact);
        let ready = |inner: &crate::runtime::Inner| {
            inner
                .ghosts_ready
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&contact.to_string())
        };
        if !refresh && ready(inner) {
            return Ok(ghost);
        }
        let lock = self.lock_for(&format!("ghost|{contact}"));
        let _guard = lock.lock().await;
        self.ensure_registered(&ghost).await?;
        let jid = contact.to_string();
        let record = inner.store.ghost(&jid).await.ok().flatten();
        if record.is_some() && !refresh {
            inner
                .ghosts_ready
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(jid);
            return Ok(ghost);
        }
        let vcard = if inner.xmpp.session(account).is_some() {
            match tokio::time::timeout(Duration::from_secs(5), inner.xmpp.vcard(account, contact))
                .await
            {
                Ok(Ok(v)) => Some(v),
                Ok(Err(e)) => {
                    tracing::debug!(contact = %jid, error = %e, "no vCard");
                    None
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let roster_name = inner
            .roster_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(account.to_owned(), jid.clone()))
            .cloned();
        let name = vcard
            .as_ref()
            .and_then(|v| v.display_name().map(str::to_owned))
            .or(roster_name)
            .or_else(|| record.as_ref().and_then(|r| r.display_name.clone()))
            .unwrap_or_else(|| contact.local().unwrap_or(contact.domain()).to_owned());
        let mut updated = record.clone().unwrap_or(Ghost {
            jid: jid.clone(),
            matrix_user: ghost.to_string(),
            display_name: None,
            avatar_hash: None,
            avatar_mxc: None,
            updated_at: 0,
        });
        if updated.display_name.as_deref() != Some(name.as_str()) {
            inner.matrix.set_display_name(&ghost, &name).await?;
            updated.display_name = Some(name);
        }
        if let Some(photo) = vcard.as_ref().and_then(|v| v.photo.as_ref()) {
            let hash: String = sha2::Sha256::digest(&photo.data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if updated.avatar_hash.as_deref() != Some(hash.as_str()) {
                // Uploaded once per image: the hash is remembered with the mxc URI.
                let mxc = inner
                    .matrix
                    .upload(&ghost, photo.data.clone(), &photo.mime)
                    .await?;
                inner.matrix.set_avatar_url(&ghost, mxc.clone()).await?;
                updated.avatar_hash = Some(hash);
                updated.avatar_mxc = Some(mxc.to_string());
            }
        }
        if Some(&updated) != record.as_ref()
            && let Err(e) = inner.store.upsert_ghost(&updated).await
        {
            tracing::warn!(contact = %jid, error = %e, "could not save a ghost");
        }
        inner
            .ghosts_ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(jid);
        Ok(ghost)
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
        request.initial_state = self
            .bridge_state(contact, &ghost, &name)
            .into_iter()
            .filter_map(|v| serde_json::value::to_raw_value(&v).ok().map(Raw::from_json))
            .collect();
        let room = inner.matrix.create_room(&ghost, request).await?;
        inner
            .store
            .upsert_portal(account, &jid, room.as_str())
            .await
            .map_err(store_err)?;
        tracing::info!(user = account, contact = %jid, room = %room, "created a portal");
        self.portals().insert(account, &jid, &room);
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
}

pub(crate) fn store_err(e: store::Error) -> MatrixError {
    // The store's own errors say what to do; surface them as retryable delivery failures.
    MatrixError::Unreachable {
        url: "the bridge's database".into(),
        reason: e.to_string(),
    }
}

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

impl Bridge {
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
