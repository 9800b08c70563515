//! [`Catalog`]: compiled plugins by reference, and chains built from the config.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use weir_core::config::PluginRef;
use weir_core::Config;
use weir_plugin_host::{
    CompiledPlugin, HostError, Limits, PluginHost, PluginInstance, TRANSFORM_WORLD,
};

use crate::registry::{PluginRegistry, RegistryError, VersionMeta};
use crate::PipelineError;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("plugin of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Invalid(#[from] HostError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
}

/// Resolves and compiles plugins once; builds per-worker chains.
pub struct Catalog {
    host: PluginHost,
    limits: Limits,
    config: Arc<Config>,
    registry: Arc<PluginRegistry>,
    /// By `builtin:NAME`, `file:PATH` or `sha256:HEX` (uploaded versions).
    compiled: Mutex<HashMap<String, CompiledPlugin>>,
}

/// One stage of a chain: the plugin reference and its live instance.
pub struct Stage {
    pub spec: String,
    pub instance: PluginInstance,
}

impl Catalog {
    pub fn new(config: Arc<Config>, registry: Arc<PluginRegistry>) -> Result<Catalog, HostError> {
        Ok(Catalog {
            host: PluginHost::new()?,
            limits: Limits::from_config(&config.plugins),
            config,
            registry,
            compiled: Mutex::new(HashMap::new()),
        })
    }

    pub fn registry(&self) -> &PluginRegistry {
        &self.registry
    }

    /// Changes when any tenant's plugins change: workers rebuild chains when it does.
    pub fn generation(&self) -> u64 {
        self.registry.generation()
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
        let compiled = self.host.compile(name, bytes)?;
        let sha = compiled.sha256().to_owned();
        let meta = self
            .registry
            .add_version(tenant, name, TRANSFORM_WORLD, &sha, bytes, now_ms)?;
        self.compiled
            .lock()
            .insert(format!("sha256:{sha}"), compiled);
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
    pub fn check_pipeline(&self, tenant: &str, plugins: &[PluginRef]) -> Result<(), PipelineError> {
        for r in plugins {
            if r.plugin.starts_with("file:") {
                return Err(PipelineError::FileOverApi(r.plugin.clone()));
            }
            self.stage(tenant, r)?;
        }
        Ok(())
    }

    /// The compiled active version of `tenant`'s uploaded plugin `name`.
    fn resolve_uploaded(&self, tenant: &str, name: &str) -> Result<CompiledPlugin, PipelineError> {
        let (meta, bytes) = self
            .registry
            .active(tenant, name)
            .map_err(|e| PipelineError::Uploaded(e.to_string()))?;
        let key = format!("sha256:{}", meta.sha256);
        if let Some(p) = self.compiled.lock().get(&key) {
            return Ok(p.clone());
        }
        let compiled = self
            .host
            .compile(name, &bytes)
            .map_err(|source| PipelineError::Host {
                spec: name.into(),
                source,
            })?;
        self.compiled.lock().insert(key, compiled.clone());
        Ok(compiled)
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
        let started = std::time::Instant::now();
        let compiled = self
            .host
            .compile(&name, &bytes)
            .map_err(|source| PipelineError::Host {
                spec: spec.into(),
                source,
            })?;
        tracing::info!(
            plugin = spec,
            sha256 = compiled.sha256(),
            ms = started.elapsed().as_millis() as u64,
            "plugin compiled"
        );
        self.compiled.lock().insert(spec.into(), compiled.clone());
        Ok(compiled)
    }

    /// Compile every plugin the config names and instantiate each stage once with its
    /// config, so a bad pipeline stops `weir serve` at startup instead of at first use.
    /// Uploaded plugins (bare names) are checked at upload time instead.
    pub fn check_config(&self) -> Result<(), PipelineError> {
        for (tenant, t) in &self.config.tenants {
            for s in t.streams.values() {
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

    fn stage(&self, tenant: &str, r: &PluginRef) -> Result<Stage, PipelineError> {
        let compiled = if r.plugin.contains(':') {
            self.resolve(&r.plugin)?
        } else {
            self.resolve_uploaded(tenant, &r.plugin)?
        };
        let config = r
            .config
            .as_ref()
            .map_or_else(|| "{}".to_owned(), |c| c.to_string());
        let instance = compiled
            .instantiate(tenant, &config, &self.limits)
            .map_err(|source| PipelineError::Host {
                spec: r.plugin.clone(),
                source,
            })?;
        Ok(Stage {
            spec: r.plugin.clone(),
            instance,
        })
    }
}
