//! Realistic sample logs for benchmarks and profiling: the load generator (`weir
//! bench`), the plugin benchmarks and the redactor profile all use these, so their
//! numbers describe the same records.

/// One realistic log line (300–500 bytes) with PII in it.
pub fn record(i: u64) -> String {
    let levels = ["info", "info", "info", "warn", "error"];
    let paths = [
        "/api/v1/checkout",
        "/api/v1/users/profile",
        "/api/v1/search?q=shoes",
        "/healthz",
    ];
    serde_json::json!({
        "timestamp": format!("2026-11-28T01:{:02}:{:02}.{:03}Z", (i / 60) % 60, i % 60, i % 1000),
        "level": levels[(i % 5) as usize],
        "service": "checkout",
        "host": format!("web-{}", i % 16),
        "message": format!("user user{}@example.com paid order {} with card 4111 1111 1111 1111 from 10.0.{}.{}", i % 10_000, 100_000 + i, i % 256, i.wrapping_mul(7) % 256),
        "http": {"method": "POST", "path": paths[(i % 4) as usize], "status": 200, "duration_ms": i % 500},
        "user": {"id": i % 10_000, "phone": "+1 555 123 4567"},
        "trace_id": format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    })
    .to_string()
}

/// `n` sample records as NDJSON.
pub fn ndjson(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n as u64 {
        out.extend_from_slice(record(i).as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_records_are_realistic() {
        for i in [0, 7, 12345, u64::MAX / 3] {
            let r = super::record(i);
            assert!((300..=500).contains(&r.len()), "{} bytes: {r}", r.len());
            let v: serde_json::Value = serde_json::from_str(&r).unwrap();
            assert!(v["message"].as_str().unwrap().contains("@example.com"));
        }
        assert_eq!(super::ndjson(3).iter().filter(|&&b| b == b'\n').count(), 3);
    }
}
