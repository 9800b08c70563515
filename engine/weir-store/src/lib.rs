//! Weir's storage and query layer: the hot store and SQL over it.
//!
//! Layout:
//! - [`aggregates`]: the `aggregates` table — aggregator checkpoints, per-partition
//!   partial results merged into rows, anomaly verdicts.
//! - [`cold`]: the cold tier — hot segments flushed to Parquet on an object store (a
//!   directory or S3-compatible storage), a manifest in redb, one consistent view of
//!   both tiers for queries.
//! - `cold_table`: one table's cold files as a DataFusion table that skips the files
//!   whose manifest time range a query's filters rule out.
//! - [`hot`]: [`HotStore`], processed rows as Arrow record batches in memory, persisted
//!   in redb together with each partition's consumer position (so a restart neither
//!   loses nor duplicates rows), with a memory bound; and the dead-letter table.
//! - [`janitor`]: retention and compaction passes over both tiers (rewrites swap
//!   manifest entries in one transaction).
//! - [`letters`]: dead letters and quarantined rows indexed per tenant, with a
//!   retention and a per-tenant cap.
//! - [`quarantine`]: rows the cold flush could not write, kept apart and visible to
//!   their tenant (SQL table `quarantine`).
//! - [`retention`]: the retention in effect per tenant and stream (config, or the admin
//!   API's replacement kept in redb), and the filter queries apply.
//! - `rollup_route`: aggregations over `metrics` that a rollup answers exactly,
//!   rewritten to read the coarsest such rollup.
//! - [`rollups`]: metric rollups (count, sum, min, max, sketch per series and window),
//!   written with each metrics flush; the sketch SQL functions.
//! - [`shred`]: the shredded layout of cold `logs` files and how a record is rebuilt.
//! - `views`: `logs` and `metrics` over both tiers (field columns, `record` rebuilt,
//!   metric values decoded).
//! - [`rows`]: turning processed NDJSON into Arrow rows of the `logs` table.
//! - [`metric_rows`]: normalised metric samples into rows of the `metrics` table.
//! - [`state`]: stateful plugins' state, committed with the position it belongs to.
//! - [`query`]: DataFusion SQL over one tenant's tables, planned within limits and
//!   streamed; [`query_shape`] (the SQL front door: text, depth and relation bounds),
//!   [`query_memory`] (node, tenant and query memory), [`query_fair`] (fair turns on the
//!   query threads between tenants), `query_funcs` (functions whose
//!   output outgrows their input, bounded by that memory), [`query_governor`] (admission:
//!   concurrency per tenant and node), [`query_answer`] (JSON or Arrow IPC encoded batch
//!   by batch, within row and byte caps), [`query_params`] (placeholders of prepared
//!   statements and the values bound to them), [`query_catalog`] (the tables a tenant's
//!   SQL can name, with their schemas, for catalog listings).
//!
//! Tenant isolation sits below SQL: a query's session only ever holds the tables of
//! the tenant that asked, built from that tenant's batches, and DDL, DML, `COPY` and
//! URL tables are refused, so no statement can name or reach other rows.

pub mod aggregates;
pub mod cold;
mod cold_table;
pub mod hot;
pub mod janitor;
pub mod letters;
pub mod metric_rows;
pub mod quarantine;
pub mod query;
pub mod query_answer;
pub mod query_catalog;
pub mod query_fair;
mod query_funcs;
pub mod query_governor;
pub mod query_memory;
pub mod query_params;
pub mod query_shape;
pub mod retention;
mod rollup_route;
pub mod rollups;
pub mod rows;
pub mod shred;
pub mod state;
#[cfg(test)]
mod test_util;
mod views;

pub use aggregates::{aggregates_schema, AggRow};
pub use cold::{ColdFile, FlushStats};
pub use hot::{DeadLetter, HotStore, ReplayOutcome, Segment, StoreError, Table};
pub use letters::{LetterCounts, LetterLimits};
pub use quarantine::Quarantined;
pub use query::{PlannedQuery, QueryError, QueryLimits, QueryResult, QueryStream};
pub use query_catalog::{TableInfo, TableKind};
pub use rows::InvalidLine;
pub use state::{ChainState, StageState};
