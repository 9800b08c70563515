//! [`Worker`]: the processing loop of one partition.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_core::batch::ndjson_lines;
use weir_core::metrics::{Counter, Family, Histogram, Registry};
use weir_core::Batch;
use weir_store::{DeadLetter, HotStore, Segment};
use weir_transport::{Entry, Log};

use crate::catalog::{Catalog, Stage};

/// Metrics of all workers.
pub struct WorkerMetrics {
    pub records_in: Arc<Family<Counter>>,
    pub records_out: Arc<Family<Counter>>,
    pub dead_letters: Arc<Family<Counter>>,
    pub plugin_calls: Arc<Family<Counter>>,
    pub plugin_errors: Arc<Family<Counter>>,
    pub plugin_traps: Arc<Family<Counter>>,
    pub plugin_quarantined: Arc<Family<Counter>>,
    pub plugin_records_in: Arc<Family<Counter>>,
    pub plugin_records_out: Arc<Family<Counter>>,
    pub plugin_seconds: Arc<Family<Histogram>>,
    pub commit_seconds: Arc<Family<Histogram>>,
    pub replays: Arc<Family<Counter>>,
}

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

/// A stage of a worker's chain with its metric handles.
struct Running {
    stage: Stage,
    m: StageMetrics,
    /// Consecutive traps or timeouts of this stage.
    trapped_in_a_row: u32,
    /// While set and in the future, the stage is not called (circuit breaker open).
    quarantined_until: Option<Instant>,
}

impl WorkerMetrics {
    pub fn new(r: &Registry) -> Self {
        WorkerMetrics {
            records_in: r.counter(
                "weir_worker_records_in_total",
                "Records read from the log by workers.",
            ),
            records_out: r.counter(
                "weir_worker_records_out_total",
                "Rows written to the hot store.",
            ),
            dead_letters: r.counter(
                "weir_dead_letter_records_total",
                "Records sent to the dead-letter store.",
            ),
            plugin_calls: r.counter("weir_plugin_calls_total", "Plugin calls (one per batch)."),
            plugin_errors: r.counter(
                "weir_plugin_errors_total",
                "Plugin calls that refused their batch.",
            ),
            plugin_traps: r.counter(
                "weir_plugin_traps_total",
                "Plugin calls that trapped, timed out or hit a limit.",
            ),
            plugin_quarantined: r.counter(
                "weir_plugin_quarantined_total",
                "Batches dead-lettered without a call while a stage's circuit breaker was open.",
            ),
            plugin_records_in: r.counter(
                "weir_plugin_records_in_total",
                "Records given to a plugin.",
            ),
            plugin_records_out: r.counter(
                "weir_plugin_records_out_total",
                "Records a plugin returned.",
            ),
            plugin_seconds: r.histogram("weir_plugin_call_seconds", "Plugin call time."),
            commit_seconds: r.histogram(
                "weir_store_commit_seconds",
                "Hot store commit time per worker batch.",
            ),
            replays: r.counter(
                "weir_dead_letter_replays_total",
                "Replayed dead letters by outcome: landed, or duplicate (already replayed, dropped).",
            ),
        }
    }
}

/// A failure of one entry in a chain.
struct Failure {
    plugin: String,
    sha256: String,
    version: Option<u32>,
    error: String,
}

type ChainKey = (String, String);

/// The processing loop of one partition. Owns its plugin instances.
pub struct Worker {
    partition: u32,
    log: Arc<dyn Log>,
    store: Arc<HotStore>,
    catalog: Arc<Catalog>,
    batch_records: usize,
    metrics: Arc<WorkerMetrics>,
    /// Chains by tenant and stream, with the catalog generation they were built at.
    chains: HashMap<ChainKey, (u64, Result<Vec<Running>, String>)>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Worker {
    pub fn new(
        partition: u32,
        log: Arc<dyn Log>,
        store: Arc<HotStore>,
        catalog: Arc<Catalog>,
        batch_records: usize,
        metrics: Arc<WorkerMetrics>,
    ) -> Worker {
        Worker {
            partition,
            log,
            store,
            catalog,
            batch_records,
            metrics,
            chains: HashMap::new(),
        }
    }

    /// Loop until `stop` is set; the batch in hand is always finished and committed.
    pub fn run(mut self, stop: &AtomicBool) {
        let p = self.partition;
        let mut pos = self.store.position(p);
        self.log.release(p, pos);
        while !stop.load(Ordering::SeqCst) {
            let entries = match self.log.read(p, pos, self.batch_records) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "log read failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            if entries.is_empty() {
                self.log.wait_for(p, pos, Duration::from_millis(200));
                continue;
            }
            // On shutdown, stop between entries and commit what is done.
            let (done, segments, dead) = self.process(&entries, stop);
            let next = entries[..done].last().map_or(pos, Entry::end);
            let started = Instant::now();
            // The commit is retried until it succeeds: skipping it would lose rows.
            let mut backoff = Duration::from_millis(50);
            let replays = loop {
                match self.store.commit(p, next, &segments, &dead) {
                    Ok(r) => break r,
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "hot store commit failed; retrying");
                        if stop.load(Ordering::SeqCst) {
                            return; // Nothing was committed: the entries are replayed on restart.
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            for (outcome, n) in [
                ("landed", replays.landed),
                ("duplicate", replays.duplicates),
            ] {
                if n > 0 {
                    self.metrics
                        .replays
                        .with(&[("outcome", outcome)])
                        .add(n as u64);
                }
            }
            self.metrics
                .commit_seconds
                .with(&[])
                .observe(started.elapsed().as_secs_f64());
            pos = next;
            self.log.release(p, pos);
        }
    }

    /// Run entries through their chains until done or `stop` is set; returns how many
    /// entries were processed and their outcome.
    fn process(
        &mut self,
        entries: &[Entry],
        stop: &AtomicBool,
    ) -> (usize, Vec<Segment>, Vec<DeadLetter>) {
        let mut segments = Vec::with_capacity(entries.len());
        let mut dead = Vec::new();
        let mut done = 0;
        for e in entries {
            if done > 0 && stop.load(Ordering::SeqCst) {
                break;
            }
            done += 1;
            let b = &e.batch;
            self.metrics
                .records_in
                .with(&[("tenant", &b.tenant)])
                .add(u64::from(b.count));
            let outcome = self.run_chain(b).and_then(|records| {
                let count = ndjson_lines(&records).count() as u32;
                let batch = Batch {
                    tenant: b.tenant.clone(),
                    stream: b.stream.clone(),
                    ingest_ts_ms: b.ingest_ts_ms,
                    count,
                    records,
                    replay_of: b.replay_of,
                };
                Segment::new(self.partition, e.offset, batch).map_err(|bad| Failure {
                    plugin: self.last_plugin(b),
                    sha256: String::new(),
                    version: None,
                    error: format!(
                        "output line {} is not a JSON object: {}",
                        bad.line, bad.reason
                    ),
                })
            });
            match outcome {
                Ok(seg) => {
                    self.metrics
                        .records_out
                        .with(&[("tenant", &b.tenant)])
                        .add(seg.num_rows() as u64);
                    segments.push(seg);
                }
                Err(f) => {
                    tracing::warn!(tenant = %b.tenant, stream = %b.stream, partition = self.partition,
                        offset = e.offset, plugin = %f.plugin, error = %f.error, "batch dead-lettered");
                    self.metrics
                        .dead_letters
                        .with(&[("tenant", &b.tenant), ("plugin", &f.plugin)])
                        .add(u64::from(b.count));
                    dead.push(DeadLetter {
                        tenant: b.tenant.clone(),
                        stream: b.stream.clone(),
                        partition: self.partition,
                        offset: e.offset,
                        count: b.count,
                        plugin: f.plugin,
                        plugin_sha256: f.sha256,
                        plugin_version: f.version,
                        error: f.error,
                        ingest_ts_ms: b.ingest_ts_ms,
                        failed_at_ms: now_ms(),
                        records: String::from_utf8_lossy(&b.records).into_owned(),
                        replay_of: b.replay_of,
                    });
                }
            }
        }
        (done, segments, dead)
    }

    /// A fresh chain for `tenant`'s `stream`, with its metric handles.
    fn build_chain(&self, tenant: &str, stream: &str) -> Result<Vec<Running>, String> {
        let stages = self
            .catalog
            .chain(tenant, stream)
            .map_err(|e| e.to_string())?;
        Ok(stages
            .into_iter()
            .map(|stage| Running {
                m: StageMetrics::new(&self.metrics, tenant, &stage),
                stage,
                trapped_in_a_row: 0,
                quarantined_until: None,
            })
            .collect())
    }

    fn run_chain(&mut self, b: &Batch) -> Result<Vec<u8>, Failure> {
        let generation = self.catalog.generation();
        let key = (b.tenant.clone(), b.stream.clone());
        // A plugin change takes effect here, between entries: no entry sees two versions.
        let stale = self.chains.get(&key).is_none_or(|(g, _)| *g != generation);
        if stale {
            // The old chain goes first, so its instances do not count against the
            // tenant's instance limit while the new one is built.
            self.chains.remove(&key);
            let chain = self.build_chain(&b.tenant, &b.stream);
            self.chains.insert(key.clone(), (generation, chain));
        }
        let stages = match &mut self.chains.get_mut(&key).expect("just built").1 {
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
        if stages.is_empty() {
            return Ok(b.records.clone());
        }
        let mut data = std::borrow::Cow::Borrowed(&b.records[..]);
        let mut records_in = u64::from(b.count);
        let last = stages.len() - 1;
        let policy = &self.catalog.config().plugins;
        for (n, run) in stages.iter_mut().enumerate() {
            let Running { stage, m, .. } = run;
            // A stage that keeps trapping or timing out is not called for a while, so it
            // cannot hold its partition (and other tenants' entries there) hostage.
            if let Some(until) = run.quarantined_until {
                if Instant::now() < until {
                    m.quarantined.inc();
                    if let Some(v) = stage.version {
                        self.catalog.observe(&b.tenant, &stage.spec, v, true);
                    }
                    return Err(failure(stage, format!(
                        "plugin quarantined after {} consecutive traps or timeouts; not called (retried {} s after the last one)",
                        run.trapped_in_a_row, policy.quarantine_secs
                    )));
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
                self.catalog.observe(&b.tenant, &stage.spec, v, trapped);
            }
            let out = match res {
                Ok(out) => out,
                Err(e) => {
                    if trapped {
                        m.traps.inc();
                    } else {
                        m.errors.inc();
                    }
                    return Err(failure(stage, e.to_string()));
                }
            };
            // The last stage's output is checked when its rows are built.
            if n < last {
                if let Some((line, why)) = invalid_output(&out) {
                    m.errors.inc();
                    return Err(failure(
                        stage,
                        format!("output line {line} is not a JSON object: {why}"),
                    ));
                }
            }
            records_in = ndjson_lines(&out).count() as u64;
            m.records_out.add(records_in);
            data = std::borrow::Cow::Owned(out);
        }
        Ok(data.into_owned())
    }
}

fn failure(stage: &Stage, error: String) -> Failure {
    Failure {
        plugin: stage.spec.clone(),
        sha256: stage.instance.plugin().sha256().to_owned(),
        version: stage.version,
        error,
    }
}

/// The first output line that is not a JSON object, with the reason.
fn invalid_output(out: &[u8]) -> Option<(usize, String)> {
    for (i, line) in ndjson_lines(out).enumerate() {
        if line.first() != Some(&b'{') {
            return Some((i + 1, "not an object".into()));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line) {
            return Some((i + 1, e.to_string()));
        }
    }
    None
}

impl Worker {
    /// The plugin whose output ends the chain of `b` (blamed for invalid output).
    fn last_plugin(&self, b: &Batch) -> String {
        self.catalog
            .chain_specs(&b.tenant, &b.stream)
            .last()
            .cloned()
            .unwrap_or_else(|| "(ingest)".into())
    }
}

#[cfg(test)]
mod tests;
