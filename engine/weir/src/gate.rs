//! What a data-plane request passes before its handler runs, in this order:
//!
//! 1. [`authenticate`]: the bearer token names a tenant (or, with no tenants configured,
//!    the client is on loopback) — checked on the head alone, so an unauthenticated
//!    client's body is never read (401, connection closed);
//! 2. `crate::body_limit`: an announced body over the limit is refused (413);
//! 3. [`read_body`]: the body is read within `[http] body_timeout_secs` (408 after it)
//!    and the size limit (413).
//!
//! `GET /metrics` passes [`metrics_auth`] instead: it names every tenant, so it needs
//! `[metrics] token`, or a loopback client when none is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use weir_core::config::DEFAULT_TENANT;
use weir_core::Config;

use crate::server::AppState;

/// The tenant a request was authenticated as.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONNECTION, "close")],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The bearer token of a request's head.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The tenant of a request: its bearer token's, or `default` in open mode (no tenants
/// configured), which only loopback clients may use.
pub fn tenant_of(
    config: &Config,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<String, &'static str> {
    if config.open_mode() {
        if !peer.ip().is_loopback() {
            return Err("no tenants are configured: only loopback clients are accepted");
        }
        return Ok(DEFAULT_TENANT.to_owned());
    }
    bearer(headers)
        .and_then(|t| config.tenant_for_token(t))
        .map(str::to_owned)
        .ok_or("missing or unknown bearer token")
}

fn peer_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(peer) = peer_of(&req) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "no peer address");
    };
    match tenant_of(&state.config, req.headers(), peer) {
        Ok(t) => {
            req.extensions_mut().insert(Tenant(t));
            next.run(req).await
        }
        Err(why) => {
            state.m.unauthorized();
            refuse(StatusCode::UNAUTHORIZED, why)
        }
    }
}

pub async fn read_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = state.config.ingest.max_body_bytes;
    let deadline = Duration::from_secs(state.config.http.body_timeout_secs);
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, limit);
    let bytes = match tokio::time::timeout(deadline, limited.collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body exceeds the limit of {limit} bytes"),
            )
        }
        Ok(Err(e)) => return refuse(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
        Err(_) => {
            state.m.body_timeout();
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s (http.body_timeout_secs)",
                    deadline.as_secs()
                ),
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

pub async fn metrics_auth(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let allowed = match &state.config.metrics.token {
        Some(token) => bearer(req.headers()) == Some(token.as_str()),
        None => peer_of(&req).is_some_and(|p| p.ip().is_loopback()),
    };
    if allowed {
        next.run(req).await
    } else {
        refuse(
            StatusCode::UNAUTHORIZED,
            "/metrics needs the [metrics] token (or a loopback client when none is set)",
        )
    }
}
