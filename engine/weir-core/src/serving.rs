//! Limits of the serving side: queries (`[query]`), HTTP connections (`[http]`) and the
//! server's own metrics endpoint (`[metrics]`). Every limit bounds what one client or
//! tenant can make the node spend; `docs/SECURITY.md` lists them with their defaults.

use serde::Deserialize;

/// `[query]`: what one SQL query, and one tenant's queries together, may use.
///
/// ```toml
/// [query]
/// threads = 2                 # the query runtime's worker threads (0: one per core)
/// partitions = 1              # parallel partitions within one query (see below)
/// timeout_secs = 30           # wall-clock limit of one query, planning to last row
/// max_sql_bytes = 262144      # longest SQL text
/// max_expr_depth = 256        # deepest expression / set-operation nesting
/// max_relations = 256         # most table references (joins, subqueries) in one statement
/// memory_mb = 2048            # memory of all queries on the node together
/// tenant_memory_mb = 1024     # of one tenant's queries together
/// query_memory_mb = 512       # of one query
/// max_concurrent = 16         # queries running on the node (503 above)
/// max_concurrent_per_tenant = 4  # queries of one tenant (429 above)
/// max_result_rows = 1000000   # rows of one answer
/// max_result_mb = 256         # encoded bytes of one answer
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    pub threads: usize,
    /// DataFusion's target partitions. Work a query spreads over partitions runs in
    /// tasks outside the fair turns between tenants (`weir_store::query_fair`), so the
    /// default keeps each query on one partition; a single-tenant node may raise it to
    /// its cores for faster large scans.
    pub partitions: usize,
    pub timeout_secs: u64,
    pub max_sql_bytes: usize,
    pub max_expr_depth: usize,
    pub max_relations: usize,
    pub memory_mb: usize,
    pub tenant_memory_mb: usize,
    pub query_memory_mb: usize,
    pub max_concurrent: usize,
    pub max_concurrent_per_tenant: usize,
    pub max_result_rows: usize,
    pub max_result_mb: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            threads: 0,
            partitions: 1,
            timeout_secs: 30,
            max_sql_bytes: 256 << 10,
            max_expr_depth: 256,
            max_relations: 256,
            memory_mb: 2048,
            tenant_memory_mb: 1024,
            query_memory_mb: 512,
            max_concurrent: 16,
            max_concurrent_per_tenant: 4,
            max_result_rows: 1_000_000,
            max_result_mb: 256,
        }
    }
}

impl QueryConfig {
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("timeout_secs", self.timeout_secs as usize),
            ("partitions", self.partitions),
            ("max_sql_bytes", self.max_sql_bytes),
            ("max_expr_depth", self.max_expr_depth),
            ("max_relations", self.max_relations),
            ("memory_mb", self.memory_mb),
            ("tenant_memory_mb", self.tenant_memory_mb),
            ("query_memory_mb", self.query_memory_mb),
            ("max_concurrent", self.max_concurrent),
            ("max_concurrent_per_tenant", self.max_concurrent_per_tenant),
            ("max_result_rows", self.max_result_rows),
            ("max_result_mb", self.max_result_mb),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("query.{k} must be positive"));
        }
        // Deeper trees than this need more stack than the query threads have (measured
        // in docs/SECURITY.md); the text bound keeps even a refused tree cheap to drop.
        if self.max_expr_depth > MAX_EXPR_DEPTH {
            return Err(format!(
                "query.max_expr_depth must be at most {MAX_EXPR_DEPTH}"
            ));
        }
        if self.max_sql_bytes > MAX_SQL_BYTES {
            return Err(format!(
                "query.max_sql_bytes must be at most {MAX_SQL_BYTES}"
            ));
        }
        if self.tenant_memory_mb > self.memory_mb || self.query_memory_mb > self.tenant_memory_mb {
            return Err(
                "query: query_memory_mb <= tenant_memory_mb <= memory_mb is required".into(),
            );
        }
        if self.max_concurrent_per_tenant > self.max_concurrent {
            return Err("query.max_concurrent_per_tenant must be <= query.max_concurrent".into());
        }
        if self.timeout_secs > 86_400 {
            return Err("query.timeout_secs must be at most 86400".into());
        }
        Ok(())
    }
}

/// Upper bound of `query.max_expr_depth` (see [`QueryConfig::check`]).
pub const MAX_EXPR_DEPTH: usize = 1024;
/// Upper bound of `query.max_sql_bytes`.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// `[http]`: connections of the data-plane and admin listeners.
///
/// ```toml
/// [http]
/// max_connections = 1024   # open connections per listener; more wait in the backlog
/// header_timeout_secs = 10 # a request's head must arrive within this
/// body_timeout_secs = 60   # a request's body must arrive within this
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub max_connections: usize,
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 60,
        }
    }
}

impl HttpConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.header_timeout_secs == 0 || self.body_timeout_secs == 0
        {
            return Err(
                "http.max_connections, header_timeout_secs and body_timeout_secs must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `[metrics]`: who may read `GET /metrics` (it names every tenant and its traffic).
///
/// With `token` set, a scraper sends `Authorization: Bearer TOKEN` (Prometheus:
/// `authorization: { credentials: TOKEN }`); without it only loopback clients are answered.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_check_and_bounds_are_refused() {
        assert_eq!(QueryConfig::default().check(), Ok(()));
        assert_eq!(HttpConfig::default().check(), Ok(()));
        let q = QueryConfig {
            max_expr_depth: MAX_EXPR_DEPTH + 1,
            ..Default::default()
        };
        assert!(q.check().unwrap_err().contains("max_expr_depth"));
        let q = QueryConfig {
            timeout_secs: 0,
            ..Default::default()
        };
        assert!(q.check().unwrap_err().contains("timeout_secs"));
        let q = QueryConfig {
            query_memory_mb: 4096,
            ..Default::default()
        };
        assert!(q.check().unwrap_err().contains("query_memory_mb"));
        let q = QueryConfig {
            max_concurrent_per_tenant: 17,
            ..Default::default()
        };
        assert!(q.check().is_err());
    }
}
