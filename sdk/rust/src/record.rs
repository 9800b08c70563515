//! [`Record`]: one JSON object with helpers for dotted paths.

use serde_json::{Map, Value};

/// One record: a JSON object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record(pub Map<String, Value>);

impl Record {
    /// Parse one NDJSON line; it must be a JSON object.
    pub fn parse(line: &[u8]) -> Result<Record, String> {
        match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(m)) => Ok(Record(m)),
            Ok(_) => Err("record is not a JSON object".into()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        }
    }

    /// Append the compact JSON of this record to `out` (no newline).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, &self.0).expect("writing JSON to a Vec cannot fail");
    }

    /// The value at a dotted path (`"http.request.ip"`).
    pub fn get(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut cur = self.0.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }

    /// The string at a dotted path, if it is a string.
    pub fn get_str(&self, path: &str) -> Option<&str> {
        self.get(path)?.as_str()
    }

    /// A mutable reference to the value at a dotted path.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut Value> {
        let mut parts = path.split('.');
        let mut cur = self.0.get_mut(parts.next()?)?;
        for p in parts {
            cur = cur.as_object_mut()?.get_mut(p)?;
        }
        Some(cur)
    }

    /// Set the value at a dotted path, creating intermediate objects (and replacing
    /// non-object values on the way).
    pub fn set(&mut self, path: &str, value: Value) {
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().expect("split yields at least one part");
        let mut cur = &mut self.0;
        for p in parts {
            let entry = cur
                .entry(p.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            cur = entry.as_object_mut().expect("just made an object");
        }
        cur.insert(last.to_owned(), value);
    }

    /// Remove and return the value at a dotted path.
    pub fn remove(&mut self, path: &str) -> Option<Value> {
        let (parent, last) = match path.rsplit_once('.') {
            Some((parent, last)) => (self.get_mut(parent)?.as_object_mut()?, last),
            None => (&mut self.0, path),
        };
        parent.remove(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let mut r = Record::parse(br#"{"a":{"b":"x"},"n":1}"#).unwrap();
        assert_eq!(r.get_str("a.b"), Some("x"));
        assert_eq!(r.get("a.c"), None);
        assert_eq!(r.get_str("n"), None);
        r.set("a.c.d", json!(2));
        assert_eq!(r.get("a.c.d"), Some(&json!(2)));
        r.set("n.m", json!(true));
        assert_eq!(r.get("n.m"), Some(&json!(true)));
        assert_eq!(r.remove("a.b"), Some(json!("x")));
        assert_eq!(r.remove("a.b"), None);
        let mut out = Vec::new();
        r.write_to(&mut out);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"a":{"c":{"d":2}},"n":{"m":true}})
        );
    }

    #[test]
    fn rejects_non_objects() {
        assert!(Record::parse(b"[1]").is_err());
        assert!(Record::parse(b"{").is_err());
    }
}
