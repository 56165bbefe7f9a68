//! SASL (RFC 6120 §6) as byte-exact, sans-I/O client state machines.
//!
//! Mechanisms, in the order they are preferred when several are offered and allowed:
//! - `X-MESSENGER-OAUTH2`: the Messenger service's. The `<auth>` text is the OAuth access token
//!   *as is* — it is not base64-encoded again — and the server answers `<success/>` at once.
//! - `OAUTHBEARER` (RFC 7628) and `X-OAUTH2` (Google Talk / ejabberd): OAuth tokens on
//!   standard servers.
//! - `SCRAM-SHA-256` (RFC 7677), `SCRAM-SHA-1` (RFC 5802): passwords, the server's signature
//!   verified so a fake server cannot claim success.
//! - `PLAIN` (RFC 4616): passwords, only over TLS (the connection layer never offers anything
//!   before TLS, RFC 6120 §5.3.1 / §13.8).

mod scram;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub use scram::ScramHash;

/// A SASL mechanism this client implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `X-MESSENGER-OAUTH2`.
    MessengerOAuth2,
    /// `OAUTHBEARER`.
    OAuthBearer,
    /// `X-OAUTH2`.
    XOAuth2,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-1`.
    ScramSha1,
    /// `PLAIN`.
    Plain,
}

impl Mechanism {
    /// All mechanisms, most preferred first.
    pub const ALL: [Mechanism; 6] = [
        Self::MessengerOAuth2,
        Self::OAuthBearer,
        Self::XOAuth2,
        Self::ScramSha256,
        Self::ScramSha1,
        Self::Plain,
    ];

    /// The IANA / wire name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MessengerOAuth2 => "X-MESSENGER-OAUTH2",
            Self::OAuthBearer => "OAUTHBEARER",
            Self::XOAuth2 => "X-OAUTH2",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha1 => "SCRAM-SHA-1",
            Self::Plain => "PLAIN",
        }
    }

    /// Parses a wire name (case-insensitive: RFC 4422 names are upper-case by convention).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether the mechanism authenticates with an OAuth token (a rejection then means "refresh
    /// the token", not "wrong password").
    pub fn uses_token(self) -> bool {
        matches!(
            self,
            Self::MessengerOAuth2 | Self::OAuthBearer | Self::XOAuth2
        )
    }
}

/// What the account authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An OAuth 2.0 access token.
    AccessToken(String),
    /// A password for the account's JID.
    Password(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets, not even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AccessToken(_) => f.write_str("AccessToken(<redacted>)"),
            Self::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// None of the offered mechanisms is both allowed by the profile and usable with the
    /// credentials.
    #[error(
        "no usable SASL mechanism: the server offers [{offered}], this account may use [{allowed}]"
    )]
    NoMechanism {
        /// Offered by the server.
        offered: String,
        /// Allowed for this account (profile and credential kind).
        allowed: String,
    },
    /// The server sent `<failure/>`.
    #[error("the server refused the login ({condition}{})", text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
    Failure {
        /// The RFC 6120 §6.5 condition, e.g. `not-authorized`.
        condition: String,
        /// Text from the server.
        text: Option<String>,
    },
    /// The server's messages did not follow the mechanism (bad SCRAM data, wrong nonce,
    /// wrong server signature, base64 errors).
    #[error("the server broke the {mechanism} exchange: {reason}")]
    Protocol {
        /// The mechanism in use.
        mechanism: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// Identity hints some mechanisms send next to the secret.
#[derive(Debug, Clone, Default)]
pub struct AuthIdentity {
    /// The username (JID localpart) for password mechanisms.
    pub username: Option<String>,
    /// The bare JID, used as OAUTHBEARER authzid and X-OAUTH2 user.
    pub bare_jid: Option<String>,
}

/// One SASL exchange in progress.
#[derive(Debug)]
pub struct SaslExchange {
    mechanism: Mechanism,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Nothing more to do but wait for success.
    Sent,
    Scram(scram::ScramClient),
    /// OAUTHBEARER got an error challenge and answered it; failure follows.
    BearerErrorAcknowledged(String),
}

impl SaslExchange {
    /// Picks the most preferred mechanism that the server offers, `allowed` permits and the
    /// credentials can use.
    pub fn select(
        offered: &[String],
        allowed: &[Mechanism],
        credentials: &Credentials,
    ) -> Result<Mechanism, SaslError> {
        let usable = |m: &Mechanism| match credentials {
            Credentials::AccessToken(_) => m.uses_token(),
            Credentials::Password(_) => !m.uses_token(),
        };
        Mechanism::ALL
            .into_iter()
            .filter(|m| allowed.contains(m) && usable(m))
            .find(|m| {
                offered
                    .iter()
                    .any(|o| o.trim().eq_ignore_ascii_case(m.name()))
            })
            .ok_or_else(|| SaslError::NoMechanism {
                offered: offered.join(" "),
                allowed: allowed
                    .iter()
                    .filter(|m| usable(m))
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(" "),
            })
    }

    /// Starts `mechanism`; returns the exchange and the text of the `<auth/>` element (already
    /// encoded for the wire: base64, or the raw token for X-MESSENGER-OAUTH2; `=` for an empty
    /// initial response per RFC 6120 §6.4.2).
    pub fn start(
        mechanism: Mechanism,
        credentials: &Credentials,
        identity: &AuthIdentity,
    ) -> Result<(Self, String), SaslError> {
        Self::start_with_nonce(mechanism, credentials, identity, scram::random_nonce())
    }

    fn start_with_nonce(
        mechanism: Mechanism,
        credentials: &Credentials,
        identity: &AuthIdentity,
        nonce: String,
    ) -> Result<(Self, String), SaslError> {
        let secret = match credentials {
            Credentials::AccessToken(t) | Credentials::Password(t) => t.as_str(),
        };
        let proto = |reason: &str| SaslError::Protocol {
            mechanism: mechanism.name(),
            reason: reason.into(),
        };
        let (state, initial): (State, Vec<u8>) = match mechanism {
            Mechanism::MessengerOAuth2 => {
                // The token goes on the wire verbatim (it is already base64-like).
                let exchange = Self {
                    mechanism,
                    state: State::Sent,
                };
                return Ok((exchange, secret.to_owned()));
            }
            Mechanism::OAuthBearer => {
                // RFC 7628 §3.1: gs2-header "n,a=authzid," then kvpairs separated by ^A.
                let authzid = identity
                    .bare_jid
                    .as_deref()
                    .map(|j| format!("a={}", j.replace('=', "=3D").replace(',', "=2C")))
                    .unwrap_or_default();
                (
                    State::Sent,
                    format!("n,{authzid},\x01auth=Bearer {secret}\x01\x01").into_bytes(),
                )
            }
            Mechanism::XOAuth2 => {
                let user = identity
                    .bare_jid
                    .as_deref()
                    .ok_or_else(|| proto("no JID for X-OAUTH2"))?;
                (State::Sent, format!("\0{user}\0{secret}").into_bytes())
            }
            Mechanism::Plain => {
                let user = identity
                    .username
                    .as_deref()
                    .ok_or_else(|| proto("no username for PLAIN"))?;
                (State::Sent, format!("\0{user}\0{secret}").into_bytes())
            }
            Mechanism::ScramSha1 | Mechanism::ScramSha256 => {
                let hash = if mechanism == Mechanism::ScramSha1 {
                    ScramHash::Sha1
                } else {
                    ScramHash::Sha256
                };
                let user = identity
                    .username
                    .as_deref()
                    .ok_or_else(|| proto("no username for SCRAM"))?;
                let (client, first) = scram::ScramClient::new(hash, user, secret, nonce);
                (State::Scram(client), first.into_bytes())
            }
        };
        let text = if initial.is_empty() {
            "=".to_owned()
        } else {
            STANDARD.encode(initial)
        };
        Ok((Self { mechanism, state }, text))
    }

    /// The mechanism in use.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Answers a `<challenge/>` (its base64 text); returns the `<response/>` text.
    pub fn challenge(&mut self, text: &str) -> Result<String, SaslError> {
        let data = self.decode(text)?;
        let reply = match &mut self.state {
            State::Scram(client) => client.handle_server_message(&data)?,
            State::Sent if self.mechanism == Mechanism::OAuthBearer => {
                // RFC 7628 §3.2.2: an error JSON; answer with a lone ^A, failure follows.
                self.state =
                    State::BearerErrorAcknowledged(String::from_utf8_lossy(&data).into_owned());
                b"\x01".to_vec()
            }
            _ => {
                return Err(SaslError::Protocol {
                    mechanism: self.mechanism.name(),
                    reason: "unexpected challenge".into(),
                });
            }
        };
        Ok(if reply.is_empty() {
            String::new()
        } else {
            STANDARD.encode(reply)
        })
    }

    /// Checks `<success/>` (its optional base64 text). For SCRAM this verifies the server
    /// signature: a success without the right proof is an error.
    pub fn success(&mut self, text: &str) -> Result<(), SaslError> {
        let data = self.decode(text)?;
        match &mut self.state {
            State::Scram(client) => client.finish(&data),
            _ => Ok(()),
        }
    }

    /// Turns a `<failure/>` into an error, adding OAUTHBEARER's JSON status when we had one.
    pub fn failure(&self, condition: &str, text: Option<String>) -> SaslError {
        let text = match (&self.state, text) {
            (State::BearerErrorAcknowledged(json), None) => Some(json.clone()),
            (_, t) => t,
        };
        SaslError::Failure {
            condition: condition.to_owned(),
            text,
        }
    }

    fn decode(&self, text: &str) -> Result<Vec<u8>, SaslError> {
        let text = text.trim();
        if text.is_empty() || text == "=" {
            return Ok(Vec::new());
        }
        STANDARD.decode(text).map_err(|e| SaslError::Protocol {
            mechanism: self.mechanism.name(),
            reason: format!("bad base64: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> AuthIdentity {
        AuthIdentity {
            username: Some("user".into()),
            bare_jid: Some("user@example.org".into()),
        }
    }

    fn initial(m: Mechanism, c: &Credentials) -> String {
        SaslExchange::start(m, c, &id()).unwrap().1
    }

    #[test]
    fn messenger_oauth2_sends_the_token_verbatim() {
        let token = "EwAoAq1DBAAUGCCXc8wU/zFu9QnLdZXy+YnElFkAASS1RvfzPMOiM8hv/Q==";
        assert_eq!(
            initial(
                Mechanism::MessengerOAuth2,
                &Credentials::AccessToken(token.into())
            ),
            token
        );
    }

    #[test]
    fn oauthbearer_payload_bytes() {
        let text = initial(
            Mechanism::OAuthBearer,
            &Credentials::AccessToken("vF9dft4qmT".into()),
        );
        assert_eq!(
            STANDARD.decode(text).unwrap(),
            b"n,a=user@example.org,\x01auth=Bearer vF9dft4qmT\x01\x01"
        );
    }

    #[test]
    fn oauthbearer_error_challenge_is_acknowledged_and_reported() {
        let (mut ex, _) = SaslExchange::start(
            Mechanism::OAuthBearer,
            &Credentials::AccessToken("t".into()),
            &id(),
        )
        .unwrap();
        let reply = ex
            .challenge(&STANDARD.encode(br#"{"status":"invalid_token"}"#))
            .unwrap();
        assert_eq!(reply, "AQ==");
        let err = ex.failure("not-authorized", None);
        assert!(err.to_string().contains("invalid_token"), "{err}");
    }

    #[test]
    fn x_oauth2_and_plain_payload_bytes() {
        let x = initial(Mechanism::XOAuth2, &Credentials::AccessToken("tok".into()));
        assert_eq!(STANDARD.decode(x).unwrap(), b"\0user@example.org\0tok");
        let p = initial(Mechanism::Plain, &Credentials::Password("pencil".into()));
        assert_eq!(STANDARD.decode(p).unwrap(), b"\0user\0pencil");
    }

    #[test]
    fn selection_follows_preference_profile_and_credentials() {
        let offered: Vec<String> = ["PLAIN", "SCRAM-SHA-1", "X-OAUTH2", "OAUTHBEARER"]
            .map(String::from)
            .to_vec();
        let token = Credentials::AccessToken("t".into());
        let pass = Credentials::Password("p".into());
        assert_eq!(
            SaslExchange::select(&offered, &Mechanism::ALL, &token),
            Ok(Mechanism::OAuthBearer)
        );
        assert_eq!(
            SaslExchange::select(&offered, &Mechanism::ALL, &pass),
            Ok(Mechanism::ScramSha1)
        );
        assert_eq!(
            SaslExchange::select(&offered, &[Mechanism::Plain], &pass),
            Ok(Mechanism::Plain)
        );
        let err =
            SaslExchange::select(&offered, &[Mechanism::MessengerOAuth2], &token).unwrap_err();
        assert!(matches!(err, SaslError::NoMechanism { .. }));
        assert!(err.to_string().contains("X-MESSENGER-OAUTH2"), "{err}");
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let c = Credentials::AccessToken("sekrit".into());
        assert!(!format!("{c:?}").contains("sekrit"));
    }

    #[test]
    fn unexpected_challenge_is_a_protocol_error() {
        let (mut ex, _) =
            SaslExchange::start(Mechanism::Plain, &Credentials::Password("p".into()), &id())
                .unwrap();
        assert!(matches!(
            ex.challenge("AAAA"),
            Err(SaslError::Protocol { .. })
        ));
    }
}
