//! [`Catalog`]: compiled plugins by reference, and chains built from the config.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use weir_core::config::PluginRef;
use weir_core::Config;
use weir_plugin_host::{CompiledPlugin, Limits, PluginHost, PluginInstance};

use crate::PipelineError;

/// Resolves and compiles plugins once; builds per-worker chains.
pub struct Catalog {
    host: PluginHost,
    limits: Limits,
    config: Arc<Config>,
    compiled: Mutex<HashMap<String, CompiledPlugin>>,
}

/// One stage of a chain: the plugin reference and its live instance.
pub struct Stage {
    pub spec: String,
    pub instance: PluginInstance,
}

impl Catalog {
    pub fn new(config: Arc<Config>) -> Result<Catalog, weir_plugin_host::HostError> {
        Ok(Catalog {
            host: PluginHost::new()?,
            limits: Limits::from_config(&config.plugins),
            config,
            compiled: Mutex::new(HashMap::new()),
        })
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
    pub fn check_config(&self) -> Result<(), PipelineError> {
        for (tenant, t) in &self.config.tenants {
            for stream in t.streams.keys() {
                self.chain(tenant, stream)?;
            }
        }
        Ok(())
    }

    /// The plugin references of the chain of `tenant`'s `stream`, in order.
    pub fn chain_specs(&self, tenant: &str, stream: &str) -> Vec<String> {
        self.config
            .pipeline(tenant, stream)
            .iter()
            .map(|r| r.plugin.clone())
            .collect()
    }

    /// Fresh instances of the chain of `tenant`'s `stream` (empty when unconfigured).
    pub fn chain(&self, tenant: &str, stream: &str) -> Result<Vec<Stage>, PipelineError> {
        self.config
            .pipeline(tenant, stream)
            .iter()
            .map(|r| self.stage(tenant, r))
            .collect()
    }

    fn stage(&self, tenant: &str, r: &PluginRef) -> Result<Stage, PipelineError> {
        let compiled = self.resolve(&r.plugin)?;
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
