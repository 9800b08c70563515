//! [`Worker`]: the processing loop of one partition; its plugin chains are in
//! [`chain`].

mod agg;
mod chain;
mod custom;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chain::{Chains, Failure};
use weir_core::batch::ndjson_lines;
use weir_core::metrics::{Counter, Family, Gauge, Histogram, Registry};
use weir_core::Batch;
use weir_store::{DeadLetter, HotStore, Segment};
use weir_transport::{Entry, Log};

use crate::catalog::Catalog;

/// Metrics of all workers.
pub struct WorkerMetrics {
    pub records_in: Arc<Family<Counter>>,
    pub records_out: Arc<Family<Counter>>,
    pub dead_letters: Arc<Family<Counter>>,
    pub plugin_calls: Arc<Family<Counter>>,
    pub plugin_errors: Arc<Family<Counter>>,
    pub plugin_traps: Arc<Family<Counter>>,
    pub plugin_quarantined: Arc<Family<Counter>>,
    pub shadow_calls: Arc<Family<Counter>>,
    pub shadow_errors: Arc<Family<Counter>>,
    pub shadow_diff_records: Arc<Family<Counter>>,
    pub plugin_records_in: Arc<Family<Counter>>,
    pub plugin_records_out: Arc<Family<Counter>>,
    pub plugin_seconds: Arc<Family<Histogram>>,
    pub commit_seconds: Arc<Family<Histogram>>,
    pub replays: Arc<Family<Counter>>,
    pub agg_events: Arc<Family<Counter>>,
    pub agg_late: Arc<Family<Counter>>,
    pub agg_overflow: Arc<Family<Counter>>,
    pub agg_rows: Arc<Family<Counter>>,
    pub agg_checkpoint_seconds: Arc<Family<Histogram>>,
    pub agg_state_bytes: Arc<Family<Gauge>>,
    pub agg_open_groups: Arc<Family<Gauge>>,
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
            shadow_calls: r.counter(
                "weir_plugin_shadow_calls_total",
                "Calls of a version in shadow mode (on a copy of the active version's input).",
            ),
            shadow_errors: r.counter(
                "weir_plugin_shadow_errors_total",
                "Shadow calls that failed (refused, trapped, timed out, over a limit).",
            ),
            shadow_diff_records: r.counter(
                "weir_plugin_shadow_diff_records_total",
                "Output records where the shadow version differs from the active one.",
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
            agg_events: r.counter(
                "weir_agg_events_total",
                "Events that passed an aggregation's filter.",
            ),
            agg_late: r.counter(
                "weir_agg_late_events_total",
                "Events that arrived after their window closed (counted in the row's `late`, not in its values).",
            ),
            agg_overflow: r.counter(
                "weir_agg_overflow_events_total",
                "Events folded into the overflow group because their window held max_groups groups.",
            ),
            agg_rows: r.counter(
                "weir_agg_windows_total",
                "Closed windows written (one per aggregation, window, group and partition).",
            ),
            agg_checkpoint_seconds: r.histogram(
                "weir_agg_checkpoint_seconds",
                "Time to write one aggregation checkpoint (state, offset and closed windows).",
            ),
            agg_state_bytes: r.gauge(
                "weir_agg_state_bytes",
                "Size of the last aggregation checkpoint's state, per partition.",
            ),
            agg_open_groups: r.gauge(
                "weir_agg_open_groups",
                "Open windows x groups held in aggregation state, per partition.",
            ),
        }
    }
}

/// The processing loop of one partition. Owns its plugin instances.
pub struct Worker {
    partition: u32,
    log: Arc<dyn Log>,
    store: Arc<HotStore>,
    batch_records: usize,
    metrics: Arc<WorkerMetrics>,
    chains: Chains,
    catalog: Arc<Catalog>,
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
            chains: Chains::new(partition, catalog.clone(), store.clone(), metrics.clone()),
            catalog,
            store,
            batch_records,
            metrics,
        }
    }

    /// Loop until `stop` is set; the batch in hand is always finished and committed.
    pub fn run(mut self, stop: &AtomicBool) {
        let p = self.partition;
        let mut pos = self.store.position(p);
        self.log.release(p, pos);
        let mut aggs = agg::AggDriver::restore(
            p,
            self.catalog.clone(),
            self.store.clone(),
            self.metrics.clone(),
            pos,
        );
        while !stop.load(Ordering::SeqCst) {
            aggs.maybe_checkpoint(false);
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
            let states = self.chains.take_states();
            let started = Instant::now();
            // The commit is retried until it succeeds: skipping it would lose rows.
            let mut backoff = Duration::from_millis(50);
            let replays = loop {
                match self.store.commit(p, next, &segments, &dead, &states) {
                    Ok(r) => break r,
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "hot store commit failed; retrying");
                        if stop.load(Ordering::SeqCst) {
                            aggs.maybe_checkpoint(true);
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
            aggs.feed(&segments, &replays.kept, next);
            aggs.maybe_checkpoint(false);
            pos = next;
            self.log.release(p, pos);
        }
        aggs.maybe_checkpoint(true);
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
            let outcome = self.chains.run(b).and_then(|records| {
                let count = ndjson_lines(&records).count() as u32;
                let batch = Batch {
                    tenant: b.tenant.clone(),
                    stream: b.stream.clone(),
                    ingest_ts_ms: b.ingest_ts_ms,
                    count,
                    records,
                    replay_of: b.replay_of,
                };
                Segment::new(self.partition, e.offset, batch).map_err(|bad| {
                    // The rows are refused: the entry did not happen for stateful stages.
                    self.chains.undo(b);
                    Failure {
                        plugin: self.chains.last_plugin(b),
                        sha256: String::new(),
                        version: None,
                        error: format!(
                            "output line {} is not a JSON object: {}",
                            bad.line, bad.reason
                        ),
                    }
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
}

#[cfg(test)]
mod tests;
