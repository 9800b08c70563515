//! OTLP values as Weir sees them: `AnyValue` → JSON, attribute lists → objects,
//! attribute keys → label names, metric names → Weir metric names.

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use serde_json::{Map, Value};

/// JSON of an OTLP value: strings, booleans and integers as themselves, doubles as
/// numbers (non-finite ones as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, which
/// JSON cannot hold), arrays and key-value lists as arrays and objects, bytes as
/// base64 text. Nesting deeper than the record rules allow is left to them: the record
/// is refused with the reason (the decoder itself bounds protobuf nesting at 100).
pub fn json_of(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(Any::StringValue(s)) => Value::String(s.clone()),
        Some(Any::BoolValue(b)) => Value::Bool(*b),
        Some(Any::IntValue(i)) => Value::from(*i),
        Some(Any::DoubleValue(d)) => double(*d),
        Some(Any::ArrayValue(a)) => Value::Array(a.values.iter().map(json_of).collect()),
        Some(Any::KvlistValue(kv)) => Value::Object(object_of(&kv.values)),
        Some(Any::BytesValue(b)) => Value::String(base64(b)),
        // A profiles-only reference into a dictionary this signal does not have.
        Some(Any::StringValueStrindex(_)) => Value::Null,
    }
}

/// Write `v` as JSON into `out`, exactly as [`json_of`] would render it (objects keep
/// their attribute order), without building a value tree.
pub fn write_any(out: &mut Vec<u8>, v: &AnyValue) {
    match &v.value {
        None | Some(Any::StringValueStrindex(_)) => out.extend_from_slice(b"null"),
        Some(Any::StringValue(s)) => write_str(out, s),
        Some(Any::BoolValue(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Some(Any::IntValue(i)) => {
            let _ = serde_json::to_writer(&mut *out, i);
        }
        Some(Any::DoubleValue(d)) => {
            let _ = serde_json::to_writer(&mut *out, &double(*d));
        }
        Some(Any::ArrayValue(a)) => {
            out.push(b'[');
            for (i, item) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_any(out, item);
            }
            out.push(b']');
        }
        Some(Any::KvlistValue(kv)) => write_object(out, &kv.values),
        Some(Any::BytesValue(b)) => write_str(out, &base64(b)),
    }
}

/// A JSON string (escaped by serde_json).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// An attribute list as a JSON object. Keys are unique in OTLP, but a list that repeats
/// one is written through [`object_of`] (its last value wins), so the record rules never
/// see a duplicate key.
pub fn write_object(out: &mut Vec<u8>, attrs: &[KeyValue]) {
    if has_duplicate_keys(attrs) {
        let _ = serde_json::to_writer(&mut *out, &object_of(attrs));
        return;
    }
    out.push(b'{');
    for (i, kv) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, &kv.key);
        out.push(b':');
        match &kv.value {
            Some(v) => write_any(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

fn has_duplicate_keys(attrs: &[KeyValue]) -> bool {
    if attrs.len() <= 16 {
        return attrs
            .iter()
            .enumerate()
            .any(|(i, a)| attrs[..i].iter().any(|b| b.key == a.key));
    }
    let mut seen = std::collections::HashSet::with_capacity(attrs.len());
    !attrs.iter().all(|kv| seen.insert(kv.key.as_str()))
}

/// A double as JSON: finite ones as numbers, the others as text.
pub fn double(d: f64) -> Value {
    match serde_json::Number::from_f64(d) {
        Some(n) => Value::Number(n),
        None if d.is_nan() => Value::String("NaN".into()),
        None if d > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// An attribute list as a JSON object (a repeated key keeps its last value, as the
/// OTLP specification leaves it to the receiver).
pub fn object_of(attrs: &[KeyValue]) -> Map<String, Value> {
    attrs
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map_or(Value::Null, json_of),
            )
        })
        .collect()
}

/// The string value of attribute `key`, if it is a non-empty string.
pub fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().rev().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Any::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        }
    })
}

/// Text of an attribute value for a label: strings as themselves, other scalars as
/// their JSON text, arrays and lists as compact JSON.
pub fn label_value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        None => String::new(),
        Some(_) => match v.map(json_of) {
            Some(Value::String(s)) => s,
            Some(j) => j.to_string(),
            None => String::new(),
        },
    }
}

/// A Weir label name for an attribute key, as Prometheus's OTLP translation does:
/// every character outside `[A-Za-z0-9_]` becomes `_`, and a name that starts with a
/// digit gets a `key_` prefix. (Names that start with `_` stay reserved: the sample rules
/// refuse them.)
pub fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    }
    out
}

/// A Weir metric name for an OTLP one: every character outside `[A-Za-z0-9_:.]`
/// becomes `_` (OTLP allows `/` and `-`), and a leading digit gets a `_` prefix.
pub fn metric_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        out.insert(0, '_');
    }
    out
}

/// A stream name for a `service.name`: characters outside `[A-Za-z0-9_.-]` become `_`,
/// at most 64 characters; None when that leaves no valid, unreserved stream name.
pub fn stream_name(service: &str) -> Option<String> {
    let out: String = service
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    (weir_core::names::is_valid_name(&out) && !weir_core::names::is_reserved_stream(&out))
        .then_some(out)
}

/// Lowercase hex of an id (trace and span ids); None for an empty id.
pub fn hex_id(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    Some(s)
}

/// Standard base64 with padding (OTLP/JSON's encoding of bytes).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = match chunk.len() {
            3 => u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]),
            2 => u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8,
            _ => u32::from(chunk[0]) << 16,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn s(v: &str) -> AnyValue {
        AnyValue {
            value: Some(Any::StringValue(v.into())),
        }
    }

    #[test]
    fn values_become_json() {
        let list = AnyValue {
            value: Some(Any::KvlistValue(KeyValueList {
                values: vec![
                    KeyValue {
                        key: "a".into(),
                        value: Some(AnyValue {
                            value: Some(Any::IntValue(i64::MAX)),
                        }),
                        ..Default::default()
                    },
                    KeyValue {
                        key: "b".into(),
                        value: Some(AnyValue {
                            value: Some(Any::ArrayValue(ArrayValue {
                                values: vec![
                                    s("x"),
                                    AnyValue {
                                        value: Some(Any::DoubleValue(f64::NAN)),
                                    },
                                    AnyValue {
                                        value: Some(Any::BytesValue(b"hi!?".to_vec())),
                                    },
                                ],
                            })),
                        }),
                        ..Default::default()
                    },
                    KeyValue {
                        key: "a".into(),
                        value: Some(AnyValue {
                            value: Some(Any::BoolValue(true)),
                        }),
                        ..Default::default()
                    },
                ],
            })),
        };
        assert_eq!(
            json_of(&list).to_string(),
            r#"{"a":true,"b":["x","NaN","aGkhPw=="]}"#
        );
        assert_eq!(
            json_of(&AnyValue {
                value: Some(Any::IntValue(i64::MIN))
            }),
            Value::from(i64::MIN)
        );
        assert_eq!(double(f64::NEG_INFINITY), Value::String("-Infinity".into()));
        assert_eq!(double(1.5), serde_json::json!(1.5));
    }

    #[test]
    fn written_json_is_what_json_of_renders() {
        let kv = |k: &str, v: Any| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let nested = AnyValue {
            value: Some(Any::KvlistValue(KeyValueList {
                values: vec![
                    kv("s", Any::StringValue("a\"b\n\u{1}é".into())),
                    kv("i", Any::IntValue(-7)),
                    kv("d", Any::DoubleValue(f64::INFINITY)),
                    kv("b", Any::BytesValue(vec![0xff, 0])),
                    kv(
                        "a",
                        Any::ArrayValue(ArrayValue {
                            values: vec![s("x"), AnyValue { value: None }],
                        }),
                    ),
                ],
            })),
        };
        let mut out = Vec::new();
        write_any(&mut out, &nested);
        let back: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, json_of(&nested));
        // A repeated key: the last value, once.
        let dup = vec![kv("k", Any::IntValue(1)), kv("k", Any::IntValue(2))];
        let mut out = Vec::new();
        write_object(&mut out, &dup);
        assert_eq!(out, br#"{"k":2}"#);
        let many: Vec<KeyValue> = (0..40)
            .map(|i| kv(&format!("k{}", i % 39), Any::IntValue(i)))
            .collect();
        let mut out = Vec::new();
        write_object(&mut out, &many);
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["k0"], 39);
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(label_name("http.request.method"), "http_request_method");
        assert_eq!(label_name("9lives"), "key_9lives");
        assert_eq!(
            metric_name("http.server/duration-ms"),
            "http.server_duration_ms"
        );
        assert_eq!(metric_name("1x"), "_1x");
        assert_eq!(
            stream_name("checkout service"),
            Some("checkout_service".into())
        );
        assert_eq!(stream_name("_internal"), None);
        assert_eq!(stream_name(""), None);
        assert_eq!(stream_name(&"a".repeat(100)).map(|s| s.len()), Some(64));
        assert_eq!(hex_id(&[0, 0xab, 0x10]), Some("00ab10".into()));
        assert_eq!(hex_id(&[]), None);
    }

    #[test]
    fn attributes_are_read_by_key() {
        let attrs = vec![
            KeyValue {
                key: "service.name".into(),
                value: Some(s("checkout")),
                ..Default::default()
            },
            KeyValue {
                key: "n".into(),
                value: Some(AnyValue {
                    value: Some(Any::IntValue(3)),
                }),
                ..Default::default()
            },
        ];
        assert_eq!(string_attr(&attrs, "service.name"), Some("checkout"));
        assert_eq!(string_attr(&attrs, "n"), None);
        assert_eq!(label_value(attrs[1].value.as_ref()), "3");
        assert_eq!(label_value(None), "");
    }
}
