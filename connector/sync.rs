//! `runport sync SOURCE TABLE`: keeps two Delta Lake tables, `TABLE/runs`
//! and `TABLE/history`, up to date with a source, reading only what changed.
//!
//! - The table is the state. Each run's row in `runs` carries three sync
//!   columns: `_sync_key` (the run's label in the source's listing),
//!   `_sync_fingerprint` (its change fingerprint, from the listing alone)
//!   and `_sync_history_file` (the `history` file holding its rows).
//! - A sync lists the source whole (cheap, and deletions only show there),
//!   compares fingerprints, and reads only new and changed runs. Unchanged
//!   runs' rows of `runs` are rebuilt from the table itself; their history
//!   is neither read nor rewritten, unless it shares a file with a changed
//!   or deleted run: that file is replaced copy-on-write, its other runs'
//!   rows copied unchanged.
//! - Runs still running get history files of their own, so that the files
//!   of finished runs are almost never rewritten.
//! - One commit per table, `history` first, then `runs` (rewritten whole:
//!   it is small), each with a `txn` action and runport's commit info; the
//!   `runs` commit records the `history` version it matches. Nothing changed:
//!   no commit at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;
use serde_json::json;

use crate::columns::ColumnKind;
use crate::delta::{DeltaDir, add_action, remove_action, txn};
use crate::error::{Error, Result};
use crate::export::{Planned, RunFailure, chunk_bytes, open};
use crate::http::HttpCounts;
use crate::objstore::Location;
use crate::output::dataset::OutputLock;
use crate::output::history::long_schema;
use crate::output::parallel::ParallelWriter;
use crate::output::runs::RunsTable;
use crate::output::spill::SpillDir;
use crate::output::system::{system_schema, system_writer_properties, write_system};
use crate::output::{PART_BYTES, Provenance, history_writer_properties, writer_properties};
use crate::pipeline::{EncodedHistory, HistoryEncoding, HistoryTarget, ReadRun};
use crate::plan::HistoryLayout;
use crate::run::{IdentityKind, IdentityValue, RunData, RunIdentity, SystemBudget};
use crate::sources::{RecordCounts, SourceOption, SyncMark};
use crate::value::Value;

/// The sync columns of `runs` (see the module).
pub const SYNC_KEY: &str = "_sync_key";
pub const SYNC_FINGERPRINT: &str = "_sync_fingerprint";
pub const SYNC_HISTORY_FILE: &str = "_sync_history_file";
pub const SYNC_HISTORY_MARK: &str = "_sync_history_mark";
pub const SYNC_VALUES: &str = "_sync_values";
/// With `--select system.*`: the `system` file holding the run's rows.
pub const SYNC_SYSTEM_FILE: &str = "_sync_system_file";
/// What tables of earlier versions hold instead of [`SYNC_VALUES`]: the null keys alone.
const SYNC_NULL_KEYS: &str = "_sync_null_keys";

/// What to sync, and how.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub source: String,
    pub table: PathBuf,
    pub selection: Option<String>,
    /// `Long` or `None` (a Delta table has one schema: the long layout).
    pub history: HistoryLayout,
    pub full_refresh: bool,
    pub keep_deleted: bool,
    pub concurrency: Option<usize>,
    pub options: Vec<SourceOption>,
    pub memory_limit: usize,
    /// `--shard K/N`: only the runs of shard K are synced.
    pub shard: Option<Shard>,
}

/// `--shard K/N`: the runs whose key (the run id the source lists) falls
/// in shard `index` of `count` (see [`Shard::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `K/N`, `K` counting from 0 (as Kubernetes' `JOB_COMPLETION_INDEX` does).
    pub fn parse(text: &str) -> std::result::Result<Shard, String> {
        let bad = || format!("--shard {text:?}: expected K/N with 0 <= K < N (K counts from 0), e.g. 0/4");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (k.trim().parse::<u32>().map_err(|_| bad())?, n.trim().parse::<u32>().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard of a run key among `count`: the 64-bit FNV-1a hash of its
    /// UTF-8 bytes, modulo `count`. The same in every version of runport.
    pub fn of(key: &str, count: u32) -> u32 {
        (fnv1a(key.bytes()) % u64::from(count)) as u32
    }

    pub fn owns(&self, key: &str) -> bool {
        Shard::of(key, self.count) == self.index
    }

    /// What the shard's file names carry: `s<K>of<N>`.
    pub fn tag(&self) -> String {
        format!("s{}of{}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Which runs and files of the tables a sync owns: all, or a shard's.
#[derive(Debug, Clone, Copy)]
struct Owner(Option<Shard>);

impl Owner {
    fn owns_run(&self, key: &str) -> bool {
        self.0.is_none_or(|s| s.owns(key))
    }

    /// A data file this sync may replace: a shard's own (`part-s<K>of<N>-`).
    fn owns_file(&self, name: &str) -> bool {
        self.0.is_none_or(|s| name.starts_with(&format!("part-{}-", s.tag())))
    }

    /// A data file of no shard of this layout (another shard count, or none):
    /// replaced by a full refresh.
    fn foreign_file(&self, name: &str) -> bool {
        let Some(s) = self.0 else { return false };
        let count = name
            .strip_prefix("part-s")
            .and_then(|rest| rest.split('-').next())
            .and_then(|tag| tag.split_once("of"))
            .and_then(|(k, n)| k.parse::<u32>().ok().and(n.parse::<u32>().ok()));
        count != Some(s.count)
    }
}

/// Runs by what the sync did with them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncRuns {
    pub new: usize,
    pub changed: usize,
    pub unchanged: usize,
    /// Gone from the source: removed from both tables (kept with `--keep-deleted`).
    pub deleted: usize,
    /// Changed runs whose new steps alone were read, their earlier rows
    /// copied from the table (W&B API runs that grew by appending).
    pub appended: usize,
    /// Could not be read: their previous rows are kept, and read again next time.
    pub failed: usize,
}

/// What `runport sync --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct SyncSummary {
    pub runs: SyncRuns,
    /// History rows written (new and changed runs, and rows copied out of replaced files).
    pub history_rows: u64,
    /// System-metric rows written, likewise (with `--select system.*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_rows: Option<u64>,
    pub files_added: usize,
    pub files_removed: usize,
    /// Files left by a sync killed before its commit, which no version
    /// refers to, deleted.
    pub unreferenced_removed: usize,
    /// Each table's version after the sync (unchanged when nothing changed).
    pub versions: BTreeMap<String, Option<u64>>,
    /// Whether the sync committed anything.
    pub committed: bool,
    /// `--shard`: the shard synced (`K/N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Commits made again on a fresh snapshot after another shard's
    /// commit conflicted with them.
    pub commit_retries: usize,
    /// Bytes of the files written.
    pub bytes: u64,
    /// The most disk the spill files took at once (history, and system
    /// samples, past `--memory-limit`'s share of a run).
    pub spill_bytes: u64,
    pub failures: Vec<RunFailure>,
    /// Records read and decoded (W&B files): only new and changed runs are read.
    pub records: RecordCounts,
    pub http: Option<HttpCounts>,
    pub seconds: f64,
    pub table: String,
}

impl SyncSummary {
    /// A sync that committed nothing.
    fn uncommitted(
        runs: SyncRuns,
        versions: BTreeMap<String, Option<u64>>,
        unreferenced_removed: usize,
        opts: &SyncOptions,
        started: Instant,
    ) -> SyncSummary {
        SyncSummary {
            runs,
            history_rows: 0,
            system_rows: None,
            files_added: 0,
            files_removed: 0,
            unreferenced_removed,
            versions,
            committed: false,
            shard: opts.shard.map(|s| s.to_string()),
            commit_retries: 0,
            bytes: 0,
            spill_bytes: 0,
            failures: Vec::new(),
            records: RecordCounts::default(),
            http: None,
            seconds: started.elapsed().as_secs_f64(),
            table: opts.table.display().to_string(),
        }
    }
}

/// A run with its sync columns: as the table holds it, or as this sync
/// read it, to write into `runs`.
#[derive(Clone)]
struct SyncedRun {
    data: RunData,
    fingerprint: String,
    history_file: Option<String>,
    mark: Option<SyncMark>,
    /// The `system` file holding its rows (`--select system.*`).
    system_file: Option<String>,
}

/// A run's sync columns: key, fingerprint, history file, history mark,
/// values kept aside, system file.
type SyncColumns = (String, String, Option<String>, Option<SyncMark>, Option<String>, Option<String>);

impl SyncedRun {
    /// Its sync columns, `key` its label in the listing, `kinds` those of
    /// the runs table's group columns.
    fn sync_columns(&self, key: &str, kinds: &HashMap<String, ColumnKind>) -> SyncColumns {
        let aside = values_aside(&self.data, kinds);
        let system = self.system_file.clone();
        (key.to_string(), self.fingerprint.clone(), self.history_file.clone(), self.mark.clone(), aside, system)
    }
}

/// The kind of each group column of a runs table of `runs`, unified as
/// the table's builder does.
fn column_kinds<'a>(runs: impl Iterator<Item = &'a RunData>) -> HashMap<String, ColumnKind> {
    let mut kinds: HashMap<String, ColumnKind> = HashMap::new();
    for data in runs {
        for (prefix, cols) in &data.groups {
            for (path, v) in cols {
                let k = kinds.entry(format!("{prefix}{path}")).or_insert(ColumnKind::Null);
                *k = k.unify(ColumnKind::of(v));
            }
        }
    }
    kinds
}

/// The group values of a run that its cells in a column of `kinds` do not
/// give back as they were: nulls (a null cell is also a key the run
/// lacks), ints in a float column, scalars other than text in a column of
/// mixed kinds. As a JSON object of column → value; `None` when none.
fn values_aside(data: &RunData, kinds: &HashMap<String, ColumnKind>) -> Option<String> {
    let mut out = String::new();
    for (prefix, cols) in &data.groups {
        for (path, v) in cols {
            let name = format!("{prefix}{path}");
            let column = kinds.get(&name).copied().unwrap_or(ColumnKind::Null);
            let kept = match (ColumnKind::of(v), column) {
                (ColumnKind::Null, _) => false,
                (_, ColumnKind::Json) | (ColumnKind::Str, ColumnKind::Mixed) => true,
                (own, column) => own == column,
            };
            if !kept {
                out.push(if out.is_empty() { '{' } else { ',' });
                out.push_str(&json!(name).to_string());
                out.push(':');
                out.push_str(&v.to_json());
            }
        }
    }
    (!out.is_empty()).then(|| out + "}")
}

/// A history file being written.
struct FileOut {
    rel: String,
    writer: ParallelWriter<BufWriter<File>>,
    rows: u64,
}

/// The history files a sync writes: runs in a shared file (a new one past
/// [`PART_BYTES`]), runs still running each in a file of their own.
struct HistoryFiles {
    dir: PathBuf,
    schema: SchemaRef,
    props: parquet::file::properties::WriterProperties,
    sync_id: String,
    next: usize,
    shared: Option<FileOut>,
    /// Closed files: (relative path, rows).
    done: Vec<(String, u64)>,
}

impl HistoryFiles {
    fn create(&mut self) -> Result<FileOut> {
        let rel = format!("part-{}-{:05}.parquet", self.sync_id, self.next);
        self.next += 1;
        let path = self.dir.join(&rel);
        let file = File::create(&path).map_err(|e| Error::write(path.display(), e))?;
        let writer = ParallelWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            Arc::clone(&self.schema),
            self.props.clone(),
        )
        .map_err(|e| Error::Parquet { path: path.display().to_string(), source: e })?;
        Ok(FileOut { rel, writer, rows: 0 })
    }

    fn close(&mut self, out: FileOut) -> Result<()> {
        let path = self.dir.join(&out.rel);
        let mut w = out.writer.close().map_err(|e| Error::Parquet { path: path.display().to_string(), source: e })?;
        std::io::Write::flush(&mut w).map_err(|e| Error::write(path.display(), e))?;
        let file = w.into_inner().map_err(|e| Error::write(path.display(), e.into_error()))?;
        file.sync_all().map_err(|e| Error::write(path.display(), e))?;
        self.done.push((out.rel, out.rows));
        Ok(())
    }

    /// Writes one run's rows; returns the file they went to (`None`: no rows).
    fn write_run(&mut self, own_file: bool, write: impl FnOnce(&mut FileOut) -> Result<()>) -> Result<Option<String>> {
        if own_file {
            let mut out = self.create()?;
            write(&mut out)?;
            let rel = out.rel.clone();
            let rows = out.rows;
            self.close(out)?;
            if rows == 0 {
                let (rel, _) = self.done.pop().expect("invariant: just closed");
                let _ = std::fs::remove_file(self.dir.join(&rel));
                return Ok(None);
            }
            return Ok(Some(rel));
        }
        if self.shared.is_none() {
            self.shared = Some(self.create()?);
        }
        let out = self.shared.as_mut().expect("invariant: just created");
        let before = out.rows;
        write(out)?;
        let (rel, rows) = (out.rel.clone(), out.rows - before);
        if out.writer.bytes_written() >= PART_BYTES {
            let full = self.shared.take().expect("invariant: open");
            self.close(full)?;
        }
        Ok((rows > 0).then_some(rel))
    }

    /// [`HistoryFiles::finish`], then the files published to `table` (an
    /// object store's copy uploaded).
    fn finish_into(self, table: &DeltaDir) -> Result<Vec<(String, u64)>> {
        let written = self.finish()?;
        table.publish(&written.iter().map(|(rel, _)| rel.clone()).collect::<Vec<_>>())?;
        Ok(written)
    }

    /// Closes the shared file; returns every file written, with rows (a
    /// shared file that got no rows is removed).
    fn finish(mut self) -> Result<Vec<(String, u64)>> {
        if let Some(out) = self.shared.take() {
            self.close(out)?;
        }
        let dir = self.dir.clone();
        self.done.retain(|(rel, rows)| {
            if *rows == 0 {
                let _ = std::fs::remove_file(dir.join(rel));
            }
            *rows > 0
        });
        Ok(self.done)
    }
}

/// The largest `step` of a history batch.
fn max_step(batch: &RecordBatch) -> Option<i64> {
    batch.column_by_name("step")?.as_primitive_opt::<Int64Type>()?.iter().flatten().max()
}

/// Writes a run's history whose later steps alone were read (`history`):
/// key by key, the run's earlier rows from the table's file `file` first,
/// then the new ones, so that the rows keep the files' order (`run_id`,
/// `key`, `step`).
fn merge_earlier(
    file: &Path,
    run_id: &str,
    history: EncodedHistory,
    schema: &SchemaRef,
    write: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let mut earlier = EarlierRows::open(file, run_id)?;
    {
        let mut later = |b: &RecordBatch| -> Result<()> {
            let b = plain(b)?;
            for (key, start, end) in key_runs(&b)? {
                earlier.write_through(Some(&key), write)?;
                write(&b.slice(start, end - start))?;
            }
            Ok(())
        };
        match history {
            EncodedHistory::Batch(b) => later(&b)?,
            EncodedHistory::Spilled(spilled) => spilled.replay(schema, &mut later)?,
            EncodedHistory::None | EncodedHistory::Kinds(_) => {}
        }
    }
    earlier.write_through(None, write)
}

/// A history batch with its run-length encoded columns (`run_id`, `key`) as plain text.
fn plain(b: &RecordBatch) -> Result<RecordBatch> {
    let columns = b
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::RunEndEncoded(..) => crate::output::runlength::expand_to_strings(c.as_ref())
                .map_err(|e| Error::Parquet { path: "history".into(), source: e }),
            _ => Ok(Arc::clone(c)),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(long_schema(), columns).map_err(|e| Error::Arrow { what: "history".into(), source: e })
}

/// The rows of a batch by key: `(key, start, end)` for each run of equal
/// keys (a batch with plain text keys, see [`plain`]).
fn key_runs(b: &RecordBatch) -> Result<Vec<(String, usize, usize)>> {
    let keys = b
        .column_by_name("key")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Internal("history batch without a text key column".into()))?;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=keys.len() {
        if i == keys.len() || keys.value(i) != keys.value(start) {
            out.push((keys.value(start).to_string(), start, i));
            start = i;
        }
    }
    Ok(out)
}

/// A run's rows in a history file of the table, read in the file's order.
struct EarlierRows {
    rows: Box<dyn Iterator<Item = Result<RecordBatch>>>,
    path: PathBuf,
    batch: Option<RecordBatch>,
    pos: usize,
}

impl EarlierRows {
    fn open(path: &Path, run_id: &str) -> Result<EarlierRows> {
        let rows = Box::new(rows_of(path, HashSet::from([run_id.to_string()]), long_schema())?);
        Ok(EarlierRows { rows, path: path.to_path_buf(), batch: None, pos: 0 })
    }

    /// The next batch holding rows of the run; `false` at the end.
    fn next_batch(&mut self) -> Result<bool> {
        self.batch = self.rows.next().transpose()?;
        self.pos = 0;
        Ok(self.batch.is_some())
    }

    /// Writes the run's rows up to and with key `through` (all: `None`).
    fn write_through(
        &mut self,
        through: Option<&str>,
        write: &mut dyn FnMut(&RecordBatch) -> Result<()>,
    ) -> Result<()> {
        loop {
            let exhausted = self.batch.as_ref().is_none_or(|b| self.pos == b.num_rows());
            if exhausted && !self.next_batch()? {
                return Ok(());
            }
            let batch = self.batch.as_ref().expect("invariant: a batch with rows left");
            let keys = batch.column_by_name("key").and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| {
                Error::Internal(format!("{}: a history file without a key text column", self.path.display()))
            })?;
            let mut end = self.pos;
            while end < keys.len() && through.is_none_or(|k| keys.value(end) <= k) {
                end += 1;
            }
            if end > self.pos {
                write(&batch.slice(self.pos, end - self.pos))?;
                self.pos = end;
            }
            if end < keys.len() {
                return Ok(());
            }
        }
    }
}

fn write_batch(out: &mut FileOut, dir: &Path, batch: &RecordBatch) -> Result<()> {
    if batch.num_rows() == 0 {
        return Ok(());
    }
    out.writer
        .write(batch)
        .map_err(|e| Error::Parquet { path: dir.join(&out.rel).display().to_string(), source: e })?;
    out.rows += batch.num_rows() as u64;
    Ok(())
}

/// Syncs `opts.source` into the Delta tables under `opts.table`.
pub fn sync(opts: &SyncOptions) -> Result<SyncSummary> {
    let started = Instant::now();
    if opts.history == HistoryLayout::Wide {
        return Err(Error::Usage(
            "runport sync writes the long history layout (or none): a Delta table keeps one schema".into(),
        ));
    }
    if opts.memory_limit < crate::export::MIN_MEMORY_LIMIT {
        return Err(Error::Usage(format!("--memory-limit {} is below the smallest taken", opts.memory_limit)));
    }
    let planned = open(&opts.source, opts.selection.as_deref(), opts.history, opts.concurrency, &opts.options)?;
    let listing = planned.source.fingerprints(&planned.plan)?.ok_or_else(|| {
        Error::Usage(format!(
            "runport sync cannot tell what changed in {} sources; use runport export",
            planned.provenance.source_kind
        ))
    })?;
    let runtime = Arc::new(crate::remote::io_runtime()?);
    let owner = Owner(opts.shard);
    let location = crate::objstore::location(&opts.table.to_string_lossy())?;
    // A table in an object store: its new files are written, and the files
    // read downloaded, in a local folder of the sync's own.
    let staging = match &location {
        Location::Remote(_) => Some(
            tempfile::Builder::new()
                .prefix("runport-sync-")
                .tempdir()
                .map_err(|e| Error::write("a temporary folder (TMPDIR)", e))?,
        ),
        Location::Local(_) => None,
    };
    let system = planned.plan.system;
    let (_lock, mut runs_table, mut history_table, mut system_table, local_root) = match &location {
        Location::Local(root) => {
            std::fs::create_dir_all(root).map_err(|e| Error::write(root.display(), e))?;
            // Syncs into one TABLE exclude each other (a second one exits
            // 2); the shards of a sharded one exclude only themselves.
            let lock_name = match opts.shard {
                Some(s) => format!(".runport-sync-lock-{}", s.tag()),
                None => ".runport-sync-lock".to_string(),
            };
            let lock = OutputLock::acquire_for(root.join(lock_name), root, "sync")?;
            let runs = runtime.block_on(DeltaDir::open(&root.join("runs")))?;
            let history = runtime.block_on(DeltaDir::open(&root.join("history")))?;
            let system_table =
                if system { Some(runtime.block_on(DeltaDir::open(&root.join("system")))?) } else { None };
            (Some(lock), runs, history, system_table, root.clone())
        }
        Location::Remote(remote) => {
            // No lock in an object store: syncs race at their commits (see the README).
            runtime.block_on(remote.check())?;
            let dir = staging.as_ref().expect("invariant: a remote table has a staging folder").path();
            let runs = DeltaDir::open_remote(remote.join("runs"), &dir.join("runs"), Arc::clone(&runtime))?;
            let history = DeltaDir::open_remote(remote.join("history"), &dir.join("history"), Arc::clone(&runtime))?;
            let system_table = if system {
                Some(DeltaDir::open_remote(remote.join("system"), &dir.join("system"), Arc::clone(&runtime))?)
            } else {
                None
            };
            (None, runs, history, system_table, dir.to_path_buf())
        }
    };
    let started_at = std::time::SystemTime::now();
    let settings = settings(&planned, opts.shard);
    let mut full = opts.full_refresh || runs_table.table.is_none();
    if !opts.full_refresh {
        check_settings(&runs_table, &settings, &opts.table)?;
    }
    let mut table_runs = if full { BTreeMap::new() } else { read_table_runs(&runs_table, &planned)? };
    if !full && runs_table.table.is_some() && table_runs.is_empty() && !runs_table.files()?.is_empty() {
        full = true;
    }
    // A shard's runs only (the others are other shards' to sync).
    table_runs.retain(|key, _| owner.owns_run(key));
    let app_id = app_id(&settings, opts.shard);
    let history_seq = runtime.block_on(history_table.txn_version(&app_id))?;
    let runs_seq = runtime.block_on(runs_table.txn_version(&app_id))?;
    let system_seq = match &system_table {
        Some(t) => runtime.block_on(t.txn_version(&app_id))?,
        None => None,
    };

    // What changed: from the listing alone.
    let listed: BTreeMap<String, String> = listing.into_iter().filter(|(key, _)| owner.owns_run(key)).collect();
    let to_read: HashSet<String> = listed
        .iter()
        .filter(|(key, fp)| full || table_runs.get(*key).is_none_or(|t| &t.fingerprint != *fp))
        .map(|(key, _)| key.clone())
        .collect();
    let gone: Vec<String> = table_runs.keys().filter(|k| !listed.contains_key(*k)).cloned().collect();
    let mut counts = SyncRuns {
        new: to_read.iter().filter(|k| !table_runs.contains_key(*k)).count(),
        changed: to_read.iter().filter(|k| table_runs.contains_key(*k)).count(),
        unchanged: listed.len() - to_read.len(),
        deleted: gone.len(),
        appended: 0,
        failed: 0,
    };
    let mut versions =
        BTreeMap::from([("runs".to_string(), runs_table.version()), ("history".to_string(), history_table.version())]);
    if let Some(t) = &system_table {
        versions.insert("system".into(), t.version());
    }
    let nothing = to_read.is_empty() && (gone.is_empty() || opts.keep_deleted) && !full;
    if nothing {
        let removed = remove_unreferenced(&tables(&runs_table, &history_table, system_table.as_ref()), None, owner)?;
        let summary = SyncSummary::uncommitted(counts, versions, removed, opts, started);
        return Ok(SyncSummary { http: planned.source.http_counts(), ..summary });
    }

    // Read the new and changed runs; their history goes to new files.
    let sync_id = match opts.shard {
        Some(s) => format!("{}-{}", s.tag(), sync_id()),
        None => sync_id(),
    };
    let spill = SpillDir::create(&local_root.join(".history.runport-spill"))?;
    // A run's system samples past a history chunk wait in the spill folder too.
    let budget = SystemBudget { bytes: chunk_bytes(opts.memory_limit), spill: Arc::clone(&spill) };
    let plan = Arc::new(planned.plan.with_system_budget(budget));
    let schema = long_schema();
    let target = plan.history.then(|| {
        Arc::new(HistoryTarget {
            encoding: HistoryEncoding::Long(Arc::clone(&schema)),
            chunk_bytes: chunk_bytes(opts.memory_limit),
            spill: Some(Arc::clone(&spill)),
        })
    });
    let mut files = HistoryFiles {
        dir: history_table.path.clone(),
        schema: Arc::clone(&schema),
        props: history_writer_properties(&planned.provenance, true),
        sync_id: sync_id.clone(),
        next: 0,
        shared: None,
        done: Vec::new(),
    };
    let system_schema = system_schema();
    let mut sys_files = system_table.as_ref().map(|t| HistoryFiles {
        dir: t.path.clone(),
        schema: Arc::clone(&system_schema),
        props: system_writer_properties(&planned.provenance),
        sync_id: sync_id.clone(),
        next: 0,
        shared: None,
        done: Vec::new(),
    });
    let mut new_runs: BTreeMap<String, SyncedRun> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut fatal: Option<Error> = None;
    let mut records = RecordCounts::default();
    let dir = history_table.path.clone();
    // The runs to read, with where the table's history of each stands: a
    // source that can read only later steps does (checked against its listing).
    let only: HashMap<String, Option<SyncMark>> = to_read
        .iter()
        .map(|key| {
            let mark = table_runs.get(key).filter(|t| plan.history && !full && t.history_file.is_some());
            (key.clone(), mark.and_then(|t| t.mark.clone()))
        })
        .collect();
    let mut appended = 0;
    planned.source.read_only(&plan, planned.concurrency, target, &only, &mut |label, run, counts| {
        records.add(&counts);
        let ReadRun { mut data, history } = match run {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(run = label, %error, "run failed; its previous rows are kept");
                failures.push(RunFailure { run: label.to_string(), stage: "decode".into(), error });
                return ControlFlow::Continue(());
            }
        };
        let running = is_live(&data.identity);
        let mark = data.history_mark.take().unwrap_or_default();
        // Only later steps were read: the run's earlier rows come from its file.
        let earlier = match (mark.from_step, table_runs.get(label)) {
            (Some(_), Some(t)) => match t.history_file.as_ref().map(|f| history_table.fetch(f)).transpose() {
                Ok(file) => file.map(|f| (f, t.data.identity.run_id.clone(), t.mark.as_ref().map(|m| m.step))),
                Err(e) => {
                    fatal = Some(e);
                    return ControlFlow::Break(());
                }
            },
            _ => None,
        };
        if mark.from_step.is_some() && earlier.is_none() {
            let error = "internal error: later steps were read without the earlier ones in the table".to_string();
            failures.push(RunFailure { run: label.to_string(), stage: "decode".into(), error });
            return ControlFlow::Continue(());
        }
        let mut top: Option<i64> = None;
        // A run that grows by appending gets a file of its own, as a live
        // run does (its earlier rows are written as read, not run-length
        // encoded: a row group holds one form or the other).
        let written = files.write_run(running || earlier.is_some(), |out| {
            let mut write = |b: &RecordBatch| {
                top = top.max(max_step(b));
                write_batch(out, &dir, b)
            };
            match (&earlier, history) {
                (Some((file, run_id, _)), history) => merge_earlier(file, run_id, history, &schema, &mut write),
                (None, EncodedHistory::Batch(batch)) => write(&batch),
                (None, EncodedHistory::Spilled(spilled)) => spilled.replay(&schema, &mut write),
                (None, EncodedHistory::None | EncodedHistory::Kinds(_)) => Ok(()),
            }
        });
        if earlier.is_some() {
            appended += 1;
        }
        // The run's system metrics: a file as its history gets one.
        let samples = data.system.take();
        let system_file = match (sys_files.as_mut(), samples) {
            (Some(files), Some(samples)) => {
                let dir = files.dir.clone();
                let run_id = &data.identity.run_id;
                let written = files.write_run(running, |out| {
                    write_system(&system_schema, run_id, samples, &mut |b| write_batch(out, &dir, b))
                });
                match written {
                    Ok(f) => f,
                    Err(e) => {
                        fatal = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            _ => None,
        };
        match written {
            Ok(history_file) => {
                let fingerprint = listed.get(label).cloned().unwrap_or_default();
                let old_top = earlier.and_then(|e| e.2);
                let step = top.max(old_top);
                let mark = match (step, mark.lines) {
                    (Some(step), Some(lines)) => {
                        Some(SyncMark { step, lines, offsets: mark.offsets, metric_files: mark.metric_files })
                    }
                    _ => None,
                };
                new_runs.insert(label.to_string(), SyncedRun { data, fingerprint, history_file, mark, system_file });
                ControlFlow::Continue(())
            }
            Err(e) => {
                fatal = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = fatal {
        return Err(e);
    }
    counts.failed = failures.len();
    counts.appended = appended;
    for f in &failures {
        // A run that failed keeps what the table holds (a new one is not added).
        if !table_runs.contains_key(&f.run) {
            counts.new -= 1;
        } else {
            counts.changed -= 1;
        }
    }

    // Files to replace: those of runs read again, of runs gone, or all (full
    // refresh); their other runs' rows are copied into a new file each.
    let dropped: HashSet<&String> = if opts.keep_deleted { HashSet::new() } else { gone.iter().collect() };
    let mut replacing = Replacing { table_runs: &mut table_runs, new_runs: &new_runs, dropped: &dropped, full, owner };
    let replaced = replacing.files(RunFile::History, &history_table, &mut files, &schema)?;
    let system_replaced = match (&system_table, sys_files.as_mut()) {
        (Some(t), Some(f)) => replacing.files(RunFile::System, t, f, &system_schema)?,
        _ => BTreeSet::new(),
    };
    let written_files = files.finish_into(&history_table)?;
    let history_rows: u64 = written_files.iter().map(|(_, r)| r).sum::<u64>();
    let system_written = match (&system_table, sys_files) {
        (Some(t), Some(f)) => f.finish_into(t)?,
        _ => Vec::new(),
    };
    let mut bytes = 0u64;
    // Only failures (their runs keep their rows): nothing to commit.
    if !full
        && new_runs.is_empty()
        && dropped.is_empty()
        && replaced.is_empty()
        && written_files.is_empty()
        && system_replaced.is_empty()
        && system_written.is_empty()
    {
        let removed = remove_unreferenced(&tables(&runs_table, &history_table, system_table.as_ref()), None, owner)?;
        let summary = SyncSummary::uncommitted(counts, versions, removed, opts, started);
        let spill_bytes = spill.peak_bytes();
        return Ok(SyncSummary { failures, records, http: planned.source.http_counts(), spill_bytes, ..summary });
    }

    // The system commit, then the history commit (the runs commit, last,
    // refers to their files).
    let mut files_added = 0;
    let mut files_removed = 0;
    let mut retries = 0;
    let committing = Committing { runtime: &runtime, app_id: &app_id, settings: &settings, opts };
    let info = commit_info(&planned.provenance, &counts, None);
    let mut system_rows = None;
    if let Some(table) = system_table.as_mut() {
        system_rows = Some(system_written.iter().map(|(_, r)| r).sum::<u64>());
        let c = committing.commit_files(
            table,
            system_seq,
            &mut retries,
            &system_schema,
            &system_written,
            &system_replaced,
            &info,
        )?;
        (files_added, files_removed, bytes) = (files_added + c.added, files_removed + c.removed, bytes + c.bytes);
        versions.insert("system".into(), Some(c.version));
    }
    if plan.history {
        let c = committing.commit_files(
            &mut history_table,
            history_seq,
            &mut retries,
            &schema,
            &written_files,
            &replaced,
            &info,
        )?;
        (files_added, files_removed, bytes) = (files_added + c.added, files_removed + c.removed, bytes + c.bytes);
        versions.insert("history".into(), Some(c.version));
    }

    // The runs commit: the whole table, rebuilt: this sync's runs, and the
    // other shards' rows as the table holds them when it commits.
    let own: Vec<(String, SyncedRun)> = table_runs
        .iter()
        .filter(|(key, _)| !new_runs.contains_key(*key) && !dropped.contains(key))
        .chain(new_runs.iter())
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    let own_keys: HashSet<String> = own.iter().map(|(k, _)| k.clone()).collect();
    let props = writer_properties(&planned.provenance, "runs", &["run_id", "source", "state"], &[]);
    let info = commit_info(&planned.provenance, &counts, versions["history"]);
    let mut attempt = 0;
    let mut runs_bytes = 0;
    let mut runs_removed = 0;
    let mut written: Option<PathBuf> = None;
    let v = committing.commit(&mut runs_table, runs_seq, &mut retries, |table| {
        // The file of an attempt that lost to another shard's commit was never committed.
        if let Some(old) = written.take() {
            let _ = std::fs::remove_file(old);
        }
        let others: Vec<(String, SyncedRun)> = if opts.shard.is_some() {
            read_table_runs(table, &planned)?
                .into_iter()
                .filter(|(key, _)| !owner.owns_run(key) && !own_keys.contains(key))
                .collect()
        } else {
            Vec::new()
        };
        let mut all: Vec<(String, SyncedRun)> = own.clone();
        all.extend(others);
        let batch = runs_batch(&planned, &mut all)?;
        let rel = format!("part-{sync_id}-runs-{attempt}.parquet");
        attempt += 1;
        write_runs_file(&table.path.join(&rel), &batch, props.clone())?;
        written = Some(table.path.join(&rel));
        table.publish(std::slice::from_ref(&rel))?;
        let add = add_action(&table.path, &rel)?;
        if let deltalake::kernel::Action::Add(a) = &add {
            runs_bytes = a.size as u64;
        }
        let mut actions = vec![add];
        let old = table.files()?;
        runs_removed = old.len();
        actions.extend(old.iter().map(|f| remove_action(f)));
        Ok((batch.schema(), actions, info.clone()))
    })?;
    bytes += runs_bytes;
    files_added += 1;
    files_removed += runs_removed;
    versions.insert("runs".into(), Some(v));
    let spill_bytes = spill.peak_bytes();
    drop(spill);
    let unreferenced_removed =
        remove_unreferenced(&tables(&runs_table, &history_table, system_table.as_ref()), Some(started_at), owner)?;

    Ok(SyncSummary {
        runs: counts,
        history_rows,
        system_rows,
        files_added,
        files_removed,
        unreferenced_removed,
        versions,
        committed: true,
        shard: opts.shard.map(|s| s.to_string()),
        commit_retries: retries,
        bytes,
        spill_bytes,
        failures,
        records,
        http: planned.source.http_counts(),
        seconds: started.elapsed().as_secs_f64(),
        table: opts.table.display().to_string(),
    })
}

/// The runs table of `runs` (keyed by their labels), with the sync columns.
fn runs_batch(planned: &Planned, runs: &mut [(String, SyncedRun)]) -> Result<RecordBatch> {
    let mut table = RunsTable::new(&planned.plan.identity_columns, planned.columns.groups);
    let kinds = column_kinds(runs.iter().map(|(_, r)| &r.data));
    let mut sync_columns: HashMap<String, SyncColumns> = HashMap::new();
    for (key, r) in runs.iter_mut() {
        sync_columns.insert(r.data.identity.run_id.clone(), r.sync_columns(key, &kinds));
        table.push(&mut r.data);
    }
    with_sync_columns(table.build()?, &sync_columns, planned.plan.system)
}

/// Writes the runs table's file, synced to disk.
fn write_runs_file(path: &Path, batch: &RecordBatch, props: parquet::file::properties::WriterProperties) -> Result<()> {
    let props = if batch.num_columns() > crate::output::WIDE_TABLE_COLUMNS {
        props.into_builder().set_compression(parquet::basic::Compression::SNAPPY).build()
    } else {
        props
    };
    let shown = || path.display().to_string();
    let file = File::create(path).map_err(|e| Error::write(shown(), e))?;
    let mut w = ParallelWriter::try_new(BufWriter::new(file), batch.schema(), props)
        .map_err(|e| Error::Parquet { path: shown(), source: e })?;
    w.write(batch).map_err(|e| Error::Parquet { path: shown(), source: e })?;
    let out = w.close().map_err(|e| Error::Parquet { path: shown(), source: e })?;
    let file = out.into_inner().map_err(|e| Error::write(shown(), e.into_error()))?;
    file.sync_all().map_err(|e| Error::write(shown(), e))
}

/// Which of a run's files: the `history` one or the `system` one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RunFile {
    History,
    System,
}

impl SyncedRun {
    fn file(&self, which: RunFile) -> Option<&String> {
        match which {
            RunFile::History => self.history_file.as_ref(),
            RunFile::System => self.system_file.as_ref(),
        }
    }

    fn set_file(&mut self, which: RunFile, file: Option<String>) {
        match which {
            RunFile::History => self.history_file = file,
            RunFile::System => self.system_file = file,
        }
    }
}

/// What a sync replaces in a table of per-run files (`history`, `system`).
struct Replacing<'a> {
    table_runs: &'a mut BTreeMap<String, SyncedRun>,
    new_runs: &'a BTreeMap<String, SyncedRun>,
    dropped: &'a HashSet<&'a String>,
    full: bool,
    owner: Owner,
}

impl Replacing<'_> {
    /// The files of `table` to remove: those of runs read again and of runs
    /// gone (all of this shard's, on a full refresh), and live files no run
    /// of `runs` refers to (a sync killed between its commits: their runs
    /// are read again). The rows of the other runs of a replaced file are
    /// copied into a new file each (through `files`), and those runs refer
    /// to it.
    fn files(
        &mut self,
        which: RunFile,
        table: &DeltaDir,
        files: &mut HistoryFiles,
        schema: &SchemaRef,
    ) -> Result<BTreeSet<String>> {
        let owner = self.owner;
        let live = table.files()?;
        if self.full {
            return Ok(live.into_iter().filter(|f| owner.owns_file(f) || owner.foreign_file(f)).collect());
        }
        let referred: HashSet<&String> = self.table_runs.values().filter_map(|t| t.file(which)).collect();
        let replaced: BTreeSet<String> = self
            .table_runs
            .iter()
            .filter(|(key, _)| self.new_runs.contains_key(*key) || self.dropped.contains(key))
            .filter_map(|(_, t)| t.file(which).cloned())
            .chain(live.iter().filter(|f| !referred.contains(f) && owner.owns_file(f)).cloned())
            .collect();
        let mut carry: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, t) in self.table_runs.iter() {
            if let Some(f) = t.file(which)
                && replaced.contains(f)
                && !self.new_runs.contains_key(key)
                && !self.dropped.contains(key)
            {
                carry.entry(f.clone()).or_default().push(key.clone());
            }
        }
        let dir = files.dir.clone();
        for (file, keys) in carry {
            let ids: HashSet<String> = keys.iter().map(|k| self.table_runs[k].data.identity.run_id.clone()).collect();
            let path = table.fetch(&file)?;
            let written = files.write_run(true, |out| copy_rows(&path, &ids, schema, out, &dir))?;
            for key in keys {
                if let Some(t) = self.table_runs.get_mut(&key) {
                    t.set_file(which, written.clone());
                }
            }
        }
        Ok(replaced)
    }
}

/// What [`Committing::commit_files`] committed.
struct Committed {
    version: u64,
    added: usize,
    removed: usize,
    bytes: u64,
}

/// The tables of a sync: `runs`, `history`, and `system` when it is synced.
fn tables<'a>(runs: &'a DeltaDir, history: &'a DeltaDir, system: Option<&'a DeltaDir>) -> Vec<&'a DeltaDir> {
    let mut all = vec![runs, history];
    all.extend(system);
    all
}

/// Removes what a killed sync wrote and never committed (see
/// [`DeltaDir::remove_unreferenced`]); returns how many files.
fn remove_unreferenced(
    tables: &[&DeltaDir],
    written_before: Option<std::time::SystemTime>,
    owner: Owner,
) -> Result<usize> {
    let mut removed = 0;
    for t in tables {
        let gone = t.remove_unreferenced(written_before, &|name| owner.owns_file(name))?;
        if !gone.is_empty() {
            tracing::info!(table = %t.path.display(), files = ?gone, "removed files no version refers to");
        }
        removed += gone.len();
    }
    Ok(removed)
}

/// Whether a run is still running (W&B `state` `running`, MLflow `status`
/// `RUNNING`): its history gets a file of its own.
fn is_live(identity: &RunIdentity) -> bool {
    identity.text("state") == Some("running") || identity.text("status") == Some("RUNNING")
}

/// What the tables were synced with; a later sync with other settings is
/// refused unless `--full-refresh`.
fn settings(planned: &Planned, shard: Option<Shard>) -> Vec<(String, String)> {
    vec![
        ("runport.source".into(), planned.provenance.source.clone()),
        ("runport.source_kind".into(), planned.provenance.source_kind.clone()),
        ("runport.selection".into(), planned.provenance.selection.clone()),
        ("runport.history".into(), if planned.plan.history { "long" } else { "none" }.into()),
        (SHARDS_SETTING.into(), shard.map_or(1, |s| s.count).to_string()),
    ]
}

/// The shard count a table was synced with (tables without it: 1).
const SHARDS_SETTING: &str = "runport.shards";

/// Refuses tables synced with other settings.
fn check_settings(table: &DeltaDir, settings: &[(String, String)], shown: &Path) -> Result<()> {
    let Some(conf) = table.configuration() else { return Ok(()) };
    for (key, want) in settings {
        let have = conf.get(key).map(String::as_str).unwrap_or(if key == SHARDS_SETTING { "1" } else { "" });
        if have != want {
            let hint = if key == SHARDS_SETTING {
                " (runs would move between shards: give --full-refresh to every shard to rewrite them)"
            } else {
                "; give --full-refresh to rewrite them"
            };
            return Err(Error::Usage(format!(
                "{}: the tables were synced with {key} {have:?}, not {want:?}{hint}",
                shown.display()
            )));
        }
    }
    Ok(())
}

/// Commits of one sync: on a conflict with another shard's commit, made
/// again on a fresh snapshot.
struct Committing<'a> {
    runtime: &'a tokio::runtime::Runtime,
    app_id: &'a str,
    settings: &'a [(String, String)],
    opts: &'a SyncOptions,
}

/// Commits made again at most this many times.
const COMMIT_ATTEMPTS: usize = 30;

impl Committing<'_> {
    /// Commits the files written into a table of per-run files (`written`,
    /// published already) and the removal of `replaced`: only of those still
    /// live (a killed sync, or another shard replacing files of another
    /// layout, may have removed some).
    #[allow(clippy::too_many_arguments)]
    fn commit_files(
        &self,
        table: &mut DeltaDir,
        seq: Option<i64>,
        retries: &mut usize,
        schema: &SchemaRef,
        written: &[(String, u64)],
        replaced: &BTreeSet<String>,
        info: &HashMap<String, serde_json::Value>,
    ) -> Result<Committed> {
        let mut adds = Vec::new();
        let mut bytes = 0;
        for (rel, _) in written {
            let add = add_action(&table.path, rel)?;
            if let deltalake::kernel::Action::Add(a) = &add {
                bytes += a.size as u64;
            }
            adds.push(add);
        }
        let mut removed = 0;
        let version = self.commit(table, seq, retries, |table| {
            let live: HashSet<String> = table.files()?.into_iter().collect();
            let mut actions = adds.clone();
            actions.extend(replaced.iter().filter(|f| live.contains(*f)).map(|f| remove_action(f)));
            removed = actions.len() - adds.len();
            Ok((Arc::clone(schema), actions, info.clone()))
        })?;
        Ok(Committed { version, added: written.len(), removed, bytes })
    }

    /// Commits what `build` makes of the table (its schema, actions and
    /// commit info) with this sync's `txn` (`seq`: the one the table held
    /// when the sync began). When the commit conflicts with another's, the
    /// table is loaded again and, unless a commit of this sync's own
    /// application id came in between (the same sync, running twice: that
    /// one wins), `build` makes the commit again.
    fn commit(
        &self,
        table: &mut DeltaDir,
        seq: Option<i64>,
        retries: &mut usize,
        mut build: impl FnMut(
            &DeltaDir,
        )
            -> Result<(SchemaRef, Vec<deltalake::kernel::Action>, HashMap<String, serde_json::Value>)>,
    ) -> Result<u64> {
        let mut attempt = 0;
        loop {
            let (schema, mut actions, info) = build(table)?;
            actions.push(txn(self.app_id, seq.map_or(0, |v| v + 1)));
            match self.runtime.block_on(table.commit(&schema, self.settings, actions, info)) {
                Ok(v) => return Ok(v),
                Err(Error::CommitConflict { table: shown, detail }) if self.opts.shard.is_some() => {
                    attempt += 1;
                    self.runtime.block_on(table.load())?;
                    let now = self.runtime.block_on(table.txn_version(self.app_id))?;
                    if now != seq || attempt >= COMMIT_ATTEMPTS {
                        return Err(Error::CommitConflict { table: shown, detail });
                    }
                    if !self.opts.full_refresh {
                        check_settings(table, self.settings, &self.opts.table)?;
                    }
                    *retries += 1;
                    tracing::debug!(table = %shown, attempt, %detail, "commit conflict with another shard: again");
                    // Shards that conflict start again apart.
                    std::thread::sleep(std::time::Duration::from_millis(5 + 17 * (attempt as u64 % 7)));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The 64-bit FNV-1a hash of `bytes` (shards and `txn` ids: stable across versions).
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// The `txn` application id of a source and selection (and shard).
fn app_id(settings: &[(String, String)], shard: Option<Shard>) -> String {
    let shard = shard.map(|s| ("runport.shard".to_string(), s.to_string()));
    let h = fnv1a(
        settings.iter().chain(shard.as_ref()).flat_map(|(k, v)| k.bytes().chain([0]).chain(v.bytes()).chain([0])),
    );
    format!("runport-sync-{h:016x}")
}

/// A name part unique to this sync: time and process.
fn sync_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}-{:x}-{}", now.as_secs(), now.subsec_nanos(), std::process::id())
}

fn commit_info(
    prov: &Provenance,
    counts: &SyncRuns,
    history_version: Option<u64>,
) -> HashMap<String, serde_json::Value> {
    let mut info = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "source": prov.source,
        "source_kind": prov.source_kind,
        "selection": prov.selection,
        "runs": counts,
    });
    if let Some(v) = history_version {
        info["history_version"] = v.into();
    }
    HashMap::from([("runport".to_string(), info)])
}

/// Copies the rows of runs `ids` from a history file of the table into `out`.
fn copy_rows(path: &Path, ids: &HashSet<String>, schema: &SchemaRef, out: &mut FileOut, dir: &Path) -> Result<()> {
    for batch in rows_of(path, ids.clone(), Arc::clone(schema))? {
        write_batch(out, dir, &batch?)?;
    }
    Ok(())
}

/// The rows of runs `ids` in a history (or system) file of the table, in
/// the file's order, as batches of `schema` (plain text columns); empty
/// batches left out.
fn rows_of(
    path: &Path,
    ids: HashSet<String>,
    schema: SchemaRef,
) -> Result<impl Iterator<Item = Result<RecordBatch>> + use<>> {
    let file = File::open(path).map_err(|e| Error::write(path.display(), e))?;
    let what = |e| Error::Parquet { path: path.display().to_string(), source: e };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(what)?
        .with_batch_size(65536)
        .build()
        .map_err(what)?;
    let path = path.to_path_buf();
    let filter = move |batch: std::result::Result<RecordBatch, arrow_schema::ArrowError>| -> Result<RecordBatch> {
        let arrow = |e| Error::Arrow { what: path.display().to_string(), source: e };
        let batch = batch.map_err(arrow)?;
        let run_id = batch.column_by_name("run_id").and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| {
            Error::Internal(format!("{}: a history file without a run_id text column", path.display()))
        })?;
        let keep: BooleanArray = run_id.iter().map(|id| Some(id.is_some_and(|id| ids.contains(id)))).collect();
        let kept = arrow_select::filter::filter_record_batch(&batch, &keep).map_err(arrow)?;
        RecordBatch::try_new(Arc::clone(&schema), kept.columns().to_vec()).map_err(arrow)
    };
    Ok(reader.map(filter).filter(|b| b.as_ref().map_or(true, |b| b.num_rows() > 0)))
}

/// The table's runs, rebuilt from `runs`: each row as the run's data (its
/// identity and column groups), fingerprint and history file, by key.
fn read_table_runs(table: &DeltaDir, planned: &Planned) -> Result<BTreeMap<String, SyncedRun>> {
    let mut out = BTreeMap::new();
    for rel in table.files()? {
        let path = table.fetch(&rel)?;
        let file = File::open(&path).map_err(|e| Error::write(path.display(), e))?;
        let what = |e| Error::Parquet { path: path.display().to_string(), source: e };
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(what)?
            .with_batch_size(4096)
            .build()
            .map_err(what)?;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Arrow { what: path.display().to_string(), source: e })?;
            for row in 0..batch.num_rows() {
                let (key, run) = table_run(&batch, row, planned)
                    .map_err(|e| Error::Internal(format!("{}: row {row}: {e}", path.display())))?;
                out.insert(key, run);
            }
        }
    }
    Ok(out)
}

fn text_at(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    let c = batch.column_by_name(name)?.as_string_opt::<i32>()?;
    c.is_valid(row).then(|| c.value(row).to_string())
}

/// One row of `runs` as the run it holds.
fn table_run(batch: &RecordBatch, row: usize, planned: &Planned) -> std::result::Result<(String, SyncedRun), String> {
    let key = text_at(batch, SYNC_KEY, row).ok_or("no _sync_key")?;
    let fingerprint = text_at(batch, SYNC_FINGERPRINT, row).unwrap_or_default();
    let history_file = text_at(batch, SYNC_HISTORY_FILE, row);
    let system_file = text_at(batch, SYNC_SYSTEM_FILE, row);
    let mark = text_at(batch, SYNC_HISTORY_MARK, row).and_then(|t| serde_json::from_str(&t).ok());
    let mut aside: HashMap<String, Value> = match text_at(batch, SYNC_VALUES, row) {
        Some(text) => match Value::parse(&text).map_err(|e| format!("{SYNC_VALUES}: {e}"))? {
            Value::Object(fields) => fields.into_iter().collect(),
            _ => return Err(format!("{SYNC_VALUES}: not a JSON object")),
        },
        None => text_at(batch, SYNC_NULL_KEYS, row)
            .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|k| (k, Value::Null))
            .collect(),
    };
    let run_id = text_at(batch, "run_id", row).ok_or("no run_id")?;
    let mut identity = RunIdentity::new(run_id);
    for c in planned.plan.identity_columns.iter().filter(|c| c.name != "run_id") {
        let Some(col) = batch.column_by_name(c.name) else { continue };
        if col.is_null(row) && c.kind != IdentityKind::TextList {
            continue;
        }
        let value = match c.kind {
            IdentityKind::Text => IdentityValue::Text(col.as_string::<i32>().value(row).to_string()),
            IdentityKind::Timestamp => {
                IdentityValue::Timestamp(col.as_primitive::<TimestampMicrosecondType>().value(row))
            }
            IdentityKind::Float => IdentityValue::Float(col.as_primitive::<Float64Type>().value(row)),
            IdentityKind::Int => IdentityValue::Int(col.as_primitive::<Int64Type>().value(row)),
            IdentityKind::TextList => {
                let list = col.as_list::<i32>();
                let items = if list.is_valid(row) {
                    list.value(row)
                } else {
                    Arc::new(StringArray::from(Vec::<String>::new())) as ArrayRef
                };
                let items = items.as_string::<i32>();
                IdentityValue::TextList(items.iter().flatten().map(str::to_string).collect())
            }
        };
        identity.set(c.name, Some(value));
    }
    let mut groups: Vec<(&'static str, Vec<(String, Value)>)> =
        planned.columns.groups.iter().map(|g| (*g, Vec::new())).collect();
    let schema = batch.schema();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let Some(g) = planned.columns.groups.iter().position(|p| field.name().starts_with(p)) else { continue };
        let path = field.name()[planned.columns.groups[g].len()..].to_string();
        // A value the cell does not give back as it was (a null, an int in
        // a float column, ...) is kept aside; a null cell otherwise is a
        // key the run lacks.
        if let Some(value) = aside.remove(field.name()) {
            groups[g].1.push((path, value));
        } else if !col.is_null(row) {
            groups[g].1.push((path, cell_value(field, col, row)?));
        }
    }
    Ok((
        key,
        SyncedRun {
            data: RunData { identity, groups, history: None, system: None, warnings: Vec::new(), history_mark: None },
            fingerprint,
            history_file,
            system_file,
            mark,
        },
    ))
}

/// A group column's cell as the value it was written from.
fn cell_value(field: &Field, col: &ArrayRef, row: usize) -> std::result::Result<Value, String> {
    Ok(match col.data_type() {
        DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
        DataType::Int64 => Value::Int(col.as_primitive::<Int64Type>().value(row)),
        DataType::Float64 => Value::Float(col.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => {
            let text = col.as_string::<i32>().value(row);
            match field.metadata().get("runport.kind").map(String::as_str) {
                Some("json") => Value::parse(text).map_err(|e| format!("{}: {e}", field.name()))?,
                _ => Value::Str(text.to_string()),
            }
        }
        other => return Err(format!("{}: unexpected type {other}", field.name())),
    })
}

/// The runs table with the sync columns appended, by run id.
fn with_sync_columns(batch: RecordBatch, sync: &HashMap<String, SyncColumns>, system: bool) -> Result<RecordBatch> {
    let ids = batch
        .column_by_name("run_id")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Internal("runs without a run_id column".into()))?;
    let mut keys = Vec::with_capacity(ids.len());
    let mut fps = Vec::with_capacity(ids.len());
    let mut files = Vec::with_capacity(ids.len());
    let mut marks = Vec::with_capacity(ids.len());
    let mut nulls = Vec::with_capacity(ids.len());
    let mut system_files = Vec::with_capacity(ids.len());
    for id in ids.iter() {
        let s = id.and_then(|id| sync.get(id));
        keys.push(s.map(|s| s.0.clone()));
        fps.push(s.map(|s| s.1.clone()));
        files.push(s.and_then(|s| s.2.clone()));
        marks.push(s.and_then(|s| s.3.as_ref()).map(|m| json!(m).to_string()));
        nulls.push(s.and_then(|s| s.4.clone()));
        system_files.push(s.and_then(|s| s.5.clone()));
    }
    let schema = batch.schema();
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(SYNC_KEY, DataType::Utf8, true)));
    fields.push(Arc::new(Field::new(SYNC_FINGERPRINT, DataType::Utf8, true)));
    fields.push(Arc::new(Field::new(SYNC_HISTORY_FILE, DataType::Utf8, true)));
    fields.push(Arc::new(Field::new(SYNC_HISTORY_MARK, DataType::Utf8, true)));
    fields.push(Arc::new(Field::new(SYNC_VALUES, DataType::Utf8, true)));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(StringArray::from(keys)));
    columns.push(Arc::new(StringArray::from(fps)));
    columns.push(Arc::new(StringArray::from(files)));
    columns.push(Arc::new(StringArray::from(marks)));
    columns.push(Arc::new(StringArray::from(nulls)));
    if system {
        fields.push(Arc::new(Field::new(SYNC_SYSTEM_FILE, DataType::Utf8, true)));
        columns.push(Arc::new(StringArray::from(system_files)));
    }
    RecordBatch::try_new(Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())), columns)
        .map_err(|e| Error::Arrow { what: "runs".into(), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int64Array, TimestampMicrosecondArray};

    /// Long rows `(run, key, step)`, values = step.
    fn rows(rows: &[(&str, &str, i64)]) -> RecordBatch {
        let n = rows.len();
        RecordBatch::try_new(
            long_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(TimestampMicrosecondArray::from(vec![None::<i64>; n]).with_timezone("UTC")),
                Arc::new(Float64Array::from(vec![None::<f64>; n])),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2 as f64))),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
            ],
        )
        .unwrap()
    }

    fn triples(batches: &[RecordBatch]) -> Vec<(String, String, i64)> {
        let mut out = Vec::new();
        for b in batches {
            let b = plain(b).unwrap();
            let (ids, keys) = (b.column(0).as_string::<i32>(), b.column(4).as_string::<i32>());
            let steps = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.push((ids.value(i).to_string(), keys.value(i).to_string(), steps.value(i)));
            }
        }
        out
    }

    #[test]
    fn shards_are_pinned_and_parsed() {
        // FNV-1a 64 of the key's bytes, modulo N: these never change.
        for (key, of4, of7) in [("std-long", 3, 5), ("std-config", 3, 3), ("abc123", 1, 2), ("run-0001", 2, 4)] {
            assert_eq!((Shard::of(key, 4), Shard::of(key, 7)), (of4, of7), "{key}");
        }
        assert_eq!(Shard::of("anything", 1), 0);
        // The `txn` id hashes the settings and shard the same way (tables keep it).
        let settings = [("a".to_string(), "b".to_string())];
        assert_eq!(app_id(&settings, Some(Shard { index: 1, count: 4 })), "runport-sync-4baf06b81c490806");
        assert_eq!(Shard::parse("3/4").unwrap(), Shard { index: 3, count: 4 });
        for bad in ["4/4", "1/0", "x/2", "2", "-1/3", ""] {
            assert!(Shard::parse(bad).unwrap_err().contains("expected K/N"), "{bad}");
        }
        let owner = Owner(Some(Shard { index: 1, count: 4 }));
        assert!(owner.owns_run("abc123") && !owner.owns_run("std-long"));
        assert!(owner.owns_file("part-s1of4-1700000000-1a-42-00000.parquet"));
        assert!(!owner.owns_file("part-s2of4-1700000000-1a-42-00000.parquet"));
        assert!(!owner.owns_file("part-s1of40-1700000000-1a-42-00000.parquet"));
        assert!(!owner.foreign_file("part-s2of4-1700000000-1a-42-00000.parquet"));
        assert!(owner.foreign_file("part-s1of2-1700000000-1a-42-00000.parquet"));
        assert!(owner.foreign_file("part-1700000000-1a-42-00000.parquet"));
        let all = Owner(None);
        assert!(all.owns_run("std-long") && all.owns_file("part-s1of4-x.parquet") && !all.foreign_file("part-x"));
    }

    #[test]
    fn values_the_cells_do_not_give_back_are_kept_aside() {
        let run = |config: Vec<(&str, Value)>| RunData {
            identity: RunIdentity::new("r"),
            groups: vec![("config.", config.into_iter().map(|(k, v)| (k.to_string(), v)).collect())],
            history: None,
            warnings: Vec::new(),
            system: None,
            history_mark: None,
        };
        let a = run(vec![
            ("lr", Value::Int(1)),
            ("amp", Value::Bool(true)),
            ("name", Value::Str("x".into())),
            ("gone", Value::Null),
            ("list", Value::List(vec![Value::Int(1)])),
        ]);
        let b = run(vec![
            ("lr", Value::Float(0.5)),
            ("amp", Value::Str("yes".into())),
            ("name", Value::Str("y".into())),
            ("list", Value::Str("s".into())),
        ]);
        let kinds = column_kinds([&a, &b].into_iter());
        assert_eq!(kinds["config.lr"], ColumnKind::Float);
        assert_eq!(kinds["config.amp"], ColumnKind::Mixed);
        assert_eq!(kinds["config.gone"], ColumnKind::Null);
        assert_eq!(kinds["config.list"], ColumnKind::Json);
        // The int in a float column, the bool in a mixed one, the null.
        let aside = values_aside(&a, &kinds).unwrap();
        assert_eq!(aside, r#"{"config.lr":1,"config.amp":true,"config.gone":null}"#);
        let Value::Object(fields) = Value::parse(&aside).unwrap() else { panic!("{aside}") };
        assert_eq!(fields[0], ("config.lr".to_string(), Value::Int(1)));
        // Text in a mixed column and anything in a JSON column come back from their cells.
        assert_eq!(values_aside(&b, &kinds), None);
        // Alone, a run's values are all of their columns' kinds.
        let alone = run(vec![("lr", Value::Int(1)), ("amp", Value::Bool(true))]);
        assert_eq!(values_aside(&alone, &column_kinds([&alone].into_iter())), None);
    }

    #[test]
    fn key_runs_group_keys_of_plain_and_run_length_batches() {
        let b = rows(&[("r", "a", 0), ("r", "a", 1), ("r", "b", 0), ("r", "c", 5), ("r", "c", 6)]);
        let want = vec![("a".to_string(), 0, 2), ("b".to_string(), 2, 3), ("c".to_string(), 3, 5)];
        assert_eq!(key_runs(&b).unwrap(), want);
        // Run-length keys (as the pipeline's batches have them), sliced
        // too, made plain first as `merge_earlier` does.
        let fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "key" => Field::new("key", crate::output::runlength::run_length_type(), false),
                _ => f.as_ref().clone(),
            })
            .collect();
        let keys: arrow_array::RunArray<arrow_array::types::Int32Type> =
            ["a", "a", "b", "c", "c"].into_iter().collect();
        let mut columns = b.columns().to_vec();
        columns[4] = Arc::new(keys);
        let ree = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        assert_eq!(key_runs(&plain(&ree).unwrap()).unwrap(), want);
        assert_eq!(
            key_runs(&plain(&ree.slice(1, 3)).unwrap()).unwrap(),
            vec![("a".to_string(), 0, 1), ("b".to_string(), 1, 2), ("c".to_string(), 2, 3)]
        );
    }

    #[test]
    fn later_steps_merge_after_the_earlier_rows_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.parquet");
        let old = rows(&[
            ("a", "x", 0),
            ("b", "x", 0),
            ("b", "x", 1),
            ("b", "y", 0),
            ("b", "y", 1),
            ("b", "z", 1),
            ("c", "x", 0),
        ]);
        let mut w = parquet::arrow::ArrowWriter::try_new(File::create(&path).unwrap(), long_schema(), None).unwrap();
        w.write(&old).unwrap();
        w.close().unwrap();
        let new = rows(&[("b", "w", 2), ("b", "y", 2), ("b", "y", 3)]);
        let mut out = Vec::new();
        merge_earlier(&path, "b", EncodedHistory::Batch(new), &long_schema(), &mut |b| {
            out.push(b.clone());
            Ok(())
        })
        .unwrap();
        let got = triples(&out);
        let want: Vec<(String, String, i64)> = [
            ("b", "w", 2),
            ("b", "x", 0),
            ("b", "x", 1),
            ("b", "y", 0),
            ("b", "y", 1),
            ("b", "y", 2),
            ("b", "y", 3),
            ("b", "z", 1),
        ]
        .iter()
        .map(|(r, k, s)| (r.to_string(), k.to_string(), *s))
        .collect();
        assert_eq!(got, want);
    }
}
