//! Refuse a request whose announced body (`Content-Length`) is over the limit before
//! reading any of it: a client announcing 100 MiB gets its 413 at once, instead of the
//! server reading up to the limit first. Bodies without a length (chunked) are still
//! cut at the limit by `DefaultBodyLimit` while being read.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

pub async fn refuse_announced_over(
    State(limit): State<usize>,
    req: Request,
    next: Next,
) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = announced.filter(|len| *len > limit as u64) {
        let error = format!("request body of {len} bytes exceeds the limit of {limit} bytes");
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            Json(serde_json::json!({ "error": error })),
        )
            .into_response();
    }
    next.run(req).await
}
