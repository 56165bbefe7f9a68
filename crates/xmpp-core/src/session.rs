//! One established XMPP session: a reader task that owns the read half and the parser, and a
//! driver task that owns the write half, tracks IQs, answers the server's pings and turns
//! stanzas into [`SessionEvent`]s.
//!
//! quick-xml's async reading is not cancel-safe, and neither is a half-read TLS record: so the
//! socket is read only by the reader task, which is never cancelled mid-read by a `select!`; the
//! driver selects over channels only.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};
use tokio_rustls::client::TlsStream;

use crate::connection::Established;
use crate::jid::Jid;
use crate::manager::{AccountEvent, ManagerEvent};
use crate::ns;
use crate::stanza::{
    CarbonKind, Forwarded, Iq, IqType, Message, Presence, PresenceType, RosterItem, StanzaError,
    StreamError, roster,
};
use crate::stream_management::{self as sm, Inbound, Outbound, Receipt, Resumable, Unacked};
use crate::xml::{self, Element, SkippedStanza, StreamEvent, StreamParser, XmlError};

type Tls = TlsStream<TcpStream>;

/// Timers of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionTimers {
    /// How often to ping the server (Messenger cut idle connections after 1–2 minutes; 30 s
    /// leaves room for a ping delayed by a busy machine).
    pub keepalive: Duration,
    /// How long to wait for any IQ reply, pings included, before giving up on it. A ping that
    /// times out declares the link dead.
    pub iq_timeout: Duration,
    /// How long one write may take.
    pub write_timeout: Duration,
}

impl Default for SessionTimers {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(30),
            iq_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Something the session received and the bridge may want.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A message stanza (any type: the bridge decides; errors included).
    Message(Message),
    /// A presence stanza from a contact (subscription requests included).
    Presence(Presence),
    /// A roster push (RFC 6121 §2.1.6): items added, changed or removed.
    RosterPush(Vec<RosterItem>),
    /// A copy of a message the account sent or received on another of its clients (XEP-0280),
    /// from the account's own server.
    Carbon {
        /// Sent or received by the account.
        kind: CarbonKind,
        /// The original message.
        message: Message,
    },
    /// A message from the account's archive (XEP-0313): the catch-up after a login, oldest
    /// first, before any live message.
    Archived {
        /// The archive's id for it.
        archive_id: String,
        /// The original message, its original time in `delay`.
        message: Message,
    },
    /// A stanza that could not be understood; the session goes on.
    Invalid {
        /// What was wrong.
        reason: String,
    },
    /// A message or presence over the stanza size limit was read past and dropped; the
    /// session goes on. (An oversized IQ answer fails its request with [`IqError::TooLarge`].)
    TooLarge {
        /// `message` or `presence`.
        stanza: String,
        /// Who sent it, when its `from` was readable.
        from: Option<Jid>,
        /// Its `type` attribute.
        kind: Option<String>,
        /// Its size in bytes.
        bytes: usize,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionEnd {
    /// We closed it on request.
    #[error("closed")]
    Closed,
    /// The server closed the stream.
    #[error("the server closed the stream")]
    ServerClosed,
    /// The server sent a stream error.
    #[error("the server ended the stream: {0}")]
    StreamError(StreamError),
    /// The server sent bad XML; we answered with a stream error and closed.
    #[error("the server sent bad XML: {0}")]
    BadXml(XmlError),
    /// The connection broke.
    #[error("connection lost: {0}")]
    Io(String),
    /// The server stopped answering pings.
    #[error("the server did not answer a keepalive ping within {0:?}")]
    KeepaliveTimeout(Duration),
    /// The server broke the stream management protocol (XEP-0198).
    #[error("stream management: {0}")]
    StreamManagement(String),
}

/// Why an IQ got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IqError {
    /// The server or the addressee answered with an error.
    #[error("{0}")]
    Error(StanzaError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The session ended first.
    #[error("the XMPP session is not connected")]
    NotConnected,
    /// The answer was over the stanza size limit and was dropped unread.
    #[error("the answer was {0} bytes, over the stanza size limit")]
    TooLarge(usize),
}

pub(crate) enum Command {
    Send(String),
    /// Send and report once the server has it (acknowledged with stream management, written and
    /// flushed without).
    SendConfirmed(String, oneshot::Sender<()>),
    Iq {
        iq: Box<Iq>,
        reply: oneshot::Sender<Result<Iq, IqError>>,
    },
    /// Archive results for this query id are kept for [`Command::TakeCollected`], not emitted.
    Collect(String),
    TakeCollected(String, oneshot::Sender<Vec<(String, Message)>>),
    Close,
}

/// The most archive results kept for one collected query.
const MAX_COLLECTED: usize = 1000;

/// A handle to a running session; cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    jid: Jid,
    commands: mpsc::Sender<Command>,
}

impl SessionHandle {
    /// Our full JID.
    pub fn jid(&self) -> &Jid {
        &self.jid
    }

    /// Sends a stanza. Fails only when the session is gone.
    pub async fn send(&self, stanza: &Element) -> Result<(), IqError> {
        self.commands
            .send(Command::Send(stanza.to_xml()))
            .await
            .map_err(|_| IqError::NotConnected)
    }

    /// Sends a stanza and returns once the server has it: acknowledged by the server where
    /// stream management (XEP-0198) runs, written and flushed to the connection otherwise. A
    /// caller that records "delivered" after this cannot lose it to its own crash, nor (with
    /// stream management) to a broken connection: a stanza the server had not acknowledged is
    /// sent again on the next stream. `NotConnected` if the session ended before that.
    pub async fn send_confirmed(&self, stanza: &Element) -> Result<(), IqError> {
        let (written, rx) = oneshot::channel();
        self.commands
            .send(Command::SendConfirmed(stanza.to_xml(), written))
            .await
            .map_err(|_| IqError::NotConnected)?;
        rx.await.map_err(|_| IqError::NotConnected)
    }

    /// Sends an IQ and waits for its result (ids are assigned here).
    pub async fn iq(&self, mut iq: Iq) -> Result<Iq, IqError> {
        if iq.id.is_empty() {
            iq.id = next_id();
        }
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Iq {
                iq: Box::new(iq),
                reply,
            })
            .await
            .map_err(|_| IqError::NotConnected)?;
        rx.await.map_err(|_| IqError::NotConnected)?
    }

    /// Reads the roster.
    pub async fn roster(&self) -> Result<Vec<RosterItem>, IqError> {
        let result = self.iq(Iq::get("", None, roster::query())).await?;
        let Some(query) = result.payload else {
            return Ok(Vec::new());
        };
        roster::parse_items(&query).map_err(|e| {
            IqError::Error(StanzaError {
                kind: "modify".into(),
                condition: "bad-request".into(),
                text: Some(e.to_string()),
            })
        })
    }

    /// The last `max` messages exchanged with `with` in the account's archive (XEP-0313), oldest
    /// first, with their archive ids: returned here, not sent as events.
    pub async fn archive_with(
        &self,
        with: &Jid,
        max: u32,
    ) -> Result<Vec<(String, Message)>, IqError> {
        let query_id = next_id();
        self.commands
            .send(Command::Collect(query_id.clone()))
            .await
            .map_err(|_| IqError::NotConnected)?;
        let query = crate::stanza::forward::archive_last_with(&query_id, with, max);
        let answer = self.iq(Iq::set("", None, query)).await;
        // The results came before the answer, on the same stream: all collected by now.
        let (tx, rx) = oneshot::channel();
        let _ = self
            .commands
            .send(Command::TakeCollected(query_id, tx))
            .await;
        let collected = rx.await.unwrap_or_default();
        answer.map(|_| collected)
    }

    /// Asks the session to close the stream cleanly.
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
    }
}

/// A process-unique stanza id.
pub fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let salt: u32 = rand::random();
    format!("mb{:x}-{salt:08x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

enum Incoming {
    Event(StreamEvent),
    Failed(XmlError),
    Eof,
    Io(String),
}

/// How a session ended, and what the next connection may resume (XEP-0198).
pub(crate) type Ended = (SessionEnd, Option<Resumable>);

/// Starts the tasks of an established session. `events` receives what the server sends; the
/// returned future resolves when the session ends, with the reason. `previous` is what the last
/// stream of the account left: resumed, its unacknowledged stanzas are sent again; not resumed,
/// its unacknowledged messages are (IQs and presences belong to the old session).
pub(crate) fn start(
    established: Established,
    timers: SessionTimers,
    events: mpsc::Sender<AccountEvent>,
    account: String,
    previous: Option<Resumable>,
) -> (SessionHandle, tokio::task::JoinHandle<Ended>) {
    let Established {
        stream,
        parser,
        negotiated,
        ..
    } = established;
    let jid = negotiated.jid;
    let (sm, resend) = carry_over(
        &account,
        negotiated.stream_management,
        negotiated.resumed,
        negotiated.previous_h,
        previous,
    );
    let (read, write) = tokio::io::split(stream);
    // Boxed: the channel's slot blocks are allocated per session, idle or not.
    let (in_tx, in_rx) = mpsc::channel::<Box<Incoming>>(64);
    tokio::spawn(read_loop(read, parser, in_tx));
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let driver = Driver {
        account,
        jid: jid.clone(),
        write,
        timers,
        events,
        pending: HashMap::new(),
        ping_outstanding: None,
        closing: false,
        sm,
        collecting: HashMap::new(),
        collected: std::collections::VecDeque::new(),
    };
    let join = tokio::spawn(driver.run(in_rx, cmd_rx, resend));
    (
        SessionHandle {
            jid,
            commands: cmd_tx,
        },
        join,
    )
}

/// Stream management on the new stream, and what of the previous one to send again.
fn carry_over(
    account: &str,
    enabled: Option<crate::negotiation::SmEnabled>,
    resumed: bool,
    previous_h: Option<u32>,
    previous: Option<Resumable>,
) -> (Option<sm::Active>, Vec<Unacked>) {
    let mut resend = Vec::new();
    let mut outbound = Outbound::default();
    let mut inbound_h = 0;
    if let Some(mut old) = previous {
        if let Some(h) = previous_h
            && let Err(e) = old.outbound.ack(h)
        {
            tracing::warn!(account, error = %e, "the server's count of our stanzas is wrong; sending none again");
            old.outbound.unacked.clear();
        }
        // IQs are never sent again: their callers were told the session ended, and a stray
        // answer (an archive page) must not be taken for a new one.
        if resumed {
            inbound_h = old.sent_h;
            outbound.acked = old.outbound.acked;
            resend = old
                .outbound
                .unacked
                .into_iter()
                .filter(|u| u.xml.starts_with("<message") || u.xml.starts_with("<presence"))
                .collect();
        } else {
            resend = old
                .outbound
                .unacked
                .into_iter()
                .filter(|u| u.xml.starts_with("<message"))
                .collect();
        }
        if !resend.is_empty() {
            tracing::info!(
                account,
                stanzas = resend.len(),
                resumed,
                "sending again what the server had not acknowledged"
            );
        }
    }
    let sm = enabled.map(|e| sm::Active {
        id: e.id,
        inbound: Inbound::starting_at(inbound_h),
        outbound,
        carried: std::collections::HashSet::new(),
    });
    (sm, resend)
}

async fn read_loop(
    mut read: ReadHalf<Tls>,
    mut parser: StreamParser,
    tx: mpsc::Sender<Box<Incoming>>,
) {
    let mut buf = [0u8; 4096];
    loop {
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => {
                    let close = ev == StreamEvent::Close;
                    if tx.send(Box::new(Incoming::Event(ev))).await.is_err() || close {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Box::new(Incoming::Failed(e))).await;
                    return;
                }
            }
        }
        let msg = match read.read(&mut buf).await {
            Ok(0) => Incoming::Eof,
            Ok(n) => {
                parser.push(&buf[..n]);
                continue;
            }
            Err(e) => Incoming::Io(e.to_string()),
        };
        let _ = tx.send(Box::new(msg)).await;
        return;
    }
}

struct Pending {
    reply: Option<oneshot::Sender<Result<Iq, IqError>>>,
    to: Option<Jid>,
    deadline: Instant,
}

struct Driver {
    account: String,
    jid: Jid,
    write: WriteHalf<Tls>,
    timers: SessionTimers,
    events: mpsc::Sender<AccountEvent>,
    pending: HashMap<String, Pending>,
    /// The id of the keepalive ping in flight.
    ping_outstanding: Option<String>,
    /// Our `</stream:stream>` is sent: nothing more may be written.
    closing: bool,
    /// XEP-0198, when the server enabled it.
    sm: Option<sm::Active>,
    /// Archive queries whose results are collected for the caller.
    collecting: HashMap<String, Vec<(String, Message)>>,
    /// The last collected queries already handed over.
    collected: std::collections::VecDeque<String>,
}

/// How long a closing session waits for the server to close its side of the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl Driver {
    async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Box<Incoming>>,
        mut commands: mpsc::Receiver<Command>,
        resend: Vec<Unacked>,
    ) -> Ended {
        let end = self.drive(&mut incoming, &mut commands, resend).await;
        for (_, p) in self.pending.drain() {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(IqError::NotConnected));
            }
        }
        // A broken stream the server can resume keeps what it had not acknowledged; a closed
        // one fails it (the callers send it again on the next session).
        let resumable = match (self.sm.take(), &end) {
            (_, SessionEnd::Closed) | (None, _) => None,
            (Some(active), end) => Some(Resumable {
                // A stream whose counts went wrong is not resumed (its messages still are sent
                // again on the next session).
                id: active
                    .id
                    .filter(|_| !matches!(end, SessionEnd::StreamManagement(_))),
                jid: self.jid.clone(),
                inbound: active.inbound,
                outbound: active.outbound,
                sent_h: 0,
            }),
        };
        (end, resumable)
    }

    async fn drive(
        &mut self,
        incoming: &mut mpsc::Receiver<Box<Incoming>>,
        commands: &mut mpsc::Receiver<Command>,
        resend: Vec<Unacked>,
    ) -> SessionEnd {
        let carried: std::collections::HashSet<String> = resend
            .iter()
            .filter(|u| u.xml.starts_with("<message"))
            .map(|u| u.xml.clone())
            .collect();
        for item in resend {
            if let Err(end) = self.write_confirmed(item.xml, item.confirm).await {
                return end;
            }
        }
        if let Some(active) = self.sm.as_mut() {
            active.carried = carried;
        }
        let mut keepalive = interval(self.timers.keepalive);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keepalive.reset();
        let mut housekeeping = interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = incoming.recv() => {
                    let result = match msg.map(|b| *b) {
                        Some(Incoming::Event(StreamEvent::Stanza(el))) => self.on_stanza(el).await,
                        Some(Incoming::Event(StreamEvent::Skipped(s))) => self.on_skipped(s).await,
                        Some(Incoming::Event(StreamEvent::Close)) => Err(SessionEnd::ServerClosed),
                        Some(Incoming::Event(StreamEvent::Open(_))) => {
                            Err(SessionEnd::BadXml(XmlError::Malformed("a second stream header".into())))
                        }
                        Some(Incoming::Failed(e)) => {
                            // RFC 6120 §4.9: tell the server why before closing.
                            let _ = self.write_raw(&format!("{}{}", StreamError::to_xml(e.condition()), xml::STREAM_CLOSE)).await;
                            let _ = timeout(Duration::from_secs(2), self.write.shutdown()).await;
                            Err(SessionEnd::BadXml(e))
                        }
                        Some(Incoming::Eof) | None => Err(SessionEnd::Io("the server closed the connection".into())),
                        Some(Incoming::Io(e)) => Err(SessionEnd::Io(e)),
                    };
                    if let Err(end) = result { break end; }
                }
                cmd = commands.recv() => {
                    let result = match cmd {
                        Some(Command::Send(s)) => self.write_stanza(s, None).await,
                        Some(Command::SendConfirmed(s, written)) => self.write_stanza(s, Some(written)).await,
                        Some(Command::Iq { iq, reply }) => self.send_iq(*iq, Some(reply)).await,
                        Some(Command::Collect(query_id)) => {
                            self.collecting.insert(query_id, Vec::new());
                            Ok(())
                        }
                        Some(Command::TakeCollected(query_id, reply)) => {
                            let _ = reply.send(self.collecting.remove(&query_id).unwrap_or_default());
                            // Results that come after (a timed-out query) are dropped, never
                            // taken for the catch-up's.
                            if self.collected.len() >= 64 {
                                self.collected.pop_front();
                            }
                            self.collected.push_back(query_id);
                            Ok(())
                        }
                        Some(Command::Close) | None => {
                            self.close(incoming).await;
                            break SessionEnd::Closed;
                        }
                    };
                    if let Err(end) = result { break end; }
                }
                _ = keepalive.tick() => {
                    if let Some(id) = self.ping_outstanding.take() {
                        // Should have been expired by housekeeping already; be safe.
                        self.pending.remove(&id);
                        break SessionEnd::KeepaliveTimeout(self.timers.iq_timeout);
                    }
                    let id = next_id();
                    self.ping_outstanding = Some(id.clone());
                    if let Err(end) = self.send_iq(Iq::get(id, None, crate::stanza::iq::ping()), None).await {
                        break end;
                    }
                }
                _ = housekeeping.tick() => {
                    if let Err(end) = self.expire_iqs() { break end; }
                }
            }
        }
    }

    /// Closes the stream as RFC 6120 §4.4 asks: sends `</stream:stream>`, then keeps reading
    /// until the server closes its side, handling every stanza that was already on its way, so
    /// that a stop loses nothing the server considers delivered. Bounded by [`CLOSE_WAIT`].
    async fn close(&mut self, incoming: &mut mpsc::Receiver<Box<Incoming>>) {
        // One deadline for the whole close, the closing tag's write included.
        let deadline = Instant::now() + CLOSE_WAIT;
        if let Some(active) = &self.sm {
            // What the caller still handles would be counted as lost by the server (and sent
            // elsewhere, or bounced): a short wait for it first.
            let settle = Instant::now() + Duration::from_secs(5);
            while active.inbound.handled() != active.inbound.received_count()
                && Instant::now() < settle
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut last = String::new();
        if let Some(active) = &self.sm {
            // XEP-0198 §3: what we handled, so the server does not send it elsewhere; and what it
            // handled of ours, answered while the stream closes.
            if !active.outbound.unacked.is_empty() {
                last.push_str(&sm::request().to_xml());
            }
            last.push_str(&sm::answer(active.inbound.handled()).to_xml());
        }
        last.push_str(xml::STREAM_CLOSE);
        let _ = tokio::time::timeout_at(deadline, self.write_raw(&last)).await;
        self.closing = true;
        let mut handled = 0usize;
        loop {
            let msg = match tokio::time::timeout_at(deadline, incoming.recv()).await {
                Ok(Some(msg)) => *msg,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(account = %self.account, "the server did not close its stream in time");
                    break;
                }
            };
            let _ = match msg {
                Incoming::Event(StreamEvent::Stanza(el)) => {
                    handled += 1;
                    self.on_stanza(el).await
                }
                Incoming::Event(StreamEvent::Skipped(s)) => self.on_skipped(s).await,
                Incoming::Event(StreamEvent::Open(_)) => Ok(()),
                Incoming::Event(StreamEvent::Close)
                | Incoming::Eof
                | Incoming::Io(_)
                | Incoming::Failed(_) => break,
            };
        }
        if handled > 0 {
            tracing::info!(account = %self.account, stanzas = handled, "handled the stanzas that arrived while the stream closed");
        }
        let _ = timeout(Duration::from_secs(2), self.write.shutdown()).await;
    }

    async fn write_raw(&mut self, s: &str) -> Result<(), SessionEnd> {
        if self.closing {
            // RFC 6120 §4.4: nothing may follow our closing tag (answers to the server's last
            // requests included).
            return Ok(());
        }
        let write = async {
            self.write.write_all(s.as_bytes()).await?;
            self.write.flush().await
        };
        match timeout(self.timers.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionEnd::Io(e.to_string())),
            Err(_) => Err(SessionEnd::Io(format!(
                "a write took longer than {:?}",
                self.timers.write_timeout
            ))),
        }
    }

    /// Writes a stanza; with stream management, keeps it until the server acknowledges it
    /// (`confirm` is told then), without, `confirm` is told once it is written.
    async fn write_stanza(
        &mut self,
        xml: String,
        confirm: Option<oneshot::Sender<()>>,
    ) -> Result<(), SessionEnd> {
        self.write_confirmed(xml, confirm.into_iter().collect())
            .await
    }

    async fn write_confirmed(
        &mut self,
        xml: String,
        confirm: Vec<oneshot::Sender<()>>,
    ) -> Result<(), SessionEnd> {
        if self.closing {
            // Nothing may follow our closing tag: the caller learns it was not sent.
            return Ok(());
        }
        let Some(active) = self.sm.as_mut() else {
            self.write_raw(&xml).await?;
            for confirm in confirm {
                let _ = confirm.send(());
            }
            return Ok(());
        };
        if !active.carried.is_empty() && active.carried.remove(&xml) {
            // The caller retried a message the previous stream left unacknowledged, which is
            // already sent again: it is told with that copy (at once if the server has it).
            match active.outbound.unacked.iter_mut().find(|u| u.xml == xml) {
                Some(waiting) => waiting.confirm.extend(confirm),
                None => {
                    for confirm in confirm {
                        let _ = confirm.send(());
                    }
                }
            }
            return Ok(());
        }
        if active.outbound.unacked.len() >= sm::MAX_UNACKED {
            return Err(SessionEnd::StreamManagement(format!(
                "the server has not acknowledged the last {} stanzas",
                sm::MAX_UNACKED
            )));
        }
        // Kept before the write: a write that fails may still have reached the server, whose
        // count tells on resumption.
        let request = active.outbound.requested.is_none();
        if request {
            active.outbound.requested = Some(Instant::now());
        }
        let mut bytes = xml.clone();
        active.outbound.unacked.push_back(Unacked { xml, confirm });
        if request {
            bytes.push_str(&sm::request().to_xml());
        }
        self.write_raw(&bytes).await
    }

    /// A stream management nonza from the server.
    async fn on_sm(&mut self, el: Element) -> Result<(), SessionEnd> {
        let Some(active) = self.sm.as_mut() else {
            tracing::debug!(account = %self.account, element = el.name(), "ignoring stream management that was not enabled");
            return Ok(());
        };
        match el.name() {
            "r" => {
                let answer = sm::answer(active.inbound.handled()).to_xml();
                self.write_raw(&answer).await
            }
            "a" => {
                let Some(h) = sm::h_of(&el) else {
                    return Err(SessionEnd::StreamManagement(
                        "an acknowledgement without a count".into(),
                    ));
                };
                active
                    .outbound
                    .ack(h)
                    .map_err(|e| SessionEnd::StreamManagement(e.to_string()))?;
                active.outbound.requested = None;
                if !active.outbound.unacked.is_empty() {
                    active.outbound.requested = Some(Instant::now());
                    let request = sm::request().to_xml();
                    return self.write_raw(&request).await;
                }
                Ok(())
            }
            other => {
                tracing::debug!(account = %self.account, element = other, "ignoring a stream management element");
                Ok(())
            }
        }
    }

    /// Counts a stanza read (XEP-0198): its receipt, to hand over with what it becomes.
    fn receive(&self) -> Receipt {
        match &self.sm {
            Some(active) => active.inbound.received(),
            None => Receipt::none(),
        }
    }

    async fn send_iq(
        &mut self,
        iq: Iq,
        reply: Option<oneshot::Sender<Result<Iq, IqError>>>,
    ) -> Result<(), SessionEnd> {
        self.pending.insert(
            iq.id.clone(),
            Pending {
                reply,
                to: iq.to.clone(),
                deadline: Instant::now() + self.timers.iq_timeout,
            },
        );
        self.write_stanza(iq.to_element().to_xml(), None).await
    }

    fn expire_iqs(&mut self) -> Result<(), SessionEnd> {
        let now = Instant::now();
        // An acknowledgement that never comes would hold the stanzas waiting for it forever.
        if let Some(asked) = self.sm.as_ref().and_then(|a| a.outbound.requested)
            && now.duration_since(asked) > self.timers.iq_timeout
        {
            return Err(SessionEnd::StreamManagement(format!(
                "the server did not acknowledge our stanzas within {:?}",
                self.timers.iq_timeout
            )));
        }
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            if let Some(reply) = self.pending.remove(&id).and_then(|p| p.reply) {
                let _ = reply.send(Err(IqError::Timeout(self.timers.iq_timeout)));
            }
            if self.ping_outstanding.as_deref() == Some(id.as_str()) {
                return Err(SessionEnd::KeepaliveTimeout(self.timers.iq_timeout));
            }
        }
        Ok(())
    }

    async fn emit(&mut self, ev: SessionEvent, receipt: Receipt) {
        // Backpressure: if the bridge is slow, the session waits (and TCP pushes back on the
        // server) rather than dropping anything.
        let event = AccountEvent {
            account: self.account.clone(),
            event: ManagerEvent::Session(ev),
            receipt,
        };
        let _ = self.events.send(event).await;
    }

    async fn on_stanza(&mut self, el: Element) -> Result<(), SessionEnd> {
        if let Some(err) = StreamError::from_element(&el) {
            return Err(SessionEnd::StreamError(err));
        }
        if el.ns() == ns::SM {
            return self.on_sm(el).await;
        }
        if el.ns() != ns::CLIENT {
            tracing::debug!(account = %self.account, element = el.name(), "ignoring a nonza");
            return Ok(());
        }
        // XEP-0198 counts every stanza; one handed to the caller counts as handled when the
        // caller is done with it, the others when this function returns.
        let receipt = self.receive();
        tracing::trace!(account = %self.account, stanza = el.name(), from = el.attr("from").unwrap_or(""), kind = el.attr("type").unwrap_or(""), "received");
        // Typed stanzas take the element by value: bodies and IQ payloads are moved, not copied.
        match el.name() {
            "message" => {
                if let Some(forwarded) = Forwarded::parse(&el, &self.jid) {
                    match forwarded {
                        Ok(Forwarded::Carbon { kind, message }) => {
                            self.emit(SessionEvent::Carbon { kind, message }, receipt)
                                .await;
                        }
                        Ok(Forwarded::Archived {
                            archive_id,
                            query_id: Some(query_id),
                            message,
                        }) if self.collecting.contains_key(&query_id) => {
                            if let Some(list) = self.collecting.get_mut(&query_id)
                                && list.len() < MAX_COLLECTED
                            {
                                list.push((archive_id, message));
                            }
                        }
                        Ok(Forwarded::Archived {
                            query_id: Some(query_id),
                            ..
                        }) if self.collected.contains(&query_id) => {
                            tracing::debug!(account = %self.account, "dropping a late archive result of a query already answered");
                        }
                        Ok(Forwarded::Archived {
                            archive_id,
                            message,
                            ..
                        }) => {
                            self.emit(
                                SessionEvent::Archived {
                                    archive_id,
                                    message,
                                },
                                receipt,
                            )
                            .await;
                        }
                        Err(e) => self.invalid(e.to_string()).await,
                    }
                    return Ok(());
                }
                match Message::try_from(el) {
                    Ok(m) => self.emit(SessionEvent::Message(m), receipt).await,
                    Err(e) => self.invalid(e.to_string()).await,
                }
            }
            "presence" => match Presence::try_from(el) {
                Ok(p) if p.kind == PresenceType::Probe => {
                    tracing::debug!(account = %self.account, "ignoring a presence probe");
                }
                Ok(p) => {
                    // Nothing of a presence is recorded: handled once read, so a slow homeserver
                    // showing it never holds back the acknowledgement of what follows.
                    drop(receipt);
                    self.emit(SessionEvent::Presence(p), Receipt::none()).await;
                }
                Err(e) => self.invalid(e.to_string()).await,
            },
            "iq" => {
                let request = matches!(el.attr("type"), Some("get" | "set"));
                let id = el.attr("id").map(str::to_owned);
                let from = el.attr("from").map(str::to_owned);
                match Iq::try_from(el) {
                    Ok(iq) => return self.on_iq(iq, receipt).await,
                    Err(e) => {
                        // RFC 6120 §8.2.3: still answer a request we cannot parse when it has an id.
                        if let (Some(id), true) = (id, request) {
                            let reply = Element::new("iq", ns::CLIENT)
                                .with_attr("type", "error")
                                .with_attr("id", id)
                                .with_opt_attr("to", from.as_deref())
                                .with_child(StanzaError::new("modify", "bad-request").to_element());
                            self.write_stanza(reply.to_xml(), None).await?;
                        }
                        self.invalid(e.to_string()).await;
                    }
                }
            }
            other => {
                tracing::debug!(account = %self.account, element = other, "ignoring an unknown stanza")
            }
        }
        Ok(())
    }

    /// A stanza too large to keep: its IQ request fails, an IQ request to us is refused, a
    /// message or presence is reported so that nobody's message disappears without a word.
    async fn on_skipped(&mut self, s: SkippedStanza) -> Result<(), SessionEnd> {
        // A stanza all the same (XEP-0198 counts it): handled once it is reported.
        let receipt = self.receive();
        let from = s.from.as_deref().and_then(|f| Jid::parse(f).ok());
        tracing::warn!(
            account = %self.account,
            stanza = %s.name,
            from = s.from.as_deref().unwrap_or("the server"),
            bytes = s.bytes,
            "skipped a stanza over the size limit"
        );
        match s.name.as_str() {
            "iq" => match s.kind.as_deref() {
                Some("result" | "error") => {
                    let Some(id) = s.id else { return Ok(()) };
                    let ours = self
                        .pending
                        .get(&id)
                        .is_some_and(|p| self.reply_from_ok(p.to.as_ref(), from.as_ref()));
                    if !ours {
                        return Ok(());
                    }
                    if self.ping_outstanding.as_deref() == Some(id.as_str()) {
                        self.ping_outstanding = None;
                    }
                    if let Some(reply) = self.pending.remove(&id).and_then(|p| p.reply) {
                        let _ = reply.send(Err(IqError::TooLarge(s.bytes)));
                    }
                    Ok(())
                }
                _ => {
                    let Some(id) = s.id else { return Ok(()) };
                    let reply = Element::new("iq", ns::CLIENT)
                        .with_attr("type", "error")
                        .with_attr("id", id)
                        .with_opt_attr("to", s.from.as_deref())
                        .with_child(StanzaError::new("modify", "policy-violation").to_element());
                    self.write_stanza(reply.to_xml(), None).await
                }
            },
            "message" | "presence" => {
                self.emit(
                    SessionEvent::TooLarge {
                        stanza: s.name,
                        from,
                        kind: s.kind,
                        bytes: s.bytes,
                    },
                    receipt,
                )
                .await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn invalid(&mut self, reason: String) {
        tracing::warn!(account = %self.account, %reason, "the server sent a stanza we cannot understand");
        self.emit(SessionEvent::Invalid { reason }, Receipt::none())
            .await;
    }

    /// RFC 6120 §10.1 / §8.1.2.1: which `from` values may answer an IQ sent to `to`.
    fn reply_from_ok(&self, sent_to: Option<&Jid>, from: Option<&Jid>) -> bool {
        match (sent_to, from) {
            (None, None) => true,
            // The Messenger service answers from the bare domain; others from our bare JID.
            (None, Some(f)) => {
                f.bare_eq(&self.jid.to_bare()) && f.resource().is_none()
                    || f.local().is_none() && f.domain() == self.jid.domain()
            }
            (Some(t), Some(f)) => t == f || (t.is_bare() && t.bare_eq(f)),
            (Some(t), None) => t.bare_eq(&self.jid.to_bare()),
        }
    }

    async fn on_iq(&mut self, iq: Iq, receipt: Receipt) -> Result<(), SessionEnd> {
        match iq.kind {
            IqType::Result | IqType::Error => {
                let matches = self
                    .pending
                    .get(&iq.id)
                    .is_some_and(|p| self.reply_from_ok(p.to.as_ref(), iq.from.as_ref()));
                if !matches {
                    tracing::debug!(account = %self.account, id = %iq.id, "ignoring an IQ reply we did not ask for");
                    return Ok(());
                }
                let Some(p) = self.pending.remove(&iq.id) else {
                    return Ok(());
                };
                if self.ping_outstanding.as_deref() == Some(iq.id.as_str()) {
                    // Any answer, even an error (a server without XEP-0199), proves the link.
                    self.ping_outstanding = None;
                }
                if let Some(reply) = p.reply {
                    let result = if iq.kind == IqType::Error {
                        Err(IqError::Error(iq.error.clone().unwrap_or_else(|| {
                            StanzaError::new("cancel", "undefined-condition")
                        })))
                    } else {
                        Ok(iq)
                    };
                    let _ = reply.send(result);
                }
                Ok(())
            }
            IqType::Get | IqType::Set => {
                let payload = iq.payload.as_ref();
                let from_server = iq.from.as_ref().is_none_or(|f| {
                    f.bare_eq(&self.jid.to_bare())
                        || f.local().is_none() && f.domain() == self.jid.domain()
                });
                if iq.kind == IqType::Get && payload.is_some_and(|p| p.is("ping", ns::PING)) {
                    return self
                        .write_stanza(Iq::result_for(&iq, None).to_element().to_xml(), None)
                        .await;
                }
                if iq.kind == IqType::Set
                    && from_server
                    && payload.is_some_and(|p| p.is("query", ns::ROSTER))
                {
                    let items = payload.map(roster::parse_items);
                    self.write_stanza(Iq::result_for(&iq, None).to_element().to_xml(), None)
                        .await?;
                    match items {
                        Some(Ok(items)) => {
                            drop(receipt);
                            self.emit(SessionEvent::RosterPush(items), Receipt::none())
                                .await;
                        }
                        Some(Err(e)) => self.invalid(e.to_string()).await,
                        None => {}
                    }
                    return Ok(());
                }
                // RFC 6120 §8.4: unknown requests get service-unavailable.
                let err = Iq::error_for(&iq, StanzaError::new("cancel", "service-unavailable"));
                self.write_stanza(err.to_element().to_xml(), None).await
            }
        }
    }
}
