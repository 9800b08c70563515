//! The `logs` and `metrics` tables of a query: hot rows and cold files as one table.
//!
//! `metrics`: cold files keep most values as scaled integers (see
//! [`crate::metric_rows::cold_metrics`]); [`cold_metrics_view`] turns them back into
//! the `value` column, exactly.
//!
//! `logs`:
//!
//! Columns: those of [`crate::rows::logs_schema`], then one per shredded field of the
//! tenant's cold files (kinds merged across files, see [`crate::shred::merge_columns`]),
//! named by the field's dotted path (`SELECT "http.status" FROM logs`).
//! - Hot rows compute a field column from `record` with the JSON function of its kind
//!   (`json_get_int`, `json_get_float`, `json_get_bool`, `json_as_text`).
//! - Cold rows read the column (cast to the merged kind; a file without it reads null)
//!   and, where it is null, apply the same function to `rest` — so a value of another
//!   kind than its file's column still answers, and a row reads the same before and
//!   after its flush. `record` is put back together by `weir_record` (only when a query
//!   reads it); files of the first layout still carry their `record` text.
//!
//! Everything stays one logical plan: filters on `ts` reach the Parquet scan and prune
//! files and row groups by their statistics.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt8Type};
use datafusion::common::Result as DfResult;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    cast, ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{coalesce, ident, lit};

use crate::shred::{leaf_value, rebuild, Kind, ShredColumn};

/// `weir_record(rest, wk, level, message, trace_id, ts, field...)`: a cold row's record as
/// JSON text. The field arguments are the shredded columns, in `paths` order.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WeirRecord {
    paths: Vec<String>,
    signature: Signature,
}

impl ScalarUDFImpl for WeirRecord {
    fn name(&self) -> &str {
        "weir_record"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays: Vec<ArrayRef> = ColumnarValue::values_to_arrays(&args.args)?;
        let (fixed, fields) = arrays.split_at(6);
        let ts = fixed[5].as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
        fn text(a: &ArrayRef, i: usize) -> Option<&str> {
            let s = a.as_string::<i32>();
            (!s.is_null(i)).then(|| s.value(i))
        }
        let wk = fixed[1].as_primitive::<UInt8Type>();
        let mut out = StringBuilder::new();
        for i in 0..args.number_rows {
            if wk.is_null(i) {
                // Not a shredded row (a file of the first layout).
                out.append_null();
                continue;
            }
            let leaves = self
                .paths
                .iter()
                .zip(fields)
                .map(|(p, a)| (p.as_str(), leaf_value(a.as_ref(), i)));
            let r = rebuild(
                text(&fixed[0], i),
                wk.value(i),
                ts.value(i),
                text(&fixed[2], i),
                text(&fixed[3], i),
                text(&fixed[4], i),
                leaves,
            )
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
            out.append_value(r);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The schema cold `metrics` files are read with (files written before values were
/// scaled integers read `value_int` as null).
pub(crate) fn cold_metrics_read_schema() -> SchemaRef {
    let fields: Vec<Field> = crate::metric_rows::cold_metrics_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// Cold `metrics` rows with their `value` decoded.
pub(crate) fn cold_metrics_view(cold: DataFrame) -> DfResult<DataFrame> {
    use datafusion::logical_expr::when;
    // value_int / 10^value_scale, with the power as an exact literal.
    let mut scale = when(ident("value_scale").eq(lit(0u8)), lit(1.0f64));
    for k in 1..=crate::metric_rows::MAX_SCALE {
        scale = scale.when(ident("value_scale").eq(lit(k)), lit(10f64.powi(k as i32)));
    }
    let decoded = cast(ident("value_int"), DataType::Float64) / scale.end()?;
    let value = when(ident("value_int").is_not_null(), decoded).otherwise(ident("value"))?;
    let exprs = crate::metric_rows::metrics_schema()
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "value" => value.clone().alias("value"),
            name => cast(ident(name), f.data_type().clone()).alias(name),
        })
        .collect::<Vec<_>>();
    cold.select(exprs)
}

/// The JSON function reading a field of `kind` at `path` from the JSON text `json`.
fn json_field(json: Expr, path: &str, kind: Kind) -> Expr {
    use datafusion_functions_json::udfs;
    let f = match kind {
        Kind::Int => udfs::json_get_int_udf(),
        Kind::Float => udfs::json_get_float_udf(),
        Kind::Bool => udfs::json_get_bool_udf(),
        Kind::Str => udfs::json_as_text_udf(),
    };
    let mut args = vec![json];
    args.extend(path.split('.').map(|p| lit(p.to_owned())));
    f.call(args)
}

/// The schema cold files are read with: every file's columns, merged; all nullable (a
/// column one file lacks reads null).
pub(crate) fn cold_read_schema(columns: &[ShredColumn], legacy: bool) -> SchemaRef {
    let mut fields: Vec<Field> = crate::shred::cold_logs_schema(columns)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    if legacy {
        fields.push(Field::new("record", DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

/// Hot rows with the field columns appended.
pub(crate) fn hot_view(hot: DataFrame, columns: &[ShredColumn]) -> DfResult<DataFrame> {
    let mut exprs: Vec<Expr> = crate::rows::logs_schema()
        .fields()
        .iter()
        .map(|f| ident(f.name()))
        .collect();
    for c in columns {
        exprs.push(json_field(ident("record"), &c.path, c.kind).alias(&c.path));
    }
    hot.select(exprs)
}

/// Split cold files into groups read with one schema: files whose columns of the same
/// path differ in kind go to different groups, so each group reads every value with
/// the kind it was written with (`record` comes back exact) — one group unless a field
/// changed kind. Each group: its file columns (the merged `columns` with its own kinds)
/// and the indices of its files.
pub(crate) fn read_groups(
    files: &[Option<&[ShredColumn]>],
    columns: &[ShredColumn],
) -> Vec<(Vec<ShredColumn>, Vec<usize>)> {
    let mut groups: Vec<(Vec<ShredColumn>, Vec<usize>)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let own: Vec<ShredColumn> = columns
            .iter()
            .map(|c| {
                // A file's columns are sorted by path.
                let kind = f
                    .and_then(|cols| {
                        cols.binary_search_by(|x| x.path.cmp(&c.path))
                            .ok()
                            .map(|j| cols[j].kind)
                    })
                    .unwrap_or(c.kind);
                ShredColumn {
                    path: c.path.clone(),
                    kind,
                }
            })
            .collect();
        match groups.iter_mut().find(|(g, _)| *g == own) {
            Some((_, idx)) => idx.push(i),
            None => groups.push((own, vec![i])),
        }
    }
    groups
}

/// Cold files of one read group (read with [`cold_read_schema`] of `file_columns`) as
/// rows of the `logs` table with the merged `columns`.
pub(crate) fn cold_view(
    cold: DataFrame,
    file_columns: &[ShredColumn],
    columns: &[ShredColumn],
    legacy: bool,
) -> DfResult<DataFrame> {
    let udf = ScalarUDF::new_from_impl(WeirRecord {
        paths: file_columns.iter().map(|c| c.path.clone()).collect(),
        signature: Signature::variadic_any(Volatility::Immutable),
    });
    let mut args: Vec<Expr> = ["rest", "wk", "level", "message", "trace_id", "ts"]
        .into_iter()
        .map(ident)
        .collect();
    args.extend(file_columns.iter().map(|c| ident(&c.path)));
    let mut record = udf.call(args);
    // Where a field is not in its column: `rest`, or the first layout's full record.
    let mut leftover = ident("rest");
    if legacy {
        record = coalesce(vec![ident("record"), record]);
        leftover = coalesce(vec![ident("rest"), ident("record")]);
    }
    let mut exprs = Vec::new();
    for f in crate::rows::logs_schema().fields() {
        let e = match f.name().as_str() {
            "record" => record.clone(),
            "trace_id" if legacy => coalesce(vec![
                ident("trace_id"),
                json_field(ident("record"), "trace_id", Kind::Str),
            ]),
            name => ident(name),
        };
        exprs.push(cast(e, f.data_type().clone()).alias(f.name()));
    }
    for c in columns {
        let ty = c.kind.data_type();
        exprs.push(
            coalesce(vec![
                cast(ident(&c.path), ty),
                json_field(leftover.clone(), &c.path, c.kind),
            ])
            .alias(&c.path),
        );
    }
    cold.select(exprs)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::arrow::array::AsArray;

    use serde_json::{json, Value};

    use crate::test_util::{commit_records, rows};
    use crate::HotStore;

    async fn records(s: &HotStore) -> Vec<Value> {
        rows(s, "SELECT record FROM logs ORDER BY \"offset\", seq")
            .await
            .into_iter()
            .map(|r| serde_json::from_str(r[0].as_str().unwrap()).unwrap())
            .collect()
    }

    /// Records read the same before and after their flush; a field that appears, a field
    /// that changes kind and a schema migration across files all read back.
    #[tokio::test]
    async fn schema_evolves_across_files_and_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_cold(dir.path());
        let first: Vec<Value> = (0..20)
            .map(|i| json!({"message": format!("m{i}"), "level": "info", "x": i, "user": {"id": i % 3}, "tags": [i]}))
            .collect();
        commit_records(&s, "app", 0, 0, &first);
        let before = records(&s).await;
        assert_eq!(before, first);
        s.flush_cold(Duration::ZERO).await.unwrap();
        assert_eq!(s.tiers("t", crate::Table::Logs).1.len(), 1);
        assert_eq!(records(&s).await, first, "the same records after the flush");
        // A later file: `x` turns to text, `y` appears, records migrate to schema 2.
        let second: Vec<Value> = (0..20)
            .map(|i| json!({"_schema": 2, "msg": format!("n{i}"), "severity": "warn", "x": format!("s{i}"), "y": true, "user": {"id": 9}}))
            .collect();
        commit_records(&s, "app", 100, 0, &second);
        s.flush_cold(Duration::ZERO).await.unwrap();
        // Still hot: `x` an integer again.
        commit_records(&s, "app", 200, 0, &[json!({"x": 5, "message": "hot"})]);
        let all = records(&s).await;
        assert_eq!(all.len(), 41);
        assert_eq!(&all[..20], &first[..]);
        assert_eq!(&all[20..40], &second[..]);
        let got = rows(
            &s,
            "SELECT \"x\", \"y\", \"user.id\", level, message, schema FROM logs ORDER BY \"offset\", seq",
        )
        .await;
        assert_eq!(
            got[1],
            json!(["1", null, 1, "info", "m1", 1]),
            "int widened to text"
        );
        assert_eq!(got[21], json!(["s1", true, 9, "warn", "n1", 2]));
        assert_eq!(got[40], json!(["5", null, null, null, "hot", 1]));
        let n = rows(
            &s,
            "SELECT count(*) FROM logs WHERE \"user.id\" = 9 AND schema = 2",
        )
        .await;
        assert_eq!(n, vec![json!([20])]);
    }

    /// Files of the first layout (each record's JSON text in `record`, no `trace_id`)
    /// read next to shredded ones.
    #[tokio::test]
    async fn first_layout_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let open = || crate::test_util::open_cold(dir.path());
        let s = open();
        let old = json!({"message": "old", "trace_id": "t1", "x": 1});
        commit_records(&s, "app", 0, 0, std::slice::from_ref(&old));
        let hot = s.tiers("t", crate::Table::Logs).0.remove(0);
        let hot = hot.project(&[0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let bytes = crate::cold::parquet_bytes(&hot).unwrap();
        let path = "tenant=t/table=logs/date=2023-11-14/0-0-0.parquet";
        std::fs::create_dir_all(dir.path().join("cold/tenant=t/table=logs/date=2023-11-14"))
            .unwrap();
        std::fs::write(dir.path().join("cold").join(path), &bytes).unwrap();
        let file = crate::ColdFile {
            path: path.into(),
            tenant: "t".into(),
            table: "logs".into(),
            stream: None,
            min_ts: 0,
            max_ts: i64::MAX,
            rows: 1,
            bytes: bytes.len() as u64,
            segments: vec![(0, 0)],
            columns: None,
        };
        s.put_cold_file_for_test(&file);
        drop(s);
        let s = open();
        assert_eq!(s.tiers("t", crate::Table::Logs).0.len(), 0);
        commit_records(
            &s,
            "app",
            10,
            0,
            &vec![json!({"message": "new", "x": 2}); 20],
        );
        s.flush_cold(Duration::ZERO).await.unwrap();
        let all = records(&s).await;
        assert_eq!(all[0], old);
        assert_eq!(all.len(), 21);
        let got = rows(
            &s,
            "SELECT message, trace_id, \"x\" FROM logs ORDER BY \"offset\" LIMIT 2",
        )
        .await;
        assert_eq!(got, vec![json!(["old", "t1", 1]), json!(["new", null, 2])]);
    }

    async fn metric_values(s: &HotStore) -> Vec<u64> {
        let r = s
            .query("t", "SELECT value FROM metrics ORDER BY \"offset\", seq")
            .await
            .unwrap();
        let mut out = Vec::new();
        for b in &r.batches {
            let c = b
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            out.extend(c.values().iter().map(|v| v.to_bits()));
        }
        out
    }

    /// Metric values read back bit for bit from cold files (scaled integers or not) and
    /// after a compaction rewrote them.
    #[tokio::test]
    async fn metric_values_are_exact_in_the_cold_tier() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_compacting(dir.path(), 2);
        let values = [
            1.5,
            0.1,
            1.0 / 3.0,
            1e300,
            -2.0,
            7.0,
            99.99,
            2f64.powi(60),
            -0.0,
        ];
        for round in 0..2u64 {
            let samples: Vec<Value> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    json!({"name": "m", "value": v, "ts": 1_000 + i as i64, "labels": {"s": format!("{}", i % 2)}})
                })
                .collect();
            commit_records(&s, weir_core::names::METRICS_STREAM, round, 0, &samples);
            s.flush_cold(Duration::ZERO).await.unwrap();
        }
        let want: Vec<u64> = values
            .iter()
            .chain(values.iter())
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(metric_values(&s).await, want);
        assert_eq!(
            s.janitor_pass(0).await.unwrap().compacted_files,
            6,
            "two metrics files and two of each rollup"
        );
        assert_eq!(s.tiers("t", crate::Table::Metrics).1.len(), 1);
        assert_eq!(metric_values(&s).await, want, "after the compaction");
    }
}
