//! [`Chains`]: a worker's plugin chains, one per tenant and stream, rebuilt between
//! entries when the catalog changes, with the state of their stateful stages.
//!
//! State: a chain starts from the state its predecessor left (a hot swap) or, on the
//! first entry after a start, from the state committed with the partition's position.
//! A stage's state is matched by plugin reference (the n-th stage naming a plugin takes
//! the state of the n-th such stage before). When an entry fails anywhere in the chain,
//! the stages that had already processed it forget it ([`PluginInstance::undo_last`]),
//! so the state always reflects exactly the entries whose rows landed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_core::batch::ndjson_lines;
use weir_core::metrics::{Counter, Histogram};
use weir_core::record::Checker;
use weir_core::Batch;
use weir_plugin_host::PluginState;
use weir_store::{ChainState, HotStore, StageState};

use super::WorkerMetrics;
use crate::catalog::{Catalog, Stage};

/// A failure of one entry in a chain.
pub(super) struct Failure {
    pub plugin: String,
    pub sha256: String,
    pub version: Option<u32>,
    pub error: String,
}

type ChainKey = (String, String);

/// One stage's metric handles, resolved once per chain (labels: tenant, plugin, version).
struct StageMetrics {
    calls: Arc<Counter>,
    errors: Arc<Counter>,
    traps: Arc<Counter>,
    quarantined: Arc<Counter>,
    records_in: Arc<Counter>,
    records_out: Arc<Counter>,
    seconds: Arc<Histogram>,
}

impl StageMetrics {
    fn new(m: &WorkerMetrics, tenant: &str, stage: &Stage) -> StageMetrics {
        let version = stage
            .version
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        let l = [
            ("tenant", tenant),
            ("plugin", stage.spec.as_str()),
            ("version", version.as_str()),
        ];
        StageMetrics {
            calls: m.plugin_calls.with(&l),
            errors: m.plugin_errors.with(&l),
            traps: m.plugin_traps.with(&l),
            quarantined: m.plugin_quarantined.with(&l),
            records_in: m.plugin_records_in.with(&l),
            records_out: m.plugin_records_out.with(&l),
            seconds: m.plugin_seconds.with(&l),
        }
    }
}

/// Metric handles of a stage's shadow version.
struct ShadowMetrics {
    calls: Arc<Counter>,
    errors: Arc<Counter>,
    diff: Arc<Counter>,
}

impl ShadowMetrics {
    fn new(m: &WorkerMetrics, tenant: &str, stage: &Stage) -> Option<ShadowMetrics> {
        let version = stage.shadow.as_ref()?.version.to_string();
        let l = [
            ("tenant", tenant),
            ("plugin", stage.spec.as_str()),
            ("version", version.as_str()),
        ];
        Some(ShadowMetrics {
            calls: m.shadow_calls.with(&l),
            errors: m.shadow_errors.with(&l),
            diff: m.shadow_diff_records.with(&l),
        })
    }
}

/// Output records that differ between two NDJSON outputs (by position).
fn differing_records(a: &[u8], b: &[u8]) -> u64 {
    let (mut x, mut y) = (ndjson_lines(a), ndjson_lines(b));
    let mut n = 0;
    loop {
        match (x.next(), y.next()) {
            (None, None) => return n,
            (Some(p), Some(q)) if p == q => {}
            _ => n += 1,
        }
    }
}

/// A stage of a worker's chain with its metric handles.
struct Running {
    stage: Stage,
    m: StageMetrics,
    shadow_m: Option<ShadowMetrics>,
    /// Consecutive failures of the shadow version.
    shadow_failed_in_a_row: u32,
    /// Consecutive traps or timeouts of this stage.
    trapped_in_a_row: u32,
    /// While set and in the future, the stage is not called (circuit breaker open).
    quarantined_until: Option<Instant>,
}

struct Chain {
    generation: u64,
    stages: Result<Vec<Running>, String>,
    /// The state the chain started from: its state while it cannot run.
    carried: Vec<StageState>,
    /// False when the committed state could not be read: then nothing may overwrite it.
    state_known: bool,
}

impl Chain {
    fn has_state(&self) -> bool {
        match &self.stages {
            Ok(s) => s.iter().any(|r| r.stage.instance.is_stateful()),
            Err(_) => !self.carried.is_empty(),
        }
    }

    /// The state of every stateful stage, in chain order.
    fn state(&self) -> Vec<StageState> {
        let Ok(stages) = &self.stages else {
            return self.carried.clone();
        };
        stages
            .iter()
            .filter_map(|r| {
                r.stage.instance.state().map(|s| StageState {
                    spec: r.stage.spec.clone(),
                    format: s.format,
                    data: s.data.clone(),
                })
            })
            .collect()
    }
}

/// The chains of one worker (one partition).
pub(super) struct Chains {
    partition: u32,
    catalog: Arc<Catalog>,
    store: Arc<HotStore>,
    metrics: Arc<WorkerMetrics>,
    chains: HashMap<ChainKey, Chain>,
    /// Chains whose state changed since the last commit.
    dirty: HashSet<ChainKey>,
}

impl Chains {
    pub fn new(
        partition: u32,
        catalog: Arc<Catalog>,
        store: Arc<HotStore>,
        metrics: Arc<WorkerMetrics>,
    ) -> Chains {
        Chains {
            partition,
            catalog,
            store,
            metrics,
            chains: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// The state to commit with the next position: every chain whose state changed.
    pub fn take_states(&mut self) -> Vec<ChainState> {
        let mut out = Vec::new();
        for key in self.dirty.drain() {
            if let Some(c) = self.chains.get(&key).filter(|c| c.state_known) {
                out.push(ChainState {
                    tenant: key.0.clone(),
                    stream: key.1.clone(),
                    stages: c.state(),
                });
            }
        }
        out
    }

    /// The entry that just went through `b`'s chain failed after it (its rows were
    /// refused): the stateful stages forget it.
    pub fn undo(&mut self, b: &Batch) {
        let key = (b.tenant.clone(), b.stream.clone());
        if let Some(Chain { stages: Ok(s), .. }) = self.chains.get_mut(&key) {
            for r in s.iter_mut() {
                r.stage.instance.undo_last();
            }
        }
    }

    /// A fresh chain for `tenant`'s `stream` starting from `carried` state.
    fn build(
        &self,
        tenant: &str,
        stream: &str,
        carried: &[StageState],
    ) -> Result<Vec<Running>, String> {
        let stages = self
            .catalog
            .chain(tenant, stream)
            .map_err(|e| e.to_string())?;
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(stages.len());
        for mut stage in stages {
            if stage.instance.is_stateful() {
                let n = seen.entry(stage.spec.clone()).or_default();
                let prior = carried.iter().filter(|s| s.spec == stage.spec).nth(*n);
                *n += 1;
                if let Some(s) = prior {
                    let state = PluginState {
                        format: s.format,
                        data: s.data.clone(),
                    };
                    stage
                        .instance
                        .restore(state)
                        .map_err(|e| format!("{}: {e}", stage.spec))?;
                }
            }
            out.push(Running {
                shadow_m: ShadowMetrics::new(&self.metrics, tenant, &stage),
                shadow_failed_in_a_row: 0,
                m: StageMetrics::new(&self.metrics, tenant, &stage),
                stage,
                trapped_in_a_row: 0,
                quarantined_until: None,
            });
        }
        Ok(out)
    }

    /// The chain of `b`'s tenant and stream, rebuilt first if the catalog changed.
    fn current(&mut self, b: &Batch) -> &mut Chain {
        let generation = self.catalog.generation(&b.tenant);
        let key = (b.tenant.clone(), b.stream.clone());
        // A plugin change takes effect here, between entries: no entry sees two versions.
        let stale = self
            .chains
            .get(&key)
            .is_none_or(|c| c.generation != generation);
        if stale {
            // The old chain goes first, so its instances do not count against the
            // tenant's instance limit while the new one is built; its state carries over.
            let (carried, state_known) = match self.chains.remove(&key) {
                Some(old) => (old.state(), old.state_known),
                None => match self.store.chain_state(self.partition, &b.tenant, &b.stream) {
                    Ok(s) => (s, true),
                    Err(e) => {
                        tracing::error!(tenant = %b.tenant, stream = %b.stream, error = %e, "cannot read plugin state");
                        (Vec::new(), false)
                    }
                },
            };
            let stages = if state_known {
                self.build(&b.tenant, &b.stream, &carried)
            } else {
                Err("the committed plugin state cannot be read".to_owned())
            };
            let chain = Chain {
                generation,
                stages,
                carried,
                state_known,
            };
            if chain.has_state() {
                self.dirty.insert(key.clone());
            }
            self.chains.insert(key.clone(), chain);
        }
        self.chains.get_mut(&key).expect("just built")
    }

    /// Run one entry's records through its chain.
    pub fn run(&mut self, b: &Batch) -> Result<Vec<u8>, Failure> {
        let catalog = self.catalog.clone();
        let chain = self.current(b);
        let stateful = chain.has_state();
        let stages = match &mut chain.stages {
            Ok(s) => s,
            Err(e) => {
                return Err(Failure {
                    plugin: "(pipeline)".into(),
                    sha256: String::new(),
                    version: None,
                    error: format!("pipeline unavailable: {e}"),
                })
            }
        };
        let res = run_stages(stages, b, &catalog);
        if let Err((_, failed_at)) = &res {
            // The stages before the failing one processed the entry: it did not happen.
            for r in &mut stages[..*failed_at] {
                r.stage.instance.undo_last();
            }
        }
        if stateful {
            self.dirty.insert((b.tenant.clone(), b.stream.clone()));
        }
        res.map_err(|(f, _)| f)
    }

    /// The plugin whose output ends the chain of `b` (blamed for invalid output).
    pub fn last_plugin(&self, b: &Batch) -> String {
        self.catalog
            .chain_specs(&b.tenant, &b.stream)
            .last()
            .cloned()
            .unwrap_or_else(|| "(ingest)".into())
    }
}

/// Run `b` through `stages`; on failure, the failure and the failing stage's index.
fn run_stages(
    stages: &mut [Running],
    b: &Batch,
    catalog: &Catalog,
) -> Result<Vec<u8>, (Failure, usize)> {
    if stages.is_empty() {
        return Ok(b.records.clone());
    }
    let mut data = std::borrow::Cow::Borrowed(&b.records[..]);
    let mut records_in = u64::from(b.count);
    let policy = &catalog.config().plugins;
    for (n, run) in stages.iter_mut().enumerate() {
        let Running { stage, m, .. } = run;
        // A stage that keeps trapping or timing out is not called for a while, so it
        // cannot hold its partition (and other tenants' entries there) hostage.
        if let Some(until) = run.quarantined_until {
            if Instant::now() < until {
                m.quarantined.inc();
                if let Some(v) = stage.version {
                    catalog.observe(&b.tenant, &stage.spec, v, true);
                }
                return Err((failure(stage, format!(
                        "plugin quarantined after {} consecutive traps or timeouts; not called (retried {} s after the last one)",
                        run.trapped_in_a_row, policy.quarantine_secs
                    )), n));
            }
        }
        let started = Instant::now();
        let res = stage.instance.process(&data);
        m.seconds.observe(started.elapsed().as_secs_f64());
        m.calls.inc();
        m.records_in.add(records_in);
        let trapped = matches!(&res, Err(e) if e.is_trap());
        if trapped {
            run.trapped_in_a_row += 1;
            if run.trapped_in_a_row >= policy.quarantine_after {
                run.quarantined_until =
                    Some(Instant::now() + Duration::from_secs(policy.quarantine_secs));
            }
        } else {
            run.trapped_in_a_row = 0;
            run.quarantined_until = None;
        }
        if let Some(v) = stage.version {
            // Feeds the automatic rollback of a freshly activated version.
            catalog.observe(&b.tenant, &stage.spec, v, trapped);
        }
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                if trapped {
                    m.traps.inc();
                } else {
                    m.errors.inc();
                }
                return Err((failure(stage, e.to_string()), n));
            }
        };
        // A version in shadow mode sees the same input; its output is only compared.
        // One that keeps failing is dropped from this chain, so a looping shadow cannot
        // cost the partition a deadline per batch.
        if let (Some(sh), Some(sm)) = (stage.shadow.as_mut(), run.shadow_m.as_ref()) {
            sm.calls.inc();
            match sh.instance.process(&data) {
                Ok(shadow_out) => {
                    run.shadow_failed_in_a_row = 0;
                    sm.diff.add(differing_records(&out, &shadow_out));
                }
                Err(e) => {
                    sm.errors.inc();
                    run.shadow_failed_in_a_row += 1;
                    if run.shadow_failed_in_a_row >= policy.quarantine_after {
                        tracing::warn!(tenant = %b.tenant, plugin = %stage.spec, version = sh.version,
                            error = %e, "shadow version stopped on this partition after repeated failures");
                        stage.shadow = None;
                    }
                }
            }
        }
        // Every stage's output meets the record rules the door applies, so what the
        // next stage, the rows, the aggregations and the cold tier read is what ingest
        // would have accepted. A breach fails the entry (dead letter) naming the rule.
        if let Some((line, why)) = invalid_output(&out) {
            m.errors.inc();
            return Err((
                failure(
                    stage,
                    format!("invalid output: line {line} breaks the record rules: {why}"),
                ),
                n + 1,
            ));
        }
        records_in = ndjson_lines(&out).count() as u64;
        m.records_out.add(records_in);
        data = std::borrow::Cow::Owned(out);
    }
    Ok(data.into_owned())
}

fn failure(stage: &Stage, error: String) -> Failure {
    Failure {
        plugin: stage.spec.clone(),
        sha256: stage.instance.plugin().sha256().to_owned(),
        version: stage.version,
        error,
    }
}

/// The first output line that breaks the record rules ([`weir_core::record`]), with
/// the reason.
fn invalid_output(out: &[u8]) -> Option<(usize, String)> {
    let mut checker = Checker::default();
    ndjson_lines(out)
        .enumerate()
        .find_map(|(i, line)| checker.check(line).err().map(|e| (i + 1, e.to_string())))
}
