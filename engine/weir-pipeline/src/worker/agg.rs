//! [`AggDriver`]: feeds a partition's committed segments to its [`Aggregator`] and
//! checkpoints it.
//!
//! The aggregator consumes what the worker has *committed*, after the commit, so rows
//! and aggregates never disagree about what happened. A checkpoint writes the
//! aggregator's state, the log offset it has consumed up to and the windows it closed
//! since the last checkpoint in one redb transaction; it happens when
//! `aggregation.checkpoint_interval_ms` has passed, at once when a critical
//! aggregation closed a window, and when the worker stops. After a crash the driver
//! restores the last checkpoint and re-reads the segments committed after it from the
//! store, so the aggregator sees every committed record exactly once in effect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_agg::{Aggregator, Partial};
use weir_core::batch::ndjson_lines;
use weir_store::{HotStore, Segment};

use super::custom::WasmFns;
use super::WorkerMetrics;
use crate::catalog::Catalog;

pub(super) struct AggDriver {
    partition: u32,
    agg: Aggregator,
    catalog: Arc<Catalog>,
    store: Arc<HotStore>,
    metrics: Arc<WorkerMetrics>,
    /// Per tenant, the catalog generation whose definitions the aggregator holds.
    generations: HashMap<String, u64>,
    interval: Duration,
    last: Instant,
    /// Log offset consumed (the worker's committed position).
    pos: u64,
    /// Offset of the last checkpoint.
    checkpointed: u64,
    /// Partials taken from the aggregator whose checkpoint has not succeeded yet.
    unwritten: Vec<Partial>,
    /// Custom (Wasm) aggregation functions.
    fns: WasmFns,
}

impl AggDriver {
    /// Restore `partition`'s checkpoint and catch up to the worker's position `pos`.
    pub(super) fn restore(
        partition: u32,
        catalog: Arc<Catalog>,
        store: Arc<HotStore>,
        metrics: Arc<WorkerMetrics>,
        pos: u64,
    ) -> AggDriver {
        let interval = Duration::from_millis(catalog.config().aggregation.checkpoint_interval_ms);
        let mut d = AggDriver {
            partition,
            agg: Aggregator::new(),
            fns: WasmFns::new(catalog.clone()),
            catalog,
            store,
            metrics,
            generations: HashMap::new(),
            interval,
            last: Instant::now(),
            pos,
            checkpointed: pos,
            unwritten: Vec::new(),
        };
        let from = match d.store.aggregation_checkpoint(partition) {
            // First start (or a store from before aggregations): begin at the position,
            // and say so at once, so a crash before the first interval re-reads from here.
            Ok(None) => {
                d.write_checkpoint();
                pos
            }
            Ok(Some((off, state))) => {
                match Aggregator::decode(&state, |fp| d.store.aggregation_definition(fp)) {
                    Ok(a) => {
                        d.agg = a;
                        off
                    }
                    Err(e) => {
                        tracing::error!(partition, error = %e, "aggregation checkpoint unreadable: aggregations restart empty");
                        pos
                    }
                }
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "cannot read the aggregation checkpoint: aggregations restart empty");
                pos
            }
        };
        d.checkpointed = from;
        let mut tenants: Vec<String> = d.catalog.config().tenant_names();
        tenants.extend(d.agg.tenants());
        tenants.sort();
        tenants.dedup();
        for t in &tenants {
            d.refresh(t);
        }
        if from < pos {
            match d.store.segments_since(partition, from) {
                Ok(segs) => {
                    let n = segs.len();
                    let segs: Vec<Segment> = segs.into_iter().filter(|s| s.offset < pos).collect();
                    let kept = vec![true; segs.len()];
                    d.feed(&segs, &kept, pos);
                    tracing::info!(
                        partition,
                        from,
                        to = pos,
                        segments = n,
                        "aggregations caught up from the store"
                    );
                }
                Err(e) => {
                    tracing::error!(partition, error = %e, "cannot re-read segments for aggregations")
                }
            }
        }
        d
    }

    /// Apply `tenant`'s current definitions if they changed.
    fn refresh(&mut self, tenant: &str) {
        let g = self.catalog.generation(tenant);
        if self.generations.get(tenant) == Some(&g) {
            return;
        }
        self.generations.insert(tenant.to_owned(), g);
        let defs = self.catalog.definitions(tenant);
        self.agg.set_definitions(tenant, &defs, &mut self.fns);
    }

    /// Feed the segments just committed (those `kept`) and note the new position.
    pub(super) fn feed(&mut self, segments: &[Segment], kept: &[bool], next: u64) {
        for (s, _) in segments.iter().zip(kept).filter(|(_, k)| **k) {
            let b = &s.batch;
            self.refresh(&b.tenant);
            if self.agg.wants(&b.tenant, &b.stream) {
                self.agg.feed(
                    &b.tenant,
                    &b.stream,
                    s.event_times(),
                    ndjson_lines(&b.records),
                    &mut self.fns,
                );
            }
        }
        for (tenant, name, c) in self.agg.take_counters() {
            let l = [("tenant", tenant.as_str()), ("aggregation", name.as_str())];
            self.metrics.agg_events.with(&l).add(c.events);
            if c.late > 0 {
                self.metrics.agg_late.with(&l).add(c.late);
            }
            if c.overflow > 0 {
                self.metrics.agg_overflow.with(&l).add(c.overflow);
            }
        }
        self.pos = next;
    }

    /// Checkpoint when due (`force`: now, e.g. at shutdown).
    pub(super) fn maybe_checkpoint(&mut self, force: bool) {
        let due = self.agg.critical_pending()
            || ((force || self.last.elapsed() >= self.interval)
                && (self.agg.changed()
                    || self.pos != self.checkpointed
                    || !self.unwritten.is_empty()));
        if due {
            self.write_checkpoint();
        }
    }

    fn write_checkpoint(&mut self) {
        self.unwritten.extend(self.agg.take_pending());
        let state = self.agg.encode();
        let started = Instant::now();
        let defs = self.agg.definitions();
        match self.store.checkpoint_aggregation(
            self.partition,
            self.pos,
            &state,
            &self.unwritten,
            &defs,
            &mut self.fns,
        ) {
            Ok(()) => {
                let p = self.partition.to_string();
                self.metrics
                    .agg_checkpoint_seconds
                    .with(&[])
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .agg_state_bytes
                    .with(&[("partition", &p)])
                    .set(state.len() as u64);
                self.metrics
                    .agg_open_groups
                    .with(&[("partition", &p)])
                    .set(self.agg.open_groups() as u64);
                for u in &self.unwritten {
                    if !u.additive {
                        self.metrics
                            .agg_rows
                            .with(&[("tenant", &u.tenant), ("aggregation", u.def.name())])
                            .inc();
                    }
                }
                self.unwritten.clear();
                self.checkpointed = self.pos;
                self.last = Instant::now();
            }
            Err(e) => {
                // Kept in `unwritten` and retried at the next call; nothing is lost.
                tracing::error!(partition = self.partition, error = %e, "aggregation checkpoint failed; will retry");
                self.last = Instant::now();
            }
        }
    }
}
