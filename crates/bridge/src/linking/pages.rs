//! The login web pages on the appservice listener: the one-time link, the OAuth callback and
//! the password form for standard servers.

use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, Scope, TokenResponse as _};
use serde::Deserialize;
use xmpp_core::Jid;
use xmpp_core::sasl::Credentials;

use super::pending::{Pending, Secret, Step};
use crate::context::Bridge;
use crate::credentials::usable_token;

/// The web routes of account linking.
pub(crate) fn routes() -> Router<Bridge> {
    Router::new()
        .route("/login/callback", get(callback))
        .route("/login/{token}", get(confirm_page).post(confirmed))
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} — Messenger bridge</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}</style></head>\
         <body><main><h1 id=\"result\">{t}</h1><p id=\"message\">{m}</p></main></body></html>",
        t = esc(title),
        m = esc(message)
    );
    (status, PAGE_HEADERS, Html(html)).into_response()
}

fn invalid_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This link does not work",
        "It expired, was already used, or was never valid. Go back to your chat and send `login` to get a new one.",
    )
}

/// The cookie that ties a confirmation to the browser that saw the confirm page.
const CONFIRM_COOKIE: &str = "mb_login_confirm";
/// The cookie that ties the provider's callback to the browser that confirmed: without it, a
/// provider sign-in URL taken from someone's own confirmed login could be sent to a victim, whose
/// sign-in would then link to the sender's Matrix account.
const OAUTH_COOKIE: &str = "mb_login_oauth";

/// A cookie for the login pages (`Secure` when the bridge is reached over HTTPS).
fn cookie(bridge: &Bridge, name: &str, value: &str, path: &str, same_site: &str) -> String {
    let secure = if bridge.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={}{secure}",
        bridge.inner.config.bridge.login_link_lifetime_secs
    )
}

/// The value of cookie `name` in a request.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(&format!("{name}="))
                .map(str::to_owned)
        })
}

/// Headers of every login page: never framed (clickjacking), never cached.
const PAGE_HEADERS: [(header::HeaderName, &str); 3] = [
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
    (header::CACHE_CONTROL, "no-store"),
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /login/{token}`: a confirm page that names the Matrix account being linked. It does not
/// use the link up (link previews fetch links); only the confirmation, a POST from this very
/// browser (a per-view anti-forgery value, in the form and in a SameSite=Strict cookie), goes on.
async fn confirm_page(State(bridge): State<Bridge>, Path(token): Path<String>) -> Response {
    let Some(user) = bridge.inner.logins.user_of(&token) else {
        return invalid_link();
    };
    let nonce = super::pending::random_token();
    let password_fields = if bridge.uses_oauth() {
        String::new()
    } else {
        "<p><label for=\"jid\">XMPP address</label><br><input id=\"jid\" name=\"jid\" type=\"email\" autocomplete=\"username\" required></p>\
         <p><label for=\"password\">Password</label><br><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></p>"
            .to_owned()
    };
    let what = if bridge.uses_oauth() {
        "your Messenger account (you sign in at the provider next)"
    } else {
        "your XMPP account"
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Link your account — Messenger bridge</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}</style></head><body><main>\
         <h1>Link your account</h1>\
         <p>This links {what} to the Matrix account <strong id=\"matrix-user\">{user}</strong>. Its messages will be readable there.</p>\
         <p>Only continue if <strong>you</strong> are {user} and sent <code>login</code> yourself. If someone sent you this link, close this page.</p>\
         <form method=\"post\" action=\"/login/{token}\"><input type=\"hidden\" name=\"confirm\" value=\"{nonce}\">{password_fields}\
         <p><button id=\"confirm\" type=\"submit\">Link to {user}</button></p></form></main></body></html>",
        user = esc(&user),
    );
    let cookie = cookie(&bridge, CONFIRM_COOKIE, &nonce, "/login", "Strict");
    (PAGE_HEADERS, [(header::SET_COOKIE, cookie)], Html(html)).into_response()
}

#[derive(Deserialize)]
struct Confirmation {
    confirm: String,
    jid: Option<String>,
    password: Option<String>,
}

/// `POST /login/{token}`: the confirmation. Goes on only with the anti-forgery value of a
/// confirm page this browser saw; then the link is used up.
async fn confirmed(
    State(bridge): State<Bridge>,
    Path(token): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Confirmation>,
) -> Response {
    let cookie = cookie_value(&headers, CONFIRM_COOKIE);
    let genuine = cookie.is_some_and(|c| {
        !form.confirm.is_empty()
            && crate::matrix::appservice::constant_time_eq(c.as_bytes(), form.confirm.as_bytes())
    });
    if !genuine {
        tracing::warn!("refused a login confirmation without this browser's confirm page");
        return page(
            StatusCode::FORBIDDEN,
            "Please confirm on the page",
            "Open the link again and confirm on its page (the confirmation must come from the browser that shows it).",
        );
    }
    // Only a link (not an OAuth sign-in in flight, whose `state` is a key here too).
    if bridge.inner.logins.user_of(&token).is_none() {
        return invalid_link();
    }
    let Some(p) = bridge.inner.logins.take(&token) else {
        return invalid_link();
    };
    if bridge.uses_oauth() {
        return start_oauth(&bridge, p);
    }
    password_form(
        &bridge,
        p,
        form.jid.unwrap_or_default(),
        form.password.unwrap_or_default(),
    )
    .await
}

fn start_oauth(bridge: &Bridge, p: Pending) -> Response {
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
    let browser = super::pending::random_token();
    bridge.inner.logins.insert(
        state.secret().clone(),
        Pending {
            user: p.user,
            room: p.room,
            created: p.created,
            step: Step::Authorizing(verifier, browser.clone()),
        },
    );
    // Lax: the provider's redirect back is a cross-site top-level GET.
    let cookie = cookie(bridge, OAUTH_COOKIE, &browser, "/login/callback", "Lax");
    ([(header::SET_COOKIE, cookie)], Redirect::to(url.as_str())).into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(bridge): State<Bridge>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    // The state is checked first: a forged or replayed one stores nothing.
    let Some(p) = q.state.as_deref().and_then(|s| bridge.inner.logins.take(s)) else {
        return invalid_link();
    };
    let Step::Authorizing(verifier, browser) = p.step else {
        return invalid_link();
    };
    // The sign-in must come back to the browser that confirmed the link.
    let same_browser = cookie_value(&headers, OAUTH_COOKIE).is_some_and(|c| {
        crate::matrix::appservice::constant_time_eq(c.as_bytes(), browser.as_bytes())
    });
    if !same_browser {
        tracing::warn!(user = %p.user, "refused a sign-in that came back to another browser than the one that confirmed the link");
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "This sign-in was not started in this browser: nothing was linked. If you want to link your account, send `login` to the bridge bot yourself and open the link it gives you.",
        );
    }
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
    if !usable_token(&access) || refresh.as_deref().is_some_and(|r| !usable_token(r)) {
        bridge.bot_say(&p.room, "❌ The sign-in provider answered a malformed token. Send `login` to try again; if it keeps happening, tell the bridge administrator.").await;
        return page(
            StatusCode::BAD_GATEWAY,
            "Sign-in failed",
            "The provider answered a malformed token. Go back to your chat and send `login` to try again.",
        );
    }
    let expires = tokens
        .expires_in()
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
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
                "Your Matrix account {} is linked to {jid}. You can close this page and go back to your chat.",
                p.user
            ),
        ),
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Linking failed",
            &format!("{e}. Go back to your chat and send `login` to try again."),
        ),
    }
}

/// The password form's answer (standard servers).
async fn password_form(bridge: &Bridge, p: Pending, jid: String, password: String) -> Response {
    let Ok(jid) = Jid::parse(jid.trim()).map(|j| j.to_bare()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "That is not an XMPP address",
            "Use the form user@example.org. Go back to your chat and send `login` to try again.",
        );
    };
    if let Err(refusal) = bridge.may_connect_to(jid.domain()).await {
        tracing::warn!(user = %p.user, domain = jid.domain(), %refusal, "refused a password sign-in for a domain");
        return page(
            StatusCode::BAD_REQUEST,
            "Not on this bridge",
            &format!("{refusal} Go back to your chat and send `login` to try again."),
        );
    }
    let bound = match bridge
        .probe_login(Some(&jid), Credentials::Password(password.clone()))
        .await
    {
        Ok(j) => j,
        Err(e) => {
            // The details (addresses, server errors) are for the log, not for the page.
            tracing::warn!(user = %p.user, %jid, error = %e, "a password sign-in failed");
            return page(
                StatusCode::BAD_REQUEST,
                "Login failed",
                "The server did not accept that address and password, or could not be reached. Go back to your chat and send `login` to try again.",
            );
        }
    };
    match bridge
        .finish_link(
            &p.user,
            &p.room,
            &bound,
            store::ServerProfile::Standard,
            Secret::Password(password),
        )
        .await
    {
        Ok(()) => page(
            StatusCode::OK,
            "Linked",
            &format!(
                "Your Matrix account {} is linked to {bound}. You can close this page and go back to your chat.",
                p.user
            ),
        ),
        Err(e) => page(StatusCode::INTERNAL_SERVER_ERROR, "Linking failed", &e),
    }
}
