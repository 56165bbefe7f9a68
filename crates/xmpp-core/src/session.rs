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
    /// Send and report once the bytes are written and flushed to the connection.
    SendConfirmed(String, oneshot::Sender<()>),
    Iq {
        iq: Box<Iq>,
        reply: oneshot::Sender<Result<Iq, IqError>>,
    },
    Close,
}

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

    /// Sends a stanza and returns once it is written and flushed to the server's connection
    /// (not merely queued): a caller that records "delivered" after this cannot lose it to
    /// its own crash. `NotConnected` if the session ended before the write.
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

/// Starts the tasks of an established session. `events` receives what the server sends; the
/// returned future resolves when the session ends, with the reason.
pub(crate) fn start(
    established: Established,
    timers: SessionTimers,
    events: mpsc::Sender<AccountEvent>,
    account: String,
) -> (SessionHandle, tokio::task::JoinHandle<SessionEnd>) {
    let Established {
        stream,
        parser,
        negotiated,
        ..
    } = established;
    let jid = negotiated.jid;
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
    };
    let join = tokio::spawn(driver.run(in_rx, cmd_rx));
    (
        SessionHandle {
            jid,
            commands: cmd_tx,
        },
        join,
    )
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
}

/// How long a closing session waits for the server to close its side of the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl Driver {
    async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Box<Incoming>>,
        mut commands: mpsc::Receiver<Command>,
    ) -> SessionEnd {
        let mut keepalive = interval(self.timers.keepalive);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keepalive.reset();
        let mut housekeeping = interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let end = loop {
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
                        Some(Command::Send(s)) => self.write_raw(&s).await,
                        Some(Command::SendConfirmed(s, written)) => {
                            let result = self.write_raw(&s).await;
                            if result.is_ok() {
                                let _ = written.send(());
                            }
                            result
                        }
                        Some(Command::Iq { iq, reply }) => self.send_iq(*iq, Some(reply)).await,
                        Some(Command::Close) | None => {
                            self.close(&mut incoming).await;
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
        };
        for (_, p) in self.pending.drain() {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(IqError::NotConnected));
            }
        }
        end
    }

    /// Closes the stream as RFC 6120 §4.4 asks: sends `</stream:stream>`, then keeps reading
    /// until the server closes its side, handling every stanza that was already on its way, so
    /// that a stop loses nothing the server considers delivered. Bounded by [`CLOSE_WAIT`].
    async fn close(&mut self, incoming: &mut mpsc::Receiver<Box<Incoming>>) {
        // One deadline for the whole close, the closing tag's write included.
        let deadline = Instant::now() + CLOSE_WAIT;
        let _ = tokio::time::timeout_at(deadline, self.write_raw(xml::STREAM_CLOSE)).await;
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
        self.write_raw(&iq.to_element().to_xml()).await
    }

    fn expire_iqs(&mut self) -> Result<(), SessionEnd> {
        let now = Instant::now();
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

    async fn emit(&mut self, ev: SessionEvent) {
        // Backpressure: if the bridge is slow, the session waits (and TCP pushes back on the
        // server) rather than dropping anything.
        let event = AccountEvent {
            account: self.account.clone(),
            event: ManagerEvent::Session(ev),
        };
        let _ = self.events.send(event).await;
    }

    async fn on_stanza(&mut self, el: Element) -> Result<(), SessionEnd> {
        if let Some(err) = StreamError::from_element(&el) {
            return Err(SessionEnd::StreamError(err));
        }
        if el.ns() != ns::CLIENT {
            tracing::debug!(account = %self.account, element = el.name(), "ignoring a nonza");
            return Ok(());
        }
        // Typed stanzas take the element by value: bodies and IQ payloads are moved, not copied.
        match el.name() {
            "message" => {
                if let Some(forwarded) = Forwarded::parse(&el, &self.jid) {
                    match forwarded {
                        Ok(Forwarded::Carbon { kind, message }) => {
                            self.emit(SessionEvent::Carbon { kind, message }).await;
                        }
                        Ok(Forwarded::Archived {
                            archive_id,
                            message,
                            ..
                        }) => {
                            self.emit(SessionEvent::Archived {
                                archive_id,
                                message,
                            })
                            .await;
                        }
                        Err(e) => self.invalid(e.to_string()).await,
                    }
                    return Ok(());
                }
                match Message::try_from(el) {
                    Ok(m) => self.emit(SessionEvent::Message(m)).await,
                    Err(e) => self.invalid(e.to_string()).await,
                }
            }
            "presence" => match Presence::try_from(el) {
                Ok(p) if p.kind == PresenceType::Probe => {
                    tracing::debug!(account = %self.account, "ignoring a presence probe");
                }
                Ok(p) => self.emit(SessionEvent::Presence(p)).await,
                Err(e) => self.invalid(e.to_string()).await,
            },
            "iq" => {
                let request = matches!(el.attr("type"), Some("get" | "set"));
                let id = el.attr("id").map(str::to_owned);
                let from = el.attr("from").map(str::to_owned);
                match Iq::try_from(el) {
                    Ok(iq) => return self.on_iq(iq).await,
                    Err(e) => {
                        // RFC 6120 §8.2.3: still answer a request we cannot parse when it has an id.
                        if let (Some(id), true) = (id, request) {
                            let reply = Element::new("iq", ns::CLIENT)
                                .with_attr("type", "error")
                                .with_attr("id", id)
                                .with_opt_attr("to", from.as_deref())
                                .with_child(StanzaError::new("modify", "bad-request").to_element());
                            self.write_raw(&reply.to_xml()).await?;
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
                    self.write_raw(&reply.to_xml()).await
                }
            },
            "message" | "presence" => {
                self.emit(SessionEvent::TooLarge {
                    stanza: s.name,
                    from,
                    kind: s.kind,
                    bytes: s.bytes,
                })
                .await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn invalid(&mut self, reason: String) {
        tracing::warn!(account = %self.account, %reason, "the server sent a stanza we cannot understand");
        self.emit(SessionEvent::Invalid { reason }).await;
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

    async fn on_iq(&mut self, iq: Iq) -> Result<(), SessionEnd> {
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
                        .write_raw(&Iq::result_for(&iq, None).to_element().to_xml())
                        .await;
                }
                if iq.kind == IqType::Set
                    && from_server
                    && payload.is_some_and(|p| p.is("query", ns::ROSTER))
                {
                    let items = payload.map(roster::parse_items);
                    self.write_raw(&Iq::result_for(&iq, None).to_element().to_xml())
                        .await?;
                    match items {
                        Some(Ok(items)) => self.emit(SessionEvent::RosterPush(items)).await,
                        Some(Err(e)) => self.invalid(e.to_string()).await,
                        None => {}
                    }
                    return Ok(());
                }
                // RFC 6120 §8.4: unknown requests get service-unavailable.
                let err = Iq::error_for(&iq, StanzaError::new("cancel", "service-unavailable"));
                self.write_raw(&err.to_element().to_xml()).await
            }
        }
    }
}
