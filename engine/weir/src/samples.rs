//! Metric samples: `POST /api/v1/metrics` bodies, checked and normalised one by one.
//!
//! A sample is `{"name","value","ts"?,"labels"?,"kind"?}`: `name` matches
//! `[A-Za-z_:][A-Za-z0-9_:.]*` (at most 200 characters); `value` is a finite number;
//! `ts` is RFC 3339 text or epoch seconds, milliseconds or nanoseconds within the event
//! time range of [`weir_core::time`] (default: the time the request was accepted);
//! `labels` maps names matching `[A-Za-z][A-Za-z0-9_]*` to strings (at most 64; names
//! starting with `_` are reserved, see [`reserved_label`], and refused before any
//! series limit is applied); `kind` is `counter`, `gauge` or `histogram`. Anything else,
//! including unknown fields, rejects that sample with its line number and the reason.
//! Kept samples are rewritten as `{"name","value","ts":MILLIS,"labels":{sorted},"kind"?}`
//! so that a series (name + sorted labels) has one spelling.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_core::time::TimeValue;

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

/// Epoch milliseconds of a sample's `ts`: the reading and range of every event time
/// ([`weir_core::time`]).
fn millis(v: &Value) -> Result<i64, String> {
    let t = match v {
        Value::Number(n) => TimeValue::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => TimeValue::Text(s.as_str().into()),
        _ => TimeValue::Other,
    };
    weir_core::time::sample_time(&t).map_err(|e| e.to_string())
}

/// Whether a label name is Weir's own: names starting with `_` (`_overflow`, and
/// Prometheus' `__`-prefixed ones) are reserved.
pub fn reserved_label(name: &str) -> bool {
    name.starts_with('_')
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
                if reserved_label(k) {
                    return Err(format!(
                        "label name {k:?} is reserved: names starting with '_' are Weir's own (e.g. {OVERFLOW_LABEL})"
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

    #[test]
    fn reserved_labels_and_times_out_of_range_are_refused() {
        let body = br#"{"name":"m","value":1,"labels":{"_overflow":"true"}}
{"name":"m","value":1,"labels":{"__name__":"x"}}
{"name":"m","value":1,"ts":1e300}
{"name":"m","value":1,"ts":-1}
{"name":"m","value":1,"ts":"2300-01-01T00:00:00Z"}
{"name":"m","value":1,"ts":"soon"}
{"name":"m","value":1,"labels":{"a_b":"c"},"ts":"2026-11-28T01:02:03Z"}
"#;
        let parsed = crate::ingest::parse_body(body, 1 << 20);
        let reg = weir_core::metrics::Registry::default();
        let series = crate::series::SeriesLimits::new(&reg);
        let policy = weir_core::config::SeriesPolicy {
            max_series: 1,
            ..Default::default()
        };
        let p = check(parsed, 42, &series.tenant("t", &policy));
        assert_eq!(
            std::str::from_utf8(&p.records).unwrap(),
            "{\"name\":\"m\",\"value\":1.0,\"ts\":1795827723000,\"labels\":{\"a_b\":\"c\"}}\n"
        );
        let why: Vec<(usize, &str)> = p
            .errors
            .iter()
            .map(|e| (e.line, e.reason.as_str()))
            .collect();
        // The door refuses the numbers out of range; the checker the rest.
        assert_eq!(
            why.iter().map(|w| w.0).collect::<Vec<_>>(),
            vec![3, 4, 5, 1, 2, 6],
            "{why:?}"
        );
        assert!(
            why[0].1.contains("outside the accepted time range"),
            "{why:?}"
        );
        assert!(why[3].1.contains("\"_overflow\" is reserved"), "{why:?}");
        assert!(why[4].1.contains("\"__name__\" is reserved"), "{why:?}");
        assert!(why[5].1.contains("RFC 3339"), "{why:?}");
        assert!(
            !reg.render().contains("weir_series_limited_total{"),
            "refused before the series limit"
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::json;

        fn label_name() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z][a-z0-9_]{0,6}",
                Just("_overflow".to_owned()),
                Just("__name__".to_owned()),
                "[_A-Za-z0-9 .-]{0,4}",
            ]
        }

        fn sample() -> impl Strategy<Value = serde_json::Value> {
            let name = prop_oneof!["[a-z_:][a-z0-9_:.]{0,10}", any::<String>()];
            let value = prop_oneof![
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| json!(f)),
                any::<i64>().prop_map(|i| json!(i)),
                any::<u64>().prop_map(|i| json!(i)),
                ".{0,3}".prop_map(|s| json!(s)),
            ];
            let ts = prop_oneof![
                Just(serde_json::Value::Null),
                (0i64..8_000_000_000_000).prop_map(|t| json!(t)),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| json!(f)),
                "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]Z"
                    .prop_map(|s| json!(s)),
            ];
            let labels = prop::collection::btree_map(label_name(), ".{0,3}", 0..4);
            let kind = prop_oneof![
                Just(None),
                Just(Some("counter")),
                Just(Some("gauge")),
                Just(Some("summary")),
            ];
            (name, value, ts, labels, kind).prop_map(|(name, value, ts, labels, kind)| {
                let mut s = json!({"name": name, "value": value, "labels": labels});
                if !ts.is_null() {
                    s["ts"] = ts;
                }
                if let Some(k) = kind {
                    s["kind"] = json!(k);
                }
                s
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

            /// Never a panic; every accepted sample reads back, as the metrics rows read
            /// it, with the name, value, time and labels it was sent with.
            #[test]
            fn accepted_samples_round_trip(samples in prop::collection::vec(sample(), 1..6)) {
                let body: String = samples.iter().map(|s| format!("{s}\n")).collect();
                let parsed = crate::ingest::parse_body(body.as_bytes(), 1 << 20);
                let series = crate::series::SeriesLimits::new(&weir_core::metrics::Registry::default());
                let p = check(parsed, 42, &series.tenant("t", &Default::default()));
                prop_assert_eq!(p.count as usize + p.rejected, samples.len());
                let rows = weir_store::metric_rows::segment_metric_rows(0, 0, &p.records).unwrap();
                prop_assert_eq!(rows.num_rows(), p.count as usize);
                for (k, (line, n)) in weir_core::batch::ndjson_lines(&p.records)
                    .zip(&p.line_numbers)
                    .enumerate()
                {
                    let sent = &samples[n - 1];
                    let got: serde_json::Value = serde_json::from_slice(line).unwrap();
                    prop_assert_eq!(&got["name"], &sent["name"]);
                    let (g, w) = (got["value"].as_f64().unwrap(), sent["value"].as_f64().unwrap());
                    prop_assert!(g == w || ((g - w) / w).abs() < 1e-15, "{} vs {}", g, w);
                    let ts = got["ts"].as_i64().unwrap();
                    prop_assert!(weir_core::time::in_range(ts) || ts == 42);
                    let labels = got["labels"].as_object().unwrap();
                    prop_assert_eq!(labels, sent["labels"].as_object().unwrap());
                    prop_assert!(labels.keys().all(|l| !l.starts_with('_')));
                    let series = rows.column(5).as_any()
                        .downcast_ref::<datafusion::arrow::array::StringArray>().unwrap();
                    prop_assert!(series.value(k).starts_with(sent["name"].as_str().unwrap()));
                }
            }
        }
    }
}
