//! One TCP ingest connection: read, frame, batch, admit, and read again only after.
//!
//! Bytes are read in chunks of [`READ_CHUNK`] into the [`Framer`]; each frame becomes a
//! record of the batch ([`super::records`]). A batch is admitted through
//! [`crate::door::admit`] when it holds [`BATCH_RECORDS`] records or [`BATCH_BYTES`]
//! bytes, or when the connection has sent nothing more for [`LINGER`]. While a batch is
//! admitted, the connection is not read, so a sender faster than the log fills the
//! kernel's window and waits: TCP's own backpressure, with memory bounded by one read,
//! one frame and one batch per connection (the batch also takes its share of the node's
//! ingest memory budget, `door::reserve`).
//!
//! A busy log (429: lag, commit queue, memory budget) or a failing one (503, 500) is
//! retried with the same batch after a backoff doubling from [`BACKOFF_MIN`] to
//! [`BACKOFF_MAX`], for as long as the server runs: records TCP acknowledged are never
//! dropped quietly. At shutdown a connection stops reading once it has taken what the
//! kernel already holds (at most [`DRAIN_AT_STOP`]), admits that, and closes; a batch
//! that still cannot be admitted then is logged as an error with its size. Bytes the
//! client sends after that, and a frame cut in the middle, are not read: the client
//! sees its connection reset (plain TCP has no acknowledgement of its own).
//!
//! A bad frame (refused by the framer, the syslog parser or the door's record rules)
//! costs only itself: it is counted (`weir_tcp_frames_rejected_total{reason}` and
//! `weir_ingest_records_rejected_total`) and logged at most once a second per
//! connection, with how many there were since; the connection stays open.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::framing::{Framer, Mode};
use super::Ctx;
use crate::server::now_ms;
use weir_core::listeners::TcpFormat;

/// Bytes read from the socket at once.
pub const READ_CHUNK: usize = 64 << 10;
/// Most records in one admitted batch.
pub const BATCH_RECORDS: usize = crate::door::ENTRY_RECORDS;
/// A batch is admitted once it holds this many bytes of records.
pub const BATCH_BYTES: usize = 1 << 20;
/// A batch is admitted when the connection sends nothing more for this long.
pub const LINGER: Duration = Duration::from_millis(10);
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// At shutdown, a connection still takes up to this many bytes the kernel has already
/// received (and acknowledged) before it closes.
pub const DRAIN_AT_STOP: usize = 4 << 20;
/// At most one warning per connection this often about bad frames or a busy log.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Rate-limited warnings of one connection.
struct Warner {
    last: Option<Instant>,
    /// Bad frames since the last warning, and the last reason.
    bad: u64,
    reason: String,
}

impl Warner {
    fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }

    fn bad_frame(&mut self, ctx: &Ctx, peer: SocketAddr, why: &dyn std::fmt::Display) {
        self.bad += 1;
        self.reason.clear();
        use std::fmt::Write;
        let _ = write!(self.reason, "{why}");
        if self.due() {
            self.report(ctx, peer);
        }
    }

    fn report(&mut self, ctx: &Ctx, peer: SocketAddr) {
        if self.bad > 0 {
            tracing::warn!(
                %peer,
                listener = %ctx.name,
                tenant = %ctx.spec.tenant,
                bad_frames = self.bad,
                last_reason = %self.reason,
                "rejected frames on a TCP ingest connection"
            );
            self.bad = 0;
        }
    }
}

struct Conn<'a> {
    ctx: &'a Ctx,
    peer: SocketAddr,
    format: TcpFormat,
    batch: Vec<u8>,
    count: usize,
    warn: Warner,
    stop: watch::Receiver<bool>,
}

enum Read {
    Data(usize),
    Eof,
    Idle,
    Failed(std::io::Error),
    Stop,
}

/// Serve one connection until the peer closes it, it idles past `[tcp]
/// idle_timeout_secs`, or the server stops.
pub async fn run(mut stream: TcpStream, peer: SocketAddr, ctx: &Ctx, stop: watch::Receiver<bool>) {
    let mode = match ctx.spec.format {
        TcpFormat::Ndjson => Mode::Lines,
        TcpFormat::Syslog | TcpFormat::Auto => Mode::Syslog,
    };
    let mut framer = Framer::new(mode, ctx.state.config.ingest.max_record_bytes);
    let mut c = Conn {
        ctx,
        peer,
        format: ctx.spec.format,
        batch: Vec::new(),
        count: 0,
        warn: Warner {
            last: None,
            bad: 0,
            reason: String::new(),
        },
        stop,
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    tracing::debug!(%peer, listener = %ctx.name, "TCP ingest connection");
    loop {
        let wait = if c.count == 0 { ctx.idle } else { LINGER };
        let read = tokio::select! {
            biased;
            _ = super::stopped(&mut c.stop) => Read::Stop,
            r = tokio::time::timeout(wait, stream.read(&mut chunk)) => match r {
                Err(_) => Read::Idle,
                Ok(Ok(0)) => Read::Eof,
                Ok(Ok(n)) => Read::Data(n),
                Ok(Err(e)) => Read::Failed(e),
            },
        };
        match read {
            Read::Data(n) => {
                crate::server::count_body(&ctx.state, &ctx.spec.tenant, n);
                framer.push(&chunk[..n]);
                c.take_frames(&mut framer, false).await;
            }
            Read::Idle if c.count > 0 => c.flush().await,
            Read::Idle => {
                tracing::debug!(%peer, listener = %ctx.name, "idle TCP ingest connection closed");
                break;
            }
            Read::Eof => {
                c.take_frames(&mut framer, true).await;
                break;
            }
            Read::Failed(e) => {
                tracing::debug!(%peer, listener = %ctx.name, error = %e, "TCP ingest connection failed");
                break;
            }
            Read::Stop => {
                // What the kernel already acknowledged, up to a bound, is taken too.
                let mut left = DRAIN_AT_STOP;
                while left > 0 {
                    match stream.try_read(&mut chunk) {
                        Ok(0) => {
                            c.take_frames(&mut framer, true).await;
                            break;
                        }
                        Ok(n) => {
                            crate::server::count_body(&ctx.state, &ctx.spec.tenant, n);
                            framer.push(&chunk[..n]);
                            c.take_frames(&mut framer, false).await;
                            left = left.saturating_sub(n);
                        }
                        Err(_) => break,
                    }
                }
                if framer.buffered() > 0 {
                    tracing::warn!(%peer, listener = %ctx.name, bytes = framer.buffered(), "shutdown: the connection's unfinished frame is dropped");
                }
                break;
            }
        }
    }
    // The batch in hand, whatever ended the connection.
    c.flush().await;
    c.warn.report(ctx, peer);
}

impl Conn<'_> {
    /// Turn the complete frames (at the end of the stream, the last one too) into
    /// records, admitting each full batch before taking more.
    async fn take_frames(&mut self, framer: &mut Framer, eof: bool) {
        let now = now_ms();
        loop {
            let next = match framer.next() {
                Some(f) => f,
                None if eof => match framer.finish() {
                    Some(f) => f,
                    None => break,
                },
                None => break,
            };
            match next {
                Ok(r) => {
                    let frame = framer.frame(r);
                    if frame.is_empty() {
                        continue;
                    }
                    self.ctx.frames.inc();
                    let before = self.batch.len();
                    match super::records::append(self.format, frame, now, &mut self.batch) {
                        Ok(()) => self.count += 1,
                        Err(e) => {
                            self.batch.truncate(before);
                            self.reject(e.reason(), &e);
                        }
                    }
                }
                Err(e) => {
                    self.ctx.frames.inc();
                    self.reject(e.reason(), &e);
                }
            }
            if self.count >= BATCH_RECORDS || self.batch.len() >= BATCH_BYTES {
                self.flush().await;
            }
        }
    }

    fn reject(&mut self, reason: &str, why: &dyn std::fmt::Display) {
        self.ctx.rejected(reason, 1);
        self.ctx.state.m.rejected(&self.ctx.spec.tenant, 1);
        self.warn.bad_frame(self.ctx, self.peer, why);
    }

    /// Admit the batch, retrying while the log refuses it (see the module docs).
    async fn flush(&mut self) {
        if self.count == 0 {
            self.batch.clear();
            return;
        }
        let state = &self.ctx.state;
        let mut backoff = BACKOFF_MIN;
        loop {
            let res = match crate::door::reserve(state, self.batch.len()) {
                Ok(_permit) => {
                    crate::door::admit(state, &self.ctx.target, &self.batch, now_ms()).await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(parsed) => {
                    if parsed.rejected > 0 {
                        self.ctx.rejected("record", parsed.rejected as u64);
                        self.warn.bad += parsed.rejected as u64 - 1;
                        let why = parsed
                            .errors
                            .first()
                            .map_or_else(String::new, |e| e.reason.clone());
                        self.warn.bad_frame(self.ctx, self.peer, &why);
                    }
                    break;
                }
                Err(e) => {
                    // A dropped sender means stopping too.
                    let stopping = *self.stop.borrow() || self.stop.has_changed().is_err();
                    if stopping {
                        tracing::error!(
                            peer = %self.peer,
                            listener = %self.ctx.name,
                            tenant = %self.ctx.spec.tenant,
                            records = self.count,
                            error = %e.message(),
                            "shutdown: a TCP batch could not be admitted and is lost"
                        );
                        break;
                    }
                    self.ctx.retries.inc();
                    if self.warn.due() {
                        tracing::warn!(
                            peer = %self.peer,
                            listener = %self.ctx.name,
                            status = %e.status(),
                            error = %e.message(),
                            retry_in_ms = backoff.as_millis() as u64,
                            "the log refused a TCP batch; the connection waits"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        // One more try right away, then give up.
                        _ = super::stopped(&mut self.stop) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.batch.clear();
        self.count = 0;
    }
}
