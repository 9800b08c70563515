//! What the end-to-end tests share: a [`Server`] running the real `weir` binary on
//! loopback ports chosen at run time, and small client helpers.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Server {
    pub child: Child,
    pub base: String,
    /// The admin API's base URL, when the config has an admin token.
    pub admin: Option<String>,
    /// The gRPC listener (Arrow Flight SQL), `grpc://HOST:PORT`.
    #[allow(dead_code)]
    pub grpc: String,
    pub dir: PathBuf,
    /// The TCP ingest listeners, as printed: bound address, tenant, stream, format.
    pub tcp: Vec<TcpListen>,
}

/// One TCP ingest listener of a running [`Server`].
#[derive(Debug, Clone)]
pub struct TcpListen {
    pub addr: String,
    pub tenant: String,
    pub stream: String,
    pub format: String,
}

impl TcpListen {
    /// Read `weir: tcp listening on ADDR tenant=T stream=S format=F`'s part after "on ".
    fn parse(line: &str) -> Option<TcpListen> {
        let mut parts = line.split(' ');
        let addr = parts.next()?.to_owned();
        let mut field = |name: &str| {
            parts
                .next()?
                .strip_prefix(name)?
                .strip_prefix('=')
                .map(str::to_owned)
        };
        Some(TcpListen {
            addr,
            tenant: field("tenant")?,
            stream: field("stream")?,
            format: field("format")?,
        })
    }
}

impl Server {
    /// Start `weir serve` with `config` (TOML) on `dir` and wait until it listens.
    pub fn start(dir: &Path, config: &str) -> Server {
        Server::start_with_env(dir, config, &[])
    }

    /// [`Server::start`] with extra environment variables (fault injection).
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Server {
        Server::start_at(dir, config, env, "127.0.0.1:0")
    }

    /// [`Server::start_with_env`] with the HTTP listener on `http` (`HOST:PORT`), e.g. to
    /// restart a server where its clients expect it.
    pub fn start_at(dir: &Path, config: &str, env: &[(&str, &str)], http: &str) -> Server {
        let cfg = dir.join("weir.toml");
        std::fs::write(&cfg, config).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("weir.log"))
            .unwrap();
        // WEIR_BIN: another build of weir (a release build, for measurements).
        let bin = std::env::var("WEIR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").into());
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--http-addr", http, "--admin-addr", "127.0.0.1:0"])
            .args(["--grpc-addr", "127.0.0.1:0", "--tcp-addr", "127.0.0.1:0"])
            .envs(env.iter().copied())
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
                if let Some(addr) = line.strip_prefix("weir: grpc listening on ") {
                    let _ = tx.send(("grpc", addr.to_owned()));
                }
                // Printed before the gRPC line.
                if let Some(rest) = line.strip_prefix("weir: tcp listening on ") {
                    let _ = tx.send(("tcp", rest.to_owned()));
                }
            }
        });
        let wants_admin = config.contains("[admin]");
        let (mut http, mut admin, mut grpc) = (None, None, None);
        let mut tcp = Vec::new();
        while http.is_none() || grpc.is_none() || (wants_admin && admin.is_none()) {
            match rx.recv_timeout(Duration::from_secs(180)) {
                Ok(("http", a)) => {
                    http = Some(match a.strip_suffix(" (https)") {
                        Some(a) => format!("https://{a}"),
                        None => format!("http://{a}"),
                    })
                }
                Ok(("grpc", a)) => {
                    grpc = Some(match a.strip_suffix(" (tls)") {
                        Some(a) => format!("grpc+tls://{a}"),
                        None => format!("grpc://{a}"),
                    })
                }
                Ok(("tcp", a)) => tcp.extend(TcpListen::parse(&a)),
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
            grpc: grpc.expect("grpc address"),
            dir: dir.to_owned(),
            tcp,
        }
    }

    /// The address of the TCP listener of `tenant` feeding `stream` in `format`.
    pub fn tcp_addr(&self, tenant: &str, stream: &str, format: &str) -> String {
        self.tcp
            .iter()
            .find(|l| l.tenant == tenant && l.stream == stream && l.format == format)
            .unwrap_or_else(|| panic!("no TCP listener {tenant}/{stream}/{format}: {:?}", self.tcp))
            .addr
            .clone()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
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
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.try_metrics()
            .await
            .expect("the server answers /metrics")
    }

    /// The server's `/metrics` text, None when it does not answer (it stopped).
    #[allow(dead_code)]
    pub async fn try_metrics(&self) -> Option<String> {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weir.log")).unwrap_or_default()
    }

    pub async fn ingest(
        &self,
        token: &str,
        stream: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        self.ingest_with(token, stream, body, None).await
    }

    pub async fn ingest_with(
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

    /// `POST /api/v1/metrics`: status and answer.
    pub async fn ingest_metrics(
        &self,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/metrics", self.base))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn query(&self, token: &str, sql: &str) -> (u16, Value) {
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

    pub async fn count(&self, token: &str, sql: &str) -> i64 {
        let (s, v) = self.query(token, sql).await;
        assert_eq!(s, 200, "{sql}: {v}");
        v["rows"][0][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{sql}: {v}"))
    }

    /// Poll until `sql` (a count) returns `want`; panics after a minute.
    pub async fn wait_count(&self, token: &str, sql: &str, want: i64) {
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

pub mod parking_lot_free {
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

pub async fn admin_call(
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

/// The value of one series in `/metrics` text: the lines naming exactly `series` (name
/// and labels as rendered), summed; 0 when absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

impl Server {
    /// One series of the server's `/metrics` (0 when not there yet).
    pub async fn counter(&self, series: &str) -> u64 {
        metric(&self.metrics().await, series)
    }
}

/// Run `script` with the Python of the test tools (`scripts/setup.sh`: pyarrow, DuckDB,
/// ADBC, boto3) and these arguments.
pub fn python(script: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let tools = std::env::var("WEIR_TOOLS").unwrap_or_else(|_| "/var/tmp/weir-tools".into());
    Command::new(format!("{tools}/venv/bin/python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap()
}

/// The hostile test plugin (`tests/fixtures/hostile`) written to `dir`, for a config's
/// `file:` reference.
pub fn hostile_wasm(dir: &Path) -> PathBuf {
    let wasm = dir.join("hostile.wasm");
    std::fs::write(
        &wasm,
        weir_builtins::fixture("weir-fixture-hostile").unwrap(),
    )
    .unwrap();
    wasm
}
