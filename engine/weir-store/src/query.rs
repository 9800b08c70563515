//! SQL over one tenant's tables with DataFusion.
//!
//! Each query gets a fresh `SessionContext` holding only the asking tenant's tables:
//! - `logs`: the hot rows (see [`crate::rows`] for the columns) and the cold tier's
//!   Parquet files (see [`crate::cold`]), as one table;
//! - `metrics`: metric samples (see [`crate::metric_rows`]);
//! - `aggregates`: windowed aggregation results (see [`crate::aggregates`]);
//! - `dead_letters`: batches a plugin failed on (`tenant, stream, partition, offset,
//!   count, plugin, plugin_sha256, plugin_version, error, ingest_ts, failed_at, records`);
//! - `quarantine`: rows the cold tier could not write (see [`crate::quarantine`]).
//!
//! DDL, DML and other statements are refused, URL tables are not enabled, and the
//! session's memory is bounded, so a query can neither reach other rows nor the disk
//! nor exhaust the node. JSON helpers (`json_get_str`, `json_get_int`, `->`, `->>`, ...)
//! from datafusion-functions-json are registered for the `record` column.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::display::ToStringifiedPlan;
use datafusion::common::tree_node::TreeNode;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Explain, LogicalPlan, PlanType};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use serde_json::Value;
use thiserror::Error;

use crate::hot::Table;
use crate::hot::{DeadLetter, HotStore};
use crate::metric_rows::metrics_schema;
use crate::query_answer::Caps;
use crate::query_memory::{Exhausted, QueryBudget, QueryPool};
use crate::query_shape::ShapeLimits;
use crate::rows::logs_schema;
use crate::views;

#[derive(Debug, Error)]
pub enum QueryError {
    /// The SQL does not parse or plan (400).
    #[error("{0}")]
    Sql(String),
    /// The statement is not allowed or over a shape limit (400).
    #[error("{0}")]
    Refused(String),
    /// Execution failed for a reason of the query's own (400).
    #[error("query failed: {0}")]
    Execution(String),
    /// The query needs more than one query may have: memory, time (422).
    #[error("{0}")]
    TooExpensive(String),
    /// The tenant's queries hold all of its share: concurrency or memory (429).
    #[error("{0}")]
    TenantBusy(String),
    /// The node's queries hold all of its budget: concurrency or memory (503).
    #[error("{0}")]
    NodeBusy(String),
    #[error("{0}")]
    Store(#[from] crate::hot::StoreError),
}

impl QueryError {
    /// A short label for counters (`weir_queries_total{outcome}`).
    pub fn outcome(&self) -> &'static str {
        match self {
            QueryError::Sql(_) => "bad_sql",
            QueryError::Refused(_) => "refused",
            QueryError::Execution(_) => "failed",
            QueryError::TooExpensive(_) => "too_expensive",
            QueryError::TenantBusy(_) => "tenant_busy",
            QueryError::NodeBusy(_) => "node_busy",
            QueryError::Store(_) => "error",
        }
    }

    /// A DataFusion error of a query running with `pool`: over a memory limit, it says
    /// which one.
    pub fn from_datafusion(e: datafusion::error::DataFusionError, pool: &QueryPool) -> Self {
        let m = e.to_string();
        match pool.exhausted() {
            Some(Exhausted::Query) => QueryError::TooExpensive(m),
            Some(Exhausted::Tenant) => QueryError::TenantBusy(m),
            Some(Exhausted::Node) => QueryError::NodeBusy(m),
            None => QueryError::Execution(m),
        }
    }
}

/// The answer of a query: its schema and batches.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

fn dead_letters_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("count", DataType::UInt32, false),
        Field::new("plugin", DataType::Utf8, false),
        Field::new("plugin_sha256", DataType::Utf8, false),
        Field::new("plugin_version", DataType::UInt32, true),
        Field::new("error", DataType::Utf8, false),
        Field::new("ingest_ts", ts.clone(), false),
        Field::new("failed_at", ts, false),
        Field::new("records", DataType::Utf8, false),
    ]))
}

fn dead_letters_batch(d: &[DeadLetter]) -> RecordBatch {
    let s = |f: fn(&DeadLetter) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(d.iter().map(f)))
    };
    let ts = |f: fn(&DeadLetter) -> i64| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from_iter_values(d.iter().map(f)).with_timezone("UTC"))
    };
    let cols: Vec<ArrayRef> = vec![
        s(|x| &x.tenant),
        s(|x| &x.stream),
        Arc::new(UInt32Array::from_iter_values(d.iter().map(|x| x.partition))),
        Arc::new(UInt64Array::from_iter_values(d.iter().map(|x| x.offset))),
        Arc::new(UInt32Array::from_iter_values(d.iter().map(|x| x.count))),
        s(|x| &x.plugin),
        s(|x| &x.plugin_sha256),
        Arc::new(UInt32Array::from_iter(d.iter().map(|x| x.plugin_version))),
        s(|x| &x.error),
        ts(|x| x.ingest_ts_ms),
        ts(|x| x.failed_at_ms),
        s(|x| &x.records),
    ];
    RecordBatch::try_new(dead_letters_schema(), cols).expect("columns match")
}

/// Wall-clock milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The limits one query runs under (from `[query]`, see `weir_core::serving`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    pub shape: ShapeLimits,
    pub caps: Caps,
    /// DataFusion's target partitions (`[query] partitions`).
    pub partitions: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits::from_config(&weir_core::serving::QueryConfig::default())
    }
}

impl QueryLimits {
    pub fn from_config(q: &weir_core::serving::QueryConfig) -> QueryLimits {
        QueryLimits {
            shape: ShapeLimits {
                max_sql_bytes: q.max_sql_bytes,
                max_expr_depth: q.max_expr_depth,
                max_relations: q.max_relations,
            },
            caps: Caps {
                max_rows: q.max_result_rows,
                max_bytes: q.max_result_mb << 20,
            },
            partitions: q.partitions,
        }
    }
}

/// A planned query: its answer's schema, and what it reads held until it ends.
pub struct PlannedQuery {
    pub schema: SchemaRef,
    /// The statement's parameters (`$1`, `$2`, ...; type `Null` where the plan does not
    /// tell), empty when it has none.
    pub parameters: Vec<Field>,
    /// Planned with placeholders and no values: it cannot execute.
    unbound: bool,
    df: DataFrame,
    pool: Arc<QueryPool>,
    snapshot: Vec<crate::cold::Tiers>,
}

/// A running query's batches, with what it reads held until the stream is dropped.
pub struct QueryStream {
    pub schema: SchemaRef,
    pub stream: SendableRecordBatchStream,
    _snapshot: Vec<crate::cold::Tiers>,
}

impl PlannedQuery {
    /// Start executing (physical planning, then batches as they come).
    pub async fn execute(self) -> Result<QueryStream, QueryError> {
        if self.unbound {
            return Err(QueryError::Sql(format!(
                "the statement has {} parameter(s) ($1, ... or ?) and no values for them: \
                 run it as a prepared statement and bind its parameters",
                self.parameters.len()
            )));
        }
        let stream = self
            .df
            .execute_stream()
            .await
            .map_err(|e| QueryError::from_datafusion(e, &self.pool))?;
        Ok(QueryStream {
            schema: self.schema,
            stream,
            _snapshot: self.snapshot,
        })
    }
}

impl HotStore {
    /// Run `sql` over `tenant`'s tables with the default limits and collect the answer
    /// (tests and tools; the server streams through [`HotStore::plan_query`]).
    pub async fn query(&self, tenant: &str, sql: &str) -> Result<QueryResult, QueryError> {
        use futures::StreamExt;
        let q = weir_core::serving::QueryConfig::default();
        let budget = QueryBudget::new(
            q.query_memory_mb << 20,
            q.query_memory_mb << 20,
            q.query_memory_mb << 20,
        );
        let pool = budget.pool(tenant);
        let planned = self
            .plan_query(tenant, sql, &QueryLimits::default(), &pool)
            .await?;
        let schema = planned.schema.clone();
        let mut running = planned.execute().await?;
        let mut batches = Vec::new();
        while let Some(b) = running.stream.next().await {
            batches.push(b.map_err(|e| QueryError::from_datafusion(e, &pool))?);
        }
        Ok(QueryResult { schema, batches })
    }

    /// Plan `sql` over `tenant`'s tables only, within `limits`, its memory in `pool`.
    /// Call it on a thread with [`crate::query_shape::QUERY_STACK_BYTES`] of stack.
    pub async fn plan_query(
        &self,
        tenant: &str,
        sql: &str,
        limits: &QueryLimits,
        pool: &Arc<QueryPool>,
    ) -> Result<PlannedQuery, QueryError> {
        self.plan_query_with(tenant, sql, None, limits, pool).await
    }

    /// [`HotStore::plan_query`] with `params` bound to the statement's placeholders
    /// (`$1`, `?`, see [`crate::query_params`]) as literals of the plan. Without
    /// `params`, a statement with placeholders plans (its schema and parameters are
    /// known) but does not execute.
    pub async fn plan_query_with(
        &self,
        tenant: &str,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        limits: &QueryLimits,
        pool: &Arc<QueryPool>,
    ) -> Result<PlannedQuery, QueryError> {
        crate::query_shape::check_text(sql, &limits.shape).map_err(QueryError::Refused)?;
        let TenantSession {
            ctx,
            snapshot,
            partials,
            now_ms,
            ..
        } = self.session(tenant, limits, pool, Rows::Read)?;
        crate::query_funcs::register(&ctx, pool);

        let opts = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let mut statement = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| QueryError::Sql(e.to_string()))?;
        crate::query_shape::check_statement(&statement, &limits.shape)
            .map_err(QueryError::Refused)?;
        crate::query_params::number_placeholders(&mut statement).map_err(QueryError::Sql)?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| QueryError::Sql(e.to_string()))?;
        opts.verify_plan(&plan)
            .map_err(|e| QueryError::Refused(e.to_string()))?;
        let parameters = crate::query_params::parameter_fields(&plan).map_err(QueryError::Sql)?;
        let unbound = params.is_none() && !parameters.is_empty();
        let plan = match params {
            Some(values) => {
                let values =
                    crate::query_params::bind(&parameters, values).map_err(QueryError::Sql)?;
                plan.with_param_values(values)
                    .map_err(|e| QueryError::Sql(e.to_string()))?
            }
            None => plan,
        };
        let df = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| QueryError::Sql(e.to_string()))?;
        // A plan with open placeholders only answers for its schema: routing optimizes it.
        let df = if unbound {
            df
        } else {
            self.route_to_rollups(&ctx, tenant, df, partials, now_ms)
                .await?
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        Ok(PlannedQuery {
            schema,
            parameters,
            unbound,
            df,
            pool: pool.clone(),
            snapshot,
        })
    }

    /// A session holding `tenant`'s tables (and nothing else), within `limits`, its
    /// memory in `pool`. [`Rows::SchemaOnly`]: the small tables kept in redb
    /// (`dead_letters`, `quarantine`, `aggregates`) are registered empty, with their
    /// schemas — for listing tables without reading rows.
    pub(crate) fn session(
        &self,
        tenant: &str,
        limits: &QueryLimits,
        pool: &Arc<QueryPool>,
        rows: Rows,
    ) -> Result<TenantSession, QueryError> {
        // No spilling: a query's memory is its pool, and it never writes to disk.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        let config = SessionConfig::new()
            .with_target_partitions(limits.partitions)
            .with_information_schema(false);
        let mut ctx = SessionContext::new_with_config_rt(config, runtime);
        datafusion_functions_json::register_all(&mut ctx)
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        if let Some(cold) = &self.cold {
            cold.register(&ctx);
        }

        // Hot rows and cold Parquet files of every table, taken under one lock: a
        // flushed segment (and its rollups) is in exactly one tier. Rows past their
        // stream's retention are hidden at once (the janitor deletes them later). The
        // cold files stay held until the query ends, so a compaction cannot delete one
        // under it.
        let exec = |e: datafusion::error::DataFusionError| QueryError::Execution(e.to_string());
        let (sketch_aggs, quantile) = crate::rollups::functions();
        for f in sketch_aggs {
            ctx.register_udaf(f);
        }
        ctx.register_udf(quantile);
        let now_ms = now_ms();
        let resolutions = self.rollup_resolutions();
        let mut tables = vec![Table::Logs, Table::Metrics];
        tables.extend(resolutions.iter().map(|r| Table::Rollup(*r)));
        let snapshot = self.snapshot(tenant, &tables);
        let metrics_stream = Some(weir_core::names::METRICS_STREAM);
        let mut hot_metrics = None;
        // Each rollup's unmerged partial rows, for the router (its aggregation merges).
        let mut partials = Vec::new();
        let mut views = Vec::new();
        for (table, (hot, cold)) in tables.iter().zip(&snapshot) {
            let table = *table;
            let (stream, rollup) = match table {
                Table::Logs => (None, false),
                Table::Metrics => (metrics_stream, false),
                Table::Rollup(_) => (metrics_stream, true),
            };
            let keep = self.retention_filter(tenant, stream, rollup, now_ms);
            let view = match table {
                Table::Rollup(secs) => {
                    let cold = if cold.is_empty() {
                        None
                    } else {
                        Some(self.cold_scan(&ctx, table, cold, &[])?)
                    };
                    let hot = hot_metrics.clone().expect("metrics come before rollups");
                    let (merged, parts) =
                        crate::rollups::rollup_view(hot, cold, secs).map_err(exec)?;
                    let parts = match &keep {
                        Some(k) => parts.filter(k.clone()).map_err(exec)?,
                        None => parts,
                    };
                    partials.push((secs, parts));
                    views.push(crate::cold::table_name(table));
                    merged
                }
                _ => {
                    let schema = match table {
                        Table::Logs => logs_schema(),
                        _ => metrics_schema(),
                    };
                    let hot = self.hot_scan(&ctx, schema, hot)?;
                    if table == Table::Metrics {
                        hot_metrics = Some(hot.clone());
                    }
                    // Field columns of the tenant's shredded `logs` files (kinds merged).
                    let columns = crate::shred::merge_columns(
                        cold.iter().filter_map(|(_, f)| f.columns.as_deref()),
                    );
                    let hot = match table {
                        Table::Logs => views::hot_view(hot, &columns).map_err(exec)?,
                        _ => hot,
                    };
                    if cold.is_empty() {
                        hot
                    } else {
                        hot.union(self.cold_scan(&ctx, table, cold, &columns)?)
                            .map_err(exec)?
                    }
                }
            };
            let view = match keep {
                Some(k) => view.filter(k).map_err(exec)?,
                None => view,
            };
            let view = match table {
                // Not inlined: the rollup router looks for scans of `metrics`.
                Table::Metrics => Arc::new(crate::rollup_route::Opaque(view.into_view())),
                _ => view.into_view(),
            };
            ctx.register_table(crate::cold::table_name(table), view)
                .map_err(exec)?;
        }
        let aggs_batch = match rows {
            Rows::Read => self.aggregates_batch(tenant),
            Rows::SchemaOnly => RecordBatch::new_empty(crate::aggregates::aggregates_schema()),
        };
        let aggs = MemTable::try_new(
            crate::aggregates::aggregates_schema(),
            vec![vec![aggs_batch]],
        )
        .map_err(|e| QueryError::Execution(e.to_string()))?;
        // Aggregation rows are kept as long as their stream's rollups.
        let aggs = ctx.read_table(Arc::new(aggs)).map_err(exec)?;
        let aggs = match self.retention_filter_on("window_start", tenant, None, true, now_ms) {
            Some(k) => aggs.filter(k).map_err(exec)?,
            None => aggs,
        };
        ctx.register_table("aggregates", aggs.into_view())
            .map_err(exec)?;
        let dead = match rows {
            Rows::Read => self.dead_letters(tenant)?,
            Rows::SchemaOnly => Vec::new(),
        };
        let dl = MemTable::try_new(dead_letters_schema(), vec![vec![dead_letters_batch(&dead)]])
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        ctx.register_table("dead_letters", Arc::new(dl))
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        // Rows the cold tier quarantined (see crate::quarantine), this tenant's only.
        let quarantined = match rows {
            Rows::Read => self.quarantined(tenant)?,
            Rows::SchemaOnly => Vec::new(),
        };
        let q = crate::quarantine::quarantine_batch(&quarantined)?;
        let q = MemTable::try_new(crate::quarantine::quarantine_schema(), vec![vec![q]])
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        ctx.register_table("quarantine", Arc::new(q))
            .map_err(|e| QueryError::Execution(e.to_string()))?;

        Ok(TenantSession {
            ctx,
            snapshot,
            partials,
            now_ms,
            views,
        })
    }
}

/// Whether a session reads the rows of its small tables (see [`HotStore::session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    Read,
    SchemaOnly,
}

/// One tenant's tables registered in a DataFusion session.
pub(crate) struct TenantSession {
    pub ctx: SessionContext,
    /// What the tables read, held until the query ends.
    pub snapshot: Vec<crate::cold::Tiers>,
    /// Each rollup's unmerged partial rows, for the router.
    pub partials: Vec<(u32, DataFrame)>,
    pub now_ms: i64,
    /// The tables derived from others (the rollups of `metrics`).
    pub views: Vec<String>,
}

impl HotStore {
    /// `df` with its aggregations over `metrics` that a rollup answers exactly reading
    /// the rollup's partial rows (`partials` per resolution: the aggregation merges them,
    /// so the merge the rollup tables do is skipped; see [`crate::rollup_route`]).
    async fn route_to_rollups(
        &self,
        ctx: &SessionContext,
        tenant: &str,
        df: DataFrame,
        partials: Vec<(u32, DataFrame)>,
        now_ms: i64,
    ) -> Result<DataFrame, QueryError> {
        // Raw samples and rollups both visible from here on.
        let e = self.effective_retention(tenant, weir_core::names::METRICS_STREAM);
        let earliest = [e.cold_ms, e.rollups_ms]
            .into_iter()
            .flatten()
            .map(|ms| now_ms.saturating_sub(ms as i64))
            .max();
        let exec = |e: datafusion::error::DataFusionError| QueryError::Execution(e.to_string());
        let rollups: Vec<_> = partials
            .into_iter()
            .map(|(secs, parts)| {
                let name = crate::cold::table_name(Table::Rollup(secs));
                (secs, name, provider_as_source(parts.into_view()))
            })
            .collect();
        // EXPLAIN shows the plan as routed.
        let (inner, explain) = match df.logical_plan() {
            LogicalPlan::Explain(e) => (e.plan.as_ref(), Some(e)),
            p => (p, None),
        };
        // Only plans that read `metrics` pay for an extra optimizer pass.
        let reads_metrics = inner
            .exists(|n| {
                Ok(matches!(n, LogicalPlan::TableScan(t) if t.table_name.table() == "metrics"))
            })
            .map_err(exec)?;
        if !reads_metrics || rollups.is_empty() {
            return Ok(df);
        }
        let state = ctx.state();
        let optimized = state.optimize(inner).map_err(exec)?;
        let Some(plan) =
            crate::rollup_route::route(&optimized, &rollups, earliest).map_err(exec)?
        else {
            return Ok(df);
        };
        let plan = match explain {
            Some(e) => LogicalPlan::Explain(Explain {
                stringified_plans: vec![plan.to_stringified(PlanType::InitialLogicalPlan)],
                plan: Arc::new(plan),
                ..e.clone()
            }),
            None => plan,
        };
        Ok(DataFrame::new(state, plan))
    }
}

type ColdFiles = [(String, Arc<crate::cold::ColdFile>)];

impl HotStore {
    /// Hot batches as a table scanned by the session's partitions.
    fn hot_scan(
        &self,
        ctx: &SessionContext,
        schema: SchemaRef,
        hot: &[RecordBatch],
    ) -> Result<DataFrame, QueryError> {
        let exec = |e: datafusion::error::DataFusionError| QueryError::Execution(e.to_string());
        // As many partitions as the session runs (`[query] partitions`).
        let n = ctx.state().config().target_partitions().max(1);
        let mut parts = vec![Vec::new(); n];
        for (i, b) in hot.iter().enumerate() {
            parts[i % n].push(b.clone());
        }
        let mem = MemTable::try_new(schema, parts).map_err(exec)?;
        ctx.read_table(Arc::new(mem)).map_err(exec)
    }

    /// Cold files of one table as rows of that table (`columns`: the merged field
    /// columns of `logs`). `logs`: one scan per read group (one unless a field changed
    /// kind); Parquet statistics prune files and row groups.
    fn cold_scan(
        &self,
        ctx: &SessionContext,
        table: Table,
        cold: &ColdFiles,
        columns: &[crate::shred::ShredColumn],
    ) -> Result<DataFrame, QueryError> {
        let exec = |e: datafusion::error::DataFusionError| QueryError::Execution(e.to_string());
        let opts =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let groups = match table {
            Table::Logs => {
                let files: Vec<_> = cold.iter().map(|(_, f)| f.columns.as_deref()).collect();
                views::read_groups(&files, columns)
            }
            _ => vec![(Vec::new(), (0..cold.len()).collect())],
        };
        let mut out: Option<DataFrame> = None;
        for (file_columns, idx) in groups {
            let legacy = idx.iter().any(|&i| cold[i].1.columns.is_none());
            let read_schema = match table {
                Table::Logs => views::cold_read_schema(&file_columns, legacy),
                Table::Metrics => views::cold_metrics_read_schema(),
                Table::Rollup(_) => crate::rollups::rollup_schema(),
            };
            let files = crate::cold_table::ColdTable {
                files: idx.iter().map(|&i| cold[i].clone()).collect(),
                schema: read_schema,
                options: opts.clone(),
            };
            let scan = ctx.read_table(Arc::new(files)).map_err(exec)?;
            let scan = match table {
                Table::Logs => {
                    views::cold_view(scan, &file_columns, columns, legacy).map_err(exec)?
                }
                Table::Metrics => views::cold_metrics_view(scan).map_err(exec)?,
                Table::Rollup(_) => scan,
            };
            out = Some(match out {
                Some(o) => o.union(scan).map_err(exec)?,
                None => scan,
            });
        }
        out.ok_or_else(|| QueryError::Execution("no cold files".into()))
    }
}

impl QueryResult {
    /// `{"columns":[...],"rows":[[...]]}`: values as JSON, timestamps as RFC 3339 text
    /// (the encoding the server streams, see [`crate::query_answer`]).
    pub fn to_json(&self) -> Result<Value, QueryError> {
        let bytes = self.encode(&mut crate::query_answer::JsonEncoder::default())?;
        serde_json::from_slice(&bytes).map_err(|e| QueryError::Execution(e.to_string()))
    }

    /// The result as an Arrow IPC stream.
    pub fn to_arrow_ipc(&self) -> Result<Vec<u8>, QueryError> {
        self.encode(&mut crate::query_answer::IpcEncoder::default())
    }

    fn encode(&self, e: &mut dyn crate::query_answer::Encoder) -> Result<Vec<u8>, QueryError> {
        let err = |e: datafusion::arrow::error::ArrowError| QueryError::Execution(e.to_string());
        let mut out = e.start(&self.schema).map_err(err)?;
        for b in &self.batches {
            out.extend(e.batch(b).map_err(err)?);
        }
        out.extend(e.finish(None).map_err(err)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hot::Segment;
    use weir_core::Batch;

    fn store_with_two_tenants() -> (tempfile::TempDir, HotStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = HotStore::open(&dir.path().join("store.redb"), usize::MAX).unwrap();
        let seg = |tenant: &str, offset: u64, lines: &str| {
            let batch = Batch {
                tenant: tenant.into(),
                stream: "app".into(),
                ingest_ts_ms: 1_700_000_000_000,
                count: lines.lines().count() as u32,
                records: lines.as_bytes().to_vec(),
                replay_of: None,
            };
            Segment::new(0, offset, batch).unwrap()
        };
        s.commit(
            0,
            10,
            &[
                seg("a", 0, "{\"level\":\"info\",\"message\":\"a1\",\"user\":{\"id\":7}}\n{\"level\":\"error\",\"message\":\"a2\"}\n"),
                seg("b", 2, "{\"level\":\"info\",\"message\":\"secret-b\"}\n"),
            ],
            &[],
            &[],
        )
        .unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn counts_and_json_shape() {
        let (_d, s) = store_with_two_tenants();
        let r = s
            .query(
                "a",
                "SELECT level, count(*) AS n FROM logs GROUP BY level ORDER BY level",
            )
            .await
            .unwrap();
        let j = r.to_json().unwrap();
        assert_eq!(j["columns"], serde_json::json!(["level", "n"]));
        assert_eq!(j["rows"], serde_json::json!([["error", 1], ["info", 1]]));
        let r = s
            .query(
                "a",
                "SELECT json_get_int(record, 'user', 'id') AS id FROM logs WHERE message = 'a1'",
            )
            .await
            .unwrap();
        assert_eq!(r.to_json().unwrap()["rows"], serde_json::json!([[7]]));
        assert!(!r.to_arrow_ipc().unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_sql_reaches_another_tenant() {
        let (_d, s) = store_with_two_tenants();
        for sql in [
            "SELECT count(*) FROM logs",
            "SELECT count(*) FROM logs WHERE message = 'secret-b'",
            "SELECT count(*) FROM (SELECT * FROM logs UNION ALL SELECT * FROM logs) WHERE message LIKE 'secret%'",
        ] {
            let r = s.query("a", sql).await.unwrap();
            let n = r.to_json().unwrap()["rows"][0][0].as_i64().unwrap();
            assert!(n <= 4 && !r.to_json().unwrap().to_string().contains("secret-b"), "{sql}");
        }
        let r = s
            .query("a", "SELECT count(*) FROM logs WHERE message = 'secret-b'")
            .await
            .unwrap();
        assert_eq!(r.to_json().unwrap()["rows"], serde_json::json!([[0]]));
        for sql in [
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "SELECT * FROM 'store.redb'",
            "SELECT * FROM b.logs",
            "SELECT * FROM information_schema.tables",
            "INSERT INTO logs SELECT * FROM logs",
            "COPY logs TO '/tmp/x.csv'",
            "SET datafusion.execution.batch_size = 1",
        ] {
            assert!(s.query("a", sql).await.is_err(), "{sql} must be refused");
        }
    }
}
