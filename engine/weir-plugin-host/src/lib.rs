//! Weir's plugin host: Wasm components on wasmtime's component model.
//!
//! Layout:
//! - [`bindings`], [`stateful_bindings`]: `bindgen!` output for the
//!   `weir:plugin/transform@0.1.0` and `stateful-transform` worlds (from `wit/`). A
//!   component that exports `snapshot` and `restore` is stateful: see [`PluginState`].
//! - [`PluginHost`]: one engine, one linker (host imports + an empty WASI), an epoch
//!   ticker thread. [`PluginHost::compile`] validates and compiles a component once.
//! - [`CompiledPlugin`]: a compiled, linked component (`InstancePre`); cheap to clone,
//!   instantiated per worker, never per batch.
//! - [`PluginInstance`]: one live instance with its store, sandbox limits and config;
//!   [`PluginInstance::process`] is one call per batch.
//! - [`CallError`]: what a failed call means (plugin refused, trap, timeout, memory,
//!   output bomb), kept apart from host errors ([`HostError`]).
//!
//! Sandbox: no WASI capability is granted unless the stage's [`WasiGrants`] say so
//! ([`wasi`]: env, stdio to the log, real clocks, real randomness; never files or
//! sockets); all linear memories and tables of an instance share one byte cap, and
//! their numbers are bounded ([`limiter`]); every call has a deadline — the epoch
//! deadline for Wasm code, and the same deadline for waits inside WASI host calls
//! ([`waits`]); log output is rate-limited per instance ([`logbudget`]); output is
//! capped relative to input. Uploads can be compiled in a child process under time and
//! memory limits ([`isolate`]). After a trap
//! the instance is discarded and a fresh one is made from the `InstancePre` (about 10
//! µs) on the next call, so one bad batch never poisons the next.

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weir:plugin/transform@0.1.0",
    });
}

/// `bindgen!` output for `weir:plugin/stateful-transform@0.1.0`, sharing the imported
/// interfaces with [`bindings`].
pub mod stateful_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weir:plugin/stateful-transform@0.1.0",
        with: {
            "weir:plugin/host": crate::bindings::weir::plugin::host,
            "weir:plugin/types": crate::bindings::weir::plugin::types,
        },
    });
}

/// `bindgen!` output for `weir:plugin/migration@0.1.0`.
pub mod migration_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weir:plugin/migration@0.1.0",
        with: {
            "weir:plugin/host": crate::bindings::weir::plugin::host,
            "weir:plugin/types": crate::bindings::weir::plugin::types,
        },
    });
}

/// `bindgen!` output for `weir:plugin/aggregator@0.1.0`.
pub mod aggregator_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weir:plugin/aggregator@0.1.0",
        with: {
            "weir:plugin/host": crate::bindings::weir::plugin::host,
            "weir:plugin/types": crate::bindings::weir::plugin::types,
        },
    });
}

mod instance;
pub mod isolate;
pub mod limiter;
pub mod logbudget;
pub mod migration;
pub mod waits;
mod wasi;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};
pub use weir_core::config::WasiGrants;

pub use instance::{PluginInstance, State};
pub use isolate::{ChildCompiler, CompileLimits};
pub use logbudget::LogLimits;

/// An aggregator plugin's accumulator (`state` of the `aggregator` world).
pub type AggState = PluginState;

/// The version of the `weir:plugin` WIT package this host implements.
pub const SUPPORTED_VERSION: &str = "0.1.0";

/// The worlds uploaded components are checked against.
pub const TRANSFORM_WORLD: &str = "weir:plugin/transform@0.1.0";
pub const STATEFUL_TRANSFORM_WORLD: &str = "weir:plugin/stateful-transform@0.1.0";
pub const MIGRATION_WORLD: &str = "weir:plugin/migration@0.1.0";
pub const AGGREGATOR_WORLD: &str = "weir:plugin/aggregator@0.1.0";

/// A stateful plugin's state as its `snapshot` gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginState {
    pub format: u32,
    pub data: Vec<u8>,
}

/// Epoch tick: deadlines are rounded up to this.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Errors of the host itself (bad component, link failure), as opposed to a call.
#[derive(Debug, Error)]
pub enum HostError {
    #[error("not a WebAssembly binary")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build it as a component (e.g. cargo build --target wasm32-wasip2)")]
    CoreModule,
    #[error("component does not compile: {0}")]
    Compile(String),
    #[error("component does not match a weir:plugin@0.1.0 world (transform, stateful-transform, migration or aggregator): {0}")]
    WrongWorld(String),
    #[error(
        "component targets weir:plugin@{0}; this host supports weir:plugin@{SUPPORTED_VERSION}"
    )]
    UnsupportedVersion(String),
    #[error("plugin init failed: {0}")]
    Init(String),
    /// The component needs more than the sandbox allows to even start: memory, or more
    /// memories, tables or core instances than an instance may have.
    #[error("component exceeds the sandbox's limits: {0}")]
    Limit(String),
    /// Compiling the component went over the compile time or memory limit.
    #[error("component refused: {0}")]
    CompileLimit(String),
    #[error("engine error: {0}")]
    Engine(String),
}

/// Why a call failed. The batch goes to the dead-letter store with this error.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CallError {
    #[error("plugin refused the batch: {0}")]
    Rejected(String),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin exceeded its deadline of {0:?}")]
    Timeout(Duration),
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    #[error("plugin output of {len} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge { len: usize, limit: usize },
    #[error("plugin could not be restarted: {0}")]
    Restart(String),
}

impl CallError {
    /// A trap of any kind (the instance is discarded), as opposed to a refusal.
    pub fn is_trap(&self) -> bool {
        !matches!(
            self,
            CallError::Rejected(_) | CallError::OutputTooLarge { .. }
        )
    }
}

/// Limits applied to every instance.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: usize,
    pub deadline: Duration,
    /// Output may be at most `max_output_ratio * input + 64 KiB` bytes.
    pub max_output_ratio: usize,
    /// WASI capabilities granted (none by default).
    pub wasi: WasiGrants,
    /// Rate limits of the instance's stdout, stderr and `host.log` lines.
    pub log: LogLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            deadline: Duration::from_secs(2),
            max_output_ratio: 4,
            wasi: WasiGrants::default(),
            log: LogLimits::default(),
        }
    }
}

impl Limits {
    pub fn from_config(c: &weir_core::config::PluginLimits) -> Self {
        Limits {
            memory_bytes: (c.memory_mb as usize) << 20,
            deadline: Duration::from_millis(c.deadline_ms),
            max_output_ratio: c.max_output_ratio as usize,
            wasi: WasiGrants::default(),
            log: LogLimits {
                lines_per_sec: c.log_lines_per_sec,
                burst: c.log_burst_lines,
                max_line_bytes: c.log_line_bytes,
                dropped: None,
            },
        }
    }

    pub(crate) fn output_cap(&self, input: usize) -> usize {
        input
            .saturating_mul(self.max_output_ratio)
            .saturating_add(64 << 10)
    }

    pub(crate) fn deadline_ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        (self.deadline.as_micros().div_ceil(tick) as u64).max(1) + 1
    }
}

struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The engine, the linker and the epoch ticker. One per process.
pub struct PluginHost {
    engine: Engine,
    linker: Arc<Linker<State>>,
    _ticker: Ticker,
}

/// The engine settings of every host (and of the compiler child: machine code is loaded
/// only by an engine with the same settings).
pub fn engine_config() -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg.wasm_component_model(true);
    cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
    cfg
}

impl PluginHost {
    pub fn new() -> Result<PluginHost, HostError> {
        let engine = Engine::new(&engine_config()).map_err(|e| HostError::Engine(e.to_string()))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| HostError::Engine(e.to_string()))?;
        waits::add_to_linker(&mut linker).map_err(|e| HostError::Engine(e.to_string()))?;
        bindings::Transform::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| HostError::Engine(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e2, s2) = (engine.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e2.increment_epoch();
                }
            })
            .map_err(|e| HostError::Engine(e.to_string()))?;
        Ok(PluginHost {
            engine,
            linker: Arc::new(linker),
            _ticker: Ticker {
                stop,
                handle: Some(handle),
            },
        })
    }

    /// Validate, compile and link a component. Costly (milliseconds to seconds): call it
    /// off the hot path, once per plugin version.
    pub fn compile(&self, name: &str, wasm: &[u8]) -> Result<CompiledPlugin, HostError> {
        self.compile_cached(name, wasm, None)
    }

    /// Like [`PluginHost::compile`], keeping the machine code in `cache_dir` by the
    /// component's sha256, so the next process loads it in milliseconds instead of
    /// compiling again (seconds for interpreters packed as components). A cache file
    /// this engine cannot load (another wasmtime or settings) is replaced.
    pub fn compile_cached(
        &self,
        name: &str,
        wasm: &[u8],
        cache_dir: Option<&std::path::Path>,
    ) -> Result<CompiledPlugin, HostError> {
        self.compile_with(name, wasm, cache_dir, None)
    }

    /// Like [`PluginHost::compile_cached`]; with `child`, a component not in the cache is
    /// compiled by a child process under the child's limits ([`isolate`]) instead of in
    /// this process, and its machine code is written to the cache (a temporary
    /// directory when there is none).
    pub fn compile_with(
        &self,
        name: &str,
        wasm: &[u8],
        cache_dir: Option<&std::path::Path>,
        child: Option<&ChildCompiler>,
    ) -> Result<CompiledPlugin, HostError> {
        check_preamble(wasm)?;
        let sha256 = sha256_hex(wasm);
        let cached = cache_dir.map(|d| d.join(format!("{sha256}.cwasm")));
        // SAFETY: the file is one this host wrote (under the data dir it owns) with
        // `Component::serialize` or `Engine::precompile_component` (in a child of the
        // same binary); wasmtime checks it was built for this engine's version and
        // settings and refuses it otherwise.
        let loaded = cached
            .as_ref()
            .filter(|p| p.is_file())
            .and_then(|p| unsafe { Component::deserialize_file(&self.engine, p) }.ok());
        let component = match (loaded, child) {
            (Some(c), _) => c,
            (None, Some(child)) => {
                self.compile_in_child(child, wasm, cached.as_deref(), &sha256)?
            }
            (None, None) => {
                let c = Component::new(&self.engine, wasm)
                    .map_err(|e| HostError::Compile(format!("{e:#}")))?;
                if let Some(path) = &cached {
                    // Best effort: without the cache file the next start compiles again.
                    let tmp = path.with_extension("tmp");
                    let written = c.serialize().ok().and_then(|bytes| {
                        std::fs::create_dir_all(path.parent()?).ok()?;
                        std::fs::write(&tmp, bytes).ok()?;
                        std::fs::rename(&tmp, path).ok()
                    });
                    if written.is_none() {
                        tracing::warn!(plugin = name, path = %path.display(), "could not write the compiled-plugin cache");
                    }
                }
                c
            }
        };
        self.link(name, sha256, component)
    }

    /// Compile in a child into `cached` (or a temporary file) and load the result.
    fn compile_in_child(
        &self,
        child: &ChildCompiler,
        wasm: &[u8],
        cached: Option<&std::path::Path>,
        sha256: &str,
    ) -> Result<Component, HostError> {
        let engine = |e: std::io::Error| HostError::Engine(e.to_string());
        let (path, _tmp_dir) = match cached {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(engine)?;
                }
                (p.to_owned(), None)
            }
            None => {
                let dir = std::env::temp_dir()
                    .join(format!("weir-compile-{}-{sha256}", std::process::id()));
                std::fs::create_dir_all(&dir).map_err(engine)?;
                (dir.join("plugin.cwasm"), Some(TempDir(dir)))
            }
        };
        child.compile(wasm, &path)?;
        // SAFETY: as in `compile_with`: written by a child of this binary with the same
        // engine settings; wasmtime refuses a file built for another engine.
        unsafe { Component::deserialize_file(&self.engine, &path) }
            .map_err(|e| HostError::Compile(format!("load the compiled component: {e:#}")))
    }

    /// Check the world and version of a compiled component and link it.
    fn link(
        &self,
        name: &str,
        sha256: String,
        component: Component,
    ) -> Result<CompiledPlugin, HostError> {
        // A component built against another version of the contract imports
        // `weir:plugin/...@OTHER`: name the version instead of a link error.
        for (import, _) in component.component_type().imports(&self.engine) {
            if let Some(rest) = import.strip_prefix("weir:plugin/") {
                let version = rest.split_once('@').map_or("", |(_, v)| v);
                if version != SUPPORTED_VERSION {
                    return Err(HostError::UnsupportedVersion(version.to_owned()));
                }
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| HostError::WrongWorld(format!("{e:#}")))?;
        // Stateful if it exports `snapshot` and `restore` too; a migration exports
        // `step` and `migrate` instead of `process`.
        let pre = if let Ok(p) = stateful_bindings::StatefulTransformPre::new(pre.clone()) {
            Pre::Stateful(p)
        } else if let Ok(p) = migration_bindings::MigrationPre::new(pre.clone()) {
            Pre::Migration(p)
        } else if let Ok(p) = aggregator_bindings::AggregatorPre::new(pre.clone()) {
            Pre::Aggregator(p)
        } else {
            Pre::Plain(
                bindings::TransformPre::new(pre)
                    .map_err(|e| HostError::WrongWorld(format!("{e:#}")))?,
            )
        };
        Ok(CompiledPlugin {
            name: name.into(),
            sha256,
            pre,
        })
    }
}

/// The hex sha256 of a component's bytes (how versions and caches name it).
pub fn sha256_hex(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tell core modules and garbage from components before compiling.
pub(crate) fn check_preamble(wasm: &[u8]) -> Result<(), HostError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(HostError::NotWasm);
    }
    match wasm[6..8] {
        [0x01, 0x00] => Ok(()),
        _ if wasm[4..8] == [0x01, 0x00, 0x00, 0x00] => Err(HostError::CoreModule),
        _ => Err(HostError::NotWasm),
    }
}

/// The linked component, by the world it implements.
#[derive(Clone)]
pub(crate) enum Pre {
    Plain(bindings::TransformPre<State>),
    Stateful(stateful_bindings::StatefulTransformPre<State>),
    Migration(migration_bindings::MigrationPre<State>),
    Aggregator(aggregator_bindings::AggregatorPre<State>),
}

impl Pre {
    pub(crate) fn engine(&self) -> &Engine {
        match self {
            Pre::Plain(p) => p.engine(),
            Pre::Stateful(p) => p.engine(),
            Pre::Migration(p) => p.engine(),
            Pre::Aggregator(p) => p.engine(),
        }
    }
}

/// A compiled and linked plugin. Cheap to clone.
#[derive(Clone)]
pub struct CompiledPlugin {
    name: Arc<str>,
    sha256: String,
    pub(crate) pre: Pre,
}

impl CompiledPlugin {
    /// The world the component implements.
    pub fn world(&self) -> &'static str {
        match self.pre {
            Pre::Plain(_) => TRANSFORM_WORLD,
            Pre::Stateful(_) => STATEFUL_TRANSFORM_WORLD,
            Pre::Migration(_) => MIGRATION_WORLD,
            Pre::Aggregator(_) => AGGREGATOR_WORLD,
        }
    }

    pub fn is_stateful(&self) -> bool {
        matches!(self.pre, Pre::Stateful(_))
    }

    /// Whether the component is a custom aggregation function (used as `wasm(NAME)` in
    /// aggregations, never as a pipeline stage).
    pub fn is_aggregator(&self) -> bool {
        matches!(self.pre, Pre::Aggregator(_))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// A new instance with its own store and limits, initialised with `config` (JSON).
    /// `tenant` tags its log lines.
    pub fn instantiate(
        &self,
        tenant: &str,
        config: &str,
        limits: &Limits,
    ) -> Result<PluginInstance, HostError> {
        PluginInstance::new(self.clone(), tenant, config, limits.clone())
    }

    /// Whether the component can start within `limits`: its memories, tables and core
    /// instances are created (and start functions run) without calling `init`. An
    /// upload that cannot start is refused at the door with
    /// [`HostError::Limit`].
    pub fn check_instantiable(&self, limits: &Limits) -> Result<(), HostError> {
        PluginInstance::check_instantiable(self, limits)
    }
}

#[cfg(test)]
mod tests;
