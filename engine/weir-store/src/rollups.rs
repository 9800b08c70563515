//! Metric rollups: per series and window (1 min and 1 h by default, `[cold] rollups`),
//! the samples' `count`, `sum`, `min`, `max` and a DDSketch of their values (1% relative
//! error) — queried as tables `metrics_1m`, `metrics_1h`, ... with columns `ts` (window
//! start), `name`, `labels`, `series`, `count`, `sum`, `min`, `max`, `sketch`.
//!
//! Written with the raw samples: a flush of `metrics` rows also writes, per resolution,
//! the rollup rows *of exactly those samples* as a file of table `metrics_<res>`, and
//! commits all of them in one manifest transaction — so rollups are exactly once. A
//! window's samples may be spread over several flushes: each file then holds a partial
//! row, and the table merges partials (sums, min, max, merged sketches) when queried,
//! together with the rollup of samples still hot, computed on the fly. Rollup files
//! outlive raw ones: their retention is the stream's `retention.rollups`.
//!
//! SQL: `sketch(value)` and `sketch_merge(sketch)` aggregate to a sketch (binary),
//! `sketch_quantile(sketch, q)` reads a quantile from one:
//! `SELECT sketch_quantile(sketch_merge(sketch), 0.99) FROM metrics_1h WHERE name = 'x'`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Float64Array, Float64Builder,
    Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{
    cast, Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Expr, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::{ident, lit};
use weir_agg::DDSketch;

/// Relative accuracy and bucket bound of rollup sketches (as aggregations use).
const ALPHA: f64 = weir_agg::spec::QUANTILE_ALPHA;
const BUCKETS: usize = 2048;

/// `60` → `"1m"`, `3600` → `"1h"`: the suffix of a rollup table's name.
pub fn resolution_name(secs: u32) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Schema of a rollup table (and of its cold files).
pub fn rollup_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("name", DataType::Utf8, false),
            Field::new("labels", DataType::Utf8, false),
            Field::new("series", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new("sum", DataType::Float64, false),
            Field::new("min", DataType::Float64, false),
            Field::new("max", DataType::Float64, false),
            Field::new("sketch", DataType::Binary, false),
        ]))
    })
    .clone()
}

struct Window {
    name: String,
    labels: String,
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    sketch: DDSketch,
}

/// The start of the `step`-millisecond window holding `ts`: None when it is not an
/// `i64` (a time within a window of the start of `i64`'s range).
fn window_start(ts: i64, step: i64) -> Option<i64> {
    ts.checked_sub(ts.rem_euclid(step))
}

/// Rows of raw `metrics` rows (hot layout) that no rollup at `secs` can hold, with the
/// reason: the flush quarantines them instead of failing the file.
pub(crate) fn unrollable_rows(raw: &RecordBatch, secs: u32) -> Vec<(usize, String)> {
    let step = i64::from(secs.max(1)) * 1000;
    let Some(ts) = raw
        .column_by_name("ts")
        .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
    else {
        return Vec::new();
    };
    (0..raw.num_rows())
        .filter(|i| window_start(ts.value(*i), step).is_none())
        .map(|i| (i, no_window(ts.value(i), secs)))
        .collect()
}

fn no_window(ts: i64, secs: u32) -> String {
    format!("sample time {ts} ms has no {secs} s rollup window (out of range)")
}

/// The rollup rows of raw `metrics` rows (hot layout) at `secs` resolution.
pub fn rollup_rows(raw: &RecordBatch, secs: u32) -> Result<RecordBatch, String> {
    let col = |n: &str| {
        raw.column_by_name(n)
            .ok_or_else(|| format!("metrics rows without {n}"))
    };
    let ts = col("ts")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or("metrics ts is not a timestamp")?;
    let value = col("value")?
        .as_primitive_opt::<Float64Type>()
        .ok_or("metrics value is not a float")?;
    let text = |n: &str| {
        col(n)?
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("metrics {n} is not text"))
    };
    let (name, labels, series) = (text("name")?, text("labels")?, text("series")?);
    let step = i64::from(secs.max(1)) * 1000;
    let mut windows: BTreeMap<(&str, i64), Window> = BTreeMap::new();
    for i in 0..raw.num_rows() {
        let start = window_start(ts.value(i), step).ok_or_else(|| no_window(ts.value(i), secs))?;
        let v = value.value(i);
        let w = windows
            .entry((series.value(i), start))
            .or_insert_with(|| Window {
                name: name.value(i).to_owned(),
                labels: labels.value(i).to_owned(),
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                sketch: DDSketch::new(ALPHA, BUCKETS),
            });
        w.count += 1;
        w.sum += v;
        w.min = w.min.min(v);
        w.max = w.max.max(v);
        w.sketch.add(v);
    }
    Ok(windows_batch(windows))
}

/// Partial rollup rows (several per series and window, from separate flushes) merged
/// into one row per series and window: counts and sums added, sketches merged.
/// Compaction does this, so rollup tables shrink as they age.
pub(crate) fn merge_partials(rows: &RecordBatch) -> Result<RecordBatch, String> {
    // Rows read back from storage: every column checked, never assumed.
    let col = |n: &str| {
        rows.column_by_name(n)
            .ok_or_else(|| format!("rollup rows without {n}"))
    };
    let ts = col("ts")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or("rollup ts is not a timestamp")?;
    let text = |n: &str| {
        col(n)?
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("rollup {n} is not text"))
    };
    let (name, labels, series) = (text("name")?, text("labels")?, text("series")?);
    let count = col("count")?
        .as_primitive_opt::<Int64Type>()
        .ok_or("rollup count is not an integer")?;
    let float = |n: &str| {
        col(n)?
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| format!("rollup {n} is not a float"))
    };
    let (sum, min, max) = (float("sum")?, float("min")?, float("max")?);
    let sketch = col("sketch")?
        .as_binary_opt::<i32>()
        .ok_or("rollup sketch is not binary")?;
    let mut windows: BTreeMap<(&str, i64), Window> = BTreeMap::new();
    for i in 0..rows.num_rows() {
        let part = DDSketch::decode(sketch.value(i)).map_err(|e| e.to_string())?;
        match windows.entry((series.value(i), ts.value(i))) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Window {
                    name: name.value(i).to_owned(),
                    labels: labels.value(i).to_owned(),
                    count: count.value(i),
                    sum: sum.value(i),
                    min: min.value(i),
                    max: max.value(i),
                    sketch: part,
                });
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let w = o.get_mut();
                w.count = w.count.saturating_add(count.value(i));
                w.sum += sum.value(i);
                w.min = w.min.min(min.value(i));
                w.max = w.max.max(max.value(i));
                w.sketch.merge(&part).map_err(str::to_owned)?;
            }
        }
    }
    Ok(windows_batch(windows))
}

/// One rollup row per series and window.
fn windows_batch(windows: BTreeMap<(&str, i64), Window>) -> RecordBatch {
    let n = windows.len();
    let mut b_ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut b_name, mut b_labels, mut b_series) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut b_count = Int64Builder::with_capacity(n);
    let (mut b_sum, mut b_min, mut b_max) = (
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
    );
    let mut b_sketch = BinaryBuilder::new();
    for ((series, start), w) in windows {
        b_ts.append_value(start);
        b_name.append_value(&w.name);
        b_labels.append_value(&w.labels);
        b_series.append_value(series);
        b_count.append_value(w.count);
        b_sum.append_value(w.sum);
        b_min.append_value(w.min);
        b_max.append_value(w.max);
        b_sketch.append_value(w.sketch.encode());
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(b_ts.finish()),
        Arc::new(b_name.finish()),
        Arc::new(b_labels.finish()),
        Arc::new(b_series.finish()),
        Arc::new(b_count.finish()),
        Arc::new(b_sum.finish()),
        Arc::new(b_min.finish()),
        Arc::new(b_max.finish()),
        Arc::new(b_sketch.finish()),
    ];
    RecordBatch::try_new(rollup_schema(), cols).expect("columns match the rollup schema")
}

fn exec_err(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

/// `sketch(value)` (input floats) or `sketch_merge(sketch)` (input sketches).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SketchAgg {
    merge: bool,
    signature: Signature,
}

impl AggregateUDFImpl for SketchAgg {
    fn name(&self) -> &str {
        if self.merge {
            "sketch_merge"
        } else {
            "sketch"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Binary)
    }
    fn accumulator(&self, _: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(SketchAcc {
            merge: self.merge,
            sketch: DDSketch::new(ALPHA, BUCKETS),
        }))
    }
}

#[derive(Debug)]
struct SketchAcc {
    merge: bool,
    sketch: DDSketch,
}

impl SketchAcc {
    fn merge_sketches(&mut self, arr: &ArrayRef) -> DfResult<()> {
        let b: &BinaryArray = arr.as_binary::<i32>();
        for s in b.iter().flatten() {
            let other = DDSketch::decode(s).map_err(exec_err)?;
            self.sketch.merge(&other).map_err(exec_err)?;
        }
        Ok(())
    }
}

impl Accumulator for SketchAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if self.merge {
            return self.merge_sketches(&values[0]);
        }
        let v: &Float64Array = values[0].as_primitive::<Float64Type>();
        for x in v.iter().flatten() {
            self.sketch.add(x);
        }
        Ok(())
    }
    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.sketch.encode())))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + 8 * BUCKETS
    }
    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.merge_sketches(&states[0])
    }
}

/// `sketch_quantile(sketch, q)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SketchQuantile {
    signature: Signature,
}

impl ScalarUDFImpl for SketchQuantile {
    fn name(&self) -> &str {
        "sketch_quantile"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let sketches = arrays[0].as_binary::<i32>();
        let q = arrays[1].as_primitive::<Float64Type>();
        let mut out = Float64Builder::with_capacity(args.number_rows);
        for i in 0..args.number_rows {
            if sketches.is_null(i) || q.is_null(i) {
                out.append_null();
                continue;
            }
            let s = DDSketch::decode(sketches.value(i)).map_err(exec_err)?;
            out.append_option(s.quantile(q.value(i)));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The sketch functions, for a query's session.
pub(crate) fn functions() -> (Vec<AggregateUDF>, ScalarUDF) {
    let aggs = [(false, DataType::Float64), (true, DataType::Binary)]
        .into_iter()
        .map(|(merge, input)| {
            AggregateUDF::new_from_impl(SketchAgg {
                merge,
                signature: Signature::exact(vec![input], Volatility::Immutable),
            })
        })
        .collect();
    let q = ScalarUDF::new_from_impl(SketchQuantile {
        signature: Signature::one_of(
            vec![TypeSignature::Exact(vec![
                DataType::Binary,
                DataType::Float64,
            ])],
            Volatility::Immutable,
        ),
    });
    (aggs, q)
}

/// The `metrics_<res>` table: the rollup of hot samples (`hot`, raw `metrics` rows)
/// and the cold rollup files (`cold`), partials merged per series and window; and the
/// same rows unmerged (several partial rows per series and window), for aggregations
/// that merge them anyway.
pub(crate) fn rollup_view(
    hot: DataFrame,
    cold: Option<DataFrame>,
    secs: u32,
) -> DfResult<(DataFrame, DataFrame)> {
    let (aggs, _) = functions();
    let (sketch, merge) = (&aggs[0], &aggs[1]);
    use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
    let stride = lit(ScalarValue::new_interval_mdn(
        0,
        0,
        secs as i64 * 1_000_000_000,
    ));
    let origin = lit(ScalarValue::TimestampMillisecond(
        Some(0),
        Some("UTC".into()),
    ));
    let ts_type = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let window = cast(
        datafusion::functions::expr_fn::date_bin(stride, ident("ts"), origin),
        ts_type,
    );
    let hot = hot.aggregate(
        vec![
            window.alias("ts"),
            ident("name"),
            ident("labels"),
            ident("series"),
        ],
        vec![
            count(ident("value")).alias("count"),
            sum(ident("value")).alias("sum"),
            min(ident("value")).alias("min"),
            max(ident("value")).alias("max"),
            sketch.call(vec![ident("value")]).alias("sketch"),
        ],
    )?;
    let all = match cold {
        Some(c) => hot.union(c)?,
        // The rollup of hot samples has one row per series and window already.
        None => return Ok((hot.clone(), hot)),
    };
    let keys: Vec<Expr> = ["ts", "name", "labels", "series"]
        .into_iter()
        .map(ident)
        .collect();
    let merged = all.clone().aggregate(
        keys,
        vec![
            sum(ident("count")).alias("count"),
            sum(ident("sum")).alias("sum"),
            min(ident("min")).alias("min"),
            max(ident("max")).alias("max"),
            merge.call(vec![ident("sketch")]).alias("sketch"),
        ],
    )?;
    Ok((merged, all))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::test_util::{commit_samples as commit, rows};
    use crate::HotStore;

    /// Rollups of samples spread over flushes and the hot tier merge into one exact row
    /// per series and window; quantiles come from merged sketches.
    #[tokio::test]
    async fn rollups_merge_across_flushes_and_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_cold(dir.path());
        // 3 minutes of samples for two hosts, 1..=1000 ms latencies, in three parts:
        // two flushed (separately) and one still hot.
        let all: Vec<(i64, f64, &str)> = (0..3000)
            .map(|i| {
                (
                    i * 60,
                    (i % 1000 + 1) as f64,
                    if i % 2 == 0 { "a" } else { "b" },
                )
            })
            .collect();
        let hot_only = HotStore::open(&dir.path().join("hot.redb"), usize::MAX).unwrap();
        commit(&hot_only, 0, &all);
        assert_eq!(
            rows(&hot_only, "SELECT sum(count) FROM metrics_1m").await,
            vec![json!([3000])],
            "without a cold tier, rollups come from the hot samples"
        );
        for (k, part) in all.chunks(1000).enumerate() {
            commit(&s, k as u64, part);
            if k < 2 {
                s.flush_cold(Duration::ZERO).await.unwrap();
            }
        }
        // Two series have a row for the hour (from two files and the hot tier).
        assert_eq!(
            rows(&s, "SELECT count(*) FROM metrics_1h WHERE count > 0").await,
            vec![json!([2])]
        );
        let one_minute = rows(
            &s,
            "SELECT series, ts, count, sum, min, max FROM metrics_1m ORDER BY series, ts",
        )
        .await;
        assert_eq!(one_minute.len(), 6, "{one_minute:?}");
        let hour = rows(
            &s,
            "SELECT series, count, sum, min, max, sketch_quantile(sketch, 0.5) FROM metrics_1h ORDER BY series",
        )
        .await;
        let exact = |host: &str| {
            let v: Vec<f64> = all.iter().filter(|x| x.2 == host).map(|x| x.1).collect();
            (v.len() as i64, v.iter().sum::<f64>())
        };
        for (row, host) in hour.iter().zip(["a", "b"]) {
            let (n, sum) = exact(host);
            assert_eq!(row[1], json!(n));
            assert_eq!(row[2].as_f64().unwrap(), sum);
            let median = row[5].as_f64().unwrap();
            assert!((median - 500.0).abs() <= 500.0 * 0.02, "{median}");
        }
        // The same answer from the raw samples.
        let raw = rows(&s, "SELECT count(*), sum(value) FROM metrics").await;
        assert_eq!(raw[0][0], json!(3000));
        let merged = rows(
            &s,
            "SELECT sum(count), sketch_quantile(sketch_merge(sketch), 0.99) FROM metrics_1m",
        )
        .await;
        assert_eq!(merged[0][0], json!(3000));
        let p99 = merged[0][1].as_f64().unwrap();
        assert!((p99 - 990.0).abs() <= 990.0 * 0.02, "{p99}");
    }

    /// Compaction merges the partial rows several flushes wrote for one series and
    /// window into one; every rollup answer stays the same.
    #[tokio::test]
    async fn compaction_merges_partial_rollup_rows() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_compacting(dir.path(), 2);
        // Four flushes within one hour, two hosts.
        let t0 = 1_894_694_400_000;
        for part in 0..4u64 {
            let samples: Vec<(i64, f64, &str)> = (0..500)
                .map(|i| {
                    let k = part as i64 * 500 + i;
                    (
                        t0 + k * 1000,
                        (k % 251) as f64,
                        if k % 2 == 0 { "a" } else { "b" },
                    )
                })
                .collect();
            commit(&s, part, &samples);
            s.flush_cold(Duration::ZERO).await.unwrap();
        }
        let hour_rows = |s: &HotStore| -> Vec<u64> {
            s.tiers("t", crate::Table::Rollup(3600))
                .1
                .iter()
                .map(|(_, f)| f.rows)
                .collect()
        };
        assert_eq!(
            hour_rows(&s),
            vec![2, 2, 2, 2],
            "a partial row per flush and host"
        );
        let sql = "SELECT series, count(*), sum(count), sum(sum), min(min), max(max), \
                   sketch_quantile(sketch_merge(sketch), 0.9) FROM metrics_1h GROUP BY series ORDER BY series";
        let minute = "SELECT count(*), sum(count), sum(sum) FROM metrics_1m";
        let (before, before_1m) = (rows(&s, sql).await, rows(&s, minute).await);
        s.janitor_pass(crate::query::now_ms()).await.unwrap();
        assert_eq!(hour_rows(&s), vec![2], "one row per host and hour");
        assert_eq!(rows(&s, sql).await, before);
        assert_eq!(rows(&s, minute).await, before_1m);
        let minute_rows: u64 = s
            .tiers("t", crate::Table::Rollup(60))
            .1
            .iter()
            .map(|(_, f)| f.rows)
            .sum();
        assert_eq!(minute_rows, 2 * 34, "34 minutes, two hosts");
    }

    /// Rollups outlive raw samples: each has its own retention.
    #[tokio::test]
    async fn rollups_have_their_own_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_cold(dir.path());
        let now = crate::query::now_ms();
        let day = 86_400_000;
        commit(
            &s,
            0,
            &[(now - 10 * day, 1.0, "a"), (now - 10 * day + 1, 3.0, "a")],
        );
        s.flush_cold(Duration::ZERO).await.unwrap();
        let doc =
            |v: Value| serde_json::from_value::<weir_core::retention::RetentionDoc>(v).unwrap();
        s.set_retention("t", Some(&doc(json!({"cold": "3d", "rollups": "30d"}))))
            .unwrap();
        assert_eq!(
            rows(&s, "SELECT count(*) FROM metrics").await,
            vec![json!([0])]
        );
        assert_eq!(
            rows(&s, "SELECT sum(count), max(max) FROM metrics_1h").await,
            vec![json!([2, 3.0])]
        );
        let stats = s.janitor_pass(now).await.unwrap();
        assert_eq!(stats.expired_rows, 2, "the raw samples");
        assert_eq!(
            rows(&s, "SELECT sum(count) FROM metrics_1m").await,
            vec![json!([2])]
        );
        s.set_retention("t", Some(&doc(json!({"cold": "3d", "rollups": "5d"}))))
            .unwrap();
        assert_eq!(
            rows(&s, "SELECT count(*) FROM metrics_1h").await,
            vec![json!([0])]
        );
        s.janitor_pass(now).await.unwrap();
        for t in [
            crate::Table::Metrics,
            crate::Table::Rollup(60),
            crate::Table::Rollup(3600),
        ] {
            assert!(s.tiers("t", t).1.is_empty(), "{t:?} files deleted");
        }
    }
}
