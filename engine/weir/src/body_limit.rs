//! Refuse a request whose announced body (`Content-Length`) is over the limit without
//! keeping any of it. A body at most [`DRAIN_BYTES`] over the limit is read and thrown
//! away first, so that ordinary clients (which send the whole body before reading the
//! answer) get the 413 on a connection that stays usable; a bigger one (a client
//! announcing 100 MiB) is answered at once and the connection closed. Bodies without a
//! length (chunked) are still cut at the limit by `DefaultBodyLimit` while being read.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;

/// Over-limit bodies up to this much beyond the limit are read (and dropped) before
/// the 413.
pub const DRAIN_BYTES: u64 = 16 << 20;

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
        let body = Json(serde_json::json!({ "error": error }));
        if len <= limit as u64 + DRAIN_BYTES {
            let mut incoming = req.into_body();
            while let Some(frame) = incoming.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            return (StatusCode::PAYLOAD_TOO_LARGE, body).into_response();
        }
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            body,
        )
            .into_response();
    }
    next.run(req).await
}
