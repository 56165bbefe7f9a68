//! The bridge's configuration sections (read by the binary from `config.yaml`; every option is
//! documented in `config.example.yaml`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Everything the bridge crate needs to know.
#[derive(Debug, Clone, Deserialize)]
pub struct BridgeConfig {
    /// The homeserver.
    pub homeserver: HomeserverConfig,
    /// The appservice registration and listener.
    pub appservice: AppserviceConfig,
    /// The XMPP service.
    pub xmpp: XmppConfig,
    /// Behaviour.
    #[serde(default)]
    pub bridge: BehaviourConfig,
    /// OAuth 2.0 provider (token refresh, account linking).
    #[serde(default)]
    pub oauth: Option<OAuthConfig>,
}

/// Where the homeserver is.
#[derive(Debug, Clone, Deserialize)]
pub struct HomeserverConfig {
    /// Client-server API base URL, e.g. `http://127.0.0.1:8008`.
    pub url: String,
    /// The server name in user ids, e.g. `example.org`.
    pub server_name: String,
    /// How long to wait at start for the homeserver to answer (it may still be starting).
    #[serde(default = "default_startup_wait")]
    pub startup_wait_secs: u64,
}

/// The appservice side. `Debug` hides the tokens.
#[derive(Clone, Deserialize)]
pub struct AppserviceConfig {
    /// Address the appservice HTTP listener binds, e.g. `127.0.0.1:29317`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The registration id.
    #[serde(default = "default_id")]
    pub id: String,
    /// The URL the homeserver reaches the bridge at (for `generate-registration`).
    #[serde(default)]
    pub url: Option<String>,
    /// The URL people's browsers reach the bridge's login pages at (default: derived from
    /// `oauth.redirect_url`, else `http://<listen>`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// The registration file (written by `messenger-bridge generate-registration`, loaded by the
    /// homeserver). When set, the id, tokens and bot localpart are read from it.
    #[serde(default)]
    pub registration: Option<PathBuf>,
    /// Token the bridge uses with the homeserver (from the registration file when empty).
    #[serde(default)]
    pub as_token: String,
    /// Token the homeserver uses with the bridge (from the registration file when empty).
    #[serde(default)]
    pub hs_token: String,
    /// The bot's localpart.
    #[serde(default = "default_bot")]
    pub bot_localpart: String,
    /// The bot's display name.
    #[serde(default = "default_bot_name")]
    pub bot_displayname: String,
    /// Prefix of ghost localparts.
    #[serde(default = "default_prefix")]
    pub ghost_prefix: String,
    /// The largest transaction body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Bearer token for `/metrics`. Without one, `/metrics` answers only on loopback
    /// connections (a Prometheus on the same host).
    #[serde(default)]
    pub metrics_token: Option<String>,
    /// The `as_token` of a second registration whose non-exclusive namespace covers the
    /// homeserver's local users (`generate-registration --double-puppet` writes it): the bridge
    /// then posts what a user wrote from another XMPP client as that user. Without it, their
    /// own XMPP account's ghost posts it.
    #[serde(default)]
    pub double_puppet_token: Option<String>,
}

/// The XMPP service.
#[derive(Debug, Clone, Deserialize)]
pub struct XmppConfig {
    /// `messenger` or `standard`: the default profile of new logins.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// The XMPP domain (`messenger.live.com`).
    pub domain: String,
    /// Host to connect to (defaults to the domain).
    pub host: Option<String>,
    /// Port (5222).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Extra certificates (PEM) to trust: CA certificates, or the server's own (self-signed)
    /// certificate, which is then pinned.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's certificate, accepted as it is (a pin).
    pub tls_fingerprint: Option<String>,
    /// Domains whose accounts may be linked with the password form (default: `domain` only).
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Let the password form connect to loopback, private and link-local addresses (when
    /// `host` is not set, the typed domain decides where the bridge connects).
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// Disable certificate verification (test servers only; logged loudly).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The resource to ask for. Standard servers: `messenger-bridge` when unset, so that a new
    /// login replaces the bridge's own earlier session; the Messenger service assigned one.
    pub resource: Option<String>,
    /// Keepalive interval in seconds (≤ 60 for Messenger).
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Largest stanza kept from the server; larger ones are skipped (see `config.example.yaml`).
    #[serde(default = "default_max_stanza")]
    pub max_stanza_bytes: usize,
    /// How many accounts may connect at once.
    #[serde(default = "default_concurrent")]
    pub max_concurrent_connects: usize,
}

/// How the bridge behaves.
#[derive(Debug, Clone, Deserialize)]
pub struct BehaviourConfig {
    /// Who may use the bridge: keys are `*`, a server name, or a user id; values `user` or
    /// `admin` (anything else denies). The most specific key wins.
    #[serde(default)]
    pub permissions: BTreeMap<String, String>,
    /// Send the user's Matrix presence to XMPP.
    #[serde(default = "yes")]
    pub presence_from_matrix: bool,
    /// Longest XMPP message body sent; longer Matrix messages are split.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Seconds a disconnect must last before the management room is told.
    #[serde(default = "default_notice_delay")]
    pub state_notice_delay_secs: u64,
    /// How long a `login` link stays valid, in seconds.
    #[serde(default = "default_link_lifetime")]
    pub login_link_lifetime_secs: u64,
    /// How long an undelivered message is retried (the other side is down) before the user is
    /// told it was not delivered, in seconds.
    #[serde(default = "default_retry_for")]
    pub retry_for_secs: u64,
    /// The longest wait between two delivery attempts, in seconds.
    #[serde(default = "default_retry_max_delay")]
    pub retry_max_delay_secs: u64,
    /// The most messages one portal may have waiting for XMPP; more are refused with a
    /// notice, so that no one fills the bridge's database while the XMPP side is down.
    #[serde(default = "default_max_queued")]
    pub max_queued_per_portal: u64,
    /// How many of the last messages of a conversation a new portal shows from the account's
    /// archive (XEP-0313, servers that keep one); 0: none.
    #[serde(default = "default_backfill")]
    pub backfill_messages: u32,
    /// The largest file bridged either way, in bytes; larger ones stay links.
    #[serde(default = "default_max_media")]
    pub max_media_bytes: u64,
    /// How long the links the bridge gives contacts to the user's Matrix files work, in
    /// seconds.
    #[serde(default = "default_media_link_lifetime")]
    pub media_link_lifetime_secs: u64,
    /// Let contacts' file links point at loopback, private and link-local addresses (the
    /// bridge fetches them: off, a contact could make it read the bridge's own network).
    #[serde(default)]
    pub media_from_private_addresses: bool,
}

impl Default for BehaviourConfig {
    fn default() -> Self {
        Self {
            permissions: BTreeMap::new(),
            presence_from_matrix: true,
            max_message_bytes: default_max_message(),
            state_notice_delay_secs: default_notice_delay(),
            login_link_lifetime_secs: default_link_lifetime(),
            retry_for_secs: default_retry_for(),
            retry_max_delay_secs: default_retry_max_delay(),
            max_queued_per_portal: default_max_queued(),
            backfill_messages: default_backfill(),
            max_media_bytes: default_max_media(),
            media_link_lifetime_secs: default_media_link_lifetime(),
            media_from_private_addresses: false,
        }
    }
}

fn default_max_media() -> u64 {
    100 * 1024 * 1024
}

fn default_media_link_lifetime() -> u64 {
    7 * 24 * 3600
}

fn default_backfill() -> u32 {
    20
}

fn default_max_queued() -> u64 {
    1000
}

/// The OAuth 2.0 provider (Live Connect for Messenger). `Debug` hides the client secret.
#[derive(Clone, Deserialize)]
pub struct OAuthConfig {
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// Device authorization endpoint (for `login --device`).
    pub device_url: Option<String>,
    /// Revocation endpoint (for `logout`).
    pub revoke_url: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Option<String>,
    /// Scopes to ask for.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Where the provider sends the browser back: the bridge's `/login/callback`.
    pub redirect_url: Option<String>,
}

impl BehaviourConfig {
    /// The permission level of a Matrix user: `user`, `admin`, or `None` (not allowed).
    pub fn level(&self, user: &str) -> Option<&str> {
        let server = user.split_once(':').map(|(_, s)| s);
        let level = self
            .permissions
            .get(user)
            .or_else(|| server.and_then(|s| self.permissions.get(s)))
            .or_else(|| self.permissions.get("*"))?;
        matches!(level.as_str(), "user" | "admin").then_some(level.as_str())
    }
}

fn default_startup_wait() -> u64 {
    60
}
fn default_listen() -> String {
    "127.0.0.1:29317".into()
}
fn default_id() -> String {
    "messenger-bridge".into()
}
fn default_bot() -> String {
    "msnbot".into()
}
fn default_bot_name() -> String {
    "Messenger bridge bot".into()
}
fn default_prefix() -> String {
    "msn_".into()
}
fn default_max_body() -> usize {
    32 * 1024 * 1024
}
fn default_profile() -> String {
    "messenger".into()
}
fn default_port() -> u16 {
    5222
}
fn default_keepalive() -> u64 {
    30
}
fn default_max_stanza() -> usize {
    256 * 1024
}
fn default_concurrent() -> usize {
    8
}
fn yes() -> bool {
    true
}
fn default_max_message() -> usize {
    10_000
}
fn default_notice_delay() -> u64 {
    30
}
fn default_retry_for() -> u64 {
    3 * 24 * 3600
}

fn default_retry_max_delay() -> u64 {
    300
}

fn default_link_lifetime() -> u64 {
    600
}
fn default_scopes() -> Vec<String> {
    vec![
        "wl.messenger".into(),
        "wl.offline_access".into(),
        "wl.basic".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_permission_wins() {
        let mut b = BehaviourConfig::default();
        b.permissions.insert("*".into(), "none".into());
        b.permissions.insert("example.org".into(), "user".into());
        b.permissions
            .insert("@boss:example.org".into(), "admin".into());
        b.permissions
            .insert("@banned:example.org".into(), "none".into());
        assert_eq!(b.level("@alice:example.org"), Some("user"));
        assert_eq!(b.level("@boss:example.org"), Some("admin"));
        assert_eq!(b.level("@banned:example.org"), None);
        assert_eq!(b.level("@eve:evil.org"), None);
    }
}

/// What a `Debug` of a secret shows: whether it is set, never its value.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        "<empty>"
    } else {
        "<redacted>"
    }
}

impl std::fmt::Debug for AppserviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppserviceConfig")
            .field("listen", &self.listen)
            .field("id", &self.id)
            .field("url", &self.url)
            .field("public_url", &self.public_url)
            .field("registration", &self.registration)
            .field("as_token", &redacted(&self.as_token))
            .field("hs_token", &redacted(&self.hs_token))
            .field("bot_localpart", &self.bot_localpart)
            .field(
                "metrics_token",
                &self.metrics_token.as_deref().map(redacted),
            )
            .field(
                "double_puppet_token",
                &self.double_puppet_token.as_deref().map(redacted),
            )
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("authorize_url", &self.authorize_url)
            .field("token_url", &self.token_url)
            .field("device_url", &self.device_url)
            .field("revoke_url", &self.revoke_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_deref().map(redacted),
            )
            .field("scopes", &self.scopes)
            .field("redirect_url", &self.redirect_url)
            .finish()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let appservice: AppserviceConfig = serde_json::from_value(serde_json::json!({
            "as_token": "as-secret-1", "hs_token": "hs-secret-2"
        }))
        .unwrap();
        let oauth: OAuthConfig = serde_json::from_value(serde_json::json!({
            "authorize_url": "https://a", "token_url": "https://t", "client_id": "c",
            "client_secret": "client-secret-3"
        }))
        .unwrap();
        let text = format!("{appservice:?} {oauth:?}");
        for secret in ["as-secret-1", "hs-secret-2", "client-secret-3"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("<redacted>"), "{text}");
    }
}
