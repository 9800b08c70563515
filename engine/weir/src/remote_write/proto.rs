//! The Prometheus remote-write 1.0 wire format, and a decoder that walks it without
//! materialising the whole request.
//!
//! Messages and field numbers as in Prometheus' `prompb/remote.proto` and
//! `prompb/types.proto` (package `prometheus`, the 1.0 protocol that Prometheus 2.x
//! sends as `Content-Type: application/x-protobuf` and
//! `X-Prometheus-Remote-Write-Version: 0.1.0`):
//!
//! ```text
//! message WriteRequest   { repeated TimeSeries timeseries = 1; reserved 2;
//!                          repeated MetricMetadata metadata = 3; }
//! message TimeSeries     { repeated Label labels = 1; repeated Sample samples = 2;
//!                          repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
//! message Label          { string name = 1; string value = 2; }
//! message Sample         { double value = 1; int64 timestamp = 2; }
//! message Exemplar       { repeated Label labels = 1; double value = 2; int64 timestamp = 3; }
//! message MetricMetadata { MetricType type = 1; string metric_family_name = 2;
//!                          string help = 4; string unit = 5; }
//! enum MetricType        { UNKNOWN = 0; COUNTER = 1; GAUGE = 2; HISTOGRAM = 3;
//!                          GAUGEHISTOGRAM = 4; SUMMARY = 5; INFO = 6; STATESET = 7; }
//! ```
//!
//! `Histogram` (native histograms) has many fields; Weir counts and skips them, so only
//! `sum = 3` and `timestamp = 15` are declared here (prost skips the others).
//!
//! Why not `WriteRequest::decode`: a `TimeSeries`, `Label` or `Sample` struct takes
//! 16 to 96 bytes of memory for as little as 2 bytes on the wire (an empty message),
//! so decoding a 64 MiB body into structs could take gigabytes. The walker instead visits
//! the repeated containers (`WriteRequest`, `TimeSeries`) in place, one series at a
//! time ([`each_series`]), reads `Label`s in place and decodes the other leaves (`Sample`,
//! `MetricMetadata`) with prost;
//! it keeps at most [`MAX_SERIES_LABELS`] labels of a series. Its result equals
//! prost's own decoding of [`WriteRequest`] (a property test checks it). Every length
//! is checked against the bytes left ([`super::wire`]), unknown fields are skipped
//! (groups nest at most prost's recursion limit deep), and a string that is not UTF-8
//! is a decode error.

use prost::Message;

pub use super::wire::WireError;
use super::wire::{Field, Fields};

/// Labels kept per series while walking: one more than `__name__` plus the sample
/// rules' limit ([`crate::samples::MAX_LABELS`]), so that a series over the limit is
/// known to be.
pub const MAX_SERIES_LABELS: usize = crate::samples::MAX_LABELS + 2;

/// `prometheus.WriteRequest`.
// The whole-message form: the walker's reference in tests (never decoded here).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`.
// The whole-message form: the walker's reference in tests (never decoded here).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Label` (read in place by the walker).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: a value at a time in epoch milliseconds.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Exemplar`.
// The whole-message form: the walker's reference in tests (never decoded here).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `prometheus.Histogram` (a native histogram), the two fields Weir's tests set.
// The whole-message form: the walker's reference in tests (never decoded here).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct MetricMetadata {
    /// `MetricType`: see [`MetricMetadata::kind`].
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

impl MetricMetadata {
    /// The sample `kind` of this family's type: COUNTER (1), GAUGE (2), HISTOGRAM (3)
    /// and GAUGEHISTOGRAM (4); the other types have none.
    pub fn kind(&self) -> Option<&'static str> {
        metric_kind(self.r#type)
    }
}

/// The sample `kind` of a `MetricType` (1.0 and 2.0 number them alike).
pub fn metric_kind(t: i32) -> Option<&'static str> {
    match t {
        1 => Some("counter"),
        2 => Some("gauge"),
        3 | 4 => Some("histogram"),
        _ => None,
    }
}

/// One series of a request, as [`each_series`] hands it over.
pub struct Series<'a> {
    /// Its position in the request (0-based).
    pub index: usize,
    /// Its first [`MAX_SERIES_LABELS`] labels `(name, value)`, in wire order.
    pub labels: Vec<(&'a str, &'a str)>,
    /// All its labels, counted.
    pub label_count: usize,
    pub exemplars: usize,
    pub histograms: usize,
    /// The encoded `TimeSeries`, for [`Series::samples`].
    body: &'a [u8],
}

impl Series<'_> {
    /// Its samples in wire order (each already checked by [`each_series`]).
    pub fn samples(&self) -> impl Iterator<Item = Sample> + '_ {
        let mut fields = Fields::new(self.body, "TimeSeries");
        std::iter::from_fn(move || loop {
            match fields.next()? {
                Ok((2, Field::Bytes(b))) => return Sample::decode(b).ok(),
                Ok(_) => continue,
                Err(_) => return None,
            }
        })
    }
}

/// A `Label` read in place as `(name, value)`: as prost reads it (the last of a
/// repeated field wins, unknown fields skipped), without copying its strings.
fn label(b: &[u8]) -> Result<(&str, &str), WireError> {
    let (mut name, mut value) = ("", "");
    for field in Fields::new(b, "Label") {
        let (tag, f) = field?;
        if tag == 1 || tag == 2 {
            let text = std::str::from_utf8(f.bytes("Label", tag)?).map_err(|e| {
                let what = if tag == 1 { "name" } else { "value" };
                WireError::Invalid("Label", format!("its {what} is not UTF-8: {e}"))
            })?;
            if tag == 1 {
                name = text;
            } else {
                value = text;
            }
        }
    }
    Ok((name, value))
}

/// Check one `TimeSeries` and gather what [`Series`] tells about it.
fn series(index: usize, body: &[u8]) -> Result<Series<'_>, WireError> {
    let mut s = Series {
        index,
        labels: Vec::new(),
        label_count: 0,
        exemplars: 0,
        histograms: 0,
        body,
    };
    for field in Fields::new(body, "TimeSeries") {
        let (tag, p) = field?;
        match tag {
            1 => {
                let b = p.bytes("TimeSeries", 1)?;
                s.label_count += 1;
                if s.labels.len() < MAX_SERIES_LABELS {
                    s.labels.push(label(b)?);
                }
            }
            2 => {
                Sample::decode(p.bytes("TimeSeries", 2)?)
                    .map_err(|e| WireError::Proto("Sample", e))?;
            }
            3 => {
                p.bytes("TimeSeries", 3)?;
                s.exemplars += 1;
            }
            4 => {
                p.bytes("TimeSeries", 4)?;
                s.histograms += 1;
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Every metadata entry of a `WriteRequest`, in order. The first error ends the walk.
pub fn each_metadata<E: From<WireError>>(
    body: &[u8],
    mut f: impl FnMut(MetricMetadata) -> Result<(), E>,
) -> Result<(), E> {
    for field in Fields::new(body, "WriteRequest") {
        let (tag, p) = field?;
        if tag == 3 {
            let b = p.bytes("WriteRequest", 3)?;
            f(MetricMetadata::decode(b).map_err(|e| WireError::Proto("MetricMetadata", e))?)?;
        }
    }
    Ok(())
}

/// Every series of a `WriteRequest`, in order. The first error ends the walk.
pub fn each_series<E: From<WireError>>(
    body: &[u8],
    mut f: impl FnMut(Series<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let mut index = 0;
    for field in Fields::new(body, "WriteRequest") {
        let (tag, p) = field?;
        if tag == 1 {
            f(series(index, p.bytes("WriteRequest", 1)?)?)?;
            index += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the walker saw, in the shape of a decoded [`WriteRequest`].
    fn walked(body: &[u8]) -> Result<WriteRequest, WireError> {
        let mut req = WriteRequest::default();
        let mut meta = Vec::new();
        each_metadata::<WireError>(body, |m| {
            meta.push(m);
            Ok(())
        })?;
        each_series::<WireError>(body, |s| {
            assert_eq!(s.index, req.timeseries.len());
            req.timeseries.push(TimeSeries {
                labels: s
                    .labels
                    .iter()
                    .map(|(n, v)| Label {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: s.samples().collect(),
                exemplars: vec![Exemplar::default(); s.exemplars],
                histograms: vec![Histogram::default(); s.histograms],
            });
            Ok(())
        })?;
        req.metadata = meta;
        Ok(req)
    }

    /// The request as [`walked`] reports it: exemplars and histograms only counted.
    fn counted(mut req: WriteRequest) -> WriteRequest {
        for ts in &mut req.timeseries {
            ts.exemplars = vec![Exemplar::default(); ts.exemplars.len()];
            ts.histograms = vec![Histogram::default(); ts.histograms.len()];
        }
        req
    }

    fn label() -> impl Strategy<Value = Label> {
        ("[a-z_]{0,5}", ".{0,4}").prop_map(|(name, value)| Label { name, value })
    }

    fn request() -> impl Strategy<Value = WriteRequest> {
        let sample = (any::<f64>(), any::<i64>()).prop_map(|(value, timestamp)| Sample {
            value: if value.is_nan() { 0.5 } else { value },
            timestamp,
        });
        let ts = (
            prop::collection::vec(label(), 0..4),
            prop::collection::vec(sample, 0..4),
            0..2usize,
            0..2usize,
        )
            .prop_map(|(labels, samples, e, h)| TimeSeries {
                labels,
                samples,
                exemplars: vec![
                    Exemplar {
                        labels: vec![],
                        value: 1.0,
                        timestamp: 7
                    };
                    e
                ],
                histograms: vec![
                    Histogram {
                        sum: 2.0,
                        timestamp: 9
                    };
                    h
                ],
            });
        let meta = (0..8i32, "[a-z_]{0,6}").prop_map(|(t, name)| MetricMetadata {
            r#type: t,
            metric_family_name: name,
            help: "h".into(),
            unit: String::new(),
        });
        (
            prop::collection::vec(ts, 0..5),
            prop::collection::vec(meta, 0..3),
        )
            .prop_map(|(timeseries, metadata)| WriteRequest {
                timeseries,
                metadata,
            })
    }

    #[test]
    fn a_request_walks_as_prost_decodes_it() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: "up".into(),
                    },
                    Label {
                        name: "job".into(),
                        value: "x".into(),
                    },
                ],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1_700_000_000_000,
                }],
                ..Default::default()
            }],
            metadata: vec![MetricMetadata {
                r#type: 2,
                metric_family_name: "up".into(),
                ..Default::default()
            }],
        };
        let body = req.encode_to_vec();
        assert_eq!(walked(&body).unwrap(), req);
        assert_eq!(req.metadata[0].kind(), Some("gauge"));
    }

    #[test]
    fn broken_bodies_are_errors() {
        let good = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "__name__".into(),
                    value: "up".into(),
                }],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 5,
                }],
                ..Default::default()
            }],
            metadata: vec![],
        }
        .encode_to_vec();
        for cut in 1..good.len() {
            assert!(walked(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A label value that is not UTF-8.
        let mut bad = good.clone();
        let at = bad.windows(2).position(|w| w == b"up").unwrap();
        bad[at] = 0xff;
        let e = walked(&bad).unwrap_err().to_string();
        assert!(e.contains("Label") && e.contains("UTF-8"), "{e}");
        // A huge declared length.
        let e = walked(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        // Field 1 as a varint.
        let e = walked(&[0x08, 0x01]).unwrap_err();
        assert!(e.to_string().contains("wrong wire type"), "{e}");
        // Groups nested deeper than the recursion limit.
        let deep: Vec<u8> = std::iter::repeat_n(0x2b, 200)
            .chain(std::iter::repeat_n(0x2c, 200))
            .collect();
        assert!(walked(&deep).is_err());
        // Unknown fields are skipped.
        let mut extra = vec![0x28, 0x05];
        extra.extend_from_slice(&good);
        assert_eq!(walked(&extra).unwrap().timeseries.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The walker reads every request exactly as prost decodes it.
        #[test]
        fn walking_equals_decoding(req in request()) {
            let body = req.encode_to_vec();
            prop_assert_eq!(walked(&body).unwrap(), counted(req));
        }

        /// Random bytes and mutations of a valid body: never a panic, and the walker
        /// fails exactly when prost fails.
        #[test]
        fn walking_garbage_never_panics(
            req in request(),
            noise in prop::collection::vec(any::<u8>(), 0..64),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let _ = walked(&noise);
            let mut body = req.encode_to_vec();
            for (i, b) in edits {
                if !body.is_empty() {
                    let i = i.index(body.len());
                    body[i] = b;
                }
            }
            let body = &body[..cut.index(body.len() + 1)];
            let ours = walked(body);
            // The walker is laxer only inside exemplars and histograms (it skips them)
            // and past the labels it keeps: whatever prost decodes, it walks alike
            // (compared encoded, so that NaN values compare).
            if let Ok(t) = WriteRequest::decode(body) {
                if t.timeseries.iter().all(|s| s.labels.len() <= MAX_SERIES_LABELS) {
                    let ours = ours.expect("prost decodes it, so the walker must");
                    prop_assert_eq!(ours.encode_to_vec(), counted(t).encode_to_vec());
                }
            }
        }
    }
}
