//! OTLP/HTTP: `POST /v1/logs` and `POST /v1/metrics` on the data-plane listener, behind
//! the same gate as `/api/v1/logs` (token before body, size, deadline).
//!
//! Bodies are `application/x-protobuf` or `application/json` (the OTLP/JSON mapping:
//! lowerCamelCase names, hex trace and span ids, 64-bit integers as strings or
//! numbers, enums as numbers), optionally gzip- or zstd-compressed. The answer has the
//! request's content type: an `Export*ServiceResponse` (with `partial_success` when
//! records were refused) on 200; a `google.rpc.Status` on errors — 400 for a body that
//! does not decode (not to be retried), 413, 415, and 429/503 with `Retry-After` under
//! backpressure, which the exporters retry.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::SemaphorePermit;

use super::{Outcome, STREAM_HEADER};
use crate::gate::Tenant;
use crate::server::{ApiError, AppState};

/// The two encodings of OTLP/HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Result<Encoding, ApiError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/x-protobuf") {
            Ok(Encoding::Protobuf)
        } else if mime.eq_ignore_ascii_case("application/json") {
            Ok(Encoding::Json)
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {ct:?}: OTLP/HTTP takes application/x-protobuf or application/json"),
            ))
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    fn decode<T: Message + Default + DeserializeOwned>(self, body: &[u8]) -> Result<T, ApiError> {
        match self {
            Encoding::Protobuf => T::decode(body)
                .map_err(|e| ApiError::bad_request(format!("not an OTLP protobuf message: {e}"))),
            Encoding::Json => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("not an OTLP/JSON message: {e}"))),
        }
    }

    fn answer<T: Message + Serialize>(self, status: StatusCode, msg: &T) -> Response {
        let body = match self {
            Encoding::Protobuf => msg.encode_to_vec(),
            Encoding::Json => serde_json::to_vec(msg).unwrap_or_default(),
        };
        (status, [(header::CONTENT_TYPE, self.content_type())], body).into_response()
    }

    /// An error as OTLP/HTTP wants it: a `google.rpc.Status` in the request's encoding.
    fn error(self, e: ApiError) -> Response {
        let status = e.status();
        let rpc = super::grpc::RpcStatus {
            code: super::grpc::code_of(status) as i32,
            message: e.message().to_owned(),
            details: Vec::new(),
        };
        let body = match self {
            Encoding::Protobuf => rpc.encode_to_vec(),
            Encoding::Json => serde_json::to_vec(&serde_json::json!({
                "code": rpc.code,
                "message": rpc.message,
            }))
            .unwrap_or_default(),
        };
        let mut r = (status, [(header::CONTENT_TYPE, self.content_type())], body).into_response();
        if e.retryable() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

fn stream_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(STREAM_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| ApiError::bad_request(format!("{STREAM_HEADER} is not text"))),
    }
}

/// `POST /v1/logs`.
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (enc, res) = match Encoding::of(&headers) {
        Ok(enc) => (enc, logs_inner(&state, &tenant, &headers, enc, &body).await),
        Err(e) => (Encoding::Json, Err(e)),
    };
    answer(&state, "otlp_logs", enc, res, super::logs_response)
}

async fn logs_inner(
    state: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    enc: Encoding,
    body: &[u8],
) -> Result<Outcome, ApiError> {
    let stream = stream_of(headers)?;
    let (req, _held) = decode::<ExportLogsServiceRequest>(state, tenant, headers, enc, body)?;
    let key = crate::server::idempotency_key(headers)?;
    super::export_logs(state, tenant, stream.as_deref(), key, &req).await
}

/// Count, decompress and decode an OTLP body, holding its share of the ingest memory
/// budget for as long as the caller keeps the permits: the body (sent and decoded), and
/// `DECODE_FACTOR` times its decoded size for the structures (413 past the whole
/// budget).
fn decode<'s, T: Message + Default + DeserializeOwned>(
    state: &'s AppState,
    tenant: &str,
    headers: &HeaderMap,
    enc: Encoding,
    body: &[u8],
) -> Result<(T, [SemaphorePermit<'s>; 2]), ApiError> {
    crate::server::count_body(state, tenant, body.len());
    let body_permit = crate::door::reserve(state, body.len())?;
    let decoded = crate::server::decoded_body(state, headers, body)?;
    let structures = crate::door::reserve_kib(
        state,
        (decoded.len() / 1024 + 1).saturating_mul(super::grpc::DECODE_FACTOR),
    )?;
    Ok((enc.decode(&decoded)?, [body_permit, structures]))
}

/// `POST /v1/metrics`.
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (enc, res) = match Encoding::of(&headers) {
        Ok(enc) => (
            enc,
            metrics_inner(&state, &tenant, &headers, enc, &body).await,
        ),
        Err(e) => (Encoding::Json, Err(e)),
    };
    answer(&state, "otlp_metrics", enc, res, super::metrics_response)
}

async fn metrics_inner(
    state: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    enc: Encoding,
    body: &[u8],
) -> Result<Outcome, ApiError> {
    let (req, _held) = decode::<ExportMetricsServiceRequest>(state, tenant, headers, enc, body)?;
    let key = crate::server::idempotency_key(headers)?;
    super::export_metrics(state, tenant, key, &req).await
}

fn answer<T: Message + Serialize>(
    state: &AppState,
    route: &str,
    enc: Encoding,
    res: Result<Outcome, ApiError>,
    response: impl FnOnce(Outcome) -> T,
) -> Response {
    match res {
        Ok(o) => {
            state.m.request(route, StatusCode::OK);
            enc.answer(StatusCode::OK, &response(o))
        }
        Err(e) => {
            state.m.request(route, e.status());
            enc.error(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_choose_the_encoding() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            Encoding::of(&m).map_err(|e| e.status())
        };
        assert_eq!(h("application/x-protobuf"), Ok(Encoding::Protobuf));
        assert_eq!(h("application/json; charset=utf-8"), Ok(Encoding::Json));
        assert_eq!(h("text/plain"), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert!(Encoding::of(&HeaderMap::new()).is_err());
    }

    #[test]
    fn json_requests_follow_the_otlp_json_mapping() {
        // Hex ids, a 64-bit time as a string, an enum as a number, camelCase names.
        let body = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},
          "scopeLogs":[{"logRecords":[{"timeUnixNano":"1764432000123456789","severityNumber":9,
          "body":{"stringValue":"hello"},"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
          "attributes":[{"key":"n","value":{"intValue":"42"}}],"unknownField":true}]}]}]}"#;
        let req: ExportLogsServiceRequest = Encoding::Json.decode(body).unwrap();
        let lr = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(lr.time_unix_nano, 1_764_432_000_123_456_789);
        assert_eq!(lr.trace_id.len(), 16);
        assert_eq!(lr.severity_number, 9);
        let bad: Result<ExportLogsServiceRequest, _> =
            Encoding::Json.decode(b"{\"resourceLogs\":7}");
        assert_eq!(bad.unwrap_err().status(), StatusCode::BAD_REQUEST);
        let bad: Result<ExportLogsServiceRequest, _> =
            Encoding::Protobuf.decode(b"\x0a\xff\xff\xff\xff\x0f");
        assert_eq!(bad.unwrap_err().status(), StatusCode::BAD_REQUEST);
    }
}
