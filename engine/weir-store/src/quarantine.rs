//! Quarantined rows: rows the cold flush could not write (or a stored segment that no
//! longer loads), moved out of the flush path so that every other row, tenant and file
//! keeps flushing.
//!
//! redb table `quarantine`: `(partition, offset)` of the segment → JSON [`Quarantined`]
//! (one entry per segment: its rows that could not be written, as NDJSON, and why), with
//! a per-tenant index, retention and cap shared with dead letters (see
//! [`crate::letters`]). Its tenant reads them as SQL table `quarantine` (`tenant,
//! stream, table, partition, offset, rows, error, quarantined_at, records`); `records`
//! holds the rows exactly (a `logs` row's record text, a `metrics` row as a sample), so
//! they can be fixed and sent again.
//!
//! Why a table of its own and not dead letters: a dead letter holds a log entry as it
//! was *given to* a plugin, and replaying it runs the plugin chain again; a quarantined
//! row is the chain's *output*, and running the chain over it again would process it
//! twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
    UInt32Type, UInt64Type,
};
use serde::{Deserialize, Serialize};

use crate::hot::{HotStore, StoreError, Table};
use crate::letters::Kind;

/// Rows of one segment the cold tier could not take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    pub tenant: String,
    pub stream: String,
    /// `logs` or `metrics`.
    pub table: String,
    pub partition: u32,
    pub offset: u64,
    /// How many rows (their `seq` in the segment: `seqs`).
    pub rows: u32,
    #[serde(default)]
    pub seqs: Vec<u32>,
    /// Why (the flush's error for these rows).
    pub error: String,
    pub quarantined_at_ms: i64,
    /// The rows, one NDJSON line each.
    pub records: String,
}

impl Quarantined {
    /// `PARTITION-OFFSET`, as dead letters are named.
    pub fn id(&self) -> String {
        format!("{}-{}", self.partition, self.offset)
    }
}

/// One row as the NDJSON line it came from: a `logs` row's record, a `metrics` row as
/// a sample.
fn line_of(rows: &RecordBatch, table: Table, i: usize) -> String {
    let text = |n: &str| {
        rows.column_by_name(n)
            .and_then(|c| c.as_string_opt::<i32>())
            .and_then(|c| (!c.is_null(i)).then(|| c.value(i).to_owned()))
    };
    match table {
        Table::Logs => text("record").unwrap_or_default(),
        _ => {
            let ts = rows
                .column_by_name("ts")
                .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
                .map(|c| c.value(i));
            let value = rows
                .column_by_name("value")
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .map(|c| c.value(i));
            let labels: serde_json::Value = text("labels")
                .and_then(|l| serde_json::from_str(&l).ok())
                .unwrap_or_default();
            let mut o = serde_json::json!({
                "name": text("name"), "value": value, "ts": ts, "labels": labels,
            });
            if let Some(k) = text("kind") {
                o["kind"] = k.into();
            }
            o.to_string()
        }
    }
}

/// Entries for `bad` rows (each with its error) of one tenant, table and stream: one per
/// segment they belong to.
pub(crate) fn entries(
    tenant: &str,
    stream: &str,
    table: Table,
    bad: &[(RecordBatch, String)],
    now_ms: i64,
) -> Vec<Quarantined> {
    let mut by: BTreeMap<(u32, u64), Quarantined> = BTreeMap::new();
    for (rows, error) in bad {
        let p = rows
            .column_by_name("partition")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>().cloned());
        let o = rows
            .column_by_name("offset")
            .and_then(|c| c.as_primitive_opt::<UInt64Type>().cloned());
        let seq = rows
            .column_by_name("seq")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>().cloned());
        for i in 0..rows.num_rows() {
            let key = (
                p.as_ref().map_or(0, |p| p.value(i)),
                o.as_ref().map_or(0, |o| o.value(i)),
            );
            let q = by.entry(key).or_insert_with(|| Quarantined {
                tenant: tenant.to_owned(),
                stream: stream.to_owned(),
                table: crate::cold::table_name(table),
                partition: key.0,
                offset: key.1,
                rows: 0,
                seqs: Vec::new(),
                error: String::new(),
                quarantined_at_ms: now_ms,
                records: String::new(),
            });
            q.rows += 1;
            if let Some(s) = &seq {
                q.seqs.push(s.value(i));
            }
            if !q.error.contains(error.as_str()) {
                if !q.error.is_empty() {
                    q.error.push_str("; ");
                }
                q.error.push_str(error);
            }
            q.records.push_str(&line_of(rows, table, i));
            q.records.push('\n');
        }
    }
    by.into_values().collect()
}

/// Schema of the `quarantine` SQL table.
pub fn quarantine_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("rows", DataType::UInt32, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("quarantined_at", ts, false),
        Field::new("records", DataType::Utf8, false),
    ]))
}

/// Rows of the `quarantine` SQL table.
pub fn quarantine_batch(q: &[Quarantined]) -> Result<RecordBatch, StoreError> {
    let s = |f: fn(&Quarantined) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(q.iter().map(f)))
    };
    let cols: Vec<ArrayRef> = vec![
        s(|x| &x.tenant),
        s(|x| &x.stream),
        s(|x| &x.table),
        Arc::new(UInt32Array::from_iter_values(q.iter().map(|x| x.partition))),
        Arc::new(UInt64Array::from_iter_values(q.iter().map(|x| x.offset))),
        Arc::new(UInt32Array::from_iter_values(q.iter().map(|x| x.rows))),
        s(|x| &x.error),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(q.iter().map(|x| x.quarantined_at_ms))
                .with_timezone("UTC"),
        ),
        s(|x| &x.records),
    ];
    RecordBatch::try_new(quarantine_schema(), cols).map_err(crate::hot::storage_err)
}

impl HotStore {
    /// `tenant`'s quarantined rows, oldest first.
    pub fn quarantined(&self, tenant: &str) -> Result<Vec<Quarantined>, StoreError> {
        Ok(self
            .letters_of(Kind::Quarantine, tenant)?
            .iter()
            .filter_map(|v| match serde_json::from_slice::<Quarantined>(v) {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::warn!(error = %e, "a quarantine entry does not decode; skipped");
                    None
                }
            })
            .collect())
    }
}
