//! Turning a request body into validated NDJSON, line by line.
//!
//! A body is NDJSON (one JSON object per line) or one JSON array of objects, optionally
//! gzip- or zstd-compressed. Each record is checked on its own by the record rules
//! ([`weir_core::record`]: UTF-8, JSON, an object, numbers within f64, no lone
//! surrogates, depth, no duplicate keys) and its time fields by the accepted time range
//! ([`weir_core::time`]); a record that breaks one, or is longer than the record limit,
//! is rejected with its 1-based line number (or array index) and a reason; every other
//! record is kept.

use std::io::Read;

use serde::Serialize;
use weir_core::record::{compact_into, Checker};

/// A rejected line and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// The valid records of a body, as NDJSON, and the rejected lines.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub records: Vec<u8>,
    pub count: u32,
    /// The 1-based line (or array index) each kept record came from.
    pub line_numbers: Vec<usize>,
    pub rejected: usize,
    /// The first rejected lines (at most [`MAX_ERRORS`]).
    pub errors: Vec<LineError>,
}

/// Errors listed in a response; `rejected` still counts them all.
pub const MAX_ERRORS: usize = 100;
/// Longest reason listed (longer ones are cut, marked with `…`).
pub const MAX_REASON_BYTES: usize = 256;

impl Parsed {
    pub(crate) fn reject(&mut self, line: usize, reason: impl Into<String>) {
        self.rejected += 1;
        if self.errors.len() < MAX_ERRORS {
            let mut reason = reason.into();
            // Reasons may quote the input: bound what an answer (and the answer an
            // idempotency key keeps) can hold.
            if reason.len() > MAX_REASON_BYTES {
                let mut cut = MAX_REASON_BYTES;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
                reason.push('…');
            }
            self.errors.push(LineError { line, reason });
        }
    }
}

/// Why a whole body is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Decompressed size over the limit (413).
    TooLarge,
    /// Unknown `Content-Encoding` (415).
    UnsupportedEncoding(String),
    /// Corrupt compressed data (400).
    BadEncoding(String),
}

/// Decompress per `Content-Encoding`, refusing bodies that expand beyond `max`.
pub fn decode_body<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    max: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, BodyError> {
    let mut out = Vec::new();
    let limit = max as u64 + 1;
    let res = match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => {
            return if body.len() > max {
                Err(BodyError::TooLarge)
            } else {
                Ok(body.into())
            }
        }
        Some("gzip") | Some("x-gzip") => flate2::read::MultiGzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out),
        Some("zstd") => match zstd::stream::read::Decoder::new(body) {
            Ok(d) => d.take(limit).read_to_end(&mut out),
            Err(e) => Err(e),
        },
        Some(other) => return Err(BodyError::UnsupportedEncoding(other.into())),
    };
    res.map_err(|e| BodyError::BadEncoding(e.to_string()))?;
    if out.len() > max {
        return Err(BodyError::TooLarge);
    }
    Ok(out.into())
}

/// Validate a (decompressed) body.
pub fn parse_body(body: &[u8], max_record: usize) -> Parsed {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    match first {
        Some(i) if body[i] == b'[' => parse_array(body, i, max_record),
        _ => parse_ndjson(body, max_record),
    }
}

fn too_large(len: usize, max_record: usize) -> String {
    format!("record of {len} bytes exceeds the limit of {max_record}")
}

/// The record rules and the time range for one record: None when it may be kept.
fn check_one(checker: &mut Checker, rec: &[u8]) -> Option<String> {
    match checker.check(rec) {
        Err(e) => Some(e.to_string()),
        Ok(times) => times.event_time().out_of_range.map(|o| o.to_string()),
    }
}

fn parse_ndjson(body: &[u8], max_record: usize) -> Parsed {
    let mut p = Parsed {
        records: Vec::with_capacity(body.len() + 1),
        ..Default::default()
    };
    let mut checker = Checker::default();
    for (i, raw) in weir_core::batch::lines(body).enumerate() {
        let line = trim(raw);
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        if line.len() > max_record {
            p.reject(n, too_large(line.len(), max_record));
            continue;
        }
        if let Some(why) = check_one(&mut checker, line) {
            p.reject(n, why);
            continue;
        }
        p.records.extend_from_slice(line);
        p.records.push(b'\n');
        p.count += 1;
        p.line_numbers.push(n);
    }
    p
}

/// The byte spans of the elements of the array opening at `body[open]`, found by
/// brackets and strings alone (each element is checked on its own afterwards), or where
/// and why the array itself is broken.
fn array_elements(body: &[u8], open: usize) -> Result<Vec<(usize, usize)>, (usize, String)> {
    let mut spans = Vec::new();
    let mut i = open + 1;
    let mut start = i;
    let mut depth = 0usize;
    let mut in_str = false;
    while i < body.len() {
        let c = body[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' => depth = depth.saturating_sub(1),
                b']' if depth > 0 => depth -= 1,
                b',' | b']' if depth == 0 => {
                    let empty = trim(&body[start..i]).is_empty();
                    // `[]` has no element; `[1,]` has an empty (refused) second one.
                    if !(c == b']' && empty && spans.is_empty()) {
                        spans.push((start, i));
                    }
                    if c == b']' {
                        return match trim(&body[i + 1..]) {
                            [] => Ok(spans),
                            _ => Err((spans.len(), "trailing characters after the array".into())),
                        };
                    }
                    start = i + 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    Err((
        spans.len() + 1,
        "unexpected end: the array is not closed".into(),
    ))
}

fn parse_array(body: &[u8], open: usize, max_record: usize) -> Parsed {
    let mut p = Parsed::default();
    let spans = match array_elements(body, open) {
        Ok(s) => s,
        Err((n, why)) => {
            p.reject(n.max(1), format!("invalid JSON array: {why}"));
            return p;
        }
    };
    p.records.reserve(body.len());
    let mut checker = Checker::default();
    for (k, (s, e)) in spans.into_iter().enumerate() {
        let n = k + 1;
        let item = trim(&body[s..e]);
        if item.is_empty() {
            p.reject(n, "invalid JSON: missing array element");
            continue;
        }
        if item[0] != b'{' {
            p.reject(n, "array element is not a JSON object");
            continue;
        }
        if let Some(why) = check_one(&mut checker, item) {
            p.reject(n, why);
            continue;
        }
        let at = p.records.len();
        compact_into(item, &mut p.records);
        let len = p.records.len() - at;
        if len > max_record {
            p.records.truncate(at);
            p.reject(n, too_large(len, max_record));
            continue;
        }
        p.records.push(b'\n');
        p.count += 1;
        p.line_numbers.push(n);
    }
    p
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_reasons_are_bounded() {
        let mut p = Parsed::default();
        p.reject(1, format!("name {:?} is bad", "é".repeat(1000)));
        let r = &p.errors[0].reason;
        assert!(r.len() <= MAX_REASON_BYTES + '…'.len_utf8(), "{}", r.len());
        assert!(r.ends_with('…'));
        p.reject(2, "short");
        assert_eq!(p.errors[1].reason, "short");
    }
    use std::io::Write;

    #[test]
    fn ndjson_keeps_good_lines_and_names_bad_ones() {
        let body =
            b"{\"a\":1}\r\n\n  {\"b\":2}  \nnot json\n[1,2]\n{\"c\":\n{\"d\":\"\xff\"}\n{\"e\":3}";
        let p = parse_body(body, 1 << 20);
        assert_eq!(p.count, 3);
        assert_eq!(p.records, b"{\"a\":1}\n{\"b\":2}\n{\"e\":3}\n");
        let lines: Vec<usize> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7]);
        assert_eq!(p.rejected, 4);
        assert!(
            p.errors[2].reason.contains("invalid JSON"),
            "{:?}",
            p.errors[2]
        );
        assert!(p.errors[3].reason.contains("UTF-8"), "{:?}", p.errors[3]);
    }

    /// Every line a later stage could not read is refused at the door with its number
    /// and the rule it breaks; its neighbours are kept.
    #[test]
    fn hostile_lines_are_refused_one_by_one() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(199), "]".repeat(199));
        let lines = [
            r#"{"ok":1}"#.to_owned(),
            r#"{"x":1e400}"#.to_owned(),
            r#"{"x":"\ud800"}"#.to_owned(),
            deep,
            r#"{"level":"a","level":"b"}"#.to_owned(),
            r#"{"a":1,"\u0061":2}"#.to_owned(),
            r#"{"ts":1e300}"#.to_owned(),
            r#"{"timestamp":"2201-01-01T00:00:00Z"}"#.to_owned(),
            r#"{"ok":2,"x":1e308,"s":"\ud83d\ude00","ts":1795827723}"#.to_owned(),
        ];
        let body = lines.join("\n");
        let p = parse_body(body.as_bytes(), 1 << 20);
        assert_eq!(p.count, 2);
        assert_eq!(p.line_numbers, vec![1, 9]);
        assert_eq!(
            p.records,
            format!("{}\n{}\n", lines[0], lines[8]).as_bytes()
        );
        let why: Vec<(usize, &str)> = p
            .errors
            .iter()
            .map(|e| (e.line, e.reason.as_str()))
            .collect();
        let want = [
            (2, "number out of range: 1e400"),
            (3, "lone surrogate: \\ud800"),
            (4, "nested too deep: more than 64 levels"),
            (5, "duplicate key: key \"level\""),
            (6, "duplicate key: key \"a\""),
            (7, "ts 1e300 is outside the accepted time range"),
            (8, "timestamp \"2201-01-01T00:00:00Z\" is outside"),
        ];
        assert_eq!(why.len(), want.len(), "{why:?}");
        for ((line, reason), (wl, wr)) in why.iter().zip(want) {
            assert_eq!(*line, wl, "{why:?}");
            assert!(reason.starts_with(wr), "line {line}: {reason}");
        }
    }

    #[test]
    fn array_elements_are_checked_by_the_same_rules() {
        let body = br#"[{"a":1}, {"x":1e400}, {"level":"a","level":"b"}, {"ts":1e300},
            {"b" : [1, {"c":"\ud83d\ude00 ] , }"}]}, {}]"#;
        let p = parse_body(body, 1 << 20);
        assert_eq!(
            std::str::from_utf8(&p.records).unwrap(),
            "{\"a\":1}\n{\"b\":[1,{\"c\":\"\\ud83d\\ude00 ] , }\"}]}\n{}\n"
        );
        assert_eq!(p.line_numbers, vec![1, 5, 6]);
        let why: Vec<(usize, &str)> = p
            .errors
            .iter()
            .map(|e| (e.line, e.reason.as_str()))
            .collect();
        assert_eq!(
            why.iter().map(|w| w.0).collect::<Vec<_>>(),
            vec![2, 3, 4],
            "{why:?}"
        );
        assert!(why[0].1.starts_with("number out of range"), "{why:?}");
        assert!(why[1].1.starts_with("duplicate key"), "{why:?}");
        assert!(
            why[2].1.contains("outside the accepted time range"),
            "{why:?}"
        );
        // A broken element is refused alone; a broken array is refused whole.
        let p = parse_body(br#"[{"a":1}, {"b":}, {"c":3},]"#, 1 << 20);
        assert_eq!((p.count, p.line_numbers.clone()), (2, vec![1, 3]));
        assert_eq!(
            p.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 4]
        );
        for broken in [&br#"[{"a":1}"#[..], br#"[{"a":1}] x"#, br#"[{"a":"]"#] {
            let p = parse_body(broken, 1 << 20);
            assert_eq!((p.count, p.rejected), (0, 1), "{:?}", p.errors);
            assert!(p.errors[0].reason.starts_with("invalid JSON array"));
        }
        assert_eq!(parse_body(b" [ ] ", 1 << 20), Parsed::default());
    }

    #[test]
    fn arrays_are_flattened_to_ndjson() {
        let p = parse_body(b" [ {\"a\":\n 1}, 2, {\"b\":[3]} ]", 1 << 20);
        assert_eq!(p.records, b"{\"a\":1}\n{\"b\":[3]}\n");
        assert_eq!(
            p.errors,
            vec![LineError {
                line: 2,
                reason: "array element is not a JSON object".into()
            }]
        );
        let bad = parse_body(b"[{\"a\":1},", 1 << 20);
        assert_eq!((bad.count, bad.rejected), (0, 1));
    }

    #[test]
    fn record_limit_and_error_cap() {
        let p = parse_body(b"{\"a\":\"0123456789\"}\n{}\n", 10);
        assert_eq!((p.count, p.rejected), (1, 1));
        let many: Vec<u8> = b"x\n".repeat(500);
        let p = parse_body(&many, 100);
        assert_eq!((p.rejected, p.errors.len()), (500, MAX_ERRORS));
    }

    #[test]
    fn decoding() {
        let raw = b"{\"a\":1}\n".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            decode_body(Some("gzip"), &gz, 1 << 20).unwrap().as_ref(),
            &raw[..]
        );
        let zs = zstd::encode_all(&raw[..], 3).unwrap();
        assert_eq!(
            decode_body(Some("zstd"), &zs, 1 << 20).unwrap().as_ref(),
            &raw[..]
        );
        assert_eq!(
            decode_body(Some("gzip"), &gz, 100),
            Err(BodyError::TooLarge),
            "zip bombs stop at the limit"
        );
        assert!(matches!(
            decode_body(Some("br"), &gz, 100),
            Err(BodyError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            decode_body(Some("gzip"), b"nope", 100),
            Err(BodyError::BadEncoding(_))
        ));
        assert_eq!(decode_body(None, &raw, 10), Err(BodyError::TooLarge));
    }
}
