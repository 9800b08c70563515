//! Tailing files: globs, rotation, truncation, positions.
//!
//! The globs are evaluated at start and every `rescan` (new files are picked up then
//! and read from their beginning). A file is known by its device and inode, not its
//! name, so:
//! - **rotation by rename** (`app.log` → `app.log.1`, a new `app.log`): the renamed file
//!   keeps being read through its open descriptor until it has been at its end, without
//!   growing, for `rotate_wait` (a writer may still append a last line or two); the new
//!   file is picked up at the next scan. A removed file is drained the same way. A file
//!   that no longer matches a glob, drained and idle, is closed: its last line is sent
//!   even without a final newline, and the spool forgets its position.
//! - **truncation** (the size falls below the position, or the first bytes change —
//!   `copytruncate`): read again from the start, counted in
//!   `weir_ship_file_truncations_total`. Lines written between the last read and the
//!   truncation are lost; that is the nature of copytruncate.
//! - **inode reuse**: a position carries a fingerprint (FNV-1a of the first up to
//!   [`FP_LEN`] bytes). A file found with a remembered inode but other first bytes is a
//!   new file, read from its start.
//!
//! Positions handed out ([`Chunk::position`]) always end after a complete line: a last
//! line without its newline waits until it is complete (or its file is closed). A line
//! longer than `max_line` is skipped (counted as dropped, `too_long`), and so is a line
//! starting with `[` (`not_object`, see [`DropReason::NotObject`]); empty lines are
//! skipped silently (the server ignores them too).
//!
//! After a restart, a remembered position whose file no glob matches any more (renamed
//! while the shipper was down) is looked for by inode in the directory it was last seen
//! in, and drained from there.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::metrics::{DropReason, ShipMetrics};
use super::spool::{fnv64, FileId, Position};

/// Bytes covered by a file's fingerprint.
pub const FP_LEN: usize = 256;

pub struct TailOptions {
    pub globs: Vec<String>,
    /// How often the globs are evaluated again.
    pub rescan: Duration,
    /// How long a renamed or removed file is kept open after its last growth.
    pub rotate_wait: Duration,
    /// Longest line kept.
    pub max_line: usize,
}

/// Complete lines read from one file and the position after them. `count` may be 0
/// (only skipped lines): the position still has to be recorded.
#[derive(Debug)]
pub struct Chunk {
    pub lines: Vec<u8>,
    pub count: u32,
    pub position: Position,
}

struct Tracked {
    file: File,
    path: PathBuf,
    offset: u64,
    fp_len: u32,
    fp_hash: u64,
    /// Matched by a glob at the last scan.
    matched: bool,
    /// When the file stopped being matched (renamed or removed).
    gone_since: Option<Instant>,
    last_growth: Instant,
    size: u64,
    /// Inside a line longer than `max_line`: skip to its newline.
    skipping: bool,
}

impl Tracked {
    fn position(&self, dev: u64, ino: u64) -> Position {
        Position {
            dev,
            ino,
            fp_len: self.fp_len,
            fp_hash: self.fp_hash,
            offset: self.offset,
            path: self.path.clone(),
        }
    }
}

/// Copy the lines of `complete` (whole lines) worth keeping to `out`, at most
/// `max_lines` of them: how many, and the bytes of `complete` they took (skipped lines
/// included).
pub fn keep_lines(
    complete: &[u8],
    out: &mut Vec<u8>,
    max_line: usize,
    max_lines: u32,
    m: &ShipMetrics,
) -> (u32, usize) {
    let mut count = 0;
    let mut used = 0;
    for line in complete.split_inclusive(|&b| b == b'\n') {
        if count >= max_lines {
            break;
        }
        used += line.len();
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        if body.len() > max_line {
            m.dropped(DropReason::TooLong, 1, body.len() as u64);
            continue;
        }
        if body[first] == b'[' {
            m.dropped(DropReason::NotObject, 1, body.len() as u64);
            continue;
        }
        out.extend_from_slice(body);
        out.push(b'\n');
        count += 1;
    }
    (count, used)
}

pub struct Tailer {
    opts: TailOptions,
    files: BTreeMap<FileId, Tracked>,
    /// Recovered positions, used by the first scan.
    known: HashMap<FileId, Position>,
    last_scan: Option<Instant>,
    /// Which file reads first on the next poll (fairness between files).
    turn: usize,
    closed: Vec<FileId>,
    scratch: Vec<u8>,
    m: Arc<ShipMetrics>,
}

/// The fingerprint of `file`'s first bytes (at most [`FP_LEN`]).
fn fingerprint(file: &File, len: u64) -> io::Result<(u32, u64)> {
    let n = (len as usize).min(FP_LEN);
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, 0)?;
    Ok((n as u32, fnv64(&buf)))
}

/// Whether `file` still starts with the bytes `(fp_len, fp_hash)` describe.
fn fingerprint_matches(file: &File, len: u64, fp_len: u32, fp_hash: u64) -> bool {
    if len < u64::from(fp_len) {
        return false;
    }
    let mut buf = vec![0u8; fp_len as usize];
    file.read_exact_at(&mut buf, 0).is_ok() && fnv64(&buf) == fp_hash
}

impl Tailer {
    pub fn new(opts: TailOptions, known: Vec<Position>, m: Arc<ShipMetrics>) -> Self {
        Tailer {
            opts,
            files: BTreeMap::new(),
            known: known.into_iter().map(|p| (p.id(), p)).collect(),
            last_scan: None,
            turn: 0,
            closed: Vec::new(),
            scratch: Vec::new(),
            m,
        }
    }

    /// Files closed for good since the last call (for [`super::spool::Spool::forget`]).
    pub fn take_closed(&mut self) -> Vec<FileId> {
        std::mem::take(&mut self.closed)
    }

    /// Files open now.
    #[cfg(test)]
    fn open_files(&self) -> usize {
        self.files.len()
    }

    fn matched_paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for g in &self.opts.globs {
            match glob::glob(g) {
                Ok(paths) => out.extend(paths.filter_map(Result::ok)),
                Err(e) => tracing::error!(glob = %g, error = %e, "bad glob"),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Start tracking `path` (identity `id`, open as `file`) from its remembered
    /// position when the fingerprint agrees, else from its start.
    fn track(&mut self, id: FileId, path: PathBuf, file: File, len: u64, matched: bool) {
        let now = Instant::now();
        let mut offset = 0;
        let (mut fp_len, mut fp_hash) = fingerprint(&file, len).unwrap_or((0, fnv64(b"")));
        if let Some(p) = self.known.remove(&id) {
            if fingerprint_matches(&file, len, p.fp_len, p.fp_hash) {
                (fp_len, fp_hash) = (p.fp_len, p.fp_hash);
                offset = p.offset;
                if offset > len {
                    self.m.truncations.inc();
                    tracing::warn!(path = %path.display(), "file shorter than its position: reading it from the start");
                    offset = 0;
                    (fp_len, fp_hash) = fingerprint(&file, len).unwrap_or((0, fnv64(b"")));
                }
            } else {
                tracing::info!(path = %path.display(), "a remembered inode holds another file now: reading it from the start");
            }
        }
        tracing::debug!(path = %path.display(), offset, "tailing");
        self.files.insert(
            id,
            Tracked {
                file,
                path,
                offset,
                fp_len,
                fp_hash,
                matched,
                gone_since: (!matched).then_some(now),
                last_growth: now,
                size: len,
                skipping: false,
            },
        );
    }

    fn scan(&mut self) {
        let first = self.last_scan.is_none();
        self.last_scan = Some(Instant::now());
        for t in self.files.values_mut() {
            t.matched = false;
        }
        for path in self.matched_paths() {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let id = (meta.dev(), meta.ino());
            if let Some(t) = self.files.get_mut(&id) {
                t.matched = true;
                t.gone_since = None;
                t.path = path;
                continue;
            }
            match File::open(&path) {
                Ok(file) => self.track(id, path, file, meta.len(), true),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot open"),
            }
        }
        let now = Instant::now();
        for t in self.files.values_mut() {
            if !t.matched && t.gone_since.is_none() {
                t.gone_since = Some(now);
                t.last_growth = now;
                self.m.rotations.inc();
                tracing::info!(path = %t.path.display(), "file renamed or removed: reading what is left");
            }
        }
        if first {
            self.find_renamed();
        }
    }

    /// Remembered files no glob matched at start: renamed while we were down? Look for
    /// their inode where they were last seen.
    fn find_renamed(&mut self) {
        let lost: Vec<Position> = self.known.drain().map(|(_, p)| p).collect();
        for p in lost {
            let dir = p.path.parent().unwrap_or(Path::new("."));
            let found = fs::read_dir(dir).ok().and_then(|entries| {
                entries.filter_map(Result::ok).find_map(|e| {
                    let meta = fs::metadata(e.path()).ok()?;
                    (meta.is_file() && (meta.dev(), meta.ino()) == p.id())
                        .then(|| (e.path(), meta.len()))
                })
            });
            match found.and_then(|(path, len)| Some((File::open(&path).ok()?, path, len))) {
                Some((file, path, len)) => {
                    tracing::info!(was = %p.path.display(), now = %path.display(), "found a file renamed while stopped: reading what is left");
                    self.known.insert(p.id(), p.clone());
                    self.track(p.id(), path, file, len, false);
                }
                // Gone for good.
                None => self.closed.push(p.id()),
            }
        }
    }

    /// Read what the files have, up to about `budget` bytes (a file may give up to one
    /// `max_line` more) and at most `max_lines` lines. Also rescans the globs when due
    /// and closes drained files that are gone.
    pub fn poll(&mut self, budget: usize, max_lines: u32) -> Vec<Chunk> {
        if self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.opts.rescan)
        {
            self.scan();
        }
        let ids: Vec<FileId> = self.files.keys().copied().collect();
        let mut out = Vec::new();
        let mut left = budget;
        let mut lines_left = max_lines;
        let n = ids.len();
        for k in 0..n {
            if left == 0 || lines_left == 0 {
                break;
            }
            let id = ids[(self.turn + k) % n];
            match self.read(id, left, lines_left) {
                Ok(Some(c)) => {
                    left = left.saturating_sub(c.lines.len());
                    lines_left -= c.count;
                    out.push(c);
                }
                Ok(None) => {}
                Err(e) => {
                    let t = &self.files[&id];
                    tracing::warn!(path = %t.path.display(), error = %e, "read failed; retrying");
                }
            }
        }
        self.turn = self.turn.wrapping_add(1);
        self.close_drained(&mut out);
        out
    }

    /// Close files that are gone, at their end and idle for `rotate_wait`; a last line
    /// without its newline is handed out then.
    fn close_drained(&mut self, out: &mut Vec<Chunk>) {
        let wait = self.opts.rotate_wait;
        let idle: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, t)| {
                t.gone_since.is_some()
                    && t.last_growth.elapsed() >= wait
                    && t.file.metadata().is_ok_and(|m| m.len() == t.size)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            let t = &self.files[&id];
            let rest = t.size.saturating_sub(t.offset) as usize;
            let mut last = None;
            if rest > 0 && !t.skipping {
                if rest > self.opts.max_line {
                    continue; // lines still to read, or a long one `read` will skip
                }
                let mut buf = vec![0u8; rest];
                if t.file.read_exact_at(&mut buf, t.offset).is_err()
                    || memchr::memchr(b'\n', &buf).is_some()
                {
                    continue; // complete lines still to read
                }
                buf.push(b'\n');
                last = Some(buf);
            }
            let mut t = self.files.remove(&id).expect("listed above");
            t.offset = t.size;
            if let Some(line) = last {
                let mut lines = Vec::new();
                let (count, _) =
                    keep_lines(&line, &mut lines, self.opts.max_line, u32::MAX, &self.m);
                out.push(Chunk {
                    lines,
                    count,
                    position: t.position(id.0, id.1),
                });
            }
            tracing::info!(path = %t.path.display(), "closed a drained file that is gone");
            self.closed.push(id);
        }
    }

    /// Read complete lines of file `id` from its offset.
    fn read(&mut self, id: FileId, budget: usize, max_lines: u32) -> io::Result<Option<Chunk>> {
        let max_line = self.opts.max_line;
        let t = self.files.get_mut(&id).expect("tracked");
        let len = t.file.metadata()?.len();
        let replaced = t.fp_len > 0
            && len != t.size
            && !fingerprint_matches(&t.file, len, t.fp_len, t.fp_hash);
        if len < t.offset || (replaced && t.offset > 0) {
            self.m.truncations.inc();
            tracing::warn!(path = %t.path.display(), "file truncated: reading it from the start");
            t.offset = 0;
            t.skipping = false;
            (t.fp_len, t.fp_hash) = fingerprint(&t.file, len)?;
        }
        if len != t.size {
            t.last_growth = Instant::now();
            t.size = len;
        }
        if (t.fp_len as usize) < FP_LEN && len > u64::from(t.fp_len) {
            (t.fp_len, t.fp_hash) = fingerprint(&t.file, len)?;
        }
        if len == t.offset {
            return Ok(None);
        }
        let avail = (len - t.offset) as usize;
        let want = avail.min(budget.max(max_line + 1));
        self.scratch.resize(want, 0);
        t.file.read_exact_at(&mut self.scratch, t.offset)?;
        let mut start = 0;
        if t.skipping {
            match memchr::memchr(b'\n', &self.scratch) {
                Some(i) => {
                    t.skipping = false;
                    start = i + 1;
                }
                None => {
                    t.offset += want as u64;
                    return Ok(None);
                }
            }
        }
        let Some(last) = memchr::memrchr(b'\n', &self.scratch[start..]) else {
            if want - start > max_line {
                // A line longer than we keep: skip to its end.
                self.m
                    .dropped(DropReason::TooLong, 1, (want - start) as u64);
                t.skipping = true;
                t.offset += want as u64;
                tracing::warn!(path = %t.path.display(), max_line, "line too long: skipped");
            } else if start > 0 {
                t.offset += start as u64;
                let (dev, ino) = id;
                let position = t.position(dev, ino);
                return Ok(Some(Chunk {
                    lines: Vec::new(),
                    count: 0,
                    position,
                }));
            }
            // Else an incomplete last line: wait for the rest.
            return Ok(None);
        };
        let end = start + last + 1;
        let mut lines = Vec::with_capacity(end - start);
        let (count, used) = keep_lines(
            &self.scratch[start..end],
            &mut lines,
            max_line,
            max_lines,
            &self.m,
        );
        t.offset += (start + used) as u64;
        let position = t.position(id.0, id.1);
        Ok(Some(Chunk {
            lines,
            count,
            position,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use weir_core::metrics::Registry;

    fn tailer(dir: &Path, known: Vec<Position>) -> (Tailer, Arc<ShipMetrics>) {
        let m = Arc::new(ShipMetrics::new(&Registry::default()));
        let opts = TailOptions {
            globs: vec![format!("{}/*.log", dir.display())],
            rescan: Duration::ZERO,
            rotate_wait: Duration::from_millis(50),
            max_line: 100,
        };
        (Tailer::new(opts, known, m.clone()), m)
    }

    fn append(path: &Path, text: &str) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Poll until nothing more comes (a few polls apart); all lines and last positions.
    fn drain(t: &mut Tailer) -> (String, Vec<Position>) {
        let mut text = String::new();
        let mut pos: BTreeMap<FileId, Position> = BTreeMap::new();
        let mut idle = 0;
        while idle < 5 {
            let chunks = t.poll(1 << 20, u32::MAX);
            if chunks.is_empty() {
                idle += 1;
                std::thread::sleep(Duration::from_millis(30));
            } else {
                idle = 0;
            }
            for c in chunks {
                text.push_str(std::str::from_utf8(&c.lines).unwrap());
                pos.insert(c.position.id(), c.position);
            }
        }
        (text, pos.into_values().collect())
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        append(&a, "{\"n\":1}\n{\"n\":");
        let (mut t, _) = tailer(dir.path(), vec![]);
        let (text, pos) = drain(&mut t);
        assert_eq!(text, "{\"n\":1}\n");
        assert_eq!(pos[0].offset, 8);
        append(&a, "2}\n\n   \n");
        let (text, pos) = drain(&mut t);
        assert_eq!(text, "{\"n\":2}\n");
        assert_eq!(pos[0].offset, fs::metadata(&a).unwrap().len());
    }

    #[test]
    fn rotation_by_rename_reads_the_old_file_to_its_end_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        append(&a, "{\"n\":1}\n");
        let (mut t, m) = tailer(dir.path(), vec![]);
        assert_eq!(drain(&mut t).0, "{\"n\":1}\n");
        // The writer still holds the old file: it appends after the rename.
        let mut old = fs::OpenOptions::new().append(true).open(&a).unwrap();
        fs::rename(&a, dir.path().join("a.log.1")).unwrap();
        append(&a, "{\"n\":3}\n");
        old.write_all(b"{\"n\":2}\n{\"n\":2.5}").unwrap();
        let (text, _) = drain(&mut t);
        let mut got: Vec<&str> = text.lines().collect();
        got.sort();
        // The unterminated last line of the rotated file is sent once it is closed.
        assert_eq!(got, vec!["{\"n\":2.5}", "{\"n\":2}", "{\"n\":3}"]);
        assert_eq!(m.rotations.get(), 1);
        assert_eq!(t.open_files(), 1);
        assert_eq!(t.take_closed().len(), 1);
    }

    #[test]
    fn truncation_reads_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        append(&a, "{\"n\":1}\n{\"n\":2}\n");
        let (mut t, m) = tailer(dir.path(), vec![]);
        drain(&mut t);
        fs::write(&a, "{\"n\":3}\n").unwrap();
        assert_eq!(drain(&mut t).0, "{\"n\":3}\n");
        assert_eq!(m.truncations.get(), 1);
        // copytruncate that grows past the old position before we look: the first
        // bytes differ, so it is read from the start too.
        fs::write(&a, "{\"n\":40}\n{\"n\":41}\n{\"n\":42}\n").unwrap();
        assert_eq!(drain(&mut t).0, "{\"n\":40}\n{\"n\":41}\n{\"n\":42}\n");
        assert_eq!(m.truncations.get(), 2);
    }

    #[test]
    fn globs_pick_up_new_files_and_positions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), "{\"a\":1}\n");
        append(&dir.path().join("skip.txt"), "{\"no\":1}\n");
        let (mut t, _) = tailer(dir.path(), vec![]);
        assert_eq!(drain(&mut t).0, "{\"a\":1}\n");
        append(&dir.path().join("b.log"), "{\"b\":1}\n");
        let (text, pos) = drain(&mut t);
        assert_eq!(text, "{\"b\":1}\n");
        let mut known = pos;
        append(&dir.path().join("b.log"), "{\"b\":2}\n");
        let (_, a_pos) = {
            let (mut t2, _) = tailer(dir.path(), vec![]);
            drain(&mut t2)
        };
        known.extend(a_pos.into_iter().filter(|p| p.path.ends_with("a.log")));
        // A restart with those positions reads only what is new.
        let (mut t3, _) = tailer(dir.path(), known.clone());
        assert_eq!(drain(&mut t3).0, "{\"b\":2}\n");
        // Renamed while stopped, out of the glob: found by inode and drained.
        append(&dir.path().join("a.log"), "{\"a\":2}\n");
        fs::rename(dir.path().join("a.log"), dir.path().join("a.old")).unwrap();
        let (mut t4, _) = tailer(dir.path(), known.clone());
        let (text, _) = drain(&mut t4);
        let mut got: Vec<&str> = text.lines().collect();
        got.sort();
        assert_eq!(got, vec!["{\"a\":2}", "{\"b\":2}"]);
        // Another file in a reused inode (other first bytes) is read from its start.
        let b = known.iter().find(|p| p.path.ends_with("b.log")).unwrap();
        let mut fake = b.clone();
        fake.fp_hash ^= 1;
        let (mut t5, _) = tailer(dir.path(), vec![fake]);
        assert_eq!(drain(&mut t5).0, "{\"b\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn a_poll_takes_at_most_the_lines_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        append(&a, "{}\n\n{}\n{}\n{}\n");
        let (mut t, _) = tailer(dir.path(), vec![]);
        let c = t.poll(1 << 20, 2);
        assert_eq!((c.len(), c[0].count, c[0].position.offset), (1, 2, 7));
        let c = t.poll(1 << 20, 2);
        assert_eq!((c[0].count, c[0].position.offset), (2, 13));
    }

    #[test]
    fn long_lines_and_array_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let long = format!("{{\"x\":\"{}\"}}", "y".repeat(300));
        append(
            &a,
            &format!("{{\"n\":1}}\n{long}\n[1,2]\n{{\"n\":2}}\n{long}"),
        );
        let (mut t, m) = tailer(dir.path(), vec![]);
        let (text, pos) = drain(&mut t);
        assert_eq!(text, "{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(m.dropped_lines(), 3);
        // The unterminated long line is being skipped; its newline ends the skip.
        append(&a, "\n{\"n\":3}\n");
        let (text, pos2) = drain(&mut t);
        assert_eq!(text, "{\"n\":3}\n");
        assert!(pos2[0].offset > pos[0].offset);
        assert_eq!(pos2[0].offset, fs::metadata(&a).unwrap().len());
    }
}
