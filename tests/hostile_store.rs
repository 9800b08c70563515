//! End-to-end tests of the store against hostile data (issue 12): rows the cold tier
//! cannot write are quarantined and never stop other rows, tenants or files; dead
//! letters and quarantined rows are their tenant's only; retention durations are
//! range-checked; the startup sweep deletes only files this server wrote.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{admin_call, Server};

const TENANTS: &str = r#"
[admin]
token = "admin-secret"
[cold]
flush_after_secs = 1
janitor_secs = 1
[tenants.acme]
tokens = ["acme-token"]
[tenants.globex]
tokens = ["globex-token"]
"#;

/// 2030-01-15T08:00:00Z in epoch ms.
const T0: i64 = 1_894_694_400_000;

/// What `{"x":1e400}`, a lone surrogate and an array nested 200 deep look like: JSON
/// the ingest door now refuses, which the cold flush cannot write either.
fn poison_lines() -> String {
    let deep = format!("{{\"d\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    format!("{{\"x\":1e400}}\n{{\"s\":\"\\ud800\"}}\n{deep}\n")
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(".parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Rows of the `logs` files of `tenant` on disk (from each file's Parquet footer).
fn rows_in_files(cold: &Path, tenant: &str) -> i64 {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    parquet_files(&cold.join(format!("tenant={tenant}")).join("table=logs"))
        .iter()
        .map(|p| {
            let r = SerializedFileReader::new(std::fs::File::open(p).unwrap()).unwrap();
            r.metadata().file_metadata().num_rows()
        })
        .sum()
}

async fn send(s: &Server, token: &str, from: i64, n: i64) {
    let body: String = (from..from + n)
        .map(|i| {
            format!(
                "{}\n",
                json!({"ts": T0 + i, "message": format!("event {i}")})
            )
        })
        .collect();
    let (st, v) = s.ingest(token, "app", body).await;
    assert_eq!(st, 200, "{v}");
}

/// Wait (up to a minute) until `cond` holds.
async fn wait_for<F, Fut>(s: &Server, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The flush errors stay where they are for 3 s (several flush passes).
async fn no_flush_errors(s: &Server) {
    for _ in 0..6 {
        assert_eq!(
            s.counter("weir_cold_errors_total{op=\"flush\"}").await,
            0,
            "{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Write `segments` (tenant, stream, partition, offset, NDJSON) into a `store.redb` as
/// an older version of Weir could have left them: no check on the way.
fn seed_store(data: &Path, segments: &[(&str, &str, u32, u64, String)]) {
    std::fs::create_dir_all(data).unwrap();
    let db = redb::Database::create(data.join("store.redb")).unwrap();
    let w = db.begin_write().unwrap();
    {
        let def: redb::TableDefinition<(u32, u64), &[u8]> = redb::TableDefinition::new("segments");
        let mut t = w.open_table(def).unwrap();
        for (tenant, stream, p, o, nd) in segments {
            let b = weir_core::Batch {
                tenant: (*tenant).into(),
                stream: (*stream).into(),
                ingest_ts_ms: T0,
                count: nd.lines().count() as u32,
                records: nd.clone().into_bytes(),
                replay_of: None,
            };
            let mut buf = Vec::new();
            b.encode_into(&mut buf);
            t.insert((*p, *o), buf.as_slice()).unwrap();
        }
    }
    w.commit().unwrap();
}

/// Poison rows already in the hot tier (stored by a version before the ingest checks)
/// are quarantined: every other row of that tenant and of another tenant reaches
/// Parquet on the same pass, the poison rows are visible to their tenant only (SQL
/// table `quarantine`, with the reason and the rows exactly), counted, the flush never
/// fails, ingest never pushes back, and a restart has nothing left to fail on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_in_the_hot_tier_are_quarantined_and_the_rest_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let good = |from: i64, n: i64| -> String {
        (from..from + n)
            .map(|i| format!("{}\n", json!({"ts": T0 + i, "message": format!("old {i}")})))
            .collect()
    };
    // A first run: 5 entries per tenant, flushed (so that the partitions' positions, and
    // the aggregator's, are past offset 4).
    let s = Server::start(dir.path(), TENANTS);
    for r in 0..5 {
        send(&s, "acme-token", r * 10, 10).await;
        send(&s, "globex-token", r * 10, 10).await;
    }
    wait_for(&s, "first rows not flushed", || async {
        s.counter("weir_cold_rows_total").await >= 100
    })
    .await;
    let partition = |token: &'static str| {
        let s = &s;
        async move {
            let (_, v) = s
                .query(token, "SELECT DISTINCT \"partition\" FROM logs")
                .await;
            v["rows"][0][0].as_u64().unwrap() as u32
        }
    };
    let (pa, pg) = (
        partition("acme-token").await,
        partition("globex-token").await,
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // an aggregator checkpoint
    s.stop();
    // What an older version could have left hot at consumed offsets.
    seed_store(
        &dir.path().join("data"),
        &[
            ("acme", "app", pa, 0, good(0, 50)),
            ("acme", "app", pa, 1, poison_lines()),
            ("acme", "app", pa, 2, good(50, 20)),
            ("globex", "app", pg, 3, good(0, 30)),
        ],
    );
    let s = Server::start(dir.path(), TENANTS);
    let cold = dir.path().join("data/cold");
    wait_for(&s, "seeded rows not flushed", || async {
        s.counter("weir_cold_rows_total").await >= 100
    })
    .await;
    assert_eq!(s.counter("weir_cold_rows_total").await, 100);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        120
    );
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM logs").await,
        80
    );
    assert_eq!(rows_in_files(&cold, "acme"), 120);
    assert_eq!(rows_in_files(&cold, "globex"), 80);
    assert_eq!(
        s.counter("weir_cold_quarantined_rows_total{tenant=\"acme\"}")
            .await,
        3
    );
    let (st, v) = s
        .query(
            "acme-token",
            "SELECT stream, \"offset\", \"rows\", error, records FROM quarantine",
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0][0], "app");
    assert_eq!(
        (rows[0][1].as_u64(), rows[0][2].as_u64()),
        (Some(1), Some(3))
    );
    assert!(rows[0][3].as_str().unwrap().len() > 10, "{v}");
    assert_eq!(
        rows[0][4].as_str().unwrap(),
        poison_lines(),
        "the rows exactly"
    );
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM quarantine")
            .await,
        0
    );
    no_flush_errors(&s).await;
    // New rows keep flowing and flushing: no backpressure builds up.
    for r in 0..5 {
        send(&s, "acme-token", 1000 + r * 100, 100).await;
        send(&s, "globex-token", 1000 + r * 100, 100).await;
    }
    wait_for(&s, "new rows not flushed", || async {
        s.counter("weir_cold_rows_total").await >= 1100
    })
    .await;
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        620
    );
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM logs").await,
        580
    );
    no_flush_errors(&s).await;
    s.stop();
    // A restart: the quarantine is kept, nothing is retried or lost.
    let s = Server::start(dir.path(), TENANTS);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM quarantine")
            .await,
        1
    );
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        620
    );
    no_flush_errors(&s).await;
    assert_eq!(rows_in_files(&cold, "acme"), 620);
    assert_eq!(rows_in_files(&cold, "globex"), 580);
    s.stop();
}

/// A plugin emitting what the ingest door refuses (its output is not checked at the
/// door) never stops the cold tier: its tenant's other rows and another tenant's reach
/// Parquet with exact counts, the flush never fails, ingest never pushes back, and the
/// poison is its tenant's only — quarantined by the flush, or dead-lettered where the
/// worker refuses such output before it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_from_a_plugin_never_stops_the_cold_tier() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = support::hostile_wasm(dir.path());
    let raw = serde_json::to_string(&poison_lines()).unwrap();
    let config = format!(
        "{TENANTS}[tenants.acme.streams.app]\nplugins = [{{ plugin = \"file:{}\", config = {{ mode = \"inject\", marker = \"POISON\", raw = {raw} }} }}]\n",
        wasm.display()
    );
    let s = Server::start(dir.path(), &config);
    send(&s, "acme-token", 0, 100).await;
    let (st, v) = s.ingest("acme-token", "app", "{\"m\":\"POISON\"}\n").await;
    assert_eq!(st, 200, "{v}");
    send(&s, "acme-token", 100, 100).await;
    send(&s, "globex-token", 0, 40).await;
    wait_for(&s, "rows not flushed", || async {
        s.counter("weir_cold_rows_total").await >= 240
    })
    .await;
    let poison_seen = || async {
        s.count("acme-token", "SELECT count(*) FROM quarantine")
            .await
            + s.count("acme-token", "SELECT count(*) FROM dead_letters")
                .await
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while poison_seen().await != 1 {
        if Instant::now() > deadline {
            let (_, v) = s
                .query(
                    "acme-token",
                    "SELECT \"partition\", \"offset\", record FROM logs WHERE record NOT LIKE '%event%'",
                )
                .await;
            panic!("poison not set aside: {v}\n{}", s.metrics().await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.counter("weir_cold_rows_total").await, 240);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        200
    );
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM logs").await,
        40
    );
    let cold = dir.path().join("data/cold");
    assert_eq!(rows_in_files(&cold, "acme"), 200);
    assert_eq!(rows_in_files(&cold, "globex"), 40);
    if s.count("acme-token", "SELECT count(*) FROM quarantine")
        .await
        == 1
    {
        assert_eq!(
            s.count("acme-token", "SELECT sum(\"rows\") FROM quarantine")
                .await,
            3
        );
        assert_eq!(
            s.counter("weir_cold_quarantined_rows_total{tenant=\"acme\"}")
                .await,
            3
        );
    }
    for table in ["quarantine", "dead_letters"] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(s.count("globex-token", &sql).await, 0, "{table}");
    }
    no_flush_errors(&s).await;
    for r in 0..5 {
        send(&s, "globex-token", 1000 + r * 100, 100).await;
    }
    s.wait_count("globex-token", "SELECT count(*) FROM logs", 540)
        .await;
    s.stop();
}

/// One tenant's dead letters are never another's: not in its `dead_letters` SQL table,
/// not in the admin API's list for it, not replayable through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_their_tenants_only() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = support::hostile_wasm(dir.path());
    let config = format!(
        "{TENANTS}[tenants.acme.streams.app]\nplugins = [{{ plugin = \"file:{}\", config = {{ mode = \"fail\" }} }}]\n",
        wasm.display()
    );
    let s = Server::start(dir.path(), &config);
    for i in 0..3 {
        send(&s, "acme-token", i * 10, 10).await;
    }
    send(&s, "globex-token", 0, 10).await;
    s.wait_count(
        "acme-token",
        "SELECT coalesce(sum(\"count\"), 0) FROM dead_letters",
        30,
    )
    .await;
    s.wait_count("globex-token", "SELECT count(*) FROM logs", 10)
        .await;
    let letters = s
        .count("acme-token", "SELECT count(*) FROM dead_letters")
        .await as usize;
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM dead_letters")
            .await,
        0
    );
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(*) FROM dead_letters WHERE tenant <> 'acme'"
        )
        .await,
        0
    );
    let list = |t: &'static str| {
        let s = &s;
        async move {
            let (st, v) = admin_call(
                s,
                "GET",
                &format!("/admin/v1/tenants/{t}/dead-letters"),
                "admin-secret",
                vec![],
            )
            .await;
            assert_eq!(st, 200, "{v}");
            v["dead_letters"].as_array().unwrap().len()
        }
    };
    assert_eq!(list("acme").await, letters);
    assert_eq!(list("globex").await, 0);
    // Naming acme's dead letter through globex finds nothing.
    let (_, v) = admin_call(
        &s,
        "GET",
        "/admin/v1/tenants/acme/dead-letters",
        "admin-secret",
        vec![],
    )
    .await;
    let id = v["dead_letters"][0]["id"].as_str().unwrap().to_owned();
    let (st, _) = admin_call(
        &s,
        "POST",
        "/admin/v1/tenants/globex/dead-letters/replay",
        "admin-secret",
        json!({ "ids": [id] }).to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(list("acme").await, letters);
    s.stop();
}

/// A retention past 100 years is refused with a 400 naming the bound (it wrapped to a
/// negative age and deleted every row), and no row is deleted — not hidden from
/// queries, not by the janitor's passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_past_100_years_is_refused_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), TENANTS);
    send(&s, "acme-token", 0, 200).await;
    wait_for(&s, "rows not flushed", || async {
        s.counter("weir_cold_rows_total").await >= 200
    })
    .await;
    send(&s, "acme-token", 200, 50).await; // and some hot
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 250)
        .await;
    let path = "/admin/v1/tenants/acme/retention";
    for (doc, key) in [
        (json!({"cold": "200000000000d"}), "cold"),
        (json!({"rollups": "99999999999999999999d"}), "rollups"),
        (
            json!({"streams": {"app": {"cold": "36501d"}}}),
            "streams.app.cold",
        ),
        (json!({"hot": "18446744073709551615ms"}), "hot"),
    ] {
        let (st, v) = admin_call(
            &s,
            "PUT",
            path,
            "admin-secret",
            doc.to_string().into_bytes(),
        )
        .await;
        assert_eq!(st, 400, "{doc}: {v}");
        let e = v.to_string();
        assert!(
            e.contains("at most 100 years") && e.contains(key),
            "{doc}: {e}"
        );
    }
    let (st, v) = admin_call(&s, "GET", path, "admin-secret", vec![]).await;
    assert_eq!((st, v["source"].as_str()), (200, Some("config")), "{v}");
    // Several janitor passes later, every row is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        250
    );
    assert_eq!(s.counter("weir_retention_expired_rows_total").await, 0);
    // The bound itself is accepted.
    let (st, v) = admin_call(
        &s,
        "PUT",
        path,
        "admin-secret",
        json!({"cold": "36500d"}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM logs").await,
        250
    );
    s.stop();
}

/// The startup sweep deletes only what this server wrote: another server's files under
/// the same prefix (and their half-written uploads) survive a restart, and so does
/// every file after `store.redb` is restored from a backup older than them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_sweep_deletes_only_files_this_server_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let cold = dir.path().join("data/cold");
    let s = Server::start(dir.path(), TENANTS);
    send(&s, "acme-token", 0, 100).await;
    wait_for(&s, "rows not flushed", || async {
        s.counter("weir_cold_rows_total").await >= 100
    })
    .await;
    s.stop();
    let ours = parquet_files(&cold);
    assert_eq!(ours.len(), 1);
    // Another server's files under the same prefix, at the root as with a bucket URL
    // without a prefix, and a half-written upload of its own.
    let day = ours[0].parent().unwrap();
    let foreign = [
        day.join("1894694400000-0-0-another-server.parquet"),
        day.join("1894694400000-0-0-another-server-upload.parquet#7"),
        cold.join("tenant=other/table=logs/app/date=2030-01-15/x.parquet"),
        cold.join("root.parquet"),
    ];
    for f in &foreign {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b"PAR1 not ours PAR1").unwrap();
    }
    std::fs::copy(
        dir.path().join("data/store.redb"),
        dir.path().join("backup.redb"),
    )
    .unwrap();
    let s = Server::start(dir.path(), TENANTS);
    send(&s, "acme-token", 100, 100).await;
    wait_for(&s, "rows not flushed", || async {
        s.counter("weir_cold_rows_total").await >= 100
    })
    .await;
    s.stop();
    for f in &foreign {
        assert!(f.exists(), "{} was deleted", f.display());
    }
    let before = parquet_files(&cold);
    assert_eq!(before.len(), foreign.len() + 2, "{before:?}");
    // store.redb restored from the backup: its manifest does not name the second file.
    std::fs::copy(
        dir.path().join("backup.redb"),
        dir.path().join("data/store.redb"),
    )
    .unwrap();
    let s = Server::start(dir.path(), TENANTS);
    let n = s.count("acme-token", "SELECT count(*) FROM logs").await;
    assert!(n >= 100, "{n}");
    s.stop();
    let after = parquet_files(&cold);
    for f in &before {
        assert!(after.contains(f), "{} was deleted", f.display());
    }
}
