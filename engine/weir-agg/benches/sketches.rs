//! Sketch insert cost: `cargo bench -p weir-agg --bench sketches`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use weir_agg::{DDSketch, HyperLogLog};

fn inserts(c: &mut Criterion) {
    // Skewed latencies (ms), precomputed so only the insert is measured.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let values: Vec<f64> = (0..10_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 8.0).exp()
        })
        .collect();
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let mut g = c.benchmark_group("sketch_insert");
    g.throughput(Throughput::Elements(values.len() as u64));
    g.bench_function("ddsketch_1pct", |b| {
        let mut s = DDSketch::new(0.01, 2048);
        b.iter(|| {
            for v in &values {
                s.add(black_box(*v));
            }
        })
    });
    g.bench_function("hll_p14", |b| {
        let mut h = HyperLogLog::new(14);
        b.iter(|| {
            for k in &keys {
                h.add(black_box(k.as_bytes()));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, inserts);
criterion_main!(benches);
