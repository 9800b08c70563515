//! The WASI context of an instance: nothing beyond what its [`WasiGrants`] allow.
//!
//! Never granted: preopened directories, sockets, arguments, stdin. By grant: the
//! environment variables listed; stdout/stderr lines forwarded to the server's log
//! (tagged with tenant and plugin; discarded otherwise); the real clocks (otherwise
//! frozen at the Unix epoch); unpredictable randomness (otherwise a fixed sequence, so a
//! replayed batch produces the same output).

use std::time::Duration;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};
use weir_core::config::WasiGrants;

/// A WASI context with exactly `grants`.
pub(crate) fn context(grants: &WasiGrants, tenant: &str, plugin: &str) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    let env: Vec<(&String, &String)> = grants.env.iter().collect();
    b.envs(&env);
    if grants.stdio {
        for stream in ["stdout", "stderr"] {
            let log = LogStream {
                tenant: tenant.into(),
                plugin: plugin.into(),
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
    tenant: String,
    plugin: String,
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
            to: self.clone(),
            line: Vec::new(),
        })
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp2 streams are used by this host (components on the p2 linker).
        Box::new(tokio::io::sink())
    }
}

/// Longest line kept; the rest of a longer line is cut.
const MAX_LINE: usize = 4096;

struct LogWriter {
    to: LogStream,
    line: Vec<u8>,
}

impl LogWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let (tenant, plugin, stream) = (&self.to.tenant, &self.to.plugin, self.to.stream);
        tracing::info!(tenant, plugin, stream, "{}", text.trim_end());
        self.line.clear();
    }
}

impl OutputStream for LogWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        for &c in bytes.iter() {
            if c == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE {
                self.line.push(c);
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

impl Drop for LogWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogWriter {
    async fn ready(&mut self) {}
}
