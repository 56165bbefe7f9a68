//! XMPP → Matrix: each linked account's XMPP events, handled in order by that account's own
//! task: messages are recorded and delivered to the portal, presence and chat states shown on the
//! ghost, roster names remembered.

mod message;
mod presence;
mod typing;

use tokio::sync::mpsc;
use xmpp_core::Jid;
use xmpp_core::manager::{AccountEvent, ManagerEvent};
use xmpp_core::session::SessionEvent;

use crate::context::Bridge;

impl Bridge {
    pub(crate) async fn xmpp_event_loop(self, mut events: mpsc::Receiver<AccountEvent>) {
        while let Some(AccountEvent { account, event }) = events.recv().await {
            match event {
                ManagerEvent::State(state) => self.on_state(&account, state).await,
                ManagerEvent::Roster(items) => {
                    for item in items {
                        self.remember_roster_name(&account, &item);
                        self.spawn_profile_sync(&account, item.jid.clone());
                    }
                }
                ManagerEvent::Session(SessionEvent::RosterPush(items)) => {
                    for item in items {
                        self.remember_roster_name(&account, &item);
                    }
                }
                ManagerEvent::Session(SessionEvent::Message(m)) => {
                    self.on_xmpp_message(&account, m).await
                }
                ManagerEvent::Session(SessionEvent::Presence(p)) => {
                    self.on_xmpp_presence(&account, p).await
                }
                ManagerEvent::Session(SessionEvent::Invalid { reason }) => {
                    tracing::warn!(user = %account, %reason, "ignored a stanza the bridge cannot understand");
                }
            }
        }
    }

    pub(crate) fn remember_roster_name(&self, account: &str, item: &xmpp_core::stanza::RosterItem) {
        if let Some(name) = &item.name {
            let mut names = self
                .inner
                .roster_names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            names.insert((account.to_owned(), item.jid.to_string()), name.clone());
        }
    }

    pub(crate) fn spawn_profile_sync(&self, account: &str, contact: Jid) {
        let this = self.clone();
        let account = account.to_owned();
        tokio::spawn(async move {
            let _permit = this.inner.profile_sync.acquire().await;
            if let Err(e) = this.ensure_ghost(&account, &contact, true).await {
                tracing::warn!(user = %account, contact = %contact, error = %e, "could not update a contact's profile");
            }
        });
    }
}
