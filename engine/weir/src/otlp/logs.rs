//! OTLP log records → `logs` records (NDJSON), grouped by stream.
//!
//! One `LogRecord` becomes one record:
//!
//! | field            | from                                                          |
//! |------------------|---------------------------------------------------------------|
//! | `ts`             | `time_unix_nano`, else `observed_time_unix_nano` (RFC 3339, ns); absent when both are 0 (the row gets its ingest time) |
//! | `observed_ts`    | `observed_time_unix_nano` when set                            |
//! | `level`          | `severity_text`, else the short name of `severity_number` (`trace`, `debug`, `info`, `warn`, `error`, `fatal`) |
//! | `severity_number`| when not 0                                                    |
//! | `message`        | a string body                                                 |
//! | `body`           | any other body, as JSON                                       |
//! | `trace_id`, `span_id` | lowercase hex, when set                                  |
//! | `flags`          | when not 0                                                    |
//! | `event_name`     | when set                                                      |
//! | `attributes`     | the record's attributes, as an object                         |
//! | `scope`          | `{"name","version","attributes"}` of its instrumentation scope, when any is set |
//! | `resource`       | its resource's attributes, as an object                       |
//!
//! Attribute keys are kept as they are (`resource."service.name"` is
//! `json_get_str(record, 'resource', 'service.name')` in SQL).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::{Map, Value};

use super::values::{
    hex_id, object_of, stream_name, string_attr, write_any, write_object, write_str,
};

/// The stream of records whose resource names no usable `service.name`.
pub const DEFAULT_STREAM: &str = "otlp";

/// The records of a request, by stream, in the order streams first appear.
#[derive(Debug, Default)]
pub struct LogParts {
    pub parts: Vec<(String, Vec<u8>)>,
    /// The index in `parts` of each stream.
    index: std::collections::HashMap<String, usize>,
    pub records: usize,
    /// NDJSON bytes written so far.
    pub bytes: usize,
}

/// Most streams one request may name (each becomes its own log entries).
pub const MAX_STREAMS: usize = 64;

/// Why the records of a request are refused as a whole.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// They would take more than the allowed bytes (a resource's attributes are
    /// repeated in each of its records, so a small request can expand).
    TooLarge(usize),
    /// Its resources name more than [`MAX_STREAMS`] streams.
    TooManyStreams,
}

impl LogParts {
    /// Append `lr` as one record, with `tail` (`"scope":...,"resource":...`, already
    /// JSON, shared by every record of a scope) before its closing brace.
    fn push(&mut self, stream: &str, lr: &LogRecord, tail: &[u8]) {
        let i = match self.index.get(stream) {
            Some(i) => *i,
            None => {
                self.index.insert(stream.to_owned(), self.parts.len());
                self.parts.push((stream.to_owned(), Vec::new()));
                self.parts.len() - 1
            }
        };
        let buf = &mut self.parts[i].1;
        let before = buf.len();
        write_record(buf, lr, tail);
        buf.push(b'\n');
        self.bytes += buf.len() - before;
        self.records += 1;
    }
}

/// The records of `req`: to `stream` when given (the `x-weir-stream` header or gRPC
/// metadata), else to the stream named by each resource's `service.name`, else to
/// [`DEFAULT_STREAM`]. Refused once they pass `max_bytes` of NDJSON.
pub fn records(
    req: &ExportLogsServiceRequest,
    stream: Option<&str>,
    max_bytes: usize,
) -> Result<LogParts, Refused> {
    let mut out = LogParts::default();
    for rl in &req.resource_logs {
        let attrs = rl
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        // The resource and scope are written once as JSON text and spliced into each of
        // their records (no per-record copy of their attribute trees).
        let resource = (!attrs.is_empty()).then(|| {
            let mut t = b"\"resource\":".to_vec();
            let _ = serde_json::to_writer(&mut t, &object_of(attrs));
            t
        });
        let target = match stream {
            Some(s) => s.to_owned(),
            None => string_attr(attrs, "service.name")
                .and_then(stream_name)
                .unwrap_or_else(|| DEFAULT_STREAM.to_owned()),
        };
        for sl in &rl.scope_logs {
            let scope = sl.scope.as_ref().and_then(|s| {
                let mut m = Map::new();
                if !s.name.is_empty() {
                    m.insert("name".into(), Value::String(s.name.clone()));
                }
                if !s.version.is_empty() {
                    m.insert("version".into(), Value::String(s.version.clone()));
                }
                if !s.attributes.is_empty() {
                    m.insert("attributes".into(), Value::Object(object_of(&s.attributes)));
                }
                (!m.is_empty()).then_some(Value::Object(m))
            });
            let mut tail = Vec::new();
            if let Some(sc) = &scope {
                tail.extend_from_slice(b"\"scope\":");
                let _ = serde_json::to_writer(&mut tail, sc);
            }
            if let Some(r) = &resource {
                if !tail.is_empty() {
                    tail.push(b',');
                }
                tail.extend_from_slice(r);
            }
            for lr in &sl.log_records {
                out.push(&target, lr, &tail);
                if out.bytes > max_bytes {
                    return Err(Refused::TooLarge(max_bytes));
                }
                if out.parts.len() > MAX_STREAMS {
                    return Err(Refused::TooManyStreams);
                }
            }
        }
    }
    Ok(out)
}

/// The short name of a severity number (the OTLP data model's ranges).
pub fn severity_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => return None,
    })
}

/// One record as JSON, written field by field (no value tree per record): its own
/// fields, then `tail` (its scope and resource).
fn write_record(out: &mut Vec<u8>, lr: &LogRecord, tail: &[u8]) {
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &str| {
        out.extend_from_slice(if first { b"{\"" } else { b",\"" });
        first = false;
        out.extend_from_slice(k.as_bytes()); // our own keys: nothing to escape
        out.extend_from_slice(b"\":");
    };
    let time = if lr.time_unix_nano != 0 {
        lr.time_unix_nano
    } else {
        lr.observed_time_unix_nano
    };
    if time != 0 {
        key(out, "ts");
        write_str(out, &weir_core::time::rfc3339_nanos(time));
    }
    if lr.observed_time_unix_nano != 0 {
        key(out, "observed_ts");
        write_str(
            out,
            &weir_core::time::rfc3339_nanos(lr.observed_time_unix_nano),
        );
    }
    if !lr.severity_text.is_empty() {
        key(out, "level");
        write_str(out, &lr.severity_text);
    } else if let Some(name) = severity_name(lr.severity_number) {
        key(out, "level");
        write_str(out, name);
    }
    if lr.severity_number != 0 {
        key(out, "severity_number");
        let _ = serde_json::to_writer(&mut *out, &lr.severity_number);
    }
    if let Some(b) = lr.body.as_ref() {
        match &b.value {
            Some(Any::StringValue(s)) => {
                key(out, "message");
                write_str(out, s);
            }
            Some(_) => {
                key(out, "body");
                write_any(out, b);
            }
            None => {}
        }
    }
    if let Some(t) = hex_id(&lr.trace_id) {
        key(out, "trace_id");
        write_str(out, &t);
    }
    if let Some(sp) = hex_id(&lr.span_id) {
        key(out, "span_id");
        write_str(out, &sp);
    }
    if lr.flags != 0 {
        key(out, "flags");
        let _ = serde_json::to_writer(&mut *out, &lr.flags);
    }
    if !lr.event_name.is_empty() {
        key(out, "event_name");
        write_str(out, &lr.event_name);
    }
    if !lr.attributes.is_empty() {
        key(out, "attributes");
        write_object(out, &lr.attributes);
    }
    if first {
        out.push(b'{');
    } else if !tail.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(tail);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(k: &str, v: Any) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn request(service: Option<&str>, records: Vec<LogRecord>) -> ResourceLogs {
        ResourceLogs {
            resource: service.map(|s| Resource {
                attributes: vec![kv("service.name", Any::StringValue(s.into()))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "app.module".into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn lines(b: &[u8]) -> Vec<Value> {
        b.split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn a_log_record_becomes_one_record_in_the_documented_layout() {
        let lr = LogRecord {
            time_unix_nano: 1_764_432_000_123_456_789,
            observed_time_unix_nano: 1_764_432_001_000_000_000,
            severity_number: 13,
            body: Some(AnyValue {
                value: Some(Any::StringValue("disk almost full".into())),
            }),
            attributes: vec![kv("disk.free", Any::IntValue(42))],
            trace_id: vec![0x5b; 16],
            span_id: vec![0x05; 8],
            flags: 1,
            ..Default::default()
        };
        let req = ExportLogsServiceRequest {
            resource_logs: vec![request(Some("checkout"), vec![lr])],
        };
        let out = records(&req, None, usize::MAX).unwrap();
        assert_eq!(out.records, 1);
        assert_eq!(out.parts.len(), 1);
        assert_eq!(out.parts[0].0, "checkout");
        let r = &lines(&out.parts[0].1)[0];
        assert_eq!(r["ts"], "2025-11-29T16:00:00.123456789Z");
        assert_eq!(r["observed_ts"], "2025-11-29T16:00:01.000000000Z");
        assert_eq!(r["level"], "warn");
        assert_eq!(r["severity_number"], 13);
        assert_eq!(r["message"], "disk almost full");
        assert_eq!(r["trace_id"], "5b".repeat(16));
        assert_eq!(r["span_id"], "05".repeat(8));
        assert_eq!(r["flags"], 1);
        assert_eq!(r["attributes"]["disk.free"], 42);
        assert_eq!(r["scope"]["name"], "app.module");
        assert_eq!(r["resource"]["service.name"], "checkout");
    }

    #[test]
    fn structured_bodies_and_missing_times_and_streams() {
        let lr = LogRecord {
            severity_text: "Error".into(),
            body: Some(AnyValue {
                value: Some(Any::IntValue(7)),
            }),
            ..Default::default()
        };
        let req = ExportLogsServiceRequest {
            resource_logs: vec![
                request(None, vec![lr.clone()]),
                request(Some("_bad"), vec![lr.clone()]),
                request(Some("web"), vec![lr.clone(), lr]),
            ],
        };
        let out = records(&req, None, usize::MAX).unwrap();
        assert_eq!(out.records, 4);
        let streams: Vec<&str> = out.parts.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(streams, ["otlp", "web"]);
        let r = &lines(&out.parts[0].1)[0];
        assert!(r.get("ts").is_none() && r.get("message").is_none());
        assert_eq!(r["body"], 7);
        assert_eq!(r["level"], "Error");
        assert_eq!(lines(&out.parts[1].1).len(), 2);
        // An empty record still gets its scope and resource, as valid JSON.
        let empty = ExportLogsServiceRequest {
            resource_logs: vec![request(Some("web"), vec![LogRecord::default()])],
        };
        let e = records(&empty, None, usize::MAX).unwrap();
        assert_eq!(
            std::str::from_utf8(&e.parts[0].1).unwrap(),
            "{\"scope\":{\"name\":\"app.module\"},\"resource\":{\"service.name\":\"web\"}}\n"
        );
        let forced = records(&req, Some("chosen"), usize::MAX).unwrap();
        assert_eq!(
            records(&req, None, 100).unwrap_err(),
            Refused::TooLarge(100)
        );
        let crowd = ExportLogsServiceRequest {
            resource_logs: (0..=MAX_STREAMS)
                .map(|i| request(Some(&format!("svc{i}")), vec![LogRecord::default()]))
                .collect(),
        };
        assert_eq!(
            records(&crowd, None, usize::MAX).unwrap_err(),
            Refused::TooManyStreams
        );
        assert_eq!(forced.parts.len(), 1);
        assert_eq!(forced.parts[0].0, "chosen");
    }

    #[test]
    fn severity_numbers_have_short_names() {
        assert_eq!(severity_name(0), None);
        assert_eq!(severity_name(1), Some("trace"));
        assert_eq!(severity_name(12), Some("info"));
        assert_eq!(severity_name(24), Some("fatal"));
        assert_eq!(severity_name(25), None);
    }
}
