//! Runs the redactor natively over realistic records, for profiling
//! (`valgrind --tool=callgrind target/release/examples/redact_profile`).

use weir_plugin_sdk::{run_native, Transform};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let mut input = Vec::new();
    for i in 0..n {
        let line = serde_json::json!({
            "timestamp": format!("2026-11-28T01:{:02}:{:02}.{:03}Z", (i / 60) % 60, i % 60, i % 1000),
            "level": if i % 10 == 0 { "error" } else { "info" },
            "service": "checkout",
            "host": format!("web-{}", i % 16),
            "message": format!("user user{i}@example.com paid order {} with card 4111 1111 1111 1111 from 10.0.{}.{}", 100000 + i, i % 256, (i * 7) % 256),
            "http": {"method": "POST", "path": "/api/v1/checkout", "status": 200, "duration_ms": (i % 500) as u64},
            "user": {"id": i, "phone": "+1 555 123 4567"},
            "trace_id": format!("{:032x}", i * 7919),
        });
        input.extend_from_slice(line.to_string().as_bytes());
        input.push(b'\n');
    }
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
