//! Turning a request body into validated NDJSON, line by line.
//!
//! A body is NDJSON (one JSON object per line) or one JSON array of objects, optionally
//! gzip- or zstd-compressed. Each record is checked on its own: a line that is not valid
//! UTF-8, not valid JSON, not an object, or longer than the record limit is rejected with
//! its 1-based line number (or array index) and a reason; every other record is kept.

use std::io::Read;

use serde::Serialize;

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

impl Parsed {
    pub(crate) fn reject(&mut self, line: usize, reason: impl Into<String>) {
        self.rejected += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(LineError {
                line,
                reason: reason.into(),
            });
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
    match first.map(|i| body[i]) {
        Some(b'[') => parse_array(body, max_record),
        _ => parse_ndjson(body, max_record),
    }
}

fn parse_ndjson(body: &[u8], max_record: usize) -> Parsed {
    let mut p = Parsed {
        records: Vec::with_capacity(body.len() + 1),
        ..Default::default()
    };
    for (i, raw) in weir_core::batch::lines(body).enumerate() {
        let line = trim(raw);
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        if line.len() > max_record {
            p.reject(
                n,
                format!(
                    "record of {} bytes exceeds the limit of {max_record}",
                    line.len()
                ),
            );
            continue;
        }
        if line[0] != b'{' {
            p.reject(n, "not a JSON object");
            continue;
        }
        if let Err(e) = std::str::from_utf8(line) {
            p.reject(n, format!("invalid UTF-8: {e}"));
            continue;
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line) {
            p.reject(n, format!("invalid JSON: {e}"));
            continue;
        }
        p.records.extend_from_slice(line);
        p.records.push(b'\n');
        p.count += 1;
        p.line_numbers.push(n);
    }
    p
}

fn parse_array(body: &[u8], max_record: usize) -> Parsed {
    let mut p = Parsed::default();
    let items: Vec<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            p.reject(e.line(), format!("invalid JSON array: {e}"));
            return p;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let n = i + 1;
        if !item.is_object() {
            p.reject(n, "array element is not a JSON object");
            continue;
        }
        let text = item.to_string();
        if text.len() > max_record {
            p.reject(
                n,
                format!(
                    "record of {} bytes exceeds the limit of {max_record}",
                    text.len()
                ),
            );
            continue;
        }
        p.records.extend_from_slice(text.as_bytes());
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
