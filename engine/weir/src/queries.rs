//! Running queries for the HTTP and Flight SQL front ends, apart from ingest.
//!
//! Every query is admitted by the [`QueryGovernor`] (slots per tenant and node, a memory
//! pool), then planned and executed on the query runtime: its own tokio threads, with
//! stacks big enough for the deepest statement the SQL front door lets through
//! ([`weir_store::query_shape::QUERY_STACK_BYTES`]), so neither a deep statement nor a
//! CPU-heavy query runs on the threads that serve ingest. The answer comes back batch by
//! batch through a bounded channel, encoded by the caller's [`Encoder`] within the row
//! and byte caps. The whole query, planning to last chunk, runs under
//! `query.timeout_secs`; dropping the [`Answer`] (a client that went away) cancels it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use tokio::sync::mpsc;
use weir_core::metrics::{Counter, Family, Gauge, Histogram, Registry};
use weir_store::query_answer::{Budget, Encoder};
use weir_store::query_fair::FairGate;
use weir_store::query_governor::QueryGovernor;
use weir_store::query_memory::QueryPool;
use weir_store::{HotStore, QueryError, TableInfo};

/// A chunk of an answer, or the error that ended it.
pub type Chunk = Result<Bytes, QueryError>;

pub struct QueryService {
    store: Arc<HotStore>,
    governor: QueryGovernor,
    gate: Arc<FairGate>,
    runtime: tokio::runtime::Handle,
    total: Arc<Family<Counter>>,
    running: Arc<Family<Gauge>>,
    memory: Arc<Family<Gauge>>,
    seconds: Arc<Family<Histogram>>,
}

/// A query's answer as it comes: the first chunk was already received (so errors before
/// any row are known before an HTTP status is chosen); the rest follow.
pub struct Answer {
    pub first: Bytes,
    pub rest: mpsc::Receiver<Chunk>,
    /// Aborts the query if the answer is dropped before its end.
    pub guard: AbortOnDrop,
}

/// Aborts a query's task when its answer is dropped; a query that had not recorded its
/// outcome by then was abandoned by its client (counted once, here or by the task).
pub struct AbortOnDrop {
    task: tokio::task::AbortHandle,
    done: Arc<AtomicBool>,
    service: Arc<QueryService>,
    tenant: String,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.task.abort();
        if !self.done.swap(true, Ordering::AcqRel) {
            self.service.count(&self.tenant, "cancelled");
        }
    }
}

impl QueryService {
    pub fn new(
        store: Arc<HotStore>,
        config: &weir_core::serving::QueryConfig,
        runtime: tokio::runtime::Handle,
        r: &Registry,
    ) -> QueryService {
        QueryService {
            store,
            governor: QueryGovernor::new(config),
            gate: FairGate::new(threads(config.threads)),
            runtime,
            total: r.counter(
                "weir_queries_total",
                "Queries by outcome (ok, truncated, bad_sql, refused, failed, too_expensive, timeout, cancelled, tenant_busy, node_busy, error).",
            ),
            running: r.gauge("weir_queries_running", "Queries running now."),
            memory: r.gauge(
                "weir_query_memory_bytes",
                "Memory reserved by running queries.",
            ),
            seconds: r.histogram(
                "weir_query_seconds",
                "Wall-clock time of queries, admission to last chunk.",
            ),
        }
    }

    /// Run `sql` for `tenant`, encoded by `encoder`. Errors before the first chunk come
    /// back as `Err`; later ones as the last item of `rest`.
    pub async fn run(
        self: &Arc<Self>,
        tenant: &str,
        sql: String,
        encoder: impl Encoder + 'static,
    ) -> Result<Answer, QueryError> {
        self.run_with(tenant, sql, None, encoder).await
    }

    /// [`QueryService::run`] with `params` bound to the statement's placeholders (a
    /// prepared statement; see [`weir_store::query_params`]).
    pub async fn run_with(
        self: &Arc<Self>,
        tenant: &str,
        sql: String,
        params: Option<Vec<ScalarValue>>,
        encoder: impl Encoder + 'static,
    ) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let admission = self
            .governor
            .admit(tenant)
            .inspect_err(|e| self.count(tenant, e.outcome()))?;
        let (tx, mut rx) = mpsc::channel::<Chunk>(2);
        let this = self.clone();
        let tenant_owned = tenant.to_owned();
        let done = Arc::new(AtomicBool::new(false));
        let done_here = done.clone();
        let task = self.runtime.spawn(async move {
            let limits = this.governor.limits;
            let deadline = tokio::time::Instant::now() + this.governor.timeout;
            let work = produce(
                &this.store,
                (&this.gate, tenant_owned.as_str()),
                (&sql, params),
                &limits,
                &admission.pool,
                encoder,
                &tx,
            );
            let (outcome, error) = tokio::select! {
                r = tokio::time::timeout_at(deadline, work) => match r {
                    Ok(Ok(truncated)) => (if truncated { "truncated" } else { "ok" }, None),
                    Ok(Err(e)) => (e.outcome(), Some(e)),
                    Err(_) => ("timeout", Some(QueryError::TooExpensive(format!(
                        "the query ran longer than {} s (query.timeout_secs) and was stopped",
                        this.governor.timeout.as_secs()
                    )))),
                },
                // The receiver is gone: nobody wants the answer any more.
                _ = tx.closed() => ("cancelled", None),
            };
            // Counted before the error is sent: its receiver may drop the answer at once.
            if !done_here.swap(true, Ordering::AcqRel) {
                this.count(&tenant_owned, outcome);
            }
            if let Some(e) = error {
                fail(&tx, e).await;
            }
            this.seconds
                .with(&[("tenant", &tenant_owned)])
                .observe(started.elapsed().as_secs_f64());
            this.observe();
            drop(admission);
            this.observe();
        });
        self.observe();
        let guard = AbortOnDrop {
            task: task.abort_handle(),
            done,
            service: self.clone(),
            tenant: tenant.to_owned(),
        };
        match rx.recv().await {
            Some(Ok(first)) => Ok(Answer {
                first,
                rest: rx,
                guard,
            }),
            Some(Err(e)) => Err(e),
            None => Err(QueryError::Execution(
                "the query stopped without an answer".into(),
            )),
        }
    }

    /// Plan `sql` for `tenant` (admitted, on the query runtime, within the time limit),
    /// with `params` bound (a prepared statement's execution), without running it: its
    /// answer's schema and the statement's parameters (`$1`, ...; empty when none).
    pub async fn prepare(
        self: &Arc<Self>,
        tenant: &str,
        sql: String,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<(SchemaRef, Vec<Field>), QueryError> {
        self.planning(tenant, move |store, tenant, limits, pool| async move {
            let p = store
                .plan_query_with(&tenant, &sql, params, &limits, &pool)
                .await?;
            Ok((p.schema.clone(), p.parameters.clone()))
        })
        .await
    }

    /// The tables `tenant`'s SQL can name, with their schemas (catalog listings).
    pub async fn tables(self: &Arc<Self>, tenant: &str) -> Result<Vec<TableInfo>, QueryError> {
        self.planning(tenant, |store, tenant, limits, pool| async move {
            store.tables(&tenant, &limits, &pool).await
        })
        .await
    }

    /// Run `work` (planning, no execution) for `tenant`: admitted, on the query runtime,
    /// with a fair turn, within the time limit.
    async fn planning<T, F, Fut>(self: &Arc<Self>, tenant: &str, work: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<HotStore>, String, weir_store::QueryLimits, Arc<QueryPool>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<T, QueryError>> + Send,
    {
        let admission = self
            .governor
            .admit(tenant)
            .inspect_err(|e| self.count(tenant, e.outcome()))?;
        let this = self.clone();
        let tenant_owned = tenant.to_owned();
        let task = self.runtime.spawn(async move {
            let limits = this.governor.limits;
            let plan = async {
                let _turn = this.gate.turn(&tenant_owned).await;
                work(
                    this.store.clone(),
                    tenant_owned.clone(),
                    limits,
                    admission.pool.clone(),
                )
                .await
            };
            match tokio::time::timeout(this.governor.timeout, plan).await {
                Ok(r) => r,
                Err(_) => Err(QueryError::TooExpensive(format!(
                    "planning took longer than {} s (query.timeout_secs)",
                    this.governor.timeout.as_secs()
                ))),
            }
        });
        let _guard = AbortOnDrop {
            task: task.abort_handle(),
            done: Arc::new(AtomicBool::new(true)),
            service: self.clone(),
            tenant: tenant.to_owned(),
        };
        let r = task
            .await
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        if let Err(e) = &r {
            self.count(tenant, e.outcome());
        }
        r
    }

    fn count(&self, tenant: &str, outcome: &str) {
        self.total
            .with(&[("tenant", tenant), ("outcome", outcome)])
            .inc();
    }

    /// Refresh the gauges of running queries and their memory.
    pub fn observe(&self) {
        self.running.with(&[]).set(self.governor.running() as u64);
        self.memory
            .with(&[])
            .set(self.governor.memory_used() as u64);
    }
}

/// Plan, execute and encode; the first chunk is sent only with the first rows (or at
/// the end), so that errors before any row reach the caller as errors. Returns whether
/// the answer was cut by a cap.
async fn produce(
    store: &HotStore,
    (gate, tenant): (&Arc<FairGate>, &str),
    (sql, params): (&str, Option<Vec<ScalarValue>>),
    limits: &weir_store::QueryLimits,
    pool: &Arc<weir_store::query_memory::QueryPool>,
    mut enc: impl Encoder,
    tx: &mpsc::Sender<Chunk>,
) -> Result<bool, QueryError> {
    let arrow = |e: datafusion::arrow::error::ArrowError| QueryError::Execution(e.to_string());
    // Each step takes a fair turn on the query threads (see `query_fair`).
    let planned = {
        let _turn = gate.turn(tenant).await;
        store
            .plan_query_with(tenant, sql, params, limits, pool)
            .await?
    };
    let mut running = {
        let _turn = gate.turn(tenant).await;
        planned.execute().await?
    };
    let mut pending = enc.start(&running.schema).map_err(arrow)?;
    let mut budget = Budget::new(limits.caps);
    let mut cut = None;
    let mut sent_any = false;
    let mut batches = gate.gate(tenant, &mut running.stream);
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| QueryError::from_datafusion(e, pool))?;
        let (batch, rows_cut) = budget.take_rows(batch);
        let bytes = enc.batch(&batch).map_err(arrow)?;
        if !budget.take_bytes(bytes.len()) {
            cut = Some(budget.byte_cap_message());
            break;
        }
        pending.extend_from_slice(&bytes);
        if rows_cut {
            cut = Some(budget.row_cap_message());
            break;
        }
        if pending.len() >= 64 << 10 {
            send(tx, std::mem::take(&mut pending)).await?;
            sent_any = true;
        }
    }
    drop(batches);
    drop(running);
    match enc.finish(cut.as_deref()) {
        Ok(end) => pending.extend_from_slice(&end),
        Err(_) => {
            // An encoding that cannot carry the reason (Arrow IPC): an error status when
            // nothing was sent yet, else an answer that ends in an error.
            let why = cut.unwrap_or_default();
            if sent_any {
                send(tx, pending).await?;
            }
            return Err(QueryError::TooExpensive(why));
        }
    }
    send(tx, pending).await?;
    Ok(cut.is_some())
}

/// Report the error that ends a query, unless the client stopped reading.
async fn fail(tx: &mpsc::Sender<Chunk>, e: QueryError) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tx.send(Err(e))).await;
}

async fn send(tx: &mpsc::Sender<Chunk>, bytes: Vec<u8>) -> Result<(), QueryError> {
    tx.send(Ok(Bytes::from(bytes)))
        .await
        .map_err(|_| QueryError::Execution("the client went away".into()))
}

/// The query runtime: `threads` workers (0: one per core) with big stacks, at a lower
/// scheduling priority than the threads that serve ingest.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(self::threads(threads))
        .thread_name("weir-query")
        .thread_stack_size(weir_store::query_shape::QUERY_STACK_BYTES)
        // Under contention for the cores, ingest and processing come first: on Linux the
        // nice value is per thread, so this lowers only the query threads.
        .on_thread_start(|| {
            // SAFETY: setpriority only changes this thread's scheduling priority.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
            }
        })
        .enable_all()
        .build()
}

/// Query threads for `[query] threads` (0: one per core).
fn threads(configured: usize) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        configured
    }
}
