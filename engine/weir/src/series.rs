//! Cardinality control of metric series, applied at ingest before a sample is logged.
//!
//! Per tenant (`[tenants.T.metrics]`, see [`SeriesPolicy`]): labels are first rewritten
//! — kept only if in `allow_labels` (when set), removed if in `drop_labels`, and values
//! of `hash_labels` replaced by one of N buckets (`b0`..`b{N-1}`, a stable hash) — then
//! the series (name + labels) is admitted against `max_series` (the tenant) and
//! `max_series_per_metric` (one name). A sample of a *new* series beyond a limit is
//! refused (its line is rejected with the reason) or, with `on_limit = "overflow"`,
//! kept in its metric's overflow series `{_overflow="true"}`: values are never lost,
//! only their labels. Both outcomes are counted in `weir_series_limited_total`.
//!
//! Known series are kept as 64-bit hashes (8 bytes each, bounded by the limit); at
//! startup they are seeded from the `metrics` rows of the hot tier, so a restart does
//! not reopen the budget. Distinct counts over a dropped label (how many users) are
//! answered by `distinct(...)` aggregations, which keep a sketch, not a series per user.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use weir_core::config::{OnLimit, SeriesPolicy};
use weir_core::metrics::{Counter, Family, Gauge, Registry};
use weir_core::partition::fnv1a64;

/// The label of overflow series.
pub const OVERFLOW_LABEL: &str = "_overflow";

#[derive(Default)]
struct Known {
    all: HashSet<u64>,
    per_metric: HashMap<String, u64>,
}

impl Known {
    fn insert(&mut self, name: &str, h: u64) {
        if self.all.insert(h) {
            *self.per_metric.entry(name.to_owned()).or_default() += 1;
        }
    }
}

/// The series every tenant has, and the counters of limited samples.
pub struct SeriesLimits {
    tenants: Mutex<HashMap<String, Arc<Mutex<Known>>>>,
    limited: Arc<Family<Counter>>,
    active: Arc<Family<Gauge>>,
}

/// What happens to a sample's series.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    Overflow,
    Refuse(String),
}

/// One tenant's view for one request.
pub struct TenantSeries {
    tenant: String,
    policy: SeriesPolicy,
    known: Arc<Mutex<Known>>,
    limited: Arc<Family<Counter>>,
    active: Arc<Family<Gauge>>,
}

fn series_hash(name: &str, labels: &BTreeMap<String, String>) -> u64 {
    let mut parts: Vec<&[u8]> = vec![name.as_bytes()];
    for (k, v) in labels {
        parts.push(k.as_bytes());
        parts.push(v.as_bytes());
    }
    fnv1a64(&parts)
}

impl SeriesLimits {
    pub fn new(r: &Registry) -> SeriesLimits {
        SeriesLimits {
            tenants: Mutex::default(),
            limited: r.counter(
                "weir_series_limited_total",
                "Samples of new series beyond a series limit, by limit (tenant or metric) and action (refused or overflowed).",
            ),
            active: r.gauge(
                "weir_series",
                "Distinct metric series known per tenant (bounded by max_series).",
            ),
        }
    }

    pub fn tenant(&self, tenant: &str, policy: &SeriesPolicy) -> TenantSeries {
        let known = self
            .tenants
            .lock()
            .expect("series lock")
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        TenantSeries {
            tenant: tenant.to_owned(),
            policy: policy.clone(),
            known,
            limited: self.limited.clone(),
            active: self.active.clone(),
        }
    }

    /// Note series that already exist (the hot tier's `metrics` rows at startup).
    pub fn seed(&self, tenant: &str, series: impl Iterator<Item = (String, u64)>) {
        let t = self.tenant(tenant, &SeriesPolicy::default());
        let mut k = t.known.lock().expect("series lock");
        for (name, h) in series {
            k.insert(&name, h);
        }
        t.active.with(&[("tenant", tenant)]).set(k.all.len() as u64);
    }
}

/// The hash a seeded series is known by (name + sorted labels).
pub fn hash_of(name: &str, labels: &BTreeMap<String, String>) -> u64 {
    series_hash(name, labels)
}

impl TenantSeries {
    /// Apply `allow_labels`, `drop_labels` and `hash_labels`.
    pub fn rewrite_labels(&self, labels: &mut BTreeMap<String, String>) {
        let p = &self.policy;
        if let Some(allow) = &p.allow_labels {
            labels.retain(|k, _| allow.iter().any(|a| a == k));
        }
        labels.retain(|k, _| !p.drop_labels.iter().any(|d| d == k));
        for (k, buckets) in &p.hash_labels {
            if let Some(v) = labels.get_mut(k) {
                let b = fnv1a64(&[v.as_bytes()]) % u64::from(*buckets);
                *v = format!("b{b}");
            }
        }
    }

    /// Admit the series of a sample (labels already rewritten).
    pub fn admit(&self, name: &str, labels: &BTreeMap<String, String>) -> Admit {
        let h = series_hash(name, labels);
        let mut k = self.known.lock().expect("series lock");
        // Every series counts, whatever its labels: samples naming a reserved label
        // (such as `_overflow`) are refused before they get here.
        if k.all.contains(&h) {
            return Admit::Yes;
        }
        let p = &self.policy;
        let over = if k.all.len() as u64 >= p.max_series {
            Some(("tenant", p.max_series))
        } else {
            p.max_series_per_metric
                .filter(|m| k.per_metric.get(name).copied().unwrap_or(0) >= *m)
                .map(|m| ("metric", m))
        };
        match over {
            None => {
                k.insert(name, h);
                self.active
                    .with(&[("tenant", &self.tenant)])
                    .set(k.all.len() as u64);
                Admit::Yes
            }
            Some((limit, n)) => {
                let action = match p.on_limit {
                    OnLimit::Refuse => "refused",
                    OnLimit::Overflow => "overflowed",
                };
                self.limited
                    .with(&[
                        ("tenant", &self.tenant),
                        ("limit", limit),
                        ("action", action),
                    ])
                    .inc();
                match p.on_limit {
                    OnLimit::Overflow => Admit::Overflow,
                    OnLimit::Refuse => Admit::Refuse(format!(
                        "new series beyond the {limit} limit of {n} series (max_series{})",
                        if limit == "metric" { "_per_metric" } else { "" }
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limits_refuse_or_overflow_and_labels_are_rewritten() {
        let r = Registry::default();
        let s = SeriesLimits::new(&r);
        let policy = SeriesPolicy {
            max_series: 5,
            max_series_per_metric: Some(3),
            on_limit: OnLimit::Refuse,
            allow_labels: None,
            drop_labels: vec!["request_id".into()],
            hash_labels: [("user_id".to_owned(), 4)].into(),
        };
        let t = s.tenant("a", &policy);
        let mut l = labels(&[("user_id", "u123"), ("request_id", "r1"), ("host", "h")]);
        t.rewrite_labels(&mut l);
        assert_eq!(l.len(), 2);
        assert!(l["user_id"].starts_with('b'));
        // 1000 users fall in at most 4 buckets: 4 series... but the metric allows 3.
        let mut admitted = HashSet::new();
        for u in 0..1000 {
            let mut l = labels(&[("user_id", &format!("u{u}"))]);
            t.rewrite_labels(&mut l);
            if t.admit("logins", &l) == Admit::Yes {
                admitted.insert(l["user_id"].clone());
            }
        }
        assert_eq!(admitted.len(), 3, "{admitted:?}");
        assert_eq!(t.admit("x", &labels(&[])), Admit::Yes);
        assert_eq!(t.admit("y", &labels(&[])), Admit::Yes);
        match t.admit("z", &labels(&[])) {
            Admit::Refuse(why) => assert!(why.contains("tenant limit of 5"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.admit("x", &labels(&[])), Admit::Yes, "known series pass");
        let o = s.tenant(
            "b",
            &SeriesPolicy {
                max_series: 1,
                on_limit: OnLimit::Overflow,
                allow_labels: Some(vec!["host".into()]),
                ..SeriesPolicy::default()
            },
        );
        let mut l = labels(&[("host", "h1"), ("pod", "p")]);
        o.rewrite_labels(&mut l);
        assert_eq!(l, labels(&[("host", "h1")]));
        assert_eq!(o.admit("m", &l), Admit::Yes);
        assert_eq!(o.admit("m", &labels(&[("host", "h2")])), Admit::Overflow);
        let text = r.render();
        assert!(
            text.contains(
                "weir_series_limited_total{tenant=\"b\",limit=\"tenant\",action=\"overflowed\"} 1"
            ),
            "{text}"
        );
    }
}
