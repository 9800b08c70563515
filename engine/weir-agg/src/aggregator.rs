//! [`Aggregator`]: the windowed aggregations of one partition.
//!
//! For each aggregation of each (tenant, stream) it keeps a [`Watermark`] and the open
//! windows, each a map group → [`Acc`]. Feeding records updates every window the event
//! time falls in, then closes the windows the watermark has passed: their accumulators
//! become *partials* — this partition's share of a row of the `aggregates` table — that
//! wait in [`Aggregator::take_pending`] for the next checkpoint. An event for a window
//! that already closed is late: it is counted on that window's row (`late`), never
//! folded into its values and never dropped silently.
//!
//! Everything here is a deterministic function of the records fed, in order: the state
//! encoded at a checkpoint plus the same records replayed gives the same partials. That
//! is what makes the `aggregates` table exactly-once (see docs/ARCHITECTURE.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use crate::acc::{Acc, CustomFns};
use crate::codec::{Reader, Writer};
use crate::spec::{Definition, OVERFLOW_GROUP};
use crate::{DecodeError, Watermark};

/// One partition's share of one row of the `aggregates` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    pub tenant: String,
    pub stream: String,
    pub def: Arc<Definition>,
    pub window_start: i64,
    pub group: String,
    pub acc: Acc,
    /// False: the window closed and this is the partition's whole share (replaces what
    /// is stored). True: late events only, added to what is stored.
    pub additive: bool,
}

/// Counters since the last [`Aggregator::take_counters`], per tenant and aggregation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub events: u64,
    pub late: u64,
    /// Events folded into the overflow group because their window held `max_groups`.
    pub overflow: u64,
}

struct AggState {
    tenant: String,
    stream: String,
    def: Arc<Definition>,
    watermark: Watermark,
    open: BTreeMap<i64, HashMap<String, Acc>>,
    late: BTreeMap<(i64, String), u64>,
    counters: Counters,
}

impl AggState {
    fn new(tenant: &str, stream: &str, def: Arc<Definition>) -> AggState {
        AggState {
            tenant: tenant.to_owned(),
            stream: stream.to_owned(),
            watermark: Watermark::new(def.lateness_ms),
            def,
            open: BTreeMap::new(),
            late: BTreeMap::new(),
            counters: Counters::default(),
        }
    }

    fn update(
        &mut self,
        ts: i64,
        record: &Value,
        line: &[u8],
        fns: &mut dyn CustomFns,
        out: &mut Vec<Partial>,
    ) {
        let size = self.def.windows.size_ms as i64;
        // Event time is the stream's: records the filter drops still advance it.
        if self.def.matches(record) {
            self.add(ts, record, line, size);
        }
        self.watermark.observe(ts);
        while let Some((&start, _)) = self.open.first_key_value() {
            if !self.watermark.closes(start + size) {
                break;
            }
            let groups = self.open.pop_first().expect("non-empty").1;
            self.emit(start, groups, fns, out);
        }
    }

    /// Give custom functions the records of this entry (no-op without any).
    fn flush(&mut self, fns: &mut dyn CustomFns) {
        if self.def.plugins.is_empty() {
            return;
        }
        for groups in self.open.values_mut() {
            for acc in groups.values_mut() {
                acc.flush(&self.tenant, &self.def, fns);
            }
        }
    }

    fn add(&mut self, ts: i64, record: &Value, line: &[u8], size: i64) {
        self.counters.events += 1;
        let group = self.def.group_of(record);
        for start in self.def.windows.starts(ts) {
            if self.watermark.closes(start + size) {
                self.counters.late += 1;
                *self.late.entry((start, group.clone())).or_insert(0) += 1;
                continue;
            }
            let groups = self.open.entry(start).or_default();
            let acc = match groups.get_mut(&group) {
                Some(a) => a,
                None => {
                    let held = groups.len() - usize::from(groups.contains_key(OVERFLOW_GROUP));
                    let key = if held >= self.def.max_groups {
                        self.counters.overflow += 1;
                        OVERFLOW_GROUP
                    } else {
                        group.as_str()
                    };
                    groups
                        .entry(key.to_owned())
                        .or_insert_with(|| Acc::new(&self.def))
                }
            };
            acc.update(&self.def, record, line);
        }
    }

    fn emit(
        &self,
        start: i64,
        groups: HashMap<String, Acc>,
        fns: &mut dyn CustomFns,
        out: &mut Vec<Partial>,
    ) {
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        for (group, mut acc) in groups {
            if !self.def.plugins.is_empty() {
                acc.flush(&self.tenant, &self.def, fns);
                acc.snapshot(&self.tenant, &self.def, fns);
            }
            out.push(Partial {
                tenant: self.tenant.clone(),
                stream: self.stream.clone(),
                def: self.def.clone(),
                window_start: start,
                group,
                acc,
                additive: false,
            });
        }
    }

    fn take_late(&mut self, out: &mut Vec<Partial>) {
        for ((start, group), n) in std::mem::take(&mut self.late) {
            out.push(Partial {
                tenant: self.tenant.clone(),
                stream: self.stream.clone(),
                def: self.def.clone(),
                window_start: start,
                group,
                acc: Acc::late(n),
                additive: true,
            });
        }
    }

    /// Emit every open window as it is (the definition was changed or removed).
    fn flush_all(mut self, fns: &mut dyn CustomFns, out: &mut Vec<Partial>) {
        for (start, groups) in std::mem::take(&mut self.open) {
            self.emit(start, groups, fns, out);
        }
        self.take_late(out);
    }
}

/// The windowed aggregations of one partition.
#[derive(Default)]
pub struct Aggregator {
    states: Vec<AggState>,
    pending: Vec<Partial>,
    critical_pending: bool,
    changed: bool,
}

impl Aggregator {
    pub fn new() -> Aggregator {
        Aggregator::default()
    }

    /// Set `tenant`'s aggregations (by stream). An aggregation whose definition is gone
    /// or changed emits its open windows as they are; a new or changed one starts empty.
    pub fn set_definitions(
        &mut self,
        tenant: &str,
        defs: &[(String, Arc<Definition>)],
        fns: &mut dyn CustomFns,
    ) {
        let mut keep = Vec::with_capacity(self.states.len());
        for s in std::mem::take(&mut self.states) {
            let still = s.tenant != tenant
                || defs
                    .iter()
                    .any(|(st, d)| *st == s.stream && d.fingerprint == s.def.fingerprint);
            if still {
                keep.push(s);
            } else {
                self.changed = true;
                s.flush_all(fns, &mut self.pending);
            }
        }
        for (stream, def) in defs {
            let exists = keep.iter().any(|s| {
                s.tenant == tenant && s.stream == *stream && s.def.fingerprint == def.fingerprint
            });
            if !exists {
                self.changed = true;
                keep.push(AggState::new(tenant, stream, def.clone()));
            }
        }
        self.states = keep;
    }

    /// Tenants with aggregation state.
    pub fn tenants(&self) -> Vec<String> {
        self.states.iter().map(|s| s.tenant.clone()).collect()
    }

    /// Whether any aggregation reads `tenant`'s `stream`.
    pub fn wants(&self, tenant: &str, stream: &str) -> bool {
        self.states
            .iter()
            .any(|s| s.tenant == tenant && s.stream == stream)
    }

    /// Feed one committed entry: event times and the records (NDJSON lines), in order.
    /// Lines that are not JSON, and times outside [`weir_core::time::in_range`], are
    /// skipped (committed entries are checked objects with times in range).
    pub fn feed<'a>(
        &mut self,
        tenant: &str,
        stream: &str,
        times: &[i64],
        lines: impl Iterator<Item = &'a [u8]>,
        fns: &mut dyn CustomFns,
    ) {
        let idx: Vec<usize> = (0..self.states.len())
            .filter(|&i| self.states[i].tenant == tenant && self.states[i].stream == stream)
            .collect();
        if idx.is_empty() {
            return;
        }
        self.changed = true;
        for (ts, line) in times.iter().zip(lines) {
            // Event times come from the rows (`weir_core::time::event_time`), always in
            // range; one that is not (rows stored before the range was enforced) would
            // move the watermark to the end of time and is skipped.
            if !weir_core::time::in_range(*ts) {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            for &i in &idx {
                let before = self.pending.len();
                self.states[i].update(*ts, &record, line, fns, &mut self.pending);
                if self.pending.len() > before && self.states[i].def.config.critical {
                    self.critical_pending = true;
                }
            }
        }
        for &i in &idx {
            self.states[i].flush(fns);
        }
    }

    /// Whether a critical aggregation has closed windows waiting to be written.
    pub fn critical_pending(&self) -> bool {
        self.critical_pending
    }

    /// Whether anything changed since the last [`Aggregator::take_pending`].
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The partials to write at this checkpoint: closed windows and late counts.
    pub fn take_pending(&mut self) -> Vec<Partial> {
        for s in &mut self.states {
            s.take_late(&mut self.pending);
        }
        self.critical_pending = false;
        self.changed = false;
        std::mem::take(&mut self.pending)
    }

    /// Counters since the last call, by (tenant, aggregation name).
    pub fn take_counters(&mut self) -> Vec<(String, String, Counters)> {
        self.states
            .iter_mut()
            .filter(|s| s.counters != Counters::default())
            .map(|s| {
                (
                    s.tenant.clone(),
                    s.def.name().to_owned(),
                    std::mem::take(&mut s.counters),
                )
            })
            .collect()
    }

    /// The definitions in use (to persist them next to the state that names them).
    pub fn definitions(&self) -> Vec<Arc<Definition>> {
        self.states.iter().map(|s| s.def.clone()).collect()
    }

    /// Open windows × groups held (a measure of the state's size).
    pub fn open_groups(&self) -> usize {
        self.states
            .iter()
            .flat_map(|s| s.open.values())
            .map(HashMap::len)
            .sum()
    }

    /// The state for a checkpoint. Call after [`Aggregator::take_pending`] (pending
    /// partials are not part of it: they are written by the same checkpoint).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(1);
        w.u32(self.states.len() as u32);
        for s in &self.states {
            w.str(&s.tenant);
            w.str(&s.stream);
            w.str(&s.def.fingerprint);
            w.opt_i64(s.watermark.max_seen());
            w.u32(s.open.len() as u32);
            for (start, groups) in &s.open {
                w.i64(*start);
                let mut g: Vec<_> = groups.iter().collect();
                g.sort_by(|a, b| a.0.cmp(b.0));
                w.u32(g.len() as u32);
                for (group, acc) in g {
                    w.str(group);
                    acc.encode_into(&mut w);
                }
            }
            w.u32(s.late.len() as u32);
            for ((start, group), n) in &s.late {
                w.i64(*start);
                w.str(group);
                w.u64(*n);
            }
        }
        w.0
    }

    /// Restore a checkpoint; `def` finds a definition by fingerprint.
    pub fn decode(
        bytes: &[u8],
        def: impl Fn(&str) -> Option<Arc<Definition>>,
    ) -> Result<Aggregator, DecodeError> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return Err(DecodeError("unknown aggregation state version"));
        }
        let n = r.len(20)?;
        let mut states = Vec::with_capacity(n);
        for _ in 0..n {
            let tenant = r.str()?.to_owned();
            let stream = r.str()?.to_owned();
            let d = def(r.str()?).ok_or(DecodeError("state names an unknown definition"))?;
            let mut s = AggState::new(&tenant, &stream, d);
            s.watermark = s.watermark.with_max_seen(r.opt_i64()?);
            for _ in 0..r.len(12)? {
                let start = r.i64()?;
                let mut groups = HashMap::new();
                for _ in 0..r.len(20)? {
                    let g = r.str()?.to_owned();
                    groups.insert(g, Acc::decode_from(&mut r)?);
                }
                s.open.insert(start, groups);
            }
            for _ in 0..r.len(20)? {
                let start = r.i64()?;
                let g = r.str()?.to_owned();
                s.late.insert((start, g), r.u64()?);
            }
            states.push(s);
        }
        if !r.is_empty() {
            return Err(DecodeError("trailing bytes after the aggregation state"));
        }
        Ok(Aggregator {
            states,
            ..Aggregator::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acc::NoCustom;
    use serde_json::json;
    use weir_core::aggregation::AggregationConfig;

    fn def(window: &str, hop: Option<&str>, lateness: &str, max_groups: u64) -> Arc<Definition> {
        Arc::new(
            Definition::new(&AggregationConfig {
                hop: hop.map(Into::into),
                lateness: Some(lateness.into()),
                group_by: vec!["svc".into()],
                max_groups: Some(max_groups),
                ..AggregationConfig::new(&format!("w{window}"), window, &["count", "sum(v)"])
            })
            .unwrap(),
        )
    }

    fn lines(recs: &[Value]) -> Vec<Vec<u8>> {
        recs.iter().map(|r| r.to_string().into_bytes()).collect()
    }

    fn feed(a: &mut Aggregator, events: &[(i64, Value)]) {
        let times: Vec<i64> = events.iter().map(|e| e.0).collect();
        let l = lines(&events.iter().map(|e| e.1.clone()).collect::<Vec<_>>());
        a.feed("t", "s", &times, l.iter().map(Vec::as_slice), &mut NoCustom);
    }

    /// What a store holds after applying partials in order (replace or add).
    fn stored(p: &[Partial]) -> BTreeMap<(i64, String), Acc> {
        let mut m: BTreeMap<(i64, String), Acc> = BTreeMap::new();
        for p in p {
            let k = (p.window_start, p.group.clone());
            match (p.additive, m.get_mut(&k)) {
                (true, Some(a)) => a.merge(&p.acc, "t", &p.def, &mut NoCustom),
                _ => {
                    m.insert(k, p.acc.clone());
                }
            }
        }
        m
    }

    fn summary(p: &[Partial]) -> Vec<(String, i64, String, u64, u64, bool)> {
        p.iter()
            .map(|p| {
                (
                    p.def.name().to_owned(),
                    p.window_start,
                    p.group.clone(),
                    p.acc.count,
                    p.acc.late,
                    p.additive,
                )
            })
            .collect()
    }

    #[test]
    fn times_out_of_range_never_move_the_watermark() {
        let mut a = Aggregator::new();
        a.set_definitions(
            "t",
            &[("s".into(), def("10s", None, "0s", 100))],
            &mut NoCustom,
        );
        let e = |ts: i64| (ts, json!({"svc": "x", "v": 1}));
        feed(
            &mut a,
            &[e(1_000), e(i64::MAX), e(-1), e(i64::MIN), e(2_000)],
        );
        assert!(a.take_pending().is_empty(), "no window closed");
        let c = a.take_counters();
        assert_eq!((c[0].2.events, c[0].2.late), (2, 0));
        feed(&mut a, &[e(3_000), e(10_000)]);
        let p = a.take_pending();
        assert_eq!(
            summary(&p),
            vec![("w10s".into(), 0, r#"{"svc":"x"}"#.into(), 3, 0, false)]
        );
    }

    #[test]
    fn windows_close_on_the_watermark_and_late_events_are_counted() {
        let mut a = Aggregator::new();
        a.set_definitions(
            "t",
            &[("s".into(), def("10s", None, "5s", 100))],
            &mut NoCustom,
        );
        let e = |ts: i64, svc: &str| (ts, json!({"svc": svc, "v": 1}));
        feed(
            &mut a,
            &[e(1_000, "x"), e(2_000, "y"), e(9_000, "x"), e(12_000, "x")],
        );
        assert!(a.take_pending().is_empty(), "[0,10s) waits until 15 s");
        feed(&mut a, &[e(4_000, "x")]); // within the lateness: counted in the window
        feed(&mut a, &[e(15_000, "y")]);
        let p = a.take_pending();
        assert_eq!(
            summary(&p),
            vec![
                ("w10s".into(), 0, r#"{"svc":"x"}"#.into(), 3, 0, false),
                ("w10s".into(), 0, r#"{"svc":"y"}"#.into(), 1, 0, false),
            ]
        );
        feed(&mut a, &[e(3_000, "x"), e(3_500, "x"), e(16_000, "x")]);
        let p = a.take_pending();
        assert_eq!(
            summary(&p),
            vec![("w10s".into(), 0, r#"{"svc":"x"}"#.into(), 0, 2, true)],
            "beyond the lateness: counted as late on the closed window"
        );
        let c = a.take_counters();
        assert_eq!(c[0].2.late, 2);
        assert_eq!(c[0].2.events, 9);
    }

    #[test]
    fn several_window_sizes_and_hopping_windows_at_once() {
        let mut a = Aggregator::new();
        a.set_definitions(
            "t",
            &[
                ("s".into(), def("1s", None, "0s", 100)),
                ("s".into(), def("1m", Some("20s"), "0s", 100)),
            ],
            &mut NoCustom,
        );
        let mut ev = Vec::new();
        for i in 0..130 {
            ev.push((i * 1000 + 500, json!({"svc": "a", "v": i})));
        }
        feed(&mut a, &ev);
        let p = a.take_pending();
        let ones: Vec<_> = p.iter().filter(|p| p.def.name() == "w1s").collect();
        assert_eq!(ones.len(), 129, "every 1 s window but the last is closed");
        assert!(ones.iter().all(|p| p.acc.count == 1));
        let minutes: Vec<_> = p
            .iter()
            .filter(|p| p.def.name() == "w1m")
            .map(|p| (p.window_start, p.acc.count))
            .collect();
        // Hopping 1-minute windows every 20 s, closed by 129.5 s: starts -40 s .. 60 s.
        assert_eq!(
            minutes,
            vec![
                (-40_000, 20),
                (-20_000, 40),
                (0, 60),
                (20_000, 60),
                (40_000, 60),
                (60_000, 60)
            ]
        );
    }

    #[test]
    fn a_group_explosion_is_held_to_max_groups() {
        let mut a = Aggregator::new();
        a.set_definitions(
            "t",
            &[("s".into(), def("1m", None, "0s", 50))],
            &mut NoCustom,
        );
        let ev: Vec<_> = (0..10_000)
            .map(|i| (1_000, json!({"svc": format!("u{i}"), "v": 1})))
            .collect();
        feed(&mut a, &ev);
        assert_eq!(a.open_groups(), 51, "50 groups and the overflow group");
        let c = a.take_counters();
        assert_eq!(c[0].2.overflow, 9_950);
        feed(&mut a, &[(61_000, json!({"svc": "z"}))]);
        let p = a.take_pending();
        let total: u64 = p.iter().map(|p| p.acc.count).sum();
        assert_eq!(
            total, 10_000,
            "nothing lost: the overflow group holds the rest"
        );
        assert_eq!(
            p.iter()
                .find(|p| p.group == OVERFLOW_GROUP)
                .unwrap()
                .acc
                .count,
            9_950
        );
    }

    /// One million distinct user ids: groups held to max_groups (memory bounded, the
    /// rest counted into the overflow group) while a distinct count still answers.
    #[test]
    fn a_million_distinct_users_stay_within_bounds() {
        let grouped = Arc::new(
            Definition::new(&AggregationConfig {
                group_by: vec!["user".into()],
                max_groups: Some(1000),
                ..AggregationConfig::new("per_user", "1h", &["count"])
            })
            .unwrap(),
        );
        let mut total = (*grouped).clone();
        total.config.name = "users".into();
        total.group_by.clear();
        total.fields = vec![(
            crate::spec::Path(vec!["user".into()]),
            crate::spec::FieldNeeds {
                distinct: true,
                ..Default::default()
            },
        )];
        total.functions = vec![crate::spec::Function {
            alias: "users".into(),
            kind: crate::spec::FnKind::Distinct,
            field: Some(0),
        }];
        let (mut g, mut t) = (
            AggState::new("t", "s", grouped),
            AggState::new("t", "s", Arc::new(total)),
        );
        let mut out = Vec::new();
        for u in 0..1_000_000u32 {
            let r = json!({ "user": u });
            g.update(1_000, &r, b"", &mut NoCustom, &mut out);
            t.update(1_000, &r, b"", &mut NoCustom, &mut out);
        }
        assert_eq!(g.open[&0].len(), 1001);
        assert_eq!(g.counters.overflow, 999_000);
        let mut a = Aggregator::new();
        a.states = vec![g, t];
        let state = a.encode();
        assert!(state.len() < 200_000, "{} bytes of state", state.len());
        let users = a.states[1].open[&0]["{}"].results("t", &a.states[1].def, &mut NoCustom)
            ["users"]
            .as_u64()
            .unwrap();
        let err = (users as f64 - 1e6).abs() / 1e6;
        assert!(err < 3.0 * 0.0081, "{users}");
    }

    #[test]
    fn checkpoint_and_replay_give_the_same_partials() {
        let d = def("10s", Some("5s"), "2s", 100);
        let defs = [("s".to_owned(), d.clone())];
        let mut ev = Vec::new();
        let mut x = 7u64;
        for i in 0..3000i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let jitter = (x % 4000) as i64;
            ev.push((
                i * 50 + jitter,
                json!({"svc": format!("s{}", x % 5), "v": x % 100}),
            ));
        }
        let mut straight = Aggregator::new();
        straight.set_definitions("t", &defs, &mut NoCustom);
        feed(&mut straight, &ev);
        let want = stored(&straight.take_pending());
        assert!(
            want.values().any(|a| a.late > 0),
            "the input has late events"
        );
        for cut in [1usize, 700, 1500, 2999] {
            let mut first = Aggregator::new();
            first.set_definitions("t", &defs, &mut NoCustom);
            feed(&mut first, &ev[..cut]);
            let mut got = first.take_pending();
            let bytes = first.encode();
            let mut second =
                Aggregator::decode(&bytes, |fp| (fp == d.fingerprint).then(|| d.clone())).unwrap();
            assert_eq!(second.encode(), bytes);
            second.set_definitions("t", &defs, &mut NoCustom);
            feed(&mut second, &ev[cut..]);
            got.extend(second.take_pending());
            assert_eq!(stored(&got), want, "cut at {cut}");
        }
        assert!(Aggregator::decode(&straight.encode(), |_| None).is_err());
    }

    #[test]
    fn a_changed_definition_emits_its_open_windows() {
        let mut a = Aggregator::new();
        a.set_definitions(
            "t",
            &[("s".into(), def("1m", None, "0s", 100))],
            &mut NoCustom,
        );
        feed(&mut a, &[(1_000, json!({"svc":"a"}))]);
        a.set_definitions(
            "t",
            &[("s".into(), def("2m", None, "0s", 100))],
            &mut NoCustom,
        );
        let p = a.take_pending();
        assert_eq!(
            summary(&p),
            vec![("w1m".into(), 0, r#"{"svc":"a"}"#.into(), 1, 0, false)]
        );
        assert!(a.wants("t", "s"));
        a.set_definitions("t", &[], &mut NoCustom);
        assert!(!a.wants("t", "s"));
    }
}
