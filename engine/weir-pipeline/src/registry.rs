//! [`PluginRegistry`]: tenants' uploaded plugins, versioned, persisted in redb.
//!
//! Tables of `plugins.redb`: `versions` maps `(tenant, name, version)` to the JSON of a
//! [`VersionMeta`]; `blobs` maps a sha256 to the component bytes (shared by equal
//! uploads); `active` maps `(tenant, name)` to the active version. Every change bumps
//! the tenant's in-memory generation so its workers swap chains at their next batch
//! boundary (other tenants' chains stay as they are).
//! `pipelines` maps `(tenant, stream)` to the JSON of a [`PipelineDoc`] set through the
//! admin API; it overrides the stream's pipeline in the config file. `events` keeps a
//! plugin's history of activations and automatic rollbacks as [`PluginEvent`]s.
//! `shadow` maps `(tenant, name)` to a version running in shadow mode.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use weir_core::config::PluginRef;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const VERSIONS: TableDefinition<(&str, &str, u32), &str> = TableDefinition::new("versions");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const ACTIVE: TableDefinition<(&str, &str), u32> = TableDefinition::new("active");
const PIPELINES: TableDefinition<(&str, &str), &str> = TableDefinition::new("pipelines");
const EVENTS: TableDefinition<(&str, &str, u64), &str> = TableDefinition::new("events");
const SHADOW: TableDefinition<(&str, &str), u32> = TableDefinition::new("shadow");

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("plugin {0:?} not found")]
    NotFound(String),
    #[error("plugin {name:?} has no version {version}")]
    NoVersion { name: String, version: u32 },
    #[error("registry storage error: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

/// One uploaded version of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub name: String,
    pub version: u32,
    pub world: String,
    pub sha256: String,
    pub size: u64,
    pub uploaded_at_ms: i64,
}

/// A plugin with its versions and the active one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub active: Option<u32>,
    pub versions: Vec<VersionMeta>,
}

impl PluginInfo {
    /// One version's metadata.
    pub fn version(self, version: u32) -> Result<VersionMeta, RegistryError> {
        let name = self.name;
        self.versions
            .into_iter()
            .find(|v| v.version == version)
            .ok_or(RegistryError::NoVersion { name, version })
    }
}

/// Something that happened to a plugin: an activation or an automatic rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginEvent {
    pub at_ms: i64,
    /// `activate` or `rollback`.
    pub kind: String,
    pub from: Option<u32>,
    pub to: u32,
    pub reason: String,
}

/// A stream's pipeline as set through the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineDoc {
    pub plugins: Vec<PluginRef>,
    /// Windowed aggregations over the chain's output (absent in documents stored
    /// before aggregations existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregations: Vec<weir_core::aggregation::AggregationConfig>,
    pub updated_at_ms: i64,
}

pub struct PluginRegistry {
    db: Database,
    generation: AtomicU64,
    generations: RwLock<std::collections::HashMap<String, u64>>,
    /// The `pipelines` table, read once at open and kept in step with it.
    pipelines: RwLock<BTreeMap<(String, String), PipelineDoc>>,
}

impl PluginRegistry {
    pub fn open(path: &Path) -> Result<PluginRegistry, RegistryError> {
        let db = Database::create(path).map_err(storage)?;
        let w = db.begin_write().map_err(storage)?;
        w.open_table(VERSIONS).map_err(storage)?;
        w.open_table(BLOBS).map_err(storage)?;
        w.open_table(ACTIVE).map_err(storage)?;
        w.open_table(PIPELINES).map_err(storage)?;
        w.open_table(EVENTS).map_err(storage)?;
        w.open_table(SHADOW).map_err(storage)?;
        w.commit().map_err(storage)?;
        let mut pipelines = BTreeMap::new();
        {
            let r = db.begin_read().map_err(storage)?;
            for row in r
                .open_table(PIPELINES)
                .map_err(storage)?
                .iter()
                .map_err(storage)?
            {
                let (k, v) = row.map_err(storage)?;
                let (tenant, stream) = k.value();
                let doc: PipelineDoc = serde_json::from_str(v.value()).map_err(storage)?;
                pipelines.insert((tenant.to_owned(), stream.to_owned()), doc);
            }
        }
        Ok(PluginRegistry {
            db,
            generation: AtomicU64::new(0),
            generations: RwLock::new(std::collections::HashMap::new()),
            pipelines: RwLock::new(pipelines),
        })
    }

    /// Persist `doc` as the pipeline of `tenant`'s `stream` (the caller validated it).
    pub fn set_pipeline(
        &self,
        tenant: &str,
        stream: &str,
        doc: PipelineDoc,
    ) -> Result<(), RegistryError> {
        let json = serde_json::to_string(&doc).map_err(storage)?;
        // Held across the commit so the cache and the table change together.
        let mut cache = self.pipelines.write();
        let w = self.db.begin_write().map_err(storage)?;
        w.open_table(PIPELINES)
            .map_err(storage)?
            .insert((tenant, stream), json.as_str())
            .map_err(storage)?;
        w.commit().map_err(storage)?;
        cache.insert((tenant.to_owned(), stream.to_owned()), doc);
        drop(cache);
        self.bump(tenant);
        Ok(())
    }

    /// The pipeline of `tenant`'s `stream` set through the admin API, if any.
    pub fn pipeline(&self, tenant: &str, stream: &str) -> Option<PipelineDoc> {
        self.pipelines
            .read()
            .get(&(tenant.to_owned(), stream.to_owned()))
            .cloned()
    }

    /// Every pipeline of `tenant` set through the admin API, by stream.
    pub fn pipelines(&self, tenant: &str) -> Vec<(String, PipelineDoc)> {
        self.pipelines
            .read()
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, s), d)| (s.clone(), d.clone()))
            .collect()
    }

    /// Changes whenever one of `tenant`'s plugins, versions, shadows or pipelines
    /// changes (and only then: other tenants' changes leave it alone).
    pub fn generation(&self, tenant: &str) -> u64 {
        self.generations.read().get(tenant).copied().unwrap_or(0)
    }

    fn bump(&self, tenant: &str) {
        // Values are unique across tenants, so a change is never mistaken for none.
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.generations.write().insert(tenant.to_owned(), g);
    }

    /// Store an already validated component as the next version of `tenant`'s `name`.
    /// The first version of a plugin becomes active; later ones wait for `activate`.
    pub fn add_version(
        &self,
        tenant: &str,
        name: &str,
        world: &str,
        sha256: &str,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<VersionMeta, RegistryError> {
        let w = self.db.begin_write().map_err(storage)?;
        let meta;
        {
            let mut versions = w.open_table(VERSIONS).map_err(storage)?;
            let last = versions
                .range((tenant, name, 0)..=(tenant, name, u32::MAX))
                .map_err(storage)?
                .next_back()
                .transpose()
                .map_err(storage)?
                .map_or(0, |(k, _)| k.value().2);
            meta = VersionMeta {
                name: name.to_owned(),
                version: last + 1,
                world: world.to_owned(),
                sha256: sha256.to_owned(),
                size: bytes.len() as u64,
                uploaded_at_ms: now_ms,
            };
            let json = serde_json::to_string(&meta).map_err(storage)?;
            versions
                .insert((tenant, name, meta.version), json.as_str())
                .map_err(storage)?;
            let mut blobs = w.open_table(BLOBS).map_err(storage)?;
            if blobs.get(sha256).map_err(storage)?.is_none() {
                blobs.insert(sha256, bytes).map_err(storage)?;
            }
            let mut active = w.open_table(ACTIVE).map_err(storage)?;
            if active.get((tenant, name)).map_err(storage)?.is_none() {
                active
                    .insert((tenant, name), meta.version)
                    .map_err(storage)?;
            }
        }
        w.commit().map_err(storage)?;
        self.bump(tenant);
        Ok(meta)
    }

    /// Every plugin of `tenant`.
    pub fn list(&self, tenant: &str) -> Result<Vec<PluginInfo>, RegistryError> {
        let r = self.db.begin_read().map_err(storage)?;
        let versions = r.open_table(VERSIONS).map_err(storage)?;
        let active = r.open_table(ACTIVE).map_err(storage)?;
        let mut out: Vec<PluginInfo> = Vec::new();
        // Tenant names are at most 64 chars of [A-Za-z0-9_.-]; "\u{10ffff}" sorts after.
        for row in versions
            .range((tenant, "", 0)..=(tenant, "\u{10ffff}", u32::MAX))
            .map_err(storage)?
        {
            let (_, v) = row.map_err(storage)?;
            let meta: VersionMeta = serde_json::from_str(v.value()).map_err(storage)?;
            match out.last_mut() {
                Some(p) if p.name == meta.name => p.versions.push(meta),
                _ => out.push(PluginInfo {
                    name: meta.name.clone(),
                    active: None,
                    versions: vec![meta],
                }),
            }
        }
        for p in &mut out {
            p.active = active
                .get((tenant, p.name.as_str()))
                .map_err(storage)?
                .map(|g| g.value());
        }
        Ok(out)
    }

    pub fn get(&self, tenant: &str, name: &str) -> Result<PluginInfo, RegistryError> {
        self.list(tenant)?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))
    }

    /// Make `version` the active one (rollback is activating an older version), and
    /// record the change as `event` in the same transaction. Returns the version that
    /// was active before.
    pub fn activate(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        kind: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(VersionMeta, Option<u32>), RegistryError> {
        let info = self.get(tenant, name)?;
        let before = info.active;
        let meta = info.version(version)?;
        let event = PluginEvent {
            at_ms: now_ms,
            kind: kind.to_owned(),
            from: before,
            to: version,
            reason: reason.to_owned(),
        };
        let json = serde_json::to_string(&event).map_err(storage)?;
        let w = self.db.begin_write().map_err(storage)?;
        {
            w.open_table(ACTIVE)
                .map_err(storage)?
                .insert((tenant, name), version)
                .map_err(storage)?;
            let mut events = w.open_table(EVENTS).map_err(storage)?;
            let seq = events
                .range((tenant, name, 0)..=(tenant, name, u64::MAX))
                .map_err(storage)?
                .next_back()
                .transpose()
                .map_err(storage)?
                .map_or(0, |(k, _)| k.value().2 + 1);
            events
                .insert((tenant, name, seq), json.as_str())
                .map_err(storage)?;
        }
        w.commit().map_err(storage)?;
        self.bump(tenant);
        Ok((meta, before))
    }

    /// The activations and rollbacks of `tenant`'s `name`, oldest first.
    pub fn events(&self, tenant: &str, name: &str) -> Result<Vec<PluginEvent>, RegistryError> {
        let r = self.db.begin_read().map_err(storage)?;
        let events = r.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::new();
        for row in events
            .range((tenant, name, 0)..=(tenant, name, u64::MAX))
            .map_err(storage)?
        {
            let (_, v) = row.map_err(storage)?;
            out.push(serde_json::from_str(v.value()).map_err(storage)?);
        }
        Ok(out)
    }

    /// Run `version` of `tenant`'s `name` in shadow mode (`None` stops it): it gets a
    /// copy of the active version's input, its output is compared and dropped.
    pub fn set_shadow(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<(), RegistryError> {
        if let Some(v) = version {
            self.get(tenant, name)?.version(v)?;
        }
        let w = self.db.begin_write().map_err(storage)?;
        {
            let mut t = w.open_table(SHADOW).map_err(storage)?;
            match version {
                Some(v) => t.insert((tenant, name), v).map_err(storage)?,
                None => t.remove((tenant, name)).map_err(storage)?,
            };
        }
        w.commit().map_err(storage)?;
        self.bump(tenant);
        Ok(())
    }

    /// The version of `tenant`'s `name` in shadow mode, if any.
    pub fn shadow(&self, tenant: &str, name: &str) -> Result<Option<u32>, RegistryError> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(SHADOW).map_err(storage)?;
        Ok(t.get((tenant, name)).map_err(storage)?.map(|v| v.value()))
    }

    /// The bytes of one version of `tenant`'s `name`.
    pub fn version_bytes(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<(VersionMeta, Vec<u8>), RegistryError> {
        let meta = self.get(tenant, name)?.version(version)?;
        let r = self.db.begin_read().map_err(storage)?;
        let blobs = r.open_table(BLOBS).map_err(storage)?;
        let bytes = blobs
            .get(meta.sha256.as_str())
            .map_err(storage)?
            .ok_or_else(|| RegistryError::Storage(format!("missing blob {}", meta.sha256)))?
            .value()
            .to_vec();
        Ok((meta, bytes))
    }

    /// Remove every version of a plugin (the caller checks no pipeline uses it).
    pub fn delete(&self, tenant: &str, name: &str) -> Result<(), RegistryError> {
        let info = self.get(tenant, name)?;
        let w = self.db.begin_write().map_err(storage)?;
        {
            let mut versions = w.open_table(VERSIONS).map_err(storage)?;
            for v in &info.versions {
                versions
                    .remove((tenant, name, v.version))
                    .map_err(storage)?;
            }
            w.open_table(ACTIVE)
                .map_err(storage)?
                .remove((tenant, name))
                .map_err(storage)?;
            w.open_table(SHADOW)
                .map_err(storage)?
                .remove((tenant, name))
                .map_err(storage)?;
            w.open_table(EVENTS)
                .map_err(storage)?
                .retain_in((tenant, name, 0)..=(tenant, name, u64::MAX), |_, _| false)
                .map_err(storage)?;
        }
        w.commit().map_err(storage)?;
        self.bump(tenant);
        Ok(())
    }

    /// The active version of `tenant`'s `name` and its bytes.
    pub fn active(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<(VersionMeta, Vec<u8>), RegistryError> {
        let version = self
            .get(tenant, name)?
            .active
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        self.version_bytes(tenant, name, version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_activation_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.redb");
        {
            let r = PluginRegistry::open(&path).unwrap();
            let g0 = r.generation("a");
            let v1 = r.add_version("a", "p", "w", "s1", b"one", 1).unwrap();
            let v2 = r.add_version("a", "p", "w", "s2", b"two", 2).unwrap();
            assert_eq!((v1.version, v2.version), (1, 2));
            assert!(r.generation("a") > g0);
            assert_eq!(r.generation("zz"), 0, "other tenants are untouched");
            assert_eq!(
                r.active("a", "p").unwrap().1,
                b"one",
                "the first version is active"
            );
            let (_, before) = r.activate("a", "p", 2, "activate", "", 5).unwrap();
            assert_eq!(before, Some(1));
            assert_eq!(r.active("a", "p").unwrap().1, b"two");
            assert!(matches!(
                r.activate("a", "p", 9, "activate", "", 6),
                Err(RegistryError::NoVersion { .. })
            ));
            r.activate("a", "p", 1, "rollback", "traps", 7).unwrap();
            r.activate("a", "p", 2, "activate", "", 8).unwrap();
            r.add_version("a", "q", "w", "s1", b"one", 3).unwrap();
            r.add_version("b", "p", "w", "s3", b"bee", 4).unwrap();
        }
        let r = PluginRegistry::open(&path).unwrap();
        let events = r.events("a", "p").unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| (e.kind.as_str(), e.from, e.to))
                .collect::<Vec<_>>(),
            vec![
                ("activate", Some(1), 2),
                ("rollback", Some(2), 1),
                ("activate", Some(1), 2)
            ]
        );
        assert!(r.events("b", "p").unwrap().is_empty());
        let list = r.list("a").unwrap();
        assert_eq!(
            list.iter()
                .map(|p| (p.name.as_str(), p.active, p.versions.len()))
                .collect::<Vec<_>>(),
            vec![("p", Some(2), 2), ("q", Some(1), 1)]
        );
        assert_eq!(r.list("b").unwrap().len(), 1, "tenants are separate");
        assert!(matches!(r.get("b", "q"), Err(RegistryError::NotFound(_))));
        r.delete("a", "p").unwrap();
        assert!(r.get("a", "p").is_err());
        assert_eq!(r.active("b", "p").unwrap().1, b"bee");
    }

    #[test]
    fn pipelines_persist_and_bump_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.redb");
        let doc = PipelineDoc {
            plugins: vec![PluginRef {
                plugin: "builtin:logfmt".into(),
                config: Some(serde_json::json!({"k": 1})),
                wasi: None,
            }],
            aggregations: vec![],
            updated_at_ms: 7,
        };
        {
            let r = PluginRegistry::open(&path).unwrap();
            assert_eq!(r.pipeline("a", "s"), None);
            let (ga, gb) = (r.generation("a"), r.generation("b"));
            r.set_pipeline("a", "s", doc.clone()).unwrap();
            assert!(r.generation("a") > ga);
            assert_eq!(r.generation("b"), gb);
            assert_eq!(r.pipeline("a", "s").as_ref(), Some(&doc));
            assert_eq!(r.pipeline("b", "s"), None, "tenants are separate");
        }
        let r = PluginRegistry::open(&path).unwrap();
        assert_eq!(r.pipelines("a"), vec![("s".to_owned(), doc)]);
        assert!(r.pipelines("b").is_empty());
    }
}
