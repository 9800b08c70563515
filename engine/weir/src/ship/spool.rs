//! The spool: a bounded on-disk queue of compressed batches waiting for the server's
//! acknowledgement, and the file positions that go with them.
//!
//! Layout of `--spool DIR`:
//! - `batches/SEQ.batch`: one file per batch (`SEQ` is 16 hex digits, so names sort in
//!   order). A header line `weir-ship-batch 1`, one JSON line ([`Header`]: sequence
//!   number, idempotency key, line count, checksum of the body, and the end position of
//!   every file whose lines it holds), then the gzip body exactly as it is sent. Written
//!   to `SEQ.tmp`, fsynced, renamed, directory fsynced: a batch is in the spool whole or
//!   not at all; `*.tmp` files left by a crash are deleted at start.
//! - `positions.json`: the positions of files whose batches have left the spool
//!   (acknowledged, moved aside or dropped), each with the sequence number of the batch
//!   that carried it; replaced atomically (tmp, fsync, rename, directory fsync) before
//!   the batch file is deleted.
//! - `rejected/`: batches the server refused as a whole, with a `.reason` file each.
//!
//! A file's position at start is the one with the highest sequence number among
//! `positions.json` and the spooled batches. The batch file *is* the durable advance of
//! its positions: lines read but not yet spooled are read again after a crash, lines
//! spooled are never read again (see the exactly-once argument in [`super`]).
//!
//! Bound: the sum of batch file sizes stays under `max_bytes` (a single batch larger
//! than the bound is let in when the spool is empty, or nothing would move). When a new
//! batch does not fit: [`WhenFull::Block`] makes [`Spool::push`] wait until the sender
//! frees room (the sources are not read meanwhile); [`WhenFull::DropOldest`] deletes the
//! oldest batches that are not being sent until it fits, counting their lines in
//! `weir_ship_dropped_lines_total{reason="spool_full"}`.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::metrics::{DropReason, ShipMetrics};

const MAGIC: &[u8] = b"weir-ship-batch 1\n";

/// A file as the tailer knows it: device and inode.
pub type FileId = (u64, u64);

/// How far a file's lines have been spooled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    /// The fingerprint covers the file's first `fp_len` bytes (at most
    /// [`super::tail::FP_LEN`]), so a new file that reuses the inode is told apart.
    pub fp_len: u32,
    pub fp_hash: u64,
    /// Byte offset after the last line spooled.
    pub offset: u64,
    /// Where the file was last seen (to find it again after a rename).
    pub path: PathBuf,
}

impl Position {
    pub fn id(&self) -> FileId {
        (self.dev, self.ino)
    }
}

/// What the spool does with a batch that does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenFull {
    /// Wait for room: the sources are not read meanwhile (files lose nothing; stdin
    /// stops being read, so its writer blocks).
    Block,
    /// Delete the oldest batches not being sent, and count their lines as dropped.
    DropOldest,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool batch {path} is damaged: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("the spool is closed")]
    Closed,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The JSON line after the magic line of a batch file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub seq: u64,
    /// The `Idempotency-Key` this batch is always sent with.
    pub key: String,
    pub lines: u32,
    /// FNV-1a 64 of the body.
    pub body_hash: u64,
    pub positions: Vec<Position>,
}

/// A batch handed to the sender.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: u64,
    pub key: String,
    pub lines: u32,
    /// The gzip body.
    pub body: Vec<u8>,
}

struct Entry {
    path: PathBuf,
    bytes: u64,
    lines: u32,
    key: String,
    positions: Vec<Position>,
}

#[derive(Default, Serialize, Deserialize)]
struct PositionsFile {
    /// Sequence numbers below this were used (a restart continues above).
    next_seq: u64,
    positions: Vec<(u64, Position)>,
}

struct State {
    queue: BTreeMap<u64, Entry>,
    next_seq: u64,
    /// Bytes of the batch files, plus the ones being written.
    bytes: u64,
    inflight: Option<u64>,
    /// Positions of batches that left the spool, with their batch's sequence number.
    done: BTreeMap<FileId, (u64, Position)>,
    /// Files the tailer closed: their position goes once no spooled batch holds it.
    forget: HashSet<FileId>,
    closed: bool,
}

/// What [`Spool::open`] found.
pub struct Recovered {
    /// The latest position of every file, from positions.json and the spooled batches.
    pub positions: Vec<Position>,
    pub batches: usize,
    pub corrupt: usize,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    policy: WhenFull,
    /// Random per process: with the sequence number, the idempotency key of new batches.
    run_id: String,
    state: Mutex<State>,
    room: Condvar,
    ready: tokio::sync::Notify,
    m: Arc<ShipMetrics>,
}

/// FNV-1a, 64 bits: a stable checksum for batch bodies and file fingerprints.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Write `bytes` to `path` atomically and durably: tmp file, fsync, rename, fsync dir.
fn write_atomic(path: &Path, tmp: &Path, parts: &[&[u8]]) -> Result<(), SpoolError> {
    let mut f = File::create(tmp).map_err(io_err(tmp))?;
    for p in parts {
        f.write_all(p).map_err(io_err(tmp))?;
    }
    f.sync_all().map_err(io_err(tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(io_err(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()) << 40) ^ fastrand::u64(..);
    format!("{:016x}{:016x}", fastrand::u64(..), mixed)
}

/// Read a batch file: its header and body, checked.
fn read_batch(path: &Path) -> Result<(Header, Vec<u8>), SpoolError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let corrupt = |why: &str| SpoolError::Corrupt {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt("not a batch file"))?;
    let nl = memchr::memchr(b'\n', rest).ok_or_else(|| corrupt("no header"))?;
    let header: Header =
        serde_json::from_slice(&rest[..nl]).map_err(|e| corrupt(&format!("header: {e}")))?;
    let body = rest[nl + 1..].to_vec();
    if fnv64(&body) != header.body_hash {
        return Err(corrupt("body checksum mismatch"));
    }
    Ok((header, body))
}

fn seq_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    u64::from_str_radix(name.strip_suffix(".batch")?, 16).ok()
}

impl Spool {
    /// Open (or create) the spool in `dir` and recover what a previous run left.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        policy: WhenFull,
        m: Arc<ShipMetrics>,
    ) -> Result<(Spool, Recovered), SpoolError> {
        let batches = dir.join("batches");
        fs::create_dir_all(&batches).map_err(io_err(&batches))?;
        let rejected = dir.join("rejected");
        fs::create_dir_all(&rejected).map_err(io_err(&rejected))?;
        let pos_path = dir.join("positions.json");
        let pf: PositionsFile = match fs::read(&pos_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| SpoolError::Corrupt {
                path: pos_path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => PositionsFile::default(),
            Err(e) => return Err(io_err(&pos_path)(e)),
        };
        let mut state = State {
            queue: BTreeMap::new(),
            next_seq: pf.next_seq,
            bytes: 0,
            inflight: None,
            done: BTreeMap::new(),
            forget: HashSet::new(),
            closed: false,
        };
        for (seq, p) in pf.positions {
            state.next_seq = state.next_seq.max(seq + 1);
            state.done.insert(p.id(), (seq, p));
        }
        let mut paths: Vec<PathBuf> = fs::read_dir(&batches)
            .map_err(io_err(&batches))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        let mut corrupt = 0;
        for path in paths {
            if path.extension().is_some_and(|e| e == "tmp") {
                // Never renamed: its lines were never spooled and will be read again.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let Some(seq) = seq_of(&path) else { continue };
            match read_batch(&path) {
                Ok((h, _)) if h.seq == seq => {
                    let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
                    state.next_seq = state.next_seq.max(seq + 1);
                    state.bytes += bytes;
                    state.queue.insert(
                        seq,
                        Entry {
                            path,
                            bytes,
                            lines: h.lines,
                            key: h.key,
                            positions: h.positions,
                        },
                    );
                }
                Ok(_) | Err(SpoolError::Corrupt { .. }) => {
                    // Bit rot or a foreign file: keep it for a human, never send it.
                    corrupt += 1;
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    let to = rejected.join(format!("{name}.corrupt"));
                    tracing::error!(path = %path.display(), to = %to.display(), "damaged spool batch moved aside");
                    fs::rename(&path, &to).map_err(io_err(&path))?;
                }
                Err(e) => return Err(e),
            }
        }
        let mut latest: BTreeMap<FileId, (u64, Position)> = state.done.clone();
        for (seq, e) in &state.queue {
            for p in &e.positions {
                if latest.get(&p.id()).is_none_or(|(s, _)| s < seq) {
                    latest.insert(p.id(), (*seq, p.clone()));
                }
            }
        }
        let recovered = Recovered {
            positions: latest.into_values().map(|(_, p)| p).collect(),
            batches: state.queue.len(),
            corrupt,
        };
        m.spool_bytes.set(state.bytes);
        m.spool_batches.set(state.queue.len() as u64);
        let spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            policy,
            run_id: run_id(),
            state: Mutex::new(state),
            room: Condvar::new(),
            ready: tokio::sync::Notify::new(),
            m,
        };
        Ok((spool, recovered))
    }

    /// Compress `ndjson` (`lines` lines) into a batch and write it durably with the
    /// file `positions` it advances to. Waits for room under [`WhenFull::Block`].
    /// Returns the batch's sequence number; on an error nothing was spooled (the caller
    /// keeps the lines and tries again).
    pub fn push(
        &self,
        ndjson: &[u8],
        lines: u32,
        positions: Vec<Position>,
    ) -> Result<u64, SpoolError> {
        let body = gzip(ndjson);
        let (seq, size, key) = {
            let mut st = self.state.lock();
            // The header's size is close to its final one; count a margin.
            let size = (body.len() + MAGIC.len() + 256 + positions.len() * 160) as u64;
            let mut blocked = false;
            loop {
                if st.closed {
                    return Err(SpoolError::Closed);
                }
                if st.bytes + size <= self.max_bytes || st.bytes == 0 {
                    break;
                }
                if self.policy == WhenFull::DropOldest {
                    let victim = st.queue.keys().copied().find(|s| Some(*s) != st.inflight);
                    if let Some(v) = victim {
                        self.remove(&mut st, v, Removal::Dropped)?;
                        continue;
                    }
                }
                if !blocked {
                    blocked = true;
                    self.m.blocked.inc();
                }
                self.room.wait(&mut st);
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            st.bytes += size;
            (seq, size, format!("{}-{seq:x}", self.run_id))
        };
        let header = Header {
            seq,
            key: key.clone(),
            lines,
            body_hash: fnv64(&body),
            positions: positions.clone(),
        };
        let mut head = serde_json::to_vec(&header).expect("a header serializes");
        head.push(b'\n');
        let path = self.dir.join("batches").join(format!("{seq:016x}.batch"));
        let tmp = path.with_extension("tmp");
        let written = write_atomic(&path, &tmp, &[MAGIC, &head, &body]);
        let mut st = self.state.lock();
        let actual = (MAGIC.len() + head.len() + body.len()) as u64;
        st.bytes -= size;
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            self.room.notify_all();
            return Err(e);
        }
        st.bytes += actual;
        st.queue.insert(
            seq,
            Entry {
                path,
                bytes: actual,
                lines,
                key,
                positions,
            },
        );
        self.gauges(&st);
        self.m.batches_spooled.inc();
        self.m.lines_spooled.add(u64::from(lines));
        drop(st);
        self.ready.notify_one();
        Ok(seq)
    }

    /// The oldest batch not being sent; waits for one. None once the spool is closed
    /// and (with `drain`) empty, or closed at all (without).
    pub async fn next(&self, drain: bool) -> Option<Outgoing> {
        loop {
            let pick = {
                let mut st = self.state.lock();
                if st.closed && !drain {
                    return None;
                }
                let pick = st
                    .queue
                    .iter()
                    .find(|(s, _)| Some(**s) != st.inflight)
                    .map(|(s, e)| (*s, e.path.clone(), e.key.clone(), e.lines));
                match pick {
                    Some(p) => {
                        st.inflight = Some(p.0);
                        Some(p)
                    }
                    None if st.closed && st.queue.is_empty() => return None,
                    None => None,
                }
            };
            let Some((seq, path, key, lines)) = pick else {
                self.ready.notified().await;
                continue;
            };
            match read_batch(&path) {
                Ok((_, body)) => {
                    return Some(Outgoing {
                        seq,
                        key,
                        lines,
                        body,
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "a spooled batch cannot be read; moving it aside");
                    let moved = {
                        let mut st = self.state.lock();
                        st.inflight = None;
                        self.remove(&mut st, seq, Removal::Rejected(e.to_string()))
                    };
                    if let Err(e) = moved {
                        tracing::error!(error = %e, "could not move the batch aside");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// The server acknowledged `seq`: its positions are recorded, its file deleted.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut st = self.state.lock();
        if st.inflight == Some(seq) {
            st.inflight = None;
        }
        self.remove(&mut st, seq, Removal::Acked)
    }

    /// The server refused `seq` as a whole: moved to `rejected/` with `why`.
    pub fn reject(&self, seq: u64, why: &str) -> Result<(), SpoolError> {
        let mut st = self.state.lock();
        if st.inflight == Some(seq) {
            st.inflight = None;
        }
        self.remove(&mut st, seq, Removal::Rejected(why.to_owned()))
    }

    /// `seq` is no longer being sent (shutdown): it stays spooled.
    pub fn release(&self, seq: u64) {
        let mut st = self.state.lock();
        if st.inflight == Some(seq) {
            st.inflight = None;
        }
        drop(st);
        self.ready.notify_one();
    }

    /// The tailer closed this file for good: drop its position once no spooled batch
    /// holds it (so `positions.json` does not grow with every rotated file).
    pub fn forget(&self, id: FileId) {
        let mut st = self.state.lock();
        st.forget.insert(id);
    }

    /// No more batches: [`Spool::push`] fails and waiting pushes return.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.room.notify_all();
        self.ready.notify_one();
    }

    pub fn is_empty(&self) -> bool {
        self.state.lock().queue.is_empty()
    }

    fn gauges(&self, st: &State) {
        self.m.spool_bytes.set(st.bytes);
        self.m.spool_batches.set(st.queue.len() as u64);
    }

    /// Take `seq` out of the queue: its positions go to positions.json first (durably),
    /// then the file is deleted or moved aside.
    fn remove(&self, st: &mut State, seq: u64, how: Removal) -> Result<(), SpoolError> {
        let Some(entry) = st.queue.get(&seq) else {
            return Ok(());
        };
        let mut done = st.done.clone();
        for p in &entry.positions {
            if done.get(&p.id()).is_none_or(|(s, _)| *s < seq) {
                done.insert(p.id(), (seq, p.clone()));
            }
        }
        // Forgotten files no other spooled batch holds.
        let held: HashSet<FileId> = st
            .queue
            .iter()
            .filter(|(s, _)| **s != seq)
            .flat_map(|(_, e)| e.positions.iter().map(Position::id))
            .collect();
        let gone: Vec<FileId> = st
            .forget
            .iter()
            .copied()
            .filter(|id| !held.contains(id))
            .collect();
        for id in &gone {
            done.remove(id);
        }
        if !entry.positions.is_empty() || !gone.is_empty() {
            let pf = PositionsFile {
                next_seq: st.next_seq,
                positions: done.values().cloned().collect(),
            };
            let bytes = serde_json::to_vec(&pf).expect("positions serialize");
            let path = self.dir.join("positions.json");
            write_atomic(&path, &self.dir.join("positions.tmp"), &[&bytes])?;
        }
        st.done = done;
        for id in gone {
            st.forget.remove(&id);
        }
        let entry = st.queue.remove(&seq).expect("checked above");
        match how {
            Removal::Acked => {
                if let Err(e) = fs::remove_file(&entry.path) {
                    // Left behind it would be sent again: harmless (same key), but say so.
                    tracing::warn!(path = %entry.path.display(), error = %e, "could not delete an acknowledged batch");
                }
            }
            Removal::Dropped => {
                self.m
                    .dropped(DropReason::SpoolFull, u64::from(entry.lines), entry.bytes);
                tracing::warn!(
                    seq,
                    lines = entry.lines,
                    "spool full: dropped the oldest batch"
                );
                fs::remove_file(&entry.path).map_err(io_err(&entry.path))?;
            }
            Removal::Rejected(why) => {
                let name = entry
                    .path
                    .file_name()
                    .map(|n| n.to_owned())
                    .unwrap_or_default();
                let to = self.dir.join("rejected").join(&name);
                fs::rename(&entry.path, &to).map_err(io_err(&entry.path))?;
                let reason = to.with_extension("reason");
                let text = format!("key {}\n{why}\n", entry.key);
                fs::write(&reason, text).map_err(io_err(&reason))?;
                self.m.dead_batches.inc();
                self.m.dead_lines.add(u64::from(entry.lines));
            }
        }
        st.bytes -= entry.bytes.min(st.bytes);
        self.gauges(st);
        self.room.notify_all();
        Ok(())
    }
}

enum Removal {
    Acked,
    Dropped,
    Rejected(String),
}

/// gzip at the fastest level: the shipper's CPU goes to reading and sending, and NDJSON
/// logs still shrink several times.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    e.write_all(bytes).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use weir_core::metrics::Registry;

    fn metrics() -> Arc<ShipMetrics> {
        Arc::new(ShipMetrics::new(&Registry::default()))
    }

    fn pos(ino: u64, offset: u64) -> Position {
        Position {
            dev: 1,
            ino,
            fp_len: 0,
            fp_hash: 0,
            offset,
            path: PathBuf::from(format!("/x/{ino}")),
        }
    }

    fn unzip(b: &[u8]) -> String {
        let mut s = String::new();
        flate2::read::GzDecoder::new(b)
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_restart_resends_the_same_keys_and_bodies_and_resumes_positions() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let (s, rec) = Spool::open(dir.path(), 1 << 20, WhenFull::Block, m.clone()).unwrap();
        assert!(rec.positions.is_empty());
        s.push(b"{\"n\":1}\n", 1, vec![pos(7, 8)]).unwrap();
        s.push(b"{\"n\":2}\n", 1, vec![pos(7, 16)]).unwrap();
        s.push(b"{\"n\":3}\n", 1, vec![pos(9, 8)]).unwrap();
        let first = rt().block_on(s.next(false)).unwrap();
        assert_eq!(unzip(&first.body), "{\"n\":1}\n");
        s.ack(first.seq).unwrap();
        let second = rt().block_on(s.next(false)).unwrap();
        // A crash here: the second batch was sent, not acknowledged.
        drop(s);
        std::fs::write(dir.path().join("batches/00000000000000ff.tmp"), b"junk").unwrap();
        let (s2, rec) = Spool::open(dir.path(), 1 << 20, WhenFull::Block, metrics()).unwrap();
        assert_eq!(rec.batches, 2);
        let mut ps = rec.positions.clone();
        ps.sort_by_key(|p| p.ino);
        assert_eq!(ps, vec![pos(7, 16), pos(9, 8)]);
        assert!(!dir.path().join("batches/00000000000000ff.tmp").exists());
        let again = rt().block_on(s2.next(false)).unwrap();
        assert_eq!((again.seq, &again.key), (second.seq, &second.key));
        assert_eq!(again.body, second.body);
        s2.ack(again.seq).unwrap();
        let third = rt().block_on(s2.next(false)).unwrap();
        s2.ack(third.seq).unwrap();
        // New batches continue above every sequence number used, with new keys.
        let seq = s2.push(b"{}\n", 1, vec![pos(7, 19)]).unwrap();
        assert!(seq > third.seq);
        let fresh = rt().block_on(s2.next(false)).unwrap();
        assert_ne!(fresh.key, second.key);
        drop(s2);
        let (_, rec) = Spool::open(dir.path(), 1 << 20, WhenFull::Block, metrics()).unwrap();
        let mut ps = rec.positions;
        ps.sort_by_key(|p| p.ino);
        assert_eq!(ps, vec![pos(7, 19), pos(9, 8)]);
    }

    #[test]
    fn block_waits_for_room_and_drop_oldest_counts_what_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        // Incompressible lines so that each batch has a known, large size.
        let line = |i: u32| {
            let pad: String = (0..2400).map(|_| fastrand::alphanumeric()).collect();
            format!("{{\"n\":{i},\"pad\":\"{pad}\"}}\n")
        };
        // Room for two batches and a half, whatever gzip makes of them.
        let size = |with_pos: bool| {
            let d = tempfile::tempdir().unwrap();
            let m = metrics();
            let (s, _) = Spool::open(d.path(), 1 << 20, WhenFull::Block, m.clone()).unwrap();
            let ps = if with_pos { vec![pos(3, 100)] } else { vec![] };
            s.push(line(0).as_bytes(), 1, ps).unwrap();
            m.spool_bytes.get()
        };
        let max = size(false) * 5 / 2;
        let (s, _) = Spool::open(dir.path(), max, WhenFull::Block, m.clone()).unwrap();
        let s = Arc::new(s);
        s.push(line(0).as_bytes(), 1, vec![]).unwrap();
        s.push(line(1).as_bytes(), 1, vec![]).unwrap();
        let pusher = {
            let s = s.clone();
            let l = line(2);
            std::thread::spawn(move || s.push(l.as_bytes(), 1, vec![]).unwrap())
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!pusher.is_finished(), "a full spool blocks the source");
        assert_eq!(m.blocked.get(), 1);
        let first = rt().block_on(s.next(false)).unwrap();
        s.ack(first.seq).unwrap();
        pusher.join().unwrap();
        assert!(m.spool_bytes.get() <= max);
        assert_eq!(m.dropped_lines(), 0);

        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let max = size(true) * 5 / 2;
        let (s, _) = Spool::open(dir.path(), max, WhenFull::DropOldest, m.clone()).unwrap();
        for i in 0..5 {
            s.push(line(i).as_bytes(), 1, vec![pos(3, u64::from(i) + 1)])
                .unwrap();
            assert!(m.spool_bytes.get() <= max);
        }
        assert_eq!(m.dropped_lines(), 3);
        let a = rt().block_on(s.next(false)).unwrap();
        assert!(unzip(&a.body).starts_with("{\"n\":3,"));
        // The batch being sent is never the one dropped.
        s.push(line(5).as_bytes(), 1, vec![pos(3, 6)]).unwrap();
        s.push(line(6).as_bytes(), 1, vec![pos(3, 7)]).unwrap();
        assert_eq!(m.dropped_lines(), 5);
        s.ack(a.seq).unwrap();
        let b = rt().block_on(s.next(false)).unwrap();
        assert!(unzip(&b.body).starts_with("{\"n\":6,"));
        s.ack(b.seq).unwrap();
        drop(s);
        // Dropped batches' positions count as done: nothing is read twice.
        let (_, rec) = Spool::open(dir.path(), max, WhenFull::DropOldest, metrics()).unwrap();
        assert_eq!(rec.positions, vec![pos(3, 7)]);
    }

    #[test]
    fn refused_and_damaged_batches_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let (s, _) = Spool::open(dir.path(), 1 << 20, WhenFull::Block, m.clone()).unwrap();
        s.push(b"a\nb\n", 2, vec![pos(1, 4)]).unwrap();
        s.push(b"c\n", 1, vec![]).unwrap();
        let b = rt().block_on(s.next(false)).unwrap();
        s.reject(b.seq, "413 too large").unwrap();
        assert_eq!((m.dead_batches.get(), m.dead_lines.get()), (1, 2));
        let reason = dir.path().join(format!("rejected/{:016x}.reason", b.seq));
        assert!(std::fs::read_to_string(reason).unwrap().contains("413"));
        drop(s);
        // Flip a byte of the body of the remaining batch.
        let path = std::fs::read_dir(dir.path().join("batches"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (s, rec) = Spool::open(dir.path(), 1 << 20, WhenFull::Block, metrics()).unwrap();
        assert_eq!((rec.batches, rec.corrupt), (0, 1));
        assert_eq!(rec.positions, vec![pos(1, 4)]);
        assert!(s.is_empty());
    }

    #[test]
    fn forgotten_files_leave_positions_once_no_batch_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 1 << 20, WhenFull::Block, metrics()).unwrap();
        s.push(b"a\n", 1, vec![pos(1, 2), pos(2, 2)]).unwrap();
        s.push(b"b\n", 1, vec![pos(1, 4)]).unwrap();
        s.forget((1, 1));
        let a = rt().block_on(s.next(false)).unwrap();
        s.ack(a.seq).unwrap();
        let b = rt().block_on(s.next(false)).unwrap();
        s.ack(b.seq).unwrap();
        drop(s);
        let (_, rec) = Spool::open(dir.path(), 1 << 20, WhenFull::Block, metrics()).unwrap();
        assert_eq!(rec.positions, vec![pos(2, 2)]);
    }

    #[test]
    fn close_wakes_a_blocked_push_and_ends_next() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 10, WhenFull::Block, metrics()).unwrap();
        let s = Arc::new(s);
        s.push(b"first\n", 1, vec![]).unwrap();
        let pusher = {
            let s = s.clone();
            std::thread::spawn(move || s.push(b"second\n", 1, vec![]))
        };
        std::thread::sleep(Duration::from_millis(100));
        s.close();
        assert!(matches!(pusher.join().unwrap(), Err(SpoolError::Closed)));
        // Without draining, a closed spool hands out nothing more.
        assert!(rt().block_on(s.next(false)).is_none());
        // Draining, it hands out what is left, then ends.
        let b = rt().block_on(s.next(true)).unwrap();
        s.ack(b.seq).unwrap();
        assert!(rt().block_on(s.next(true)).is_none());
    }
}
