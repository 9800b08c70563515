//! Prometheus remote-write 1.0: `POST /api/v1/write`.
//!
//! The request passes the data plane's gate like `/api/v1/metrics` (bearer token →
//! tenant before the body is read, announced size, body deadline), then:
//!
//! 1. `Content-Type` must be `application/x-protobuf` (or absent), optionally with
//!    `proto=prometheus.WriteRequest`; remote-write 2.0 (`proto=io.prometheus.write.v2.Request`)
//!    and other types get 415, which 2.0 senders take as "send 1.0";
//! 2. `Content-Encoding` must be `snappy` (or absent): the snappy *block* format. The
//!    decompressed length its header declares is checked against
//!    `[ingest] max_decoded_bytes` (413) and reserved in the node's ingest memory
//!    budget before anything is allocated for it;
//! 3. the `WriteRequest` is walked ([`proto`]) and turned into NDJSON samples
//!    ([`convert`]), at most `max_decoded_bytes` of them (413);
//! 4. [`crate::door::admit`] checks every sample by the sample rules and the tenant's
//!    series policy, appends what is kept and waits until it is durable.
//!
//! Answers, as Prometheus' queue manager reads them (2xx: done; 4xx: dropped, never
//! retried; 5xx: retried with backoff, honouring `Retry-After`):
//! - 200 with `{"accepted","rejected","errors",...}` once the kept samples are durable,
//!   also when some samples were refused (they are counted in
//!   `weir_ingest_records_rejected_total` and logged, at most one line per 10 s): a 4xx
//!   would drop the good samples of the batch, a 5xx would resend the bad ones forever;
//! - 400 for a body that does not decode (bad snappy, bad protobuf, invalid UTF-8),
//!   401 without a valid token, 413 over the size limits, 415 for other formats;
//! - 503 + `Retry-After` when the node is busy (log lag over `[log] max_lag_bytes`, full
//!   commit queue, ingest memory budget spent, full disk), where `/api/v1/metrics`
//!   answers 429: Prometheus retries 429 only with `queue_config.retry_on_http_429:
//!   true` and otherwise *drops* the batch, while every sender retries a 5xx. Nothing
//!   of a refused request was appended, so a retry never duplicates samples.

mod convert;
mod proto;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use weir_core::metrics::{Counter, Family, Registry};

use crate::door::Target;
use crate::gate::Tenant;
use crate::server::{count_body, now_ms, ApiError, AppState};
use convert::{ConvertError, SampleError};

/// The 1.0 message, as named in `Content-Type: application/x-protobuf;proto=...`.
pub const PROTO_V1: &str = "prometheus.WriteRequest";
/// The 2.0 message, which Weir does not take.
pub const PROTO_V2: &str = "io.prometheus.write.v2.Request";
/// Least time between two log lines about refused samples.
const WARN_EVERY_MS: i64 = 10_000;

#[derive(Deserialize)]
pub struct WriteParams {
    /// Partition key, as for `/api/v1/metrics`.
    key: Option<String>,
}

/// `POST /api/v1/write`.
pub async fn write(
    State(state): State<Arc<AppState>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let res = write_inner(&state, tenant, params.key, &headers, body)
        .await
        .map_err(ApiError::busy_as_unavailable);
    let status = match &res {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    state.m.request("write", status);
    match res {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
}

/// Refuse what is not a snappy-compressed remote-write 1.0 body, by its headers.
fn check_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .map_err(|_| unsupported("Content-Type is not text".into()))?;
        let mut parts = ct.split(';');
        let media = parts.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/x-protobuf") {
            return Err(unsupported(format!(
                "remote-write bodies are protobuf (Content-Type: application/x-protobuf), not {ct:?}"
            )));
        }
        for p in parts {
            let Some(proto) = p.trim().strip_prefix("proto=") else {
                continue;
            };
            match proto.trim().trim_matches('"') {
                PROTO_V1 => {}
                PROTO_V2 => {
                    return Err(unsupported(format!(
                        "remote-write 2.0 ({PROTO_V2}) is not supported: send 1.0 ({PROTO_V1}, Prometheus' default protobuf_message)"
                    )))
                }
                other => {
                    return Err(unsupported(format!(
                        "unknown remote-write message {other:?}: send {PROTO_V1}"
                    )))
                }
            }
        }
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("?").trim();
        if !enc.eq_ignore_ascii_case("snappy") {
            return Err(unsupported(format!(
                "remote-write bodies are snappy-compressed (Content-Encoding: snappy), not {enc:?}"
            )));
        }
    }
    Ok(())
}

async fn write_inner(
    state: &AppState,
    tenant: String,
    key: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_headers(headers)?;
    count_body(state, &tenant, body.len());
    let max = state.config.ingest.max_decoded_bytes;
    let declared = declared_len(&body, max)?;
    let _permit = crate::door::reserve(state, body.len() + declared)?;
    let converted = decode(&body, max)?;
    let _more = crate::door::reserve(state, converted.ndjson.len())?;
    let target = Target::metrics(tenant, key);
    let parsed = crate::door::admit(state, &target, &converted.ndjson, now_ms()).await?;
    let tenant = target.tenant.as_str();
    state.m.rejected(tenant, converted.rejected);
    let stats = stats(&state.registry);
    for (what, n) in [
        ("stale_marker", converted.stale),
        ("histogram", converted.histograms),
        ("exemplar", converted.exemplars),
    ] {
        if n > 0 {
            stats
                .with(&[("tenant", tenant), ("what", what)])
                .add(n as u64);
        }
    }
    let rejected = converted.rejected + parsed.rejected;
    let mut errors = converted.errors.clone();
    errors.extend(
        parsed
            .errors
            .iter()
            .filter_map(|e| {
                let &(series, sample) = converted.origin.get(e.line.checked_sub(1)?)?;
                Some(SampleError {
                    series: series as usize,
                    sample: Some(sample as usize),
                    reason: e.reason.clone(),
                })
            })
            .take(crate::ingest::MAX_ERRORS.saturating_sub(errors.len())),
    );
    if rejected > 0 {
        warn_rejected(tenant, rejected, &errors);
    }
    let mut answer = json!({
        "accepted": parsed.count,
        "rejected": rejected,
        "errors": errors,
        "stale_markers_dropped": converted.stale,
        "histograms_skipped": converted.histograms,
        "exemplars_skipped": converted.exemplars,
        "metadata": converted.metadata,
    });
    if rejected > errors.len() {
        answer["errors_truncated"] = json!(true);
    }
    Ok((StatusCode::OK, Json(answer)).into_response())
}

fn bad_snappy(e: snap::Error) -> ApiError {
    ApiError::bad_request(format!("cannot decode the snappy block body: {e}"))
}

/// The decompressed length a snappy block declares, refused over `max` (413): read
/// from its header before anything is allocated.
fn declared_len(body: &[u8], max: usize) -> Result<usize, ApiError> {
    let declared = snap::raw::decompress_len(body).map_err(bad_snappy)?;
    if declared > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body declares {declared} bytes decompressed, over the limit of {max} ([ingest] max_decoded_bytes)"),
        ));
    }
    Ok(declared)
}

/// A snappy-compressed `WriteRequest` as NDJSON samples, or the 4xx that refuses it.
fn decode(body: &[u8], max: usize) -> Result<convert::Converted, ApiError> {
    declared_len(body, max)?;
    let decoded = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(bad_snappy)?;
    convert::convert(&decoded, max).map_err(|e| match e {
        ConvertError::Wire(w) => ApiError::bad_request(w.to_string()),
        e @ ConvertError::TooLarge(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
    })
}

/// `weir_remote_write_skipped_total{tenant,what}`, registered on first use.
fn stats(registry: &Registry) -> &'static Family<Counter> {
    static STATS: OnceLock<Arc<Family<Counter>>> = OnceLock::new();
    STATS.get_or_init(|| {
        registry.counter(
            "weir_remote_write_skipped_total",
            "Remote-write data not stored (what: stale_marker, histogram, exemplar).",
        )
    })
}

/// Log refused samples, at most once per [`WARN_EVERY_MS`] for the whole node.
fn warn_rejected(tenant: &str, rejected: usize, errors: &[SampleError]) {
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = now_ms();
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) < WARN_EVERY_MS
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let first = errors.first().map(|e| e.reason.as_str()).unwrap_or("");
    tracing::warn!(
        tenant,
        rejected,
        first,
        "remote-write samples refused (the others of the request are kept; next warning in 10 s at the earliest)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(ct: Option<&str>, enc: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        if let Some(enc) = enc {
            h.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_str(enc).unwrap(),
            );
        }
        h
    }

    /// A valid snappy-compressed request of a few series.
    fn valid_body() -> Vec<u8> {
        use prost::Message;
        let series = |name: &str, v: f64| proto::TimeSeries {
            labels: vec![
                proto::Label {
                    name: "__name__".into(),
                    value: name.into(),
                },
                proto::Label {
                    name: "host".into(),
                    value: "h1".into(),
                },
            ],
            samples: vec![proto::Sample {
                value: v,
                timestamp: 1_795_000_000_000,
            }],
            ..Default::default()
        };
        let req = proto::WriteRequest {
            timeseries: vec![series("a", 1.0), series("b", 2.5)],
            metadata: vec![proto::MetricMetadata {
                r#type: 1,
                metric_family_name: "a".into(),
                ..Default::default()
            }],
        };
        snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap()
    }

    #[test]
    fn a_valid_body_decodes_and_limits_hold() {
        let Ok(c) = decode(&valid_body(), 1 << 20) else {
            panic!("a valid body is refused")
        };
        assert_eq!(c.origin.len(), 2);
        let e = decode(&valid_body(), 10).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // 4 GiB - 1 declared: refused from the header alone.
        let e = decode(&[0xff, 0xff, 0xff, 0xff, 0x0f], 1 << 20).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            decode(b"", 1 << 20).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Random bytes, and a valid body mutated and cut, compressed or not: a result
        /// or a 4xx, never a panic.
        #[test]
        fn decoding_garbage_never_panics(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                0..6,
            ),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            recompress in proptest::prelude::any::<bool>(),
        ) {
            let check = |r: Result<convert::Converted, ApiError>| match r {
                Ok(c) => assert_eq!(c.origin.len(), c.ndjson.iter().filter(|&&b| b == b'\n').count()),
                Err(e) => assert!(e.status().is_client_error()),
            };
            check(decode(&noise, 1 << 20));
            check(decode(&snap::raw::Encoder::new().compress_vec(&noise).unwrap(), 1 << 20));
            let mut body = if recompress {
                snap::raw::Decoder::new().decompress_vec(&valid_body()).unwrap()
            } else {
                valid_body()
            };
            for (i, b) in edits {
                let i = i.index(body.len());
                body[i] = b;
            }
            body.truncate(cut.index(body.len() + 1));
            if recompress {
                body = snap::raw::Encoder::new().compress_vec(&body).unwrap();
            }
            check(decode(&body, 1 << 20));
        }
    }

    #[test]
    fn only_snappy_protobuf_1_0_passes_the_headers() {
        for (ct, enc) in [
            (None, None),
            (Some("application/x-protobuf"), Some("snappy")),
            (
                Some("application/x-protobuf;proto=prometheus.WriteRequest"),
                Some("snappy"),
            ),
        ] {
            assert!(check_headers(&headers(ct, enc)).is_ok(), "{ct:?} {enc:?}");
        }
        for (ct, enc, why) in [
            (Some("application/json"), None, "protobuf"),
            (
                Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"),
                Some("snappy"),
                "2.0",
            ),
            (Some("application/x-protobuf;proto=x.Y"), None, "unknown"),
            (None, Some("gzip"), "snappy-compressed"),
        ] {
            let r = check_headers(&headers(ct, enc)).unwrap_err();
            assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
            let body = r.into_response();
            assert_eq!(body.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{why}");
        }
    }
}
