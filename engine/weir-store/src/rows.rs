//! Processed NDJSON → Arrow rows of the `logs` table.
//!
//! Columns: `ts` (the record's own `timestamp`/`@timestamp`/`ts`/`time` — RFC 3339 text or
//! epoch seconds/milliseconds/nanoseconds in the range of [`weir_core::time`] — else the
//! ingest time), `stream`, `level`, `message`, the
//! full `record` as JSON text (query it with `json_get_str(record, 'user', 'id')` and
//! friends), and its provenance: `partition`, `offset` (first offset of the source
//! entry), `seq` (index in the entry's processed output); `schema` is the record's
//! schema version (its `_schema` field, 1 when absent; see the migration world).

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use weir_core::batch::ndjson_lines;
use weir_core::time::{event_time, TimeValue};

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
        // A time out of range (plugin output; the door refuses it) counts as absent.
        let t = known.as_ref().and_then(|k| {
            event_time([
                k.timestamp.as_ref(),
                k.at_timestamp.as_ref(),
                k.ts.as_ref(),
                k.time.as_ref(),
            ])
            .ms
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
    use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
    use datafusion::arrow::datatypes::TimestampMillisecondType;

    /// Times out of range (the door refuses them; plugin output may carry them) count as
    /// absent: the next field's time or the ingest time, never an overflow.
    #[test]
    fn times_out_of_range_count_as_absent() {
        let nd = br#"{"ts":1e300}
{"ts":-5,"time":1795827723}
{"timestamp":"1960-01-01T00:00:00Z"}
{"timestamp":"2300-01-01T00:00:00Z","ts":18446744073709551615}
{"ts":1795827723456}
"#;
        let b = segment_rows("app", 0, 0, 99, nd).unwrap();
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        let got: Vec<i64> = (0..b.num_rows()).map(|i| ts.value(i)).collect();
        assert_eq!(got, vec![99, 1_795_827_723_000, 99, 99, 1_795_827_723_456]);
    }

    /// Weir's own reading of time text agrees with Arrow's (the one it replaced) on
    /// every form Arrow reads, within the event time range.
    #[test]
    fn text_times_agree_with_arrow() {
        let arrow = |s: &str| {
            string_to_timestamp_nanos(s)
                .ok()
                .map(|ns| ns.div_euclid(1_000_000))
        };
        let mut n = 0;
        for date in [
            "1970-01-01",
            "1999-12-31",
            "2024-02-29",
            "2026-11-28",
            "2199-12-31",
        ] {
            for sep in ["T", "t", " "] {
                for time in [
                    "00:00:00",
                    "23:59:59",
                    "23:59:60",
                    "01:02:03.4",
                    "01:02:03.456",
                    "01:02:03.123456789",
                    "01:02:03.1234567891234",
                    "010203",
                    "01:02",
                    "01:02:03.",
                    "1:02:03",
                    "24:00:00",
                    "01:60:00",
                ] {
                    for zone in [
                        "", "Z", "z", "+02:00", "-0130", " +05", " -23:59", "+24:00", "Zx", " UTC",
                        "+5:00", "X",
                    ] {
                        let s = format!("{date}{sep}{time}{zone}");
                        let ours = weir_core::time::parse_text_ms(&s);
                        let theirs = arrow(&s);
                        if ours.is_some_and(weir_core::time::in_range)
                            || theirs.is_some_and(weir_core::time::in_range)
                        {
                            assert_eq!(ours, theirs, "{s}");
                            n += 1;
                        }
                    }
                }
            }
            assert_eq!(weir_core::time::parse_text_ms(date), arrow(date), "{date}");
        }
        assert!(n > 800, "{n}");
    }

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
