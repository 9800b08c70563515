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

/// `scrapes` scrapes of `series` metric series, 15 s apart, each as NDJSON of normalised
/// samples (`{"name","kind","value","ts","labels"}`): a third counters growing by 0–19,
/// a third gauges of bytes and a third percentages with two decimals (random walks).
/// Deterministic.
pub fn metric_scrapes(series: usize, scrapes: usize) -> Vec<String> {
    let t0 = 1_900_000_000_000i64;
    let mut state = vec![0i64; series];
    for (s, v) in state.iter_mut().enumerate() {
        *v = match s % 3 {
            0 => 0,
            1 => 1_000_000_000 + s as i64 * 1_000_000,
            _ => 5_000,
        };
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(scrapes);
    for scrape in 0..scrapes {
        let mut nd = String::new();
        for (s, v) in state.iter_mut().enumerate() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let step = (rng % 21) as i64 - 10;
            let (name, kind, value) = match s % 3 {
                0 => {
                    *v += (rng % 20) as i64;
                    ("http_requests_total", "counter", *v as f64)
                }
                1 => {
                    *v += step * 4096;
                    ("memory_bytes", "gauge", *v as f64)
                }
                _ => {
                    *v = (*v + step).clamp(0, 10_000);
                    ("cpu_percent", "gauge", *v as f64 / 100.0)
                }
            };
            nd.push_str(
                &serde_json::json!({
                    "name": name, "kind": kind, "value": value,
                    "ts": t0 + scrape as i64 * 15_000,
                    "labels": {"host": format!("web-{}", s / 3), "region": if s % 2 == 0 { "eu" } else { "us" }},
                })
                .to_string(),
            );
            nd.push('\n');
        }
        out.push(nd);
    }
    out
}

/// Scrapes of [`metric_scrapes`] as one OpenMetrics text (families together, each series
/// in time order), as `promtool tsdb create-blocks-from openmetrics` reads it.
pub fn openmetrics(scrapes: &[String]) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    // family → (kind, series text → [(ts, value)])
    type Series = BTreeMap<String, Vec<(i64, f64)>>;
    let mut families: BTreeMap<String, (String, Series)> = BTreeMap::new();
    for scrape in scrapes {
        for line in scrape.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a sample");
            let name = v["name"].as_str().unwrap_or_default();
            let kind = v["kind"].as_str().unwrap_or("gauge");
            let family = name.strip_suffix("_total").unwrap_or(name).to_owned();
            let labels: Vec<String> = v["labels"]
                .as_object()
                .map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            let series = format!("{name}{{{}}}", labels.join(","));
            families
                .entry(family)
                .or_insert_with(|| (kind.to_owned(), BTreeMap::new()))
                .1
                .entry(series)
                .or_default()
                .push((
                    v["ts"].as_i64().unwrap_or(0),
                    v["value"].as_f64().unwrap_or(0.0),
                ));
        }
    }
    let mut out = String::new();
    for (family, (kind, series)) in families {
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for (s, points) in series {
            for (ts, v) in points {
                let _ = writeln!(out, "{s} {v} {}.{:03}", ts / 1000, ts % 1000);
            }
        }
    }
    out.push_str("# EOF\n");
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
