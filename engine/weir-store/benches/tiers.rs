//! Flush throughput and query latency over 10M log rows, all hot and then all cold,
//! with and without a time predicate the cold files can be pruned by.
//!
//! `cargo bench --workspace --bench tiers` (`WEIR_BENCH_ROWS` changes the 10M). Rows
//! are `weir_core::sample` logs (300–500 bytes) spread evenly over 10 days, so a flush
//! makes 10 files of ~1M rows and the last day is one of them. Each query runs 5 times;
//! the median is printed. Multi-second runs: timed by hand, not by criterion.

use std::time::{Duration, Instant};

use weir_store::{HotStore, Segment, Table};

const DAY_MS: i64 = 86_400_000;
/// 2030-01-01T00:00:00Z.
const T0: i64 = 1_893_456_000_000;

fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // 2030-01-01 + days, within January (the bench spans 10 days).
    format!(
        "2030-01-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + days - (T0 / 1000).div_euclid(86_400),
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

/// Sample record `i` with its timestamp moved to `ts`.
fn record(i: u64, ts: i64) -> String {
    let r = weir_core::sample::record(i);
    let start = r.find("\"timestamp\":\"").expect("a timestamp") + 13;
    let end = start + r[start..].find('"').expect("its end");
    format!("{}{}{}", &r[..start], rfc3339(ts), &r[end..])
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time_query(s: &HotStore, sql: &str) -> (Duration, i64) {
    let mut times = Vec::new();
    let mut answer = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = s.query("bench", sql).await.expect("query runs");
        times.push(t.elapsed());
        answer = r.to_json().unwrap()["rows"][0][0].as_i64().unwrap_or(-1);
    }
    (median(times), answer)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: u64 = std::env::var("WEIR_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let store = HotStore::open(&dir.path().join("store.redb"), usize::MAX)
        .unwrap()
        .with_cold(&dir.path().join("cold"))
        .unwrap();
    let seg_rows = 10_000u64;
    let step = 10 * DAY_MS / rows as i64;
    let t = Instant::now();
    let mut offset = 0u64;
    while offset < rows {
        let segs: Vec<Segment> = (0..10)
            .map(|k| {
                let first = offset + k * seg_rows;
                let nd: String = (first..(first + seg_rows).min(rows))
                    .map(|i| record(i, T0 + i as i64 * step) + "\n")
                    .collect();
                let b = weir_core::Batch {
                    tenant: "bench".into(),
                    stream: "app".into(),
                    ingest_ts_ms: T0,
                    count: seg_rows as u32,
                    records: nd.into_bytes(),
                    replay_of: None,
                };
                Segment::new(0, first, b).unwrap()
            })
            .filter(|s| s.num_rows() > 0)
            .collect();
        offset += 10 * seg_rows;
        store.commit(0, offset, &segs, &[], &[]).unwrap();
    }
    eprintln!("loaded {rows} rows hot in {:.1?}", t.elapsed());
    let last_day = T0 + 9 * DAY_MS;
    let queries = [
        ("count(*)", "SELECT count(*) FROM logs".to_owned()),
        (
            "errors (level filter)",
            "SELECT count(*) FROM logs WHERE level = 'error'".to_owned(),
        ),
        (
            "last day count, prunable (ts >= X)",
            format!("SELECT count(*) FROM logs WHERE ts >= to_timestamp_millis({last_day})"),
        ),
        (
            "last day count, not prunable (to_unixtime(ts) >= X)",
            format!(
                "SELECT count(*) FROM logs WHERE to_unixtime(ts) >= {}",
                last_day / 1000
            ),
        ),
        (
            "last day message bytes, prunable",
            format!(
                "SELECT sum(length(message)) FROM logs WHERE ts >= to_timestamp_millis({last_day})"
            ),
        ),
        (
            "last day message bytes, not prunable",
            format!(
                "SELECT sum(length(message)) FROM logs WHERE to_unixtime(ts) >= {}",
                last_day / 1000
            ),
        ),
        (
            "distinct hosts last day, from record JSON",
            format!(
                "SELECT count(DISTINCT json_get_str(record, 'host')) FROM logs WHERE ts >= to_timestamp_millis({last_day})"
            ),
        ),
    ];
    let mut hot = Vec::new();
    for (name, sql) in &queries {
        hot.push(time_query(&store, sql).await);
        eprintln!("hot  {name}: {:?}", hot.last().unwrap());
    }
    let t = Instant::now();
    let stats = store.flush_cold(Duration::ZERO).await.unwrap();
    let took = t.elapsed();
    println!(
        "flush: {} rows, {} files, {:.1} MB in {:.2?} = {:.0} rows/s",
        stats.rows,
        stats.files,
        stats.bytes as f64 / 1e6,
        took,
        stats.rows as f64 / took.as_secs_f64()
    );
    assert_eq!(store.tiers("bench", Table::Logs).0.len(), 0, "all cold");
    println!("| query | hot | cold | answer |");
    println!("|---|---|---|---|");
    for ((name, sql), (h, answer)) in queries.iter().zip(hot) {
        let (c, cold_answer) = time_query(&store, sql).await;
        assert_eq!(answer, cold_answer, "{name}: same answer in both tiers");
        println!("| {name} | {h:.1?} | {c:.1?} | {answer} |");
    }
    // What the scans read: files and row groups pruned by statistics.
    for (name, sql) in &queries[4..6] {
        let r = store
            .query("bench", &format!("EXPLAIN ANALYZE {sql}"))
            .await
            .unwrap();
        let text = r.to_json().unwrap().to_string();
        let grab = |key: &str| {
            text.find(key)
                .map(|i| text[i..].split([',', ']']).next().unwrap_or("").to_owned())
                .unwrap_or_else(|| format!("{key}?"))
        };
        println!(
            "{name}: {} / {}",
            grab("files_ranges_pruned_statistics="),
            grab("row_groups_pruned_statistics=")
        );
    }
    // Cold files shred `host` into a column of its own: the same answer without JSON.
    let sql = format!(
        "SELECT count(DISTINCT host) FROM logs WHERE ts >= to_timestamp_millis({last_day})"
    );
    let (c, answer) = time_query(&store, &sql).await;
    println!("| distinct hosts last day, from the `host` column | — | {c:.1?} | {answer} |");
}
