//! Long-range metrics queries: raw samples vs the rollups the router reads instead.
//!
//! `cargo bench --workspace --bench rollups` (`WEIR_BENCH_SAMPLES` changes the 6M).
//! 1,000 series with a sample every 72 s over 5 days, all flushed to the cold
//! tier (raw samples plus 1 m and 1 h rollups). Each query runs twice: as written (the
//! router reads the 1 h rollup) and with its lower bound moved 1 ms earlier — the same
//! answer, since no sample lies in that millisecond, but not whole windows, so it reads
//! raw samples. Medians of 5; answers compared.

use std::time::{Duration, Instant};

use weir_store::{HotStore, Segment};

const DAY_MS: i64 = 86_400_000;
/// 2030-01-01T00:00:00Z.
const T0: i64 = 1_893_456_000_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time_query(s: &HotStore, sql: &str) -> (Duration, String) {
    let mut times = Vec::new();
    let mut answer = String::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = s.query("bench", sql).await.expect("query runs");
        times.push(t.elapsed());
        answer = r.to_json().unwrap()["rows"].to_string();
    }
    (median(times), answer)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples: i64 = std::env::var("WEIR_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000_000);
    let series = 1000;
    let per_series = samples / series;
    let step = 5 * DAY_MS / per_series;
    let dir = tempfile::tempdir().unwrap();
    let store = HotStore::open(&dir.path().join("store.redb"), usize::MAX)
        .unwrap()
        .with_cold(&dir.path().join("cold"))
        .unwrap();
    let t = Instant::now();
    let chunk = 50_000;
    let mut offset = 0u64;
    // Time-major order, as scrapes arrive; integer-valued gauges (exact sums).
    let mut i = 0i64;
    while i < samples {
        let nd: String = (i..(i + chunk).min(samples))
            .map(|k| {
                let (n, s) = (k / series, k % series);
                format!(
                    "{{\"name\":\"latency_ms\",\"value\":{},\"ts\":{},\"labels\":{{\"host\":\"h{s}\"}}}}\n",
                    (n * 7 + s) % 1000,
                    T0 + n * step + s
                )
            })
            .collect();
        let b = weir_core::Batch {
            tenant: "bench".into(),
            stream: weir_core::names::METRICS_STREAM.into(),
            ingest_ts_ms: T0,
            count: chunk as u32,
            records: nd.into_bytes(),
            replay_of: None,
        };
        let seg = Segment::new(0, offset, b).unwrap();
        offset += 1;
        store.commit(0, offset, &[seg], &[], &[]).unwrap();
        i += chunk;
    }
    let t_load = t.elapsed();
    let t = Instant::now();
    let stats = store.flush_cold(Duration::ZERO).await.unwrap();
    println!(
        "{samples} samples loaded in {t_load:.1?}; flushed (raw + 1m + 1h rollups) in {:.1?}: {} files, {:.1} MB",
        t.elapsed(),
        stats.files,
        stats.bytes as f64 / 1e6
    );
    let (from, to) = (T0, T0 + 5 * DAY_MS);
    let at = |ms: i64| format!("to_timestamp_millis({ms})");
    let queries = [
        (
            "5 days, daily avg/max per host",
            "SELECT json_get_str(labels, 'host') AS h, date_bin(INTERVAL '1 day', ts) AS d, avg(value), max(value) FROM metrics WHERE ts >= {FROM} AND ts < {TO} GROUP BY 1, 2 ORDER BY 1, 2",
        ),
        (
            "5 days, hourly count/sum",
            "SELECT date_trunc('hour', ts) AS h, count(*), sum(value) FROM metrics WHERE ts >= {FROM} AND ts < {TO} GROUP BY 1 ORDER BY 1",
        ),
        (
            "5 days, total per host",
            "SELECT name, labels, count(value), min(value), max(value) FROM metrics WHERE ts >= {FROM} GROUP BY 1, 2 ORDER BY 1, 2",
        ),
    ];
    println!("| query | raw samples | routed to metrics_1h | ratio |");
    println!("|---|---|---|---|");
    for (name, sql) in queries {
        let routed = sql.replace("{FROM}", &at(from)).replace("{TO}", &at(to));
        let raw = sql
            .replace("{FROM}", &at(from - 1))
            .replace("{TO}", &at(to));
        let (tr, a) = time_query(&store, &raw).await;
        let (tu, b) = time_query(&store, &routed).await;
        // Sums of integers are exact in floats, so averages match to the bit.
        assert_eq!(a, b, "{name}: same answer");
        println!(
            "| {name} | {tr:.1?} | {tu:.1?} | {:.1}× |",
            tr.as_secs_f64() / tu.as_secs_f64()
        );
    }
}
