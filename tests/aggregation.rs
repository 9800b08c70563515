//! End-to-end tests of windowed aggregation: the real `weir` binary, its `aggregates`
//! table checked against values computed here from the same input.

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::Server;

/// 2030-01-15T08:00:00Z in epoch ms: minute-aligned.
const T0: i64 = 1_894_694_400_000;

const CONFIG: &str = r#"
[aggregation]
checkpoint_interval_ms = 100
[tenants.acme]
tokens = ["acme-token"]
[tenants.globex]
tokens = ["globex-token"]
[[tenants.acme.streams.app.aggregations]]
name = "by_service"
window = "10s"
lateness = "2s"
group_by = ["service"]
functions = ["count", "sum(latency_ms)", "min(latency_ms)", "max(latency_ms)", "avg(latency_ms) as avg", "p99(latency_ms) as p99", "distinct(user) as users", "topk(2, path) as paths", "rate"]
[[tenants.acme.streams.app.aggregations]]
name = "errors"
window = "1m"
hop = "30s"
where = { level = "error" }
functions = ["count"]
[[tenants.acme.streams._metrics.aggregations]]
name = "cpu"
window = "10s"
group_by = ["labels.host"]
functions = ["count", "max(value) as max", "avg(value) as avg"]
"#;

/// A deterministic xorshift generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Roughly log-normal latencies: skewed, with a long tail.
    fn latency(&mut self) -> f64 {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0 + 1e-6;
        let v = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
        ((3.0 + 1.2 * z).exp() * 100.0).round() / 100.0
    }
}

fn event(rng: &mut Rng, i: u64, ts: i64, service: &str) -> Value {
    json!({
        "ts": ts,
        "service": service,
        "level": if i.is_multiple_of(10) { "error" } else { "info" },
        "latency_ms": rng.latency(),
        "user": format!("u{}", rng.next() % 50),
        "message": format!("failure {}", i % 7 % (1 + i % 3)),
        "path": if i.is_multiple_of(4) { "/hot".to_owned() } else { format!("/p{}", i % 11) },
    })
}

async fn post(s: &Server, key: &str, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/logs?stream=app&key={key}", s.base))
        .bearer_auth("acme-token")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
}

fn exact_quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(q * (v.len() - 1) as f64).floor() as usize]
}

/// The rows of the `aggregates` table by (aggregation, window start, group).
async fn rows(s: &Server, token: &str) -> BTreeMap<(String, String, String), Value> {
    let (st, v) = s
        .query(
            token,
            "SELECT aggregation, window_start, group_key, count, late, results, anomaly, partitions \
             FROM aggregates ORDER BY aggregation, window_start, group_key",
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_str().unwrap().to_owned(),
            );
            let mut results: Value = serde_json::from_str(r[5].as_str().unwrap()).unwrap();
            results["_count"] = r[3].clone();
            results["_late"] = r[4].clone();
            (key, results)
        })
        .collect()
}

fn iso(ms: i64) -> String {
    // window_start comes back as RFC 3339 text; build the same text for a start.
    let secs = ms / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // 2030-01-15 is day 21929 since the epoch; the tests stay within that day.
    assert_eq!(days, 21_929);
    format!(
        "2030-01-15T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_over_logs_and_metrics_match_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // (event, counted in the window's values?)
    let mut sent: Vec<(Value, bool)> = Vec::new();
    // 3000 events over 30 s, 500 per request, requests spread over four keys.
    for r in 0..6u64 {
        let batch: Vec<Value> = (r * 500..r * 500 + 500)
            .map(|i| event(&mut rng, i, T0 + i as i64 * 10, &format!("s{}", i % 3)))
            .collect();
        post(&s, &format!("k{}", r % 4), &batch).await;
        sent.extend(batch.into_iter().map(|e| (e, true)));
    }
    // On one key (one partition, so the order is known): 31.5 s moves its watermark to
    // 29.5 s; 25 s is within the 2 s lateness of [20 s, 30 s) and counts; 45 s closes it;
    // 5 s is then beyond the lateness of [0, 10 s): late.
    for (ts, svc, counted) in [
        (31_500, "s0", true),
        (25_000, "s1", true),
        (45_000, "s2", true),
        (5_000, "s0", false),
    ] {
        let e = event(&mut rng, 7, T0 + ts, svc);
        post(&s, "k0", std::slice::from_ref(&e)).await;
        sent.push((e, counted));
    }
    // Close every window on every partition.
    for k in 0..4 {
        post(
            &s,
            &format!("k{k}"),
            &[event(&mut rng, 1, T0 + 200_000, "closer")],
        )
        .await;
    }
    // Metrics: two hosts, 10 s windows.
    let mut samples = String::new();
    for i in 0..40i64 {
        samples.push_str(&format!(
            "{{\"name\":\"cpu\",\"value\":{},\"ts\":{},\"labels\":{{\"host\":\"h{}\"}}}}\n",
            i as f64 / 10.0,
            T0 + i * 500,
            i % 2
        ));
    }
    samples.push_str(&format!(
        "{{\"name\":\"cpu\",\"value\":0,\"ts\":{},\"labels\":{{\"host\":\"h0\"}}}}\n",
        T0 + 100_000
    ));
    let (st, v) = s.ingest_metrics("acme-token", samples).await;
    assert_eq!(st, 200, "{v}");

    // Expected rows, computed from what was sent.
    let mut want: BTreeMap<(String, String, String), Vec<&Value>> = BTreeMap::new();
    let mut late: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for (e, counted) in &sent {
        let ts = e["ts"].as_i64().unwrap();
        let svc = e["service"].as_str().unwrap();
        let start = T0 + (ts - T0).div_euclid(10_000) * 10_000;
        let key = (
            "by_service".to_owned(),
            iso(start),
            format!("{{\"service\":\"{svc}\"}}"),
        );
        if *counted {
            want.entry(key).or_default().push(e);
        } else {
            *late.entry(key).or_default() += 1;
        }
    }
    let n_rows = want.len() as i64 + 2 /* errors */ + 4 /* cpu: 2 windows x 2 hosts */;
    s.wait_count("acme-token", "SELECT count(*) FROM aggregates", n_rows)
        .await;
    // A row can show before every partition's partial of it is checkpointed: wait
    // until every counted event is in.
    let counted: i64 = want.values().map(|v| v.len() as i64).sum();
    s.wait_count(
        "acme-token",
        "SELECT CAST(sum(count) AS BIGINT) FROM aggregates WHERE aggregation = 'by_service'",
        counted,
    )
    .await;
    let error_windows: i64 = [-30_000i64, 0]
        .iter()
        .map(|start| {
            sent.iter()
                .filter(|(e, c)| *c && e["level"] == "error")
                .map(|(e, _)| e["ts"].as_i64().unwrap() - T0)
                .filter(|t| *t >= *start && *t < start + 60_000)
                .count() as i64
        })
        .sum();
    s.wait_count(
        "acme-token",
        "SELECT CAST(sum(count) AS BIGINT) FROM aggregates WHERE aggregation = 'errors'",
        error_windows,
    )
    .await;
    // Late counts land with the checkpoint after the late event: wait for them too.
    s.wait_count(
        "acme-token",
        "SELECT CAST(COALESCE(sum(late), 0) AS BIGINT) FROM aggregates",
        1,
    )
    .await;
    let got = rows(&s, "acme-token").await;
    for (key, events) in &want {
        let g = got
            .get(key)
            .unwrap_or_else(|| panic!("no row {key:?}: {got:?}"));
        let mut lat: Vec<f64> = events
            .iter()
            .map(|e| e["latency_ms"].as_f64().unwrap())
            .collect();
        let sum: f64 = lat.iter().sum();
        assert_eq!(g["_count"], json!(events.len()), "{key:?}");
        assert_eq!(g["count"], json!(events.len()), "{key:?}");
        assert!(
            (g["sum(latency_ms)"].as_f64().unwrap() - sum).abs() < 1e-6 * sum,
            "{key:?}"
        );
        assert!((g["avg"].as_f64().unwrap() - sum / lat.len() as f64).abs() < 1e-6 * sum);
        let min = lat.iter().copied().fold(f64::INFINITY, f64::min);
        let max = lat.iter().copied().fold(0.0, f64::max);
        assert_eq!(g["min(latency_ms)"].as_f64().unwrap(), min);
        assert_eq!(g["max(latency_ms)"].as_f64().unwrap(), max);
        let p99 = exact_quantile(&mut lat, 0.99);
        let err = (g["p99"].as_f64().unwrap() - p99).abs() / p99;
        assert!(
            err <= 0.01 + 1e-9,
            "{key:?}: p99 {} vs exact {p99}",
            g["p99"]
        );
        let users: std::collections::BTreeSet<&str> =
            events.iter().map(|e| e["user"].as_str().unwrap()).collect();
        assert_eq!(g["users"], json!(users.len()), "exact below 512 values");
        let mut paths: BTreeMap<&str, u64> = BTreeMap::new();
        for e in events {
            *paths.entry(e["path"].as_str().unwrap()).or_default() += 1;
        }
        let mut top: Vec<(&str, u64)> = paths.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(2);
        let top: Vec<Value> = top
            .iter()
            .map(|(v, c)| json!({"value": v, "count": c}))
            .collect();
        assert_eq!(
            g["paths"],
            json!(top),
            "{key:?}: exact while values fit the counters"
        );
        assert_eq!(g["rate"].as_f64().unwrap(), events.len() as f64 / 10.0);
        assert_eq!(
            g["_late"],
            json!(late.get(key).copied().unwrap_or(0)),
            "{key:?}"
        );
    }
    // Hopping 1-minute windows every 30 s over the errors (level=error: i % 10 == 0).
    let errors: Vec<i64> = sent
        .iter()
        .filter(|(e, c)| *c && e["level"] == "error")
        .map(|(e, _)| e["ts"].as_i64().unwrap() - T0)
        .collect();
    for start in [-30_000i64, 0] {
        let n = errors
            .iter()
            .filter(|t| **t >= start && **t < start + 60_000)
            .count();
        let key = ("errors".to_owned(), iso(T0 + start), "{}".to_owned());
        assert_eq!(got[&key]["count"], json!(n), "{key:?}");
    }
    // Metrics: host h0 holds values 0.0, 0.2, ... of the first 10 s.
    let h0 = &got[&(
        "cpu".to_owned(),
        iso(T0),
        "{\"labels.host\":\"h0\"}".to_owned(),
    )];
    assert_eq!(h0["count"], json!(10));
    assert_eq!(h0["max"], json!(1.8));
    // The metric counts late events and the rows survive a restart unchanged.
    let m = s.metrics().await;
    assert!(
        m.contains("weir_agg_late_events_total{tenant=\"acme\",aggregation=\"by_service\"} 1"),
        "{m}"
    );
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM aggregates")
            .await,
        0,
        "another tenant sees no aggregates"
    );
    s.stop();
    let s = Server::start(dir.path(), CONFIG);
    assert_eq!(rows(&s, "acme-token").await, got);
    s.stop();
}

const KILL_CONFIG: &str = r#"
[aggregation]
checkpoint_interval_ms = 40
[tenants.acme]
tokens = ["acme-token"]
[[tenants.acme.streams.app.aggregations]]
name = "by_service"
window = "1s"
lateness = "500ms"
group_by = ["service"]
functions = ["count", "sum(latency_ms)", "p99(latency_ms) as p99", "distinct(user) as users", "topk(3, path) as paths", "wasm(builtin:top-errors) as top_errors"]
anomaly = { on = "count", history = 5 }
[[tenants.acme.streams.app.aggregations]]
name = "hopping"
window = "10s"
hop = "5s"
group_by = ["level"]
functions = ["count", "max(latency_ms) as max", "p50(latency_ms) as p50"]
"#;

/// Request `r` of the kill test: 400 events around `r * 250 ms`, with jitter that makes
/// some of them later than the 500 ms lateness.
fn kill_request(r: u64) -> Vec<Value> {
    let mut rng = Rng(0x9e37_79b9 ^ (r + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    (0..400)
        .map(|i| {
            let jitter = (rng.next() % 1_400) as i64 - 1_000;
            let ts = T0 + r as i64 * 250 + i as i64 + jitter;
            let svc = format!("s{}", rng.next() % 4);
            event(&mut rng, i, ts, &svc)
        })
        .collect()
}

const KILL_REQUESTS: u64 = 48;

async fn snapshot(s: &Server) -> Value {
    let total = KILL_REQUESTS as i64 * 400;
    s.wait_count(
        "acme-token",
        "SELECT CAST(COALESCE(sum(count) + sum(late), 0) AS BIGINT) FROM aggregates WHERE aggregation = 'by_service'",
        total,
    )
    .await;
    let (st, v) = s
        .query(
            "acme-token",
            "SELECT aggregation, definition, stream, window_start, window_end, group_key, count, late, \
             results, anomaly, anomaly_reason, partitions FROM aggregates \
             ORDER BY aggregation, window_start, group_key",
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["rows"].clone()
}

async fn send_kill_request(s: &Server, r: u64) {
    post(s, &format!("k{}", r % 4), &kill_request(r)).await;
}

async fn close_all(s: &Server) {
    let mut rng = Rng(3);
    for k in 0..4 {
        post(
            s,
            &format!("k{k}"),
            &[event(&mut rng, 1, T0 + 3_600_000, "closer")],
        )
        .await;
    }
}

/// Property: whatever moments `kill -9` strikes at, the `aggregates` table ends equal
/// to the table of a run that was never interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_after_kill9_at_random_points_equal_an_uninterrupted_run() {
    let clean = tempfile::tempdir().unwrap();
    let s = Server::start(clean.path(), KILL_CONFIG);
    for r in 0..KILL_REQUESTS {
        send_kill_request(&s, r).await;
    }
    close_all(&s).await;
    let want = snapshot(&s).await;
    s.stop();
    let rows = want.as_array().unwrap();
    assert!(rows.len() > 40, "{want}");
    let late: u64 = rows.iter().map(|r| r[7].as_u64().unwrap()).sum();
    assert!(late > 0, "the input has events beyond the lateness");
    assert!(
        rows.iter().any(|r| r[11].as_u64().unwrap() > 1),
        "some rows merge several partitions"
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut kills: Vec<u64> = (0..3).map(|_| rng.next() % KILL_REQUESTS).collect();
    kills.sort();
    eprintln!("seed {seed}: kill -9 after requests {kills:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), KILL_CONFIG);
    for r in 0..KILL_REQUESTS {
        send_kill_request(&s, r).await;
        for _ in kills.iter().filter(|k| **k == r) {
            // Strike while the workers are still processing and checkpointing.
            tokio::time::sleep(std::time::Duration::from_millis(rng.next() % 40)).await;
            s.kill9();
            s = Server::start(dir.path(), KILL_CONFIG);
        }
    }
    close_all(&s).await;
    let got = snapshot(&s).await;
    let (g, w) = (got.as_array().unwrap(), want.as_array().unwrap());
    for (i, (a, b)) in g.iter().zip(w).enumerate() {
        assert_eq!(a, b, "row {i} differs; seed {seed}, kills after {kills:?}");
    }
    assert_eq!(g.len(), w.len(), "seed {seed}, kills after {kills:?}");
    s.stop();
}

const CARDINALITY_CONFIG: &str = r#"
[aggregation]
checkpoint_interval_ms = 100
[tenants.acme]
tokens = ["acme-token"]
[tenants.acme.metrics]
max_series = 1000
on_limit = "overflow"
[[tenants.acme.streams.app.aggregations]]
name = "per_user"
window = "1m"
group_by = ["user_id"]
max_groups = 100
functions = ["count"]
[[tenants.acme.streams.app.aggregations]]
name = "users"
window = "1m"
functions = ["count", "distinct(user_id) as users"]
"#;

/// 200,000 distinct user ids, as metric labels and as log fields: series held to the
/// tenant's limit (the rest in the overflow series, counted), aggregation groups held to
/// max_groups (the rest in the overflow group), and the number of users still answered
/// by a sketch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cardinality_explosion_is_held_to_the_limits() {
    const USERS: i64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CARDINALITY_CONFIG);
    let client = reqwest::Client::new();
    for chunk in 0..USERS / 10_000 {
        let (mut samples, mut logs) = (String::new(), String::new());
        for u in chunk * 10_000..(chunk + 1) * 10_000 {
            samples.push_str(&format!(
                "{{\"name\":\"logins\",\"value\":1,\"ts\":{},\"labels\":{{\"user_id\":\"u{u}\"}}}}\n",
                T0 + u / 10
            ));
            logs.push_str(&format!(
                "{{\"ts\":{},\"user_id\":\"u{u}\"}}\n",
                T0 + u / 10
            ));
        }
        for (path, body) in [("metrics", samples), ("logs?stream=app&key=k", logs)] {
            let r = client
                .post(format!("{}/api/v1/{path}", s.base))
                .bearer_auth("acme-token")
                .body(body)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            assert_eq!((st, v["rejected"].as_u64()), (200, Some(0)), "{v}");
        }
    }
    post(&s, "k", &[json!({"ts": T0 + 600_000, "user_id": "closer"})]).await;
    s.wait_count("acme-token", "SELECT count(*) FROM metrics", USERS)
        .await;
    assert_eq!(
        s.count("acme-token", "SELECT count(DISTINCT series) FROM metrics")
            .await,
        1001,
        "1000 series and the overflow series"
    );
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(*) FROM metrics WHERE json_get_str(labels, '_overflow') = 'true'"
        )
        .await,
        USERS - 1000
    );
    let m = s.metrics().await;
    assert!(
        m.contains(&format!(
            "weir_series_limited_total{{tenant=\"acme\",limit=\"tenant\",action=\"overflowed\"}} {}",
            USERS - 1000
        )),
        "{m}"
    );
    // Aggregations: [T0, T0 + 1 min) holds the 200,000 users (ts = T0 + u / 10 ms).
    s.wait_count(
        "acme-token",
        "SELECT CAST(COALESCE(sum(count), 0) AS BIGINT) FROM aggregates WHERE aggregation = 'per_user'",
        USERS,
    )
    .await;
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(*) FROM aggregates WHERE aggregation = 'per_user'"
        )
        .await,
        101,
        "100 groups and the overflow group"
    );
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT CAST(count AS BIGINT) FROM aggregates WHERE group_key = '{\"_overflow\":true}'"
        )
        .await,
        USERS - 100
    );
    s.wait_count(
        "acme-token",
        "SELECT count(*) FROM aggregates WHERE aggregation = 'users'",
        1,
    )
    .await;
    let users = s
        .count(
            "acme-token",
            "SELECT json_get_int(results, 'users') FROM aggregates WHERE aggregation = 'users'",
        )
        .await;
    let err = (users - USERS).abs() as f64 / USERS as f64;
    assert!(
        err < 3.0 * 0.0081,
        "{users} distinct users estimated for {USERS}"
    );
    let m = s.metrics().await;
    assert!(
        m.contains(&format!(
            "weir_agg_overflow_events_total{{tenant=\"acme\",aggregation=\"per_user\"}} {}",
            USERS - 100
        )),
        "{m}"
    );
    s.stop();
    // The series budget survives a restart: a new user still goes to the overflow series.
    let s = Server::start(dir.path(), CARDINALITY_CONFIG);
    let body = "{\"name\":\"logins\",\"value\":1,\"labels\":{\"user_id\":\"new\"}}";
    assert_eq!(s.ingest_metrics("acme-token", body).await.0, 200);
    s.wait_count(
        "acme-token",
        "SELECT count(*) FROM metrics WHERE json_get_str(labels, '_overflow') = 'true'",
        USERS - 1000 + 1,
    )
    .await;
    s.stop();
}

const CUSTOM_CONFIG: &str = r#"
[aggregation]
checkpoint_interval_ms = 50
[tenants.acme]
tokens = ["acme-token"]
[[tenants.acme.streams.app.aggregations]]
name = "errors"
window = "1m"
functions = ["count", "wasm(builtin:top-errors) as top"]
"#;

/// A custom Wasm aggregator (`builtin:top-errors`, the exact top error messages): its
/// accumulators are built on four partitions and merged into one row, and an open
/// window's accumulators survive a restart inside the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_aggregator_merges_partitions_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut exact: BTreeMap<String, u64> = BTreeMap::new();
    let mut send = Vec::new();
    for i in 0..2000u64 {
        let level = if i % 3 == 0 { "error" } else { "info" };
        let msg = format!("m{}", (i * i) % 13);
        if level == "error" {
            *exact.entry(msg.clone()).or_default() += 1;
        }
        send.push(json!({"ts": T0 + i as i64 * 10, "level": level, "message": msg}));
    }
    let s = Server::start(dir.path(), CUSTOM_CONFIG);
    for (n, chunk) in send[..1000].chunks(100).enumerate() {
        post(&s, &format!("k{}", n % 4), chunk).await;
    }
    // Let a checkpoint take the open window, then restart.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.stop();
    let s = Server::start(dir.path(), CUSTOM_CONFIG);
    for (n, chunk) in send[1000..].chunks(100).enumerate() {
        post(&s, &format!("k{}", n % 4), chunk).await;
    }
    close_all(&s).await;
    s.wait_count(
        "acme-token",
        "SELECT CAST(COALESCE(sum(count), 0) AS BIGINT) FROM aggregates",
        2000,
    )
    .await;
    let (_, v) = s
        .query("acme-token", "SELECT results, partitions FROM aggregates")
        .await;
    let row = &v["rows"][0];
    assert_eq!(row[1], json!(4), "shares of four partitions merged: {v}");
    let results: Value = serde_json::from_str(row[0].as_str().unwrap()).unwrap();
    let mut top: Vec<(&String, &u64)> = exact.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<Value> = top
        .iter()
        .take(5)
        .map(|(m, c)| json!({"message": m, "count": c}))
        .collect();
    assert_eq!(
        results["top"],
        json!({"errors": exact.values().sum::<u64>(), "top": top}),
        "{results}"
    );
    s.stop();
    let s = Server::start(dir.path(), CUSTOM_CONFIG);
    let (_, again) = s
        .query("acme-token", "SELECT results, partitions FROM aggregates")
        .await;
    assert_eq!(again, v, "rows are read back without calling the plugin");
    s.stop();
}

const ADMIN_CONFIG: &str = r#"
[aggregation]
checkpoint_interval_ms = 50
[admin]
token = "admin-secret"
[tenants.acme]
tokens = ["acme-token"]
"#;

/// Aggregations set through the admin API's pipeline document take effect live; a
/// changed definition emits the old one's open windows and starts new rows under its
/// own fingerprint; bad declarations are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregations_change_live_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), ADMIN_CONFIG);
    let put = |body: Value| {
        let s = &s;
        async move {
            support::admin_call(
                s,
                "PUT",
                "/admin/v1/tenants/acme/pipelines/app",
                "admin-secret",
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    for (bad, why) in [
        (
            json!({"aggregations": [{"name": "a", "window": "1w", "functions": ["count"]}]}),
            "1w",
        ),
        (
            json!({"aggregations": [{"name": "a", "window": "1m", "functions": ["median(x)"]}]}),
            "unknown function",
        ),
        (
            json!({"aggregations": [{"name": "a", "window": "1m", "functions": ["wasm(builtin:logfmt)"]}]}),
            "not weir:plugin/aggregator",
        ),
        (
            json!({"aggregations": [{"name": "a", "window": "1m", "functions": ["wasm(nope)"]}]}),
            "nope",
        ),
        (
            json!({"plugins": [{"plugin": "builtin:top-errors"}]}),
            "aggregator",
        ),
    ] {
        let (st, v) = put(bad).await;
        assert_eq!(st, 400, "{v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }
    let (st, v) = support::admin_call(
        &s,
        "PUT",
        "/admin/v1/tenants/acme/pipelines/_metrics",
        "admin-secret",
        json!({"plugins": [{"plugin": "builtin:logfmt"}]})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(st, 400, "{v}");

    let v1 = json!({"aggregations": [{"name": "per_level", "window": "10s", "group_by": ["level"], "functions": ["count"]}]});
    let (st, v) = put(v1).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["aggregations"][0]["name"], "per_level");
    let ev = |ts: i64, level: &str| json!({"ts": T0 + ts, "level": level});
    post(
        &s,
        "k",
        &[
            ev(1_000, "info"),
            ev(2_000, "error"),
            ev(3_000, "info"),
            ev(12_000, "info"),
        ],
    )
    .await;
    s.wait_count("acme-token", "SELECT count(*) FROM aggregates", 2)
        .await;
    // Change the window live: the open [10 s, 20 s) window of the old definition is
    // emitted as it is, and the new one aggregates what comes next.
    let v2 = json!({"aggregations": [{"name": "per_level", "window": "20s", "group_by": ["level"], "functions": ["count"]}]});
    assert_eq!(put(v2).await.0, 200);
    post(
        &s,
        "k",
        &[ev(21_000, "info"), ev(25_000, "info"), ev(45_000, "info")],
    )
    .await;
    s.wait_count("acme-token", "SELECT count(*) FROM aggregates", 4)
        .await;
    let (_, v) = s
        .query(
            "acme-token",
            "SELECT definition, window_start, window_end, group_key, count FROM aggregates \
             ORDER BY window_start, definition",
        )
        .await;
    let rows = v["rows"].as_array().unwrap();
    let defs: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(defs.len(), 2, "{v}");
    let summary: Vec<(String, i64)> = rows
        .iter()
        .map(|r| {
            (
                format!(
                    "{}..{} {}",
                    r[1].as_str().unwrap(),
                    r[2].as_str().unwrap(),
                    r[3].as_str().unwrap()
                ),
                r[4].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                format!("{}..{} {{\"level\":\"error\"}}", iso(T0), iso(T0 + 10_000)),
                1
            ),
            (
                format!("{}..{} {{\"level\":\"info\"}}", iso(T0), iso(T0 + 10_000)),
                2
            ),
            (
                format!(
                    "{}..{} {{\"level\":\"info\"}}",
                    iso(T0 + 10_000),
                    iso(T0 + 20_000)
                ),
                1
            ),
            (
                format!(
                    "{}..{} {{\"level\":\"info\"}}",
                    iso(T0 + 20_000),
                    iso(T0 + 40_000)
                ),
                2
            ),
        ],
        "{v}"
    );
    s.stop();
}

/// An uploaded custom aggregator is swapped to a new version while a window is open:
/// the window's accumulators carry over (the new version's instance continues from the
/// host-held states), so its result counts every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_aggregator_swaps_versions_mid_window() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), ADMIN_CONFIG);
    let wasm = weir_builtins::get("top-errors").unwrap().to_vec();
    let call = |method: &'static str, path: &'static str, body: Vec<u8>| {
        let s = &s;
        async move { support::admin_call(s, method, path, "admin-secret", body).await }
    };
    let (st, v) = call("PUT", "/admin/v1/tenants/acme/plugins/toperr", wasm.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["world"], "weir:plugin/aggregator@0.1.0");
    let doc = json!({"aggregations": [{"name": "e", "window": "1m", "functions": ["count", "wasm(toperr) as top"]}]});
    let (st, v) = call(
        "PUT",
        "/admin/v1/tenants/acme/pipelines/app",
        doc.to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let ev =
        |i: i64| json!({"ts": T0 + i * 100, "level": "error", "message": format!("m{}", i % 3)});
    for k in 0..4 {
        post(
            &s,
            &format!("k{k}"),
            &(0..50).map(|i| ev(k * 50 + i)).collect::<Vec<_>>(),
        )
        .await;
    }
    let (st, v) = call("PUT", "/admin/v1/tenants/acme/plugins/toperr", wasm).await;
    assert_eq!((st, v["version"].as_u64()), (200, Some(2)), "{v}");
    let (st, v) = call(
        "POST",
        "/admin/v1/tenants/acme/plugins/toperr/activate",
        br#"{"version":2}"#.to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for k in 0..4 {
        post(
            &s,
            &format!("k{k}"),
            &(200..250).map(|i| ev(k * 50 + i)).collect::<Vec<_>>(),
        )
        .await;
    }
    close_all(&s).await;
    s.wait_count(
        "acme-token",
        "SELECT CAST(COALESCE(sum(count), 0) AS BIGINT) FROM aggregates",
        400,
    )
    .await;
    let (_, v) = s
        .query("acme-token", "SELECT results FROM aggregates")
        .await;
    let r: Value = serde_json::from_str(v["rows"][0][0].as_str().unwrap()).unwrap();
    // 400 events, messages m0, m1, m2 in turn over i = 0..200 and 200..400.
    assert_eq!(r["top"]["errors"], json!(400), "{r}");
    let counts: u64 = r["top"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counts, 400, "{r}");
    assert_eq!(
        r["top"]["top"][0],
        json!({"message": "m0", "count": 134}),
        "{r}"
    );
    s.stop();
}

/// A spike in a window series is flagged, with the reason; the windows before it are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_detection_flags_a_spike_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[aggregation]
checkpoint_interval_ms = 50
[tenants.acme]
tokens = ["acme-token"]
[[tenants.acme.streams.app.aggregations]]
name = "requests"
window = "1s"
functions = ["count"]
anomaly = { on = "count", threshold = 3.5, history = 8 }
"#;
    let s = Server::start(dir.path(), config);
    let mut events = Vec::new();
    for w in 0..12i64 {
        // 20 per second (19 to 21), then 200 in window 10.
        let n = if w == 10 { 200 } else { 19 + w % 3 };
        for i in 0..n {
            events.push(json!({"ts": T0 + w * 1000 + i, "path": "/"}));
        }
    }
    events.push(json!({"ts": T0 + 60_000, "path": "/"}));
    post(&s, "k", &events).await;
    s.wait_count("acme-token", "SELECT count(*) FROM aggregates", 12)
        .await;
    let (_, v) = s
        .query(
            "acme-token",
            "SELECT window_start, count, anomaly_reason FROM aggregates WHERE anomaly ORDER BY window_start",
        )
        .await;
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the spike: {v}");
    assert_eq!(rows[0][0], json!(iso(T0 + 10_000)));
    assert_eq!(rows[0][1], json!(200));
    let why = rows[0][2].as_str().unwrap();
    assert!(
        why.starts_with("count: 200 is") && why.contains("above the median 20"),
        "{why}"
    );
    s.stop();
}
