//! The cold tier's janitor: retention and compaction.
//!
//! One [`HotStore::janitor_pass`]:
//! 1. deletes hot segments whose every row is past its stream's cold retention, and
//!    `aggregates` rows whose window started before its rollup retention;
//! 2. deletes cold files whose every row is past it, and rewrites a file at least a
//!    quarter of whose time range is past it without those rows;
//! 3. compacts: files smaller than `small_bytes` of one tenant, table, stream and day,
//!    once there are `compact_min_files` of them, become one file;
//! 4. deletes files replaced or expired once no query holds them (they are in
//!    `cold_pending` from the commit that replaced them until deleted, so a crash in
//!    between leaves them to the next start's sweep);
//! 5. deletes dead letters and quarantined rows past `[dead_letters] retention`.
//!
//! One rewrite that fails (a file that does not read back, a failing upload) is logged,
//! counted in [`JanitorStats::failed_rewrites`] and retried next pass; it never stops
//! the others.
//!
//! A rewrite (steps 2 and 3) writes the new file under a new name, then one redb
//! transaction swaps the manifest entries, then — under the lock queries read — memory
//! swaps them. A crash before the commit leaves the new file unnamed, after it the old
//! ones; either is deleted at the next start. Rows never vanish or show twice. Queries
//! also hide rows past retention themselves, so they need not wait for a pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, StringBuilder,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{TimestampMillisecondType, UInt8Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::ObjectStoreExt;

use crate::cold::{fault_point, ColdFile};
use crate::hot::{storage_err, HotStore, StoreError, Table};
use crate::shred::{leaf_value, rebuild, ShredColumn};

/// What one janitor pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JanitorStats {
    /// Rows deleted by retention (hot and cold).
    pub expired_rows: u64,
    /// Files merged into larger ones.
    pub compacted_files: usize,
    /// Files deleted from storage.
    pub deleted_files: usize,
    /// Rows of the `aggregates` table past their stream's rollup retention.
    pub expired_aggregates: u64,
    /// Dead letters and quarantined rows past their retention.
    pub expired_letters: u64,
    /// Rewrites (retention or compaction) that failed this pass, retried next pass.
    pub failed_rewrites: usize,
}

/// Read a cold file's rows back in the hot layout ([`crate::rows::logs_schema`] for
/// `logs`).
fn hot_layout(batch: &RecordBatch, file: &ColdFile) -> Result<RecordBatch, StoreError> {
    if file.table == "metrics" {
        return hot_metrics(batch);
    }
    if file.table != "logs" {
        return Ok(batch.clone()); // rollups: one layout
    }
    let n = batch.num_rows();
    let record: ArrayRef = match (&file.columns, batch.column_by_name("record")) {
        (None, Some(r)) => r.clone(),
        (Some(cols), _) => {
            // Read back from storage: a column of another type is an error, not a panic.
            let text = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .cloned()
            };
            let (rest, level, message, trace) = (
                text("rest"),
                text("level"),
                text("message"),
                text("trace_id"),
            );
            let wk = batch
                .column_by_name("wk")
                .and_then(|c| c.as_primitive_opt::<UInt8Type>())
                .ok_or_else(|| storage_err("shredded file without wk"))?
                .clone();
            fn get(a: &Option<StringArray>, i: usize) -> Option<&str> {
                a.as_ref().and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
            }
            let fields: Vec<(&ShredColumn, ArrayRef)> = cols
                .iter()
                .filter_map(|c| batch.column_by_name(&c.path).map(|a| (c, a.clone())))
                .collect();
            let ts = batch
                .column_by_name("ts")
                .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
                .ok_or_else(|| storage_err("shredded file without ts"))?
                .clone();
            let mut b = StringBuilder::new();
            for i in 0..n {
                let leaves = fields
                    .iter()
                    .map(|(c, a)| (c.path.as_str(), leaf_value(a.as_ref(), i)));
                b.append_value(rebuild(
                    get(&rest, i),
                    wk.value(i),
                    ts.value(i),
                    get(&level, i),
                    get(&message, i),
                    get(&trace, i),
                    leaves,
                )?);
            }
            Arc::new(b.finish())
        }
        (None, None) => return Err(storage_err(format!("{}: no record column", file.path))),
    };
    // A first-layout file has no trace_id column: take it from the record.
    let trace: ArrayRef = match batch.column_by_name("trace_id") {
        Some(t) => t.clone(),
        None => Arc::new(
            record
                .as_string_opt::<i32>()
                .ok_or_else(|| storage_err(format!("{}: record is not text", file.path)))?
                .iter()
                .map(|r| {
                    r.and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                        .and_then(|v| {
                            v.get("trace_id")
                                .and_then(|t| t.as_str())
                                .map(str::to_owned)
                        })
                })
                .collect::<StringArray>(),
        ),
    };
    let schema = crate::rows::logs_schema();
    let cols = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "record" => Ok(record.clone()),
            "trace_id" => Ok(trace.clone()),
            name => batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| storage_err(format!("{}: no {name} column", file.path))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, cols).map_err(storage_err)
}

/// Cold `metrics` rows back in the hot layout: `value` decoded from `value_int`.
fn hot_metrics(batch: &RecordBatch) -> Result<RecordBatch, StoreError> {
    use datafusion::arrow::array::Float64Array;
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};
    let value = batch
        .column_by_name("value")
        .and_then(|c| c.as_primitive_opt::<Float64Type>())
        .ok_or_else(|| storage_err("metrics file without value"))?;
    let decoded: Float64Array = match (
        batch.column_by_name("value_int"),
        batch.column_by_name("value_scale"),
    ) {
        (Some(m), Some(k)) => {
            let (Some(m), Some(k)) = (
                m.as_primitive_opt::<Int64Type>(),
                k.as_primitive_opt::<UInt8Type>(),
            ) else {
                return Err(storage_err(
                    "metrics file with mistyped value_int/value_scale",
                ));
            };
            (0..batch.num_rows())
                .map(|i| {
                    Some(if m.is_null(i) {
                        value.value(i)
                    } else {
                        crate::metric_rows::from_decimal(m.value(i), k.value(i))
                    })
                })
                .collect()
        }
        _ => value.clone(),
    };
    let schema = crate::metric_rows::metrics_schema();
    let cols = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "value" => Ok(Arc::new(decoded.clone()) as ArrayRef),
            name => batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| storage_err(format!("metrics file without {name}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, cols).map_err(storage_err)
}

impl HotStore {
    /// One pass of retention and compaction at wall-clock time `now_ms`.
    pub async fn janitor_pass(&self, now_ms: i64) -> Result<JanitorStats, StoreError> {
        let mut stats = JanitorStats::default();
        // 1. Hot segments wholly past retention.
        let before = self.evicted_rows();
        let cutoffs: std::collections::HashMap<(String, String), i64> = self
            .held_streams()
            .into_iter()
            .filter_map(|(t, s)| {
                let c = self.cutoff(&t, Some(&s), false, now_ms)?;
                Some(((t, s), c))
            })
            .collect();
        if !cutoffs.is_empty() {
            self.evict(|h| {
                cutoffs
                    .get(&(h.tenant.clone(), h.stream.clone()))
                    .is_some_and(|c| h.max_ts < *c)
            })?;
        }
        stats.expired_rows += self.evicted_rows() - before;
        stats.expired_aggregates = self.expire_aggregates(now_ms)?;
        stats.expired_letters = self.expire_letters(now_ms)?;
        let Some(cold) = &self.cold else {
            return Ok(stats);
        };
        // 2. and 3.: choose the rewrites under the lock, do them outside it.
        let mut rewrites: Vec<(Vec<Arc<ColdFile>>, Option<i64>)> = Vec::new();
        {
            let mem = self.mem.read();
            for files in mem.cold.values() {
                let mut small: BTreeMap<(Option<&str>, &str), Vec<Arc<ColdFile>>> = BTreeMap::new();
                for f in files {
                    let rollup = matches!(crate::cold::table_of(&f.table), Table::Rollup(_));
                    let cutoff = self.cutoff(&f.tenant, f.stream.as_deref(), rollup, now_ms);
                    match cutoff {
                        Some(c) if f.max_ts < c => rewrites.push((vec![f.clone()], Some(c))),
                        Some(c)
                            if f.min_ts < c
                                && (c - f.min_ts) * 4 >= (f.max_ts - f.min_ts).max(1) =>
                        {
                            rewrites.push((vec![f.clone()], Some(c)))
                        }
                        _ if f.bytes < cold.options.small_bytes => small
                            .entry((f.stream.as_deref(), &f.path[..day_prefix(&f.path)]))
                            .or_default()
                            .push(f.clone()),
                        _ => {}
                    }
                }
                for (_, group) in small {
                    if group.len() < cold.options.compact_min_files.max(2) {
                        continue;
                    }
                    let rollup = matches!(crate::cold::table_of(&group[0].table), Table::Rollup(_));
                    let c =
                        self.cutoff(&group[0].tenant, group[0].stream.as_deref(), rollup, now_ms);
                    // Merged files of at most MAX_FILE_ROWS rows (bounded memory).
                    let mut part: Vec<Arc<ColdFile>> = Vec::new();
                    let mut rows = 0u64;
                    for f in group {
                        if !part.is_empty() && rows + f.rows > crate::cold::MAX_FILE_ROWS as u64 {
                            if part.len() > 1 {
                                rewrites.push((std::mem::take(&mut part), c));
                            }
                            part.clear();
                            rows = 0;
                        }
                        rows += f.rows;
                        part.push(f);
                    }
                    if part.len() > 1 {
                        rewrites.push((part, c));
                    }
                }
            }
        }
        for (files, cutoff) in rewrites {
            match self.rewrite(&files, cutoff).await {
                Ok((expired, merged)) => {
                    stats.expired_rows += expired;
                    if merged {
                        stats.compacted_files += files.len();
                    }
                }
                Err(e) => {
                    stats.failed_rewrites += 1;
                    tracing::error!(file = %files[0].path, files = files.len(), error = %e,
                        "a cold rewrite failed; the files stay as they are, retried next pass");
                }
            }
        }
        // 4. Delete what no query holds any more.
        let free: Vec<Arc<ColdFile>> = {
            let mut retired = self.retired.lock();
            let (free, held): (Vec<_>, Vec<_>) =
                retired.drain(..).partition(|f| Arc::strong_count(f) == 1);
            *retired = held;
            free
        };
        let mut gone = Vec::new();
        for f in free {
            match cold.store.delete(&cold.object(&f.path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    stats.deleted_files += 1;
                    gone.push(f.path.clone());
                }
                Err(e) => {
                    tracing::warn!(file = %f.path, error = %e, "could not delete a retired cold file; retrying next pass");
                    self.retired.lock().push(f);
                }
            }
        }
        self.forget_pending(&gone)?;
        Ok(stats)
    }

    /// Rows of `tenant`'s `stream` (None: a file of the first layout — the tenant's
    /// own retention) older than this are past retention.
    fn cutoff(&self, tenant: &str, stream: Option<&str>, rollup: bool, now_ms: i64) -> Option<i64> {
        let e = self.effective_retention(tenant, stream.unwrap_or(""));
        let ms = if rollup { e.rollups_ms } else { e.cold_ms }?;
        Some(weir_core::retention::cutoff_ms(now_ms, ms))
    }

    /// Replace `files` (one tenant, table and stream) by one file of their rows at or
    /// after `cutoff` (none when no row is). Returns the rows dropped and whether files
    /// were merged.
    async fn rewrite(
        &self,
        files: &[Arc<ColdFile>],
        cutoff: Option<i64>,
    ) -> Result<(u64, bool), StoreError> {
        let Some(cold) = &self.cold else {
            return Ok((0, false));
        };
        let Some(first) = files.first() else {
            return Ok((0, false));
        };
        let table = crate::cold::table_of(&first.table);
        // Wholly past retention: nothing to read.
        let all_expired = cutoff.is_some_and(|c| files.iter().all(|f| f.max_ts < c));
        let mut batches = Vec::new();
        for f in files.iter().filter(|_| !all_expired) {
            let bytes = cold
                .store
                .get(&cold.object(&f.path))
                .await
                .map_err(storage_err)?
                .bytes()
                .await
                .map_err(storage_err)?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(storage_err)?
                .build()
                .map_err(storage_err)?;
            for b in reader {
                let b = hot_layout(&b.map_err(storage_err)?, f)?;
                let b = match cutoff {
                    Some(c) => {
                        let ts = b
                            .column_by_name("ts")
                            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
                            .ok_or_else(|| storage_err(format!("{}: no ts column", f.path)))?;
                        let keep: BooleanArray =
                            ts.iter().map(|t| Some(t.is_some_and(|t| t >= c))).collect();
                        filter_record_batch(&b, &keep).map_err(storage_err)?
                    }
                    None => b,
                };
                batches.push(b);
            }
        }
        let before: u64 = files.iter().map(|f| f.rows).sum();
        let kept: usize = batches.iter().map(|b| b.num_rows()).sum();
        let expired = before.saturating_sub(kept as u64);
        if expired == 0 && files.len() == 1 {
            return Ok((0, false));
        }
        // One file per stream (a first-layout file mixed them), holding the segments
        // its rows came from.
        let mut new = Vec::new();
        if kept > 0 {
            let all = concat_batches(&batches[0].schema(), &batches).map_err(storage_err)?;
            // Rollup files: the partial rows of one series and window become one.
            let all = match table {
                Table::Rollup(_) => crate::rollups::merge_partials(&all).map_err(storage_err)?,
                _ => all,
            };
            for (stream, rows) in split_by_stream(&all, first.stream.as_deref())? {
                let segments = crate::cold::segments_of(&rows);
                new.push(
                    self.write_file(&first.tenant, table, &stream, &rows, segments)
                        .await?,
                );
            }
        }
        fault_point(
            "WEIR_FAULT_COMPACT_AFTER_PUT",
            "between a rewritten file and its commit",
        );
        let added: Vec<&ColdFile> = new.iter().collect();
        let removed: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        self.commit_manifest(&added, &removed, &[])?;
        fault_point(
            "WEIR_FAULT_COMPACT_AFTER_COMMIT",
            "after a rewrite's commit, before removing the files it replaced",
        );
        {
            let mut mem = self.mem.write();
            let list = mem.cold.entry((first.tenant.clone(), table)).or_default();
            list.retain(|f| !files.iter().any(|g| g.path == f.path));
            list.extend(new.into_iter().map(Arc::new));
        }
        self.retired.lock().extend(files.iter().cloned());
        tracing::info!(
            files = files.len(),
            rows = kept,
            expired,
            "cold files rewritten"
        );
        Ok((expired, files.len() > 1))
    }
}

/// Rows split by their `stream` column (`logs`), or all of them under `stream`.
fn split_by_stream(
    rows: &RecordBatch,
    stream: Option<&str>,
) -> Result<Vec<(String, RecordBatch)>, StoreError> {
    let col = rows
        .column_by_name("stream")
        .and_then(|c| c.as_string_opt::<i32>().cloned());
    let (Some(col), None) = (col, stream) else {
        let name = stream.unwrap_or(weir_core::names::METRICS_STREAM);
        return Ok(vec![(name.to_owned(), rows.clone())]);
    };
    let names: std::collections::BTreeSet<&str> = col.iter().flatten().collect();
    names
        .into_iter()
        .map(|n| {
            let keep: BooleanArray = col.iter().map(|s| Some(s == Some(n))).collect();
            Ok((
                n.to_owned(),
                filter_record_batch(rows, &keep).map_err(storage_err)?,
            ))
        })
        .collect()
}

/// Length of `tenant=T/table=X/STREAM/date=D/` in a file's path (its day).
fn day_prefix(path: &str) -> usize {
    path.rfind('/').map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use weir_core::retention::RetentionDoc;

    use crate::{HotStore, Table};

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_900_000_000_000;

    /// `n` records of `stream` at event time `ts`, committed as one segment.
    fn commit(s: &HotStore, offset: u64, stream: &str, ts: i64, n: usize) {
        let records: Vec<serde_json::Value> = (0..n)
            .map(|i| json!({"ts": ts, "message": format!("{stream}-{offset}-{i}"), "n": i}))
            .collect();
        crate::test_util::commit_records(s, stream, offset, ts, &records);
    }

    async fn count(s: &HotStore, sql: &str) -> i64 {
        let r = s.query("t", sql).await.unwrap();
        r.to_json().unwrap()["rows"][0][0].as_i64().unwrap()
    }

    fn files_on_disk(dir: &std::path::Path) -> usize {
        crate::cold::walk(&dir.join("cold"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count()
    }

    fn doc(v: serde_json::Value) -> RetentionDoc {
        serde_json::from_value(v).unwrap()
    }

    /// Retention per stream deletes exactly the rows past it, hot and cold, at once for
    /// queries and for good after a pass; changing it at runtime takes effect.
    #[tokio::test]
    async fn retention_deletes_exactly_what_it_should() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_compacting(dir.path(), 100);
        let now = crate::query::now_ms();
        // app and audit rows 10 and 5 days old (flushed), and 1 hour old (kept hot).
        for (i, (stream, age)) in [("app", 10), ("app", 5), ("audit", 10), ("audit", 5)]
            .into_iter()
            .enumerate()
        {
            commit(&s, i as u64 * 10, stream, now - age * DAY, 10);
        }
        s.flush_cold(Duration::ZERO).await.unwrap();
        commit(&s, 100, "app", now - 3_600_000, 10);
        commit(&s, 110, "audit", now - 3_600_000, 10);
        commit(&s, 120, "app", now - 12 * DAY, 10); // hot, but past retention
        assert_eq!(count(&s, "SELECT count(*) FROM logs").await, 70);
        s.set_retention(
            "t",
            Some(&doc(
                json!({"cold": "3d", "streams": {"audit": {"cold": "7d"}}}),
            )),
        )
        .unwrap();
        let want = [("app", 10), ("audit", 20)];
        for (stream, n) in want {
            let sql = format!("SELECT count(*) FROM logs WHERE stream = '{stream}'");
            assert_eq!(count(&s, &sql).await, n, "{stream}, hidden before any pass");
        }
        let files_before = files_on_disk(dir.path());
        let stats = s.janitor_pass(now).await.unwrap();
        assert_eq!(stats.expired_rows, 40, "{stats:?}");
        for (stream, n) in want {
            let sql = format!("SELECT count(*) FROM logs WHERE stream = '{stream}'");
            assert_eq!(count(&s, &sql).await, n, "{stream}, after the pass");
        }
        assert!(files_on_disk(dir.path()) < files_before);
        // Gone for good: loosening the retention brings nothing back.
        s.set_retention("t", None).unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM logs").await, 30);
        // Tightening it at runtime hides, then deletes, the 5-day-old audit rows.
        s.set_retention(
            "t",
            Some(&doc(json!({"streams": {"audit": {"cold": "1d"}}}))),
        )
        .unwrap();
        assert_eq!(count(&s, "SELECT count(*) FROM logs").await, 20);
        assert_eq!(s.janitor_pass(now).await.unwrap().expired_rows, 10);
        drop(s);
        let s = crate::test_util::open_compacting(dir.path(), 100);
        assert_eq!(
            s.retention("t").1,
            crate::retention::Source::Api,
            "kept across restarts"
        );
        assert_eq!(count(&s, "SELECT count(*) FROM logs").await, 20);
        assert_eq!(
            count(
                &s,
                "SELECT count(*) FROM (SELECT DISTINCT \"offset\", seq FROM logs)"
            )
            .await,
            20
        );
    }

    /// Small files of one stream and day become one; every record reads the same, and a
    /// file a running query holds is deleted only after it lets go.
    #[tokio::test]
    async fn compaction_merges_small_files_without_losing_or_doubling_rows() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_compacting(dir.path(), 4);
        for i in 0..6u64 {
            commit(&s, i * 10, "app", NOW + i as i64, 5);
            s.flush_cold(Duration::ZERO).await.unwrap();
        }
        commit(&s, 100, "other", NOW, 5);
        s.flush_cold(Duration::ZERO).await.unwrap();
        assert_eq!(s.tiers("t", Table::Logs).1.len(), 7);
        let sql = "SELECT record FROM logs ORDER BY \"offset\", seq";
        let before = s.query("t", sql).await.unwrap().to_json().unwrap();
        let held = s.tiers("t", Table::Logs); // a query in flight
        let stats = s.janitor_pass(NOW).await.unwrap();
        assert_eq!(
            (stats.compacted_files, stats.deleted_files),
            (6, 0),
            "{stats:?}"
        );
        let after = s.tiers("t", Table::Logs).1;
        assert_eq!(
            after.len(),
            2,
            "six app files became one; other stays alone"
        );
        assert_eq!(s.query("t", sql).await.unwrap().to_json().unwrap(), before);
        assert_eq!(
            files_on_disk(dir.path()),
            8,
            "held files are not deleted yet"
        );
        drop(held);
        assert_eq!(s.janitor_pass(NOW).await.unwrap().deleted_files, 6);
        assert_eq!(files_on_disk(dir.path()), 2);
        let merged = after.iter().find(|(_, f)| f.rows == 30).unwrap();
        assert_eq!(merged.1.segments.len(), 6);
        drop(s);
        let s = crate::test_util::open_compacting(dir.path(), 4);
        assert_eq!(s.query("t", sql).await.unwrap().to_json().unwrap(), before);
    }
}
