//! The statements Flight SQL keeps between calls, under opaque handles bound to their
//! tenant: statements waiting for their `DoGet` ([`Pending`]) and prepared statements
//! ([`Prepared`]), in one map.
//!
//! A handle answers only its own tenant: another tenant's handle is exactly as unknown
//! as a made-up one. Handles are unpredictable (a keyed hash of a counter), so they
//! tell nothing of other tenants' traffic. Each tenant has at most [`MAX_PENDING`]
//! pending and [`MAX_PREPARED`] prepared statements; past that its own oldest (least
//! recently used) go first, so no tenant's calls evict another's. Pending statements
//! expire [`RESULT_TTL`] after they were planned, prepared ones [`PREPARED_TTL`] after
//! their last use.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::Field;
use datafusion::scalar::ScalarValue;
use parking_lot::Mutex;

/// How long a result waits for its `DoGet`.
pub const RESULT_TTL: Duration = Duration::from_secs(60);
/// Most statements of one tenant waiting for their `DoGet` at once.
pub const MAX_PENDING: usize = 64;
/// How long an unused prepared statement stays open.
pub const PREPARED_TTL: Duration = Duration::from_secs(600);
/// Most prepared statements of one tenant open at once.
pub const MAX_PREPARED: usize = 64;

/// A statement planned by `GetFlightInfo`, run once by `DoGet`.
pub struct Pending {
    pub sql: String,
    /// The values of its placeholders (a prepared statement's execution).
    pub params: Option<Vec<ScalarValue>>,
}

/// A prepared statement: its SQL, its parameters, and the values last bound to them.
pub struct Prepared {
    pub sql: String,
    pub parameters: Vec<Field>,
    pub bound: Option<Vec<ScalarValue>>,
}

enum Kind {
    Pending(Pending),
    Prepared(Prepared),
}

struct Entry {
    tenant: String,
    /// Planned (pending) or last used (prepared).
    at: Instant,
    kind: Kind,
}

impl Entry {
    fn live(&self) -> bool {
        let ttl = match self.kind {
            Kind::Pending(_) => RESULT_TTL,
            Kind::Prepared(_) => PREPARED_TTL,
        };
        self.at.elapsed() < ttl
    }

    fn same_kind(&self, other: &Kind) -> bool {
        matches!(
            (&self.kind, other),
            (Kind::Pending(_), Kind::Pending(_)) | (Kind::Prepared(_), Kind::Prepared(_))
        )
    }
}

#[derive(Default)]
pub struct Handles {
    map: Mutex<HashMap<u64, Entry>>,
    next: Mutex<u64>,
    key: std::collections::hash_map::RandomState,
}

impl Handles {
    /// Keep `pending` for `tenant`; its handle.
    pub fn add_pending(&self, tenant: &str, pending: Pending) -> u64 {
        self.add(tenant, Kind::Pending(pending), MAX_PENDING)
    }

    /// Keep `prepared` for `tenant`; its handle.
    pub fn add_prepared(&self, tenant: &str, prepared: Prepared) -> u64 {
        self.add(tenant, Kind::Prepared(prepared), MAX_PREPARED)
    }

    fn add(&self, tenant: &str, kind: Kind, max: usize) -> u64 {
        let mut map = self.map.lock();
        map.retain(|_, e| e.live());
        loop {
            let mine = map
                .iter()
                .filter(|(_, e)| e.tenant == tenant && e.same_kind(&kind));
            if mine.clone().count() < max {
                break;
            }
            match mine.min_by_key(|(_, e)| e.at).map(|(h, _)| *h) {
                Some(h) => map.remove(&h),
                None => break,
            };
        }
        let handle = loop {
            let n = {
                let mut next = self.next.lock();
                *next += 1;
                *next
            };
            let h = self.key.hash_one(n);
            if !map.contains_key(&h) {
                break h;
            }
        };
        map.insert(
            handle,
            Entry {
                tenant: tenant.to_owned(),
                at: Instant::now(),
                kind,
            },
        );
        handle
    }

    /// The pending statement `handle` of `tenant`, taken (it runs once).
    pub fn take_pending(&self, tenant: &str, handle: u64) -> Option<Pending> {
        let mut map = self.map.lock();
        match map.get(&handle) {
            Some(e) if e.tenant == tenant && e.live() && matches!(e.kind, Kind::Pending(_)) => {
                match map.remove(&handle)?.kind {
                    Kind::Pending(p) => Some(p),
                    Kind::Prepared(_) => None,
                }
            }
            _ => None,
        }
    }

    /// `f` on the prepared statement `handle` of `tenant` (marking it used).
    pub fn with_prepared<R>(
        &self,
        tenant: &str,
        handle: u64,
        f: impl FnOnce(&mut Prepared) -> R,
    ) -> Option<R> {
        let mut map = self.map.lock();
        let e = map.get_mut(&handle)?;
        if e.tenant != tenant || !e.live() {
            return None;
        }
        match &mut e.kind {
            Kind::Prepared(p) => {
                e.at = Instant::now();
                Some(f(p))
            }
            Kind::Pending(_) => None,
        }
    }

    /// Close the prepared statement `handle` of `tenant`; whether there was one.
    pub fn close_prepared(&self, tenant: &str, handle: u64) -> bool {
        let mut map = self.map.lock();
        match map.get(&handle) {
            Some(e) if e.tenant == tenant && matches!(e.kind, Kind::Prepared(_)) => {
                map.remove(&handle);
                true
            }
            _ => false,
        }
    }

    /// How many statements of `tenant` are kept: (pending, prepared).
    #[cfg(test)]
    pub fn count(&self, tenant: &str) -> (usize, usize) {
        let map = self.map.lock();
        let mine = || map.values().filter(|e| e.tenant == tenant);
        (
            mine()
                .filter(|e| matches!(e.kind, Kind::Pending(_)))
                .count(),
            mine()
                .filter(|e| matches!(e.kind, Kind::Prepared(_)))
                .count(),
        )
    }
}

/// A handle as the bytes of a Flight SQL message.
pub fn to_bytes(handle: u64) -> prost::bytes::Bytes {
    handle.to_be_bytes().to_vec().into()
}

/// A handle from the bytes of a Flight SQL message (None: not one of ours).
pub fn from_bytes(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(sql: &str) -> Prepared {
        Prepared {
            sql: sql.into(),
            parameters: Vec::new(),
            bound: None,
        }
    }

    fn pending(sql: &str) -> Pending {
        Pending {
            sql: sql.into(),
            params: None,
        }
    }

    #[test]
    fn handles_answer_their_tenant_and_kind_only() {
        let h = Handles::default();
        let p = h.add_prepared("a", prepared("SELECT 1"));
        let q = h.add_pending("a", pending("SELECT 2"));
        assert_ne!(p, q);
        assert!(h.with_prepared("b", p, |_| ()).is_none(), "another tenant");
        assert!(!h.close_prepared("b", p), "another tenant cannot close it");
        assert!(h.take_pending("b", q).is_none());
        assert!(
            h.take_pending("a", p).is_none(),
            "a prepared handle is no ticket"
        );
        assert!(
            h.with_prepared("a", q, |_| ()).is_none(),
            "a ticket is no prepared handle"
        );
        assert_eq!(
            h.with_prepared("a", p, |s| s.sql.clone()).as_deref(),
            Some("SELECT 1")
        );
        assert_eq!(
            h.take_pending("a", q).map(|s| s.sql).as_deref(),
            Some("SELECT 2")
        );
        assert!(h.take_pending("a", q).is_none(), "runs once");
        assert!(h.close_prepared("a", p));
        assert!(h.with_prepared("a", p, |_| ()).is_none(), "closed");
        assert_eq!(from_bytes(&to_bytes(p)), Some(p));
        assert_eq!(from_bytes(b"short"), None);
    }

    #[test]
    fn each_tenant_is_bounded_by_its_own_oldest() {
        let h = Handles::default();
        let first = h.add_prepared("a", prepared("first"));
        let second = h.add_prepared("a", prepared("second"));
        let theirs = h.add_prepared("b", prepared("b's"));
        // Using the first makes the second a's least recently used.
        h.with_prepared("a", first, |_| ());
        for i in 0..MAX_PREPARED - 1 {
            h.add_prepared("a", prepared(&format!("more {i}")));
        }
        assert!(h.with_prepared("a", second, |_| ()).is_none(), "evicted");
        assert!(
            h.with_prepared("a", first, |_| ()).is_some(),
            "recently used"
        );
        assert!(
            h.with_prepared("b", theirs, |_| ()).is_some(),
            "not a's to evict"
        );
        for _ in 0..2 * MAX_PENDING {
            h.add_pending("a", pending("x"));
        }
        assert_eq!(h.count("a"), (MAX_PENDING, MAX_PREPARED));
        assert_eq!(h.count("b"), (0, 1));
    }
}
