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

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

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

/// The logs answer of both transports: `partial_success` when records were refused.
pub fn logs_response(o: Outcome) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (o.rejected > 0).then_some(ExportLogsPartialSuccess {
            rejected_log_records: o.rejected as i64,
            error_message: o.message,
        }),
    }
}

/// The metrics answer of both transports: `partial_success` when points were refused.
pub fn metrics_response(o: Outcome) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (o.rejected > 0).then_some(ExportMetricsPartialSuccess {
            rejected_data_points: o.rejected as i64,
            error_message: o.message,
        }),
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
    let parts = logs::records(req, stream, limit).map_err(|e| match e {
        logs::Refused::TooLarge(_) => too_large(limit),
        logs::Refused::TooManyStreams => ApiError::bad_request(format!(
            "the request's resources name more than {} streams (service.name); send them in separate requests or set x-weir-stream",
            logs::MAX_STREAMS
        )),
    })?;
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
    let key = key.map(|k| ("otlp", k));
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
    let key = key.map(|k| ("otlp", k));
    let admitted = door::admit_once(state, &parts, now, key, &|p| remembered(&fresh(p))).await?;
    if let door::Admitted::Fresh(_) = &admitted {
        // Points refused here, before the door's count.
        state.m.rejected(tenant, s.rejected);
    }
    outcome_of(admitted, fresh)
}

#[cfg(test)]
mod fuzz {
    //! The OTLP decoders and mappings on random and mutated input: never a panic, and
    //! whatever decodes maps to NDJSON in which every line is one JSON object, which the
    //! door's record rules then judge.
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use proptest::prelude::*;
    use prost::Message;

    fn valid_logs() -> Vec<u8> {
        crate::bench::otlp_request_for_tests(0, 5).encode_to_vec()
    }

    fn valid_metrics() -> Vec<u8> {
        use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, AnyValue, KeyValue};
        use opentelemetry_proto::tonic::metrics::v1::{
            exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
            ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
            HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        };
        let attrs = vec![KeyValue {
            key: "k.x".into(),
            value: Some(AnyValue {
                value: Some(V::StringValue("v".into())),
            }),
            ..Default::default()
        }];
        let metric = |name: &str, data: Data| Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(
                            "g",
                            Data::Gauge(Gauge {
                                data_points: vec![NumberDataPoint {
                                    attributes: attrs.clone(),
                                    time_unix_nano: 1_764_432_000_000_000_000,
                                    value: Some(number_data_point::Value::AsDouble(1.5)),
                                    ..Default::default()
                                }],
                            }),
                        ),
                        metric(
                            "h",
                            Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    attributes: attrs.clone(),
                                    count: 3,
                                    bucket_counts: vec![1, 2],
                                    explicit_bounds: vec![1.0],
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                            }),
                        ),
                        metric(
                            "e",
                            Data::ExponentialHistogram(ExponentialHistogram {
                                data_points: vec![ExponentialHistogramDataPoint {
                                    attributes: attrs,
                                    count: 2,
                                    scale: 3,
                                    positive: Some(Buckets {
                                        offset: -2,
                                        bucket_counts: vec![1, 1],
                                    }),
                                    ..Default::default()
                                }],
                                aggregation_temporality: 1,
                            }),
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn every_line_is_an_object(ndjson: &[u8]) {
        for line in ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
            assert!(v.is_object());
        }
    }

    fn map_both(bytes: &[u8]) {
        if let Ok(req) = ExportLogsServiceRequest::decode(bytes) {
            if let Ok(parts) = super::logs::records(&req, None, 1 << 20) {
                for (stream, nd) in &parts.parts {
                    assert!(weir_core::names::is_valid_name(stream));
                    every_line_is_an_object(nd);
                }
            }
        }
        if let Ok(req) = ExportMetricsServiceRequest::decode(bytes) {
            if let Ok(s) = super::metrics::samples(&req, 1 << 20) {
                every_line_is_an_object(&s.ndjson);
                assert_eq!(s.point_of.len(), s.samples);
            }
        }
    }

    #[test]
    fn the_valid_requests_map() {
        map_both(&valid_logs());
        map_both(&valid_metrics());
        let req = ExportMetricsServiceRequest::decode(valid_metrics().as_slice()).unwrap();
        assert_eq!(super::metrics::samples(&req, 1 << 20).unwrap().rejected, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            map_both(&bytes);
            let _ = serde_json::from_slice::<ExportLogsServiceRequest>(&bytes);
            let _ = serde_json::from_slice::<ExportMetricsServiceRequest>(&bytes);
        }

        #[test]
        fn mutated_requests_never_panic(
            which in 0..2usize,
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut bytes = if which == 0 { valid_logs() } else { valid_metrics() };
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            map_both(&bytes);
            // Truncated at any point, too.
            let n = cut.index(bytes.len() + 1);
            map_both(&bytes[..n]);
        }

        #[test]
        fn mutated_json_never_panics(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let req = ExportLogsServiceRequest::decode(valid_logs().as_slice()).unwrap();
            let mut json = serde_json::to_vec(&req).unwrap();
            for (at, b) in edits {
                let i = at.index(json.len());
                json[i] = b;
            }
            if let Ok(r) = serde_json::from_slice::<ExportLogsServiceRequest>(&json) {
                if let Ok(parts) = super::logs::records(&r, None, 1 << 20) {
                    for (_, nd) in &parts.parts {
                        every_line_is_an_object(nd);
                    }
                }
            }
        }
    }
}
