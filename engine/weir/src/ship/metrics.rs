//! The shipper's counters: one [`ShipMetrics`] shared by the sources, the spool and the
//! sender, rendered as Prometheus text on `--metrics-addr` (the same
//! [`weir_core::metrics::Registry`] as the server's `/metrics`) and summed up in the
//! progress line printed on stderr.

use std::sync::Arc;

use weir_core::metrics::{Counter, Family, Gauge, Registry};

/// Every counter of one shipper process (they start at zero on each start).
pub struct ShipMetrics {
    pub lines_read: Arc<Counter>,
    pub lines_spooled: Arc<Counter>,
    pub batches_spooled: Arc<Counter>,
    pub requests: Arc<Counter>,
    pub batches_acked: Arc<Counter>,
    pub lines_acked: Arc<Counter>,
    /// Lines the server refused one by one inside an acknowledged batch (its `rejected`).
    pub lines_rejected_by_server: Arc<Counter>,
    /// Answers that carried `Idempotent-Replayed: true` (a resend the server had).
    pub replayed: Arc<Counter>,
    retries: Arc<Family<Counter>>,
    /// Batches the server refused as a whole (4xx other than 408/429), moved aside.
    pub dead_batches: Arc<Counter>,
    pub dead_lines: Arc<Counter>,
    dropped_lines: Arc<Family<Counter>>,
    dropped_bytes: Arc<Family<Counter>>,
    /// Times the sources were paused because the spool was full (`--when-full block`).
    pub blocked: Arc<Counter>,
    pub spool_bytes: Arc<Gauge>,
    pub spool_batches: Arc<Gauge>,
    pub rotations: Arc<Counter>,
    pub truncations: Arc<Counter>,
}

/// Why lines were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The spool was full under `--when-full drop-oldest`.
    SpoolFull,
    /// A line longer than `--max-line-bytes`.
    TooLong,
    /// A line starting with `[`: never a record (not a JSON object), and as the first
    /// line of a body it would make the server read the whole batch as one JSON array.
    NotObject,
}

const REASONS: [DropReason; 3] = [
    DropReason::SpoolFull,
    DropReason::TooLong,
    DropReason::NotObject,
];

impl DropReason {
    fn name(self) -> &'static str {
        match self {
            DropReason::SpoolFull => "spool_full",
            DropReason::TooLong => "too_long",
            DropReason::NotObject => "not_object",
        }
    }
}

impl ShipMetrics {
    pub fn new(r: &Registry) -> Self {
        let c = |name: &str, help: &str| r.counter(name, help).with(&[]);
        let g = |name: &str, help: &str| r.gauge(name, help).with(&[]);
        let dropped_lines = r.counter(
            "weir_ship_dropped_lines_total",
            "Lines dropped by the shipper (reason: spool_full under --when-full drop-oldest, too_long, not_object: starts with '[').",
        );
        let dropped_bytes = r.counter(
            "weir_ship_dropped_bytes_total",
            "Bytes of the dropped lines (spool_full: the spooled, compressed batch).",
        );
        for reason in REASONS {
            dropped_lines.with(&[("reason", reason.name())]);
            dropped_bytes.with(&[("reason", reason.name())]);
        }
        ShipMetrics {
            lines_read: c("weir_ship_lines_read_total", "Lines read from the sources."),
            lines_spooled: c(
                "weir_ship_lines_spooled_total",
                "Lines written durably to the spool.",
            ),
            batches_spooled: c(
                "weir_ship_batches_spooled_total",
                "Batches written durably to the spool.",
            ),
            requests: c(
                "weir_ship_requests_total",
                "Batches sent (every attempt, retries included).",
            ),
            batches_acked: c(
                "weir_ship_batches_acked_total",
                "Batches the server acknowledged (2xx) and that left the spool.",
            ),
            lines_acked: c(
                "weir_ship_lines_acked_total",
                "Lines of the acknowledged batches.",
            ),
            lines_rejected_by_server: c(
                "weir_ship_server_rejected_lines_total",
                "Lines of acknowledged batches that the server rejected one by one (not JSON, ...).",
            ),
            replayed: c(
                "weir_ship_replayed_total",
                "Acknowledgements answered from the server's idempotency memory (Idempotent-Replayed).",
            ),
            retries: r.counter(
                "weir_ship_retries_total",
                "Failed attempts that will be retried, by reason (429, 503, 5xx, 408, auth, network).",
            ),
            dead_batches: c(
                "weir_ship_dead_batches_total",
                "Batches refused as a whole (4xx other than 408/429) and moved to spool/rejected/.",
            ),
            dead_lines: c(
                "weir_ship_dead_lines_total",
                "Lines of the batches moved to spool/rejected/.",
            ),
            dropped_lines,
            dropped_bytes,
            blocked: c(
                "weir_ship_source_blocked_total",
                "Times the sources paused because the spool was full (--when-full block).",
            ),
            spool_bytes: g("weir_ship_spool_bytes", "Bytes of batches in the spool."),
            spool_batches: g(
                "weir_ship_spool_batches",
                "Batches in the spool (not yet acknowledged).",
            ),
            rotations: c(
                "weir_ship_file_rotations_total",
                "Tailed files that were renamed or removed (their rest is still read).",
            ),
            truncations: c(
                "weir_ship_file_truncations_total",
                "Tailed files found shorter than the position read (read again from the start).",
            ),
        }
    }

    pub fn retry(&self, reason: &str) {
        self.retries.with(&[("reason", reason)]).inc();
    }

    pub fn retries(&self) -> u64 {
        // The family's members are few (one per reason).
        ["429", "503", "5xx", "408", "auth", "network"]
            .iter()
            .filter_map(|r| self.retries.find(&[("reason", r)]))
            .map(|c| c.get())
            .sum()
    }

    pub fn dropped(&self, reason: DropReason, lines: u64, bytes: u64) {
        let l = [("reason", reason.name())];
        self.dropped_lines.with(&l).add(lines);
        self.dropped_bytes.with(&l).add(bytes);
    }

    pub fn dropped_lines(&self) -> u64 {
        REASONS
            .iter()
            .filter_map(|r| self.dropped_lines.find(&[("reason", r.name())]))
            .map(|c| c.get())
            .sum()
    }

    /// The progress line printed on stderr.
    pub fn progress(&self) -> String {
        format!(
            "weir ship: read={} spooled={} sent={} acked={} (lines {}) retried={} buffered={} bytes in {} batches, dropped={} lines, server-rejected={} lines, dead={} batches, replayed={}",
            self.lines_read.get(),
            self.lines_spooled.get(),
            self.requests.get(),
            self.batches_acked.get(),
            self.lines_acked.get(),
            self.retries(),
            self.spool_bytes.get(),
            self.spool_batches.get(),
            self.dropped_lines(),
            self.lines_rejected_by_server.get(),
            self.dead_batches.get(),
            self.replayed.get(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_and_sum_up() {
        let r = Registry::default();
        let m = ShipMetrics::new(&r);
        m.retry("429");
        m.retry("429");
        m.retry("network");
        m.dropped(DropReason::SpoolFull, 10, 100);
        m.dropped(DropReason::TooLong, 1, 5);
        assert_eq!(m.retries(), 3);
        assert_eq!(m.dropped_lines(), 11);
        let text = r.render();
        assert!(
            text.contains("weir_ship_retries_total{reason=\"429\"} 2"),
            "{text}"
        );
        assert!(text.contains("weir_ship_dropped_lines_total{reason=\"spool_full\"} 10"));
        assert!(m.progress().contains("retried=3"));
    }
}
