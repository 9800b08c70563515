//! End-to-end tests of the plugin sandbox against the real binary: plugins that block
//! in WASI, spread memory over several memories, take long to compile, and PII written
//! as JSON numbers.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{admin_call, Server};

include!("fixtures/wat/components.rs");

const CONFIG: &str = r#"
[admin]
token = "admin-secret"
[log]
partitions = 1
[plugins]
deadline_ms = 300
memory_mb = 32
compile_timeout_ms = 120000
max_concurrent_compiles = 2
max_compiles_per_tenant = 1
quarantine_after = 100
[tenants.acme]
tokens = ["acme-token"]
[tenants.globex]
tokens = ["globex-token"]
"#;

async fn upload(s: &Server, tenant: &str, name: &str, wasm: Vec<u8>) -> (u16, Value) {
    admin_call(
        s,
        "PUT",
        &format!("/admin/v1/tenants/{tenant}/plugins/{name}"),
        "admin-secret",
        wasm,
    )
    .await
}

async fn set_pipeline(s: &Server, tenant: &str, stream: &str, plugins: Value) {
    let (st, v) = admin_call(
        s,
        "PUT",
        &format!("/admin/v1/tenants/{tenant}/pipelines/{stream}"),
        "admin-secret",
        json!({ "plugins": plugins }).to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

/// The tenant's dead letters (admin API).
async fn dead_letters(s: &Server, tenant: &str) -> Vec<Value> {
    let (st, v) = admin_call(
        s,
        "GET",
        &format!("/admin/v1/tenants/{tenant}/dead-letters"),
        "admin-secret",
        vec![],
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["dead_letters"].as_array().cloned().unwrap_or_default()
}

/// Poll until the tenant's dead letters hold `records` records; panics after a minute.
async fn wait_dead_records(s: &Server, tenant: &str, records: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dead = dead_letters(s, tenant).await;
        let n: u64 = dead.iter().map(|d| d["count"].as_u64().unwrap()).sum();
        if n == records {
            return dead;
        }
        assert!(
            n < records,
            "{n} dead-lettered records, more than {records}"
        );
        assert!(
            Instant::now() < deadline,
            "stuck at {n} of {records} dead-lettered records\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_plugin_fails_at_its_deadline_while_another_tenant_flows_and_shutdown_is_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    let hostile = weir_builtins::fixture("weir-fixture-hostile")
        .unwrap()
        .to_vec();
    assert_eq!(upload(&s, "acme", "sleeper", hostile).await.0, 200);
    set_pipeline(
        &s,
        "acme",
        "app",
        json!([{ "plugin": "sleeper", "config": { "mode": "sleep" } }]),
    )
    .await;
    set_pipeline(
        &s,
        "globex",
        "app",
        json!([{ "plugin": "builtin:pii-redact" }]),
    )
    .await;

    // Both tenants share the one partition: acme's batches sleep an hour each, globex's
    // must still all land.
    let started = Instant::now();
    for i in 0..3 {
        let (st, _) = s
            .ingest("acme-token", "app", format!("{{\"acme\":{i}}}"))
            .await;
        assert_eq!(st, 200);
        for j in 0..10 {
            let (st, _) = s
                .ingest(
                    "globex-token",
                    "app",
                    format!("{{\"globex\":{}}}", i * 10 + j),
                )
                .await;
            assert_eq!(st, 200);
        }
    }
    s.wait_count("globex-token", "SELECT count(*) FROM logs", 30)
        .await;
    let dead = wait_dead_records(&s, "acme", 3).await;
    let took = started.elapsed();
    for d in &dead {
        let e = d["error"].as_str().unwrap();
        assert!(e.contains("deadline"), "{d}");
    }
    // Three batches of at most the 300 ms deadline each (or fewer calls once the stage is
    // quarantined), not hours; generous for a loaded machine.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(s.count("acme-token", "SELECT count(*) FROM logs").await, 0);
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM dead_letters")
            .await,
        0
    );

    // A sleeping batch in flight does not hold up shutdown.
    s.ingest("acme-token", "app", "{\"acme\":99}").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    s.stop();
    let stop = t.elapsed();
    assert!(stop < Duration::from_secs(15), "SIGTERM took {stop:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_spread_over_several_memories_is_capped_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    // Three memories of 12 MiB: each under the 32 MiB cap, together over it. Refused at
    // upload, with the cap named.
    let big = wat::parse_str(memories_component(3, 192, 0)).unwrap();
    let (st, v) = upload(&s, "acme", "spread", big).await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("memory limit of 33554432 bytes"),
        "{v}"
    );
    // More memories than an instance may have: refused too.
    let many = wat::parse_str(memories_component(8, 1, 0)).unwrap();
    let (st, v) = upload(&s, "acme", "many", many).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("memories"), "{v}");

    // Three small memories that each grow by 12 MiB per batch: accepted, and every
    // batch traps at the cap into the dead letters.
    let growing = wat::parse_str(memories_component(3, 1, 192)).unwrap();
    let (st, v) = upload(&s, "acme", "grower", growing).await;
    assert_eq!(st, 200, "{v}");
    set_pipeline(&s, "acme", "app", json!([{ "plugin": "grower" }])).await;
    for i in 0..2 {
        s.ingest("acme-token", "app", format!("{{\"i\":{i}}}"))
            .await;
    }
    let dead = wait_dead_records(&s, "acme", 2).await;
    for d in &dead {
        assert!(
            d["error"]
                .as_str()
                .unwrap()
                .contains("memory limit of 33554432 bytes"),
            "{d}"
        );
    }
    assert_eq!(s.count("acme-token", "SELECT count(*) FROM logs").await, 0);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_compile_is_cut_off_and_blocks_no_other_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("compile_timeout_ms = 120000", "compile_timeout_ms = 1000");
    let s = Server::start(dir.path(), &config);
    let slow = wat::parse_str(slow_component(SLOW_FUNCTIONS, SLOW_STATEMENTS)).unwrap();
    let admin = s.admin.clone().unwrap();
    let slow_upload = tokio::spawn(async move {
        let t = Instant::now();
        let r = reqwest::Client::new()
            .put(format!("{admin}/admin/v1/tenants/acme/plugins/slow"))
            .bearer_auth("admin-secret")
            .body(slow)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (status, v, t.elapsed(), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // While acme's compile runs: acme's next upload is refused at once (its one compile
    // slot is taken)...
    let tiny = wat::parse_str(memories_component(0, 1, 0)).unwrap();
    let (st, v) = upload(&s, "acme", "tiny", tiny.clone()).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("max_compiles_per_tenant"),
        "{v}"
    );
    // ...and globex's upload compiles beside it and is done first.
    let (st, v) = upload(&s, "globex", "tiny", tiny).await;
    let globex_done = Instant::now();
    assert_eq!(st, 200, "{v}");
    set_pipeline(&s, "globex", "app", json!([{ "plugin": "tiny" }])).await;
    s.ingest("globex-token", "app", "{\"g\":1}").await;
    s.wait_count("globex-token", "SELECT count(*) FROM logs", 1)
        .await;

    let (st, v, took, acme_done) = slow_upload.await.unwrap();
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("longer than the limit"),
        "{v}"
    );
    assert!(globex_done < acme_done, "globex waited for acme's compile");
    assert!(
        took < Duration::from_secs(20),
        "the compile was cut after {took:?}"
    );
    // Nothing of the refused upload was kept.
    let (st, _) = admin_call(
        &s,
        "GET",
        "/admin/v1/tenants/acme/plugins/slow",
        "admin-secret",
        vec![],
    )
    .await;
    assert_eq!(st, 404);
    s.stop();
}

/// Size of the slow component: about 4.6 MB of Wasm that takes many seconds to compile
/// (more than `compile_timeout_ms`).
const SLOW_FUNCTIONS: usize = 100;
const SLOW_STATEMENTS: usize = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_written_as_numbers_is_masked_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG);
    set_pipeline(
        &s,
        "globex",
        "app",
        json!([{ "plugin": "builtin:pii-redact" }]),
    )
    .await;
    let (st, v) = s
        .ingest(
            "globex-token",
            "app",
            "{\"card\":4111111111111111,\"phone\":15551234567,\"ts\":1732871234567}\n",
        )
        .await;
    assert_eq!(st, 200, "{v}");
    s.wait_count("globex-token", "SELECT count(*) FROM logs", 1)
        .await;
    let (st, v) = s
        .query(
            "globex-token",
            "SELECT json_get_str(record, 'card'), json_get_str(record, 'phone'), json_get_int(record, 'ts') FROM logs",
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["rows"][0],
        json!(["[REDACTED:card]", "[REDACTED:phone]", 1732871234567i64]),
        "{v}"
    );
    assert_eq!(
        s.count(
            "globex-token",
            "SELECT count(*) FROM logs WHERE record LIKE '%4111111111111111%' OR record LIKE '%15551234567%'"
        )
        .await,
        0
    );
    s.stop();
}
