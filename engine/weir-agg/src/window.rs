//! Event-time windows: which windows a timestamp belongs to, and the watermark that
//! says when a window is complete.
//!
//! A window is `[start, start + size)` in epoch milliseconds. Tumbling windows have
//! `hop == size`; hopping windows advance by `hop < size`, so one event belongs to
//! `size / hop` windows. Windows are aligned to the epoch (a 1-minute window starts on
//! the minute), so every partition and every restart computes the same windows.
//!
//! The [`Watermark`] follows the largest event time seen minus the allowed lateness: a
//! window whose end is at or before the watermark is complete and can be emitted; an
//! event older than the watermark's lower bound for its windows is *late* — counted and
//! reported by the caller, never silently dropped.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("duration {0:?}: expected a number and a unit (ms, s, m, h, d), e.g. \"1m\"")]
    BadDuration(String),
    #[error("window size {0} ms is outside 1 s ..= 1 day")]
    SizeOutOfRange(u64),
    #[error("hop {hop} ms must divide the window size {size} ms and be at least 1 s")]
    BadHop { size: u64, hop: u64 },
}

/// `"500ms"`, `"10s"`, `"1m"`, `"2h"`, `"1d"` → milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, WindowError> {
    weir_core::retention::parse_duration_ms(s).ok_or_else(|| WindowError::BadDuration(s.to_owned()))
}

/// A tumbling (`hop == size`) or hopping window shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub size_ms: u64,
    pub hop_ms: u64,
}

impl Windows {
    /// Sizes from 1 s to 1 day; a hop divides the size.
    pub fn new(size_ms: u64, hop_ms: Option<u64>) -> Result<Windows, WindowError> {
        if !(1_000..=86_400_000).contains(&size_ms) {
            return Err(WindowError::SizeOutOfRange(size_ms));
        }
        let hop_ms = hop_ms.unwrap_or(size_ms);
        if hop_ms < 1_000 || hop_ms > size_ms || !size_ms.is_multiple_of(hop_ms) {
            return Err(WindowError::BadHop {
                size: size_ms,
                hop: hop_ms,
            });
        }
        Ok(Windows { size_ms, hop_ms })
    }

    /// Start times of every window containing `ts` (ascending).
    pub fn starts(&self, ts: i64) -> impl Iterator<Item = i64> {
        let (size, hop) = (self.size_ms as i64, self.hop_ms as i64);
        let last = ts.div_euclid(hop) * hop;
        let count = size / hop;
        (0..count)
            .rev()
            .map(move |k| last - k * hop)
            .filter(move |s| *s <= ts && ts < s + size)
    }
}

/// Event-time progress of one partition's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    lateness_ms: i64,
    max_seen: Option<i64>,
}

impl Watermark {
    pub fn new(lateness_ms: u64) -> Watermark {
        Watermark {
            // Saturating: a lateness past i64 closes nothing rather than wrapping.
            lateness_ms: i64::try_from(lateness_ms).unwrap_or(i64::MAX),
            max_seen: None,
        }
    }

    /// Note an event time.
    pub fn observe(&mut self, ts: i64) {
        self.max_seen = Some(self.max_seen.map_or(ts, |m| m.max(ts)));
    }

    /// Everything before this time is complete (None before any event).
    pub fn value(&self) -> Option<i64> {
        self.max_seen.map(|m| m.saturating_sub(self.lateness_ms))
    }

    /// Whether a window ending at `end` is complete.
    pub fn closes(&self, end: i64) -> bool {
        self.value().is_some_and(|w| end <= w)
    }

    /// Whether an event at `ts` is too late for a window of `windows` (its last window
    /// has already closed).
    pub fn is_late(&self, ts: i64, windows: &Windows) -> bool {
        windows
            .starts(ts)
            .last()
            .is_some_and(|s| self.closes(s.saturating_add(windows.size_ms as i64)))
    }

    /// Restore from a checkpoint.
    pub fn with_max_seen(mut self, max_seen: Option<i64>) -> Watermark {
        self.max_seen = max_seen;
        self
    }

    pub fn max_seen(&self) -> Option<i64> {
        self.max_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(1_000));
        assert_eq!(parse_duration("15m"), Ok(900_000));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
        assert_eq!(parse_duration(" 250ms "), Ok(250));
        for bad in ["", "m", "1", "1w", "-1s", "0s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tumbling_and_hopping_windows_are_epoch_aligned() {
        let t = Windows::new(60_000, None).unwrap();
        assert_eq!(t.starts(125_000).collect::<Vec<_>>(), vec![120_000]);
        assert_eq!(t.starts(120_000).collect::<Vec<_>>(), vec![120_000]);
        assert_eq!(t.starts(-1).collect::<Vec<_>>(), vec![-60_000]);
        let h = Windows::new(60_000, Some(20_000)).unwrap();
        assert_eq!(
            h.starts(125_000).collect::<Vec<_>>(),
            vec![80_000, 100_000, 120_000],
            "three 1-minute windows every 20 s contain it"
        );
        assert!(Windows::new(500, None).is_err());
        assert!(Windows::new(86_400_001, None).is_err());
        assert!(Windows::new(60_000, Some(7_000)).is_err());
        assert!(Windows::new(60_000, Some(120_000)).is_err());
        assert_eq!(
            Windows::new(86_400_000, Some(3_600_000))
                .unwrap()
                .starts(0)
                .count(),
            24
        );
    }

    #[test]
    fn watermark_closes_windows_and_tells_late_events() {
        let w = Windows::new(10_000, None).unwrap();
        let mut m = Watermark::new(5_000);
        assert_eq!(m.value(), None);
        assert!(!m.is_late(0, &w));
        m.observe(12_000);
        m.observe(11_000); // out of order: no step back
        assert_eq!(m.value(), Some(7_000));
        assert!(!m.closes(10_000), "[0, 10 s) waits for 15 s of event time");
        assert!(!m.is_late(3_000, &w), "inside the allowed lateness");
        m.observe(15_000);
        assert!(m.closes(10_000));
        assert!(m.is_late(3_000, &w), "beyond the lateness: late");
        assert!(!m.is_late(10_000, &w));
        let back = Watermark::new(5_000).with_max_seen(m.max_seen());
        assert_eq!(back, m);
    }
}
