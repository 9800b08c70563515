//! Prometheus remote-write 1.0 and 2.0: `POST /api/v1/write`.
//!
//! The request passes the data plane's gate like `/api/v1/metrics` (bearer token →
//! tenant before the body is read, announced size, body deadline), then:
//!
//! 1. `Content-Type` must be `application/x-protobuf` (or absent): 1.0
//!    (`prometheus.WriteRequest`) unless `proto=io.prometheus.write.v2.Request` says
//!    2.0; other types and messages get 415;
//! 2. `Content-Encoding` must be `snappy` (or absent): the snappy *block* format. The
//!    decompressed length its header declares is checked against
//!    `[ingest] max_decoded_bytes` (413) and reserved in the node's ingest memory
//!    budget before anything is allocated for it;
//! 3. the request is walked in place ([`proto`], [`proto_v2`]) and turned into NDJSON
//!    samples ([`convert`]), at most `max_decoded_bytes` of them (413);
//! 4. [`crate::door::admit`] checks every sample by the sample rules and the tenant's
//!    series policy, appends what is kept and waits until it is durable.
//!
//! Answers, as Prometheus' queue manager reads them (2xx: done; 4xx: dropped, never
//! retried; 5xx: retried with backoff, honouring `Retry-After`):
//! - 1.0: 200 with `{"accepted","rejected","errors",...}` once the kept samples are
//!   durable, also when some samples were refused (counted in
//!   `weir_ingest_records_rejected_total`, logged at most once per 10 s): a 4xx would
//!   make a 1.0 sender treat the batch as lost, a 5xx would resend the bad samples
//!   forever;
//! - 2.0, as its spec asks: 204 when every sample was written, else 400 with the
//!   reasons (the kept samples are stored all the same, and a 400 is not retried);
//!   `X-Prometheus-Remote-Write-{Samples,Histograms,Exemplars}-Written` either way;
//! - 400 for a body that does not decode (bad snappy, bad protobuf, invalid UTF-8, a
//!   2.0 label reference outside the symbols), 401 without a valid token, 413 over the
//!   size limits, 415 for other formats;
//! - 503 + `Retry-After` when the node is busy (log lag over `[log] max_lag_bytes`, full
//!   commit queue, ingest memory budget spent, full disk), where `/api/v1/metrics`
//!   answers 429: Prometheus retries 429 only with `queue_config.retry_on_http_429:
//!   true` and otherwise *drops* the batch, while every sender retries a 5xx. Nothing
//!   of a refused request was appended, so a retry never duplicates samples.

mod convert;
mod proto;
mod proto_v2;
mod wire;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use weir_core::metrics::{Counter, Family, Registry};

use crate::door::Target;
use crate::gate::Tenant;
use crate::server::{count_body, now_ms, ApiError, AppState};
use convert::{ConvertError, SampleError};
use wire::WireError;

/// The 1.0 message, as named in `Content-Type: application/x-protobuf;proto=...`.
pub const PROTO_V1: &str = "prometheus.WriteRequest";
/// The 2.0 message.
pub const PROTO_V2: &str = "io.prometheus.write.v2.Request";
/// 2.0 answers: how many of each were written.
const WRITTEN_SAMPLES: &str = "x-prometheus-remote-write-samples-written";
const WRITTEN_HISTOGRAMS: &str = "x-prometheus-remote-write-histograms-written";
const WRITTEN_EXEMPLARS: &str = "x-prometheus-remote-write-exemplars-written";
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
        Ok(r) => r.status(),
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

/// The message a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// `prometheus.WriteRequest`.
    V1,
    /// `io.prometheus.write.v2.Request`.
    V2,
}

/// The version of a snappy-compressed remote-write body by its headers, or the 415.
fn check_headers(headers: &HeaderMap) -> Result<Version, ApiError> {
    let mut version = Version::V1;
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
                PROTO_V1 => version = Version::V1,
                PROTO_V2 => version = Version::V2,
                other => {
                    return Err(unsupported(format!(
                        "unknown remote-write message {other:?}: send {PROTO_V1} or {PROTO_V2}"
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
    Ok(version)
}

async fn write_inner(
    state: &AppState,
    tenant: String,
    key: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = check_headers(headers)?;
    count_body(state, &tenant, body.len());
    let max = state.config.ingest.max_decoded_bytes;
    let declared = declared_len(&body, max)?;
    let _permit = crate::door::reserve(state, body.len() + declared)?;
    let converted = decode(&body, max, version)?;
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
    if version == Version::V1 {
        return Ok((StatusCode::OK, Json(answer)).into_response());
    }
    // 2.0: 204 only when every sample was written (a staleness marker counts as
    // written: it did what it says); otherwise 400, which the sender does not retry,
    // with the reasons. The written counts go in headers either way.
    let written = [
        (WRITTEN_SAMPLES, parsed.count as usize + converted.stale),
        (WRITTEN_HISTOGRAMS, 0),
        (WRITTEN_EXEMPLARS, 0),
    ];
    let mut r = if rejected == 0 && converted.histograms == 0 {
        StatusCode::NO_CONTENT.into_response()
    } else {
        answer["error"] = json!(format!(
            "{rejected} samples refused and {} native histograms not stored (Weir keeps float samples only); the other samples are stored",
            converted.histograms
        ));
        (StatusCode::BAD_REQUEST, Json(answer)).into_response()
    };
    for (name, n) in written {
        r.headers_mut().insert(name, HeaderValue::from(n));
    }
    Ok(r)
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

/// A snappy-compressed request as NDJSON samples, or the 4xx that refuses it.
fn decode(body: &[u8], max: usize, version: Version) -> Result<convert::Converted, ApiError> {
    declared_len(body, max)?;
    let decoded = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(bad_snappy)?;
    let converted = match version {
        Version::V1 => convert::convert(&decoded, max),
        Version::V2 => convert::convert_v2(&decoded, max),
    };
    converted.map_err(|e| match e {
        ConvertError::Wire(w @ WireError::TooMany(_)) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, w.to_string())
        }
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
        let Ok(c) = decode(&valid_body(), 1 << 20, Version::V1) else {
            panic!("a valid body is refused")
        };
        assert_eq!(c.origin.len(), 2);
        let e = decode(&valid_body(), 10, Version::V1).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // 4 GiB - 1 declared: refused from the header alone.
        let e = decode(&[0xff, 0xff, 0xff, 0xff, 0x0f], 1 << 20, Version::V2).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        for v in [Version::V1, Version::V2] {
            assert_eq!(
                decode(b"", 1 << 20, v).unwrap_err().status(),
                StatusCode::BAD_REQUEST
            );
        }
        let v2 = proto_v2::Request {
            symbols: vec!["".into(), "__name__".into(), "up".into()],
            timeseries: vec![proto_v2::TimeSeries {
                labels_refs: vec![1, 2],
                samples: vec![proto::Sample {
                    value: 1.0,
                    timestamp: 1_795_000_000_000,
                }],
                ..Default::default()
            }],
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&prost::Message::encode_to_vec(&v2))
            .unwrap();
        let Ok(c) = decode(&body, 1 << 20, Version::V2) else {
            panic!("a valid 2.0 body is refused")
        };
        assert_eq!(
            std::str::from_utf8(&c.ndjson).unwrap(),
            "{\"name\":\"up\",\"value\":1.0,\"ts\":1795000000000,\"labels\":{}}\n"
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
            for v in [Version::V1, Version::V2] {
                check(decode(&noise, 1 << 20, v));
                check(decode(&snap::raw::Encoder::new().compress_vec(&noise).unwrap(), 1 << 20, v));
            }
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
            check(decode(&body, 1 << 20, Version::V1));
            check(decode(&body, 1 << 20, Version::V2));
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
            assert_eq!(
                check_headers(&headers(ct, enc)).ok(),
                Some(Version::V1),
                "{ct:?} {enc:?}"
            );
        }
        let v2 = headers(
            Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"),
            Some("snappy"),
        );
        assert_eq!(check_headers(&v2).ok(), Some(Version::V2));
        for (ct, enc, why) in [
            (Some("application/json"), None, "protobuf"),
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
