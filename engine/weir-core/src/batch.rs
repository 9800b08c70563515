//! Batches of records and their encoding in the log.
//!
//! A [`Batch`] holds the records of one request for one tenant and stream as NDJSON: each
//! record is one compact JSON object followed by `\n`. NDJSON is also what crosses the
//! Wasm boundary (see `wit/`), so a batch goes from the socket to the plugin without being
//! re-serialised.
//!
//! Encoding (little endian), version 1:
//! `[1u8][tenant_len u16][tenant][stream_len u16][stream][ingest_ts_ms i64][count u32][ndjson]`;
//! version 2, a replay of a dead letter, adds the dead letter's key after `count`:
//! `[2u8]...[count u32][dead_partition u32][dead_offset u64][ndjson]`.

use thiserror::Error;

const VERSION: u8 = 1;
const VERSION_REPLAY: u8 = 2;

/// Records of one tenant and stream, as NDJSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub tenant: String,
    pub stream: String,
    /// Milliseconds since the Unix epoch when the batch was accepted. Records without a
    /// timestamp of their own take this one, so a replay gives the same rows.
    pub ingest_ts_ms: i64,
    /// Number of records (lines) in `records`.
    pub count: u32,
    /// NDJSON: each record is one line ending in `\n`.
    pub records: Vec<u8>,
    /// For a replay of a dead letter, its `(partition, offset)`: the store lands the
    /// outcome only if that dead letter still exists, and removes it in the same commit.
    pub replay_of: Option<(u32, u64)>,
}

/// A log entry that cannot be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchDecodeError {
    #[error("log entry is truncated")]
    Truncated,
    #[error("unsupported log entry version {0}")]
    Version(u8),
    #[error("log entry has a name that is not UTF-8")]
    NotUtf8,
}

impl Batch {
    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        let replay = if self.replay_of.is_some() { 12 } else { 0 };
        1 + 2 + self.tenant.len() + 2 + self.stream.len() + 8 + 4 + replay + self.records.len()
    }

    /// Append the encoding of this batch to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(if self.replay_of.is_some() {
            VERSION_REPLAY
        } else {
            VERSION
        });
        for name in [&self.tenant, &self.stream] {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(&self.ingest_ts_ms.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        if let Some((p, o)) = self.replay_of {
            out.extend_from_slice(&p.to_le_bytes());
            out.extend_from_slice(&o.to_le_bytes());
        }
        out.extend_from_slice(&self.records);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn decode(mut buf: &[u8]) -> Result<Batch, BatchDecodeError> {
        fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], BatchDecodeError> {
            if buf.len() < n {
                return Err(BatchDecodeError::Truncated);
            }
            let (head, rest) = buf.split_at(n);
            *buf = rest;
            Ok(head)
        }
        let version = take(&mut buf, 1)?[0];
        if version != VERSION && version != VERSION_REPLAY {
            return Err(BatchDecodeError::Version(version));
        }
        let mut names = [String::new(), String::new()];
        for name in &mut names {
            let len = u16::from_le_bytes(take(&mut buf, 2)?.try_into().expect("2 bytes"));
            let bytes = take(&mut buf, len as usize)?;
            *name = std::str::from_utf8(bytes)
                .map_err(|_| BatchDecodeError::NotUtf8)?
                .to_owned();
        }
        let ingest_ts_ms = i64::from_le_bytes(take(&mut buf, 8)?.try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(take(&mut buf, 4)?.try_into().expect("4 bytes"));
        let replay_of = if version == VERSION_REPLAY {
            let p = u32::from_le_bytes(take(&mut buf, 4)?.try_into().expect("4 bytes"));
            let o = u64::from_le_bytes(take(&mut buf, 8)?.try_into().expect("8 bytes"));
            Some((p, o))
        } else {
            None
        };
        let [tenant, stream] = names;
        Ok(Batch {
            tenant,
            stream,
            ingest_ts_ms,
            count,
            records: buf.to_vec(),
            replay_of,
        })
    }

    /// Iterate the records (lines without their `\n`).
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        ndjson_lines(&self.records)
    }
}

/// Iterate the non-empty lines of an NDJSON buffer (without their `\n`).
pub fn ndjson_lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    lines(buf).filter(|l| !l.is_empty())
}

/// Iterate every line of a buffer, split at `\n` with a vectorised search (the last
/// line may lack its `\n`; an empty buffer has no lines).
pub fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    let mut done = buf.is_empty();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let line = &rest[..i];
                rest = &rest[i + 1..];
                done = rest.is_empty();
                Some(line)
            }
            None => {
                done = true;
                Some(rest)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        Batch {
            tenant: "acme".into(),
            stream: "app".into(),
            ingest_ts_ms: 1_700_000_000_123,
            count: 2,
            records: b"{\"a\":1}\n{\"b\":\"x\"}\n".to_vec(),
            replay_of: None,
        }
    }

    fn replay() -> Batch {
        Batch {
            replay_of: Some((3, 1 << 40)),
            ..sample()
        }
    }

    #[test]
    fn roundtrip() {
        for b in [sample(), replay()] {
            let enc = b.encode();
            assert_eq!(enc.len(), b.encoded_len());
            assert_eq!(Batch::decode(&enc).unwrap(), b);
            assert_eq!(b.lines().count(), 2);
        }
        assert_eq!(sample().encode()[0], 1, "plain batches keep version 1");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for b in [sample(), replay()] {
            let enc = b.encode();
            let header = enc.len() - b.records.len();
            for n in 0..header {
                assert_eq!(
                    Batch::decode(&enc[..n]),
                    Err(BatchDecodeError::Truncated),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn line_splitting() {
        let all = |b: &'static [u8]| lines(b).collect::<Vec<_>>();
        assert_eq!(all(b""), Vec::<&[u8]>::new());
        assert_eq!(all(b"a\n\nb"), vec![&b"a"[..], b"", b"b"]);
        assert_eq!(all(b"a\n"), vec![&b"a"[..]]);
        assert_eq!(
            ndjson_lines(b"\n\na\n\nb\n").collect::<Vec<_>>(),
            vec![&b"a"[..], b"b"]
        );
    }

    #[test]
    fn bad_version() {
        let mut enc = sample().encode();
        enc[0] = 9;
        assert_eq!(Batch::decode(&enc), Err(BatchDecodeError::Version(9)));
    }
}
