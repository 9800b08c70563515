//! Aggregation checkpoint time against state size: an aggregator holding N open
//! groups (each with a DDSketch of 20 values and an exact distinct set) is encoded
//! and written with its offset in one redb transaction, as a worker does.
//!
//! `cargo bench -p weir-store --bench checkpoint`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weir_agg::{Aggregator, Definition, NoCustom};
use weir_core::aggregation::AggregationConfig;
use weir_store::HotStore;

fn aggregator(groups: usize) -> (Aggregator, Arc<Definition>) {
    let def = Arc::new(
        Definition::new(&AggregationConfig {
            group_by: vec!["g".into()],
            max_groups: Some(1_000_000),
            ..AggregationConfig::new(
                "bench",
                "1h",
                &["count", "p99(ms) as p99", "distinct(user) as users"],
            )
        })
        .unwrap(),
    );
    let mut a = Aggregator::new();
    a.set_definitions("t", &[("s".into(), def.clone())], &mut NoCustom);
    let lines: Vec<Vec<u8>> = (0..groups * 20)
        .map(|i| {
            format!(
                "{{\"g\":{},\"ms\":{},\"user\":{}}}",
                i % groups,
                i % 977,
                i % 31
            )
            .into_bytes()
        })
        .collect();
    let times = vec![1_000i64; lines.len()];
    a.feed(
        "t",
        "s",
        &times,
        lines.iter().map(Vec::as_slice),
        &mut NoCustom,
    );
    (a, def)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregation_checkpoint");
    g.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let store = HotStore::open(&dir.path().join("store.redb"), usize::MAX).unwrap();
    for groups in [1_000usize, 10_000, 100_000] {
        let (a, def) = aggregator(groups);
        let bytes = a.encode().len();
        eprintln!("{groups} groups: {bytes} bytes of state");
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut off = 0;
        g.bench_with_input(BenchmarkId::from_parameter(groups), &groups, |b, _| {
            b.iter(|| {
                off += 1;
                let state = a.encode();
                store
                    .checkpoint_aggregation(
                        0,
                        off,
                        &state,
                        &[],
                        std::slice::from_ref(&def),
                        &mut NoCustom,
                    )
                    .unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
