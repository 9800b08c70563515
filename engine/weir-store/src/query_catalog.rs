//! The tables one tenant's SQL can name, with their Arrow schemas, for catalog listings
//! (Flight SQL `GetTables`, BI tools' object browsers).
//!
//! The listing comes from the very session a query of that tenant gets
//! ([`HotStore::session`]), so it names exactly the tables its queries can name, with
//! the schemas they read (the `logs` field columns of the tenant's own cold files
//! included); the small tables kept in redb are registered empty, so listing reads no
//! rows and runs nothing.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use crate::hot::HotStore;
use crate::query::{QueryError, QueryLimits, Rows};
use crate::query_memory::QueryPool;

/// What a listed table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Rows the tenant sent, or the node kept for it (`logs`, `metrics`, `dead_letters`,
    /// ...).
    Table,
    /// Rows derived from another table (the rollups of `metrics`).
    View,
}

impl TableKind {
    /// The table type of catalog listings (`TABLE`, `VIEW`).
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Table => "TABLE",
            TableKind::View => "VIEW",
        }
    }
}

/// One table a tenant's SQL can name.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub catalog: String,
    pub schema: String,
    pub name: String,
    pub kind: TableKind,
    pub arrow: SchemaRef,
}

impl HotStore {
    /// The tables `tenant`'s queries can name, by catalog, schema and name. Builds the
    /// tenant's session (memory in `pool`) without reading rows or running anything.
    pub async fn tables(
        &self,
        tenant: &str,
        limits: &QueryLimits,
        pool: &Arc<QueryPool>,
    ) -> Result<Vec<TableInfo>, QueryError> {
        let session = self.session(tenant, limits, pool, Rows::SchemaOnly)?;
        let ctx = &session.ctx;
        let mut out = Vec::new();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for name in schema.table_names() {
                    let table = schema
                        .table(&name)
                        .await
                        .map_err(|e| QueryError::Execution(e.to_string()))?;
                    let Some(table) = table else { continue };
                    let kind = if session.views.contains(&name) {
                        TableKind::View
                    } else {
                        TableKind::Table
                    };
                    out.push(TableInfo {
                        catalog: catalog_name.clone(),
                        schema: schema_name.clone(),
                        name,
                        kind,
                        arrow: table.schema(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.catalog, &a.schema, &a.name).cmp(&(&b.catalog, &b.schema, &b.name)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hot::Segment;
    use crate::query_memory::QueryBudget;
    use weir_core::Batch;

    #[tokio::test]
    async fn a_tenant_lists_the_tables_its_queries_name_with_their_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let s = HotStore::open(&dir.path().join("store.redb"), usize::MAX).unwrap();
        let batch = Batch {
            tenant: "a".into(),
            stream: "app".into(),
            ingest_ts_ms: 1_700_000_000_000,
            count: 1,
            records: b"{\"message\":\"hello\"}\n".to_vec(),
            replay_of: None,
        };
        s.commit(0, 1, &[Segment::new(0, 0, batch).unwrap()], &[], &[])
            .unwrap();
        let pool = QueryBudget::new(64 << 20, 64 << 20, 64 << 20).pool("a");
        let tables = s.tables("a", &QueryLimits::default(), &pool).await.unwrap();
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        for want in [
            "aggregates",
            "dead_letters",
            "logs",
            "metrics",
            "quarantine",
        ] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        assert!(tables
            .iter()
            .all(|t| t.catalog == "datafusion" && t.schema == "public"));
        // Each listed schema is the schema a query of the table answers with.
        for t in &tables {
            let r = s
                .query(
                    "a",
                    &format!(
                        "SELECT * FROM {}.{}.{} LIMIT 0",
                        t.catalog, t.schema, t.name
                    ),
                )
                .await
                .unwrap();
            let listed: Vec<_> = t
                .arrow
                .fields()
                .iter()
                .map(|f| (f.name(), f.data_type()))
                .collect();
            let read: Vec<_> = r
                .schema
                .fields()
                .iter()
                .map(|f| (f.name(), f.data_type()))
                .collect();
            assert_eq!(listed, read, "{}", t.name);
        }
        // The same for a tenant with no rows at all: the same tables.
        let other = s.tables("b", &QueryLimits::default(), &pool).await.unwrap();
        assert_eq!(
            other.iter().map(|t| &t.name).collect::<Vec<_>>(),
            tables.iter().map(|t| &t.name).collect::<Vec<_>>()
        );
    }
}
