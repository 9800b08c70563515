//! OpenTelemetry (OTLP) logs and metrics, over gRPC and HTTP, into the door.
//!
//! Layout:
//! - [`logs`]: `LogRecord` → one `logs` record each, the field layout, the stream rule;
//! - [`metrics`]: data points → `metrics` samples (gauges, sums, histograms,
//!   exponential histograms, summaries), the naming and label rules;
//! - [`values`]: `AnyValue` → JSON, attribute keys → label names;
//! - [`http`]: `POST /v1/logs` and `POST /v1/metrics` (protobuf or JSON, gzip);
//! - [`grpc`]: `LogsService/Export` and `MetricsService/Export` on the gRPC listener;
//! - this file: what both transports share — decode limits, the call into
//!   [`crate::door::admit_once`], and the answer (`partial_success`).
//!
//! Tenant: the bearer token (`authorization: Bearer TOKEN`, a header or gRPC metadata),
//! as for every data-plane call. Stream of log records: the `x-weir-stream` header or
//! metadata when given, else the resource's `service.name` (characters outside
//! `[A-Za-z0-9_.-]` as `_`), else `otlp`. Metrics go to the metrics stream.
//!
//! Answers: success only once everything kept is durable; records refused by the
//! record or sample rules (or here) are counted in `partial_success` with the first
//! reason, and everything else of the request is kept. Backpressure is retryable
//! (HTTP 429/503 + `Retry-After`; gRPC `UNAVAILABLE` with `RetryInfo`); what must not be
//! retried is HTTP 400 / gRPC `INVALID_ARGUMENT`.

pub mod grpc;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod values;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

use crate::door::{self, Target};
use crate::server::{ApiError, AppState};

/// Header (HTTP) or metadata key (gRPC) naming the stream of exported log records.
pub const STREAM_HEADER: &str = "x-weir-stream";

/// What an export kept and refused (also the answer remembered with an idempotency key).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Records (logs) or samples (metrics) kept.
    pub accepted: u64,
    /// Log records or metric data points refused.
    pub rejected: u64,
    /// The first reason a record was refused (empty when none was).
    pub message: String,
}

impl Outcome {
    fn refuse(&mut self, n: usize, why: Option<&str>) {
        self.rejected += n as u64;
        if self.message.is_empty() {
            if let Some(w) = why {
                self.message = w.to_owned();
            }
        }
    }
}

/// The NDJSON a request may expand into: twice the decoded body limit.
fn expansion_limit(state: &AppState) -> usize {
    state.config.ingest.max_decoded_bytes.saturating_mul(2)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request expands to more than {limit} bytes of records; send smaller batches"),
    )
}

/// The outcome of a request admitted now, or the one remembered for its key.
fn outcome_of(
    admitted: door::Admitted,
    fresh: impl FnOnce(&[crate::ingest::Parsed]) -> Outcome,
) -> Result<Outcome, ApiError> {
    match admitted {
        door::Admitted::Fresh(p) => Ok(fresh(&p)),
        door::Admitted::Repeated(first) => serde_json::from_slice(&first).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("the answer remembered for this Idempotency-Key does not read back: {e}"),
            )
        }),
    }
}

fn remembered(o: &Outcome) -> Vec<u8> {
    serde_json::to_vec(o).unwrap_or_default()
}

/// Admit the records of an OTLP logs request for `tenant`, under an optional
/// idempotency key.
pub async fn export_logs(
    state: &AppState,
    tenant: &str,
    stream: Option<&str>,
    key: Option<&str>,
    req: &ExportLogsServiceRequest,
) -> Result<Outcome, ApiError> {
    if let Some(s) = stream {
        door::check_stream(s)?;
    }
    let limit = expansion_limit(state);
    let parts = logs::records(req, stream, limit).map_err(|_| too_large(limit))?;
    let _permit = door::reserve(state, parts.bytes)?;
    let targets: Vec<(Target, &[u8])> = parts
        .parts
        .iter()
        .map(|(s, nd)| {
            (
                Target {
                    tenant: tenant.to_owned(),
                    stream: s.clone(),
                    key: None,
                    what: door::Payload::Logs,
                },
                nd.as_slice(),
            )
        })
        .collect();
    let fresh = |answers: &[crate::ingest::Parsed]| {
        let mut out = Outcome::default();
        for a in answers {
            out.accepted += u64::from(a.count);
            out.refuse(a.rejected, a.errors.first().map(|e| e.reason.as_str()));
        }
        out
    };
    let now = crate::server::now_ms();
    let admitted = door::admit_once(state, &targets, now, key, &|p| remembered(&fresh(p))).await?;
    outcome_of(admitted, fresh)
}

/// Admit the samples of an OTLP metrics request for `tenant`, under an optional
/// idempotency key.
pub async fn export_metrics(
    state: &AppState,
    tenant: &str,
    key: Option<&str>,
    req: &ExportMetricsServiceRequest,
) -> Result<Outcome, ApiError> {
    let limit = expansion_limit(state);
    let s = metrics::samples(req, limit).map_err(|_| too_large(limit))?;
    let _permit = door::reserve(state, s.ndjson.len())?;
    let fresh = |answers: &[crate::ingest::Parsed]| {
        let mut out = Outcome::default();
        out.refuse(s.rejected, s.first_error.as_deref());
        if let Some(a) = answers.first() {
            out.accepted = u64::from(a.count);
            // partial_success counts data points: one with any refused sample is refused.
            out.refuse(
                s.points_refused(&a.line_numbers),
                a.errors.first().map(|e| e.reason.as_str()),
            );
        }
        out
    };
    let target = Target::metrics(tenant.to_owned(), None);
    let now = crate::server::now_ms();
    let parts = [(target, s.ndjson.as_slice())];
    let admitted = door::admit_once(state, &parts, now, key, &|p| remembered(&fresh(p))).await?;
    if let door::Admitted::Fresh(_) = &admitted {
        // Points refused here, before the door's count.
        state.m.rejected(tenant, s.rejected);
    }
    outcome_of(admitted, fresh)
}
