//! Memory of queries: one budget for the node, a share per tenant, a limit per query.
//!
//! Every query runs with its own [`QueryPool`], a DataFusion `MemoryPool` that admits a
//! reservation only when it fits the query's limit, its tenant's share (all that
//! tenant's running queries together) and the node's budget (all queries). Which of the
//! three refused is remembered ([`Exhausted`]) so the caller can answer accordingly: a
//! query that alone needs more than its limit will never fit (422); a tenant over its
//! share or a node over its budget may fit later (429, 503).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::DataFusionError;
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};
use parking_lot::Mutex;

/// Which limit refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    Query,
    Tenant,
    Node,
}

/// A counted amount of memory with a ceiling.
#[derive(Debug)]
struct Share {
    used: AtomicUsize,
    limit: usize,
}

impl Share {
    fn new(limit: usize) -> Share {
        Share {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    fn try_add(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    fn sub(&self, n: usize) {
        // Never below zero, even if a consumer shrinks more than it grew.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The node's query memory and each tenant's share of it.
#[derive(Debug)]
pub struct QueryBudget {
    node: Arc<Share>,
    tenants: Mutex<HashMap<String, Arc<Share>>>,
    tenant_limit: usize,
    query_limit: usize,
}

impl QueryBudget {
    pub fn new(node_bytes: usize, tenant_bytes: usize, query_bytes: usize) -> QueryBudget {
        QueryBudget {
            node: Arc::new(Share::new(node_bytes)),
            tenants: Mutex::default(),
            tenant_limit: tenant_bytes,
            query_limit: query_bytes,
        }
    }

    /// A pool for one query of `tenant`.
    pub fn pool(&self, tenant: &str) -> Arc<QueryPool> {
        let tenant = self
            .tenants
            .lock()
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Share::new(self.tenant_limit)))
            .clone();
        Arc::new(QueryPool {
            query: Share::new(self.query_limit),
            tenant,
            node: self.node.clone(),
            exhausted: AtomicU8::new(0),
        })
    }

    /// Bytes reserved by all running queries.
    pub fn node_used(&self) -> usize {
        self.node.used()
    }

    /// Bytes reserved by `tenant`'s running queries.
    pub fn tenant_used(&self, tenant: &str) -> usize {
        self.tenants.lock().get(tenant).map_or(0, |s| s.used())
    }
}

/// The memory pool of one query (see the module docs).
#[derive(Debug)]
pub struct QueryPool {
    query: Share,
    tenant: Arc<Share>,
    node: Arc<Share>,
    exhausted: AtomicU8,
}

impl QueryPool {
    /// The limit that refused a reservation of this query, if one did.
    pub fn exhausted(&self) -> Option<Exhausted> {
        match self.exhausted.load(Ordering::Acquire) {
            1 => Some(Exhausted::Query),
            2 => Some(Exhausted::Tenant),
            3 => Some(Exhausted::Node),
            _ => None,
        }
    }

    /// Reserve `n` bytes for `what` outside any DataFusion consumer (e.g. a function's
    /// output) until the returned guard is dropped.
    pub fn reserve(self: &Arc<Self>, n: usize, what: &str) -> Result<Reserved, DataFusionError> {
        self.admit(n, what)?;
        Ok(Reserved {
            pool: self.clone(),
            n,
        })
    }

    fn admit(&self, n: usize, what: &str) -> Result<(), DataFusionError> {
        let refuse = |level: Exhausted, limit: usize, scope: &str| {
            self.exhausted.store(level as u8 + 1, Ordering::Release);
            Err(DataFusionError::ResourcesExhausted(format!(
                "{what} needs {} more; {scope} limit of {} is reached",
                mib(n),
                mib(limit)
            )))
        };
        if !self.query.try_add(n) {
            return refuse(Exhausted::Query, self.query.limit, "the query's memory");
        }
        if !self.tenant.try_add(n) {
            self.query.sub(n);
            return refuse(
                Exhausted::Tenant,
                self.tenant.limit,
                "the tenant's query memory",
            );
        }
        if !self.node.try_add(n) {
            self.query.sub(n);
            self.tenant.sub(n);
            return refuse(Exhausted::Node, self.node.limit, "the node's query memory");
        }
        Ok(())
    }

    fn release(&self, n: usize) {
        self.query.sub(n);
        self.tenant.sub(n);
        self.node.sub(n);
    }
}

fn mib(n: usize) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

/// Bytes held in a [`QueryPool`] until dropped.
pub struct Reserved {
    pool: Arc<QueryPool>,
    n: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.pool.release(self.n);
    }
}

impl Drop for QueryPool {
    fn drop(&mut self) {
        // Whatever a consumer did not shrink goes back to the tenant and the node.
        let left = self.query.used();
        self.tenant.sub(left);
        self.node.sub(left);
    }
}

impl fmt::Display for QueryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "weir query pool ({} of {})",
            mib(self.query.used()),
            mib(self.query.limit)
        )
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "weir"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.query.add(additional);
        self.tenant.add(additional);
        self.node.add(additional);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.release(shrink);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::common::Result<()> {
        self.admit(additional, reservation.consumer().name())
    }

    fn reserved(&self) -> usize {
        self.query.used()
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.query.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::MemoryConsumer;

    #[test]
    fn each_limit_refuses_and_is_named() {
        let budget = QueryBudget::new(300, 200, 150);
        let p1: Arc<dyn MemoryPool> = budget.pool("a");
        let r1 = MemoryConsumer::new("sort").register(&p1);
        r1.try_grow(150).unwrap();
        let e = r1.try_grow(1).unwrap_err().to_string();
        assert!(e.contains("the query's memory limit"), "{e}");
        let q1 = budget.pool("a");
        let q1d: Arc<dyn MemoryPool> = q1.clone();
        let r2 = MemoryConsumer::new("join").register(&q1d);
        assert!(r2.try_grow(100).is_err(), "tenant a holds 150 of 200");
        assert_eq!(q1.exhausted(), Some(Exhausted::Tenant));
        r2.try_grow(50).unwrap();
        let b = budget.pool("b");
        let bd: Arc<dyn MemoryPool> = b.clone();
        let r3 = MemoryConsumer::new("agg").register(&bd);
        assert!(r3.try_grow(101).is_err(), "the node holds 200 of 300");
        assert_eq!(b.exhausted(), Some(Exhausted::Node));
        r3.try_grow(100).unwrap();
        assert_eq!(budget.node_used(), 300);
        drop((r1, r2, r3));
        assert_eq!((budget.node_used(), budget.tenant_used("a")), (0, 0));
    }

    #[test]
    fn reservations_and_a_dropped_pool_give_memory_back() {
        let budget = QueryBudget::new(1000, 1000, 1000);
        let p = budget.pool("a");
        let held = p.reserve(400, "repeat").unwrap();
        assert_eq!(budget.tenant_used("a"), 400);
        let e = p.reserve(601, "lpad").err().unwrap().to_string();
        assert!(e.starts_with("Resources exhausted: lpad needs"), "{e}");
        assert_eq!(p.exhausted(), Some(Exhausted::Query));
        drop(held);
        assert_eq!(budget.tenant_used("a"), 0);
        // A consumer that grew without shrinking: the pool's drop returns its bytes.
        let dynp: Arc<dyn MemoryPool> = p.clone();
        let r = MemoryConsumer::new("leaky").register(&dynp);
        p.grow(&r, 300);
        drop(r);
        assert_eq!(budget.node_used(), 300);
        drop(dynp);
        drop(p);
        assert_eq!(budget.node_used(), 0);
    }
}
