//! The configuration file of `weir serve` (TOML). Unknown keys are an error.
//!
//! Every section has defaults, so an empty file (or no file) runs Weir on loopback with
//! embedded storage under `./weir-data` and one tenant `default` that needs no token.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub use crate::aggregation::{AggregationConfig, AnomalyConfig};
use crate::names::is_valid_name;

/// The tenant used when no tenants are configured.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub plugins: PluginLimits,
    #[serde(default)]
    pub hot: HotConfig,
    #[serde(default)]
    pub aggregation: AggregationSettings,
    #[serde(default)]
    pub cold: ColdConfig,
    #[serde(default)]
    pub query: crate::serving::QueryConfig,
    #[serde(default)]
    pub http: crate::serving::HttpConfig,
    #[serde(default)]
    pub metrics: crate::serving::MetricsConfig,
    #[serde(default)]
    pub dead_letters: DeadLettersConfig,
    /// Connections of the TCP ingest listeners (see [`crate::listeners`]).
    #[serde(default)]
    pub tcp: crate::listeners::TcpConfig,
}

/// How long dead letters (and rows the cold flush quarantined) are kept, and how many
/// bytes of them one tenant may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersConfig {
    /// Dead letters and quarantined rows older than this are deleted by the janitor.
    #[serde(default = "d_dead_retention")]
    pub retention: String,
    /// Bytes of one tenant's dead letters, in MiB (and, counted apart, of its quarantined
    /// rows); past it the tenant's oldest are deleted, and counted.
    #[serde(default = "d_dead_mb")]
    pub max_mb_per_tenant: u64,
}
fn d_dead_retention() -> String {
    "7d".into()
}
fn d_dead_mb() -> u64 {
    64
}
impl Default for DeadLettersConfig {
    fn default() -> Self {
        DeadLettersConfig {
            retention: d_dead_retention(),
            max_mb_per_tenant: d_dead_mb(),
        }
    }
}
impl DeadLettersConfig {
    /// The retention in milliseconds (checked by `Config::validate`).
    pub fn retention_ms(&self) -> u64 {
        crate::retention::parse_duration_ms(&self.retention).unwrap_or(7 * 86_400_000)
    }

    /// The per-tenant cap in bytes.
    pub fn max_bytes_per_tenant(&self) -> u64 {
        self.max_mb_per_tenant.saturating_mul(1 << 20)
    }
}

/// The cold tier (Parquet files; see `weir_store::cold`) and the janitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdConfig {
    /// Hot segments older than this many seconds are flushed to Parquet (0: no cold
    /// tier; the hot tier's memory bound and retention then delete rows). A stream's
    /// `retention.hot` overrides the age.
    #[serde(default)]
    pub flush_after_secs: u64,
    /// Directory of the cold files (default: `DATA_DIR/cold`).
    pub dir: Option<PathBuf>,
    /// Or an S3-compatible bucket and prefix: `s3://BUCKET/PREFIX` (instead of `dir`).
    pub url: Option<String>,
    /// Settings of the S3 client on top of the `AWS_*` environment variables:
    /// `endpoint`, `region`, `allow_http`, `access_key_id`, `secret_access_key`,
    /// `session_token`, `virtual_hosted_style_request`, ... (the `object_store` crate's
    /// keys, with or without `aws_`).
    #[serde(default)]
    pub s3: std::collections::BTreeMap<String, String>,
    /// Seconds between janitor passes (retention, compaction).
    #[serde(default = "d_janitor")]
    pub janitor_secs: u64,
    /// Files smaller than this many MiB are compacted...
    #[serde(default = "d_small_mb")]
    pub compact_small_mb: u64,
    /// ...once a tenant's stream has this many of them for one day.
    #[serde(default = "d_min_files")]
    pub compact_min_files: usize,
    /// Resolutions of the metric rollups written with the raw samples (tables
    /// `metrics_1m`, `metrics_1h`, ...): whole seconds, 10 s to 1 day.
    #[serde(default = "d_rollups")]
    pub rollups: Vec<String>,
}
impl ColdConfig {
    /// The rollup resolutions in seconds (checked by `Config::validate`).
    pub fn rollup_secs(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .rollups
            .iter()
            .filter_map(|r| crate::retention::parse_duration_ms(r))
            .map(|ms| (ms / 1000) as u32)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}
fn d_rollups() -> Vec<String> {
    vec!["1m".into(), "1h".into()]
}
fn d_janitor() -> u64 {
    60
}
fn d_small_mb() -> u64 {
    64
}
fn d_min_files() -> usize {
    8
}
impl Default for ColdConfig {
    fn default() -> Self {
        ColdConfig {
            flush_after_secs: 0,
            dir: None,
            url: None,
            s3: Default::default(),
            janitor_secs: d_janitor(),
            compact_small_mb: d_small_mb(),
            compact_min_files: d_min_files(),
            rollups: d_rollups(),
        }
    }
}

/// How aggregation state is checkpointed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationSettings {
    /// Aggregation state and its input offsets are checkpointed (atomically, in redb) at
    /// most this often; closed windows of non-critical aggregations wait for it.
    #[serde(default = "d_ckpt")]
    pub checkpoint_interval_ms: u64,
}
fn d_ckpt() -> u64 {
    1_000
}
impl Default for AggregationSettings {
    fn default() -> Self {
        AggregationSettings {
            checkpoint_interval_ms: d_ckpt(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("weir-data")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "d_http")]
    pub http: String,
    #[serde(default = "d_grpc")]
    pub grpc: String,
    #[serde(default = "d_tcp")]
    pub tcp: String,
    #[serde(default = "d_admin")]
    pub admin: String,
}
fn d_http() -> String {
    "127.0.0.1:7070".into()
}
fn d_grpc() -> String {
    "127.0.0.1:7071".into()
}
fn d_tcp() -> String {
    "127.0.0.1:7072".into()
}
fn d_admin() -> String {
    "127.0.0.1:7073".into()
}
impl Default for Listen {
    fn default() -> Self {
        Listen {
            http: d_http(),
            grpc: d_grpc(),
            tcp: d_tcp(),
            admin: d_admin(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The admin API is served only when a token is set.
    pub token: Option<String>,
    /// Largest plugin upload accepted (413 above it).
    #[serde(default = "d_max_plugin")]
    pub max_plugin_bytes: usize,
}
fn d_max_plugin() -> usize {
    32 << 20
}
impl Default for Admin {
    fn default() -> Self {
        Admin {
            token: None,
            max_plugin_bytes: d_max_plugin(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub streams: BTreeMap<String, StreamConfig>,
    /// Sandbox limits of this tenant's plugins (defaults: `[plugins]`).
    #[serde(default)]
    pub limits: TenantLimits,
    /// Cardinality control of this tenant's metric samples.
    #[serde(default)]
    pub metrics: SeriesPolicy,
    /// Retention of this tenant's streams (see [`crate::retention`]).
    #[serde(default)]
    pub retention: crate::retention::Retention,
    /// TCP ingest listeners feeding this tenant (see [`crate::listeners`]).
    #[serde(default)]
    pub listeners: Vec<crate::listeners::ListenerConfig>,
}

/// Cardinality control of a tenant's metrics: label rewriting, then series limits.
///
/// ```toml
/// [tenants.acme.metrics]
/// max_series = 100000            # distinct series of the tenant
/// max_series_per_metric = 10000  # distinct series of one metric name
/// on_limit = "overflow"          # or "refuse" (default)
/// allow_labels = ["host", "code"]  # when set, other labels are dropped
/// drop_labels = ["request_id"]
/// hash_labels = { user_id = 64 } # value replaced by one of 64 buckets
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SeriesPolicy {
    #[serde(default = "d_max_series")]
    pub max_series: u64,
    pub max_series_per_metric: Option<u64>,
    #[serde(default)]
    pub on_limit: OnLimit,
    pub allow_labels: Option<Vec<String>>,
    #[serde(default)]
    pub drop_labels: Vec<String>,
    #[serde(default)]
    pub hash_labels: BTreeMap<String, u32>,
}
fn d_max_series() -> u64 {
    100_000
}
impl Default for SeriesPolicy {
    fn default() -> Self {
        SeriesPolicy {
            max_series: d_max_series(),
            max_series_per_metric: None,
            on_limit: OnLimit::default(),
            allow_labels: None,
            drop_labels: Vec::new(),
            hash_labels: BTreeMap::new(),
        }
    }
}

/// What happens to a sample of a new series beyond a limit.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// The sample is rejected (its line, with the reason).
    #[default]
    Refuse,
    /// The sample is kept in its metric's overflow series `{_overflow="true"}`.
    Overflow,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The plugin chain, in order.
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    /// Windowed aggregations over the chain's output.
    #[serde(default)]
    pub aggregations: Vec<AggregationConfig>,
    /// This stream's retention, over the tenant's.
    #[serde(default)]
    pub retention: crate::retention::Retention,
}

/// One entry of a plugin chain.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// `builtin:NAME` for a first-party plugin carried by the binary, `file:PATH` for a
    /// component on disk, or `NAME` for the tenant's own plugin uploaded through the
    /// admin API (its active version).
    pub plugin: String,
    /// Passed to the plugin's `init` as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// WASI capabilities granted to this stage (none unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<WasiGrants>,
}

/// What a plugin may see of the outside world through WASI. Everything is off by
/// default: no environment, stdout/stderr discarded, clocks frozen at the Unix epoch,
/// and a fixed pseudo-random sequence (so a replayed batch gives the same output).
/// Files and sockets are never granted.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WasiGrants {
    /// Environment variables the plugin sees.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Lines the plugin writes to stdout/stderr go to the server's log, tagged with
    /// tenant and plugin.
    #[serde(default)]
    pub stdio: bool,
    /// The real wall-clock and monotonic clocks.
    #[serde(default)]
    pub clocks: bool,
    /// Unpredictable random bytes.
    #[serde(default)]
    pub random: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body accepted, as sent (compressed or not): 413 above it.
    #[serde(default = "d_max_body")]
    pub max_body_bytes: usize,
    /// Largest body after decompression: 413 above it.
    #[serde(default = "d_max_decoded")]
    pub max_decoded_bytes: usize,
    /// Largest single record: a longer line is rejected on its own.
    #[serde(default = "d_max_record")]
    pub max_record_bytes: usize,
    /// How long the log remembers an `Idempotency-Key` (seconds).
    #[serde(default = "d_idempotency_ttl")]
    pub idempotency_ttl_secs: u64,
    /// Most `Idempotency-Key`s remembered per tenant; its oldest are forgotten first.
    #[serde(default = "d_idempotency_keys")]
    pub idempotency_keys_per_tenant: u64,
}
fn d_idempotency_ttl() -> u64 {
    24 * 3600
}
fn d_idempotency_keys() -> u64 {
    100_000
}
fn d_max_body() -> usize {
    16 << 20
}
fn d_max_decoded() -> usize {
    64 << 20
}
fn d_max_record() -> usize {
    1 << 20
}
impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: d_max_body(),
            max_decoded_bytes: d_max_decoded(),
            max_record_bytes: d_max_record(),
            idempotency_ttl_secs: d_idempotency_ttl(),
            idempotency_keys_per_tenant: d_idempotency_keys(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Number of partitions of the embedded log. Fixed once data exists.
    #[serde(default = "d_partitions")]
    pub partitions: u32,
    /// Retention: processed entries beyond this many bytes per partition are deleted.
    #[serde(default = "d_ret_bytes")]
    pub retention_bytes: u64,
    /// Retention: processed entries older than this are deleted.
    #[serde(default = "d_ret_secs")]
    pub retention_secs: u64,
    /// Backpressure: when the unprocessed bytes of a partition exceed this, ingest answers
    /// 429 until the workers catch up.
    #[serde(default = "d_max_lag")]
    pub max_lag_bytes: u64,
    /// Requests waiting for the group committer; beyond it ingest answers 429.
    #[serde(default = "d_queue")]
    pub commit_queue: usize,
}
fn d_partitions() -> u32 {
    4
}
fn d_ret_bytes() -> u64 {
    1 << 30
}
fn d_ret_secs() -> u64 {
    24 * 3600
}
fn d_max_lag() -> u64 {
    256 << 20
}
fn d_queue() -> usize {
    4096
}
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: d_partitions(),
            retention_bytes: d_ret_bytes(),
            retention_secs: d_ret_secs(),
            max_lag_bytes: d_max_lag(),
            commit_queue: d_queue(),
        }
    }
}

/// Sandbox limits applied to every plugin instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    /// Linear memory cap per instance, in MiB.
    #[serde(default = "d_mem")]
    pub memory_mb: u64,
    /// Wall-clock deadline per call, in milliseconds (epoch interruption).
    #[serde(default = "d_deadline")]
    pub deadline_ms: u64,
    /// A call's output may be at most this many times its input (plus 64 KiB).
    #[serde(default = "d_ratio")]
    pub max_output_ratio: u64,
    /// Live plugin instances one tenant may hold across all partitions and streams.
    #[serde(default = "d_instances")]
    pub max_instances: u64,
    /// Automatic rollback: a version activated over an older one is rolled back when
    /// more than this share of its calls trap or time out...
    #[serde(default = "d_rollback_ratio")]
    pub rollback_failure_ratio: f64,
    /// ...within this many seconds of its activation...
    #[serde(default = "d_rollback_window")]
    pub rollback_window_secs: u64,
    /// ...once it has made at least this many calls.
    #[serde(default = "d_rollback_min")]
    pub rollback_min_calls: u64,
    /// Circuit breaker: after this many consecutive traps or timeouts, a worker stops
    /// calling the stage and dead-letters its batches at once...
    #[serde(default = "d_quarantine_after")]
    pub quarantine_after: u32,
    /// ...for this many seconds, then tries one call again.
    #[serde(default = "d_quarantine_secs")]
    pub quarantine_secs: u64,
    /// Log lines (stdout, stderr and `host.log` together) one instance may write per
    /// second; beyond it lines are dropped and counted.
    #[serde(default = "d_log_lines")]
    pub log_lines_per_sec: u32,
    /// Lines an instance may write at once after a quiet spell.
    #[serde(default = "d_log_burst")]
    pub log_burst_lines: u32,
    /// Longest log line kept, in bytes (the rest is cut).
    #[serde(default = "d_log_line_bytes")]
    pub log_line_bytes: usize,
    /// Wall-clock time one upload's compilation may take (the compiler process is
    /// killed after it and the upload refused with 422).
    #[serde(default = "d_compile_ms")]
    pub compile_timeout_ms: u64,
    /// Address space of the compiler process, in MiB.
    #[serde(default = "d_compile_mb")]
    pub compile_memory_mb: u64,
    /// Compilations running at once, all tenants together (an upload beyond it gets 503).
    #[serde(default = "d_compiles")]
    pub max_concurrent_compiles: usize,
    /// Compilations one tenant may run at once.
    #[serde(default = "d_tenant_compiles")]
    pub max_compiles_per_tenant: usize,
}
fn d_log_lines() -> u32 {
    20
}
fn d_log_burst() -> u32 {
    100
}
fn d_log_line_bytes() -> usize {
    4096
}
fn d_compile_ms() -> u64 {
    60_000
}
fn d_compile_mb() -> u64 {
    2048
}
fn d_compiles() -> usize {
    2
}
fn d_tenant_compiles() -> usize {
    1
}
fn d_quarantine_after() -> u32 {
    3
}
fn d_quarantine_secs() -> u64 {
    30
}

/// Per-tenant overrides of the `[plugins]` sandbox limits.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub memory_mb: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_output_ratio: Option<u64>,
    pub max_instances: Option<u64>,
}

fn d_instances() -> u64 {
    1024
}
fn d_rollback_ratio() -> f64 {
    0.5
}
fn d_rollback_window() -> u64 {
    300
}
fn d_rollback_min() -> u64 {
    5
}
fn d_mem() -> u64 {
    64
}
fn d_deadline() -> u64 {
    2000
}
fn d_ratio() -> u64 {
    4
}
impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_mb: d_mem(),
            deadline_ms: d_deadline(),
            max_output_ratio: d_ratio(),
            max_instances: d_instances(),
            rollback_failure_ratio: d_rollback_ratio(),
            rollback_window_secs: d_rollback_window(),
            rollback_min_calls: d_rollback_min(),
            quarantine_after: d_quarantine_after(),
            quarantine_secs: d_quarantine_secs(),
            log_lines_per_sec: d_log_lines(),
            log_burst_lines: d_log_burst(),
            log_line_bytes: d_log_line_bytes(),
            compile_timeout_ms: d_compile_ms(),
            compile_memory_mb: d_compile_mb(),
            max_concurrent_compiles: d_compiles(),
            max_compiles_per_tenant: d_tenant_compiles(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotConfig {
    /// Memory bound of the hot store (Arrow batches), in MiB. Oldest rows are evicted
    /// beyond it, and counted.
    #[serde(default = "d_hot")]
    pub max_mb: u64,
    /// Rows per worker batch (one plugin call per tenant and stream in it).
    #[serde(default = "d_batch")]
    pub batch_records: usize,
}
fn d_hot() -> u64 {
    1024
}
fn d_batch() -> usize {
    8192
}
impl Default for HotConfig {
    fn default() -> Self {
        HotConfig {
            max_mb: d_hot(),
            batch_records: d_batch(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("empty config is valid")
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // An empty token would let `Authorization: Bearer ` through.
        for (what, token) in [
            ("admin.token", &self.admin.token),
            ("metrics.token", &self.metrics.token),
        ] {
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return bad(format!("{what} must not be empty (leave it out instead)"));
            }
        }
        if let Err(e) = self.query.check() {
            return bad(e);
        }
        if let Err(e) = self.http.check() {
            return bad(e);
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (tenant, tc) in &self.tenants {
            let m = &tc.metrics;
            if m.max_series == 0
                || m.max_series_per_metric == Some(0)
                || m.hash_labels.values().any(|b| *b == 0)
            {
                return bad(format!(
                    "tenants.{tenant}.metrics: limits and hash buckets must be at least 1"
                ));
            }
            if !is_valid_name(tenant) {
                return bad(format!(
                    "tenant name {tenant:?} must be 1-64 chars of [A-Za-z0-9_.-]"
                ));
            }
            for token in &tc.tokens {
                if token.trim().is_empty() {
                    return bad(format!("tenant {tenant} has an empty token"));
                }
                if let Some(other) = seen.insert(token, tenant) {
                    return bad(format!("a token is shared by tenants {other} and {tenant}"));
                }
            }
            for (stream, sc) in &tc.streams {
                if !is_valid_name(stream) {
                    return bad(format!(
                        "stream name {stream:?} of tenant {tenant} is invalid"
                    ));
                }
                if crate::names::is_reserved_stream(stream)
                    && (stream != crate::names::METRICS_STREAM || !sc.plugins.is_empty())
                {
                    return bad(format!(
                        "stream name {stream:?} of tenant {tenant}: names starting with '_' are reserved ({} takes aggregations only)", crate::names::METRICS_STREAM
                    ));
                }
                for p in &sc.plugins {
                    if !(p.plugin.starts_with("builtin:")
                        || p.plugin.starts_with("file:")
                        || is_valid_name(&p.plugin))
                    {
                        return bad(format!(
                            "plugin {:?} in {tenant}/{stream}: expected builtin:NAME, file:PATH or the name of an uploaded plugin",
                            p.plugin
                        ));
                    }
                }
            }
        }
        if let Err(e) = crate::listeners::check(self) {
            return bad(e);
        }
        if self.log.partitions == 0 || self.log.partitions > 1024 {
            return bad("log.partitions must be 1..=1024".into());
        }
        if self.plugins.memory_mb == 0 || self.plugins.deadline_ms == 0 {
            return bad("plugins.memory_mb and plugins.deadline_ms must be positive".into());
        }
        let p = &self.plugins;
        if p.log_burst_lines == 0
            || p.log_line_bytes == 0
            || p.compile_timeout_ms == 0
            || p.compile_memory_mb < 64
            || p.max_concurrent_compiles == 0
            || p.max_compiles_per_tenant == 0
        {
            return bad("plugins: log_burst_lines, log_line_bytes, compile_timeout_ms, max_concurrent_compiles and max_compiles_per_tenant must be positive, compile_memory_mb at least 64".into());
        }
        for tenant in self.tenants.keys() {
            let l = self.plugin_limits(tenant);
            if l.memory_mb == 0 || l.deadline_ms == 0 || l.max_instances == 0 {
                return bad(format!(
                    "tenant {tenant}: memory_mb, deadline_ms and max_instances must be positive"
                ));
            }
        }
        let r = self.plugins.rollback_failure_ratio;
        if !(0.0..=1.0).contains(&r) {
            return bad(format!(
                "plugins.rollback_failure_ratio must be in 0..=1, not {r}"
            ));
        }
        if self.hot.batch_records == 0 {
            return bad("hot.batch_records must be positive".into());
        }
        for r in &self.cold.rollups {
            match crate::retention::parse_duration_ms(r) {
                Some(ms) if ms % 1000 == 0 && (10_000..=86_400_000).contains(&ms) => {}
                _ => {
                    return bad(format!(
                        "cold.rollups: {r:?} must be whole seconds from 10s to 1d"
                    ))
                }
            }
        }
        if self.cold.dir.is_some() && self.cold.url.is_some() {
            return bad("cold: set `dir` or `url`, not both".into());
        }
        // Every duration of the file within 100 years: none may overflow a deadline or a
        // cutoff computed from it.
        let ms = |v: u64| v / 1000 + u64::from(!v.is_multiple_of(1000));
        for (name, secs) in [
            ("cold.flush_after_secs", self.cold.flush_after_secs),
            ("cold.janitor_secs", self.cold.janitor_secs),
            ("log.retention_secs", self.log.retention_secs),
            (
                "ingest.idempotency_ttl_secs",
                self.ingest.idempotency_ttl_secs,
            ),
            (
                "plugins.rollback_window_secs",
                self.plugins.rollback_window_secs,
            ),
            ("plugins.quarantine_secs", self.plugins.quarantine_secs),
            ("plugins.deadline_ms", ms(self.plugins.deadline_ms)),
            (
                "aggregation.checkpoint_interval_ms",
                ms(self.aggregation.checkpoint_interval_ms),
            ),
        ]
        .into_iter()
        .chain(self.tenants.values().filter_map(|tc| {
            tc.limits
                .deadline_ms
                .map(|d| ("tenants.*.limits.deadline_ms", ms(d)))
        })) {
            if let Err(e) = crate::retention::check_secs(name, secs) {
                return bad(e);
            }
        }
        if let Err(e) = crate::retention::parse_duration(&self.dead_letters.retention) {
            return bad(format!("dead_letters.retention = {e}"));
        }
        if self.dead_letters.max_mb_per_tenant == 0 {
            return bad("dead_letters.max_mb_per_tenant must be at least 1".into());
        }
        if self.cold.janitor_secs == 0 || self.cold.compact_min_files < 2 {
            return bad(
                "cold.janitor_secs must be positive and cold.compact_min_files at least 2".into(),
            );
        }
        for tenant in self.tenants.keys() {
            if let Err(e) = self.retention_doc(tenant).check() {
                return bad(format!("tenants.{tenant}.retention: {e}"));
            }
        }
        Ok(())
    }

    /// The retention a tenant's config declares: its own and its streams'.
    pub fn retention_doc(&self, tenant: &str) -> crate::retention::RetentionDoc {
        let Some(tc) = self.tenants.get(tenant) else {
            return Default::default();
        };
        crate::retention::RetentionDoc {
            hot: tc.retention.hot.clone(),
            hot_mb: tc.retention.hot_mb,
            cold: tc.retention.cold.clone(),
            rollups: tc.retention.rollups.clone(),
            streams: tc
                .streams
                .iter()
                .filter(|(_, sc)| sc.retention != Default::default())
                .map(|(s, sc)| (s.clone(), sc.retention.clone()))
                .collect(),
        }
    }

    /// Whether requests need a token: false only when no tenant is configured.
    pub fn open_mode(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The tenant a bearer token belongs to.
    pub fn tenant_for_token(&self, token: &str) -> Option<&str> {
        self.tenants
            .iter()
            .find(|(_, t)| t.tokens.iter().any(|x| x == token))
            .map(|(name, _)| name.as_str())
    }

    /// The sandbox limits of `tenant`'s plugins: its own overrides over `[plugins]`.
    pub fn plugin_limits(&self, tenant: &str) -> PluginLimits {
        let mut l = self.plugins.clone();
        if let Some(t) = self.tenants.get(tenant) {
            let o = &t.limits;
            l.memory_mb = o.memory_mb.unwrap_or(l.memory_mb);
            l.deadline_ms = o.deadline_ms.unwrap_or(l.deadline_ms);
            l.max_output_ratio = o.max_output_ratio.unwrap_or(l.max_output_ratio);
            l.max_instances = o.max_instances.unwrap_or(l.max_instances);
        }
        l
    }

    /// The cardinality policy of `tenant`'s metrics (defaults when not configured).
    pub fn series_policy(&self, tenant: &str) -> SeriesPolicy {
        self.tenants
            .get(tenant)
            .map(|t| t.metrics.clone())
            .unwrap_or_default()
    }

    /// The plugin chain of a tenant's stream (empty when none is configured).
    pub fn pipeline(&self, tenant: &str, stream: &str) -> &[PluginRef] {
        self.tenants
            .get(tenant)
            .and_then(|t| t.streams.get(stream))
            .map(|s| s.plugins.as_slice())
            .unwrap_or(&[])
    }

    /// The tenants that exist: the configured ones, or `default` when none is.
    pub fn tenant_names(&self) -> Vec<String> {
        if self.tenants.is_empty() {
            vec![DEFAULT_TENANT.to_owned()]
        } else {
            self.tenants.keys().cloned().collect()
        }
    }

    /// The aggregations the config file declares for `tenant`'s `stream`.
    pub fn aggregations(&self, tenant: &str, stream: &str) -> &[AggregationConfig] {
        self.tenants
            .get(tenant)
            .and_then(|t| t.streams.get(stream))
            .map(|s| s.aggregations.as_slice())
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
data_dir = "weir-data"
[listen]
http = "127.0.0.1:7070"
grpc = "127.0.0.1:7071"
tcp = "127.0.0.1:7072"
admin = "127.0.0.1:7073"
[admin]
token = "admin-secret"
[tenants.acme]
tokens = ["acme-token"]
[tenants.acme.streams.app]
plugins = [{ plugin = "builtin:pii-redact" }]
"#;

    #[test]
    fn design_example_parses() {
        let c = Config::from_toml(DESIGN_EXAMPLE).unwrap();
        assert_eq!(c.tenant_for_token("acme-token"), Some("acme"));
        assert_eq!(c.tenant_for_token("nope"), None);
        assert_eq!(c.pipeline("acme", "app")[0].plugin, "builtin:pii-redact");
        assert!(c.pipeline("acme", "other").is_empty());
        assert!(!c.open_mode());
        assert_eq!(c.admin.token.as_deref(), Some("admin-secret"));
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.data_dir, PathBuf::from("weir-data"));
        assert_eq!(c.listen.http, "127.0.0.1:7070");
        assert!(c.open_mode());
        assert_eq!(c.log.partitions, 4);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml("data_dri = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Config::from_toml("[listen]\nhttps = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn plugin_config_is_json() {
        let c = Config::from_toml(
            r#"
[tenants.t]
tokens = ["k"]
[tenants.t.streams.s]
plugins = [{ plugin = "builtin:pii-redact", config = { action = "hash", fields = ["a.b"] } }]
"#,
        )
        .unwrap();
        let cfg = c.pipeline("t", "s")[0].config.clone().unwrap();
        assert_eq!(cfg["action"], "hash");
        assert_eq!(cfg["fields"][0], "a.b");
    }

    #[test]
    fn shared_tokens_and_bad_names_refused() {
        let e = Config::from_toml("[tenants.a]\ntokens=[\"x\"]\n[tenants.b]\ntokens=[\"x\"]")
            .unwrap_err();
        assert!(e.to_string().contains("shared"), "{e}");
        assert!(Config::from_toml("[tenants.\"a b\"]\ntokens=[\"x\"]").is_err());
        assert!(Config::from_toml(
            "[tenants.a]\ntokens=[\"x\"]\n[tenants.a.streams.s]\nplugins=[{plugin=\"pii redact\"}]"
        )
        .is_err());
    }

    /// Every duration of the file is at most 100 years, and says which key is wrong.
    #[test]
    fn durations_past_100_years_are_refused() {
        for (toml, want) in [
            (
                "[cold]\nflush_after_secs = 9223372036854775807",
                "cold.flush_after_secs",
            ),
            ("[cold]\njanitor_secs = 3153600001", "cold.janitor_secs"),
            (
                "[log]\nretention_secs = 99999999999999",
                "log.retention_secs",
            ),
            (
                "[aggregation]\ncheckpoint_interval_ms = 9223372036854775807",
                "checkpoint_interval_ms",
            ),
            (
                "[plugins]\nquarantine_secs = 9223372036854775807",
                "plugins.quarantine_secs",
            ),
            (
                "[tenants.a.limits]\ndeadline_ms = 9223372036854775807",
                "deadline_ms",
            ),
            (
                "[tenants.a.retention]\ncold = \"200000000000d\"",
                "at most 100 years",
            ),
            (
                "[tenants.a.streams.s.retention]\nrollups = \"36501d\"",
                "streams.s.rollups",
            ),
            (
                "[dead_letters]\nretention = \"99999999999d\"",
                "dead_letters.retention",
            ),
            (
                "[dead_letters]\nretention = \"0s\"",
                "dead_letters.retention",
            ),
            ("[dead_letters]\nmax_mb_per_tenant = 0", "max_mb_per_tenant"),
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
        let c = Config::from_toml(
            "[cold]\nflush_after_secs = 3153600000\n[dead_letters]\nretention = \"36500d\"",
        )
        .unwrap();
        assert_eq!(
            c.dead_letters.retention_ms(),
            crate::retention::MAX_DURATION_MS
        );
        assert_eq!(
            Config::default().dead_letters.retention_ms(),
            7 * 86_400_000
        );
        assert_eq!(
            Config::default().dead_letters.max_bytes_per_tenant(),
            64 << 20
        );
    }
}
