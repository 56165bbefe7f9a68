//! XMPP → Matrix: each linked account's XMPP events, handled in order by that account's own
//! task: messages are recorded and delivered to the portal, presence and chat states shown on the
//! ghost, roster names remembered.

mod deliver;
mod markers;
mod media;
mod message;
mod presence;
mod relations;
mod typing;

use message::Origin;

pub(crate) use deliver::{DOUBLE_PUPPET_NAME, DOUBLE_PUPPET_SOURCE};

use std::collections::HashMap;

use tokio::sync::mpsc;
use xmpp_core::Jid;
use xmpp_core::manager::{AccountEvent, ManagerEvent};
use xmpp_core::session::SessionEvent;

use crate::context::Bridge;

/// An XMPP event and when the bridge read it.
struct Received {
    event: ManagerEvent,
    /// Dropped once the event is handled: with stream management, the XMPP server is told only
    /// then that the stanza arrived, so a crash before that loses nothing on such servers.
    receipt: xmpp_core::stream_management::Receipt,
    /// Unix milliseconds.
    at_ms: i64,
    at: std::time::Instant,
}

impl Bridge {
    /// Hands each account's XMPP events to that account's own task, so they are handled in
    /// order per account while a slow homeserver call for one user never stalls the others.
    /// Returns when the session manager has shut down and every event it sent is handled.
    pub(crate) async fn xmpp_event_loop(self, mut events: mpsc::Receiver<AccountEvent>) {
        type Queue = mpsc::UnboundedSender<Received>;
        let mut accounts: HashMap<String, Queue> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        // Strictly increasing: a stanza without an id is told apart from an identical one read
        // in the same millisecond by its receive time (see `on_xmpp_message`'s dedupe key).
        let mut last_ms = 0i64;
        let spawn = |tasks: &mut tokio::task::JoinSet<()>, account: &str| {
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.spawn(self.clone().account_events(account.to_owned(), rx));
            tx
        };
        while let Some(AccountEvent {
            account,
            event,
            receipt,
        }) = events.recv().await
        {
            // Stamped now: an account's task may be busy (a database outage, a slow homeserver)
            // and a message's time is when the bridge read it, not when it got to it.
            last_ms = crate::context::now_ms().max(last_ms + 1);
            let event = Received {
                event,
                receipt,
                at_ms: last_ms,
                at: std::time::Instant::now(),
            };
            let queue = accounts
                .entry(account.clone())
                .or_insert_with(|| spawn(&mut tasks, &account));
            if let Err(mpsc::error::SendError(event)) = queue.send(event) {
                // The account's task ended (it panicked): start a new one for what follows.
                tracing::error!(user = %account, "the account's event task had stopped; restarting it");
                let tx = spawn(&mut tasks, &account);
                let _ = tx.send(event);
                accounts.insert(account, tx);
            }
        }
        // Shutting down: each account's task handles what is queued, then ends.
        drop(accounts);
        while tasks.join_next().await.is_some() {}
        tracing::debug!("every XMPP event read before the shutdown is handled");
    }

    /// One account's XMPP events, in order.
    async fn account_events(self, account: String, mut events: mpsc::UnboundedReceiver<Received>) {
        while let Some(event) = events.recv().await {
            self.on_account_event(&account, event).await;
        }
    }

    async fn on_account_event(&self, account: &str, received: Received) {
        let Received {
            event,
            receipt,
            at_ms,
            at,
        } = received;
        self.handle_account_event(account, event, at_ms, at).await;
        // Recorded (or deliberately dropped): the stanza may now be acknowledged.
        drop(receipt);
    }

    async fn handle_account_event(
        &self,
        account: &str,
        event: ManagerEvent,
        at_ms: i64,
        at: std::time::Instant,
    ) {
        match event {
            ManagerEvent::State(state) => {
                if let xmpp_core::manager::ConnectionState::Connected {
                    jid,
                    resumed: false,
                } = &state
                {
                    // In order with the session's own events, which are handled after this.
                    self.inner
                        .own_jids
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(account.to_owned(), jid.to_bare());
                    self.inner
                        .archive_caught_up
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(account);
                }
                self.on_state(account, state).await;
            }
            ManagerEvent::CaughtUp { complete } => {
                if complete {
                    self.inner
                        .archive_caught_up
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(account.to_owned());
                }
            }
            ManagerEvent::Roster(items) => {
                for item in items {
                    self.remember_roster_name(account, &item);
                    self.spawn_profile_sync(account, item.jid.clone());
                }
            }
            ManagerEvent::Session(SessionEvent::RosterPush(items)) => {
                for item in items {
                    if self.remember_roster_name(account, &item) {
                        self.rename_portal(account, &item).await;
                    }
                }
            }
            ManagerEvent::Session(SessionEvent::Message(m)) => {
                self.on_xmpp_message(account, m, at_ms, at).await;
            }
            ManagerEvent::Session(SessionEvent::Carbon { kind, message }) => {
                self.on_carbon(account, kind, message, at_ms, at).await;
            }
            ManagerEvent::Session(SessionEvent::Archived {
                archive_id,
                message,
            }) => {
                self.on_archived(account, archive_id, message, Origin::CatchUp, at_ms, at)
                    .await;
            }
            ManagerEvent::Features(features) => {
                tracing::debug!(user = %account, ?features, "what the XMPP server offers");
                let mut accounts = self
                    .inner
                    .archive_accounts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if features.archive {
                    accounts.insert(account.to_owned());
                } else {
                    accounts.remove(account);
                }
                drop(accounts);
                let mut uploads = self
                    .inner
                    .upload_services
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match features.upload {
                    Some(service) => uploads.insert(account.to_owned(), service),
                    None => uploads.remove(account),
                };
            }
            ManagerEvent::Session(SessionEvent::Presence(p)) => {
                self.on_xmpp_presence(account, p).await;
            }
            ManagerEvent::Session(SessionEvent::Invalid { reason }) => {
                tracing::warn!(user = %account, %reason, "ignored a stanza the bridge cannot understand");
            }
            ManagerEvent::Session(SessionEvent::TooLarge {
                stanza,
                from,
                kind,
                bytes,
            }) => {
                // A contact's message that cannot be bridged is reported, never dropped
                // silently; oversized presences and errors are only logged (by the session).
                let chat = stanza == "message" && !matches!(kind.as_deref(), Some("error"));
                if let (true, Some(from)) = (chat, from) {
                    self.notify_user(
                        account,
                        &format!(
                            "⚠ {} sent a message of {} KiB, more than the bridge accepts from the XMPP server; it was not delivered here. Read it in another client.",
                            from.to_bare(),
                            bytes.div_ceil(1024)
                        ),
                    )
                    .await;
                }
            }
        }
    }

    /// Remembers the user's own name for a contact; returns whether it changed.
    pub(crate) fn remember_roster_name(
        &self,
        account: &str,
        item: &xmpp_core::stanza::RosterItem,
    ) -> bool {
        let Some(name) = &item.name else {
            return false;
        };
        let mut names = self
            .inner
            .roster_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names.insert((account.to_owned(), item.jid.to_string()), name.clone()) != Some(name.clone())
    }

    /// A roster push renamed a contact: the user's portal with them takes the new name (the
    /// ghost's global profile keeps the contact's own).
    async fn rename_portal(&self, account: &str, item: &xmpp_core::stanza::RosterItem) {
        let Some(name) = &item.name else {
            return;
        };
        let jid = item.jid.to_string();
        let cached = self.portals().room(account, &jid);
        let room = match cached {
            Some(room) => room,
            None => match self.inner.store.portal(account, &jid).await {
                Ok(Some(p)) => match ruma::RoomId::parse(&p.room_id) {
                    Ok(room) => room,
                    Err(_) => return,
                },
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(user = %account, contact = %jid, error = %e, "cannot look up a portal to rename");
                    return;
                }
            },
        };
        let ghost = self.inner.ghosts.user_id(&item.jid);
        if let Err(e) = self.inner.matrix.set_room_name(&ghost, &room, name).await {
            tracing::warn!(user = %account, contact = %item.jid, error = %e, "could not rename a portal");
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
