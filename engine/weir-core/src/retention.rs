//! Retention of a tenant's rows: how long they stay hot, how much hot memory they may
//! take, how long cold rows are kept. Declared per tenant and per stream in the config
//! file, replaceable per tenant at runtime through the admin API (the store keeps the
//! replacement); enforced by the store's janitor.
//!
//! ```toml
//! [tenants.acme.retention]        # the tenant's streams
//! hot = "1h"                      # rows stay hot this long, then go cold
//! hot_mb = 512                    # hot bytes of one stream; over it, oldest rows go first
//! cold = "30d"                    # cold rows are kept this long, by event time
//! rollups = "400d"                # metric rollups (`metrics_1m`...) this long
//! [tenants.acme.streams.audit.retention]
//! cold = "400d"                   # one stream differs; unset fields are the tenant's
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest duration any setting takes: 100 years (36500 days). Every duration is
/// checked against it where it is read, so an age never overflows when it becomes a
/// cutoff (`now - age`) or a deadline (`now + age`).
pub const MAX_DURATION_MS: u64 = 36_500 * 86_400_000;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "{0:?}: expected a positive duration like \"90s\", \"12h\", \"30d\" (units ms, s, m, h, d)"
    )]
    Malformed(String),
    #[error("{0:?}: at most 100 years (36500d)")]
    TooLong(String),
}

/// `"500ms"`, `"10s"`, `"1m"`, `"2h"`, `"1d"` → milliseconds: positive and at most
/// [`MAX_DURATION_MS`].
pub fn parse_duration(s: &str) -> Result<u64, DurationError> {
    let t = s.trim();
    let malformed = || DurationError::Malformed(s.to_owned());
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(malformed)?;
    let (n, unit) = t.split_at(split);
    if n.is_empty() {
        return Err(malformed());
    }
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(malformed()),
    };
    // Digits only, so a failed parse is a number past u64: too long, not malformed.
    let n: u64 = n
        .parse()
        .map_err(|_| DurationError::TooLong(s.to_owned()))?;
    match n.checked_mul(unit_ms) {
        Some(0) => Err(malformed()),
        Some(ms) if ms <= MAX_DURATION_MS => Ok(ms),
        _ => Err(DurationError::TooLong(s.to_owned())),
    }
}

/// [`parse_duration`], None for anything it refuses.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    parse_duration(s).ok()
}

/// Whole seconds of a config setting as a duration, checked against [`MAX_DURATION_MS`]
/// (`name` is the setting's name in errors).
pub fn check_secs(name: &str, secs: u64) -> Result<(), String> {
    if secs > MAX_DURATION_MS / 1000 {
        return Err(format!(
            "{name} = {secs}: at most 100 years ({} seconds)",
            MAX_DURATION_MS / 1000
        ));
    }
    Ok(())
}

/// `now_ms - age_ms`, saturating: the time before which rows of that age are past it.
/// Never wraps, whatever the age (an age past `i64::MAX` cuts off nothing).
pub fn cutoff_ms(now_ms: i64, age_ms: u64) -> i64 {
    now_ms.saturating_sub(i64::try_from(age_ms).unwrap_or(i64::MAX))
}

/// Retention of one scope (a tenant's streams, or one stream). Unset: inherited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// How long rows stay in the hot tier (by arrival); then they go cold, or without a
    /// cold tier they are deleted. Default: `[cold] flush_after_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot: Option<String>,
    /// Hot bytes one stream may hold; over it, its oldest rows leave the hot tier first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_mb: Option<u64>,
    /// How long rows are kept at all, by event time (`ts`); unset: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<String>,
    /// How long metric rollups are kept, by window start; unset: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollups: Option<String>,
}

/// A tenant's retention: its default and per-stream exceptions (the shape of both the
/// config file's declarations and the admin API's document).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollups: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub streams: BTreeMap<String, Retention>,
}

/// Retention in effect for one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effective {
    /// Rows leave the hot tier this long after their commit (None: only the memory
    /// bound moves them).
    pub hot_ms: Option<u64>,
    pub hot_bytes: Option<u64>,
    /// Rows with an event time older than now minus this are deleted (None: kept).
    pub cold_ms: Option<u64>,
    /// The same for metric rollups.
    pub rollups_ms: Option<u64>,
}

fn check_scope(
    scope: &str,
    r: (
        &Option<String>,
        &Option<u64>,
        &Option<String>,
        &Option<String>,
    ),
) -> Result<(), String> {
    for (name, v) in [("hot", r.0), ("cold", r.2), ("rollups", r.3)] {
        if let Some(s) = v {
            if let Err(e) = parse_duration(s) {
                return Err(format!("{scope}{name} = {e}"));
            }
        }
    }
    if *r.1 == Some(0) {
        return Err(format!("{scope}hot_mb must be at least 1"));
    }
    Ok(())
}

impl RetentionDoc {
    /// Every duration parses and every bound is positive.
    pub fn check(&self) -> Result<(), String> {
        check_scope("", (&self.hot, &self.hot_mb, &self.cold, &self.rollups))?;
        for (stream, r) in &self.streams {
            if !crate::names::is_valid_name(stream) {
                return Err(format!("stream name {stream:?} is invalid"));
            }
            check_scope(
                &format!("streams.{stream}."),
                (&r.hot, &r.hot_mb, &r.cold, &r.rollups),
            )?;
        }
        Ok(())
    }

    /// What applies to `stream`: its own fields, else the tenant's, else `default_hot_ms`
    /// for the hot age.
    pub fn resolve(&self, stream: &str, default_hot_ms: Option<u64>) -> Effective {
        let own = self.streams.get(stream);
        let pick = |f: fn(&Retention) -> &Option<String>, t: &Option<String>| {
            own.and_then(|r| f(r).as_deref())
                .or(t.as_deref())
                .and_then(parse_duration_ms)
        };
        Effective {
            hot_ms: pick(|r| &r.hot, &self.hot).or(default_hot_ms),
            hot_bytes: own
                .and_then(|r| r.hot_mb)
                .or(self.hot_mb)
                .map(|mb| mb.saturating_mul(1 << 20)),
            cold_ms: pick(|r| &r.cold, &self.cold),
            rollups_ms: pick(|r| &r.rollups, &self.rollups),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_inherit_and_override() {
        let doc: RetentionDoc = serde_json::from_value(serde_json::json!({
            "hot": "1h", "cold": "30d",
            "streams": {"audit": {"cold": "400d"}, "debug": {"hot": "10m", "hot_mb": 2}}
        }))
        .unwrap();
        doc.check().unwrap();
        let d = 86_400_000;
        assert_eq!(
            doc.resolve("app", Some(5)),
            Effective {
                hot_ms: Some(3_600_000),
                hot_bytes: None,
                cold_ms: Some(30 * d),
                rollups_ms: None,
            }
        );
        assert_eq!(doc.resolve("audit", None).cold_ms, Some(400 * d));
        assert_eq!(doc.resolve("debug", None).hot_ms, Some(600_000));
        assert_eq!(doc.resolve("debug", None).hot_bytes, Some(2 << 20));
        assert_eq!(
            RetentionDoc::default().resolve("x", Some(5)).hot_ms,
            Some(5)
        );
    }

    #[test]
    fn bad_documents_say_why() {
        for (doc, want) in [
            (serde_json::json!({"cold": "30 days"}), "cold = \"30 days\""),
            (
                serde_json::json!({"streams": {"a": {"hot": "0s"}}}),
                "streams.a.hot",
            ),
            (serde_json::json!({"hot_mb": 0}), "hot_mb"),
            (serde_json::json!({"streams": {"a b": {}}}), "invalid"),
        ] {
            let d: RetentionDoc = serde_json::from_value(doc).unwrap();
            let e = d.check().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        assert!(serde_json::from_value::<RetentionDoc>(serde_json::json!({"colt": "1d"})).is_err());
        // Past the bound (this one wrapped to a negative age and deleted every row).
        let d: RetentionDoc =
            serde_json::from_value(serde_json::json!({"cold": "200000000000d"})).unwrap();
        assert_eq!(
            d.check().unwrap_err(),
            "cold = \"200000000000d\": at most 100 years (36500d)"
        );
    }

    #[test]
    fn durations_are_positive_and_at_most_100_years() {
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration(" 90s "), Ok(90_000));
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION_MS));
        assert_eq!(parse_duration("3153600000000ms"), Ok(MAX_DURATION_MS));
        for too_long in [
            "36501d",
            "3153600000001ms",
            "200000000000d",               // wrapped as i64 before
            "213503982334601d",            // overflowed u64 milliseconds before
            "18446744073709551615ms",      // u64::MAX
            "99999999999999999999999999d", // past u64 itself
        ] {
            assert_eq!(
                parse_duration(too_long),
                Err(DurationError::TooLong(too_long.into())),
                "{too_long}"
            );
            assert_eq!(parse_duration_ms(too_long), None);
        }
        for bad in [
            "", " ", "d", "0s", "0d", "00ms", "-1d", "1.5h", "1w", "1 d", "1dd", "+1d",
        ] {
            assert_eq!(
                parse_duration(bad),
                Err(DurationError::Malformed(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cutoffs_saturate() {
        assert_eq!(cutoff_ms(1_000, 400), 600);
        assert_eq!(cutoff_ms(0, MAX_DURATION_MS), -(MAX_DURATION_MS as i64));
        assert_eq!(cutoff_ms(i64::MIN + 5, 10), i64::MIN);
        assert_eq!(cutoff_ms(1_000, u64::MAX), i64::MIN + 1_001);
        assert!(
            cutoff_ms(1_900_000_000_000, u64::MAX) < 0,
            "nothing is cut off"
        );
    }
}
