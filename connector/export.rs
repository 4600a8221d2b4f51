//! The library's entry points: export, plan, list, schema.
//!
//! ```no_run
//! use runport::export::{export, ExportOptions};
//! let summary = export(&ExportOptions::new("wandb/", "out/")).unwrap();
//! println!("{} runs, {} history rows", summary.runs, summary.rows["history"]);
//! ```

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow_schema::SchemaRef;
use serde::Serialize;

use crate::columns::ColumnKind;
use crate::error::{Error, Result};
use crate::http::HttpCounts;
use crate::output::history::{long_schema, wide_schema};
use crate::output::runs::RunsTable;
use crate::output::spill::SpillDir;
use crate::output::system::{system_schema, system_writer_properties, write_system};
use crate::output::{DatasetDir, Provenance, TableWriter, history_writer_properties, writer_properties};
use crate::pipeline::{EncodedHistory, HistoryEncoding, HistoryTarget, ReadRun};
use crate::plan::{FetchPlan, HistoryLayout};
use crate::run::{RunIdentity, SystemBudget};
use crate::selection::Selection;
use crate::sources::{ConsumeRun, RecordCounts, RunColumns, Source, SourceOption, SourceSpec};

/// What to export, and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub source: String,
    pub out: PathBuf,
    /// `--select`; `None` selects everything.
    pub selection: Option<String>,
    pub history: HistoryLayout,
    pub fail_fast: bool,
    /// Runs read at once: requests in flight for network sources, CPU
    /// threads for local ones; `None` chooses by source kind (16 requests,
    /// or the number of CPUs).
    pub concurrency: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Options only some sources take (`--where`, `--experiment` ...); one
    /// the source does not take is a usage error.
    pub options: Vec<SourceOption>,
    /// The memory the history of runs being read may take, in bytes (see
    /// [`chunk_bytes`]); larger runs are spilled to disk beside the output.
    pub memory_limit: usize,
}

/// `--memory-limit` when not given: 256 MiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

/// The smallest `--memory-limit` taken: 16 MiB.
pub const MIN_MEMORY_LIMIT: usize = 16 << 20;

/// The size of a history chunk for a memory limit: a sixteenth of it. Up to
/// a few runs are read at once, each holding a chunk as the source gives it
/// and as Arrow, and the writer holds a row group's encoded pages; a run
/// larger than a chunk is spilled chunk by chunk.
pub fn chunk_bytes(memory_limit: usize) -> usize {
    (memory_limit / 16).max(1 << 20)
}

impl ExportOptions {
    pub fn new(source: impl Into<String>, out: impl Into<PathBuf>) -> ExportOptions {
        ExportOptions {
            source: source.into(),
            out: out.into(),
            selection: None,
            history: HistoryLayout::Long,
            fail_fast: false,
            concurrency: None,
            progress: false,
            options: Vec::new(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

/// A run that could not be exported; the others were.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunFailure {
    pub run: String,
    pub stage: String,
    pub error: String,
}

/// Damage skipped over in a run that was exported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunWarning {
    pub run: String,
    pub message: String,
}

/// The outcome of an export (the `--json` line).
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub runs: usize,
    pub rows: BTreeMap<String, u64>,
    pub files: usize,
    pub bytes: u64,
    pub failures: Vec<RunFailure>,
    pub warnings: Vec<RunWarning>,
    pub seconds: f64,
    /// The most bytes of spill files held at once (runs larger than a chunk).
    pub spill_bytes: u64,
    pub records: RecordCounts,
    /// Requests, retries and 429s of network sources.
    pub http: Option<HttpCounts>,
    pub out: String,
}

/// A source opened and planned.
pub struct Planned {
    pub source: Box<dyn Source>,
    pub plan: Arc<FetchPlan>,
    pub provenance: Provenance,
    /// Runs read at once (given, or the source kind's default).
    pub concurrency: usize,
    /// The shape of the source's `runs.parquet`.
    pub columns: &'static RunColumns,
}

/// Opens the source and plans the export; reads no run. An option the
/// source does not take is a usage error.
pub fn open(
    source: &str,
    selection: Option<&str>,
    history: HistoryLayout,
    concurrency: Option<usize>,
    options: &[SourceOption],
) -> Result<Planned> {
    let spec = SourceSpec::parse(source)?;
    spec.check_options(options)?;
    let config = spec.config();
    let columns = config.columns();
    let selection = match selection {
        None => Selection::all(),
        Some(text) => {
            let mut prefixes = columns.groups.to_vec();
            prefixes.push(crate::plan::SYSTEM_PREFIX);
            let selection = Selection::parse(text, columns.identity, &prefixes)?;
            if let Some(why) = columns.no_system
                && let Some(p) =
                    selection.patterns().iter().find(|p| p.as_str().starts_with(crate::plan::SYSTEM_PREFIX))
            {
                return Err(Error::Usage(format!(
                    "--select {}: {} sources have no system table: {why}",
                    p.as_str(),
                    config.kind()
                )));
            }
            selection
        }
    };
    let plan = FetchPlan::new(selection, history, columns.identity);
    let concurrency = concurrency.unwrap_or_else(|| spec.default_concurrency()).max(1);
    let opened = config.open(source, options, concurrency)?;
    let provenance = Provenance {
        source: crate::redact::redact(source),
        source_kind: config.kind().into(),
        selection: plan.selection.to_string(),
    };
    Ok(Planned { source: opened, plan: Arc::new(plan), provenance, concurrency, columns })
}

impl Planned {
    /// What `runport plan` prints.
    pub fn describe(&self) -> Result<serde_json::Value> {
        let mut v = self.source.describe_plan(&self.plan)?;
        v["source"] = self.provenance.source.clone().into();
        v["concurrency"] = self.concurrency.into();
        v["plan"] = serde_json::to_value(&*self.plan).expect("invariant: the plan serialises");
        Ok(v)
    }

    /// Reads every run with `plan` and hands them to `consume` in run-id order.
    fn read_runs(
        &self,
        plan: &Arc<FetchPlan>,
        target: Option<Arc<HistoryTarget>>,
        consume: &mut ConsumeRun<'_>,
    ) -> Result<Option<RunFailure>> {
        self.source.read_runs(plan, self.concurrency, target, consume)
    }

    /// Key kinds of the selected history over all runs (the wide schema),
    /// each run's history read in chunks of `chunk_bytes` and dropped
    /// (downloads past a run's share of memory wait in `spill`).
    fn wide_kinds(&self, chunk_bytes: usize, spill: &Arc<SpillDir>) -> Result<BTreeMap<String, ColumnKind>> {
        let mut history_only = (*self.plan).clone();
        history_only.config = false;
        history_only.summary = false;
        history_only.system = false;
        history_only.identity_columns.retain(|c| c.name == "run_id");
        let mut kinds = BTreeMap::new();
        self.read_runs(&Arc::new(history_only), Some(kinds_target(chunk_bytes, Some(spill))), &mut |_, run, _| {
            if let Ok(ReadRun { history: EncodedHistory::Kinds(k), .. }) = &run {
                unify_kinds(&mut kinds, k);
            }
            ControlFlow::Continue(())
        })?;
        Ok(kinds)
    }
}

/// Reading history only for the kinds of its keys (downloads past a run's
/// share of memory wait in `spill`, else in anonymous temporary files).
fn kinds_target(chunk_bytes: usize, spill: Option<&Arc<SpillDir>>) -> Arc<HistoryTarget> {
    Arc::new(HistoryTarget { encoding: HistoryEncoding::Kinds, chunk_bytes, spill: spill.cloned() })
}

fn unify_kinds(kinds: &mut BTreeMap<String, ColumnKind>, more: &BTreeMap<String, ColumnKind>) {
    for (key, kind) in more {
        let k = kinds.entry(key.clone()).or_insert(ColumnKind::Null);
        *k = k.unify(*kind);
    }
}

/// Exports the source into `opts.out`. Per-run failures are in the summary;
/// `Err` means nothing was committed.
pub fn export(opts: &ExportOptions) -> Result<ExportSummary> {
    match crate::objstore::location(&opts.out.to_string_lossy())? {
        crate::objstore::Location::Local(out) => export_local(&ExportOptions { out, ..opts.clone() }),
        crate::objstore::Location::Remote(remote) => export_remote(opts, &remote),
    }
}

/// An export into an object store's folder, which must hold nothing yet:
/// written on local disk (in `TMPDIR`) as any export, then uploaded, the
/// data files first and `_manifest.json` last. A reader listing the folder
/// meanwhile sees some data files and no manifest; a failed upload deletes
/// what it uploaded.
fn export_remote(opts: &ExportOptions, remote: &crate::objstore::Remote) -> Result<ExportSummary> {
    let rt = crate::remote::io_runtime()?;
    rt.block_on(remote.check())?;
    if rt.block_on(remote.has_folder(""))? {
        return Err(Error::Usage(format!(
            "{} holds objects already: export into a fresh prefix (for a prefix kept up to date, use runport sync: a Delta table)",
            remote.url
        )));
    }
    let staging = tempfile::Builder::new()
        .prefix("runport-export-")
        .tempdir()
        .map_err(|e| Error::write("a temporary folder (TMPDIR)", e))?;
    let local = staging.path().join("out");
    let mut summary = export_local(&ExportOptions { out: local.clone(), ..opts.clone() })?;
    let mut files = Vec::new();
    let mut stack = vec![local.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::write(dir.display(), e))? {
            let path = entry.map_err(|e| Error::write(dir.display(), e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(&local) {
                files.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    // The manifest last: a reader that waits for it sees a whole export.
    files.sort_by_key(|f| (f == crate::output::dataset::MANIFEST, f.clone()));
    let mut sent = Vec::new();
    let uploaded = rt.block_on(async {
        for rel in &files {
            remote.upload(&local.join(rel), rel).await?;
            sent.push(rel.clone());
        }
        Ok::<(), Error>(())
    });
    if let Err(e) = uploaded {
        rt.block_on(async {
            for rel in &sent {
                let _ = remote.delete(rel).await;
            }
        });
        return Err(e);
    }
    summary.out = remote.url.to_string();
    Ok(summary)
}

fn export_local(opts: &ExportOptions) -> Result<ExportSummary> {
    let started = Instant::now();
    let planned = open(&opts.source, opts.selection.as_deref(), opts.history, opts.concurrency, &opts.options)?;
    let dataset = DatasetDir::open(&opts.out)?;
    let prov = &planned.provenance;

    if opts.memory_limit < MIN_MEMORY_LIMIT {
        return Err(Error::Usage(format!(
            "--memory-limit {} is below the smallest taken, {} MiB",
            opts.memory_limit,
            MIN_MEMORY_LIMIT >> 20
        )));
    }
    let chunk_bytes = chunk_bytes(opts.memory_limit);
    let spill = SpillDir::create(&dataset.spill_path())?;
    // A run's system samples past a chunk wait in the spill folder too.
    let plan =
        Arc::new(planned.plan.with_system_budget(SystemBudget { bytes: chunk_bytes, spill: Arc::clone(&spill) }));
    let encoding = match (plan.history, plan.history_layout) {
        (true, HistoryLayout::Wide) => {
            let kinds = planned.wide_kinds(chunk_bytes, &spill)?;
            Some(HistoryEncoding::Wide(wide_schema(&kinds), kinds))
        }
        (true, _) => Some(HistoryEncoding::Long(long_schema())),
        (false, _) => None,
    };
    let history_schema = encoding.as_ref().map(|e| match e {
        HistoryEncoding::Long(s) | HistoryEncoding::Wide(s, _) => Arc::clone(s),
        HistoryEncoding::Kinds => unreachable!("invariant: an export writes rows"),
    });
    let mut history_writer = history_schema.as_ref().map(|s| {
        let props = history_writer_properties(prov, plan.history_layout != HistoryLayout::Wide);
        TableWriter::new(Arc::clone(s), props, "history/part-", true)
    });
    let target =
        encoding.map(|encoding| Arc::new(HistoryTarget { encoding, chunk_bytes, spill: Some(Arc::clone(&spill)) }));
    let system_schema = system_schema();
    let mut system_writer = plan
        .system
        .then(|| TableWriter::new(Arc::clone(&system_schema), system_writer_properties(prov), "system/part-", true));

    let progress = progress_bar(opts.progress, planned.source.run_count());
    let mut runs = RunsTable::new(&plan.identity_columns, planned.columns.groups);
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    let mut records = RecordCounts::default();
    let mut fatal: Option<Error> = None;
    let listing_cut = planned.read_runs(&plan, target, &mut |label, run, counts| {
        records.add(&counts);
        progress.inc(1);
        let ReadRun { data: mut run, history } = match run {
            Ok(run) => run,
            Err(error) => {
                tracing::warn!(run = label, stage = "decode", %error, "run failed");
                failures.push(RunFailure { run: label.to_string(), stage: "decode".into(), error: error.clone() });
                if opts.fail_fast {
                    fatal = Some(Error::RunFailed { run: label.to_string(), stage: "decode".into(), error });
                    return ControlFlow::Break(());
                }
                return ControlFlow::Continue(());
            }
        };
        for message in run.warnings.drain(..) {
            tracing::warn!(run = label, %message, "damaged input skipped");
            warnings.push(RunWarning { run: run.identity.run_id.clone(), message });
        }
        if let (Some(writer), Some(schema)) = (history_writer.as_mut(), history_schema.as_ref()) {
            let written = match history {
                EncodedHistory::Batch(batch) => writer.write(&dataset, &batch),
                EncodedHistory::Spilled(spilled) => spilled.replay(schema, &mut |b| writer.write(&dataset, b)),
                EncodedHistory::None | EncodedHistory::Kinds(_) => Ok(()),
            };
            if let Err(e) = written {
                fatal = Some(e);
                return ControlFlow::Break(());
            }
        }
        if let (Some(writer), Some(samples)) = (system_writer.as_mut(), run.system.take()) {
            let written =
                write_system(&system_schema, &run.identity.run_id, samples, &mut |b| writer.write(&dataset, b));
            if let Err(e) = written {
                fatal = Some(e);
                return ControlFlow::Break(());
            }
        }
        runs.push(&mut run);
        ControlFlow::Continue(())
    })?;
    progress.finish_and_clear();
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(cut) = listing_cut {
        if opts.fail_fast {
            // Nothing is committed: the dataset would miss the later runs.
            return Err(Error::RunFailed { run: cut.run, stage: cut.stage, error: cut.error });
        }
        tracing::error!(stage = "listing", error = %cut.error, "the listing stopped early; later runs are missing");
        failures.push(cut);
    }

    let runs_schema = runs.schema();
    let run_count = runs.len();
    let mut runs_writer = TableWriter::new(
        Arc::clone(&runs_schema),
        writer_properties(prov, "runs", &["run_id", "source", "state"], &[]),
        "runs.parquet",
        false,
    );
    runs_writer.write(&dataset, &runs.build()?)?;
    let runs_rows = runs_writer.rows;
    let mut files = runs_writer.finish(&dataset)?;
    let mut history_rows = 0;
    let mut history_files = Vec::new();
    if let Some(w) = history_writer {
        history_rows = w.rows;
        history_files = w.finish(&dataset)?;
    }
    let mut system_rows = None;
    let mut system_files = Vec::new();
    if let Some(w) = system_writer {
        system_rows = Some(w.rows);
        system_files = w.finish(&dataset)?;
    }
    let file_json = |fs: &[crate::output::TempFile]| -> serde_json::Value {
        fs.iter().map(|f| serde_json::json!({"path": f.rel, "rows": f.rows, "bytes": f.bytes})).collect()
    };
    let mut tables = serde_json::json!({
        "runs": {"files": file_json(&files), "rows": runs_rows, "columns": column_names(&runs_schema)},
    });
    if let Some(s) = &history_schema {
        tables["history"] = serde_json::json!({
            "files": file_json(&history_files), "rows": history_rows, "columns": column_names(s),
            "layout": plan.history_layout,
        });
    }
    if let Some(rows) = system_rows {
        tables["system"] = serde_json::json!({
            "files": file_json(&system_files), "rows": rows, "columns": column_names(&system_schema),
        });
    }
    let manifest = serde_json::json!({
        "format_version": 1,
        "runport_version": env!("CARGO_PKG_VERSION"),
        "source": prov.source,
        "source_kind": prov.source_kind,
        "selection": prov.selection,
        "history_layout": if plan.history { plan.history_layout.as_str() } else { "none" },
        "plan": planned.source.manifest_plan(&plan),
        "tables": tables,
        "runs": run_count,
        "failures": failures,
        "warnings": warnings,
        "records": records,
    });
    files.append(&mut history_files);
    files.append(&mut system_files);
    let entries = dataset.commit(files, &manifest)?;
    let mut rows = BTreeMap::new();
    rows.insert("runs".to_string(), runs_rows);
    rows.insert("history".to_string(), history_rows);
    if let Some(n) = system_rows {
        rows.insert("system".to_string(), n);
    }
    Ok(ExportSummary {
        runs: run_count,
        rows,
        files: entries.len(),
        bytes: entries.iter().map(|e| e.bytes).sum(),
        failures,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
        spill_bytes: spill.peak_bytes(),
        records,
        http: planned.source.http_counts(),
        out: opts.out.display().to_string(),
    })
}

/// A schema as JSON: `[{name, type, nullable, kind?}]` (`kind` is `runport.kind`).
pub fn schema_json(schema: &SchemaRef) -> serde_json::Value {
    schema
        .fields()
        .iter()
        .map(|f| {
            let mut v =
                serde_json::json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()});
            if let Some(kind) = f.metadata().get("runport.kind") {
                v["kind"] = kind.clone().into();
            }
            v
        })
        .collect()
}

fn column_names(schema: &SchemaRef) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

fn progress_bar(enabled: bool, len: Option<usize>) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(len.map(|l| l as u64), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} runs [{elapsed_precise}] {wide_bar} {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// One line of `runport ls`.
#[derive(Debug, Clone, Serialize)]
pub struct RunListing {
    pub run_id: String,
    pub name: Option<String>,
    pub state: Option<String>,
    pub created_at: Option<String>,
}

/// Lists runs (id, name, state, created), reading only what those need.
pub fn list_runs(
    source: &str,
    concurrency: Option<usize>,
    options: &[SourceOption],
) -> Result<(Vec<RunListing>, Vec<RunFailure>)> {
    let spec = SourceSpec::parse(source)?;
    let columns = spec.config().columns().listing.join(",");
    let planned = open(source, Some(&columns), HistoryLayout::None, concurrency, options)?;
    let [name, state, created] = planned.columns.listing;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    let cut = planned.read_runs(&planned.plan, None, &mut |label, run, _| {
        match run {
            Ok(run) => out.push(listing(&run.data.identity, name, state, created)),
            Err(error) => failures.push(RunFailure { run: label.to_string(), stage: "decode".into(), error }),
        }
        ControlFlow::Continue(())
    })?;
    failures.extend(cut);
    Ok((out, failures))
}

fn listing(i: &RunIdentity, name: &str, state: &str, created: &str) -> RunListing {
    RunListing {
        run_id: i.run_id.clone(),
        name: i.text(name).map(str::to_string),
        state: i.text(state).map(str::to_string),
        created_at: i.timestamp(created).and_then(chrono::DateTime::from_timestamp_micros).map(|t| t.to_rfc3339()),
    }
}

/// The Arrow schemas an export would write: runs, history, system (reads
/// every run to type the columns; the system table's schema is fixed, so
/// no system metric is read).
pub fn schemas(
    source: &str,
    selection: Option<&str>,
    history: HistoryLayout,
    concurrency: Option<usize>,
    options: &[SourceOption],
) -> Result<(SchemaRef, Option<SchemaRef>, Option<SchemaRef>)> {
    let planned = open(source, selection, history, concurrency, options)?;
    let system = planned.plan.system.then(system_schema);
    let mut reading = (*planned.plan).clone();
    reading.system = false;
    let plan = &Arc::new(reading);
    let mut runs = RunsTable::new(&plan.identity_columns, planned.columns.groups);
    let mut kinds = BTreeMap::new();
    let target = plan.history.then(|| kinds_target(chunk_bytes(DEFAULT_MEMORY_LIMIT), None));
    planned.read_runs(plan, target, &mut |_, run, _| {
        if let Ok(ReadRun { data: mut run, history }) = run {
            if let EncodedHistory::Kinds(k) = history {
                unify_kinds(&mut kinds, &k);
            }
            runs.push(&mut run);
        }
        ControlFlow::Continue(())
    })?;
    let history = match (plan.history, plan.history_layout) {
        (false, _) | (_, HistoryLayout::None) => None,
        (true, HistoryLayout::Wide) => Some(wide_schema(&kinds)),
        (true, HistoryLayout::Long) => Some(long_schema()),
    };
    Ok((runs.schema(), history, system))
}
