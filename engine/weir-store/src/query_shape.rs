//! The SQL front door: a statement's size and shape, checked before it is planned.
//!
//! DataFusion plans and evaluates expressions recursively, so a statement whose tree is
//! deep enough (`1+1+…+1` with thousands of terms, a long `UNION` chain, hundreds of
//! joins) overflows a thread's stack and aborts the process. The parser is iterative
//! for such chains and bounds its own recursion, so the checks here run on the parsed
//! statement: the SQL text is at most `max_sql_bytes`, every expression nests at most
//! `max_expr_depth` levels, every chain of set operations is at most as long, and at most
//! `max_relations` tables are referenced. The walk stops at the first level over the
//! bound, so checking costs at most that much stack. Statements other than queries
//! (`COPY`, `CREATE EXTERNAL TABLE`, ...) are refused before planning.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr, Query, SetExpr, TableFactor, Visit, Visitor};

/// Stack of the threads that plan and run queries: room for planning a tree
/// `max_expr_depth` deep and for dropping the deepest tree `max_sql_bytes` of text can
/// parse into (measured: see docs/SECURITY.md).
pub const QUERY_STACK_BYTES: usize = 64 << 20;

/// Bounds of a statement's shape (from `[query]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    pub max_sql_bytes: usize,
    pub max_expr_depth: usize,
    pub max_relations: usize,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        let q = weir_core::serving::QueryConfig::default();
        ShapeLimits {
            max_sql_bytes: q.max_sql_bytes,
            max_expr_depth: q.max_expr_depth,
            max_relations: q.max_relations,
        }
    }
}

/// The text bound, checked before parsing.
pub fn check_text(sql: &str, limits: &ShapeLimits) -> Result<(), String> {
    if sql.len() > limits.max_sql_bytes {
        return Err(format!(
            "SQL text of {} bytes exceeds the limit of {} bytes",
            sql.len(),
            limits.max_sql_bytes
        ));
    }
    Ok(())
}

/// The shape bounds, checked on the parsed statement.
pub fn check_statement(stmt: &DFStatement, limits: &ShapeLimits) -> Result<(), String> {
    match stmt {
        DFStatement::Statement(s) => {
            let mut walk = Walk {
                limits,
                depth: 0,
                relations: 0,
            };
            match s.visit(&mut walk) {
                ControlFlow::Break(why) => Err(why),
                ControlFlow::Continue(()) => Ok(()),
            }
        }
        DFStatement::Explain(e) => check_statement(&e.statement, limits),
        _ => Err("only queries are allowed".into()),
    }
}

struct Walk<'a> {
    limits: &'a ShapeLimits,
    depth: usize,
    relations: usize,
}

impl Walk<'_> {
    fn too_deep(&self) -> String {
        format!(
            "expression nested deeper than {} levels (query.max_expr_depth); \
             rewrite long chains of operators with IN (...) or split the query",
            self.limits.max_expr_depth
        )
    }
}

impl Visitor for Walk<'_> {
    type Break = String;

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<String> {
        self.depth += 1;
        if self.depth > self.limits.max_expr_depth {
            return ControlFlow::Break(self.too_deep());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<String> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<String> {
        // Set operations nest as a tree of `SetExpr`s that no visitor hook sees: measured
        // here, without recursion, before the walk descends into them.
        let mut stack = vec![(q.body.as_ref(), 1usize)];
        while let Some((s, d)) = stack.pop() {
            if d > self.limits.max_expr_depth {
                return ControlFlow::Break(format!(
                    "set operations (UNION, INTERSECT, EXCEPT) nested deeper than {} levels \
                     (query.max_expr_depth)",
                    self.limits.max_expr_depth
                ));
            }
            if let SetExpr::SetOperation { left, right, .. } = s {
                stack.push((left, d + 1));
                stack.push((right, d + 1));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<String> {
        self.relations += 1;
        if self.relations > self.limits.max_relations {
            return ControlFlow::Break(format!(
                "more than {} table references in one statement (query.max_relations)",
                self.limits.max_relations
            ));
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    fn check(sql: &str, limits: &ShapeLimits) -> Result<(), String> {
        check_text(sql, limits)?;
        let state = SessionContext::new().state();
        let dialect = state.config().options().sql_parser.dialect;
        let stmt = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| e.to_string())?;
        check_statement(&stmt, limits)
    }

    fn sum(n: usize) -> String {
        format!("SELECT {}", vec!["1"; n].join("+"))
    }

    #[test]
    fn depth_is_bounded_exactly() {
        let l = ShapeLimits {
            max_expr_depth: 10,
            ..Default::default()
        };
        // n terms: n-1 additions nest n-1 levels, plus the leaf.
        assert_eq!(check(&sum(9), &l), Ok(()));
        let e = check(&sum(11), &l).unwrap_err();
        assert!(e.contains("deeper than 10"), "{e}");
        let chain = |n: usize| vec!["SELECT 1"; n].join(" UNION ALL ");
        assert_eq!(check(&chain(10), &l), Ok(()));
        let e = check(&chain(11), &l).unwrap_err();
        assert!(e.contains("set operations"), "{e}");
        let nested = format!("SELECT * FROM logs WHERE ts IN ({})", chain(11));
        assert!(check(&nested, &l).unwrap_err().contains("set operations"));
        let ands = format!(
            "SELECT * FROM logs WHERE {}",
            ["level = 'x'"; 12].join(" AND ")
        );
        assert!(check(&ands, &l).is_err());
    }

    /// Runs `f` on a thread with the query threads' stack: a refused statement's tree is
    /// still dropped recursively (by sqlparser), which `max_sql_bytes` keeps within it.
    fn on_query_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(crate::query_shape::QUERY_STACK_BYTES)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn huge_statements_are_refused_without_overflowing() {
        on_query_stack(huge_statements);
    }

    fn huge_statements() {
        // The walk stops at the first level over the bound.
        let l = ShapeLimits::default();
        let e = check(&sum(200_000), &l).unwrap_err();
        assert!(e.contains("bytes exceeds"), "{e}");
        // Just under the text bound: the deepest tree a statement can have.
        let e = check(&sum(l.max_sql_bytes / 2 - 8), &l).unwrap_err();
        assert!(e.contains("deeper than 256"), "{e}");
        assert_eq!(check(&sum(200), &l), Ok(()));
        let joins = format!(
            "SELECT 1 FROM logs {}",
            (0..300)
                .map(|i| format!("JOIN logs l{i} ON true"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert!(check(&joins, &l).unwrap_err().contains("table references"));
    }

    #[test]
    fn only_queries_pass() {
        let l = ShapeLimits::default();
        assert!(check("COPY logs TO '/tmp/x.csv'", &l).is_err());
        assert!(check("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc'", &l).is_err());
        assert_eq!(check("EXPLAIN SELECT 1", &l), Ok(()));
    }
}

/// The front door against arbitrary input: it never panics, and its depth bound is a
/// threshold (a statement passes every bound from its depth on and none below).
#[cfg(test)]
mod fuzz {
    use super::*;
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    const WORDS: &[&str] = &[
        "SELECT",
        "FROM",
        "logs",
        "WHERE",
        "(",
        ")",
        "+",
        "-",
        "*",
        "/",
        "AND",
        "OR",
        "NOT",
        "UNION",
        "ALL",
        "JOIN",
        "ON",
        "1",
        "'x'",
        ",",
        "CASE",
        "WHEN",
        "THEN",
        "END",
        "::",
        "int",
        "[",
        "]",
        "IN",
        "count(*)",
        "json_get_str(record, 'a')",
        "\u{0}",
        "é",
        ";",
        "EXPLAIN",
        "WITH",
        "r",
        "AS",
        "COPY",
        "TO",
        "'/tmp/x'",
    ];

    fn front_door(sql: &str, limits: &ShapeLimits) -> Result<(), String> {
        check_text(sql, limits)?;
        let state = SessionContext::new().state();
        let dialect = state.config().options().sql_parser.dialect;
        let stmt = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| e.to_string())?;
        check_statement(&stmt, limits)
    }

    /// An expression and its depth in sqlparser's tree.
    fn expr() -> impl Strategy<Value = (String, usize)> {
        let leaf = prop_oneof![
            Just("1".to_owned()),
            Just("'a'".to_owned()),
            Just("ts".to_owned())
        ]
        .prop_map(|s| (s, 1));
        leaf.prop_recursive(12, 64, 2, |inner| {
            prop_oneof![
                (
                    inner.clone(),
                    inner.clone(),
                    prop_oneof![Just("+"), Just("AND"), Just("=")]
                )
                    .prop_map(|((a, da), (b, db), op)| (
                        format!("{a} {op} {b}"),
                        (da + 1).max(db + 1)
                    )),
                inner.clone().prop_map(|(a, d)| (format!("({a})"), d + 1)),
                inner
                    .clone()
                    .prop_map(|(a, d)| (format!("abs({a})"), d + 1)),
                inner.prop_map(|(a, d)| (format!("- {a}"), d + 1)),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn token_soup_never_panics(words in proptest::collection::vec(proptest::sample::select(WORDS), 0..60)) {
            let sql = words.join(" ");
            let _ = front_door(&sql, &ShapeLimits { max_expr_depth: 8, max_relations: 4, ..Default::default() });
        }

        #[test]
        fn bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let sql = String::from_utf8_lossy(&bytes);
            let _ = front_door(&sql, &ShapeLimits::default());
        }
    }

    #[test]
    fn the_depth_bound_is_a_threshold() {
        // Operators re-associate when parsed, so a generated expression's depth is not
        // its parsed tree's: find the tree's depth as the smallest bound it passes, and
        // check that every bound below it refuses and every bound from it on passes.
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 300,
            ..ProptestConfig::default()
        });
        runner
            .run(&(expr(), 1usize..12), |((e, _), bound)| {
                let sql = format!("SELECT {e}");
                let limits = ShapeLimits {
                    max_expr_depth: bound,
                    ..Default::default()
                };
                let open = ShapeLimits {
                    max_expr_depth: MAX_TEST_DEPTH,
                    ..Default::default()
                };
                let depth = (1..MAX_TEST_DEPTH)
                    .find(|d| {
                        front_door(
                            &sql,
                            &ShapeLimits {
                                max_expr_depth: *d,
                                ..open
                            },
                        )
                        .is_ok()
                    })
                    .expect("generated expressions are shallow");
                let r = front_door(&sql, &limits);
                prop_assert_eq!(
                    r.is_ok(),
                    depth <= bound,
                    "{} (depth {}) with bound {}: {:?}",
                    sql,
                    depth,
                    bound,
                    r
                );
                Ok(())
            })
            .unwrap();
    }

    const MAX_TEST_DEPTH: usize = 200;
}
