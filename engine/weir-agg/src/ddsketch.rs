//! [`DDSketch`] (Masson, Rim & Lee, VLDB 2019): quantiles with relative accuracy `α`.
//!
//! Guarantee: for any quantile `q`, the returned value `v̂` and the true value `v` of
//! rank `⌊q·(n−1)⌋` satisfy `|v̂ − v| ≤ α·|v|`, for values whose magnitude is at least
//! [`MIN_INDEXABLE`] (smaller magnitudes count as zero) and as long as no bucket was
//! collapsed. Positive values fall into bucket `⌈log_γ(x)⌉` with `γ = (1+α)/(1−α)`;
//! a bucket answers with `2γ^i/(γ+1)`, within `α` of anything in it. Negative values
//! use a mirrored store. Merging adds bucket counts, so a merge equals the sketch of
//! the union exactly. Size is bounded by `max_buckets` per sign: beyond it the lowest
//! buckets are collapsed into one (only the lowest quantiles then lose accuracy).

use crate::DecodeError;

/// Magnitudes below this count as zero.
pub const MIN_INDEXABLE: f64 = 1e-9;

/// The largest bucket index (either sign) a decoded sketch may hold: a sketch of 1e-4
/// relative accuracy indexes every f64 within ±(709 / 2e-4) ≈ ±3.6M.
pub const MAX_DECODED_INDEX: i32 = 1 << 22;

/// Counts of consecutive bucket indexes starting at `offset`.
#[derive(Debug, Clone, PartialEq, Default)]
struct Store {
    offset: i32,
    counts: Vec<u64>,
    total: u64,
}

impl Store {
    fn add(&mut self, index: i32, n: u64, max: usize) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(0);
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            let mut v = vec![0; grow];
            v.extend_from_slice(&self.counts);
            self.counts = v;
            self.offset = index;
        } else if index >= self.offset + self.counts.len() as i32 {
            self.counts.resize((index - self.offset + 1) as usize, 0);
        }
        let slot = &mut self.counts[(index - self.offset) as usize];
        *slot = slot.saturating_add(n);
        self.total = self.total.saturating_add(n);
        if self.counts.len() > max {
            // Collapse the lowest buckets into the lowest one kept.
            let cut = self.counts.len() - max;
            let folded: u64 = self.counts[..=cut]
                .iter()
                .fold(0u64, |a, c| a.saturating_add(*c));
            self.counts.drain(..cut);
            self.counts[0] = folded;
            self.offset += cut as i32;
        }
    }

    /// Bucket indexes with their counts, ascending.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (self.offset + i as i32, *c))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DDSketch {
    alpha: f64,
    gamma_ln: f64,
    max_buckets: usize,
    positive: Store,
    negative: Store,
    zero: u64,
    min: f64,
    max: f64,
    sum: f64,
}

impl DDSketch {
    /// A sketch with relative accuracy `alpha` (e.g. 0.01) and at most `max_buckets`
    /// buckets per sign (2048 covers 1e-9..1e9 at 1%).
    pub fn new(alpha: f64, max_buckets: usize) -> DDSketch {
        assert!(alpha > 0.0 && alpha < 1.0, "alpha must be in (0, 1)");
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        DDSketch {
            alpha,
            gamma_ln: gamma.ln(),
            max_buckets: max_buckets.max(8),
            positive: Store::default(),
            negative: Store::default(),
            zero: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
        }
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    fn index(&self, magnitude: f64) -> i32 {
        (magnitude.ln() / self.gamma_ln).ceil() as i32
    }

    fn value(&self, index: i32) -> f64 {
        // The point within α of every value of the bucket (γ^(i−1), γ^i].
        let gamma = self.gamma_ln.exp();
        2.0 * (self.gamma_ln * index as f64).exp() / (gamma + 1.0)
    }

    /// Add one value (NaN is ignored).
    pub fn add(&mut self, x: f64) {
        if x.is_nan() {
            return;
        }
        if x > MIN_INDEXABLE {
            let i = self.index(x);
            self.positive.add(i, 1, self.max_buckets);
        } else if x < -MIN_INDEXABLE {
            let i = self.index(-x);
            self.negative.add(i, 1, self.max_buckets);
        } else {
            self.zero += 1;
        }
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.sum += x;
    }

    pub fn count(&self) -> u64 {
        self.zero
            .saturating_add(self.positive.total)
            .saturating_add(self.negative.total)
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn min(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.max)
    }

    /// The value at quantile `q` in [0, 1] (None when empty).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for (i, c) in self.negative.iter().rev() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(-self.value(i).clamp(-self.max, -self.min));
            }
        }
        seen = seen.saturating_add(self.zero);
        if seen > rank {
            return Some(0.0);
        }
        for (i, c) in self.positive.iter() {
            seen = seen.saturating_add(c);
            if seen > rank {
                return Some(self.value(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Add everything `other` counted. Both must have the same accuracy.
    pub fn merge(&mut self, other: &DDSketch) -> Result<(), &'static str> {
        if (self.alpha - other.alpha).abs() > f64::EPSILON {
            return Err("sketches of different accuracy cannot merge");
        }
        for (i, c) in other.positive.iter() {
            self.positive.add(i, c, self.max_buckets);
        }
        for (i, c) in other.negative.iter() {
            self.negative.add(i, c, self.max_buckets);
        }
        self.zero = self.zero.saturating_add(other.zero);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        Ok(())
    }

    /// Bytes for a checkpoint: `[alpha f64][max_buckets u32][zero u64][min][max][sum]`
    /// then each store as `[offset i32][len u32][counts u64...]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(48 + 8 * (self.positive.counts.len() + self.negative.counts.len()));
        out.extend_from_slice(&self.alpha.to_le_bytes());
        out.extend_from_slice(&(self.max_buckets as u32).to_le_bytes());
        out.extend_from_slice(&self.zero.to_le_bytes());
        for f in [self.min, self.max, self.sum] {
            out.extend_from_slice(&f.to_le_bytes());
        }
        for s in [&self.positive, &self.negative] {
            out.extend_from_slice(&s.offset.to_le_bytes());
            out.extend_from_slice(&(s.counts.len() as u32).to_le_bytes());
            for c in &s.counts {
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(mut b: &[u8]) -> Result<DDSketch, DecodeError> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
            if b.len() < n {
                return Err(DecodeError("truncated ddsketch"));
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Ok(h)
        }
        let f64_ = |b: &mut &[u8]| take(b, 8).map(|x| f64::from_le_bytes(x.try_into().expect("8")));
        let alpha = f64_(&mut b)?;
        // At 1e-4 or coarser every f64 indexes within MAX_DECODED_INDEX.
        if !((1e-4..1.0).contains(&alpha)) {
            return Err(DecodeError("ddsketch accuracy out of range"));
        }
        let max = u32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4")) as usize;
        let mut s = DDSketch::new(alpha, max);
        s.zero = u64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8"));
        s.min = f64_(&mut b)?;
        s.max = f64_(&mut b)?;
        s.sum = f64_(&mut b)?;
        for store in [&mut s.positive, &mut s.negative] {
            store.offset = i32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4"));
            let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4")) as usize;
            if len > MAX_DECODED_INDEX as usize {
                return Err(DecodeError("ddsketch store too large"));
            }
            // Bucket indexes stay where a sketch of any sane accuracy puts them, so
            // index arithmetic never overflows and merging two stores never allocates
            // more than their span.
            let end = i64::from(store.offset) + len as i64;
            if i64::from(store.offset) < -i64::from(MAX_DECODED_INDEX)
                || end > i64::from(MAX_DECODED_INDEX)
            {
                return Err(DecodeError("ddsketch bucket index out of range"));
            }
            for _ in 0..len {
                let c = u64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8"));
                store.counts.push(c);
                store.total = store
                    .total
                    .checked_add(c)
                    .ok_or(DecodeError("ddsketch counts overflow"))?;
            }
        }
        if !b.is_empty() {
            return Err(DecodeError("trailing bytes after ddsketch"));
        }
        let n = s
            .zero
            .checked_add(s.positive.total)
            .and_then(|n| n.checked_add(s.negative.total))
            .ok_or(DecodeError("ddsketch counts overflow"))?;
        if n > 0 && (s.min.is_nan() || s.max.is_nan() || s.min > s.max) {
            return Err(DecodeError("ddsketch min and max out of order"));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn sample() -> Vec<u8> {
            let mut s = DDSketch::new(0.01, 64);
            for x in [-3.5, -0.2, 0.0, 1e-12, 0.7, 12.0, 1e9] {
                s.add(x);
            }
            s.encode()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Whatever bytes decode, the sketch can be merged, queried and re-encoded
            /// without a panic (or an allocation beyond its index range).
            #[test]
            fn mutated_sketches_never_panic(
                edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
            ) {
                let mut b = sample();
                for (at, v) in edits {
                    let i = at.index(b.len());
                    b[i] = v;
                }
                if let Ok(d) = DDSketch::decode(&b) {
                    let mut fresh = DDSketch::new(0.01, 64);
                    fresh.add(5.0);
                    let _ = fresh.merge(&d);
                    let mut other = d.clone();
                    let _ = other.merge(&d);
                    other.add(3.0);
                    other.add(-1e300);
                    for q in [0.0, 0.5, 0.99, 1.0] {
                        let _ = d.quantile(q);
                        let _ = other.quantile(q);
                        let _ = fresh.quantile(q);
                    }
                    let _ = DDSketch::decode(&other.encode());
                }
            }
        }
    }
    use crate::testdata::Rng;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn quantiles_of_a_million_lognormal_values_within_alpha() {
        let alpha = 0.01;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut values: Vec<f64> = (0..1_000_000).map(|_| rng.lognormal(3.0, 1.5)).collect();
        let mut s = DDSketch::new(alpha, 2048);
        for v in &values {
            s.add(*v);
        }
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for q in [
            0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0,
        ] {
            let (want, got) = (exact(&values, q), s.quantile(q).unwrap());
            let err = (got - want).abs() / want;
            assert!(err <= alpha + 1e-12, "q={q}: {got} vs {want} ({err:.5})");
        }
        assert_eq!(s.count(), 1_000_000);
        assert!(
            s.positive.counts.len() < 2048,
            "{} buckets",
            s.positive.counts.len()
        );
    }

    #[test]
    fn merge_equals_the_sketch_of_the_union_and_bytes_roundtrip() {
        let mut rng = Rng(7);
        let values: Vec<f64> = (0..20_000)
            .map(|i| rng.lognormal(0.0, 2.0) * if i % 7 == 0 { -1.0 } else { 1.0 })
            .collect();
        let (mut a, mut b, mut all) = (
            DDSketch::new(0.02, 2048),
            DDSketch::new(0.02, 2048),
            DDSketch::new(0.02, 2048),
        );
        for (i, v) in values.iter().enumerate() {
            if i % 2 == 0 {
                a.add(*v)
            } else {
                b.add(*v)
            }
            all.add(*v);
        }
        a.add(0.0);
        all.add(0.0);
        a.merge(&b).unwrap();
        for q in [0.0, 0.05, 0.3, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.quantile(q), all.quantile(q), "q={q}");
        }
        assert_eq!(a.count(), all.count());
        let back = DDSketch::decode(&a.encode()).unwrap();
        assert_eq!(back, a);
        assert!(DDSketch::decode(&a.encode()[..20]).is_err());
        assert!(a.merge(&DDSketch::new(0.05, 10)).is_err());
    }

    #[test]
    fn bounded_size_keeps_the_upper_quantiles() {
        let mut s = DDSketch::new(0.01, 64);
        for i in 1..=100_000 {
            s.add(i as f64 * 1e-3);
        }
        assert!(s.positive.counts.len() <= 64);
        let p99 = s.quantile(0.99).unwrap();
        assert!((p99 - 99.0).abs() / 99.0 <= 0.011, "{p99}");
        assert_eq!(DDSketch::new(0.01, 64).quantile(0.5), None);
    }
}
