//! A minimal Prometheus text-format registry shared by every layer.
//!
//! Counters and gauges are atomics; labelled families keep one atomic per label set.
//! Histograms use fixed buckets. Rendering takes a lock per family, updates do not
//! (after the first use of a label set).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed)
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds (seconds or any unit).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths of the unit, to stay an integer atomic.
    sum_micro: AtomicU64,
}

/// Buckets for call durations in seconds, 10 µs to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((v * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// Sum of the observed values (to a millionth of the unit).
    pub fn sum(&self) -> f64 {
        self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
    }
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

type Labels = Vec<(String, String)>;

/// A family of one metric name keyed by label sets.
pub struct Family<T> {
    name: String,
    help: String,
    members: Mutex<BTreeMap<Labels, Arc<T>>>,
    make: fn() -> T,
}

impl<T> Family<T> {
    /// The member for these labels if it exists (never creates one).
    pub fn find(&self, labels: &[(&str, &str)]) -> Option<Arc<T>> {
        let key: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.members
            .lock()
            .expect("metrics lock")
            .get(&key)
            .cloned()
    }

    /// The member for these labels, created on first use.
    pub fn with(&self, labels: &[(&str, &str)]) -> Arc<T> {
        let key: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut m = self.members.lock().expect("metrics lock");
        m.entry(key)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }
}

/// All metrics of a process. Cheap to clone (an `Arc` inside).
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Vec<Entry>>>,
}

enum Entry {
    Counter(Arc<Family<Counter>>),
    Gauge(Arc<Family<Gauge>>),
    Histogram(Arc<Family<Histogram>>),
}

fn new_family<T>(name: &str, help: &str, make: fn() -> T) -> Arc<Family<T>> {
    Arc::new(Family {
        name: name.to_owned(),
        help: help.to_owned(),
        members: Mutex::new(BTreeMap::new()),
        make,
    })
}

impl Registry {
    pub fn counter(&self, name: &str, help: &str) -> Arc<Family<Counter>> {
        let f = new_family(name, help, Counter::default);
        self.inner
            .lock()
            .expect("registry")
            .push(Entry::Counter(f.clone()));
        f
    }
    pub fn gauge(&self, name: &str, help: &str) -> Arc<Family<Gauge>> {
        let f = new_family(name, help, Gauge::default);
        self.inner
            .lock()
            .expect("registry")
            .push(Entry::Gauge(f.clone()));
        f
    }
    pub fn histogram(&self, name: &str, help: &str) -> Arc<Family<Histogram>> {
        let f = new_family(name, help, || Histogram::new(DURATION_BUCKETS));
        self.inner
            .lock()
            .expect("registry")
            .push(Entry::Histogram(f.clone()));
        f
    }

    /// Render every family in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in self.inner.lock().expect("registry").iter() {
            match e {
                Entry::Counter(f) => render_simple(&mut out, f, Kind::Counter, |c| c.get()),
                Entry::Gauge(f) => render_simple(&mut out, f, Kind::Gauge, |g| g.get()),
                Entry::Histogram(f) => render_hist(&mut out, f),
            }
        }
        out
    }
}

fn header<T>(out: &mut String, f: &Family<T>, kind: Kind) {
    let k = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, k);
}

fn label_text(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_simple<T>(out: &mut String, f: &Family<T>, kind: Kind, get: fn(&T) -> u64) {
    header(out, f, kind);
    for (labels, m) in f.members.lock().expect("metrics lock").iter() {
        let _ = writeln!(out, "{}{} {}", f.name, label_text(labels, None), get(m));
    }
}

fn render_hist(out: &mut String, f: &Family<Histogram>) {
    header(out, f, Kind::Histogram);
    for (labels, h) in f.members.lock().expect("metrics lock").iter() {
        let mut cum = 0;
        for (b, n) in h.bounds.iter().zip(&h.buckets) {
            cum += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{}_bucket{} {}",
                f.name,
                label_text(labels, Some(("le", b.to_string()))),
                cum
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{}_bucket{} {}",
            f.name,
            label_text(labels, Some(("le", "+Inf".into()))),
            count
        );
        let sum = h.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{}_sum{} {}", f.name, label_text(labels, None), sum);
        let _ = writeln!(
            out,
            "{}_count{} {}",
            f.name,
            label_text(labels, None),
            count
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let r = Registry::default();
        let c = r.counter("weir_test_total", "A test counter.");
        c.with(&[("tenant", "a\"b")]).add(3);
        let h = r.histogram("weir_call_seconds", "Call time.");
        h.with(&[]).observe(0.002);
        h.with(&[]).observe(20.0);
        let text = r.render();
        assert!(text.contains("# TYPE weir_test_total counter"), "{text}");
        assert!(
            text.contains("weir_test_total{tenant=\"a\\\"b\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("weir_call_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weir_call_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(text.contains("weir_call_seconds_count 2"), "{text}");
    }
}
