//! Account linking: `login` in the bot sends a one-time link to the bridge's web listener,
//! which redirects to the OAuth provider (authorization code with `state` and PKCE); the
//! provider sends the browser back to `/login/callback`, the bridge exchanges the code, logs in
//! to XMPP once to learn the JID the server binds, stores the tokens (encrypted) and starts the
//! session. `login --device` uses the device-code grant instead. For standard XMPP servers
//! without OAuth, the link opens a JID and password form (passwords never travel through
//! Matrix). Links expire after 10 minutes and work once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _, TokenUrl,
};
use serde::Deserialize;
use store::{LinkedUser, OAuthTokens};
use xmpp_core::Jid;
use xmpp_core::connection::{ConnectionConfig, establish};
use xmpp_core::negotiation::NegotiationConfig;
use xmpp_core::sasl::{AuthIdentity, Credentials};

use crate::runtime::{Bridge, now_ms};

#[derive(Debug)]
enum Step {
    /// The bot's link, not opened yet.
    Link,
    /// Sent to the provider with this PKCE verifier.
    Authorizing(PkceCodeVerifier),
}

#[derive(Debug)]
struct Pending {
    user: String,
    room: String,
    created: Instant,
    step: Step,
}

/// Logins in progress, by link token or OAuth `state`. In memory: a bridge restart simply
/// invalidates them, and the user sends `login` again.
#[derive(Debug)]
pub(crate) struct Logins {
    /// How long a link and its sign-in stay valid.
    lifetime: Duration,
    pending: Mutex<HashMap<String, Pending>>,
    /// Device-code polls by user, to cancel them.
    device: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl Logins {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            pending: Mutex::default(),
            device: Mutex::default(),
        }
    }

    fn insert(&self, key: String, p: Pending) {
        let mut map = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lifetime = self.lifetime;
        map.retain(|_, v| v.created.elapsed() < lifetime);
        map.insert(key, p);
    }

    /// Takes an entry: it works once, and only while fresh.
    fn take(&self, key: &str) -> Option<Pending> {
        let mut map = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(key)
            .filter(|p| p.created.elapsed() < self.lifetime)
    }

    fn cancel_user(&self, user: &str) -> bool {
        let mut cancelled = false;
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, p| {
                let keep = p.user != user;
                cancelled |= !keep;
                keep
            });
        if let Some(h) = self
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(user)
        {
            h.abort();
            cancelled = true;
        }
        cancelled
    }
}

/// What a new link logs in with.
enum Secret {
    OAuth {
        access_token: String,
        refresh_token: Option<String>,
        expires_in: Option<i64>,
    },
    Password(String),
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Bridge {
    /// Where browsers reach the bridge.
    pub(crate) fn public_url(&self) -> String {
        let c = &self.inner.config;
        if let Some(u) = &c.appservice.public_url {
            return u.trim_end_matches('/').to_owned();
        }
        if let Some(r) = c.oauth.as_ref().and_then(|o| o.redirect_url.as_deref()) {
            return r
                .trim_end_matches("/login/callback")
                .trim_end_matches('/')
                .to_owned();
        }
        format!("http://{}", c.appservice.listen)
    }

    fn oauth_client(
        &self,
    ) -> Option<
        oauth2::basic::BasicClient<
            oauth2::EndpointSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointSet,
        >,
    > {
        let o = self.inner.config.oauth.as_ref()?;
        let redirect = format!("{}/login/callback", self.public_url());
        let mut client = oauth2::basic::BasicClient::new(ClientId::new(o.client_id.clone()))
            .set_auth_uri(AuthUrl::new(o.authorize_url.clone()).ok()?)
            .set_token_uri(TokenUrl::new(o.token_url.clone()).ok()?)
            .set_redirect_uri(RedirectUrl::new(o.redirect_url.clone().unwrap_or(redirect)).ok()?);
        if let Some(secret) = o.client_secret.clone().filter(|s| !s.is_empty()) {
            client = client.set_client_secret(ClientSecret::new(secret));
        }
        Some(client)
    }

    fn uses_oauth(&self) -> bool {
        self.inner.config.xmpp.profile != "standard" && self.inner.config.oauth.is_some()
    }

    /// Logs in to XMPP once with `credentials` and returns the bare JID the server binds. This
    /// also proves the credentials work before anything is stored.
    async fn probe_login(
        &self,
        jid_hint: Option<&Jid>,
        credentials: Credentials,
    ) -> Result<Jid, String> {
        let x = &self.inner.config.xmpp;
        let domain = jid_hint.map_or_else(|| x.domain.clone(), |j| j.domain().to_owned());
        let host = x.host.clone().unwrap_or_else(|| domain.clone());
        let connection = ConnectionConfig::new(domain.clone(), host, x.port);
        let profile = match jid_hint {
            Some(_) => xmpp_core::ServerProfile::Standard,
            None => xmpp_core::ServerProfile::Messenger,
        };
        let negotiation = NegotiationConfig {
            domain,
            profile,
            credentials,
            identity: AuthIdentity {
                username: jid_hint.and_then(|j| j.local().map(str::to_owned)),
                bare_jid: jid_hint.map(|j| j.to_bare().to_string()),
            },
            resource: None,
            mechanisms: None,
        };
        let established = establish(&connection, self.inner.xmpp_tls.clone(), &negotiation)
            .await
            .map_err(|e| e.to_string())?;
        let jid = established.negotiated.jid.to_bare();
        // Close the probe politely; the real session starts next.
        let mut stream = established.stream;
        let _ = tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            xmpp_core::xml::STREAM_CLOSE.as_bytes(),
        )
        .await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        Ok(jid)
    }

    /// Stores a new link and starts the session.
    async fn finish_link(
        &self,
        user: &str,
        room: &str,
        jid: &Jid,
        profile: store::ServerProfile,
        secret: Secret,
    ) -> Result<(), String> {
        let store = &self.inner.store;
        let now = now_ms();
        let record = LinkedUser {
            matrix_user: user.to_owned(),
            jid: jid.to_string(),
            server_profile: profile,
            connection_state: "connecting".into(),
            management_room: Some(room.to_owned()),
            created_at: now,
            updated_at: now,
        };
        store
            .upsert_linked_user(&record)
            .await
            .map_err(|e| e.to_string())?;
        match secret {
            Secret::OAuth {
                access_token,
                refresh_token,
                expires_in,
            } => {
                let tokens = OAuthTokens {
                    access_token,
                    refresh_token,
                    expires_at: expires_in.map(|s| now + s * 1000),
                };
                store
                    .set_oauth_tokens(user, &tokens)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Secret::Password(p) => store
                .set_password(user, &p)
                .await
                .map_err(|e| e.to_string())?,
        }
        tracing::info!(%user, %jid, "linked an account");
        self.start_session(user, &jid.to_string(), profile);
        self.bot_say(room, &format!("✅ Linked as {jid}. Your contacts appear as they write to you; send `contacts` to list them.")).await;
        Ok(())
    }
}

/// `login` / `login --device` from `user` in `room`; returns the bot's answer.
pub(crate) async fn start_login(
    bridge: &Bridge,
    user: &str,
    room: &str,
    args: &str,
) -> Result<String, String> {
    let device = args.split_whitespace().any(|a| a == "--device");
    if device {
        return start_device_login(bridge, user, room).await;
    }
    let token = random_token();
    bridge.inner.logins.insert(
        token.clone(),
        Pending {
            user: user.to_owned(),
            room: room.to_owned(),
            created: Instant::now(),
            step: Step::Link,
        },
    );
    let what = if bridge.uses_oauth() {
        "sign in with your Messenger account"
    } else {
        "enter your XMPP address and password"
    };
    Ok(format!(
        "Open this link to {what} (it works once, for {} minutes):\n{}/login/{token}\nSend `cancel` to stop.",
        bridge
            .inner
            .config
            .bridge
            .login_link_lifetime_secs
            .div_ceil(60),
        bridge.public_url()
    ))
}

/// `cancel`.
pub(crate) fn cancel(bridge: &Bridge, user: &str) -> String {
    if bridge.inner.logins.cancel_user(user) {
        "Login cancelled."
    } else {
        "There is no login in progress."
    }
    .to_owned()
}

/// Revokes the user's tokens at the provider (RFC 7009), where configured. Best effort.
pub(crate) async fn revoke(bridge: &Bridge, user: &str) {
    let Some(o) = bridge.inner.config.oauth.as_ref() else {
        return;
    };
    let Some(url) = o.revoke_url.as_deref() else {
        return;
    };
    let Ok(Some(tokens)) = bridge.inner.store.oauth_tokens(user).await else {
        return;
    };
    let http = reqwest::Client::new();
    for token in [
        tokens.refresh_token.as_deref(),
        Some(tokens.access_token.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        let mut req = http.post(url).form(&[("token", token)]);
        req = match &o.client_secret {
            Some(s) => req.basic_auth(&o.client_id, Some(s)),
            None => req.form(&[("token", token), ("client_id", o.client_id.as_str())]),
        };
        if let Err(e) = req.send().await {
            tracing::warn!(%user, error = %e, "could not revoke a token at the provider");
        }
    }
}

async fn start_device_login(bridge: &Bridge, user: &str, room: &str) -> Result<String, String> {
    let o = bridge
        .inner
        .config
        .oauth
        .clone()
        .ok_or("This bridge has no OAuth provider configured.")?;
    let device_url = o
        .device_url
        .clone()
        .ok_or("The OAuth provider has no device login configured; send `login` instead.")?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())?;
    let scope = o.scopes.join(" ");
    let mut req = http.post(&device_url).form(&[
        ("client_id", o.client_id.as_str()),
        ("scope", scope.as_str()),
    ]);
    if let Some(s) = &o.client_secret {
        req = req.basic_auth(&o.client_id, Some(s));
    }
    let response = req
        .send()
        .await
        .map_err(|e| format!("The OAuth provider is unreachable ({e}); try again later."))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    #[derive(Deserialize)]
    struct DeviceAuth {
        device_code: String,
        user_code: String,
        verification_uri: String,
        verification_uri_complete: Option<String>,
        expires_in: Option<u64>,
        interval: Option<u64>,
    }
    let auth: DeviceAuth = if status.is_success() {
        serde_json::from_slice(&body).map_err(|_| {
            "The OAuth provider answered something unexpected; try again later.".to_owned()
        })?
    } else {
        return Err(format!(
            "The OAuth provider refused the device login ({status}); try `login` instead."
        ));
    };
    let this = bridge.clone();
    let (user_owned, room_owned) = (user.to_owned(), room.to_owned());
    let expires = Duration::from_secs(auth.expires_in.unwrap_or(600).min(1800));
    let mut interval = Duration::from_secs(auth.interval.unwrap_or(5).max(1));
    let device_code = auth.device_code.clone();
    let task = tokio::spawn(async move {
        let credentials = this.inner.oauth.clone();
        let deadline = Instant::now() + expires;
        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() > deadline {
                this.bot_say(
                    &room_owned,
                    "The device code expired; send `login --device` to get a new one.",
                )
                .await;
                break;
            }
            let Some(oauth) = credentials.as_ref() else {
                break;
            };
            match oauth
                .token_request(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code.as_str()),
                ])
                .await
            {
                Ok(t) => {
                    let result = match this
                        .probe_login(None, Credentials::AccessToken(t.access_token.clone()))
                        .await
                    {
                        Ok(jid) => {
                            let secret = Secret::OAuth {
                                access_token: t.access_token,
                                refresh_token: t.refresh_token,
                                expires_in: t.expires_in,
                            };
                            this.finish_link(
                                &user_owned,
                                &room_owned,
                                &jid,
                                store::ServerProfile::Messenger,
                                secret,
                            )
                            .await
                        }
                        Err(e) => Err(format!("the XMPP login with the new token failed: {e}")),
                    };
                    if let Err(e) = result {
                        this.bot_say(
                            &room_owned,
                            &format!("❌ Linking failed: {e}. Send `login` to try again."),
                        )
                        .await;
                    }
                    break;
                }
                Err(e) if e.contains("authorization_pending") => {}
                Err(e) if e.contains("slow_down") => interval += Duration::from_secs(5),
                Err(e) => {
                    this.bot_say(
                        &room_owned,
                        &format!(
                            "❌ Device login failed: {e}. Send `login --device` to try again."
                        ),
                    )
                    .await;
                    break;
                }
            }
        }
        this.inner
            .logins
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&user_owned);
    });
    bridge
        .inner
        .logins
        .device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(user.to_owned(), task.abort_handle());
    let direct = auth
        .verification_uri_complete
        .map(|u| format!(" (or open {u} directly)"))
        .unwrap_or_default();
    Ok(format!(
        "Go to {} and enter the code {}{direct}; it is valid for {} minutes. I'll tell you here when it worked; send `cancel` to stop.",
        auth.verification_uri,
        auth.user_code,
        expires.as_secs() / 60
    ))
}

/// The web routes of account linking.
pub(crate) fn routes() -> Router<Bridge> {
    Router::new()
        .route("/login/callback", get(callback))
        .route("/login/{token}", get(open_link).post(password_form))
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} — Messenger bridge</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}</style></head>\
         <body><main><h1 id=\"result\">{t}</h1><p id=\"message\">{m}</p></main></body></html>",
        t = esc(title),
        m = esc(message)
    );
    (status, Html(html)).into_response()
}

fn invalid_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This link does not work",
        "It expired, was already used, or was never valid. Go back to your chat and send `login` to get a new one.",
    )
}

async fn open_link(State(bridge): State<Bridge>, Path(token): Path<String>) -> Response {
    let Some(p) = bridge.inner.logins.take(&token) else {
        return invalid_link();
    };
    if !bridge.uses_oauth() {
        // Standard servers: a password form; the entry goes back under the same token.
        bridge.inner.logins.insert(token.clone(), p);
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link your XMPP account — Messenger bridge</title></head><body><main>\
             <h1>Link your XMPP account</h1><form method=\"post\" action=\"/login/{token}\">\
             <p><label for=\"jid\">XMPP address</label><br><input id=\"jid\" name=\"jid\" type=\"email\" autocomplete=\"username\" required></p>\
             <p><label for=\"password\">Password</label><br><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></p>\
             <p><button type=\"submit\">Link</button></p></form></main></body></html>"
        );
        return Html(html).into_response();
    }
    let Some(client) = bridge.oauth_client() else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Linking is not configured",
            "The bridge's OAuth settings are incomplete; tell the bridge administrator.",
        );
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let scopes = bridge
        .inner
        .config
        .oauth
        .as_ref()
        .map(|o| o.scopes.clone())
        .unwrap_or_default();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.into_iter().map(Scope::new))
        .set_pkce_challenge(challenge)
        .url();
    bridge.inner.logins.insert(
        state.secret().clone(),
        Pending {
            user: p.user,
            room: p.room,
            created: p.created,
            step: Step::Authorizing(verifier),
        },
    );
    Redirect::to(url.as_str()).into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(State(bridge): State<Bridge>, Query(q): Query<CallbackQuery>) -> Response {
    // The state is checked first: a forged or replayed one stores nothing.
    let Some(p) = q.state.as_deref().and_then(|s| bridge.inner.logins.take(s)) else {
        return invalid_link();
    };
    let Step::Authorizing(verifier) = p.step else {
        return invalid_link();
    };
    if let Some(err) = q.error {
        let detail = q.error_description.unwrap_or_default();
        bridge
            .bot_say(
                &p.room,
                &format!("❌ Sign-in was not completed ({err}). Send `login` to try again."),
            )
            .await;
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in was not completed",
            &format!(
                "The provider said: {err} {detail}. Go back to your chat and send `login` to try again."
            ),
        );
    }
    let Some(code) = q.code else {
        return invalid_link();
    };
    let Some(client) = bridge.oauth_client() else {
        return invalid_link();
    };
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                &e.to_string(),
            );
        }
    };
    let send = |request: oauth2::HttpRequest| {
        let http = http.clone();
        async move {
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let mut builder = http::Response::builder().status(response.status());
            if let Some(h) = builder.headers_mut() {
                *h = response.headers().clone();
            }
            let body = response.bytes().await?.to_vec();
            Ok::<_, reqwest::Error>(builder.body(body).unwrap_or_default())
        }
    };
    let tokens = match client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&send)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(user = %p.user, error = %e, "the authorization code was refused");
            bridge
                .bot_say(
                    &p.room,
                    "❌ The provider refused the sign-in. Send `login` to try again.",
                )
                .await;
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                "The provider refused the sign-in code. Go back to your chat and send `login` to try again.",
            );
        }
    };
    let access = tokens.access_token().secret().clone();
    let refresh = tokens.refresh_token().map(|r| r.secret().clone());
    let expires = tokens.expires_in().map(|d| d.as_secs() as i64);
    let jid = match bridge
        .probe_login(None, Credentials::AccessToken(access.clone()))
        .await
    {
        Ok(j) => j,
        Err(e) => {
            bridge.bot_say(&p.room, &format!("❌ Signed in, but the Messenger login failed: {e}. Send `login` to try again.")).await;
            return page(
                StatusCode::BAD_GATEWAY,
                "Messenger login failed",
                &format!("{e}. Go back to your chat and send `login` to try again."),
            );
        }
    };
    let secret = Secret::OAuth {
        access_token: access,
        refresh_token: refresh,
        expires_in: expires,
    };
    match bridge
        .finish_link(
            &p.user,
            &p.room,
            &jid,
            store::ServerProfile::Messenger,
            secret,
        )
        .await
    {
        Ok(()) => page(
            StatusCode::OK,
            "Linked",
            &format!(
                "Your Matrix account is linked to {jid}. You can close this page and go back to your chat."
            ),
        ),
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Linking failed",
            &format!("{e}. Go back to your chat and send `login` to try again."),
        ),
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    jid: String,
    password: String,
}

async fn password_form(
    State(bridge): State<Bridge>,
    Path(token): Path<String>,
    Form(form): Form<PasswordForm>,
) -> Response {
    let Some(p) = bridge.inner.logins.take(&token) else {
        return invalid_link();
    };
    let Ok(jid) = Jid::parse(form.jid.trim()).map(|j| j.to_bare()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "That is not an XMPP address",
            "Use the form user@example.org. Go back to your chat and send `login` to try again.",
        );
    };
    let bound = match bridge
        .probe_login(Some(&jid), Credentials::Password(form.password.clone()))
        .await
    {
        Ok(j) => j,
        Err(e) => {
            return page(
                StatusCode::BAD_REQUEST,
                "Login failed",
                &format!("{e}. Go back to your chat and send `login` to try again."),
            );
        }
    };
    match bridge
        .finish_link(
            &p.user,
            &p.room,
            &bound,
            store::ServerProfile::Standard,
            Secret::Password(form.password),
        )
        .await
    {
        Ok(()) => page(
            StatusCode::OK,
            "Linked",
            &format!(
                "Your Matrix account is linked to {bound}. You can close this page and go back to your chat."
            ),
        ),
        Err(e) => page(StatusCode::INTERNAL_SERVER_ERROR, "Linking failed", &e),
    }
}
