use super::*;
use weir_core::config::PluginRef;
use weir_core::Config;
use weir_transport::{RedbLog, RedbLogOptions};

struct Rig {
    _dir: tempfile::TempDir,
    log: Arc<RedbLog>,
    store: Arc<HotStore>,
    catalog: Arc<Catalog>,
    metrics: Arc<WorkerMetrics>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let hostile = dir.path().join("hostile.wasm");
    std::fs::write(
        &hostile,
        weir_builtins::fixture("weir-fixture-hostile").unwrap(),
    )
    .unwrap();
    let cfg = Config::from_toml(&format!(
        r#"
[tenants.t]
tokens = ["k"]
[tenants.t.streams.app]
plugins = [{{ plugin = "builtin:logfmt" }}, {{ plugin = "builtin:pii-redact" }}]
[tenants.t.streams.picky]
plugins = [{{ plugin = "file:{}", config = {{ mode = "fail-if", marker = "poison" }} }}]
[tenants.t.streams.loops]
plugins = [{{ plugin = "file:{}", config = {{ mode = "loop" }} }}]
[tenants.t.streams.dups]
plugins = [{{ plugin = "file:{}", config = {{ mode = "tag", field = "level", tag = "x" }} }}]
[plugins]
deadline_ms = 100
"#,
        hostile.display(),
        hostile.display(),
        hostile.display()
    ))
    .unwrap();
    let log = Arc::new(
        RedbLog::open(
            &dir.path().join("log.redb"),
            RedbLogOptions {
                partitions: 1,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let store = Arc::new(HotStore::open(&dir.path().join("store.redb"), usize::MAX).unwrap());
    let registry = Arc::new(crate::PluginRegistry::open(&dir.path().join("plugins.redb")).unwrap());
    let catalog =
        Arc::new(Catalog::new(Arc::new(cfg), registry, &Registry::default(), None).unwrap());
    catalog.check_config().unwrap();
    let metrics = Arc::new(WorkerMetrics::new(&Registry::default()));
    Rig {
        _dir: dir,
        log,
        store,
        catalog,
        metrics,
    }
}

fn append(log: &RedbLog, stream: &str, lines: &[&str]) {
    append_replay(log, stream, lines, None);
}

fn append_replay(log: &RedbLog, stream: &str, lines: &[&str], replay_of: Option<(u32, u64)>) {
    let mut records = Vec::new();
    for l in lines {
        records.extend_from_slice(l.as_bytes());
        records.push(b'\n');
    }
    let b = Batch {
        tenant: "t".into(),
        stream: stream.into(),
        ingest_ts_ms: 1,
        count: lines.len() as u32,
        records,
        replay_of,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async { log.append(vec![(0, b)]).unwrap().await.unwrap().unwrap() });
}

/// Run one worker until it has consumed everything appended so far.
fn drain(r: &Rig) {
    let target = r.log.end_offset(0);
    let w = Worker::new(
        0,
        r.log.clone(),
        r.store.clone(),
        r.catalog.clone(),
        1000,
        r.metrics.clone(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let h = std::thread::spawn(move || w.run(&s2));
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.store.position(0) < target {
        assert!(Instant::now() < deadline, "worker did not catch up");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

fn records(store: &HotStore) -> Vec<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = rt
        .block_on(store.query("t", "SELECT record FROM logs ORDER BY \"offset\", seq"))
        .unwrap();
    r.to_json().unwrap()["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str(row[0].as_str().unwrap()).unwrap())
        .collect()
}

#[test]
fn chain_parses_then_redacts() {
    let r = rig();
    append(
        &r.log,
        "app",
        &[r#"{"message":"user=ann email=ann@example.com took=5"}"#],
    );
    drain(&r);
    let recs = records(&r.store);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["user"], "ann");
    assert_eq!(recs[0]["email"], "[REDACTED:email]");
    assert_eq!(recs[0]["took"], 5);
    assert!(!recs[0].to_string().contains("ann@example.com"));
}

#[test]
fn failing_entry_is_dead_lettered_and_the_rest_lands() {
    let r = rig();
    append(&r.log, "picky", &[r#"{"a":"fine"}"#]);
    append(&r.log, "picky", &[r#"{"a":"poison"}"#, r#"{"a":"x"}"#]);
    append(&r.log, "picky", &[r#"{"a":"fine too"}"#]);
    drain(&r);
    assert_eq!(records(&r.store).len(), 2);
    let dl = r.store.dead_letters("t").unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!((dl[0].offset, dl[0].count), (1, 2));
    assert!(dl[0].error.contains("poison"), "{}", dl[0].error);
    assert!(dl[0].records.contains("poison"));
    assert_eq!(dl[0].plugin_sha256.len(), 64);
}

#[test]
fn looping_plugin_is_stopped_and_worker_goes_on() {
    let r = rig();
    append(&r.log, "loops", &[r#"{"a":1}"#]);
    append(&r.log, "app", &[r#"{"message":"after"}"#]);
    drain(&r);
    let dl = r.store.dead_letters("t").unwrap();
    assert_eq!(dl.len(), 1);
    assert!(dl[0].error.contains("deadline"), "{}", dl[0].error);
    assert_eq!(records(&r.store).len(), 1);
}

#[test]
fn restart_neither_loses_nor_duplicates() {
    let r = rig();
    append(&r.log, "app", &[r#"{"message":"one"}"#]);
    drain(&r);
    append(
        &r.log,
        "app",
        &[r#"{"message":"two"}"#, r#"{"message":"three"}"#],
    );
    drain(&r); // a new worker resumes from the store's position
    let msgs: Vec<String> = records(&r.store)
        .iter()
        .map(|v| v["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(msgs, ["one", "two", "three"]);
}

#[test]
fn instance_limit_holds_per_tenant() {
    let text = r#"
[log]
partitions = 1
[tenants.t]
tokens = ["k"]
limits = { max_instances = 2 }
[tenants.t.streams.a]
plugins = [{ plugin = "builtin:logfmt" }, { plugin = "builtin:logfmt" }]
[tenants.t.streams.b]
plugins = [{ plugin = "builtin:logfmt" }]
[tenants.u]
tokens = ["j"]
[tenants.u.streams.a]
plugins = [{ plugin = "builtin:logfmt" }]
"#;
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(crate::PluginRegistry::open(&dir.path().join("plugins.redb")).unwrap());
    let cfg = Arc::new(Config::from_toml(text).unwrap());
    let catalog = Catalog::new(cfg, registry, &Registry::default(), None).unwrap();
    let refused = catalog.check_config().unwrap_err().to_string();
    assert!(
        refused.contains("tenant t: 3 pipeline stages on 1 partitions need 3"),
        "{refused}"
    );
    let a = catalog.chain("t", "a").unwrap();
    assert_eq!(catalog.instances("t"), 2);
    let err = catalog.chain("t", "b").err().expect("over the limit");
    assert!(
        matches!(err, crate::PipelineError::InstanceLimit { limit: 2 }),
        "{err}"
    );
    assert_eq!(catalog.instances("t"), 2, "a refused chain holds nothing");
    let u = catalog.chain("u", "a").unwrap();
    assert_eq!(
        (u.len(), catalog.instances("u")),
        (1, 1),
        "tenants count apart"
    );
    drop(a);
    assert_eq!(catalog.instances("t"), 0);
    assert_eq!(catalog.chain("t", "b").unwrap().len(), 1);
    let two = vec![
        PluginRef {
            plugin: "builtin:logfmt".into(),
            config: None,
            wasi: None,
        };
        2
    ];
    let over = catalog
        .check_pipeline("t", "b", &two)
        .unwrap_err()
        .to_string();
    assert!(over.contains("need 4"), "{over}");
}

/// Plugin output that breaks the record rules (here a duplicate key the plugin adds)
/// dead-letters its entry with the rule named; a replay fails the same way once,
/// replacing its dead letter, and nothing retries it by itself.
#[test]
fn plugin_output_breaking_the_record_rules_is_dead_lettered_once() {
    let r = rig();
    append(&r.log, "dups", &[r#"{"level":"a","n":1}"#, r#"{"n":2}"#]);
    append(&r.log, "app", &[r#"{"message":"fine"}"#]);
    drain(&r);
    let dl = r.store.dead_letters("t").unwrap();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!((dl[0].stream.as_str(), dl[0].count), ("dups", 2));
    assert!(
        dl[0]
            .error
            .contains("invalid output: line 1 breaks the record rules: duplicate key"),
        "{}",
        dl[0].error
    );
    assert!(dl[0].plugin.starts_with("file:"), "{}", dl[0].plugin);
    assert_eq!(
        records(&r.store).len(),
        1,
        "the other stream's entry landed"
    );
    // A replay of the dead letter: fails again, replaces it, and stops there.
    let first = (dl[0].partition, dl[0].offset);
    let lines: Vec<&str> = dl[0].records.lines().collect();
    append_replay(&r.log, "dups", &lines, Some(first));
    drain(&r);
    let dl = r.store.dead_letters("t").unwrap();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].replay_of, Some(first));
    assert!(dl[0].error.contains("duplicate key"), "{}", dl[0].error);
    let end = r.log.end_offset(0);
    drain(&r);
    assert_eq!(r.log.end_offset(0), end, "nothing was appended by itself");
    assert_eq!(r.store.dead_letters("t").unwrap().len(), 1);
    assert_eq!(records(&r.store).len(), 1);
}
