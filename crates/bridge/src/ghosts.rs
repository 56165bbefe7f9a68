//! Ghost users on the Matrix side: registered once, named and given an avatar from the
//! contact's vCard before they say anything.

use std::time::Duration;

use ruma::{OwnedUserId, UserId};
use sha1::Digest;
use store::Ghost;
use xmpp_core::Jid;

use crate::context::{Bridge, Inner};
use crate::matrix::MatrixError;

impl Bridge {
    /// Registers a ghost once per run (registering an existing user is fine).
    pub(crate) async fn ensure_registered(&self, user: &UserId) -> Result<(), MatrixError> {
        let known = self
            .inner
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(user.as_str());
        if known {
            return Ok(());
        }
        self.inner.matrix.register(user.localpart()).await?;
        self.inner
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user.to_string());
        Ok(())
    }

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
        let ready = |inner: &Inner| {
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
                Ok(Ok(v)) => {
                    inner.metrics.vcard_fetch("ok");
                    Some(v)
                }
                Ok(Err(e)) => {
                    let result = if matches!(e, xmpp_core::session::IqError::TooLarge(_)) {
                        // Logged by the session already; the ghost keeps its name and avatar.
                        "too_large"
                    } else {
                        tracing::debug!(contact = %jid, error = %e, "no vCard");
                        "error"
                    };
                    inner.metrics.vcard_fetch(result);
                    None
                }
                Err(_) => {
                    inner.metrics.vcard_fetch("timeout");
                    None
                }
            }
        } else {
            None
        };
        // The ghost is shared by every user who has this contact: its name comes from the
        // contact's own vCard, never from one user's private roster alias (that one names the
        // user's portal only).
        let name = vcard
            .as_ref()
            .and_then(|v| v.display_name().map(str::to_owned))
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
            // XEP-0153 announces SHA-1 of the image: store the same, so a presence with a known
            // hash does not fetch the vCard again.
            let hash: String = sha1::Sha1::digest(&photo.data)
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
}
