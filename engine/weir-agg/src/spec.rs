//! [`Definition`]: a checked [`AggregationConfig`] — parsed windows, paths, filters and
//! functions — with the fingerprint that names its state and its rows.
//!
//! Function syntax (each may end in `as ALIAS`; the alias names the result, default the
//! text itself): `count`, `rate` (events per second), `sum(F)`, `min(F)`, `max(F)`,
//! `avg(F)`, `rate(F)` (sum of F per second), `p50(F)` `p90(F)` `p95(F)` `p99(F)`
//! `p999(F)` and `quantile(Q, F)` (DDSketch, relative error ≤ 1%), `distinct(F)`
//! (exact up to 512 values, then HyperLogLog p=14: 0.81% standard error), `topk(K, F)`
//! (Space-Saving over 10·K counters: exact while F has at most that many values).

use serde_json::Value;
use thiserror::Error;
use weir_core::aggregation::AggregationConfig;

use crate::hash::hash64;
use crate::window::{parse_duration, WindowError, Windows};

/// Relative accuracy of every percentile.
pub const QUANTILE_ALPHA: f64 = 0.01;
/// Groups per window and partition when `max_groups` is not given.
pub const DEFAULT_MAX_GROUPS: usize = 10_000;
/// The group that takes events of new groups once a window holds `max_groups`.
pub const OVERFLOW_GROUP: &str = "{\"_overflow\":true}";

#[derive(Debug, Error, PartialEq)]
pub enum SpecError {
    #[error("aggregation name {0:?}: 1-64 characters of [A-Za-z0-9_.-]")]
    Name(String),
    #[error("aggregation {name}: {source}")]
    Window { name: String, source: WindowError },
    #[error("aggregation {name}: function {text:?}: {why}")]
    Function {
        name: String,
        text: String,
        why: String,
    },
    #[error("aggregation {name}: {why}")]
    Other { name: String, why: String },
}

/// A dotted path into a JSON object (`labels.host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<String>);

impl Path {
    fn parse(s: &str) -> Option<Path> {
        let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
        (!s.is_empty() && parts.iter().all(|p| !p.is_empty())).then_some(Path(parts))
    }

    pub fn get<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(v, |v, k| v.get(k))
    }

    pub fn text(&self) -> String {
        self.0.join(".")
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FnKind {
    Count,
    Rate,
    Sum,
    Min,
    Max,
    Avg,
    RateOf,
    Quantile(f64),
    Distinct,
    TopK(usize),
    /// A custom function: index into [`Definition::plugins`].
    Wasm(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub alias: String,
    pub kind: FnKind,
    /// Index into [`Definition::fields`] (None for `count` and `rate`).
    pub field: Option<usize>,
}

/// What one field's accumulator keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FieldNeeds {
    pub stats: bool,
    pub sketch: bool,
    pub distinct: bool,
    /// Space-Saving counters (0: none).
    pub topk: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AnomalySpec {
    pub on: String,
    pub threshold: f64,
    pub history: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub config: AggregationConfig,
    /// 16 hex digits of a stable hash of the canonical config: a changed definition is a
    /// new aggregation state and a new set of rows.
    pub fingerprint: String,
    pub windows: Windows,
    pub lateness_ms: u64,
    pub group_by: Vec<Path>,
    pub filter: Vec<(Path, Value)>,
    pub fields: Vec<(Path, FieldNeeds)>,
    pub functions: Vec<Function>,
    pub max_groups: usize,
    pub anomaly: Option<AnomalySpec>,
    /// Plugins of the custom (`wasm(NAME)`) functions, in order.
    pub plugins: Vec<String>,
}

impl Definition {
    pub fn new(config: &AggregationConfig) -> Result<Definition, SpecError> {
        let name = config.name.clone();
        if !weir_core::names::is_valid_name(&name) {
            return Err(SpecError::Name(name));
        }
        let other = |why: String| SpecError::Other {
            name: name.clone(),
            why,
        };
        let win = |e| SpecError::Window {
            name: name.clone(),
            source: e,
        };
        let size = parse_duration(&config.window).map_err(win)?;
        let hop = config
            .hop
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(win)?;
        let windows = Windows::new(size, hop).map_err(win)?;
        let lateness_ms = match config.lateness.as_deref() {
            None | Some("0") | Some("0s") => 0,
            Some(l) => parse_duration(l).map_err(win)?,
        };
        let path = |s: &str| Path::parse(s).ok_or_else(|| other(format!("bad field path {s:?}")));
        let group_by = config
            .group_by
            .iter()
            .map(|g| path(g))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = config
            .filter
            .iter()
            .map(|(k, v)| Ok((path(k)?, v.clone())))
            .collect::<Result<Vec<_>, SpecError>>()?;
        if config.functions.is_empty() {
            return Err(other("no functions".into()));
        }
        let mut fields: Vec<(Path, FieldNeeds)> = Vec::new();
        let mut functions = Vec::new();
        let mut plugins = Vec::new();
        for text in &config.functions {
            let f = parse_function(text, &mut fields, &mut plugins).map_err(|why| {
                SpecError::Function {
                    name: name.clone(),
                    text: text.clone(),
                    why,
                }
            })?;
            if functions.iter().any(|g: &Function| g.alias == f.alias) {
                return Err(other(format!("two functions named {:?}", f.alias)));
            }
            functions.push(f);
        }
        let max_groups = match config.max_groups {
            None => DEFAULT_MAX_GROUPS,
            Some(n) if (1..=1_000_000).contains(&n) => n as usize,
            Some(n) => return Err(other(format!("max_groups {n} is outside 1..=1000000"))),
        };
        let anomaly = match &config.anomaly {
            None => None,
            Some(a) => {
                if !functions.iter().any(|f| f.alias == a.on) {
                    return Err(other(format!(
                        "anomaly.on {:?} names no function (aliases: {:?})",
                        a.on,
                        functions.iter().map(|f| &f.alias).collect::<Vec<_>>()
                    )));
                }
                let threshold = a.threshold.unwrap_or(3.5);
                let history = a.history.unwrap_or(30) as usize;
                if !(threshold.is_finite() && threshold > 0.0 && (5..=1000).contains(&history)) {
                    return Err(other(
                        "anomaly: threshold must be positive and history in 5..=1000".into(),
                    ));
                }
                Some(AnomalySpec {
                    on: a.on.clone(),
                    threshold,
                    history,
                })
            }
        };
        let canonical = serde_json::to_string(config).expect("config serialises");
        Ok(Definition {
            config: config.clone(),
            fingerprint: format!("{:016x}", hash64(canonical.as_bytes())),
            windows,
            lateness_ms,
            group_by,
            filter,
            fields,
            functions,
            max_groups,
            anomaly,
            plugins,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether a record passes the `where` filters.
    pub fn matches(&self, record: &Value) -> bool {
        self.filter.iter().all(|(p, want)| {
            let got = p.get(record);
            match want {
                Value::Array(any) => got.is_some_and(|g| any.contains(g)),
                w => got == Some(w),
            }
        })
    }

    /// The group of a record: a JSON object of its group-by values (null when absent).
    pub fn group_of(&self, record: &Value) -> String {
        if self.group_by.is_empty() {
            return "{}".to_owned();
        }
        let mut m = serde_json::Map::new();
        for p in &self.group_by {
            m.insert(p.text(), p.get(record).cloned().unwrap_or(Value::Null));
        }
        Value::Object(m).to_string()
    }
}

fn parse_function(
    text: &str,
    fields: &mut Vec<(Path, FieldNeeds)>,
    plugins: &mut Vec<String>,
) -> Result<Function, String> {
    let (body, alias) = match text.rsplit_once(" as ") {
        Some((b, a)) => (b.trim(), a.trim().to_owned()),
        None => (text.trim(), text.trim().to_owned()),
    };
    if alias.is_empty() {
        return Err("empty alias".into());
    }
    let (fname, args) = match body.split_once('(') {
        None => (body, Vec::new()),
        Some((f, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .ok_or("expected NAME(ARGS) with a closing parenthesis")?;
            (
                f.trim(),
                inner.split(',').map(|a| a.trim().to_owned()).collect(),
            )
        }
    };
    let mut field = |p: &str, set: &dyn Fn(&mut FieldNeeds)| -> Result<Option<usize>, String> {
        let path = Path::parse(p).ok_or_else(|| format!("bad field path {p:?}"))?;
        let i = match fields.iter().position(|(q, _)| *q == path) {
            Some(i) => i,
            None => {
                fields.push((path, FieldNeeds::default()));
                fields.len() - 1
            }
        };
        set(&mut fields[i].1);
        Ok(Some(i))
    };
    let one = |args: &[String]| -> Result<String, String> {
        match args {
            [a] => Ok(a.clone()),
            _ => Err(format!("{fname} takes one argument")),
        }
    };
    let stats = |n: &mut FieldNeeds| n.stats = true;
    let sketch = |n: &mut FieldNeeds| n.sketch = true;
    let (kind, field) = match fname {
        "count" | "rate" if args.is_empty() => (
            if fname == "count" {
                FnKind::Count
            } else {
                FnKind::Rate
            },
            None,
        ),
        "sum" => (FnKind::Sum, field(&one(&args)?, &stats)?),
        "min" => (FnKind::Min, field(&one(&args)?, &stats)?),
        "max" => (FnKind::Max, field(&one(&args)?, &stats)?),
        "avg" => (FnKind::Avg, field(&one(&args)?, &stats)?),
        "rate" => (FnKind::RateOf, field(&one(&args)?, &stats)?),
        "p50" | "p90" | "p95" | "p99" | "p999" => {
            let q = match fname {
                "p50" => 0.5,
                "p90" => 0.9,
                "p95" => 0.95,
                "p99" => 0.99,
                _ => 0.999,
            };
            (FnKind::Quantile(q), field(&one(&args)?, &sketch)?)
        }
        "quantile" => {
            let [q, f] = args.as_slice() else {
                return Err("quantile takes (Q, FIELD)".into());
            };
            let q: f64 = q
                .parse()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))
                .ok_or("Q must be a number in 0..=1")?;
            (FnKind::Quantile(q), field(f, &sketch)?)
        }
        "distinct" => (
            FnKind::Distinct,
            field(&one(&args)?, &|n: &mut FieldNeeds| n.distinct = true)?,
        ),
        "topk" => {
            let [k, f] = args.as_slice() else {
                return Err("topk takes (K, FIELD)".into());
            };
            let k: usize = k
                .parse()
                .ok()
                .filter(|k| (1..=1000).contains(k))
                .ok_or("K must be in 1..=1000")?;
            (
                FnKind::TopK(k),
                field(f, &|n: &mut FieldNeeds| n.topk = n.topk.max(10 * k))?,
            )
        }
        "wasm" => {
            let p = one(&args)?;
            let ok = p.strip_prefix("builtin:").unwrap_or(&p);
            if !weir_core::names::is_valid_name(ok) {
                return Err("wasm takes a plugin name (NAME or builtin:NAME)".into());
            }
            plugins.push(p);
            (FnKind::Wasm(plugins.len() - 1), None)
        }
        _ => {
            return Err(
                "unknown function (count, rate, sum, min, max, avg, p50, p90, p95, p99, p999, quantile, distinct, topk, wasm)"
                    .into(),
            )
        }
    };
    Ok(Function { alias, kind, field })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config(functions: &[&str]) -> AggregationConfig {
        AggregationConfig {
            group_by: vec!["service".into()],
            ..AggregationConfig::new("a", "1m", functions)
        }
    }

    #[test]
    fn functions_share_field_accumulators() {
        let d = Definition::new(&config(&[
            "count",
            "p99(lat) as p99",
            "avg(lat)",
            "distinct(user.id)",
            "topk(3, path)",
            "quantile(0.25, lat)",
        ]))
        .unwrap();
        assert_eq!(d.fields.len(), 3, "lat, user.id, path");
        let lat = &d.fields[0];
        assert_eq!(lat.0.text(), "lat");
        assert!(lat.1.stats && lat.1.sketch && !lat.1.distinct);
        assert_eq!(d.fields[2].1.topk, 30);
        assert_eq!(d.functions[1].alias, "p99");
        assert_eq!(d.functions[5].kind, FnKind::Quantile(0.25));
        assert_eq!(d.fingerprint.len(), 16);
    }

    #[test]
    fn bad_definitions_say_why() {
        for (fns, want) in [
            (vec!["median(x)"], "unknown function"),
            (vec!["sum(x"], "closing parenthesis"),
            (vec!["sum(a, b)"], "one argument"),
            (vec!["wasm(a/b)"], "plugin name"),
            (vec!["quantile(2, x)"], "0..=1"),
            (vec!["topk(0, x)"], "1..=1000"),
            (vec!["count", "count"], "two functions"),
            (vec![], "no functions"),
        ] {
            let e = Definition::new(&config(&fns)).unwrap_err().to_string();
            assert!(e.contains(want), "{fns:?}: {e}");
        }
        let mut c = config(&["count"]);
        c.window = "1w".into();
        assert!(Definition::new(&c).is_err());
        c.window = "1m".into();
        c.hop = Some("7s".into());
        assert!(Definition::new(&c).is_err());
        c.hop = None;
        c.anomaly = Some(weir_core::aggregation::AnomalyConfig {
            on: "p99".into(),
            threshold: None,
            history: None,
        });
        assert!(Definition::new(&c)
            .unwrap_err()
            .to_string()
            .contains("names no function"));
    }

    #[test]
    fn filters_groups_and_fingerprints() {
        let mut c = config(&["count"]);
        c.filter
            .insert("level".into(), serde_json::json!(["error", "fatal"]));
        let d = Definition::new(&c).unwrap();
        let r = serde_json::json!({"level":"fatal","service":"api"});
        assert!(d.matches(&r));
        assert!(!d.matches(&serde_json::json!({"level":"info"})));
        assert_eq!(d.group_of(&r), r#"{"service":"api"}"#);
        assert_eq!(d.group_of(&serde_json::json!({})), r#"{"service":null}"#);
        let mut c2 = c.clone();
        c2.window = "2m".into();
        assert_ne!(Definition::new(&c2).unwrap().fingerprint, d.fingerprint);
        assert_eq!(Definition::new(&c).unwrap().fingerprint, d.fingerprint);
    }
}
