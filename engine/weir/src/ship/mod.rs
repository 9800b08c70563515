//! `weir ship`: the client side of ingest. Tails files (and/or reads stdin), batches
//! the lines, spools the batches durably in a bounded directory, and sends them to a
//! Weir server as gzip NDJSON (`POST /api/v1/logs`) with retries, backoff and an
//! `Idempotency-Key` per batch, so that no line is lost or doubled by crashes of either
//! side.
//!
//! Pieces: [`tail`] (files: globs, rotation, truncation, positions), [`spool`] (the
//! bounded on-disk queue and the positions), [`send`] (HTTP, retries, verdicts),
//! [`metrics`] (counters, `--metrics-addr`, the progress line). Here: the command, the
//! *producer* (one thread: reads sources, cuts batches, pushes them into the spool) and
//! the *sender* (one task: the oldest spooled batch, sent until acknowledged, one at a
//! time, so batches arrive in order).
//!
//! # Exactly once
//!
//! Invariants:
//! 1. A batch's key (`RUN-SEQ`: a random id of the process that spooled it and its
//!    sequence number) is written in its file with its body; it never changes, and no
//!    other batch ever gets it (the run id is new at every start).
//! 2. A batch file holds the end position of every file whose lines it carries, and
//!    appears atomically (tmp, fsync, rename, fsync of the directory). At start a file
//!    is read from its latest position among `positions.json` and the spooled batches.
//!    So a line is either in exactly one durable batch or will be read again, never
//!    both: its position and its bytes become durable in the same rename.
//! 3. A batch leaves the spool only after a 2xx (or a 4xx verdict, or a drop under
//!    `drop-oldest`, both counted); its positions are written to `positions.json`
//!    (fsynced) before its file is deleted.
//! 4. The server appends a request and remembers its key in one transaction, and
//!    answers a repeated key (with the same body) from memory without appending.
//!
//! `kill -9` of the shipper:
//! - while reading or cutting a batch (nothing spooled yet): the lines are read again
//!   from the last durable position. Stdin's unspooled lines are lost (there is no
//!   position to go back to; use files when that matters).
//! - while writing a batch file: a `.tmp` is deleted at start, the lines are read again.
//! - after the rename, before anything else: the batch is spooled and its position
//!   is durable (invariant 2); it is sent after the restart.
//! - while a batch is being sent, or after the server appended it but before the answer
//!   arrived or before the spool recorded it: the restart resends it with the same key
//!   and body (invariant 1); the server answers from memory (invariant 4).
//! - between writing `positions.json` and deleting the acknowledged file: it is sent
//!   again, answered from memory, and deleted.
//! - during a rotation: positions are per inode, not per name, and a file renamed out
//!   of the glob while the shipper was down is found again by inode in its directory.
//!
//! `kill -9` of the server: a request it did not commit got no 2xx, so it is retried
//! (same key); one it committed is remembered with its key (invariant 4), so the
//! resend appends nothing.
//!
//! Limits of the argument: the server remembers keys for `[ingest]
//! idempotency_ttl_secs` (1 day by default) and up to `idempotency_keys_per_tenant`: a
//! shipper that stays down longer than that with a batch it had sent may double that
//! batch. `drop-oldest` drops batches by design (counted). Truncation (copytruncate)
//! loses the lines written between the last read and the truncation.

mod metrics;
mod send;
mod spool;
mod tail;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use metrics::ShipMetrics;
use send::{Sender, Verdict};
use spool::{FileId, Position, Spool, WhenFull};
use tail::{TailOptions, Tailer};

#[derive(clap::Args)]
pub struct ShipArgs {
    /// The Weir server's base URL (`http://HOST:PORT`); lines go to `/api/v1/logs`.
    #[arg(long)]
    to: String,
    /// The tenant's token (`Authorization: Bearer`).
    #[arg(long, env = "WEIR_TOKEN")]
    token: Option<String>,
    /// The stream the lines go to.
    #[arg(long, default_value = "default")]
    stream: String,
    /// Files to tail: a path or glob (`/var/log/app/*.log`); repeatable. Re-evaluated
    /// every `--rescan-ms`; new files are read from their start.
    #[arg(long = "file")]
    files: Vec<String>,
    /// Also read lines from stdin (the shipper exits at its end when no --file is given).
    #[arg(long)]
    stdin: bool,
    /// The spool directory: batches not yet acknowledged and file positions.
    #[arg(long)]
    spool: PathBuf,
    /// Most MiB of batches in the spool.
    #[arg(long, default_value_t = 256)]
    spool_max_mb: u64,
    /// When the spool is full: `block` (stop reading the sources) or `drop-oldest`
    /// (delete the oldest batches and count their lines as dropped).
    #[arg(long, value_enum, default_value_t = WhenFull::Block)]
    when_full: WhenFull,
    /// Most lines per batch.
    #[arg(long, default_value_t = 5000)]
    batch_lines: u32,
    /// About this many bytes (uncompressed) per batch at most.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// A batch is cut at the latest this long after its first line.
    #[arg(long, default_value_t = 500)]
    batch_ms: u64,
    /// Longer lines are skipped (counted in weir_ship_dropped_lines_total{reason="too_long"}).
    #[arg(long, default_value_t = 1 << 20)]
    max_line_bytes: usize,
    /// Serve the shipper's counters as Prometheus text on this address (`/metrics`).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Seconds between progress lines on stderr (0: only the last one).
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
    /// On SIGTERM/SIGINT, how long to keep sending what is spooled before exiting.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Longest wait between retries when the server gives no `Retry-After` (backoff is
    /// exponential from 100 ms with full jitter).
    #[arg(long, default_value_t = 30_000)]
    max_backoff_ms: u64,
    /// Timeout of one request.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// How often the file globs are evaluated again.
    #[arg(long, default_value_t = 1000)]
    rescan_ms: u64,
    /// How long a renamed or removed file is still read after it last grew.
    #[arg(long, default_value_t = 5000)]
    rotate_wait_ms: u64,
    /// Exit once every source is read to its end and every batch is acknowledged
    /// (a last line without a newline stays for the next run).
    #[arg(long)]
    once: bool,
    /// A PEM certificate (or several) to trust for an https:// server, besides the
    /// system's roots (e.g. a private CA or a self-signed server certificate).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
}

/// How often the producer looks at the sources when they had nothing.
const IDLE_POLL: Duration = Duration::from_millis(50);

pub async fn run(args: ShipArgs) -> Result<()> {
    if args.files.is_empty() && !args.stdin {
        bail!("nothing to ship: give --file GLOB (repeatable) and/or --stdin");
    }
    if !weir_core::names::is_valid_name(&args.stream) {
        bail!("--stream must be 1-64 characters of [A-Za-z0-9_.-]");
    }
    if !args.to.starts_with("http://") && !args.to.starts_with("https://") {
        bail!("--to must be an http:// or https:// URL (the server's base URL)");
    }
    if args.batch_lines == 0 || args.batch_bytes == 0 || args.spool_max_mb == 0 {
        bail!("--batch-lines, --batch-bytes and --spool-max-mb must be positive");
    }
    for g in &args.files {
        glob::Pattern::new(g).with_context(|| format!("--file {g:?} is not a valid glob"))?;
    }
    // Before anything starts: a signal from now on means "finish cleanly".
    let mut signal = shutdown_signal().context("install signal handlers")?;

    let registry = weir_core::metrics::Registry::default();
    let m = Arc::new(ShipMetrics::new(&registry));
    let (spool, recovered) = Spool::open(
        &args.spool,
        args.spool_max_mb << 20,
        args.when_full,
        m.clone(),
    )
    .with_context(|| format!("open the spool {}", args.spool.display()))?;
    let spool = Arc::new(spool);
    if recovered.batches > 0 || recovered.corrupt > 0 {
        eprintln!(
            "weir ship: resuming: {} batches to send again with their keys, {} damaged batches moved to rejected/",
            recovered.batches, recovered.corrupt
        );
    }

    let stop_metrics = match &args.metrics_addr {
        Some(addr) => Some(serve_metrics(addr, registry.clone()).await?),
        None => None,
    };

    let ca = match &args.ca_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("--ca-file {}", p.display()))?),
        None => None,
    };
    let mut sender = Sender::new(
        &args.to,
        &args.stream,
        args.token.clone(),
        Duration::from_secs(args.timeout_secs.max(1)),
        ca.as_deref(),
    )?;
    sender.max_backoff = Duration::from_millis(args.max_backoff_ms);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sending = tokio::spawn(send_loop(spool.clone(), sender, m.clone(), stop_rx));

    let stop_reading = Arc::new(AtomicBool::new(false));
    let tailer = (!args.files.is_empty()).then(|| {
        Tailer::new(
            TailOptions {
                globs: args.files.clone(),
                rescan: Duration::from_millis(args.rescan_ms),
                rotate_wait: Duration::from_millis(args.rotate_wait_ms),
                max_line: args.max_line_bytes,
            },
            recovered.positions,
            m.clone(),
        )
    });
    let stdin = args
        .stdin
        .then(|| read_stdin(args.max_line_bytes, m.clone()));
    let producer = Producer {
        spool: spool.clone(),
        tailer,
        stdin,
        m: m.clone(),
        stop: stop_reading.clone(),
        batch_lines: args.batch_lines,
        batch_bytes: args.batch_bytes,
        batch_age: Duration::from_millis(args.batch_ms),
        once: args.once || args.files.is_empty(),
    };
    let mut producing = tokio::task::spawn_blocking(move || producer.run());

    let progress = {
        let m = m.clone();
        let every = Duration::from_secs(args.progress_secs);
        tokio::spawn(async move {
            if every.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", m.progress());
            }
        })
    };

    let grace = Duration::from_secs(args.grace_secs);
    let signalled = tokio::select! {
        _ = &mut signal => true,
        r = &mut producing => {
            r.context("the reading thread")?;
            false
        }
    };
    if signalled {
        eprintln!(
            "weir ship: stopping: no more reading; sending what is spooled for up to {grace:?}"
        );
        stop_reading.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, &mut producing)
            .await
            .is_err()
        {
            // Waiting for room in a full spool: give up the batch being cut (files read
            // it again next time).
            spool.close();
            let _ = producing.await;
        }
        spool.close();
        if tokio::time::timeout_at(deadline, &mut sending)
            .await
            .is_err()
        {
            let _ = stop_tx.send(true);
            let _ = sending.await;
        }
    } else {
        // Every source is at its end: send the rest, unless told to stop.
        spool.close();
        tokio::select! {
            _ = &mut sending => {}
            _ = &mut signal => {
                if tokio::time::timeout(grace, &mut sending).await.is_err() {
                    let _ = stop_tx.send(true);
                    let _ = sending.await;
                }
            }
        }
    }
    progress.abort();
    if let Some(stop) = stop_metrics {
        let _ = stop.send(true);
    }
    eprintln!("{}", m.progress());
    if !spool.is_empty() {
        eprintln!(
            "weir ship: {} batches stay in {} and are sent at the next start",
            m.spool_batches.get(),
            args.spool.display()
        );
    }
    Ok(())
}

/// The sender: the oldest spooled batch, until the server's verdict, one at a time.
async fn send_loop(
    spool: Arc<Spool>,
    sender: Sender,
    m: Arc<ShipMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    while let Some(b) = spool.next(true).await {
        let verdict = match sender.deliver(&b, &m, &mut stop).await {
            Some(v) => v,
            None => {
                spool.release(b.seq);
                return;
            }
        };
        loop {
            let done = match &verdict {
                Verdict::Acked {
                    rejected, replayed, ..
                } => {
                    let r = spool.ack(b.seq);
                    if r.is_ok() {
                        m.batches_acked.inc();
                        m.lines_acked.add(u64::from(b.lines));
                        m.lines_rejected_by_server.add(*rejected);
                        if *replayed {
                            m.replayed.inc();
                        }
                    }
                    r
                }
                Verdict::Dead(why) => {
                    tracing::error!(key = %b.key, lines = b.lines, %why, "the server refused a batch; moved to rejected/");
                    spool.reject(b.seq, why)
                }
            };
            match done {
                Ok(()) => break,
                Err(e) => {
                    // The spool's disk: keep trying (the batch would only be resent).
                    tracing::error!(error = %e, "cannot record an acknowledged batch; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The reading side: sources → batches → spool.
struct Producer {
    spool: Arc<Spool>,
    tailer: Option<Tailer>,
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
    m: Arc<ShipMetrics>,
    stop: Arc<AtomicBool>,
    batch_lines: u32,
    batch_bytes: usize,
    batch_age: Duration,
    /// End when the sources are at their end (no files to follow, or `--once`).
    once: bool,
}

#[derive(Default)]
struct Cut {
    body: Vec<u8>,
    lines: u32,
    positions: BTreeMap<FileId, Position>,
    since: Option<Instant>,
    /// Files closed by the tailer, forgotten once this batch is spooled.
    closed: Vec<FileId>,
}

impl Producer {
    fn run(mut self) {
        let mut cut = Cut::default();
        let mut stdin_done = self.stdin.is_none();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let mut got = false;
            if let Some(t) = &mut self.tailer {
                let budget = self.batch_bytes.saturating_sub(cut.body.len()).max(1);
                let lines = self.batch_lines.saturating_sub(cut.lines).max(1);
                for c in t.poll(budget, lines) {
                    got |= c.count > 0;
                    cut.since.get_or_insert_with(Instant::now);
                    cut.body.extend_from_slice(&c.lines);
                    cut.lines += c.count;
                    self.m.lines_read.add(u64::from(c.count));
                    cut.positions.insert(c.position.id(), c.position);
                }
                cut.closed.extend(t.take_closed());
            }
            if let Some(rx) = &self.stdin {
                let wait = if got || self.tailer.is_some() {
                    Duration::ZERO
                } else {
                    IDLE_POLL
                };
                loop {
                    if cut.lines >= self.batch_lines || cut.body.len() >= self.batch_bytes {
                        break;
                    }
                    let r = if wait.is_zero() {
                        rx.try_recv()
                            .map_err(|e| matches!(e, mpsc::TryRecvError::Disconnected))
                    } else {
                        rx.recv_timeout(wait)
                            .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected))
                    };
                    match r {
                        Ok(chunk) => {
                            let n = memchr::memchr_iter(b'\n', &chunk).count() as u32;
                            got = true;
                            cut.since.get_or_insert_with(Instant::now);
                            cut.body.extend_from_slice(&chunk);
                            cut.lines += n;
                            self.m.lines_read.add(u64::from(n));
                        }
                        Err(disconnected) => {
                            stdin_done |= disconnected;
                            break;
                        }
                    }
                }
            }
            let full = cut.lines >= self.batch_lines || cut.body.len() >= self.batch_bytes;
            let old = cut.since.is_some_and(|s| s.elapsed() >= self.batch_age);
            let at_end = !got && stdin_done;
            if cut.lines > 0 && (full || old || (at_end && self.once)) && !self.flush(&mut cut) {
                return;
            }
            if at_end && self.once && cut.lines == 0 {
                break;
            }
            if !got && (self.stdin.is_none() || self.tailer.is_some()) {
                std::thread::sleep(IDLE_POLL);
            }
        }
        // Stopping: what is cut goes to the spool (for stdin, the only copy).
        if cut.lines > 0 {
            self.flush(&mut cut);
        }
    }

    /// Spool the batch; false when the spool closed first (the caller stops).
    fn flush(&self, cut: &mut Cut) -> bool {
        loop {
            let positions = cut.positions.values().cloned().collect();
            match self.spool.push(&cut.body, cut.lines, positions) {
                Ok(_) => {
                    for id in cut.closed.drain(..) {
                        self.spool.forget(id);
                    }
                    *cut = Cut::default();
                    return true;
                }
                Err(spool::SpoolError::Closed) => return false,
                Err(e) => {
                    // A full or failing disk: keep the batch and try again.
                    tracing::error!(error = %e, "cannot write to the spool; retrying");
                    if self.stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// A thread reading stdin into chunks of complete lines (the same rules as files:
/// blank lines, too long lines and lines starting with `[` are skipped). The channel
/// is bounded, so a blocked producer stops reading stdin. A last line without a
/// newline is sent at the end of input.
fn read_stdin(max_line: usize, m: Arc<ShipMetrics>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        let mut buf = vec![0u8; 256 << 10];
        let mut carry: Vec<u8> = Vec::new();
        let mut skipping = false;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "reading stdin failed");
                    break;
                }
            };
            let mut data = &buf[..n];
            if skipping {
                match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        skipping = false;
                        data = &data[i + 1..];
                    }
                    None => continue,
                }
            }
            let Some(last) = memchr::memrchr(b'\n', data) else {
                carry.extend_from_slice(data);
                if carry.len() > max_line {
                    m.dropped(metrics::DropReason::TooLong, 1, carry.len() as u64);
                    carry.clear();
                    skipping = true;
                }
                continue;
            };
            carry.extend_from_slice(&data[..=last]);
            let mut out = Vec::with_capacity(carry.len());
            tail::keep_lines(&carry, &mut out, max_line, u32::MAX, &m);
            carry.clear();
            carry.extend_from_slice(&data[last + 1..]);
            if !out.is_empty() && tx.send(out).is_err() {
                return;
            }
        }
        if !carry.is_empty() && !skipping {
            carry.push(b'\n');
            let mut out = Vec::new();
            tail::keep_lines(&carry, &mut out, max_line, u32::MAX, &m);
            if !out.is_empty() {
                let _ = tx.send(out);
            }
        }
    });
    rx
}

/// Serve `/metrics` on `addr`; the address is printed on stdout. Returns the stopper.
async fn serve_metrics(
    addr: &str,
    registry: weir_core::metrics::Registry,
) -> Result<tokio::sync::watch::Sender<bool>> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind --metrics-addr {addr}"))?;
    let bound: SocketAddr = listener.local_addr()?;
    println!("weir ship: metrics listening on {bound}");
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let r = registry.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    r.render(),
                )
            }
        }),
    );
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::listener::serve(
            listener,
            app,
            &weir_core::serving::HttpConfig::default(),
            None,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )
        .await;
    });
    Ok(tx)
}

/// Resolves on SIGTERM or SIGINT; installed when called.
fn shutdown_signal(
) -> std::io::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(Box::pin(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }))
}
