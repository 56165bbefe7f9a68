//! Contacts' presence as their ghosts' Matrix presence, sent only on change; subscription
//! requests as notices.

use xmpp_core::Jid;
use xmpp_core::stanza::{Presence, PresenceType};

use crate::context::Bridge;
use crate::mapping;

impl Bridge {
    pub(crate) async fn on_xmpp_presence(&self, account: &str, p: Presence) {
        let Some(from) = p.from.as_ref().map(Jid::to_bare) else {
            return;
        };
        match p.kind {
            PresenceType::Subscribe => {
                let who = p
                    .nick
                    .as_deref()
                    .map_or_else(|| from.to_string(), |n| format!("{n} ({from})"));
                self.notify_user(account, &format!("{who} wants to add you as a contact. The Messenger service does not allow changing contacts from here; accept it in another client.")).await;
                return;
            }
            PresenceType::Available | PresenceType::Unavailable => {}
            _ => return,
        }
        if let (PresenceType::Available, Some(client), Some(node)) =
            (p.kind, p.from.as_ref(), p.caps.as_deref())
            && client.resource().is_some()
        {
            self.note_client_caps(account, client, node);
        }
        // Our own other resources are not contacts.
        if self
            .inner
            .xmpp
            .session(account)
            .is_some_and(|s| s.jid().bare_eq(&from))
        {
            return;
        }
        let (state, status) = mapping::xmpp_presence_to_matrix(&p);
        let key = from.to_string();
        {
            let mut sent = self
                .inner
                .presence_sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if sent.get(&key) == Some(&(state.clone(), status.clone())) {
                return;
            }
            sent.insert(key, (state.clone(), status.clone()));
        }
        if let Some(hash) = &p.photo_hash {
            let known = self
                .inner
                .store
                .ghost(&from.to_string())
                .await
                .ok()
                .flatten()
                .and_then(|g| g.avatar_hash);
            let same = known.is_some_and(|k| k.eq_ignore_ascii_case(hash));
            if !same && !hash.is_empty() {
                self.spawn_profile_sync(account, from.clone());
            }
        }
        let ghost = self.inner.ghosts.user_id(&from);
        if let Err(e) = self.ensure_registered(&ghost).await {
            tracing::debug!(error = %e, "could not register a ghost for presence");
            return;
        }
        if let Err(e) = self.inner.matrix.set_presence(&ghost, state, status).await {
            tracing::debug!(ghost = %ghost, error = %e, "could not set a ghost's presence");
        }
    }
}
