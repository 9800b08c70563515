//! [`Acc`]: the accumulator of one window and group — event count, late count and, per
//! field the functions read, the parts they need (stats, a [`DDSketch`], a [`Distinct`]
//! set, [`TopK`] counters). Accumulators merge (partitions → one row) and encode to
//! bytes (checkpoints, partial results) deterministically: the same input in the same
//! order gives the same bytes.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::codec::{Reader, Writer};
use crate::hash::hash64;
use crate::spec::{Definition, FieldNeeds, FnKind, QUANTILE_ALPHA};
use crate::{DDSketch, DecodeError, HyperLogLog};

/// Values kept exactly before a distinct count switches to HyperLogLog.
const EXACT_DISTINCT: usize = 512;
const HLL_P: u8 = 14;
const SKETCH_BUCKETS: usize = 2048;

/// A distinct count: exact (sorted hashes) while small, then HyperLogLog.
#[derive(Debug, Clone, PartialEq)]
pub enum Distinct {
    Exact(Vec<u64>),
    Sketch(HyperLogLog),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(Vec::new())
    }
}

impl Distinct {
    pub fn add_hash(&mut self, h: u64) {
        match self {
            Distinct::Exact(v) => {
                if let Err(i) = v.binary_search(&h) {
                    v.insert(i, h);
                    if v.len() > EXACT_DISTINCT {
                        self.switch_to_sketch();
                    }
                }
            }
            Distinct::Sketch(s) => s.add_hash(h),
        }
    }

    fn switch_to_sketch(&mut self) {
        if let Distinct::Exact(v) = self {
            let mut s = HyperLogLog::new(HLL_P);
            for h in v.iter() {
                s.add_hash(*h);
            }
            *self = Distinct::Sketch(s);
        }
    }

    pub fn merge(&mut self, other: &Distinct) {
        match other {
            Distinct::Exact(v) => {
                for h in v {
                    self.add_hash(*h);
                }
            }
            Distinct::Sketch(o) => {
                self.switch_to_sketch();
                if let Distinct::Sketch(s) = self {
                    s.merge(o).expect("one precision for every distinct sketch");
                }
            }
        }
    }

    pub fn estimate(&self) -> u64 {
        match self {
            Distinct::Exact(v) => v.len() as u64,
            Distinct::Sketch(s) => s.estimate().round() as u64,
        }
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            Distinct::Exact(v) => {
                w.u8(0);
                w.u32(v.len() as u32);
                for h in v {
                    w.u64(*h);
                }
            }
            Distinct::Sketch(s) => {
                w.u8(1);
                w.bytes(&s.encode());
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Distinct, DecodeError> {
        Ok(match r.u8()? {
            0 => {
                let n = r.len(8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(r.u64()?);
                }
                if !v.windows(2).all(|p| p[0] < p[1]) {
                    return Err(DecodeError("distinct set out of order"));
                }
                Distinct::Exact(v)
            }
            1 => Distinct::Sketch(HyperLogLog::decode(r.bytes()?)?),
            _ => return Err(DecodeError("bad distinct tag")),
        })
    }
}

/// Heavy hitters by Space-Saving (Metwally et al. 2005) with `capacity` counters: every
/// value with more than `n / capacity` occurrences is kept, and counts are exact while
/// there are at most `capacity` distinct values. Ties break by value, so the result
/// never depends on hash-map order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopK {
    capacity: usize,
    counts: HashMap<String, u64>,
}

impl TopK {
    pub fn new(capacity: usize) -> TopK {
        TopK {
            capacity,
            counts: HashMap::new(),
        }
    }

    pub fn add(&mut self, v: &str, n: u64) {
        if let Some(c) = self.counts.get_mut(v) {
            *c += n;
            return;
        }
        if self.counts.len() < self.capacity {
            self.counts.insert(v.to_owned(), n);
            return;
        }
        // Replace the smallest counter (smallest value on ties); the newcomer inherits it.
        let (victim, min) = self
            .counts
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(k, c)| (k.clone(), *c))
            .expect("capacity > 0");
        self.counts.remove(&victim);
        self.counts.insert(v.to_owned(), min + n);
    }

    pub fn merge(&mut self, other: &TopK) {
        for (k, c) in other.sorted() {
            *self.counts.entry(k.to_owned()).or_insert(0) += c;
        }
        if self.counts.len() > self.capacity {
            let keep: Vec<(String, u64)> = self
                .sorted()
                .into_iter()
                .take(self.capacity)
                .map(|(k, c)| (k.to_owned(), c))
                .collect();
            self.counts = keep.into_iter().collect();
        }
    }

    /// Counters by count descending, then value.
    pub fn sorted(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.counts.iter().map(|(k, c)| (k.as_str(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }

    fn encode(&self, w: &mut Writer) {
        w.u32(self.capacity as u32);
        let s = self.sorted();
        w.u32(s.len() as u32);
        for (k, c) in s {
            w.str(k);
            w.u64(c);
        }
    }

    fn decode(r: &mut Reader) -> Result<TopK, DecodeError> {
        let capacity = r.u32()? as usize;
        let n = r.len(12)?;
        let mut counts = HashMap::with_capacity(n);
        for _ in 0..n {
            let k = r.str()?.to_owned();
            counts.insert(k, r.u64()?);
        }
        Ok(TopK { capacity, counts })
    }
}

/// What one field accumulates in one window and group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldAcc {
    /// Numeric values seen (sum/min/max/avg/rate read these).
    pub n: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub sketch: Option<DDSketch>,
    pub distinct: Option<Distinct>,
    pub topk: Option<TopK>,
}

impl FieldAcc {
    fn new(needs: &FieldNeeds) -> FieldAcc {
        FieldAcc {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: needs
                .sketch
                .then(|| DDSketch::new(QUANTILE_ALPHA, SKETCH_BUCKETS)),
            distinct: needs.distinct.then(Distinct::default),
            topk: (needs.topk > 0).then(|| TopK::new(needs.topk)),
        }
    }

    fn update(&mut self, v: &Value) {
        if let Some(x) = number(v) {
            self.n += 1;
            self.sum += x;
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            if let Some(s) = &mut self.sketch {
                s.add(x);
            }
        }
        if self.distinct.is_some() || self.topk.is_some() {
            let text = match v {
                Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
                other => std::borrow::Cow::Owned(other.to_string()),
            };
            if let Some(d) = &mut self.distinct {
                d.add_hash(hash64(text.as_bytes()));
            }
            if let Some(t) = &mut self.topk {
                t.add(&text, 1);
            }
        }
    }

    fn merge(&mut self, o: &FieldAcc) {
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if let (Some(a), Some(b)) = (&mut self.sketch, &o.sketch) {
            a.merge(b).expect("one accuracy for every sketch");
        }
        if let (Some(a), Some(b)) = (&mut self.distinct, &o.distinct) {
            a.merge(b);
        }
        if let (Some(a), Some(b)) = (&mut self.topk, &o.topk) {
            a.merge(b);
        }
    }

    fn encode(&self, w: &mut Writer) {
        w.u64(self.n);
        w.f64(self.sum);
        w.f64(self.min);
        w.f64(self.max);
        let flags = u8::from(self.sketch.is_some())
            | u8::from(self.distinct.is_some()) << 1
            | u8::from(self.topk.is_some()) << 2;
        w.u8(flags);
        if let Some(s) = &self.sketch {
            w.bytes(&s.encode());
        }
        if let Some(d) = &self.distinct {
            d.encode(w);
        }
        if let Some(t) = &self.topk {
            t.encode(w);
        }
    }

    fn decode(r: &mut Reader) -> Result<FieldAcc, DecodeError> {
        let (n, sum, min, max) = (r.u64()?, r.f64()?, r.f64()?, r.f64()?);
        let flags = r.u8()?;
        Ok(FieldAcc {
            n,
            sum,
            min,
            max,
            sketch: if flags & 1 != 0 {
                let s = DDSketch::decode(r.bytes()?)?;
                // Every accumulator's sketch has this accuracy; another cannot merge.
                if s.alpha() != QUANTILE_ALPHA {
                    return Err(DecodeError("sketch of another accuracy"));
                }
                Some(s)
            } else {
                None
            },
            distinct: if flags & 2 != 0 {
                Some(Distinct::decode(r)?)
            } else {
                None
            },
            topk: if flags & 4 != 0 {
                Some(TopK::decode(r)?)
            } else {
                None
            },
        })
    }
}

/// A JSON number, or a string holding one.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

/// A custom (Wasm) function's accumulator, as its plugin wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomState {
    pub format: u32,
    pub data: Vec<u8>,
}

/// Calls into the plugins of custom (`wasm(NAME)`) functions. Errors are the plugin's
/// message (a refusal, trap or timeout).
pub trait CustomFns {
    fn empty(&mut self, tenant: &str, plugin: &str) -> Result<CustomState, String>;
    fn update(
        &mut self,
        tenant: &str,
        plugin: &str,
        acc: CustomState,
        batch: &[u8],
    ) -> Result<CustomState, String>;
    fn merge(
        &mut self,
        tenant: &str,
        plugin: &str,
        a: CustomState,
        b: CustomState,
    ) -> Result<CustomState, String>;
    fn snapshot(
        &mut self,
        tenant: &str,
        plugin: &str,
        acc: CustomState,
    ) -> Result<CustomState, String>;
    fn finish(&mut self, tenant: &str, plugin: &str, acc: &CustomState) -> Result<Value, String>;
}

/// For aggregations without custom functions: every call fails.
pub struct NoCustom;

impl CustomFns for NoCustom {
    fn empty(&mut self, _: &str, p: &str) -> Result<CustomState, String> {
        Err(format!("no plugin host for wasm({p})"))
    }
    fn update(
        &mut self,
        _: &str,
        p: &str,
        _: CustomState,
        _: &[u8],
    ) -> Result<CustomState, String> {
        Err(format!("no plugin host for wasm({p})"))
    }
    fn merge(
        &mut self,
        _: &str,
        p: &str,
        _: CustomState,
        _: CustomState,
    ) -> Result<CustomState, String> {
        Err(format!("no plugin host for wasm({p})"))
    }
    fn snapshot(&mut self, _: &str, p: &str, _: CustomState) -> Result<CustomState, String> {
        Err(format!("no plugin host for wasm({p})"))
    }
    fn finish(&mut self, _: &str, p: &str, _: &CustomState) -> Result<Value, String> {
        Err(format!("no plugin host for wasm({p})"))
    }
}

/// One custom function's share of a window and group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomAcc {
    pub state: Option<CustomState>,
    /// Records waiting for the next `update` call (one call per log entry).
    pub pending: Vec<u8>,
    pub pending_records: u64,
    /// Records the plugin failed on (not in its state; reported with the result).
    pub failed: u64,
}

/// The accumulator of one window and group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Acc {
    /// Events counted in the window.
    pub count: u64,
    /// Events that arrived after the window closed (not in any other number).
    pub late: u64,
    pub fields: Vec<FieldAcc>,
    pub custom: Vec<CustomAcc>,
}

impl Acc {
    pub fn new(def: &Definition) -> Acc {
        Acc {
            count: 0,
            late: 0,
            fields: def.fields.iter().map(|(_, n)| FieldAcc::new(n)).collect(),
            custom: def.plugins.iter().map(|_| CustomAcc::default()).collect(),
        }
    }

    /// Only a late count (for a window that already closed).
    pub fn late(n: u64) -> Acc {
        Acc {
            late: n,
            ..Acc::default()
        }
    }

    /// Count a record; `line` is its JSON text (for custom functions, which get it in
    /// the next [`Acc::flush`]).
    pub fn update(&mut self, def: &Definition, record: &Value, line: &[u8]) {
        self.count += 1;
        for ((path, _), f) in def.fields.iter().zip(&mut self.fields) {
            if let Some(v) = path.get(record) {
                f.update(v);
            }
        }
        for c in &mut self.custom {
            c.pending.extend_from_slice(line);
            c.pending.push(b'\n');
            c.pending_records += 1;
        }
    }

    /// Give custom functions the records waiting for them (one call per function).
    /// A failed call leaves the state as it was and counts the records as failed.
    pub fn flush(&mut self, tenant: &str, def: &Definition, fns: &mut dyn CustomFns) {
        for (c, plugin) in self.custom.iter_mut().zip(&def.plugins) {
            if c.pending.is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut c.pending);
            let n = std::mem::take(&mut c.pending_records);
            let acc = match c.state.take() {
                Some(s) => Ok(s),
                None => fns.empty(tenant, plugin),
            };
            let before = acc.clone().ok();
            match acc.and_then(|a| fns.update(tenant, plugin, a, &batch)) {
                Ok(s) => c.state = Some(s),
                Err(e) => {
                    tracing::warn!(tenant, plugin = %plugin, error = %e, "custom aggregation call failed");
                    c.state = before;
                    c.failed += n;
                }
            }
        }
    }

    /// Let custom functions compact their states before the accumulator is written.
    pub fn snapshot(&mut self, tenant: &str, def: &Definition, fns: &mut dyn CustomFns) {
        for (c, plugin) in self.custom.iter_mut().zip(&def.plugins) {
            if let Some(s) = c.state.take() {
                c.state = Some(match fns.snapshot(tenant, plugin, s.clone()) {
                    Ok(t) => t,
                    Err(_) => s,
                });
            }
        }
    }

    /// Add `o` (the same window and group) into this accumulator. Custom states are
    /// merged by their plugin (`fns`); when that fails, `o`'s records count as failed.
    pub fn merge(&mut self, o: &Acc, tenant: &str, def: &Definition, fns: &mut dyn CustomFns) {
        self.count += o.count;
        self.late += o.late;
        if self.fields.is_empty() {
            self.fields = o.fields.clone();
        } else {
            for (a, b) in self.fields.iter_mut().zip(&o.fields) {
                a.merge(b);
            }
        }
        if self.custom.is_empty() {
            self.custom = o.custom.clone();
            return;
        }
        for ((a, b), plugin) in self.custom.iter_mut().zip(&o.custom).zip(&def.plugins) {
            a.failed += b.failed;
            a.state = match (a.state.take(), b.state.clone()) {
                (x, None) => x,
                (None, y) => y,
                (Some(x), Some(y)) => match fns.merge(tenant, plugin, x.clone(), y) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(tenant, plugin = %plugin, error = %e, "custom aggregation call failed");
                        a.failed += o.count;
                        Some(x)
                    }
                },
            };
        }
    }

    pub fn encode_into(&self, w: &mut Writer) {
        w.u64(self.count);
        w.u64(self.late);
        w.u32(self.fields.len() as u32);
        for f in &self.fields {
            f.encode(w);
        }
        w.u32(self.custom.len() as u32);
        for c in &self.custom {
            debug_assert!(c.pending.is_empty(), "flush before encoding");
            match &c.state {
                None => w.u8(0),
                Some(s) => {
                    w.u8(1);
                    w.u32(s.format);
                    w.bytes(&s.data);
                }
            }
            w.u64(c.failed);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode_into(&mut w);
        w.0
    }

    pub fn decode_from(r: &mut Reader) -> Result<Acc, DecodeError> {
        let (count, late) = (r.u64()?, r.u64()?);
        let n = r.len(33)?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push(FieldAcc::decode(r)?);
        }
        let n = r.len(9)?;
        let mut custom = Vec::with_capacity(n);
        for _ in 0..n {
            let state = match r.u8()? {
                0 => None,
                1 => Some(CustomState {
                    format: r.u32()?,
                    data: r.bytes()?.to_vec(),
                }),
                _ => return Err(DecodeError("bad custom state tag")),
            };
            custom.push(CustomAcc {
                state,
                failed: r.u64()?,
                ..CustomAcc::default()
            });
        }
        Ok(Acc {
            count,
            late,
            fields,
            custom,
        })
    }

    pub fn decode(b: &[u8]) -> Result<Acc, DecodeError> {
        let mut r = Reader(b);
        let a = Acc::decode_from(&mut r)?;
        if !r.is_empty() {
            return Err(DecodeError("trailing bytes after an accumulator"));
        }
        Ok(a)
    }

    /// The results of `def`'s functions, by alias (null where a field had no values).
    /// Custom functions' results come from their plugin's `finish`; records a plugin
    /// failed on are reported as `ALIAS.failed`, a failed `finish` as `{"error": ...}`.
    pub fn results(
        &self,
        tenant: &str,
        def: &Definition,
        fns: &mut dyn CustomFns,
    ) -> Map<String, Value> {
        let secs = def.windows.size_ms as f64 / 1000.0;
        let mut out = Map::new();
        for f in &def.functions {
            let field = f.field.and_then(|i| self.fields.get(i));
            let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
            let stat = |g: &dyn Fn(&FieldAcc) -> f64| match field {
                Some(fa) if fa.n > 0 => num(g(fa)),
                _ => Value::Null,
            };
            let v = match f.kind {
                FnKind::Count => json!(self.count),
                FnKind::Rate => num(self.count as f64 / secs),
                FnKind::Sum => stat(&|fa| fa.sum),
                FnKind::Min => stat(&|fa| fa.min),
                FnKind::Max => stat(&|fa| fa.max),
                FnKind::Avg => stat(&|fa| fa.sum / fa.n as f64),
                FnKind::RateOf => stat(&|fa| fa.sum / secs),
                FnKind::Quantile(q) => field
                    .and_then(|fa| fa.sketch.as_ref())
                    .and_then(|s| s.quantile(q))
                    .map_or(Value::Null, num),
                FnKind::Distinct => field
                    .and_then(|fa| fa.distinct.as_ref())
                    .map_or(json!(0), |d| json!(d.estimate())),
                FnKind::TopK(k) => Value::Array(
                    field
                        .and_then(|fa| fa.topk.as_ref())
                        .map(|t| {
                            t.sorted()
                                .into_iter()
                                .take(k)
                                .map(|(v, c)| json!({"value": v, "count": c}))
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                FnKind::Wasm(i) => {
                    let c = self.custom.get(i);
                    if let Some(n) = c.map(|c| c.failed).filter(|n| *n > 0) {
                        out.insert(format!("{}.failed", f.alias), json!(n));
                    }
                    match c.and_then(|c| c.state.as_ref()) {
                        None => Value::Null,
                        Some(s) => fns
                            .finish(tenant, &def.plugins[i], s)
                            .unwrap_or_else(|e| json!({ "error": e })),
                    }
                }
            };
            out.insert(f.alias.clone(), v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::aggregation::AggregationConfig;

    fn def(functions: &[&str]) -> Definition {
        Definition::new(&AggregationConfig::new("t", "10s", functions)).unwrap()
    }

    #[test]
    fn results_of_every_function() {
        let d = def(&[
            "count",
            "rate",
            "sum(x)",
            "min(x)",
            "max(x)",
            "avg(x) as mean",
            "rate(x)",
            "p50(x)",
            "distinct(u)",
            "topk(2, path)",
            "max(missing)",
        ]);
        let mut a = Acc::new(&d);
        for (x, u, path) in [(1, "a", "/"), (2, "b", "/x"), (3, "a", "/"), (4, "c", "/y")] {
            a.update(&d, &json!({"x": x, "u": u, "path": path}), b"");
        }
        a.update(&d, &json!({"x": "5", "u": 7, "path": "/"}), b"");
        let r = a.results("t", &d, &mut NoCustom);
        assert_eq!(r["count"], json!(5));
        assert_eq!(r["rate"], json!(0.5));
        assert_eq!(r["sum(x)"], json!(15.0));
        assert_eq!(r["min(x)"], json!(1.0));
        assert_eq!(r["max(x)"], json!(5.0));
        assert_eq!(r["mean"], json!(3.0));
        assert_eq!(r["rate(x)"], json!(1.5));
        let p50 = r["p50(x)"].as_f64().unwrap();
        assert!((p50 - 3.0).abs() <= 0.03, "{p50}");
        assert_eq!(r["distinct(u)"], json!(4), "a, b, c and 7");
        assert_eq!(
            r["topk(2, path)"],
            json!([{"value":"/","count":3},{"value":"/x","count":1}])
        );
        assert_eq!(r["max(missing)"], Value::Null);
    }

    #[test]
    fn merge_equals_one_accumulator_and_encoding_roundtrips() {
        let d = def(&["count", "sum(x)", "p99(x)", "distinct(u)", "topk(3, u)"]);
        let (mut whole, mut a, mut b) = (Acc::new(&d), Acc::new(&d), Acc::new(&d));
        for i in 0..5000u64 {
            let r = json!({"x": (i % 97) as f64, "u": format!("user{}", i % 700)});
            whole.update(&d, &r, b"");
            if i % 3 == 0 { &mut a } else { &mut b }.update(&d, &r, b"");
        }
        let enc = a.encode();
        let mut merged = Acc::decode(&enc).unwrap();
        assert_eq!(merged, a);
        merged.merge(&b, "t", &d, &mut NoCustom);
        let (rw, rm) = (
            whole.results("t", &d, &mut NoCustom),
            merged.results("t", &d, &mut NoCustom),
        );
        assert_eq!(rw["count"], rm["count"]);
        assert_eq!(rw["sum(x)"], rm["sum(x)"]);
        assert_eq!(rw["p99(x)"], rm["p99(x)"]);
        assert_eq!(rw["distinct(u)"], rm["distinct(u)"], "same HLL registers");
        let est = rm["distinct(u)"].as_u64().unwrap();
        assert!((est as f64 - 700.0).abs() < 700.0 * 0.03, "{est}");
        for n in 0..enc.len() {
            assert!(Acc::decode(&enc[..n]).is_err(), "{n}");
        }
        let mut late = Acc::late(3);
        late.merge(&Acc::late(2), "t", &d, &mut NoCustom);
        assert_eq!(late.late, 5);
        let mut with = a.clone();
        with.merge(&late, "t", &d, &mut NoCustom);
        assert_eq!((with.count, with.late), (a.count, 5));
    }

    #[test]
    fn topk_finds_heavy_hitters_deterministically() {
        let mut t = TopK::new(20);
        let mut u = TopK::new(20);
        for i in 0..10_000u32 {
            let v = if i % 4 == 0 {
                "hot".to_owned()
            } else {
                format!("cold{}", i % 997)
            };
            t.add(&v, 1);
            u.add(&v, 1);
        }
        assert_eq!(t.sorted()[0].0, "hot");
        assert!(t.sorted()[0].1 >= 2500);
        let (mut w1, mut w2) = (Writer::default(), Writer::default());
        t.encode(&mut w1);
        u.encode(&mut w2);
        assert_eq!(w1.0, w2.0, "same input, same bytes");
    }
}
