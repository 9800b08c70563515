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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};

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
