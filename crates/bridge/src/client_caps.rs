//! What each contact's client supports (XEP-0115 entity capabilities): the `node#ver` its
//! presence announces is asked about once (XEP-0030 disco#info to that client), cached per
//! contact and string, and decides between an XEP and its text fallback. A contact whose client
//! announced nothing is assumed to support what a standard server carries.
//!
//! The cache is per contact: the `ver` hash is not verified, so one contact's answer never
//! stands for another's client.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use xmpp_core::Jid;

use crate::context::Bridge;

/// The most `(contact, node#ver)` answers kept; past it the cache starts again.
const MAX_KNOWN: usize = 10_000;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct ClientCaps {
    /// `(contact, node#ver)` → its features; `None` while being asked.
    known: HashMap<(String, String), Option<Arc<HashSet<String>>>>,
    /// `(account, contact)` → the `node#ver` of the contact's last presence to that account.
    current: HashMap<(String, String), String>,
}

impl ClientCaps {
    /// Whether `contact`'s client (as last announced to `account`) supports `feature`.
    fn supports(&self, account: &str, contact: &str, feature: &str) -> bool {
        let Some(node) = self.current.get(&(account.to_owned(), contact.to_owned())) else {
            return true;
        };
        match self.known.get(&(contact.to_owned(), node.clone())) {
            Some(Some(features)) => features.contains(feature),
            _ => true,
        }
    }
}

impl Bridge {
    fn client_caps(&self) -> std::sync::MutexGuard<'_, ClientCaps> {
        self.inner
            .client_caps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the contact's client supports `feature` (an XEP namespace), as far as the bridge
    /// knows: true until its capabilities say otherwise.
    pub(crate) fn client_supports(&self, account: &str, contact: &Jid, feature: &str) -> bool {
        self.client_caps()
            .supports(account, &contact.to_bare().to_string(), feature)
    }

    /// A contact's available presence announced `node` (XEP-0115): remembered, and asked about
    /// unless known.
    pub(crate) fn note_client_caps(&self, account: &str, client: &Jid, node: &str) {
        let contact = client.to_bare().to_string();
        let key = (contact.clone(), node.to_owned());
        let ask = {
            let mut caps = self.client_caps();
            caps.current
                .insert((account.to_owned(), contact.clone()), node.to_owned());
            if caps.known.contains_key(&key) {
                false
            } else {
                if caps.known.len() >= MAX_KNOWN {
                    caps.known.clear();
                }
                caps.known.insert(key.clone(), None);
                true
            }
        };
        if !ask {
            return;
        }
        let this = self.clone();
        let account = account.to_owned();
        let client = client.clone();
        tokio::spawn(async move {
            let answer = this
                .inner
                .xmpp
                .client_features(&account, &client, &key.1)
                .await;
            let mut caps = this.client_caps();
            match answer {
                Ok(features) => {
                    tracing::debug!(user = %account, contact = %key.0, features = features.len(), "a contact's client capabilities");
                    caps.known
                        .insert(key, Some(Arc::new(features.into_iter().collect())));
                }
                Err(e) => {
                    // Asked again at its next presence.
                    tracing::debug!(user = %account, contact = %key.0, error = %e, "no answer about a contact's client capabilities");
                    caps.known.remove(&key);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_clients_are_assumed_capable_and_known_ones_are_asked() {
        let mut caps = ClientCaps::default();
        assert!(caps.supports("@a:x", "bob@x", "urn:xmpp:reactions:0"));
        caps.current
            .insert(("@a:x".into(), "bob@x".into()), "n#v1".into());
        caps.known.insert(("bob@x".into(), "n#v1".into()), None);
        assert!(
            caps.supports("@a:x", "bob@x", "urn:xmpp:reactions:0"),
            "still being asked"
        );
        caps.known.insert(
            ("bob@x".into(), "n#v1".into()),
            Some(Arc::new(HashSet::from(["urn:xmpp:reply:0".to_owned()]))),
        );
        assert!(!caps.supports("@a:x", "bob@x", "urn:xmpp:reactions:0"));
        assert!(caps.supports("@a:x", "bob@x", "urn:xmpp:reply:0"));
        // Another contact announcing the same string is not answered for by bob's client.
        caps.current
            .insert(("@a:x".into(), "carol@x".into()), "n#v1".into());
        assert!(caps.supports("@a:x", "carol@x", "urn:xmpp:reactions:0"));
    }
}
