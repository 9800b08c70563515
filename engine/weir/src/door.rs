//! The door: where the records of every ingest protocol meet the same rules and the log.
//!
//! A protocol handler (Weir's own NDJSON, OTLP, Prometheus remote-write, TCP/syslog)
//! authenticates its client, decodes the request into NDJSON records of one
//! [`Payload`] and hands them to [`admit`], which:
//!
//! 1. checks every record by the record rules and the event-time range
//!    ([`crate::ingest::parse_body`]: UTF-8, JSON object, finite numbers, depth, ...);
//! 2. for metrics, checks each sample and applies the tenant's series policy
//!    ([`crate::samples::check`]);
//! 3. appends what is kept to the target's log partition and waits until it is durable.
//!
//! A request may carry an idempotency key ([`admit_once`]): the log remembers it with
//! the answer in the transaction that appends the request, and a retry with the same
//! key appends nothing and gets that answer.
//!
//! Nothing reaches the log any other way, so a record that OTLP or syslog produced is
//! held to exactly the rules of one posted to `/api/v1/logs`. A rejected record costs
//! only itself; a refusal of the log (backpressure, full disk) refuses the whole request
//! and appends nothing.

use tokio::sync::SemaphorePermit;
use weir_core::partition::partition_for;
use weir_core::Batch;
use weir_transport::{LogError, Once, OnceOutcome, Remembered};

use crate::ingest::{parse_body, Parsed};
use crate::server::{ApiError, AppState};

/// Most records in one log entry; larger requests become several entries of one append.
pub const ENTRY_RECORDS: usize = 4096;
/// Most NDJSON bytes in one log entry.
pub const ENTRY_BYTES: usize = 4 << 20;

/// What a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Log records for the target's stream.
    Logs,
    /// Metric samples (`{"name","value","ts","labels","kind"}`) for the metrics stream.
    Metrics,
}

/// Where admitted records go.
#[derive(Debug, Clone)]
pub struct Target {
    pub tenant: String,
    pub stream: String,
    /// Partition key: records with the same key keep their order.
    pub key: Option<String>,
    pub what: Payload,
}

impl Target {
    /// Log records of `tenant` for `stream`, which must be a valid, non-reserved name.
    pub fn logs(tenant: String, stream: String, key: Option<String>) -> Result<Self, ApiError> {
        check_stream(&stream)?;
        Ok(Target {
            tenant,
            stream,
            key,
            what: Payload::Logs,
        })
    }

    /// Metric samples of `tenant`.
    pub fn metrics(tenant: String, key: Option<String>) -> Self {
        Target {
            tenant,
            stream: weir_core::names::METRICS_STREAM.to_owned(),
            key,
            what: Payload::Metrics,
        }
    }
}

/// Why a stream name is refused, as the 400 every protocol answers.
pub fn check_stream(stream: &str) -> Result<(), ApiError> {
    if !weir_core::names::is_valid_name(stream) {
        return Err(ApiError::bad_request(
            "stream must be 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    if weir_core::names::is_reserved_stream(stream) {
        return Err(ApiError::bad_request(
            "stream names starting with '_' are reserved (metrics go to /api/v1/metrics)",
        ));
    }
    Ok(())
}

/// Reserve room for `bytes` of request data (twice: compressed and decoded) in the
/// node's ingest memory budget, or answer 429.
pub fn reserve(state: &AppState, bytes: usize) -> Result<SemaphorePermit<'_>, ApiError> {
    let kib = (bytes / 1024 + 1).min(u32::MAX as usize) as u32;
    state
        .inflight
        .try_acquire_many(kib.saturating_mul(2))
        .map_err(|_| ApiError::busy("too many bytes in flight; retry later"))
}

/// Check `ndjson` record by record, append what is kept and wait until it is durable
/// (the protocols without idempotency keys: TCP, remote-write).
/// `ts_ms` is the ingest time (and a sample's time when it has none). The answer lists
/// kept and rejected records (line numbers are 1-based positions in `ndjson`).
pub async fn admit(
    state: &AppState,
    target: &Target,
    ndjson: &[u8],
    ts_ms: i64,
) -> Result<Parsed, ApiError> {
    match admit_once(state, &[(target.clone(), ndjson)], ts_ms, None, &|_| {
        Vec::new()
    })
    .await?
    {
        Admitted::Fresh(mut answers) => Ok(answers.pop().unwrap_or_default()),
        Admitted::Repeated(_) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "a request without an idempotency key was answered as a repeat",
        )),
    }
}

/// The answer of [`admit_once`].
#[derive(Debug)]
pub enum Admitted {
    /// Checked and appended now: per part, what was kept and refused.
    Fresh(Vec<Parsed>),
    /// The key was remembered: nothing was appended; the first attempt's answer.
    Repeated(Vec<u8>),
}

/// Header (and gRPC metadata key) of idempotent requests.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// An idempotency key is 1 to 255 characters of visible ASCII.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1-255 characters of visible ASCII",
        ));
    }
    Ok(())
}

/// What identifies a request's content under its key: its targets and records.
fn fingerprint(parts: &[(Target, &[u8])]) -> u64 {
    let mut fields: Vec<&[u8]> = Vec::with_capacity(parts.len() * 3);
    for (t, nd) in parts {
        fields.push(t.stream.as_bytes());
        fields.push(t.key.as_deref().unwrap_or("").as_bytes());
        fields.push(nd);
    }
    weir_core::partition::fnv1a64(&fields)
}

/// Check the parts of one request (an OTLP request names a stream per resource) and
/// append everything kept in one log transaction — all of it is durable, or none of it
/// is — under an optional idempotency `key` (of the parts' tenant): a key the
/// log remembers is answered with the answer its first request got (`answer` of what
/// that request kept and refused, stored with the key in the transaction that appended
/// it), and nothing is appended; the same key with other content is refused (422).
pub async fn admit_once(
    state: &AppState,
    parts: &[(Target, &[u8])],
    ts_ms: i64,
    key: Option<&str>,
    answer: &(dyn Fn(&[Parsed]) -> Vec<u8> + Sync),
) -> Result<Admitted, ApiError> {
    let once = match (key, parts.first()) {
        (Some(k), Some((t, _))) => {
            check_key(k)?;
            let fp = fingerprint(parts);
            if let Some(r) = state.log.remembered(&t.tenant, k)? {
                return repeated(r, fp);
            }
            Some((t.tenant.clone(), k.to_owned(), fp))
        }
        _ => None,
    };
    let mut answers = Vec::with_capacity(parts.len());
    let mut items: Vec<(u32, Batch)> = Vec::new();
    for (target, ndjson) in parts {
        let parsed = check(state, target, ndjson, ts_ms);
        let partition = partition_for(
            &target.tenant,
            &target.stream,
            target.key.as_deref(),
            state.log.partitions(),
        );
        items.extend(split_entries(&parsed.records).map(|(count, records)| {
            (
                partition,
                Batch {
                    tenant: target.tenant.clone(),
                    stream: target.stream.clone(),
                    ingest_ts_ms: ts_ms,
                    count,
                    records: records.to_vec(),
                    replay_of: None,
                },
            )
        }));
        answers.push(parsed);
    }
    match once {
        None if items.is_empty() => {}
        None => {
            let wait = state.log.append(items)?;
            match wait.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(LogError::Closed.into()),
            }
        }
        // A keyed request is remembered even when it appends nothing, so a retry gets
        // the same answer.
        Some((tenant, key, fingerprint)) => {
            let once = Once {
                tenant,
                key,
                fingerprint,
                answer: answer(&answers),
            };
            let wait = state.log.append_once(items, once)?;
            match wait.await {
                Ok(Ok(OnceOutcome::Appended(_))) => {}
                Ok(Ok(OnceOutcome::Repeated(r))) => return repeated(r, fingerprint),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(LogError::Closed.into()),
            }
        }
    }
    for ((target, _), parsed) in parts.iter().zip(&answers) {
        state.m.rejected(&target.tenant, parsed.rejected);
        state.m.accepted(&target.tenant, parsed.count);
    }
    Ok(Admitted::Fresh(answers))
}

fn repeated(r: Remembered, fingerprint: u64) -> Result<Admitted, ApiError> {
    if r.fingerprint != fingerprint {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used for a request with other content",
        ));
    }
    Ok(Admitted::Repeated(r.answer))
}

/// The record rules (and for metrics the sample rules and series policy) over `ndjson`.
fn check(state: &AppState, target: &Target, ndjson: &[u8], ts_ms: i64) -> Parsed {
    let parsed = parse_body(ndjson, state.config.ingest.max_record_bytes);
    match target.what {
        Payload::Logs => parsed,
        Payload::Metrics => {
            let policy = state.config.series_policy(&target.tenant);
            crate::samples::check(parsed, ts_ms, &state.series.tenant(&target.tenant, &policy))
        }
    }
}

/// Split validated NDJSON into entries of at most [`ENTRY_RECORDS`] records and
/// [`ENTRY_BYTES`] bytes (a single larger record stands alone).
fn split_entries(records: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        let mut count = 0u32;
        while end < rest.len() && (count as usize) < ENTRY_RECORDS {
            let nl = rest[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| end + i + 1);
            if count > 0 && nl > ENTRY_BYTES {
                break;
            }
            end = nl;
            count += 1;
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some((count, head))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_by_count_and_size() {
        let recs = b"{}\n".repeat(ENTRY_RECORDS * 2 + 1);
        let parts: Vec<u32> = split_entries(&recs).map(|(n, _)| n).collect();
        assert_eq!(parts, vec![ENTRY_RECORDS as u32, ENTRY_RECORDS as u32, 1]);
        let big = format!("{{\"a\":\"{}\"}}\n", "x".repeat(ENTRY_BYTES));
        let two = format!("{big}{{}}\n");
        let parts: Vec<(u32, usize)> = split_entries(two.as_bytes())
            .map(|(n, b)| (n, b.len()))
            .collect();
        assert_eq!(parts, vec![(1, big.len()), (1, 3)]);
        let total: usize = split_entries(&recs).map(|(_, b)| b.len()).sum();
        assert_eq!(total, recs.len());
    }

    #[test]
    fn keys_and_fingerprints() {
        assert!(check_key("shipper-1:42").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a b").is_err());
        assert!(check_key(&"k".repeat(256)).is_err());
        assert!(check_key("é").is_err());
        let t = |s: &str| Target::logs("t".into(), s.into(), None).unwrap();
        let a = fingerprint(&[(t("a"), b"{}\n")]);
        assert_eq!(a, fingerprint(&[(t("a"), b"{}\n")]));
        assert_ne!(a, fingerprint(&[(t("b"), b"{}\n")]));
        assert_ne!(a, fingerprint(&[(t("a"), b"{ }\n")]));
    }

    #[test]
    fn streams_are_checked_the_same_for_every_protocol() {
        assert!(check_stream("app.web-1").is_ok());
        assert!(check_stream("").is_err());
        assert!(check_stream("_metrics").is_err());
        assert!(check_stream(&"x".repeat(65)).is_err());
        assert!(check_stream("a b").is_err());
    }
}
