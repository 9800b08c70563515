//! Records/s through an aggregator: realistic 300–500-byte logs (`weir_core::sample`)
//! into 1-minute windows by host and path with count, p50/p99 (DDSketch), distinct
//! users (HyperLogLog) and a top-k — the definition `scripts/bench-agg.sh` uses end to
//! end. Includes the JSON parse of each record.
//!
//! `cargo bench -p weir-agg --bench aggregate`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_agg::{Aggregator, Definition, NoCustom};
use weir_core::aggregation::AggregationConfig;

fn bench(c: &mut Criterion) {
    let def = Arc::new(
        Definition::new(&AggregationConfig {
            lateness: Some("2h".into()),
            group_by: vec!["host".into(), "http.path".into()],
            ..AggregationConfig::new(
                "latency",
                "1m",
                &[
                    "count",
                    "p50(http.duration_ms) as p50",
                    "p99(http.duration_ms) as p99",
                    "distinct(user.id) as users",
                    "topk(3, level) as levels",
                ],
            )
        })
        .unwrap(),
    );
    let n = 10_000u64;
    let lines: Vec<String> = (0..n).map(weir_core::sample::record).collect();
    let times: Vec<i64> = (0..n as i64).map(|i| 1_800_000_000_000 + i).collect();
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(n));
    g.bench_function("count_p50_p99_distinct_topk", |b| {
        let mut a = Aggregator::new();
        a.set_definitions("t", &[("s".into(), def.clone())], &mut NoCustom);
        b.iter(|| {
            a.feed(
                "t",
                "s",
                &times,
                lines.iter().map(|l| l.as_bytes()),
                &mut NoCustom,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
