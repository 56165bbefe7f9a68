//! The login web pages on the appservice listener: the one-time link, the OAuth callback and
//! the password form for standard servers.

use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, Scope, TokenResponse as _};
use serde::Deserialize;
use xmpp_core::Jid;
use xmpp_core::sasl::Credentials;

use super::pending::{Pending, Secret, Step};
use crate::context::Bridge;

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
