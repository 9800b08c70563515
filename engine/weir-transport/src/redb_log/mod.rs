//! [`RedbLog`]: the embedded log on redb.
//!
//! One file, two tables: `entries` maps `(partition, first_offset)` to an encoded
//! [`Batch`]; `next` maps a partition to its next offset. A single committer thread owns
//! all writes: it takes every append waiting in its queue, writes them in one
//! transaction, commits with fsync, and only then answers each caller (group commit).
//! Between appends it applies retention. Idempotency keys ([`once`]) live in the same
//! file and are written by the same commits.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;
use weir_core::Batch;

use crate::{
    AppendWait, Appended, Entry, Log, LogError, Once, OnceOutcome, OnceWait, PartitionStats,
    Remembered,
};

mod once;

const ENTRIES: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("entries");
const NEXT: TableDefinition<u32, u64> = TableDefinition::new("next");

/// Tuning of a [`RedbLog`].
#[derive(Debug, Clone)]
pub struct RedbLogOptions {
    pub partitions: u32,
    /// Appends waiting for the committer; beyond it `append` fails with backpressure.
    pub queue: usize,
    /// Retention by size, per partition (released entries only).
    pub retention_bytes: u64,
    /// Retention by age (released entries only).
    pub retention: Duration,
    /// Unreleased bytes per partition beyond which `append` fails with `Lagging`.
    pub max_lag_bytes: u64,
    /// Most bytes written in one group commit.
    pub max_group_bytes: usize,
    /// How long idempotency keys are remembered.
    pub key_ttl: Duration,
    /// Most idempotency keys remembered per tenant (its oldest are forgotten first).
    pub keys_per_tenant: u64,
}

impl Default for RedbLogOptions {
    fn default() -> Self {
        RedbLogOptions {
            partitions: 4,
            queue: 4096,
            retention_bytes: 1 << 30,
            retention: Duration::from_secs(24 * 3600),
            max_lag_bytes: 256 << 20,
            max_group_bytes: 32 << 20,
            key_ttl: Duration::from_secs(24 * 3600),
            keys_per_tenant: 100_000,
        }
    }
}

/// What the log keeps in memory about a retained entry.
#[derive(Debug, Clone, Copy)]
struct EntryMeta {
    offset: u64,
    end: u64,
    bytes: u64,
    ingest_ts_ms: i64,
}

#[derive(Debug, Default)]
struct PartState {
    /// Retained entries, oldest first.
    entries: VecDeque<EntryMeta>,
    end: u64,
    released: u64,
    retained_bytes: u64,
    /// Bytes of entries at or after `released`.
    lag_bytes: u64,
}

struct Shared {
    parts: Mutex<Vec<PartState>>,
    grew: Condvar,
    db: Database,
    opts: RedbLogOptions,
    closed: AtomicBool,
}

struct Request {
    items: Vec<(u32, Batch)>,
    reply: Reply,
}

/// Who waits for an append, and for which kind of answer.
enum Reply {
    Plain(oneshot::Sender<Result<Vec<Appended>, LogError>>),
    Once(Once, oneshot::Sender<Result<OnceOutcome, LogError>>),
}

impl Reply {
    fn fail(self, e: LogError) {
        match self {
            Reply::Plain(tx) => drop(tx.send(Err(e))),
            Reply::Once(_, tx) => drop(tx.send(Err(e))),
        }
    }
}

/// The embedded log. Dropping it stops the committer after the queued appends.
pub struct RedbLog {
    shared: Arc<Shared>,
    tx: Mutex<Option<SyncSender<Request>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

fn storage_err(e: impl std::fmt::Display) -> LogError {
    let msg = e.to_string();
    if msg.contains("No space left") || msg.contains("os error 28") {
        LogError::DiskFull(msg)
    } else {
        LogError::Storage(msg)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl RedbLog {
    /// Open or create the log at `path`.
    pub fn open(path: &Path, opts: RedbLogOptions) -> Result<RedbLog, LogError> {
        let db = Database::create(path).map_err(storage_err)?;
        let mut parts: Vec<PartState> =
            (0..opts.partitions).map(|_| PartState::default()).collect();
        {
            let w = db.begin_write().map_err(storage_err)?;
            {
                let next = w.open_table(NEXT).map_err(storage_err)?;
                let stored = next.len().map_err(storage_err)?;
                if stored > u64::from(opts.partitions) {
                    return Err(LogError::Storage(format!(
                        "the log has {stored} partitions but {} are configured; the partition count cannot shrink",
                        opts.partitions
                    )));
                }
                for (p, st) in parts.iter_mut().enumerate() {
                    if let Some(v) = next.get(p as u32).map_err(storage_err)? {
                        st.end = v.value();
                    }
                }
                let entries = w.open_table(ENTRIES).map_err(storage_err)?;
                for row in entries.iter().map_err(storage_err)? {
                    let (k, v) = row.map_err(storage_err)?;
                    let (p, offset) = k.value();
                    let batch = Batch::decode(v.value()).map_err(|e| LogError::Corrupt {
                        partition: p,
                        offset,
                        reason: e.to_string(),
                    })?;
                    let st = parts.get_mut(p as usize).ok_or(LogError::NoPartition(p))?;
                    let bytes = v.value().len() as u64;
                    st.entries.push_back(EntryMeta {
                        offset,
                        end: offset + u64::from(batch.count),
                        bytes,
                        ingest_ts_ms: batch.ingest_ts_ms,
                    });
                    st.retained_bytes += bytes;
                    st.lag_bytes += bytes;
                }
            }
            w.commit().map_err(storage_err)?;
        }
        for st in &mut parts {
            st.released = st.entries.front().map_or(st.end, |e| e.offset);
        }
        let shared = Arc::new(Shared {
            parts: Mutex::new(parts),
            grew: Condvar::new(),
            db,
            opts: opts.clone(),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::sync_channel::<Request>(opts.queue);
        let s2 = shared.clone();
        let committer = std::thread::Builder::new()
            .name("weir-log-commit".into())
            .spawn(move || committer_loop(&s2, rx))
            .map_err(|e| LogError::Storage(format!("spawn committer: {e}")))?;
        Ok(RedbLog {
            shared,
            tx: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
        })
    }

    /// Stop taking appends, let the committer finish the queued ones, and wait for it.
    pub fn close(&self) {
        self.tx.lock().take();
        if let Some(h) = self.committer.lock().take() {
            let _ = h.join();
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.grew.notify_all();
    }
}

impl RedbLog {
    /// Queue an append for the committer, unless a partition lags or the queue is full.
    fn enqueue(&self, items: Vec<(u32, Batch)>, reply: Reply) -> Result<(), LogError> {
        {
            let parts = self.shared.parts.lock();
            for (p, _) in &items {
                let st = parts.get(*p as usize).ok_or(LogError::NoPartition(*p))?;
                if st.lag_bytes > self.shared.opts.max_lag_bytes {
                    return Err(LogError::Lagging {
                        partition: *p,
                        lag_bytes: st.lag_bytes,
                    });
                }
            }
        }
        let tx = self.tx.lock().clone().ok_or(LogError::Closed)?;
        match tx.try_send(Request { items, reply }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(LogError::Backpressure),
            Err(TrySendError::Disconnected(_)) => Err(LogError::Closed),
        }
    }
}

impl Drop for RedbLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn committer_loop(shared: &Shared, rx: mpsc::Receiver<Request>) {
    let mut last_retention = std::time::Instant::now();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                apply_retention(shared);
                expire_keys(shared);
                last_retention = std::time::Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut group = vec![first];
        let mut bytes: usize = group[0].items.iter().map(|(_, b)| b.encoded_len()).sum();
        while bytes < shared.opts.max_group_bytes {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.items.iter().map(|(_, b)| b.encoded_len()).sum::<usize>();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        commit_group(shared, group);
        if last_retention.elapsed() > Duration::from_secs(1) {
            apply_retention(shared);
            expire_keys(shared);
            last_retention = std::time::Instant::now();
        }
    }
}

fn commit_group(shared: &Shared, group: Vec<Request>) {
    let mut ends: Vec<u64> = shared.parts.lock().iter().map(|p| p.end).collect();
    // Per request: its acks, or the remembered answer of its key.
    let mut results: Vec<Result<Vec<Appended>, Remembered>> = Vec::with_capacity(group.len());
    let mut metas: Vec<(u32, EntryMeta)> = Vec::new();
    let now = now_ms();
    let outcome = (|| -> Result<(), LogError> {
        let w = shared.db.begin_write().map_err(storage_err)?;
        let mut keys = once::Keys::default();
        for req in &group {
            if let Reply::Once(o, _) = &req.reply {
                if let Some(r) = keys.seen(&w, o)? {
                    results.push(Err(r));
                    continue;
                }
                keys.remember(&w, o, now, shared.opts.keys_per_tenant)?;
            }
            let mut entries = w.open_table(ENTRIES).map_err(storage_err)?;
            let mut buf = Vec::new();
            let mut acks = Vec::with_capacity(req.items.len());
            for (p, batch) in &req.items {
                let offset = ends[*p as usize];
                buf.clear();
                batch.encode_into(&mut buf);
                entries
                    .insert((*p, offset), buf.as_slice())
                    .map_err(storage_err)?;
                let end = offset + u64::from(batch.count);
                ends[*p as usize] = end;
                acks.push(Appended {
                    partition: *p,
                    first_offset: offset,
                    count: batch.count,
                });
                metas.push((
                    *p,
                    EntryMeta {
                        offset,
                        end,
                        bytes: buf.len() as u64,
                        ingest_ts_ms: batch.ingest_ts_ms,
                    },
                ));
            }
            results.push(Ok(acks));
        }
        {
            let mut next = w.open_table(NEXT).map_err(storage_err)?;
            for (p, end) in ends.iter().enumerate() {
                next.insert(p as u32, *end).map_err(storage_err)?;
            }
        }
        w.commit().map_err(storage_err)?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            {
                let mut parts = shared.parts.lock();
                for (p, m) in metas {
                    let st = &mut parts[p as usize];
                    st.entries.push_back(m);
                    st.end = m.end;
                    st.retained_bytes += m.bytes;
                    st.lag_bytes += m.bytes;
                }
            }
            shared.grew.notify_all();
            for (req, res) in group.into_iter().zip(results) {
                match (req.reply, res) {
                    (Reply::Plain(tx), Ok(acks)) => drop(tx.send(Ok(acks))),
                    (Reply::Once(_, tx), Ok(acks)) => {
                        drop(tx.send(Ok(OnceOutcome::Appended(acks))))
                    }
                    (Reply::Once(_, tx), Err(r)) => drop(tx.send(Ok(OnceOutcome::Repeated(r)))),
                    (Reply::Plain(tx), Err(_)) => drop(tx.send(Err(LogError::Storage(
                        "an append without a key was answered as a repeat".into(),
                    )))),
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "log commit failed; appends answered with an error");
            for req in group {
                req.reply.fail(e.clone());
            }
        }
    }
}

/// Forget idempotency keys older than their time to live.
fn expire_keys(shared: &Shared) {
    let cutoff = now_ms().saturating_sub(shared.opts.key_ttl.as_millis() as i64);
    let res = (|| -> Result<usize, LogError> {
        if !once::any_expired(&shared.db, cutoff)? {
            return Ok(0);
        }
        let w = shared.db.begin_write().map_err(storage_err)?;
        let n = once::expire(&w, cutoff)?;
        w.commit().map_err(storage_err)?;
        Ok(n)
    })();
    match res {
        Ok(0) => {}
        Ok(n) => tracing::debug!(keys = n, "idempotency keys expired"),
        Err(e) => tracing::warn!(error = %e, "expiring idempotency keys failed; will retry"),
    }
}

/// Delete released entries beyond the size or age bound, oldest first.
fn apply_retention(shared: &Shared) {
    let cutoff = now_ms() - shared.opts.retention.as_millis() as i64;
    let mut doomed: Vec<(u32, EntryMeta)> = Vec::new();
    {
        let parts = shared.parts.lock();
        for (p, st) in parts.iter().enumerate() {
            let mut bytes = st.retained_bytes;
            for e in &st.entries {
                let over = bytes > shared.opts.retention_bytes || e.ingest_ts_ms < cutoff;
                if !over || e.end > st.released {
                    break;
                }
                bytes -= e.bytes;
                doomed.push((p as u32, *e));
            }
        }
    }
    if doomed.is_empty() {
        return;
    }
    let res = (|| -> Result<(), LogError> {
        let w = shared.db.begin_write().map_err(storage_err)?;
        {
            let mut entries = w.open_table(ENTRIES).map_err(storage_err)?;
            for (p, e) in &doomed {
                entries.remove((*p, e.offset)).map_err(storage_err)?;
            }
        }
        w.commit().map_err(storage_err)
    })();
    match res {
        Ok(()) => {
            let mut parts = shared.parts.lock();
            for (p, e) in &doomed {
                let st = &mut parts[*p as usize];
                if st.entries.front().map(|f| f.offset) == Some(e.offset) {
                    st.entries.pop_front();
                    st.retained_bytes -= e.bytes;
                }
            }
            tracing::debug!(entries = doomed.len(), "log retention deleted entries");
        }
        Err(e) => tracing::warn!(error = %e, "log retention failed; will retry"),
    }
}

impl Log for RedbLog {
    fn partitions(&self) -> u32 {
        self.shared.opts.partitions
    }

    fn append(&self, items: Vec<(u32, Batch)>) -> Result<AppendWait, LogError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(items, Reply::Plain(reply))?;
        Ok(rx)
    }

    fn append_once(&self, items: Vec<(u32, Batch)>, once: Once) -> Result<OnceWait, LogError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(items, Reply::Once(once, reply))?;
        Ok(rx)
    }

    fn remembered(&self, tenant: &str, key: &str) -> Result<Option<Remembered>, LogError> {
        let r = self.shared.db.begin_read().map_err(storage_err)?;
        let keys = match r.open_table(once::KEYS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage_err(e)),
        };
        let got = keys.get((tenant, key)).map_err(storage_err)?;
        Ok(got.and_then(|v| once::decode(v.value())))
    }

    fn read(&self, partition: u32, from: u64, max_records: usize) -> Result<Vec<Entry>, LogError> {
        if partition >= self.partitions() {
            return Err(LogError::NoPartition(partition));
        }
        let r = self.shared.db.begin_read().map_err(storage_err)?;
        let table = match r.open_table(ENTRIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage_err(e)),
        };
        let mut out = Vec::new();
        let mut records = 0usize;
        for row in table
            .range((partition, from)..=(partition, u64::MAX))
            .map_err(storage_err)?
        {
            let (k, v) = row.map_err(storage_err)?;
            let offset = k.value().1;
            let batch = Batch::decode(v.value()).map_err(|e| LogError::Corrupt {
                partition,
                offset,
                reason: e.to_string(),
            })?;
            records += batch.count as usize;
            out.push(Entry { offset, batch });
            if records >= max_records {
                break;
            }
        }
        Ok(out)
    }

    fn end_offset(&self, partition: u32) -> u64 {
        self.shared
            .parts
            .lock()
            .get(partition as usize)
            .map_or(0, |p| p.end)
    }

    fn wait_for(&self, partition: u32, offset: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut parts = self.shared.parts.lock();
        loop {
            match parts.get(partition as usize) {
                Some(p) if p.end > offset => return true,
                None => return false,
                _ => {}
            }
            if self.shared.closed.load(Ordering::SeqCst)
                || self
                    .shared
                    .grew
                    .wait_until(&mut parts, deadline)
                    .timed_out()
            {
                return parts
                    .get(partition as usize)
                    .is_some_and(|p| p.end > offset);
            }
        }
    }

    fn release(&self, partition: u32, upto: u64) {
        let mut parts = self.shared.parts.lock();
        let Some(st) = parts.get_mut(partition as usize) else {
            return;
        };
        if upto <= st.released {
            return;
        }
        // Entries wholly before `upto` stop counting as lag.
        let start = st.entries.partition_point(|e| e.offset < st.released);
        let freed: u64 = st
            .entries
            .range(start..)
            .take_while(|e| e.end <= upto)
            .map(|e| e.bytes)
            .sum();
        st.lag_bytes = st.lag_bytes.saturating_sub(freed);
        st.released = upto;
    }

    fn stats(&self, partition: u32) -> PartitionStats {
        let parts = self.shared.parts.lock();
        parts
            .get(partition as usize)
            .map_or_else(PartitionStats::default, |st| PartitionStats {
                first_offset: st.entries.front().map_or(st.end, |e| e.offset),
                end_offset: st.end,
                released: st.released,
                retained_bytes: st.retained_bytes,
                lag_bytes: st.lag_bytes,
            })
    }
}

#[cfg(test)]
mod tests;
