//! [`PluginInstance`]: one instance, its store, and the per-call sandbox checks.

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::aggregator_bindings::{Aggregator, State as AggWit};
use crate::bindings::weir::plugin::host::{self, Level};
use crate::bindings::weir::plugin::types::PluginError;
use crate::bindings::Transform;
use crate::limiter::{MemLimiter, MemoryLimitHit};
use crate::logbudget::SharedLog;
use crate::migration::{schema_of, stamp};
use crate::migration_bindings::Migration;
use crate::stateful_bindings::{State as WitState, StatefulTransform};
use crate::waits::{CallDeadline, WaitPastDeadline};
use crate::{CallError, CompiledPlugin, HostError, Limits, PluginState, Pre};

/// A live instance's bindings, by world.
pub(crate) enum Live {
    Plain(Transform),
    Stateful(StatefulTransform),
    /// A migration and the versions it reads and writes.
    Migration(Migration, u32, u32),
    /// A custom aggregation function and the accumulator format it writes.
    Aggregator(Aggregator, u32),
}

/// Per-store host state: the empty WASI context, the memory limiter, the deadline of
/// the call in progress and the instance's log budget.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemLimiter,
    pub(crate) deadline: CallDeadline,
    log: SharedLog,
}

impl State {
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
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
        let max = self.log.max_line_bytes();
        let message = &message[..floor_char_boundary(&message, max)];
        self.log.line(|tenant, plugin| match level {
            Level::Trace | Level::Debug => tracing::debug!(tenant, plugin, "{message}"),
            Level::Info => tracing::info!(tenant, plugin, "{message}"),
            Level::Warn => tracing::warn!(tenant, plugin, "{message}"),
            Level::Error => tracing::error!(tenant, plugin, "{message}"),
        });
    }
}

/// The largest index `<= max` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

impl crate::bindings::weir::plugin::types::Host for State {}

/// Give the guest its deadline for the call about to start: the epoch deadline for Wasm
/// code and the same instant for waits inside host calls ([`crate::waits`]).
fn arm(store: &mut Store<State>, limits: &Limits) {
    store.set_epoch_deadline(limits.deadline_ticks());
    store.data_mut().deadline = CallDeadline(Instant::now() + limits.deadline);
}

/// One live plugin instance. Not shared: each worker owns its instances.
pub struct PluginInstance {
    plugin: CompiledPlugin,
    tenant: String,
    config: String,
    limits: Limits,
    live: Option<(Store<State>, Live)>,
    /// A stateful plugin's state after its last successful call (or as restored): put
    /// back into a fresh instance after a trap.
    state: Option<PluginState>,
    /// The state before the last successful call, for [`PluginInstance::undo_last`].
    prev_state: Option<PluginState>,
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
            state: None,
            prev_state: None,
        };
        inst.live = Some(inst.start()?);
        Ok(inst)
    }

    /// Whether the plugin keeps state (implements `stateful-transform`).
    pub fn is_stateful(&self) -> bool {
        self.plugin.is_stateful()
    }

    /// A stateful plugin's state after its last successful call.
    pub fn state(&self) -> Option<&PluginState> {
        self.state.as_ref()
    }

    /// Forget the effect of the last successful call on a stateful plugin's state (a
    /// later stage failed the same batch, so the batch did not happen). The instance is
    /// rebuilt from the earlier state before its next call.
    pub fn undo_last(&mut self) {
        if self.is_stateful() {
            self.state = self.prev_state.take();
            self.live = None;
        }
    }

    /// Continue from `state` (an earlier version's or a checkpoint's). A plugin that
    /// cannot read the format refuses it; its instance then keeps its fresh state.
    pub fn restore(&mut self, state: PluginState) -> Result<(), HostError> {
        if !self.is_stateful() {
            return Ok(());
        }
        if self.live.is_none() {
            self.live = Some(self.start()?);
        }
        let (store, live) = self.live.as_mut().expect("started");
        let Live::Stateful(b) = live else {
            return Ok(());
        };
        arm(store, &self.limits);
        let wit = WitState {
            format: state.format,
            data: state.data.clone(),
        };
        match b.call_restore(&mut *store, &wit) {
            Ok(Ok(())) => {
                self.state = Some(state);
                Ok(())
            }
            Ok(Err(PluginError::InvalidConfig(m) | PluginError::Failed(m))) => {
                Err(HostError::Init(format!(
                    "restore refused state format {}: {m}",
                    state.format
                )))
            }
            Err(e) => {
                self.live = None;
                Err(HostError::Init(format!("restore trapped: {e:#}")))
            }
        }
    }

    /// For a migration, the schema versions it reads and writes.
    pub fn migration_step(&self) -> Option<(u32, u32)> {
        match &self.live {
            Some((_, Live::Migration(_, r, w))) => Some((*r, *w)),
            _ => None,
        }
    }

    pub fn plugin(&self) -> &CompiledPlugin {
        &self.plugin
    }

    /// A store for this instance: its WASI context, memory budget and log budget.
    fn store(&self) -> Store<State> {
        let log = SharedLog::new(self.limits.log.clone(), &self.tenant, self.plugin.name());
        let state = State {
            // No preopens, no args, no network ever; env, stdio, clocks and randomness
            // only as granted.
            wasi: crate::wasi::context(&self.limits.wasi, &log),
            table: ResourceTable::new(),
            limiter: MemLimiter::new(self.limits.memory_bytes),
            deadline: CallDeadline(Instant::now() + self.limits.deadline),
            log,
        };
        let mut store = Store::new(self.plugin.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        arm(&mut store, &self.limits);
        store
    }

    /// Instantiate the component in `store` (start functions run, no export is called).
    fn instantiate_in(&self, store: &mut Store<State>) -> Result<Live, HostError> {
        let limit = self.limits.memory_bytes;
        let inst = |e: wasmtime::Error| {
            match e.downcast_ref::<MemoryLimitHit>() {
            Some(hit) => HostError::Limit(hit.to_string()),
            None if format!("{e:#}").contains("resource limit exceeded") => {
                HostError::Limit(format!("{e:#} (at most {} memories, {} tables and {} core instances; {limit} bytes of memory)",
                    crate::limiter::MAX_MEMORIES, crate::limiter::MAX_TABLES, crate::limiter::MAX_CORE_INSTANCES))
            }
            None => HostError::Init(format!("instantiate: {e:#}")),
        }
        };
        Ok(match &self.plugin.pre {
            Pre::Plain(p) => Live::Plain(p.instantiate(&mut *store).map_err(inst)?),
            Pre::Stateful(p) => Live::Stateful(p.instantiate(&mut *store).map_err(inst)?),
            Pre::Migration(p) => Live::Migration(p.instantiate(&mut *store).map_err(inst)?, 0, 0),
            Pre::Aggregator(p) => Live::Aggregator(p.instantiate(&mut *store).map_err(inst)?, 0),
        })
    }

    /// Whether the component can be instantiated within `limits` at all (its memories,
    /// tables and core instances fit), without calling any of its exports.
    pub(crate) fn check_instantiable(
        plugin: &CompiledPlugin,
        limits: &Limits,
    ) -> Result<(), HostError> {
        let probe = PluginInstance {
            plugin: plugin.clone(),
            tenant: String::new(),
            config: String::new(),
            limits: limits.clone(),
            live: None,
            state: None,
            prev_state: None,
        };
        let mut store = probe.store();
        probe.instantiate_in(&mut store).map(|_| ())
    }

    fn start(&self) -> Result<(Store<State>, Live), HostError> {
        let mut store = self.store();
        let live = self.instantiate_in(&mut store)?;
        arm(&mut store, &self.limits);
        let init = match &live {
            Live::Plain(b) => b.call_init(&mut store, &self.config),
            Live::Stateful(b) => b.call_init(&mut store, &self.config),
            Live::Migration(b, ..) => b.call_init(&mut store, &self.config),
            Live::Aggregator(b, _) => b.call_init(&mut store, &self.config),
        };
        match init {
            Ok(Ok(())) => {}
            Ok(Err(PluginError::InvalidConfig(m))) => {
                return Err(HostError::Init(format!("invalid config: {m}")))
            }
            Ok(Err(PluginError::Failed(m))) => return Err(HostError::Init(m)),
            Err(e) => return Err(HostError::Init(format!("init trapped: {e:#}"))),
        }
        let live = match live {
            Live::Migration(b, ..) => {
                let step = b
                    .call_step(&mut store)
                    .map_err(|e| HostError::Init(format!("step trapped: {e:#}")))?;
                if step.reads == 0 || step.writes != step.reads + 1 {
                    return Err(HostError::Init(format!(
                        "a migration must read version N >= 1 and write N + 1, not {} -> {}",
                        step.reads, step.writes
                    )));
                }
                Live::Migration(b, step.reads, step.writes)
            }
            Live::Aggregator(b, _) => {
                let empty = b
                    .call_empty(&mut store)
                    .map_err(|e| HostError::Init(format!("empty trapped: {e:#}")))?;
                Live::Aggregator(b, empty.format)
            }
            other => other,
        };
        // After a trap, a stateful plugin continues from its last good state.
        if let (Live::Stateful(b), Some(st)) = (&live, &self.state) {
            arm(&mut store, &self.limits);
            let wit = WitState {
                format: st.format,
                data: st.data.clone(),
            };
            match b.call_restore(&mut store, &wit) {
                Ok(Ok(())) => {}
                Ok(Err(PluginError::InvalidConfig(m) | PluginError::Failed(m))) => {
                    return Err(HostError::Init(format!(
                        "restore refused its own state: {m}"
                    )))
                }
                Err(e) => return Err(HostError::Init(format!("restore trapped: {e:#}"))),
            }
        }
        Ok((store, live))
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
        let (store, live) = self.live.as_mut().expect("just started");
        arm(store, &self.limits);
        store.data_mut().limiter.hit = false;
        let started = Instant::now();
        let mut new_state = None;
        let res = match live {
            Live::Plain(b) => b.call_process(&mut *store, input),
            // A stateful plugin's state is taken after every successful call, within
            // the same deadline, so that a later failure can go back to it.
            Live::Stateful(b) => match b.call_process(&mut *store, input) {
                Ok(Ok(out)) => b.call_snapshot(&mut *store).map(|st| {
                    new_state = Some(PluginState {
                        format: st.format,
                        data: st.data,
                    });
                    Ok(out)
                }),
                other => other,
            },
            Live::Migration(b, reads, writes) => {
                let (reads, writes) = (*reads, *writes);
                migrate(input, reads, writes, |run| b.call_migrate(&mut *store, run))
            }
            Live::Aggregator(..) => Ok(Err(PluginError::Failed(
                "an aggregator has no process: use it as wasm(NAME) in an aggregation".into(),
            ))),
        };
        let stateful = matches!(live, Live::Stateful(_));
        match res {
            Ok(Ok(out)) => {
                let limit = self.limits.output_cap(input.len());
                if out.len() > limit {
                    if stateful {
                        // The batch fails: its effect on the state must not stay.
                        self.live = None;
                    }
                    return Err(CallError::OutputTooLarge {
                        len: out.len(),
                        limit,
                    });
                }
                if new_state.is_some() {
                    self.prev_state = std::mem::replace(&mut self.state, new_state);
                }
                Ok(out)
            }
            Ok(Err(PluginError::Failed(m) | PluginError::InvalidConfig(m))) => {
                if stateful {
                    // A refused batch must not change the state either.
                    self.live = None;
                }
                Err(CallError::Rejected(m))
            }
            Err(e) => {
                let hit = store.data().limiter.hit;
                self.live = None;
                Err(self.classify(e, hit, started))
            }
        }
    }

    /// What a trap means: memory limit, deadline, or another trap.
    fn classify(&self, e: wasmtime::Error, memory_hit: bool, started: Instant) -> CallError {
        if memory_hit || e.downcast_ref::<MemoryLimitHit>().is_some() {
            return CallError::MemoryLimit(self.limits.memory_bytes);
        }
        if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
            return CallError::Timeout(self.limits.deadline);
        }
        if e.downcast_ref::<WaitPastDeadline>().is_some() {
            return CallError::Timeout(self.limits.deadline);
        }
        if started.elapsed() >= self.limits.deadline && e.to_string().contains("interrupt") {
            return CallError::Timeout(self.limits.deadline);
        }
        CallError::Trap(format!("{e:#}"))
    }

    /// One call of an aggregator plugin under the sandbox's deadline and memory cap; a
    /// trap drops the instance (it holds no accumulator, so nothing is lost).
    fn agg_call<R>(
        &mut self,
        f: impl FnOnce(&Aggregator, &mut Store<State>, u32) -> wasmtime::Result<Result<R, PluginError>>,
    ) -> Result<R, CallError> {
        if self.live.is_none() {
            self.live = Some(
                self.start()
                    .map_err(|e| CallError::Restart(e.to_string()))?,
            );
        }
        let (store, live) = self.live.as_mut().expect("just started");
        let Live::Aggregator(b, format) = live else {
            return Err(CallError::Rejected("not an aggregator plugin".into()));
        };
        arm(store, &self.limits);
        store.data_mut().limiter.hit = false;
        let started = Instant::now();
        match f(b, store, *format) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(PluginError::Failed(m) | PluginError::InvalidConfig(m))) => {
                Err(CallError::Rejected(m))
            }
            Err(e) => {
                let hit = store.data().limiter.hit;
                self.live = None;
                Err(self.classify(e, hit, started))
            }
        }
    }

    /// A new, empty accumulator.
    pub fn agg_empty(&mut self) -> Result<PluginState, CallError> {
        self.agg_call(|b, s, _| b.call_empty(s).map(|w| Ok(from_wit(w))))
    }

    /// `acc` in this version's format: unchanged when it already is, else through the
    /// plugin's `restore` (an older version's accumulator after a swap or a restart).
    fn current(&mut self, acc: PluginState) -> Result<PluginState, CallError> {
        let format = match &self.live {
            Some((_, Live::Aggregator(_, f))) => *f,
            _ => {
                self.agg_call(|_, _, _| Ok(Ok(())))?;
                match &self.live {
                    Some((_, Live::Aggregator(_, f))) => *f,
                    _ => return Err(CallError::Rejected("not an aggregator plugin".into())),
                }
            }
        };
        if acc.format == format {
            return Ok(acc);
        }
        self.agg_call(|b, s, _| b.call_restore(s, &to_wit(&acc)).map(|r| r.map(from_wit)))
    }

    /// Fold a batch of records into `acc`.
    pub fn agg_update(&mut self, acc: PluginState, batch: &[u8]) -> Result<PluginState, CallError> {
        let acc = self.current(acc)?;
        self.agg_call(|b, s, _| {
            b.call_update(s, &to_wit(&acc), batch)
                .map(|r| r.map(from_wit))
        })
    }

    /// Combine two accumulators.
    pub fn agg_merge(&mut self, a: PluginState, b: PluginState) -> Result<PluginState, CallError> {
        let (a, b) = (self.current(a)?, self.current(b)?);
        self.agg_call(|p, s, _| {
            p.call_merge(s, &to_wit(&a), &to_wit(&b))
                .map(|r| r.map(from_wit))
        })
    }

    /// Compact an accumulator before it is written.
    pub fn agg_snapshot(&mut self, acc: PluginState) -> Result<PluginState, CallError> {
        let acc = self.current(acc)?;
        self.agg_call(|b, s, _| b.call_snapshot(s, &to_wit(&acc)).map(|r| r.map(from_wit)))
    }

    /// The window's result (JSON text).
    pub fn agg_finish(&mut self, acc: PluginState) -> Result<String, CallError> {
        let acc = self.current(acc)?;
        self.agg_call(|b, s, _| b.call_finish(s, &to_wit(&acc)))
    }
}

fn to_wit(s: &PluginState) -> AggWit {
    AggWit {
        format: s.format,
        data: s.data.clone(),
    }
}

fn from_wit(w: AggWit) -> PluginState {
    PluginState {
        format: w.format,
        data: w.data,
    }
}

type CallResult = wasmtime::Result<Result<Vec<u8>, PluginError>>;

/// A migration stage: records of version `reads` go to `call` in runs of consecutive
/// records (keeping the batch's order) and come back stamped `_schema: writes`; others
/// pass through as they are.
fn migrate(
    input: &[u8],
    reads: u32,
    writes: u32,
    mut call: impl FnMut(&[u8]) -> CallResult,
) -> CallResult {
    let mut out = Vec::with_capacity(input.len() + input.len() / 16);
    let mut run: Vec<u8> = Vec::new();
    let mut flush = |run: &mut Vec<u8>, out: &mut Vec<u8>| -> CallResult {
        if run.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let migrated = match call(run)? {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        run.clear();
        for line in weir_core::batch::ndjson_lines(&migrated) {
            if let Err(e) = stamp(line, writes, out) {
                return Ok(Err(PluginError::Failed(format!("migrated record: {e}"))));
            }
            out.push(b'\n');
        }
        Ok(Ok(Vec::new()))
    };
    for (i, line) in weir_core::batch::ndjson_lines(input).enumerate() {
        let version = match schema_of(line) {
            Ok(v) => v,
            Err(e) => return Ok(Err(PluginError::Failed(format!("record {}: {e}", i + 1)))),
        };
        if version == reads {
            run.extend_from_slice(line);
            run.push(b'\n');
        } else {
            if let Err(e) = flush(&mut run, &mut out)? {
                return Ok(Err(e));
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    if let Err(e) = flush(&mut run, &mut out)? {
        return Ok(Err(e));
    }
    Ok(Ok(out))
}
