//! `schema-migrate`: a first-party migration plugin (world `weir:plugin/migration`) that
//! moves records from schema version `from` to `from + 1`, driven by its config:
//!
//! ```json
//! { "from": 1,
//!   "rename": { "usr": "user.name" },                         // dotted paths
//!   "split":  { "user.name": { "into": ["first", "last"], "sep": " " } },
//!   "merge":  { "where": { "from": ["city", "country"], "sep": ", " } },
//!   "retype": { "amount": "number", "id": "string", "ok": "boolean", "n": "integer" } }
//! ```
//!
//! Steps run in that order: rename, split (the source field is removed; missing parts
//! are left out), merge (sources removed; absent sources skipped), retype (a value that
//! cannot be converted fails the batch, naming the record and field — nothing is
//! silently dropped).

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use weir_plugin_sdk::{Error, Migration, Record, Transform};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub from: u32,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    #[serde(default)]
    pub split: BTreeMap<String, Split>,
    #[serde(default)]
    pub merge: BTreeMap<String, Merge>,
    #[serde(default)]
    pub retype: BTreeMap<String, Type>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub into: Vec<String>,
    #[serde(default = "space")]
    pub sep: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merge {
    pub from: Vec<String>,
    #[serde(default = "space")]
    pub sep: String,
}

fn space() -> String {
    " ".into()
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Number,
    Integer,
    String,
    Boolean,
}

pub struct SchemaMigrate(Config);

fn convert(v: &Value, t: Type) -> Option<Value> {
    let text = match v {
        Value::String(s) => Some(s.trim()),
        _ => None,
    };
    match t {
        Type::String => Some(match v {
            Value::String(_) => v.clone(),
            other => Value::String(other.to_string()),
        }),
        Type::Number => match v {
            Value::Number(_) => Some(v.clone()),
            _ => text?
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
        },
        Type::Integer => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(v.clone()),
            Value::Number(n) => n
                .as_f64()
                .filter(|f| f.fract() == 0.0)
                .map(|f| (f as i64).into()),
            _ => text?.parse::<i64>().ok().map(Value::from),
        },
        Type::Boolean => match v {
            Value::Bool(_) => Some(v.clone()),
            _ => match text? {
                "true" | "1" | "yes" => Some(Value::Bool(true)),
                "false" | "0" | "no" => Some(Value::Bool(false)),
                _ => None,
            },
        },
    }
}

impl Transform for SchemaMigrate {
    fn new(config: &Value) -> Result<Self, Error> {
        let cfg: Config =
            serde_json::from_value(config.clone()).map_err(|e| Error::config(e.to_string()))?;
        if cfg.from == 0 {
            return Err(Error::config("from must be a schema version >= 1"));
        }
        if cfg.split.values().any(|s| s.into.is_empty()) {
            return Err(Error::config("split.into must name at least one field"));
        }
        Ok(SchemaMigrate(cfg))
    }

    fn record(&mut self, rec: &mut Record) -> Result<bool, Error> {
        let c = &self.0;
        for (from, to) in &c.rename {
            if let Some(v) = rec.remove(from) {
                rec.set(to, v);
            }
        }
        for (field, s) in &c.split {
            let Some(v) = rec.remove(field) else { continue };
            let text = match v {
                Value::String(t) => t,
                other => other.to_string(),
            };
            let parts = text.splitn(s.into.len(), s.sep.as_str());
            for (name, part) in s.into.iter().zip(parts) {
                rec.set(name, Value::String(part.to_owned()));
            }
        }
        for (field, m) in &c.merge {
            let parts: Vec<String> = m
                .from
                .iter()
                .filter_map(|f| rec.remove(f))
                .map(|v| match v {
                    Value::String(t) => t,
                    other => other.to_string(),
                })
                .collect();
            if !parts.is_empty() {
                rec.set(field, Value::String(parts.join(&m.sep)));
            }
        }
        for (field, t) in &c.retype {
            let Some(v) = rec.get(field) else { continue };
            if v.is_null() {
                continue;
            }
            let new = convert(v, *t)
                .ok_or_else(|| Error::failed(format!("{field}: cannot convert {v} to {t:?}")))?;
            rec.set(field, new);
        }
        Ok(true)
    }
}

impl Migration for SchemaMigrate {
    fn step(&self) -> (u32, u32) {
        (self.0.from, self.0.from + 1)
    }
}

#[cfg(target_arch = "wasm32")]
weir_plugin_sdk::export_migration!(SchemaMigrate);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(config: Value, input: &str) -> Result<String, Error> {
        let mut m = SchemaMigrate::new(&config)?;
        weir_plugin_sdk::run_native(&mut m, input.as_bytes()).map(|o| String::from_utf8(o).unwrap())
    }

    #[test]
    fn rename_split_merge_retype() {
        let cfg = json!({
            "from": 1,
            "rename": {"usr": "user.name"},
            "split": {"user.name": {"into": ["user.first", "user.last"]}},
            "merge": {"place": {"from": ["city", "country"], "sep": ", "}},
            "retype": {"amount": "number", "qty": "integer", "ok": "boolean", "code": "string"},
        });
        let out = run(
            cfg,
            r#"{"usr":"Ada Lovelace King","city":"Paris","country":"FR","amount":"12.50","qty":"3","ok":"yes","code":7}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["user"], json!({"first": "Ada", "last": "Lovelace King"}));
        assert_eq!(v["place"], "Paris, FR");
        assert_eq!(
            (v["amount"].as_f64(), v["qty"].as_i64(), v["ok"].as_bool()),
            (Some(12.5), Some(3), Some(true))
        );
        assert_eq!(v["code"], "7");
        assert!(v.get("usr").is_none() && v.get("city").is_none());
        assert_eq!(
            SchemaMigrate::new(&json!({"from": 4})).unwrap().step(),
            (4, 5)
        );
    }

    #[test]
    fn unconvertible_values_fail_the_batch_and_bad_configs_are_refused() {
        let err = run(
            json!({"from": 1, "retype": {"amount": "number"}}),
            "{\"amount\":\"a lot\"}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("amount"), "{err}");
        assert!(SchemaMigrate::new(&json!({"from": 0})).is_err());
        assert!(SchemaMigrate::new(&json!({"from": 1, "oops": 1})).is_err());
        assert!(SchemaMigrate::new(&json!({})).is_err());
    }
}
