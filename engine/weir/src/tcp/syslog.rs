//! One syslog message (RFC 5424 or RFC 3164, told apart per message) → one JSON record.
//!
//! Both start with `<PRI>` (0..=191); a message without it is refused, so a stray line
//! on a syslog connection is counted as bad instead of stored as text. After `<PRI>`,
//! a version number and a space (`1 `) mean RFC 5424, anything else RFC 3164.
//!
//! The record (fields absent when the message has no value, RFC 5424's `-`):
//!
//! | field | from |
//! |---|---|
//! | `syslog` | `"rfc5424"` or `"rfc3164"` |
//! | `facility` | PRI / 8 as a name: `kern`, `user`, `mail`, `daemon`, `auth`, `syslog`, `lpr`, `news`, `uucp`, `cron`, `authpriv`, `ftp`, `ntp`, `audit`, `alert`, `clock`, `local0`..`local7` |
//! | `level` | PRI % 8 as a name: `emerg`, `alert`, `crit`, `err`, `warning`, `notice`, `info`, `debug` |
//! | `ts` | TIMESTAMP as RFC 3339 text (the row's event time; without one, the ingest time) |
//! | `hostname`, `app_name`, `procid`, `msgid` | the header fields (RFC 3164: HOSTNAME, TAG, `[pid]`) |
//! | `sd` | RFC 5424 STRUCTURED-DATA: `{"SD-ID": {"PARAM": "value", ...}, ...}` |
//! | `message` | MSG, without a leading UTF-8 BOM or trailing CR/LF |
//!
//! RFC 5424 is parsed strictly (header tokens of printable ASCII up to 255 bytes, a
//! valid RFC 3339 TIMESTAMP, well-formed SD with `\"`, `\\` and `\]` unescaped; a
//! parameter or SD-ID that repeats gathers its values in an array). RFC 3164 is read
//! leniently, as senders write it: TIMESTAMP is `Mmm dd hh:mm:ss` (or RFC 3339, as
//! rsyslog's `RSYSLOG_ForwardFormat` sends), HOSTNAME follows it, then `TAG:`,
//! `TAG[pid]:` or `TAG[pid] `;
//! what does not fit goes to `message`. A BSD timestamp has no year and no zone: it is
//! read as UTC in the latest year that puts it at most a day after the time it was
//! received (so `Dec 31 23:59:59` received on January 1st is last year's, and
//! `Jan 1 00:00:01` received on December 31st next year's). A message that is not UTF-8
//! is refused (records are JSON text).

use serde_json::{Map, Value};
use thiserror::Error;

/// Why a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SyslogError {
    #[error("not syslog: a message starts with <PRI>")]
    NoPri,
    #[error("PRI must be 0..=191")]
    BadPri,
    #[error("message is not UTF-8")]
    NotUtf8,
    #[error("RFC 5424 header: {0}")]
    Header(&'static str),
    #[error("RFC 5424 TIMESTAMP is not RFC 3339: {0:?}")]
    Timestamp(String),
    #[error("RFC 5424 STRUCTURED-DATA: {0}")]
    StructuredData(&'static str),
}

impl SyslogError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SyslogError::NoPri | SyslogError::BadPri => "syslog_pri",
            SyslogError::NotUtf8 => "not_utf8",
            SyslogError::Header(_) | SyslogError::Timestamp(_) => "syslog_header",
            SyslogError::StructuredData(_) => "syslog_sd",
        }
    }
}

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];
/// Longest RFC 5424 header token accepted (the RFC's longest, HOSTNAME, is 255).
const MAX_TOKEN: usize = 255;
const BOM: &str = "\u{feff}";

/// Parse one message (a frame without its framing) received at `now_ms`.
pub fn parse(frame: &[u8], now_ms: i64) -> Result<Map<String, Value>, SyslogError> {
    let text = std::str::from_utf8(frame).map_err(|_| SyslogError::NotUtf8)?;
    let text = text.trim_end_matches(['\r', '\n']);
    let (pri, rest) = pri(text)?;
    let mut rec = Map::new();
    let is_5424 = version(rest).is_some();
    rec.insert(
        "syslog".into(),
        (if is_5424 { "rfc5424" } else { "rfc3164" }).into(),
    );
    rec.insert("facility".into(), FACILITIES[usize::from(pri / 8)].into());
    rec.insert("level".into(), SEVERITIES[usize::from(pri % 8)].into());
    match version(rest) {
        Some(after) => rfc5424(after, &mut rec)?,
        None => rfc3164(rest, now_ms, &mut rec),
    }
    Ok(rec)
}

/// `<PRI>` and what follows it.
fn pri(text: &str) -> Result<(u8, &str), SyslogError> {
    let body = text.strip_prefix('<').ok_or(SyslogError::NoPri)?;
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 3 || body.as_bytes().get(digits) != Some(&b'>') {
        return Err(SyslogError::NoPri);
    }
    let value: u16 = body[..digits].parse().map_err(|_| SyslogError::BadPri)?;
    if value > 191 {
        return Err(SyslogError::BadPri);
    }
    Ok((value as u8, &body[digits + 1..]))
}

/// After `<PRI>`: the rest of an RFC 5424 message when VERSION (`1`) and a space
/// follow. Other versions are not syslog as this parser knows it: read as RFC 3164.
fn version(rest: &str) -> Option<&str> {
    rest.strip_prefix("1 ")
}

/// The next space-separated token and the rest after its space (empty at the end).
fn token(s: &str) -> (&str, &str) {
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn header_field(
    rec: &mut Map<String, Value>,
    name: &str,
    s: &str,
    last: bool,
) -> Result<(), SyslogError> {
    if s.is_empty() {
        return Err(SyslogError::Header(if last {
            "missing fields (TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA)"
        } else {
            "empty field (two spaces)"
        }));
    }
    if s.len() > MAX_TOKEN || !s.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(SyslogError::Header(
            "fields are 1-255 printable ASCII characters",
        ));
    }
    if s != "-" {
        rec.insert(name.into(), s.into());
    }
    Ok(())
}

fn rfc5424(rest: &str, rec: &mut Map<String, Value>) -> Result<(), SyslogError> {
    let (ts, rest) = token(rest);
    if ts.is_empty() {
        return Err(SyslogError::Header("missing TIMESTAMP"));
    }
    if ts != "-" {
        let valid = ts.len() > 10
            && ts.as_bytes()[10] == b'T'
            && weir_core::time::parse_text_ms(ts).is_some();
        if !valid {
            return Err(SyslogError::Timestamp(ts.chars().take(64).collect()));
        }
        rec.insert("ts".into(), ts.into());
    }
    let mut rest = rest;
    for name in ["hostname", "app_name", "procid", "msgid"] {
        let (value, after) = token(rest);
        header_field(rec, name, value, rest.is_empty())?;
        rest = after;
    }
    if rest.is_empty() {
        return Err(SyslogError::Header("missing STRUCTURED-DATA"));
    }
    let msg = if let Some(after) = rest.strip_prefix('-') {
        after
    } else {
        let (sd, after) = structured_data(rest)?;
        rec.insert("sd".into(), Value::Object(sd));
        after
    };
    let msg = match msg {
        "" => return Ok(()),
        m => m
            .strip_prefix(' ')
            .ok_or(SyslogError::StructuredData("expected a space after it"))?,
    };
    let msg = msg.strip_prefix(BOM).unwrap_or(msg);
    if !msg.is_empty() {
        rec.insert("message".into(), msg.into());
    }
    Ok(())
}

/// An SD-NAME: 1-32 printable ASCII characters except `=`, space, `]` and `"`.
fn sd_name(s: &str) -> Result<(&str, &str), SyslogError> {
    let n = s
        .bytes()
        .take_while(|b| (33..=126).contains(b) && !matches!(b, b'=' | b']' | b'"'))
        .count();
    if n == 0 || n > 32 {
        return Err(SyslogError::StructuredData(
            "names are 1-32 printable characters",
        ));
    }
    Ok((&s[..n], &s[n..]))
}

/// Add `value` under `key`; a key seen before gathers its values in an array.
fn add(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get_mut(key) {
        None => {
            map.insert(key.into(), value);
        }
        Some(Value::Array(a)) if !value.is_object() => a.push(value),
        Some(Value::Object(old)) => {
            if let Value::Object(new) = value {
                for (k, v) in new {
                    add(old, &k, v);
                }
            }
        }
        Some(old) => {
            let first = old.take();
            *old = Value::Array(vec![first, value]);
        }
    }
}

/// SD-ELEMENTs from `s` (starting at `[`): the object and what follows them.
fn structured_data(mut s: &str) -> Result<(Map<String, Value>, &str), SyslogError> {
    let mut sd = Map::new();
    while let Some(body) = s.strip_prefix('[') {
        let (id, mut rest) = sd_name(body)?;
        let mut params = Map::new();
        loop {
            if let Some(after) = rest.strip_prefix(']') {
                rest = after;
                break;
            }
            rest = rest.strip_prefix(' ').ok_or(SyslogError::StructuredData(
                "expected ' ' or ']' in an element",
            ))?;
            let (name, after) = sd_name(rest)?;
            let after = after
                .strip_prefix("=\"")
                .ok_or(SyslogError::StructuredData(
                    "expected =\"value\" after a name",
                ))?;
            let (value, after) = param_value(after)?;
            add(&mut params, name, Value::String(value));
            rest = after;
        }
        add(&mut sd, id, Value::Object(params));
        s = rest;
    }
    Ok((sd, s))
}

/// A PARAM-VALUE after its opening quote: unescaped, and what follows the closing
/// quote. `\"`, `\\` and `\]` stand for the character; any other backslash is kept.
fn param_value(s: &str) -> Result<(String, &str), SyslogError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match s[i + 1..].chars().next() {
                Some(e @ ('"' | '\\' | ']')) => {
                    out.push(e);
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    Err(SyslogError::StructuredData("a value is not closed by '\"'"))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A BSD timestamp `Mmm dd hh:mm:ss` (day space-padded or not, optional `.fff`) at the
/// start of `s`: (month 1-12, day, "hh:mm:ss[.fff]") and the rest after its space.
fn bsd_timestamp(s: &str) -> Option<((u32, u32, &str), &str)> {
    let month = MONTHS.iter().position(|m| s.starts_with(m))? as u32 + 1;
    let s = s.get(3..)?.strip_prefix(' ')?;
    let s = s.strip_prefix(' ').unwrap_or(s);
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if !(1..=2).contains(&digits) {
        return None;
    }
    let day: u32 = s[..digits].parse().ok()?;
    let s = s[digits..].strip_prefix(' ')?;
    let (time, rest) = token(s);
    let b = time.as_bytes();
    let clock = b.len() >= 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
        && (b.len() == 8 || (b[8] == b'.' && b.len() > 9 && b[9..].iter().all(u8::is_ascii_digit)));
    clock.then_some(((month, day, time), rest))
}

/// How far after its receipt a BSD timestamp may lie (clocks and zones differ).
const AHEAD_MS: i64 = 86_400_000;

/// The RFC 3339 text of a BSD timestamp in the latest of next, this and last year (UTC)
/// that puts it at most [`AHEAD_MS`] after `now_ms`.
fn bsd_to_rfc3339((month, day, time): (u32, u32, &str), now_ms: i64) -> Option<String> {
    let year = civil_year(now_ms);
    [year + 1, year, year - 1].into_iter().find_map(|y| {
        let text = format!("{y:04}-{month:02}-{day:02}T{time}Z");
        let ms = weir_core::time::parse_text_ms(&text)?;
        (ms <= now_ms.saturating_add(AHEAD_MS)).then_some(text)
    })
}

/// The UTC calendar year of an epoch time in milliseconds.
fn civil_year(ms: i64) -> i64 {
    // Days since 1970-01-01 → civil date (proleptic Gregorian, eras of 400 years).
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month_is_jan_or_feb = mp >= 10;
    yoe + era * 400 + i64::from(month_is_jan_or_feb)
}

/// A TAG (`[A-Za-z0-9_.\-/]`, up to 48 characters) with an optional `[pid]`, ended by
/// `:` (or, after a `[pid]`, by a space): (tag, pid) and the message after the colon and
/// one space.
fn tag(s: &str) -> Option<((&str, Option<&str>), &str)> {
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
        .count();
    if n == 0 || n > 48 {
        return None;
    }
    let (name, mut rest) = s.split_at(n);
    let mut pid = None;
    if let Some(after) = rest.strip_prefix('[') {
        let close = after.find(']')?;
        let p = &after[..close];
        if p.is_empty() || p.len() > 128 || !p.bytes().all(|b| (33..=126).contains(&b)) {
            return None;
        }
        pid = Some(p);
        rest = &after[close + 1..];
    }
    // `TAG:` or `TAG[pid]:`; rsyslog forwards a tag without its colon as `TAG[pid] `.
    let rest = match rest.strip_prefix(':') {
        Some(r) => r.strip_prefix(' ').unwrap_or(r),
        None if pid.is_some() => rest.strip_prefix(' ').or(rest.is_empty().then_some(rest))?,
        None => return None,
    };
    Some(((name, pid), rest))
}

fn rfc3164(rest: &str, now_ms: i64, rec: &mut Map<String, Value>) {
    let mut rest = rest;
    let mut stamped = false;
    if let Some((parts, after)) = bsd_timestamp(rest) {
        if let Some(ts) = bsd_to_rfc3339(parts, now_ms) {
            rec.insert("ts".into(), ts.into());
            rest = after;
            stamped = true;
        }
    } else {
        let (t, after) = token(rest);
        if t.len() > 10 && t.as_bytes()[10] == b'T' && weir_core::time::parse_text_ms(t).is_some() {
            rec.insert("ts".into(), t.into());
            rest = after;
            stamped = true;
        }
    }
    // HOSTNAME follows a timestamp, unless the next token is already the TAG.
    if stamped && tag(rest).is_none() {
        let (host, after) = token(rest);
        if !host.is_empty() && host.bytes().all(|b| (33..=126).contains(&b)) {
            rec.insert("hostname".into(), host.into());
            rest = after;
        }
    }
    if let Some(((name, pid), after)) = tag(rest) {
        rec.insert("app_name".into(), name.into());
        if let Some(p) = pid {
            rec.insert("procid".into(), p.into());
        }
        rest = after;
    }
    let msg = rest.strip_prefix(BOM).unwrap_or(rest);
    if !msg.is_empty() {
        rec.insert("message".into(), msg.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2024-06-15T12:00:00Z
    const NOW: i64 = 1_718_452_800_000;

    fn ok(s: &str) -> Value {
        Value::Object(parse(s.as_bytes(), NOW).unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn rfc5424_examples() {
        // RFC 5424 section 6.5, examples 1-4 (the BOM written as U+FEFF).
        assert_eq!(
            ok("<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \u{feff}'su root' failed for lonvick on /dev/pts/8"),
            json!({"syslog":"rfc5424","facility":"auth","level":"crit","ts":"2003-10-11T22:14:15.003Z",
                   "hostname":"mymachine.example.com","app_name":"su","msgid":"ID47",
                   "message":"'su root' failed for lonvick on /dev/pts/8"})
        );
        assert_eq!(
            ok("<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."),
            json!({"syslog":"rfc5424","facility":"local4","level":"notice","ts":"2003-08-24T05:14:15.000003-07:00",
                   "hostname":"192.0.2.1","app_name":"myproc","procid":"8710",
                   "message":"%% It's time to make the do-nuts."})
        );
        assert_eq!(
            ok("<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \u{feff}An application event log entry..."),
            json!({"syslog":"rfc5424","facility":"local4","level":"notice","ts":"2003-10-11T22:14:15.003Z",
                   "hostname":"mymachine.example.com","app_name":"evntslog","msgid":"ID47",
                   "sd":{"exampleSDID@32473":{"iut":"3","eventSource":"Application","eventID":"1011"}},
                   "message":"An application event log entry..."})
        );
        assert_eq!(
            ok("<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"][examplePriority@32473 class=\"high\"]"),
            json!({"syslog":"rfc5424","facility":"local4","level":"notice","ts":"2003-10-11T22:14:15.003Z",
                   "hostname":"mymachine.example.com","app_name":"evntslog","msgid":"ID47",
                   "sd":{"exampleSDID@32473":{"iut":"3","eventSource":"Application","eventID":"1011"},
                         "examplePriority@32473":{"class":"high"}}})
        );
    }

    #[test]
    fn rfc5424_nil_values_escapes_and_repeats() {
        assert_eq!(
            ok("<0>1 - - - - - -"),
            json!({"syslog":"rfc5424","facility":"kern","level":"emerg"})
        );
        // RFC 5424 section 6.3.5: escaped quote, backslash and bracket; another
        // backslash is kept as written.
        let r = ok(r#"<191>1 - h a p m [x@1 a="q\"b\\c\]d\e" ip="1" ip="2"][x@1 k="v"] m"#);
        assert_eq!(r["facility"], "local7");
        assert_eq!(r["level"], "debug");
        assert_eq!(r["sd"]["x@1"]["a"], r#"q"b\c]d\e"#);
        assert_eq!(r["sd"]["x@1"]["ip"], json!(["1", "2"]));
        assert_eq!(r["sd"]["x@1"]["k"], "v");
        assert_eq!(r["message"], "m");
        // Unicode in values and message; a trailing CR LF is framing, not message.
        let r = ok("<13>1 - h - - - [a b=\"é]\"] ünï\r\n");
        assert_eq!(r["sd"]["a"]["b"], "é]");
        assert_eq!(r["message"], "ünï");
    }

    #[test]
    fn rfc5424_malformed_is_refused() {
        for (m, want) in [
            ("<13>1 2003-10-11 h a p m - x", "TIMESTAMP"),
            ("<13>1 2003-13-11T22:14:15Z h a p m - x", "TIMESTAMP"),
            ("<13>1 - h a p", "missing fields"),
            ("<13>1 - h a p m", "missing STRUCTURED-DATA"),
            ("<13>1 - h  p m - x", "empty field"),
            ("<13>1 - h a p m [x a=\"1\"", "expected ' ' or ']'"),
            ("<13>1 - h a p m [x a=\"1]", "not closed"),
            ("<13>1 - h a p m [x a=1]", "=\"value\""),
            ("<13>1 - h a p m []", "names are"),
            ("<13>1 - h a p m [x]y", "space after"),
            ("<13>1 - h a p m x y", "STRUCTURED-DATA"),
            ("hello", "not syslog"),
            ("<>1 - - - - - -", "not syslog"),
            ("<1234>1 - - - - - -", "not syslog"),
            ("<192>1 - - - - - -", "PRI"),
            ("<13", "not syslog"),
        ] {
            let e = parse(m.as_bytes(), NOW).unwrap_err().to_string();
            assert!(e.contains(want), "{m}: {e}");
        }
        let mut too_long = "<13>1 - ".to_owned() + &"h".repeat(256);
        too_long.push_str(" - - - -");
        assert!(parse(too_long.as_bytes(), NOW).is_err());
        assert_eq!(
            parse(b"<13>1 - h - - - - \xff\xfe", NOW).unwrap_err(),
            SyslogError::NotUtf8
        );
    }

    #[test]
    fn rfc3164_examples() {
        // RFC 3164 section 5.4, examples 1-3 (hostname-less lines too).
        assert_eq!(
            ok("<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8"),
            json!({"syslog":"rfc3164","facility":"auth","level":"crit","ts":"2023-10-11T22:14:15Z",
                   "hostname":"mymachine","app_name":"su",
                   "message":"'su root' failed for lonvick on /dev/pts/8"})
        );
        assert_eq!(
            ok("<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!"),
            json!({"syslog":"rfc3164","facility":"user","level":"notice","ts":"2024-02-05T17:32:18Z",
                   "hostname":"10.0.0.99","message":"Use the BFG!"})
        );
        let r = ok("<165>Aug 24 05:34:00 mymachine myproc[10]: %% It's time to make the do-nuts.  %%  Ingredients: Mix=OK, Jelly=OK");
        assert_eq!(
            r["ts"], "2023-08-24T05:34:00Z",
            "two months ahead: last year"
        );
        assert_eq!(r["app_name"], "myproc");
        assert_eq!(r["procid"], "10");
        assert_eq!(r["hostname"], "mymachine");
        assert!(r["message"].as_str().unwrap().starts_with("%% It's time"));
        // No timestamp: the rest is the message (a tag still read when present).
        assert_eq!(
            ok("<0>su: hello"),
            json!({"syslog":"rfc3164","facility":"kern","level":"emerg","app_name":"su","message":"hello"})
        );
        assert_eq!(ok("<14>just text")["message"], "just text");
        // rsyslog's RSYSLOG_ForwardFormat: an RFC 3339 timestamp.
        let r = ok("<30>2024-06-15T11:59:58.123456+00:00 web1 nginx[77]: GET /");
        assert_eq!(r["ts"], "2024-06-15T11:59:58.123456+00:00");
        assert_eq!(r["hostname"], "web1");
        assert_eq!(
            (r["app_name"].as_str(), r["procid"].as_str()),
            (Some("nginx"), Some("77"))
        );
        assert_eq!(r["message"], "GET /");
        // rsyslog forwards the tag of an RFC 5424 message without a colon.
        let r = ok("<134>Nov 29 10:00:00 src-host myapp[42] message 1");
        assert_eq!(
            (r["hostname"].as_str(), r["app_name"].as_str()),
            (Some("src-host"), Some("myapp"))
        );
        assert_eq!(
            (r["procid"].as_str(), r["message"].as_str()),
            (Some("42"), Some("message 1"))
        );
        // A word alone is no tag without its colon.
        assert_eq!(
            ok("<13>Nov 29 10:00:00 h myapp message")["message"],
            "myapp message"
        );
        // A tag right after the timestamp: no hostname.
        let r = ok("<30>Jun 15 11:59:58 cron[1]: job");
        assert!(r.get("hostname").is_none(), "{r}");
        assert_eq!(r["app_name"], "cron");
    }

    #[test]
    fn bsd_timestamps_take_the_latest_year_not_ahead() {
        // Received on 2024-01-01T00:00:10Z: Dec 31 is 2023's.
        let jan1 = 1_704_067_210_000;
        let r = Value::Object(parse(b"<13>Dec 31 23:59:59 h a: m", jan1).unwrap());
        assert_eq!(r["ts"], "2023-12-31T23:59:59Z");
        // Received on 2023-12-31T23:59:00Z: Jan 1 is 2024's.
        let dec31 = 1_704_067_140_000;
        let r = Value::Object(parse(b"<13>Jan  1 00:00:01 h a: m", dec31).unwrap());
        assert_eq!(r["ts"], "2024-01-01T00:00:01Z");
        // Feb 29 exists only in leap years: 2024 here.
        let r = Value::Object(parse(b"<13>Feb 29 01:02:03.456 h a: m", NOW).unwrap());
        assert_eq!(r["ts"], "2024-02-29T01:02:03.456Z");
        // Not a time: everything after PRI is the message.
        let r = Value::Object(parse(b"<13>Feb 30 01:02:03 h a: m", NOW).unwrap());
        assert!(r.get("ts").is_none());
        assert_eq!(r["message"], "Feb 30 01:02:03 h a: m");
        assert_eq!(civil_year(0), 1970);
        assert_eq!(civil_year(NOW), 2024);
        assert_eq!(civil_year(1_704_067_199_999), 2023);
        assert_eq!(civil_year(1_704_067_200_000), 2024);
    }

    #[test]
    fn records_pass_the_record_rules() {
        let mut checker = weir_core::record::Checker::default();
        for m in [
            "<34>1 2003-10-11T22:14:15.003Z h su - ID47 [a@1 x=\"\\\"\"] \u{1} control",
            "<13>Oct 11 22:14:15 h t: tab\there",
        ] {
            let line = serde_json::to_vec(&ok(m)).unwrap();
            checker.check(&line).unwrap();
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Random and mutated messages: never a panic, and whatever is accepted is a
        /// record the door accepts (UTF-8 JSON object, no duplicate keys).
        #[test]
        fn random_and_mutated_messages_never_panic(
            seed in 0usize..6,
            flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 0..8),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            now in proptest::prelude::any::<i64>(),
        ) {
            let seeds: [&[u8]; 6] = [
                b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"App\\]\"][b@1 x=\"y\"] \xef\xbb\xbfAn entry",
                b"<34>Oct 11 22:14:15 mymachine su[12]: 'su root' failed",
                b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
                b"<30>2024-06-15T11:59:58.123456+00:00 web1 nginx[77]: GET /",
                b"<0>1 - - - - - -",
                b"",
            ];
            let mut m = seeds[seed].to_vec();
            m.extend_from_slice(&tail);
            for (at, b) in &flips {
                if !m.is_empty() {
                    let i = at.index(m.len());
                    m[i] = *b;
                }
            }
            if let Ok(rec) = parse(&m, now) {
                let line = serde_json::to_vec(&rec).unwrap();
                let mut checker = weir_core::record::Checker::default();
                proptest::prop_assert!(checker.check(&line).is_ok(), "{}", String::from_utf8_lossy(&line));
            }
        }
    }
}
