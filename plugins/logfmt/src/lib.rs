//! `logfmt`: a first-party Weir plugin that turns text in a message field into fields.
//!
//! For each record, the string at `field` (default `message`) is parsed as logfmt
//! (`level=info user="Ann Lee" took=35ms ok`) or, when it starts with `{`, as an embedded
//! JSON object. The pairs are written under `target` (default: the record's top level).
//! Existing fields win unless `overwrite` is true; values that look like integers,
//! floats or booleans become JSON numbers and booleans unless `typed` is false; a bare key
//! becomes `true`. Records whose field is missing or does not parse are kept unchanged;
//! `keep_source = false` removes the parsed field.
//!
//! Config: `{"field":"message","target":null,"overwrite":false,"typed":true,"keep_source":true}`

use serde::Deserialize;
use serde_json::{Map, Number, Value};
use weir_plugin_sdk::{Error, Record, Transform};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub field: String,
    pub target: Option<String>,
    pub overwrite: bool,
    pub typed: bool,
    pub keep_source: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            field: "message".into(),
            target: None,
            overwrite: false,
            typed: true,
            keep_source: true,
        }
    }
}

pub struct Logfmt(pub Config);

/// Parse a logfmt line into ordered pairs. Returns `None` when it holds no `key=value`.
pub fn parse_logfmt(s: &str) -> Option<Vec<(String, Option<String>)>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut pairs = Vec::new();
    let mut saw_eq = false;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[ks..i];
        if key.is_empty() || key.contains('"') {
            return None;
        }
        if i < b.len() && b[i] == b'=' {
            saw_eq = true;
            i += 1;
            if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                let mut closed = false;
                while i < b.len() {
                    match b[i] {
                        b'\\' if i + 1 < b.len() => {
                            let c = b[i + 1];
                            v.push(match c {
                                b'n' => '\n',
                                b't' => '\t',
                                b'r' => '\r',
                                _ => c as char,
                            });
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            closed = true;
                            break;
                        }
                        _ => {
                            // Copy one UTF-8 character.
                            let ch = s[i..].chars().next().expect("in bounds");
                            v.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                if !closed {
                    return None;
                }
                pairs.push((key.to_owned(), Some(v)));
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                pairs.push((key.to_owned(), Some(s[vs..i].to_owned())));
            }
        } else {
            pairs.push((key.to_owned(), None));
        }
    }
    saw_eq.then_some(pairs)
}

fn typed_value(v: &str) -> Value {
    if v == "true" || v == "false" {
        return Value::Bool(v == "true");
    }
    if let Ok(i) = v.parse::<i64>() {
        return Value::Number(i.into());
    }
    if v.contains(['.', 'e', 'E']) && !v.ends_with('.') {
        if let Some(n) = v.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(v.to_owned())
}

impl Logfmt {
    fn fields_of(&self, text: &str) -> Option<Map<String, Value>> {
        let t = text.trim_start();
        if t.starts_with('{') {
            return match serde_json::from_str::<Value>(t) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            };
        }
        let pairs = parse_logfmt(text)?;
        Some(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        None => Value::Bool(true),
                        Some(v) if self.0.typed => typed_value(&v),
                        Some(v) => Value::String(v),
                    };
                    (k, v)
                })
                .collect(),
        )
    }
}

impl Transform for Logfmt {
    fn new(config: &Value) -> Result<Self, Error> {
        let cfg: Config =
            serde_json::from_value(config.clone()).map_err(|e| Error::config(e.to_string()))?;
        if cfg.field.is_empty() {
            return Err(Error::config("field must not be empty"));
        }
        Ok(Logfmt(cfg))
    }

    fn record(&mut self, rec: &mut Record) -> Result<bool, Error> {
        let Some(fields) = rec.get_str(&self.0.field).and_then(|t| self.fields_of(t)) else {
            return Ok(true);
        };
        if !self.0.keep_source {
            rec.remove(&self.0.field);
        }
        for (k, v) in fields {
            let path = match &self.0.target {
                Some(t) => format!("{t}.{k}"),
                None => k,
            };
            if self.0.overwrite || rec.get(&path).is_none() {
                rec.set(&path, v);
            }
        }
        Ok(true)
    }
}

#[cfg(target_arch = "wasm32")]
weir_plugin_sdk::export_transform!(Logfmt);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_plugin_sdk::run_native;

    fn run(cfg: Value, line: &str) -> Value {
        let mut p = Logfmt::new(&cfg).unwrap();
        let out = run_native(&mut p, line.as_bytes()).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn logfmt_pairs() {
        let v = run(
            json!({}),
            r#"{"message":"level=warn user=\"Ann Lee\" took=35 ratio=0.5 ok retry=false","level":"info"}"#,
        );
        assert_eq!(v["level"], "info", "existing field wins");
        assert_eq!(v["user"], "Ann Lee");
        assert_eq!(v["took"], 35);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["ok"], true);
        assert_eq!(v["retry"], false);
        assert!(v["message"].is_string());
    }

    #[test]
    fn target_overwrite_untyped_and_drop_source() {
        let v = run(
            json!({"target":"kv","typed":false,"keep_source":false,"field":"log"}),
            r#"{"log":"a=1 b=\"x\\\"y\""}"#,
        );
        assert_eq!(v, json!({"kv":{"a":"1","b":"x\"y"}}));
        let v = run(
            json!({"overwrite":true}),
            r#"{"message":"level=warn","level":"info"}"#,
        );
        assert_eq!(v["level"], "warn");
    }

    #[test]
    fn embedded_json() {
        let v = run(json!({}), r#"{"message":"{\"a\":{\"b\":1}}"}"#);
        assert_eq!(v["a"]["b"], 1);
    }

    #[test]
    fn unparseable_or_missing_is_kept() {
        for line in [
            r#"{"message":"just words"}"#,
            r#"{"message":"a=\"unterminated"}"#,
            r#"{"other":1}"#,
            r#"{"message":5}"#,
        ] {
            let orig: Value = serde_json::from_str(line).unwrap();
            assert_eq!(run(json!({}), line), orig, "{line}");
        }
    }

    #[test]
    fn bad_config() {
        assert!(Logfmt::new(&json!({"field":""})).is_err());
        assert!(Logfmt::new(&json!({"nope":1})).is_err());
    }
}
