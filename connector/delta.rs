//! Delta Lake tables for `runport sync`: runport writes the Parquet files
//! (with its own writer, as for `export`), delta-rs writes the log: table
//! creation, `add`/`remove` actions, `txn`, commit info, and the optimistic
//! concurrency of commits. No Arrow type crosses between the two (delta-rs
//! is on another arrow major): schemas are translated here, and statistics
//! are read from the written files' Parquet footers.
//!
//! Tables are written with reader protocol 1 and writer protocol 2 (no
//! deletion vectors, no column mapping), so that every Delta reader reads them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::{DataType, Schema, TimeUnit};
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{
    Action, Add, ArrayType, DataType as DeltaType, Metadata, Protocol, Remove, StructField, StructType, Transaction,
};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::objstore::Remote;

/// Columns whose minimum and maximum go into an `add` action's statistics:
/// the first 32, as Delta's `dataSkippingNumIndexedCols` default.
const STATS_COLUMNS: usize = 32;

/// Longest string whose minimum and maximum are recorded (longer ones would
/// need truncation rules; their bounds are left out, which only costs skipping).
const STATS_STRING_CHARS: usize = 32;

/// One Delta table of a sync's TABLE folder (`TABLE/runs`, `TABLE/history`).
pub struct DeltaDir {
    /// The table's folder; for a table in an object store, the local
    /// folder where its new files are written and the files read are
    /// downloaded.
    pub path: PathBuf,
    url: url::Url,
    /// A table in an object store, and the runtime its requests run on.
    remote: Option<(Remote, Arc<tokio::runtime::Runtime>)>,
    /// The table as last loaded (`None`: no table there yet).
    pub table: Option<DeltaTable>,
}

fn delta_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("Delta table {}: {what}: {e}", path.display()))
}

impl DeltaDir {
    /// The table at `path`, loaded when it has a log.
    pub async fn open(path: &Path) -> Result<DeltaDir> {
        std::fs::create_dir_all(path).map_err(|e| Error::write(path.display(), e))?;
        let abs = std::fs::canonicalize(path).map_err(|e| Error::write(path.display(), e))?;
        let url = url::Url::from_directory_path(&abs)
            .map_err(|()| Error::Usage(format!("{}: not a path a Delta table can live at", path.display())))?;
        let mut dir = DeltaDir { path: abs, url, remote: None, table: None };
        dir.load().await?;
        Ok(dir)
    }

    /// The table in the object-store folder `remote`, its files written and
    /// read through the local folder `staging`; requests run on `rt`.
    pub fn open_remote(remote: Remote, staging: &Path, rt: Arc<tokio::runtime::Runtime>) -> Result<DeltaDir> {
        std::fs::create_dir_all(staging).map_err(|e| Error::write(staging.display(), e))?;
        let url = remote.url.clone();
        let mut dir =
            DeltaDir { path: staging.to_path_buf(), url, remote: Some((remote, Arc::clone(&rt))), table: None };
        rt.block_on(dir.load())?;
        Ok(dir)
    }

    /// Where the table is, as messages name it.
    pub fn shown(&self) -> String {
        match &self.remote {
            Some((r, _)) => r.url.to_string(),
            None => self.path.display().to_string(),
        }
    }

    fn builder(&self) -> Result<DeltaTableBuilder> {
        let b = DeltaTableBuilder::from_url(self.url.clone()).map_err(|e| delta_error("cannot open", &self.path, e))?;
        Ok(match &self.remote {
            Some((r, _)) => b.with_storage_backend(Arc::clone(&r.store), self.url.clone()),
            None => b,
        })
    }

    /// Loads the table's newest version (none when it has no log yet).
    pub async fn load(&mut self) -> Result<()> {
        let exists = match &self.remote {
            Some((r, _)) => r.has_folder("_delta_log").await?,
            None => self.path.join("_delta_log").exists(),
        };
        if !exists {
            self.table = None;
            return Ok(());
        }
        let table = self
            .builder()?
            .load()
            .await
            .map_err(|e| delta_error("cannot read its log", Path::new(&self.shown()), e))?;
        self.table = Some(table);
        Ok(())
    }

    /// The local file of `rel`, a file of the table: in an object store,
    /// downloaded into the local folder first (once).
    pub fn fetch(&self, rel: &str) -> Result<PathBuf> {
        let local = self.path.join(rel);
        let Some((remote, rt)) = &self.remote else { return Ok(local) };
        if !local.exists() {
            let part = self.path.join(format!("{rel}.runport-download"));
            block_on_aside(rt, remote.download(rel, &part))?;
            std::fs::rename(&part, &local).map_err(|e| Error::write(local.display(), e))?;
        }
        Ok(local)
    }

    /// Makes the local files `rels` files of the table: in an object store,
    /// uploads them (the local folder's are the table's already).
    pub fn publish(&self, rels: &[String]) -> Result<()> {
        let Some((remote, rt)) = &self.remote else { return Ok(()) };
        block_on_aside(rt, async {
            for rel in rels {
                remote.upload(&self.path.join(rel), rel).await?;
            }
            Ok(())
        })
    }

    /// The loaded table's version.
    pub fn version(&self) -> Option<u64> {
        self.table.as_ref().and_then(|t| t.version())
    }

    /// The table's configuration (`runport.*` settings of the sync that made it).
    pub fn configuration(&self) -> Option<HashMap<String, String>> {
        let snapshot = self.table.as_ref()?.snapshot().ok()?;
        Some(snapshot.metadata().configuration().clone())
    }

    /// The relative paths of the table's live files.
    pub fn files(&self) -> Result<Vec<String>> {
        let Some(t) = &self.table else { return Ok(Vec::new()) };
        let base = self.url.as_str().to_string();
        let uris = t.get_file_uris().map_err(|e| delta_error("cannot list its files", &self.path, e))?;
        // Local tables give absolute paths, others URLs: both relative here.
        Ok(uris
            .map(|u| match u.strip_prefix(&base) {
                Some(rel) => percent_encoding::percent_decode_str(rel).decode_utf8_lossy().into_owned(),
                None => match Path::new(&u).strip_prefix(&self.path) {
                    Ok(rel) => rel.to_string_lossy().into_owned(),
                    Err(_) => u,
                },
            })
            .collect())
    }

    /// Removes what a sync killed before its commit left in the table's
    /// folder: the staging files of commits cut short (`_delta_log/N.json#K`:
    /// local commits are written aside, then linked into place) whose
    /// version `N` is there (they can no longer be linked); and with
    /// `written_before`, those last modified before it and runport's data
    /// files (`part-*.parquet`) that no commit of the log adds or removes
    /// and the current version does not hold. A file some version still
    /// refers to is never removed.
    /// Give `written_before` only after a commit, as the time the
    /// committing sync started: a sync that started before it and has yet
    /// to commit (two syncs whose lock did not hold) cannot commit after it
    /// (their `txn` actions conflict), and one that started after it wrote
    /// its files after that time. Returns the files removed.
    /// Only data files `owned` says are this sync's are removed (a shard's).
    pub fn remove_unreferenced(
        &self,
        written_before: Option<std::time::SystemTime>,
        owned: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<String>> {
        if let Some((remote, rt)) = &self.remote {
            let referred: std::collections::HashSet<String> = self.files()?.into_iter().collect();
            return block_on_aside(rt, remove_unreferenced_remote(remote, referred, written_before, owned));
        }
        let older = |entry: &std::fs::DirEntry| {
            written_before.is_some_and(|before| entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < before))
        };
        let log = self.path.join("_delta_log");
        let mut referred: std::collections::HashSet<String> = self.files()?.into_iter().collect();
        let mut removed = Vec::new();
        let entries = match std::fs::read_dir(&log) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(Error::write(log.display(), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::write(log.display(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some((version, _)) = name.split_once(".json#") {
                let linked = log.join(format!("{version}.json")).exists();
                if (linked || older(&entry)) && std::fs::remove_file(&path).is_ok() {
                    removed.push(format!("_delta_log/{name}"));
                }
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::write(path.display(), e))?;
            log_paths(&text, &mut referred)
                .map_err(|e| delta_error(&format!("{name} is not a Delta log"), &self.path, e))?;
        }
        if written_before.is_none() {
            return Ok(removed);
        }
        let dir = std::fs::read_dir(&self.path).map_err(|e| Error::write(self.path.display(), e))?;
        for entry in dir {
            let entry = entry.map_err(|e| Error::write(self.path.display(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("part-")
                && name.ends_with(".parquet")
                && owned(&name)
                && !referred.contains(&name)
                && older(&entry)
            {
                std::fs::remove_file(entry.path()).map_err(|e| Error::write(entry.path().display(), e))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// The version a `txn` action of `app_id` last recorded.
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>> {
        let Some(t) = &self.table else { return Ok(None) };
        let snapshot = t.snapshot().map_err(|e| delta_error("cannot read its state", &self.path, e))?;
        snapshot
            .transaction_version(t.log_store().as_ref(), app_id)
            .await
            .map_err(|e| delta_error("cannot read its transactions", &self.path, e))
    }

    /// Commits `actions` (adds and removes, a `txn`), creating the table
    /// with `schema` and `configuration` when there is none, and changing
    /// its schema when `schema` differs. Returns the new version.
    pub async fn commit(
        &mut self,
        schema: &Schema,
        configuration: &[(String, String)],
        mut actions: Vec<Action>,
        app_metadata: HashMap<String, Value>,
    ) -> Result<u64> {
        let delta_schema = delta_schema(schema)?;
        let operation = match &self.table {
            None => {
                let protocol: Protocol = serde_json::from_value(json!({"minReaderVersion": 1, "minWriterVersion": 2}))
                    .map_err(|e| Error::Internal(format!("Delta protocol: {e}")))?;
                let metadata = new_metadata(&delta_schema, configuration)?;
                actions.insert(0, Action::Metadata(metadata.clone()));
                actions.insert(0, Action::Protocol(protocol.clone()));
                DeltaOperation::Create { mode: SaveMode::ErrorIfExists, location: self.url.clone(), protocol, metadata }
            }
            Some(t) => {
                let snapshot = t.snapshot().map_err(|e| delta_error("cannot read its state", &self.path, e))?;
                // A new schema, or other settings (a --full-refresh with
                // another selection): the same table, its metadata changed.
                let conf = snapshot.metadata().configuration();
                let same_settings = configuration.iter().all(|(k, v)| conf.get(k) == Some(v));
                if snapshot.schema().as_ref() != &delta_schema || !same_settings {
                    actions.insert(
                        0,
                        Action::Metadata(changed_metadata(snapshot.metadata(), &delta_schema, configuration)?),
                    );
                }
                DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None }
            }
        };
        let snapshot = match &self.table {
            Some(t) => Some(t.snapshot().map_err(|e| delta_error("cannot read its state", &self.path, e))?),
            None => None,
        };
        let log_store = match &self.table {
            Some(t) => t.log_store(),
            None => self.builder()?.build().map_err(|e| delta_error("cannot open", &self.path, e))?.log_store(),
        };
        // A table created meanwhile by another sync is not written over.
        let retries = if self.table.is_none() { 0 } else { 15 };
        let read_version = self.version();
        let committed = CommitBuilder::default()
            .with_actions(actions)
            .with_app_metadata(app_metadata)
            .with_max_retries(retries)
            .build(snapshot.map(|s| s as &dyn deltalake::kernel::transaction::TableReference), log_store, operation)
            .await;
        let done = match committed {
            Ok(done) => done,
            Err(e) => {
                use deltalake::kernel::transaction::TransactionError as T;
                let race = matches!(
                    e,
                    DeltaTableError::Transaction { source: T::CommitConflict(_) | T::MaxCommitAttempts(_) }
                        | DeltaTableError::VersionAlreadyExists(_)
                );
                // Any failure while another writer committed meanwhile (its
                // cleanup may have taken this commit's staging file) is the race.
                let advanced = match self.builder().ok().map(|b| b.load()) {
                    Some(loading) => loading.await.ok().and_then(|t| t.version()) > read_version,
                    None => false,
                };
                return Err(if race || advanced {
                    Error::CommitConflict { table: self.path.display().to_string(), detail: e.to_string() }
                } else {
                    delta_error("commit failed", &self.path, e)
                });
            }
        };
        let version = done.version();
        self.load().await?;
        Ok(version)
    }
}

/// Runs `work` (object-store requests) on `rt`, from a thread of its own:
/// the caller may be inside another runtime (a source's, reading runs).
fn block_on_aside<T: Send>(rt: &tokio::runtime::Runtime, work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| s.spawn(|| rt.block_on(work)).join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
}

/// Adds the paths of a commit's `add` and `remove` actions to `out`.
fn log_paths(text: &str, out: &mut std::collections::HashSet<String>) -> std::result::Result<(), serde_json::Error> {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let action: Value = serde_json::from_str(line)?;
        for kind in ["add", "remove"] {
            if let Some(p) = action.get(kind).and_then(|a| a.get("path")).and_then(|p| p.as_str()) {
                out.insert(percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// Files an object store's clock may be ahead of this machine's by: an
/// unreferenced file is removed only when older than the sync by this much.
const CLOCK_MARGIN: std::time::Duration = std::time::Duration::from_secs(600);

/// [`DeltaDir::remove_unreferenced`] in an object store: the log's commits
/// read to know every file some version refers to (commits there need no
/// staging files).
async fn remove_unreferenced_remote(
    remote: &Remote,
    mut referred: std::collections::HashSet<String>,
    written_before: Option<std::time::SystemTime>,
    owned: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<String>> {
    let Some(before) = written_before.and_then(|t| t.checked_sub(CLOCK_MARGIN)) else { return Ok(Vec::new()) };
    let log = remote.join("_delta_log");
    for (name, _) in log.list_files().await? {
        if name.ends_with(".json") {
            let local = tempfile::NamedTempFile::new().map_err(|e| Error::write("a temporary file", e))?;
            log.download(&name, local.path()).await?;
            let text = std::fs::read_to_string(local.path()).map_err(|e| Error::write(local.path().display(), e))?;
            log_paths(&text, &mut referred)
                .map_err(|e| Error::Storage { location: log.url.to_string(), reason: format!("{name}: {e}") })?;
        }
    }
    let mut removed = Vec::new();
    for (name, modified) in remote.list_files().await? {
        if name.starts_with("part-")
            && name.ends_with(".parquet")
            && owned(&name)
            && !referred.contains(&name)
            && modified < before
        {
            remote.delete(&name).await?;
            removed.push(name);
        }
    }
    Ok(removed)
}

fn new_metadata(schema: &StructType, configuration: &[(String, String)]) -> Result<Metadata> {
    deltalake::kernel::new_metadata(schema, Vec::<String>::new(), configuration.iter().cloned())
        .map_err(|e| Error::Internal(format!("Delta metadata: {e}")))
}

/// The table's metadata with another schema and `configuration` set: its
/// id, creation time and other configuration kept (readers that cache a
/// table by its id see one table).
fn changed_metadata(old: &Metadata, schema: &StructType, configuration: &[(String, String)]) -> Result<Metadata> {
    let error = |e: serde_json::Error| Error::Internal(format!("Delta metadata: {e}"));
    let mut v = serde_json::to_value(old).map_err(error)?;
    v["schemaString"] = serde_json::to_string(schema).map_err(error)?.into();
    if !v["configuration"].is_object() {
        v["configuration"] = json!({});
    }
    for (k, value) in configuration {
        v["configuration"][k] = value.clone().into();
    }
    serde_json::from_value(v).map_err(error)
}

/// A `txn` action: `app_id` at `version`.
pub fn txn(app_id: &str, version: i64) -> Action {
    Action::Txn(Transaction::new(app_id, version))
}

/// The Delta type of an Arrow type of runport's tables.
fn delta_type(dt: &DataType) -> Result<DeltaType> {
    Ok(match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DeltaType::STRING,
        DataType::RunEndEncoded(_, values) => delta_type(values.data_type())?,
        DataType::Int64 => DeltaType::LONG,
        DataType::Int32 => DeltaType::INTEGER,
        DataType::Float64 => DeltaType::DOUBLE,
        DataType::Boolean => DeltaType::BOOLEAN,
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => DeltaType::TIMESTAMP,
        DataType::List(item) | DataType::LargeList(item) => {
            ArrayType::new(delta_type(item.data_type())?, item.is_nullable()).into()
        }
        other => return Err(Error::Internal(format!("no Delta type for the Arrow type {other}"))),
    })
}

/// The Delta schema of a table's Arrow schema.
pub fn delta_schema(schema: &Schema) -> Result<StructType> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| Ok(StructField::new(f.name().clone(), delta_type(f.data_type())?, f.is_nullable())))
        .collect::<Result<Vec<_>>>()?;
    StructType::try_new(fields).map_err(|e| Error::Internal(format!("Delta schema: {e}")))
}

/// The `add` action of a Parquet file written at `rel` (relative to the
/// table), its statistics from the file's footer: `numRecords`, and per
/// column `nullCount`, and `minValues`/`maxValues` for the first
/// [`STATS_COLUMNS`] integer and short string columns.
pub fn add_action(table: &Path, rel: &str) -> Result<Action> {
    let path = table.join(rel);
    let file = File::open(&path).map_err(|e| Error::write(path.display(), e))?;
    let meta = file.metadata().map_err(|e| Error::write(path.display(), e))?;
    let footer = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|e| Error::Parquet { path: path.display().to_string(), source: e })?;
    let modification_time = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    Ok(Action::Add(Add {
        path: rel.to_string(),
        size: meta.len() as i64,
        modification_time,
        data_change: true,
        stats: Some(stats(&footer).to_string()),
        ..Default::default()
    }))
}

/// A `remove` action of a live file.
pub fn remove_action(rel: &str) -> Action {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Action::Remove(Remove {
        path: rel.to_string(),
        data_change: true,
        deletion_timestamp: Some(now),
        extended_file_metadata: None,
        partition_values: None,
        size: None,
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    })
}

/// Delta statistics of a file from its row groups' statistics. A column
/// without statistics in some row group gets no entry (readers then read
/// the file).
fn stats(meta: &ParquetMetaData) -> Value {
    let rows: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
    let schema = meta.file_metadata().schema_descr();
    let (mut nulls, mut mins, mut maxs) = (Map::new(), Map::new(), Map::new());
    for (i, column) in schema.columns().iter().enumerate() {
        // Top-level primitive columns only (lists have no bounds here).
        if column.path().parts().len() != 1 {
            continue;
        }
        let name = column.name().to_string();
        let all: Option<Vec<&Statistics>> = meta.row_groups().iter().map(|g| g.column(i).statistics()).collect();
        let Some(all) = all else { continue };
        if let Some(n) = all.iter().map(|s| s.null_count_opt()).sum::<Option<u64>>() {
            nulls.insert(name.clone(), n.into());
        }
        if i >= STATS_COLUMNS || all.is_empty() {
            continue;
        }
        // Plain integers and strings only: timestamps are INT64 too.
        let plain = match column.logical_type_ref() {
            None => column.physical_type() == parquet::basic::Type::INT64,
            Some(parquet::basic::LogicalType::String) => true,
            Some(_) => false,
        };
        if !plain {
            continue;
        }
        match bounds(&all) {
            Some((lo, hi)) => {
                mins.insert(name.clone(), lo);
                maxs.insert(name, hi);
            }
            None => continue,
        }
    }
    json!({"numRecords": rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})
}

/// The minimum and maximum over row groups, for integers and UTF-8 strings
/// (no floats: Parquet bounds leave NaN out, which readers that order NaN
/// last would skip wrongly; no timestamps: Delta's bounds are milliseconds).
fn bounds(all: &[&Statistics]) -> Option<(Value, Value)> {
    match all.first()? {
        Statistics::Int64(_) => {
            let mut lo = i64::MAX;
            let mut hi = i64::MIN;
            for s in all {
                let Statistics::Int64(v) = s else { return None };
                if v.min_opt().is_none() && v.max_opt().is_none() {
                    continue;
                }
                // Timestamps are Int64 too: only plain integers get bounds.
                lo = lo.min(*v.min_opt()?);
                hi = hi.max(*v.max_opt()?);
            }
            (lo <= hi).then(|| (lo.into(), hi.into()))
        }
        Statistics::ByteArray(_) => {
            let mut lo: Option<String> = None;
            let mut hi: Option<String> = None;
            for s in all {
                let Statistics::ByteArray(v) = s else { return None };
                if v.min_opt().is_none() && v.max_opt().is_none() {
                    continue;
                }
                // Exact bounds only: parquet may truncate them.
                if !v.min_is_exact() || !v.max_is_exact() {
                    return None;
                }
                let min = std::str::from_utf8(v.min_opt()?.data()).ok()?.to_string();
                let max = std::str::from_utf8(v.max_opt()?.data()).ok()?.to_string();
                if lo.as_ref().is_none_or(|l| &min < l) {
                    lo = Some(min);
                }
                if hi.as_ref().is_none_or(|h| &max > h) {
                    hi = Some(max);
                }
            }
            let (lo, hi) = (lo?, hi?);
            (lo.chars().count() <= STATS_STRING_CHARS && hi.chars().count() <= STATS_STRING_CHARS)
                .then(|| (lo.into(), hi.into()))
        }
        _ => None,
    }
}
