//! Hostile queries and hostile connections against the real binary (issue 12): each
//! trigger found against an earlier build, now answered with a clear status and a
//! counter, while the server keeps serving.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{metric, Server};

const TENANTS: &str = r#"
[tenants.a]
tokens = ["ta"]
[tenants.b]
tokens = ["tb"]
"#;

fn sum_of_ones(n: usize) -> String {
    format!("SELECT {} AS n", vec!["1"; n].join("+"))
}

#[tokio::test]
async fn deep_and_huge_sql_is_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    // The trigger: 1,000 terms overflowed a runtime thread's stack and aborted the node.
    let (st, v) = s.query("ta", &sum_of_ones(1000)).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("deeper than 256"),
        "{v}"
    );
    // As deep as the bound allows still runs.
    let (st, v) = s.query("ta", &sum_of_ones(250)).await;
    assert_eq!((st, &v["rows"]), (200, &json!([[250]])), "{v}");
    // The deepest tree the text bound allows, and a chain of set operations.
    let (st, v) = s.query("ta", &sum_of_ones(130_000)).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.query("ta", &sum_of_ones(140_000)).await;
    assert!(
        v["error"].as_str().unwrap().contains("bytes exceeds"),
        "{st} {v}"
    );
    let unions = vec!["SELECT 1"; 2000].join(" UNION ALL ");
    let (st, v) = s.query("ta", &unions).await;
    assert!(
        st == 400 && v["error"].as_str().unwrap().contains("set operations"),
        "{v}"
    );
    assert_eq!(s.count("ta", "SELECT count(*) FROM logs").await, 0);
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "weir_queries_total{tenant=\"a\",outcome=\"refused\"}"),
        4,
        "{m}"
    );

    // The same statement over Flight SQL (ADBC), and the node still answers there too.
    let script = format!(
        r#"
from adbc_driver_flightsql import dbapi, DatabaseOptions
conn = dbapi.connect("{grpc}", db_kwargs={{DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer ta"}})
cur = conn.cursor()
try:
    cur.execute("{deep}")
    print("deep: ran")
except Exception as e:
    print("deep: refused" if "deeper than 256" in str(e) else "deep: other " + str(e))
cur = conn.cursor()
cur.execute("SELECT 41 + 1 AS x")
print("after:", cur.fetch_arrow_table().to_pylist())
"#,
        grpc = s.grpc,
        deep = sum_of_ones(1000)
    );
    let out = support::python(&script, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("deep: refused") && stdout.contains("after: [{'x': 42}]"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop();
}

#[tokio::test]
async fn memory_time_and_answer_size_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!(
            "{TENANTS}\n[query]\ntimeout_secs = 3\nquery_memory_mb = 64\ntenant_memory_mb = 128\nmemory_mb = 256\nmax_result_rows = 1000\n"
        ),
    );
    // A function that would build 1.1 GiB inside itself is refused before it does.
    let (st, v) = s
        .query("ta", "SELECT length(repeat('x', 1100*1024*1024))")
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("limit of 64.0 MiB"),
        "{v}"
    );
    // String aggregation grows within the query's memory and stops at it.
    let (st, v) = s
        .query(
            "ta",
            "SELECT length(string_agg(repeat('x', 10000), ',')) FROM generate_series(1, 20000)",
        )
        .await;
    assert_eq!(st, 422, "{v}");
    // A query that would run for minutes, and an unbounded recursive CTE, are stopped.
    for sql in [
        "SELECT sum(value) FROM generate_series(1, 100000000000)",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    ] {
        let t = Instant::now();
        let (st, v) = s.query("ta", sql).await;
        assert_eq!(st, 422, "{sql}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("longer than 3 s"),
            "{v}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{sql} took {:?}",
            t.elapsed()
        );
    }
    // Answers stop at the row cap: JSON says so, Arrow IPC is refused.
    let (st, v) = s
        .query("ta", "SELECT value FROM generate_series(1, 5000)")
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 1000);
    assert_eq!(v["truncated"], json!(true));
    assert!(
        v["error"].as_str().unwrap().contains("max_result_rows"),
        "{v}"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/query", s.base))
        .bearer_auth("ta")
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"sql": "SELECT value FROM generate_series(1, 5000)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let (st, v) = s
        .query("ta", "SELECT value FROM generate_series(1, 1000)")
        .await;
    assert_eq!((st, v["rows"].as_array().unwrap().len()), (200, 1000));
    assert!(v.get("truncated").is_none(), "{v}");
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "weir_queries_total{tenant=\"a\",outcome=\"timeout\"}"),
        2,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "weir_queries_total{tenant=\"a\",outcome=\"too_expensive\"}"
        ),
        3,
        "{m}"
    );
    assert_eq!(
        metric(&m, "weir_queries_total{tenant=\"a\",outcome=\"truncated\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "weir_query_memory_bytes"),
        0,
        "every pool was returned: {m}"
    );
    s.stop();
}

#[tokio::test]
async fn concurrency_is_limited_per_tenant_and_abandoned_queries_stop() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!("{TENANTS}\n[query]\ntimeout_secs = 60\nmax_concurrent_per_tenant = 1\n"),
    );
    let slow = "SELECT sum(value) FROM generate_series(1, 100000000000)";
    // A client that gives up after half a second: its query must stop too.
    let gave_up = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(format!("{}/api/v1/query", s.base))
        .bearer_auth("ta")
        .json(&json!({ "sql": slow }))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = s.metrics().await;
        if metric(&m, "weir_queries_total{tenant=\"a\",outcome=\"cancelled\"}") == 1
            && metric(&m, "weir_queries_running") == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned query still runs:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One slow query holds tenant a's only slot: a's next one gets 429, b is served.
    let base = s.base.clone();
    let holder = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/query"))
            .bearer_auth("ta")
            .json(&json!({ "sql": slow }))
            .timeout(Duration::from_secs(3))
            .send()
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&s.metrics().await, "weir_queries_running") == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/query", s.base))
        .bearer_auth("ta")
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(s.count("tb", "SELECT 7").await, 7);
    let _ = holder.await;
    s.stop();
}

/// Write raw bytes and read what comes back until the server closes or `wait` passes.
fn raw(addr: &str, bytes: &[u8], wait: Duration) -> (String, Duration) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(wait)).unwrap();
    c.write_all(bytes).unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

#[tokio::test]
async fn connections_are_authenticated_before_their_body_and_timed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!(
            "{TENANTS}\n[http]\nheader_timeout_secs = 1\nbody_timeout_secs = 2\nmax_connections = 8\n[metrics]\ntoken = \"scrape\"\n"
        ),
    );
    let addr = s.base.trim_start_matches("http://").to_owned();
    // 16 MiB announced, no token: refused on the head, the body never read.
    let (answer, took) = raw(
        &addr,
        b"POST /api/v1/logs HTTP/1.1\r\nhost: x\r\ncontent-length: 16777216\r\n\r\n{\"a\":1}",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // A head that never ends, and an idle connection, are closed after the header timeout.
    let (answer, took) = raw(
        &addr,
        b"POST /api/v1/logs HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(10),
    );
    assert!(took < Duration::from_secs(5), "{took:?} {answer}");
    let (_, took) = raw(&addr, b"", Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "idle: {took:?}");
    // A body that trickles in is cut at the body timeout.
    let (answer, took) = raw(
        &addr,
        b"POST /api/v1/logs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ta\r\ncontent-length: 100\r\n\r\n{\"a\"",
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    // Every connection slot held by a silent client: others wait in the backlog, and
    // are served once the silent ones are cut.
    let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = reqwest::get(format!("{}/healthz", s.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "served while 8 of 8 slots were held: {:?}",
        t.elapsed()
    );
    drop(idle);
    // /metrics names tenants: the scrape token is required.
    let r = reqwest::get(format!("{}/metrics", s.base)).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = reqwest::Client::new()
        .get(format!("{}/metrics", s.base))
        .bearer_auth("scrape")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = r.text().await.unwrap();
    assert!(
        metric(&m, "weir_http_refused_total{reason=\"unauthorized\"}") >= 1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "weir_http_refused_total{reason=\"body_timeout\"}"),
        1,
        "{m}"
    );
    s.stop();
}

#[test]
fn empty_tokens_are_refused_at_startup() {
    for config in [
        "[admin]\ntoken = \"\"\n",
        "[metrics]\ntoken = \" \"\n",
        "[tenants.a]\ntokens = [\"\"]\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("weir.toml"), config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config"])
            .arg(dir.path().join("weir.toml"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("empty"), "{config}: {err}");
    }
}

/// Median of `n` timed calls of `f`.
async fn median<F, Fut>(n: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        times.push(t.elapsed());
    }
    times.sort();
    times[n / 2]
}

/// The issue's neighbour test: tenant `a` sends CPU-heavy, deep and memory-bomb SQL,
/// poison records, and feeds a plugin that loops forever on the one partition both
/// tenants share; tenant `b`'s ingest and query latencies stay within twice their
/// unattacked values (plus 30 ms, the timer and scheduling noise of a loaded 2-core VM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_leaves_its_neighbour_within_twice_its_latency() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = support::hostile_wasm(dir.path());
    let config = format!(
        r#"{TENANTS}
[tenants.a.streams.looping]
plugins = [{{ plugin = "file:{}", config = {{ mode = "loop" }} }}]
[log]
partitions = 1
[plugins]
deadline_ms = 500
[query]
timeout_secs = 2
"#,
        wasm.display()
    );
    let s = Server::start(dir.path(), &config);
    let line = |i: usize| format!("{{\"level\":\"info\",\"message\":\"b {i}\",\"n\":{i}}}\n");
    let batch = |i: usize| (0..100).map(|j| line(i * 100 + j)).collect::<String>();
    let ingest_b = |i: usize| {
        let (s, body) = (&s, batch(i));
        async move {
            let (st, v) = s.ingest("tb", "app", body).await;
            assert_eq!(st, 200, "{v}");
        }
    };
    let query_b = |_| {
        let s = &s;
        async move {
            let (st, v) = s
                .query(
                    "tb",
                    "SELECT count(*), max(message) FROM logs WHERE level = 'info'",
                )
                .await;
            assert_eq!(st, 200, "{v}");
        }
    };
    // Warm up, then the unattacked latencies.
    median(5, ingest_b).await;
    let ingest_alone = median(21, |i| ingest_b(i + 100)).await;
    let query_alone = median(21, query_b).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    let attacks = [
        "SELECT sum(value) FROM generate_series(1, 100000000000)".to_owned(),
        "SELECT count(*) FROM generate_series(1, 100000000000) a WHERE a.value % 7 = 3".to_owned(),
        sum_of_ones(5000),
        "SELECT length(repeat('x', 1100*1024*1024))".to_owned(),
    ];
    for sql in attacks {
        let (base, stop) = (s.base.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c
                    .post(format!("{base}/api/v1/query"))
                    .bearer_auth("ta")
                    .json(&json!({ "sql": sql }))
                    .send()
                    .await;
            }
        }));
    }
    let (base, stop2) = (s.base.clone(), stop.clone());
    attackers.push(tokio::spawn(async move {
        let c = reqwest::Client::new();
        let poison = "{\"x\":1e400}\n{\"s\":\"\\ud800\"}\n{\"level\":\"a\",\"level\":\"b\"}\n{\"ts\":1e300}\n";
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            for stream in ["looping", "app"] {
                let _ = c
                    .post(format!("{base}/api/v1/logs?stream={stream}"))
                    .bearer_auth("ta")
                    .body(poison.repeat(50))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ingest_attacked = median(21, |i| ingest_b(i + 200)).await;
    let query_attacked = median(21, query_b).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    let bound = |alone: Duration| (alone * 2).max(alone + Duration::from_millis(30));
    eprintln!(
        "ingest p50 {ingest_alone:?} -> {ingest_attacked:?}, query p50 {query_alone:?} -> {query_attacked:?}"
    );
    assert!(
        ingest_attacked <= bound(ingest_alone),
        "ingest p50 {ingest_alone:?} alone, {ingest_attacked:?} attacked"
    );
    assert!(
        query_attacked <= bound(query_alone),
        "query p50 {query_alone:?} alone, {query_attacked:?} attacked"
    );
    s.stop();
}

/// One tenant's pile of pending Flight SQL statements never evicts another tenant's:
/// tenant b asks `GetFlightInfo` 200 times without fetching, then tenant a fetches the
/// statement it asked for first (raw Flight calls from pyarrow, as a BI tool's driver
/// makes them).
#[tokio::test]
async fn flight_statements_of_one_tenant_never_evict_another_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    let script = format!(
        r#"
import pyarrow.flight as fl

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out

def field(num, data):
    return bytes([num << 3 | 2]) + varint(len(data)) + data

def command(sql):
    inner = field(1, sql.encode())
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return fl.FlightDescriptor.for_command(field(1, url) + field(2, inner))

def options(token):
    return fl.FlightCallOptions(headers=[(b"authorization", b"Bearer " + token)])

client = fl.FlightClient("{grpc}")
mine = client.get_flight_info(command("SELECT 42 AS answer"), options(b"ta"))
for i in range(200):
    client.get_flight_info(command("SELECT %d AS x" % i), options(b"tb"))
try:
    client.do_get(mine.endpoints[0].ticket, options(b"tb")).read_all()
    print("b: read a's statement")
except Exception as e:
    print("b: refused" if "unknown or expired statement handle" in str(e) else "b: other " + str(e))
reader = client.do_get(mine.endpoints[0].ticket, options(b"ta"))
print("a:", reader.read_all().to_pylist())
"#,
        grpc = s.grpc
    );
    let out = support::python(&script, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("a: [{'answer': 42}]") && stdout.contains("b: refused"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop();
}

#[tokio::test]
async fn idle_connections_hold_at_most_the_grpc_listeners_slots() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!("{TENANTS}\n[http]\nmax_connections = 2\n"),
    );
    let addr = s.grpc.strip_prefix("grpc://").unwrap().to_owned();
    let script = format!(
        r#"
import socket, time
import pyarrow.flight as fl
def ask():
    c = fl.FlightClient("{grpc}")
    opts = fl.FlightCallOptions(timeout=3, headers=[(b"authorization", b"Bearer ta")])
    try:
        c.list_actions(opts)
        return "answered"
    except Exception as e:
        return "waited"
print("free:", ask())
hogs = [socket.create_connection(("{host}", {port})) for _ in range(2)]
time.sleep(0.5)
print("full:", ask())
for h in hogs:
    h.close()
time.sleep(0.5)
print("freed:", ask())
"#,
        grpc = s.grpc,
        host = addr.rsplit_once(':').unwrap().0,
        port = addr.rsplit_once(':').unwrap().1,
    );
    let out = support::python(&script, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("free: answered")
            && stdout.contains("full: waited")
            && stdout.contains("freed: answered"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop();
}
