//! Weir's transport layer: a partitioned, durable, append-only log.
//!
//! Layout:
//! - [`Log`]: the narrow trait every transport implements (append with a durable ack,
//!   read from an offset, wait for data, release what consumers have durably processed).
//! - [`redb_log`]: [`RedbLog`], the embedded implementation on one redb file with a
//!   group committer thread (many requests, one fsync).
//!
//! Offsets are per partition and per record: an entry (one [`Batch`]) of `count` records
//! appended at offset `o` covers `o..o+count`, and the next entry starts at `o+count`.
//! Consumers always read and release at entry boundaries.
//!
//! Idempotency keys ([`Log::append_once`]) are remembered per tenant in the same
//! transaction as the entries they cover, for a bounded time and count.
//!
//! Invariants:
//! - An append's receiver resolves `Ok` only after the write transaction holding it has
//!   been committed with fsync (redb `Durability::Immediate`).
//! - Offsets never go backwards or repeat, across restarts and retention (the next offset
//!   of each partition is persisted in the same transaction as the entries).
//! - Retention never deletes an entry that its consumer has not released.

pub mod redb_log;

use std::time::Duration;

use thiserror::Error;
use weir_core::Batch;

pub use redb_log::{RedbLog, RedbLogOptions};

/// Where one batch of an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub first_offset: u64,
    pub count: u32,
}

/// One entry read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Offset of the first record of the entry.
    pub offset: u64,
    pub batch: Batch,
}

impl Entry {
    /// The offset right after this entry.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.batch.count)
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum LogError {
    #[error("the commit queue is full; retry later")]
    Backpressure,
    #[error("partition {partition} has {lag_bytes} unprocessed bytes; retry later")]
    Lagging { partition: u32, lag_bytes: u64 },
    #[error("no space left on the log's disk: {0}")]
    DiskFull(String),
    #[error("log storage error: {0}")]
    Storage(String),
    #[error("the log is shut down")]
    Closed,
    #[error("no partition {0}")]
    NoPartition(u32),
    #[error("corrupt entry in partition {partition} at offset {offset}: {reason}")]
    Corrupt {
        partition: u32,
        offset: u64,
        reason: String,
    },
}

/// Resolves when the appended batches are durable (or failed).
pub type AppendWait = tokio::sync::oneshot::Receiver<Result<Vec<Appended>, LogError>>;

/// An append a client may retry: its idempotency key, remembered for its tenant in the
/// same transaction as the entries, with the answer the first attempt was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    pub tenant: String,
    pub key: String,
    /// What the request held: the same key with another fingerprint is another request.
    pub fingerprint: u64,
    /// The answer to give every retry (opaque to the log).
    pub answer: Vec<u8>,
}

/// What the log remembers of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub fingerprint: u64,
    pub answer: Vec<u8>,
}

/// The result of [`Log::append_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnceOutcome {
    /// Appended now (durable).
    Appended(Vec<Appended>),
    /// The key was remembered: nothing was appended.
    Repeated(Remembered),
}

/// Resolves when an [`Log::append_once`] is durable, repeated, or failed.
pub type OnceWait = tokio::sync::oneshot::Receiver<Result<OnceOutcome, LogError>>;

/// Per-partition figures for metrics and backpressure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionStats {
    pub first_offset: u64,
    pub end_offset: u64,
    pub released: u64,
    pub retained_bytes: u64,
    pub lag_bytes: u64,
}

/// A partitioned, durable log.
pub trait Log: Send + Sync + 'static {
    /// Number of partitions (fixed for the life of the log).
    fn partitions(&self) -> u32;

    /// Queue batches for appending, each to its partition, all in one transaction.
    /// Fails at once with [`LogError::Backpressure`] or [`LogError::Lagging`] when the
    /// log cannot take more; otherwise the returned receiver resolves once durable.
    fn append(&self, items: Vec<(u32, Batch)>) -> Result<AppendWait, LogError>;

    /// [`Log::append`] under an idempotency key: if `once.key` is remembered for its
    /// tenant, nothing is appended and the remembered answer comes back; otherwise the
    /// entries and the key are written in one transaction.
    fn append_once(&self, items: Vec<(u32, Batch)>, once: Once) -> Result<OnceWait, LogError>;

    /// What is remembered of `tenant`'s `key` (a read; [`Log::append_once`] decides).
    fn remembered(&self, tenant: &str, key: &str) -> Result<Option<Remembered>, LogError>;

    /// Entries of `partition` starting at `from` (an entry boundary), until at least
    /// `max_records` records or the end.
    fn read(&self, partition: u32, from: u64, max_records: usize) -> Result<Vec<Entry>, LogError>;

    /// The offset after the last durable entry of `partition`.
    fn end_offset(&self, partition: u32) -> u64;

    /// Block until `partition` has data at or after `offset`, or `timeout` passes.
    /// Returns whether data is there.
    fn wait_for(&self, partition: u32, offset: u64, timeout: Duration) -> bool;

    /// The consumer of `partition` has durably processed everything before `upto`:
    /// retention may delete it, and it no longer counts as lag.
    fn release(&self, partition: u32, upto: u64);

    fn stats(&self, partition: u32) -> PartitionStats;
}
