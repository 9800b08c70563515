//! End-to-end tests of `weir ship`: the real binary tails files into a real server.
//!
//! - A 10× spike against a server that answers 429 (a slow pipeline and a tiny lag
//!   bound), with the server killed (`kill -9`) and restarted on the same data and
//!   port, and the shipper killed and restarted on the same spool, while a file is
//!   rotated: every line is in SQL exactly once.
//! - A full spool: `block` pauses the source and loses nothing; `drop-oldest` keeps
//!   the spool bounded, counts what it dropped, and delivers the rest once.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{metric, Server};

const TOKEN: &str = "t-token";

/// A `weir ship` process with its metrics listener.
struct Shipper {
    child: Child,
    metrics_url: String,
    log: PathBuf,
}

impl Shipper {
    fn start(work: &Path, args: &[String]) -> Shipper {
        let log = work.join("ship.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("ship")
            .args(["--metrics-addr", "127.0.0.1:0", "--progress-secs", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("weir ship: metrics listening on ") {
                    let _ = tx.send(a.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("weir ship did not start:\n{}", read(&log)));
        Shipper {
            child,
            metrics_url: format!("http://{addr}/metrics"),
            log,
        }
    }

    /// One series of the shipper's metrics; 0 when it does not answer.
    async fn counter(&self, series: &str) -> u64 {
        match reqwest::get(&self.metrics_url).await {
            Ok(r) => metric(&r.text().await.unwrap_or_default(), series),
            Err(_) => 0,
        }
    }

    /// Poll until `series` reaches `at_least`; panics after `secs`.
    async fn wait_for(&self, series: &str, at_least: u64, secs: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.counter(series).await;
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stuck at {v} (want {at_least}):\n{}",
                read(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Wait for the process to exit by itself (`--once`); its status.
    async fn wait_exit(mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "weir ship did not finish:\n{}",
                read(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn append(path: &Path, lines: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(lines.as_bytes()).unwrap();
}

fn line(n: u64, src: &str) -> String {
    format!(
        "{{\"n\":{n},\"src\":\"{src}\",\"level\":\"info\",\"message\":\"request {n} served\"}}\n"
    )
}

/// A free loopback port (for a server started later where a shipper already points).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn config(dir: &Path) -> String {
    let wasm = support::hostile_wasm(dir);
    format!(
        r#"
[tenants.t]
tokens = ["{TOKEN}"]
[tenants.t.streams.app]
plugins = [{{ plugin = "file:{}", config = {{ mode = "slow", pause_ms = 300 }} }}]
[log]
partitions = 1
max_lag_bytes = 30000
"#,
        wasm.display()
    )
}

/// Write lines `0..total` over files `a.log`/`b.log` (alternately) of `dir`: 1/12 at
/// 1000 lines/s, 10/12 at 10000 lines/s (the spike; `a.log` is rotated by rename in its
/// middle), 1/12 at 1000 lines/s.
fn write_with_spike(dir: PathBuf, total: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let base = total / 12;
        let started = Instant::now();
        let mut due = Duration::ZERO;
        let mut n = 0;
        while n < total {
            let (rate, chunk) = if n < base || n >= total - base {
                (1000.0, 50)
            } else {
                (10000.0, 200)
            };
            let mut a = String::new();
            let mut b = String::new();
            for i in n..(n + chunk).min(total) {
                if i % 2 == 0 {
                    a.push_str(&line(i, "a"));
                } else {
                    b.push_str(&line(i, "b"));
                }
            }
            append(&dir.join("a.log"), &a);
            append(&dir.join("b.log"), &b);
            n = (n + chunk).min(total);
            if n == total / 2 {
                std::fs::rename(dir.join("a.log"), dir.join("a.log.1")).unwrap();
            }
            due += Duration::from_secs_f64(chunk as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    })
}

const EXACT: &str = "SELECT count(*) FROM logs";
const DISTINCT: &str = "SELECT count(DISTINCT json_get_int(record, 'n')) FROM logs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_against_429_and_kill9_of_server_and_shipper_deliver_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let cfg = config(&server_dir);
    let s = Server::start(&server_dir, &cfg);
    let addr = s.base.strip_prefix("http://").unwrap().to_owned();
    let args: Vec<String> = [
        "--to",
        &s.base,
        "--token",
        TOKEN,
        "--stream",
        "app",
        "--file",
        &format!("{}/*.log", logs.display()),
        "--spool",
        &dir.path().join("spool").display().to_string(),
        "--batch-lines",
        "2000",
        "--batch-ms",
        "200",
        "--rescan-ms",
        "200",
        "--rotate-wait-ms",
        "1000",
        "--max-backoff-ms",
        "1000",
    ]
    .map(String::from)
    .to_vec();
    let total = 12_000;
    let ship = Shipper::start(dir.path(), &args);
    let writer = write_with_spike(logs.clone(), total);

    // In the spike the slow pipeline falls behind (one 2000-line batch per 300 ms
    // against 10000 lines/s): the server answers 429, then dies.
    ship.wait_for("weir_ship_retries_total{reason=\"429\"}", 1, 60)
        .await;
    let acked = ship.wait_for("weir_ship_lines_acked_total", 1000, 60).await;
    s.kill9();
    let retries = ship
        .counter("weir_ship_retries_total{reason=\"network\"}")
        .await;
    ship.wait_for(
        "weir_ship_retries_total{reason=\"network\"}",
        retries + 1,
        30,
    )
    .await;
    let s = Server::start_at(&server_dir, &cfg, &[], &addr);
    // Delivering again; then the shipper dies.
    ship.wait_for("weir_ship_lines_acked_total", acked + 2000, 60)
        .await;
    let throttled = ship
        .counter("weir_ship_retries_total{reason=\"429\"}")
        .await;
    let replayed_before = ship.counter("weir_ship_replayed_total").await;
    ship.kill9();
    let ship = Shipper::start(dir.path(), &args);
    writer.join().unwrap();

    // Never more than once on the way up (wait_count panics above the target).
    s.wait_count(TOKEN, EXACT, total as i64).await;
    // Nothing more arrives once the spool is empty.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ship.counter("weir_ship_spool_batches").await > 0 {
        assert!(Instant::now() < deadline, "{}", read(&ship.log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(s.count(TOKEN, EXACT).await, total as i64);
    assert_eq!(s.count(TOKEN, DISTINCT).await, total as i64);
    let (st, v) = s
        .query(
            TOKEN,
            "SELECT min(json_get_int(record,'n')), max(json_get_int(record,'n')) FROM logs",
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["rows"][0], serde_json::json!([0, total - 1]));
    eprintln!(
        "before the shipper's kill: 429 retries={throttled} replayed={replayed_before}; after its restart: replayed={} acked={}",
        ship.counter("weir_ship_replayed_total").await,
        ship.counter("weir_ship_lines_acked_total").await,
    );
    s.stop();
}

/// The number after `name=` in the last progress line of a shipper's stderr.
fn last_progress(log: &Path, name: &str) -> i64 {
    let text = read(log);
    let last = text
        .lines()
        .rfind(|l| l.starts_with("weir ship: read="))
        .unwrap_or_else(|| panic!("no progress line in:\n{text}"));
    last.split(&format!("{name}="))
        .nth(1)
        .and_then(|r| r.split([' ', ',']).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {last:?}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The crash the spike test can only hit by chance, made certain: the shipper dies
/// after the server committed its batches but before it recorded the answers. A copy
/// of its spool from before the sending plays the restarted shipper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_resent_after_a_crash_are_answered_from_the_servers_memory() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let input = dir.path().join("in.log");
    let n = 3000;
    let text: String = (0..n).map(|i| line(i, "x")).collect();
    append(&input, &text);
    let spool = dir.path().join("spool");
    let args = |spool: &Path, once: bool| -> Vec<String> {
        let mut a: Vec<String> = [
            "--to",
            &format!("http://{addr}"),
            "--token",
            TOKEN,
            "--stream",
            "app",
            "--file",
            &input.display().to_string(),
            "--spool",
            &spool.display().to_string(),
            "--batch-lines",
            "1000",
            "--max-backoff-ms",
            "200",
        ]
        .map(String::from)
        .to_vec();
        if once {
            a.push("--once".into());
        }
        a
    };
    // The server is down: everything is spooled, nothing acknowledged.
    let ship = Shipper::start(dir.path(), &args(&spool, false));
    ship.wait_for("weir_ship_lines_spooled_total", n, 60).await;
    ship.wait_for("weir_ship_retries_total{reason=\"network\"}", 1, 60)
        .await;
    ship.kill9();
    let before = dir.path().join("spool-before");
    copy_dir(&spool, &before);

    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let s = Server::start_at(
        &server_dir,
        &format!("[tenants.t]\ntokens = [\"{TOKEN}\"]\n"),
        &[],
        &addr,
    );
    let first = dir.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    let ship = Shipper::start(&first, &args(&spool, true));
    assert!(ship.wait_exit(60).await.success());
    s.wait_count(TOKEN, EXACT, n as i64).await;
    assert_eq!(last_progress(&first.join("ship.log"), "replayed"), 0);

    // The "restarted" shipper sends the same batches with the same keys again.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let ship = Shipper::start(&again, &args(&before, true));
    assert!(ship.wait_exit(60).await.success());
    let log = again.join("ship.log");
    assert_eq!(last_progress(&log, "acked"), 3, "{}", read(&log));
    assert_eq!(last_progress(&log, "replayed"), 3, "{}", read(&log));
    assert_eq!(
        last_progress(&log, "read"),
        0,
        "positions came back with the batches"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.count(TOKEN, EXACT).await, n as i64);
    assert_eq!(s.count(TOKEN, DISTINCT).await, n as i64);
    s.stop();
}

/// `n` lines of about 230 bytes that gzip only about 2× (random hex).
fn incompressible(path: &Path, n: u64) {
    let mut text = String::new();
    for i in 0..n {
        let pad: String = (0..160)
            .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap())
            .collect();
        text.push_str(&format!("{{\"n\":{i},\"pad\":\"{pad}\"}}\n"));
    }
    append(path, &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_blocks_or_drops_the_oldest_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let n = 20_000;
    let mut shippers = Vec::new();
    for policy in ["block", "drop-oldest"] {
        let work = dir.path().join(policy);
        std::fs::create_dir_all(&work).unwrap();
        incompressible(&work.join("in.log"), n);
        let args: Vec<String> = [
            "--to",
            &format!("http://{addr}"),
            "--token",
            TOKEN,
            "--stream",
            policy,
            "--file",
            &work.join("in.log").display().to_string(),
            "--spool",
            &work.join("spool").display().to_string(),
            "--spool-max-mb",
            "1",
            "--when-full",
            policy,
            "--batch-lines",
            "1000",
            "--max-backoff-ms",
            "500",
            "--once",
        ]
        .map(String::from)
        .to_vec();
        shippers.push(Shipper::start(&work, &args));
    }
    // The server is down: the spools fill.
    let (block, dropper) = (&shippers[0], &shippers[1]);
    block
        .wait_for("weir_ship_source_blocked_total", 1, 60)
        .await;
    dropper.wait_for("weir_ship_lines_read_total", n, 60).await;
    dropper
        .wait_for(
            "weir_ship_dropped_lines_total{reason=\"spool_full\"}",
            1,
            60,
        )
        .await;
    for s in [block, dropper] {
        assert!(s.counter("weir_ship_spool_bytes").await <= 1 << 20);
    }
    // Blocked: the source is not read further while the spool is full.
    let taken = block.counter("weir_ship_lines_read_total").await;
    assert!(taken < n, "read {taken} of {n} lines into a 1 MiB spool");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(block.counter("weir_ship_lines_read_total").await, taken);
    assert_eq!(
        block
            .counter("weir_ship_dropped_lines_total{reason=\"spool_full\"}")
            .await,
        0
    );

    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let s = Server::start_at(
        &server_dir,
        &format!("[tenants.t]\ntokens = [\"{TOKEN}\"]\n"),
        &[],
        &addr,
    );
    let mut shippers = shippers.into_iter();
    let (block, dropper) = (shippers.next().unwrap(), shippers.next().unwrap());
    let drop_log = dropper.log.clone();
    assert!(block.wait_exit(60).await.success());
    assert!(dropper.wait_exit(60).await.success());
    // What the drop-oldest shipper dropped in all: its last progress line.
    let text = read(&drop_log);
    let last = text
        .lines()
        .rfind(|l| l.starts_with("weir ship: read="))
        .unwrap();
    let dropped: i64 = last
        .split("dropped=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in {last:?}"));
    assert!(dropped > 0);
    let kept = n as i64 - dropped;
    s.wait_count(
        TOKEN,
        "SELECT count(*) FROM logs WHERE stream = 'block'",
        n as i64,
    )
    .await;
    s.wait_count(
        TOKEN,
        "SELECT count(*) FROM logs WHERE stream = 'drop-oldest'",
        kept,
    )
    .await;
    for (stream, want) in [("block", n as i64), ("drop-oldest", kept)] {
        let distinct = format!(
            "SELECT count(DISTINCT json_get_int(record, 'n')) FROM logs WHERE stream = '{stream}'"
        );
        assert_eq!(s.count(TOKEN, &distinct).await, want, "{stream}");
    }
    s.stop();
}
