//! Weir's aggregation layer: windowed aggregations over the records a partition's
//! worker has committed, as pure state machines (no I/O: the worker feeds them and
//! `weir-store` checkpoints what they hand back).
//!
//! Layout:
//! - [`spec`]: [`Definition`], a checked aggregation declaration (windows, group-by,
//!   filters, functions, limits, anomaly rule) and its fingerprint.
//! - [`aggregator`]: [`Aggregator`], one partition's open windows and watermarks;
//!   closed windows come out as [`Partial`]s, late events as late counts.
//! - [`acc`]: [`acc::Acc`], the mergeable accumulator of one window and group.
//! - [`anomaly`]: the robust z-score that flags a window of a series.
//! - [`codec`]: the byte encoding of checkpoints.
//! - [`ddsketch`]: [`DDSketch`], quantiles with a relative-error guarantee, mergeable,
//!   bounded in size.
//! - [`hll`]: [`HyperLogLog`], distinct counts in a fixed 2^p bytes, mergeable.
//! - [`window`]: epoch-aligned tumbling and hopping windows, duration parsing, and the
//!   [`window::Watermark`] with allowed lateness that decides when a window is complete
//!   and which events are late.
//! - [`hash`]: the stable 64-bit hash HLL uses (stable across runs and versions, so a
//!   checkpointed sketch merges with one built after a restart).
//!
//! Both sketches encode to bytes and decode back exactly, to join checkpoints.

pub mod acc;
pub mod aggregator;
pub mod anomaly;
pub mod codec;
pub mod ddsketch;
pub mod hash;
pub mod hll;
pub mod spec;
pub mod window;

pub use acc::{Acc, CustomFns, CustomState, NoCustom};
pub use aggregator::{Aggregator, Counters, Partial};
pub use ddsketch::DDSketch;
pub use hll::HyperLogLog;
pub use spec::{Definition, SpecError};
pub use window::{parse_duration, Watermark, Windows};

/// A sketch's bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("corrupt sketch: {0}")]
pub struct DecodeError(pub &'static str);

#[cfg(test)]
pub(crate) mod testdata {
    /// A deterministic xorshift generator (tests need no rand crate).
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        /// Uniform in (0, 1).
        pub fn unit(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        /// Log-normal(mu, sigma) by Box-Muller: skewed like latencies.
        pub fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
            let (u, v) = (self.unit(), self.unit());
            let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            (mu + sigma * z).exp()
        }
    }
}
