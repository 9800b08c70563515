//! One frame → one NDJSON line for the door, per the listener's format.
//!
//! NDJSON frames go to the door as they are (it checks them by the record rules); a
//! frame that does not start with `{` (after blanks) is refused here, because the door would read a
//! batch that starts with `[` as one JSON array. Syslog frames become the record of
//! [`super::syslog`]. In `auto`, a frame starting with `{` (after blanks) is NDJSON, any
//! other syslog.

use weir_core::listeners::TcpFormat;

use super::syslog::{self, SyslogError};

/// Why a frame was refused before the door.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameReject {
    #[error("not a JSON object")]
    NotObject,
    #[error("a JSON record in an octet-counted frame holds a line break")]
    Multiline,
    #[error(transparent)]
    Syslog(#[from] SyslogError),
}

impl FrameReject {
    pub fn reason(&self) -> &'static str {
        match self {
            FrameReject::NotObject | FrameReject::Multiline => "not_object",
            FrameReject::Syslog(e) => e.reason(),
        }
    }
}

/// Append the record of `frame` (received at `now_ms`) and its LF to `out`.
pub fn append(
    format: TcpFormat,
    frame: &[u8],
    now_ms: i64,
    out: &mut Vec<u8>,
) -> Result<(), FrameReject> {
    let json = frame.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match format {
        TcpFormat::Ndjson if !json => Err(FrameReject::NotObject),
        TcpFormat::Ndjson | TcpFormat::Auto if json => {
            // The door reads one record per line: a frame must not become two.
            if memchr::memchr2(b'\n', b'\r', frame).is_some() {
                return Err(FrameReject::Multiline);
            }
            out.extend_from_slice(frame);
            out.push(b'\n');
            Ok(())
        }
        _ => {
            let rec = syslog::parse(frame, now_ms)?;
            // A map of strings always serialises.
            serde_json::to_writer(&mut *out, &rec).map_err(|_| FrameReject::NotObject)?;
            out.push(b'\n');
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let mut out = Vec::new();
        append(TcpFormat::Ndjson, b"{\"a\":1}", 0, &mut out).unwrap();
        assert_eq!(
            append(TcpFormat::Ndjson, b"[{\"a\":1}]", 0, &mut out),
            Err(FrameReject::NotObject)
        );
        assert_eq!(
            append(TcpFormat::Ndjson, b"<13>1 - - - - - -", 0, &mut out),
            Err(FrameReject::NotObject)
        );
        append(TcpFormat::Auto, b" \t{\"b\":2}", 0, &mut out).unwrap();
        append(TcpFormat::Auto, b"<13>1 - h - - - - hi", 0, &mut out).unwrap();
        append(TcpFormat::Syslog, b"<13>hi", 0, &mut out).unwrap();
        // Octet counting lets a frame hold LFs; one frame never becomes two records.
        assert_eq!(
            append(TcpFormat::Auto, b"{\"a\":1}\n{\"b\":2}", 0, &mut out),
            Err(FrameReject::Multiline)
        );
        let e = append(TcpFormat::Syslog, b"{\"a\":1}", 0, &mut out).unwrap_err();
        assert_eq!(e.reason(), "syslog_pri");
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1]["b"], 2, "leading blanks are no reason to refuse");
        assert_eq!(lines[2]["message"], "hi");
        assert_eq!(lines[2]["hostname"], "h");
        assert_eq!(lines[3]["syslog"], "rfc3164");
    }
}
