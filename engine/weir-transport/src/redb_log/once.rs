//! Idempotency keys: the appends a client may retry, remembered per tenant in the same
//! transaction as their entries.
//!
//! Three tables: `keys` maps `(tenant, key)` to the time it was remembered, the
//! request's fingerprint and the answer given to it; `key_age` orders a tenant's keys
//! by that time, for expiry and the per-tenant cap; `key_count` counts each tenant's
//! keys. A key is written only by the commit that appends its entries, so an append
//! that failed (backpressure, full disk) leaves nothing behind and its retry appends.

use std::collections::HashMap;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::storage_err;
use crate::{LogError, Once, Remembered};

pub(super) const KEYS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("keys");
const KEY_AGE: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("key_age");
const KEY_COUNT: TableDefinition<&str, u64> = TableDefinition::new("key_count");

/// Most keys one expiry pass removes (the rest wait for the next pass).
const EXPIRE_BATCH: usize = 10_000;

/// A stored key: `at_ms` (i64 LE), fingerprint (u64 LE), then the answer.
fn encode(at_ms: i64, r: &Remembered) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + r.answer.len());
    v.extend_from_slice(&at_ms.to_le_bytes());
    v.extend_from_slice(&r.fingerprint.to_le_bytes());
    v.extend_from_slice(&r.answer);
    v
}

pub(super) fn decode(v: &[u8]) -> Option<Remembered> {
    let fp = v.get(8..16)?;
    Some(Remembered {
        fingerprint: u64::from_le_bytes(fp.try_into().ok()?),
        answer: v.get(16..)?.to_vec(),
    })
}

/// What one commit knows about keys: those already stored, and those earlier requests
/// of the same commit remembered.
#[derive(Default)]
pub(super) struct Keys {
    fresh: HashMap<(String, String), Remembered>,
}

impl Keys {
    /// The remembered answer for `once`'s key, if it has one.
    pub fn seen(&self, w: &WriteTransaction, once: &Once) -> Result<Option<Remembered>, LogError> {
        if let Some(r) = self.fresh.get(&(once.tenant.clone(), once.key.clone())) {
            return Ok(Some(r.clone()));
        }
        let keys = w.open_table(KEYS).map_err(storage_err)?;
        let got = keys
            .get((once.tenant.as_str(), once.key.as_str()))
            .map_err(storage_err)?;
        Ok(got.and_then(|v| decode(v.value())))
    }

    /// Remember `once` (its entries are in this transaction), forgetting the tenant's
    /// oldest keys beyond `cap`.
    pub fn remember(
        &mut self,
        w: &WriteTransaction,
        once: &Once,
        now_ms: i64,
        cap: u64,
    ) -> Result<(), LogError> {
        let r = Remembered {
            fingerprint: once.fingerprint,
            answer: once.answer.clone(),
        };
        let (t, k) = (once.tenant.as_str(), once.key.as_str());
        let mut keys = w.open_table(KEYS).map_err(storage_err)?;
        let mut age = w.open_table(KEY_AGE).map_err(storage_err)?;
        let mut count = w.open_table(KEY_COUNT).map_err(storage_err)?;
        keys.insert((t, k), encode(now_ms, &r).as_slice())
            .map_err(storage_err)?;
        age.insert((t, now_ms, k), ()).map_err(storage_err)?;
        let mut n = count.get(t).map_err(storage_err)?.map_or(0, |v| v.value()) + 1;
        while n > cap.max(1) {
            let oldest = match age
                .range((t, i64::MIN, "")..(t, i64::MAX, ""))
                .map_err(storage_err)?
                .next()
            {
                Some(row) => {
                    let (key, _) = row.map_err(storage_err)?;
                    let (_, at, old) = key.value();
                    (at, old.to_owned())
                }
                None => break,
            };
            age.remove((t, oldest.0, oldest.1.as_str()))
                .map_err(storage_err)?;
            keys.remove((t, oldest.1.as_str())).map_err(storage_err)?;
            self.fresh.remove(&(t.to_owned(), oldest.1));
            n -= 1;
        }
        count.insert(t, n).map_err(storage_err)?;
        self.fresh.insert((t.to_owned(), k.to_owned()), r);
        Ok(())
    }
}

/// Forget keys remembered before `cutoff_ms` (at most [`EXPIRE_BATCH`] per call);
/// how many were forgotten.
pub(super) fn expire(w: &WriteTransaction, cutoff_ms: i64) -> Result<usize, LogError> {
    let mut keys = w.open_table(KEYS).map_err(storage_err)?;
    let mut age = w.open_table(KEY_AGE).map_err(storage_err)?;
    let mut count = w.open_table(KEY_COUNT).map_err(storage_err)?;
    let tenants: Vec<(String, u64)> = count
        .iter()
        .map_err(storage_err)?
        .map(|r| r.map(|(k, v)| (k.value().to_owned(), v.value())))
        .collect::<Result<_, _>>()
        .map_err(storage_err)?;
    let mut removed = 0;
    for (t, n) in tenants {
        let doomed: Vec<(i64, String)> = age
            .range((t.as_str(), i64::MIN, "")..(t.as_str(), cutoff_ms, ""))
            .map_err(storage_err)?
            .take(EXPIRE_BATCH - removed)
            .map(|r| {
                r.map(|(k, _)| {
                    let (_, at, key) = k.value();
                    (at, key.to_owned())
                })
            })
            .collect::<Result<_, _>>()
            .map_err(storage_err)?;
        for (at, key) in &doomed {
            age.remove((t.as_str(), *at, key.as_str()))
                .map_err(storage_err)?;
            keys.remove((t.as_str(), key.as_str()))
                .map_err(storage_err)?;
        }
        let left = n.saturating_sub(doomed.len() as u64);
        if left == 0 {
            count.remove(t.as_str()).map_err(storage_err)?;
        } else {
            count.insert(t.as_str(), left).map_err(storage_err)?;
        }
        removed += doomed.len();
        if removed >= EXPIRE_BATCH {
            break;
        }
    }
    Ok(removed)
}

/// Whether any key was remembered before `cutoff_ms` (a read, so an idle log does not
/// write to find out).
pub(super) fn any_expired(db: &redb::Database, cutoff_ms: i64) -> Result<bool, LogError> {
    use redb::ReadableDatabase;
    let r = db.begin_read().map_err(storage_err)?;
    let count = match r.open_table(KEY_COUNT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(storage_err(e)),
    };
    let age = r.open_table(KEY_AGE).map_err(storage_err)?;
    for row in count.iter().map_err(storage_err)? {
        let (t, _) = row.map_err(storage_err)?;
        let t = t.value();
        if age
            .range((t, i64::MIN, "")..(t, cutoff_ms, ""))
            .map_err(storage_err)?
            .next()
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}
