//! Processed NDJSON → Arrow rows of the `logs` table.
//!
//! Columns: `ts` (the record's own `timestamp`/`@timestamp`/`ts`/`time` — RFC 3339 text or
//! epoch seconds/milliseconds — else the ingest time), `stream`, `level`, `message`, the
//! full `record` as JSON text (query it with `json_get_str(record, 'user', 'id')` and
//! friends), and its provenance: `partition`, `offset` (first offset of the source
//! entry), `seq` (index in the entry's processed output); `schema` is the record's
//! schema version (its `_schema` field, 1 when absent; see the migration world).

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use weir_core::batch::ndjson_lines;

/// Epoch milliseconds of RFC 3339 text (what `ts` columns accept as text).
pub fn rfc3339_millis(s: &str) -> Option<i64> {
    string_to_timestamp_nanos(s).ok().map(|ns| ns / 1_000_000)
}

/// Schema of the `logs` table.
pub fn logs_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("stream", DataType::Utf8, false),
            Field::new("level", DataType::Utf8, true),
            Field::new("message", DataType::Utf8, true),
            Field::new("record", DataType::Utf8, false),
            Field::new("partition", DataType::UInt32, false),
            Field::new("offset", DataType::UInt64, false),
            Field::new("seq", DataType::UInt32, false),
            Field::new("schema", DataType::UInt32, false),
            Field::new("trace_id", DataType::Utf8, true),
        ]))
    })
    .clone()
}

#[derive(Deserialize)]
struct Known<'a> {
    #[serde(default, borrow)]
    timestamp: Option<TimeValue<'a>>,
    #[serde(default, borrow, rename = "@timestamp")]
    at_timestamp: Option<TimeValue<'a>>,
    #[serde(default, borrow)]
    ts: Option<TimeValue<'a>>,
    #[serde(default, borrow)]
    time: Option<TimeValue<'a>>,
    #[serde(default, borrow)]
    level: Option<Text<'a>>,
    #[serde(default, borrow)]
    severity: Option<Text<'a>>,
    #[serde(default, borrow)]
    message: Option<Text<'a>>,
    #[serde(default, borrow)]
    msg: Option<Text<'a>>,
    #[serde(default, borrow)]
    trace_id: Option<Text<'a>>,
    #[serde(default, rename = "_schema")]
    schema: Option<SchemaValue>,
}

/// A well-known text field: a string, or anything else (then the column is null; the
/// line is still a valid record).
#[derive(Deserialize)]
#[serde(untagged)]
enum Text<'a> {
    #[serde(borrow)]
    Str(Cow<'a, str>),
    #[allow(dead_code)]
    Other(serde::de::IgnoredAny),
}

fn text<'b>(t: &'b Option<Text<'_>>) -> Option<&'b str> {
    match t {
        Some(Text::Str(s)) => Some(s),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SchemaValue {
    Version(u32),
    #[allow(dead_code)]
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TimeValue<'a> {
    Num(f64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
    #[allow(dead_code)]
    Other(serde::de::IgnoredAny),
}

fn to_millis(t: &TimeValue) -> Option<i64> {
    match t {
        // Heuristic by magnitude: seconds before ~2286, else milliseconds, else nanos.
        TimeValue::Num(n) if n.is_finite() && *n >= 0.0 => Some(if *n < 1e10 {
            (n * 1000.0) as i64
        } else if *n < 1e14 {
            *n as i64
        } else {
            (n / 1e6) as i64
        }),
        TimeValue::Text(s) => string_to_timestamp_nanos(s)
            .ok()
            .map(|ns| ns.div_euclid(1_000_000)),
        _ => None,
    }
}

/// A line that is not a JSON object: 1-based line number and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLine {
    pub line: usize,
    pub reason: String,
}

/// Build the Arrow rows of one processed segment, checking that every line is a JSON
/// object (the same parse extracts the well-known fields).
pub fn segment_rows(
    stream: &str,
    partition: u32,
    offset: u64,
    ingest_ts_ms: i64,
    ndjson: &[u8],
) -> Result<RecordBatch, InvalidLine> {
    let n = ndjson_lines(ndjson).count();
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut streams = StringBuilder::with_capacity(n, n * stream.len());
    let mut level = StringBuilder::with_capacity(n, n * 5);
    let mut message = StringBuilder::with_capacity(n, ndjson.len() / 2);
    let mut record = StringBuilder::with_capacity(n, ndjson.len());
    let mut part = UInt32Builder::with_capacity(n);
    let mut offs = UInt64Builder::with_capacity(n);
    let mut seq = UInt32Builder::with_capacity(n);
    let mut schema = UInt32Builder::with_capacity(n);
    let mut trace_id = StringBuilder::with_capacity(n, 0);
    for (i, line) in ndjson_lines(ndjson).enumerate() {
        let invalid = |reason: String| InvalidLine {
            line: i + 1,
            reason,
        };
        if line.first() != Some(&b'{') {
            return Err(invalid("not a JSON object".into()));
        }
        let known: Known = serde_json::from_slice(line).map_err(|e| invalid(e.to_string()))?;
        let record_text = std::str::from_utf8(line).map_err(|e| invalid(e.to_string()))?;
        let known = Some(known);
        let t = known.as_ref().and_then(|k| {
            [&k.timestamp, &k.at_timestamp, &k.ts, &k.time]
                .into_iter()
                .flatten()
                .find_map(to_millis)
        });
        ts.append_value(t.unwrap_or(ingest_ts_ms));
        streams.append_value(stream);
        level.append_option(
            known
                .as_ref()
                .and_then(|k| text(&k.level).or(text(&k.severity))),
        );
        message.append_option(
            known
                .as_ref()
                .and_then(|k| text(&k.message).or(text(&k.msg))),
        );
        trace_id.append_option(known.as_ref().and_then(|k| text(&k.trace_id)));
        record.append_value(record_text);
        part.append_value(partition);
        offs.append_value(offset);
        seq.append_value(i as u32);
        schema.append_value(match known.as_ref().and_then(|k| k.schema.as_ref()) {
            Some(SchemaValue::Version(v)) if *v >= 1 => *v,
            _ => 1,
        });
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(ts.finish()),
        Arc::new(streams.finish()),
        Arc::new(level.finish()),
        Arc::new(message.finish()),
        Arc::new(record.finish()),
        Arc::new(part.finish()),
        Arc::new(offs.finish()),
        Arc::new(seq.finish()),
        Arc::new(schema.finish()),
        Arc::new(trace_id.finish()),
    ];
    Ok(RecordBatch::try_new(logs_schema(), cols).expect("columns match the logs schema"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::TimestampMillisecondType;

    #[test]
    fn extracts_known_fields_and_times() {
        let nd = br#"{"timestamp":"2026-11-28T01:02:03.456Z","level":"warn","message":"m1"}
{"ts":1795827723,"severity":"error","msg":"m2"}
{"time":1795827723456}
{"timestamp":"not a time","message":"esc\"aped","_schema":3}
"#;
        let b = segment_rows("app", 3, 40, 99, nd).unwrap();
        assert_eq!(b.num_rows(), 4);
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(0), 1795827723456);
        assert_eq!(ts.value(1), 1795827723000);
        assert_eq!(ts.value(2), 1795827723456);
        assert_eq!(
            ts.value(3),
            99,
            "unparseable time falls back to ingest time"
        );
        let level = b.column(2).as_string::<i32>();
        assert_eq!(level.value(0), "warn");
        assert_eq!(level.value(1), "error");
        assert!(level.is_null(2));
        let msg = b.column(3).as_string::<i32>();
        assert_eq!(msg.value(1), "m2");
        assert_eq!(msg.value(3), "esc\"aped");
        let seq = b
            .column(7)
            .as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        assert_eq!(seq.value(3), 3);
        let schema = b
            .column(8)
            .as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        assert_eq!((schema.value(0), schema.value(3)), (1, 3));
    }
}
