//! Cutting a TCP byte stream into frames, incrementally and within a bounded buffer.
//!
//! Two framings (RFC 6587), chosen per frame on a syslog connection:
//! - **octet counting**: a frame that starts with a length (a non-zero digit, at most 10
//!   digits) and a space is `LEN SP` followed by exactly `LEN` bytes;
//! - **LF framing** (non-transparent, and the only one for NDJSON): a frame ends at the
//!   next LF; a trailing CR is dropped; empty lines are skipped; at the end of the
//!   stream, an unterminated last line is a frame too.
//!
//! No frame is longer than `max` (`[ingest] max_record_bytes`) and the buffer never
//! holds more than `max` plus one read:
//! - a line longer than `max` is refused ([`FrameError::TooLong`]) and its bytes are
//!   discarded up to its LF as they arrive, never buffered;
//! - a declared length over `max` is refused ([`FrameError::Declared`]) and, since a
//!   length that large is not trusted to frame anything, the stream resynchronises at
//!   the next LF (what rsyslog does), discarding bytes on the way;
//! - an octet-counted frame cut short by the end of the stream is refused
//!   ([`FrameError::Truncated`]).
//!
//! A refusal costs only its frame: the frames after it come out as if it had not been
//! there (with octet counting, after its declared bytes; with LF, after its LF).

use std::ops::Range;

/// Which framings a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// LF framing only (NDJSON).
    Lines,
    /// Octet counting or LF framing, per frame (syslog).
    Syslog,
}

/// A frame that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("line longer than the record limit of {max} bytes")]
    TooLong { max: usize },
    #[error("declared frame length {len} exceeds the record limit of {max} bytes")]
    Declared { len: u64, max: usize },
    #[error("connection ended {missing} bytes short of a declared frame")]
    Truncated { missing: usize },
}

impl FrameError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLong { .. } => "too_long",
            FrameError::Declared { .. } => "declared_length",
            FrameError::Truncated { .. } => "truncated",
        }
    }
}

/// Most digits of an octet count (`u32::MAX` has 10).
const MAX_DIGITS: usize = 10;

/// The incremental framer: [`Framer::push`] bytes as they arrive, take frames with
/// [`Framer::next`] (ranges into [`Framer::frame`], valid until the next push).
#[derive(Debug)]
pub struct Framer {
    mode: Mode,
    max: usize,
    buf: Vec<u8>,
    /// Start of the unframed bytes in `buf`.
    pos: usize,
    /// Discarding up to the next LF (after a refused frame).
    skipping: bool,
}

/// What the bytes at a frame's start are.
enum Start {
    /// More bytes are needed to tell.
    Unknown,
    /// An LF-framed line.
    Line,
    /// An octet-counted frame: header length and declared length.
    Counted(usize, u64),
}

impl Framer {
    pub fn new(mode: Mode, max: usize) -> Self {
        Framer {
            mode,
            max,
            buf: Vec::new(),
            pos: 0,
            skipping: false,
        }
    }

    /// Append bytes read from the connection (drops the frames already taken).
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The bytes of a frame [`Framer::next`] returned.
    pub fn frame(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Bytes held (for tests and limits).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn start(&self) -> Start {
        let b = &self.buf[self.pos..];
        if self.mode == Mode::Lines || !matches!(b.first(), Some(b'1'..=b'9')) {
            return if b.is_empty() {
                Start::Unknown
            } else {
                Start::Line
            };
        }
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > MAX_DIGITS {
            return Start::Line;
        }
        match b.get(digits) {
            None => Start::Unknown,
            Some(b' ') => {
                let len = b[..digits]
                    .iter()
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                Start::Counted(digits + 1, len)
            }
            Some(_) => Start::Line,
        }
    }

    /// The next frame or refusal, None when more bytes are needed.
    pub fn next(&mut self) -> Option<Result<Range<usize>, FrameError>> {
        loop {
            if self.skipping {
                let rest = &self.buf[self.pos..];
                match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.pos += i + 1;
                        self.skipping = false;
                    }
                    None => {
                        // Nothing of a refused frame is kept.
                        self.buf.clear();
                        self.pos = 0;
                        return None;
                    }
                }
            }
            // Blank lines between frames are no frames.
            while matches!(self.buf.get(self.pos), Some(b'\n' | b'\r')) {
                self.pos += 1;
            }
            match self.start() {
                Start::Unknown => return None,
                Start::Counted(head, len) => {
                    if len > self.max as u64 {
                        self.pos += head;
                        self.skipping = true;
                        return Some(Err(FrameError::Declared { len, max: self.max }));
                    }
                    let start = self.pos + head;
                    let end = start + len as usize;
                    if self.buf.len() < end {
                        return None;
                    }
                    self.pos = end;
                    return Some(Ok(trim_end(&self.buf, start..end)));
                }
                Start::Line => {
                    let rest = &self.buf[self.pos..];
                    match memchr::memchr(b'\n', rest) {
                        Some(i) if i <= self.max + 1 => {
                            let r = self.pos..self.pos + i;
                            self.pos += i + 1;
                            let r = trim_end(&self.buf, r);
                            if r.len() > self.max {
                                return Some(Err(FrameError::TooLong { max: self.max }));
                            }
                            if r.is_empty() {
                                continue;
                            }
                            return Some(Ok(r));
                        }
                        Some(_) => {
                            self.skipping = true;
                            return Some(Err(FrameError::TooLong { max: self.max }));
                        }
                        None if rest.len() > self.max + 1 => {
                            self.skipping = true;
                            return Some(Err(FrameError::TooLong { max: self.max }));
                        }
                        None => return None,
                    }
                }
            }
        }
    }

    /// At the end of the stream: the unterminated last line as a frame, or the
    /// refusal of an octet-counted frame cut short (call after [`Framer::next`] gave
    /// None).
    pub fn finish(&mut self) -> Option<Result<Range<usize>, FrameError>> {
        if self.skipping {
            return None;
        }
        let r = match self.start() {
            Start::Unknown => {
                let b = &self.buf[self.pos..];
                if b.is_empty() {
                    return None;
                }
                // Digits and nothing after them: a line.
                self.pos..self.buf.len()
            }
            Start::Counted(head, len) => {
                let have = self.buf.len() - self.pos - head;
                self.pos = self.buf.len();
                return Some(Err(FrameError::Truncated {
                    missing: (len as usize).saturating_sub(have),
                }));
            }
            Start::Line => self.pos..self.buf.len(),
        };
        self.pos = self.buf.len();
        let r = trim_end(&self.buf, r);
        if r.len() > self.max {
            return Some(Err(FrameError::TooLong { max: self.max }));
        }
        (!r.is_empty()).then_some(Ok(r))
    }
}

/// Without trailing CR and LF.
fn trim_end(buf: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.end > r.start && matches!(buf[r.end - 1], b'\r' | b'\n') {
        r.end -= 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every frame and refusal of `input` fed in `chunk`-byte reads, then the end.
    fn frames(
        mode: Mode,
        max: usize,
        input: &[u8],
        chunk: usize,
    ) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut f = Framer::new(mode, max);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            f.push(c);
            assert!(
                f.buffered() <= max + 2 * MAX_DIGITS + 2 + c.len(),
                "buffer grew to {}",
                f.buffered()
            );
            while let Some(r) = f.next() {
                out.push(r.map(|r| f.frame(r).to_vec()));
            }
        }
        if let Some(r) = f.finish() {
            out.push(r.map(|r| f.frame(r).to_vec()));
        }
        out
    }

    fn ok(v: &[&str]) -> Vec<Result<Vec<u8>, FrameError>> {
        v.iter().map(|s| Ok(s.as_bytes().to_vec())).collect()
    }

    #[test]
    fn lf_and_octet_counting_mix_per_frame() {
        let input = b"11 <13>1 - - -<13>lf one\r\n\n5 abcde3 xyz<14>last";
        for chunk in [1, 2, 3, 7, 100] {
            assert_eq!(
                frames(Mode::Syslog, 100, input, chunk),
                ok(&["<13>1 - - -", "<13>lf one", "abcde", "xyz", "<14>last"]),
                "chunk {chunk}"
            );
        }
        // NDJSON: LF only, digits are just text.
        assert_eq!(
            frames(Mode::Lines, 100, b"5 abc\n{\"a\":1}\n", 4),
            ok(&["5 abc", "{\"a\":1}"])
        );
        // Digits without a space are a line; a leading 0 is not a length.
        assert_eq!(
            frames(Mode::Syslog, 100, b"12abc\n0 x\n", 1),
            ok(&["12abc", "0 x"])
        );
    }

    #[test]
    fn oversized_frames_cost_only_themselves() {
        // A line over the limit, then a good one.
        let line = format!("{}\n<13>good\n", "x".repeat(50));
        for chunk in [1, 8, 1000] {
            assert_eq!(
                frames(Mode::Syslog, 10, line.as_bytes(), chunk),
                vec![
                    Err(FrameError::TooLong { max: 10 }),
                    Ok(b"<13>good".to_vec())
                ]
            );
        }
        // A huge declared length: refused, resynchronised at the next LF.
        let huge = b"99999999 <13>bogus frame\n4 good";
        assert_eq!(
            frames(Mode::Syslog, 10, huge, 3),
            vec![
                Err(FrameError::Declared {
                    len: 99_999_999,
                    max: 10
                }),
                Ok(b"good".to_vec())
            ]
        );
        // More digits than any length: a line (here too long).
        let many = format!("{} x\n3 abc", "9".repeat(30));
        assert_eq!(
            frames(Mode::Syslog, 20, many.as_bytes(), 5),
            vec![Err(FrameError::TooLong { max: 20 }), Ok(b"abc".to_vec())]
        );
        // Cut short at the end of the stream.
        assert_eq!(
            frames(Mode::Syslog, 100, b"3 abc10 abc", 4),
            vec![
                Ok(b"abc".to_vec()),
                Err(FrameError::Truncated { missing: 7 })
            ]
        );
        // Exactly the limit is fine, with or without CR.
        assert_eq!(
            frames(Mode::Lines, 3, b"abc\r\nabcd\n", 2),
            vec![Ok(b"abc".to_vec()), Err(FrameError::TooLong { max: 3 })]
        );
    }

    /// A good syslog frame, LF-framed or octet-counted.
    fn good_frame() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        ("[a-z0-9 ]{0,40}", any::<bool>()).prop_map(|(text, counted)| {
            let msg = format!("<13>1 - host app - - - {text}")
                .trim_end()
                .as_bytes()
                .to_vec();
            let wire = if counted {
                let mut w = format!("{} ", msg.len()).into_bytes();
                w.extend_from_slice(&msg);
                w
            } else {
                let mut w = msg.clone();
                w.push(b'\n');
                w
            };
            (wire, msg)
        })
    }

    /// Whether `g` would be read as the header of an octet-counted frame.
    fn looks_counted(g: &[u8]) -> bool {
        let g = &g[g.iter().take_while(|c| **c == b'\r').count()..];
        let d = g.iter().take_while(|c| c.is_ascii_digit()).count();
        matches!(g.first(), Some(b'1'..=b'9')) && d <= MAX_DIGITS && g.get(d) == Some(&b' ')
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes: no panic, no frame over the limit, and the frames plus refusals
        /// never claim more bytes than arrived.
        #[test]
        fn random_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..600),
                                     chunk in 1usize..64, max in 1usize..64,
                                     lines in any::<bool>()) {
            let mode = if lines { Mode::Lines } else { Mode::Syslog };
            let out = frames(mode, max, &input, chunk);
            let mut bytes = 0;
            for f in out.iter().flatten() {
                prop_assert!(f.len() <= max);
                bytes += f.len();
                let _ = crate::tcp::syslog::parse(f, 0);
            }
            prop_assert!(bytes <= input.len());
        }

        /// A garbage line (any bytes but LF, not an octet-count header), then good
        /// frames: exactly the good frames follow the garbage's refusal or frame.
        #[test]
        fn garbage_lines_lose_no_following_frame(
            garbage in proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..300),
            good in proptest::collection::vec(good_frame(), 1..5),
            chunk in 1usize..50)
        {
            prop_assume!(!looks_counted(&garbage));
            let mut input = garbage.clone();
            input.push(b'\n');
            for (w, _) in &good { input.extend_from_slice(w); }
            let out = frames(Mode::Syslog, 128, &input, chunk);
            let want: Vec<_> = good.iter().map(|(_, m)| Ok(m.clone())).collect();
            prop_assert!(out.len() >= want.len());
            prop_assert_eq!(&out[out.len() - want.len()..], &want[..]);
            prop_assert!(out.len() <= want.len() + 1);
        }

        /// An octet-counted frame of arbitrary bytes (LFs included), or one declaring
        /// a length over the limit, then good frames: the good frames come out whole.
        #[test]
        fn counted_garbage_loses_no_following_frame(
            payload in proptest::collection::vec(any::<u8>(), 1..120),
            huge in 129u64..u32::MAX as u64,
            oversized in any::<bool>(),
            good in proptest::collection::vec(good_frame(), 1..5),
            chunk in 1usize..50)
        {
            let mut input = Vec::new();
            if oversized {
                // The declared length is not trusted: resync at the next LF.
                let p: Vec<u8> = payload.iter().copied().filter(|b| *b != b'\n').collect();
                input.extend_from_slice(format!("{huge} ").as_bytes());
                input.extend_from_slice(&p);
                input.push(b'\n');
            } else {
                input.extend_from_slice(format!("{} ", payload.len()).as_bytes());
                input.extend_from_slice(&payload);
            }
            for (w, _) in &good { input.extend_from_slice(w); }
            let out = frames(Mode::Syslog, 128, &input, chunk);
            let want: Vec<_> = good.iter().map(|(_, m)| Ok(m.clone())).collect();
            prop_assert_eq!(&out[1..], &want[..]);
            for (_, m) in &good {
                prop_assert!(crate::tcp::syslog::parse(m, 0).is_ok());
            }
        }

        /// Good frames with random bytes mutated: no panic, nothing over the limit,
        /// and every frame before the first mutated byte comes out intact.
        #[test]
        fn mutated_streams_keep_the_frames_before_the_damage(
            good in proptest::collection::vec(good_frame(), 1..8),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            chunk in 1usize..50)
        {
            let mut input = Vec::new();
            let mut ends = Vec::new();
            for (w, _) in &good { input.extend_from_slice(w); ends.push(input.len()); }
            let mut first = input.len();
            for (at, byte) in &flips {
                let i = at.index(input.len());
                input[i] = *byte;
                first = first.min(i);
            }
            let out = frames(Mode::Syslog, 128, &input, chunk);
            let intact = ends.iter().filter(|&&e| e <= first).count();
            for (i, (_, m)) in good.iter().take(intact).enumerate() {
                prop_assert_eq!(&out[i], &Ok(m.clone()));
            }
            for f in out.iter().flatten() {
                prop_assert!(f.len() <= 128);
                let _ = crate::tcp::syslog::parse(f, 0);
            }
        }
    }
}
