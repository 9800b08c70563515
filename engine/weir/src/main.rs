//! `weir`: the binary. `weir serve` runs the engine; `weir bench` drives a running server
//! with realistic logs and reports throughput and ack latency; `weir plugin ...` and
//! `weir pipeline ...` are the plugin developer's tools; `weir ship` tails files and
//! ships their lines to a server.
//!
//! Layout: [`server`] (HTTP data plane), [`admin`] (admin API), [`ingest`] (body
//! decoding and per-line validation), [`tcp`] (TCP ingest: NDJSON and syslog), [`bench`] (load generator), [`cli`] (plugin
//! scaffolding, builds and admin API client). The layers below live in `engine/weir-*`.

mod admin;
mod bench;
mod body_limit;
mod cli;
mod door;
mod flight;
mod gate;
mod grpc_listener;
mod ingest;
mod listener;
mod otlp;
mod queries;
mod remote_write;
mod samples;
mod series;
mod server;
mod ship;
mod tcp;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use weir_core::metrics::Registry;
use weir_core::Config;
use weir_pipeline::{Catalog, PluginRegistry, WorkerMetrics, Workers};
use weir_store::HotStore;
use weir_transport::{Log, RedbLog, RedbLogOptions};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Logs and metrics engine extended with Wasm plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine.
    Serve(ServeArgs),
    /// Drive a running server with realistic logs; report events/s and ack latency.
    Bench(bench::BenchArgs),
    /// Tail files and/or stdin and ship the lines to a server, spooled, exactly once.
    Ship(ship::ShipArgs),
    /// Create, build, run and upload plugins.
    #[command(subcommand)]
    Plugin(cli::PluginCommand),
    /// Set or show a stream's plugin pipeline through the admin API.
    #[command(subcommand)]
    Pipeline(cli::PipelineCommand),
    /// Internal: compile a plugin from stdin under limits (run by `weir serve`).
    #[command(name = weir_plugin_host::isolate::SUBCOMMAND, hide = true)]
    CompilePlugin {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        memory_bytes: u64,
        #[arg(long)]
        cpu_secs: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML). Without it, embedded defaults on loopback.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP data-plane address (port 0 picks a free port; the bound address is printed).
    #[arg(long)]
    http_addr: Option<String>,
    #[arg(long)]
    grpc_addr: Option<String>,
    #[arg(long)]
    tcp_addr: Option<String>,
    #[arg(long)]
    admin_addr: Option<String>,
}

/// Keep large buffers (request bodies, batches, plugin output) in malloc's arenas instead
/// of fresh `mmap`s: profiling showed 13% of worker time zeroing new pages.
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() -> Result<()> {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::CompilePlugin {
        out,
        memory_bytes,
        cpu_secs,
    } = &cli.command
    {
        // Before any runtime thread exists: the child caps itself and compiles.
        std::process::exit(weir_plugin_host::isolate::child_main(
            out,
            *memory_bytes,
            *cpu_secs,
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(&args)?;
            // Queries run on their own threads (see `queries`); the runtime is dropped
            // outside the main one, after it.
            let query_rt = queries::runtime(config.query.threads)?;
            let r = rt.block_on(serve(config, query_rt.handle().clone()));
            query_rt.shutdown_timeout(std::time::Duration::from_secs(1));
            r
        }
        Command::Bench(args) => rt.block_on(bench::run(args)),
        Command::Ship(args) => rt.block_on(ship::run(args)),
        Command::Plugin(cmd) => rt.block_on(cli::plugin(cmd)),
        Command::Pipeline(cmd) => rt.block_on(cli::pipeline(cmd)),
        Command::CompilePlugin { .. } => unreachable!("handled above"),
    }
}

fn load_config(args: &ServeArgs) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(a) = &args.http_addr {
        cfg.listen.http = a.clone();
    }
    if let Some(a) = &args.grpc_addr {
        cfg.listen.grpc = a.clone();
    }
    if let Some(a) = &args.tcp_addr {
        cfg.listen.tcp = a.clone();
    }
    if let Some(a) = &args.admin_addr {
        cfg.listen.admin = a.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn serve(config: Config, query_rt: tokio::runtime::Handle) -> Result<()> {
    // Before anything is printed or bound: see `shutdown_signal`.
    let shutdown = shutdown_signal().context("install signal handlers")?;
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let metrics_registry = Registry::default();

    let log = Arc::new(
        RedbLog::open(
            &config.data_dir.join("log.redb"),
            RedbLogOptions {
                partitions: config.log.partitions,
                queue: config.log.commit_queue,
                retention_bytes: config.log.retention_bytes,
                retention: std::time::Duration::from_secs(config.log.retention_secs),
                max_lag_bytes: config.log.max_lag_bytes,
                key_ttl: std::time::Duration::from_secs(config.ingest.idempotency_ttl_secs),
                keys_per_tenant: config.ingest.idempotency_keys_per_tenant,
                ..Default::default()
            },
        )
        .context("open the log")?,
    );
    let mut hot = HotStore::open(
        &config.data_dir.join("store.redb"),
        (config.hot.max_mb as usize) << 20,
    )
    .context("open the hot store")?;
    if config.cold.flush_after_secs > 0 {
        let location = match &config.cold.url {
            Some(url) => weir_store::cold::ColdLocation::Url {
                url: url.clone(),
                options: config.cold.s3.clone().into_iter().collect(),
            },
            None => weir_store::cold::ColdLocation::Dir(
                config
                    .cold
                    .dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("cold")),
            ),
        };
        let options = weir_store::cold::ColdOptions {
            small_bytes: config.cold.compact_small_mb << 20,
            compact_min_files: config.cold.compact_min_files,
            rollups: config.cold.rollup_secs(),
        };
        hot = hot
            .with_cold_at(&location, options)
            .context("open the cold tier")?;
    }
    // Only now that the cold tier is attached (or not) may rows over the memory bound
    // be evicted: with a cold tier they are flushed instead.
    hot.enforce_bound()
        .context("hold the hot tier's memory bound")?;
    // Files of ours a crash left unnamed by the manifest; if the store cannot be reached
    // now (an object store down), the janitor retries before its first flush.
    let swept = sweep(&hot).await;
    hot.set_retention_config(
        config
            .tenant_names()
            .into_iter()
            .map(|t| {
                let doc = config.retention_doc(&t);
                (t, doc)
            })
            .collect(),
        (config.cold.flush_after_secs > 0).then_some(config.cold.flush_after_secs * 1000),
    );
    hot.set_letter_limits(weir_store::LetterLimits {
        retention_ms: Some(config.dead_letters.retention_ms()),
        max_bytes_per_tenant: Some(config.dead_letters.max_bytes_per_tenant()),
    });
    let store = Arc::new(hot);
    spawn_janitor(
        store.clone(),
        swept,
        std::time::Duration::from_secs(config.cold.janitor_secs),
        &metrics_registry,
    );
    let registry = Arc::new(
        PluginRegistry::open(&config.data_dir.join("plugins.redb"))
            .context("open the plugin registry")?,
    );
    let catalog = Arc::new(
        Catalog::new(
            config.clone(),
            registry,
            &metrics_registry,
            Some(config.data_dir.join("plugin-cache")),
        )
        .context("start the plugin host")?
        // Uploads compile in a child process of this binary, under limits.
        .with_child_compiler(std::env::current_exe().context("find the weir executable")?),
    );
    catalog
        .check_config()
        .context("check the configured pipelines")?;

    let dyn_log: Arc<dyn Log> = log.clone();
    let worker_metrics = Arc::new(WorkerMetrics::new(&metrics_registry));
    let workers = Workers::start(
        dyn_log.clone(),
        store.clone(),
        catalog.clone(),
        config.hot.batch_records,
        worker_metrics.clone(),
    )?;

    let series = series::SeriesLimits::new(&metrics_registry);
    for t in config.tenant_names() {
        let known = store.metric_series(&t);
        series.seed(
            &t,
            known
                .iter()
                .map(|(n, l)| (n.clone(), series::hash_of(n, l))),
        );
    }
    let queries = Arc::new(queries::QueryService::new(
        store.clone(),
        &config.query,
        query_rt,
        &metrics_registry,
    ));
    let state = Arc::new(server::AppState {
        queries: queries.clone(),
        series,
        config: config.clone(),
        log: dyn_log.clone(),
        store: store.clone(),
        m: server::Metrics::new(&metrics_registry),
        registry: metrics_registry,
        inflight: tokio::sync::Semaphore::new(door::INFLIGHT_KIB),
    });
    let tls = tls::acceptor(&config.tls)?;
    let listener = TcpListener::bind(&config.listen.http)
        .await
        .with_context(|| format!("bind {}", config.listen.http))?;
    let addr = listener.local_addr()?;
    if config.open_mode() && !addr.ip().is_loopback() {
        tracing::warn!("no tenants configured: requests from non-loopback clients will be refused");
    }
    // Tests and scripts read this line to find the port.
    println!(
        "weir: http listening on {addr}{}",
        if tls.is_some() { " (https)" } else { "" }
    );
    tracing::info!(%addr, data_dir = %config.data_dir.display(), partitions = config.log.partitions, "weir serving");
    // TCP ingest (NDJSON, syslog), stopped with the HTTP listener (see `tcp`).
    let (stop_tcp, tcp_stopped) = tokio::sync::watch::channel(false);
    let tcp_tasks = tcp::start(state.clone(), &state.registry, tls.clone(), tcp_stopped).await?;
    // The gRPC listener serves Arrow Flight SQL and OTLP logs and metrics.
    let grpc_listener = TcpListener::bind(&config.listen.grpc)
        .await
        .with_context(|| format!("bind {}", config.listen.grpc))?;
    let grpc_tls = tls::grpc_acceptor(&config.tls)?;
    println!(
        "weir: grpc listening on {}{}",
        grpc_listener.local_addr()?,
        if grpc_tls.is_some() { " (tls)" } else { "" }
    );
    let (stop_grpc, grpc_stopped) = tokio::sync::watch::channel(false);
    let grpc_task = {
        let service = arrow_flight::flight_service_server::FlightServiceServer::new(
            flight::FlightSql::new(config.clone(), store.clone(), queries),
        );
        let (otlp_logs, otlp_metrics) = otlp::grpc::Otlp::services(state.clone());
        let mut rx = grpc_stopped.clone();
        let router = tonic::transport::Server::builder()
            .add_service(service)
            .add_service(otlp_logs)
            .add_service(otlp_metrics);
        let stopped = async move {
            let _ = rx.changed().await;
        };
        let handshake = std::time::Duration::from_secs(config.http.header_timeout_secs);
        let max_connections = config.http.max_connections;
        tokio::spawn(async move {
            let incoming =
                grpc_listener::incoming(grpc_listener, grpc_tls, max_connections, handshake);
            let served = router.serve_with_incoming_shutdown(incoming, stopped).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the gRPC listener stopped");
            }
        })
    };

    // The admin API runs only with an admin token configured.
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let admin_task = if config.admin.token.is_some() {
        let admin_listener = TcpListener::bind(&config.listen.admin)
            .await
            .with_context(|| format!("bind {}", config.listen.admin))?;
        println!("weir: admin listening on {}", admin_listener.local_addr()?);
        let app = admin::router(Arc::new(admin::AdminState {
            config: config.clone(),
            catalog,
            log: dyn_log.clone(),
            store: store.clone(),
            metrics: worker_metrics,
        }));
        let mut rx = admin_stopped.clone();
        let limits = config.http.clone();
        Some(tokio::spawn(async move {
            listener::serve(admin_listener, app, &limits, None, async move {
                let _ = rx.changed().await;
            })
            .await;
        }))
    } else {
        tracing::info!("no [admin] token configured: the admin API is not served");
        None
    };

    let shutdown = async move {
        shutdown.await;
        let _ = stop_tcp.send(true);
    };
    listener::serve(listener, server::router(state), &config.http, tls, shutdown).await;
    // TCP connections admit the batch in hand (durable like any acknowledged request).
    for t in tcp_tasks {
        let _ = t.await;
    }
    let _ = stop_admin.send(true);
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    let _ = stop_grpc.send(true);
    let _ = grpc_task.await;

    // Every acknowledged request is already durable in the log; stop the workers after
    // their current batch and close the log.
    tracing::info!("draining: stopping workers");
    workers.stop();
    log.close();
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives right after the listening
/// line is printed must already mean "shut down cleanly", not the default "die".
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received: finishing in-flight requests");
    })
}

/// Delete the cold files this server wrote that no manifest entry names (its pending
/// uploads and replaced files, never anything else under the prefix); false if the
/// store could not be reached (the error is logged).
async fn sweep(store: &HotStore) -> bool {
    match store.sweep_cold_orphans().await {
        Ok(0) => true,
        Ok(n) => {
            tracing::warn!(files = n, "removed cold files of ours no manifest names");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "could not list the cold tier for files a crash left; retrying before the next flush");
            false
        }
    }
}

/// Every second, move due hot rows out (to the cold tier, or deleted without one);
/// every `every`, a janitor pass (retention, compaction). Until `swept`, first the
/// startup sweep of unnamed cold files (in this task: never while a flush or
/// compaction has a file written and not yet committed).
fn spawn_janitor(store: Arc<HotStore>, mut swept: bool, every: std::time::Duration, r: &Registry) {
    let files = r.counter(
        "weir_cold_files_total",
        "Parquet files written by cold-tier flushes.",
    );
    let rows = r.counter(
        "weir_cold_rows_total",
        "Rows moved from the hot to the cold tier.",
    );
    let bytes = r.counter(
        "weir_cold_bytes_total",
        "Bytes of Parquet written to the cold tier.",
    );
    let expired = r.counter(
        "weir_retention_expired_rows_total",
        "Rows deleted because their stream's retention passed.",
    );
    let compacted = r.counter(
        "weir_cold_compacted_files_total",
        "Small cold files merged into larger ones.",
    );
    let deleted = r.counter(
        "weir_cold_deleted_files_total",
        "Cold files deleted from storage (compacted, rewritten or expired).",
    );
    let errors = r.counter(
        "weir_cold_errors_total",
        "Failed cold-tier operations (op: sweep, flush, janitor), each retried.",
    );
    let quarantined = r.counter(
        "weir_cold_quarantined_rows_total",
        "Rows the cold tier could not write, moved to the tenant's `quarantine` table.",
    );
    let letters_dropped = r.counter(
        "weir_dead_letters_dropped_total",
        "Dead letters (kind=dead_letter) and quarantined segments (kind=quarantine) deleted because their tenant was over [dead_letters] max_mb_per_tenant (oldest first).",
    );
    let letters_expired = r.counter(
        "weir_dead_letters_expired_total",
        "Dead letters and quarantined segments deleted past [dead_letters] retention.",
    );
    tokio::spawn(async move {
        let mut last_pass = std::time::Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if !swept {
                swept = sweep(&store).await;
                if !swept {
                    errors.with(&[("op", "sweep")]).add(1);
                    continue;
                }
            }
            let flushed = store.flush_due().await;
            if let Ok(s) = &flushed {
                for (tenant, n) in &s.quarantined {
                    quarantined.with(&[("tenant", tenant.as_str())]).add(*n);
                }
            }
            let letters = store.take_letter_counts();
            for ((kind, tenant), n) in &letters.dropped {
                letters_dropped
                    .with(&[("kind", kind.name()), ("tenant", tenant.as_str())])
                    .add(*n);
            }
            for ((kind, tenant), n) in &letters.expired {
                letters_expired
                    .with(&[("kind", kind.name()), ("tenant", tenant.as_str())])
                    .add(*n);
            }
            match flushed {
                Ok(s) if s.files > 0 => {
                    files.with(&[]).add(s.files as u64);
                    rows.with(&[]).add(s.rows);
                    bytes.with(&[]).add(s.bytes);
                    tracing::info!(
                        files = s.files,
                        rows = s.rows,
                        bytes = s.bytes,
                        "flushed to the cold tier"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    errors.with(&[("op", "flush")]).add(1);
                    tracing::error!(error = %e, "cold flush failed; rows stay hot and are retried")
                }
            }
            if last_pass.elapsed() < every {
                continue;
            }
            last_pass = std::time::Instant::now();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            match store.janitor_pass(now_ms).await {
                Ok(s) => {
                    if s.failed_rewrites > 0 {
                        errors
                            .with(&[("op", "janitor")])
                            .add(s.failed_rewrites as u64);
                    }
                    expired.with(&[]).add(s.expired_rows);
                    compacted.with(&[]).add(s.compacted_files as u64);
                    deleted.with(&[]).add(s.deleted_files as u64);
                }
                Err(e) => {
                    errors.with(&[("op", "janitor")]).add(1);
                    tracing::error!(error = %e, "janitor pass failed; retried next pass")
                }
            }
        }
    });
}
