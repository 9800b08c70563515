//! End-to-end tests of the event path: start the real `weir` binary on a free loopback
//! port and talk to it over HTTP like a client would.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{parking_lot_free, Server};

const TWO_TENANTS: &str = r#"
[tenants.acme]
tokens = ["acme-token"]
[tenants.acme.streams.app]
plugins = [{ plugin = "builtin:pii-redact" }]
[tenants.globex]
tokens = ["globex-token"]
"#;

/// A record with PII of every built-in kind, and the values that must vanish.
fn pii_record(i: usize) -> (Value, Vec<String>) {
    let email = format!("user{i}@example.com");
    let card = "4111 1111 1111 1111".to_owned();
    let ssn = "123-45-6789".to_owned();
    let phone = "(555) 123-4567".to_owned();
    let ip4 = format!("10.1.{}.{}", i % 256, (i / 256) % 256);
    let ip6 = "2001:db8::8a2e:370:7334".to_owned();
    let iban = "DE89 3704 0044 0532 0130 00".to_owned();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U".to_owned();
    let aws = "AKIAIOSFODNN7EXAMPLE".to_owned();
    let rec = json!({
        "id": i,
        "level": "info",
        "service": "checkout",
        "message": format!("user {email} paid with {card} from {ip4}"),
        "user": {"ssn": ssn, "phone": phone, "tags": [ip6, "vip"]},
        "payment": {"iban": iban, "amount": 12.5},
        "auth": format!("Bearer {jwt}"),
        "key": aws,
    });
    (rec, vec![email, card, ssn, phone, ip4, ip6, iban, jwt, aws])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_is_redacted_end_to_end_and_counts_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TWO_TENANTS);
    let mut secrets = Vec::new();
    let mut body = String::new();
    for i in 0..300 {
        let (rec, pii) = pii_record(i);
        body.push_str(&rec.to_string());
        body.push('\n');
        secrets.extend(pii);
    }
    let (st, r) = s.ingest("acme-token", "app", body.clone()).await;
    assert_eq!(
        (st, r["accepted"].as_u64(), r["rejected"].as_u64()),
        (200, Some(300), Some(0)),
        "{r}"
    );
    // The same body gzip- and zstd-compressed.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, body.as_bytes()).unwrap();
    let (st, r) = s
        .ingest_with("acme-token", "app", gz.finish().unwrap(), Some("gzip"))
        .await;
    assert_eq!((st, r["accepted"].as_u64()), (200, Some(300)), "{r}");
    let zs = zstd::encode_all(body.as_bytes(), 3).unwrap();
    let (st, r) = s.ingest_with("acme-token", "app", zs, Some("zstd")).await;
    assert_eq!((st, r["accepted"].as_u64()), (200, Some(300)), "{r}");
    // A JSON array body.
    let arr: Vec<Value> = (300..310).map(|i| pii_record(i).0).collect();
    let (st, r) = s
        .ingest("acme-token", "app", serde_json::to_vec(&arr).unwrap())
        .await;
    assert_eq!((st, r["accepted"].as_u64()), (200, Some(10)), "{r}");

    s.wait_count("acme-token", "SELECT count(*) FROM logs", 910)
        .await;
    let (st, v) = s.query("acme-token", "SELECT record FROM logs").await;
    assert_eq!(st, 200);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 910);
    let all = v.to_string();
    for secret in &secrets {
        assert!(
            !all.contains(secret.as_str()),
            "{secret} survived redaction"
        );
    }
    for row in rows {
        let rec: Value = serde_json::from_str(row[0].as_str().unwrap()).unwrap();
        let id = rec["id"].as_u64().unwrap() as usize;
        let (orig, _) = pii_record(id);
        // Everything that is not PII is intact.
        for field in ["id", "level", "service"] {
            assert_eq!(rec[field], orig[field], "{field}");
        }
        assert_eq!(rec["payment"]["amount"], 12.5);
        assert_eq!(rec["user"]["tags"][1], "vip");
        assert_eq!(
            rec["message"],
            "user [REDACTED:email] paid with [REDACTED:card] from [REDACTED:ipv4]"
        );
        assert_eq!(rec["user"]["ssn"], "[REDACTED:ssn]");
        assert_eq!(rec["user"]["phone"], "[REDACTED:phone]");
        assert_eq!(rec["user"]["tags"][0], "[REDACTED:ipv6]");
        assert_eq!(rec["payment"]["iban"], "[REDACTED:iban]");
        assert_eq!(rec["auth"], "Bearer [REDACTED:jwt]");
        assert_eq!(rec["key"], "[REDACTED:aws_key]");
    }
    // Exact counts per id: each record three times, plus the array ones once.
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(DISTINCT json_get_int(record, 'id')) FROM logs"
        )
        .await,
        310
    );
    // Arrow IPC answers.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/query", s.base))
        .bearer_auth("acme-token")
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"sql": "SELECT level FROM logs LIMIT 3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = r.bytes().await.unwrap();
    assert_eq!(
        &bytes[..4],
        &[0xff, 0xff, 0xff, 0xff],
        "IPC stream continuation marker"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_rejected_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TWO_TENANTS);
    let body = "{\"n\":1}\nnot json\n{\"n\":2}\n[1]\n{\"n\":\n\n{\"n\":3}\n";
    let (st, r) = s.ingest("globex-token", "raw", body).await;
    assert_eq!(st, 200);
    assert_eq!(
        (r["accepted"].as_u64(), r["rejected"].as_u64()),
        (Some(3), Some(3)),
        "{r}"
    );
    let lines: Vec<u64> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 4, 5]);
    assert!(r["errors"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("not a JSON object"));
    s.wait_count(
        "globex-token",
        "SELECT count(*) FROM logs WHERE stream = 'raw'",
        3,
    )
    .await;
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_limits_and_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!("{TWO_TENANTS}\n[ingest]\nmax_body_bytes = 4096\nmax_decoded_bytes = 8192\n"),
    );
    assert_eq!(s.ingest("wrong", "app", "{}").await.0, 401);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/logs?stream=app", s.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.query("nope", "SELECT 1").await.0, 401);
    assert_eq!(s.ingest("acme-token", "app", "x".repeat(5000)).await.0, 413);
    // A small gzip body that inflates beyond the decoded limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &vec![b' '; 100_000]).unwrap();
    assert_eq!(
        s.ingest_with("acme-token", "app", gz.finish().unwrap(), Some("gzip"))
            .await
            .0,
        413
    );
    assert_eq!(
        s.ingest_with("acme-token", "app", "{}", Some("br")).await.0,
        415
    );
    assert_eq!(s.ingest("acme-token", "bad/stream", "{}").await.0, 400);
    assert_eq!(s.query("acme-token", "SELEC nonsense").await.0, 400);
    // The server is still fine.
    assert_eq!(s.ingest("acme-token", "app", "{\"a\":1}").await.0, 200);
    let m = s.metrics().await;
    assert!(
        m.contains("weir_ingest_records_accepted_total{tenant=\"acme\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("# TYPE weir_plugin_call_seconds histogram"),
        "{m}"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_read_another() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TWO_TENANTS);
    s.ingest(
        "acme-token",
        "app",
        "{\"secret\":\"acme-only\"}\n{\"secret\":\"acme-2\"}",
    )
    .await;
    s.ingest("globex-token", "app", "{\"secret\":\"globex-only\"}")
        .await;
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 2)
        .await;
    s.wait_count("globex-token", "SELECT count(*) FROM logs", 1)
        .await;
    for sql in [
        "SELECT * FROM logs",
        "SELECT * FROM logs WHERE record LIKE '%globex%'",
        "SELECT * FROM logs UNION ALL SELECT * FROM logs",
        "SELECT l1.record FROM logs l1 CROSS JOIN logs l2",
        "SELECT * FROM dead_letters",
    ] {
        let (st, v) = s.query("acme-token", sql).await;
        assert_eq!(st, 200, "{sql}: {v}");
        assert!(!v.to_string().contains("globex-only"), "{sql} leaked: {v}");
    }
    for sql in [
        "SELECT * FROM globex.logs",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/hostname'",
        "SELECT * FROM 'data/store.redb'",
        "COPY (SELECT 1) TO '/tmp/weir-leak.csv'",
    ] {
        let (st, v) = s.query("acme-token", sql).await;
        assert_eq!(st, 400, "{sql} must be refused: {v}");
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TWO_TENANTS);
    for b in 0..5 {
        let body: String = (0..100)
            .map(|i| format!("{{\"id\":{}}}\n", b * 100 + i))
            .collect();
        assert_eq!(s.ingest("globex-token", "app", body).await.0, 200);
    }
    // Stop right after the acks, maybe before the workers processed everything.
    s.stop();
    let s = Server::start(dir.path(), TWO_TENANTS);
    s.wait_count("globex-token", "SELECT count(*) FROM logs", 500)
        .await;
    assert_eq!(
        s.count(
            "globex-token",
            "SELECT count(DISTINCT json_get_int(record, 'id')) FROM logs"
        )
        .await,
        500
    );
    s.ingest("globex-token", "app", "{\"id\":500}").await;
    s.wait_count("globex-token", "SELECT count(*) FROM logs", 501)
        .await;
    s.stop();
}

/// Four clients post 50-record batches with unique ids (round in the high bits) until
/// the server goes away; returns the ids of every acknowledged batch.
async fn load_until_gone(base: &str, round: u64) -> Vec<u64> {
    let acked = std::sync::Arc::new(parking_lot_free::Acked::default());
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (base, acked) = (base.to_owned(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for b in 0u64.. {
                let first = (round << 48) | (c << 32) | (b * 50);
                let body: String = (0..50)
                    .map(|i| {
                        format!(
                            "{{\"id\":{},\"level\":\"info\",\"message\":\"mail a{i}@b.io\"}}\n",
                            first + i
                        )
                    })
                    .collect();
                let res = client
                    .post(format!("{base}/api/v1/logs?stream=app&key=k{c}"))
                    .bearer_auth("acme-token")
                    .body(body)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => acked.add((0..50).map(|i| first + i)),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    acked.take()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_keeps_every_acknowledged_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = Vec::new();
    // Two rounds, each killed with SIGKILL at a different point of the load (the second
    // while the restarted server is still replaying what the first left behind).
    for round in 0..2u64 {
        let s = Server::start(dir.path(), TWO_TENANTS);
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis() as u64;
        let kill_after = Duration::from_millis(1200 + jitter * 2);
        let load = tokio::spawn({
            let base = s.base.clone();
            async move { load_until_gone(&base, round).await }
        });
        tokio::time::sleep(kill_after).await;
        s.kill9();
        let ids = load.await.unwrap();
        assert!(
            ids.len() >= 200,
            "round {round}: load too small to mean anything: {}",
            ids.len()
        );
        acked.extend(ids);
    }

    let s = Server::start(dir.path(), TWO_TENANTS);
    // Everything durable is processed after the restart; wait until no partition has
    // unprocessed bytes and every acknowledged id is there.
    let deadline = Instant::now() + Duration::from_secs(90);
    let ids = loop {
        let (st, v) = s
            .query("acme-token", "SELECT json_get_int(record, 'id') FROM logs")
            .await;
        assert_eq!(st, 200, "{v}");
        let ids: Vec<u64> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_u64().unwrap())
            .collect();
        if ids.len() >= acked.len() {
            let stats = s.metrics().await;
            if !stats
                .lines()
                .any(|l| l.starts_with("weir_log_lag_bytes") && !l.ends_with(" 0"))
            {
                break ids;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not caught up: {} of {}",
            ids.len(),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let unique: std::collections::HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicated rows after kill -9");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged event {id} lost");
    }
    s.stop();
}

fn hostile_config(dir: &Path, extra: &str) -> String {
    let wasm = support::hostile_wasm(dir);
    let w = wasm.display();
    format!(
        r#"
[tenants.evil]
tokens = ["evil-token"]
[tenants.evil.streams.loop]
plugins = [{{ plugin = "file:{w}", config = {{ mode = "loop" }} }}]
[tenants.evil.streams.alloc]
plugins = [{{ plugin = "file:{w}", config = {{ mode = "alloc" }} }}]
[tenants.evil.streams.flood]
plugins = [{{ plugin = "file:{w}", config = {{ mode = "flood" }} }}]
[tenants.evil.streams.trap]
plugins = [{{ plugin = "file:{w}", config = {{ mode = "trap" }} }}]
[tenants.evil.limits]
memory_mb = 32
deadline_ms = 1500
[tenants.good]
tokens = ["good-token"]
[tenants.good.streams.app]
plugins = [{{ plugin = "builtin:pii-redact" }}]
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &hostile_config(dir.path(), "[log]\npartitions = 2"),
    );
    for stream in ["loop", "alloc", "flood", "trap"] {
        let (st, r) = s.ingest("evil-token", stream, "{\"a\":1}\n{\"a\":2}").await;
        assert_eq!(
            (st, r["accepted"].as_u64()),
            (200, Some(2)),
            "{stream}: {r}"
        );
    }
    let (st, _) = s.ingest("good-token", "app", "{\"m\":\"x@y.io\"}").await;
    assert_eq!(st, 200);
    s.wait_count("evil-token", "SELECT count(*) FROM dead_letters", 4)
        .await;
    s.wait_count("good-token", "SELECT count(*) FROM logs", 1)
        .await;
    let (_, v) = s
        .query(
            "evil-token",
            "SELECT stream, error, count FROM dead_letters ORDER BY stream",
        )
        .await;
    let rows = v["rows"].as_array().unwrap();
    let err = |i: usize| rows[i][1].as_str().unwrap().to_owned();
    assert!(err(0).contains("memory limit"), "alloc: {}", err(0));
    assert!(err(1).contains("output"), "flood: {}", err(1));
    assert!(err(2).contains("deadline"), "loop: {}", err(2));
    assert!(err(3).contains("trapped"), "trap: {}", err(3));
    assert!(rows.iter().all(|r| r[2] == 2));
    assert_eq!(s.count("evil-token", "SELECT count(*) FROM logs").await, 0);
    let m = s.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("weir_plugin_traps_total{tenant=\"evil\"")),
        "{m}"
    );

    // A plugin that keeps timing out is quarantined after 3 in a row (the default), so
    // it stops holding its partition for a deadline per batch: later batches are
    // dead-lettered without a call while the other tenant is served.
    for i in 0..5 {
        let (st, _) = s
            .ingest("evil-token", "loop", format!("{{\"a\":{i}}}"))
            .await;
        assert_eq!(st, 200);
        let (st, _) = s
            .ingest("good-token", "app", format!("{{\"i\":{i}}}"))
            .await;
        assert_eq!(st, 200);
    }
    s.wait_count(
        "evil-token",
        "SELECT count(*) FROM dead_letters WHERE stream = 'loop'",
        6,
    )
    .await;
    s.wait_count("good-token", "SELECT count(*) FROM logs", 6)
        .await;
    assert_eq!(
        s.count(
            "evil-token",
            "SELECT count(*) FROM dead_letters WHERE stream = 'loop' AND error LIKE '%quarantined%'"
        )
        .await,
        3
    );
    let m = s.metrics().await;
    // One call per batch of alloc, flood and trap, and 3 of the 6 loop batches.
    let evil_calls: u64 = m
        .lines()
        .filter(|l| l.starts_with("weir_plugin_calls_total{tenant=\"evil\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(evil_calls, 6, "{m}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falling_behind_gives_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &hostile_config(dir.path(), "[log]\npartitions = 1\nmax_lag_bytes = 2000"),
    );
    // Each batch on the `loop` stream holds its worker for the full deadline, so the
    // partition's backlog grows until ingest pushes back.
    let body: String = (0..20)
        .map(|i| format!("{{\"pad\":\"{}\",\"i\":{i}}}\n", "x".repeat(50)))
        .collect();
    let client = reqwest::Client::new();
    let mut got_429 = false;
    for _ in 0..40 {
        let r = client
            .post(format!("{}/api/v1/logs?stream=loop", s.base))
            .bearer_auth("evil-token")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
            got_429 = true;
            break;
        }
        assert_eq!(r.status(), 200);
    }
    assert!(got_429, "a stalled partition must push back");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenants_means_one_open_default_tenant_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/logs?stream=app", s.base))
        .body("{\"level\":\"info\",\"message\":\"hello\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.wait_count("", "SELECT count(*) FROM logs WHERE message = 'hello'", 1)
        .await;
    s.stop();
}

#[test]
fn bad_config_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (config, expect) in [
        ("data_dri = \"x\"", "unknown field"),
        ("[tenants.a]\ntokens=[\"k\"]\n[tenants.a.streams.s]\nplugins=[{plugin=\"builtin:nope\"}]", "unknown builtin plugin"),
        (
            "[tenants.a]\ntokens=[\"k\"]\n[tenants.a.streams.s]\nplugins=[{plugin=\"builtin:pii-redact\", config={action=\"hash\"}}]",
            "hash_key",
        ),
    ] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--http-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{config}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_samples_are_checked_one_by_one_and_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TWO_TENANTS);
    let post = |token: &'static str, body: String| {
        let url = format!("{}/api/v1/metrics", s.base);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let mut body = String::new();
    for i in 0..100 {
        body.push_str(&format!(
            "{{\"name\":\"http_requests_total\",\"value\":{i},\"ts\":{},\"labels\":{{\"host\":\"h{}\",\"code\":\"200\"}},\"kind\":\"counter\"}}\n",
            1_795_000_000 + i,
            i % 3
        ));
    }
    body.push_str(
        "{\"name\":\"bad name\",\"value\":1}\n{\"name\":\"cpu\",\"value\":\"high\"}\nnot json\n",
    );
    body.push_str("{\"name\":\"cpu\",\"value\":0.25,\"labels\":{\"host\":\"h0\"}}\n");
    let (st, v) = post("acme-token", body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(101), Some(3)),
        "{v}"
    );
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![103, 101, 102], "{v}");

    s.wait_count("acme-token", "SELECT count(*) FROM metrics", 101)
        .await;
    let (_, v) = s
        .query(
            "acme-token",
            "SELECT series, count(*), sum(value) FROM metrics WHERE name = 'http_requests_total' \
             GROUP BY series ORDER BY series",
        )
        .await;
    assert_eq!(
        v["rows"],
        json!([
            ["http_requests_total{code=\"200\",host=\"h0\"}", 34, 1683.0],
            ["http_requests_total{code=\"200\",host=\"h1\"}", 33, 1617.0],
            ["http_requests_total{code=\"200\",host=\"h2\"}", 33, 1650.0],
        ]),
        "{v}"
    );
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM metrics WHERE json_get_str(labels, 'host') = 'h0' AND kind IS NULL").await,
        1
    );
    assert_eq!(s.count("acme-token", "SELECT count(*) FROM logs").await, 0);
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM metrics")
            .await,
        0
    );
    // Metrics have their own endpoint; `_`-streams are Weir's.
    let (st, _) = s
        .ingest("acme-token", "_metrics", "{\"name\":\"x\",\"value\":1}")
        .await;
    assert_eq!(st, 400);
    s.stop();
    let s = Server::start(dir.path(), TWO_TENANTS);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM metrics").await,
        101
    );
    s.stop();
}
