//! [`LogBudget`]: how many log lines one plugin instance may put in the server's log.
//!
//! A token bucket shared by the instance's stdout, stderr and `weir:plugin/host.log`:
//! `lines_per_sec` tokens a second, at most `burst` saved up. A line without a token is
//! dropped and counted; the next line that gets through is preceded by one warning
//! saying how many were dropped, and the count goes to
//! `weir_plugin_log_lines_dropped_total` (when the caller passed a counter). Lines are
//! cut at `max_line_bytes`.

use std::sync::Arc;
use std::time::Instant;

/// Rate limits of one instance's log output.
#[derive(Clone)]
pub struct LogLimits {
    /// Lines a second, sustained.
    pub lines_per_sec: u32,
    /// Lines that may come at once after a quiet spell.
    pub burst: u32,
    /// Longest line kept (bytes); the rest is cut.
    pub max_line_bytes: usize,
    /// Counts dropped lines (Prometheus), when given.
    pub dropped: Option<Arc<weir_core::metrics::Counter>>,
}

impl std::fmt::Debug for LogLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLimits")
            .field("lines_per_sec", &self.lines_per_sec)
            .field("burst", &self.burst)
            .field("max_line_bytes", &self.max_line_bytes)
            .finish()
    }
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            lines_per_sec: 20,
            burst: 100,
            max_line_bytes: 4096,
            dropped: None,
        }
    }
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Log it; first say that `dropped_before` lines were dropped (when not 0).
    Yes { dropped_before: u64 },
    /// Drop it (counted).
    No,
}

/// The token bucket of one instance.
#[derive(Debug)]
pub(crate) struct LogBudget {
    limits: LogLimits,
    tokens: f64,
    last: Instant,
    /// Dropped since the last line that got through.
    dropped: u64,
}

impl LogBudget {
    pub(crate) fn new(limits: LogLimits, now: Instant) -> LogBudget {
        LogBudget {
            tokens: f64::from(limits.burst.max(1)),
            limits,
            last: now,
            dropped: 0,
        }
    }

    pub(crate) fn max_line_bytes(&self) -> usize {
        self.limits.max_line_bytes
    }

    /// Whether one more line may be logged at `now`.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        let burst = f64::from(self.limits.burst.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * f64::from(self.limits.lines_per_sec)).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Yes {
                dropped_before: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            if let Some(c) = &self.limits.dropped {
                c.inc();
            }
            Admit::No
        }
    }

    /// Lines dropped since the last one that got through.
    pub(crate) fn pending_drops(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

/// The budget shared by an instance's stdout, stderr and `host.log`, with the tags its
/// lines carry.
#[derive(Clone)]
pub(crate) struct SharedLog {
    budget: Arc<std::sync::Mutex<LogBudget>>,
    tenant: Arc<str>,
    plugin: Arc<str>,
}

impl SharedLog {
    pub(crate) fn new(limits: LogLimits, tenant: &str, plugin: &str) -> SharedLog {
        SharedLog {
            budget: Arc::new(std::sync::Mutex::new(LogBudget::new(
                limits,
                Instant::now(),
            ))),
            tenant: tenant.into(),
            plugin: plugin.into(),
        }
    }

    pub(crate) fn max_line_bytes(&self) -> usize {
        self.lock().max_line_bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogBudget> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Log `message` through `emit` if the budget allows (after a note of the lines
    /// dropped before it); otherwise count it as dropped.
    pub(crate) fn line(&self, emit: impl FnOnce(&str, &str)) {
        let admit = self.lock().admit(Instant::now());
        if let Admit::Yes { dropped_before } = admit {
            self.report_drops(dropped_before);
            emit(&self.tenant, &self.plugin);
        }
    }

    fn report_drops(&self, n: u64) {
        if n > 0 {
            let (tenant, plugin) = (&*self.tenant, &*self.plugin);
            tracing::warn!(
                tenant,
                plugin,
                dropped = n,
                "plugin log rate limit: {n} lines dropped"
            );
        }
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        // The last holder reports what was dropped since the last line.
        if Arc::strong_count(&self.budget) == 1 {
            let n = self.lock().pending_drops();
            self.report_drops(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_then_drops_are_reported_once() {
        let counter = Arc::new(weir_core::metrics::Counter::default());
        let limits = LogLimits {
            lines_per_sec: 10,
            burst: 5,
            max_line_bytes: 100,
            dropped: Some(counter.clone()),
        };
        let t0 = Instant::now();
        let mut b = LogBudget::new(limits, t0);
        // A burst of 5 at once, then nothing.
        for _ in 0..5 {
            assert_eq!(b.admit(t0), Admit::Yes { dropped_before: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(b.admit(t0), Admit::No);
        }
        assert_eq!(counter.get(), 1000);
        // 100 ms later one token is back; the line that gets through carries the count.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            b.admit(t1),
            Admit::Yes {
                dropped_before: 1000
            }
        );
        assert_eq!(b.admit(t1), Admit::No);
        // Sustained: 10 a second over 10 seconds, never more than the burst saved up.
        let mut passed = 0;
        for ms in (0..10_000).step_by(10) {
            if matches!(b.admit(t1 + Duration::from_millis(ms)), Admit::Yes { .. }) {
                passed += 1;
            }
        }
        assert!((99..=101).contains(&passed), "{passed}");
        // After a long quiet spell, at most `burst` lines.
        let later = t1 + Duration::from_secs(3600);
        let burst = (0..100)
            .filter(|_| matches!(b.admit(later), Admit::Yes { .. }))
            .count();
        assert_eq!(burst, 5);
    }

    #[test]
    fn clock_going_backwards_grants_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = LogBudget::new(
            LogLimits {
                lines_per_sec: 1,
                burst: 1,
                ..LogLimits::default()
            },
            t0,
        );
        assert!(matches!(b.admit(t0), Admit::Yes { .. }));
        assert_eq!(b.admit(t0 - Duration::from_secs(5)), Admit::No);
    }
}
