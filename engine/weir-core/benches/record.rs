//! Cost of the record rules per record, against what ingest did before them
//! (`std::str::from_utf8` + `serde_json::from_slice::<IgnoredAny>`), over the load
//! generator's records: `cargo bench -p weir-core --bench record`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use weir_core::record::Checker;

fn records(c: &mut Criterion) {
    let recs: Vec<String> = (0..1000).map(weir_core::sample::record).collect();
    let mut g = c.benchmark_group("record_check");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("old_utf8_ignored_any", |b| {
        b.iter(|| {
            for r in &recs {
                let r = black_box(r.as_bytes());
                std::str::from_utf8(r).unwrap();
                serde_json::from_slice::<serde::de::IgnoredAny>(r).unwrap();
            }
        })
    });
    g.bench_function("checker_and_event_time", |b| {
        let mut ch = Checker::default();
        b.iter(|| {
            for r in &recs {
                let t = ch.check(black_box(r.as_bytes())).unwrap();
                black_box(t.event_time());
            }
        })
    });
    g.bench_function("checker_only", |b| {
        let mut ch = Checker::default();
        b.iter(|| {
            for r in &recs {
                black_box(ch.check(black_box(r.as_bytes())).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, records);
criterion_main!(benches);
