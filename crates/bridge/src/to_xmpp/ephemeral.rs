//! Ephemeral Matrix data: the user's typing in a portal as XEP-0085 chat states, and their
//! Matrix presence as their XMPP presence.

use serde_json::Value;
use xmpp_core::Jid;
use xmpp_core::stanza::{ChatState, Message};

use crate::context::Bridge;
use crate::mapping;

impl Bridge {
    /// Ephemeral data from a transaction: typing in portals becomes XEP-0085 chat states, and
    /// the linked users' presence becomes their XMPP presence.
    pub(crate) async fn on_ephemeral(&self, data: &Value) {
        let inner = &self.inner;
        match data["type"].as_str() {
            Some("m.typing") => {
                let Some(room) = data["room_id"].as_str() else {
                    return;
                };
                let Ok(Some((portal_user, portal_contact))) = self.portal_by_room(room).await
                else {
                    return;
                };
                let typing = data["content"]["user_ids"].as_array().is_some_and(|ids| {
                    ids.iter().any(|u| u.as_str() == Some(portal_user.as_str()))
                });
                let changed = {
                    let mut set = inner
                        .typing_in
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if typing {
                        set.insert(room.to_owned())
                    } else {
                        set.remove(room)
                    }
                };
                if !changed {
                    return;
                }
                let Ok(contact) = Jid::parse(&portal_contact) else {
                    return;
                };
                let state = if typing {
                    ChatState::Composing
                } else {
                    ChatState::Paused
                };
                if let Err(e) = inner
                    .xmpp
                    .send_message(&portal_user, &Message::chat_state(contact, state))
                    .await
                {
                    tracing::debug!(error = %e, "could not send a chat state");
                }
            }
            Some("m.presence") if inner.config.bridge.presence_from_matrix => {
                let Some(user) = data["sender"].as_str() else {
                    return;
                };
                let Some(state) = data["content"]["presence"].as_str() else {
                    return;
                };
                let status = data["content"]["status_msg"].as_str().map(str::to_owned);
                if inner.xmpp.session(user).is_none() {
                    return;
                }
                {
                    let mut last = inner
                        .user_presence
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let now = (state.to_owned(), status.clone());
                    if last.get(user) == Some(&now) {
                        return;
                    }
                    last.insert(user.to_owned(), now);
                }
                let presence = mapping::matrix_presence_to_xmpp(state, status);
                if let Err(e) = inner.xmpp.set_presence(user, presence).await {
                    tracing::debug!(error = %e, "could not send the user's presence");
                }
            }
            _ => {}
        }
    }
}
