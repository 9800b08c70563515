//! Admission of queries: how many run at once, per tenant and on the node, and the
//! memory each gets.
//!
//! [`QueryGovernor::admit`] either hands out an [`Admission`] (a slot of the tenant, a
//! slot of the node and a memory pool drawing on the tenant's share and the node's
//! budget) or refuses at once: a tenant with `max_concurrent_per_tenant` queries running
//! gets [`QueryError::TenantBusy`] (429), a node with `max_concurrent` running gets
//! [`QueryError::NodeBusy`] (503). Nothing waits in a queue, so a flood of queries costs
//! the node nothing beyond the refusals. The slots are released when the admission is
//! dropped, i.e. when the query's answer has been sent or abandoned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_core::serving::QueryConfig;

use crate::query::{QueryError, QueryLimits};
use crate::query_memory::{QueryBudget, QueryPool};

pub struct QueryGovernor {
    pub limits: QueryLimits,
    pub timeout: Duration,
    budget: QueryBudget,
    node: Arc<Semaphore>,
    max_node: usize,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_tenant: usize,
}

/// A query's right to run: released on drop.
pub struct Admission {
    pub pool: Arc<QueryPool>,
    _node: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

impl QueryGovernor {
    pub fn new(q: &QueryConfig) -> QueryGovernor {
        QueryGovernor {
            limits: QueryLimits::from_config(q),
            timeout: Duration::from_secs(q.timeout_secs),
            budget: QueryBudget::new(
                q.memory_mb << 20,
                q.tenant_memory_mb << 20,
                q.query_memory_mb << 20,
            ),
            node: Arc::new(Semaphore::new(q.max_concurrent)),
            max_node: q.max_concurrent,
            tenants: Mutex::default(),
            per_tenant: q.max_concurrent_per_tenant,
        }
    }

    pub fn admit(&self, tenant: &str) -> Result<Admission, QueryError> {
        let slots = self
            .tenants
            .lock()
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone();
        let t = slots.try_acquire_owned().map_err(|_| {
            QueryError::TenantBusy(format!(
                "{} queries of this tenant are running (query.max_concurrent_per_tenant); retry when one ends",
                self.per_tenant
            ))
        })?;
        let n = self.node.clone().try_acquire_owned().map_err(|_| {
            QueryError::NodeBusy(format!(
                "{} queries are running on this node (query.max_concurrent); retry shortly",
                self.max_node
            ))
        })?;
        Ok(Admission {
            pool: self.budget.pool(tenant),
            _node: n,
            _tenant: t,
        })
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.max_node - self.node.available_permits()
    }

    /// Query memory reserved on the node now.
    pub fn memory_used(&self) -> usize {
        self.budget.node_used()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_and_node_slots_are_refused_then_released() {
        let g = QueryGovernor::new(&QueryConfig {
            max_concurrent: 3,
            max_concurrent_per_tenant: 2,
            ..Default::default()
        });
        let a1 = g.admit("a").unwrap();
        let _a2 = g.admit("a").unwrap();
        assert!(matches!(g.admit("a"), Err(QueryError::TenantBusy(_))));
        let _b1 = g.admit("b").unwrap();
        assert!(matches!(g.admit("b"), Err(QueryError::NodeBusy(_))));
        assert_eq!(g.running(), 3);
        drop(a1);
        let b2 = g.admit("b").expect("a slot of the node is free again");
        assert_eq!(g.running(), 3);
        drop(b2);
        // A refusal holds no slot.
        assert_eq!(g.running(), 2);
        assert!(g.admit("b").is_ok());
    }
}
