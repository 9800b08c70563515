//! Prometheus remote-write 2.0 (`io.prometheus.write.v2.Request`), walked in place
//! like 1.0 ([`super::proto`]).
//!
//! Messages and field numbers as in Prometheus' `prompb/io/prometheus/write/v2/types.proto`
//! (sent as `Content-Type: application/x-protobuf;proto=io.prometheus.write.v2.Request`,
//! `X-Prometheus-Remote-Write-Version: 2.0.0`):
//!
//! ```text
//! message Request    { reserved 1 to 3; repeated string symbols = 4;
//!                      repeated TimeSeries timeseries = 5; }
//! message TimeSeries { repeated uint32 labels_refs = 1; repeated Sample samples = 2;
//!                      repeated Histogram histograms = 3; repeated Exemplar exemplars = 4;
//!                      Metadata metadata = 5; int64 created_timestamp = 6; }
//! message Exemplar   { repeated uint32 labels_refs = 1; double value = 2; int64 timestamp = 3; }
//! message Sample     { double value = 1; int64 timestamp = 2; }
//! message Metadata   { MetricType type = 1; uint32 help_ref = 3; uint32 unit_ref = 4; }
//! ```
//!
//! `MetricType` numbers its values as 1.0 does (`METRIC_TYPE_COUNTER = 1`, ...).
//! Strings live once in `symbols` (which must start with ""); a series names its labels
//! as pairs of indices into it. The symbol table is kept as slices of the body (at most
//! [`MAX_SYMBOLS`], each checked as UTF-8); a label reference outside it, or an odd
//! number of them, makes the request invalid.

use prost::Message;

use super::proto::{metric_kind, Histogram, Sample, MAX_SERIES_LABELS};
use super::wire::{packed, Field, Fields, WireError};

/// Symbols one request may hold (16 MiB of table at most).
pub const MAX_SYMBOLS: usize = 1 << 20;

/// `io.prometheus.write.v2.Request`.
// The whole-message form: the walker's reference in tests (never decoded here).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(string, repeated, tag = "4")]
    pub symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub timeseries: Vec<TimeSeries>,
}

/// `io.prometheus.write.v2.TimeSeries`.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub histograms: Vec<Histogram>,
    #[prost(message, repeated, tag = "4")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, optional, tag = "5")]
    pub metadata: Option<Metadata>,
    #[prost(int64, tag = "6")]
    pub created_timestamp: i64,
}

/// `io.prometheus.write.v2.Exemplar`.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `io.prometheus.write.v2.Metadata`.
#[derive(Clone, PartialEq, Message)]
pub struct Metadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(uint32, tag = "3")]
    pub help_ref: u32,
    #[prost(uint32, tag = "4")]
    pub unit_ref: u32,
}

/// The symbol table of a request, as slices of it.
pub fn symbols(body: &[u8]) -> Result<Vec<&str>, WireError> {
    let mut out = Vec::new();
    for field in Fields::new(body, "Request") {
        let (tag, f) = field?;
        if tag == 4 {
            let b = f.bytes("Request", 4)?;
            if out.len() == MAX_SYMBOLS {
                return Err(WireError::TooMany(format!(
                    "more than {MAX_SYMBOLS} symbols in one request: send smaller batches"
                )));
            }
            out.push(std::str::from_utf8(b).map_err(|e| {
                WireError::Invalid("Request", format!("symbol {} is not UTF-8: {e}", out.len()))
            })?);
        }
    }
    Ok(out)
}

/// One series of a 2.0 request, as [`each_series`] hands it over.
pub struct Series<'a> {
    /// Its position in the request (0-based).
    pub index: usize,
    /// Its first [`MAX_SERIES_LABELS`] labels.
    pub labels: Vec<(&'a str, &'a str)>,
    /// All its labels (reference pairs), counted.
    pub label_count: usize,
    /// The `kind` of its metadata's type.
    pub kind: Option<&'static str>,
    pub exemplars: usize,
    pub histograms: usize,
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

fn series<'a>(index: usize, body: &'a [u8], symbols: &[&'a str]) -> Result<Series<'a>, WireError> {
    let mut s = Series {
        index,
        labels: Vec::new(),
        label_count: 0,
        kind: None,
        exemplars: 0,
        histograms: 0,
        body,
    };
    let mut refs = 0usize;
    let mut name: Option<&'a str> = None;
    let mut push = |r: u64, s: &mut Series<'a>| -> Result<(), WireError> {
        let sym = usize::try_from(r)
            .ok()
            .and_then(|r| symbols.get(r))
            .ok_or_else(|| {
                WireError::Invalid(
                    "TimeSeries",
                    format!(
                        "series {index}: label reference {r} is outside the {} symbols",
                        symbols.len()
                    ),
                )
            })?;
        refs += 1;
        match name.take() {
            None => name = Some(sym),
            Some(n) => {
                s.label_count += 1;
                if s.labels.len() < MAX_SERIES_LABELS {
                    s.labels.push((n, sym));
                }
            }
        }
        Ok(())
    };
    for field in Fields::new(body, "TimeSeries") {
        let (tag, f) = field?;
        match (tag, f) {
            (1, Field::Varint(r)) => push(r, &mut s)?,
            (1, Field::Bytes(b)) => {
                for r in packed("TimeSeries", b) {
                    push(r?, &mut s)?;
                }
            }
            (1, _) => return Err(WireError::WireType("TimeSeries", 1)),
            (2, f) => {
                Sample::decode(f.bytes("TimeSeries", 2)?)
                    .map_err(|e| WireError::Proto("Sample", e))?;
            }
            (3, f) => {
                f.bytes("TimeSeries", 3)?;
                s.histograms += 1;
            }
            (4, f) => {
                f.bytes("TimeSeries", 4)?;
                s.exemplars += 1;
            }
            (5, f) => {
                let m = Metadata::decode(f.bytes("TimeSeries", 5)?)
                    .map_err(|e| WireError::Proto("Metadata", e))?;
                s.kind = metric_kind(m.r#type);
            }
            _ => {}
        }
    }
    if refs % 2 == 1 {
        return Err(WireError::Invalid(
            "TimeSeries",
            format!("series {index}: an odd number ({refs}) of label references"),
        ));
    }
    Ok(s)
}

/// Every series of a 2.0 request, in order, its labels resolved through `symbols`.
/// The first error ends the walk.
pub fn each_series<'a, E: From<WireError>>(
    body: &'a [u8],
    symbols: &[&'a str],
    mut f: impl FnMut(Series<'a>) -> Result<(), E>,
) -> Result<(), E> {
    let mut index = 0;
    for field in Fields::new(body, "Request") {
        let (tag, p) = field?;
        if tag == 5 {
            f(series(index, p.bytes("Request", 5)?, symbols)?)?;
            index += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the walker saw: per series its labels, samples (as encoded bytes, so NaN
    /// compares), kind, exemplar and histogram counts.
    type Seen = Vec<(
        Vec<(String, String)>,
        Vec<u8>,
        Option<&'static str>,
        usize,
        usize,
    )>;

    fn walked(body: &[u8]) -> Result<Seen, WireError> {
        let syms = symbols(body)?;
        let mut out = Vec::new();
        each_series::<WireError>(body, &syms, |s| {
            let samples: Vec<u8> = s.samples().flat_map(|x| x.encode_to_vec()).collect();
            let labels = s
                .labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            out.push((labels, samples, s.kind, s.exemplars, s.histograms));
            Ok(())
        })?;
        Ok(out)
    }

    /// The same from prost's decoding; None where the request is invalid for 2.0.
    fn decoded(req: &Request) -> Option<Seen> {
        req.timeseries
            .iter()
            .map(|ts| {
                if ts.labels_refs.len() % 2 == 1 {
                    return None;
                }
                let sym = |r: u32| req.symbols.get(r as usize).cloned();
                let labels = ts
                    .labels_refs
                    .chunks(2)
                    .take(MAX_SERIES_LABELS)
                    .map(|p| Some((sym(p[0])?, sym(p[1])?)))
                    .collect::<Option<Vec<_>>>()?;
                if ts.labels_refs.iter().any(|&r| sym(r).is_none()) {
                    return None;
                }
                Some((
                    labels,
                    ts.samples.iter().flat_map(|x| x.encode_to_vec()).collect(),
                    ts.metadata.as_ref().and_then(|m| metric_kind(m.r#type)),
                    ts.exemplars.len(),
                    ts.histograms.len(),
                ))
            })
            .collect()
    }

    fn request() -> impl Strategy<Value = Request> {
        let ts = (
            prop::collection::vec(0u32..6, 0..7),
            prop::collection::vec((any::<f64>(), any::<i64>()), 0..3),
            prop::option::of(0..8i32),
            0..2usize,
            0..2usize,
        )
            .prop_map(|(labels_refs, samples, t, e, h)| TimeSeries {
                labels_refs,
                samples: samples
                    .into_iter()
                    .map(|(value, timestamp)| Sample { value, timestamp })
                    .collect(),
                histograms: vec![
                    Histogram {
                        sum: 1.0,
                        timestamp: 3
                    };
                    h
                ],
                exemplars: vec![Exemplar::default(); e],
                metadata: t.map(|t| Metadata {
                    r#type: t,
                    help_ref: 0,
                    unit_ref: 0,
                }),
                created_timestamp: 0,
            });
        (
            prop::collection::vec(".{0,4}", 0..5),
            prop::collection::vec(ts, 0..4),
        )
            .prop_map(|(mut symbols, timeseries)| {
                symbols.insert(0, String::new());
                Request {
                    symbols,
                    timeseries,
                }
            })
    }

    #[test]
    fn refs_resolve_and_bad_ones_are_errors() {
        let req = Request {
            symbols: vec!["".into(), "__name__".into(), "up".into(), "job".into()],
            timeseries: vec![TimeSeries {
                labels_refs: vec![1, 2, 3, 0],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 5,
                }],
                metadata: Some(Metadata {
                    r#type: 2,
                    help_ref: 0,
                    unit_ref: 0,
                }),
                ..Default::default()
            }],
        };
        let seen = walked(&req.encode_to_vec()).unwrap();
        assert_eq!(
            seen[0].0,
            vec![
                ("__name__".into(), "up".into()),
                ("job".into(), String::new())
            ]
        );
        assert_eq!(seen[0].2, Some("gauge"));
        let mut bad = req.clone();
        bad.timeseries[0].labels_refs = vec![1, 9];
        let e = walked(&bad.encode_to_vec()).unwrap_err().to_string();
        assert!(
            e.contains("label reference 9 is outside the 4 symbols"),
            "{e}"
        );
        bad.timeseries[0].labels_refs = vec![1, 2, 3];
        let e = walked(&bad.encode_to_vec()).unwrap_err().to_string();
        assert!(e.contains("odd number (3)"), "{e}");
        let mut bad = req.encode_to_vec();
        let at = bad.windows(2).position(|w| w == b"up").unwrap();
        bad[at] = 0xff;
        let e = walked(&bad).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The walker reads every request as prost decodes it, and refuses exactly
        /// the ones with references outside the table or an odd count.
        #[test]
        fn walking_equals_decoding(req in request()) {
            let body = req.encode_to_vec();
            match decoded(&req) {
                Some(want) => prop_assert_eq!(walked(&body).unwrap(), want),
                None => prop_assert!(walked(&body).is_err()),
            }
        }

        /// Random bytes and mutated, cut valid bodies: no panic, and whatever prost
        /// decodes (with valid references) the walker reads alike.
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
            if let Ok(t) = Request::decode(body) {
                if let Some(want) = decoded(&t) {
                    prop_assert_eq!(ours.expect("prost decodes it, so the walker must"), want);
                }
            }
        }
    }
}
