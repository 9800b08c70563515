//! TCP ingest: listeners that read NDJSON or syslog from plain TCP connections into a
//! tenant's stream, through [`crate::door::admit`] like every other protocol.
//!
//! Which listeners exist, and the tenant, stream and format of each, is config
//! ([`weir_core::listeners`]): TCP carries no token. Each listener accepts at most
//! `[tcp] max_connections` connections at once (the accept loop waits for a free slot;
//! further clients wait in the kernel's backlog); in open mode only loopback peers are
//! served. A connection ([`conn`]) cuts its bytes into frames ([`framing`]), turns each
//! into a record ([`records`], [`syslog`]), and admits them in batches, reading nothing
//! more until the batch is durable: backpressure is TCP's own.
//!
//! Shutdown: the accept loops stop at once; each connection stops reading, admits the
//! batch in hand and closes; the listener waits up to [`SHUTDOWN_GRACE`] for them.

pub mod conn;
pub mod framing;
pub mod records;
pub mod syslog;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use weir_core::listeners::{tcp_listeners, TcpListenerSpec};
use weir_core::metrics::{Counter, Family, Gauge, Registry};

use crate::door::Target;
use crate::server::AppState;

/// How long a stopping listener waits for its connections to admit their batches.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The TCP ingest metrics (labels `tenant`, `listener` = the bound address).
pub struct TcpMetrics {
    open: Arc<Family<Gauge>>,
    connections: Arc<Family<Counter>>,
    frames: Arc<Family<Counter>>,
    rejected: Arc<Family<Counter>>,
    refused: Arc<Family<Counter>>,
    retries: Arc<Family<Counter>>,
}

impl TcpMetrics {
    pub fn new(r: &Registry) -> Self {
        TcpMetrics {
            open: r.gauge("weir_tcp_connections_open", "Open TCP ingest connections."),
            connections: r.counter(
                "weir_tcp_connections_total",
                "TCP ingest connections accepted.",
            ),
            frames: r.counter(
                "weir_tcp_frames_total",
                "Frames (lines or octet-counted messages) read from TCP ingest connections, good or bad.",
            ),
            rejected: r.counter(
                "weir_tcp_frames_rejected_total",
                "Frames of TCP ingest connections rejected, by reason (too_long, declared_length, truncated, not_utf8, not_object, syslog_pri, syslog_header, syslog_sd, record).",
            ),
            refused: r.counter(
                "weir_tcp_refused_connections_total",
                "TCP ingest connections closed unread (reason not_loopback: open mode serves loopback peers only).",
            ),
            retries: r.counter(
                "weir_tcp_admit_retries_total",
                "Batches of TCP ingest retried because the log was busy (the connection is not read meanwhile).",
            ),
        }
    }
}

/// What the connections of one listener share.
pub struct Ctx {
    pub state: Arc<AppState>,
    pub spec: TcpListenerSpec,
    pub target: Target,
    /// The bound address, the `listener` label.
    pub name: String,
    pub idle: Duration,
    open: Arc<Gauge>,
    open_count: std::sync::atomic::AtomicU64,
    frames: Arc<Counter>,
    connections: Arc<Counter>,
    retries: Arc<Counter>,
    m: Arc<TcpMetrics>,
}

impl Ctx {
    /// `n` frames rejected for `reason` (the connection counts them in
    /// `weir_ingest_records_rejected_total` when the door did not).
    pub fn rejected(&self, reason: &str, n: u64) {
        self.m
            .rejected
            .with(&[
                ("tenant", self.spec.tenant.as_str()),
                ("listener", self.name.as_str()),
                ("reason", reason),
            ])
            .add(n);
    }

    fn opened(&self, delta: i64) {
        use std::sync::atomic::Ordering;
        let n = if delta > 0 {
            self.open_count.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.open_count.fetch_sub(1, Ordering::Relaxed) - 1
        };
        self.open.set(n);
    }
}

/// Bind every TCP listener of the config (printing `weir: tcp listening on ADDR
/// tenant=T stream=S format=F` for each) and serve them until `stop` turns true.
/// A listener that cannot bind stops the start with the reason.
pub async fn start(
    state: Arc<AppState>,
    registry: &Registry,
    stop: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>> {
    let m = Arc::new(TcpMetrics::new(registry));
    let mut tasks = Vec::new();
    let specs = tcp_listeners(&state.config);
    if specs.is_empty() {
        tracing::info!(
            tcp = %state.config.listen.tcp,
            "no TCP listener configured: [listen] tcp is bound only in open mode or for a [[tenants.T.listeners]] entry without addr"
        );
    }
    for spec in specs {
        let listener = TcpListener::bind(&spec.addr).await.with_context(|| {
            format!(
                "bind the TCP listener {} of tenant {} (stream {})",
                spec.addr, spec.tenant, spec.stream
            )
        })?;
        let addr = listener.local_addr()?;
        if spec.loopback_only && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "no tenants configured: TCP clients from non-loopback addresses will be refused");
        }
        println!(
            "weir: tcp listening on {addr} tenant={} stream={} format={}",
            spec.tenant,
            spec.stream,
            spec.format.name()
        );
        let target = Target::logs(spec.tenant.clone(), spec.stream.clone(), None)
            .map_err(|_| anyhow::anyhow!("invalid stream {:?}", spec.stream))?;
        let name = addr.to_string();
        let labels = [
            ("tenant", spec.tenant.as_str()),
            ("listener", name.as_str()),
        ];
        let ctx = Arc::new(Ctx {
            open: m.open.with(&labels),
            frames: m.frames.with(&labels),
            connections: m.connections.with(&labels),
            retries: m.retries.with(&labels),
            open_count: Default::default(),
            idle: Duration::from_secs(state.config.tcp.idle_timeout_secs),
            state: state.clone(),
            spec,
            target,
            name,
            m: m.clone(),
        });
        tasks.push(tokio::spawn(accept_loop(listener, addr, ctx, stop.clone())));
    }
    Ok(tasks)
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) {
    let max = ctx.state.config.tcp.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if ctx.spec.loopback_only && !peer.ip().is_loopback() {
            ctx.m
                .refused
                .with(&[("listener", ctx.name.as_str()), ("reason", "not_loopback")])
                .inc();
            tracing::debug!(%peer, %addr, "open mode: non-loopback TCP client refused");
            continue;
        }
        ctx.connections.inc();
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            ctx.opened(1);
            conn::run(stream, peer, &ctx, stop).await;
            ctx.opened(-1);
            drop(slot);
        });
    }
    drop(listener);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(%addr, "TCP connections still admitting after the shutdown grace");
    }
}
