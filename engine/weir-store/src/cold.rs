//! The cold tier: hot segments flushed to Parquet files on an object store (a local
//! directory by default), with a manifest in redb.
//!
//! Layout: `ROOT/tenant=T/table=logs|metrics/STREAM/date=YYYY-MM-DD/MINTS-PARTITION-OFFSET-UNIQUE.parquet`
//! (`STREAM` is a plain directory, not `stream=S`: hive-style readers would add a
//! `stream` partition column clashing with the files' own)
//! (zstd, dictionary encoding, page statistics, row groups of 64k rows, rows sorted by
//! stream (logs) or series (metrics) and then time, so that similar lines sit together).
//! Plain Parquet: DuckDB and pyarrow read the files without Weir.
//!
//! redb table `cold_files`: file path → JSON [`ColdFile`] (tenant, table, time range,
//! rows, and the `(partition, offset)` of every segment it holds).
//!
//! redb table `cold_pending`: path → when (ms) — the files this server wrote or means
//! to delete that no manifest entry names: an upload is recorded there in a committed
//! transaction *before* it starts, and leaves it in the manifest transaction that names
//! the file; a file a rewrite replaces enters it in that same transaction and leaves it
//! once deleted. The startup sweep deletes only the paths it lists (and a local store's
//! half-written `NAME.parquet#N` of those paths): never a file another server, an older
//! copy of `store.redb` or anything else put under the prefix.
//!
//! A flush is atomic: (1) the file is recorded as pending, then written in full
//! (object-store `put`); (2) one redb transaction adds its manifest entry, deletes its
//! segments from `segments` and quarantines the rows that could not be written; (3) in
//! memory, under the one lock queries read, the hot rows go and the file comes. A crash
//! before (2) leaves a pending file no manifest names — deleted at the next start — and
//! the rows still hot; after (2) the rows are cold. No moment shows them twice or not at
//! all. Segments an aggregator has not checkpointed past stay hot (it may re-read them).
//!
//! Failure isolation: a row that cannot be encoded (a record serde_json cannot read
//! back, a sample with no rollup window, anything that fails or panics while encoding)
//! is found — by the known checks of each table, then by halving the rows — and
//! quarantined (see [`crate::quarantine`]); the other rows of its file are written on
//! the same pass, and other files are never held up by it. Only a failure of the object
//! store or of redb stops a pass (rows then stay hot and are retried).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{concat_batches, lexsort_to_indices, take, SortColumn};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::hot::{storage_err, Held, HotStore, StoreError, Table};
use crate::shred::ShredColumn;

pub(crate) const COLD_FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("cold_files");
/// Files this server wrote (or is to delete) that no manifest entry names: path → ms.
pub(crate) const COLD_PENDING: TableDefinition<&str, i64> = TableDefinition::new("cold_pending");

/// Tenant, table and stream: what one cold file holds rows of.
type FlushKey = (String, Table, String);

/// A hot segment: partition, offset, rows.
type HeldSegment = (u32, u64, RecordBatch);

/// Hot segments chosen for a flush, per tenant, table and stream.
type Chosen = std::collections::BTreeMap<FlushKey, Vec<HeldSegment>>;

/// One table's hot batches and cold files (URL and manifest entry).
pub type Tiers = (Vec<RecordBatch>, Vec<(String, Arc<ColdFile>)>);

/// Most rows a flush puts in one file.
pub const MAX_FILE_ROWS: usize = 1 << 20;

/// Rows per Parquet row group.
const ROW_GROUP: usize = 64 * 1024;

/// One Parquet file of the cold tier, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdFile {
    /// Path below the cold root.
    pub path: String,
    pub tenant: String,
    pub table: String,
    /// The stream its rows belong to (None: a file of the first layout, which mixed a
    /// tenant's streams).
    #[serde(default)]
    pub stream: Option<String>,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
    pub bytes: u64,
    /// The hot segments it replaced.
    pub segments: Vec<(u32, u64)>,
    /// `logs` files: the shredded columns (see [`crate::shred`]). None: a file of the
    /// first layout, which kept each record's JSON text in a `record` column.
    #[serde(default)]
    pub columns: Option<Vec<ShredColumn>>,
}

/// Where cold files live, and when small ones are compacted.
pub(crate) struct Cold {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// `s3://bucket` or `file://`: the object store's URL in query sessions.
    base: ObjectStoreUrl,
    /// Where below the store's root the files are.
    prefix: ObjectPath,
    /// The directory, for a local store (where a crash mid-upload can leave a staging
    /// file `NAME.parquet#N` that the store's listing does not show).
    dir: Option<PathBuf>,
    pub(crate) options: ColdOptions,
}

/// Where the cold tier keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColdLocation {
    /// A local directory (created if missing).
    Dir(PathBuf),
    /// An S3-compatible bucket and prefix, `s3://BUCKET/PREFIX`, with settings
    /// (`endpoint`, `region`, `access_key_id`, `secret_access_key`, `allow_http`, ... —
    /// the `object_store` crate's S3 keys) on top of the `AWS_*` environment variables.
    Url {
        url: String,
        options: Vec<(String, String)>,
    },
}

/// Compaction settings of the cold tier.
#[derive(Debug, Clone)]
pub struct ColdOptions {
    /// Files smaller than this are merged...
    pub small_bytes: u64,
    /// ...once at least this many of one tenant, table, stream and day exist.
    pub compact_min_files: usize,
    /// Resolutions (seconds) of the metric rollups written with each metrics flush.
    pub rollups: Vec<u32>,
}

impl Default for ColdOptions {
    fn default() -> Self {
        ColdOptions {
            small_bytes: 64 << 20,
            compact_min_files: 8,
            rollups: vec![60, 3600],
        }
    }
}

/// What one flush did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushStats {
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Rows quarantined, per tenant (they could not be written).
    pub quarantined: std::collections::BTreeMap<String, u64>,
}

/// Rows one flush unit could not write, each with the reason.
type BadRows = Vec<(RecordBatch, String)>;

/// A file encoded and not yet uploaded: its manifest entry and bytes.
type Encoded = (ColdFile, Vec<u8>);

/// `logs`, `metrics`, `metrics_1m`...: a table's name in SQL, paths and the manifest.
pub fn table_name(t: Table) -> String {
    match t {
        Table::Logs => "logs".into(),
        Table::Metrics => "metrics".into(),
        Table::Rollup(secs) => format!("metrics_{}", crate::rollups::resolution_name(secs)),
    }
}

pub(crate) fn table_of(name: &str) -> Table {
    match name {
        "metrics" => Table::Metrics,
        n => match n.strip_prefix("metrics_") {
            Some(res) => Table::Rollup(
                weir_core::retention::parse_duration_ms(res).map_or(0, |ms| (ms / 1000) as u32),
            ),
            None => Table::Logs,
        },
    }
}

/// Sort rows so that similar lines sit together: by stream (logs) or series
/// (metrics), then time.
fn sorted(batch: &RecordBatch, table: Table) -> Result<RecordBatch, StoreError> {
    let key = match table {
        Table::Logs => "stream",
        Table::Metrics | Table::Rollup(_) => "series",
    };
    let cols = [key, "ts"]
        .iter()
        .map(|c| {
            Ok(SortColumn {
                values: batch
                    .column_by_name(c)
                    .ok_or_else(|| storage_err(format!("rows without {c}")))?
                    .clone(),
                options: None,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let idx = lexsort_to_indices(&cols, None).map_err(storage_err)?;
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<Result<_, _>>()
        .map_err(storage_err)?;
    RecordBatch::try_new(batch.schema(), columns).map_err(storage_err)
}

/// Encode rows as one Parquet file.
pub(crate) fn parquet_bytes(batch: &RecordBatch) -> Result<Vec<u8>, StoreError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_dictionary_enabled(true)
        .set_max_row_group_row_count(Some(ROW_GROUP));
    // Integers that mostly grow (times, offsets, sequence numbers) delta-encode far
    // smaller than through a dictionary.
    let mut props = props;
    // So do metric values as scaled integers sorted by series (`value_int`).
    for c in ["ts", "offset", "seq", "value_int"] {
        let c = datafusion::parquet::schema::types::ColumnPath::from(c);
        props = props
            .set_column_dictionary_enabled(c.clone(), false)
            .set_column_encoding(c, datafusion::parquet::basic::Encoding::DELTA_BINARY_PACKED);
    }
    let props = props.build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).map_err(storage_err)?;
    w.write(batch).map_err(storage_err)?;
    w.close().map_err(storage_err)?;
    Ok(out)
}

pub(crate) fn date_of(ms: i64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Cold {
    pub(crate) fn open(location: &ColdLocation, options: ColdOptions) -> Result<Cold, StoreError> {
        let bad = |why: String| StoreError::Config(format!("cold tier location: {why}"));
        match location {
            ColdLocation::Dir(root) => {
                std::fs::create_dir_all(root).map_err(storage_err)?;
                let root = std::fs::canonicalize(root).map_err(storage_err)?;
                let prefix =
                    ObjectPath::from_absolute_path(&root).map_err(|e| bad(e.to_string()))?;
                Ok(Cold {
                    store: Arc::new(LocalFileSystem::new()),
                    base: ObjectStoreUrl::local_filesystem(),
                    prefix,
                    dir: Some(root),
                    options,
                })
            }
            ColdLocation::Url {
                url,
                options: settings,
            } => {
                let parsed = url::Url::parse(url).map_err(|e| bad(format!("{url}: {e}")))?;
                match parsed.scheme() {
                    "file" => {
                        let dir = parsed
                            .to_file_path()
                            .map_err(|()| bad(format!("{url}: not a local path")))?;
                        Cold::open(&ColdLocation::Dir(dir), options)
                    }
                    "s3" => {
                        let bucket = parsed
                            .host_str()
                            .filter(|b| !b.is_empty())
                            .ok_or_else(|| bad(format!("{url}: no bucket")))?;
                        let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
                        for (k, v) in settings {
                            let key = k
                                .parse::<AmazonS3ConfigKey>()
                                .map_err(|_| bad(format!("unknown S3 setting `{k}`")))?;
                            builder = builder.with_config(key, v);
                        }
                        let store = builder.build().map_err(|e| bad(e.to_string()))?;
                        let prefix = ObjectPath::from_url_path(parsed.path())
                            .map_err(|e| bad(format!("{url}: {e}")))?;
                        let base = ObjectStoreUrl::parse(format!("s3://{bucket}"))
                            .map_err(|e| bad(e.to_string()))?;
                        Ok(Cold {
                            store: Arc::new(store),
                            base,
                            prefix,
                            dir: None,
                            options,
                        })
                    }
                    other => Err(bad(format!(
                        "{url}: scheme `{other}` is not supported (a directory, file:// or s3://)"
                    ))),
                }
            }
        }
    }

    /// The object a manifest path (relative to the cold root) names.
    pub(crate) fn object(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// The URL query sessions read a manifest path's file by.
    pub(crate) fn url(&self, rel: &str) -> String {
        format!("{}{}", self.base.as_str(), self.object(rel))
    }

    /// Let `ctx` read the cold files.
    pub(crate) fn register(&self, ctx: &datafusion::prelude::SessionContext) {
        ctx.register_object_store(self.base.as_ref(), self.store.clone());
    }

    /// Encode hot-layout `rows` of one tenant, table and stream as a new file (sorted,
    /// `logs` shredded): its manifest entry (not yet committed) and bytes. The name is
    /// new, so a crash before the commit never touches an existing file. CPU only.
    pub(crate) fn encode_file(
        &self,
        tenant: &str,
        table: Table,
        stream: &str,
        rows: &RecordBatch,
        segments: Vec<(u32, u64)>,
    ) -> Result<Encoded, StoreError> {
        let all = sorted(rows, table)?;
        let (all, columns) = match table {
            Table::Logs => {
                let (b, c) = crate::shred::shred(&all)?;
                (b, Some(c))
            }
            Table::Metrics => (crate::metric_rows::cold_metrics(&all), None),
            Table::Rollup(_) => (all, None),
        };
        let ts = all
            .column_by_name("ts")
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            .ok_or_else(|| storage_err("rows without ts"))?;
        let (min_ts, max_ts) = (
            ts.values().iter().copied().min().unwrap_or(0),
            ts.values().iter().copied().max().unwrap_or(0),
        );
        let bytes = parquet_bytes(&all)?;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            .wrapping_add(SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let (p0, o0) = segments.first().copied().unwrap_or_default();
        let path = format!(
            "tenant={tenant}/table={}/{stream}/date={}/{min_ts}-{p0}-{o0}-{unique:x}-{:08x}.parquet",
            table_name(table),
            date_of(min_ts),
            instance_id()
        );
        let file = ColdFile {
            path,
            tenant: tenant.to_owned(),
            table: table_name(table),
            stream: Some(stream.to_owned()),
            min_ts,
            max_ts,
            rows: all.num_rows() as u64,
            bytes: bytes.len() as u64,
            segments,
            columns,
        };
        Ok((file, bytes))
    }

    /// The files of one flush unit: `rows`' file and, for `metrics`, the rollups of
    /// exactly these samples. A panic while encoding is an error of these rows.
    fn encode_unit(
        &self,
        tenant: &str,
        table: Table,
        stream: &str,
        pieces: &[RecordBatch],
    ) -> Result<Vec<Encoded>, String> {
        let run = || -> Result<Vec<Encoded>, String> {
            #[cfg(test)]
            test_hooks::maybe_panic(pieces);
            let schema = pieces.first().ok_or("no rows")?.schema();
            let rows = concat_batches(&schema, pieces).map_err(|e| e.to_string())?;
            let segments = segments_of(&rows);
            let mut out = vec![self
                .encode_file(tenant, table, stream, &rows, segments.clone())
                .map_err(|e| e.to_string())?];
            if table == Table::Metrics {
                for &secs in &self.options.rollups {
                    let r = crate::rollups::rollup_rows(&rows, secs)?;
                    out.push(
                        self.encode_file(tenant, Table::Rollup(secs), stream, &r, segments.clone())
                            .map_err(|e| e.to_string())?,
                    );
                }
            }
            Ok(out)
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(p) => Err(format!(
                "encoding panicked: {}",
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default()
            )),
        }
    }

    /// Encode the rows of `pieces` as files, setting aside the rows that cannot be:
    /// first the rows each table's checks know to be unwritable, then, if encoding
    /// still fails, by halving until each failing part is one row. The rows that encode
    /// go to as few files as they can (one, unless only smaller parts encode).
    pub(crate) fn encode_isolating(
        &self,
        tenant: &str,
        table: Table,
        stream: &str,
        pieces: Vec<RecordBatch>,
    ) -> (Vec<Vec<Encoded>>, BadRows) {
        let pieces: Vec<RecordBatch> = pieces.into_iter().filter(|b| b.num_rows() > 0).collect();
        if pieces.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let first_error = match self.encode_unit(tenant, table, stream, &pieces) {
            Ok(u) => return (vec![u], Vec::new()),
            Err(e) => e,
        };
        tracing::warn!(%tenant, %stream, error = %first_error, "a cold file cannot be written as it is: isolating the rows that fail");
        // Known unwritable rows, piece by piece.
        let mut bad: BadRows = Vec::new();
        let mut kept = Vec::with_capacity(pieces.len());
        for b in pieces {
            let known = self.known_bad_rows(table, &b);
            if known.is_empty() {
                kept.push(b);
                continue;
            }
            let mut mask = vec![true; b.num_rows()];
            for (i, why) in known {
                if let Some(m) = mask.get_mut(i) {
                    if *m {
                        *m = false;
                        bad.push((b.slice(i, 1), why));
                    }
                }
            }
            let keep = datafusion::arrow::array::BooleanArray::from(mask);
            match datafusion::arrow::compute::filter_record_batch(&b, &keep) {
                Ok(k) if k.num_rows() > 0 => kept.push(k),
                Ok(_) => {}
                Err(e) => bad.push((b, e.to_string())),
            }
        }
        if kept.is_empty() {
            return (Vec::new(), bad);
        }
        if !bad.is_empty() {
            if let Ok(u) = self.encode_unit(tenant, table, stream, &kept) {
                return (vec![u], bad);
            }
        }
        // Anything else: halve until the failing parts are single rows.
        let mut units: Vec<(Vec<RecordBatch>, Vec<Encoded>)> = Vec::new();
        self.bisect(tenant, table, stream, kept, &mut units, &mut bad);
        if units.len() > 1 {
            let good: Vec<RecordBatch> = units.iter().flat_map(|(p, _)| p.clone()).collect();
            if let Ok(u) = self.encode_unit(tenant, table, stream, &good) {
                return (vec![u], bad);
            }
        }
        (units.into_iter().map(|(_, u)| u).collect(), bad)
    }

    fn bisect(
        &self,
        tenant: &str,
        table: Table,
        stream: &str,
        pieces: Vec<RecordBatch>,
        units: &mut Vec<(Vec<RecordBatch>, Vec<Encoded>)>,
        bad: &mut BadRows,
    ) {
        let rows: usize = pieces.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return;
        }
        let err = match self.encode_unit(tenant, table, stream, &pieces) {
            Ok(u) => return units.push((pieces, u)),
            Err(e) => e,
        };
        if rows == 1 {
            let row = pieces.into_iter().find(|b| b.num_rows() == 1);
            bad.extend(row.map(|r| (r, err)));
            return;
        }
        let (left, right) = if pieces.len() > 1 {
            let mut left = pieces;
            let right = left.split_off(left.len() / 2);
            (left, right)
        } else {
            let b = &pieces[0];
            let half = b.num_rows() / 2;
            (
                vec![b.slice(0, half)],
                vec![b.slice(half, b.num_rows() - half)],
            )
        };
        self.bisect(tenant, table, stream, left, units, bad);
        self.bisect(tenant, table, stream, right, units, bad);
    }

    /// Rows of hot-layout `rows` that each table's own checks know cannot be written.
    fn known_bad_rows(&self, table: Table, rows: &RecordBatch) -> Vec<(usize, String)> {
        match table {
            Table::Logs => crate::shred::unshreddable_rows(rows),
            Table::Metrics => {
                let mut out: Vec<(usize, String)> = Vec::new();
                for &secs in &self.options.rollups {
                    out.extend(crate::rollups::unrollable_rows(rows, secs));
                }
                out.sort_by_key(|(i, _)| *i);
                out.dedup_by_key(|(i, _)| *i);
                out
            }
            Table::Rollup(_) => Vec::new(),
        }
    }
}

/// Distinct `(partition, offset)` of rows, in order.
pub(crate) fn segments_of(rows: &RecordBatch) -> Vec<(u32, u64)> {
    use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
    let (Some(p), Some(o)) = (
        rows.column_by_name("partition")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>()),
        rows.column_by_name("offset")
            .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
    ) else {
        return Vec::new();
    };
    let set: std::collections::BTreeSet<(u32, u64)> = p
        .values()
        .iter()
        .copied()
        .zip(o.values().iter().copied())
        .collect();
    set.into_iter().collect()
}

/// A random number per process: part of every file name, so two servers writing under
/// one prefix never pick the same name.
fn instance_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() as u32
    })
}

impl HotStore {
    /// Keep a cold tier in the directory `root` (see [`HotStore::with_cold_at`]).
    pub fn with_cold(self, root: &Path) -> Result<HotStore, StoreError> {
        self.with_cold_options(root, ColdOptions::default())
    }

    /// [`HotStore::with_cold`] with compaction settings.
    pub fn with_cold_options(
        self,
        root: &Path,
        options: ColdOptions,
    ) -> Result<HotStore, StoreError> {
        self.with_cold_at(&ColdLocation::Dir(root.to_owned()), options)
    }

    /// Keep a cold tier at `location` and read its manifest. Call
    /// [`HotStore::sweep_cold_orphans`] before the first flush.
    pub fn with_cold_at(
        mut self,
        location: &ColdLocation,
        options: ColdOptions,
    ) -> Result<HotStore, StoreError> {
        let cold = Cold::open(location, options)?;
        let mut files = Vec::new();
        {
            let w = self.db.begin_write().map_err(storage_err)?;
            w.open_table(COLD_FILES).map_err(storage_err)?;
            w.open_table(COLD_PENDING).map_err(storage_err)?;
            w.commit().map_err(storage_err)?;
            let r = self.db.begin_read().map_err(storage_err)?;
            let t = r.open_table(COLD_FILES).map_err(storage_err)?;
            for row in t.iter().map_err(storage_err)? {
                let (k, v) = row.map_err(storage_err)?;
                match serde_json::from_slice::<ColdFile>(v.value()) {
                    Ok(f) => files.push(f),
                    // One unreadable entry hides one file, not the tier.
                    Err(e) => tracing::error!(file = %k.value(), error = %e,
                        "a cold manifest entry does not decode; its file is not read"),
                }
            }
        }
        {
            let mut mem = self.mem.write();
            for f in files {
                mem.cold
                    .entry((f.tenant.clone(), table_of(&f.table)))
                    .or_default()
                    .push(Arc::new(f));
            }
        }
        self.cold = Some(cold);
        Ok(self)
    }

    /// Delete the cold files this server wrote or was deleting and no manifest entry
    /// names — an upload that stopped before its commit, or a replaced file a crash left
    /// before its deletion — as `cold_pending` lists them, and a local store's
    /// half-written `NAME.parquet#N` of those names. Nothing else under the prefix is
    /// ever deleted: not another server's files, nor files an older `store.redb` does
    /// not know. Safe at any time: files this process is uploading or a query may still
    /// read are left.
    pub async fn sweep_cold_orphans(&self) -> Result<usize, StoreError> {
        let r = self.try_sweep().await;
        if r.is_err() {
            // Unreachable or misconfigured: no flush runs until a sweep succeeds.
            self.cold_failing
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    async fn try_sweep(&self) -> Result<usize, StoreError> {
        let Some(cold) = &self.cold else {
            return Ok(0);
        };
        // The store answers (its first listing entry, if any): a tier that cannot be
        // reached or is misconfigured fails here, before any flush, not mid-flush.
        // Nothing listed is ever deleted.
        let prefix = Some(&cold.prefix).filter(|p| !p.as_ref().is_empty());
        if let Some(Err(e)) = futures::StreamExt::next(&mut cold.store.list(prefix)).await {
            return Err(storage_err(e));
        }
        let pending: Vec<String> = {
            let r = self.db.begin_read().map_err(storage_err)?;
            let t = r.open_table(COLD_PENDING).map_err(storage_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(storage_err)? {
                out.push(row.map_err(storage_err)?.0.value().to_owned());
            }
            out
        };
        let (named, busy): (
            std::collections::HashSet<String>,
            std::collections::HashSet<String>,
        ) = {
            let mem = self.mem.read();
            let named = mem
                .cold
                .values()
                .flatten()
                .map(|f| f.path.clone())
                .collect();
            let mut busy: std::collections::HashSet<String> = self.uploading.lock().clone();
            busy.extend(self.retired.lock().iter().map(|f| f.path.clone()));
            (named, busy)
        };
        let mut removed = 0;
        let mut done = Vec::new();
        for path in pending {
            if busy.contains(&path) {
                continue;
            }
            if named.contains(&path) {
                // Named after all (not expected): the manifest owns it.
                done.push(path);
                continue;
            }
            // A local store's staging files of this name (`NAME#N`, renamed into place
            // when complete).
            if let Some(dir) = &cold.dir {
                let full = dir.join(&path);
                if let (Some(parent), Some(name)) = (full.parent(), full.file_name()) {
                    let stem = format!("{}#", name.to_string_lossy());
                    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                        let n = e.file_name().to_string_lossy().into_owned();
                        if n.strip_prefix(&stem)
                            .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                        {
                            tracing::warn!(file = %e.path().display(), "removing a half-written cold file of ours");
                            std::fs::remove_file(e.path()).map_err(storage_err)?;
                            removed += 1;
                        }
                    }
                }
            }
            match cold.store.delete(&cold.object(&path)).await {
                Ok(()) => {
                    tracing::warn!(file = %path, "removed a cold file of ours no manifest names (a flush or compaction stopped before its commit, or after it and before removing the files it replaced)");
                    removed += 1;
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_err(e)),
            }
            done.push(path);
        }
        self.forget_pending(&done)?;
        Ok(removed)
    }

    /// Take `paths` out of `cold_pending` (deleted, or named).
    pub(crate) fn forget_pending(&self, paths: &[String]) -> Result<(), StoreError> {
        if paths.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(storage_err)?;
        {
            let mut t = w.open_table(COLD_PENDING).map_err(storage_err)?;
            for p in paths {
                t.remove(p.as_str()).map_err(storage_err)?;
            }
        }
        w.commit().map_err(storage_err)
    }

    /// Upload an encoded file: first recorded in `cold_pending` (committed), so that a
    /// crash from here on leaves a file the next start knows to be ours. A failed upload
    /// is removed at once where it can be (else by the next start's sweep).
    pub(crate) async fn upload(
        &self,
        cold: &Cold,
        (file, bytes): &Encoded,
    ) -> Result<(), StoreError> {
        {
            let w = self.db.begin_write().map_err(storage_err)?;
            w.open_table(COLD_PENDING)
                .map_err(storage_err)?
                .insert(file.path.as_str(), crate::query::now_ms())
                .map_err(storage_err)?;
            w.commit().map_err(storage_err)?;
        }
        self.uploading.lock().insert(file.path.clone());
        let r = cold
            .store
            .put(&cold.object(&file.path), PutPayload::from(bytes.clone()))
            .await;
        if let Err(e) = r {
            let object = cold.object(&file.path);
            if matches!(
                cold.store.delete(&object).await,
                Ok(()) | Err(object_store::Error::NotFound { .. })
            ) {
                let _ = self.forget_pending(std::slice::from_ref(&file.path));
            }
            self.uploading.lock().remove(&file.path);
            return Err(storage_err(e));
        }
        Ok(())
    }

    /// Encode and upload hot-layout `rows` as one new file (compaction's rewrites).
    pub(crate) async fn write_file(
        &self,
        tenant: &str,
        table: Table,
        stream: &str,
        rows: &RecordBatch,
        segments: Vec<(u32, u64)>,
    ) -> Result<ColdFile, StoreError> {
        let Some(cold) = &self.cold else {
            return Err(StoreError::Config("no cold tier".into()));
        };
        let encoded = cold.encode_file(tenant, table, stream, rows, segments)?;
        self.upload(cold, &encoded).await?;
        Ok(encoded.0)
    }

    /// Resolutions (seconds) of the metric rollup tables.
    pub fn rollup_resolutions(&self) -> Vec<u32> {
        match &self.cold {
            Some(c) => c.options.rollups.clone(),
            None => ColdOptions::default().rollups,
        }
    }

    /// [`HotStore::tiers`] of several tables, all under one lock.
    pub fn snapshot(&self, tenant: &str, tables: &[Table]) -> Vec<Tiers> {
        let mem = self.mem.read();
        tables
            .iter()
            .map(|t| {
                let key = (tenant.to_owned(), *t);
                let hot = mem
                    .tenants
                    .get(&key)
                    .map(|v| v.iter().map(|(_, _, b)| b.clone()).collect())
                    .unwrap_or_default();
                let cold = match &self.cold {
                    Some(c) => mem
                        .cold
                        .get(&key)
                        .map(|v| v.iter().map(|f| (c.url(&f.path), f.clone())).collect())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                (hot, cold)
            })
            .collect()
    }

    /// The hot batches of `tenant`'s `table` and its cold files (full path and manifest
    /// entry), as one consistent view (never a row in both).
    pub fn tiers(&self, tenant: &str, table: Table) -> Tiers {
        self.snapshot(tenant, &[table]).remove(0)
    }

    /// Flush every hot segment committed more than `older_than` ago (and, over the
    /// memory bound, the oldest ones) to Parquet, one file per tenant, table and stream.
    pub async fn flush_cold(&self, older_than: Duration) -> Result<FlushStats, StoreError> {
        let now = Instant::now();
        self.flush_where(|h| now.duration_since(h.at) >= older_than)
            .await
    }

    /// Move the hot segments their stream's retention says are due out of the hot tier:
    /// older than its hot age, over its hot bytes or over the memory bound. With a cold
    /// tier they are flushed to Parquet; without one, deleted.
    pub async fn flush_due(&self) -> Result<FlushStats, StoreError> {
        let now = Instant::now();
        let ages: HashMap<(String, String), Option<u64>> = self
            .held_streams()
            .into_iter()
            .map(|(t, s)| {
                let e = self.effective_retention(&t, &s);
                ((t, s), e.hot_ms)
            })
            .collect();
        let due = |h: &Held| {
            ages.get(&(h.tenant.clone(), h.stream.clone()))
                .copied()
                .flatten()
                .is_some_and(|ms| now.duration_since(h.at) >= Duration::from_millis(ms))
        };
        self.flush_where(due).await
    }

    /// Flush (or, without a cold tier, delete) the segments `due` picks, plus those
    /// over the memory bound or over their stream's hot bytes, oldest first. Segments an
    /// aggregator has not checkpointed past stay hot (it may re-read them).
    async fn flush_where(&self, due: impl Fn(&Held) -> bool) -> Result<FlushStats, StoreError> {
        let r = self.try_flush(due).await;
        self.cold_failing
            .store(r.is_err(), std::sync::atomic::Ordering::Relaxed);
        r
    }

    async fn try_flush(&self, due: impl Fn(&Held) -> bool) -> Result<FlushStats, StoreError> {
        let picked = self.pick_due(due);
        let Some(cold) = &self.cold else {
            let rows: u64 = picked.iter().map(|(_, _, r)| *r as u64).sum();
            let chosen: std::collections::HashSet<(u32, u64)> =
                picked.iter().map(|(p, o, _)| (*p, *o)).collect();
            self.evict(|h| chosen.contains(&(h.partition, h.offset)))?;
            return Ok(FlushStats {
                rows,
                ..FlushStats::default()
            });
        };
        let chosen: Chosen = {
            let mem = self.mem.read();
            let wanted: std::collections::HashSet<(u32, u64)> =
                picked.iter().map(|(p, o, _)| (*p, *o)).collect();
            let mut batches: HashMap<(u32, u64), &RecordBatch> = HashMap::new();
            for list in mem.tenants.values() {
                for (p, o, b) in list {
                    if wanted.contains(&(*p, *o)) {
                        batches.insert((*p, *o), b);
                    }
                }
            }
            let mut by = Chosen::new();
            for h in &mem.order {
                if let Some(b) = batches.get(&(h.partition, h.offset)) {
                    by.entry((h.tenant.clone(), h.table, h.stream.clone()))
                        .or_default()
                        .push((h.partition, h.offset, (*b).clone()));
                }
            }
            by
        };
        // At most MAX_FILE_ROWS rows per file (whole segments): bounded memory per flush
        // and files a time range can prune.
        let mut files: Vec<(FlushKey, Vec<HeldSegment>)> = Vec::new();
        for (key, segs) in chosen {
            let mut part: Vec<HeldSegment> = Vec::new();
            let mut rows = 0;
            for seg in segs {
                if rows > 0 && rows + seg.2.num_rows() > MAX_FILE_ROWS {
                    files.push((key.clone(), std::mem::take(&mut part)));
                    rows = 0;
                }
                rows += seg.2.num_rows();
                part.push(seg);
            }
            files.push((key, part));
        }
        let mut stats = FlushStats::default();
        for ((tenant, table, stream), segs) in files {
            let segments: Vec<(u32, u64)> = segs.iter().map(|(p, o, _)| (*p, *o)).collect();
            let pieces: Vec<RecordBatch> = segs.into_iter().map(|(_, _, b)| b).collect();
            // Rows that cannot be written are set aside here, never failing the pass.
            let (units, bad) = cold.encode_isolating(&tenant, table, &stream, pieces);
            let quarantined =
                crate::quarantine::entries(&tenant, &stream, table, &bad, crate::query::now_ms());
            let mut added: Vec<ColdFile> = Vec::new();
            for unit in &units {
                for encoded in unit {
                    self.upload(cold, encoded).await?;
                    added.push(encoded.0.clone());
                }
            }
            fault_point(
                "WEIR_FAULT_COLD_AFTER_PUT",
                "between the cold file and its commit",
            );
            let refs: Vec<&ColdFile> = added.iter().collect();
            self.commit_cold(&refs, &[], &segments, &quarantined)?;
            {
                let mut mem = self.mem.write();
                mem.remove_segments(&tenant, table, &segments);
                for f in &added {
                    mem.cold
                        .entry((tenant.clone(), table_of(&f.table)))
                        .or_default()
                        .push(Arc::new(f.clone()));
                }
            }
            for f in added.iter().filter(|f| table_of(&f.table) == table) {
                stats.files += 1;
                stats.rows += f.rows;
                stats.bytes += f.bytes;
            }
            let q: u64 = quarantined.iter().map(|q| u64::from(q.rows)).sum();
            if q > 0 {
                tracing::warn!(%tenant, %stream, rows = q, error = %quarantined[0].error,
                    "rows the cold tier cannot take were quarantined");
                *stats.quarantined.entry(tenant.clone()).or_default() += q;
            }
        }
        Ok(stats)
    }

    /// `(partition, offset, rows)` of the held segments to move out, oldest first.
    fn pick_due(&self, due: impl Fn(&Held) -> bool) -> Vec<(u32, u64, usize)> {
        let mem = self.mem.read();
        let agg = self.agg_positions.lock();
        // Over the memory bound, the oldest segments go whatever their age; over a
        // stream's hot bytes, that stream's oldest.
        let mut excess = mem.bytes.saturating_sub(self.max_bytes);
        let mut per_stream: HashMap<(&str, &str), usize> = HashMap::new();
        for h in &mem.order {
            *per_stream.entry((&h.tenant, &h.stream)).or_default() += h.bytes;
        }
        let mut stream_excess: HashMap<(&str, &str), usize> = per_stream
            .into_iter()
            .filter_map(|((t, s), bytes)| {
                let limit = self.effective_retention(t, s).hot_bytes?;
                let over = bytes.saturating_sub(limit as usize);
                (over > 0).then_some(((t, s), over))
            })
            .collect();
        let mut out = Vec::new();
        for h in &mem.order {
            let sx = stream_excess.get_mut(&(h.tenant.as_str(), h.stream.as_str()));
            let over_stream = sx.as_ref().is_some_and(|x| **x > 0);
            if !(excess > 0 || over_stream || due(h)) {
                continue;
            }
            excess = excess.saturating_sub(h.bytes);
            if let Some(x) = sx {
                *x = x.saturating_sub(h.bytes);
            }
            if agg.get(&h.partition).is_some_and(|a| h.offset >= *a) {
                continue;
            }
            out.push((h.partition, h.offset, h.rows));
        }
        out
    }
}

impl HotStore {
    /// One redb transaction: manifest entries of `added` files in, those of `removed`
    /// paths out, and the hot `segments` the added files now hold deleted. The commit
    /// point of every flush and rewrite.
    pub(crate) fn commit_manifest(
        &self,
        added: &[&ColdFile],
        removed: &[&str],
        segments: &[(u32, u64)],
    ) -> Result<(), StoreError> {
        self.commit_cold(added, removed, segments, &[])
    }

    /// [`HotStore::commit_manifest`], quarantining rows of those segments in the same
    /// transaction. The added files leave `cold_pending` (the manifest names them now),
    /// the removed ones enter it (ours to delete, until deleted).
    pub(crate) fn commit_cold(
        &self,
        added: &[&ColdFile],
        removed: &[&str],
        segments: &[(u32, u64)],
        quarantined: &[crate::quarantine::Quarantined],
    ) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(storage_err)?;
        let mut delta = crate::letters::Delta::default();
        {
            let now = crate::query::now_ms();
            let mut m = w.open_table(COLD_FILES).map_err(storage_err)?;
            let mut pending = w.open_table(COLD_PENDING).map_err(storage_err)?;
            for path in removed {
                m.remove(*path).map_err(storage_err)?;
                pending.insert(*path, now).map_err(storage_err)?;
            }
            for f in added {
                let json = serde_json::to_vec(f).map_err(storage_err)?;
                m.insert(f.path.as_str(), json.as_slice())
                    .map_err(storage_err)?;
                pending.remove(f.path.as_str()).map_err(storage_err)?;
            }
            let mut s = w.open_table(crate::hot::SEGMENTS).map_err(storage_err)?;
            for (p, o) in segments {
                s.remove((*p, *o)).map_err(storage_err)?;
            }
        }
        for q in quarantined {
            let json = serde_json::to_vec(q).map_err(storage_err)?;
            crate::letters::put(
                &w,
                &mut delta,
                crate::letters::Kind::Quarantine,
                (q.partition, q.offset),
                &json,
            )?;
        }
        if !quarantined.is_empty() {
            self.cap_letters(&w, &mut delta)?;
        }
        w.commit().map_err(storage_err)?;
        self.letters_committed(delta);
        let mut uploading = self.uploading.lock();
        for f in added {
            uploading.remove(&f.path);
        }
        Ok(())
    }

    /// Put a manifest entry and delete its segments, as a flush commits them.
    #[cfg(test)]
    pub(crate) fn put_cold_file_for_test(&self, file: &ColdFile) {
        self.commit_manifest(&[file], &[], &file.segments).unwrap();
    }
}

/// Every file below `dir` (tests).
#[cfg(test)]
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod test_hooks {
    use datafusion::arrow::array::{AsArray, RecordBatch};

    /// Encoding panics on a `logs` row whose message is `PANIC-IN-ENCODER`: a failure
    /// no check knows, for the isolation tests.
    pub(super) fn maybe_panic(pieces: &[RecordBatch]) {
        let hit = pieces.iter().any(|b| {
            b.column_by_name("message")
                .and_then(|c| c.as_string_opt::<i32>())
                .is_some_and(|m| m.iter().any(|v| v == Some("PANIC-IN-ENCODER")))
        });
        if hit {
            panic!("injected");
        }
    }
}

/// With environment variable `var` set, abort the process here (crash tests).
pub(crate) fn fault_point(var: &str, where_: &str) {
    if std::env::var_os(var).is_some() {
        tracing::error!("fault injection ({var}): stopping {where_}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str, options: &[(&str, &str)]) -> ColdLocation {
        ColdLocation::Url {
            url: u.into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn parquet(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = walk(&dir.join("cold"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        v.sort();
        v
    }

    fn records(n: i64) -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| serde_json::json!({"ts": 1_900_000_000_000i64 + i, "message": "m"}))
            .collect()
    }

    /// Record `path` as an upload of ours that never committed (what a crash between
    /// the upload and its commit leaves).
    fn pending(s: &HotStore, path: &str) {
        let w = s.db.begin_write().unwrap();
        w.open_table(COLD_PENDING).unwrap().insert(path, 1).unwrap();
        w.commit().unwrap();
    }

    /// The sweep deletes our own uploads that never committed (and their half-written
    /// staging files), and nothing else: a foreign `.parquet` under the prefix, a
    /// foreign staging file, every file the manifest names.
    #[tokio::test]
    async fn the_sweep_deletes_only_our_uncommitted_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_cold(dir.path());
        crate::test_util::commit_records(&s, "app", 0, 0, &records(10));
        s.flush_cold(Duration::ZERO).await.unwrap();
        let named = parquet(dir.path());
        assert_eq!(named.len(), 1);
        let day = named[0].parent().unwrap().to_owned();
        let rel = |p: &Path| {
            p.strip_prefix(std::fs::canonicalize(dir.path().join("cold")).unwrap())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        // Ours: an upload recorded as pending, complete or half-written.
        let ours = day.join("1-0-0-ours.parquet");
        std::fs::write(&ours, b"PAR1").unwrap();
        pending(&s, &rel(&ours));
        let half = day.join("1-0-0-half.parquet");
        std::fs::write(day.join("1-0-0-half.parquet#3"), b"PAR1").unwrap();
        pending(&s, &rel(&half));
        // Not ours: another server's file and staging file, a file at the root.
        let foreign = [
            day.join("1-0-0-other-server.parquet"),
            day.join("1-0-0-other-upload.parquet#4"),
            std::fs::canonicalize(dir.path().join("cold"))
                .unwrap()
                .join("x.parquet"),
        ];
        for f in &foreign {
            std::fs::write(f, b"PAR1").unwrap();
        }
        assert_eq!(s.sweep_cold_orphans().await.unwrap(), 2);
        assert!(!ours.exists() && !day.join("1-0-0-half.parquet#3").exists());
        for f in foreign.iter().chain(&named) {
            assert!(f.exists(), "{} was deleted", f.display());
        }
        // Done with: a second sweep finds nothing of ours.
        assert_eq!(s.sweep_cold_orphans().await.unwrap(), 0);
        let r = s.query("t", "SELECT count(*) FROM logs").await.unwrap();
        assert_eq!(r.to_json().unwrap()["rows"][0][0], 10);
    }

    /// A `store.redb` restored from a backup (its manifest older than the files) deletes
    /// nothing at startup: the files written after the backup are not named by its
    /// manifest, but they are not its pending uploads either.
    #[tokio::test]
    async fn a_restored_store_deletes_nothing_it_does_not_own() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = crate::test_util::open_cold(dir.path());
            crate::test_util::commit_records(&s, "app", 0, 0, &records(10));
            s.flush_cold(Duration::ZERO).await.unwrap();
        }
        std::fs::copy(
            dir.path().join("store.redb"),
            dir.path().join("backup.redb"),
        )
        .unwrap();
        {
            let s = crate::test_util::open_cold(dir.path());
            crate::test_util::commit_records(&s, "app", 100, 0, &records(5));
            s.flush_cold(Duration::ZERO).await.unwrap();
            assert_eq!(parquet(dir.path()).len(), 2);
        }
        let files = parquet(dir.path());
        std::fs::rename(
            dir.path().join("backup.redb"),
            dir.path().join("store.redb"),
        )
        .unwrap();
        let s = crate::test_util::open_cold(dir.path());
        assert_eq!(s.sweep_cold_orphans().await.unwrap(), 0);
        assert_eq!(parquet(dir.path()), files, "nothing deleted");
        let r = s.query("t", "SELECT count(*) FROM logs").await.unwrap();
        assert_eq!(r.to_json().unwrap()["rows"][0][0], 10, "the backup's rows");
    }

    /// A compaction's replaced files are ours to delete: recorded as pending in the
    /// commit that replaces them, so a crash before their deletion leaves them to the
    /// sweep, which deletes them (and only them).
    #[tokio::test]
    async fn replaced_files_a_crash_left_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = crate::test_util::open_compacting(dir.path(), 2);
            for i in 0..3u64 {
                crate::test_util::commit_records(&s, "app", i * 10, 0, &records(4));
                s.flush_cold(Duration::ZERO).await.unwrap();
            }
            let held = s.tiers("t", Table::Logs); // a query holds the old files
            let stats = s.janitor_pass(1_900_000_000_000).await.unwrap();
            assert_eq!((stats.compacted_files, stats.deleted_files), (3, 0));
            assert_eq!(parquet(dir.path()).len(), 4);
            drop(held);
            // Stops here: the replaced files are still on disk.
        }
        let foreign = parquet(dir.path())[0]
            .parent()
            .unwrap()
            .join("9-9-9-x.parquet");
        std::fs::write(&foreign, b"PAR1").unwrap();
        let s = crate::test_util::open_compacting(dir.path(), 2);
        assert_eq!(s.sweep_cold_orphans().await.unwrap(), 3);
        assert_eq!(
            parquet(dir.path()).len(),
            2,
            "the merged file and the foreign one"
        );
        assert!(foreign.exists());
        let r = s.query("t", "SELECT count(*) FROM logs").await.unwrap();
        assert_eq!(r.to_json().unwrap()["rows"][0][0], 12);
    }

    async fn count(s: &HotStore, tenant: &str, sql: &str) -> serde_json::Value {
        let r = s.query(tenant, sql).await.unwrap();
        r.to_json().unwrap()["rows"].clone()
    }

    /// Records the flush cannot write (a number past f64, a lone surrogate, nesting past
    /// serde_json's depth) are quarantined — visible to their tenant only, with the
    /// reason — and every other row of that file and of other tenants goes to Parquet on
    /// the same pass; the next pass has nothing left to fail on.
    #[tokio::test]
    async fn poison_rows_are_quarantined_and_the_rest_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_cold(dir.path());
        let deep = format!("{{\"d\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        let good = |i: u32| format!("{{\"ts\":1900000000000,\"message\":\"ok {i}\"}}\n");
        let mut nd: String = (0..5).map(good).collect();
        nd.push_str("{\"x\":1e400}\n");
        nd.push_str(&good(5));
        nd.push_str("{\"s\":\"\\ud800\"}\n");
        nd.push_str(&deep);
        nd.push('\n');
        crate::test_util::commit_ndjson(&s, "t", "app", 0, &nd);
        crate::test_util::commit_ndjson(&s, "t", "app", 1, &good(9));
        crate::test_util::commit_ndjson(&s, "u", "app", 2, &(0..4).map(good).collect::<String>());
        let stats = s.flush_cold(Duration::ZERO).await.unwrap();
        assert_eq!((stats.files, stats.rows), (2, 11), "{stats:?}");
        assert_eq!(stats.quarantined.get("t"), Some(&3));
        assert_eq!(stats.quarantined.get("u"), None);
        assert_eq!(s.tiers("t", Table::Logs).0.len(), 0, "nothing left hot");
        assert_eq!(parquet(dir.path()).len(), 2);
        assert_eq!(count(&s, "t", "SELECT count(*) FROM logs").await[0][0], 7);
        assert_eq!(count(&s, "u", "SELECT count(*) FROM logs").await[0][0], 4);
        let q = count(
            &s,
            "t",
            "SELECT tenant, \"partition\", \"offset\", \"rows\", error, records FROM quarantine",
        )
        .await;
        assert_eq!(q.as_array().unwrap().len(), 1, "{q}");
        assert_eq!(q[0][0], "t");
        assert_eq!(
            (q[0][1].as_u64(), q[0][2].as_u64(), q[0][3].as_u64()),
            (Some(0), Some(0), Some(3))
        );
        let error = q[0][4].as_str().unwrap();
        for why in ["number out of range", "hex escape", "recursion limit"] {
            assert!(error.contains(why), "{error}");
        }
        let want = format!("{{\"x\":1e400}}\n{{\"s\":\"\\ud800\"}}\n{deep}\n");
        assert_eq!(q[0][5].as_str().unwrap(), want, "the rows exactly");
        assert_eq!(
            count(&s, "u", "SELECT count(*) FROM quarantine").await[0][0],
            0
        );
        assert_eq!(s.quarantined("u").unwrap(), vec![]);
        // Nothing left to fail on; kept across a restart.
        assert_eq!(
            s.flush_cold(Duration::ZERO).await.unwrap(),
            FlushStats::default()
        );
        drop(s);
        let s = crate::test_util::open_cold(dir.path());
        assert_eq!(s.quarantined("t").unwrap().len(), 1);
        assert_eq!(count(&s, "t", "SELECT count(*) FROM logs").await[0][0], 7);
    }

    /// A sample no rollup window can hold (a time at the start of i64's range) is
    /// quarantined; the other samples and their rollups are written.
    #[tokio::test]
    async fn a_sample_without_a_rollup_window_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_cold(dir.path());
        let t0 = 1_900_000_000_000i64;
        let mut nd = String::new();
        for i in 0..4 {
            nd.push_str(&format!(
                "{{\"name\":\"up\",\"value\":{i},\"ts\":{},\"labels\":{{}}}}\n",
                t0 + i
            ));
        }
        nd.push_str(&format!(
            "{{\"name\":\"up\",\"value\":1,\"ts\":{},\"labels\":{{}}}}\n",
            i64::MIN
        ));
        let b = weir_core::Batch {
            tenant: "t".into(),
            stream: weir_core::names::METRICS_STREAM.into(),
            ingest_ts_ms: 1,
            count: 5,
            records: nd.into_bytes(),
            replay_of: None,
        };
        s.commit(0, 1, &[crate::Segment::new(0, 0, b).unwrap()], &[], &[])
            .unwrap();
        let stats = s.flush_cold(Duration::ZERO).await.unwrap();
        assert_eq!((stats.files, stats.rows), (1, 4), "{stats:?}");
        assert_eq!(stats.quarantined.get("t"), Some(&1));
        assert_eq!(
            count(&s, "t", "SELECT count(*) FROM metrics").await[0][0],
            4
        );
        assert_eq!(
            count(&s, "t", "SELECT sum(count) FROM metrics_1m").await[0][0],
            4
        );
        let q = s.quarantined("t").unwrap();
        assert_eq!(q.len(), 1);
        assert!(q[0].error.contains("rollup window"), "{}", q[0].error);
        let line: serde_json::Value = serde_json::from_str(q[0].records.trim()).unwrap();
        assert_eq!(line["ts"], i64::MIN);
        assert_eq!(line["name"], "up");
    }

    /// A failure no check knows (here: the encoder panics on one row) is found by
    /// halving: that row alone is quarantined, the others go to one file.
    #[tokio::test]
    async fn an_unknown_failure_is_narrowed_to_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::test_util::open_cold(dir.path());
        for off in 0..4u64 {
            let mut nd: String = (0..25)
                .map(|i| format!("{{\"ts\":1900000000000,\"message\":\"m{off}-{i}\"}}\n"))
                .collect();
            if off == 2 {
                nd.push_str("{\"message\":\"PANIC-IN-ENCODER\"}\n");
            }
            crate::test_util::commit_ndjson(&s, "t", "app", off, &nd);
        }
        let stats = s.flush_cold(Duration::ZERO).await.unwrap();
        assert_eq!((stats.files, stats.rows), (1, 100), "{stats:?}");
        assert_eq!(stats.quarantined.get("t"), Some(&1));
        let q = s.quarantined("t").unwrap();
        assert_eq!((q[0].partition, q[0].offset, q[0].rows), (0, 2, 1));
        assert_eq!(q[0].seqs, vec![25]);
        assert!(
            q[0].error.contains("encoding panicked: injected"),
            "{}",
            q[0].error
        );
    }

    /// A store written before a rule that now refuses some of its rows still opens: the
    /// segment that no longer loads is quarantined at open.
    #[tokio::test]
    async fn a_stored_segment_that_no_longer_loads_is_quarantined_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = crate::test_util::open_cold(dir.path());
            crate::test_util::commit_records(&s, "app", 0, 0, &records(3));
        }
        {
            // What an older version could have stored: a line that is not an object.
            let db = redb::Database::create(dir.path().join("store.redb")).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(crate::hot::SEGMENTS).unwrap();
                let b = weir_core::Batch {
                    tenant: "t".into(),
                    stream: "app".into(),
                    ingest_ts_ms: 1,
                    count: 2,
                    records: b"{\"ok\":1}\n[1,2]\n".to_vec(),
                    replay_of: None,
                };
                let mut buf = Vec::new();
                b.encode_into(&mut buf);
                t.insert((0, 50), buf.as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        let s = crate::test_util::open_cold(dir.path());
        assert_eq!(count(&s, "t", "SELECT count(*) FROM logs").await[0][0], 3);
        let q = s.quarantined("t").unwrap();
        assert_eq!((q[0].offset, q[0].rows), (50, 2));
        assert!(q[0].error.contains("line 2"), "{}", q[0].error);
        assert_eq!(q[0].records, "{\"ok\":1}\n[1,2]\n");
        assert_eq!(s.flush_cold(Duration::ZERO).await.unwrap().rows, 3);
    }

    /// Manifest paths map to objects below the location's prefix and to the URLs query
    /// sessions read them by; a bad location is refused with the reason.
    #[test]
    fn cold_locations() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let rel = "tenant=a/table=logs/app/date=2030-01-15/1-0-0-f.parquet";
        let local = Cold::open(
            &ColdLocation::Dir(dir.path().into()),
            ColdOptions::default(),
        )
        .unwrap();
        assert_eq!(local.url(rel), format!("file://{}/{rel}", root.display()));
        let via_url = Cold::open(
            &url(&format!("file://{}", root.display()), &[]),
            ColdOptions::default(),
        )
        .unwrap();
        assert_eq!(via_url.url(rel), local.url(rel));
        let s3 = Cold::open(
            &url(
                "s3://bucket/a/b/",
                &[
                    ("endpoint", "http://127.0.0.1:1"),
                    ("region", "x"),
                    ("allow_http", "true"),
                ],
            ),
            ColdOptions::default(),
        )
        .unwrap();
        assert_eq!(s3.object(rel).to_string(), format!("a/b/{rel}"));
        assert_eq!(s3.url(rel), format!("s3://bucket/a/b/{rel}"));
        for (location, why) in [
            (url("gs://b/p", &[]), "scheme `gs` is not supported"),
            (url("s3:///p", &[]), "no bucket"),
            (
                url("s3://b/p", &[("colour", "red")]),
                "unknown S3 setting `colour`",
            ),
            (url("not a url", &[]), "relative URL"),
        ] {
            match Cold::open(&location, ColdOptions::default()) {
                Err(StoreError::Config(e)) => assert!(e.contains(why), "{e}"),
                Err(e) => panic!("{location:?}: {e}"),
                Ok(_) => panic!("{location:?} accepted"),
            }
        }
    }

    /// Sizes of 100,000 realistic logs (`weir_core::sample`, 300-500 bytes each) as raw
    /// NDJSON, as zstd-compressed NDJSON (level 3) and as a cold Parquet file. Sizes are
    /// deterministic, so this is a check, not a timing; run with `--nocapture` to see
    /// them (docs/BENCHMARKS.md records them).
    #[test]
    fn cold_logs_are_much_smaller_than_ndjson() {
        let ndjson = weir_core::sample::ndjson(100_000);
        let rows = crate::rows::segment_rows("app", 0, 0, 0, &ndjson).unwrap();
        let (cold, _) = crate::shred::shred(&sorted(&rows, Table::Logs).unwrap()).unwrap();
        let file = parquet_bytes(&cold).unwrap();
        {
            use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
            let r = SerializedFileReader::new(bytes::Bytes::from(file.clone())).unwrap();
            let md = r.metadata();
            let mut by: std::collections::BTreeMap<String, i64> = Default::default();
            for rg in md.row_groups() {
                for c in rg.columns() {
                    *by.entry(c.column_path().string()).or_default() += c.compressed_size();
                }
            }
            eprintln!("{by:#?}");
        }
        let zst = zstd::encode_all(ndjson.as_slice(), 3).unwrap();
        let (raw, z, p) = (ndjson.len() as f64, zst.len() as f64, file.len() as f64);
        eprintln!(
            "raw NDJSON {raw} B, zstd-3 NDJSON {z} B ({:.1}x), Parquet {p} B ({:.1}x raw, {:.2}x zstd)",
            raw / z,
            raw / p,
            z / p
        );
        // Issue 5's target: at least 15x smaller than raw NDJSON (17.0x when written).
        assert!(
            raw / p >= 15.0,
            "Parquet is {:.1}x smaller than raw",
            raw / p
        );
    }

    /// Bytes per metric sample in a cold file: 1,000 series scraped every 15 s, 1,000
    /// scrapes (1M samples): a third counters growing by small steps, a third gauges of
    /// bytes and a third percentages with two decimals, both random walks.
    /// Deterministic; `--nocapture` prints it (docs/BENCHMARKS.md records it).
    #[test]
    fn cold_metrics_bytes_per_sample() {
        let ndjson = weir_core::sample::metric_scrapes(1000, 1000);
        let mut batches = Vec::new();
        for (scrape, nd) in ndjson.iter().enumerate() {
            batches.push(
                crate::metric_rows::segment_metric_rows(0, scrape as u64, nd.as_bytes()).unwrap(),
            );
        }
        let all = concat_batches(&batches[0].schema(), &batches).unwrap();
        let sorted_rows = sorted(&all, Table::Metrics).unwrap();
        let file = parquet_bytes(&crate::metric_rows::cold_metrics(&sorted_rows)).unwrap();
        let per = file.len() as f64 / all.num_rows() as f64;
        eprintln!(
            "{} samples, {} bytes, {per:.3} bytes/sample",
            all.num_rows(),
            file.len()
        );
        // Issue 5's target: at most one byte per sample (0.981 when written).
        assert!(per <= 1.0, "{per} bytes per sample");
        // The same samples as OpenMetrics text, for a Prometheus TSDB to compare with
        // (scripts/bench-metrics-size.sh).
        if let Some(out) = std::env::var_os("WEIR_OPENMETRICS_OUT") {
            std::fs::write(out, weir_core::sample::openmetrics(&ndjson)).unwrap();
        }
        {
            use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
            let r = SerializedFileReader::new(bytes::Bytes::from(file.clone())).unwrap();
            let mut by: std::collections::BTreeMap<String, i64> = Default::default();
            for rg in r.metadata().row_groups() {
                for c in rg.columns() {
                    *by.entry(c.column_path().string()).or_default() += c.compressed_size();
                }
            }
            eprintln!("{by:#?}");
        }
    }

    /// Over the memory bound with a cold tier, rows are flushed, not deleted.
    #[tokio::test]
    async fn over_the_memory_bound_rows_go_cold_instead_of_away() {
        let dir = tempfile::tempdir().unwrap();
        let s = HotStore::open(&dir.path().join("store.redb"), 1)
            .unwrap()
            .with_cold(&dir.path().join("cold"))
            .unwrap();
        for off in 0..3u64 {
            let b = weir_core::Batch {
                tenant: "t".into(),
                stream: "s".into(),
                ingest_ts_ms: 1,
                count: 2,
                records: b"{\"m\":1}\n{\"m\":2}\n".to_vec(),
                replay_of: None,
            };
            let seg = crate::Segment::new(0, off, b).unwrap();
            s.commit(0, off + 1, &[seg], &[], &[]).unwrap();
        }
        assert_eq!(
            s.tiers("t", Table::Logs).0.len(),
            3,
            "kept hot, not evicted"
        );
        let stats = s.flush_cold(Duration::from_secs(3600)).await.unwrap();
        assert_eq!((stats.files, stats.rows), (1, 6));
        let (hot, cold) = s.tiers("t", Table::Logs);
        assert_eq!((hot.len(), cold.len()), (0, 1));
        assert_eq!(s.evicted_rows(), 0);
    }

    /// A restart while the hot tier is over its bound (after an object-store outage, say)
    /// flushes those rows once the cold tier is attached; it must not delete them first.
    #[tokio::test]
    async fn a_restart_over_the_bound_flushes_instead_of_deleting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = HotStore::open(&path, usize::MAX).unwrap();
            for off in 0..3u64 {
                let b = weir_core::Batch {
                    tenant: "t".into(),
                    stream: "s".into(),
                    ingest_ts_ms: 1,
                    count: 2,
                    records: b"{\"m\":1}\n{\"m\":2}\n".to_vec(),
                    replay_of: None,
                };
                let seg = crate::Segment::new(0, off, b).unwrap();
                s.commit(0, off + 1, &[seg], &[], &[]).unwrap();
            }
        }
        let s = HotStore::open(&path, 1)
            .unwrap()
            .with_cold(&dir.path().join("cold"))
            .unwrap();
        s.enforce_bound().unwrap();
        assert_eq!(s.evicted_rows(), 0, "nothing deleted");
        assert_eq!(s.tiers("t", Table::Logs).0.len(), 3, "all still hot");
        let stats = s.flush_cold(Duration::from_secs(3600)).await.unwrap();
        assert_eq!((stats.files, stats.rows), (1, 6));
    }

    #[test]
    fn dates() {
        assert_eq!(super::date_of(0), "1970-01-01");
        assert_eq!(super::date_of(1_894_694_400_000), "2030-01-15");
        assert_eq!(super::date_of(951_782_400_000), "2000-02-29");
    }
}
