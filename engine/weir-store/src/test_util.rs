//! Helpers of the unit tests: commit records as one segment, read a query's rows.

use serde_json::Value;

use crate::{HotStore, Segment};

/// Commit `records` (JSON values, one NDJSON line each) of tenant `t`'s `stream` as the
/// segment at `offset` of partition 0.
pub(crate) fn commit_records(
    s: &HotStore,
    stream: &str,
    offset: u64,
    ingest_ts_ms: i64,
    records: &[Value],
) {
    let nd: String = records.iter().map(|r| format!("{r}\n")).collect();
    let b = weir_core::Batch {
        tenant: "t".into(),
        stream: stream.into(),
        ingest_ts_ms,
        count: records.len() as u32,
        records: nd.into_bytes(),
        replay_of: None,
    };
    s.commit(
        0,
        offset + 1,
        &[Segment::new(0, offset, b).unwrap()],
        &[],
        &[],
    )
    .unwrap();
}

/// Commit raw NDJSON `nd` of `tenant`'s `stream` as the segment at `offset` of
/// partition 0, bypassing nothing but the checks a client's request would meet first:
/// what a plugin's output or a store written by an older version can hold.
pub(crate) fn commit_ndjson(s: &HotStore, tenant: &str, stream: &str, offset: u64, nd: &str) {
    let b = weir_core::Batch {
        tenant: tenant.into(),
        stream: stream.into(),
        ingest_ts_ms: 1_900_000_000_000,
        count: nd.lines().count() as u32,
        records: nd.as_bytes().to_vec(),
        replay_of: None,
    };
    s.commit(0, offset + 1, &[Segment::forged(0, offset, b)], &[], &[])
        .unwrap();
}

/// Commit samples `(ts, value, host)` of metric `lat` (label `host`) as the metrics
/// segment at `offset`.
pub(crate) fn commit_samples(s: &HotStore, offset: u64, samples: &[(i64, f64, &str)]) {
    let records: Vec<Value> = samples
        .iter()
        .map(|(ts, v, host)| serde_json::json!({"name": "lat", "value": v, "ts": ts, "labels": {"host": host}}))
        .collect();
    commit_records(s, weir_core::names::METRICS_STREAM, offset, 0, &records);
}

/// A store in `dir` with a cold tier (default settings) and no memory bound.
pub(crate) fn open_cold(dir: &std::path::Path) -> HotStore {
    HotStore::open(&dir.join("store.redb"), usize::MAX)
        .unwrap()
        .with_cold(&dir.join("cold"))
        .unwrap()
}

/// A store in `dir` with a cold tier that compacts once `min_files` files of a stream
/// and day exist, whatever their size.
pub(crate) fn open_compacting(dir: &std::path::Path, min_files: usize) -> HotStore {
    HotStore::open(&dir.join("store.redb"), usize::MAX)
        .unwrap()
        .with_cold_options(
            &dir.join("cold"),
            crate::cold::ColdOptions {
                small_bytes: 1 << 30,
                compact_min_files: min_files,
                ..crate::cold::ColdOptions::default()
            },
        )
        .unwrap()
}

/// The rows of `sql` over tenant `t`, as JSON arrays.
pub(crate) async fn rows(s: &HotStore, sql: &str) -> Vec<Value> {
    let r = s.query("t", sql).await.unwrap();
    r.to_json().unwrap()["rows"].as_array().unwrap().clone()
}
