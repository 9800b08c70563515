//! Normalised metric samples → Arrow rows of the `metrics` table.
//!
//! Columns: `ts`, `name`, `value` (f64), `kind` (`counter`/`gauge`/`histogram` or
//! null), `labels` (JSON text, keys sorted: query with `json_get_str(labels, 'host')`),
//! `series` (`name{k="v",...}` with sorted labels: one spelling per series), and the
//! provenance `partition`, `offset`, `seq` as in `logs`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
    UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use weir_core::batch::ndjson_lines;

use crate::rows::InvalidLine;

/// Schema of the `metrics` table.
pub fn metrics_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
            Field::new("kind", DataType::Utf8, true),
            Field::new("labels", DataType::Utf8, false),
            Field::new("series", DataType::Utf8, false),
            Field::new("partition", DataType::UInt32, false),
            Field::new("offset", DataType::UInt64, false),
            Field::new("seq", DataType::UInt32, false),
        ]))
    })
    .clone()
}

/// A sample as ingest normalised it.
#[derive(Deserialize)]
struct Sample {
    name: String,
    value: f64,
    ts: i64,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    kind: Option<String>,
}

/// The series key: `name{k="v",...}`, labels sorted, values escaped as in Prometheus.
pub fn series_key(name: &str, labels: &BTreeMap<String, String>) -> String {
    let mut s = String::with_capacity(name.len() + 16 * labels.len());
    s.push_str(name);
    s.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

/// Rows of one entry of normalised samples.
pub fn segment_metric_rows(
    partition: u32,
    offset: u64,
    ndjson: &[u8],
) -> Result<RecordBatch, InvalidLine> {
    let n = ndjson_lines(ndjson).count();
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut name = StringBuilder::with_capacity(n, n * 16);
    let mut value = Float64Builder::with_capacity(n);
    let mut kind = StringBuilder::with_capacity(n, n * 5);
    let mut labels = StringBuilder::with_capacity(n, ndjson.len() / 2);
    let mut series = StringBuilder::with_capacity(n, ndjson.len() / 2);
    let mut part = UInt32Builder::with_capacity(n);
    let mut offs = UInt64Builder::with_capacity(n);
    let mut seq = UInt32Builder::with_capacity(n);
    for (i, line) in ndjson_lines(ndjson).enumerate() {
        let s: Sample = serde_json::from_slice(line).map_err(|e| InvalidLine {
            line: i + 1,
            reason: format!("not a normalised sample: {e}"),
        })?;
        ts.append_value(s.ts);
        value.append_value(s.value);
        kind.append_option(s.kind.as_deref());
        labels.append_value(serde_json::to_string(&s.labels).expect("strings serialise"));
        series.append_value(series_key(&s.name, &s.labels));
        name.append_value(&s.name);
        part.append_value(partition);
        offs.append_value(offset);
        seq.append_value(i as u32);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        Arc::new(name.finish()),
        Arc::new(value.finish()),
        Arc::new(kind.finish()),
        Arc::new(labels.finish()),
        Arc::new(series.finish()),
        Arc::new(part.finish()),
        Arc::new(offs.finish()),
        Arc::new(seq.finish()),
    ];
    Ok(RecordBatch::try_new(metrics_schema(), cols).expect("columns match the metrics schema"))
}

/// Most decimal places a value is kept with as a scaled integer.
pub const MAX_SCALE: u8 = 6;

/// The smallest number of decimal places `k` (up to [`MAX_SCALE`]) with which `v` is
/// exactly `m / 10^k` for an integer `m` of at most 53 bits, and that `m`.
pub fn as_decimal(v: f64) -> Option<(i64, u8)> {
    (0..=MAX_SCALE).find_map(|k| decimal_at(v, k).map(|m| (m, k)))
}

fn decimal_at(v: f64, k: u8) -> Option<i64> {
    if v == 0.0 && v.is_sign_negative() {
        return None; // -0.0 would come back as 0.0
    }
    let p = 10f64.powi(k as i32);
    let m = (v * p).round();
    (m.is_finite() && m.abs() < (1u64 << 53) as f64 && m / p == v).then_some(m as i64)
}

/// The value of a cold row from its scaled integer (the inverse of [`as_decimal`]).
pub fn from_decimal(m: i64, k: u8) -> f64 {
    m as f64 / 10f64.powi(k as i32)
}

/// The cold layout of `metrics` rows sorted by series: `value` becomes `value_int` and
/// `value_scale` (value = value_int / 10^value_scale, one scale per series run so the
/// integers delta-encode into a few bits per sample) wherever that is exact; other
/// values stay in `value` (null otherwise).
pub fn cold_metrics(rows: &RecordBatch) -> RecordBatch {
    use datafusion::arrow::array::{AsArray, Int64Builder, UInt8Builder};
    use datafusion::arrow::datatypes::Float64Type;
    let n = rows.num_rows();
    let value = rows
        .column_by_name("value")
        .expect("value column")
        .as_primitive::<Float64Type>();
    let series = rows
        .column_by_name("series")
        .expect("series column")
        .as_string::<i32>();
    let mut ints = Int64Builder::with_capacity(n);
    let mut scales = UInt8Builder::with_capacity(n);
    let mut floats = Float64Builder::with_capacity(n);
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && series.value(end) == series.value(start) {
            end += 1;
        }
        // One scale for the run: the largest any of its values needs.
        let k = (start..end)
            .filter_map(|i| as_decimal(value.value(i)).map(|(_, k)| k))
            .max()
            .unwrap_or(0);
        for i in start..end {
            let v = value.value(i);
            match decimal_at(v, k) {
                Some(m) => {
                    ints.append_value(m);
                    scales.append_value(k);
                    floats.append_null();
                }
                None => {
                    ints.append_null();
                    scales.append_null();
                    floats.append_value(v);
                }
            }
        }
        start = end;
    }
    let schema = cold_metrics_schema();
    let cols = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "value" => Arc::new(floats.finish()),
                "value_int" => Arc::new(ints.finish()),
                "value_scale" => Arc::new(scales.finish()),
                name => rows.column_by_name(name).expect("metrics column").clone(),
            }
        })
        .collect();
    RecordBatch::try_new(schema, cols).expect("columns match the cold metrics schema")
}

/// Schema of cold `metrics` files (see [`cold_metrics`]).
pub fn cold_metrics_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let mut fields: Vec<Field> = metrics_schema()
            .fields()
            .iter()
            .map(|f| {
                let f = f.as_ref().clone();
                if f.name() == "value" {
                    f.with_nullable(true)
                } else {
                    f
                }
            })
            .collect();
        fields.push(Field::new("value_int", DataType::Int64, true));
        fields.push(Field::new("value_scale", DataType::UInt8, true));
        Arc::new(Schema::new(fields))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};

    #[test]
    fn values_come_back_exactly() {
        for v in [
            0.0,
            1.0,
            -3.0,
            12.34,
            0.1,
            99.99,
            1e15,
            123456.789,
            1.0 / 3.0,
            f64::NAN,
            f64::INFINITY,
            2f64.powi(60),
            -0.0,
        ] {
            match as_decimal(v) {
                Some((m, k)) => assert_eq!(from_decimal(m, k).to_bits(), v.to_bits(), "{v}"),
                None => assert!(
                    !v.is_finite()
                        || v.fract() != 0.0
                        || v.abs() >= 2f64.powi(53)
                        || (v == 0.0 && v.is_sign_negative()),
                    "{v}"
                ),
            }
        }
        assert_eq!(as_decimal(12.34), Some((1234, 2)));
        assert_eq!(as_decimal(1.0 / 3.0), None);
        let nd = br#"{"name":"a","value":1.5,"ts":1,"labels":{}}
{"name":"a","value":2,"ts":2,"labels":{}}
{"name":"b","value":0.3333333333333333,"ts":1,"labels":{}}
{"name":"b","value":7,"ts":2,"labels":{}}
"#;
        let hot = segment_metric_rows(0, 0, nd).unwrap();
        let cold = cold_metrics(&hot);
        let ints = cold
            .column_by_name("value_int")
            .unwrap()
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let scales = cold
            .column_by_name("value_scale")
            .unwrap()
            .as_primitive::<datafusion::arrow::datatypes::UInt8Type>();
        assert_eq!((ints.value(0), scales.value(0)), (15, 1));
        assert_eq!(
            (ints.value(1), scales.value(1)),
            (20, 1),
            "one scale per series"
        );
        assert!(ints.is_null(2));
        assert_eq!((ints.value(3), scales.value(3)), (7, 0));
    }

    #[test]
    fn rows_and_series_keys() {
        let nd =
            br#"{"name":"up","value":1.0,"ts":5,"labels":{"job":"api","az":"b\"1"},"kind":"gauge"}
{"name":"up","value":0.0,"ts":6,"labels":{}}
"#;
        let b = segment_metric_rows(2, 10, nd).unwrap();
        assert_eq!(b.num_rows(), 2);
        let series = b.column(5).as_string::<i32>();
        assert_eq!(series.value(0), r#"up{az="b\"1",job="api"}"#);
        assert_eq!(series.value(1), "up{}");
        assert!(b.column(3).as_string::<i32>().is_null(1));
        assert!(segment_metric_rows(0, 0, b"{\"name\":1}\n").is_err());
    }
}
