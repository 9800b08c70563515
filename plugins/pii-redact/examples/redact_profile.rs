//! Runs the redactor natively over realistic records, for profiling
//! (`valgrind --tool=callgrind target/release/examples/redact_profile`).

use weir_plugin_sdk::{run_native, Transform};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let input = weir_core::sample::ndjson(n);
    let mut p = pii_redact::PiiRedact::new(&serde_json::json!({})).unwrap();
    let t = std::time::Instant::now();
    let out = run_native(&mut p, &input).unwrap();
    let el = t.elapsed();
    println!(
        "{n} records, {} bytes in, {} out, {:.2} µs/record",
        input.len(),
        out.len(),
        el.as_secs_f64() * 1e6 / n as f64
    );
}
