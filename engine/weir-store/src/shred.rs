//! Shredding: how `logs` rows are laid out in cold Parquet files.
//!
//! Hot rows keep each record's JSON text. A cold file instead stores:
//! - the provenance and well-known columns (`ts`, `stream`, `level`, `message`,
//!   `trace_id`, `partition`, `offset`, `seq`, `schema`);
//! - one typed column per frequent leaf field, named by its dotted path (`host`,
//!   `http.status`, `user.id`): a path becomes a column when at least
//!   [`MIN_SHARE`] of the file's rows hold it with one kind of value (integer, float,
//!   string or boolean), at most [`MAX_COLUMNS`] of them, most frequent first;
//! - `rest`: the JSON of whatever is left (rare fields, arrays, nulls, empty objects,
//!   values of another kind than their column's), null when nothing is;
//! - `wk`: which well-known fields were taken out of the record (bits [`WK_MESSAGE`]...),
//!   so the record can be put back together exactly — including a `timestamp` string
//!   that is `ts` in [`canonical_time`] form, which is not stored at all.
//!
//! [`rebuild`] puts a record back together: the same JSON value (object keys come out
//! sorted, numbers in their shortest form). Each file's columns and kinds are in its
//! manifest entry ([`ShredColumn`]); queries merge them across files (see
//! [`merge_columns`]), so a field that appears later, or changes kind, never breaks
//! reading older files.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, UInt8Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMillisecondType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::hot::{storage_err, StoreError};

/// Share of a file's rows that must hold a path for it to become a column.
pub const MIN_SHARE: f64 = 0.1;
/// Most shredded columns per file.
pub const MAX_COLUMNS: usize = 256;

/// `wk` bits: which record field each well-known column was taken from.
pub const WK_MESSAGE: u8 = 1;
pub const WK_MSG: u8 = 2;
pub const WK_LEVEL: u8 = 4;
pub const WK_SEVERITY: u8 = 8;
pub const WK_TRACE_ID: u8 = 16;
/// The record's `timestamp` was `ts` in [`canonical_time`] form (so it is not stored).
pub const WK_TIMESTAMP: u8 = 32;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`: the form of a `timestamp` field `ts` rebuilds exactly.
pub fn canonical_time(ms: i64) -> String {
    let day = ms.rem_euclid(86_400_000);
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        crate::cold::date_of(ms),
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

/// Column names a field path can never take (they are the table's own columns).
pub const RESERVED: &[&str] = &[
    "ts",
    "stream",
    "level",
    "message",
    "trace_id",
    "record",
    "rest",
    "wk",
    "partition",
    "offset",
    "seq",
    "schema",
];

/// The kind of value a shredded column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Int,
    Float,
    Bool,
    Str,
}

impl Kind {
    fn of(v: &Value) -> Option<Kind> {
        match v {
            Value::Bool(_) => Some(Kind::Bool),
            Value::String(_) => Some(Kind::Str),
            Value::Number(n) if n.is_i64() => Some(Kind::Int),
            Value::Number(n) if n.is_f64() => Some(Kind::Float),
            // u64 above i64::MAX, null, arrays, objects: kept in `rest`.
            _ => None,
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Bool => DataType::Boolean,
            Kind::Str => DataType::Utf8,
        }
    }

    /// The kind a column has across files holding `self` and `other`: integers widen
    /// to floats, anything else mixed to text.
    pub fn widen(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Str,
        }
    }
}

/// One shredded column of a cold file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShredColumn {
    /// Dotted path of the field (`http.status`), also the column's name.
    pub path: String,
    pub kind: Kind,
}

/// Merge the columns of several files: one per path, kinds widened.
pub fn merge_columns<'a>(files: impl IntoIterator<Item = &'a [ShredColumn]>) -> Vec<ShredColumn> {
    let mut by: std::collections::BTreeMap<&str, Kind> = Default::default();
    for cols in files {
        for c in cols {
            by.entry(&c.path)
                .and_modify(|k| *k = k.widen(c.kind))
                .or_insert(c.kind);
        }
    }
    by.into_iter()
        .map(|(p, kind)| ShredColumn {
            path: p.to_owned(),
            kind,
        })
        .collect()
}

/// Schema of a shredded cold file with `columns`.
pub fn cold_logs_schema(columns: &[ShredColumn]) -> SchemaRef {
    let base = crate::rows::logs_schema();
    let mut fields: Vec<Field> = base
        .fields()
        .iter()
        .filter(|f| f.name() != "record")
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("wk", DataType::UInt8, false));
    fields.push(Field::new("rest", DataType::Utf8, true));
    for c in columns {
        fields.push(Field::new(&c.path, c.kind.data_type(), true));
    }
    Arc::new(Schema::new(fields))
}

fn splittable(key: &str) -> bool {
    !key.is_empty() && !key.contains('.')
}

/// Count `(path, kind)` of every leaf under `obj`.
fn count_leaves(
    obj: &Map<String, Value>,
    prefix: &mut String,
    counts: &mut HashMap<(String, Kind), u32>,
) {
    for (k, v) in obj {
        if !splittable(k) {
            continue;
        }
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(k);
        match v {
            Value::Object(o) => count_leaves(o, prefix, counts),
            v => {
                if let Some(kind) = Kind::of(v) {
                    if len > 0 || !RESERVED.contains(&prefix.as_str()) {
                        *counts.entry((prefix.clone(), kind)).or_default() += 1;
                    }
                }
            }
        }
        prefix.truncate(len);
    }
}

/// Take the leaf at `path` out of `obj` if it is of `kind`, pruning objects the removal
/// leaves empty (objects that were empty to begin with stay).
fn take_leaf(obj: &mut Map<String, Value>, path: &[&str], kind: Kind) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    if rest.is_empty() {
        if obj.get(*first).and_then(Kind::of) == Some(kind) {
            return obj.remove(*first);
        }
        return None;
    }
    let Some(Value::Object(inner)) = obj.get_mut(*first) else {
        return None;
    };
    let v = take_leaf(inner, rest, kind)?;
    if inner.is_empty() {
        obj.remove(*first);
    }
    Some(v)
}

fn take_str(obj: &mut Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(_)) => match obj.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn records(hot: &RecordBatch) -> Result<&datafusion::arrow::array::StringArray, StoreError> {
    hot.column_by_name("record")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| storage_err("logs rows without a record column"))
}

/// A record as the JSON object shredding takes apart; the reason when it cannot be
/// (a number past f64, a lone surrogate, nesting past serde_json's depth, not an
/// object): such a row cannot go to a cold file.
fn parse_record(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("the record is not a JSON object".into()),
        Err(e) => Err(format!("the record cannot be shredded: {e}")),
    }
}

/// Rows of hot `logs` rows that [`shred`] cannot lay out, with the reason (the flush
/// quarantines them instead of failing the file).
pub(crate) fn unshreddable_rows(hot: &RecordBatch) -> Vec<(usize, String)> {
    let Ok(record) = records(hot) else {
        return Vec::new();
    };
    (0..hot.num_rows())
        .filter_map(|i| parse_record(record.value(i)).err().map(|e| (i, e)))
        .collect()
}

/// Lay out hot `logs` rows (see [`crate::rows`]) as a shredded cold batch, and the
/// columns it chose.
pub fn shred(hot: &RecordBatch) -> Result<(RecordBatch, Vec<ShredColumn>), StoreError> {
    let n = hot.num_rows();
    let record = records(hot)?;
    let mut objs: Vec<Map<String, Value>> = Vec::with_capacity(n);
    for i in 0..n {
        objs.push(parse_record(record.value(i)).map_err(storage_err)?);
    }
    // Well-known fields: taken out with the same precedence `rows` extracts them; a
    // `timestamp` that is `ts` in canonical form too.
    let ts = hot
        .column_by_name("ts")
        .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
        .ok_or_else(|| storage_err("logs rows without ts"))?;
    let mut wk = UInt8Builder::with_capacity(n);
    let mut level = StringBuilder::new();
    let mut message = StringBuilder::new();
    let mut trace = StringBuilder::new();
    for (i, o) in objs.iter_mut().enumerate() {
        let mut bits = 0u8;
        if matches!(o.get("timestamp"), Some(Value::String(t)) if *t == canonical_time(ts.value(i)))
        {
            o.remove("timestamp");
            bits |= WK_TIMESTAMP;
        }
        let m = match take_str(o, "message") {
            Some(s) => {
                bits |= WK_MESSAGE;
                Some(s)
            }
            None => take_str(o, "msg").inspect(|_| bits |= WK_MSG),
        };
        let l = match take_str(o, "level") {
            Some(s) => {
                bits |= WK_LEVEL;
                Some(s)
            }
            None => take_str(o, "severity").inspect(|_| bits |= WK_SEVERITY),
        };
        let t = take_str(o, "trace_id").inspect(|_| bits |= WK_TRACE_ID);
        message.append_option(m);
        level.append_option(l);
        trace.append_option(t);
        wk.append_value(bits);
    }
    // Choose the frequent paths, each with its most common kind.
    let mut counts = HashMap::new();
    for o in &objs {
        count_leaves(o, &mut String::new(), &mut counts);
    }
    let mut best: HashMap<String, (Kind, u32)> = HashMap::new();
    for ((path, kind), c) in counts {
        let e = best.entry(path).or_insert((kind, 0));
        if c > e.1 || (c == e.1 && kind < e.0) {
            *e = (kind, c);
        }
    }
    let min = ((n as f64 * MIN_SHARE).ceil() as u32).max(1);
    let mut chosen: Vec<(String, Kind, u32)> = best
        .into_iter()
        .filter(|(_, (_, c))| *c >= min)
        .map(|(p, (k, c))| (p, k, c))
        .collect();
    chosen.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    chosen.truncate(MAX_COLUMNS);
    chosen.sort_by(|a, b| a.0.cmp(&b.0));
    let columns: Vec<ShredColumn> = chosen
        .into_iter()
        .map(|(path, kind, _)| ShredColumn { path, kind })
        .collect();
    // Fill the columns, taking each value out of the record.
    let mut built: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    let split: Vec<Vec<&str>> = columns
        .iter()
        .map(|c| c.path.split('.').collect())
        .collect();
    for (c, parts) in columns.iter().zip(&split) {
        let mut vals = objs.iter_mut().map(|o| take_leaf(o, parts, c.kind));
        let arr: ArrayRef = match c.kind {
            Kind::Int => {
                let mut b = Int64Builder::with_capacity(n);
                b.extend(vals.by_ref().map(|v| v.and_then(|v| v.as_i64())));
                Arc::new(b.finish())
            }
            Kind::Float => {
                let mut b = Float64Builder::with_capacity(n);
                b.extend(vals.by_ref().map(|v| v.and_then(|v| v.as_f64())));
                Arc::new(b.finish())
            }
            Kind::Bool => {
                let mut b = BooleanBuilder::with_capacity(n);
                b.extend(vals.by_ref().map(|v| v.and_then(|v| v.as_bool())));
                Arc::new(b.finish())
            }
            Kind::Str => {
                let mut b = StringBuilder::new();
                for v in vals.by_ref() {
                    b.append_option(v.as_ref().and_then(|v| v.as_str()));
                }
                Arc::new(b.finish())
            }
        };
        built.push(arr);
    }
    let mut rest = StringBuilder::new();
    for o in &objs {
        if o.is_empty() {
            rest.append_null();
        } else {
            rest.append_value(serde_json::to_string(o).map_err(storage_err)?);
        }
    }
    let schema = cold_logs_schema(&columns);
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in crate::rows::logs_schema().fields() {
        cols.push(match f.name().as_str() {
            "record" => continue,
            "level" => Arc::new(level.finish()),
            "message" => Arc::new(message.finish()),
            "trace_id" => Arc::new(trace.finish()),
            name => hot
                .column_by_name(name)
                .ok_or_else(|| storage_err(format!("logs rows without {name}")))?
                .clone(),
        });
    }
    cols.push(Arc::new(wk.finish()));
    cols.push(Arc::new(rest.finish()));
    cols.extend(built);
    let batch = RecordBatch::try_new(schema, cols).map_err(storage_err)?;
    Ok((batch, columns))
}

/// Put one record back together from its cold row: `rest`, the well-known fields `wk`
/// says were taken out, and `(path, value)` of its shredded columns (None: absent).
#[allow(clippy::too_many_arguments)]
pub fn rebuild<'a>(
    rest: Option<&str>,
    wk: u8,
    ts: i64,
    level: Option<&str>,
    message: Option<&str>,
    trace_id: Option<&str>,
    leaves: impl IntoIterator<Item = (&'a str, Option<Value>)>,
) -> Result<String, StoreError> {
    let mut obj: Map<String, Value> = match rest {
        Some(r) => serde_json::from_str(r).map_err(storage_err)?,
        None => Map::new(),
    };
    let mut put = |bit: u8, key: &str, v: Option<&str>| {
        if wk & bit != 0 {
            if let Some(v) = v {
                obj.insert(key.to_owned(), Value::String(v.to_owned()));
            }
        }
    };
    put(WK_MESSAGE, "message", message);
    put(WK_MSG, "msg", message);
    put(WK_LEVEL, "level", level);
    put(WK_SEVERITY, "severity", level);
    put(WK_TRACE_ID, "trace_id", trace_id);
    if wk & WK_TIMESTAMP != 0 {
        obj.insert("timestamp".into(), Value::String(canonical_time(ts)));
    }
    for (path, v) in leaves {
        let Some(v) = v else { continue };
        let mut at = &mut obj;
        let mut parts = path.split('.').peekable();
        while let Some(p) = parts.next() {
            if parts.peek().is_none() {
                at.insert(p.to_owned(), v);
                break;
            }
            let next = at
                .entry(p.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            match next {
                Value::Object(o) => at = o,
                _ => return Err(storage_err(format!("field {path} crosses a non-object"))),
            }
        }
    }
    serde_json::to_string(&obj).map_err(storage_err)
}

/// The value of row `i` of a shredded column as JSON (None when null).
pub fn leaf_value(col: &dyn Array, i: usize) -> Option<Value> {
    if col.is_null(i) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Int64 => Value::from(
            col.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(i),
        ),
        DataType::Float64 => Value::from(
            col.as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(i),
        ),
        DataType::Boolean => Value::from(col.as_boolean().value(i)),
        DataType::Utf8 => Value::from(col.as_string::<i32>().value(i)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(ndjson: &str) -> (RecordBatch, Vec<ShredColumn>) {
        let hot = crate::rows::segment_rows("app", 0, 0, 0, ndjson.as_bytes()).unwrap();
        let (cold, cols) = shred(&hot).unwrap();
        let s = |name: &str, i: usize| {
            let c = cold.column_by_name(name).unwrap().as_string::<i32>();
            (!c.is_null(i)).then(|| c.value(i))
        };
        let wk = cold
            .column_by_name("wk")
            .unwrap()
            .as_primitive::<datafusion::arrow::datatypes::UInt8Type>();
        for (i, line) in ndjson.lines().enumerate() {
            let leaves = cols.iter().map(|c| {
                (
                    c.path.as_str(),
                    leaf_value(cold.column_by_name(&c.path).unwrap().as_ref(), i),
                )
            });
            let ts = cold
                .column_by_name("ts")
                .unwrap()
                .as_primitive::<TimestampMillisecondType>()
                .value(i);
            let back = rebuild(
                s("rest", i),
                wk.value(i),
                ts,
                s("level", i),
                s("message", i),
                s("trace_id", i),
                leaves,
            )
            .unwrap();
            let want: Value = serde_json::from_str(line).unwrap();
            let got: Value = serde_json::from_str(&back).unwrap();
            assert_eq!(got, want, "row {i}");
            // The well-known columns are those of the hot rows.
            for name in ["level", "message", "trace_id"] {
                let h = hot.column_by_name(name).unwrap().as_string::<i32>();
                assert_eq!(
                    s(name, i),
                    (!h.is_null(i)).then(|| h.value(i)),
                    "{name} of row {i}"
                );
            }
        }
        (cold, cols)
    }

    #[test]
    fn every_record_comes_back_the_same() {
        let nd = r#"{"message":"a","level":"info","host":"h1","http":{"status":200,"path":"/x"},"user":{"id":7}}
{"msg":"b","severity":"warn","host":"h2","http":{"status":"ok"},"tags":["x",1],"n":null,"e":{}}
{"message":3,"level":30,"host":"h3","http":{"status":404,"rare":true},"user":{"id":7.5},"a.b":1}
{"message":"d","trace_id":"abc","host":"h4","http":5,"big":18446744073709551615,"ts":1,"stream":"s"}
{"host":"h5","deep":{"x":{"y":{"z":"w"}}},"user":{"id":-1,"name":"n"}}
{"host":"h6","timestamp":"2030-01-15T08:00:00Z"}
{"host":"h7","timestamp":"2030-01-15T08:00:00.123Z","ts":5}
{"host":"h8","timestamp":"1969-12-31T23:59:59.999Z"}
"#;
        let (cold, cols) = roundtrip(nd);
        let kinds: Vec<(&str, Kind)> = cols.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert!(kinds.contains(&("host", Kind::Str)));
        assert!(kinds.contains(&("http.status", Kind::Int)), "{kinds:?}");
        assert!(kinds.contains(&("user.id", Kind::Int)));
        assert!(
            !kinds.iter().any(|(p, _)| RESERVED.contains(p)),
            "{kinds:?}"
        );
        // A value of another kind than its column's stays in `rest`.
        let rest = cold.column_by_name("rest").unwrap().as_string::<i32>();
        assert!(rest.value(1).contains("\"ok\""), "{}", rest.value(1));
        assert!(rest.value(2).contains("7.5"));
    }

    #[test]
    fn sample_logs_shred_completely() {
        let nd = String::from_utf8(weir_core::sample::ndjson(200)).unwrap();
        let (cold, cols) = roundtrip(&nd);
        assert_eq!(
            cold.column_by_name("rest").unwrap().null_count(),
            200,
            "nothing left over"
        );
        assert!(
            !cols.iter().any(|c| c.path == "timestamp"),
            "canonical timestamps are rebuilt from ts: {cols:?}"
        );
        assert!(cols
            .iter()
            .any(|c| c.path == "http.duration_ms" && c.kind == Kind::Int));
    }

    #[test]
    fn rare_fields_stay_in_rest() {
        let mut nd = String::new();
        for i in 0..100 {
            if i == 0 {
                nd.push_str("{\"a\":1,\"rare\":\"r\"}\n");
            } else {
                nd.push_str(&format!("{{\"a\":{i}}}\n"));
            }
        }
        let (_, cols) = roundtrip(&nd);
        assert_eq!(
            cols,
            vec![ShredColumn {
                path: "a".into(),
                kind: Kind::Int
            }]
        );
    }

    #[test]
    fn kinds_widen() {
        let a = [ShredColumn {
            path: "x".into(),
            kind: Kind::Int,
        }];
        let b = [
            ShredColumn {
                path: "x".into(),
                kind: Kind::Float,
            },
            ShredColumn {
                path: "y".into(),
                kind: Kind::Bool,
            },
        ];
        let c = [ShredColumn {
            path: "x".into(),
            kind: Kind::Str,
        }];
        let m = merge_columns([&a[..], &b[..]]);
        assert_eq!(m[0].kind, Kind::Float);
        assert_eq!(m[1].kind, Kind::Bool);
        assert_eq!(merge_columns([&a[..], &b[..], &c[..]])[0].kind, Kind::Str);
    }
}
