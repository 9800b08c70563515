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

/// `"500ms"`, `"10s"`, `"1m"`, `"2h"`, `"1d"` → milliseconds (positive).
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms).filter(|v| *v > 0)
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
            if parse_duration_ms(s).is_none() {
                return Err(format!(
                    "{scope}{name} = {s:?}: expected a positive duration like \"90s\", \"12h\", \"30d\""
                ));
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
    }
}
