//! [`Catalog`]: compiled plugins by reference, and chains built from the config.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use weir_agg::Definition;
use weir_core::aggregation::AggregationConfig;
use weir_core::config::PluginRef;
use weir_core::Config;
use weir_plugin_host::{
    ChildCompiler, CompileLimits, CompiledPlugin, HostError, Limits, PluginHost, PluginInstance,
};

use crate::compiles::{CompileSlots, SlotWait};

use weir_core::metrics::{Counter, Family, Registry};

use crate::registry::{PluginRegistry, RegistryError, VersionMeta};
use crate::PipelineError;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("plugin of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// Too many compilations are running (the tenant's or everyone's): retry later.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(#[from] HostError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
}

/// Resolves and compiles plugins once; builds per-worker chains.
pub struct Catalog {
    host: PluginHost,
    config: Arc<Config>,
    registry: Arc<PluginRegistry>,
    /// By `builtin:NAME`, `file:PATH` or `sha256:HEX` (uploaded versions).
    compiled: Mutex<HashMap<String, CompiledPlugin>>,
    /// One lock per plugin being compiled, so callers that need the same plugin at once
    /// compile it once (the others wait and find it in `compiled`), while different
    /// plugins compile side by side.
    compiling: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Bounds compilations at once, per tenant and in all.
    slots: CompileSlots,
    /// Compiles uploads in a child process under limits, when set.
    child: Option<ChildCompiler>,
    log_dropped: Arc<Family<Counter>>,
    /// Compiled machine code by sha256, kept across restarts (`DATA_DIR/plugin-cache`).
    cache_dir: Option<std::path::PathBuf>,
    /// Live instances per tenant (for `max_instances`).
    instances: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Versions activated over an older one, watched for automatic rollback, by tenant
    /// and plugin name.
    rollouts: Mutex<HashMap<String, HashMap<String, Rollout>>>,
    rollbacks: Arc<Family<Counter>>,
    instances_gauge: Arc<Family<weir_core::metrics::Gauge>>,
}

/// A freshly activated version under watch.
struct Rollout {
    version: u32,
    previous: u32,
    since: Instant,
    calls: u64,
    failures: u64,
}

/// One stage of a chain: the plugin reference and its live instance.
pub struct Stage {
    pub spec: String,
    /// The uploaded plugin's version (none for `builtin:` and `file:` plugins).
    pub version: Option<u32>,
    pub instance: PluginInstance,
    pub shadow: Option<Shadow>,
    _slot: InstanceSlot,
}

/// A version in shadow mode next to a stage: it gets a copy of the stage's input; its
/// output is compared with the stage's and dropped.
pub struct Shadow {
    pub version: u32,
    pub instance: PluginInstance,
    _slot: InstanceSlot,
}

/// One of a tenant's `max_instances`, given back when the stage is dropped.
struct InstanceSlot {
    live: Arc<AtomicU64>,
    gauge: Arc<weir_core::metrics::Gauge>,
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        let before = self.live.fetch_sub(1, Ordering::SeqCst);
        self.gauge.set(before - 1);
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Catalog {
    pub fn new(
        config: Arc<Config>,
        registry: Arc<PluginRegistry>,
        metrics: &Registry,
        cache_dir: Option<std::path::PathBuf>,
    ) -> Result<Catalog, HostError> {
        let slots = CompileSlots::new(
            config.plugins.max_concurrent_compiles,
            config.plugins.max_compiles_per_tenant,
        );
        Ok(Catalog {
            host: PluginHost::new()?,
            config,
            registry,
            compiled: Mutex::new(HashMap::new()),
            compiling: Mutex::new(HashMap::new()),
            slots,
            child: None,
            log_dropped: metrics.counter(
                "weir_plugin_log_lines_dropped_total",
                "Plugin log lines (stdout, stderr, host.log) dropped by the per-instance rate limit.",
            ),
            cache_dir,
            instances: Mutex::new(HashMap::new()),
            rollouts: Mutex::new(HashMap::new()),
            rollbacks: metrics.counter(
                "weir_plugin_rollbacks_total",
                "Versions rolled back automatically for trapping or timing out.",
            ),
            instances_gauge: metrics
                .gauge("weir_plugin_instances", "Live plugin instances per tenant."),
        })
    }

    /// Make `version` of `tenant`'s `name` active, live. When it replaces an older
    /// version, it is watched: trapping or timing out on more than
    /// `plugins.rollback_failure_ratio` of its calls (after `rollback_min_calls`) within
    /// `rollback_window_secs` of now rolls it back to the version it replaced.
    pub fn activate(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<VersionMeta, RegistryError> {
        let (meta, before) =
            self.registry
                .activate(tenant, name, version, "activate", "admin API", now_ms())?;
        let mut rollouts = self.rollouts.lock();
        let plugins = rollouts.entry(tenant.to_owned()).or_default();
        match before {
            Some(previous) if previous != version => {
                plugins.insert(
                    name.to_owned(),
                    Rollout {
                        version,
                        previous,
                        since: Instant::now(),
                        calls: 0,
                        failures: 0,
                    },
                );
            }
            _ => {
                plugins.remove(name);
            }
        }
        Ok(meta)
    }

    /// Count one call of `version` of `tenant`'s uploaded `name` (called by workers after
    /// every call); rolls the version back when its rollout fails.
    pub fn observe(&self, tenant: &str, name: &str, version: u32, failed: bool) {
        let policy = &self.config.plugins;
        let mut rollouts = self.rollouts.lock();
        let Some(plugins) = rollouts.get_mut(tenant) else {
            return;
        };
        let Some(r) = plugins.get_mut(name) else {
            return;
        };
        if r.version != version {
            return;
        }
        if r.since.elapsed() > Duration::from_secs(policy.rollback_window_secs) {
            plugins.remove(name);
            return;
        }
        r.calls += 1;
        r.failures += u64::from(failed);
        let share = r.failures as f64 / r.calls as f64;
        if r.calls < policy.rollback_min_calls || share <= policy.rollback_failure_ratio {
            return;
        }
        let reason = format!(
            "{} of {} calls trapped or timed out within {} s of activation (limit {:.0}%)",
            r.failures,
            r.calls,
            r.since.elapsed().as_secs(),
            policy.rollback_failure_ratio * 100.0
        );
        let (from, to) = (r.version, r.previous);
        plugins.remove(name);
        drop(rollouts);
        match self
            .registry
            .activate(tenant, name, to, "rollback", &reason, now_ms())
        {
            Ok(_) => {
                self.rollbacks
                    .with(&[("tenant", tenant), ("plugin", name)])
                    .inc();
                tracing::warn!(%tenant, plugin = %name, from, to, %reason, "plugin version rolled back automatically");
            }
            Err(e) => {
                tracing::error!(%tenant, plugin = %name, from, to, error = %e, "automatic rollback failed")
            }
        }
    }

    /// Compile uploaded plugins in a child process: `exe` run with the hidden compile
    /// subcommand, under `[plugins] compile_timeout_ms` and `compile_memory_mb`.
    pub fn with_child_compiler(mut self, exe: std::path::PathBuf) -> Self {
        let p = &self.config.plugins;
        self.child = Some(ChildCompiler {
            exe,
            limits: CompileLimits {
                timeout: Duration::from_millis(p.compile_timeout_ms),
                memory_bytes: p.compile_memory_mb << 20,
            },
        });
        self
    }

    /// The sandbox limits of `tenant`'s instances, counting their dropped log lines.
    fn limits(&self, tenant: &str) -> Limits {
        let mut l = Limits::from_config(&self.config.plugin_limits(tenant));
        l.log.dropped = Some(self.log_dropped.with(&[("tenant", tenant)]));
        l
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn registry(&self) -> &PluginRegistry {
        &self.registry
    }

    /// Changes when `tenant`'s plugins or pipelines change: workers rebuild that
    /// tenant's chains when it does.
    pub fn generation(&self, tenant: &str) -> u64 {
        self.registry.generation(tenant)
    }

    /// Validate and compile an upload (slow: call it off the async runtime), then store
    /// it as the next version of `tenant`'s `name`.
    pub fn upload(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<VersionMeta, UploadError> {
        let limit = self.config.admin.max_plugin_bytes;
        if bytes.len() > limit {
            return Err(UploadError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let sha = weir_plugin_host::sha256_hex(bytes);
        let compiled = self.compile_once(
            &format!("sha256:{sha}"),
            name,
            bytes,
            Some((tenant, SlotWait::No)),
        )?;
        // It must be able to start within the tenant's limits (memories, tables, core
        // instances), or no pipeline could ever run it.
        compiled.check_instantiable(&self.limits(tenant))?;
        let meta =
            self.registry
                .add_version(tenant, name, compiled.world(), &sha, bytes, now_ms)?;
        Ok(meta)
    }

    /// The pipeline of `tenant`'s `stream`: the one set through the admin API if any,
    /// else the config file's (empty when neither names one).
    pub fn pipeline(&self, tenant: &str, stream: &str) -> Vec<PluginRef> {
        match self.registry.pipeline(tenant, stream) {
            Some(doc) => doc.plugins,
            None => self.config.pipeline(tenant, stream).to_vec(),
        }
    }

    /// The aggregations of `tenant`'s `stream`: the pipeline document's if one was set
    /// through the admin API, else the config file's.
    pub fn aggregations(&self, tenant: &str, stream: &str) -> Vec<AggregationConfig> {
        match self.registry.pipeline(tenant, stream) {
            Some(doc) => doc.aggregations,
            None => self.config.aggregations(tenant, stream).to_vec(),
        }
    }

    /// Every aggregation of `tenant`, checked, by stream. A declaration that does not
    /// check (impossible for ones that passed the API or startup) is skipped and logged.
    pub fn definitions(&self, tenant: &str) -> Vec<(String, Arc<Definition>)> {
        let mut out = Vec::new();
        for stream in self.streams(tenant) {
            for a in self.aggregations(tenant, &stream) {
                match Definition::new(&a) {
                    Ok(d) => out.push((stream.clone(), Arc::new(d))),
                    Err(e) => tracing::error!(%tenant, %stream, error = %e, "aggregation skipped"),
                }
            }
        }
        out
    }

    /// Check a stream's aggregations: each one parses and names are unique.
    pub fn check_aggregations(
        stream: &str,
        plugins: &[PluginRef],
        aggs: &[AggregationConfig],
    ) -> Result<(), PipelineError> {
        if weir_core::names::is_reserved_stream(stream)
            && (stream != weir_core::names::METRICS_STREAM || !plugins.is_empty())
        {
            return Err(PipelineError::Aggregation(format!(
                "stream {stream:?} is reserved ({} takes aggregations only)",
                weir_core::names::METRICS_STREAM
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for a in aggs {
            Definition::new(a).map_err(|e| PipelineError::Aggregation(e.to_string()))?;
            if !names.insert(&a.name) {
                return Err(PipelineError::Aggregation(format!(
                    "two aggregations named {:?} on stream {stream:?}",
                    a.name
                )));
            }
        }
        Ok(())
    }

    /// A fresh instance of the custom aggregation plugin `spec` of `tenant`
    /// (`builtin:NAME` or the tenant's uploaded `NAME`, active version).
    pub fn aggregator_instance(
        &self,
        tenant: &str,
        spec: &str,
    ) -> Result<PluginInstance, PipelineError> {
        let compiled = if spec.starts_with("builtin:") {
            self.resolve(spec)?
        } else if spec.contains(':') {
            return Err(PipelineError::BadSpec(spec.to_owned()));
        } else {
            self.resolve_uploaded(tenant, spec)?.0
        };
        if !compiled.is_aggregator() {
            return Err(PipelineError::Aggregation(format!(
                "wasm({spec}): the plugin implements {}, not weir:plugin/aggregator",
                compiled.world()
            )));
        }
        let limits = self.limits(tenant);
        compiled
            .instantiate(tenant, "{}", &limits)
            .map_err(|source| PipelineError::Host {
                spec: spec.to_owned(),
                source,
            })
    }

    /// Check that every `wasm(NAME)` of `aggs` names an aggregator plugin of `tenant`
    /// (`builtin_only`: only the `builtin:` ones, as at startup, before any upload).
    pub fn check_aggregator_plugins(
        &self,
        tenant: &str,
        aggs: &[AggregationConfig],
        builtin_only: bool,
    ) -> Result<(), PipelineError> {
        for a in aggs {
            let def = Definition::new(a).map_err(|e| PipelineError::Aggregation(e.to_string()))?;
            for p in def
                .plugins
                .iter()
                .filter(|p| !builtin_only || p.starts_with("builtin:"))
            {
                self.aggregator_instance(tenant, p)?;
            }
        }
        Ok(())
    }

    /// Every stream of `tenant` with a pipeline (config file or admin API), in order.
    pub fn streams(&self, tenant: &str) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> = self
            .config
            .tenants
            .get(tenant)
            .map(|t| t.streams.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(self.registry.pipelines(tenant).into_iter().map(|(s, _)| s));
        names.into_iter().collect()
    }

    /// Streams of `tenant` whose pipeline names its plugin `name`.
    pub fn streams_using(&self, tenant: &str, name: &str) -> Vec<String> {
        self.streams(tenant)
            .into_iter()
            .filter(|s| self.pipeline(tenant, s).iter().any(|p| p.plugin == name))
            .collect()
    }

    /// Check a pipeline sent to the admin API: every plugin exists (the tenant's own
    /// uploads or `builtin:NAME`; `file:` paths are for the operator's config file
    /// only), compiles and accepts its config. Slow: call it off the async runtime.
    /// Compiling here also warms the cache, so workers swap chains without compiling.
    pub fn check_pipeline(
        &self,
        tenant: &str,
        stream: &str,
        plugins: &[PluginRef],
    ) -> Result<(), PipelineError> {
        self.check_budget(tenant, Some((stream, plugins.len())))?;
        for r in plugins {
            if r.plugin.starts_with("file:") {
                return Err(PipelineError::FileOverApi(r.plugin.clone()));
            }
            self.stage(tenant, r)?;
        }
        Ok(())
    }

    /// The compiled active version of `tenant`'s uploaded plugin `name`.
    fn resolve_uploaded(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<(CompiledPlugin, u32), PipelineError> {
        let (meta, bytes) = self
            .registry
            .active(tenant, name)
            .map_err(|e| PipelineError::Uploaded(e.to_string()))?;
        let key = format!("sha256:{}", meta.sha256);
        let compiled = self
            .compile_once(&key, name, &bytes, Some((tenant, SlotWait::Yes)))
            .map_err(|e| match e {
                UploadError::Invalid(source) => PipelineError::Host {
                    spec: name.into(),
                    source,
                },
                other => PipelineError::Uploaded(other.to_string()),
            })?;
        Ok((compiled, meta.version))
    }

    /// The compiled plugin for `key`, compiling it (once, whoever asks at the same time;
    /// from the on-disk cache when there) on first use. A tenant's upload (`tenant` set)
    /// takes one of the compile slots (waiting for one or not, as `wait` says) and
    /// compiles in the child process when one is configured; builtins and the
    /// operator's `file:` plugins compile here.
    fn compile_once(
        &self,
        key: &str,
        name: &str,
        bytes: &[u8],
        tenant: Option<(&str, SlotWait)>,
    ) -> Result<CompiledPlugin, UploadError> {
        if let Some(p) = self.compiled.lock().get(key) {
            return Ok(p.clone());
        }
        let lock = self
            .compiling
            .lock()
            .entry(key.to_owned())
            .or_default()
            .clone();
        let result = (|| {
            let _only_one = lock.lock();
            if let Some(p) = self.compiled.lock().get(key) {
                return Ok(p.clone());
            }
            let _slot = match tenant {
                Some((t, wait)) => Some(self.slots.acquire(t, wait).map_err(UploadError::Busy)?),
                None => None,
            };
            let started = std::time::Instant::now();
            let child = tenant.and(self.child.as_ref());
            let compiled = self
                .host
                .compile_with(name, bytes, self.cache_dir.as_deref(), child)?;
            tracing::info!(
                plugin = key,
                name,
                ms = started.elapsed().as_millis() as u64,
                "plugin compiled"
            );
            self.compiled
                .lock()
                .insert(key.to_owned(), compiled.clone());
            Ok(compiled)
        })();
        // Forget the lock once nobody else holds it (the next caller finds the plugin in
        // `compiled`, or compiles again after a failure).
        let mut compiling = self.compiling.lock();
        if Arc::strong_count(&lock) == 2 {
            compiling.remove(key);
        }
        result
    }

    /// The compiled plugin for `builtin:NAME` or `file:PATH`, compiling on first use.
    pub fn resolve(&self, spec: &str) -> Result<CompiledPlugin, PipelineError> {
        if let Some(p) = self.compiled.lock().get(spec) {
            return Ok(p.clone());
        }
        let (name, bytes): (String, std::borrow::Cow<[u8]>) =
            if let Some(name) = spec.strip_prefix("builtin:") {
                let b = weir_builtins::get(name)
                    .ok_or_else(|| PipelineError::UnknownBuiltin(name.into()))?;
                (name.into(), b.into())
            } else if let Some(path) = spec.strip_prefix("file:") {
                let b = std::fs::read(path).map_err(|e| PipelineError::ReadPlugin {
                    path: path.into(),
                    reason: e.to_string(),
                })?;
                let name = std::path::Path::new(path)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.into());
                (name, b.into())
            } else {
                return Err(PipelineError::BadSpec(spec.into()));
            };
        self.compile_once(spec, &name, &bytes, None)
            .map_err(|e| match e {
                UploadError::Invalid(source) => PipelineError::Host {
                    spec: spec.into(),
                    source,
                },
                other => PipelineError::Uploaded(other.to_string()),
            })
    }

    /// Whether `tenant`'s pipelines (with `stream`'s replaced by one of `stages` stages)
    /// fit its instance limit when every partition runs every pipeline.
    fn check_budget(
        &self,
        tenant: &str,
        replace: Option<(&str, usize)>,
    ) -> Result<(), PipelineError> {
        let partitions = u64::from(self.config.log.partitions);
        let mut stages = 0u64;
        let mut streams = self.streams(tenant);
        if let Some((stream, n)) = replace {
            streams.retain(|s| s != stream);
            stages += n as u64;
        }
        stages += streams
            .iter()
            .map(|s| self.pipeline(tenant, s).len() as u64)
            .sum::<u64>();
        let limit = self.config.plugin_limits(tenant).max_instances;
        if stages * partitions > limit {
            return Err(PipelineError::InstanceBudget {
                stages,
                partitions,
                limit,
            });
        }
        Ok(())
    }

    /// Compile every plugin the config names and instantiate each stage once with its
    /// config, so a bad pipeline stops `weir serve` at startup instead of at first use;
    /// and check each tenant's pipelines fit its instance limit.
    /// Uploaded plugins (bare names) are checked at upload time instead.
    pub fn check_config(&self) -> Result<(), PipelineError> {
        for (tenant, t) in &self.config.tenants {
            self.check_budget(tenant, None)
                .map_err(|e| PipelineError::Tenant {
                    tenant: tenant.clone(),
                    source: Box::new(e),
                })?;
            for (name, s) in &t.streams {
                Self::check_aggregations(name, &s.plugins, &s.aggregations)
                    // Uploaded plugins are checked when a pipeline names them.
                    .and_then(|()| self.check_aggregator_plugins(tenant, &s.aggregations, true))
                    .map_err(|e| PipelineError::Tenant {
                        tenant: tenant.clone(),
                        source: Box::new(e),
                    })?;
                for r in &s.plugins {
                    if r.plugin.contains(':') {
                        self.stage(tenant, r)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The plugin references of the chain of `tenant`'s `stream`, in order.
    pub fn chain_specs(&self, tenant: &str, stream: &str) -> Vec<String> {
        self.pipeline(tenant, stream)
            .into_iter()
            .map(|r| r.plugin)
            .collect()
    }

    /// Fresh instances of the chain of `tenant`'s `stream` (empty when unconfigured).
    pub fn chain(&self, tenant: &str, stream: &str) -> Result<Vec<Stage>, PipelineError> {
        self.pipeline(tenant, stream)
            .iter()
            .map(|r| self.stage(tenant, r))
            .collect()
    }

    /// Take one of `tenant`'s instance slots, or say why not.
    fn slot(&self, tenant: &str) -> Result<InstanceSlot, PipelineError> {
        let limit = self.config.plugin_limits(tenant).max_instances;
        let counter = self
            .instances
            .lock()
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        let live = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = InstanceSlot {
            live: counter,
            gauge: self.instances_gauge.with(&[("tenant", tenant)]),
        };
        slot.gauge.set(live);
        if live > limit {
            return Err(PipelineError::InstanceLimit { limit });
        }
        Ok(slot)
    }

    /// Live plugin instances of `tenant`.
    pub fn instances(&self, tenant: &str) -> u64 {
        self.instances
            .lock()
            .get(tenant)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn stage(&self, tenant: &str, r: &PluginRef) -> Result<Stage, PipelineError> {
        let slot = self.slot(tenant)?;
        let (compiled, version) = if r.plugin.contains(':') {
            (self.resolve(&r.plugin)?, None)
        } else {
            let (c, v) = self.resolve_uploaded(tenant, &r.plugin)?;
            (c, Some(v))
        };
        if compiled.is_aggregator() {
            return Err(PipelineError::Aggregation(format!(
                "plugin {:?} is an aggregator: name it in an aggregation as wasm({}), not as a pipeline stage",
                r.plugin, r.plugin
            )));
        }
        let config = r
            .config
            .as_ref()
            .map_or_else(|| "{}".to_owned(), |c| c.to_string());
        let mut limits = self.limits(tenant);
        limits.wasi = r.wasi.clone().unwrap_or_default();
        let instance = compiled
            .instantiate(tenant, &config, &limits)
            .map_err(|source| PipelineError::Host {
                spec: r.plugin.clone(),
                source,
            })?;
        let shadow = match version {
            Some(active) => self.shadow_stage(tenant, &r.plugin, active, &config, &limits),
            None => None,
        };
        Ok(Stage {
            spec: r.plugin.clone(),
            version,
            instance,
            shadow,
            _slot: slot,
        })
    }

    /// The shadow instance for a stage of `tenant`'s uploaded `name` (active version
    /// `active`), when another version is in shadow mode. A shadow that cannot start is
    /// logged and left out: it never stops the pipeline.
    fn shadow_stage(
        &self,
        tenant: &str,
        name: &str,
        active: u32,
        config: &str,
        limits: &Limits,
    ) -> Option<Shadow> {
        let version = self.registry.shadow(tenant, name).ok()??;
        if version == active {
            return None;
        }
        let start = || -> Result<Shadow, String> {
            let slot = self.slot(tenant).map_err(|e| e.to_string())?;
            let (meta, bytes) = self
                .registry
                .version_bytes(tenant, name, version)
                .map_err(|e| e.to_string())?;
            let compiled = self
                .compile_once(
                    &format!("sha256:{}", meta.sha256),
                    name,
                    &bytes,
                    Some((tenant, SlotWait::Yes)),
                )
                .map_err(|e| e.to_string())?;
            let instance = compiled
                .instantiate(tenant, config, limits)
                .map_err(|e| e.to_string())?;
            Ok(Shadow {
                version,
                instance,
                _slot: slot,
            })
        };
        match start() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(%tenant, plugin = %name, version, error = %e, "shadow version not started");
                None
            }
        }
    }
}
