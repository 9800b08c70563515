//! End-to-end tests of the cold tier: hot rows flushed to Parquet, one query across
//! both tiers, and crashes in the middle of a flush.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::Server;

const CONFIG: &str = r#"
[cold]
flush_after_secs = 1
[tenants.acme]
tokens = ["acme-token"]
[tenants.globex]
tokens = ["globex-token"]
"#;

/// 2030-01-15T08:00:00Z in epoch ms.
const T0: i64 = 1_894_694_400_000;

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

async fn send_logs(s: &Server, from: i64, n: i64) {
    let body: String = (from..from + n)
        .map(|i| {
            format!(
                "{}\n",
                json!({"ts": T0 + i * 1000, "level": if i % 4 == 0 { "error" } else { "info" }, "message": format!("event {i}"), "service": format!("svc{}", i % 3)})
            )
        })
        .collect();
    let (st, v) = s.ingest("acme-token", "app", body).await;
    assert_eq!(st, 200, "{v}");
}

/// Wait (up to a minute) until the server stops: a fault injected through `fault`
/// fired.
async fn wait_aborted(s: &mut Server, fault: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{fault} did not fire:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait (up to a minute) until `rows` rows have gone to the cold tier.
async fn wait_flushed(s: &Server, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while cold_rows(s).await < rows {
        assert!(Instant::now() < deadline, "not flushed:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cold_rows(s: &Server) -> u64 {
    s.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("weir_cold_rows_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_move_to_parquet_and_one_query_sees_both_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    for r in 0..5 {
        send_logs(&s, r * 1000, 1000).await;
    }
    let samples: String = (0..100)
        .map(|i| {
            format!(
                "{{\"name\":\"cpu\",\"value\":{i},\"ts\":{},\"labels\":{{\"host\":\"h{}\"}}}}\n",
                T0 + i * 1000,
                i % 2
            )
        })
        .collect();
    let (st, v) = s.ingest_metrics("acme-token", samples).await;
    assert_eq!(st, 200, "{v}");
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 5000)
        .await;
    // While rows move to the cold tier, every query sees each row exactly once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cold_rows(&s).await < 5100 {
        assert_eq!(
            s.count("acme-token", "SELECT count(*) FROM logs").await,
            5000
        );
        assert_eq!(
            s.count("acme-token", "SELECT count(*) FROM metrics").await,
            100
        );
        assert!(Instant::now() < deadline, "not flushed:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        5000
    );
    assert_eq!(
        s.count(
            "acme-token",
            &format!(
                "SELECT count(*) FROM logs WHERE ts >= to_timestamp_millis({}) AND level = 'error'",
                T0 + 4_000_000
            )
        )
        .await,
        250
    );
    assert_eq!(
        s.count("acme-token", "SELECT CAST(sum(value) AS BIGINT) FROM metrics WHERE json_get_str(labels, 'host') = 'h1'").await,
        (0..100).filter(|i| i % 2 == 1).sum::<i64>()
    );
    // Rollups written with the flushed samples: the same totals.
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT CAST(sum(sum) AS BIGINT) FROM metrics_1m WHERE labels = '{\"host\":\"h1\"}'"
        )
        .await,
        (0..100).filter(|i| i % 2 == 1).sum::<i64>()
    );
    assert_eq!(
        s.count("acme-token", "SELECT sum(count) FROM metrics_1h")
            .await,
        100
    );
    // Frequent fields are columns of their own, in both tiers, and `record` still
    // holds every field.
    for sql in [
        "SELECT count(*) FROM logs WHERE service = 'svc1'",
        "SELECT count(*) FROM logs WHERE json_get_str(record, 'service') = 'svc1'",
    ] {
        assert_eq!(s.count("acme-token", sql).await, 1667, "{sql}");
    }
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM logs").await,
        0
    );
    // Plain Parquet files, laid out by tenant, table and date.
    let files = parquet_files(&dir.path().join("data/cold"));
    assert!(!files.is_empty());
    for f in &files {
        let rel = f
            .strip_prefix(dir.path().join("data/cold"))
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(rel.starts_with("tenant=acme/table="), "{rel}");
        assert!(rel.contains("/date=2030-01-15/"), "{rel}");
        let bytes = std::fs::read(f).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(&bytes[bytes.len() - 4..], b"PAR1");
    }
    // Open format: pyarrow and DuckDB (installed by scripts/setup.sh) read the files
    // without Weir and find every row.
    let logs_dir = dir.path().join("data/cold/tenant=acme/table=logs");
    let script = "import sys, glob, pyarrow.parquet as pq, duckdb\n\
        files = glob.glob(sys.argv[1] + '/**/*.parquet', recursive=True)\n\
        print(sum(pq.read_table(f).num_rows for f in files))\n\
        q = \"SELECT count(*) FILTER (WHERE level = 'error'), count(*) FILTER (WHERE service = 'svc1') FROM read_parquet('\" + sys.argv[1] + \"/**/*.parquet', union_by_name = true)\"\n\
        print(*duckdb.sql(q).fetchone())\n";
    let out = support::python(script, &[logs_dir.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "5000\n1250 1667"
    );
    s.stop();
    let s = Server::start(dir.path(), CONFIG);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        5000
    );
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM metrics").await,
        100
    );
    s.stop();
}

/// A crash between writing a Parquet file and committing its manifest entry: after a
/// restart the file is gone, the rows are hot, and nothing is missing or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_flush_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("flush_after_secs = 1", "flush_after_secs = 2");
    let mut s = Server::start_with_env(dir.path(), &config, &[("WEIR_FAULT_COLD_AFTER_PUT", "1")]);
    send_logs(&s, 0, 3000).await;
    // The server aborts at its first flush, after the file is written.
    wait_aborted(&mut s, "WEIR_FAULT_COLD_AFTER_PUT").await;
    assert!(
        !parquet_files(&dir.path().join("data/cold")).is_empty(),
        "a file was written before the crash"
    );
    drop(s);
    s = Server::start(dir.path(), &config);
    assert!(
        parquet_files(&dir.path().join("data/cold")).is_empty(),
        "the orphan file is removed at startup"
    );
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        3000
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while cold_rows(&s).await < 3000 {
        assert_eq!(
            s.count("acme-token", "SELECT count(*) FROM logs").await,
            3000
        );
        assert!(Instant::now() < deadline, "not flushed:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.count("acme-token", "SELECT count(DISTINCT message) FROM logs")
            .await,
        3000
    );
    s.stop();
}

/// A time-range query reads only the cold files whose time range it needs: EXPLAIN
/// ANALYZE shows the other file left out by its manifest time range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_range_queries_prune_cold_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    const DAY: i64 = 86_400_000;
    for (day, n) in [(0, 1000), (3, 700)] {
        let body: String = (0..n)
            .map(|i| format!("{}\n", json!({"ts": T0 + day * DAY + i, "level": "info"})))
            .collect();
        let (st, _) = s.ingest("acme-token", "app", body).await;
        assert_eq!(st, 200);
        // One flush per day: each file holds one time range.
        let deadline = Instant::now() + Duration::from_secs(60);
        while parquet_files(&dir.path().join("data/cold")).len() < (day as usize / 3) + 1 {
            assert!(Instant::now() < deadline, "not flushed:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let since = T0 + 2 * DAY;
    assert_eq!(
        s.count(
            "acme-token",
            &format!("SELECT count(*) FROM logs WHERE ts >= to_timestamp_millis({since})")
        )
        .await,
        700
    );
    let (st, v) = s
        .query(
            "acme-token",
            &format!("EXPLAIN ANALYZE SELECT count(*) FROM logs WHERE ts >= to_timestamp_millis({since})"),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // The manifest's time ranges leave out the day-0 file before any is opened; the
    // day-3 file's statistics are then checked (and match).
    let plan = v["rows"].to_string();
    assert!(plan.contains("file_groups={1 group: [["), "{plan}");
    assert!(plan.contains("/date=2030-01-18/"), "{plan}");
    assert!(!plan.contains("/date=2030-01-15/"), "{plan}");
    assert!(
        plan.contains("files_ranges_pruned_statistics=1 total → 1 matched"),
        "{plan}"
    );
    s.stop();
}

const COMPACTING: &str = r#"
[cold]
flush_after_secs = 1
janitor_secs = 1
compact_min_files = 3
[tenants.acme]
tokens = ["acme-token"]
"#;

/// Ingest `rounds` requests of 500 logs, each flushed to its own file (or until the
/// server stops: a fault injected in the compaction those files start).
async fn small_files(s: &Server, rounds: i64) {
    for r in 0..rounds {
        send_logs(s, r * 500, 500).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let Some(m) = s.try_metrics().await else {
                return;
            };
            let rows = m
                .lines()
                .find_map(|l| l.strip_prefix("weir_cold_rows_total "))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap());
            if rows >= (r as u64 + 1) * 500 {
                break;
            }
            assert!(Instant::now() < deadline, "not flushed:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A crash during a compaction — after the merged file is written and before its
/// commit, or after the commit and before the small files are deleted — loses and
/// doubles nothing; after the restart the compaction completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_compaction_loses_and_doubles_nothing() {
    for fault in [
        "WEIR_FAULT_COMPACT_AFTER_PUT",
        "WEIR_FAULT_COMPACT_AFTER_COMMIT",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start_with_env(dir.path(), COMPACTING, &[(fault, "1")]);
        small_files(&s, 3).await;
        let mut s = s;
        wait_aborted(&mut s, fault).await;
        drop(s);
        let s = Server::start(dir.path(), COMPACTING);
        for sql in [
            "SELECT count(*) FROM logs",
            "SELECT count(*) FROM (SELECT DISTINCT \"partition\", \"offset\", seq FROM logs)",
            "SELECT count(DISTINCT message) FROM logs",
        ] {
            assert_eq!(s.count("acme-token", sql).await, 1500, "{fault}: {sql}");
        }
        // The compaction runs again and completes: one file, the same rows.
        let deadline = Instant::now() + Duration::from_secs(60);
        while parquet_files(&dir.path().join("data/cold")).len() > 1 {
            assert_eq!(
                s.count("acme-token", "SELECT count(*) FROM logs").await,
                1500
            );
            assert!(
                Instant::now() < deadline,
                "{fault}: not compacted:\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Before its commit, the compaction is redone after the restart; after it, the
        // restart only removes the small files the manifest no longer names.
        let redone = s.counter("weir_cold_compacted_files_total").await;
        if fault == "WEIR_FAULT_COMPACT_AFTER_PUT" {
            assert_eq!(redone, 3);
        } else {
            assert_eq!(redone, 0);
        }
        assert_eq!(
            s.count("acme-token", "SELECT count(DISTINCT message) FROM logs")
                .await,
            1500
        );
        s.stop();
    }
}

/// Retention set through the admin API at runtime, per stream: rows past it disappear
/// from queries at once and their files from disk at the janitor's next pass; back to
/// the config file's (none) with DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_changes_at_runtime_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[admin]\ntoken = \"admin-secret\"\n{COMPACTING}")
        .replace("compact_min_files = 3", "compact_min_files = 100");
    let s = Server::start(dir.path(), &config);
    const DAY: i64 = 86_400_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (stream, age_days, n) in [("app", 10, 300), ("app", 0, 200), ("audit", 10, 100)] {
        let body: String = (0..n)
            .map(|i| format!("{}\n", json!({"ts": now - age_days * DAY + i, "message": format!("{stream}{age_days}-{i}")})))
            .collect();
        let (st, v) = s.ingest("acme-token", stream, body).await;
        assert_eq!(st, 200, "{v}");
    }
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 600)
        .await;
    wait_flushed(&s, 600).await;
    let path = "/admin/v1/tenants/acme/retention";
    let (st, v) = support::admin_call(&s, "GET", path, "admin-secret", vec![]).await;
    assert_eq!((st, v["source"].as_str()), (200, Some("config")), "{v}");
    let bad = json!({"cold": "a week"}).to_string().into_bytes();
    let (st, v) = support::admin_call(&s, "PUT", path, "admin-secret", bad).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("a week"), "{v}");
    let files_before = parquet_files(&dir.path().join("data/cold")).len();
    let doc = json!({"cold": "3d", "streams": {"audit": {"cold": "30d"}}});
    let (st, v) = support::admin_call(
        &s,
        "PUT",
        path,
        "admin-secret",
        doc.to_string().into_bytes(),
    )
    .await;
    assert_eq!((st, v["source"].as_str()), (200, Some("admin")), "{v}");
    // At once for queries: the 10-day-old app rows are past 3 days, audit's 30 days are not.
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        300
    );
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(*) FROM logs WHERE stream = 'audit'"
        )
        .await,
        100
    );
    // For good at the next pass.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.counter("weir_retention_expired_rows_total").await < 300 {
        assert!(Instant::now() < deadline, "not expired:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.counter("weir_retention_expired_rows_total").await, 300);
    assert!(parquet_files(&dir.path().join("data/cold")).len() <= files_before);
    let (st, _) = support::admin_call(&s, "DELETE", path, "admin-secret", vec![]).await;
    assert_eq!(st, 200);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        300,
        "deleted rows stay deleted"
    );
    s.stop();
    // A config file's retention applies from the start.
    let config = config.replace(
        "[tenants.acme]\n",
        "[tenants.acme.retention]\ncold = \"1d\"\n[tenants.acme]\n",
    );
    let s = Server::start(dir.path(), &config);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        200
    );
    s.stop();
}

/// A standard Arrow Flight SQL client (Python ADBC, installed by scripts/setup.sh)
/// queries both tiers over the gRPC listener, with the tenant's token and only the
/// tenant's rows; a bad token and bad SQL get clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adbc_flight_sql_client_queries_both_tiers_of_its_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    send_logs(&s, 0, 1000).await;
    let (st, _) = s
        .ingest("globex-token", "app", "{\"message\":\"globex-secret\"}\n")
        .await;
    assert_eq!(st, 200);
    wait_flushed(&s, 1000).await;
    send_logs(&s, 1000, 500).await; // and some still hot
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 1500)
        .await;
    let script = r#"
import sys
from adbc_driver_flightsql import dbapi, DatabaseOptions
def connect(token):
    return dbapi.connect(sys.argv[1], db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + token})
with connect("acme-token") as conn, conn.cursor() as cur:
    cur.execute("SELECT count(*) AS n, count(*) FILTER (WHERE level = 'error') AS errors FROM logs")
    print(*cur.fetchone())
    cur.execute("SELECT count(*) FROM logs WHERE message = 'globex-secret'")
    print(cur.fetchone()[0])
    cur.execute("SELECT service, count(*) AS n FROM logs GROUP BY service ORDER BY service")
    t = cur.fetch_arrow_table()
    print(t.num_rows, t.column_names)
    try:
        cur.execute("SELECT nope FROM logs")
    except Exception as e:
        print("bad sql:", "nope" in str(e))
for token in ["wrong-token"]:
    try:
        with connect(token) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        print("bad token: accepted")
    except Exception as e:
        print("bad token:", "token" in str(e).lower() or "unauthenticated" in str(e).lower())
"#;
    let out = support::python(script, &[s.grpc.as_ref()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1500 375\n0\n3 ['service', 'n']\nbad sql: True\nbad token: True",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop();
}

/// Schema evolution across cold files: records written before a migration (field
/// `user`, `amount` as text) and after it (`first`/`last`, `amount` a number) land in
/// different files; one query reads both, field columns merge (`amount` becomes text
/// across files) and every record reads back with its own shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_across_cold_files_reads_as_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[admin]\ntoken = \"admin-secret\"\n{CONFIG}");
    let s = Server::start(dir.path(), &config);
    let orders = |from: i64| -> String {
        (from..from + 100)
            .map(|i| {
                format!(
                    "{}\n",
                    json!({"id": i, "user": "Ada Lovelace", "amount": "12.50"})
                )
            })
            .collect()
    };
    assert_eq!(s.ingest("acme-token", "orders", orders(0)).await.0, 200);
    wait_flushed(&s, 100).await;
    let pipeline = json!({"plugins": [{"plugin": "builtin:schema-migrate", "config": {
        "from": 1,
        "split": {"user": {"into": ["first", "last"]}},
        "retype": {"amount": "number"},
    }}]});
    let (st, v) = support::admin_call(
        &s,
        "PUT",
        "/admin/v1/tenants/acme/pipelines/orders",
        "admin-secret",
        pipeline.to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(s.ingest("acme-token", "orders", orders(100)).await.0, 200);
    wait_flushed(&s, 200).await;
    assert_eq!(
        parquet_files(&dir.path().join("data/cold/tenant=acme/table=logs")).len(),
        2
    );
    let c = |sql: &'static str| s.count("acme-token", sql);
    assert_eq!(c("SELECT count(*) FROM logs WHERE schema = 1").await, 100);
    assert_eq!(c("SELECT count(*) FROM logs WHERE schema = 2").await, 100);
    assert_eq!(c("SELECT count(\"user\") FROM logs").await, 100);
    assert_eq!(
        c("SELECT count(\"first\") FROM logs WHERE \"last\" = 'Lovelace'").await,
        100
    );
    assert_eq!(
        c("SELECT CAST(sum(CAST(\"amount\" AS DOUBLE)) AS BIGINT) FROM logs").await,
        2500
    );
    // Each record keeps its own shape: text amounts before, numbers after.
    assert_eq!(
        c("SELECT count(*) FROM logs WHERE schema = 2 AND json_get_float(record, 'amount') = 12.5 AND json_get_str(record, 'user') IS NULL").await,
        100
    );
    assert_eq!(
        c("SELECT count(*) FROM logs WHERE schema = 1 AND json_get_str(record, 'amount') = '12.50'").await,
        100
    );
    s.stop();
}

/// An S3-compatible server (moto, installed by scripts/setup.sh) on a loopback port,
/// stopped on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    /// Start it and create `bucket`.
    async fn start(bucket: &str) -> S3Server {
        let tools = std::env::var("WEIR_TOOLS").unwrap_or_else(|_| "/var/tmp/weir-tools".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(format!("{tools}/venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (scripts/setup.sh installs it)");
        let s3 = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        s3.create_bucket(bucket).await;
        s3
    }

    /// Create `bucket` (retried while the server starts).
    async fn create_bucket(&self, bucket: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match reqwest::Client::new()
                .put(format!("{}/{bucket}", self.endpoint))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return,
                _ => {
                    assert!(Instant::now() < deadline, "moto did not start");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The `[cold.s3]` section of a server config that uses it.
    fn settings(&self) -> String {
        format!(
            "\n[cold.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = \"true\"\n\
             access_key_id = \"test\"\nsecret_access_key = \"test\"\n",
            self.endpoint
        )
    }

    /// Keys below `prefix` in `bucket`.
    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = reqwest::get(format!(
            "{}/{bucket}?list-type=2&prefix={prefix}",
            self.endpoint
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }

    /// Rows of a Parquet object, read by pyarrow through boto3 (no Weir involved).
    fn parquet_rows(&self, bucket: &str, key: &str) -> String {
        // (os._exit: pyarrow next to boto3 can abort in its exit handlers)
        let script = "import sys, io, boto3, pyarrow.parquet as pq\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
            body = s3.get_object(Bucket=sys.argv[2], Key=sys.argv[3])['Body'].read()\n\
            print(pq.read_table(io.BytesIO(body)).num_rows, flush=True)\n\
            import os; os._exit(0)\n";
        let out = support::python(
            script,
            &[self.endpoint.as_ref(), bucket.as_ref(), key.as_ref()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cold tier on S3-compatible storage: flushes, a crash between a file's upload
/// and its commit (the orphan object is deleted at restart by listing the bucket),
/// compaction (read, rewrite, delete through S3), and queries across both tiers with
/// exact counts, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cold_tier_on_s3_compatible_storage() {
    let s3 = S3Server::start("weir-cold").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{COMPACTING}{}", s3.settings()).replace(
        "compact_min_files = 3",
        "compact_min_files = 3\nurl = \"s3://weir-cold/prod/tier\"",
    );
    let parquet_keys = || async {
        let mut k = s3.keys("weir-cold", "prod/tier/").await;
        k.retain(|k| k.ends_with(".parquet"));
        k
    };

    // A crash after the upload, before the manifest commit.
    let mut s = Server::start_with_env(dir.path(), &config, &[("WEIR_FAULT_COLD_AFTER_PUT", "1")]);
    send_logs(&s, 0, 500).await;
    wait_aborted(&mut s, "WEIR_FAULT_COLD_AFTER_PUT").await;
    let orphans = parquet_keys().await;
    assert_eq!(orphans.len(), 1, "one file uploaded before the crash");
    drop(s);

    s = Server::start(dir.path(), &config);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        500
    );
    assert!(
        !parquet_keys().await.contains(&orphans[0]),
        "the orphan object is deleted at startup"
    );
    wait_flushed(&s, 500).await;
    // Two more files of the same stream and day: the janitor compacts the three.
    for r in 1..3 {
        send_logs(&s, r * 500, 500).await;
        wait_flushed(&s, (r as u64 + 1) * 500).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.counter("weir_cold_compacted_files_total").await < 3 {
        assert_eq!(
            s.count("acme-token", "SELECT count(*) FROM logs").await,
            1500
        );
        assert!(Instant::now() < deadline, "not compacted:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.counter("weir_cold_deleted_files_total").await < 3 {
        assert!(
            Instant::now() < deadline,
            "small files not deleted:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = parquet_keys().await;
    assert_eq!(keys.len(), 1, "one merged file: {keys:?}");
    assert!(
        keys[0].starts_with("prod/tier/tenant=acme/table=logs/app/date=2030-01-15/"),
        "{keys:?}"
    );
    assert_eq!(
        s3.parquet_rows("weir-cold", &keys[0]),
        "1500",
        "plain Parquet"
    );
    for sql in [
        "SELECT count(*) FROM logs",
        "SELECT count(DISTINCT message) FROM logs",
    ] {
        assert_eq!(s.count("acme-token", sql).await, 1500, "{sql}");
    }
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(*) FROM logs WHERE service = 'svc1'"
        )
        .await,
        500
    );
    // Nothing on the local disk: the files are in the bucket only.
    assert!(parquet_files(dir.path()).is_empty());
    s.stop();

    // After a restart the manifest names the object and queries read it from S3.
    let s = Server::start(dir.path(), &config);
    send_logs(&s, 1500, 100).await;
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 1600)
        .await;
    assert_eq!(
        s.count("acme-token", "SELECT count(DISTINCT message) FROM logs")
            .await,
        1600
    );
    s.stop();
}

/// The object store failing (here: its bucket missing) neither stops the server nor
/// loses a row: the startup sweep fails, is counted and retried before any flush, the
/// rows stay hot and queryable; past twice the hot bound the workers stop taking rows
/// and ingest answers 429 once the log's lag bound is reached (backpressure, not
/// growth or eviction); once the bucket exists every accepted row moves to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_failure_keeps_rows_hot_until_it_recovers() {
    let s3 = S3Server::start("other").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}{}", s3.settings())
        .replace(
            "flush_after_secs = 1",
            "flush_after_secs = 1\nurl = \"s3://late/tier\"",
        )
        .replace(
            "[cold]",
            "[hot]\nmax_mb = 1\n[log]\npartitions = 1\nmax_lag_bytes = 1048576\n[cold]",
        );
    let s = Server::start(dir.path(), &config);
    send_logs(&s, 0, 500).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.counter("weir_cold_errors_total{op=\"sweep\"}").await < 2 {
        assert!(
            Instant::now() < deadline,
            "no failure counted:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        500
    );
    assert_eq!(cold_rows(&s).await, 0);
    // Keep sending until ingest pushes back.
    let mut accepted = 500;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body: String = (accepted..accepted + 1000)
            .map(|i| {
                format!(
                    "{}\n",
                    json!({"ts": T0 + i, "message": format!("event {i}"), "pad": "x".repeat(200)})
                )
            })
            .collect();
        let (st, v) = s.ingest("acme-token", "app", body).await;
        match st {
            200 => accepted += 1000,
            // Backpressure from the hot store's bound, not a worker that lags behind on
            // a loaded machine (the log's lag bound answers 429 too): retry until hot
            // rows reach the bound.
            429 if s.counter("weir_hot_bytes").await >= 1 << 20 => break,
            429 => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => panic!("{st}: {v}"),
        }
        assert!(
            Instant::now() < deadline,
            "no backpressure after {accepted} rows:\n{}",
            s.log()
        );
    }
    assert_eq!(
        s.counter("weir_hot_evicted_rows").await,
        0,
        "nothing evicted"
    );
    // Held near twice the bound (plus the commit that crossed it), not growing.
    let held = s.counter("weir_hot_bytes").await;
    assert!((1 << 20..3 << 20).contains(&held), "hot bytes {held}");
    s3.create_bucket("late").await;
    wait_flushed(&s, accepted as u64).await;
    assert_eq!(
        s.count("acme-token", "SELECT count(DISTINCT message) FROM logs")
            .await,
        accepted
    );
    let keys = s3.keys("late", "tier/").await;
    assert!(keys.iter().any(|k| k.ends_with(".parquet")), "{keys:?}");
    s.stop();
}
