//! Weir's shared vocabulary, used by every other engine crate.
//!
//! Layout:
//! - [`config`]: the TOML configuration file of `weir serve` (and its defaults).
//! - [`aggregation`]: the declaration of a windowed aggregation (checked by `weir-agg`).
//! - [`batch`]: [`Batch`], a group of NDJSON records of one tenant and stream, and its
//!   stable binary encoding in the log.
//! - [`partition`]: the stable partitioning hash (FNV-1a, fixed forever).
//! - [`metrics`]: a small Prometheus text-format registry shared by all layers.
//! - [`names`]: validation of tenant, stream and plugin names.
//! - [`retention`]: how long rows stay hot and are kept at all, per tenant and stream.
//! - [`sample`]: realistic sample logs for benchmarks and profiles.
//! - [`record`]: the record rules every record meets before any stage reads it (one
//!   pass over the bytes: UTF-8, JSON, an object, numbers, surrogates, depth, keys).
//! - [`time`]: a record's event time (`timestamp`/`@timestamp`/`ts`/`time`) and its
//!   accepted range.
//! - [`serving`]: limits of queries, HTTP connections and the metrics endpoint.
//! - [`listeners`]: the TCP ingest listeners (tenant, stream, format) and `[tcp]`.

pub mod aggregation;
pub mod batch;
pub mod config;
pub mod listeners;
pub mod metrics;
pub mod names;
pub mod partition;
pub mod record;
pub mod retention;
pub mod sample;
pub mod serving;
pub mod time;

pub use batch::{Batch, BatchDecodeError};
pub use config::{Config, ConfigError};
