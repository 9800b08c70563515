//! The data-plane HTTP server: ingest, query, metrics, health.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use weir_core::metrics::{Counter, Family, Gauge, Registry};
use weir_core::Config;
use weir_store::{HotStore, QueryError};

use crate::gate::Tenant;
use weir_transport::{Log, LogError};

use crate::door::Target;
use crate::ingest::{decode_body, BodyError};

pub struct AppState {
    /// Cardinality control of metric series (see [`crate::series`]).
    pub series: crate::series::SeriesLimits,
    pub config: Arc<Config>,
    pub log: Arc<dyn Log>,
    pub store: Arc<HotStore>,
    pub registry: Registry,
    /// Bytes of request bodies being parsed or waiting for their commit (in KiB
    /// permits): bounds ingest memory whatever the number of connections.
    pub inflight: Semaphore,
    pub m: Metrics,
    /// Queries: admission, their own runtime, streamed answers.
    pub queries: Arc<crate::queries::QueryService>,
}

pub struct Metrics {
    accepted: Arc<Family<Counter>>,
    rejected: Arc<Family<Counter>>,
    requests: Arc<Family<Counter>>,
    ingest_bytes: Arc<Family<Counter>>,
    log_end: Arc<Family<Gauge>>,
    log_lag: Arc<Family<Gauge>>,
    log_bytes: Arc<Family<Gauge>>,
    hot_rows: Arc<Family<Gauge>>,
    hot_bytes: Arc<Family<Gauge>>,
    hot_evicted: Arc<Family<Gauge>>,
    refused: Arc<Family<Counter>>,
}

impl Metrics {
    /// Records rejected at ingest.
    pub fn rejected(&self, tenant: &str, n: usize) {
        if n > 0 {
            self.rejected.with(&[("tenant", tenant)]).add(n as u64);
        }
    }

    /// Records acknowledged durable.
    pub fn accepted(&self, tenant: &str, n: u32) {
        self.accepted.with(&[("tenant", tenant)]).add(u64::from(n));
    }

    /// One answered request of `route`.
    pub fn request(&self, route: &str, status: StatusCode) {
        self.requests
            .with(&[("route", route), ("status", status.as_str())])
            .inc();
    }

    /// A request without a valid token, refused before its body was read.
    pub fn unauthorized(&self) {
        self.refused.with(&[("reason", "unauthorized")]).inc();
    }

    /// A request whose body did not arrive in time.
    pub fn body_timeout(&self) {
        self.refused.with(&[("reason", "body_timeout")]).inc();
    }

    pub fn new(r: &Registry) -> Self {
        Metrics {
            accepted: r.counter(
                "weir_ingest_records_accepted_total",
                "Records acknowledged durable.",
            ),
            rejected: r.counter(
                "weir_ingest_records_rejected_total",
                "Records rejected at ingest.",
            ),
            requests: r.counter(
                "weir_http_requests_total",
                "HTTP requests by route and status.",
            ),
            ingest_bytes: r.counter(
                "weir_ingest_bytes_total",
                "Request body bytes received for ingest.",
            ),
            log_end: r.gauge("weir_log_end_offset", "Next offset of each log partition."),
            log_lag: r.gauge(
                "weir_log_lag_bytes",
                "Unprocessed bytes of each log partition.",
            ),
            log_bytes: r.gauge(
                "weir_log_retained_bytes",
                "Retained bytes of each log partition.",
            ),
            hot_rows: r.gauge("weir_hot_rows", "Rows held by the hot store."),
            hot_bytes: r.gauge("weir_hot_bytes", "Arrow bytes held by the hot store."),
            hot_evicted: r.gauge(
                "weir_hot_evicted_rows",
                "Rows evicted from the hot store by its memory bound.",
            ),
            refused: r.counter(
                "weir_http_refused_total",
                "Requests refused before their handler (reason: unauthorized, body_timeout).",
            ),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.ingest.max_body_bytes;
    // Layers run outside in: the token first (no body read without one), then the
    // announced size, then the body within its deadline (see `crate::gate`).
    let api = Router::new()
        .route("/api/v1/logs", post(ingest_logs))
        .route("/api/v1/metrics", post(ingest_metrics))
        .route("/api/v1/query", post(query))
        .route("/v1/logs", post(crate::otlp::http::logs))
        .route("/v1/metrics", post(crate::otlp::http::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::gate::read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            limit,
            crate::body_limit::refuse_announced_over,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::gate::authenticate,
        ));
    let metrics_route =
        Router::new()
            .route("/metrics", get(metrics))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::gate::metrics_auth,
            ));
    Router::new()
        .merge(api)
        .merge(metrics_route)
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// An error answer: status and a JSON `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: false,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Whether the client should retry later (answered with `Retry-After`).
    pub fn retryable(&self) -> bool {
        self.retry_after
    }
    pub fn busy(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            retry_after: true,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Backpressure | LogError::Lagging { .. } => ApiError::busy(e.to_string()),
            LogError::DiskFull(_) | LogError::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

#[derive(Deserialize)]
pub struct IngestParams {
    stream: Option<String>,
    key: Option<String>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn ingest_logs(
    State(state): State<Arc<AppState>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = Target::logs(
        tenant,
        params.stream.unwrap_or_else(|| "default".into()),
        params.key,
    );
    ingest(state, target, headers, body, "logs").await
}

async fn ingest_metrics(
    State(state): State<Arc<AppState>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = Ok(Target::metrics(tenant, params.key));
    ingest(state, target, headers, body, "metrics").await
}

async fn ingest(
    state: Arc<AppState>,
    target: Result<Target, ApiError>,
    headers: HeaderMap,
    body: Bytes,
    route: &str,
) -> Response {
    let res = match target {
        Ok(t) => ingest_inner(&state, &t, &headers, body).await,
        Err(e) => Err(e),
    };
    let status = match &res {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    state.m.request(route, status);
    match res {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The ingest bytes of a request, counted per tenant.
pub fn count_body(state: &AppState, tenant: &str, bytes: usize) {
    state
        .m
        .ingest_bytes
        .with(&[("tenant", tenant)])
        .add(bytes as u64);
}

/// Decompress a body per its `Content-Encoding` within the decoded-size limit.
pub fn decoded_body<'a>(
    state: &AppState,
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    decode_body(encoding, body, state.config.ingest.max_decoded_bytes).map_err(|e| match e {
        BodyError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "decoded body exceeds the limit",
        ),
        BodyError::UnsupportedEncoding(enc) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {enc:?}: use gzip or zstd"),
        ),
        BodyError::BadEncoding(why) => ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cannot decode body: {why}"),
        ),
    })
}

async fn ingest_inner(
    state: &AppState,
    target: &Target,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    count_body(state, &target.tenant, body.len());
    // Reserve memory for the body, compressed and decoded, before touching it.
    let _permit = crate::door::reserve(state, body.len())?;
    let decoded = decoded_body(state, headers, &body)?;
    let key = idempotency_key(headers)?;
    let parts = [(target.clone(), &decoded[..])];
    let admitted =
        crate::door::admit_once(state, &parts, now_ms(), key, &|p| answer_of(&p[0])).await?;
    drop(decoded);
    let body = match admitted {
        crate::door::Admitted::Fresh(p) => answer_of(&p[0]),
        crate::door::Admitted::Repeated(first) => {
            return Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::HeaderName::from_static(REPLAYED_HEADER), "true"),
                ],
                first,
            )
                .into_response())
        }
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Response header of an answer repeated for a remembered `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, if any.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(crate::door::IDEMPOTENCY_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII")),
    }
}

/// The JSON answer of an ingest request.
fn answer_of(parsed: &crate::ingest::Parsed) -> Vec<u8> {
    let mut body = json!({
        "accepted": parsed.count,
        "rejected": parsed.rejected,
        "errors": parsed.errors,
    });
    if parsed.rejected > parsed.errors.len() {
        body["errors_truncated"] = json!(true);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Deserialize)]
pub struct QueryBody {
    sql: String,
}

async fn query(
    State(state): State<Arc<AppState>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    closed: Option<Extension<crate::listener::Closed>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A client that goes away before the first rows cancels the query (dropping it
    // aborts its task); after them, the dropped body does.
    let gone = async move {
        match closed {
            Some(Extension(c)) => c.wait().await,
            None => std::future::pending().await,
        }
    };
    let res = tokio::select! {
        r = query_inner(&state, tenant, &headers, body) => r,
        // Dropping the query counts it as cancelled.
        _ = gone => return StatusCode::NO_CONTENT.into_response(),
    };
    let status = match &res {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    state
        .m
        .requests
        .with(&[("route", "query"), ("status", status.as_str())])
        .inc();
    match res {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Sql(m) | QueryError::Refused(m) | QueryError::Execution(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, m)
            }
            QueryError::TooExpensive(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            QueryError::TenantBusy(m) => ApiError::busy(m),
            QueryError::NodeBusy(m) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: m,
                retry_after: true,
            },
            QueryError::Store(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// The answer streams as it is computed (see `crate::queries`): errors before the first
/// rows get their status; a failure after them ends the body early (incomplete).
async fn query_inner(
    state: &AppState,
    tenant: String,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q: QueryBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"sql\": \"...\"}}: {e}"),
        )
    })?;
    let wants_arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/vnd.apache.arrow.stream"));
    let (answer, content_type) = if wants_arrow {
        let a = state
            .queries
            .run(
                &tenant,
                q.sql,
                weir_store::query_answer::IpcEncoder::default(),
            )
            .await?;
        (a, "application/vnd.apache.arrow.stream")
    } else {
        let a = state
            .queries
            .run(
                &tenant,
                q.sql,
                weir_store::query_answer::JsonEncoder::default(),
            )
            .await?;
        (a, "application/json")
    };
    let crate::queries::Answer { first, rest, guard } = answer;
    let rest = futures::stream::unfold((rest, guard), |(mut rx, guard)| async move {
        let item = rx.recv().await?;
        Some((
            item.map_err(|e| std::io::Error::other(e.to_string())),
            (rx, guard),
        ))
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(rest);
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.queries.observe();
    for p in 0..state.log.partitions() {
        let s = state.log.stats(p);
        let ps = p.to_string();
        let l = [("partition", ps.as_str())];
        state.m.log_end.with(&l).set(s.end_offset);
        state.m.log_lag.with(&l).set(s.lag_bytes);
        state.m.log_bytes.with(&l).set(s.retained_bytes);
    }
    let (rows, bytes) = state.store.stats();
    state.m.hot_rows.with(&[]).set(rows as u64);
    state.m.hot_bytes.with(&[]).set(bytes as u64);
    state
        .m
        .hot_evicted
        .with(&[])
        .set(state.store.evicted_rows());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.registry.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_errors_map_to_the_documented_statuses() {
        let status = |e: LogError| ApiError::from(e).into_response();
        let r = status(LogError::Backpressure);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let lag = LogError::Lagging {
            partition: 0,
            lag_bytes: 1,
        };
        assert_eq!(status(lag).status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            status(LogError::DiskFull("no space".into())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(LogError::Closed).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(LogError::Storage("x".into())).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
