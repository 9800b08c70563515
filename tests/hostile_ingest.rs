//! End-to-end tests of the ingest door against hostile records: the real `weir`
//! binary. Each record a later stage could not read (a number beyond f64, a lone
//! surrogate, nesting 200 deep, a duplicate key, a time at the end of time, a reserved
//! label) is refused on its own line with the reason; its neighbours land, nothing goes
//! to the dead letters, and queries over the stream answer.

mod support;

use serde_json::{json, Value};
use support::Server;

/// 2030-01-15T08:00:00Z in epoch ms: minute-aligned.
const T0: i64 = 1_894_694_400_000;

fn config(extra: &str) -> String {
    format!(
        r#"
[aggregation]
checkpoint_interval_ms = 100
[tenants.acme]
tokens = ["acme-token"]
[tenants.acme.metrics]
max_series = 3
{extra}
"#
    )
}

/// A request of `good, bad, good` lines: the bad one is refused as line 2 with
/// `reason` in its answer, the good ones are accepted.
async fn send_between_good_lines(s: &Server, case: &str, bad: &str, reason: &str) {
    let good = |n: u32| json!({"case": case, "n": n, "ts": T0 + i64::from(n)}).to_string();
    let body = format!("{}\n{bad}\n{}\n", good(1), good(2));
    let (status, v) = s.ingest("acme-token", "app", body).await;
    assert_eq!(status, 200, "{case}: {v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{case}: {v}"
    );
    assert_eq!(v["errors"][0]["line"], 2, "{case}: {v}");
    let why = v["errors"][0]["reason"].as_str().unwrap();
    assert!(why.contains(reason), "{case}: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_no_later_stage_could_read_are_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &config(""));
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(199), "]".repeat(199));
    let cases = [
        (
            "huge_number",
            r#"{"x":1e400}"#.to_owned(),
            "number out of range: 1e400",
        ),
        (
            "negative_huge",
            r#"{"x":[-1e400]}"#.to_owned(),
            "number out of range: -1e400",
        ),
        (
            "lone_surrogate",
            r#"{"x":"\ud800"}"#.to_owned(),
            "lone surrogate: \\ud800",
        ),
        (
            "surrogate_key",
            r#"{"\udc00":1}"#.to_owned(),
            "lone surrogate: \\udc00",
        ),
        ("deep", deep, "nested too deep: more than 64 levels"),
        (
            "duplicate_key",
            r#"{"level":"a","level":"b"}"#.to_owned(),
            "duplicate key: key \"level\" appears twice",
        ),
        (
            "escaped_duplicate",
            r#"{"m":{"a":1,"\u0061":2}}"#.to_owned(),
            "duplicate key: key \"a\" appears twice",
        ),
        (
            "far_future",
            r#"{"ts":1e300}"#.to_owned(),
            "ts 1e300 is outside the accepted time range",
        ),
        (
            "before_1970",
            r#"{"timestamp":"1969-07-20T20:17:40Z"}"#.to_owned(),
            "timestamp \"1969-07-20T20:17:40Z\" is outside the accepted time range",
        ),
    ];
    for (case, bad, reason) in &cases {
        send_between_good_lines(&s, case, bad, reason).await;
    }
    // Valid neighbours of the rules' edges land too.
    let edges = [
        r#"{"case":"edges","x":1e308,"y":-0,"z":18446744073709551616}"#,
        r#"{"case":"edges","s":"\ud83d\ude00","k":{"a":1,"A":2}}"#,
    ];
    let (status, v) = s.ingest("acme-token", "app", edges.join("\n")).await;
    assert_eq!((status, v["accepted"].as_u64()), (200, Some(2)), "{v}");

    let want = 2 * cases.len() as i64 + 2;
    s.wait_count("acme-token", "SELECT count(*) FROM logs", want)
        .await;
    for (case, _, _) in &cases {
        let n = s
            .count(
                "acme-token",
                &format!(
                    "SELECT count(*) FROM logs WHERE json_get_str(record, 'case') = '{case}' \
                     AND ts >= to_timestamp_millis({T0}) AND ts <= to_timestamp_millis({})",
                    T0 + 2
                ),
            )
            .await;
        assert_eq!(n, 2, "{case}");
    }
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM dead_letters")
            .await,
        0
    );
    // Queries over every row and column of the stream answer.
    let (status, v) = s
        .query(
            "acme-token",
            "SELECT ts, stream, level, message, record FROM logs ORDER BY ts",
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"].as_array().unwrap().len() as i64, want);
    s.stop();
}

/// The same rules hold for a JSON array body, element by element.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_bodies_are_checked_element_by_element() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &config(""));
    let body = r#"[{"n":1}, {"x":1e400}, {"level":"a","level":"b"},
        {"n":2, "nested": {"s": "\ud83d\ude00"}}, {"ts":1e300}]"#;
    let (status, v) = s.ingest("acme-token", "app", body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], 2, "{v}");
    let lines: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3, 5], "{v}");
    s.wait_count("acme-token", "SELECT count(*) FROM logs", 2)
        .await;
    assert_eq!(
        s.count("acme-token", "SELECT count(*) FROM dead_letters")
            .await,
        0
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_labels_are_refused_before_the_series_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &config(""));
    let sample = |labels: Value, ts: Value| {
        json!({"name": "cpu", "value": 1, "labels": labels, "ts": ts}).to_string()
    };
    let mut lines = vec![sample(json!({"host": "a"}), json!(T0))];
    // Before the fix each of these was a new series that max_series never counted.
    for i in 0..5 {
        lines.push(sample(
            json!({"_overflow": "true", "host": format!("x{i}")}),
            json!(T0),
        ));
    }
    lines.push(sample(json!({"__name__": "cpu"}), json!(T0)));
    lines.push(sample(json!({"host": "b"}), json!(1e300)));
    lines.push(sample(json!({"host": "c"}), json!(T0 + 1)));
    let (status, v) = s.ingest_metrics("acme-token", lines.join("\n")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], 2, "{v}");
    let why: Vec<(u64, String)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        why.iter().map(|w| w.0).collect::<Vec<_>>(),
        vec![8, 2, 3, 4, 5, 6, 7],
        "{why:?}"
    );
    assert!(
        why[0]
            .1
            .contains("ts 1e300 is outside the accepted time range"),
        "{why:?}"
    );
    assert!(
        why[1].1.contains("label name \"_overflow\" is reserved"),
        "{why:?}"
    );
    assert!(
        why[6].1.contains("label name \"__name__\" is reserved"),
        "{why:?}"
    );
    // Two series are known of the three allowed: one more is admitted, the next refused.
    let (_, v) = s
        .ingest_metrics(
            "acme-token",
            format!(
                "{}\n{}\n",
                sample(json!({"host": "d"}), json!(T0)),
                sample(json!({"host": "e"}), json!(T0))
            ),
        )
        .await;
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("tenant limit of 3 series"),
        "{v}"
    );
    s.wait_count("acme-token", "SELECT count(*) FROM metrics", 3)
        .await;
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT count(*) FROM metrics WHERE labels LIKE '%overflow%' OR labels LIKE '%name%'"
        )
        .await,
        0
    );
    let (status, v) = s
        .query("acme-token", "SELECT ts, series FROM metrics ORDER BY ts")
        .await;
    assert_eq!(status, 200, "{v}");
    s.stop();
}

/// One event at the end of time used to move its partition's watermark there, and
/// every later event of the partition was counted late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_at_the_end_of_time_closes_no_window() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &config(
            r#"
[[tenants.acme.streams.app.aggregations]]
name = "per_10s"
window = "10s"
lateness = "2s"
functions = ["count"]
"#,
        ),
    );
    let post = |lines: Vec<String>| {
        let s = &s;
        async move {
            let r = reqwest::Client::new()
                .post(format!("{}/api/v1/logs?stream=app&key=one", s.base))
                .bearer_auth("acme-token")
                .body(lines.join("\n"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let ev = |ts: Value| json!({"ts": ts, "level": "info"}).to_string();
    let v = post(vec![ev(json!(T0)), ev(json!(1e300)), ev(json!(T0 + 1_000))]).await;
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(v["errors"][0]["line"], 2, "{v}");
    // `ts` as text far in the future is refused the same way.
    let v = post(vec![
        ev(json!("9999-12-31T23:59:59Z")),
        ev(json!(T0 + 2_000)),
    ])
    .await;
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    // Later events, in order: none is late.
    for k in 1..=5 {
        post(vec![
            ev(json!(T0 + k * 3_000)),
            ev(json!(T0 + k * 3_000 + 500)),
        ])
        .await;
    }
    post(vec![ev(json!(T0 + 60_000))]).await; // closes the windows up to 50 s
    let sent_before_closer = 3 + 10;
    s.wait_count(
        "acme-token",
        "SELECT CAST(COALESCE(sum(count), 0) AS BIGINT) FROM aggregates",
        sent_before_closer,
    )
    .await;
    assert_eq!(
        s.count(
            "acme-token",
            "SELECT CAST(COALESCE(sum(late), 0) AS BIGINT) FROM aggregates"
        )
        .await,
        0
    );
    assert!(
        s.metrics()
            .await
            .lines()
            .all(|l| !l.starts_with("weir_agg_late_events_total{")),
        "no event counted late"
    );
    assert_eq!(
        s.count(
            "acme-token",
            &format!(
                "SELECT count(*) FROM logs WHERE ts > to_timestamp_millis({})",
                T0 + 60_000
            )
        )
        .await,
        0
    );
    let (status, v) = s
        .query("acme-token", "SELECT max(ts), min(ts) FROM logs")
        .await;
    assert_eq!(status, 200, "{v}");
    s.stop();
}

/// A plugin's output is held to the same rules: a time out of range in it counts as
/// absent (the row takes its ingest time), and output breaking a record rule
/// dead-letters its entry naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_output_is_held_to_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = support::hostile_wasm(dir.path());
    let w = wasm.display();
    let s = Server::start(
        dir.path(),
        &config(&format!(
            r#"
[tenants.acme.streams.future]
plugins = [{{ plugin = "file:{w}", config = {{ mode = "tag", field = "ts", tag = "2300-01-01T00:00:00Z" }} }}]
[tenants.acme.streams.dups]
plugins = [{{ plugin = "file:{w}", config = {{ mode = "tag", field = "level", tag = "x" }} }}]
"#
        )),
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (st, v) = s
        .ingest("acme-token", "future", "{\"n\":1}\n{\"n\":2}\n")
        .await;
    assert_eq!((st, v["accepted"].as_u64()), (200, Some(2)), "{v}");
    let (st, v) = s.ingest("acme-token", "dups", "{\"level\":\"a\"}\n").await;
    assert_eq!((st, v["accepted"].as_u64()), (200, Some(1)), "{v}");
    s.wait_count(
        "acme-token",
        "SELECT count(*) FROM logs WHERE stream = 'future'",
        2,
    )
    .await;
    assert_eq!(
        s.count(
            "acme-token",
            &format!(
                "SELECT count(*) FROM logs WHERE stream = 'future' \
                 AND ts >= to_timestamp_millis({before}) AND ts < to_timestamp_millis({})",
                before + 600_000
            )
        )
        .await,
        2,
        "the rows took their ingest time"
    );
    s.wait_count("acme-token", "SELECT count(*) FROM dead_letters", 1)
        .await;
    let (status, v) = s
        .query("acme-token", "SELECT stream, error FROM dead_letters")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"][0][0], "dups", "{v}");
    let err = v["rows"][0][1].as_str().unwrap();
    assert!(
        err.contains("invalid output: line 1 breaks the record rules: duplicate key"),
        "{err}"
    );
    s.stop();
}
