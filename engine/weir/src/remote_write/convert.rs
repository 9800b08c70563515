//! A decoded remote-write request (1.0 or 2.0) turned into the NDJSON samples of
//! `/api/v1/metrics`, one line per sample: `{"name","value","ts","labels","kind"?}`.
//!
//! - `name` is the series' `__name__` label, `labels` its other labels (as sent: the
//!   door applies the sample rules to names, label names and the series policy), `ts`
//!   the sample's epoch milliseconds, `value` its value.
//! - `kind`: COUNTER → `counter`, GAUGE → `gauge`, HISTOGRAM / GAUGEHISTOGRAM →
//!   `histogram`. In 2.0 from the series' own metadata; in 1.0 from the request's
//!   metadata when it has an entry for the series' family (family `F`: counter series
//!   `F` or `F_total`, histogram series `F`, `F_bucket`, `F_sum`, `F_count`). Prometheus
//!   sends 1.0 metadata in requests of their own, so its 1.0 samples usually have none.
//! - Prometheus' staleness markers (the NaN `0x7ff0000000000002`, written when a
//!   series disappears) are dropped and counted: they are not values.
//! - Refused here, each sample on its own and counted (the rest of the request is
//!   kept): a series without `__name__` (or with two), over
//!   [`crate::samples::MAX_LABELS`] labels, any other non-finite value (NaN, ±Inf), a
//!   timestamp before 1970-04-26 (epoch numbers below 1e10 are read as seconds).
//! - Native histograms and exemplars are counted and skipped.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;

use super::proto::{each_metadata, each_series, Sample, Series, WireError};
use super::proto_v2;
use crate::ingest::MAX_ERRORS;

/// Prometheus' staleness marker (`value.StaleNaN`).
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
/// Metric families whose metadata a request may carry; more are ignored.
pub const MAX_METADATA: usize = 10_000;
/// The smallest timestamp accepted: epoch numbers below 1e10 read as seconds.
const MIN_TS_MS: i64 = 10_000_000_000;

/// A refused sample (or, with `sample` None, every sample of a series).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleError {
    /// The series' position in the request (0-based).
    pub series: usize,
    /// The sample's position in its series (0-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<usize>,
    pub reason: String,
}

/// What a request became.
#[derive(Debug, Default)]
pub struct Converted {
    /// One sample per line.
    pub ndjson: Vec<u8>,
    /// `(series, sample)` of each line, to report the door's rejects.
    pub origin: Vec<(u32, u32)>,
    /// Samples refused here (before the door).
    pub rejected: usize,
    /// The first of them.
    pub errors: Vec<SampleError>,
    pub stale: usize,
    pub histograms: usize,
    pub exemplars: usize,
    pub metadata: usize,
}

/// Why a request is refused whole.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the request's samples exceed {0} bytes as NDJSON ([ingest] max_decoded_bytes); send smaller batches (queue_config.max_samples_per_send)")]
    TooLarge(usize),
}

impl Converted {
    fn reject(&mut self, n: usize, series: usize, sample: Option<usize>, reason: String) {
        self.rejected += n;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(SampleError {
                series,
                sample,
                reason,
            });
        }
    }
}

/// The `kind` of a series named `name` by the request's metadata.
fn kind_of(meta: &HashMap<String, &'static str>, name: &str) -> Option<&'static str> {
    if meta.is_empty() {
        return None;
    }
    if let Some(k) = meta.get(name) {
        return Some(k);
    }
    let family = |suffix: &str| name.strip_suffix(suffix).and_then(|f| meta.get(f)).copied();
    if ["_bucket", "_sum", "_count"]
        .iter()
        .any(|s| family(s) == Some("histogram"))
    {
        return Some("histogram");
    }
    (family("_total") == Some("counter")).then_some("counter")
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Turn a decoded 1.0 `WriteRequest` into NDJSON samples of at most `max_ndjson` bytes.
pub fn convert(body: &[u8], max_ndjson: usize) -> Result<Converted, ConvertError> {
    let mut out = Converted::default();
    let mut meta: HashMap<String, &'static str> = HashMap::new();
    let mut metadata = 0usize;
    each_metadata::<ConvertError>(body, |m| {
        metadata += 1;
        if let Some(kind) = m.kind() {
            if meta.len() < MAX_METADATA {
                meta.insert(m.metric_family_name, kind);
            }
        }
        Ok(())
    })?;
    each_series::<ConvertError>(body, |s| series_v1(&mut out, &meta, &s, max_ndjson))?;
    out.metadata = metadata;
    Ok(out)
}

/// What [`emit`] needs of a series of either protocol version.
struct SeriesIn<'a, I> {
    index: usize,
    /// Its first labels (name, value), `__name__` among them.
    labels: &'a [(&'a str, &'a str)],
    /// All its labels, counted.
    label_count: usize,
    kind: Option<&'static str>,
    histograms: usize,
    exemplars: usize,
    samples: I,
}

fn series_v1(
    out: &mut Converted,
    meta: &HashMap<String, &'static str>,
    s: &Series<'_>,
    max_ndjson: usize,
) -> Result<(), ConvertError> {
    let labels = &s.labels;
    let name = labels
        .iter()
        .find(|l| l.0 == "__name__")
        .map_or("", |l| l.1);
    let input = SeriesIn {
        index: s.index,
        labels,
        label_count: s.label_count,
        kind: kind_of(meta, name),
        histograms: s.histograms,
        exemplars: s.exemplars,
        samples: s.samples(),
    };
    emit(out, input, max_ndjson)
}

/// Turn a decoded remote-write 2.0 `Request` into NDJSON samples of at most
/// `max_ndjson` bytes: the same lines as 1.0, `kind` from each series' own metadata.
pub fn convert_v2(body: &[u8], max_ndjson: usize) -> Result<Converted, ConvertError> {
    let mut out = Converted::default();
    let symbols = proto_v2::symbols(body)?;
    proto_v2::each_series::<ConvertError>(body, &symbols, |s| {
        let input = SeriesIn {
            index: s.index,
            labels: &s.labels,
            label_count: s.label_count,
            kind: s.kind,
            histograms: s.histograms,
            exemplars: s.exemplars,
            samples: s.samples(),
        };
        emit(&mut out, input, max_ndjson)
    })?;
    Ok(out)
}

/// One NDJSON line per sample of `s`, or its samples refused with the reason.
fn emit<I: Iterator<Item = Sample>>(
    out: &mut Converted,
    s: SeriesIn<'_, I>,
    max_ndjson: usize,
) -> Result<(), ConvertError> {
    out.histograms += s.histograms;
    out.exemplars += s.exemplars;
    let names: Vec<&str> = s
        .labels
        .iter()
        .filter(|l| l.0 == "__name__")
        .map(|l| l.1)
        .collect();
    let why = match names.as_slice() {
        _ if s.label_count > crate::samples::MAX_LABELS + 1 => Some(format!(
            "{} labels, more than {} besides __name__",
            s.label_count,
            crate::samples::MAX_LABELS
        )),
        [] => Some("the series has no __name__ label".to_owned()),
        [_] => None,
        _ => Some("the series has more than one __name__ label".to_owned()),
    };
    if let Some(why) = why {
        let n = s.samples.count();
        if n > 0 {
            out.reject(n, s.index, None, format!("{why} ({n} samples refused)"));
        }
        return Ok(());
    }
    let name = names[0];
    // The part of every line after the value and time: labels and kind.
    let mut tail = Vec::with_capacity(64);
    tail.extend_from_slice(b",\"labels\":{");
    let mut first = true;
    for (n, v) in s.labels.iter().filter(|l| l.0 != "__name__") {
        if !first {
            tail.push(b',');
        }
        first = false;
        json_str(&mut tail, n);
        tail.push(b':');
        json_str(&mut tail, v);
    }
    tail.push(b'}');
    if let Some(kind) = s.kind {
        tail.extend_from_slice(b",\"kind\":\"");
        tail.extend_from_slice(kind.as_bytes());
        tail.push(b'"');
    }
    tail.extend_from_slice(b"}\n");
    let mut head = Vec::with_capacity(name.len() + 16);
    head.extend_from_slice(b"{\"name\":");
    json_str(&mut head, name);
    head.extend_from_slice(b",\"value\":");
    for (j, sample) in s.samples.enumerate() {
        let v = sample.value;
        if v.to_bits() == STALE_NAN {
            out.stale += 1;
            continue;
        }
        if !v.is_finite() {
            out.reject(
                1,
                s.index,
                Some(j),
                format!("value {v} is not a finite number"),
            );
            continue;
        }
        if sample.timestamp < MIN_TS_MS {
            out.reject(
                1,
                s.index,
                Some(j),
                format!(
                    "timestamp {} is before 1970-04-26: remote-write times are epoch milliseconds",
                    sample.timestamp
                ),
            );
            continue;
        }
        out.ndjson.extend_from_slice(&head);
        let _ = serde_json::to_writer(&mut out.ndjson, &v);
        out.ndjson.extend_from_slice(b",\"ts\":");
        // Writing into a Vec cannot fail.
        let _ = write!(out.ndjson, "{}", sample.timestamp);
        out.ndjson.extend_from_slice(&tail);
        out.origin.push((s.index as u32, j as u32));
        if out.ndjson.len() > max_ndjson {
            return Err(ConvertError::TooLarge(max_ndjson));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::proto::{
        Exemplar, Histogram, Label, MetricMetadata, Sample, TimeSeries, WriteRequest,
    };
    use super::*;
    use prost::Message;

    fn ts(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(value, timestamp)| Sample { value, timestamp })
                .collect(),
            ..Default::default()
        }
    }

    const T: i64 = 1_795_000_000_123;

    #[test]
    fn samples_become_ndjson_lines_and_bad_ones_are_refused_alone() {
        let mut hist = ts(&[("__name__", "h")], &[]);
        hist.histograms = vec![Histogram {
            sum: 1.0,
            timestamp: T,
        }];
        hist.exemplars = vec![Exemplar::default()];
        let req = WriteRequest {
            timeseries: vec![
                ts(
                    &[
                        ("__name__", "http_requests_total"),
                        ("code", "200"),
                        ("a\"b", "x\ny"),
                    ],
                    &[(1.5, T), (f64::from_bits(STALE_NAN), T + 1), (2.0, T + 2)],
                ),
                ts(&[("job", "nameless")], &[(1.0, T), (2.0, T)]),
                ts(
                    &[("__name__", "temp")],
                    &[(f64::INFINITY, T), (f64::NAN, T), (3.0, 5), (-0.25, T)],
                ),
                hist,
                ts(&[("__name__", "a"), ("__name__", "b")], &[(1.0, T)]),
            ],
            metadata: vec![
                MetricMetadata {
                    r#type: 1,
                    metric_family_name: "http_requests".into(),
                    ..Default::default()
                },
                MetricMetadata {
                    r#type: 2,
                    metric_family_name: "temp".into(),
                    ..Default::default()
                },
            ],
        };
        let c = convert(&req.encode_to_vec(), 1 << 20).unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&c.ndjson).unwrap().lines().collect();
        assert_eq!(
            lines,
            vec![
                r#"{"name":"http_requests_total","value":1.5,"ts":1795000000123,"labels":{"code":"200","a\"b":"x\ny"},"kind":"counter"}"#,
                r#"{"name":"http_requests_total","value":2.0,"ts":1795000000125,"labels":{"code":"200","a\"b":"x\ny"},"kind":"counter"}"#,
                r#"{"name":"temp","value":-0.25,"ts":1795000000123,"labels":{},"kind":"gauge"}"#,
            ]
        );
        assert_eq!(c.origin, vec![(0, 0), (0, 2), (2, 3)]);
        assert_eq!(
            (c.stale, c.histograms, c.exemplars, c.metadata),
            (1, 1, 1, 2)
        );
        assert_eq!(c.rejected, 6);
        let why: Vec<(usize, Option<usize>, &str)> = c
            .errors
            .iter()
            .map(|e| (e.series, e.sample, e.reason.as_str()))
            .collect();
        assert_eq!(why[0].0, 1);
        assert!(why[0].2.contains("no __name__") && why[0].2.contains("2 samples"));
        assert_eq!((why[1].0, why[1].1), (2, Some(0)));
        assert!(why[1].2.contains("inf is not a finite number"), "{why:?}");
        assert!(why[2].2.contains("NaN is not a finite number"), "{why:?}");
        assert!(why[3].2.contains("before 1970-04-26"), "{why:?}");
        assert!(why[4].2.contains("more than one __name__"), "{why:?}");
    }

    #[test]
    fn kinds_follow_the_family_and_limits_hold() {
        let meta: HashMap<String, &'static str> = [
            ("rq".to_owned(), "histogram"),
            ("c".to_owned(), "counter"),
            ("g".to_owned(), "gauge"),
        ]
        .into_iter()
        .collect();
        for (name, want) in [
            ("rq_bucket", Some("histogram")),
            ("rq_sum", Some("histogram")),
            ("rq_count", Some("histogram")),
            ("rq", Some("histogram")),
            ("c_total", Some("counter")),
            ("c", Some("counter")),
            ("g", Some("gauge")),
            ("g_total", None),
            ("g_sum", None),
            ("other", None),
        ] {
            assert_eq!(kind_of(&meta, name), want, "{name}");
        }
        let many: Vec<(String, String)> = (0..70).map(|i| (format!("l{i}"), "v".into())).collect();
        let mut labels: Vec<(&str, &str)> =
            many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        labels.push(("__name__", "m"));
        let req = WriteRequest {
            timeseries: vec![ts(&labels, &[(1.0, T)])],
            metadata: vec![],
        };
        let c = convert(&req.encode_to_vec(), 1 << 20).unwrap();
        assert_eq!((c.rejected, c.ndjson.len()), (1, 0));
        assert!(
            c.errors[0].reason.contains("more than 64"),
            "{:?}",
            c.errors
        );
        // Output beyond the limit refuses the request.
        let big = WriteRequest {
            timeseries: vec![ts(&[("__name__", "m")], &[(1.0, T); 100])],
            metadata: vec![],
        };
        assert!(matches!(
            convert(&big.encode_to_vec(), 1000),
            Err(ConvertError::TooLarge(1000))
        ));
    }
}
