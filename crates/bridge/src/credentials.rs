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

/// What the provider's token endpoint answers.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// A new refresh token (rotation), if any.
    pub refresh_token: Option<String>,
    /// Lifetime in seconds.
    pub expires_in: Option<i64>,
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
        if !status.is_success() {
            #[derive(Deserialize)]
            struct Err {
                error: Option<String>,
                error_description: Option<String>,
            }
            let e: Option<Err> = serde_json::from_slice(&body).ok();
            let code = e
                .as_ref()
                .and_then(|e| e.error.clone())
                .unwrap_or_else(|| status.to_string());
            let desc = e
                .and_then(|e| e.error_description)
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return Err(format!("the OAuth provider refused ({code}{desc})"));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("the OAuth provider answered something unexpected: {e}"))
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
            expires_at: response.expires_in.map(|s| now + s * 1000),
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
}
