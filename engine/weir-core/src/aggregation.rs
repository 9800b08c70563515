//! The declaration of a windowed aggregation, as written in the config file
//! (`[[tenants.T.streams.S.aggregations]]`) and in a pipeline document of the admin API.
//! Only its shape lives here; `weir-agg` checks and runs it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One windowed aggregation of a stream.
///
/// ```toml
/// [[tenants.acme.streams.app.aggregations]]
/// name = "latency"
/// window = "1m"                 # 1s ..= 1d
/// hop = "10s"                   # optional: hopping windows (divides `window`)
/// lateness = "5s"               # optional: allowed lateness (default 0s)
/// group_by = ["service"]        # dotted paths into the record (`labels.host` for metrics)
/// where = { level = "error" }   # optional: equality filters (a list means any of)
/// functions = ["count", "p99(latency_ms)", "distinct(user_id) as users", "topk(5, path)"]
/// max_groups = 10000            # optional: groups per window before the overflow group
/// anomaly = { on = "count", threshold = 3.5, history = 30 }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    pub name: String,
    pub window: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, serde_json::Value>,
    pub functions: Vec<String>,
    /// Emit this aggregation's windows as soon as they close instead of at the next
    /// checkpoint interval (the sub-second path).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_groups: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<AnomalyConfig>,
}

impl AggregationConfig {
    /// A tumbling-window aggregation with no grouping, filter or options; set the other
    /// fields with struct update syntax.
    pub fn new(name: &str, window: &str, functions: &[&str]) -> AggregationConfig {
        AggregationConfig {
            name: name.to_owned(),
            window: window.to_owned(),
            hop: None,
            lateness: None,
            group_by: Vec::new(),
            filter: BTreeMap::new(),
            functions: functions.iter().map(|f| (*f).to_owned()).collect(),
            critical: false,
            max_groups: None,
            anomaly: None,
        }
    }
}

/// Anomaly detection over the window series of one group: a robust z-score of a result
/// against the previous windows.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Which result (a function's alias, e.g. `count` or `p99`) is watched.
    pub on: String,
    /// Flag a window when |robust z| exceeds this (default 3.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// How many previous windows form the baseline (default 30, at least 5 are needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u32>,
}
