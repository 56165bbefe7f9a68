//! Ephemeral Matrix data: the user's typing in a portal as XEP-0085 chat states, their read
//! receipts as XEP-0333 markers, and their Matrix presence as their XMPP presence.

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
            Some("m.receipt") => self.on_receipts(data).await,
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

    /// The user's read receipts in a portal: the contact's messages that asked for markers
    /// (XEP-0333) get a `<displayed/>`, on servers that carry them. Only the newest one read is
    /// marked: a marker means "read up to here".
    async fn on_receipts(&self, data: &Value) {
        let Some(room) = data["room_id"].as_str() else {
            return;
        };
        let Ok(Some((user, contact))) = self.portal_by_room(room).await else {
            return;
        };
        let Some(receipts) = data["content"].as_object() else {
            return;
        };
        let mut read: Vec<(i64, &str)> = receipts
            .iter()
            .filter_map(|(event, r)| {
                // Only public receipts: a private one (`m.read.private`) must not reach
                // the contact, and the homeserver does not send those to appservices anyway.
                let ts = r["m.read"][user.as_str()]["ts"].as_i64()?;
                Some((ts, event.as_str()))
            })
            .collect();
        read.sort_unstable();
        let Some((_, event)) = read.last() else {
            return;
        };
        let stanza = match self.inner.store.message_by_event(room, event).await {
            Ok(Some(m)) => m.xmpp_stanza_id,
            _ => return,
        };
        if !self.take_markable(room, &stanza)
            || !super::message::speaks_relations(self, &user).await
        {
            return;
        }
        let Ok(contact) = Jid::parse(&contact) else {
            return;
        };
        let mut marker = Message::chat(contact, "");
        marker.body = None;
        marker.displayed = Some(stanza);
        if let Err(e) = self.inner.xmpp.send_message(&user, &marker).await {
            tracing::debug!(error = %e, "could not send a read marker");
        }
    }
}
