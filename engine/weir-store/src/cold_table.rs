//! The cold files of one table as a DataFusion table that prunes by the manifest.
//!
//! Every manifest entry records its file's `ts` range. A scan first takes the time
//! bounds its pushed-down filters imply (`ts >= X`, `ts < Y`, `ts BETWEEN ...`, in any
//! timestamp unit) and drops the files whose range lies outside them, without touching
//! them; the remaining files are read by a Parquet listing table, whose row-group
//! statistics prune further. Filters are `Inexact`: DataFusion still applies them to
//! every row read.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::{project_schema, ScalarValue};
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::cold::ColdFile;

/// Cold files of one table (and one read group), pruned by their manifest time range.
#[derive(Debug)]
pub(crate) struct ColdTable {
    /// URL and manifest entry of every file.
    pub(crate) files: Vec<(String, Arc<ColdFile>)>,
    /// The schema the files are read with.
    pub(crate) schema: SchemaRef,
    pub(crate) options: ListingOptions,
}

/// An inclusive range of `ts` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TsRange {
    pub(crate) min: i64,
    pub(crate) max: i64,
}

impl TsRange {
    const ALL: TsRange = TsRange {
        min: i64::MIN,
        max: i64::MAX,
    };

    fn overlaps(&self, f: &ColdFile) -> bool {
        f.max_ts >= self.min && f.min_ts <= self.max
    }
}

/// A timestamp literal in epoch milliseconds, rounded down (`floor`) or up.
fn literal_ms(v: &ScalarValue, floor: bool) -> Option<i64> {
    let (v, per_ms) = match v {
        ScalarValue::TimestampSecond(Some(v), _) => return v.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(v), _) => (*v, 1),
        ScalarValue::TimestampMicrosecond(Some(v), _) => (*v, 1000),
        ScalarValue::TimestampNanosecond(Some(v), _) => (*v, 1_000_000),
        _ => return None,
    };
    Some(if floor {
        v.div_euclid(per_ms)
    } else {
        v.div_euclid(per_ms) + i64::from(v.rem_euclid(per_ms) != 0)
    })
}

fn is_ts(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == "ts")
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// Narrow `r` by one conjunct of a scan's filters (left as is when it says nothing
/// plain about `ts`).
fn narrow(r: &mut TsRange, e: &Expr) {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                narrow(r, left);
                narrow(r, right);
                return;
            }
            // `ts OP v`, or `v OP ts` turned around.
            let (op, v) = if is_ts(left) {
                match literal(right) {
                    Some(v) => (*op, v),
                    None => return,
                }
            } else if is_ts(right) {
                match (literal(left), op.swap()) {
                    (Some(v), Some(op)) => (op, v),
                    _ => return,
                }
            } else {
                return;
            };
            match op {
                Operator::Gt | Operator::GtEq => {
                    if let Some(ms) = literal_ms(v, true) {
                        r.min = r.min.max(ms);
                    }
                }
                Operator::Lt | Operator::LtEq => {
                    if let Some(ms) = literal_ms(v, false) {
                        r.max = r.max.min(ms);
                    }
                }
                Operator::Eq => {
                    if let (Some(lo), Some(hi)) = (literal_ms(v, true), literal_ms(v, false)) {
                        r.min = r.min.max(lo);
                        r.max = r.max.min(hi);
                    }
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_ts(expr) => {
            if let Some(lo) = literal(low).and_then(|v| literal_ms(v, true)) {
                r.min = r.min.max(lo);
            }
            if let Some(hi) = literal(high).and_then(|v| literal_ms(v, false)) {
                r.max = r.max.min(hi);
            }
        }
        _ => {}
    }
}

/// The `ts` range every row passing all `filters` lies in.
pub(crate) fn ts_range(filters: &[Expr]) -> TsRange {
    let mut r = TsRange::ALL;
    for f in filters {
        narrow(&mut r, f);
    }
    r
}

impl ColdTable {
    /// A listing table over the files `filters` may need (None: no file).
    fn listing(&self, filters: &[Expr]) -> Result<Option<ListingTable>> {
        let range = ts_range(filters);
        let urls = self
            .files
            .iter()
            .filter(|(_, f)| range.overlaps(f))
            .map(|(u, _)| ListingTableUrl::parse(u))
            .collect::<Result<Vec<_>>>()?;
        if urls.is_empty() {
            return Ok(None);
        }
        let cfg = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(self.options.clone())
            .with_schema(self.schema.clone());
        ListingTable::try_new(cfg).map(Some)
    }

    fn empty(&self, projection: Option<&Vec<usize>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(EmptyExec::new(project_schema(
            &self.schema,
            projection,
        )?)))
    }
}

#[async_trait]
impl TableProvider for ColdTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match self.listing(filters)? {
            Some(l) => l.scan(state, projection, filters, limit).await,
            None => self.empty(projection),
        }
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        match self.listing(args.filters().unwrap_or(&[]))? {
            Some(l) => l.scan_with_args(state, args).await,
            None => Ok(self
                .empty(args.projection().map(|p| p.to_vec()).as_ref())?
                .into()),
        }
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    fn ts_ms(v: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(Some(v), None))
    }

    #[test]
    fn time_bounds_from_filters() {
        let ns = |v: i64| lit(ScalarValue::TimestampNanosecond(Some(v), None));
        let cases = [
            (vec![col("ts").gt_eq(ts_ms(10))], (10, i64::MAX)),
            (
                vec![col("ts").gt_eq(ts_ms(10)), col("ts").lt(ts_ms(20))],
                (10, 20),
            ),
            (vec![ts_ms(20).gt(col("ts"))], (i64::MIN, 20)),
            (
                vec![col("ts").gt_eq(ts_ms(10)).and(col("ts").lt_eq(ts_ms(15)))],
                (10, 15),
            ),
            (vec![col("ts").between(ts_ms(3), ts_ms(7))], (3, 7)),
            (vec![col("ts").eq(ts_ms(5))], (5, 5)),
            // Finer units round outwards: nothing in the range is dropped.
            (
                vec![col("ts").gt(ns(1_500_000)), col("ts").lt(ns(2_500_000))],
                (1, 3),
            ),
            // Other columns, ORs and NOT BETWEEN say nothing about the files.
            (vec![col("seq").gt_eq(lit(5_i64))], (i64::MIN, i64::MAX)),
            (
                vec![col("ts").gt(ts_ms(9)).or(col("level").eq(lit("x")))],
                (i64::MIN, i64::MAX),
            ),
            (
                vec![col("ts").not_between(ts_ms(3), ts_ms(7))],
                (i64::MIN, i64::MAX),
            ),
        ];
        for (filters, (min, max)) in cases {
            assert_eq!(ts_range(&filters), TsRange { min, max }, "{filters:?}");
        }
    }
}
