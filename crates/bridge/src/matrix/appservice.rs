//! The appservice API the homeserver calls (`/_matrix/app/v1/…`), plus `/health` and
//! `/metrics`, served with axum.
//!
//! A transaction is answered 200 only after all its events are recorded in the outbox, so an
//! acknowledged event is never lost; a repeated transaction (same id and content) is
//! acknowledged without recording anything again.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ruma::api::IncomingRequest;
use ruma::api::appservice::event::push_events;
use serde_json::{Value, json};
use sha2::Digest;
use store::Direction;

use crate::context::Bridge;

/// The appservice router.
pub fn router(bridge: Bridge) -> Router {
    let limit = bridge.inner.config.appservice.max_body_bytes;
    Router::new()
        .route("/_matrix/app/v1/transactions/{txn_id}", put(transaction))
        .route("/_matrix/app/v1/users/{user_id}", get(query_user))
        .route("/_matrix/app/v1/rooms/{alias}", get(query_room))
        .route("/_matrix/app/v1/ping", post(ping))
        .route("/media/{token}/{name}", get(crate::media::serve))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::linking::routes())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(bridge)
}

/// Serves the router on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, bridge: Bridge) -> std::io::Result<()> {
    let app = router(bridge).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await
}

fn matrix_error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errcode": errcode, "error": message})),
    )
        .into_response()
}

/// Checks the homeserver's token in constant time: `Authorization: Bearer` (spec ≥ 1.4) or the
/// legacy `access_token` query parameter.
#[allow(clippy::result_large_err)] // the rejection is the response itself
fn authorized(bridge: &Bridge, headers: &HeaderMap, uri: &Uri) -> Result<(), Response> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let query = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .map(str::to_owned)
    });
    let Some(token) = header.or(query) else {
        return Err(matrix_error(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "no homeserver token",
        ));
    };
    if !constant_time_eq(
        token.as_bytes(),
        bridge.inner.config.appservice.hs_token.as_bytes(),
    ) {
        tracing::warn!("rejected an appservice request with a wrong hs_token");
        return Err(matrix_error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "wrong homeserver token",
        ));
    }
    Ok(())
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Hash both sides first so the comparison time does not depend on the lengths either.
    let (ha, hb) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn transaction(
    State(bridge): State<Bridge>,
    Path(txn_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let arrived = std::time::Instant::now();
    if let Err(r) = authorized(&bridge, &headers, &uri) {
        return r;
    }
    let mut request = http::Request::builder()
        .method(http::Method::PUT)
        .uri(uri.clone());
    if let Some(h) = request.headers_mut() {
        *h = headers.clone();
    }
    let Ok(request) = request.body(body.as_ref()) else {
        return matrix_error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "unreadable request");
    };
    let txn = match push_events::v1::Request::try_from_http_request(request, &[txn_id.as_str()]) {
        Ok(t) => t,
        Err(e) => {
            return matrix_error(
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
                &format!("invalid transaction: {e}"),
            );
        }
    };
    let events = txn
        .events
        .iter()
        .filter_map(|raw| serde_json::from_str::<Value>(raw.json().get()).ok());
    // After an outage, what the homeserver may have lost is recorded first, so order is kept.
    if let Err(e) = bridge.record_transaction(events, arrived).await {
        tracing::error!(error = %e, "cannot record an event; asking the homeserver to retry");
        return matrix_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_UNKNOWN",
            "the bridge's database is unavailable",
        );
    }
    for raw in &txn.ephemeral {
        if let Ok(data) = serde_json::from_str::<Value>(raw.json().get()) {
            let bridge = bridge.clone();
            tokio::spawn(async move { bridge.on_ephemeral(&data).await });
        }
    }
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

async fn query_user(
    State(bridge): State<Bridge>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Err(r) = authorized(&bridge, &headers, &uri) {
        return r;
    }
    // Any valid ghost name exists on demand (it is registered when first used).
    let exists = ruma::UserId::parse(&user_id)
        .ok()
        .is_some_and(|u| bridge.inner.ghosts.contact(&u).is_some() || u == bridge.inner.bot);
    if exists {
        if let Ok(u) = ruma::UserId::parse(&user_id) {
            let _ = bridge.ensure_registered(&u).await;
        }
        (StatusCode::OK, axum::Json(json!({}))).into_response()
    } else {
        matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user")
    }
}

async fn query_room(State(bridge): State<Bridge>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(r) = authorized(&bridge, &headers, &uri) {
        return r;
    }
    matrix_error(
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "the bridge has no room aliases",
    )
}

async fn ping(State(bridge): State<Bridge>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(r) = authorized(&bridge, &headers, &uri) {
        return r;
    }
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

/// Ready when the store and the homeserver answer. Says only that: the details are in the log
/// and `/metrics`, not for whoever can reach the listener.
async fn health(State(bridge): State<Bridge>) -> Response {
    let store_ok = bridge
        .inner
        .store
        .outbox_backlog(Direction::ToXmpp)
        .await
        .is_ok();
    let hs_ok = bridge
        .inner
        .matrix
        .send(
            ruma::api::client::discovery::get_supported_versions::Request::new(),
            None,
        )
        .await
        .is_ok();
    let ready = store_ok && hs_ok;
    if !ready {
        tracing::warn!(
            store = store_ok,
            homeserver = hs_ok,
            "health check: not ready"
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({"ready": ready}))).into_response()
}

/// Prometheus metrics: with `appservice.metrics_token` set, for that bearer token only;
/// without one, for loopback connections only.
async fn metrics(
    State(bridge): State<Bridge>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let allowed = match &bridge.inner.config.appservice.metrics_token {
        Some(token) => headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())),
        // Loopback only, and not through a proxy on this host (it would make every client
        // look local): a forwarded request needs the token.
        None => {
            peer.ip().is_loopback()
                && !["forwarded", "x-forwarded-for", "x-real-ip"]
                    .iter()
                    .any(|h| headers.contains_key(*h))
        }
    };
    if !allowed {
        tracing::warn!(%peer, "refused a /metrics request");
        return (
            StatusCode::FORBIDDEN,
            "metrics: send appservice.metrics_token as a bearer token (without one, only loopback connections may read them)\n",
        )
            .into_response();
    }
    let store = &bridge.inner.store;
    let to_xmpp = store.outbox_backlog(Direction::ToXmpp).await.unwrap_or(-1);
    let to_matrix = store
        .outbox_backlog(Direction::ToMatrix)
        .await
        .unwrap_or(-1);
    let text = bridge
        .inner
        .metrics
        .render(&[("to_xmpp", to_xmpp), ("to_matrix", to_matrix)]);
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Body::from(text))
        .unwrap_or_default()
}
