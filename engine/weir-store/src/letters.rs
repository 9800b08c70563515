//! Dead letters and quarantined rows: kept per tenant, bounded in age and in bytes.
//!
//! Two kinds of "letters" share one mechanism: dead letters (`dead_letters`, log entries
//! a plugin failed on, see [`crate::hot::DeadLetter`]) and quarantined rows
//! (`quarantine`, rows the cold flush could not write, see [`crate::quarantine`]). Each
//! kind is a redb table keyed `(partition, offset)` holding JSON, plus an index
//! `(tenant, time, partition, offset)` → bytes, written in the same transactions, so
//! that:
//! - a tenant's letters are read by a range of its own index entries: a query never
//!   reads (or decodes) another tenant's letters, and costs what its own are;
//! - the janitor deletes letters older than `[dead_letters] retention` by range;
//! - past `[dead_letters] max_mb_per_tenant` bytes of one kind, the tenant's oldest
//!   letters of that kind are deleted in the transaction that added the new ones (the
//!   bound holds on disk at every commit), and counted.
//!
//! An entry that does not decode is indexed under tenant `""` (no tenant's) at time 0,
//! so no tenant reads it and the first retention pass deletes it.

use std::collections::{BTreeMap, HashMap};

use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::Deserialize;

use crate::hot::{storage_err, HotStore, StoreError};

type Main = TableDefinition<'static, (u32, u64), &'static [u8]>;
type Index = TableDefinition<'static, (&'static str, i64, u32, u64), u64>;

pub(crate) const DEAD: Main = TableDefinition::new("dead_letters");
const DEAD_INDEX: Index = TableDefinition::new("dead_letters_by_tenant");
pub(crate) const QUARANTINE: Main = TableDefinition::new("quarantine");
const QUARANTINE_INDEX: Index = TableDefinition::new("quarantine_by_tenant");

/// Which letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Dead,
    Quarantine,
}

impl Kind {
    fn tables(self) -> (Main, Index) {
        match self {
            Kind::Dead => (DEAD, DEAD_INDEX),
            Kind::Quarantine => (QUARANTINE, QUARANTINE_INDEX),
        }
    }

    /// `dead_letter` or `quarantine`: the label of its counters.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dead => "dead_letter",
            Kind::Quarantine => "quarantine",
        }
    }
}

/// Bounds on the letters of one tenant (None: unbounded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LetterLimits {
    /// Letters older than this (by failure time) are deleted by the janitor.
    pub retention_ms: Option<u64>,
    /// Bytes of one tenant's letters of one kind; past it, its oldest are deleted.
    pub max_bytes_per_tenant: Option<u64>,
}

/// Letters deleted, per kind and tenant, since they were last taken.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LetterCounts {
    /// Over the per-tenant cap (the oldest go).
    pub dropped: BTreeMap<(Kind, String), u64>,
    /// Past the retention.
    pub expired: BTreeMap<(Kind, String), u64>,
}

/// Letters in memory: per kind and tenant, the bytes held; the limits; the counts.
#[derive(Default)]
pub(crate) struct Letters {
    bytes: HashMap<(Kind, String), u64>,
    pub(crate) limits: LetterLimits,
    counts: LetterCounts,
}

impl Letters {
    pub(crate) fn with_bytes(bytes: HashMap<(Kind, String), u64>) -> Letters {
        Letters {
            bytes,
            ..Letters::default()
        }
    }
}

/// The fields of either kind of letter the index needs.
#[derive(Deserialize)]
struct Head {
    tenant: String,
    #[serde(alias = "quarantined_at_ms")]
    failed_at_ms: i64,
}

fn head(json: &[u8]) -> (String, i64) {
    match serde_json::from_slice::<Head>(json) {
        Ok(h) => (h.tenant, h.failed_at_ms),
        Err(_) => (String::new(), 0),
    }
}

/// Changes to the bytes held, applied once their transaction commits.
#[derive(Default)]
pub(crate) struct Delta {
    bytes: HashMap<(Kind, String), i64>,
    dropped: BTreeMap<(Kind, String), u64>,
    expired: BTreeMap<(Kind, String), u64>,
}

impl Delta {
    fn add(&mut self, kind: Kind, tenant: &str, n: i64) {
        *self.bytes.entry((kind, tenant.to_owned())).or_default() += n;
    }
}

/// Put a letter (JSON of a type with `tenant` and a time) under `key`, replacing one
/// already there, within `w`.
pub(crate) fn put(
    w: &WriteTransaction,
    delta: &mut Delta,
    kind: Kind,
    key: (u32, u64),
    json: &[u8],
) -> Result<(), StoreError> {
    remove(w, delta, kind, key)?;
    let (main, index) = kind.tables();
    let (tenant, at) = head(json);
    w.open_table(main)
        .map_err(storage_err)?
        .insert(key, json)
        .map_err(storage_err)?;
    w.open_table(index)
        .map_err(storage_err)?
        .insert((tenant.as_str(), at, key.0, key.1), json.len() as u64)
        .map_err(storage_err)?;
    delta.add(kind, &tenant, json.len() as i64);
    Ok(())
}

/// Remove the letter under `key`, within `w`; whether there was one.
pub(crate) fn remove(
    w: &WriteTransaction,
    delta: &mut Delta,
    kind: Kind,
    key: (u32, u64),
) -> Result<bool, StoreError> {
    let (main, index) = kind.tables();
    let old = w
        .open_table(main)
        .map_err(storage_err)?
        .remove(key)
        .map_err(storage_err)?
        .map(|v| v.value().to_vec());
    let Some(old) = old else {
        return Ok(false);
    };
    let (tenant, at) = head(&old);
    w.open_table(index)
        .map_err(storage_err)?
        .remove((tenant.as_str(), at, key.0, key.1))
        .map_err(storage_err)?;
    delta.add(kind, &tenant, -(old.len() as i64));
    Ok(true)
}

/// Within `w`, delete the oldest letters of each tenant `delta` added to until its
/// bytes are within `cap`.
fn enforce_cap(
    w: &WriteTransaction,
    delta: &mut Delta,
    held: &HashMap<(Kind, String), u64>,
    cap: u64,
) -> Result<(), StoreError> {
    let grown: Vec<(Kind, String)> = delta
        .bytes
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(k, _)| k.clone())
        .collect();
    for (kind, tenant) in grown {
        let now = |d: &Delta| {
            let base = held.get(&(kind, tenant.clone())).copied().unwrap_or(0) as i64;
            base + d.bytes.get(&(kind, tenant.clone())).copied().unwrap_or(0)
        };
        let mut over = now(delta) - cap as i64;
        if over <= 0 {
            continue;
        }
        let (_, index) = kind.tables();
        let oldest: Vec<((u32, u64), i64)> = {
            let t = w.open_table(index).map_err(storage_err)?;
            let mut out = Vec::new();
            let range = t
                .range(
                    (tenant.as_str(), i64::MIN, 0u32, 0u64)
                        ..=(tenant.as_str(), i64::MAX, u32::MAX, u64::MAX),
                )
                .map_err(storage_err)?;
            for row in range {
                if over <= 0 {
                    break;
                }
                let (k, v) = row.map_err(storage_err)?;
                let (_, _, p, o) = k.value();
                over -= v.value() as i64;
                out.push(((p, o), v.value() as i64));
            }
            out
        };
        for (key, _) in oldest {
            if remove(w, delta, kind, key)? {
                *delta.dropped.entry((kind, tenant.clone())).or_default() += 1;
            }
        }
    }
    Ok(())
}

impl HotStore {
    /// Set the bounds of dead letters and quarantined rows (`[dead_letters]`).
    pub fn set_letter_limits(&self, limits: LetterLimits) {
        self.letters.lock().limits = limits;
    }

    /// Letters deleted by the cap and by retention since the last call.
    pub fn take_letter_counts(&self) -> LetterCounts {
        std::mem::take(&mut self.letters.lock().counts)
    }

    /// Bytes of `tenant`'s letters of `kind` (as the cap counts them).
    pub fn letter_bytes(&self, kind: Kind, tenant: &str) -> u64 {
        self.letters
            .lock()
            .bytes
            .get(&(kind, tenant.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Within `w`, about to commit: enforce the per-tenant cap on what `delta` added.
    pub(crate) fn cap_letters(
        &self,
        w: &WriteTransaction,
        delta: &mut Delta,
    ) -> Result<(), StoreError> {
        let l = self.letters.lock();
        match l.limits.max_bytes_per_tenant {
            Some(cap) => enforce_cap(w, delta, &l.bytes, cap),
            None => Ok(()),
        }
    }

    /// After the transaction of `delta` committed: the bytes and counts follow it.
    pub(crate) fn letters_committed(&self, delta: Delta) {
        let mut l = self.letters.lock();
        for (k, d) in delta.bytes {
            let e = l.bytes.entry(k).or_default();
            *e = e.saturating_add_signed(d);
        }
        for (k, n) in delta.dropped {
            if n > 0 {
                tracing::warn!(kind = k.0.name(), tenant = %k.1, letters = n, "over the per-tenant cap: oldest deleted");
            }
            *l.counts.dropped.entry(k).or_default() += n;
        }
        for (k, n) in delta.expired {
            *l.counts.expired.entry(k).or_default() += n;
        }
        l.bytes.retain(|_, b| *b > 0);
    }

    /// Within `w` (at open): rebuild the indexes when they do not match their tables (a
    /// store written before they existed), and the bytes held per tenant.
    pub(crate) fn load_letters(
        w: &WriteTransaction,
    ) -> Result<HashMap<(Kind, String), u64>, StoreError> {
        let mut bytes: HashMap<(Kind, String), u64> = HashMap::new();
        for kind in [Kind::Dead, Kind::Quarantine] {
            let (main, index) = kind.tables();
            let m = w.open_table(main).map_err(storage_err)?;
            let stale = {
                let i = w.open_table(index).map_err(storage_err)?;
                m.len().map_err(storage_err)? != i.len().map_err(storage_err)?
            };
            if stale {
                tracing::info!(kind = kind.name(), "indexing letters by tenant");
                w.delete_table(index).map_err(storage_err)?;
            }
            let mut i = w.open_table(index).map_err(storage_err)?;
            if stale {
                for row in m.iter().map_err(storage_err)? {
                    let (k, v) = row.map_err(storage_err)?;
                    let (p, o) = k.value();
                    let (tenant, at) = head(v.value());
                    i.insert((tenant.as_str(), at, p, o), v.value().len() as u64)
                        .map_err(storage_err)?;
                }
            }
            for row in i.iter().map_err(storage_err)? {
                let (k, v) = row.map_err(storage_err)?;
                *bytes.entry((kind, k.value().0.to_owned())).or_default() += v.value();
            }
        }
        Ok(bytes)
    }

    /// `tenant`'s letters of `kind` (raw JSON), oldest first: read through its index
    /// range only.
    pub(crate) fn letters_of(&self, kind: Kind, tenant: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let (main, index) = kind.tables();
        let r = self.db.begin_read().map_err(storage_err)?;
        let i = r.open_table(index).map_err(storage_err)?;
        let m = r.open_table(main).map_err(storage_err)?;
        let mut out = Vec::new();
        let range = i
            .range((tenant, i64::MIN, 0u32, 0u64)..=(tenant, i64::MAX, u32::MAX, u64::MAX))
            .map_err(storage_err)?;
        for row in range {
            let (k, _) = row.map_err(storage_err)?;
            let (_, _, p, o) = k.value();
            if let Some(v) = m.get((p, o)).map_err(storage_err)? {
                out.push(v.value().to_vec());
            }
        }
        Ok(out)
    }

    /// Delete letters older than the retention at `now_ms`; how many went.
    pub(crate) fn expire_letters(&self, now_ms: i64) -> Result<u64, StoreError> {
        let (Some(age), tenants) = ({
            let l = self.letters.lock();
            (
                l.limits.retention_ms,
                l.bytes.keys().cloned().collect::<Vec<_>>(),
            )
        }) else {
            return Ok(0);
        };
        let cutoff = weir_core::retention::cutoff_ms(now_ms, age);
        let mut doomed: Vec<(Kind, String, (u32, u64))> = Vec::new();
        {
            let r = self.db.begin_read().map_err(storage_err)?;
            for (kind, tenant) in &tenants {
                let (_, index) = kind.tables();
                let i = r.open_table(index).map_err(storage_err)?;
                let range = i
                    .range(
                        (tenant.as_str(), i64::MIN, 0u32, 0u64)
                            ..(tenant.as_str(), cutoff, 0u32, 0u64),
                    )
                    .map_err(storage_err)?;
                for row in range {
                    let (k, _) = row.map_err(storage_err)?;
                    let (_, _, p, o) = k.value();
                    doomed.push((*kind, tenant.clone(), (p, o)));
                }
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut delta = Delta::default();
        let w = self.db.begin_write().map_err(storage_err)?;
        let mut n = 0;
        for (kind, tenant, key) in doomed {
            if remove(&w, &mut delta, kind, key)? {
                *delta.expired.entry((kind, tenant)).or_default() += 1;
                n += 1;
            }
        }
        w.commit().map_err(storage_err)?;
        self.letters_committed(delta);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use crate::hot::DeadLetter;
    use crate::letters::{Kind, LetterLimits};
    use crate::HotStore;

    fn dead(tenant: &str, offset: u64, at: i64, size: usize) -> DeadLetter {
        DeadLetter {
            tenant: tenant.into(),
            stream: "s".into(),
            partition: 0,
            offset,
            count: 1,
            plugin: "x".into(),
            plugin_sha256: "00".into(),
            plugin_version: None,
            error: "boom".into(),
            ingest_ts_ms: 1,
            failed_at_ms: at,
            records: "r".repeat(size),
            replay_of: None,
        }
    }

    fn ids(s: &HotStore, tenant: &str) -> Vec<u64> {
        s.dead_letters(tenant)
            .unwrap()
            .iter()
            .map(|d| d.offset)
            .collect()
    }

    /// Past the per-tenant cap the tenant's oldest dead letters go (in the commit that
    /// adds new ones), counted; other tenants keep theirs.
    #[test]
    fn the_cap_drops_a_tenants_oldest_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = HotStore::open(&dir.path().join("store.redb"), usize::MAX).unwrap();
        let one = serde_json::to_vec(&dead("a", 0, 0, 1000)).unwrap().len() as u64;
        s.set_letter_limits(LetterLimits {
            retention_ms: None,
            max_bytes_per_tenant: Some(one * 3 + 50),
        });
        s.commit(0, 1, &[], &[dead("b", 100, 5, 1000)], &[])
            .unwrap();
        for i in 0..5u64 {
            s.commit(0, i + 2, &[], &[dead("a", i, 10 + i as i64, 1000)], &[])
                .unwrap();
        }
        assert_eq!(ids(&s, "a"), vec![2, 3, 4]);
        assert_eq!(ids(&s, "b"), vec![100]);
        let held = s.letter_bytes(Kind::Dead, "a");
        assert!(held <= one * 3 + 50, "{held}");
        let c = s.take_letter_counts();
        assert_eq!(c.dropped.get(&(Kind::Dead, "a".into())), Some(&2));
        assert_eq!(c.dropped.get(&(Kind::Dead, "b".into())), None);
        // The same after a restart (the bytes are rebuilt from the index).
        drop(s);
        let s = HotStore::open(&dir.path().join("store.redb"), usize::MAX).unwrap();
        assert_eq!(s.letter_bytes(Kind::Dead, "a"), held);
        assert_eq!(ids(&s, "a"), vec![2, 3, 4]);
    }

    /// The janitor deletes dead letters past the retention, counted per tenant.
    #[tokio::test]
    async fn retention_deletes_old_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let s = HotStore::open(&dir.path().join("store.redb"), usize::MAX).unwrap();
        s.set_letter_limits(LetterLimits {
            retention_ms: Some(1000),
            max_bytes_per_tenant: None,
        });
        s.commit(
            0,
            3,
            &[],
            &[
                dead("a", 0, 100, 10),
                dead("a", 1, 5000, 10),
                dead("b", 2, 200, 10),
            ],
            &[],
        )
        .unwrap();
        let stats = s.janitor_pass(5500).await.unwrap();
        assert_eq!(stats.expired_letters, 2);
        assert_eq!(ids(&s, "a"), vec![1]);
        assert!(ids(&s, "b").is_empty());
        let c = s.take_letter_counts();
        assert_eq!(c.expired.get(&(Kind::Dead, "a".into())), Some(&1));
        assert_eq!(c.expired.get(&(Kind::Dead, "b".into())), Some(&1));
        assert_eq!(s.letter_bytes(Kind::Dead, "b"), 0);
    }

    /// A store written before the index existed is indexed at open; a letter that does
    /// not decode is no tenant's and goes at the first retention pass.
    #[tokio::test]
    async fn letters_of_an_older_store_are_indexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let db = redb::Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(super::DEAD).unwrap();
                let json = serde_json::to_vec(&dead("a", 7, 10, 3)).unwrap();
                t.insert((0, 7), json.as_slice()).unwrap();
                t.insert((0, 8), b"not json".as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        let s = HotStore::open(&path, usize::MAX).unwrap();
        assert_eq!(ids(&s, "a"), vec![7]);
        assert!(
            ids(&s, "").is_empty(),
            "an undecodable letter is listed for nobody"
        );
        s.set_letter_limits(LetterLimits {
            retention_ms: Some(1),
            max_bytes_per_tenant: None,
        });
        assert_eq!(s.janitor_pass(5).await.unwrap().expired_letters, 1);
        assert_eq!(ids(&s, "a"), vec![7]);
    }
}
