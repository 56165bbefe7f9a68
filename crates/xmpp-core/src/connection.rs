//! Opening an authenticated XMPP connection: TCP, STARTTLS with rustls, negotiation, and
//! `<see-other-host/>` redirects. The protocol decisions live in [`crate::negotiation`]; this
//! module only moves bytes and runs the TLS handshake.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types};

use crate::negotiation::{Negotiated, Negotiation, NegotiationConfig, NegotiationError, Step};
use crate::sasl::SaslError;
use crate::xml::{StreamLimits, StreamParser, XmlError};

/// RFC 6120 §4.9.3.19 does not bound redirects; the Messenger profile says at most 5.
pub const MAX_REDIRECTS: usize = 5;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The XMPP domain (stream `to`, TLS server name).
    pub domain: String,
    /// The host to connect to (`xmpp.messenger.live.com`, `127.0.0.1`, …).
    pub host: String,
    /// The port (5222).
    pub port: u16,
    /// Parser limits.
    pub limits: StreamLimits,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for the whole negotiation (TLS, SASL, bind) on one host.
    pub negotiation_timeout: Duration,
}

impl ConnectionConfig {
    /// Defaults for `domain` on `host:port`.
    pub fn new(domain: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        Self {
            domain: domain.into(),
            host: host.into(),
            port,
            limits: StreamLimits::default(),
            connect_timeout: Duration::from_secs(10),
            negotiation_timeout: Duration::from_secs(30),
        }
    }
}

/// How to verify the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Extra certificates (PEM) trusted besides the system's: CA certificates, or the server's
    /// own certificate (a self-signed one, as `prosodyctl cert generate` makes), which is then
    /// pinned: accepted when the server presents exactly it.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprints (hex, colons allowed) of server certificates accepted as they are.
    pub fingerprints: Vec<String>,
    /// Skip certificate verification entirely. Only for test servers; logged loudly.
    pub insecure_skip_verify: bool,
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        /// Host tried.
        host: String,
        /// Port tried.
        port: u16,
        /// The OS error.
        source: std::io::Error,
    },
    /// A read or write failed mid-negotiation.
    #[error("connection to {host}:{port} failed: {source}")]
    Io {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The OS error.
        source: std::io::Error,
    },
    /// A step took too long.
    #[error("timed out while {0}")]
    Timeout(&'static str),
    /// The TLS handshake failed (certificate not trusted, protocol error).
    #[error("TLS with {domain} failed: {source}")]
    Tls {
        /// The domain whose certificate was checked.
        domain: String,
        /// The handshake error.
        source: std::io::Error,
    },
    /// The TLS settings are unusable (unreadable CA file).
    #[error("TLS settings: {0}")]
    TlsSettings(String),
    /// The server sent bad XML.
    #[error("the server sent bad XML: {0}")]
    Xml(#[from] XmlError),
    /// Negotiation failed (authentication among others).
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
    /// More than [`MAX_REDIRECTS`] `<see-other-host/>` in a row.
    #[error("more than {MAX_REDIRECTS} see-other-host redirects; last to {0}")]
    TooManyRedirects(String),
    /// The server closed the connection during negotiation.
    #[error("the server closed the connection during login")]
    Closed,
}

/// How the caller should react to a failed connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The credentials were refused: refresh the token or ask the user to log in again.
    CredentialsRejected,
    /// Retrying cannot help until the configuration changes (no usable mechanism, no TLS).
    Permanent,
    /// Network trouble or a server glitch: retry with backoff.
    Transient,
}

impl ConnectError {
    /// Classifies the error for the reconnect logic.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Negotiation(NegotiationError::Sasl(SaslError::Failure { condition, .. })) => {
                match condition.as_str() {
                    "not-authorized"
                    | "credentials-expired"
                    | "account-disabled"
                    | "invalid-authzid" => FailureKind::CredentialsRejected,
                    _ => FailureKind::Transient,
                }
            }
            Self::Negotiation(
                NegotiationError::Sasl(SaslError::NoMechanism { .. })
                | NegotiationError::TlsNotOffered
                | NegotiationError::TlsRefused,
            )
            | Self::TlsSettings(_) => FailureKind::Permanent,
            _ => FailureKind::Transient,
        }
    }
}

/// An authenticated, bound stream ready for stanzas.
pub struct Established {
    /// The TLS stream.
    pub stream: TlsStream<TcpStream>,
    /// The parser, possibly holding bytes already read.
    pub parser: StreamParser,
    /// The negotiation result (our JID).
    pub negotiated: Negotiated,
    /// The host and port actually used (after redirects).
    pub peer: (String, u16),
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("jid", &self.negotiated.jid)
            .field("peer", &self.peer)
            .finish()
    }
}

/// Builds the rustls client configuration (once per process; it is shared by every session).
pub fn tls_client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::TlsSettings(e.to_string()))?;
    if settings.insecure_skip_verify {
        tracing::warn!(
            "TLS certificate verification is OFF: any server can impersonate the XMPP server"
        );
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth();
        return Ok(Arc::new(config));
    }
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate should not stop the bridge; skip it.
        let _ = roots.add(cert);
    }
    let mut pinned = Vec::new();
    if let Some(path) = &settings.ca_file {
        use pki_types::pem::PemObject;
        let certs = pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
            ConnectError::TlsSettings(format!("cannot read CA file {}: {e}", path.display()))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                ConnectError::TlsSettings(format!("bad certificate in {}: {e}", path.display()))
            })?;
            // As a CA it signs server certificates; as the server's own certificate it is pinned.
            if let Err(e) = roots.add(cert.clone()) {
                tracing::debug!(file = %path.display(), error = %e, "a certificate that is not a usable CA; it is pinned as a server certificate");
            }
            pinned.push(cert.as_ref().to_vec());
        }
        if pinned.is_empty() {
            return Err(ConnectError::TlsSettings(format!(
                "no certificates in CA file {}",
                path.display()
            )));
        }
    }
    let fingerprints = settings
        .fingerprints
        .iter()
        .map(|f| parse_fingerprint(f))
        .collect::<Result<Vec<_>, _>>()?;
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ConnectError::TlsSettings(format!("no usable trust anchors: {e}")))?;
    let verifier = PinningVerifier {
        webpki,
        pinned,
        fingerprints,
    };
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    ))
}

/// A SHA-256 fingerprint from hex (`AB:CD:…` or `abcd…`).
fn parse_fingerprint(text: &str) -> Result<[u8; 32], ConnectError> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bad = || {
        ConnectError::TlsSettings(format!(
            "xmpp.tls_fingerprint {text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        ))
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

/// The SHA-256 fingerprint of a certificate, as `AB:CD:…`.
pub fn fingerprint(cert: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Verifies the server's certificate: a pinned certificate (from the CA file, or by SHA-256
/// fingerprint) is accepted as it is; anything else must chain to a trusted CA (WebPKI). A
/// refusal names the certificate's fingerprint and the two ways to trust it.
#[derive(Debug)]
struct PinningVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<Vec<u8>>,
    fingerprints: Vec<[u8; 32]>,
}

impl rustls::client::danger::ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &pki_types::CertificateDer<'_>,
        intermediates: &[pki_types::CertificateDer<'_>],
        server_name: &pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let der = end_entity.as_ref();
        let digest: [u8; 32] = sha2::Sha256::digest(der).into();
        if self.pinned.iter().any(|p| p.as_slice() == der) || self.fingerprints.contains(&digest) {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| {
                rustls::Error::General(format!(
                    "{e}. The server's certificate has SHA-256 fingerprint {}: if it is the \
                     right server (e.g. a self-signed certificate), put that certificate in \
                     xmpp.ca_file or its fingerprint in xmpp.tls_fingerprint",
                    fingerprint(der)
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &pki_types::CertificateDer<'_>,
        _intermediates: &[pki_types::CertificateDer<'_>],
        _server_name: &pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects, negotiates and follows redirects (only before authentication, at most
/// [`MAX_REDIRECTS`], keeping the domain and TLS policy: RFC 6120 §4.9.3.19).
pub async fn establish(
    config: &ConnectionConfig,
    tls: Arc<ClientConfig>,
    negotiation: &NegotiationConfig,
) -> Result<Established, ConnectError> {
    let mut host = config.host.clone();
    let mut port = config.port;
    for _ in 0..=MAX_REDIRECTS {
        match establish_once(config, tls.clone(), negotiation, &host, port).await {
            Err(ConnectError::Negotiation(NegotiationError::Stream(e)))
                if e.see_other_host().is_some() =>
            {
                let (new_host, new_port) = e.see_other_host().unwrap_or_default();
                tracing::info!(domain = %config.domain, from = %format!("{host}:{port}"), to = %new_host,
                    "the server redirected us (see-other-host)");
                host = new_host;
                port = new_port.unwrap_or(config.port);
            }
            other => return other,
        }
    }
    Err(ConnectError::TooManyRedirects(format!("{host}:{port}")))
}

async fn establish_once(
    config: &ConnectionConfig,
    tls: Arc<ClientConfig>,
    negotiation: &NegotiationConfig,
    host: &str,
    port: u16,
) -> Result<Established, ConnectError> {
    let tcp = timeout(config.connect_timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ConnectError::Timeout("connecting"))?
        .map_err(|source| ConnectError::Connect {
            host: host.to_owned(),
            port,
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let fut = negotiate(config, tls, negotiation, tcp, host, port);
    timeout(config.negotiation_timeout, fut)
        .await
        .map_err(|_| ConnectError::Timeout("logging in"))?
}

/// Either side of the STARTTLS switch.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(bytes).await,
            Self::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            Self::Tls(s) => s.read(buf).await,
        }
    }
}

async fn negotiate(
    config: &ConnectionConfig,
    tls: Arc<ClientConfig>,
    negotiation: &NegotiationConfig,
    tcp: TcpStream,
    host: &str,
    port: u16,
) -> Result<Established, ConnectError> {
    let io_err = |source| ConnectError::Io {
        host: host.to_owned(),
        port,
        source,
    };
    let mut transport = Transport::Plain(tcp);
    let mut parser = StreamParser::new(config.limits);
    let (mut neg, mut steps) = Negotiation::new(negotiation.clone());
    let mut buf = vec![0u8; 4096];
    loop {
        let mut pending = std::mem::take(&mut steps).into_iter();
        while let Some(step) = pending.next() {
            match step {
                Step::Send(s) => transport.write_all(s.as_bytes()).await.map_err(io_err)?,
                Step::StartTls => {
                    if parser.has_pending_bytes() {
                        // RFC 6120 §5.4.3.3: nothing may follow <proceed/> in plaintext.
                        return Err(
                            NegotiationError::Protocol("data after <proceed/>".into()).into()
                        );
                    }
                    let Transport::Plain(tcp) = transport else {
                        return Err(NegotiationError::Protocol("STARTTLS twice".into()).into());
                    };
                    let name =
                        pki_types::ServerName::try_from(config.domain.clone()).map_err(|e| {
                            ConnectError::TlsSettings(format!("domain {}: {e}", config.domain))
                        })?;
                    let stream = TlsConnector::from(tls.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|source| ConnectError::Tls {
                            domain: config.domain.clone(),
                            source,
                        })?;
                    transport = Transport::Tls(Box::new(stream));
                    parser = StreamParser::new(config.limits);
                    let mut more: Vec<Step> = neg.tls_established();
                    more.extend(pending);
                    pending = more.into_iter();
                }
                Step::RestartParser => parser.restart(),
                Step::Done(negotiated) => {
                    let Transport::Tls(stream) = transport else {
                        return Err(
                            NegotiationError::Protocol("negotiated without TLS".into()).into()
                        );
                    };
                    return Ok(Established {
                        stream: *stream,
                        parser,
                        negotiated: *negotiated,
                        peer: (host.to_owned(), port),
                    });
                }
            }
        }
        // Feed the parser until it yields events.
        loop {
            match parser.next_event()? {
                Some(ev) => {
                    steps = neg.handle(ev)?;
                    if !steps.is_empty() {
                        break;
                    }
                }
                None => {
                    let n = transport.read(&mut buf).await.map_err(io_err)?;
                    if n == 0 {
                        return Err(ConnectError::Closed);
                    }
                    parser.push(&buf[..n]);
                }
            }
        }
    }
}
