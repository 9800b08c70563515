//! `Idempotency-Key`: a retried request appends nothing and gets the first answer —
//! across kill -9 of the server, for every ingest protocol that takes one.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Server;

const TENANTS: &str = r#"
[tenants.ta]
tokens = ["ta"]
[tenants.tb]
tokens = ["tb"]
"#;

async fn post(
    base: &str,
    path: &str,
    token: &str,
    key: Option<&str>,
    ct: &str,
    body: &str,
) -> Result<(u16, Option<String>, String), reqwest::Error> {
    let mut r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("content-type", ct)
        .timeout(Duration::from_secs(20))
        .body(body.to_owned());
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    let r = r.send().await?;
    let status = r.status().as_u16();
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((status, replayed, r.text().await?))
}

#[tokio::test]
async fn a_retried_request_gets_the_first_answer_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    let logs = "/api/v1/logs?stream=app";
    let body = "{\"n\":1}\nnot json\n{\"n\":2}\n";
    let first = post(
        &s.base,
        logs,
        "ta",
        Some("k-1"),
        "application/x-ndjson",
        body,
    )
    .await
    .unwrap();
    assert_eq!((first.0, first.1.as_deref()), (200, None), "{}", first.2);
    let v: Value = serde_json::from_str(&first.2).unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    let again = post(
        &s.base,
        logs,
        "ta",
        Some("k-1"),
        "application/x-ndjson",
        body,
    )
    .await
    .unwrap();
    assert_eq!(again.0, 200);
    assert_eq!(again.1.as_deref(), Some("true"));
    assert_eq!(again.2, first.2, "the same answer, byte for byte");
    // The same key with other content is another request: refused, nothing appended.
    let other = post(
        &s.base,
        logs,
        "ta",
        Some("k-1"),
        "application/x-ndjson",
        "{\"n\":3}\n",
    )
    .await
    .unwrap();
    assert_eq!(other.0, 422, "{}", other.2);
    // Keys belong to their tenant.
    let tb = post(
        &s.base,
        logs,
        "tb",
        Some("k-1"),
        "application/x-ndjson",
        body,
    )
    .await
    .unwrap();
    assert_eq!((tb.0, tb.1), (200, None));
    // A bad key is 400.
    let bad = post(
        &s.base,
        logs,
        "ta",
        Some("a key"),
        "application/x-ndjson",
        body,
    )
    .await
    .unwrap();
    assert_eq!(bad.0, 400);
    // Metrics and OTLP take keys too.
    let sample = "{\"name\":\"m\",\"value\":1}\n";
    for _ in 0..2 {
        let r = post(
            &s.base,
            "/api/v1/metrics",
            "ta",
            Some("m-1"),
            "application/x-ndjson",
            sample,
        )
        .await
        .unwrap();
        assert_eq!(r.0, 200, "{}", r.2);
    }
    let otlp = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"o"}},{"timeUnixNano":"18446744073709551615","body":{"stringValue":"bad"}}]}]}]}"#;
    let o1 = post(
        &s.base,
        "/v1/logs",
        "ta",
        Some("o-1"),
        "application/json",
        otlp,
    )
    .await
    .unwrap();
    let o2 = post(
        &s.base,
        "/v1/logs",
        "ta",
        Some("o-1"),
        "application/json",
        otlp,
    )
    .await
    .unwrap();
    assert_eq!(o1.0, 200, "{}", o1.2);
    assert_eq!((o2.0, &o2.2), (200, &o1.2), "OTLP answers repeat too");
    s.wait_count("ta", "SELECT count(*) FROM logs WHERE stream = 'app'", 2)
        .await;
    s.wait_count("tb", "SELECT count(*) FROM logs WHERE stream = 'app'", 2)
        .await;
    s.wait_count("ta", "SELECT count(*) FROM metrics", 1).await;
    s.wait_count("ta", "SELECT count(*) FROM logs WHERE stream = 'otlp'", 1)
        .await;
    // Nothing more arrives late.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.count("ta", "SELECT count(*) FROM logs").await, 3);
    assert_eq!(s.count("ta", "SELECT count(*) FROM metrics").await, 1);
    s.stop();
}

/// Posts `batches` keyed batches of `per` numbered records from `writers` tasks,
/// retrying each (same key) until it is acknowledged, whatever happens to the server.
async fn send_all(
    base: Arc<parking_lot::Mutex<String>>,
    writers: usize,
    batches: usize,
    per: usize,
) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            for b in (w..batches).step_by(writers) {
                let body: String = (0..per)
                    .map(|i| format!("{{\"n\":{}}}\n", b * per + i))
                    .collect();
                let key = format!("batch-{b}");
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let url = base.lock().clone();
                    match post(
                        &url,
                        "/api/v1/logs?stream=app",
                        "ta",
                        Some(&key),
                        "application/x-ndjson",
                        &body,
                    )
                    .await
                    {
                        Ok((200, _, _)) => break,
                        Ok((429 | 503, _, _)) | Err(_) => {}
                        Ok((st, _, text)) => panic!("batch {b}: {st} {text}"),
                    }
                    assert!(Instant::now() < deadline, "batch {b} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_across_kill_9_land_every_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    let base = Arc::new(parking_lot::Mutex::new(s.base.clone()));
    const BATCHES: usize = 300;
    const PER: usize = 20;
    let sender = tokio::spawn(send_all(base.clone(), 4, BATCHES, PER));
    // Kill the server twice while batches are in flight, restarting it on the same data.
    let mut s = s;
    for _ in 0..2 {
        let before = s.count("ta", "SELECT count(*) FROM logs").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.count("ta", "SELECT count(*) FROM logs").await < before + 800 {
            assert!(Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.kill9();
        s = Server::start(dir.path(), TENANTS);
        *base.lock() = s.base.clone();
    }
    sender.await.unwrap();
    let total = (BATCHES * PER) as i64;
    s.wait_count("ta", "SELECT count(*) FROM logs", total).await;
    assert_eq!(
        s.count(
            "ta",
            "SELECT count(DISTINCT json_get_int(record, 'n')) FROM logs"
        )
        .await,
        total,
        "every record exactly once"
    );
    s.stop();
}
