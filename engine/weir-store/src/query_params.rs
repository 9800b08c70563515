//! Parameters of prepared statements: the placeholders of a statement, their types,
//! and the values bound to them.
//!
//! DataFusion plans numbered placeholders, `$1`, `$2`, ... (and SQLite's `?1`, `?2`).
//! The bare `?` of JDBC, ODBC and ADBC drivers is numbered here, on the parsed
//! statement, in the order it appears in the text (`?` ... `?` become `$1` ... `$2`);
//! a statement mixes neither form nor uses named ones (`$name`). Values never touch the
//! SQL text: they replace the placeholders of the logical plan as literals
//! (`LogicalPlan::with_param_values`), after [`bind`] checked their number, types and
//! size.

use std::ops::ControlFlow;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::logical_expr::LogicalPlan;
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    visit_expressions, visit_expressions_mut, Expr, Value, ValueWithSpan,
};
use datafusion::sql::sqlparser::tokenizer::Location;

/// Most parameters a statement may have.
pub const MAX_PARAMS: usize = 256;
/// Most bytes of values bound to one statement, all parameters together.
pub const MAX_PARAM_BYTES: usize = 64 << 10;

/// Number the bare `?` placeholders of `stmt` (`$1`, `$2`, ... in text order). Returns
/// how many there were.
pub fn number_placeholders(stmt: &mut DFStatement) -> Result<usize, String> {
    match stmt {
        DFStatement::Statement(s) => number_in(s.as_mut()),
        DFStatement::Explain(e) => number_placeholders(&mut e.statement),
        // Refused when planned.
        _ => Ok(0),
    }
}

fn placeholder(e: &Expr) -> Option<(&str, Location)> {
    match e {
        Expr::Value(ValueWithSpan {
            value: Value::Placeholder(p),
            span,
        }) => Some((p.as_str(), span.start)),
        _ => None,
    }
}

fn number_in(s: &mut datafusion::sql::sqlparser::ast::Statement) -> Result<usize, String> {
    let mut bare = Vec::new();
    let mut numbered = false;
    let _ = visit_expressions(s, |e| {
        match placeholder(e) {
            Some(("?", at)) => bare.push((at.line, at.column)),
            Some(_) => numbered = true,
            None => {}
        }
        ControlFlow::<()>::Continue(())
    });
    if bare.is_empty() {
        return Ok(0);
    }
    if numbered {
        return Err(
            "a statement uses either `?` or numbered placeholders ($1, $2, ...), not both".into(),
        );
    }
    bare.sort_unstable();
    if bare.windows(2).any(|w| w[0] == w[1]) || bare.iter().any(|&(line, _)| line == 0) {
        return Err("cannot tell the order of the `?` placeholders: use $1, $2, ...".into());
    }
    if bare.len() > MAX_PARAMS {
        return Err(too_many(bare.len()));
    }
    let _ = visit_expressions_mut(s, |e| {
        if let Expr::Value(ValueWithSpan {
            value: Value::Placeholder(p),
            span,
        }) = e
        {
            if p == "?" {
                let at = (span.start.line, span.start.column);
                if let Ok(i) = bare.binary_search(&at) {
                    *p = format!("${}", i + 1);
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(bare.len())
}

fn too_many(n: usize) -> String {
    format!("the statement has {n} parameters, more than the {MAX_PARAMS} allowed")
}

/// The parameters of `plan`: `$1` ... `$n`, typed as the plan infers them (`Null` where
/// it does not, e.g. a placeholder no column or cast gives a type).
pub fn parameter_fields(plan: &LogicalPlan) -> Result<Vec<Field>, String> {
    let found = plan.get_parameter_fields().map_err(|e| e.to_string())?;
    let mut types: Vec<Option<DataType>> = Vec::new();
    for (id, field) in found {
        let index = id
            .strip_prefix('$')
            .or_else(|| id.strip_prefix('?'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("placeholder {id} is not supported: use $1, $2, ... or `?`"))?;
        if index > MAX_PARAMS {
            return Err(too_many(index));
        }
        if types.len() < index {
            types.resize(index, None);
        }
        if let Some(f) = field {
            types[index - 1].get_or_insert_with(|| f.data_type().clone());
        }
    }
    Ok(types
        .into_iter()
        .enumerate()
        .map(|(i, t)| Field::new(format!("${}", i + 1), t.unwrap_or(DataType::Null), true))
        .collect())
}

/// The kinds a value may be converted between when its type is not the parameter's.
#[derive(PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    /// Floats and decimals.
    Real,
    Text,
    Binary,
    Temporal,
    Other,
}

fn kind(t: &DataType) -> Kind {
    use DataType::*;
    match t {
        Boolean => Kind::Bool,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => Kind::Int,
        Float16 | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..)
        | Decimal256(..) => Kind::Real,
        Utf8 | LargeUtf8 | Utf8View => Kind::Text,
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => Kind::Binary,
        Timestamp(..) | Date32 | Date64 => Kind::Temporal,
        _ => Kind::Other,
    }
}

/// Whether a value of type `from` may stand for a parameter of type `to` (converted
/// exactly, or refused when it does not fit): within a kind, integers as reals, and
/// text as a date or time. Never a number as text or text as a number.
fn convertible(from: &DataType, to: &DataType) -> bool {
    let (f, t) = (kind(from), kind(to));
    (f == t && f != Kind::Other)
        || (f == Kind::Int && t == Kind::Real)
        || (f == Kind::Text && t == Kind::Temporal)
}

/// `values` checked against the statement's `parameters` and converted to their types:
/// as many values as parameters, each of a type that converts exactly, all within
/// [`MAX_PARAM_BYTES`]. A parameter of unknown type (`Null`) takes the value as it is.
pub fn bind(parameters: &[Field], values: Vec<ScalarValue>) -> Result<Vec<ScalarValue>, String> {
    if values.len() != parameters.len() {
        return Err(format!(
            "the statement has {} parameter(s), {} value(s) were bound",
            parameters.len(),
            values.len()
        ));
    }
    let bytes: usize = values.iter().map(ScalarValue::size).sum();
    if bytes > MAX_PARAM_BYTES {
        return Err(format!(
            "the parameter values take {bytes} bytes, more than the {MAX_PARAM_BYTES} allowed"
        ));
    }
    parameters
        .iter()
        .zip(values)
        .map(|(p, v)| {
            let want = p.data_type();
            let got = v.data_type();
            if *want == DataType::Null || got == *want {
                return Ok(v);
            }
            if v.is_null() {
                return ScalarValue::try_from(want).map_err(|e| e.to_string());
            }
            if !convertible(&got, want) {
                return Err(format!(
                    "parameter {} is {want}, the value bound to it is {got}",
                    p.name()
                ));
            }
            v.cast_to(want).map_err(|e| {
                format!(
                    "parameter {} is {want}: the value {v} does not convert: {e}",
                    p.name()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// `sql` planned over a table `t` (DataFusion's `VARCHAR` is `Utf8View`).
    async fn plan(sql: &str) -> Result<(LogicalPlan, usize), String> {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (id BIGINT, name VARCHAR, ts TIMESTAMP, v DOUBLE)")
            .await
            .unwrap();
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let mut stmt = state.sql_to_statement(sql, &dialect).unwrap();
        let n = number_placeholders(&mut stmt)?;
        let plan = state
            .statement_to_plan(stmt)
            .await
            .map_err(|e| e.to_string())?;
        Ok((plan, n))
    }

    fn types(fields: &[Field]) -> Vec<(String, DataType)> {
        fields
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    }

    #[tokio::test]
    async fn bare_question_marks_are_numbered_in_text_order() {
        let (p, n) = plan("SELECT id FROM t WHERE name = ? AND id > ? LIMIT 5")
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            types(&parameter_fields(&p).unwrap()),
            vec![
                ("$1".into(), DataType::Utf8View),
                ("$2".into(), DataType::Int64)
            ]
        );
        // Across lines, and in a subquery before the outer filter's.
        let (p, _) =
            plan("SELECT id FROM t\nWHERE v > (SELECT max(v) FROM t WHERE id = ?)\n  AND name = ?")
                .await
                .unwrap();
        assert_eq!(
            types(&parameter_fields(&p).unwrap()),
            vec![
                ("$1".into(), DataType::Int64),
                ("$2".into(), DataType::Utf8View)
            ]
        );
        // A `?` inside a string is text, not a placeholder.
        let (p, n) = plan("SELECT id FROM t WHERE name = '?' AND id = ?")
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(parameter_fields(&p).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn numbered_placeholders_plan_as_they_are() {
        let (p, n) = plan("SELECT id FROM t WHERE id = $2 OR name = $1")
            .await
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(
            types(&parameter_fields(&p).unwrap()),
            vec![
                ("$1".into(), DataType::Utf8View),
                ("$2".into(), DataType::Int64)
            ]
        );
        let (p, _) = plan("SELECT id FROM t").await.unwrap();
        assert!(parameter_fields(&p).unwrap().is_empty());
        // A gap still counts: $1 is a parameter of unknown type.
        let (p, _) = plan("SELECT id FROM t WHERE id = $2").await.unwrap();
        assert_eq!(
            types(&parameter_fields(&p).unwrap()),
            vec![
                ("$1".into(), DataType::Null),
                ("$2".into(), DataType::Int64)
            ]
        );
    }

    #[tokio::test]
    async fn mixed_named_and_excessive_placeholders_are_refused() {
        let e = plan("SELECT id FROM t WHERE id = ? AND name = $1")
            .await
            .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let (p, _) = plan("SELECT id FROM t WHERE name = $name").await.unwrap();
        let e = parameter_fields(&p).unwrap_err();
        assert!(e.contains("$name is not supported"), "{e}");
        let many = vec!["id = ?"; MAX_PARAMS + 1].join(" OR ");
        let e = plan(&format!("SELECT id FROM t WHERE {many}"))
            .await
            .unwrap_err();
        assert!(e.contains("more than the 256 allowed"), "{e}");
        let (p, _) = plan(&format!("SELECT id FROM t WHERE id = ${}", MAX_PARAMS + 1))
            .await
            .unwrap();
        assert!(parameter_fields(&p).unwrap_err().contains("more than"));
    }

    fn field(name: &str, t: DataType) -> Field {
        Field::new(name, t, true)
    }

    #[test]
    fn values_convert_exactly_or_are_refused() {
        let params = [
            field("$1", DataType::Utf8),
            field("$2", DataType::UInt32),
            field("$3", DataType::Float64),
            field("$4", DataType::Null),
        ];
        let ok = bind(
            &params,
            vec![
                ScalarValue::from("x"),
                ScalarValue::Int64(Some(7)),
                ScalarValue::Int64(Some(2)),
                ScalarValue::Boolean(Some(true)),
            ],
        )
        .unwrap();
        assert_eq!(
            ok,
            vec![
                ScalarValue::from("x"),
                ScalarValue::UInt32(Some(7)),
                ScalarValue::Float64(Some(2.0)),
                ScalarValue::Boolean(Some(true)),
            ]
        );
        // A null of any type is a null of the parameter's.
        let nulls = bind(&params[..1], vec![ScalarValue::Int64(None)]).unwrap();
        assert_eq!(nulls, vec![ScalarValue::Utf8(None)]);
        let e = bind(&params, vec![ScalarValue::from("x")]).unwrap_err();
        assert!(e.contains("4 parameter(s), 1 value(s)"), "{e}");
        let e = bind(&params[..1], vec![ScalarValue::Int64(Some(5))]).unwrap_err();
        assert!(
            e.contains("parameter $1 is Utf8, the value bound to it is Int64"),
            "{e}"
        );
        let e = bind(&params[1..2], vec![ScalarValue::from("7")]).unwrap_err();
        assert!(e.contains("parameter $2 is UInt32"), "{e}");
        let e = bind(&params[1..2], vec![ScalarValue::Float64(Some(1.5))]).unwrap_err();
        assert!(
            e.contains("parameter $2 is UInt32"),
            "a real is no integer: {e}"
        );
        let e = bind(&params[1..2], vec![ScalarValue::Int64(Some(-1))]).unwrap_err();
        assert!(e.contains("does not convert"), "out of range: {e}");
        let big = "x".repeat(MAX_PARAM_BYTES + 1);
        let e = bind(&params[..1], vec![ScalarValue::from(big.as_str())]).unwrap_err();
        assert!(e.contains("more than the 65536 allowed"), "{e}");
    }

    #[test]
    fn text_binds_to_a_timestamp() {
        let ts = DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Millisecond,
            Some("UTC".into()),
        );
        let v = bind(
            &[field("$1", ts.clone())],
            vec![ScalarValue::from("2024-01-02T03:04:05Z")],
        )
        .unwrap();
        assert_eq!(v[0].data_type(), ts);
        assert_eq!(
            v[0],
            ScalarValue::TimestampMillisecond(Some(1_704_164_645_000), Some("UTC".into()))
        );
        assert!(bind(&[field("$1", ts)], vec![ScalarValue::from("not a time")]).is_err());
    }
}
