//! OTLP/gRPC: `opentelemetry.proto.collector.{logs,metrics}.v1.*Service/Export` on the
//! gRPC listener, beside Arrow Flight SQL.
//!
//! The tenant is the bearer token of the `authorization` metadata (loopback clients are
//! `default` when no tenants are configured), the stream of log records the
//! `x-weir-stream` metadata (see [`super`]), an optional idempotency key the
//! `idempotency-key` metadata. The token is checked by an interceptor before the
//! message is decoded. Messages are at most 8 MiB decoded (the ingest memory budget /
//! [`DECODE_FACTOR`], or `[ingest] max_decoded_bytes` when smaller) and each holds
//! [`DECODE_FACTOR`] times its size of the budget while it is handled; gzip-compressed
//! requests are accepted.
//!
//! Statuses: `INVALID_ARGUMENT` for what must not be retried (undecodable or too large
//! a message, a bad stream name), `UNAUTHENTICATED`, and under backpressure
//! `RESOURCE_EXHAUSTED` (a tenant's or the log's lag bound) or `UNAVAILABLE` (the node),
//! both carrying a `google.rpc.RetryInfo` (1 s) in the status details and in the
//! `google.rpc.retryinfo-bin` trailer, which is what makes OTLP exporters retry
//! `RESOURCE_EXHAUSTED` and how long they wait.

use std::sync::Arc;

use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};

use super::STREAM_HEADER;
use crate::door::IDEMPOTENCY_HEADER;
use crate::server::{ApiError, AppState};

/// `google.rpc.Status`, the body of `grpc-status-details-bin` and of OTLP/HTTP errors.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The gRPC code of an HTTP-style answer.
pub fn code_of(status: StatusCode) -> Code {
    match status {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// The gRPC status of an error; retryable ones carry `RetryInfo` (1 s).
pub fn status_of(e: ApiError) -> Status {
    let code = code_of(e.status());
    if !e.retryable() && code != Code::Unavailable {
        return Status::new(code, e.message());
    }
    let retry = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: 1,
            nanos: 0,
        }),
    };
    let retry = retry.encode_to_vec();
    let details = RpcStatus {
        code: code as i32,
        message: e.message().to_owned(),
        details: vec![ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: retry.clone(),
        }],
    };
    // Some exporters (OpenTelemetry Python) read the RetryInfo from its own trailer.
    let mut trailers = tonic::metadata::MetadataMap::new();
    trailers.insert_bin(
        "google.rpc.retryinfo-bin",
        tonic::metadata::MetadataValue::from_bytes(&retry),
    );
    Status::with_details_and_metadata(code, e.message(), details.encode_to_vec().into(), trailers)
}

/// How many times its encoded size a decoded OTLP message may take in memory (empty
/// nested messages: 2 bytes on the wire, ~100-200 bytes decoded).
pub const DECODE_FACTOR: usize = 64;

/// The tenant of a gRPC call, found by [`Authenticate`] before its message is decoded.
#[derive(Clone)]
struct GrpcTenant(String);

/// Checks the bearer token on the call's metadata before tonic decodes its message, so
/// a client without a token costs no decoding.
#[derive(Clone)]
pub struct Authenticate {
    state: Arc<AppState>,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let peer = req
            .remote_addr()
            .ok_or_else(|| Status::internal("no peer address"))?;
        let headers = req.metadata().clone().into_headers();
        let tenant = crate::gate::tenant_of(&self.state.config, &headers, peer).map_err(|why| {
            self.state.m.unauthorized();
            Status::unauthenticated(why)
        })?;
        req.extensions_mut().insert(GrpcTenant(tenant));
        Ok(req)
    }
}

type LogsService_ = InterceptedService<LogsServiceServer<Otlp>, Authenticate>;
type MetricsService_ = InterceptedService<MetricsServiceServer<Otlp>, Authenticate>;

/// Both OTLP services over one [`AppState`].
#[derive(Clone)]
pub struct Otlp {
    state: Arc<AppState>,
}

impl Otlp {
    /// The two tonic services, with gzip and the decoded-size limit.
    pub fn services(state: Arc<AppState>) -> (LogsService_, MetricsService_) {
        // A decoded message holds up to ~64 times its encoded size in structures; the
        // largest accepted is the share of the ingest memory budget that bounds.
        let max = (crate::door::INFLIGHT_KIB * 1024 / DECODE_FACTOR)
            .min(state.config.ingest.max_decoded_bytes);
        let o = Otlp {
            state: state.clone(),
        };
        let auth = Authenticate { state };
        (
            InterceptedService::new(
                LogsServiceServer::new(o.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max),
                auth.clone(),
            ),
            InterceptedService::new(
                MetricsServiceServer::new(o)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max),
                auth,
            ),
        )
    }

    /// The tenant [`Authenticate`] found.
    fn tenant<T>(req: &Request<T>) -> Result<String, Status> {
        req.extensions()
            .get::<GrpcTenant>()
            .map(|t| t.0.clone())
            .ok_or_else(|| Status::unauthenticated("missing or unknown bearer token"))
    }

    /// Hold the ingest memory a decoded request may take (see [`DECODE_FACTOR`]).
    fn hold(&self, encoded: usize) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        crate::door::reserve_kib(
            &self.state,
            (encoded / 1024 + 1).saturating_mul(DECODE_FACTOR),
        )
        .map_err(status_of)
    }

    /// A text metadata value (the stream, the idempotency key).
    fn text<T>(req: &Request<T>, name: &str) -> Result<Option<String>, Status> {
        match req.metadata().get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.trim().to_owned()))
                .map_err(|_| Status::invalid_argument(format!("{name} is not text"))),
        }
    }

    fn done(&self, route: &str, res: &Result<super::Outcome, ApiError>) {
        let status = match res {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status(),
        };
        self.state.m.request(route, status);
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let tenant = Self::tenant(&request)?;
        let _held = self.hold(request.get_ref().encoded_len())?;
        let stream = Self::text(&request, STREAM_HEADER)?;
        let key = Self::text(&request, IDEMPOTENCY_HEADER)?;
        let req = request.into_inner();
        let state = &self.state;
        crate::server::count_body(state, &tenant, req.encoded_len());
        let res = super::export_logs(state, &tenant, stream.as_deref(), key.as_deref(), &req).await;
        self.done("otlp_grpc_logs", &res);
        Ok(Response::new(super::logs_response(res.map_err(status_of)?)))
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let tenant = Self::tenant(&request)?;
        let _held = self.hold(request.get_ref().encoded_len())?;
        let key = Self::text(&request, IDEMPOTENCY_HEADER)?;
        let req = request.into_inner();
        let state = &self.state;
        crate::server::count_body(state, &tenant, req.encoded_len());
        let res = super::export_metrics(state, &tenant, key.as_deref(), &req).await;
        self.done("otlp_grpc_metrics", &res);
        Ok(Response::new(super::metrics_response(
            res.map_err(status_of)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backpressure_is_retryable_with_retry_info() {
        let s = status_of(ApiError::busy("log lagging"));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let details = RpcStatus::decode(s.details()).unwrap();
        assert_eq!(
            details.details[0].type_url,
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        let retry = RetryInfo::decode(details.details[0].value.as_slice()).unwrap();
        assert_eq!(retry.retry_delay.unwrap().seconds, 1);
        assert!(s.metadata().get_bin("google.rpc.retryinfo-bin").is_some());
        let s = status_of(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "disk full"));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.details().is_empty());
        let s = status_of(ApiError::bad_request("bad stream"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.details().is_empty());
        assert_eq!(
            code_of(StatusCode::PAYLOAD_TOO_LARGE),
            Code::InvalidArgument
        );
        assert_eq!(code_of(StatusCode::UNAUTHORIZED), Code::Unauthenticated);
    }
}
