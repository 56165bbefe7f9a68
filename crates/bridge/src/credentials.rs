//! Secrets for XMPP logins, from the store: OAuth access tokens refreshed ahead of expiry
//! (rotating refresh tokens saved at once) and passwords for standard servers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use store::{OAuthTokens, Store};
use tokio::sync::Mutex;
use xmpp_core::manager::{BoxFuture, CredentialSource};
use xmpp_core::sasl::Credentials;

use crate::config::OAuthConfig;

/// Refresh this long before the access token expires.
const REFRESH_AHEAD_MS: i64 = 60_000;

/// What the provider's token endpoint answers. `Debug` hides the tokens.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// A new refresh token (rotation), if any.
    pub refresh_token: Option<String>,
    /// Lifetime in seconds.
    pub expires_in: Option<i64>,
}

/// The longest token lifetime believed: a provider's `expires_in` beyond it (or an overflow)
/// is taken as this.
const MAX_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;
/// The shortest: a provider answering 0 or less must not make the bridge refresh in a loop.
const MIN_LIFETIME_SECS: i64 = 30;
/// Longer tokens are refused (the store, the SASL exchange and the logs stay bounded).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// When a token that lives `expires_in` seconds from `now_ms` (Unix ms) expires, within
/// believable bounds and without overflow.
pub fn expires_at(now_ms: i64, expires_in: Option<i64>) -> Option<i64> {
    expires_in.map(|s| now_ms.saturating_add(s.clamp(MIN_LIFETIME_SECS, MAX_LIFETIME_SECS) * 1000))
}

/// A token fit to store and send: 1 to 16 KiB of visible ASCII (RFC 6749 §A.12 `VSCHAR`).
pub(crate) fn usable_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

impl TokenResponse {
    /// Reads the token endpoint's answer (`status`, `body`). Errors say what was wrong without
    /// repeating the body, which may hold secrets.
    pub fn parse(status: u16, body: &[u8]) -> Result<Self, String> {
        if !(200..300).contains(&status) {
            #[derive(Deserialize)]
            struct Refusal {
                error: Option<String>,
                error_description: Option<String>,
            }
            // RFC 6749 §5.2: error codes and descriptions are visible ASCII; anything else is
            // not shown to the user.
            let shown = |s: String| {
                let s: String = s.chars().take(200).collect();
                s.bytes().all(|b| (0x20..=0x7e).contains(&b)).then_some(s)
            };
            let e: Option<Refusal> = serde_json::from_slice(body).ok();
            let code = e
                .as_ref()
                .and_then(|e| e.error.clone())
                .and_then(shown)
                .unwrap_or_else(|| format!("HTTP {status}"));
            let desc = e
                .and_then(|e| e.error_description)
                .and_then(shown)
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return Err(format!("the OAuth provider refused ({code}{desc})"));
        }
        // RFC 8259 §8.1: JSON is UTF-8 (serde would skip unknown fields without checking).
        let body = std::str::from_utf8(body)
            .map_err(|_| "the OAuth provider answered something that is not UTF-8 JSON")?;
        let response: Self = serde_json::from_str(body).map_err(|e| {
            format!(
                "the OAuth provider answered something that is not a token response ({:?} at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        if !usable_token(&response.access_token) {
            return Err(
                "the OAuth provider answered an empty, oversized or malformed access token".into(),
            );
        }
        if response
            .refresh_token
            .as_deref()
            .is_some_and(|t| !usable_token(t))
        {
            return Err(
                "the OAuth provider answered an empty, oversized or malformed refresh token".into(),
            );
        }
        Ok(response)
    }
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Calls the OAuth token endpoint.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    config: OAuthConfig,
}

impl OAuthClient {
    /// A client for the configured provider.
    pub fn new(config: OAuthConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            // RFC 6749 §10.12 / the oauth2 crate's advice: never follow redirects to token endpoints.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http, config })
    }

    /// The configuration.
    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Posts a grant to the token endpoint. A confidential client authenticates with HTTP basic
    /// auth; a public client (no secret) sends its `client_id` in the form (RFC 6749 §3.2.1).
    pub async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, String> {
        let secret = self
            .config
            .client_secret
            .as_deref()
            .filter(|s| !s.is_empty());
        let mut fields = form.to_vec();
        if secret.is_none() {
            fields.push(("client_id", self.config.client_id.as_str()));
        }
        // One `.form()` call: a second one replaces the body, it does not add to it.
        let mut request = self.http.post(&self.config.token_url).form(&fields);
        if let Some(secret) = secret {
            request = request.basic_auth(&self.config.client_id, Some(secret));
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("the OAuth provider is unreachable: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("the OAuth provider broke off: {e}"))?;
        TokenResponse::parse(status.as_u16(), &body)
    }

    /// Uses a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, String> {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }
}

/// The [`CredentialSource`] of the bridge: reads the store, refreshes through [`OAuthClient`].
pub struct StoreCredentials {
    store: Store,
    oauth: Option<OAuthClient>,
    /// One refresh at a time per account: a rotating refresh token must never be used twice,
    /// and one account's slow provider call does not hold up the others.
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl StoreCredentials {
    /// A source over `store`.
    pub fn new(store: Store, oauth: Option<OAuthClient>) -> Arc<Self> {
        Arc::new(Self {
            store,
            oauth,
            locks: std::sync::Mutex::default(),
        })
    }

    async fn current(&self, account: &str, force_refresh: bool) -> Result<Credentials, String> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(account.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if let Some(password) = self
            .store
            .password(account)
            .await
            .map_err(|e| e.to_string())?
        {
            if force_refresh {
                return Err(
                    "the XMPP server refused the password; send `login` to link again".into(),
                );
            }
            return Ok(Credentials::Password(password));
        }
        let tokens = self
            .store
            .oauth_tokens(account)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no login is stored; send `login` to link your account".to_owned())?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let expiring = tokens
            .expires_at
            .is_some_and(|at| at - REFRESH_AHEAD_MS <= now);
        if !force_refresh && !expiring {
            return Ok(Credentials::AccessToken(tokens.access_token));
        }
        let refreshed = self.refresh(account, &tokens).await;
        match refreshed {
            Ok(t) => Ok(Credentials::AccessToken(t)),
            // An access token that is only close to expiry still works; use it and retry later.
            Err(e) if !force_refresh && tokens.expires_at.is_some_and(|at| at > now) => {
                tracing::warn!(user = account, error = %e, "token refresh failed; using the current token");
                Ok(Credentials::AccessToken(tokens.access_token))
            }
            Err(e) => Err(e),
        }
    }

    async fn refresh(&self, account: &str, tokens: &OAuthTokens) -> Result<String, String> {
        let oauth = self
            .oauth
            .as_ref()
            .ok_or("token refresh is not configured (no oauth section)")?;
        let refresh_token = tokens.refresh_token.as_deref().ok_or(
            "the access token expired and there is no refresh token; send `login` to link again",
        )?;
        let response = oauth
            .refresh(refresh_token)
            .await
            .map_err(|e| format!("{e}; send `login` to link again"))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let new = OAuthTokens {
            access_token: response.access_token.clone(),
            // Rotation: keep the old refresh token only if the provider did not send a new one.
            refresh_token: response
                .refresh_token
                .or_else(|| tokens.refresh_token.clone()),
            expires_at: expires_at(now, response.expires_in),
        };
        // Saved before use: a crash now must not lose the rotated refresh token.
        self.store
            .set_oauth_tokens(account, &new)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(user = account, "refreshed the OAuth access token");
        Ok(response.access_token)
    }
}

impl StoreCredentials {
    /// Refreshes `account`'s access token if it expires soon, so that a reconnect at any moment
    /// finds a valid one.
    pub async fn refresh_if_expiring(&self, account: &str) -> Result<(), String> {
        self.current(account, false).await.map(|_| ())
    }
}

impl CredentialSource for StoreCredentials {
    fn credentials<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        Box::pin(self.current(account, false))
    }

    fn rejected<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        Box::pin(self.current(account, true))
    }

    fn archive_cursor<'a>(
        &'a self,
        account: &'a str,
    ) -> BoxFuture<'a, Option<xmpp_core::stanza::ArchiveCursor>> {
        Box::pin(async move {
            match self.store.archive_cursor(account).await {
                Ok(Some(cursor)) => parse_cursor(&cursor),
                Ok(None) => {
                    // The first session on an archiving server: no history is imported; the
                    // next login catches up from now.
                    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
                    let jid = match self.store.linked_user(account).await {
                        Ok(Some(user)) => user.jid,
                        _ => return None,
                    };
                    if let Err(e) = self
                        .store
                        .set_archive_cursor(account, &jid, &format!("since:{now}"))
                        .await
                    {
                        tracing::warn!(user = account, error = %e, "cannot save an archive cursor");
                    }
                    None
                }
                Err(e) => {
                    tracing::warn!(user = account, error = %e, "cannot read the archive cursor; no catch-up this time");
                    None
                }
            }
        })
    }
}

/// Reads a stored archive cursor (`id:<archive id>` or `since:<unix ms>`).
pub(crate) fn parse_cursor(s: &str) -> Option<xmpp_core::stanza::ArchiveCursor> {
    use xmpp_core::stanza::ArchiveCursor;
    match s.split_once(':')? {
        ("id", id) if !id.is_empty() => Some(ArchiveCursor::After(id.to_owned())),
        ("since", ms) => ms.parse().ok().map(ArchiveCursor::Since),
        _ => None,
    }
}
