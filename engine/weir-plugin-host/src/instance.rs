//! [`PluginInstance`]: one instance, its store, and the per-call sandbox checks.

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::weir::plugin::host::{self, Level};
use crate::bindings::weir::plugin::types::PluginError;
use crate::bindings::Transform;
use crate::{CallError, CompiledPlugin, HostError, Limits};

/// Per-store host state: the empty WASI context, the memory limiter and log tags.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemLimiter,
    tenant: String,
    plugin: String,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        let (tenant, plugin) = (&self.tenant, &self.plugin);
        let message: String = message.chars().take(4096).collect();
        match level {
            Level::Trace | Level::Debug => tracing::debug!(tenant, plugin, "{message}"),
            Level::Info => tracing::info!(tenant, plugin, "{message}"),
            Level::Warn => tracing::warn!(tenant, plugin, "{message}"),
            Level::Error => tracing::error!(tenant, plugin, "{message}"),
        }
    }
}

impl crate::bindings::weir::plugin::types::Host for State {}

/// Caps linear memory (and table growth) of one store.
struct MemLimiter {
    max_bytes: usize,
    hit: bool,
}

#[derive(Debug)]
struct MemoryLimitHit;

impl std::fmt::Display for MemoryLimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory limit reached")
    }
}
impl std::error::Error for MemoryLimitHit {}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryLimitHit));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// One live plugin instance. Not shared: each worker owns its instances.
pub struct PluginInstance {
    plugin: CompiledPlugin,
    tenant: String,
    config: String,
    limits: Limits,
    live: Option<(Store<State>, Transform)>,
}

impl PluginInstance {
    pub(crate) fn new(
        plugin: CompiledPlugin,
        tenant: &str,
        config: &str,
        limits: Limits,
    ) -> Result<PluginInstance, HostError> {
        let mut inst = PluginInstance {
            plugin,
            tenant: tenant.to_owned(),
            config: config.to_owned(),
            limits,
            live: None,
        };
        inst.live = Some(inst.start()?);
        Ok(inst)
    }

    pub fn plugin(&self) -> &CompiledPlugin {
        &self.plugin
    }

    fn start(&self) -> Result<(Store<State>, Transform), HostError> {
        let state = State {
            // No preopens, no env, no args, no network, stdio to a sink: nothing granted.
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limiter: MemLimiter {
                max_bytes: self.limits.memory_bytes,
                hit: false,
            },
            tenant: self.tenant.clone(),
            plugin: self.plugin.name().to_owned(),
        };
        let mut store = Store::new(self.plugin.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.limits.deadline_ticks());
        let bindings = self
            .plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| HostError::Init(format!("instantiate: {e:#}")))?;
        store.set_epoch_deadline(self.limits.deadline_ticks());
        match bindings.call_init(&mut store, &self.config) {
            Ok(Ok(())) => Ok((store, bindings)),
            Ok(Err(PluginError::InvalidConfig(m))) => {
                Err(HostError::Init(format!("invalid config: {m}")))
            }
            Ok(Err(PluginError::Failed(m))) => Err(HostError::Init(m)),
            Err(e) => Err(HostError::Init(format!("init trapped: {e:#}"))),
        }
    }

    /// Run one batch through the plugin. On a trap the instance is dropped and rebuilt
    /// before the next call.
    pub fn process(&mut self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        if self.live.is_none() {
            self.live = Some(
                self.start()
                    .map_err(|e| CallError::Restart(e.to_string()))?,
            );
        }
        let (store, bindings) = self.live.as_mut().expect("just started");
        store.set_epoch_deadline(self.limits.deadline_ticks());
        store.data_mut().limiter.hit = false;
        let started = Instant::now();
        let res = bindings.call_process(&mut *store, input);
        match res {
            Ok(Ok(out)) => {
                let limit = self.limits.output_cap(input.len());
                if out.len() > limit {
                    return Err(CallError::OutputTooLarge {
                        len: out.len(),
                        limit,
                    });
                }
                Ok(out)
            }
            Ok(Err(PluginError::Failed(m) | PluginError::InvalidConfig(m))) => {
                Err(CallError::Rejected(m))
            }
            Err(e) => {
                let hit = store.data().limiter.hit;
                self.live = None;
                if hit || e.downcast_ref::<MemoryLimitHit>().is_some() {
                    return Err(CallError::MemoryLimit(self.limits.memory_bytes));
                }
                if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
                    return Err(CallError::Timeout(self.limits.deadline));
                }
                if started.elapsed() >= self.limits.deadline && e.to_string().contains("interrupt")
                {
                    return Err(CallError::Timeout(self.limits.deadline));
                }
                Err(CallError::Trap(format!("{e:#}")))
            }
        }
    }
}
