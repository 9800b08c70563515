//! End-to-end tests of the plugin platform: the admin API, live swaps, rollbacks, dead
//! letters, and plugins in every language built from `examples/` with `weir plugin`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{admin_call, parking_lot_free, Server};

const ADMIN: &str = r#"
[admin]
token = "admin-secret"
max_plugin_bytes = 1572864
[tenants.acme]
tokens = ["acme-token"]
[tenants.acme.streams.app]
plugins = [{ plugin = "redactor" }]
"#;

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
                    .await;
                match r {
                    Ok(r) => assert_eq!(r.status(), 200),
                    Err(_) => return, // the server is gone (a kill test)
                }
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
    let metrics = s.metrics().await;
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
        let metrics = s.metrics().await;
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

/// Run the `weir` binary with `args`; its stdout, or a panic with its stderr.
fn weir(args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "weir {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `weir plugin build --dir DIR`; the component path printed on the last line.
fn build(dir: &Path, env: &[(&str, &Path)]) -> PathBuf {
    let out = weir(&["plugin", "build", "--dir", dir.to_str().unwrap()], env);
    let path = PathBuf::from(out.lines().last().expect("a path").trim());
    assert!(path.is_file(), "{out}");
    path
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Records with the PII the portable rule set covers, and near misses, in awkward
/// places: keys, nested arrays, escapes, non-ASCII neighbours.
const TRICKY: &str = r#"{"message":"mail me at a.b@x.co.uk or 4111 1111 1111 1111, ssn 123-45-6789","level":"info"}
{"a@b.io":"key is not redacted","nested":{"list":["4111-1111-1111-1111","x","z@q.io"]},"n":12345}
{"message":"bad card 4111111111111112 and 000-12-3456 and 666-12-3456 and 123-00-4567"}
{"message":"escaped \"q@w.io\" \\ and \u0041 b@c.de\n tab\t ctrl \u0001 é ü 東京 a@b.com-x"}
{"message":"near misses: a@b.c, a@b-.com, .a@b.io, x_a@b.io, a@b.com_x, 4111 1111 1111 1111 2222"}
{"message":"éa@b.io ña@x.org «c@d.io» 1234-5678-9012-3456-789 5555555555554444"}
{"message":"cards: 4012888888881881 378282246310005 6011111111111117 and 4111 1111 1111 1111 1"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redactors_in_c_python_and_js_match_the_rust_one() {
    // Built from source with the CLI, uploaded and wired with the CLI.
    let langs = ["c", "python", "js"];
    let wasm: Vec<PathBuf> = langs
        .iter()
        .map(|l| build(&examples().join(format!("redact-{l}")), &[]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        "[admin]\ntoken = \"admin-secret\"\n[tenants.acme]\ntokens = [\"acme-token\"]\n",
    );
    let admin = s.admin.clone().unwrap();
    let remote = [
        "--admin-url",
        &admin,
        "--token",
        "admin-secret",
        "--tenant",
        "acme",
    ];
    let cli = |args: &[&str]| weir(&[args, &remote[..]].concat(), &[]);
    for (l, w) in langs.iter().zip(&wasm) {
        let name = format!("redact-{l}");
        let out = cli(&["plugin", "upload", &name, w.to_str().unwrap()]);
        assert!(out.contains("\"version\": 1"), "{out}");
        cli(&["pipeline", "set", l, &name]);
    }
    cli(&[
        "pipeline",
        "set",
        "rust",
        "builtin:pii-redact={\"kinds\":[\"email\",\"card\",\"ssn\"]}",
    ]);
    let listed = cli(&["plugin", "list"]);
    assert_eq!(listed.matches("\"active\": 1").count(), 3, "{listed}");

    let mut corpus = TRICKY.as_bytes().to_vec();
    corpus.extend_from_slice(&weir_core::sample::ndjson(300));
    let n = corpus
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as i64;
    let mut outputs = Vec::new();
    for stream in ["rust", "c", "python", "js"] {
        let (st, v) = s.ingest("acme-token", stream, corpus.clone()).await;
        assert_eq!(
            (st, v["accepted"].as_i64()),
            (200, Some(n)),
            "{stream}: {v}"
        );
        let sql = format!("SELECT count(*) FROM logs WHERE stream = '{stream}'");
        s.wait_count("acme-token", &sql, n).await;
        let (_, v) = s
            .query(
                "acme-token",
                &format!("SELECT record FROM logs WHERE stream = '{stream}' ORDER BY seq"),
            )
            .await;
        let mut rows: Vec<String> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_str().unwrap().to_owned())
            .collect();
        rows.sort();
        outputs.push((stream, rows));
    }
    let (_, rust) = &outputs[0];
    let redacted = rust.iter().filter(|r| r.contains("[REDACTED:")).count();
    assert!(redacted > 100, "only {redacted} records redacted");
    assert!(!rust.iter().any(|r| r.contains("4111 1111 1111 1111,")));
    for (stream, rows) in &outputs[1..] {
        assert_eq!(rows.len(), rust.len(), "{stream}");
        for (a, b) in rows.iter().zip(rust) {
            assert_eq!(a, b, "{stream} differs from rust");
        }
    }
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM dead_letters")
            .await,
        0
    );
    s.stop();
}

#[test]
fn plugin_new_scaffolds_a_working_project_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    // The Rust project builds into a target directory kept across runs.
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_weir"));
    let target = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("scaffold-target");
    let input = "{\"a\":1}\n{\"b\":\"two\"}\n";
    for lang in ["rust", "c", "python", "js"] {
        let project = dir.path().join(format!("hello-{lang}"));
        let out = weir(
            &["plugin", "new", "--lang", lang, project.to_str().unwrap()],
            &[],
        );
        assert!(
            out.contains(&format!("created {lang} plugin hello-{lang}")),
            "{out}"
        );
        let wasm = build(&project, &[("CARGO_TARGET_DIR", &target)]);
        let mut run = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["plugin", "run", wasm.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        run.stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = run.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            input,
            "{lang} passes records through"
        );
    }
    // A second `new` into the same directory is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "new", "--lang", "c"])
        .arg(dir.path().join("hello-c"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

/// The `n` values of all rows: exactly 1..=count, each once, when the counter's state
/// followed every row exactly.
async fn assert_numbered_once(s: &Server, want: i64) {
    s.wait_count("acme-token", "SELECT count(*) FROM logs", want)
        .await;
    let n = "json_get_int(record, 'n')";
    let sql = format!("SELECT count(DISTINCT {n}), min({n}), max({n}) FROM logs");
    let (_, v) = s.query("acme-token", &sql).await;
    assert_eq!(v["rows"][0], json!([want, 1, want]), "{sql}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_plugin_state_survives_swaps_restarts_and_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[admin]\ntoken = \"admin-secret\"\n[log]\npartitions = 1\n\
                  [tenants.acme]\ntokens = [\"acme-token\"]\n";
    let s = Server::start(dir.path(), config);
    let counter = weir_builtins::fixture("weir-fixture-counter")
        .unwrap()
        .to_vec();
    let plugin = "/admin/v1/tenants/acme/plugins/counter";
    let (st, v) = admin_call(&s, "PUT", plugin, "admin-secret", counter.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["world"], "weir:plugin/stateful-transform@0.1.0");
    let put = "/admin/v1/tenants/acme/pipelines/app";
    let pipeline = |format: u32| {
        json!({"plugins": [{"plugin": "counter", "config": {"format": format}}]})
            .to_string()
            .into_bytes()
    };
    assert_eq!(
        admin_call(&s, "PUT", put, "admin-secret", pipeline(1))
            .await
            .0,
        200
    );

    // Swap the pipeline (state format 1 <-> 2, migrated by restore) and the version
    // while four clients write: the numbering goes on without a gap or a repeat.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(load_until_stopped(s.base.clone(), stop.clone()));
    assert_eq!(
        admin_call(&s, "PUT", plugin, "admin-secret", counter)
            .await
            .0,
        200
    );
    for i in 0..6u32 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (st, v) = if i == 3 {
            let act = format!("{plugin}/activate");
            admin_call(
                &s,
                "POST",
                &act,
                "admin-secret",
                b"{\"version\":2}".to_vec(),
            )
            .await
        } else {
            admin_call(&s, "PUT", put, "admin-secret", pipeline(1 + i % 2)).await
        };
        assert_eq!(st, 200, "{v}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = load.await.unwrap().len() as i64;
    assert_numbered_once(&s, total).await;

    // A restart resumes from the committed state.
    s.stop();
    let s = Server::start(dir.path(), config);
    let (st, _) = s.ingest("acme-token", "app", "{}\n{}\n{}").await;
    assert_eq!(st, 200);
    total += 3;
    assert_numbered_once(&s, total).await;

    // kill -9 under load: rows and state were committed together, so the replay numbers
    // the uncommitted entries exactly as the first run would have.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(load_until_stopped(s.base.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    total += load.await.unwrap().len() as i64;
    let s = Server::start(dir.path(), config);
    // Everything acknowledged is there (a request cut by the kill may be too): wait
    // until the replay is done, i.e. the count stops moving.
    let mut rows = -1;
    loop {
        let now = s.count("acme-token", "SELECT count(*) FROM logs").await;
        if now == rows && now >= total {
            break;
        }
        rows = now;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // At most the four writers' in-flight requests (50 records each) were made durable
    // without their acknowledgement reaching the client.
    assert!(rows - total <= 200, "{rows} rows for {total} acknowledged");
    assert_numbered_once(&s, rows).await;
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_activated_live_applies_to_new_data_and_queries_span_both() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), PIPELINES);
    // Old producers keep sending schema 1: {"user":"First Last","amount":"12.50"}.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (base, stop) = (s.base.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = 0u64;
            for b in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return acked;
                }
                let body: String = (0..20)
                    .map(|i| {
                        format!(
                            "{{\"id\":{},\"user\":\"Ada Lovelace\",\"amount\":\"12.50\"}}\n",
                            b * 20 + i
                        )
                    })
                    .collect();
                let r = client
                    .post(format!("{base}/api/v1/logs?stream=orders"))
                    .bearer_auth("acme-token")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "no downtime during the migration");
                acked += 20;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The migration is uploaded and put in the pipeline while they write.
    let migrate = weir_builtins::get("schema-migrate").unwrap().to_vec();
    let (st, v) = admin_call(
        &s,
        "PUT",
        "/admin/v1/tenants/acme/plugins/orders-v2",
        "admin-secret",
        migrate,
    )
    .await;
    assert_eq!(
        (st, v["world"].as_str()),
        (200, Some("weir:plugin/migration@0.1.0")),
        "{v}"
    );
    let pipeline = json!({"plugins": [{"plugin": "orders-v2", "config": {
        "from": 1,
        "split": {"user": {"into": ["first", "last"]}},
        "retype": {"amount": "number"},
    }}]});
    let (st, v) = admin_call(
        &s,
        "PUT",
        "/admin/v1/tenants/acme/pipelines/orders",
        "admin-secret",
        pipeline.to_string().into_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // New producers send schema 2 already; it goes through untouched.
    let new = "{\"id\":-1,\"first\":\"Grace\",\"last\":\"Hopper\",\"amount\":3.5,\"_schema\":2}";
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.ingest("acme-token", "orders", new).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let old = writer.await.unwrap() as i64;
    let total = old + 1;

    s.wait_count("acme-token", "SELECT count(*) FROM logs", total)
        .await;
    let c = |sql: &'static str| s.count("acme-token", sql);
    assert_eq!(
        c("SELECT count(DISTINCT json_get_int(record, 'id')) FROM logs").await,
        total
    );
    let before = c("SELECT count(*) FROM logs WHERE schema = 1").await;
    let after = c("SELECT count(*) FROM logs WHERE schema = 2").await;
    assert!(
        before > 0 && after > 1,
        "{before} rows before, {after} after"
    );
    assert_eq!(before + after, total);
    // Rows written before still have the old shape; migrated rows have the new one.
    assert_eq!(
        c("SELECT count(*) FROM logs WHERE schema = 1 AND json_get_str(record, 'user') = 'Ada Lovelace'").await,
        before
    );
    assert_eq!(
        c("SELECT count(*) FROM logs WHERE schema = 2 AND json_get_float(record, 'amount') IS NOT NULL \
           AND json_get_str(record, 'user') IS NULL AND json_get_str(record, 'first') IS NOT NULL")
        .await,
        after
    );
    // One query spans both shapes.
    let (_, v) = s
        .query(
            "acme-token",
            "SELECT coalesce(json_get_str(record, 'first'), split_part(json_get_str(record, 'user'), ' ', 1)) AS first, \
             count(*), sum(coalesce(json_get_float(record, 'amount'), CAST(json_get_str(record, 'amount') AS DOUBLE))) \
             FROM logs GROUP BY first ORDER BY first",
        )
        .await;
    assert_eq!(
        v["rows"],
        json!([["Ada", old, old as f64 * 12.5], ["Grace", 1, 3.5]]),
        "{v}"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_capabilities_only_as_the_pipeline_grants() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), PIPELINES);
    let escaper = weir_builtins::fixture("weir-fixture-hostile")
        .unwrap()
        .to_vec();
    let put = "/admin/v1/tenants/acme/plugins/escaper";
    assert_eq!(
        admin_call(&s, "PUT", put, "admin-secret", escaper).await.0,
        200
    );
    let granted = json!({"plugins": [{"plugin": "escaper", "config": {"mode": "escape"},
        "wasi": {"env": {"REGION": "eu-1"}, "stdio": true, "clocks": true}}]});
    let plain = json!({"plugins": [{"plugin": "escaper", "config": {"mode": "escape"}}]});
    for (stream, p) in [("granted", granted), ("plain", plain)] {
        let path = format!("/admin/v1/tenants/acme/pipelines/{stream}");
        let (st, v) = admin_call(&s, "PUT", &path, "admin-secret", p.to_string().into()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(s.ingest("acme-token", stream, "{}").await.0, 200);
    }
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 2)
        .await;
    let (_, v) = s
        .query(
            "acme-token",
            "SELECT stream, json_get_int(record, 'env'), json_get_int(record, 'clock') > 0, \
             json_get_str(record, 'fs') LIKE 'error%' FROM logs ORDER BY stream",
        )
        .await;
    assert_eq!(
        v["rows"],
        json!([["granted", 1, true, true], ["plain", 0, false, true]]),
        "{v}"
    );
    // Only the granted stage's stdout and stderr reach the server's log.
    let log = s.log();
    assert_eq!(
        log.matches("hello from the sandbox on stdout").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("hello from the sandbox on stderr").count(), 1);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_is_refused_with_413_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    // Default limit: admin.max_plugin_bytes = 32 MiB.
    let s = Server::start(dir.path(), PIPELINES);
    let addr = s
        .admin
        .as_ref()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    // A client announcing 100 MiB gets its answer after the headers and a first chunk:
    // the server refuses from Content-Length instead of waiting for the rest. (A chunk
    // small enough to sit in socket buffers: the server closes without reading it, and
    // a client still writing then would get a reset that can swallow the answer.)
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /admin/v1/tenants/acme/plugins/big HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer admin-secret\r\nContent-Length: {}\r\n\r\n",
        100u64 << 20
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&vec![0u8; 16 << 10]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut answer))
        .await
        .expect("an answer without the other 99 MiB")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let (_, v) = admin_call(
        &s,
        "GET",
        "/admin/v1/tenants/acme/plugins",
        "admin-secret",
        vec![],
    )
    .await;
    assert_eq!(v["plugins"], json!([]), "nothing stored");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_version_sees_the_traffic_but_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), PIPELINES);
    let plugin = "/admin/v1/tenants/acme/plugins/r";
    let versions = [
        weir_builtins::get("pii-redact").unwrap(), // v1: redacts
        weir_builtins::fixture("weir-fixture-hostile").unwrap(), // v2: passes through
        weir_builtins::fixture("weir-fixture-trapper").unwrap(), // v3: traps
    ];
    for v in versions {
        assert_eq!(
            admin_call(&s, "PUT", plugin, "admin-secret", v.to_vec())
                .await
                .0,
            200
        );
    }
    let pipeline = json!({"plugins": [{"plugin": "r"}]})
        .to_string()
        .into_bytes();
    let put = "/admin/v1/tenants/acme/pipelines/app";
    assert_eq!(
        admin_call(&s, "PUT", put, "admin-secret", pipeline).await.0,
        200
    );
    let shadow = format!("{plugin}/shadow");
    let (st, _) = admin_call(
        &s,
        "POST",
        &shadow,
        "admin-secret",
        b"{\"version\":9}".to_vec(),
    )
    .await;
    assert_eq!(st, 404);
    let (st, v) = admin_call(
        &s,
        "POST",
        &shadow,
        "admin-secret",
        b"{\"version\":2}".to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{v}");

    let batch: String = (0..10)
        .map(|i| {
            if i % 3 == 0 {
                format!("{{\"i\":{i},\"m\":\"mail u{i}@x.io\"}}\n")
            } else {
                format!("{{\"i\":{i},\"m\":\"nothing here\"}}\n")
            }
        })
        .collect();
    assert_eq!(s.ingest("acme-token", "app", batch).await.0, 200);
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 10)
        .await;
    let leaked = "SELECT count(*) FROM logs WHERE record LIKE '%@x.io%'";
    assert_eq!(
        s.count("acme-token", leaked).await,
        0,
        "the active version's output is written"
    );
    let (_, v) = admin_call(&s, "GET", plugin, "admin-secret", vec![]).await;
    assert_eq!(
        v["shadow"],
        json!({"version": 2, "calls": 1, "errors": 0, "diff_records": 4}),
        "the shadow differs on the 4 records with an address: {v}"
    );

    // A shadow that traps changes nothing for the traffic.
    let (st, _) = admin_call(
        &s,
        "POST",
        &shadow,
        "admin-secret",
        b"{\"version\":3}".to_vec(),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        s.ingest("acme-token", "app", "{\"m\":\"b@x.io\"}").await.0,
        200
    );
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 11)
        .await;
    assert_eq!(s.count("acme-token", leaked).await, 0);
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM dead_letters")
            .await,
        0
    );
    let (_, v) = admin_call(&s, "GET", plugin, "admin-secret", vec![]).await;
    assert_eq!(v["shadow"]["errors"], 1, "{v}");
    assert_eq!(
        admin_call(&s, "DELETE", &shadow, "admin-secret", vec![])
            .await
            .0,
        204
    );
    let (_, v) = admin_call(&s, "GET", plugin, "admin-secret", vec![]).await;
    assert_eq!(v["shadow"], Value::Null, "{v}");
    s.stop();
}
