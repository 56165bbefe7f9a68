//! Stream negotiation (RFC 6120 §4–§7) as a sans-I/O state machine:
//! header → features → STARTTLS → restart → SASL → restart → bind → (session) →
//! (XEP-0198 enable) → done, or → resume → done for a broken stream the server kept.
//!
//! The connection layer feeds it [`StreamEvent`]s and carries out the [`Step`]s it returns:
//! write bytes, start TLS, restart the parser. TLS is always required: no mechanism is ever used
//! on a plaintext stream (RFC 6120 §13.8; the Messenger service required it too).

use crate::jid::Jid;
use crate::ns;
use crate::profile::ServerProfile;
use crate::sasl::{AuthIdentity, Credentials, Mechanism, SaslError, SaslExchange};
use crate::stanza::{Iq, IqType, StanzaError, StreamError};
use crate::stream_management;
use crate::xml::{self, Element, StreamEvent};

/// What the connection layer must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes.
    Send(String),
    /// `<proceed/>` arrived: run the TLS handshake, start a fresh parser, then call
    /// [`Negotiation::tls_established`].
    StartTls,
    /// SASL succeeded: restart the parser (keeping buffered bytes) before the next read.
    RestartParser,
    /// Negotiation is complete.
    Done(Box<Negotiated>),
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Our full JID as the server bound it (the Messenger service picks it from the token).
    pub jid: Jid,
    /// The final stream's features (stream management, CSI, roster versioning…).
    pub features: Element,
    /// XEP-0198 stream management on this stream, when the server offered it and it was asked.
    pub stream_management: Option<SmEnabled>,
    /// The previous stream was resumed: the server kept the session (presence, carbons,
    /// subscriptions) and sends again what we had not acknowledged.
    pub resumed: bool,
    /// How many of our stanzas the server handled on the previous stream, when it said (on
    /// resumption, and on a refused resumption by servers that tell).
    pub previous_h: Option<u32>,
}

/// Stream management as the server enabled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmEnabled {
    /// The stream's id, when the server allows resuming it.
    pub id: Option<String>,
}

/// A broken stream to resume (XEP-0198 §5) instead of binding a new resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The server's id for the stream.
    pub previd: String,
    /// How many of the server's stanzas we handled.
    pub h: u32,
    /// Our JID on that stream.
    pub jid: Jid,
}

/// Why negotiation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The server ended the stream with an error (see-other-host among them).
    #[error("the server closed the stream: {0}")]
    Stream(StreamError),
    /// The server does not offer STARTTLS.
    #[error("the server does not offer STARTTLS, and this client never logs in without TLS")]
    TlsNotOffered,
    /// The server answered `<failure/>` to STARTTLS.
    #[error("the server refused to start TLS")]
    TlsRefused,
    /// Authentication failed.
    #[error(transparent)]
    Sasl(#[from] SaslError),
    /// Resource binding failed.
    #[error("the server refused resource binding: {0}")]
    Bind(StanzaError),
    /// The server did something the protocol does not allow here.
    #[error("protocol error during negotiation: {0}")]
    Protocol(String),
}

/// What the negotiation needs to know about the account.
#[derive(Debug, Clone)]
pub struct NegotiationConfig {
    /// The domain to put in the stream header's `to`.
    pub domain: String,
    /// The server profile (allowed mechanisms).
    pub profile: ServerProfile,
    /// The secret.
    pub credentials: Credentials,
    /// Username / JID hints for the mechanisms that send them.
    pub identity: AuthIdentity,
    /// The resource to ask for; the server may assign another.
    pub resource: Option<String>,
    /// Restricts the mechanisms further than the profile does (operator configuration, tests).
    /// Mechanisms the profile does not allow stay disallowed.
    pub mechanisms: Option<Vec<Mechanism>>,
    /// Enable XEP-0198 stream management when the server offers it.
    pub stream_management: bool,
    /// Resume this stream rather than bind a new resource, when the server offers stream
    /// management; a refused resumption falls back to binding.
    pub resume: Option<ResumeRequest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    Features,
    Proceed,
    Sasl,
    Bind,
    Session,
    Resume,
    Enable,
    Done,
}

const BIND_ID: &str = "bind-1";
const SESSION_ID: &str = "session-1";

/// The negotiation state machine. See the module docs.
#[derive(Debug)]
pub struct Negotiation {
    config: NegotiationConfig,
    phase: Phase,
    tls: bool,
    authenticated: bool,
    sasl: Option<SaslExchange>,
    bound: Option<Jid>,
    features: Option<Element>,
    /// The server offers stream management and the config asks for it.
    sm_offered: bool,
    sm: Option<SmEnabled>,
    previous_h: Option<u32>,
}

impl Negotiation {
    /// Starts negotiation on a fresh TCP connection; returns the first steps (the header).
    pub fn new(config: NegotiationConfig) -> (Self, Vec<Step>) {
        let header = xml::stream_header(&config.domain);
        let n = Self {
            config,
            phase: Phase::Header,
            tls: false,
            authenticated: false,
            sasl: None,
            bound: None,
            features: None,
            sm_offered: false,
            sm: None,
            previous_h: None,
        };
        (n, vec![Step::Send(header)])
    }

    /// Whether SASL has succeeded (redirects are only followed before that).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The TLS handshake finished: open the stream again.
    pub fn tls_established(&mut self) -> Vec<Step> {
        self.tls = true;
        self.phase = Phase::Header;
        vec![Step::Send(xml::stream_header(&self.config.domain))]
    }

    /// Handles one event from the parser.
    pub fn handle(&mut self, event: StreamEvent) -> Result<Vec<Step>, NegotiationError> {
        let el = match event {
            StreamEvent::Open(_) if self.phase == Phase::Header => {
                self.phase = Phase::Features;
                return Ok(Vec::new());
            }
            StreamEvent::Open(_) => return Err(protocol("a second stream header")),
            StreamEvent::Close => return Err(protocol("the server closed the stream")),
            StreamEvent::Stanza(el) => el,
            StreamEvent::Skipped(s) => {
                return Err(protocol(&format!(
                    "an oversized <{}/> ({} bytes) before the session started",
                    s.name, s.bytes
                )));
            }
        };
        if let Some(err) = StreamError::from_element(&el) {
            return Err(NegotiationError::Stream(err));
        }
        match self.phase {
            Phase::Header => Err(protocol("data before the stream header")),
            Phase::Features => self.on_features(el),
            Phase::Proceed => {
                if el.is("proceed", ns::TLS) {
                    Ok(vec![Step::StartTls])
                } else if el.is("failure", ns::TLS) {
                    Err(NegotiationError::TlsRefused)
                } else {
                    Err(protocol(&format!(
                        "<{}> while waiting for <proceed/>",
                        el.name()
                    )))
                }
            }
            Phase::Sasl => self.on_sasl(&el),
            Phase::Bind | Phase::Session => self.on_iq(&el),
            Phase::Resume => self.on_resume(&el),
            Phase::Enable => self.on_enable(&el),
            Phase::Done => Err(protocol("negotiation already finished")),
        }
    }

    fn on_features(&mut self, features: Element) -> Result<Vec<Step>, NegotiationError> {
        if !features.is("features", ns::STREAM) {
            return Err(protocol(&format!(
                "expected <stream:features>, got <{}>",
                features.name()
            )));
        }
        if !self.tls {
            if features.child("starttls", ns::TLS).is_none() {
                return Err(NegotiationError::TlsNotOffered);
            }
            self.phase = Phase::Proceed;
            return Ok(vec![Step::Send(Element::new("starttls", ns::TLS).to_xml())]);
        }
        if !self.authenticated {
            let offered: Vec<String> = features
                .child("mechanisms", ns::SASL)
                .map(|m| {
                    m.children()
                        .filter(|c| c.is("mechanism", ns::SASL))
                        .map(Element::text)
                        .collect()
                })
                .unwrap_or_default();
            let allowed: Vec<Mechanism> = self
                .config
                .profile
                .allowed_mechanisms()
                .iter()
                .copied()
                .filter(|m| {
                    self.config
                        .mechanisms
                        .as_ref()
                        .is_none_or(|only| only.contains(m))
                })
                .collect();
            let mechanism = SaslExchange::select(&offered, &allowed, &self.config.credentials)?;
            let (exchange, text) =
                SaslExchange::start(mechanism, &self.config.credentials, &self.config.identity)?;
            self.sasl = Some(exchange);
            self.phase = Phase::Sasl;
            let auth = Element::new("auth", ns::SASL)
                .with_attr("mechanism", mechanism.name())
                .with_text(text);
            return Ok(vec![Step::Send(auth.to_xml())]);
        }
        if features.child("bind", ns::BIND).is_none() {
            return Err(protocol("the server offers no resource binding"));
        }
        self.sm_offered = self.config.stream_management && features.child("sm", ns::SM).is_some();
        self.features = Some(features);
        if self.sm_offered
            && let Some(r) = &self.config.resume
        {
            self.phase = Phase::Resume;
            return Ok(vec![Step::Send(
                stream_management::resume(&r.previd, r.h).to_xml(),
            )]);
        }
        Ok(self.bind())
    }

    fn bind(&mut self) -> Vec<Step> {
        let mut bind = Element::new("bind", ns::BIND);
        if let Some(r) = &self.config.resource {
            bind.push_child(Element::new("resource", ns::BIND).with_text(r.clone()));
        }
        self.phase = Phase::Bind;
        vec![Step::Send(
            Iq::set(BIND_ID, None, bind).to_element().to_xml(),
        )]
    }

    /// The answer to `<resume/>`: the old stream goes on, or a new resource is bound.
    fn on_resume(&mut self, el: &Element) -> Result<Vec<Step>, NegotiationError> {
        if el.is("resumed", ns::SM) {
            let (Some(request), Some(features)) =
                (self.config.resume.clone(), self.features.take())
            else {
                return Err(protocol("<resumed/> without a resumption"));
            };
            self.phase = Phase::Done;
            return Ok(vec![Step::Done(Box::new(Negotiated {
                jid: request.jid,
                features,
                stream_management: Some(SmEnabled {
                    id: Some(request.previd),
                }),
                resumed: true,
                previous_h: stream_management::h_of(el),
            }))]);
        }
        if el.is("failed", ns::SM) {
            // Expired or unknown: a fresh session (what the old one had not acknowledged is
            // the caller's to send again).
            self.previous_h = stream_management::h_of(el);
            return Ok(self.bind());
        }
        Err(protocol(&format!(
            "<{}> while resuming the stream",
            el.name()
        )))
    }

    fn on_enable(&mut self, el: &Element) -> Result<Vec<Step>, NegotiationError> {
        if el.is("enabled", ns::SM) {
            let resumable = matches!(el.attr("resume"), Some("true" | "1"));
            self.sm = Some(SmEnabled {
                id: el
                    .attr("id")
                    .filter(|id| resumable && !id.is_empty())
                    .map(str::to_owned),
            });
        } else if !el.is("failed", ns::SM) {
            return Err(protocol(&format!(
                "<{}> while enabling stream management",
                el.name()
            )));
        }
        Ok(self.finish())
    }

    fn on_sasl(&mut self, el: &Element) -> Result<Vec<Step>, NegotiationError> {
        let Some(sasl) = self.sasl.as_mut() else {
            return Err(protocol("SASL reply without an exchange"));
        };
        if el.ns() != ns::SASL {
            return Err(protocol(&format!("<{}> during SASL", el.name())));
        }
        match el.name() {
            "challenge" => {
                let reply = sasl.challenge(&el.text())?;
                Ok(vec![Step::Send(
                    Element::new("response", ns::SASL).with_text(reply).to_xml(),
                )])
            }
            "success" => {
                sasl.success(&el.text())?;
                self.authenticated = true;
                self.phase = Phase::Header;
                Ok(vec![
                    Step::RestartParser,
                    Step::Send(xml::stream_header(&self.config.domain)),
                ])
            }
            "failure" => {
                let condition = el
                    .children()
                    .find(|c| c.name() != "text")
                    .map_or("undefined-condition", Element::name)
                    .to_owned();
                let text = el.child_text("text", ns::SASL).filter(|t| !t.is_empty());
                Err(sasl.failure(&condition, text).into())
            }
            other => Err(protocol(&format!("<{other}> during SASL"))),
        }
    }

    fn on_iq(&mut self, el: &Element) -> Result<Vec<Step>, NegotiationError> {
        let iq = Iq::from_element(el).map_err(|e| protocol(&e.to_string()))?;
        let expected = if self.phase == Phase::Bind {
            BIND_ID
        } else {
            SESSION_ID
        };
        if iq.id != expected || !matches!(iq.kind, IqType::Result | IqType::Error) {
            return Err(protocol(&format!(
                "unexpected iq '{}' during binding",
                iq.id
            )));
        }
        if iq.kind == IqType::Error {
            let err = iq
                .error
                .unwrap_or_else(|| StanzaError::new("cancel", "undefined-condition"));
            if self.phase == Phase::Session {
                // RFC 6121 Appendix E: session establishment is obsolete; a server that answers
                // with an error still gave us a usable session.
                return Ok(self.finish());
            }
            return Err(NegotiationError::Bind(err));
        }
        if self.phase == Phase::Bind {
            let jid = iq
                .payload
                .as_ref()
                .and_then(|b| b.child_text("jid", ns::BIND))
                .ok_or_else(|| protocol("bind result without a JID"))?;
            let jid = Jid::parse(jid.trim()).map_err(|e| protocol(&format!("bound JID: {e}")))?;
            self.bound = Some(jid);
            let needs_session = self
                .features
                .as_ref()
                .and_then(|f| f.child("session", ns::SESSION))
                .is_some_and(|s| s.child("optional", ns::SESSION).is_none());
            if needs_session {
                self.phase = Phase::Session;
                let iq = Iq::set(SESSION_ID, None, Element::new("session", ns::SESSION));
                return Ok(vec![Step::Send(iq.to_element().to_xml())]);
            }
        }
        Ok(self.finish())
    }

    fn finish(&mut self) -> Vec<Step> {
        if self.sm_offered && self.phase != Phase::Enable {
            self.phase = Phase::Enable;
            return vec![Step::Send(stream_management::enable().to_xml())];
        }
        self.phase = Phase::Done;
        match (self.bound.take(), self.features.take()) {
            (Some(jid), Some(features)) => vec![Step::Done(Box::new(Negotiated {
                jid,
                features,
                stream_management: self.sm.take(),
                resumed: false,
                previous_h: self.previous_h,
            }))],
            _ => Vec::new(),
        }
    }
}

fn protocol(reason: &str) -> NegotiationError {
    NegotiationError::Protocol(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{StreamLimits, StreamParser};

    const HEADER: &str = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
        from='messenger.live.com' id='x' version='1.0'>";

    /// Drives a negotiation with a scripted server: each entry is what the server sends after
    /// the client's previous step.
    struct Script {
        neg: Negotiation,
        parser: StreamParser,
        sent: Vec<String>,
    }

    impl Script {
        fn new(profile: ServerProfile, credentials: Credentials) -> Self {
            let (neg, steps) = Negotiation::new(NegotiationConfig {
                domain: "messenger.live.com".into(),
                profile,
                credentials,
                identity: AuthIdentity {
                    username: Some("alice".into()),
                    bare_jid: Some("alice@messenger.live.com".into()),
                },
                resource: Some("bridge".into()),
                mechanisms: None,
                stream_management: true,
                resume: None,
            });
            let mut s = Self {
                neg,
                parser: StreamParser::new(StreamLimits::default()),
                sent: Vec::new(),
            };
            s.apply(steps);
            s
        }

        fn apply(&mut self, steps: Vec<Step>) -> Option<Negotiated> {
            let mut done = None;
            for step in steps {
                match step {
                    Step::Send(s) => self.sent.push(s),
                    Step::StartTls => {
                        self.parser = StreamParser::new(StreamLimits::default());
                        let more = self.neg.tls_established();
                        self.apply(more);
                    }
                    Step::RestartParser => self.parser.restart(),
                    Step::Done(n) => done = Some(*n),
                }
            }
            done
        }

        fn server(&mut self, xml: &str) -> Result<Option<Negotiated>, NegotiationError> {
            self.parser.push(xml.as_bytes());
            let mut done = None;
            while let Some(ev) = self.parser.next_event().unwrap() {
                let steps = self.neg.handle(ev)?;
                if let Some(n) = self.apply(steps) {
                    done = Some(n);
                }
            }
            Ok(done)
        }

        fn last_sent(&self) -> &str {
            self.sent.last().unwrap()
        }
    }

    fn to_tls(s: &mut Script) {
        s.server(&format!("{HEADER}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>")).unwrap();
        assert_eq!(
            s.last_sent(),
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        );
        s.server("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .unwrap();
        assert!(
            s.last_sent()
                .contains("<stream:stream to='messenger.live.com'")
        );
    }

    #[test]
    fn messenger_login_with_raw_token_and_server_assigned_jid() {
        let mut s = Script::new(
            ServerProfile::Messenger,
            Credentials::AccessToken("EwA+tok/en==".into()),
        );
        to_tls(&mut s);
        s.server(&format!(
            "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>X-MESSENGER-OAUTH2</mechanism></mechanisms></stream:features>"
        ))
        .unwrap();
        assert_eq!(
            s.last_sent(),
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-MESSENGER-OAUTH2'>EwA+tok/en==</auth>"
        );
        // The server may send the new header right after <success/> in one segment.
        s.server(&format!("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{HEADER}<stream:features>\
            <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>\
            </stream:features>")).unwrap();
        assert_eq!(
            s.last_sent(),
            "<iq type='set' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bridge</resource></bind></iq>"
        );
        s.server(
            "<iq type='result' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
            <jid>0a1b2c@messenger.live.com/bridge-42</jid></bind></iq>",
        )
        .unwrap();
        assert_eq!(
            s.last_sent(),
            "<iq type='set' id='session-1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
        );
        let done = s
            .server("<iq type='result' id='session-1' from='messenger.live.com'/>")
            .unwrap()
            .unwrap();
        assert_eq!(done.jid.to_string(), "0a1b2c@messenger.live.com/bridge-42");
    }

    #[test]
    fn optional_session_is_skipped_and_session_error_tolerated() {
        let mut s = Script::new(ServerProfile::Standard, Credentials::Password("p".into()));
        to_tls(&mut s);
        s.server(&format!(
            "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
        ))
        .unwrap();
        s.server(&format!("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{HEADER}<stream:features>\
            <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>\
            </stream:features>")).unwrap();
        let done = s.server("<iq type='result' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@x/r</jid></bind></iq>").unwrap();
        assert!(done.is_some());
    }

    /// Logs in with PLAIN on a standard server that offers stream management.
    fn to_bound_features(s: &mut Script) {
        to_tls(s);
        s.server(&format!(
            "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
        ))
        .unwrap();
        s.server(&format!("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{HEADER}<stream:features>\
            <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><sm xmlns='urn:xmpp:sm:3'/></stream:features>")).unwrap();
    }

    #[test]
    fn stream_management_is_enabled_after_binding_when_offered() {
        let mut s = Script::new(ServerProfile::Standard, Credentials::Password("p".into()));
        to_bound_features(&mut s);
        assert!(s.last_sent().contains("id='bind-1'"));
        let done = s.server("<iq type='result' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@x/r</jid></bind></iq>").unwrap();
        assert!(done.is_none());
        assert_eq!(
            s.last_sent(),
            "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
        );
        let done = s
            .server("<enabled xmlns='urn:xmpp:sm:3' id='s1' resume='true' max='300'/>")
            .unwrap()
            .unwrap();
        assert_eq!(
            done.stream_management,
            Some(SmEnabled {
                id: Some("s1".into())
            })
        );
        assert!(!done.resumed);

        // A server that enables it without resumption, or refuses it.
        let mut s = Script::new(ServerProfile::Standard, Credentials::Password("p".into()));
        to_bound_features(&mut s);
        s.server("<iq type='result' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@x/r</jid></bind></iq>").unwrap();
        let done = s
            .server("<enabled xmlns='urn:xmpp:sm:3' id='s1'/>")
            .unwrap()
            .unwrap();
        assert_eq!(done.stream_management, Some(SmEnabled { id: None }));
        let mut s = Script::new(ServerProfile::Standard, Credentials::Password("p".into()));
        to_bound_features(&mut s);
        s.server("<iq type='result' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@x/r</jid></bind></iq>").unwrap();
        let done = s
            .server("<failed xmlns='urn:xmpp:sm:3'/>")
            .unwrap()
            .unwrap();
        assert_eq!(done.stream_management, None);
        assert_eq!(done.jid.to_string(), "alice@x/r");
    }

    #[test]
    fn a_kept_stream_is_resumed_and_a_refused_resumption_binds_afresh() {
        let request = ResumeRequest {
            previd: "s1".into(),
            h: 12,
            jid: Jid::parse("alice@x/r").unwrap(),
        };
        let mut s = Script::new(ServerProfile::Standard, Credentials::Password("p".into()));
        s.neg.config.resume = Some(request.clone());
        to_bound_features(&mut s);
        assert_eq!(
            s.last_sent(),
            "<resume xmlns='urn:xmpp:sm:3' previd='s1' h='12'/>"
        );
        let done = s
            .server("<resumed xmlns='urn:xmpp:sm:3' previd='s1' h='5'/>")
            .unwrap()
            .unwrap();
        assert!(done.resumed);
        assert_eq!(done.previous_h, Some(5));
        assert_eq!(done.jid, request.jid);

        let mut s = Script::new(ServerProfile::Standard, Credentials::Password("p".into()));
        s.neg.config.resume = Some(request);
        to_bound_features(&mut s);
        s.server("<failed xmlns='urn:xmpp:sm:3' h='4'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>").unwrap();
        assert!(
            s.last_sent().contains("id='bind-1'"),
            "a refused resumption binds a new resource"
        );
        s.server("<iq type='result' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@x/r2</jid></bind></iq>").unwrap();
        let done = s
            .server("<enabled xmlns='urn:xmpp:sm:3' id='s2' resume='1'/>")
            .unwrap()
            .unwrap();
        assert!(!done.resumed);
        assert_eq!(done.previous_h, Some(4));
        assert_eq!(
            done.stream_management,
            Some(SmEnabled {
                id: Some("s2".into())
            })
        );
    }

    #[test]
    fn stream_management_is_not_used_unless_asked() {
        // The Messenger profile never asks: the retired service offered none of it.
        let mut s = Script::new(ServerProfile::Standard, Credentials::Password("p".into()));
        s.neg.config.stream_management = false;
        to_bound_features(&mut s);
        let done = s.server("<iq type='result' id='bind-1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@x/r</jid></bind></iq>").unwrap().unwrap();
        assert_eq!(done.stream_management, None);
        assert!(!s.sent.iter().any(|x| x.contains("urn:xmpp:sm:3")));
    }

    #[test]
    fn no_starttls_is_refused() {
        let mut s = Script::new(
            ServerProfile::Messenger,
            Credentials::AccessToken("t".into()),
        );
        let err = s
            .server(&format!(
                "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>X-MESSENGER-OAUTH2</mechanism></mechanisms></stream:features>"
            ))
            .unwrap_err();
        assert_eq!(err, NegotiationError::TlsNotOffered);
    }

    #[test]
    fn plain_is_never_used_on_the_messenger_profile() {
        let mut s = Script::new(
            ServerProfile::Messenger,
            Credentials::AccessToken("t".into()),
        );
        to_tls(&mut s);
        let err = s
            .server(&format!(
                "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
            ))
            .unwrap_err();
        assert!(matches!(
            err,
            NegotiationError::Sasl(SaslError::NoMechanism { .. })
        ));
    }

    #[test]
    fn rejected_token_is_a_sasl_failure() {
        let mut s = Script::new(
            ServerProfile::Messenger,
            Credentials::AccessToken("t".into()),
        );
        to_tls(&mut s);
        s.server(&format!(
            "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>X-MESSENGER-OAUTH2</mechanism></mechanisms></stream:features>"
        ))
        .unwrap();
        let err = s.server("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/><text>expired</text></failure>").unwrap_err();
        assert_eq!(
            err,
            NegotiationError::Sasl(SaslError::Failure {
                condition: "not-authorized".into(),
                text: Some("expired".into())
            })
        );
    }

    #[test]
    fn see_other_host_surfaces_as_stream_error() {
        let mut s = Script::new(
            ServerProfile::Messenger,
            Credentials::AccessToken("t".into()),
        );
        let err = s
            .server(&format!(
                "{HEADER}<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>\
            127.0.0.1:5222</see-other-host></stream:error>"
            ))
            .unwrap_err();
        let NegotiationError::Stream(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(e.see_other_host(), Some(("127.0.0.1".into(), Some(5222))));
    }

    #[test]
    fn bind_error_is_reported() {
        let mut s = Script::new(ServerProfile::Standard, Credentials::Password("p".into()));
        to_tls(&mut s);
        s.server(&format!(
            "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>PLAIN</mechanism></mechanisms></stream:features>"
        ))
        .unwrap();
        s.server(&format!(
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>{HEADER}<stream:features>\
            <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        ))
        .unwrap();
        let err = s.server("<iq type='error' id='bind-1'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>").unwrap_err();
        assert!(matches!(err, NegotiationError::Bind(e) if e.condition == "conflict"));
    }

    #[test]
    fn mechanism_list_is_parsed_case_insensitively() {
        let mut s = Script::new(
            ServerProfile::Standard,
            Credentials::AccessToken("t".into()),
        );
        to_tls(&mut s);
        s.server(&format!("{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>x-oauth2</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>")).unwrap();
        assert!(
            s.last_sent()
                .contains(&format!("mechanism='{}'", Mechanism::XOAuth2.name()))
        );
    }
}
