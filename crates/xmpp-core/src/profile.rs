//! Server profiles: what kind of XMPP server an account talks to. This is the only place that
//! knows the difference; the rest of the crate asks the profile.

use crate::sasl::Mechanism;

/// The kind of server an account logs in to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerProfile {
    /// Messenger's XMPP interface (RFC 6120/6121 with restrictions): only X-MESSENGER-OAUTH2,
    /// only `type="chat"` messages, read-only roster and vCards, no presence probes.
    Messenger,
    /// Any standard XMPP server: OAUTHBEARER, X-OAUTH2, SCRAM or PLAIN over TLS.
    Standard,
}

impl ServerProfile {
    /// The name used in configuration and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messenger => "messenger",
            Self::Standard => "standard",
        }
    }

    /// Parses a configuration / store name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "messenger" => Some(Self::Messenger),
            "standard" => Some(Self::Standard),
            _ => None,
        }
    }

    /// The SASL mechanisms an account of this profile may use.
    pub fn allowed_mechanisms(self) -> &'static [Mechanism] {
        match self {
            Self::Messenger => &[Mechanism::MessengerOAuth2],
            Self::Standard => &[
                Mechanism::OAuthBearer,
                Mechanism::XOAuth2,
                Mechanism::ScramSha256,
                Mechanism::ScramSha1,
                Mechanism::Plain,
            ],
        }
    }

    /// Whether the roster may be changed by the client (RFC 6121 §2.3). The Messenger service
    /// refused roster sets.
    pub fn roster_writable(self) -> bool {
        matches!(self, Self::Standard)
    }

    /// Whether the server accepts presence probes. Messenger did not: presence of contacts must be
    /// cached from what the server pushes.
    pub fn presence_probes(self) -> bool {
        matches!(self, Self::Standard)
    }
}

impl std::fmt::Display for ServerProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
