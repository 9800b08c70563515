//! End-to-end tests: start the real `weir` binary on a free loopback port and talk to it
//! over HTTP like a client would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Server {
    child: Child,
    base: String,
    /// The admin API's base URL, when the config has an admin token.
    admin: Option<String>,
    dir: PathBuf,
}

impl Server {
    /// Start `weir serve` with `config` (TOML) on `dir` and wait until it listens.
    fn start(dir: &Path, config: &str) -> Server {
        let cfg = dir.join("weir.toml");
        std::fs::write(&cfg, config).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("weir.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("weir: http listening on ") {
                    let _ = tx.send(("http", addr.to_owned()));
                }
                if let Some(addr) = line.strip_prefix("weir: admin listening on ") {
                    let _ = tx.send(("admin", addr.to_owned()));
                }
            }
        });
        let wants_admin = config.contains("[admin]");
        let (mut http, mut admin) = (None, None);
        while http.is_none() || (wants_admin && admin.is_none()) {
            match rx.recv_timeout(Duration::from_secs(180)) {
                Ok(("http", a)) => http = Some(format!("http://{a}")),
                Ok((_, a)) => admin = Some(format!("http://{a}")),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "weir did not start:\n{}",
                        std::fs::read_to_string(dir.join("weir.log")).unwrap_or_default()
                    );
                }
            }
        }
        Server {
            child,
            base: http.expect("http address"),
            admin,
            dir: dir.to_owned(),
        }
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "weir exited with {status}:\n{}",
            self.log()
        );
    }

    /// SIGKILL: no chance to clean up.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weir.log")).unwrap_or_default()
    }

    async fn ingest(
        &self,
        token: &str,
        stream: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        self.ingest_with(token, stream, body, None).await
    }

    async fn ingest_with(
        &self,
        token: &str,
        stream: &str,
        body: impl Into<reqwest::Body>,
        encoding: Option<&str>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}/api/v1/logs?stream={stream}", self.base))
            .bearer_auth(token)
            .body(body);
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn query(&self, token: &str, sql: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/query", self.base))
            .bearer_auth(token)
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn count(&self, token: &str, sql: &str) -> i64 {
        let (s, v) = self.query(token, sql).await;
        assert_eq!(s, 200, "{sql}: {v}");
        v["rows"][0][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{sql}: {v}"))
    }

    /// Poll until `sql` (a count) returns `want`; panics after a minute.
    async fn wait_count(&self, token: &str, sql: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.count(token, sql).await;
            if n == want {
                return;
            }
            assert!(n < want, "{sql}: {n} rows, more than the {want} expected");
            assert!(
                Instant::now() < deadline,
                "{sql}: stuck at {n} of {want}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let m = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
            let stats = reqwest::get(format!("{}/metrics", s.base))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
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

mod parking_lot_free {
    use std::sync::Mutex;
    #[derive(Default)]
    pub struct Acked(Mutex<Vec<u64>>);
    impl Acked {
        pub fn add(&self, ids: impl Iterator<Item = u64>) {
            self.0.lock().unwrap().extend(ids);
        }
        pub fn take(&self) -> Vec<u64> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}

fn hostile_config(dir: &Path, extra: &str) -> String {
    let wasm = dir.join("hostile.wasm");
    std::fs::write(
        &wasm,
        weir_builtins::fixture("weir-fixture-hostile").unwrap(),
    )
    .unwrap();
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
    let m = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let m = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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

const ADMIN: &str = r#"
[admin]
token = "admin-secret"
max_plugin_bytes = 1572864
[tenants.acme]
tokens = ["acme-token"]
[tenants.acme.streams.app]
plugins = [{ plugin = "redactor" }]
"#;

async fn admin_call(
    s: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let url = format!("{}{path}", s.admin.as_ref().expect("admin listener"));
    let r = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_uploads_validates_activates_and_rolls_back_live() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), ADMIN);
    let put = "/admin/v1/tenants/acme/plugins/redactor";
    // Refusals, each with its reason.
    let (st, v) = admin_call(&s, "PUT", put, "admin-secret", b"garbage bytes".to_vec()).await;
    assert_eq!(st, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly binary"),
        "{v}"
    );
    let (st, v) = admin_call(&s, "PUT", put, "admin-secret", b"\0asm\x01\0\0\0".to_vec()).await;
    assert_eq!(st, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{v}"
    );
    let (st, v) = admin_call(
        &s,
        "PUT",
        put,
        "admin-secret",
        b"\0asm\x0d\0\x01\0".to_vec(),
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("world"), "{v}");
    // Beyond the configured upload limit (1.5 MiB here): 413.
    let (st, _) = admin_call(&s, "PUT", put, "admin-secret", vec![0u8; 3 << 20]).await;
    assert_eq!(st, 413);
    assert_eq!(
        admin_call(&s, "PUT", put, "wrong", b"x".to_vec()).await.0,
        401
    );
    assert_eq!(
        admin_call(&s, "PUT", put, "acme-token", b"x".to_vec())
            .await
            .0,
        403
    );
    assert_eq!(
        admin_call(
            &s,
            "GET",
            "/admin/v1/tenants/nobody/plugins",
            "admin-secret",
            vec![]
        )
        .await
        .0,
        404
    );

    // Version 1: the redactor. The first version becomes active.
    let redactor = weir_builtins::get("pii-redact").unwrap().to_vec();
    let (st, v) = admin_call(&s, "PUT", put, "admin-secret", redactor).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["version"].as_u64()),
        (Some("redactor"), Some(1))
    );
    assert_eq!(v["world"], "weir:plugin/transform@0.1.0");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    s.ingest("acme-token", "app", "{\"v\":1,\"m\":\"a@b.io\"}")
        .await;
    s.wait_count(
        "acme-token",
        "SELECT count(*) FROM logs WHERE record LIKE '%REDACTED:email%'",
        1,
    )
    .await;

    // Version 2: a pass-through plugin. Uploading does not activate it.
    let passthrough = weir_builtins::fixture("weir-fixture-hostile")
        .unwrap()
        .to_vec();
    let (st, v) = admin_call(&s, "PUT", put, "admin-secret", passthrough).await;
    assert_eq!((st, v["version"].as_u64()), (200, Some(2)), "{v}");
    let (_, v) = admin_call(&s, "GET", put, "admin-secret", vec![]).await;
    assert_eq!(v["active"], 1, "{v}");
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    assert_eq!(v["used_by"], json!(["app"]));

    // Activate 2 live: new data is no longer redacted; then roll back to 1.
    let act = "/admin/v1/tenants/acme/plugins/redactor/activate";
    assert_eq!(
        admin_call(&s, "POST", act, "admin-secret", b"{\"version\":2}".to_vec())
            .await
            .0,
        200
    );
    s.ingest("acme-token", "app", "{\"v\":2,\"m\":\"c@d.io\"}")
        .await;
    s.wait_count(
        "acme-token",
        "SELECT count(*) FROM logs WHERE record LIKE '%c@d.io%'",
        1,
    )
    .await;
    assert_eq!(
        admin_call(&s, "POST", act, "admin-secret", b"{\"version\":1}".to_vec())
            .await
            .0,
        200
    );
    s.ingest("acme-token", "app", "{\"v\":3,\"m\":\"e@f.io\"}")
        .await;
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 3)
        .await;
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(*) FROM logs WHERE record LIKE '%e@f.io%'"
        )
        .await,
        0
    );
    assert_eq!(
        admin_call(&s, "POST", act, "admin-secret", b"{\"version\":7}".to_vec())
            .await
            .0,
        404
    );

    // In use: cannot be deleted.
    assert_eq!(
        admin_call(&s, "DELETE", put, "admin-secret", vec![])
            .await
            .0,
        409
    );

    // A restart keeps every version and the active selection.
    s.stop();
    let s = Server::start(dir.path(), ADMIN);
    let (_, v) = admin_call(
        &s,
        "GET",
        "/admin/v1/tenants/acme/plugins",
        "admin-secret",
        vec![],
    )
    .await;
    assert_eq!(v["plugins"][0]["active"], 1, "{v}");
    assert_eq!(
        v["plugins"][0]["versions"].as_array().unwrap().len(),
        2,
        "{v}"
    );
    s.ingest("acme-token", "app", "{\"v\":4,\"m\":\"g@h.io\"}")
        .await;
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 4)
        .await;
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(*) FROM logs WHERE record LIKE '%g@h.io%'"
        )
        .await,
        0
    );
    s.stop();
}

const PIPELINES: &str = r#"
[admin]
token = "admin-secret"
[log]
partitions = 2
[tenants.acme]
tokens = ["acme-token"]
[tenants.globex]
tokens = ["globex-token"]
"#;

/// A two-stage pipeline of the tagging fixture: both stages write `tag`, one into the
/// field `a`, the other into `b`, so a row whose `a` and `b` differ would be a batch
/// that saw two pipelines.
fn tag_pipeline(tag: &str) -> Vec<u8> {
    json!({ "plugins": [
        { "plugin": "tagger", "config": { "mode": "tag", "field": "a", "tag": tag } },
        { "plugin": "tagger", "config": { "mode": "tag", "field": "b", "tag": tag } },
    ]})
    .to_string()
    .into_bytes()
}

/// Post 50-record batches with unique ids from 4 clients until `stop`; the acked ids.
async fn load_until_stopped(
    base: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<u64> {
    let acked = std::sync::Arc::new(parking_lot_free::Acked::default());
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (base, acked, stop) = (base.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for b in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let first = (c << 32) | (b * 50);
                let body: String = (0..50)
                    .map(|i| format!("{{\"id\":{},\"message\":\"m\"}}\n", first + i))
                    .collect();
                let r = client
                    .post(format!("{base}/api/v1/logs?stream=app&key=k{c}-{b}"))
                    .bearer_auth("acme-token")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                acked.add((0..50).map(|i| first + i));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    acked.take()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_swap_live_under_load_with_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), PIPELINES);
    let tagger = weir_builtins::fixture("weir-fixture-hostile")
        .unwrap()
        .to_vec();
    let (st, v) = admin_call(
        &s,
        "PUT",
        "/admin/v1/tenants/acme/plugins/tagger",
        "admin-secret",
        tagger,
    )
    .await;
    assert_eq!((st, v["version"].as_u64()), (200, Some(1)), "{v}");

    // Pipelines that cannot run are refused with the reason, and change nothing.
    let put = "/admin/v1/tenants/acme/pipelines/app";
    for (body, reason) in [
        (
            json!({"plugins": [{"plugin": "nope"}]}),
            "\"nope\" not found",
        ),
        (
            json!({"plugins": [{"plugin": "file:/etc/hostname"}]}),
            "config file only",
        ),
        (
            json!({"plugins": [{"plugin": "builtin:nope"}]}),
            "unknown builtin",
        ),
        (json!({"plugin": []}), "expected"),
    ] {
        let (st, v) = admin_call(&s, "PUT", put, "admin-secret", body.to_string().into()).await;
        assert_eq!(st, 400, "{body}: {v}");
        let why = v["error"].as_str().unwrap();
        assert!(why.contains(reason), "{body}: {why}");
    }
    // Another tenant cannot name acme's plugin.
    let (st, v) = admin_call(
        &s,
        "PUT",
        "/admin/v1/tenants/globex/pipelines/app",
        "admin-secret",
        tag_pipeline("x"),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        admin_call(&s, "PUT", put, "acme-token", tag_pipeline("x"))
            .await
            .0,
        403
    );
    let (_, v) = admin_call(&s, "GET", put, "admin-secret", vec![]).await;
    assert_eq!(
        (v["source"].as_str(), v["plugins"].as_array().map(Vec::len)),
        (Some("config"), Some(0)),
        "{v}"
    );

    let (st, v) = admin_call(&s, "PUT", put, "admin-secret", tag_pipeline("g0")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["source"], "admin");

    // Swap the pipeline twelve times while four clients keep writing.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(load_until_stopped(s.base.clone(), stop.clone()));
    for g in 1..=12 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (st, v) = admin_call(
            &s,
            "PUT",
            put,
            "admin-secret",
            tag_pipeline(&format!("g{g}")),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = load.await.unwrap();
    let n = acked.len() as i64;
    assert!(n > 1000, "only {n} events acknowledged");

    s.wait_count("acme-token", "SELECT count(*) FROM logs", n)
        .await;
    let distinct = "SELECT count(DISTINCT json_get_int(record, 'id')) FROM logs";
    assert_eq!(s.count("acme-token", distinct).await, n);
    // Every row went through exactly one pipeline, whole.
    let mixed = "SELECT count(*) FROM logs WHERE json_get_str(record, 'a') IS NULL \
                 OR json_get_str(record, 'a') <> json_get_str(record, 'b')";
    assert_eq!(s.count("acme-token", mixed).await, 0);
    let tags = "SELECT count(DISTINCT json_get_str(record, 'a')) FROM logs";
    let seen = s.count("acme-token", tags).await;
    assert!(seen >= 3, "only {seen} pipelines saw traffic");
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM dead_letters")
            .await,
        0
    );

    // The pipeline survives a restart and still applies.
    s.stop();
    let s = Server::start(dir.path(), PIPELINES);
    let (_, v) = admin_call(
        &s,
        "GET",
        "/admin/v1/tenants/acme/pipelines",
        "admin-secret",
        vec![],
    )
    .await;
    assert_eq!(v["pipelines"][0]["stream"], "app", "{v}");
    assert_eq!(
        v["pipelines"][0]["plugins"][1]["config"]["tag"], "g12",
        "{v}"
    );
    s.ingest("acme-token", "app", "{\"id\":-1}").await;
    s.wait_count(
        "acme-token",
        "SELECT count(*) FROM logs WHERE json_get_int(record, 'id') = -1 AND json_get_str(record, 'b') = 'g12'",
        1,
    )
    .await;
    s.stop();
}

const ROLLOUT: &str = r#"
[admin]
token = "admin-secret"
[log]
partitions = 1
[plugins]
rollback_min_calls = 3
rollback_failure_ratio = 0.5
[tenants.acme]
tokens = ["acme-token"]
[tenants.acme.streams.app]
plugins = [{ plugin = "p", config = { mode = "tag", field = "v", tag = "one" } }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_version_rolls_back_and_its_dead_letters_replay_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), ROLLOUT);
    let plugin = "/admin/v1/tenants/acme/plugins/p";
    let good = weir_builtins::fixture("weir-fixture-hostile")
        .unwrap()
        .to_vec();
    let bad = weir_builtins::fixture("weir-fixture-trapper")
        .unwrap()
        .to_vec();
    assert_eq!(
        admin_call(&s, "PUT", plugin, "admin-secret", good).await.0,
        200
    );
    s.ingest("acme-token", "app", "{\"id\":0}").await;
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 1)
        .await;

    let (st, v) = admin_call(&s, "PUT", plugin, "admin-secret", bad).await;
    assert_eq!((st, v["version"].as_u64()), (200, Some(2)), "{v}");
    let act = format!("{plugin}/activate");
    let (st, v) = admin_call(
        &s,
        "POST",
        &act,
        "admin-secret",
        b"{\"version\":2}".to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{v}");

    // One entry per request: version 2 traps on each until the rollback.
    for id in 1..=8 {
        let (st, _) = s
            .ingest("acme-token", "app", format!("{{\"id\":{id}}}"))
            .await;
        assert_eq!(st, 200);
    }
    let total =
        "SELECT (SELECT count(*) FROM logs) + (SELECT coalesce(sum(count), 0) FROM dead_letters)";
    s.wait_count("acme-token", total, 9).await;
    let (_, v) = admin_call(&s, "GET", plugin, "admin-secret", vec![]).await;
    assert_eq!(v["active"], 1, "rolled back: {v}");
    let last = v["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["kind"].as_str(),
            last["from"].as_u64(),
            last["to"].as_u64()
        ),
        (Some("rollback"), Some(2), Some(1)),
        "{v}"
    );
    assert!(
        last["reason"].as_str().unwrap().contains("trapped"),
        "{last}"
    );
    let traps = v["metrics"]["2"]["traps"].as_u64().unwrap();
    assert!(traps >= 3, "{v}");
    assert_eq!(v["metrics"]["1"]["traps"], 0, "{v}");
    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("weir_plugin_rollbacks_total{tenant=\"acme\",plugin=\"p\"} 1"),
        "{metrics}"
    );

    // The dead letters name the failing version; replaying them runs the current one.
    let dl = "/admin/v1/tenants/acme/dead-letters";
    let (_, v) = admin_call(&s, "GET", dl, "admin-secret", vec![]).await;
    let dead = v["dead_letters"].as_array().unwrap().clone();
    assert_eq!(dead.len() as u64, traps, "{v}");
    assert!(
        dead.iter()
            .all(|d| d["plugin"] == "p" && d["plugin_version"] == 2),
        "{v}"
    );
    let replay = format!("{dl}/replay");
    let (st, v) = admin_call(
        &s,
        "POST",
        &replay,
        "admin-secret",
        b"{\"ids\":[\"0-999\"]}".to_vec(),
    )
    .await;
    assert_eq!(st, 404, "{v}");
    // Two replays of everything at once: each dead letter lands once.
    let (a, b) = tokio::join!(
        admin_call(&s, "POST", &replay, "admin-secret", vec![]),
        admin_call(
            &s,
            "POST",
            &replay,
            "admin-secret",
            b"{\"stream\":\"app\"}".to_vec()
        ),
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1["records"].as_u64(), Some(traps), "{a:?}");
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 9)
        .await;
    s.wait_count("acme-token", "SELECT count(*) FROM dead_letters", 0)
        .await;
    let m = |sql: &'static str| s.count("acme-token", sql);
    assert_eq!(
        m("SELECT count(DISTINCT json_get_int(record, 'id')) FROM logs").await,
        9
    );
    assert_eq!(
        m("SELECT count(*) FROM logs WHERE json_get_str(record, 'v') = 'one'").await,
        9
    );
    // Both replays are processed (the second one's copies are recognised and dropped),
    // and nothing doubled. Which request selected what depends on timing.
    let sent =
        a.1["replayed"].as_array().unwrap().len() + b.1["replayed"].as_array().unwrap().len();
    let want = [
        format!("weir_dead_letter_replays_total{{outcome=\"landed\"}} {traps}"),
        format!(
            "weir_dead_letter_replays_total{{outcome=\"duplicate\"}} {}",
            sent as u64 - traps
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", s.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let duplicates_seen = sent as u64 == traps || metrics.contains(&want[1]);
        if metrics.contains(&want[0]) && duplicates_seen {
            break;
        }
        assert!(Instant::now() < deadline, "{want:?}\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m("SELECT count(*) FROM logs").await, 9);
    s.stop();
}
