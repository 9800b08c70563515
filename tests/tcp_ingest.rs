//! End-to-end tests of TCP ingest: the real `weir` binary with `[[tenants.T.listeners]]`
//! on free loopback ports, raw TCP clients sending NDJSON and syslog (RFC 5424 with
//! octet counting and with LF framing, RFC 3164), garbage between good frames, hostile
//! framing, backpressure, and a real rsyslogd forwarding to Weir.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use support::{metric, Server};

const TOKEN: &str = "acme-token";

/// Tenant `acme` with an NDJSON listener (stream `app`) and a syslog one (stream `sys`).
fn config(extra: &str) -> String {
    format!(
        r#"
[ingest]
max_record_bytes = 4096
[tenants.acme]
tokens = ["{TOKEN}"]
[[tenants.acme.listeners]]
addr = "127.0.0.1:0"
format = "ndjson"
stream = "app"
[[tenants.acme.listeners]]
addr = "127.0.0.1:0"
format = "syslog"
stream = "sys"
[tenants.globex]
tokens = ["globex-token"]
{extra}
"#
    )
}

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

/// An RFC 6587 octet-counted frame.
fn counted(msg: &str) -> Vec<u8> {
    let mut f = format!("{} ", msg.len()).into_bytes();
    f.extend_from_slice(msg.as_bytes());
    f
}

async fn rows(s: &Server, token: &str, sql: &str) -> Vec<Value> {
    let (st, v) = s.query(token, sql).await;
    assert_eq!(st, 200, "{sql}: {v}");
    v["rows"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_and_syslog_land_in_logs_with_their_header_fields() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &config(""));
    let ndjson = s.tcp_addr("acme", "app", "ndjson");
    let syslog = s.tcp_addr("acme", "sys", "syslog");

    let mut c = connect(&ndjson);
    let body: String = (0..300)
        .map(|i| format!("{{\"n\":{i},\"level\":\"info\",\"message\":\"hello {i}\"}}\r\n"))
        .collect();
    c.write_all(body.as_bytes()).unwrap();
    drop(c);

    // RFC 5424 octet-counted (the BOM and the SD escapes of the RFC), RFC 5424 with LF,
    // RFC 3164 with LF, over three connections.
    let mut c = connect(&syslog);
    for i in 0..100 {
        let m = format!(
            "<165>1 2024-03-01T10:00:00.{i:03}Z host-a evntslog 77 ID47 [ex@32473 iut=\"3\" q=\"a\\\"b\\\\c\\]d\"][p@1 class=\"high\"] \u{feff}counted {i}"
        );
        c.write_all(&counted(&m)).unwrap();
    }
    let mut lf = connect(&syslog);
    for i in 0..100 {
        writeln!(lf, "<11>1 2024-03-01T11:00:00Z host-b app - - - lf {i}").unwrap();
    }
    let mut bsd = connect(&syslog);
    for i in 0..100 {
        writeln!(
            bsd,
            "<38>Mar  1 12:00:{:02} host-c sshd[42]: bsd {i}",
            i % 60
        )
        .unwrap();
    }
    drop((c, lf, bsd));

    s.wait_count(TOKEN, "SELECT count(*) FROM logs WHERE stream = 'app'", 300)
        .await;
    s.wait_count(TOKEN, "SELECT count(*) FROM logs WHERE stream = 'sys'", 300)
        .await;
    let n = s
        .count(
            TOKEN,
            "SELECT count(DISTINCT json_get_int(record, 'n')) FROM logs WHERE stream = 'app' AND level = 'info'",
        )
        .await;
    assert_eq!(n, 300);

    let f = |k: &str| format!("json_get_str(record, '{k}')");
    let sql = format!(
        "SELECT {}, level, {}, {}, {}, {}, json_get_str(record, 'sd', 'ex@32473', 'q'), \
         json_get_str(record, 'sd', 'p@1', 'class'), count(*), count(DISTINCT message), min(ts) \
         FROM logs WHERE stream = 'sys' GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 3",
        f("facility"),
        f("hostname"),
        f("app_name"),
        f("procid"),
        f("msgid")
    );
    let r = rows(&s, TOKEN, &sql).await;
    let keys: Vec<Value> = r
        .iter()
        .map(|row| json!(row.as_array().unwrap()[..10]))
        .collect();
    assert_eq!(
        keys,
        vec![
            json!([
                "local4",
                "notice",
                "host-a",
                "evntslog",
                "77",
                "ID47",
                "a\"b\\c]d",
                "high",
                100,
                100
            ]),
            json!(["user", "err", "host-b", "app", null, null, null, null, 100, 100]),
            json!(["auth", "info", "host-c", "sshd", "42", null, null, null, 100, 100]),
        ],
        "{r:?}"
    );
    // The messages without their BOM.
    let n = s
        .count(TOKEN, "SELECT count(*) FROM logs WHERE message LIKE 'counted %' AND json_get_str(record, 'syslog') = 'rfc5424'")
        .await;
    assert_eq!(n, 100);
    // The header timestamp is the row's event time.
    assert!(
        r[0][10]
            .as_str()
            .unwrap()
            .starts_with("2024-03-01T10:00:00"),
        "{:?}",
        r[0]
    );
    assert!(r[1][10]
        .as_str()
        .unwrap()
        .starts_with("2024-03-01T11:00:00"));
    // RFC 3164 has no year: the latest that is not ahead of the receipt.
    assert!(r[2][10].as_str().unwrap()[4..].starts_with("-03-01T12:00:00"));
    // Another tenant sees none of it.
    assert_eq!(
        s.count("globex-token", "SELECT count(*) FROM logs").await,
        0
    );

    let m = s.metrics().await;
    let l = |addr: &str| format!("tenant=\"acme\",listener=\"{addr}\"");
    assert_eq!(
        metric(&m, &format!("weir_tcp_frames_total{{{}}}", l(&syslog))),
        300
    );
    assert_eq!(
        metric(&m, &format!("weir_tcp_connections_total{{{}}}", l(&syslog))),
        3
    );
    assert_eq!(
        metric(&m, &format!("weir_tcp_frames_total{{{}}}", l(&ndjson))),
        300
    );
    assert_eq!(
        metric(&m, "weir_ingest_records_accepted_total{tenant=\"acme\"}"),
        600
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_between_good_frames_loses_only_the_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &config(""));
    let syslog = s.tcp_addr("acme", "sys", "syslog");
    let ndjson = s.tcp_addr("acme", "app", "ndjson");

    // A well-behaved neighbour, sending while the other connections send garbage.
    let neighbour = {
        let addr = syslog.clone();
        std::thread::spawn(move || {
            let mut c = connect(&addr);
            for i in 0..500 {
                c.write_all(&counted(&format!("<14>1 - calm app - - - neighbour {i}")))
                    .unwrap();
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    let garbage: Vec<Vec<u8>> = vec![
        b"plain text without PRI\n".to_vec(),
        b"<999>1 - h a - - - PRI out of range\n".to_vec(),
        b"<13>1 2024-13-45T99:00:00Z h a - - - bad timestamp\n".to_vec(),
        b"<13>1 - h a - - [unclosed x=\"1\" bad sd\n".to_vec(),
        b"<13>1 - h a - - - not utf-8 \xff\xfe\xfd\n".to_vec(),
        b"\x00\x01\x02\x03 binary\n".to_vec(),
        format!("<13>1 - h a - - - {}\n", "x".repeat(10_000)).into_bytes(), // over max_record_bytes
        b"99999999 <13>1 - h a - - - declared far over the limit\n".to_vec(),
        b"{\"json\": \"on a syslog listener\"}\n".to_vec(),
    ];
    let mut c = connect(&syslog);
    let mut want = 0;
    for round in 0..10 {
        for (i, g) in garbage.iter().enumerate() {
            let good = format!("<13>1 - noisy app - - - good {round}-{i}");
            if i % 2 == 0 {
                c.write_all(&counted(&good)).unwrap();
            } else {
                c.write_all(format!("{good}\n").as_bytes()).unwrap();
            }
            want += 1;
            c.write_all(g).unwrap();
        }
    }
    drop(c);

    // NDJSON: nesting deeper than the record rules allow, invalid UTF-8, a JSON array, a
    // duplicate key, an overlong line, between good lines.
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(300), "]".repeat(300));
    let bad_json: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        b"{\"s\":\"\xff\xfe\"}".to_vec(),
        b"[{\"a\":1}]".to_vec(),
        b"{\"a\":1,\"a\":2}".to_vec(),
        b"{\"a\":".to_vec(),
        format!("{{\"big\":\"{}\"}}", "y".repeat(5000)).into_bytes(),
    ];
    let mut c = connect(&ndjson);
    for round in 0..10 {
        for (i, b) in bad_json.iter().enumerate() {
            writeln!(c, "{{\"good\":\"{round}-{i}\"}}").unwrap();
            c.write_all(b).unwrap();
            c.write_all(b"\n").unwrap();
        }
    }
    drop(c);
    neighbour.join().unwrap();

    s.wait_count(
        TOKEN,
        "SELECT count(*) FROM logs WHERE message LIKE 'neighbour %'",
        500,
    )
    .await;
    s.wait_count(
        TOKEN,
        "SELECT count(*) FROM logs WHERE message LIKE 'good %'",
        want,
    )
    .await;
    s.wait_count(TOKEN, "SELECT count(*) FROM logs WHERE stream = 'app'", 60)
        .await;
    // Nothing else: the garbage left no row.
    assert_eq!(
        s.count(TOKEN, "SELECT count(*) FROM logs").await,
        500 + want + 60
    );
    assert_eq!(
        s.count(
            TOKEN,
            "SELECT count(DISTINCT json_get_str(record, 'good')) FROM logs WHERE stream = 'app'"
        )
        .await,
        60
    );

    // Every bad frame counted, by reason.
    let m = s.metrics().await;
    let rej = |addr: &str, reason: &str| {
        metric(
            &m,
            &format!("weir_tcp_frames_rejected_total{{tenant=\"acme\",listener=\"{addr}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        rej(&syslog, "syslog_pri"),
        40,
        "no PRI, PRI 999, binary, JSON"
    );
    assert_eq!(rej(&syslog, "syslog_header"), 10);
    assert_eq!(rej(&syslog, "syslog_sd"), 10);
    assert_eq!(rej(&syslog, "not_utf8"), 10);
    assert_eq!(rej(&syslog, "too_long"), 10);
    assert_eq!(rej(&syslog, "declared_length"), 10);
    assert_eq!(rej(&ndjson, "not_object"), 10);
    assert_eq!(rej(&ndjson, "too_long"), 10);
    assert_eq!(rej(&ndjson, "record"), 40);
    assert_eq!(
        metric(&m, "weir_ingest_records_rejected_total{tenant=\"acme\"}"),
        90 + 60
    );
    // Logged, but at most about once a second per connection.
    let warnings = s
        .log()
        .matches("rejected frames on a TCP ingest connection")
        .count();
    assert!((1..=12).contains(&warnings), "{warnings} warnings");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_framing_leaves_the_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &config(""));
    let syslog = s.tcp_addr("acme", "sys", "syslog");
    let ndjson = s.tcp_addr("acme", "app", "ndjson");

    // The largest declared length there is, then 8 MiB without an LF: nothing of it
    // is buffered beyond one read, and the next line is a good frame.
    let mut c = connect(&syslog);
    c.write_all(b"4294967295 <13>1 - h a - - - ").unwrap();
    let mb = vec![b'z'; 1 << 20];
    for _ in 0..8 {
        c.write_all(&mb).unwrap();
    }
    c.write_all(b"\n").unwrap();
    c.write_all(&counted("<13>1 - h a - - - after the flood"))
        .unwrap();
    drop(c);
    // An 8 MiB NDJSON line, then a good one.
    let mut c = connect(&ndjson);
    for _ in 0..8 {
        c.write_all(&mb).unwrap();
    }
    c.write_all(b"\n{\"after\":\"the long line\"}\n").unwrap();
    drop(c);
    // Truncated frames: connections end inside a counted frame; an unterminated last
    // line is a frame of its own ("5": not syslog).
    for cut in [
        "100 <13>1 - h a - - - cut short",
        "5",
        "<13>1 - h a - - - ok then\n20 <1",
    ] {
        let mut c = connect(&syslog);
        c.write_all(cut.as_bytes()).unwrap();
    }
    // A client that connects and says nothing, kept open through the checks and stop.
    let idle = connect(&syslog);

    s.wait_count(
        TOKEN,
        "SELECT count(*) FROM logs WHERE message = 'after the flood'",
        1,
    )
    .await;
    s.wait_count(
        TOKEN,
        "SELECT count(*) FROM logs WHERE json_get_str(record, 'after') = 'the long line'",
        1,
    )
    .await;
    s.wait_count(
        TOKEN,
        "SELECT count(*) FROM logs WHERE message = 'ok then'",
        1,
    )
    .await;
    let m = s.metrics().await;
    let rej = |addr: &str, reason: &str| {
        metric(
            &m,
            &format!("weir_tcp_frames_rejected_total{{tenant=\"acme\",listener=\"{addr}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(rej(&syslog, "declared_length"), 1);
    assert_eq!(
        rej(&syslog, "truncated"),
        2,
        "100 <13>... and 20 <1 cut short"
    );
    assert_eq!(rej(&syslog, "syslog_pri"), 1, "5");
    assert_eq!(rej(&ndjson, "too_long"), 1);
    assert_eq!(
        s.count(TOKEN, "SELECT count(*) FROM logs").await,
        3,
        "{}",
        s.log()
    );
    // The idle client's connection is the one still open.
    let open = format!("weir_tcp_connections_open{{tenant=\"acme\",listener=\"{syslog}\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.counter(&open).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            s.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // HTTP still answers; the idle client does not hold the shutdown.
    let (st, _) = s.ingest(TOKEN, "http", "{\"via\":\"http\"}\n").await;
    assert_eq!(st, 200);
    s.stop();
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_log_makes_connections_wait_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Every append past one unprocessed byte is refused until the workers catch up:
    // connections retry the same batch without reading more.
    let s = Server::start(
        dir.path(),
        &config("[log]\npartitions = 1\nmax_lag_bytes = 1"),
    );
    let ndjson = s.tcp_addr("acme", "app", "ndjson");
    let senders: Vec<_> = (0..4)
        .map(|c| {
            let addr = ndjson.clone();
            std::thread::spawn(move || {
                let mut conn = connect(&addr);
                for chunk in 0..50 {
                    let body: String = (0..100)
                        .map(|i| format!("{{\"c\":{c},\"n\":{}}}\n", chunk * 100 + i))
                        .collect();
                    conn.write_all(body.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in senders {
        t.join().unwrap();
    }
    s.wait_count(TOKEN, "SELECT count(*) FROM logs", 20_000)
        .await;
    let distinct = s
        .count(TOKEN, "SELECT count(DISTINCT json_get_int(record, 'c') * 100000 + json_get_int(record, 'n')) FROM logs")
        .await;
    assert_eq!(distinct, 20_000);
    let m = s.metrics().await;
    let retries = metric(
        &m,
        &format!("weir_tcp_admit_retries_total{{tenant=\"acme\",listener=\"{ndjson}\"}}"),
    );
    assert!(
        retries > 0,
        "the log never refused a batch: the test proves nothing"
    );
    assert!(!s.log().contains("is lost"));
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_serves_the_global_tcp_address_for_default() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "");
    let addr = s.tcp_addr("default", "default", "auto");
    let mut c = connect(&addr);
    c.write_all(b"{\"via\":\"ndjson\",\"message\":\"one\"}\n")
        .unwrap();
    c.write_all(&counted("<13>1 - h app - - - two")).unwrap();
    c.write_all(b"<13>Mar  1 12:00:00 h app: three\n").unwrap();
    c.write_all(b"neither\n").unwrap();
    drop(c);
    s.wait_count("", "SELECT count(*) FROM logs WHERE stream = 'default'", 3)
        .await;
    let r = rows(&s, "", "SELECT message FROM logs ORDER BY message").await;
    assert_eq!(r, vec![json!(["one"]), json!(["three"]), json!(["two"])]);
    s.stop();
}

/// `weir serve` with `config`: its exit status is failure and stderr holds `want`.
fn refuses_to_start(config: &str, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{config}: started");
    assert!(err.contains(want), "{config}: {err}");
}

#[test]
fn ambiguous_listener_setups_refuse_to_start() {
    let listener = |tenant: &str, addr: &str, stream: &str| {
        format!("[[tenants.{tenant}.listeners]]\naddr = \"{addr}\"\nformat = \"syslog\"\nstream = \"{stream}\"\n")
    };
    refuses_to_start(
        &(listener("a", "127.0.0.1:5514", "s") + &listener("b", "127.0.0.1:5514", "s")),
        "tenants.a.listeners[0] and tenants.b.listeners[0] both listen on 127.0.0.1:5514",
    );
    refuses_to_start(
        &listener("a", "127.0.0.1:5514", "_metrics"),
        "not starting with '_'",
    );
    refuses_to_start(
        "[[tenants.a.listeners]]\nformat = \"syslog\"\nstream = \"s\"\n[[tenants.b.listeners]]\nformat = \"ndjson\"\nstream = \"t\"\n",
        "only one listener may use [listen] tcp",
    );
    // A port another process holds: the bind error names the listener.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refuses_to_start(
        &listener("a", &addr, "s"),
        &format!("bind the TCP listener {addr} of tenant a (stream s)"),
    );
}

/// A running rsyslogd, killed when dropped.
struct Rsyslogd(std::process::Child);

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's rsyslogd (`scripts/setup.sh` installs it).
fn rsyslogd_path() -> std::path::PathBuf {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("rsyslogd is not installed: run scripts/setup.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwards_rfc5424_octet_counted_and_rfc3164() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &format!(
            r#"
[tenants.acme]
tokens = ["{TOKEN}"]
[[tenants.acme.listeners]]
addr = "127.0.0.1:0"
format = "syslog"
stream = "r5424"
[[tenants.acme.listeners]]
addr = "127.0.0.1:0"
format = "syslog"
stream = "r3164"
"#
        ),
    );
    let port = |stream: &str| {
        s.tcp_addr("acme", stream, "syslog")
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };
    // rsyslogd in the foreground with its own config, pid file and work directory: a
    // TCP input the test writes to, forwarding every message to both Weir listeners,
    // RFC 5424 with octet counting and RFC 3164 (traditional) with LF framing. The
    // action queues retry without end, so a slow Weir loses nothing.
    let input = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_port = input.local_addr().unwrap().port();
    drop(input);
    let work = dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let conf = work.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{in_port}" ruleset="fwd")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{p5424}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"
         queue.type="LinkedList" action.resumeRetryCount="-1")
  action(type="omfwd" target="127.0.0.1" port="{p3164}" protocol="tcp"
         template="RSYSLOG_TraditionalForwardFormat"
         queue.type="LinkedList" action.resumeRetryCount="-1")
}}
"#,
            work = work.display(),
            p5424 = port("r5424"),
            p3164 = port("r3164"),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(work.join("rsyslogd.log")).unwrap();
    let _rsyslogd = Rsyslogd(
        std::process::Command::new(rsyslogd_path())
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(work.join("rsyslogd.pid"))
            .env("TZ", "UTC")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        match TcpStream::connect(("127.0.0.1", in_port)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "rsyslogd does not listen: {e}\n{}",
                    std::fs::read_to_string(work.join("rsyslogd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    const N5424: usize = 300;
    const N3164: usize = 200;
    let mut sent = Vec::new();
    for i in 0..N5424 {
        writeln!(
            sent,
            "<134>1 2024-03-01T10:00:00.{i:03}Z src-host myapp 42 ID7 [meta@1 k=\"v\\\"q\" n=\"{i}\"] message {i}"
        )
        .unwrap();
    }
    for i in 0..N3164 {
        writeln!(
            sent,
            "<38>Mar  1 10:00:{:02} bsd-host sshd[9]: bsd message {i}",
            i % 60
        )
        .unwrap();
    }
    c.write_all(&sent).unwrap();
    drop(c);

    let total = (N5424 + N3164) as i64;
    for stream in ["r5424", "r3164"] {
        s.wait_count(
            TOKEN,
            &format!("SELECT count(*) FROM logs WHERE stream = '{stream}'"),
            total,
        )
        .await;
    }
    let f = |k: &str| format!("json_get_str(record, '{k}')");
    let fields = format!(
        "{}, {}, level, {}, {}, {}, {}, json_get_str(record, 'sd', 'meta@1', 'k'), count(*), \
         count(DISTINCT message), count(DISTINCT json_get_str(record, 'sd', 'meta@1', 'n'))",
        f("syslog"),
        f("facility"),
        f("hostname"),
        f("app_name"),
        f("procid"),
        f("msgid")
    );
    let by_host = |stream: &str| {
        format!("SELECT {fields} FROM logs WHERE stream = '{stream}' GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 4")
    };
    let r = rows(&s, TOKEN, &by_host("r5424")).await;
    assert_eq!(
        r,
        vec![
            json!([
                "rfc5424", "auth", "info", "bsd-host", "sshd", "9", null, null, N3164, N3164, 0
            ]),
            json!([
                "rfc5424", "local0", "info", "src-host", "myapp", "42", "ID7", "v\"q", N5424,
                N5424, N5424
            ]),
        ]
    );
    let r = rows(&s, TOKEN, &by_host("r3164")).await;
    assert_eq!(
        r,
        vec![
            json!([
                "rfc3164", "auth", "info", "bsd-host", "sshd", "9", null, null, N3164, N3164, 0
            ]),
            json!([
                "rfc3164", "local0", "info", "src-host", "myapp", "42", null, null, N5424, N5424, 0
            ]),
        ]
    );
    // The messages themselves, and the RFC 5424 timestamps as event times.
    let n = s
        .count(TOKEN, "SELECT count(*) FROM logs WHERE stream = 'r3164' AND (message LIKE 'message %' OR message LIKE 'bsd message %')")
        .await;
    assert_eq!(n, total);
    let n = s
        .count(TOKEN, "SELECT count(*) FROM logs WHERE stream = 'r5424' AND message LIKE 'message %' AND ts >= '2024-03-01T10:00:00Z' AND ts < '2024-03-01T10:00:01Z'")
        .await;
    assert_eq!(n, N5424 as i64);
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "weir_ingest_records_rejected_total{tenant=\"acme\"}"),
        0
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_admits_the_batch_in_hand_and_leaves_no_hole() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &config(""));
    let ndjson = s.tcp_addr("acme", "app", "ndjson");
    // A client that sends numbered records as fast as it can until the server goes.
    let sender = std::thread::spawn(move || {
        let mut c = connect(&ndjson);
        let mut n = 0u64;
        loop {
            let body: String = (n..n + 200).map(|i| format!("{{\"n\":{i}}}\n")).collect();
            if c.write_all(body.as_bytes()).is_err() {
                return n;
            }
            n += 200;
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.count(TOKEN, "SELECT count(*) FROM logs").await < 20_000 {
        assert!(std::time::Instant::now() < deadline, "{}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    s.stop();
    let stop_took = started.elapsed();
    let sent = sender.join().unwrap();
    // Restarted, the stream holds exactly the first records the connection read:
    // every batch read before the signal was admitted, none in part.
    let s = Server::start(dir.path(), &config(""));
    // The workers replay the log: wait until the count holds still.
    let mut n = -1;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = s.count(TOKEN, "SELECT count(*) FROM logs").await;
        if now == n {
            break;
        }
        n = now;
    }
    let r = rows(&s, TOKEN, "SELECT count(*), count(DISTINCT json_get_int(record, 'n')), min(json_get_int(record, 'n')), max(json_get_int(record, 'n')) FROM logs").await;
    assert_eq!(r[0], json!([n, n, 0, n - 1]), "sent {sent}");
    assert!(n >= 20_000 && (n as u64) <= sent);
    assert!(
        stop_took < Duration::from_secs(10),
        "stop took {stop_took:?}"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_listener_and_closed_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &config("[tcp]\nmax_connections = 2\nidle_timeout_secs = 2"),
    );
    let syslog = s.tcp_addr("acme", "sys", "syslog");
    let open = format!("weir_tcp_connections_open{{tenant=\"acme\",listener=\"{syslog}\"}}");
    let a = connect(&syslog);
    let b = connect(&syslog);
    // The third waits in the backlog: its frame is not read while both slots are held.
    let mut c = connect(&syslog);
    c.write_all(b"<13>1 - h a - - - third\n").unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.counter(&open).await, 2);
    assert_eq!(s.count(TOKEN, "SELECT count(*) FROM logs").await, 0);
    drop(a);
    s.wait_count(
        TOKEN,
        "SELECT count(*) FROM logs WHERE message = 'third'",
        1,
    )
    .await;
    // Silent connections are closed after idle_timeout_secs.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.counter(&open).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            s.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((b, c));
    s.stop();
}
