//! A record's event time: the one reading of `timestamp` / `@timestamp` / `ts` / `time`
//! shared by the door (which refuses times out of range), the rows of the `logs` table
//! (whose `ts` column feeds the aggregations' windows and watermarks) and metric
//! samples.
//!
//! A time field holds RFC 3339 text (see [`parse_text_ms`]) or an epoch number told
//! apart by magnitude: below 1e10 seconds, below 1e14 milliseconds, else nanoseconds.
//! A time is *in range* from 1970-01-01T00:00:00Z ([`MIN_MS`]) up to, not including,
//! 2200-01-01T00:00:00Z ([`MAX_MS`]). A negative number or text reading as a time
//! before 1970 is out of range too.
//!
//! The record's event time is the first field, in the order above, holding a time in
//! range. At ingest a field holding a time out of range refuses its line
//! ([`EventTime::out_of_range`]); anything that reaches a later stage anyway (plugin
//! output) has that field treated as absent, so the row takes the next field's time or
//! its ingest time: never a time that overflows or moves a watermark to the end of time.
//! Text that is not a time, and values of other types, are not times (the row falls
//! back to its ingest time, as it always did).

use std::borrow::Cow;
use std::fmt;

/// 1970-01-01T00:00:00Z: the earliest event time accepted, in epoch milliseconds.
pub const MIN_MS: i64 = 0;
/// 2200-01-01T00:00:00Z: event times must be before this, in epoch milliseconds.
pub const MAX_MS: i64 = 7_258_118_400_000;

/// The time fields of a record, in priority order.
pub const FIELDS: [&str; 4] = ["timestamp", "@timestamp", "ts", "time"];

/// The value of a time field as found in a record.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeValue<'a> {
    Num(f64),
    Text(Cow<'a, str>),
    /// Any other JSON value (not a time).
    Other,
}

/// Whether `ms` is an event time in range.
pub fn in_range(ms: i64) -> bool {
    (MIN_MS..MAX_MS).contains(&ms)
}

/// A time field whose value reads as a time outside the range.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfRange {
    /// The field's name (one of [`FIELDS`]).
    pub field: &'static str,
    /// The value as written (a number, or the text quoted).
    pub value: String,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} is outside the accepted time range 1970-01-01T00:00:00Z..2200-01-01T00:00:00Z \
             (epoch numbers are read as seconds below 1e10, milliseconds below 1e14, else nanoseconds)",
            self.field, self.value
        )
    }
}

impl std::error::Error for OutOfRange {}

/// What a record's time fields say.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventTime {
    /// The first field holding a time in range, in epoch milliseconds.
    pub ms: Option<i64>,
    /// The first field holding a time out of range (refused at the door; elsewhere that
    /// field counts as absent).
    pub out_of_range: Option<OutOfRange>,
}

/// A field's reading: a time (maybe out of range), or not a time.
enum Reading {
    Time(i64),
    OutOfRange,
    NotATime,
}

fn read(v: &TimeValue) -> Reading {
    match v {
        TimeValue::Num(n) => match number_ms(*n) {
            Some(ms) if in_range(ms) => Reading::Time(ms),
            _ => Reading::OutOfRange,
        },
        TimeValue::Text(s) => match parse_text_ms(s) {
            Some(ms) if in_range(ms) => Reading::Time(ms),
            Some(_) => Reading::OutOfRange,
            None => Reading::NotATime,
        },
        TimeValue::Other => Reading::NotATime,
    }
}

/// Epoch milliseconds of an epoch number by magnitude (None: negative or not finite).
fn number_ms(n: f64) -> Option<i64> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    // `as` saturates: a huge number becomes i64::MAX, which is out of range.
    Some(if n < 1e10 {
        (n * 1000.0) as i64
    } else if n < 1e14 {
        n as i64
    } else {
        (n / 1e6) as i64
    })
}

/// The event time of a record from its time fields, in the order of [`FIELDS`]
/// (`timestamp`, `@timestamp`, `ts`, `time`; None where absent).
pub fn event_time(fields: [Option<&TimeValue>; 4]) -> EventTime {
    let mut out = EventTime::default();
    for (name, v) in FIELDS.iter().zip(fields) {
        let Some(v) = v else { continue };
        match read(v) {
            Reading::Time(ms) => {
                if out.ms.is_none() {
                    out.ms = Some(ms);
                }
            }
            Reading::OutOfRange => {
                if out.out_of_range.is_none() {
                    out.out_of_range = Some(OutOfRange {
                        field: name,
                        value: match v {
                            TimeValue::Num(n) if n.fract() == 0.0 && n.abs() < 1e16 => {
                                format!("{}", *n as i64)
                            }
                            TimeValue::Num(n) => format!("{n:e}"),
                            TimeValue::Text(s) => format!("{s:?}"),
                            TimeValue::Other => String::new(),
                        },
                    });
                }
            }
            Reading::NotATime => {}
        }
    }
    out
}

/// Why a metric sample's `ts` is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleTimeError {
    OutOfRange(OutOfRange),
    NotATime,
}

impl fmt::Display for SampleTimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleTimeError::OutOfRange(o) => o.fmt(f),
            SampleTimeError::NotATime => {
                f.write_str("ts must be an epoch number (s, ms or ns) or RFC 3339 text")
            }
        }
    }
}

/// The time of a metric sample's `ts`: the same reading and range as a record's.
pub fn sample_time(v: &TimeValue) -> Result<i64, SampleTimeError> {
    let e = event_time([None, None, Some(v), None]);
    match (e.ms, e.out_of_range) {
        (Some(ms), _) => Ok(ms),
        (None, Some(o)) => Err(SampleTimeError::OutOfRange(o)),
        (None, None) => Err(SampleTimeError::NotATime),
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for TimeValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TimeValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TimeValue::Other)
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(TimeValue::Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(TimeValue::Num(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(TimeValue::Num(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(TimeValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TimeValue::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(TimeValue::Text(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(TimeValue::Other)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(TimeValue::Other)
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(TimeValue::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(TimeValue::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Epoch milliseconds (floored) of timestamp text in the forms Arrow's
/// `string_to_timestamp_nanos` reads, for years 0000–9999:
/// `YYYY-MM-DD`, optionally followed by `T`, `t` or a space and `HH:MM:SS` (with a
/// `.fraction` of any length, digits past the ninth ignored) or `HHMMSS`, optionally
/// followed by `Z`/`z`, or (after optional spaces) an offset `±HH:MM`, `±HHMM` or
/// `±HH`, or `UTC`/`GMT`. No zone means UTC. A second of 60 (a leap second) is the
/// next second. Time zone names other than UTC and GMT are not read (None).
pub fn parse_text_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 10 {
        return None;
    }
    let d = |i: usize| -> Option<i64> {
        let c = *b.get(i)?;
        c.is_ascii_digit().then(|| i64::from(c - b'0'))
    };
    let two = |i: usize| -> Option<i64> { Some(d(i)? * 10 + d(i + 1)?) };
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = two(0)? * 100 + two(2)?;
    let month = two(5)?;
    let day = two(8)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (h, m, sec, nanos, mut end);
    if d(11).is_some() && d(12).is_some() && b.get(13) == Some(&b':') {
        // HH:MM:SS[.fff]
        if b.get(16) != Some(&b':') {
            return None;
        }
        h = two(11)?;
        m = two(14)?;
        sec = two(17)?;
        end = 19;
        let mut ns = 0i64;
        if b.get(19) == Some(&b'.') {
            let mut k = 20;
            while k < b.len() && b[k].is_ascii_digit() {
                if k - 20 < 9 {
                    ns = ns * 10 + i64::from(b[k] - b'0');
                }
                k += 1;
            }
            let n = k - 20;
            if n == 0 {
                return None;
            }
            for _ in n..9 {
                ns *= 10;
            }
            end = k;
        }
        nanos = ns;
    } else {
        // HHMMSS, not followed by a seventh or eighth digit.
        h = two(11)?;
        m = two(13)?;
        sec = two(15)?;
        if d(17).is_some() || d(18).is_some() {
            return None;
        }
        nanos = 0;
        end = 17;
    }
    if h >= 24 || m >= 60 || sec > 60 {
        return None;
    }
    let local_ms = days * 86_400_000 + (h * 3600 + m * 60 + sec) * 1000 + nanos / 1_000_000;
    if end >= b.len() {
        return Some(local_ms);
    }
    if matches!(b[end], b'Z' | b'z') && end == b.len() - 1 {
        return Some(local_ms);
    }
    let tz = s.get(end..)?.trim_start();
    if tz == "UTC" || tz == "GMT" {
        return Some(local_ms);
    }
    let t = tz.as_bytes();
    let digits: [u8; 4] = match t.len() {
        6 if t[3] == b':' => [t[1], t[2], t[4], t[5]],
        5 => [t[1], t[2], t[3], t[4]],
        3 => [t[1], t[2], b'0', b'0'],
        _ => return None,
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = |i: usize| i64::from(digits[i] - b'0');
    let offset_s = (v(0) * 10 + v(1)) * 3600 + (v(2) * 10 + v(3)) * 60;
    if offset_s >= 86_400 {
        return None;
    }
    match t[0] {
        b'+' => Some(local_ms - offset_s * 1000),
        b'-' => Some(local_ms + offset_s * 1000),
        _ => None,
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A civil date (year, month, day) of days since 1970-01-01: the inverse of
/// [`days_from_civil`] (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 text in UTC with nanoseconds (`2026-11-29T16:00:00.123456789Z`) of a time
/// in nanoseconds since the epoch: the form protocols with nanosecond times (OTLP)
/// hand to the record rules, read back exactly by [`parse_text_ms`].
pub fn rfc3339_nanos(nanos: u64) -> String {
    let secs = (nanos / 1_000_000_000) as i64;
    let frac = nanos % 1_000_000_000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn nanosecond_text_reads_back_as_the_same_millisecond() {
        for nanos in [
            0u64,
            999_999,
            1_764_432_000_123_999_999,
            951_782_400_000_000_000,   // 2000-02-29
            7_258_118_399_999_999_999, // 2199-12-31T23:59:59.999999999
        ] {
            let text = rfc3339_nanos(nanos);
            assert_eq!(
                parse_text_ms(&text),
                Some((nanos / 1_000_000) as i64),
                "{text}"
            );
        }
        assert_eq!(
            rfc3339_nanos(1_764_432_000_000_000_001),
            "2025-11-29T16:00:00.000000001Z"
        );
        for days in [-800_000i64, -1, 0, 59, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
    use super::*;

    fn num(n: f64) -> EventTime {
        event_time([None, None, Some(&TimeValue::Num(n)), None])
    }

    fn text(s: &str) -> EventTime {
        event_time([Some(&TimeValue::Text(s.into())), None, None, None])
    }

    #[test]
    fn epoch_numbers_by_magnitude() {
        assert_eq!(num(1_795_827_723.0).ms, Some(1_795_827_723_000));
        assert_eq!(num(1_795_827_723_456.0).ms, Some(1_795_827_723_456));
        assert_eq!(num(1.795_827_723_456e18).ms, Some(1_795_827_723_456));
        assert_eq!(num(0.0).ms, Some(0));
        assert_eq!(num(-0.0).ms, Some(0));
        assert_eq!(num(0.25).ms, Some(250));
    }

    #[test]
    fn numbers_out_of_range_are_named_and_never_a_time() {
        for n in [1e300, -1.0, 7_258_118_400.0, 9.99e9, 1e30, f64::MAX] {
            let e = num(n);
            assert_eq!(e.ms, None, "{n}");
            let o = e.out_of_range.expect("out of range");
            assert_eq!(o.field, "ts");
            assert!(
                o.to_string().contains("outside the accepted time range"),
                "{o}"
            );
        }
        assert_eq!(num(7_258_118_399.999).ms, Some(7_258_118_399_999));
    }

    #[test]
    fn the_first_field_in_range_wins_and_the_first_out_of_range_is_reported() {
        let bad = TimeValue::Num(1e300);
        let good = TimeValue::Text("2026-11-28T01:02:03.456Z".into());
        let junk = TimeValue::Text("not a time".into());
        let e = event_time([Some(&junk), Some(&bad), Some(&good), None]);
        assert_eq!(e.ms, Some(1_795_827_723_456));
        assert_eq!(e.out_of_range.unwrap().field, "@timestamp");
        let e = event_time([Some(&junk), None, Some(&TimeValue::Other), None]);
        assert_eq!(
            e,
            EventTime::default(),
            "text that is no time is not refused"
        );
    }

    #[test]
    fn text_times() {
        let t = |s: &str| parse_text_ms(s);
        assert_eq!(t("2026-11-28T01:02:03.456Z"), Some(1_795_827_723_456));
        assert_eq!(t("2026-11-28t01:02:03.456z"), Some(1_795_827_723_456));
        assert_eq!(t("2026-11-28 01:02:03.456"), Some(1_795_827_723_456));
        assert_eq!(
            t("2026-11-28T01:02:03.4567891234Z"),
            Some(1_795_827_723_456)
        );
        assert_eq!(t("2026-11-28T03:02:03.456+02:00"), Some(1_795_827_723_456));
        assert_eq!(t("2026-11-28T00:02:03.456-0100"), Some(1_795_827_723_456));
        assert_eq!(t("2026-11-28T00:02:03.456 -01"), Some(1_795_827_723_456));
        assert_eq!(t("2026-11-28 010203"), Some(1_795_827_723_000));
        assert_eq!(t("2026-11-28 01:02:03 UTC"), Some(1_795_827_723_000));
        assert_eq!(t("2026-11-28"), Some(1_795_824_000_000));
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(t("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(t("2016-12-31T23:59:60Z"), t("2017-01-01T00:00:00Z"));
        assert_eq!(t("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "",
            "2026-11-28T",
            "2023-02-29T00:00:00Z",
            "2026-13-01",
            "2026-11-28T24:00:00Z",
            "2026-11-28T01:02:03.Z",
            "2026-11-28T01:02:03Zx",
            "2026-11-28X01:02:03Z",
            "2026-11-28 0102030",
            "2026-11-28 01:02:03 America/New_York",
            "2026-11-28T01:02:03+24:00",
            "1795827723",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(
            text("2200-01-01T00:00:00Z").out_of_range.unwrap().field,
            "timestamp"
        );
        assert_eq!(text("2199-12-31T23:59:59.999Z").ms, Some(MAX_MS - 1));
        assert!(text("1960-01-01").out_of_range.is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Any text, and text shaped like a time: never a panic.
        #[test]
        fn text_never_panics(s in proptest::prelude::any::<String>(),
                             t in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9:]{0,8}[.0-9]{0,12}[-+Zz0-9: A-Z]{0,7}") {
            let _ = parse_text_ms(&s);
            let _ = parse_text_ms(&t);
        }
    }

    #[test]
    fn samples_need_a_time_in_range() {
        assert_eq!(sample_time(&TimeValue::Num(1.0)), Ok(1000));
        assert!(matches!(
            sample_time(&TimeValue::Num(1e300)),
            Err(SampleTimeError::OutOfRange(_))
        ));
        assert_eq!(
            sample_time(&TimeValue::Text("yesterday".into())),
            Err(SampleTimeError::NotATime)
        );
        assert_eq!(
            sample_time(&TimeValue::Other),
            Err(SampleTimeError::NotATime)
        );
    }

    #[test]
    fn deserialises_from_any_json_value() {
        #[derive(serde::Deserialize)]
        struct R<'a> {
            #[serde(borrow)]
            a: Vec<TimeValue<'a>>,
        }
        let r: R = serde_json::from_str(
            r#"{"a":[1,-2,2.5,"x","\u0041",null,true,[1,{"b":2}],{"c":[3]},18446744073709551615]}"#,
        )
        .unwrap();
        assert_eq!(
            r.a,
            vec![
                TimeValue::Num(1.0),
                TimeValue::Num(-2.0),
                TimeValue::Num(2.5),
                TimeValue::Text("x".into()),
                TimeValue::Text("A".into()),
                TimeValue::Other,
                TimeValue::Other,
                TimeValue::Other,
                TimeValue::Other,
                TimeValue::Num(18446744073709551615.0),
            ]
        );
    }
}
