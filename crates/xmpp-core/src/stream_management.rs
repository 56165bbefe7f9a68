//! XEP-0198 stream management: the counters on both sides of a stream, and what survives a
//! broken connection so that the next one can resume it.
//!
//! - **Outbound.** Every stanza written is kept until the server's `<a h='…'/>` covers it;
//!   [`crate::session::SessionHandle::send_confirmed`] resolves only then, so a message the
//!   bridge records as delivered is one the server holds. When the connection breaks, the
//!   messages and presences not yet acknowledged are sent again on the resumed stream; when the
//!   server cannot resume it, the messages are sent again on the new session (IQs and presences
//!   belong to the old one). A caller that sends the very same message again meanwhile is
//!   attached to the copy already waiting, not sent twice.
//! - **Inbound.** Stanzas are numbered as they are read; one counts as handled only when the
//!   caller has finished with it ([`Receipt`] dropped), so the `h` the server is told never
//!   covers a message the bridge has not recorded yet. A stanza not acknowledged when the stream
//!   breaks is sent again by the server on the resumed stream.
//!
//! Resumption is kept in memory: it covers a network cut or a server's restart of the TCP
//! connection, not a restart of the bridge (where the archive catch-up takes over).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::jid::Jid;
use crate::negotiation::ResumeRequest;
use crate::ns;
use crate::xml::Element;

/// The most stanzas kept waiting for the server's acknowledgement; a server that lets more pile
/// up has stopped acknowledging, and the link is treated as broken.
pub const MAX_UNACKED: usize = 10_000;

/// `<r/>`: asks the other side how many stanzas it handled.
pub fn request() -> Element {
    Element::new("r", ns::SM)
}

/// `<a h='…'/>`: how many stanzas we handled.
pub fn answer(h: u32) -> Element {
    Element::new("a", ns::SM).with_attr("h", h.to_string())
}

/// `<enable resume='true'/>`.
pub fn enable() -> Element {
    Element::new("enable", ns::SM).with_attr("resume", "true")
}

/// `<resume previd='…' h='…'/>`.
pub fn resume(previd: &str, h: u32) -> Element {
    Element::new("resume", ns::SM)
        .with_attr("previd", previd)
        .with_attr("h", h.to_string())
}

/// The `h` attribute of `<a/>`, `<resumed/>` or `<failed/>`.
pub fn h_of(el: &Element) -> Option<u32> {
    el.attr("h").and_then(|h| h.trim().parse().ok())
}

#[derive(Debug, Default)]
struct InboundState {
    /// Stanzas read (wrapping, as `h` does).
    received: u32,
    /// Stanzas handled, in order: what `<a h/>` says.
    handled: u32,
    /// Handled ahead of an earlier one still in use.
    ahead: BTreeSet<u32>,
}

/// The inbound count of one stream, shared with the receipts of the stanzas in flight.
#[derive(Debug, Default)]
pub struct Inbound {
    state: Mutex<InboundState>,
}

impl Inbound {
    /// Starts counting from `h` (0 for a new stream, the acknowledged count when resuming).
    pub fn starting_at(h: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(InboundState {
                received: h,
                handled: h,
                ahead: BTreeSet::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboundState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A stanza was read: its receipt, to drop once it is handled.
    pub fn received(self: &Arc<Self>) -> Receipt {
        let seq = {
            let mut s = self.lock();
            s.received = s.received.wrapping_add(1);
            s.received
        };
        Receipt {
            _pending: Some(Arc::new(Pending {
                inbound: self.clone(),
                seq,
            })),
        }
    }

    /// A stanza was read and needs nothing more (an IQ answer, a ping).
    pub fn received_and_handled(self: &Arc<Self>) {
        drop(self.received());
    }

    /// How many stanzas are handled, in order.
    pub fn handled(&self) -> u32 {
        self.lock().handled
    }

    /// How many were read.
    pub fn received_count(&self) -> u32 {
        self.lock().received
    }

    fn done(&self, seq: u32) {
        let mut s = self.lock();
        if seq == s.handled.wrapping_add(1) {
            s.handled = seq;
            loop {
                let next = s.handled.wrapping_add(1);
                if !s.ahead.remove(&next) {
                    break;
                }
                s.handled = next;
            }
        } else if seq.wrapping_sub(s.handled) <= u32::MAX / 2 {
            // Still ahead of the count (a wrapped-around old one is already counted).
            s.ahead.insert(seq);
        }
    }
}

#[derive(Debug)]
struct Pending {
    inbound: Arc<Inbound>,
    seq: u32,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.inbound.done(self.seq);
    }
}

/// Held while a received stanza is being handled: dropping the last clone tells the stream
/// that it is handled (and may be acknowledged to the server). Streams without stream
/// management give empty receipts.
#[derive(Debug, Clone, Default)]
pub struct Receipt {
    _pending: Option<Arc<Pending>>,
}

impl Receipt {
    /// A receipt that acknowledges nothing.
    pub fn none() -> Self {
        Self { _pending: None }
    }
}

impl PartialEq for Receipt {
    /// Receipts are bookkeeping, not part of an event's value.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// A stanza written and not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Unacked {
    pub xml: String,
    /// Told once the server acknowledges it.
    pub confirm: Vec<oneshot::Sender<()>>,
}

/// What the server has not acknowledged on our side.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    /// The server's last `h`.
    pub acked: u32,
    pub unacked: VecDeque<Unacked>,
    /// When the `<r/>` in flight was sent.
    pub requested: Option<tokio::time::Instant>,
}

/// The server acknowledged more stanzas than were sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server acknowledged {acked} stanzas but only {sent} were sent")]
pub struct AckError {
    /// What the server said it handled.
    pub acked: u32,
    /// What we sent.
    pub sent: u32,
}

impl Outbound {
    /// Applies the server's `h`: the stanzas it covers are confirmed and forgotten.
    pub(crate) fn ack(&mut self, h: u32) -> Result<usize, AckError> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            let sent = self.acked.wrapping_add(self.unacked.len() as u32);
            // Nothing to send again can be told apart any more: count from the server's h.
            self.unacked.clear();
            self.acked = h;
            return Err(AckError { acked: h, sent });
        }
        for item in self.unacked.drain(..newly) {
            for confirm in item.confirm {
                let _ = confirm.send(());
            }
        }
        self.acked = h;
        Ok(newly)
    }
}

/// What a broken stream leaves for the next connection: the stanzas to send again, and the
/// stream to resume when the server allows it.
#[derive(Debug)]
pub struct Resumable {
    /// The server's id for the stream; `None`: not resumable (the server did not offer it, or
    /// the session had not finished logging in), only its messages are sent again.
    pub id: Option<String>,
    /// Our JID on it (a resumed stream keeps it).
    pub jid: Jid,
    /// Our inbound count, shared with receipts still in the caller's hands.
    pub(crate) inbound: Arc<Inbound>,
    /// Our stanzas the server had not acknowledged.
    pub(crate) outbound: Outbound,
    /// The `h` of the last [`Resumable::request`].
    pub(crate) sent_h: u32,
}

impl Resumable {
    /// The `h` to resume with: what is handled now.
    pub fn h(&self) -> u32 {
        self.inbound.handled()
    }

    /// The request that resumes this stream, with what is handled now; remembered, because the
    /// resumed stream counts on from it. `None` when it cannot be resumed.
    pub fn request(&mut self) -> Option<ResumeRequest> {
        let previd = self.id.clone()?;
        let h = self.h();
        self.sent_h = h;
        Some(ResumeRequest {
            previd,
            h,
            jid: self.jid.clone(),
        })
    }

    /// Gives up resuming (the messages are still sent again).
    pub fn forget_stream(&mut self) {
        self.id = None;
    }

    /// How many of our stanzas wait for the server's acknowledgement.
    pub fn unacked(&self) -> usize {
        self.outbound.unacked.len()
    }
}

/// The stream management state of a running session.
#[derive(Debug)]
pub(crate) struct Active {
    /// Set when the server allows resumption.
    pub id: Option<String>,
    pub inbound: Arc<Inbound>,
    pub outbound: Outbound,
    /// Messages sent again from the previous stream and still waiting: the caller's own retry
    /// of one of them joins it instead of going out twice.
    pub carried: std::collections::HashSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_counts_only_what_is_done_in_order() {
        let inbound = Inbound::starting_at(0);
        let a = inbound.received();
        let b = inbound.received();
        let c = inbound.received();
        assert_eq!(inbound.handled(), 0);
        drop(b);
        assert_eq!(
            inbound.handled(),
            0,
            "the second is done but the first is not"
        );
        drop(a);
        assert_eq!(inbound.handled(), 2);
        let c2 = c.clone();
        drop(c);
        assert_eq!(inbound.handled(), 2, "a clone still holds the third");
        drop(c2);
        assert_eq!(inbound.handled(), 3);
        inbound.received_and_handled();
        assert_eq!(inbound.handled(), 4);
        assert_eq!(inbound.received_count(), 4);
    }

    #[test]
    fn counts_wrap_around_as_h_does() {
        let inbound = Inbound::starting_at(u32::MAX - 1);
        let a = inbound.received();
        let b = inbound.received();
        let c = inbound.received();
        drop(c);
        drop(a);
        assert_eq!(inbound.handled(), u32::MAX);
        drop(b);
        assert_eq!(inbound.handled(), 1);
    }

    #[test]
    fn acks_confirm_in_order_and_too_high_an_ack_is_an_error() {
        let mut out = Outbound::default();
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (tx, rx) = oneshot::channel();
            out.unacked.push_back(Unacked {
                xml: format!("<m{i}/>"),
                confirm: vec![tx],
            });
            rxs.push(rx);
        }
        assert_eq!(out.ack(2), Ok(2));
        assert!(rxs[0].try_recv().is_ok());
        assert!(rxs[1].try_recv().is_ok());
        assert!(rxs[2].try_recv().is_err());
        assert_eq!(out.ack(2), Ok(0), "the same h again confirms nothing");
        assert_eq!(out.ack(5), Err(AckError { acked: 5, sent: 3 }));
        assert!(out.unacked.is_empty());
        assert_eq!(out.acked, 5);
    }

    #[test]
    fn elements_are_the_xep_0198_ones() {
        assert_eq!(
            resume("abc", 7).to_xml(),
            "<resume xmlns='urn:xmpp:sm:3' previd='abc' h='7'/>"
        );
        assert_eq!(answer(3).to_xml(), "<a xmlns='urn:xmpp:sm:3' h='3'/>");
        assert_eq!(h_of(&answer(42)), Some(42));
    }
}
