//! [`HotStore`]: recent rows in memory as Arrow, persisted in redb with the positions.
//!
//! redb file `store.redb`, tables:
//! - `positions`: partition → next log offset to process;
//! - `segments`: `(partition, offset)` → one processed log entry (an encoded [`Batch`]
//!   of the plugin chain's output, same tenant, stream and ingest time as the entry);
//!   entries of the `_metrics` stream are metric samples and become `metrics` rows,
//!   the others `logs` rows;
//! - `dead_letters`: `(partition, offset)` → JSON of a [`DeadLetter`], indexed per
//!   tenant, bounded in age and bytes (see [`crate::letters`]);
//! - `quarantine`: segments' rows the cold tier could not take (see
//!   [`crate::quarantine`]); a stored segment that no longer loads goes there at open
//!   instead of stopping the server.
//!
//! [`HotStore::commit`] writes a worker's segments, dead letters and new position in one
//! transaction, then publishes the rows in memory. After a crash the store holds exactly
//! the segments before its persisted position, so replaying the log from there neither
//! loses nor duplicates a row. At startup every segment is loaded back into memory.
//!
//! Memory bound: when the Arrow batches exceed `max_bytes`, the oldest segments are
//! removed from memory and from redb, and counted in `evicted_rows` (until the cold tier
//! exists, this bound is the hot tier's retention).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use weir_core::Batch;

use crate::rows::{segment_rows, InvalidLine};
use crate::state::{ChainState, StageState};

const POSITIONS: TableDefinition<u32, u64> = TableDefinition::new("positions");
pub(crate) const SEGMENTS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("segments");
const STATES: TableDefinition<(u32, &str, &str), &[u8]> = TableDefinition::new("plugin_states");

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("no space left on the store's disk: {0}")]
    DiskFull(String),
    #[error("store error: {0}")]
    Storage(String),
    #[error("{0}")]
    Config(String),
    #[error("the hot tier holds {held} bytes, over twice its bound of {bound}, and the cold tier is not taking rows (see the cold flush errors); retry later")]
    OverBound { held: usize, bound: usize },
    #[error("corrupt segment in partition {partition} at offset {offset}: {reason}")]
    Corrupt {
        partition: u32,
        offset: u64,
        reason: String,
    },
}

pub(crate) fn storage_err(e: impl std::fmt::Display) -> StoreError {
    let msg = e.to_string();
    if msg.contains("No space left") || msg.contains("os error 28") {
        StoreError::DiskFull(msg)
    } else {
        StoreError::Storage(msg)
    }
}

/// The processed output of one log entry, with its Arrow rows.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Which table its rows belong to.
    pub table: Table,
    pub partition: u32,
    /// First offset of the source log entry.
    pub offset: u64,
    /// Processed records (tenant, stream and ingest time of the source entry).
    pub batch: Batch,
    rows: RecordBatch,
}

impl Segment {
    /// Build a segment and its rows; fails on a line that is not a JSON object. Costly
    /// (one parse per record): done by the worker, outside any lock.
    pub fn new(partition: u32, offset: u64, batch: Batch) -> Result<Segment, InvalidLine> {
        let (table, rows) = if batch.stream == weir_core::names::METRICS_STREAM {
            let rows = crate::metric_rows::segment_metric_rows(partition, offset, &batch.records)?;
            (Table::Metrics, rows)
        } else {
            let rows = segment_rows(
                &batch.stream,
                partition,
                offset,
                batch.ingest_ts_ms,
                &batch.records,
            )?;
            (Table::Logs, rows)
        };
        Ok(Segment {
            table,
            partition,
            offset,
            batch,
            rows,
        })
    }

    /// Event time of each row (the `ts` column of `logs` and of `metrics`), in order.
    pub fn event_times(&self) -> &[i64] {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::TimestampMillisecondType;
        self.rows
            .column(0)
            .as_primitive::<TimestampMillisecondType>()
            .values()
    }

    pub fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }
}

#[cfg(test)]
impl Segment {
    /// A `logs` segment of `batch` whatever its lines hold (as a store written by an
    /// older version, or rows from before a rule, may): a line [`Segment::new`] refuses
    /// gets the rows of `{}` with its own text as `record`.
    pub(crate) fn forged(partition: u32, offset: u64, batch: Batch) -> Segment {
        if let Ok(s) = Segment::new(partition, offset, batch.clone()) {
            return s;
        }
        let lines: Vec<&[u8]> = weir_core::batch::ndjson_lines(&batch.records).collect();
        let mut clean = Vec::new();
        for l in &lines {
            let one = [*l, b"\n"].concat();
            match segment_rows("x", 0, 0, 0, &one) {
                Ok(_) => clean.extend_from_slice(l),
                Err(_) => clean.extend_from_slice(b"{}"),
            }
            clean.push(b'\n');
        }
        let rows =
            segment_rows(&batch.stream, partition, offset, batch.ingest_ts_ms, &clean).unwrap();
        let idx = rows.schema().index_of("record").unwrap();
        let mut cols = rows.columns().to_vec();
        cols[idx] = Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
            lines
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned()),
        ));
        let rows = RecordBatch::try_new(rows.schema(), cols).unwrap();
        Segment {
            table: Table::Logs,
            partition,
            offset,
            batch,
            rows,
        }
    }
}

/// A log entry that a plugin failed on, kept with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub tenant: String,
    pub stream: String,
    pub partition: u32,
    pub offset: u64,
    pub count: u32,
    pub plugin: String,
    pub plugin_sha256: String,
    /// The uploaded plugin's version (none for `builtin:` and `file:` plugins).
    #[serde(default)]
    pub plugin_version: Option<u32>,
    pub error: String,
    pub ingest_ts_ms: i64,
    pub failed_at_ms: i64,
    /// The entry's records as they were given to the failing plugin (NDJSON).
    pub records: String,
    /// When this entry was itself a replay: the dead letter it replayed.
    #[serde(default)]
    pub replay_of: Option<(u32, u64)>,
}

impl DeadLetter {
    /// `PARTITION-OFFSET`: how the admin API names a dead letter.
    pub fn id(&self) -> String {
        format!("{}-{}", self.partition, self.offset)
    }
}

/// What a commit did with replays of dead letters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Replays whose dead letter was still there: landed (as rows or a new dead letter)
    /// and the dead letter removed.
    pub landed: usize,
    /// Replays of a dead letter already gone (replayed before): dropped, not doubled.
    pub duplicates: usize,
    /// Per segment given to the commit: whether it was stored (false: a duplicate replay).
    pub kept: Vec<bool>,
}

/// The tables of the hot store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Logs,
    Metrics,
    /// Metric rollups at this many seconds' resolution (cold files only; see
    /// [`crate::rollups`]).
    Rollup(u32),
}

/// A segment's rows in memory: partition, offset, rows.
type HeldRows = (u32, u64, RecordBatch);

pub(crate) struct Held {
    pub(crate) tenant: String,
    pub(crate) stream: String,
    pub(crate) table: Table,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) rows: usize,
    pub(crate) bytes: usize,
    /// When it was committed (or loaded at startup): the cold tier flushes by age.
    pub(crate) at: std::time::Instant,
    /// Its latest event time (retention drops it once that is past).
    pub(crate) max_ts: i64,
}

#[derive(Default)]
pub(crate) struct Mem {
    /// Per tenant, its batches in commit order.
    pub(crate) tenants: HashMap<(String, Table), Vec<HeldRows>>,
    /// Every segment held, oldest first (for eviction).
    pub(crate) order: VecDeque<Held>,
    pub(crate) bytes: usize,
    /// Per tenant and table, its cold files (under the same lock as the hot rows, so a
    /// query sees a flushed segment in exactly one tier).
    pub(crate) cold: HashMap<(String, Table), Vec<Arc<crate::cold::ColdFile>>>,
}

impl Mem {
    /// Drop segments from memory (they went to the cold tier).
    pub(crate) fn remove_segments(&mut self, tenant: &str, table: Table, segs: &[(u32, u64)]) {
        let gone: std::collections::HashSet<(u32, u64)> = segs.iter().copied().collect();
        if let Some(list) = self.tenants.get_mut(&(tenant.to_owned(), table)) {
            list.retain(|(p, o, _)| !gone.contains(&(*p, *o)));
        }
        let mut freed = 0;
        self.order.retain(|h| {
            let drop =
                h.tenant == tenant && h.table == table && gone.contains(&(h.partition, h.offset));
            if drop {
                freed += h.bytes;
            }
            !drop
        });
        self.bytes -= freed;
    }
}

/// The hot store. Shared by all workers and queries.
pub struct HotStore {
    pub(crate) db: Database,
    /// The cold tier, when configured (see [`crate::cold`]).
    pub(crate) cold: Option<crate::cold::Cold>,
    pub(crate) aggs: RwLock<crate::aggregates::AggMem>,
    /// Per partition, the offset its aggregator has checkpointed (segments from there on
    /// stay in redb even when evicted from memory).
    pub(crate) agg_positions: Mutex<HashMap<u32, u64>>,
    /// Segments evicted from memory that an aggregator checkpoint still needs.
    pub(crate) deferred: Mutex<Vec<(u32, u64)>>,
    pub(crate) mem: RwLock<Mem>,
    positions: Mutex<HashMap<u32, u64>>,
    pub(crate) max_bytes: usize,
    pub(crate) evicted_rows: AtomicU64,
    pub(crate) retention: RwLock<crate::retention::RetentionState>,
    /// Cold files replaced or expired: deleted once no query holds them.
    pub(crate) retired: Mutex<Vec<Arc<crate::cold::ColdFile>>>,
    /// The last flush failed (the cold tier is not taking rows).
    pub(crate) cold_failing: std::sync::atomic::AtomicBool,
    /// Dead letters and quarantined rows: bytes per tenant, limits, counts.
    pub(crate) letters: Mutex<crate::letters::Letters>,
    /// Cold files this process is writing and has not committed (the sweep leaves them).
    pub(crate) uploading: Mutex<std::collections::HashSet<String>>,
}

impl HotStore {
    pub fn open(path: &Path, max_bytes: usize) -> Result<HotStore, StoreError> {
        let db = Database::create(path).map_err(storage_err)?;
        let w = db.begin_write().map_err(storage_err)?;
        let mut positions = HashMap::new();
        let mut mem = Mem::default();
        {
            let pos = w.open_table(POSITIONS).map_err(storage_err)?;
            for row in pos.iter().map_err(storage_err)? {
                let (k, v) = row.map_err(storage_err)?;
                positions.insert(k.value(), v.value());
            }
            w.open_table(STATES).map_err(storage_err)?;
            w.open_table(crate::aggregates::CHECKPOINTS)
                .map_err(storage_err)?;
            w.open_table(crate::aggregates::PARTIALS)
                .map_err(storage_err)?;
            w.open_table(crate::aggregates::DEFINITIONS)
                .map_err(storage_err)?;
            w.open_table(crate::aggregates::ROWS).map_err(storage_err)?;
        }
        let letter_bytes = HotStore::load_letters(&w)?;
        let mut refused: Vec<crate::quarantine::Quarantined> = Vec::new();
        {
            let segs = w.open_table(SEGMENTS).map_err(storage_err)?;
            for row in segs.iter().map_err(storage_err)? {
                let (k, v) = row.map_err(storage_err)?;
                let (partition, offset) = k.value();
                let corrupt = |reason: String| StoreError::Corrupt {
                    partition,
                    offset,
                    reason,
                };
                let decode = || Batch::decode(v.value()).map_err(|e| corrupt(e.to_string()));
                match Segment::new(partition, offset, decode()?) {
                    Ok(seg) => insert_mem(&mut mem, &seg),
                    // Rows stored before a rule that now refuses them: quarantined, so
                    // that the rest of the store still opens.
                    Err(e) => {
                        let batch = decode()?;
                        refused.push(crate::quarantine::Quarantined {
                            table: if batch.stream == weir_core::names::METRICS_STREAM {
                                "metrics".into()
                            } else {
                                "logs".into()
                            },
                            rows: batch.count,
                            seqs: Vec::new(),
                            error: format!(
                                "a stored segment no longer loads (line {}: {})",
                                e.line, e.reason
                            ),
                            quarantined_at_ms: crate::query::now_ms(),
                            records: String::from_utf8_lossy(&batch.records).into_owned(),
                            tenant: batch.tenant,
                            stream: batch.stream,
                            partition,
                            offset,
                        })
                    }
                }
            }
        }
        let mut delta = crate::letters::Delta::default();
        for q in &refused {
            tracing::warn!(tenant = %q.tenant, partition = q.partition, offset = q.offset,
                error = %q.error, "stored segment quarantined at open");
            let json = serde_json::to_vec(q).map_err(storage_err)?;
            crate::letters::put(
                &w,
                &mut delta,
                crate::letters::Kind::Quarantine,
                (q.partition, q.offset),
                &json,
            )?;
            w.open_table(SEGMENTS)
                .map_err(storage_err)?
                .remove((q.partition, q.offset))
                .map_err(storage_err)?;
        }
        w.commit().map_err(storage_err)?;
        let store = HotStore {
            db,
            cold: None,
            aggs: RwLock::default(),
            agg_positions: Mutex::default(),
            deferred: Mutex::default(),
            mem: RwLock::new(mem),
            positions: Mutex::new(positions),
            max_bytes,
            evicted_rows: AtomicU64::new(0),
            retention: RwLock::default(),
            retired: Mutex::default(),
            cold_failing: Default::default(),
            letters: Mutex::new(crate::letters::Letters::with_bytes(letter_bytes)),
            uploading: Mutex::default(),
        };
        store.letters_committed(delta);
        store.load_retention()?;
        store.load_aggregates()?;
        // No eviction here: whether rows over the bound are deleted or flushed depends on
        // the cold tier, attached after `open`; the caller calls `enforce_bound` once it
        // is (deleting here lost rows a restart over the bound should have flushed).
        Ok(store)
    }

    /// Hold the memory bound after opening (and attaching the cold tier, if any): without
    /// a cold tier the oldest rows over it are evicted; with one they wait for its flush.
    pub fn enforce_bound(&self) -> Result<(), StoreError> {
        self.evict_over_bound()
    }

    /// The next log offset to process for `partition` (0 when never committed).
    pub fn position(&self, partition: u32) -> u64 {
        self.positions.lock().get(&partition).copied().unwrap_or(0)
    }

    /// Atomically store segments and dead letters of `partition` and move its position to
    /// `next`. Rows become queryable when this returns.
    ///
    /// A segment or dead letter that replays a dead letter lands only if that dead letter
    /// still exists, and removes it in the same transaction: replaying the same dead letter
    /// twice (two requests, or a crash between the replay's append and its processing)
    /// lands it once.
    pub fn commit(
        &self,
        partition: u32,
        next: u64,
        segments: &[Segment],
        dead: &[DeadLetter],
        states: &[ChainState],
    ) -> Result<ReplayOutcome, StoreError> {
        // With a cold tier, rows over the bound wait for a flush; while flushes fail (the
        // object store down), refusing new rows here stops the workers consuming the
        // log, and the log's lag bound turns that into backpressure at ingest. (Rows
        // kept hot for an aggregator that has not checkpointed never block: flushes
        // skip them without failing.)
        if self.cold_failing.load(Ordering::Relaxed) && segments.iter().any(|s| s.num_rows() > 0) {
            let held = self.mem.read().bytes;
            if held > self.max_bytes.saturating_mul(2) {
                return Err(StoreError::OverBound {
                    held,
                    bound: self.max_bytes,
                });
            }
        }
        let mut outcome = ReplayOutcome::default();
        let mut kept = Vec::with_capacity(segments.len());
        let w = self.db.begin_write().map_err(storage_err)?;
        let mut delta = crate::letters::Delta::default();
        {
            use crate::letters::Kind;
            // Claims the replayed dead letter; false when it is already gone.
            let mut claim = |key: Option<(u32, u64)>| -> Result<bool, StoreError> {
                let Some(k) = key else { return Ok(true) };
                let gone = !crate::letters::remove(&w, &mut delta, Kind::Dead, k)?;
                if gone {
                    outcome.duplicates += 1;
                } else {
                    outcome.landed += 1;
                }
                Ok(!gone)
            };
            let mut keep_dead = Vec::with_capacity(dead.len());
            for d in dead {
                keep_dead.push(claim(d.replay_of)?);
            }
            for s in segments {
                kept.push(claim(s.batch.replay_of)?);
            }
            for (d, _) in dead.iter().zip(&keep_dead).filter(|(_, k)| **k) {
                let json = serde_json::to_vec(d).map_err(storage_err)?;
                crate::letters::put(&w, &mut delta, Kind::Dead, (d.partition, d.offset), &json)?;
            }
            if !dead.is_empty() {
                self.cap_letters(&w, &mut delta)?;
            }
            let mut segs = w.open_table(SEGMENTS).map_err(storage_err)?;
            let mut buf = Vec::new();
            for (s, _) in segments.iter().zip(&kept).filter(|(_, k)| **k) {
                buf.clear();
                s.batch.encode_into(&mut buf);
                segs.insert((s.partition, s.offset), buf.as_slice())
                    .map_err(storage_err)?;
            }
            let mut st = w.open_table(STATES).map_err(storage_err)?;
            for c in states {
                let key = (partition, c.tenant.as_str(), c.stream.as_str());
                if c.stages.is_empty() {
                    st.remove(key).map_err(storage_err)?;
                } else {
                    st.insert(key, crate::state::encode(&c.stages).as_slice())
                        .map_err(storage_err)?;
                }
            }
            let mut pos = w.open_table(POSITIONS).map_err(storage_err)?;
            pos.insert(partition, next).map_err(storage_err)?;
        }
        w.commit().map_err(storage_err)?;
        self.letters_committed(delta);
        self.positions.lock().insert(partition, next);
        {
            let mut mem = self.mem.write();
            for (s, _) in segments.iter().zip(&kept).filter(|(_, k)| **k) {
                insert_mem(&mut mem, s);
            }
        }
        self.evict_over_bound()?;
        outcome.kept = kept;
        Ok(outcome)
    }

    /// The plugin state committed for `tenant`'s `stream` on `partition` (empty when none).
    pub fn chain_state(
        &self,
        partition: u32,
        tenant: &str,
        stream: &str,
    ) -> Result<Vec<StageState>, StoreError> {
        let r = self.db.begin_read().map_err(storage_err)?;
        let t = r.open_table(STATES).map_err(storage_err)?;
        match t.get((partition, tenant, stream)).map_err(storage_err)? {
            None => Ok(Vec::new()),
            Some(v) => crate::state::decode(v.value()).map_err(|e| StoreError::Corrupt {
                partition,
                offset: 0,
                reason: e.to_string(),
            }),
        }
    }

    /// Dead letters of `tenant` named by id (`PARTITION-OFFSET`), or all of them (for
    /// `stream` only, when given) when `ids` is empty.
    pub fn select_dead_letters(
        &self,
        tenant: &str,
        stream: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self
            .dead_letters(tenant)?
            .into_iter()
            .filter(|d| stream.is_none_or(|s| d.stream == s))
            .filter(|d| ids.is_empty() || ids.contains(&d.id()))
            .collect())
    }

    fn evict_over_bound(&self) -> Result<(), StoreError> {
        if self.cold.is_some() {
            // With a cold tier, rows over the bound are flushed (oldest first) by the
            // next flush instead of deleted.
            return Ok(());
        }
        let mut excess = self.mem.read().bytes.saturating_sub(self.max_bytes);
        if excess == 0 {
            return Ok(());
        }
        self.evict(|h| {
            let take = excess > 0;
            excess = excess.saturating_sub(h.bytes);
            take
        })
    }

    /// The distinct `(tenant, stream)` of the segments held in memory.
    pub(crate) fn held_streams(&self) -> std::collections::HashSet<(String, String)> {
        let mem = self.mem.read();
        mem.order
            .iter()
            .map(|h| (h.tenant.clone(), h.stream.clone()))
            .collect()
    }

    /// Delete the held segments `pick` chooses (oldest first), from memory and redb,
    /// counting their rows in `evicted_rows` (those an aggregator may still re-read stay
    /// in redb until its checkpoint passes them).
    pub(crate) fn evict(&self, mut pick: impl FnMut(&Held) -> bool) -> Result<(), StoreError> {
        let mut doomed = Vec::new();
        {
            let mut mem = self.mem.write();
            let mut kept = std::collections::VecDeque::with_capacity(mem.order.len());
            while let Some(h) = mem.order.pop_front() {
                if !pick(&h) {
                    kept.push_back(h);
                    continue;
                }
                mem.bytes -= h.bytes;
                if let Some(list) = mem.tenants.get_mut(&(h.tenant.clone(), h.table)) {
                    if let Some(i) = list
                        .iter()
                        .position(|(p, o, _)| *p == h.partition && *o == h.offset)
                    {
                        list.remove(i);
                    }
                }
                self.evicted_rows
                    .fetch_add(h.rows as u64, Ordering::Relaxed);
                doomed.push((h.partition, h.offset));
            }
            mem.order = kept;
        }
        // An aggregator that has not checkpointed past a segment may need to re-read it.
        {
            let agg = self.agg_positions.lock();
            let mut deferred = self.deferred.lock();
            doomed.retain(|(p, o)| {
                let keep = agg.get(p).is_some_and(|a| o >= a);
                if keep {
                    deferred.push((*p, *o));
                }
                !keep
            });
        }
        if doomed.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(storage_err)?;
        {
            let mut segs = w.open_table(SEGMENTS).map_err(storage_err)?;
            for k in &doomed {
                segs.remove(*k).map_err(storage_err)?;
            }
        }
        w.commit().map_err(storage_err)?;
        tracing::info!(
            segments = doomed.len(),
            "hot segments deleted (memory bound or retention)"
        );
        Ok(())
    }

    /// Distinct metric series of `tenant` held in the hot tier: name and labels.
    pub fn metric_series(
        &self,
        tenant: &str,
    ) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
        use datafusion::arrow::array::AsArray;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for b in self.table_batches(tenant, Table::Metrics) {
            let (Some(name), Some(labels), Some(series)) = (
                b.column_by_name("name"),
                b.column_by_name("labels"),
                b.column_by_name("series"),
            ) else {
                continue;
            };
            let (name, labels, series) = (
                name.as_string::<i32>(),
                labels.as_string::<i32>(),
                series.as_string::<i32>(),
            );
            for i in 0..b.num_rows() {
                if seen.insert(series.value(i).to_owned()) {
                    let l = serde_json::from_str(labels.value(i)).unwrap_or_default();
                    out.push((name.value(i).to_owned(), l));
                }
            }
        }
        out
    }

    /// The tenant's `logs` batches (cheap `Arc` clones).
    pub fn tenant_batches(&self, tenant: &str) -> Vec<RecordBatch> {
        self.table_batches(tenant, Table::Logs)
    }

    /// The tenant's batches of `table` (cheap `Arc` clones).
    pub fn table_batches(&self, tenant: &str, table: Table) -> Vec<RecordBatch> {
        self.mem
            .read()
            .tenants
            .get(&(tenant.to_owned(), table))
            .map(|v| v.iter().map(|(_, _, b)| b.clone()).collect())
            .unwrap_or_default()
    }

    /// The tenant's dead letters, oldest first (read through the tenant's index range:
    /// no other tenant's are read).
    pub fn dead_letters(&self, tenant: &str) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self
            .letters_of(crate::letters::Kind::Dead, tenant)?
            .iter()
            .filter_map(|v| match serde_json::from_slice::<DeadLetter>(v) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "a dead letter does not decode; skipped");
                    None
                }
            })
            .collect())
    }

    /// Rows held in memory across tenants, and their Arrow size.
    pub fn stats(&self) -> (usize, usize) {
        let mem = self.mem.read();
        (mem.order.iter().map(|h| h.rows).sum(), mem.bytes)
    }

    pub fn evicted_rows(&self) -> u64 {
        self.evicted_rows.load(Ordering::Relaxed)
    }
}

fn insert_mem(mem: &mut Mem, seg: &Segment) {
    let (partition, offset, batch) = (seg.partition, seg.offset, &seg.batch);
    let rows = seg.rows.clone();
    if rows.num_rows() == 0 {
        return;
    }
    let bytes = rows.get_array_memory_size();
    mem.bytes += bytes;
    mem.order.push_back(Held {
        tenant: batch.tenant.clone(),
        stream: batch.stream.clone(),
        max_ts: seg.event_times().iter().copied().max().unwrap_or(i64::MIN),
        table: seg.table,
        partition,
        offset,
        rows: rows.num_rows(),
        bytes,
        at: std::time::Instant::now(),
    });
    mem.tenants
        .entry((batch.tenant.clone(), seg.table))
        .or_default()
        .push((partition, offset, rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(tenant: &str, partition: u32, offset: u64, n: u32) -> Segment {
        let mut records = Vec::new();
        for i in 0..n {
            records.extend_from_slice(format!("{{\"message\":\"m{offset}-{i}\"}}\n").as_bytes());
        }
        Segment::new(
            partition,
            offset,
            Batch {
                tenant: tenant.into(),
                stream: "s".into(),
                ingest_ts_ms: 1,
                count: n,
                records,
                replay_of: None,
            },
        )
        .unwrap()
    }

    fn rows(store: &HotStore, tenant: &str) -> usize {
        store
            .tenant_batches(tenant)
            .iter()
            .map(|b| b.num_rows())
            .sum()
    }

    #[test]
    fn commit_persists_rows_and_position_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = HotStore::open(&path, usize::MAX).unwrap();
            assert_eq!(s.position(0), 0);
            s.commit(0, 5, &[seg("a", 0, 0, 2), seg("b", 0, 2, 3)], &[], &[])
                .unwrap();
            s.commit(1, 1, &[seg("a", 1, 0, 1)], &[], &[]).unwrap();
            assert_eq!(rows(&s, "a"), 3);
            assert_eq!(rows(&s, "b"), 3);
        }
        let s = HotStore::open(&path, usize::MAX).unwrap();
        assert_eq!(s.position(0), 5);
        assert_eq!(s.position(1), 1);
        assert_eq!(rows(&s, "a"), 3);
        assert_eq!(rows(&s, "b"), 3);
        assert_eq!(rows(&s, "c"), 0);
    }

    #[test]
    fn dead_letters_are_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let s = HotStore::open(&dir.path().join("store.redb"), usize::MAX).unwrap();
        let d = DeadLetter {
            tenant: "a".into(),
            stream: "s".into(),
            partition: 0,
            offset: 7,
            count: 2,
            plugin: "x".into(),
            plugin_sha256: "00".into(),
            plugin_version: Some(3),
            error: "boom".into(),
            ingest_ts_ms: 1,
            failed_at_ms: 2,
            records: "{}\n{}\n".into(),
            replay_of: None,
        };
        s.commit(0, 9, &[], std::slice::from_ref(&d), &[]).unwrap();
        assert_eq!(s.dead_letters("a").unwrap(), vec![d]);
        assert!(s.dead_letters("b").unwrap().is_empty());
        assert_eq!(s.position(0), 9);
    }

    #[test]
    fn plugin_state_is_committed_with_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let state = |data: &[u8]| ChainState {
            tenant: "a".into(),
            stream: "s".into(),
            stages: vec![StageState {
                spec: "counter".into(),
                format: 1,
                data: data.to_vec(),
            }],
        };
        {
            let s = HotStore::open(&path, usize::MAX).unwrap();
            assert!(s.chain_state(0, "a", "s").unwrap().is_empty());
            s.commit(0, 3, &[seg("a", 0, 0, 3)], &[], &[state(b"3")])
                .unwrap();
            s.commit(0, 5, &[seg("a", 0, 3, 2)], &[], &[state(b"5")])
                .unwrap();
        }
        let s = HotStore::open(&path, usize::MAX).unwrap();
        assert_eq!(s.position(0), 5);
        assert_eq!(s.chain_state(0, "a", "s").unwrap(), state(b"5").stages);
        assert!(
            s.chain_state(1, "a", "s").unwrap().is_empty(),
            "per partition"
        );
        let gone = ChainState {
            stages: vec![],
            ..state(b"")
        };
        s.commit(0, 6, &[], &[], &[gone]).unwrap();
        assert!(s.chain_state(0, "a", "s").unwrap().is_empty());
    }

    #[test]
    fn a_replayed_dead_letter_lands_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let s = HotStore::open(&path, usize::MAX).unwrap();
        let dead = |offset, replay_of| DeadLetter {
            tenant: "a".into(),
            stream: "s".into(),
            partition: 0,
            offset,
            count: 2,
            plugin: "x".into(),
            plugin_sha256: "00".into(),
            plugin_version: None,
            error: "boom".into(),
            ingest_ts_ms: 1,
            failed_at_ms: offset as i64,
            records: "{}\n{}\n".into(),
            replay_of,
        };
        s.commit(0, 2, &[], &[dead(0, None), dead(1, None)], &[])
            .unwrap();
        let replay = |offset, of| {
            let mut g = seg("a", 0, offset, 2);
            g.batch.replay_of = Some(of);
            g
        };
        // Dead letter 0-0 replayed twice in one commit, and 0-1 fails again.
        let out = s
            .commit(
                0,
                5,
                &[replay(2, (0, 0)), replay(3, (0, 0))],
                &[dead(4, Some((0, 1)))],
                &[],
            )
            .unwrap();
        assert_eq!(
            out,
            ReplayOutcome {
                landed: 2,
                duplicates: 1,
                kept: vec![true, false],
            }
        );
        assert_eq!(rows(&s, "a"), 2);
        let left: Vec<_> = s
            .dead_letters("a")
            .unwrap()
            .iter()
            .map(DeadLetter::id)
            .collect();
        assert_eq!(
            left,
            vec!["0-4"],
            "the failed replay replaces its dead letter"
        );
        // A later replay of a dead letter already replayed is dropped.
        let out = s.commit(0, 6, &[replay(5, (0, 0))], &[], &[]).unwrap();
        assert_eq!(
            out,
            ReplayOutcome {
                landed: 0,
                duplicates: 1,
                kept: vec![false],
            }
        );
        drop(s);
        let s = HotStore::open(&path, usize::MAX).unwrap();
        assert_eq!(rows(&s, "a"), 2);
    }

    #[test]
    fn memory_bound_evicts_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let one = seg("a", 0, 0, 100).rows.get_array_memory_size();
        let s = HotStore::open(&path, one * 2 + one / 2).unwrap();
        for i in 0..5u64 {
            s.commit(0, (i + 1) * 100, &[seg("a", 0, i * 100, 100)], &[], &[])
                .unwrap();
        }
        assert_eq!(rows(&s, "a"), 200);
        assert_eq!(s.evicted_rows(), 300);
        drop(s);
        let s = HotStore::open(&path, usize::MAX).unwrap();
        assert_eq!(rows(&s, "a"), 200, "evicted rows are gone from disk too");
        drop(s);
        // Reopened under a smaller bound without a cold tier: open keeps everything, the
        // bound is held once the caller says no cold tier is coming.
        let s = HotStore::open(&path, one + one / 2).unwrap();
        assert_eq!(rows(&s, "a"), 200);
        s.enforce_bound().unwrap();
        assert_eq!(rows(&s, "a"), 100);
    }

    /// With a cold tier that cannot take rows, the hot tier refuses new rows past twice
    /// its bound (backpressure) instead of growing or evicting; once flushes succeed it
    /// takes them again, and nothing is lost.
    #[tokio::test]
    async fn over_twice_the_bound_with_a_failing_cold_tier_is_backpressure() {
        let dir = tempfile::tempdir().unwrap();
        let one = seg("a", 0, 0, 100).rows.get_array_memory_size();
        let cold = dir.path().join("cold");
        let s = HotStore::open(&dir.path().join("store.redb"), one * 2)
            .unwrap()
            .with_cold(&cold)
            .unwrap();
        // A file where the tenant's directory goes: every flush fails.
        std::fs::write(cold.join("tenant=a"), b"in the way").unwrap();
        let mut refused = None;
        for i in 0..10u64 {
            let r = s.commit(0, (i + 1) * 100, &[seg("a", 0, i * 100, 100)], &[], &[]);
            assert!(s.flush_cold(std::time::Duration::ZERO).await.is_err());
            if let Err(e) = r {
                refused = Some((i, e));
                break;
            }
        }
        let (at, e) = refused.expect("refused past twice the bound");
        assert!(matches!(e, StoreError::OverBound { .. }), "{e}");
        assert_eq!(rows(&s, "a"), at as usize * 100, "nothing evicted");
        assert_eq!(s.evicted_rows(), 0);
        std::fs::remove_file(cold.join("tenant=a")).unwrap();
        s.flush_cold(std::time::Duration::ZERO).await.unwrap();
        s.commit(0, (at + 1) * 100, &[seg("a", 0, at * 100, 100)], &[], &[])
            .unwrap();
        let r = s.query("a", "SELECT count(*) FROM logs").await.unwrap();
        assert_eq!(
            r.to_json().unwrap()["rows"][0][0],
            serde_json::json!((at + 1) * 100)
        );
    }
}
