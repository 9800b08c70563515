//! `builtin:top-errors`: a custom aggregation (`wasm(builtin:top-errors)`) giving the
//! exact top N error messages of each window and group, with their counts.
//!
//! Unlike the built-in `topk` (Space-Saving: approximate once a window holds more
//! distinct values than its counters), this keeps every distinct message, so it suits
//! windows whose error messages are few but must be exact.
//!
//! Config: `{"n": 5, "levels": ["error", "fatal"]}` (these are the defaults). A record
//! counts when its `level` (or `severity`) is one of `levels`; its message is `message`
//! (or `msg`). Accumulator format 1: the JSON object `{message: count}` (keys sorted, so
//! the same counts always give the same bytes). Result:
//! `{"errors": TOTAL, "top": [{"message": M, "count": N}, ...]}`.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use weir_plugin_sdk::{export_aggregator, lines, Aggregator, Error, State};

pub struct TopErrors {
    n: usize,
    levels: Vec<String>,
}

const FORMAT: u32 = 1;

fn decode(s: &State) -> Result<BTreeMap<String, u64>, Error> {
    if s.data.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_slice(&s.data).map_err(|e| Error::failed(format!("accumulator: {e}")))
}

fn encode(m: &BTreeMap<String, u64>) -> State {
    State {
        format: FORMAT,
        data: serde_json::to_vec(m).expect("a map of counts serialises"),
    }
}

impl Aggregator for TopErrors {
    fn new(config: &Value) -> Result<Self, Error> {
        let n = match config.get("n") {
            None => 5,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| Error::config("n must be an integer in 1..=1000"))?
                as usize,
        };
        let levels = match config.get("levels") {
            None => vec!["error".to_owned(), "fatal".to_owned()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|l| l.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Error::config("levels must be a list of strings"))?,
            Some(_) => return Err(Error::config("levels must be a list of strings")),
        };
        Ok(TopErrors { n, levels })
    }

    fn empty(&self) -> State {
        encode(&BTreeMap::new())
    }

    fn update(&self, acc: State, batch: &[u8]) -> Result<State, Error> {
        let mut m = decode(&acc)?;
        for line in lines(batch).filter(|l| !l.is_empty()) {
            let rec: Value = serde_json::from_slice(line)
                .map_err(|e| Error::failed(format!("record is not JSON: {e}")))?;
            let level = rec.get("level").or_else(|| rec.get("severity"));
            if !level
                .and_then(Value::as_str)
                .is_some_and(|l| self.levels.iter().any(|w| w == l))
            {
                continue;
            }
            let msg = rec
                .get("message")
                .or_else(|| rec.get("msg"))
                .and_then(Value::as_str)
                .unwrap_or("");
            *m.entry(msg.to_owned()).or_insert(0) += 1;
        }
        Ok(encode(&m))
    }

    fn merge(&self, a: State, b: State) -> Result<State, Error> {
        let mut m = decode(&a)?;
        for (k, v) in decode(&b)? {
            *m.entry(k).or_insert(0) += v;
        }
        Ok(encode(&m))
    }

    fn restore(&self, acc: State) -> Result<State, Error> {
        match acc.format {
            FORMAT => Ok(acc),
            f => Err(Error::config(format!("unknown accumulator format {f}"))),
        }
    }

    fn finish(&self, acc: State) -> Result<Value, Error> {
        let m = decode(&acc)?;
        let total: u64 = m.values().sum();
        let mut top: Vec<(&String, &u64)> = m.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let top: Vec<Value> = top
            .into_iter()
            .take(self.n)
            .map(|(k, v)| json!({"message": k, "count": v}))
            .collect();
        Ok(json!({"errors": total, "top": top}))
    }
}

export_aggregator!(TopErrors);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_rank_exactly() {
        let t = TopErrors::new(&json!({"n": 2})).unwrap();
        let a = t
            .update(
                t.empty(),
                b"{\"level\":\"error\",\"message\":\"db down\"}\n{\"level\":\"info\",\"message\":\"ok\"}\n{\"level\":\"error\",\"message\":\"timeout\"}\n",
            )
            .unwrap();
        let b = t
            .update(
                t.empty(),
                b"{\"severity\":\"fatal\",\"msg\":\"db down\"}\n{\"level\":\"error\",\"message\":\"oom\"}\n",
            )
            .unwrap();
        let r = t.finish(t.merge(a, b).unwrap()).unwrap();
        assert_eq!(
            r,
            json!({"errors": 4, "top": [{"message":"db down","count":2},{"message":"oom","count":1}]})
        );
        assert!(t
            .restore(State {
                format: 9,
                data: vec![]
            })
            .is_err());
        assert!(TopErrors::new(&json!({"n": 0})).is_err());
    }
}
