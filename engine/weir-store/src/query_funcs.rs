//! SQL functions whose output can dwarf their input, bounded by the query's memory.
//!
//! `repeat('x', 1e9)` builds a gigabyte inside the function, where no DataFusion memory
//! pool sees it. Each function listed in [`AMPLIFIERS`] is replaced, in every query's
//! session, by a wrapper that first works out an upper bound of the bytes its call will
//! build (from the arguments: `len(s) × n` for `repeat`, `n` characters for `lpad`, ...)
//! and reserves that much in the query's [`QueryPool`] for the duration of the call, so
//! a call that would exceed the query's (or its tenant's, or the node's) memory is
//! refused with the reason before anything is allocated. Constant folding during
//! planning goes through the same wrapper. Aggregates that grow (`string_agg`,
//! `array_agg`) already report their size to the pool.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int32Type, Int64Type, TimeUnit};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

use crate::query_memory::QueryPool;

/// Functions whose output size is not bounded by their input's.
pub const AMPLIFIERS: &[&str] = &[
    "repeat",
    "lpad",
    "rpad",
    "replace",
    "regexp_replace",
    "array_repeat",
    "array_resize",
    "range",
    "generate_series",
];

/// Replace the session's [`AMPLIFIERS`] by wrappers that reserve their output in `pool`.
pub fn register(ctx: &SessionContext, pool: &Arc<QueryPool>) {
    for name in AMPLIFIERS {
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner,
                pool: pool.clone(),
            }));
        }
    }
}

#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    pool: Arc<QueryPool>,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && Arc::ptr_eq(&self.pool, &other.pool)
    }
}
impl Eq for Bounded {}
impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = output_bound(self.inner.name(), &args.args, args.number_rows)?;
        let _held = self.pool.reserve(bytes, self.inner.name())?;
        self.inner.invoke_with_args(args)
    }
}

/// An upper bound of the bytes a call of `name` builds for `rows` rows.
fn output_bound(name: &str, args: &[ColumnarValue], rows: usize) -> Result<usize> {
    let rows = rows.max(1);
    let arg = |i: usize| Arg::new(args.get(i));
    let mut total: u128 = 0;
    match name {
        "repeat" => {
            let (s, n) = (arg(0)?, arg(1)?);
            for r in 0..rows {
                total += s.len(r) * n.int(r).max(0) as u128;
            }
        }
        "lpad" | "rpad" => {
            // At most `n` characters of at most 4 bytes each.
            let n = arg(1)?;
            for r in 0..rows {
                total += n.int(r).max(0) as u128 * 4;
            }
        }
        "replace" => {
            let (s, from, to) = (arg(0)?, arg(1)?, arg(2)?);
            for r in 0..rows {
                let (ls, lf, lt) = (s.len(r), from.len(r).max(1), to.len(r));
                total += ls + if lt > lf { (ls / lf + 1) * lt } else { 0 };
            }
        }
        "regexp_replace" => {
            // Every match (at most one per position) becomes the replacement, whose
            // references expand to at most the whole input in all.
            let (s, to) = (arg(0)?, arg(2)?);
            for r in 0..rows {
                total += 2 * (s.len(r) + 1) * (to.len(r) + 1);
            }
        }
        "array_repeat" => {
            let (e, n) = (arg(0)?, arg(1)?);
            for r in 0..rows {
                total += (e.len(r) + 16) * n.int(r).max(0) as u128;
            }
        }
        "array_resize" => {
            let n = arg(1)?;
            for r in 0..rows {
                total += 16 * n.int(r).max(0) as u128;
            }
        }
        "range" | "generate_series" => {
            let (start, stop, step) = (arg(0)?, arg(1)?, arg(2).ok());
            for r in 0..rows {
                let span = stop.int(r).abs_diff(start.int(r)) as u128;
                let step = step.as_ref().map_or(1, |s| s.step(r)).max(1);
                total += 16 * (span / step + 1);
            }
        }
        _ => {}
    }
    Ok(usize::try_from(total).unwrap_or(usize::MAX))
}

/// One argument of a call, readable per row whether it is a scalar or an array.
struct Arg {
    ints: Option<ArrayRef>,
    lens: Option<ArrayRef>,
    scalar: Option<ScalarValue>,
}

impl Arg {
    fn new(v: Option<&ColumnarValue>) -> Result<Arg> {
        let v = v.ok_or_else(|| DataFusionError::Plan("missing argument".into()))?;
        let (array, scalar) = match v {
            ColumnarValue::Scalar(s) => (s.to_array_of_size(1)?, Some(s.clone())),
            ColumnarValue::Array(a) => (a.clone(), None),
        };
        let ints = match array.data_type() {
            DataType::Interval(_) => None,
            t if t.is_integer() || t.is_floating() => Some(cast(&array, &DataType::Int64)?),
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
                let ns = cast(&array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
                Some(cast(&ns, &DataType::Int64)?)
            }
            _ => None,
        };
        let lens = length(&array).ok();
        Ok(Arg {
            ints,
            lens,
            scalar: scalar.filter(|s| matches!(s.data_type(), DataType::Interval(_))),
        })
    }

    fn row(a: &ArrayRef, r: usize) -> usize {
        if a.len() == 1 {
            0
        } else {
            r
        }
    }

    /// The integer (or time in nanoseconds) at row `r`; 0 when null or not a number.
    fn int(&self, r: usize) -> i64 {
        match &self.ints {
            Some(a) => {
                let i = Self::row(a, r);
                let a = a.as_primitive::<Int64Type>();
                if a.is_null(i) {
                    0
                } else {
                    a.value(i)
                }
            }
            None => 0,
        }
    }

    /// Byte length (or element count) at row `r`; 8 when the type has none.
    fn len(&self, r: usize) -> u128 {
        let Some(a) = &self.lens else { return 8 };
        let i = Self::row(a, r);
        if a.is_null(i) {
            return 0;
        }
        match a.data_type() {
            DataType::Int32 => a.as_primitive::<Int32Type>().value(i).max(0) as u128,
            DataType::Int64 => a.as_primitive::<Int64Type>().value(i).max(0) as u128,
            _ => 8,
        }
    }

    /// A step of `range`: an integer, or an interval in nanoseconds (months as 28 days,
    /// so the bound stays an upper bound).
    fn step(&self, r: usize) -> u128 {
        if let Some(ScalarValue::IntervalMonthDayNano(Some(v))) = &self.scalar {
            let day = 86_400_000_000_000i128;
            let ns = v.months as i128 * 28 * day + v.days as i128 * day + v.nanoseconds as i128;
            return ns.unsigned_abs();
        }
        if let Some(ScalarValue::IntervalDayTime(Some(v))) = &self.scalar {
            return (v.days as i128 * 86_400_000_000_000 + v.milliseconds as i128 * 1_000_000)
                .unsigned_abs();
        }
        if let Some(ScalarValue::IntervalYearMonth(Some(m))) = &self.scalar {
            return (*m as i128 * 28 * 86_400_000_000_000).unsigned_abs();
        }
        (self.int(r) as i128).unsigned_abs().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query_memory::QueryBudget;

    async fn run(sql: &str, limit: usize) -> std::result::Result<usize, String> {
        let budget = QueryBudget::new(limit, limit, limit);
        let pool = budget.pool("t");
        let ctx = SessionContext::new();
        register(&ctx, &pool);
        let batches = ctx
            .sql(sql)
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn amplifiers_are_refused_before_they_allocate() {
        let mib = 1 << 20;
        for sql in [
            "SELECT length(repeat('x', 1100*1024*1024))",
            "SELECT length(lpad('x', 1000000000))",
            "SELECT length(rpad('x', 1000000000, 'yz'))",
            "SELECT cardinality(array_repeat(1, 1000000000))",
            "SELECT cardinality(range(0, 1000000000))",
            "SELECT cardinality(generate_series(1, 1000000000, 1))",
            "SELECT length(replace(repeat('a', 1000), 'a', repeat('b', 100000)))",
            "SELECT length(regexp_replace(repeat('a', 10000), 'a', repeat('$0', 10000), 'g'))",
            "SELECT cardinality(range(TIMESTAMP '1970-01-01T00:00:00', TIMESTAMP '2200-01-01T00:00:00', INTERVAL '1 second'))",
            "SELECT length(repeat(s, 100000)) FROM (VALUES (repeat('x', 1000))) t(s)",
        ] {
            let e = run(sql, 64 * mib).await.unwrap_err();
            assert!(e.contains("Resources exhausted") && e.contains("limit of 64.0 MiB"), "{sql}: {e}");
        }
        for sql in [
            "SELECT length(repeat('x', 1000))",
            "SELECT lpad('x', 10), rpad('x', 10, 'y'), replace('abc', 'b', 'xyz')",
            "SELECT cardinality(range(0, 1000)), cardinality(array_repeat('a', 10))",
            "SELECT regexp_replace('aaa', 'a', 'b', 'g')",
            "SELECT cardinality(range(DATE '2026-01-01', DATE '2026-02-01', INTERVAL '1 day'))",
        ] {
            assert_eq!(run(sql, 64 * mib).await, Ok(1), "{sql}");
        }
    }
}
