//! OTLP/gRPC: `opentelemetry.proto.collector.{logs,metrics}.v1.*Service/Export` on the
//! gRPC listener, beside Arrow Flight SQL.
//!
//! The tenant is the bearer token of the `authorization` metadata (loopback clients are
//! `default` when no tenants are configured), the stream of log records the
//! `x-weir-stream` metadata (see [`super`]), an optional idempotency key the
//! `idempotency-key` metadata. Messages are at most `[ingest]
//! max_decoded_bytes` decoded; gzip-compressed requests are accepted.
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
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
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

/// Both OTLP services over one [`AppState`].
#[derive(Clone)]
pub struct Otlp {
    state: Arc<AppState>,
}

impl Otlp {
    /// The two tonic services, with gzip and the decoded-size limit.
    pub fn services(state: Arc<AppState>) -> (LogsServiceServer<Otlp>, MetricsServiceServer<Otlp>) {
        let max = state.config.ingest.max_decoded_bytes;
        let o = Otlp { state };
        (
            LogsServiceServer::new(o.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max),
            MetricsServiceServer::new(o)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max),
        )
    }

    fn tenant<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let peer = req
            .remote_addr()
            .ok_or_else(|| Status::internal("no peer address"))?;
        let headers = req.metadata().clone().into_headers();
        crate::gate::tenant_of(&self.state.config, &headers, peer).map_err(|why| {
            self.state.m.unauthorized();
            Status::unauthenticated(why)
        })
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
        let tenant = self.tenant(&request)?;
        let stream = Self::text(&request, STREAM_HEADER)?;
        let key = Self::text(&request, IDEMPOTENCY_HEADER)?;
        let req = request.into_inner();
        let state = &self.state;
        crate::server::count_body(state, &tenant, req.encoded_len());
        let res = super::export_logs(state, &tenant, stream.as_deref(), key.as_deref(), &req).await;
        self.done("otlp_grpc_logs", &res);
        let o = res.map_err(status_of)?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (o.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: o.rejected as i64,
                error_message: o.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let tenant = self.tenant(&request)?;
        let key = Self::text(&request, IDEMPOTENCY_HEADER)?;
        let req = request.into_inner();
        let state = &self.state;
        crate::server::count_body(state, &tenant, req.encoded_len());
        let res = super::export_metrics(state, &tenant, key.as_deref(), &req).await;
        self.done("otlp_grpc_metrics", &res);
        let o = res.map_err(status_of)?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: (o.rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: o.rejected as i64,
                error_message: o.message,
            }),
        }))
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
