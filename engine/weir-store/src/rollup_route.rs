//! Aggregations over `metrics` answered from a rollup table when that is exact.
//!
//! A rollup row holds count, sum, min, max (and a sketch) of one series over one window
//! of `R` seconds, aligned to the epoch. An aggregation over raw samples gives the same
//! answer from those rows when every group and every time bound is made of whole
//! windows:
//!
//! - aggregates: `count(*)`, `count(value)`, `sum(value)`, `min(value)`, `max(value)`,
//!   `avg(value)` (no DISTINCT, FILTER or ORDER BY) — read as `sum(count)`, `sum(sum)`,
//!   `min(min)`, `max(max)`, `sum(sum) / sum(count)`;
//! - groups: series columns (`name`, `labels`, `series`, expressions of them) and time
//!   buckets that are multiples of `R`: `date_bin(I, ts[, origin])` with `I` and the
//!   origin whole multiples of `R`, `date_trunc('minute' | 'hour' | 'day' | ..., ts)`;
//! - filters: on series columns, and on time only `ts >= T` / `ts < T` with `T` a
//!   multiple of `R`.
//!
//! The coarsest rollup that satisfies all of it is read instead of `metrics` — its
//! partial rows, since the rewritten aggregation merges them anyway (EXPLAIN shows
//! `metrics_1h`); anything else reads raw samples. Routing never
//! changes an answer (sums of floats may differ in their last bits: another order of
//! addition): where retention applies, raw samples and rollups are kept for different
//! times, so a query is routed only when its `ts >= T` bound lies after both cutoffs.
//! Data older than the raw retention is read from the rollup tables by name.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue, TableReference};
use datafusion::error::Result;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{max, min, sum};
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    cast, lit, Aggregate, BinaryExpr, Expr, LogicalPlan, LogicalPlanBuilder, Operator,
    Projection as LogicalPlanProjection, SubqueryAlias, TableSource,
};
use datafusion::logical_expr::{TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

/// A view DataFusion plans as a scan of its own instead of inlining its plan, so the
/// router sees which aggregations read `metrics`. Filters, projections and limits still
/// reach the view's plan (and through it Parquet pruning), as with any view.
#[derive(Debug)]
pub(crate) struct Opaque(pub(crate) Arc<dyn TableProvider>);

#[async_trait::async_trait]
impl TableProvider for Opaque {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }
}

/// A rollup table a query may read: its resolution (seconds), name and source.
pub(crate) type Rollup = (u32, String, Arc<dyn TableSource>);

/// The aggregation over `metrics` in a plan, taken apart: its expressions in terms of
/// the columns of `metrics` (through the projections and aliases between them).
struct Shape<'a> {
    agg: &'a Aggregate,
    /// The name the scan qualifies its columns by.
    table: TableReference,
    groups: Vec<Expr>,
    aggrs: Vec<Expr>,
    predicates: Vec<Expr>,
}

/// Columns of `metrics` that identify a series (rollups keep them).
const SERIES: [&str; 3] = ["name", "labels", "series"];

/// Rewrite every aggregation over `metrics` in `plan` (an optimized plan) that a rollup
/// answers exactly to read the coarsest such rollup (`rollups` in any order). Only
/// aggregations bounded by `ts >= T` with `T` at or after `earliest` (epoch ms) are
/// rewritten, when it is given: before it, retention hides raw samples whose rollups
/// may still be kept (or the other way round). None: nothing to rewrite.
pub(crate) fn route(
    plan: &LogicalPlan,
    rollups: &[Rollup],
    earliest: Option<i64>,
) -> Result<Option<LogicalPlan>> {
    if rollups.is_empty() {
        return Ok(None);
    }
    let mut by_coarseness = rollups.to_vec();
    by_coarseness.sort_by_key(|r| std::cmp::Reverse(r.0));
    plan.clone()
        .transform_up(|node| {
            let LogicalPlan::Aggregate(agg) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(shape) = shape(agg) else {
                return Ok(Transformed::no(node));
            };
            let start = shape
                .predicates
                .iter()
                .filter_map(time_bound)
                .filter(|(op, _)| *op == Operator::GtEq)
                .map(|(_, n)| n)
                .max();
            let within = match earliest {
                None => true,
                Some(e) => start.is_some_and(|n| n >= i128::from(e) * 1_000_000),
            };
            if !within {
                return Ok(Transformed::no(node));
            }
            for (secs, name, source) in &by_coarseness {
                if let Some(new) = rewrite(&shape, u64::from(*secs) * 1000, name, source.clone())? {
                    return Ok(Transformed::yes(new));
                }
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.transformed.then_some(t.data))
}

/// Replace every column of `plan`'s output in `e` by what `plan` computes it from.
fn through(e: Expr, plan: &LogicalPlan) -> Option<Expr> {
    let map: HashMap<Column, Expr> = match plan {
        LogicalPlan::Projection(p) => p
            .expr
            .iter()
            .enumerate()
            .map(|(i, x)| {
                (
                    Column::from(p.schema.qualified_field(i)),
                    x.clone().unalias(),
                )
            })
            .collect(),
        LogicalPlan::SubqueryAlias(a) => (0..a.schema.fields().len())
            .map(|i| {
                let inner = Column::from(a.input.schema().qualified_field(i));
                (
                    Column::from(a.schema.qualified_field(i)),
                    Expr::Column(inner),
                )
            })
            .collect(),
        _ => return Some(e),
    };
    let mut missing = false;
    let out = e
        .transform_up(|x| match &x {
            // (an unqualified reference names the one column of that name)
            Expr::Column(c) => match map.get(c).or_else(|| {
                let mut same = map.iter().filter(|(k, _)| k.name == c.name);
                match (c.relation.is_none(), same.next(), same.next()) {
                    (true, Some((_, r)), None) => Some(r),
                    _ => None,
                }
            }) {
                Some(r) => Ok(Transformed::yes(r.clone())),
                None => {
                    missing = true;
                    Ok(Transformed::no(x))
                }
            },
            _ => Ok(Transformed::no(x)),
        })
        .ok()?
        .data;
    (!missing).then_some(out)
}

/// An aggregation reading only filters, projections and aliases over a scan of
/// `metrics`.
fn shape(agg: &Aggregate) -> Option<Shape<'_>> {
    let mut groups = agg.group_expr.clone();
    let mut aggrs = agg.aggr_expr.clone();
    let mut predicates: Vec<Expr> = Vec::new();
    let mut input = agg.input.as_ref();
    loop {
        match input {
            LogicalPlan::Filter(f) => {
                predicates.extend(split_conjunction(&f.predicate).into_iter().cloned());
                input = &f.input;
            }
            LogicalPlan::Projection(LogicalPlanProjection { input: next, .. })
            | LogicalPlan::SubqueryAlias(SubqueryAlias { input: next, .. }) => {
                let map = |v: Vec<Expr>| -> Option<Vec<Expr>> {
                    v.into_iter().map(|e| through(e, input)).collect()
                };
                groups = map(groups)?;
                aggrs = map(aggrs)?;
                predicates = map(predicates)?;
                input = next;
            }
            LogicalPlan::TableScan(scan) if scan.table_name.table() == "metrics" => {
                if scan.fetch.is_some() {
                    return None;
                }
                predicates.extend(scan.filters.iter().cloned());
                return Some(Shape {
                    agg,
                    table: scan.table_name.clone(),
                    groups,
                    aggrs,
                    predicates,
                });
            }
            _ => return None,
        }
    }
}

fn is_column(e: &Expr, name: &str) -> bool {
    match e {
        Expr::Column(c) => c.name == name,
        Expr::Cast(c) => is_column(&c.expr, name),
        Expr::TryCast(c) => is_column(&c.expr, name),
        _ => false,
    }
}

/// Only series columns in `e`.
fn series_only(e: &Expr) -> bool {
    e.column_refs()
        .iter()
        .all(|c| SERIES.contains(&c.name.as_str()))
}

/// A timestamp literal in epoch nanoseconds.
fn ts_nanos(v: &ScalarValue) -> Option<i128> {
    Some(match v {
        ScalarValue::TimestampSecond(Some(v), _) => i128::from(*v) * 1_000_000_000,
        ScalarValue::TimestampMillisecond(Some(v), _) => i128::from(*v) * 1_000_000,
        ScalarValue::TimestampMicrosecond(Some(v), _) => i128::from(*v) * 1_000,
        ScalarValue::TimestampNanosecond(Some(v), _) => i128::from(*v),
        _ => return None,
    })
}

fn aligned(nanos: i128, window_ms: u64) -> bool {
    nanos.rem_euclid(i128::from(window_ms) * 1_000_000) == 0
}

/// Whether group expression `e` is made of whole windows of `window_ms`.
fn group_ok(e: &Expr, window_ms: u64) -> bool {
    if series_only(e) {
        return true;
    }
    let Expr::ScalarFunction(ScalarFunction { func, args }) = e else {
        return false;
    };
    match (func.name(), args.as_slice()) {
        ("date_bin", [Expr::Literal(interval, _), ts, rest @ ..]) if is_column(ts, "ts") => {
            let ScalarValue::IntervalMonthDayNano(Some(i)) = interval else {
                return false;
            };
            let nanos = i128::from(i.days) * 86_400_000_000_000 + i128::from(i.nanoseconds);
            let origin_ok = match rest {
                [] => true,
                [Expr::Literal(o, _)] => ts_nanos(o).is_some_and(|o| aligned(o, window_ms)),
                _ => false,
            };
            i.months == 0 && nanos > 0 && aligned(nanos, window_ms) && origin_ok
        }
        ("date_trunc", [Expr::Literal(unit, _), ts]) if is_column(ts, "ts") => {
            let secs: u64 = match unit {
                ScalarValue::Utf8(Some(u)) | ScalarValue::Utf8View(Some(u)) => {
                    match u.to_ascii_lowercase().as_str() {
                        "minute" => 60,
                        // Weeks, months, quarters and years start at midnight UTC.
                        "hour" => 3600,
                        "day" | "week" | "month" | "quarter" | "year" => 86_400,
                        _ => return false,
                    }
                }
                _ => return false,
            };
            (secs * 1000).is_multiple_of(window_ms)
        }
        _ => false,
    }
}

/// `ts >= T` or `ts < T` (either way round): the operator and `T` in nanoseconds.
fn time_bound(e: &Expr) -> Option<(Operator, i128)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (op, v) = match (left.as_ref(), right.as_ref()) {
        (ts, Expr::Literal(v, _)) if is_column(ts, "ts") => (*op, v),
        (Expr::Literal(v, _), ts) if is_column(ts, "ts") => (op.swap()?, v),
        _ => return None,
    };
    matches!(op, Operator::GtEq | Operator::Lt)
        .then_some(op)
        .zip(ts_nanos(v))
}

/// Whether filter conjunct `e` keeps whole windows of `window_ms`.
fn predicate_ok(e: &Expr, window_ms: u64) -> bool {
    series_only(e) || time_bound(e).is_some_and(|(_, n)| aligned(n, window_ms))
}

/// Aggregate `e` over rollup rows (columns qualified by `q`): one aggregate, or for
/// `avg` a sum and a count to divide.
fn rollup_aggregate(e: &Expr, q: &TableReference) -> Option<(Expr, Option<Expr>)> {
    let inner = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
        return None;
    };
    if params.distinct || params.filter.is_some() || !params.order_by.is_empty() {
        return None;
    }
    let c = |n: &str| Expr::Column(Column::new(Some(q.clone()), n));
    let on_value = matches!(params.args.as_slice(), [a] if is_column(a, "value"));
    Some(match func.name() {
        "count" => match params.args.as_slice() {
            [Expr::Literal(v, _)] if !v.is_null() => (sum(c("count")), None),
            _ if on_value => (sum(c("count")), None),
            _ => return None,
        },
        "sum" if on_value => (sum(c("sum")), None),
        "min" if on_value => (min(c("min")), None),
        "max" if on_value => (max(c("max")), None),
        "avg" if on_value => (sum(c("sum")), Some(sum(c("count")))),
        _ => return None,
    })
}

/// `shape` reading rollup `name` (windows of `window_ms`), if that is exact: the
/// rollup's rows aggregated, then projected to the original aggregation's output
/// columns (names, qualifiers and types).
fn rewrite(
    shape: &Shape,
    window_ms: u64,
    name: &str,
    source: Arc<dyn TableSource>,
) -> Result<Option<LogicalPlan>> {
    if !shape.groups.iter().all(|g| group_ok(g, window_ms))
        || !shape.predicates.iter().all(|p| predicate_ok(p, window_ms))
    {
        return Ok(None);
    }
    let Some(parts) = shape
        .aggrs
        .iter()
        .map(|e| rollup_aggregate(e, &shape.table))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let mut aggrs = Vec::new();
    for (i, (a, n)) in parts.iter().enumerate() {
        aggrs.push(a.clone().alias(format!("__rollup_{i}")));
        if let Some(n) = n {
            aggrs.push(n.clone().alias(format!("__rollup_{i}_count")));
        }
    }
    let mut b = LogicalPlanBuilder::scan(name, source, None)?.alias(shape.table.clone())?;
    if let Some(p) = conjunction(shape.predicates.iter().cloned()) {
        b = b.filter(p)?;
    }
    let b = b.aggregate(shape.groups.clone(), aggrs)?;
    let new = b.schema().clone();
    let old = &shape.agg.schema;
    let groups = shape.groups.len();
    if new.fields().len() < groups {
        return Ok(None);
    }
    let out = (0..old.fields().len()).map(|i| {
        let (q, f) = old.qualified_field(i);
        let v = if i < groups {
            Expr::Column(Column::from(new.qualified_field(i)))
        } else {
            let j = i - groups;
            let a = Expr::Column(Column::from_name(format!("__rollup_{j}")));
            match &parts[j].1 {
                Some(_) => {
                    let n = Expr::Column(Column::from_name(format!("__rollup_{j}_count")));
                    a / cast(n, DataType::Float64)
                }
                // A count of no rows is 0, a sum of no rollup rows NULL.
                None if !f.is_nullable() => {
                    coalesce(vec![a, lit(ScalarValue::new_zero(f.data_type())?)])
                }
                None => a,
            }
        };
        Ok(cast(v, f.data_type().clone()).alias_qualified(q.cloned(), f.name()))
    });
    b.project(out.collect::<Result<Vec<_>>>()?)?
        .build()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    use serde_json::json;

    use super::*;
    use crate::test_util::rows;
    use crate::HotStore;

    /// 2030-01-15T08:00:00Z, a whole hour.
    const T0: i64 = 1_894_694_400_000;
    const H: i64 = 3_600_000;

    /// Which table each query reads after routing.
    #[tokio::test]
    async fn only_exact_shapes_are_routed() {
        let mut ctx = SessionContext::new();
        datafusion_functions_json::register_all(&mut ctx).unwrap();
        let empty = |schema| Arc::new(MemTable::try_new(schema, vec![vec![]]).unwrap());
        ctx.register_table("metrics", empty(crate::metric_rows::metrics_schema()))
            .unwrap();
        let mut rollups = Vec::new();
        for (secs, name) in [(60, "metrics_1m"), (3600, "metrics_1h")] {
            let t = empty(crate::rollups::rollup_schema());
            ctx.register_table(name, t.clone()).unwrap();
            rollups.push((
                secs,
                name.to_owned(),
                datafusion::datasource::provider_as_source(t),
            ));
        }
        let at = |ms: i64| format!("to_timestamp_millis({ms})");
        let cases = [
            ("SELECT count(*), sum(value), min(value), max(value), avg(value) FROM metrics".to_owned(), Some("metrics_1h")),
            (format!("SELECT name, date_bin(INTERVAL '1 hour', ts), avg(value) FROM metrics WHERE ts >= {} AND ts < {} AND name = 'cpu' GROUP BY 1, 2", at(T0), at(T0 + 24 * H)), Some("metrics_1h")),
            (format!("SELECT json_get_str(labels, 'host') AS h, date_trunc('day', ts), max(value) FROM metrics m WHERE m.ts >= {} GROUP BY 1, 2", at(T0)), Some("metrics_1h")),
            // Bounds or buckets of whole minutes only: the minute rollup.
            (format!("SELECT count(value) FROM metrics WHERE ts >= {}", at(T0 + 60_000)), Some("metrics_1m")),
            ("SELECT date_bin(INTERVAL '5 minutes', ts), sum(value) FROM metrics GROUP BY 1".to_owned(), Some("metrics_1m")),
            ("SELECT date_trunc('minute', ts), sum(value) FROM metrics GROUP BY 1".to_owned(), Some("metrics_1m")),
            // Not exact from rollups: raw samples.
            (format!("SELECT count(*) FROM metrics WHERE ts >= {}", at(T0 + 1)), None),
            (format!("SELECT count(*) FROM metrics WHERE ts > {}", at(T0)), None),
            (format!("SELECT count(*) FROM metrics WHERE ts <= {}", at(T0)), None),
            ("SELECT date_bin(INTERVAL '90 seconds', ts), count(*) FROM metrics GROUP BY 1".to_owned(), None),
            ("SELECT date_trunc('second', ts), count(*) FROM metrics GROUP BY 1".to_owned(), None),
            ("SELECT ts, count(*) FROM metrics GROUP BY ts".to_owned(), None),
            ("SELECT count(*) FROM metrics WHERE value > 1".to_owned(), None),
            ("SELECT kind, count(*) FROM metrics GROUP BY kind".to_owned(), None),
            ("SELECT count(DISTINCT value) FROM metrics".to_owned(), None),
            ("SELECT sum(value * 2) FROM metrics".to_owned(), None),
            ("SELECT median(value) FROM metrics".to_owned(), None),
            ("SELECT count(*) FROM (SELECT * FROM metrics LIMIT 10)".to_owned(), None),
        ];
        for (sql, want) in cases {
            let df = ctx.sql(&sql).await.unwrap();
            let plan = ctx.state().optimize(df.logical_plan()).unwrap();
            let routed = route(&plan, &rollups, None).unwrap();
            let read = routed.as_ref().map(|p| {
                let text = p.display_indent().to_string();
                ["metrics_1h", "metrics_1m"]
                    .into_iter()
                    .find(|t| text.contains(t))
                    .expect("a rollup scan")
            });
            assert_eq!(read, want, "{sql}");
            // The routed plan runs and has the same output columns.
            if let Some(p) = routed {
                assert_eq!(p.schema().fields(), plan.schema().fields(), "{sql}");
                datafusion::dataframe::DataFrame::new(ctx.state(), p)
                    .collect()
                    .await
                    .unwrap();
            }
        }
        // Bounded before the earliest time both are kept: raw samples.
        let sql = format!("SELECT count(*) FROM metrics WHERE ts >= {}", at(T0));
        let plan = ctx
            .state()
            .optimize(ctx.sql(&sql).await.unwrap().logical_plan())
            .unwrap();
        assert!(route(&plan, &rollups, Some(T0 + 1)).unwrap().is_none());
        assert!(route(&plan, &rollups, Some(T0)).unwrap().is_some());
        let unbounded = ctx.sql("SELECT count(*) FROM metrics").await.unwrap();
        let plan = ctx.state().optimize(unbounded.logical_plan()).unwrap();
        assert!(route(&plan, &rollups, Some(T0)).unwrap().is_none());
    }

    /// Integer-valued samples (sums exact in floats).
    fn commit(s: &HotStore, offset: u64, samples: &[(i64, i64, &str)]) {
        let as_f64: Vec<_> = samples.iter().map(|&(t, v, h)| (t, v as f64, h)).collect();
        crate::test_util::commit_samples(s, offset, &as_f64);
    }

    /// Routed queries give the answers computed from the raw samples, across the cold
    /// files and the hot tier; with retention, a query reaching before the raw cutoff
    /// reads raw samples (the same answer as without rollups).
    #[tokio::test]
    async fn routed_answers_are_the_raw_answers() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_cold(dir.path());
        // 6 hours, a sample every 7 s for two hosts, integer values; 4.5 hours flushed
        // (the fifth hour has partial rows in both tiers).
        let all: Vec<(i64, i64, &str)> = (0..6 * 3600 / 7)
            .flat_map(|i| {
                [
                    (T0 + i * 7000, i % 97, "a"),
                    (T0 + i * 7000 + 1, i % 13, "b"),
                ]
            })
            .collect();
        let (cold, hot) = all.split_at(all.partition_point(|x| x.0 < T0 + 4 * H + H / 2));
        commit(&s, 0, cold);
        s.flush_cold(Duration::ZERO).await.unwrap();
        commit(&s, 1, hot);
        let exact = |from: i64, to: i64, host: Option<&str>| {
            let v: Vec<i64> = all
                .iter()
                .filter(|x| x.0 >= from && x.0 < to && host.is_none_or(|h| h == x.2))
                .map(|x| x.1)
                .collect();
            let n = v.len() as i64;
            let sum: i64 = v.iter().sum();
            (
                n,
                sum,
                *v.iter().min().unwrap(),
                *v.iter().max().unwrap(),
                sum as f64 / n as f64,
            )
        };
        let at = |ms: i64| format!("to_timestamp_millis({ms})");
        for (from, to) in [
            (T0, T0 + 6 * H),
            (T0 + H, T0 + 5 * H),
            (T0 + 3 * H, T0 + 3 * H + 60_000),
        ] {
            let sql = format!(
                "SELECT count(*), sum(value), min(value), max(value), avg(value) FROM metrics WHERE ts >= {} AND ts < {} AND json_get_str(labels, 'host') = 'a'",
                at(from),
                at(to)
            );
            let (n, sum, mn, mx, avg) = exact(from, to, Some("a"));
            let got = &rows(&s, &sql).await[0];
            assert_eq!(got[0], json!(n), "{sql}");
            assert_eq!(got[1].as_f64().unwrap(), sum as f64, "{sql}");
            assert_eq!(
                (got[2].as_f64().unwrap(), got[3].as_f64().unwrap()),
                (mn as f64, mx as f64)
            );
            assert!((got[4].as_f64().unwrap() - avg).abs() < 1e-9, "{sql}");
        }
        // EXPLAIN shows which table a query reads.
        let explain = |sql: String| {
            let s = &s;
            async move { serde_json::to_string(&rows(s, &format!("EXPLAIN {sql}")).await).unwrap() }
        };
        let bounded = format!("SELECT count(*) FROM metrics WHERE ts >= {}", at(T0));
        assert!(explain(bounded.clone()).await.contains("metrics_1h"));
        let raw = bounded.replace(&T0.to_string(), &(T0 + 1).to_string());
        assert!(!explain(raw).await.contains("metrics_1"));
        // No rows in range: a count of 0, NULL sums, as from raw samples.
        let sql = format!(
            "SELECT count(*), sum(value) FROM metrics WHERE ts >= {} AND ts < {}",
            at(T0 + 100 * H),
            at(T0 + 101 * H)
        );
        assert_eq!(rows(&s, &sql).await, vec![json!([0, null])]);
        // Hourly buckets per host: one row per host and hour, each exact.
        let got = rows(
            &s,
            "SELECT json_get_str(labels, 'host'), date_bin(INTERVAL '1 hour', ts) AS h, count(*), sum(value) FROM metrics GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .await;
        assert_eq!(got.len(), 12);
        for (i, row) in got.iter().enumerate() {
            let (host, hour) = (if i < 6 { "a" } else { "b" }, T0 + (i as i64 % 6) * H);
            let (n, sum, ..) = exact(hour, hour + H, Some(host));
            assert_eq!(
                (row[2].clone(), row[3].as_f64().unwrap()),
                (json!(n), sum as f64),
                "{row:?}"
            );
        }

        // Raw samples past their retention (3 days), rollups kept for 30: a query
        // bounded before the raw cutoff reads raw samples and sees none; a query within
        // both reads rollups.
        let now = crate::query::now_ms();
        let day = 86_400_000;
        let old = now - 10 * day - (now % H);
        let recent = now - day - (now % H);
        let s2 = HotStore::open(&dir.path().join("s2.redb"), usize::MAX)
            .unwrap()
            .with_cold(&dir.path().join("cold2"))
            .unwrap();
        commit(&s2, 0, &[(old, 5, "a"), (recent, 7, "a")]);
        s2.flush_cold(Duration::ZERO).await.unwrap();
        let doc = serde_json::from_value(json!({"cold": "3d", "rollups": "30d"})).unwrap();
        s2.set_retention("t", Some(&doc)).unwrap();
        for (from, want) in [(old, json!([1, 7.0])), (recent, json!([1, 7.0]))] {
            let sql = format!(
                "SELECT count(*), sum(value) FROM metrics WHERE ts >= {}",
                at(from)
            );
            assert_eq!(rows(&s2, &sql).await, vec![want], "{sql}");
        }
        assert_eq!(
            rows(
                &s2,
                &format!("SELECT sum(count) FROM metrics_1h WHERE ts >= {}", at(old))
            )
            .await,
            vec![json!([2])],
            "the old sample's rollup, by name"
        );
    }
}
