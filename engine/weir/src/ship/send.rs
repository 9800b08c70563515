//! Sending spooled batches: `POST {to}/api/v1/logs?stream=S` with the gzip body,
//! `Content-Encoding: gzip`, the bearer token and the batch's `Idempotency-Key`, until
//! the server gives a verdict.
//!
//! - 2xx: acknowledged (the answer's `rejected` lines are counted; an
//!   `Idempotent-Replayed: true` answer is a resend the server already had).
//! - 408, 429, 5xx, and failures to connect or read the answer: retried after
//!   [`delay`], forever (the spool holds the batch; `--when-full` decides what the
//!   sources do meanwhile).
//! - 401, 403: retried the same way, logged as errors: a wrong or rotated token is an
//!   operator's problem to fix, not a reason to set data aside.
//! - other 4xx (400, 413, 415, 422, ...): the batch can never succeed as it is; it is
//!   dead and moved to `spool/rejected/` with the answer.

use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

use super::metrics::ShipMetrics;
use super::spool::Outgoing;

/// The first retry waits at least this long.
pub const BASE_DELAY: Duration = Duration::from_millis(100);
/// No backoff waits longer (without a `Retry-After`) by default (`--max-backoff-ms`).
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A `Retry-After` beyond this is taken as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How long to wait before attempt `attempt + 1` (`attempt` counts failures, from 0).
/// Without `retry_after`: full jitter, uniform in `[BASE_DELAY, min(cap,
/// BASE_DELAY·2^attempt)]`. With it: never earlier than the server asked, plus up to
/// 20% so that clients told the same second do not all come back at once. `unit` is a
/// uniform random number in `[0, 1)`.
pub fn delay(attempt: u32, retry_after: Option<Duration>, cap: Duration, unit: f64) -> Duration {
    if let Some(ra) = retry_after {
        let ra = ra.min(MAX_RETRY_AFTER);
        return ra + ra.mul_f64(0.2 * unit);
    }
    let ceiling = BASE_DELAY
        .saturating_mul(1u32 << attempt.min(16))
        .min(cap)
        .max(BASE_DELAY);
    BASE_DELAY + (ceiling - BASE_DELAY).mul_f64(unit)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The server's verdict on a batch.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Acked {
        accepted: u64,
        rejected: u64,
        replayed: bool,
    },
    /// Refused as a whole; the reason (status and answer).
    Dead(String),
}

enum Attempt {
    Done(Verdict),
    Retry {
        reason: &'static str,
        after: Option<Duration>,
        why: String,
    },
}

#[derive(Deserialize, Default)]
struct Answer {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    rejected: u64,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

pub struct Sender {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    /// Longest backoff without a `Retry-After`.
    pub max_backoff: Duration,
}

/// An error with its causes (reqwest's own text hides TLS and connection reasons).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl Sender {
    pub fn new(
        to: &str,
        stream: &str,
        token: Option<String>,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> reqwest::Result<Self> {
        let mut client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        if let Some(pem) = ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                client = client.add_root_certificate(cert);
            }
        }
        Ok(Sender {
            client: client.build()?,
            url: format!("{}/api/v1/logs?stream={stream}", to.trim_end_matches('/')),
            token,
            max_backoff: MAX_DELAY,
        })
    }

    async fn attempt(&self, b: &Outgoing) -> Attempt {
        let mut req = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/x-ndjson")
            .header(CONTENT_ENCODING, "gzip")
            .header("idempotency-key", &b.key)
            .body(b.body.clone());
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: "network",
                    after: None,
                    why: chain(&e),
                }
            }
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                // The server may have committed: the resend carries the same key.
                return Attempt::Retry {
                    reason: "network",
                    after: None,
                    why: format!("reading the answer: {e}"),
                };
            }
        };
        let short: String = text.chars().take(500).collect();
        if status.is_success() {
            let a: Answer = serde_json::from_str(&text).unwrap_or_default();
            if a.rejected > 0 {
                let first: Vec<String> = a.errors.iter().take(3).map(|e| e.to_string()).collect();
                tracing::warn!(key = %b.key, rejected = a.rejected, first = %first.join(", "), "the server rejected lines of a batch");
            }
            return Attempt::Done(Verdict::Acked {
                accepted: a.accepted,
                rejected: a.rejected,
                replayed,
            });
        }
        let reason = match status {
            StatusCode::TOO_MANY_REQUESTS => "429",
            StatusCode::REQUEST_TIMEOUT => "408",
            StatusCode::SERVICE_UNAVAILABLE => "503",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "auth",
            s if s.is_server_error() => "5xx",
            _ => return Attempt::Done(Verdict::Dead(format!("{status}: {short}"))),
        };
        Attempt::Retry {
            reason,
            after,
            why: format!("{status}: {short}"),
        }
    }

    /// Send `b` until the server gives a verdict; None when `stop` turns true first
    /// (the batch stays in the spool).
    pub async fn deliver(
        &self,
        b: &Outgoing,
        m: &ShipMetrics,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<Verdict> {
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return None;
            }
            m.requests.inc();
            let attempt = tokio::select! {
                a = self.attempt(b) => a,
                _ = stop.wait_for(|s| *s) => return None,
            };
            match attempt {
                Attempt::Done(v) => return Some(v),
                Attempt::Retry { reason, after, why } => {
                    m.retry(reason);
                    let wait = delay(failures, after, self.max_backoff, fastrand::f64());
                    if reason == "auth" {
                        tracing::error!(key = %b.key, %why, "the server refuses the token; retrying");
                    } else if failures.is_multiple_of(10) {
                        tracing::warn!(key = %b.key, %why, failures, wait_ms = wait.as_millis() as u64, "send failed; retrying");
                    }
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return None,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_grows_within_its_bounds() {
        for attempt in 0..40 {
            for unit in [0.0, 0.5, 0.999] {
                let d = delay(attempt, None, MAX_DELAY, unit);
                assert!(d >= BASE_DELAY && d <= MAX_DELAY, "{attempt} {unit}: {d:?}");
            }
        }
        assert_eq!(delay(0, None, MAX_DELAY, 0.999), BASE_DELAY);
        assert!(delay(3, None, MAX_DELAY, 0.999) > Duration::from_millis(790));
        assert!(delay(3, None, MAX_DELAY, 0.999) <= Duration::from_millis(800));
        assert_eq!(delay(30, None, MAX_DELAY, 1.0), MAX_DELAY);
        // Full jitter: the low end stays at the base whatever the attempt.
        assert_eq!(delay(30, None, MAX_DELAY, 0.0), BASE_DELAY);
        let cap = Duration::from_secs(1);
        assert_eq!(delay(30, None, cap, 1.0), cap);
    }

    #[test]
    fn retry_after_is_honoured_never_earlier_and_bounded() {
        let two = Duration::from_secs(2);
        assert_eq!(delay(0, Some(two), MAX_DELAY, 0.0), two);
        assert!(delay(9, Some(two), MAX_DELAY, 0.999) <= Duration::from_millis(2400));
        assert!(delay(9, Some(two), MAX_DELAY, 0.999) >= two);
        assert!(delay(0, Some(Duration::from_secs(86400)), MAX_DELAY, 0.0) == MAX_RETRY_AFTER);

        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(60);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
