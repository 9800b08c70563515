//! The record rules: what a record (one NDJSON line) must be so that every later
//! stage — row building, the aggregations, the cold tier's shredder, JSON queries —
//! can read it. Checked in one pass over the bytes, without building a value tree, by
//! the door (logs and metric samples) and by the worker (plugin output, before rows
//! are built).
//!
//! A record is accepted when it is:
//! - valid UTF-8 ([`Rule::Utf8`]);
//! - JSON by RFC 8259 ([`Rule::Syntax`]), with no control character unescaped in a
//!   string and nothing after the value but whitespace;
//! - one object starting at its first byte ([`Rule::NotObject`]);
//! - free of numbers beyond the range of f64 ([`Rule::NumberRange`]): `1e400` and
//!   `-1e400` are refused; integers beyond i64/u64 that fit f64 (`1e19`,
//!   `123456789012345678901234567890`) are accepted and read as f64 by later stages;
//!   numbers too small for f64 (`1e-400`) are accepted and read as 0;
//! - free of lone surrogates in `\u` escapes, in values and keys alike
//!   ([`Rule::LoneSurrogate`]); a pair such as `"\ud83d\ude00"` is one character;
//! - nested at most [`MAX_DEPTH`] containers deep, the record's own object counting as
//!   one ([`Rule::Depth`]);
//! - free of duplicate keys in every object at every depth, keys compared after
//!   decoding escapes (`"a"` and `"\u0061"` are the same key) ([`Rule::DuplicateKey`]).
//!
//! The record byte limit is the caller's (`[ingest] max_record_bytes`, checked before).
//! [`Checker::check`] also returns the record's time fields (see [`crate::time`]), so
//! the door reads event times in the same pass.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;

use crate::time::{TimeValue, FIELDS};

/// Deepest nesting of objects and arrays accepted, the record's own object counting as
/// one. Below serde_json's own limit (128), so every accepted record can be parsed.
pub const MAX_DEPTH: usize = 64;

/// Which rule a record breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Utf8,
    Syntax,
    NotObject,
    NumberRange,
    LoneSurrogate,
    Depth,
    DuplicateKey,
}

impl Rule {
    /// The rule's short name, as reasons say it.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Utf8 => "invalid UTF-8",
            Rule::Syntax => "invalid JSON",
            Rule::NotObject => "not a JSON object",
            Rule::NumberRange => "number out of range",
            Rule::LoneSurrogate => "lone surrogate",
            Rule::Depth => "nested too deep",
            Rule::DuplicateKey => "duplicate key",
        }
    }
}

/// Why a record is refused: the rule, the byte offset where it was found and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail} at byte {at}", rule.name())]
pub struct RecordError {
    pub rule: Rule,
    /// 0-based byte offset in the record.
    pub at: usize,
    pub detail: String,
}

/// The time fields of an accepted record (top-level `timestamp`, `@timestamp`, `ts`,
/// `time`, in that order; None where absent).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TimeFields<'a>(pub [Option<TimeValue<'a>>; 4]);

impl<'a> TimeFields<'a> {
    pub fn as_refs(&self) -> [Option<&TimeValue<'a>>; 4] {
        [
            self.0[0].as_ref(),
            self.0[1].as_ref(),
            self.0[2].as_ref(),
            self.0[3].as_ref(),
        ]
    }

    /// The record's event time (see [`crate::time::event_time`]).
    pub fn event_time(&self) -> crate::time::EventTime {
        crate::time::event_time(self.as_refs())
    }
}

/// Objects with more keys than this look duplicates up in a hash set.
const LINEAR_KEYS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
}

struct Frame {
    kind: Kind,
    /// Index of the object's first key in `Checker::keys`.
    keys_from: usize,
    /// Index in `Checker::sets` of the object's hash set, when it has one.
    set: Option<usize>,
}

/// Checks records; keeps its buffers from one record to the next (one per request or
/// plugin output; [`check_record`] makes a fresh one).
pub struct Checker {
    max_depth: usize,
    stack: Vec<Frame>,
    /// Decoded keys of the open objects, back to back.
    key_bytes: Vec<u8>,
    /// (start, end) in `key_bytes` of each key of the open objects.
    keys: Vec<(u32, u32)>,
    sets: Vec<HashSet<u64>>,
    sets_used: usize,
    hasher: RandomState,
}

impl Default for Checker {
    fn default() -> Self {
        Checker::new(MAX_DEPTH)
    }
}

/// Check one record with a fresh [`Checker`].
pub fn check_record(rec: &[u8]) -> Result<TimeFields<'_>, RecordError> {
    Checker::default().check(rec)
}

fn err<T>(rule: Rule, at: usize, detail: impl Into<String>) -> Result<T, RecordError> {
    Err(RecordError {
        rule,
        at,
        detail: detail.into(),
    })
}

/// A short, printable excerpt of `b` for a reason.
fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(40)]);
    if b.len() > 40 {
        format!("{s}…")
    } else {
        s.into_owned()
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Length of the UTF-8 sequence starting at `b[i]` (a byte >= 0x80), or None if it
/// is not a valid one (overlong, surrogate, beyond U+10FFFF, truncated).
fn utf8_len(b: &[u8], i: usize) -> Option<usize> {
    let c = b[i];
    let cont = |k: usize| b.get(i + k).is_some_and(|x| (0x80..=0xBF).contains(x));
    let (n, lo, hi) = match c {
        0xC2..=0xDF => (2, 0x80, 0xBF),
        0xE0 => (3, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80, 0xBF),
        0xED => (3, 0x80, 0x9F),
        0xF0 => (4, 0x90, 0xBF),
        0xF1..=0xF3 => (4, 0x80, 0xBF),
        0xF4 => (4, 0x80, 0x8F),
        _ => return None,
    };
    let second = *b.get(i + 1)?;
    if !(lo..=hi).contains(&second) {
        return None;
    }
    (2..n).all(cont).then_some(n)
}

fn hex4(b: &[u8], i: usize) -> Option<u16> {
    let s = b.get(i..i + 4)?;
    let mut v = 0u16;
    for &c in s {
        let d = (c as char).to_digit(16)?;
        v = v * 16 + d as u16;
    }
    Some(v)
}

/// Whether the JSON number `text` (valid by the grammar) is finite as f64. Decided by
/// its decimal exponent; at the edge, by parsing it as serde_json and std both do.
fn number_in_range(text: &[u8]) -> bool {
    let mut i = usize::from(text.first() == Some(&b'-'));
    // Position of the first significant digit, as a power of ten.
    let mut int_digits: i64 = 0;
    let mut first_sig: Option<i64> = None;
    while i < text.len() && text[i].is_ascii_digit() {
        if first_sig.is_none() && text[i] != b'0' {
            first_sig = Some(int_digits);
        }
        int_digits += 1;
        i += 1;
    }
    // e10 of the first significant digit = (int_digits - 1 - index) for integer digits.
    let mut e10 = first_sig.map(|k| int_digits - 1 - k);
    if i < text.len() && text[i] == b'.' {
        i += 1;
        let mut k: i64 = 0;
        while i < text.len() && text[i].is_ascii_digit() {
            if e10.is_none() && text[i] != b'0' {
                e10 = Some(-(k + 1));
            }
            k += 1;
            i += 1;
        }
    }
    let Some(e10) = e10 else {
        return true; // zero, whatever its exponent
    };
    let mut exp: i64 = 0;
    if i < text.len() && (text[i] == b'e' || text[i] == b'E') {
        i += 1;
        let neg = text[i] == b'-';
        if text[i] == b'-' || text[i] == b'+' {
            i += 1;
        }
        while i < text.len() {
            exp = (exp * 10 + i64::from(text[i] - b'0')).min(1 << 40);
            i += 1;
        }
        if neg {
            exp = -exp;
        }
    }
    match e10 + exp {
        e if e < 308 => true,
        e if e > 308 => false,
        _ => {
            let s = std::str::from_utf8(text).unwrap_or("inf");
            s.parse::<f64>().is_ok_and(f64::is_finite)
                && serde_json::from_str::<f64>(s).is_ok_and(f64::is_finite)
        }
    }
}

impl Checker {
    /// A checker allowing `max_depth` levels of nesting.
    pub fn new(max_depth: usize) -> Checker {
        Checker {
            max_depth,
            stack: Vec::new(),
            key_bytes: Vec::new(),
            keys: Vec::new(),
            sets: Vec::new(),
            sets_used: 0,
            hasher: RandomState::new(),
        }
    }

    /// Check one record (without its line ending); its time fields when it passes.
    pub fn check<'a>(&mut self, b: &'a [u8]) -> Result<TimeFields<'a>, RecordError> {
        self.stack.clear();
        self.key_bytes.clear();
        self.keys.clear();
        self.sets_used = 0;
        self.run(b)
    }

    fn run<'a>(&mut self, b: &'a [u8]) -> Result<TimeFields<'a>, RecordError> {
        let mut times = TimeFields::default();
        if b.first() != Some(&b'{') {
            return match b.first() {
                None => err(Rule::NotObject, 0, "empty record"),
                Some(c) if *c >= 0x80 && utf8_len(b, 0).is_none() => {
                    err(Rule::Utf8, 0, "not a UTF-8 character")
                }
                Some(_) => err(Rule::NotObject, 0, "the record must start with '{'"),
            };
        }
        let mut i = 0;
        // The time field whose value is being read (top level only).
        let mut time_field: Option<usize> = None;
        // Loop invariant: at `i` a value starts (after whitespace).
        'value: loop {
            i = skip_ws(b, i);
            let Some(&c) = b.get(i) else {
                return err(Rule::Syntax, i, "unexpected end: a value is missing");
            };
            let start = i;
            match c {
                b'{' | b'[' => {
                    if self.stack.len() >= self.max_depth {
                        return err(
                            Rule::Depth,
                            i,
                            format!("more than {} levels of objects and arrays", self.max_depth),
                        );
                    }
                    if let Some(f) = time_field.take() {
                        times.0[f] = Some(TimeValue::Other);
                    }
                    let kind = if c == b'{' { Kind::Object } else { Kind::Array };
                    self.stack.push(Frame {
                        kind,
                        keys_from: self.keys.len(),
                        set: None,
                    });
                    i = skip_ws(b, i + 1);
                    let close = if kind == Kind::Object { b'}' } else { b']' };
                    if b.get(i) == Some(&close) {
                        i += 1;
                        self.pop();
                    } else if kind == Kind::Object {
                        i = self.key(b, i, &mut time_field)?;
                        continue 'value;
                    } else {
                        continue 'value;
                    }
                }
                b'"' => {
                    let (end, escaped) = self.string(b, i, false)?;
                    if let Some(f) = time_field.take() {
                        let raw = &b[start + 1..end - 1];
                        let text = if escaped {
                            let mut out = Vec::with_capacity(raw.len());
                            decode_escapes(raw, &mut out);
                            Cow::Owned(String::from_utf8(out).unwrap_or_default())
                        } else {
                            Cow::Borrowed(std::str::from_utf8(raw).unwrap_or_default())
                        };
                        times.0[f] = Some(TimeValue::Text(text));
                    }
                    i = end;
                }
                b'-' | b'0'..=b'9' => {
                    i = number(b, i)?;
                    if let Some(f) = time_field.take() {
                        // Read as serde_json reads it, so rows see the same number.
                        let n = serde_json::from_slice::<f64>(&b[start..i]).unwrap_or(0.0);
                        times.0[f] = Some(TimeValue::Num(n));
                    }
                }
                b't' | b'f' | b'n' => {
                    let word: &[u8] = match c {
                        b't' => b"true",
                        b'f' => b"false",
                        _ => b"null",
                    };
                    if !b[i..].starts_with(word) {
                        return err(
                            Rule::Syntax,
                            i,
                            format!("unexpected {:?}", excerpt(&b[i..(i + 5).min(b.len())])),
                        );
                    }
                    i += word.len();
                    if let Some(f) = time_field.take() {
                        times.0[f] = Some(TimeValue::Other);
                    }
                }
                c if c >= 0x80 && utf8_len(b, i).is_none() => {
                    return err(Rule::Utf8, i, "not a UTF-8 character");
                }
                _ => {
                    return err(
                        Rule::Syntax,
                        i,
                        format!("unexpected {:?}", excerpt(&b[i..(i + 5).min(b.len())])),
                    );
                }
            }
            // After a value: a separator, a close, or the end of the record.
            loop {
                i = skip_ws(b, i);
                let Some(top) = self.stack.last() else {
                    if i < b.len() {
                        if b[i] >= 0x80 && utf8_len(b, i).is_none() {
                            return err(Rule::Utf8, i, "not a UTF-8 character");
                        }
                        return err(Rule::Syntax, i, "trailing characters after the object");
                    }
                    return Ok(times);
                };
                let kind = top.kind;
                match (b.get(i), kind) {
                    (Some(b','), Kind::Object) => {
                        i = skip_ws(b, i + 1);
                        i = self.key(b, i, &mut time_field)?;
                        continue 'value;
                    }
                    (Some(b','), Kind::Array) => {
                        i += 1;
                        continue 'value;
                    }
                    (Some(b'}'), Kind::Object) | (Some(b']'), Kind::Array) => {
                        i += 1;
                        self.pop();
                    }
                    (None, _) => {
                        return err(Rule::Syntax, i, "unexpected end: unclosed object or array")
                    }
                    (Some(c), _) if *c >= 0x80 && utf8_len(b, i).is_none() => {
                        return err(Rule::Utf8, i, "not a UTF-8 character");
                    }
                    (Some(_), Kind::Object) => return err(Rule::Syntax, i, "expected ',' or '}'"),
                    (Some(_), Kind::Array) => return err(Rule::Syntax, i, "expected ',' or ']'"),
                }
            }
        }
    }

    fn pop(&mut self) {
        let f = self.stack.pop().expect("an open container");
        if f.kind == Kind::Object {
            if let Some(&(start, _)) = self.keys.get(f.keys_from) {
                self.key_bytes.truncate(start as usize);
            }
            self.keys.truncate(f.keys_from);
            if f.set.is_some() {
                self.sets_used -= 1;
            }
        }
    }

    /// Read a key at `i` (a string), check it against the object's other keys, and
    /// the ':' after it; returns the position after the ':'.
    fn key(
        &mut self,
        b: &[u8],
        i: usize,
        time_field: &mut Option<usize>,
    ) -> Result<usize, RecordError> {
        if b.get(i) != Some(&b'"') {
            if i >= b.len() {
                return err(Rule::Syntax, i, "unexpected end: a key is missing");
            }
            return err(Rule::Syntax, i, "expected a key (a string)");
        }
        let kstart = self.key_bytes.len();
        let (end, _) = self.string(b, i, true)?;
        let kend = self.key_bytes.len();
        if kend > u32::MAX as usize {
            return err(Rule::Syntax, i, "keys too long");
        }
        let new = &self.key_bytes[kstart..kend];
        let depth = self.stack.len();
        let frame = self.stack.last_mut().expect("an open object");
        let count = self.keys.len() - frame.keys_from;
        let dup = if count < LINEAR_KEYS && frame.set.is_none() {
            self.keys[frame.keys_from..]
                .iter()
                .any(|&(s, e)| &self.key_bytes[s as usize..e as usize] == new)
        } else {
            let set_idx = match frame.set {
                Some(s) => s,
                None => {
                    // Promote the object to a hash set of its keys so far.
                    let s = self.sets_used;
                    self.sets_used += 1;
                    if self.sets.len() <= s {
                        self.sets.push(HashSet::new());
                    }
                    self.sets[s].clear();
                    for &(ks, ke) in &self.keys[frame.keys_from..] {
                        let h = self
                            .hasher
                            .hash_one(&self.key_bytes[ks as usize..ke as usize]);
                        self.sets[s].insert(h);
                    }
                    frame.set = Some(s);
                    s
                }
            };
            let h = self.hasher.hash_one(new);
            !self.sets[set_idx].insert(h)
                && self.keys[frame.keys_from..]
                    .iter()
                    .any(|&(s, e)| &self.key_bytes[s as usize..e as usize] == new)
        };
        if dup {
            return err(
                Rule::DuplicateKey,
                i,
                format!("key {:?} appears twice in one object", excerpt(new)),
            );
        }
        if depth == 1 {
            *time_field = FIELDS.iter().position(|f| f.as_bytes() == new);
        }
        self.keys.push((kstart as u32, kend as u32));
        let j = skip_ws(b, end);
        match b.get(j) {
            Some(b':') => Ok(j + 1),
            None => err(Rule::Syntax, j, "unexpected end: ':' is missing"),
            Some(_) => err(Rule::Syntax, j, "expected ':' after a key"),
        }
    }

    /// Check the string starting at `b[i] == '"'`; returns the position after its
    /// closing quote and whether it had escapes. A key (`key`) is decoded into
    /// `key_bytes`.
    fn string(&mut self, b: &[u8], i: usize, key: bool) -> Result<(usize, bool), RecordError> {
        let mut j = i + 1;
        let mut run = j; // start of the bytes not yet copied into a key
        let mut escaped = false;
        loop {
            // The plain run: ASCII other than '"', '\\' and control characters, eight
            // bytes at a time while no byte of a word needs a look, then one by one.
            while let Some(w) = b.get(j..j + 8) {
                let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
                if needs_look(w) {
                    break;
                }
                j += 8;
            }
            while j < b.len() && b[j] >= 0x20 && b[j] < 0x80 && b[j] != b'"' && b[j] != b'\\' {
                j += 1;
            }
            let Some(&c) = b.get(j) else {
                return err(Rule::Syntax, i, "unterminated string");
            };
            match c {
                b'"' => {
                    if key {
                        self.key_bytes.extend_from_slice(&b[run..j]);
                    }
                    return Ok((j + 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    if key {
                        self.key_bytes.extend_from_slice(&b[run..j]);
                    }
                    let at = j;
                    let Some(&e) = b.get(j + 1) else {
                        return err(Rule::Syntax, at, "unterminated string");
                    };
                    let simple = match e {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => {
                            return err(
                                Rule::Syntax,
                                at,
                                format!("invalid escape {:?}", excerpt(&b[at..at + 2])),
                            )
                        }
                    };
                    if let Some(ch) = simple {
                        if key {
                            self.key_bytes.push(ch);
                        }
                        j += 2;
                    } else {
                        let Some(u) = hex4(b, j + 2) else {
                            return err(Rule::Syntax, at, "\\u needs four hex digits");
                        };
                        j += 6;
                        let ch = match u {
                            0xD800..=0xDBFF => {
                                let low = (b.get(j) == Some(&b'\\') && b.get(j + 1) == Some(&b'u'))
                                    .then(|| hex4(b, j + 2))
                                    .flatten()
                                    .filter(|l| (0xDC00..=0xDFFF).contains(l));
                                let Some(low) = low else {
                                    return err(
                                        Rule::LoneSurrogate,
                                        at,
                                        format!(
                                            "\\u{u:04x} is a high surrogate not followed by a low one (\\udc00-\\udfff)"
                                        ),
                                    );
                                };
                                j += 6;
                                let cp = 0x10000
                                    + ((u32::from(u) - 0xD800) << 10)
                                    + (u32::from(low) - 0xDC00);
                                char::from_u32(cp).unwrap_or('\u{FFFD}')
                            }
                            0xDC00..=0xDFFF => {
                                return err(
                                    Rule::LoneSurrogate,
                                    at,
                                    format!("\\u{u:04x} is a low surrogate without a high one before it"),
                                );
                            }
                            _ => char::from_u32(u32::from(u)).unwrap_or('\u{FFFD}'),
                        };
                        if key {
                            let mut buf = [0u8; 4];
                            self.key_bytes
                                .extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                    run = j;
                }
                c if c < 0x20 => {
                    return err(
                        Rule::Syntax,
                        j,
                        format!("control character 0x{c:02x} in a string (escape it)"),
                    );
                }
                _ => match utf8_len(b, j) {
                    Some(n) => j += n,
                    None => return err(Rule::Utf8, j, "not a UTF-8 character"),
                },
            }
        }
    }
}

/// Whether any byte of the word is '"', '\\', a control character or not ASCII (may
/// say yes for a word that needs none; never no for one that does).
fn needs_look(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = has_zero(w ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (quote | backslash | control | (w & HIGH)) != 0
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// Check the number at `b[i]`; returns the position after it.
fn number(b: &[u8], i: usize) -> Result<usize, RecordError> {
    let mut j = i;
    let bad = |j: usize| -> Result<usize, RecordError> {
        err(
            Rule::Syntax,
            i,
            format!("invalid number {:?}", excerpt(&b[i..(j + 1).min(b.len())])),
        )
    };
    if b[j] == b'-' {
        j += 1;
    }
    match b.get(j) {
        Some(b'0') => j += 1,
        Some(b'1'..=b'9') => {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
        }
        _ => return bad(j),
    }
    if b.get(j) == Some(&b'.') {
        j += 1;
        let from = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == from {
            return bad(j);
        }
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let from = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == from {
            return bad(j);
        }
    }
    // Short integers are always in range; others are looked at closely.
    let looked_at = j - i > 15 || b[i..j].iter().any(|c| matches!(c, b'e' | b'E'));
    if looked_at && !number_in_range(&b[i..j]) {
        return err(
            Rule::NumberRange,
            i,
            format!(
                "{} is beyond the range of a 64-bit float (about ±1.8e308)",
                excerpt(&b[i..j])
            ),
        );
    }
    Ok(j)
}

/// Decode the escapes of a checked string's content (between its quotes).
fn decode_escapes(raw: &[u8], out: &mut Vec<u8>) {
    let mut j = 0;
    while j < raw.len() {
        if raw[j] != b'\\' {
            out.push(raw[j]);
            j += 1;
            continue;
        }
        let e = raw[j + 1];
        let simple = match e {
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => 0,
            c => c,
        };
        if e != b'u' {
            out.push(simple);
            j += 2;
            continue;
        }
        let u = u32::from(hex4(raw, j + 2).unwrap_or(0xFFFD));
        j += 6;
        let cp = if (0xD800..=0xDBFF).contains(&u) {
            let low = u32::from(hex4(raw, j + 2).unwrap_or(0xDC00));
            j += 6;
            0x10000 + ((u - 0xD800) << 10) + (low.saturating_sub(0xDC00) & 0x3FF)
        } else {
            u
        };
        let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
}

/// Copy the checked JSON value `b` to `out` without the whitespace outside its strings
/// (a pretty-printed record becomes one NDJSON line).
pub fn compact_into(b: &[u8], out: &mut Vec<u8>) {
    let mut in_str = false;
    let mut j = 0;
    while j < b.len() {
        let c = b[j];
        if in_str {
            out.push(c);
            if c == b'\\' {
                if let Some(&n) = b.get(j + 1) {
                    out.push(n);
                }
                j += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
            out.push(c);
        } else if !is_ws(c) {
            out.push(c);
        }
        j += 1;
    }
}

#[cfg(test)]
mod tests;
