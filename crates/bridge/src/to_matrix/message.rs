//! A contact's message: recorded in the outbox as it arrives, then sent into the portal as the
//! contact's ghost, idempotently.

use std::time::{Duration, Instant};

use store::{Direction, Queued};
use xmpp_core::Jid;
use xmpp_core::stanza::{Message, MessageType};

use crate::context::{Bridge, short_hash};
use crate::delivery::LEASE;
use crate::mapping;
use crate::payload::{ReplyTo, ToMatrix, ToMatrixKind};

/// A message that only retracts or reacts to an earlier one (its body, if any, is a fallback
/// for clients without those XEPs).
fn relation_of(m: &Message) -> Option<ToMatrixKind> {
    if let Some(stanza) = &m.retract {
        return Some(ToMatrixKind::Retract {
            stanza: stanza.clone(),
        });
    }
    m.reactions.as_ref().map(|r| ToMatrixKind::Reactions {
        stanza: r.id.clone(),
        keys: r.keys.clone(),
    })
}

/// Where a message came from: what its archive id may do to the archive cursor (where the next
/// login's catch-up resumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Live (or a carbon): moves the cursor once this session's catch-up is complete.
    Live,
    /// The catch-up after a login: moves it.
    CatchUp,
    /// A new portal's history: never moves it (it is older than what the catch-up read).
    Backfill,
}

impl Bridge {
    /// `received` (Unix ms) and `arrived` are when the bridge read the stanza.
    pub(crate) async fn on_xmpp_message(
        &self,
        account: &str,
        m: Message,
        received: i64,
        arrived: Instant,
    ) {
        let Some(from) = m.from.as_ref().map(Jid::to_bare) else {
            return;
        };
        let contact = from.to_string();
        match m.kind {
            MessageType::Error => {
                let reason = m
                    .error
                    .as_ref()
                    .map_or_else(|| "unknown error".to_owned(), ToString::to_string);
                self.inner.metrics.failure("xmpp_error_reply");
                let payload = ToMatrix::notice(
                    account,
                    &contact,
                    format!("⚠ Your message was not delivered: {reason}"),
                );
                self.enqueue_to_matrix(account, &contact, &payload, None, arrived)
                    .await;
                return;
            }
            MessageType::Groupchat | MessageType::Headline => {
                tracing::debug!(user = %account, kind = ?m.kind, "ignoring a non-chat message");
                return;
            }
            MessageType::Chat | MessageType::Normal => {}
        }
        if let Some(kind) = relation_of(&m) {
            let archive_id = self.own_archive_id(account, &m);
            self.record_relation(
                account,
                &from,
                kind,
                &m,
                archive_id,
                Origin::Live,
                received,
                arrived,
            )
            .await;
            return;
        }
        // A file without a body: its link is the body.
        let body = m
            .body
            .clone()
            .filter(|b| !b.is_empty())
            .or_else(|| m.oob_url.clone());
        if let (None, Some(read)) = (&body, &m.displayed) {
            self.on_contact_read(account, &from, read).await;
            return;
        }
        let Some(body) = body else {
            // A chat state alone (XEP-0085): the ghost's typing, sent only when it changes.
            if let Some(state) = m.chat_state {
                self.set_ghost_typing(account, &from, mapping::chat_state_is_typing(state))
                    .await;
            }
            return;
        };
        let archive_id = self.own_archive_id(account, &m);
        self.record_chat(
            account,
            &from,
            None,
            body,
            &m,
            (archive_id, Origin::Live),
            received,
            arrived,
        )
        .await;
    }

    /// A carbon (XEP-0280): what the user wrote from another client is shown as their own
    /// account's ghost; what they received there, as any message from the contact (once: the
    /// dedupe key is the same as for the copy this client may also get).
    pub(crate) async fn on_carbon(
        &self,
        account: &str,
        kind: xmpp_core::stanza::CarbonKind,
        m: Message,
        received: i64,
        arrived: Instant,
    ) {
        use xmpp_core::stanza::CarbonKind;
        match kind {
            CarbonKind::Received => self.on_xmpp_message(account, m, received, arrived).await,
            CarbonKind::Sent => {
                let archive_id = self.own_archive_id(account, &m);
                self.on_own_message(account, m, archive_id, Origin::Live, received, arrived)
                    .await;
            }
        }
    }

    /// A message from the user's archive (XEP-0313), read after a login: the user's own are
    /// shown as their own account's ghost, the contacts' as the contacts, with their original
    /// time.
    pub(crate) async fn on_archived(
        &self,
        account: &str,
        archive_id: String,
        m: Message,
        origin: Origin,
        received: i64,
        arrived: Instant,
    ) {
        // Without `from`, the account's own server speaks for the account (RFC 6120 §8.1.2.1).
        let from_user = match (self.own_jid(account), &m.from) {
            (_, None) => true,
            (Some(own), Some(from)) => from.bare_eq(&own),
            (None, Some(_)) => false,
        };
        if from_user {
            self.on_own_message(account, m, Some(archive_id), origin, received, arrived)
                .await;
            return;
        }
        if let (Some(from), Some(kind), MessageType::Chat | MessageType::Normal) =
            (m.from.as_ref().map(Jid::to_bare), relation_of(&m), m.kind)
        {
            self.record_relation(
                account,
                &from,
                kind,
                &m,
                Some(archive_id),
                origin,
                received,
                arrived,
            )
            .await;
            return;
        }
        let (Some(from), Some(body)) = (
            m.from.as_ref().map(Jid::to_bare),
            m.body.clone().filter(|b| !b.is_empty()),
        ) else {
            self.note_archive_id(account, &archive_id, origin).await;
            return;
        };
        if !matches!(m.kind, MessageType::Chat | MessageType::Normal) {
            self.note_archive_id(account, &archive_id, origin).await;
            return;
        }
        self.record_chat(
            account,
            &from,
            None,
            body,
            &m,
            (Some(archive_id), origin),
            received,
            arrived,
        )
        .await;
    }

    /// The user's own message to a contact, written from another client.
    async fn on_own_message(
        &self,
        account: &str,
        m: Message,
        archive_id: Option<String>,
        origin: Origin,
        received: i64,
        arrived: Instant,
    ) {
        let (Some(own), Some(to), Some(body)) = (
            self.own_jid(account),
            m.to.as_ref().map(Jid::to_bare),
            m.body.clone().filter(|b| !b.is_empty()),
        ) else {
            if let Some(id) = &archive_id {
                self.note_archive_id(account, id, origin).await;
            }
            return;
        };
        let sent_by_bridge = [&m.origin_id, &m.id]
            .into_iter()
            .flatten()
            .any(|id| mapping::is_bridge_message_id(id));
        // The user's retractions and reactions from another client are not bridged yet; their
        // fallback body must not be posted as a message either.
        let relation_only = relation_of(&m).is_some();
        if !matches!(m.kind, MessageType::Chat | MessageType::Normal)
            || to.bare_eq(&own)
            || sent_by_bridge
            || relation_only
        {
            // The bridge's own sends come back from the archive: they are in the portal already.
            if let Some(id) = &archive_id {
                self.note_archive_id(account, id, origin).await;
            }
            return;
        }
        self.record_chat(
            account,
            &to,
            Some(&own),
            body,
            &m,
            (archive_id, origin),
            received,
            arrived,
        )
        .await;
    }

    /// The bare JID of the account's current (or last) session, as its `Connected` event
    /// said: events are handled in order, so it is the session the event came from, even when
    /// that session has ended since.
    pub(crate) fn own_jid(&self, account: &str) -> Option<Jid> {
        self.inner
            .own_jids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(account)
            .cloned()
    }

    /// The archive id the user's own server gave a live message (XEP-0359), if it keeps an
    /// archive.
    fn own_archive_id(&self, account: &str, m: &Message) -> Option<String> {
        let own = self.own_jid(account)?;
        m.stanza_id_by(&own).map(str::to_owned)
    }

    /// Records a chat message with `contact` (from them, or from the user's `own` account) for
    /// the portal. Every copy of one message (live, carbon, offline, archive) gets the same
    /// dedupe key: the sender's id with the body's hash; without an id, the archive's id.
    /// `archive` is the archive's id for it and whether it came from the catch-up.
    #[allow(clippy::too_many_arguments)]
    async fn record_chat(
        &self,
        account: &str,
        contact: &Jid,
        own: Option<&Jid>,
        body: String,
        m: &Message,
        archive: (Option<String>, Origin),
        received: i64,
        arrived: Instant,
    ) {
        let (archive_id, origin) = archive;
        if origin == Origin::Live {
            // The first message of a conversation without a portal: its history goes first.
            self.backfill_new_portal(account, contact, received, arrived)
                .await;
        }
        let contact = contact.to_string();
        let ts = m.delay.as_ref().map(xmpp_core::stanza::Delay::unix_millis);
        // With the body's hash: a resend (same id, same text) is caught, while a client that
        // reuses ids (RFC 6120 only says SHOULD be unique) loses no different message.
        let side = if own.is_some() { "out|" } else { "" };
        let dedupe = match (&m.id, &archive_id) {
            (Some(id), _) => format!("{account}|{side}{contact}|{id}|{}", short_hash(&body)),
            (None, Some(aid)) => format!("{account}|{side}{contact}|archive:{aid}"),
            (None, None) => format!(
                "{account}|{side}{contact}|{}|{}",
                short_hash(&body),
                ts.unwrap_or(received)
            ),
        };
        let reply_to = m.reply.as_ref().map(|r| ReplyTo {
            id: r.id.clone(),
            fallback: m
                .fallbacks
                .iter()
                .filter(|f| f.for_ns == xmpp_core::ns::REPLY)
                .flat_map(|f| f.ranges.iter().copied())
                .collect(),
        });
        let mut payload = ToMatrix::message(account, &contact, body, ts, m.id.clone(), received)
            .with_relations(m.replace.clone(), reply_to)
            .markable(m.markable && own.is_none())
            .with_file(m.oob_url.clone());
        if let Some(own) = own {
            payload = payload.own_message(own.to_string());
        }
        self.enqueue_to_matrix(account, &contact, &payload, Some(&dedupe), arrived)
            .await;
        if let Some(id) = archive_id {
            self.note_archive_id(account, &id, origin).await;
        }
    }

    /// Before the first message of a conversation that has no portal yet: records the last
    /// `bridge.backfill_messages` messages of it from the account's archive (XEP-0313), oldest
    /// first with their original times, so that the new portal opens with its history. Once per
    /// conversation and process; the message itself, being in the archive already, is then
    /// dropped as a duplicate when it is recorded. Any failure only costs the history.
    async fn backfill_new_portal(
        &self,
        account: &str,
        contact: &Jid,
        received: i64,
        arrived: Instant,
    ) {
        let max = self.inner.config.bridge.backfill_messages;
        let jid = contact.to_string();
        let has_archive = self
            .inner
            .archive_accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(account);
        if max == 0 || !has_archive || self.portals().room(account, &jid).is_some() {
            return;
        }
        let first = self
            .inner
            .backfilled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(format!("{account}|{jid}"));
        if !first {
            return;
        }
        match self.inner.store.portal(account, &jid).await {
            Ok(None) => {}
            Ok(Some(_)) => return,
            Err(e) => {
                tracing::warn!(user = %account, contact = %jid, error = %e, "cannot tell whether the conversation has a portal; no history for it");
                return;
            }
        }
        tracing::debug!(user = %account, contact = %jid, max, "a new conversation: reading its last messages from the archive");
        let history = match self.inner.xmpp.archive_with(account, contact, max).await {
            Ok(history) => history,
            Err(e) => {
                tracing::warn!(user = %account, contact = %jid, error = %e, "cannot read the conversation's history from the archive; the portal starts without it");
                return;
            }
        };
        tracing::info!(user = %account, contact = %jid, messages = history.len(), "a new portal: its history from the archive goes first");
        for (archive_id, m) in history {
            // Boxed: this runs inside the recording of a message, which it calls again.
            Box::pin(self.on_archived(account, archive_id, m, Origin::Backfill, received, arrived))
                .await;
        }
    }

    /// Records a contact's retraction or reactions for the portal. Its dedupe key is the
    /// stanza's id with what it says, so every copy (live, offline, archive) is one.
    #[allow(clippy::too_many_arguments)]
    async fn record_relation(
        &self,
        account: &str,
        contact: &Jid,
        kind: ToMatrixKind,
        m: &Message,
        archive_id: Option<String>,
        origin: Origin,
        received: i64,
        arrived: Instant,
    ) {
        let contact = contact.to_string();
        let what = match &kind {
            ToMatrixKind::Retract { stanza } => format!("retract:{stanza}"),
            ToMatrixKind::Reactions { stanza, keys } => {
                format!("react:{stanza}:{}", short_hash(&keys.join("\u{1f}")))
            }
            _ => String::new(),
        };
        let dedupe = match (&m.id, &archive_id) {
            (Some(id), _) => format!("{account}|{contact}|{id}|{what}"),
            (None, Some(aid)) => format!("{account}|{contact}|archive:{aid}"),
            (None, None) => format!("{account}|{contact}|{what}|{received}"),
        };
        let payload = ToMatrix::relation(account, &contact, kind);
        self.enqueue_to_matrix(account, &contact, &payload, Some(&dedupe), arrived)
            .await;
        if let Some(id) = archive_id {
            self.note_archive_id(account, &id, origin).await;
        }
    }

    /// Remembers the archive id of the last message recorded, where the next login's catch-up
    /// resumes. A live message moves it only once this session's catch-up read the archive to
    /// the end (else the gap behind it would be skipped for good). Saved at most every 2 s per
    /// account, a skipped save made 2 s later, and at a graceful stop: a crash loses at most
    /// that much progress, and what is read twice is dropped by the dedupe keys.
    pub(crate) async fn note_archive_id(&self, account: &str, id: &str, origin: Origin) {
        let Some(jid) = self.own_jid(account) else {
            return;
        };
        let live_ok = self
            .inner
            .archive_caught_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(account);
        match origin {
            Origin::Backfill => return,
            Origin::Live if !live_ok => return,
            Origin::Live | Origin::CatchUp => {}
        }
        let jid = jid.to_string();
        let (save, schedule) = {
            let mut cursors = self
                .inner
                .archive_cursors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry =
                cursors
                    .entry(account.to_owned())
                    .or_insert_with(|| crate::context::Cursor {
                        jid: jid.clone(),
                        id: String::new(),
                        saved_at: None,
                        dirty: false,
                        flush_scheduled: false,
                    });
            entry.jid = jid;
            entry.id = id.to_owned();
            entry.dirty = true;
            let due = entry
                .saved_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
            if due {
                entry.saved_at = Some(Instant::now());
                entry.dirty = false;
            }
            let schedule = !due && !entry.flush_scheduled;
            if schedule {
                entry.flush_scheduled = true;
            }
            (due.then(|| (entry.jid.clone(), entry.id.clone())), schedule)
        };
        if let Some((jid, id)) = save {
            self.save_archive_cursor(account, &jid, &id).await;
        }
        if schedule {
            let this = self.clone();
            let account = account.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                this.flush_archive_cursor(&account).await;
            });
        }
    }

    async fn save_archive_cursor(&self, account: &str, jid: &str, id: &str) {
        if let Err(e) = self
            .inner
            .store
            .set_archive_cursor(account, jid, &format!("id:{id}"))
            .await
        {
            tracing::warn!(user = %account, error = %e, "cannot save the archive cursor");
        }
    }

    /// Saves one account's archive cursor if it changed since its last save.
    async fn flush_archive_cursor(&self, account: &str) {
        let dirty = {
            let mut cursors = self
                .inner
                .archive_cursors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cursors.get_mut(account).and_then(|c| {
                c.flush_scheduled = false;
                c.dirty.then(|| {
                    c.dirty = false;
                    c.saved_at = Some(Instant::now());
                    (c.jid.clone(), c.id.clone())
                })
            })
        };
        if let Some((jid, id)) = dirty {
            self.save_archive_cursor(account, &jid, &id).await;
        }
    }

    /// Saves every archive cursor not saved yet (at a graceful stop).
    pub async fn save_archive_cursors(&self) {
        let accounts: Vec<String> = self
            .inner
            .archive_cursors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for account in accounts {
            self.flush_archive_cursor(&account).await;
        }
    }

    /// Records a stanza for delivery to Matrix, retrying until the store has it, and starts
    /// its delivery at once if its portal is idle. `arrived` is when the stanza was received.
    pub(crate) async fn enqueue_to_matrix(
        &self,
        account: &str,
        contact: &str,
        payload: &ToMatrix,
        dedupe: Option<&str>,
        arrived: Instant,
    ) {
        let queue = format!("{account}|{contact}");
        let bytes = payload.to_bytes();
        // The store is the only place a received stanza lives: retry until it is recorded.
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .inner
                .store
                .enqueue_and_claim(Direction::ToMatrix, &queue, &bytes, dedupe, LEASE)
                .await
            {
                Ok(queued @ (Queued::Claimed(_) | Queued::Waiting(_))) => {
                    // Noted before delivery starts, so a fast delivery finds it.
                    if let Some(key) = dedupe {
                        self.note_received(Direction::ToMatrix, key, arrived);
                    }
                    match queued {
                        Queued::Claimed(item) => self.dispatch(item),
                        _ => self.queue_waiting(Direction::ToMatrix, &queue),
                    }
                    return;
                }
                Ok(Queued::Duplicate(_)) => {
                    tracing::debug!(user = %account, contact, "a stanza we already have; not bridged twice");
                    return;
                }
                Err(e) => {
                    tracing::error!(user = %account, error = %e, "cannot record an incoming message; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
