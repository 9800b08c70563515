//! The WASI context of an instance: nothing beyond what its [`WasiGrants`] allow.
//!
//! Never granted: preopened directories, sockets (TCP, UDP and name lookup are denied
//! explicitly, so creating a socket fails with `access-denied`), arguments, stdin (a
//! closed stream). By grant: the environment variables listed; stdout/stderr lines
//! forwarded to the server's log (tagged with tenant and plugin, rate-limited by the
//! instance's [`SharedLog`]; discarded otherwise); the real clocks (otherwise frozen at
//! the Unix epoch); unpredictable randomness (otherwise a fixed sequence, so a replayed
//! batch produces the same output). One `get-random-bytes` call returns at most
//! [`MAX_RANDOM_BYTES`] (the host allocates them outside the guest's memory cap).
//!
//! Nothing here can make a call wait: stdin is closed, stdout/stderr are always ready.
//! The only waits are on pollables (clocks), and [`crate::waits`] bounds those by the
//! call's deadline.

use std::time::Duration;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};
use weir_core::config::WasiGrants;

use crate::logbudget::SharedLog;

/// Most bytes one `wasi:random` call may ask for.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// A WASI context with exactly `grants`; granted stdout/stderr lines go through `log`.
pub(crate) fn context(grants: &WasiGrants, log: &SharedLog) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .max_random_size(MAX_RANDOM_BYTES);
    let env: Vec<(&String, &String)> = grants.env.iter().collect();
    b.envs(&env);
    if grants.stdio {
        for stream in ["stdout", "stderr"] {
            let log = LogStream {
                log: log.clone(),
                stream,
            };
            if stream == "stdout" {
                b.stdout(log);
            } else {
                b.stderr(log);
            }
        }
    }
    if !grants.clocks {
        b.wall_clock(Frozen);
        b.monotonic_clock(Frozen);
    }
    if !grants.random {
        let seed: Vec<u8> = (0..=255u8).collect();
        b.secure_random(wasmtime_wasi::Deterministic::new(seed.clone()));
        b.insecure_random(wasmtime_wasi::Deterministic::new(seed));
        b.insecure_random_seed(0);
    }
    b.build()
}

/// Clocks that never move.
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Guest stdout or stderr, forwarded line by line to the server's log.
#[derive(Clone)]
struct LogStream {
    log: SharedLog,
    stream: &'static str,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogWriter {
            max_line: self.log.max_line_bytes(),
            to: self.clone(),
            line: Vec::new(),
            cut: 0,
        })
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp2 streams are used by this host (components on the p2 linker).
        Box::new(tokio::io::sink())
    }
}

struct LogWriter {
    to: LogStream,
    /// Longest line kept; the rest of a longer line is cut (and the cut counted).
    max_line: usize,
    line: Vec<u8>,
    cut: usize,
}

impl LogWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let (stream, cut) = (self.to.stream, self.cut);
        self.to.log.line(|tenant, plugin| {
            if cut > 0 {
                tracing::info!(
                    tenant,
                    plugin,
                    stream,
                    cut_bytes = cut,
                    "{}",
                    text.trim_end()
                );
            } else {
                tracing::info!(tenant, plugin, stream, "{}", text.trim_end());
            }
        });
        self.line.clear();
        self.cut = 0;
    }
}

impl OutputStream for LogWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match memchr_nl(rest) {
                Some(i) => {
                    self.push(&rest[..i]);
                    self.emit();
                    rest = &rest[i + 1..];
                }
                None => {
                    self.push(rest);
                    rest = &[];
                }
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl LogWriter {
    fn push(&mut self, part: &[u8]) {
        let room = self.max_line.saturating_sub(self.line.len());
        let keep = part.len().min(room);
        self.line.extend_from_slice(&part[..keep]);
        self.cut += part.len() - keep;
    }
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            self.emit();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogWriter {
    async fn ready(&mut self) {}
}
