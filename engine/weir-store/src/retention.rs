//! Retention in effect per tenant and stream: the config file's declarations, replaced
//! per tenant by a document set through the admin API (kept in redb table `retention`,
//! tenant → JSON [`RetentionDoc`], so it survives restarts).
//!
//! The janitor ([`crate::janitor`]) enforces it; queries hide rows older than a
//! stream's cold retention at once (see [`HotStore::retention_filter`]), so what a
//! query sees does not wait for the janitor's next pass.

use std::collections::HashMap;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{col, lit, when, Expr};
use redb::{ReadableTable, TableDefinition};
use weir_core::retention::{Effective, RetentionDoc};

use crate::hot::{storage_err, HotStore, StoreError};

pub(crate) const RETENTION: TableDefinition<&str, &[u8]> = TableDefinition::new("retention");

/// Where a tenant's retention comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Api,
}

#[derive(Default)]
pub(crate) struct RetentionState {
    config: HashMap<String, RetentionDoc>,
    overrides: HashMap<String, RetentionDoc>,
    /// Hot age when nothing else says (`[cold] flush_after_secs`).
    default_hot_ms: Option<u64>,
}

impl RetentionState {
    fn doc(&self, tenant: &str) -> (&RetentionDoc, Source) {
        static EMPTY: std::sync::OnceLock<RetentionDoc> = std::sync::OnceLock::new();
        match self.overrides.get(tenant) {
            Some(d) => (d, Source::Api),
            None => (
                self.config
                    .get(tenant)
                    .unwrap_or_else(|| EMPTY.get_or_init(RetentionDoc::default)),
                Source::Config,
            ),
        }
    }
}

impl HotStore {
    pub(crate) fn load_retention(&self) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(storage_err)?;
        let mut overrides = HashMap::new();
        {
            let t = w.open_table(RETENTION).map_err(storage_err)?;
            for row in t.iter().map_err(storage_err)? {
                let (k, v) = row.map_err(storage_err)?;
                let doc: RetentionDoc = serde_json::from_slice(v.value()).map_err(storage_err)?;
                overrides.insert(k.value().to_owned(), doc);
            }
        }
        w.commit().map_err(storage_err)?;
        self.retention.write().overrides = overrides;
        Ok(())
    }

    /// The retention the config file declares, per tenant, and the hot age of streams
    /// that declare none.
    pub fn set_retention_config(
        &self,
        config: HashMap<String, RetentionDoc>,
        default_hot_ms: Option<u64>,
    ) {
        let mut r = self.retention.write();
        r.config = config;
        r.default_hot_ms = default_hot_ms;
    }

    /// Replace `tenant`'s retention (None: back to the config file's). Durable before it
    /// returns; the janitor and queries apply it from then on.
    pub fn set_retention(
        &self,
        tenant: &str,
        doc: Option<&RetentionDoc>,
    ) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(storage_err)?;
        {
            let mut t = w.open_table(RETENTION).map_err(storage_err)?;
            match doc {
                Some(d) => {
                    let json = serde_json::to_vec(d).map_err(storage_err)?;
                    t.insert(tenant, json.as_slice()).map_err(storage_err)?;
                }
                None => {
                    t.remove(tenant).map_err(storage_err)?;
                }
            }
        }
        w.commit().map_err(storage_err)?;
        let mut r = self.retention.write();
        match doc {
            Some(d) => r.overrides.insert(tenant.to_owned(), d.clone()),
            None => r.overrides.remove(tenant),
        };
        Ok(())
    }

    /// `tenant`'s retention document in effect and where it comes from.
    pub fn retention(&self, tenant: &str) -> (RetentionDoc, Source) {
        let r = self.retention.read();
        let (d, s) = r.doc(tenant);
        (d.clone(), s)
    }

    /// What applies to one stream of `tenant`.
    pub fn effective_retention(&self, tenant: &str, stream: &str) -> Effective {
        let r = self.retention.read();
        r.doc(tenant).0.resolve(stream, r.default_hot_ms)
    }

    /// A filter keeping only rows within their stream's cold retention at `now_ms`, for
    /// a table with a `stream` column (`logs`) or of one stream (`metrics`: `stream` =
    /// None, the `_metrics` stream). None: nothing is hidden.
    pub(crate) fn retention_filter(
        &self,
        tenant: &str,
        stream: Option<&str>,
        rollup: bool,
        now_ms: i64,
    ) -> Option<Expr> {
        self.retention_filter_on("ts", tenant, stream, rollup, now_ms)
    }

    /// [`HotStore::retention_filter`] on time column `time`.
    pub(crate) fn retention_filter_on(
        &self,
        time: &str,
        tenant: &str,
        stream: Option<&str>,
        rollup: bool,
        now_ms: i64,
    ) -> Option<Expr> {
        let r = self.retention.read();
        let (doc, _) = r.doc(tenant);
        let since = |cold_ms: Option<u64>| -> Expr {
            match cold_ms {
                Some(ms) => col(time).gt_eq(lit(ScalarValue::TimestampMillisecond(
                    Some(weir_core::retention::cutoff_ms(now_ms, ms)),
                    Some("UTC".into()),
                ))),
                None => lit(true),
            }
        };
        if let Some(s) = stream {
            let e = doc.resolve(s, None);
            let age = if rollup { e.rollups_ms } else { e.cold_ms }?;
            return Some(since(Some(age)));
        }
        let age =
            |e: weir_core::retention::Effective| if rollup { e.rollups_ms } else { e.cold_ms };
        let default = age(doc.resolve("", None));
        let exceptions: Vec<(&String, Option<u64>)> = doc
            .streams
            .keys()
            .map(|s| (s, age(doc.resolve(s, None))))
            .filter(|(_, c)| *c != default)
            .collect();
        if exceptions.is_empty() {
            return default.map(|d| since(Some(d)));
        }
        let mut case: Option<datafusion::logical_expr::conditional_expressions::CaseBuilder> = None;
        for (s, c) in exceptions {
            let cond = col("stream").eq(lit(s.as_str()));
            case = Some(match case {
                None => when(cond, since(c)),
                Some(mut b) => b.when(cond, since(c)),
            });
        }
        case.and_then(|mut b| b.otherwise(since(default)).ok())
    }
}
