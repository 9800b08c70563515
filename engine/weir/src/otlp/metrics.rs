//! OTLP metrics → `metrics` samples (NDJSON `{"name","value","ts","labels","kind"}`),
//! which then pass the sample rules and the tenant's series policy like any posted to
//! `/api/v1/metrics`.
//!
//! Every data point becomes one or more samples, at the point's `time_unix_nano`
//! (milliseconds; the ingest time when 0). Labels are the point's attributes, plus
//! `service_name`, `service_namespace` and `service_instance_id` from the resource's
//! `service.*` attributes (the other resource attributes are not labels: they would
//! multiply series); attribute keys become label names by
//! [`super::values::label_name`] (`http.method` → `http_method`), metric names by
//! [`super::values::metric_name`] (`/` and `-` → `_`).
//!
//! | OTLP                          | samples (`kind`)                                        |
//! |-------------------------------|---------------------------------------------------------|
//! | Gauge                         | `NAME` (gauge)                                          |
//! | Sum, monotonic                | `NAME` (counter)                                        |
//! | Sum, not monotonic            | `NAME` (gauge)                                          |
//! | Histogram                     | `NAME_bucket{le}` cumulative counts with `le="+Inf"`, `NAME_count`, `NAME_sum`, `NAME_min`, `NAME_max` when present (histogram) |
//! | ExponentialHistogram          | the same, one `NAME_bucket` per populated bucket: `le` is the bucket's upper bound `base^(index+1)`, `base = 2^(2^-scale)`; negative buckets and the zero bucket first |
//! | Summary                       | `NAME{quantile}` (gauge), `NAME_count`, `NAME_sum` (counter) |
//!
//! Temporality is kept as sent: a cumulative sum's value is its total since its start
//! time; a delta sum's value is the increase over its own interval (sum them over time;
//! take the last of a cumulative one). Points flagged "no recorded value" (a
//! staleness marker) and exemplars are skipped; a histogram with inconsistent buckets,
//! more than [`MAX_BUCKETS`] buckets, or a scale outside -10..=20 is rejected with the
//! reason.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, HistogramDataPoint, NumberDataPoint, SummaryDataPoint,
};
use serde_json::{Map, Value};

use super::values::{label_name, label_value, metric_name, string_attr};

/// Most buckets (or quantiles) of one histogram (or summary) point.
pub const MAX_BUCKETS: usize = 1024;
/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
const NO_RECORDED_VALUE: u32 = 1;
/// Resource attributes that become labels, and their label names.
const RESOURCE_LABELS: [(&str, &str); 3] = [
    ("service.name", "service_name"),
    ("service.namespace", "service_namespace"),
    ("service.instance.id", "service_instance_id"),
];

/// The samples of a request as NDJSON, and the points refused before the sample rules.
#[derive(Debug, Default)]
pub struct MetricSamples {
    pub ndjson: Vec<u8>,
    pub samples: usize,
    /// Data points refused here (each counts once, whatever samples it would have made).
    pub rejected: usize,
    pub first_error: Option<String>,
    /// Points without a recorded value, skipped.
    pub skipped: usize,
    /// Data points seen, and the 1-based point each sample line came from.
    pub points: u32,
    pub point_of: Vec<u32>,
    /// Most NDJSON bytes; past them nothing more is written and the request is refused.
    limit: usize,
}

/// The samples of a request would take more than the allowed bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl MetricSamples {
    fn sample(
        &mut self,
        name: &str,
        value: f64,
        ts: Option<i64>,
        labels: &Map<String, Value>,
        kind: &str,
    ) {
        // Checked per sample: a point's labels are copied into each of its samples.
        if self.ndjson.len() > self.limit {
            return;
        }
        // Written field by field: no value tree, no copy of the labels per sample.
        let out = &mut self.ndjson;
        out.extend_from_slice(b"{\"name\":");
        super::values::write_str(out, name);
        out.extend_from_slice(b",\"value\":");
        let _ = serde_json::to_writer(&mut *out, &super::values::double(value));
        out.extend_from_slice(b",\"labels\":");
        let _ = serde_json::to_writer(&mut *out, labels);
        out.extend_from_slice(b",\"kind\":");
        super::values::write_str(out, kind);
        if let Some(ts) = ts {
            out.extend_from_slice(b",\"ts\":");
            let _ = serde_json::to_writer(&mut *out, &ts);
        }
        out.push(b'}');
        self.ndjson.push(b'\n');
        self.samples += 1;
        self.point_of.push(self.points);
    }

    /// Points with a sample the door refused, given the (ascending, 1-based) lines it
    /// kept.
    pub fn points_refused(&self, kept: &[usize]) -> usize {
        let mut kept = kept.iter().peekable();
        let mut refused: Vec<u32> = Vec::new();
        for (i, p) in self.point_of.iter().enumerate() {
            if kept.next_if(|&&k| k == i + 1).is_none() {
                refused.push(*p);
            }
        }
        refused.dedup(); // lines of one point are adjacent
        refused.len()
    }

    fn reject(&mut self, why: String) {
        self.rejected += 1;
        self.first_error.get_or_insert(why);
    }
}

/// The samples of `req`; refused once they pass `max_bytes` of NDJSON (a point's
/// labels are repeated in each of its bucket samples).
pub fn samples(
    req: &ExportMetricsServiceRequest,
    max_bytes: usize,
) -> Result<MetricSamples, TooLarge> {
    let mut out = MetricSamples {
        limit: max_bytes,
        ..MetricSamples::default()
    };
    for rm in &req.resource_metrics {
        let attrs = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let mut base = Map::new();
        for (key, label) in RESOURCE_LABELS {
            if let Some(v) = string_attr(attrs, key) {
                base.insert(label.into(), Value::String(v.into()));
            }
        }
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let name = metric_name(&m.name);
                match &m.data {
                    None => out.reject(format!("metric {:?} has no data", m.name)),
                    Some(Data::Gauge(g)) => {
                        for p in &g.data_points {
                            number(&mut out, &name, p, &base, "gauge");
                        }
                    }
                    Some(Data::Sum(s)) => {
                        let kind = if s.is_monotonic { "counter" } else { "gauge" };
                        for p in &s.data_points {
                            number(&mut out, &name, p, &base, kind);
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            histogram(&mut out, &name, p, &base);
                        }
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            exponential(&mut out, &name, p, &base);
                        }
                    }
                    Some(Data::Summary(s)) => {
                        for p in &s.data_points {
                            summary(&mut out, &name, p, &base);
                        }
                    }
                }
                if out.ndjson.len() > max_bytes {
                    return Err(TooLarge(max_bytes));
                }
            }
        }
    }
    Ok(out)
}

fn labels(base: &Map<String, Value>, attrs: &[KeyValue]) -> Map<String, Value> {
    let mut l = base.clone();
    for kv in attrs {
        l.insert(
            label_name(&kv.key),
            Value::String(label_value(kv.value.as_ref())),
        );
    }
    l
}

fn millis(nanos: u64) -> Option<i64> {
    (nanos != 0).then_some((nanos / 1_000_000) as i64)
}

fn number(
    out: &mut MetricSamples,
    name: &str,
    p: &NumberDataPoint,
    base: &Map<String, Value>,
    kind: &str,
) {
    out.points += 1;
    if p.flags & NO_RECORDED_VALUE != 0 {
        out.skipped += 1;
        return;
    }
    let value = match p.value {
        Some(Number::AsDouble(d)) => d,
        Some(Number::AsInt(i)) => i as f64,
        None => return out.reject(format!("a point of {name:?} has no value")),
    };
    out.sample(
        name,
        value,
        millis(p.time_unix_nano),
        &labels(base, &p.attributes),
        kind,
    );
}

/// What every histogram point has besides its buckets.
struct Totals {
    ts: Option<i64>,
    count: u64,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

/// The buckets of a histogram point (cumulative, then `+Inf`), then `_count`, `_sum`,
/// `_min`, `_max`.
fn totals(
    out: &mut MetricSamples,
    name: &str,
    l: &Map<String, Value>,
    t: Totals,
    buckets: &[(f64, u64)],
) {
    let Totals {
        ts,
        count,
        sum,
        min,
        max,
    } = t;
    let mut le = l.clone();
    for (bound, cumulative) in buckets {
        le.insert("le".into(), Value::String(le_text(*bound)));
        out.sample(
            &format!("{name}_bucket"),
            *cumulative as f64,
            ts,
            &le,
            "histogram",
        );
    }
    le.insert("le".into(), Value::String("+Inf".into()));
    out.sample(
        &format!("{name}_bucket"),
        count as f64,
        ts,
        &le,
        "histogram",
    );
    out.sample(&format!("{name}_count"), count as f64, ts, l, "histogram");
    for (suffix, v) in [("sum", sum), ("min", min), ("max", max)] {
        if let Some(v) = v {
            out.sample(&format!("{name}_{suffix}"), v, ts, l, "histogram");
        }
    }
}

/// A bucket bound as Prometheus writes `le`: shortest round-trip text, `+Inf`/`-Inf`.
fn le_text(b: f64) -> String {
    if b == f64::INFINITY {
        "+Inf".into()
    } else if b == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{b}")
    }
}

fn histogram(
    out: &mut MetricSamples,
    name: &str,
    p: &HistogramDataPoint,
    base: &Map<String, Value>,
) {
    out.points += 1;
    if p.flags & NO_RECORDED_VALUE != 0 {
        out.skipped += 1;
        return;
    }
    let n = p.bucket_counts.len();
    if n > MAX_BUCKETS {
        return out.reject(format!(
            "a point of {name:?} has {n} buckets, more than {MAX_BUCKETS}"
        ));
    }
    if n != 0 && n != p.explicit_bounds.len() + 1 {
        return out.reject(format!(
            "a point of {name:?} has {n} bucket counts for {} bounds (expected one more)",
            p.explicit_bounds.len()
        ));
    }
    if p.explicit_bounds.windows(2).any(|w| w[0] >= w[1])
        || p.explicit_bounds.iter().any(|b| b.is_nan())
    {
        return out.reject(format!(
            "the bounds of a point of {name:?} are not increasing"
        ));
    }
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(n);
    for (bound, c) in p.explicit_bounds.iter().zip(&p.bucket_counts) {
        cumulative = cumulative.saturating_add(*c);
        buckets.push((*bound, cumulative));
    }
    if n != 0 && cumulative.saturating_add(p.bucket_counts[n - 1]) != p.count {
        return out.reject(format!(
            "the buckets of a point of {name:?} do not add up to its count"
        ));
    }
    let l = labels(base, &p.attributes);
    totals(
        out,
        name,
        &l,
        Totals {
            ts: millis(p.time_unix_nano),
            count: p.count,
            sum: p.sum,
            min: p.min,
            max: p.max,
        },
        &buckets,
    );
}

fn exponential(
    out: &mut MetricSamples,
    name: &str,
    p: &ExponentialHistogramDataPoint,
    base: &Map<String, Value>,
) {
    out.points += 1;
    if p.flags & NO_RECORDED_VALUE != 0 {
        out.skipped += 1;
        return;
    }
    if !(-10..=20).contains(&p.scale) {
        return out.reject(format!(
            "a point of {name:?} has scale {}, outside -10..=20",
            p.scale
        ));
    }
    let empty = Buckets::default();
    let pos = p.positive.as_ref().unwrap_or(&empty);
    let neg = p.negative.as_ref().unwrap_or(&empty);
    let n = pos.bucket_counts.len() + neg.bucket_counts.len();
    if n > MAX_BUCKETS {
        return out.reject(format!(
            "a point of {name:?} has {n} buckets, more than {MAX_BUCKETS}"
        ));
    }
    // Bucket `index` covers (base^index, base^(index+1)]; base = 2^(2^-scale).
    if !p.zero_threshold.is_finite() {
        return out.reject(format!(
            "a point of {name:?} has a zero threshold that is not finite"
        ));
    }
    let step = (-f64::from(p.scale)).exp2();
    let bound = |index: i64| (index as f64 * step).exp2();
    // Buckets whose bound is not a finite number (2^1024 and beyond at scale -10) are
    // left to the `+Inf` bucket, which counts everything.
    let finite = |b: &(f64, u64)| b.0.is_finite();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(n + 1);
    // Negative buckets from the most negative: bucket `index` covers
    // [-base^(index+1), -base^index), so its upper bound is -base^index.
    for (i, c) in neg.bucket_counts.iter().enumerate().rev() {
        cumulative = cumulative.saturating_add(*c);
        if *c != 0 {
            buckets.push((-bound(i64::from(neg.offset) + i as i64), cumulative));
        }
    }
    cumulative = cumulative.saturating_add(p.zero_count);
    buckets.push((p.zero_threshold.abs(), cumulative));
    for (i, c) in pos.bucket_counts.iter().enumerate() {
        cumulative = cumulative.saturating_add(*c);
        if *c != 0 {
            buckets.push((bound(i64::from(pos.offset) + i as i64 + 1), cumulative));
        }
    }
    if cumulative != p.count {
        return out.reject(format!(
            "the buckets of a point of {name:?} do not add up to its count"
        ));
    }
    buckets.retain(finite);
    let l = labels(base, &p.attributes);
    totals(
        out,
        name,
        &l,
        Totals {
            ts: millis(p.time_unix_nano),
            count: p.count,
            sum: p.sum,
            min: p.min,
            max: p.max,
        },
        &buckets,
    );
}

fn summary(out: &mut MetricSamples, name: &str, p: &SummaryDataPoint, base: &Map<String, Value>) {
    out.points += 1;
    if p.flags & NO_RECORDED_VALUE != 0 {
        out.skipped += 1;
        return;
    }
    if p.quantile_values.len() > MAX_BUCKETS {
        return out.reject(format!(
            "a point of {name:?} has {} quantiles, more than {MAX_BUCKETS}",
            p.quantile_values.len()
        ));
    }
    let l = labels(base, &p.attributes);
    let ts = millis(p.time_unix_nano);
    let mut q = l.clone();
    for v in &p.quantile_values {
        q.insert("quantile".into(), Value::String(le_text(v.quantile)));
        out.sample(name, v.value, ts, &q, "gauge");
    }
    out.sample(&format!("{name}_count"), p.count as f64, ts, &l, "counter");
    out.sample(&format!("{name}_sum"), p.sum, ts, &l, "counter");
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, Gauge, Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum, Summary,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    const T: u64 = 1_764_432_000_500_000_000;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Any::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn req(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "shop"), kv("host.name", "h1")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn metric(name: &str, data: Data) -> Metric {
        Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        }
    }

    fn point(v: Number) -> NumberDataPoint {
        NumberDataPoint {
            attributes: vec![kv("http.method", "GET")],
            time_unix_nano: T,
            value: Some(v),
            ..Default::default()
        }
    }

    fn samples_of(r: ExportMetricsServiceRequest) -> MetricSamples {
        samples(&r, usize::MAX).unwrap()
    }

    fn lines(out: &MetricSamples) -> Vec<Value> {
        out.ndjson
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn gauges_and_sums_become_one_sample_each() {
        let r = req(vec![
            metric(
                "queue.depth",
                Data::Gauge(Gauge {
                    data_points: vec![point(Number::AsInt(7))],
                }),
            ),
            metric(
                "http.requests",
                Data::Sum(Sum {
                    data_points: vec![point(Number::AsDouble(2.5))],
                    aggregation_temporality: 2,
                    is_monotonic: true,
                }),
            ),
            metric(
                "active",
                Data::Sum(Sum {
                    data_points: vec![NumberDataPoint {
                        flags: NO_RECORDED_VALUE,
                        ..point(Number::AsInt(1))
                    }],
                    aggregation_temporality: 1,
                    is_monotonic: false,
                }),
            ),
        ]);
        let out = samples(&r, usize::MAX).unwrap();
        assert_eq!((out.samples, out.rejected, out.skipped), (2, 0, 1));
        let l = lines(&out);
        assert_eq!(
            l[0],
            serde_json::json!({"name":"queue.depth","value":7.0,"ts":1_764_432_000_500i64,"kind":"gauge",
                   "labels":{"service_name":"shop","http_method":"GET"}})
        );
        assert_eq!(l[1]["kind"], "counter");
        // Two points; the door kept line 2 only: point 1 was refused.
        assert_eq!(out.points, 3);
        assert_eq!(out.points_refused(&[2]), 1);
        assert_eq!(out.points_refused(&[]), 2);
        assert_eq!(out.points_refused(&[1, 2]), 0);
        assert_eq!(l[1]["value"], 2.5);
    }

    #[test]
    fn histograms_become_cumulative_buckets_count_and_sum() {
        let p = HistogramDataPoint {
            time_unix_nano: T,
            count: 6,
            sum: Some(12.0),
            bucket_counts: vec![1, 2, 3],
            explicit_bounds: vec![0.5, 2.0],
            max: Some(9.0),
            ..Default::default()
        };
        let h = |p: HistogramDataPoint| {
            req(vec![metric(
                "lat",
                Data::Histogram(Histogram {
                    data_points: vec![p],
                    aggregation_temporality: 2,
                }),
            )])
        };
        let out = samples_of(h(p.clone()));
        let got: Vec<(String, String, f64)> = lines(&out)
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_owned(),
                    s["labels"]["le"].as_str().unwrap_or("").to_owned(),
                    s["value"].as_f64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String, f64)> = [
            ("lat_bucket", "0.5", 1.0),
            ("lat_bucket", "2", 3.0),
            ("lat_bucket", "+Inf", 6.0),
            ("lat_count", "", 6.0),
            ("lat_sum", "", 12.0),
            ("lat_max", "", 9.0),
        ]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect();
        assert_eq!(got, want);
        let bad = samples_of(h(HistogramDataPoint {
            bucket_counts: vec![1, 2],
            ..p.clone()
        }));
        assert_eq!((bad.samples, bad.rejected), (0, 1));
        let bad = samples_of(h(HistogramDataPoint {
            count: 7,
            ..p.clone()
        }));
        assert!(bad.first_error.unwrap().contains("add up"));
        let bad = samples_of(h(HistogramDataPoint {
            explicit_bounds: vec![2.0, 0.5],
            ..p
        }));
        assert_eq!(bad.rejected, 1);
    }

    #[test]
    fn exponential_histograms_use_the_bucket_upper_bounds() {
        let p = ExponentialHistogramDataPoint {
            time_unix_nano: T,
            count: 7,
            sum: Some(20.0),
            scale: 0,
            zero_count: 1,
            positive: Some(Buckets {
                offset: 1,
                bucket_counts: vec![2, 0, 3],
            }),
            negative: Some(Buckets {
                offset: 0,
                bucket_counts: vec![1],
            }),
            ..Default::default()
        };
        let out = samples_of(req(vec![metric(
            "size",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![p.clone()],
                aggregation_temporality: 2,
            }),
        )]));
        let got: Vec<(String, f64)> = lines(&out)
            .iter()
            .filter(|s| s["name"] == "size_bucket")
            .map(|s| {
                (
                    s["labels"]["le"].as_str().unwrap().to_owned(),
                    s["value"].as_f64().unwrap(),
                )
            })
            .collect();
        // base 2: negative bucket 0 is [-2, -1) → le -1; zero bucket le 0; positive
        // bucket 1 is (2, 4] → le 4, bucket 3 is (8, 16] → le 16.
        assert_eq!(
            got,
            vec![
                ("-1".into(), 1.0),
                ("0".into(), 2.0),
                ("4".into(), 4.0),
                ("16".into(), 7.0),
                ("+Inf".into(), 7.0)
            ]
        );
        // At scale -10 bucket 1's bound is 2^1024: left to +Inf, never a second "+Inf".
        let huge = samples_of(req(vec![metric(
            "size",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    scale: -10,
                    count: 1,
                    zero_count: 0,
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![1],
                    }),
                    negative: None,
                    ..p.clone()
                }],
                aggregation_temporality: 2,
            }),
        )]));
        let infs = lines(&huge)
            .iter()
            .filter(|s| s["labels"]["le"] == "+Inf")
            .count();
        assert_eq!((huge.rejected, infs), (0, 1));
        let bad = samples_of(req(vec![metric(
            "size",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    zero_threshold: f64::NAN,
                    ..p.clone()
                }],
                aggregation_temporality: 2,
            }),
        )]));
        assert_eq!(bad.rejected, 1);
        let bad = samples_of(req(vec![metric(
            "size",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint { scale: 21, ..p }],
                aggregation_temporality: 2,
            }),
        )]));
        assert_eq!(bad.rejected, 1);
    }

    #[test]
    fn summaries_become_quantiles_count_and_sum() {
        let out = samples_of(req(vec![metric(
            "rpc",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: T,
                    count: 4,
                    sum: 10.0,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.5,
                        value: 2.0,
                    }],
                    ..Default::default()
                }],
            }),
        )]));
        let l = lines(&out);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0]["labels"]["quantile"], "0.5");
        // A point whose labels would be copied into a million samples stops at the
        // limit, checked sample by sample.
        let many = req(vec![metric(
            "rpc",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: vec![kv("big", &"x".repeat(10_000))],
                    quantile_values: vec![ValueAtQuantile::default(); 1000],
                    ..Default::default()
                }],
            }),
        )]);
        assert_eq!(samples(&many, 100_000).unwrap_err(), TooLarge(100_000));
        let too_many = req(vec![metric(
            "rpc",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    quantile_values: vec![ValueAtQuantile::default(); MAX_BUCKETS + 1],
                    ..Default::default()
                }],
            }),
        )]);
        assert_eq!(samples_of(too_many).rejected, 1);
        assert_eq!(l[1]["name"], "rpc_count");
        assert_eq!(l[2]["value"], 10.0);
    }
}
