//! Weir's processing layer: from the log, through each stream's plugin chain, into the
//! hot store.
//!
//! Layout:
//! - [`catalog`]: [`Catalog`] resolves `builtin:NAME` / `file:PATH` to compiled plugins
//!   (compiled once, off the hot path) and builds chains for a tenant's stream.
//! - [`registry`]: [`PluginRegistry`], tenants' uploaded plugins and their versions.
//! - [`worker`]: one [`worker::Worker`] thread per partition: read entries after the
//!   store's position, run each entry through its chain (one plugin call per entry and
//!   stage), commit rows + dead letters + new position in one store transaction, then
//!   release the log up to there.
//! - [`Workers`]: starts and stops the worker threads.
//!
//! Exactly-once into the hot store: the position and the rows move in one redb
//! transaction, and workers read only after that position, so a crash at any point
//! replays exactly the entries whose rows were not committed.

pub mod catalog;
mod compiles;
pub mod registry;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;
use weir_store::HotStore;
use weir_transport::Log;

pub use catalog::{Catalog, UploadError};
pub use registry::{
    PipelineDoc, PluginEvent, PluginInfo, PluginRegistry, RegistryError, VersionMeta,
};
pub use worker::{Worker, WorkerMetrics};

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("unknown builtin plugin {0:?} (known: {known})", known = weir_builtins::NAMES.join(", "))]
    UnknownBuiltin(String),
    #[error("cannot read plugin {path}: {reason}")]
    ReadPlugin { path: String, reason: String },
    #[error("plugin {spec}: {source}")]
    Host {
        spec: String,
        source: weir_plugin_host::HostError,
    },
    #[error("plugin reference {0:?} must be builtin:NAME or file:PATH")]
    BadSpec(String),
    #[error("uploaded plugin: {0}")]
    Uploaded(String),
    #[error("plugin reference {0:?}: file paths can be named in the config file only")]
    FileOverApi(String),
    #[error("the tenant's limit of {limit} live plugin instances is reached")]
    InstanceLimit { limit: u64 },
    #[error("{stages} pipeline stages on {partitions} partitions need {} plugin instances, more than the tenant's limit of {limit} (max_instances)", stages * partitions)]
    InstanceBudget {
        stages: u64,
        partitions: u64,
        limit: u64,
    },
    #[error("{0}")]
    Aggregation(String),
    #[error("tenant {tenant}: {source}")]
    Tenant {
        tenant: String,
        source: Box<PipelineError>,
    },
}

/// The running workers, one per partition.
pub struct Workers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn start(
        log: Arc<dyn Log>,
        store: Arc<HotStore>,
        catalog: Arc<Catalog>,
        batch_records: usize,
        metrics: Arc<WorkerMetrics>,
    ) -> std::io::Result<Workers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for p in 0..log.partitions() {
            let w = Worker::new(
                p,
                log.clone(),
                store.clone(),
                catalog.clone(),
                batch_records,
                metrics.clone(),
            );
            let s = stop.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("weir-worker-{p}"))
                    .spawn(move || w.run(&s))?,
            );
        }
        Ok(Workers { stop, handles })
    }

    /// Finish the current batch on every partition and stop.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
    }
}
