//! Metric samples: `POST /api/v1/metrics` bodies, checked and normalised one by one.
//!
//! A sample is `{"name","value","ts"?,"labels"?,"kind"?}`: `name` matches
//! `[A-Za-z_:][A-Za-z0-9_:.]*` (at most 200 characters); `value` is a finite number;
//! `ts` is RFC 3339 text or epoch seconds, milliseconds or nanoseconds (default: the
//! time the request was accepted); `labels` maps names matching `[A-Za-z_][A-Za-z0-9_]*`
//! to strings (at most 64); `kind` is `counter`, `gauge` or `histogram`. Anything else,
//! including unknown fields, rejects that sample with its line number and the reason.
//! Kept samples are rewritten as `{"name","value","ts":MILLIS,"labels":{sorted},"kind"?}`
//! so that a series (name + sorted labels) has one spelling.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ingest::Parsed;
use crate::series::{Admit, TenantSeries, OVERFLOW_LABEL};

/// Labels per sample, at most.
pub const MAX_LABELS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Value,
    value: Value,
    #[serde(default)]
    ts: Option<Value>,
    #[serde(default)]
    labels: Option<Value>,
    #[serde(default)]
    kind: Option<Value>,
}

#[derive(Serialize)]
struct Sample<'a> {
    name: &'a str,
    value: f64,
    ts: i64,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
}

fn valid_name(s: &str, extra: &[u8]) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_' || (extra.contains(&b':') && b[0] == b':'))
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || extra.contains(c))
}

/// Epoch milliseconds of a timestamp: RFC 3339 text, or a number of seconds,
/// milliseconds or nanoseconds (told apart by magnitude).
fn millis(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0);
            let f = f.ok_or("ts must be a non-negative number or RFC 3339 text")?;
            Ok(if f < 1e10 {
                (f * 1000.0) as i64
            } else if f < 1e14 {
                f as i64
            } else {
                (f / 1e6) as i64
            })
        }
        Value::String(s) => {
            weir_store::rows::rfc3339_millis(s).ok_or_else(|| format!("ts {s:?} is not RFC 3339"))
        }
        _ => Err("ts must be a number or RFC 3339 text".into()),
    }
}

/// Check one sample, rewrite its labels by the tenant's policy and admit its series;
/// its normalised JSON line, or why not.
fn normalise(line: &[u8], now_ms: i64, series: &TenantSeries) -> Result<String, String> {
    let raw: Raw = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let name = raw.name.as_str().ok_or("name must be a string")?;
    if name.len() > 200 || !valid_name(name, b":.") {
        return Err(format!(
            "name {name:?} must match [A-Za-z_:][A-Za-z0-9_:.]* (200 characters at most)"
        ));
    }
    let value = raw
        .value
        .as_f64()
        .filter(|v| v.is_finite())
        .ok_or("value must be a finite number")?;
    let ts = match &raw.ts {
        None | Some(Value::Null) => now_ms,
        Some(v) => millis(v)?,
    };
    let mut labels = BTreeMap::new();
    match &raw.labels {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            if m.len() > MAX_LABELS {
                return Err(format!("{} labels, more than {MAX_LABELS}", m.len()));
            }
            for (k, v) in m {
                if !valid_name(k, b"") {
                    return Err(format!(
                        "label name {k:?} must match [A-Za-z_][A-Za-z0-9_]*"
                    ));
                }
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("label {k:?} must have a string value"))?;
                labels.insert(k.clone(), v.to_owned());
            }
        }
        Some(_) => return Err("labels must be an object of strings".into()),
    }
    let kind = match &raw.kind {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if matches!(k.as_str(), "counter" | "gauge" | "histogram") => {
            Some(k.as_str())
        }
        Some(k) => return Err(format!("kind {k} must be counter, gauge or histogram")),
    };
    series.rewrite_labels(&mut labels);
    match series.admit(name, &labels) {
        Admit::Yes => {}
        Admit::Overflow => {
            labels.clear();
            labels.insert(OVERFLOW_LABEL.to_owned(), "true".to_owned());
        }
        Admit::Refuse(why) => return Err(why),
    }
    let sample = Sample {
        name,
        value,
        ts,
        labels,
        kind,
    };
    serde_json::to_string(&sample).map_err(|e| e.to_string())
}

/// Keep the valid samples of `parsed` (normalised), rejecting the others one by one.
pub fn check(parsed: Parsed, now_ms: i64, series: &TenantSeries) -> Parsed {
    let mut out = Parsed {
        records: Vec::with_capacity(parsed.records.len()),
        rejected: parsed.rejected,
        errors: parsed.errors,
        ..Default::default()
    };
    let lines = weir_core::batch::ndjson_lines(&parsed.records);
    for (line, n) in lines.zip(parsed.line_numbers) {
        match normalise(line, now_ms, series) {
            Ok(s) => {
                out.records.extend_from_slice(s.as_bytes());
                out.records.push(b'\n');
                out.count += 1;
                out.line_numbers.push(n);
            }
            Err(why) => out.reject(n, why),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_normalised_or_rejected_with_the_reason() {
        let body = br#"{"name":"http_requests_total","value":3,"labels":{"status":"200","method":"GET"},"kind":"counter","ts":1795827723}
{"name":"cpu","value":0.5}
{"name":"bad name","value":1}
{"name":"x","value":"1"}
{"name":"x","value":1,"labels":{"a":1}}
{"name":"x","value":1,"vaule":2}
{"name":"x","value":1,"kind":"summary"}
{"name":"x","value":1,"ts":"2026-11-28T01:02:03Z"}
not json
"#;
        let parsed = crate::ingest::parse_body(body, 1 << 20);
        let series = crate::series::SeriesLimits::new(&weir_core::metrics::Registry::default());
        let p = check(parsed, 42, &series.tenant("t", &Default::default()));
        let lines: Vec<&str> = std::str::from_utf8(&p.records).unwrap().lines().collect();
        assert_eq!(
            lines,
            vec![
                r#"{"name":"http_requests_total","value":3.0,"ts":1795827723000,"labels":{"method":"GET","status":"200"},"kind":"counter"}"#,
                r#"{"name":"cpu","value":0.5,"ts":42,"labels":{}}"#,
                r#"{"name":"x","value":1.0,"ts":1795827723000,"labels":{}}"#,
            ]
        );
        let why: Vec<(usize, &str)> = p
            .errors
            .iter()
            .map(|e| (e.line, e.reason.as_str()))
            .collect();
        assert_eq!(p.rejected, 6, "{why:?}");
        assert_eq!(
            why.iter().map(|w| w.0).collect::<Vec<_>>(),
            vec![9, 3, 4, 5, 6, 7]
        );
        assert!(why[1].1.contains("name"), "{why:?}");
        assert!(why[2].1.contains("finite number"));
        assert!(why[3].1.contains("string value"));
        assert!(why[4].1.contains("vaule"));
        assert!(why[5].1.contains("counter, gauge or histogram"));
    }
}
