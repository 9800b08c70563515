//! The `aggregates` table: windowed aggregation results, checkpointed exactly once.
//!
//! redb tables (in `store.redb`, next to the rows):
//! - `agg_checkpoints`: partition → `[offset u64][aggregator state]`: the position up to
//!   which that partition's aggregator has consumed committed segments, and its state
//!   (open windows, watermarks) at that position;
//! - `agg_partials`: `(tenant, aggregation, definition, window_start, group, partition)`
//!   → `[stream][accumulator]`: one partition's share of one row;
//! - `agg_definitions`: definition fingerprint → its declaration (JSON), so rows and
//!   states of a definition that has since changed can still be read;
//! - `agg_rows`: `(tenant, aggregation, definition, group, window_start)` → the row
//!   (JSON): the merge of that key's partials, written in the same transaction as them,
//!   so startup reads rows without calling any custom (Wasm) function again.
//!
//! [`HotStore::checkpoint_aggregation`] writes a partition's state, its offset and the
//! partials it emitted since the last checkpoint in one transaction. A row of the table
//! is the merge, in partition order, of the partials stored under its key; a replayed
//! window replaces its partial with identical bytes, so a row never counts anything
//! twice. Late counts add to the stored partial in the same transaction that moves the
//! offset past the events they count.
//!
//! Until a partition's aggregator has checkpointed past a segment, the hot store's
//! eviction keeps that segment in redb (the aggregator re-reads it after a crash).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use weir_agg::codec::{Reader, Writer};
use weir_agg::{Acc, CustomFns, Definition, Partial};
use weir_core::aggregation::AggregationConfig;

use crate::hot::{storage_err, HotStore, StoreError};

pub(crate) const CHECKPOINTS: TableDefinition<u32, &[u8]> = TableDefinition::new("agg_checkpoints");
type PartialKey<'a> = (&'a str, &'a str, &'a str, i64, &'a str, u32);
pub(crate) const PARTIALS: TableDefinition<PartialKey, &[u8]> =
    TableDefinition::new("agg_partials");
pub(crate) const DEFINITIONS: TableDefinition<&str, &str> = TableDefinition::new("agg_definitions");
type RowKeyRef<'a> = (&'a str, &'a str, &'a str, &'a str, i64);
pub(crate) const ROWS: TableDefinition<RowKeyRef, &str> = TableDefinition::new("agg_rows");

/// (tenant, aggregation, definition, group, window_start): windows of one series in order.
type RowKey = (String, String, String, String, i64);

/// One row of the `aggregates` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AggRow {
    pub stream: String,
    pub window_end: i64,
    pub count: u64,
    pub late: u64,
    /// The functions' results by alias, as JSON text. Kept as text: a float read back
    /// from JSON may differ in its last bit, and a row must read the same after a restart.
    pub results: String,
    pub partitions: u32,
    #[serde(skip)]
    pub anomaly: Option<String>,
}

#[derive(Default)]
pub(crate) struct AggMem {
    defs: HashMap<String, Arc<Definition>>,
    rows: BTreeMap<RowKey, AggRow>,
}

/// Schema of the `aggregates` table.
pub fn aggregates_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("aggregation", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("group_key", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("late", DataType::UInt64, false),
        Field::new("results", DataType::Utf8, false),
        Field::new("anomaly", DataType::Boolean, false),
        Field::new("anomaly_reason", DataType::Utf8, true),
        Field::new("partitions", DataType::UInt32, false),
    ]))
}

fn corrupt(reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        partition: 0,
        offset: 0,
        reason: format!("aggregation: {reason}"),
    }
}

fn encode_partial(stream: &str, acc: &Acc) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(stream);
    acc.encode_into(&mut w);
    w.0
}

fn decode_partial(b: &[u8]) -> Result<(String, Acc), StoreError> {
    let mut r = Reader(b);
    let stream = r.str().map_err(corrupt)?.to_owned();
    let acc = Acc::decode_from(&mut r).map_err(corrupt)?;
    Ok((stream, acc))
}

impl AggMem {
    fn definition(&self, fp: &str) -> Option<Arc<Definition>> {
        self.defs.get(fp).cloned()
    }

    /// Recompute the anomaly verdicts of the row at `key` and of the windows whose
    /// baseline it is part of (`all`: every window of its series).
    fn score_from(&mut self, key: &RowKey, all: bool) {
        let Some(def) = self.defs.get(&key.2).cloned() else {
            return;
        };
        let Some(spec) = &def.anomaly else { return };
        let series = |k: &RowKey| (k.0.clone(), k.1.clone(), k.2.clone(), k.3.clone());
        let lo = (
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            key.3.clone(),
            i64::MIN,
        );
        let hi = (
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            key.3.clone(),
            i64::MAX,
        );
        let value = |r: &AggRow| {
            serde_json::from_str::<serde_json::Value>(&r.results)
                .ok()
                .and_then(|v| v.get(&spec.on).and_then(serde_json::Value::as_f64))
        };
        let points: Vec<(i64, Option<f64>)> = self
            .rows
            .range(lo..=hi)
            .filter(|(k, _)| series(k) == series(key))
            .map(|(k, r)| (k.4, value(r)))
            .collect();
        let first = points.partition_point(|(s, _)| *s < key.4);
        let last = if all {
            points.len()
        } else {
            (first + spec.history + 1).min(points.len())
        };
        for i in first..last {
            let hist: Vec<f64> = points[i.saturating_sub(spec.history)..i]
                .iter()
                .filter_map(|p| p.1)
                .collect();
            let verdict = points[i]
                .1
                .and_then(|x| weir_agg::anomaly::robust_z(&hist, x, spec.threshold))
                .map(|why| format!("{}: {why}", spec.on));
            let k = (
                key.0.clone(),
                key.1.clone(),
                key.2.clone(),
                key.3.clone(),
                points[i].0,
            );
            if let Some(r) = self.rows.get_mut(&k) {
                r.anomaly = verdict;
            }
        }
    }
}

impl HotStore {
    /// The aggregator checkpoint of `partition`: offset and state (None before the first).
    pub fn aggregation_checkpoint(
        &self,
        partition: u32,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let r = self.db.begin_read().map_err(storage_err)?;
        let t = r.open_table(CHECKPOINTS).map_err(storage_err)?;
        match t.get(partition).map_err(storage_err)? {
            None => Ok(None),
            Some(v) => {
                let v = v.value();
                if v.len() < 8 {
                    return Err(corrupt("checkpoint shorter than its offset"));
                }
                let off = u64::from_le_bytes(v[..8].try_into().expect("8"));
                Ok(Some((off, v[8..].to_vec())))
            }
        }
    }

    /// A definition named by a checkpoint or a partial.
    pub fn aggregation_definition(&self, fingerprint: &str) -> Option<Arc<Definition>> {
        self.aggs.read().definition(fingerprint)
    }

    /// Atomically store `partition`'s aggregator `state` as of log offset `offset`, the
    /// `partials` it emitted since its last checkpoint and the definitions they use;
    /// then update the rows in memory.
    pub fn checkpoint_aggregation(
        &self,
        partition: u32,
        offset: u64,
        state: &[u8],
        partials: &[Partial],
        defs: &[Arc<Definition>],
        fns: &mut dyn CustomFns,
    ) -> Result<(), StoreError> {
        // Each touched row, with the definition that reads it.
        let mut touched: BTreeMap<RowKey, Arc<Definition>> = BTreeMap::new();
        // The definitions in use, once each (partials repeat theirs).
        let mut used: BTreeMap<&str, &Arc<Definition>> = BTreeMap::new();
        for d in defs.iter().chain(partials.iter().map(|p| &p.def)) {
            used.entry(d.fingerprint.as_str()).or_insert(d);
        }
        let mut merged: Vec<(RowKey, AggRow)> = Vec::new();
        let released: Vec<(u32, u64)> = {
            let d = self.deferred.lock();
            d.iter()
                .copied()
                .filter(|(p, o)| *p == partition && *o < offset)
                .collect()
        };
        let w = self.db.begin_write().map_err(storage_err)?;
        {
            let mut dt = w.open_table(DEFINITIONS).map_err(storage_err)?;
            let known = self.aggs.read();
            for d in used.values() {
                if !known.defs.contains_key(&d.fingerprint)
                    && dt
                        .get(d.fingerprint.as_str())
                        .map_err(storage_err)?
                        .is_none()
                {
                    let json = serde_json::to_string(&d.config).map_err(storage_err)?;
                    dt.insert(d.fingerprint.as_str(), json.as_str())
                        .map_err(storage_err)?;
                }
            }
            drop(known);
            let mut pt = w.open_table(PARTIALS).map_err(storage_err)?;
            for p in partials {
                let key = (
                    p.tenant.as_str(),
                    p.def.name(),
                    p.def.fingerprint.as_str(),
                    p.window_start,
                    p.group.as_str(),
                    partition,
                );
                let mut acc = p.acc.clone();
                if p.additive {
                    if let Some(old) = pt.get(key).map_err(storage_err)? {
                        let (_, mut stored) = decode_partial(old.value())?;
                        stored.merge(&acc, &p.tenant, &p.def, fns);
                        acc = stored;
                    }
                }
                pt.insert(key, encode_partial(&p.stream, &acc).as_slice())
                    .map_err(storage_err)?;
                touched.insert(
                    (
                        p.tenant.clone(),
                        p.def.name().to_owned(),
                        p.def.fingerprint.clone(),
                        p.group.clone(),
                        p.window_start,
                    ),
                    p.def.clone(),
                );
            }
            // Each touched row is the merge of its partials, in partition order.
            for (key, def) in &touched {
                let lo = (
                    key.0.as_str(),
                    key.1.as_str(),
                    key.2.as_str(),
                    key.4,
                    key.3.as_str(),
                    0u32,
                );
                let hi = (
                    key.0.as_str(),
                    key.1.as_str(),
                    key.2.as_str(),
                    key.4,
                    key.3.as_str(),
                    u32::MAX,
                );
                let range = pt.range(lo..=hi).map_err(storage_err)?;
                let row = row_of(&key.0, def, key.4, range, fns)?;
                merged.push((key.clone(), row));
            }
            let mut rt = w.open_table(ROWS).map_err(storage_err)?;
            for (k, row) in &merged {
                let json = serde_json::to_string(row).map_err(storage_err)?;
                let rk = (k.0.as_str(), k.1.as_str(), k.2.as_str(), k.3.as_str(), k.4);
                rt.insert(rk, json.as_str()).map_err(storage_err)?;
            }
            let mut ck = w.open_table(CHECKPOINTS).map_err(storage_err)?;
            let mut v = Vec::with_capacity(8 + state.len());
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(state);
            ck.insert(partition, v.as_slice()).map_err(storage_err)?;
            let mut segs = w.open_table(crate::hot::SEGMENTS).map_err(storage_err)?;
            for k in &released {
                segs.remove(*k).map_err(storage_err)?;
            }
        }
        w.commit().map_err(storage_err)?;
        self.agg_positions.lock().insert(partition, offset);
        self.deferred
            .lock()
            .retain(|(p, o)| !(*p == partition && *o < offset));
        let mut mem = self.aggs.write();
        for d in used.values() {
            mem.defs
                .entry(d.fingerprint.clone())
                .or_insert_with(|| Arc::clone(d));
        }
        for (key, row) in merged {
            mem.rows.insert(key.clone(), row);
            mem.score_from(&key, false);
        }
        Ok(())
    }

    /// Load definitions and rows at startup.
    pub(crate) fn load_aggregates(&self) -> Result<(), StoreError> {
        let r = self.db.begin_read().map_err(storage_err)?;
        let mut mem = AggMem::default();
        let dt = r.open_table(DEFINITIONS).map_err(storage_err)?;
        for row in dt.iter().map_err(storage_err)? {
            let (k, v) = row.map_err(storage_err)?;
            let cfg: AggregationConfig = serde_json::from_str(v.value()).map_err(corrupt)?;
            let def = Definition::new(&cfg).map_err(corrupt)?;
            // The stored fingerprint names the rows, whatever today's hash would be.
            let mut def = def;
            def.fingerprint = k.value().to_owned();
            mem.defs.insert(k.value().to_owned(), Arc::new(def));
        }
        let rt = r.open_table(ROWS).map_err(storage_err)?;
        for row in rt.iter().map_err(storage_err)? {
            let (k, v) = row.map_err(storage_err)?;
            let (t, a, f, g, st) = k.value();
            let row: AggRow = serde_json::from_str(v.value()).map_err(corrupt)?;
            mem.rows.insert(
                (t.to_owned(), a.to_owned(), f.to_owned(), g.to_owned(), st),
                row,
            );
        }
        let series: Vec<RowKey> = {
            let mut seen = std::collections::BTreeSet::new();
            mem.rows
                .keys()
                .filter(|k| seen.insert((k.0.clone(), k.1.clone(), k.2.clone(), k.3.clone())))
                .cloned()
                .collect()
        };
        for k in series {
            mem.score_from(&k, true);
        }
        let ck = r.open_table(CHECKPOINTS).map_err(storage_err)?;
        let mut pos = self.agg_positions.lock();
        for row in ck.iter().map_err(storage_err)? {
            let (k, v) = row.map_err(storage_err)?;
            if v.value().len() >= 8 {
                pos.insert(
                    k.value(),
                    u64::from_le_bytes(v.value()[..8].try_into().expect("8")),
                );
            }
        }
        *self.aggs.write() = mem;
        Ok(())
    }

    /// `tenant`'s rows of the `aggregates` table.
    pub fn aggregates_batch(&self, tenant: &str) -> RecordBatch {
        let mem = self.aggs.read();
        let lo = (
            tenant.to_owned(),
            String::new(),
            String::new(),
            String::new(),
            i64::MIN,
        );
        let rows: Vec<(&RowKey, &AggRow)> = mem
            .rows
            .range(lo..)
            .take_while(|(k, _)| k.0 == tenant)
            .collect();
        let s = |f: &dyn Fn(&RowKey, &AggRow) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(k, r)| f(k, r)),
            ))
        };
        let ts = |f: &dyn Fn(&RowKey, &AggRow) -> i64| -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|(k, r)| f(k, r)))
                    .with_timezone("UTC"),
            )
        };
        let cols: Vec<ArrayRef> = vec![
            s(&|k, _| k.1.clone()),
            s(&|k, _| k.2.clone()),
            s(&|_, r| r.stream.clone()),
            ts(&|k, _| k.4),
            ts(&|_, r| r.window_end),
            s(&|k, _| k.3.clone()),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(_, r)| r.count),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(_, r)| r.late),
            )),
            s(&|_, r| r.results.clone()),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|(_, r)| Some(r.anomaly.is_some())),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|(_, r)| r.anomaly.as_deref()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|(_, r)| r.partitions),
            )),
        ];
        RecordBatch::try_new(aggregates_schema(), cols).expect("columns match the schema")
    }

    /// Segments of `partition` still in redb from `from` on, in order (what an
    /// aggregator re-reads after restoring an older checkpoint).
    pub fn segments_since(
        &self,
        partition: u32,
        from: u64,
    ) -> Result<Vec<crate::Segment>, StoreError> {
        let r = self.db.begin_read().map_err(storage_err)?;
        let t = r.open_table(crate::hot::SEGMENTS).map_err(storage_err)?;
        let mut out = Vec::new();
        for row in t
            .range((partition, from)..=(partition, u64::MAX))
            .map_err(storage_err)?
        {
            let (k, v) = row.map_err(storage_err)?;
            let (_, offset) = k.value();
            let batch = weir_core::Batch::decode(v.value()).map_err(|e| StoreError::Corrupt {
                partition,
                offset,
                reason: e.to_string(),
            })?;
            out.push(crate::Segment::new(partition, offset, batch).map_err(|e| {
                StoreError::Corrupt {
                    partition,
                    offset,
                    reason: e.reason,
                }
            })?);
        }
        Ok(out)
    }
}

/// A row: the merge, in partition order, of the partials in `range`.
fn row_of(
    tenant: &str,
    def: &Definition,
    start: i64,
    range: redb::Range<'_, PartialKey<'static>, &'static [u8]>,
    fns: &mut dyn CustomFns,
) -> Result<AggRow, StoreError> {
    let mut acc = Acc::default();
    let mut stream = String::new();
    let mut n = 0;
    for row in range {
        let (_, v) = row.map_err(storage_err)?;
        let (s, a) = decode_partial(v.value())?;
        stream = s;
        acc.merge(&a, tenant, def, fns);
        n += 1;
    }
    Ok(AggRow {
        stream,
        window_end: start + def.windows.size_ms as i64,
        count: acc.count,
        late: acc.late,
        results: serde_json::Value::Object(acc.results(tenant, def, fns)).to_string(),
        partitions: n,
        anomaly: None,
    })
}

impl HotStore {
    /// Delete the aggregation rows (and their partials) whose window started before
    /// their stream's rollup retention (`retention.rollups`); returns how many.
    pub(crate) fn expire_aggregates(&self, now_ms: i64) -> Result<u64, StoreError> {
        let doomed: Vec<RowKey> = {
            let mem = self.aggs.read();
            mem.rows
                .iter()
                .filter(|(k, r)| {
                    let e = self.effective_retention(&k.0, &r.stream);
                    e.rollups_ms
                        .is_some_and(|ms| k.4 < now_ms.saturating_sub(ms as i64))
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        let w = self.db.begin_write().map_err(storage_err)?;
        {
            let mut rt = w.open_table(ROWS).map_err(storage_err)?;
            let mut pt = w.open_table(PARTIALS).map_err(storage_err)?;
            for k in &doomed {
                rt.remove((k.0.as_str(), k.1.as_str(), k.2.as_str(), k.3.as_str(), k.4))
                    .map_err(storage_err)?;
                let lo = (
                    k.0.as_str(),
                    k.1.as_str(),
                    k.2.as_str(),
                    k.4,
                    k.3.as_str(),
                    0u32,
                );
                let hi = (
                    k.0.as_str(),
                    k.1.as_str(),
                    k.2.as_str(),
                    k.4,
                    k.3.as_str(),
                    u32::MAX,
                );
                pt.retain_in(lo..=hi, |_, _| false).map_err(storage_err)?;
            }
        }
        w.commit().map_err(storage_err)?;
        let mut mem = self.aggs.write();
        for k in &doomed {
            mem.rows.remove(k);
        }
        Ok(doomed.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_agg::NoCustom;

    fn def() -> Arc<Definition> {
        Arc::new(
            Definition::new(&AggregationConfig::new("a", "10s", &["count", "sum(x)"])).unwrap(),
        )
    }

    fn partial(d: &Arc<Definition>, xs: &[f64], late: u64, additive: bool) -> Partial {
        let mut acc = if additive {
            Acc::late(late)
        } else {
            Acc::new(d)
        };
        for x in xs {
            acc.update(d, &serde_json::json!({ "x": x }), b"");
        }
        Partial {
            tenant: "t".into(),
            stream: "s".into(),
            def: d.clone(),
            window_start: 0,
            group: "{}".into(),
            acc,
            additive,
        }
    }

    fn row(store: &HotStore) -> (u64, u64, u32, String) {
        let mem = store.aggs.read();
        let (_, r) = mem.rows.iter().next().expect("a row");
        (r.count, r.late, r.partitions, r.results.clone())
    }

    #[test]
    fn rows_merge_partitions_replays_replace_and_late_counts_add() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let d = def();
        {
            let s = HotStore::open(&path, usize::MAX).unwrap();
            let defs = [d.clone()];
            s.checkpoint_aggregation(
                0,
                5,
                b"s0",
                &[partial(&d, &[1.0, 2.0], 0, false)],
                &defs,
                &mut NoCustom,
            )
            .unwrap();
            s.checkpoint_aggregation(
                1,
                3,
                b"s1",
                &[partial(&d, &[4.0], 0, false)],
                &defs,
                &mut NoCustom,
            )
            .unwrap();
            // A replay of partition 0's window writes the same partial: nothing doubles.
            s.checkpoint_aggregation(
                0,
                5,
                b"s0",
                &[partial(&d, &[1.0, 2.0], 0, false)],
                &defs,
                &mut NoCustom,
            )
            .unwrap();
            s.checkpoint_aggregation(
                1,
                4,
                b"s1",
                &[partial(&d, &[], 2, true)],
                &defs,
                &mut NoCustom,
            )
            .unwrap();
            assert_eq!(row(&s), (3, 2, 2, r#"{"count":3,"sum(x)":7.0}"#.into()));
            assert_eq!(
                s.aggregation_checkpoint(1).unwrap(),
                Some((4, b"s1".to_vec()))
            );
        }
        let s = HotStore::open(&path, usize::MAX).unwrap();
        assert_eq!(row(&s), (3, 2, 2, r#"{"count":3,"sum(x)":7.0}"#.into()));
        assert_eq!(
            s.aggregation_definition(&d.fingerprint)
                .unwrap()
                .fingerprint,
            d.fingerprint
        );
        let batch = s.aggregates_batch("t");
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(s.aggregates_batch("other").num_rows(), 0);
    }

    #[test]
    fn eviction_keeps_segments_an_aggregator_still_needs() {
        let dir = tempfile::tempdir().unwrap();
        let s = HotStore::open(&dir.path().join("store.redb"), 1).unwrap();
        s.checkpoint_aggregation(0, 0, b"", &[], &[], &mut NoCustom)
            .unwrap();
        let seg = |offset: u64| {
            crate::Segment::new(
                0,
                offset,
                weir_core::Batch {
                    tenant: "t".into(),
                    stream: "s".into(),
                    ingest_ts_ms: 1,
                    count: 1,
                    records: b"{\"m\":1}\n".to_vec(),
                    replay_of: None,
                },
            )
            .unwrap()
        };
        // A 1-byte bound evicts every segment from memory at once...
        s.commit(0, 1, &[seg(0)], &[], &[]).unwrap();
        s.commit(0, 2, &[seg(1)], &[], &[]).unwrap();
        // ...but the aggregator, checkpointed at 0, can still re-read both.
        assert_eq!(s.segments_since(0, 0).unwrap().len(), 2);
        // Its next checkpoint releases them.
        s.checkpoint_aggregation(0, 2, b"", &[], &[], &mut NoCustom)
            .unwrap();
        assert_eq!(s.segments_since(0, 0).unwrap().len(), 0);
    }

    /// Aggregation rows are kept as long as their stream's rollups: hidden from queries
    /// at once, deleted (with their partials) by the janitor, gone after a restart.
    #[tokio::test]
    async fn aggregation_rows_follow_the_rollup_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let d = def();
        let day = 86_400_000i64;
        let now = 40 * day;
        {
            let s = HotStore::open(&path, usize::MAX).unwrap();
            let mut old = partial(&d, &[1.0], 0, false);
            old.window_start = now - 10 * day;
            let mut recent = partial(&d, &[2.0], 0, false);
            recent.window_start = now - day;
            s.checkpoint_aggregation(
                0,
                5,
                b"s0",
                &[old, recent],
                std::slice::from_ref(&d),
                &mut NoCustom,
            )
            .unwrap();
            assert_eq!(s.aggs.read().rows.len(), 2);
            let doc: weir_core::retention::RetentionDoc =
                serde_json::from_value(serde_json::json!({"streams": {"s": {"rollups": "5d"}}}))
                    .unwrap();
            s.set_retention("t", Some(&doc)).unwrap();
            assert_eq!(s.expire_aggregates(now).unwrap(), 1);
            assert_eq!(s.aggs.read().rows.len(), 1);
            // The query filter uses the wall clock: with "5d" both windows (at 1970) are
            // past it, so nothing shows.
            let r = s
                .query("t", "SELECT count(*) FROM aggregates")
                .await
                .unwrap();
            assert_eq!(r.to_json().unwrap()["rows"][0][0], 0);
        }
        let s = HotStore::open(&path, usize::MAX).unwrap();
        assert_eq!(s.aggs.read().rows.len(), 1, "deleted for good");
        let r = s.db.begin_read().unwrap();
        let pt = r.open_table(PARTIALS).unwrap();
        assert_eq!(pt.iter().unwrap().count(), 1, "with its partials");
    }
}
