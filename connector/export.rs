//! The library's entry points: export, plan, list, schema.
//!
//! ```no_run
//! use runport::export::{export, ExportOptions};
//! let summary = export(&ExportOptions::new("wandb/", "out/")).unwrap();
//! println!("{} runs, {} history rows", summary.runs, summary.rows["history"]);
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow_schema::SchemaRef;
use serde::Serialize;

use crate::columns::ColumnKind;
use crate::error::{Error, Result};
use crate::http::HttpCounts;
use crate::output::history::{collect_kinds, long_schema, wide_schema};
use crate::output::runs::RunsTable;
use crate::output::{DatasetDir, Provenance, TableWriter, history_writer_properties, writer_properties};
use crate::pipeline::{HistoryEncoding, ReadRun, for_each_run};
use crate::plan::{FetchPlan, HistoryLayout, WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES};
use crate::remote::{self, ListingError};
use crate::run::{RunData, RunIdentity};
use crate::selection::Selection;
use crate::sources::SourceSpec;
use crate::sources::mlflow::rest::{DEFAULT_MAX_RESULTS, MlflowRest, MlflowRestOptions};
use crate::sources::mlflow::{LocalStore, MLFLOW_IDENTITY_COLUMNS, MLFLOW_PREFIXES, MlflowLocal, RunView};
use crate::sources::wandb_api::{self, DEFAULT_BASE_URL, DEFAULT_PER_PAGE, WandbApi, WandbApiOptions};
use crate::sources::wandb_files::log_reader::TransactionLogReader;
use crate::sources::wandb_files::{RecordCounts, WandbFiles, decode_run};

/// What to export, and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub source: String,
    pub out: PathBuf,
    /// `--select`; `None` selects everything.
    pub selection: Option<String>,
    pub history: HistoryLayout,
    pub fail_fast: bool,
    /// Runs read at once (CPU threads for local files).
    pub concurrency: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Options of network sources.
    pub remote: RemoteOptions,
}

/// Options of the API sources (ignored by local ones).
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// `--base-url`; else `WANDB_BASE_URL`; else the public API.
    pub base_url: Option<String>,
    /// `--where`: the source's own filter (a W&B filter in JSON).
    pub filters: Option<String>,
    /// `--order`.
    pub order: Option<String>,
    /// `--per-page`.
    pub per_page: Option<usize>,
    /// `--samples N`: a sampled history instead of the full one.
    pub samples: Option<usize>,
    /// `--experiment NAME|ID` (MLflow), repeatable.
    pub experiments: Vec<String>,
    /// `--view active|deleted|all` (MLflow).
    pub view: Option<String>,
}

impl ExportOptions {
    pub fn new(source: impl Into<String>, out: impl Into<PathBuf>) -> ExportOptions {
        ExportOptions {
            source: source.into(),
            out: out.into(),
            selection: None,
            history: HistoryLayout::Long,
            fail_fast: false,
            concurrency: default_concurrency(),
            progress: false,
            remote: RemoteOptions::default(),
        }
    }
}

pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// Requests in flight for API sources, CPU threads for local ones.
pub fn default_concurrency_for(source: &str) -> usize {
    if source.contains("://") { 16 } else { default_concurrency() }
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
    pub records: RecordCounts,
    /// Requests, retries and 429s of network sources.
    pub http: Option<HttpCounts>,
    pub out: String,
}

/// An opened source.
pub enum Opened {
    WandbFiles(Arc<WandbFiles>),
    WandbApi(Arc<WandbApi>),
    MlflowRest(Arc<MlflowRest>),
    MlflowLocal(Arc<MlflowLocal>),
}

/// A source opened and planned.
pub struct Planned {
    pub source: Opened,
    pub plan: Arc<FetchPlan>,
    pub provenance: Provenance,
}

/// Opens the source and plans the export; reads no run.
pub fn open(
    source: &str,
    selection: Option<&str>,
    history: HistoryLayout,
    concurrency: usize,
    remote: &RemoteOptions,
) -> Result<Planned> {
    let spec = SourceSpec::parse(source)?;
    let (identity_columns, prefixes) = match spec {
        SourceSpec::MlflowRest(_) | SourceSpec::MlflowSqlite(_) | SourceSpec::MlflowFiles(_) => {
            (MLFLOW_IDENTITY_COLUMNS, MLFLOW_PREFIXES)
        }
        SourceSpec::WandbFiles(_) | SourceSpec::WandbApi { .. } => (WANDB_IDENTITY_COLUMNS, WANDB_PREFIXES),
    };
    let view = match remote.view.as_deref() {
        None => RunView::Active,
        Some(v) => {
            RunView::parse(v).ok_or_else(|| Error::Usage(format!("--view {v}: expected active, deleted or all")))?
        }
    };
    let selection = match selection {
        None => Selection::all(),
        Some(text) => Selection::parse(text, identity_columns, prefixes)?,
    };
    let plan = FetchPlan::new(selection, history, identity_columns);
    let (opened, kind) = match spec {
        SourceSpec::WandbFiles(path) => {
            let files = WandbFiles::discover(&path)?;
            if path.is_file() {
                // A single file that is not a log is a source error, not a run failure.
                let f = File::open(&path).map_err(|e| Error::source(path.display(), e))?;
                TransactionLogReader::new(f).map_err(|e| Error::source(path.display(), e))?;
            }
            (Opened::WandbFiles(Arc::new(files)), "wandb-files")
        }
        SourceSpec::WandbApi { entity, project } => {
            let base_url = remote
                .base_url
                .clone()
                .or_else(|| std::env::var("WANDB_BASE_URL").ok().filter(|u| !u.is_empty()))
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
            let api = WandbApi::connect(WandbApiOptions {
                entity,
                project,
                base_url,
                per_page: remote.per_page.unwrap_or(DEFAULT_PER_PAGE).max(1),
                filters: remote.filters.clone(),
                order: remote.order.clone(),
                samples: remote.samples,
                concurrency,
            })?;
            (Opened::WandbApi(Arc::new(api)), "wandb-api")
        }
        SourceSpec::MlflowSqlite(_) | SourceSpec::MlflowFiles(_) if remote.filters.is_some() => {
            return Err(Error::Usage(
                "--where is evaluated by the MLflow server: use the mlflow+http(s):// source to filter".into(),
            ));
        }
        SourceSpec::MlflowSqlite(path) => {
            let local = MlflowLocal::open(LocalStore::Sqlite(path.clone()), &remote.experiments, view)
                .map_err(|e| Error::source(source, e))?;
            (Opened::MlflowLocal(Arc::new(local)), "mlflow-sqlite")
        }
        SourceSpec::MlflowFiles(path) => {
            let local = MlflowLocal::open(LocalStore::FileStore(path.clone()), &remote.experiments, view)
                .map_err(|e| Error::source(source, e))?;
            (Opened::MlflowLocal(Arc::new(local)), "mlflow-files")
        }
        SourceSpec::MlflowRest(base_url) => {
            let api = MlflowRest::connect(MlflowRestOptions {
                base_url,
                experiments: remote.experiments.clone(),
                view,
                filter: remote.filters.clone(),
                max_results: remote.per_page.unwrap_or(DEFAULT_MAX_RESULTS).clamp(1, 50_000),
                concurrency,
            })?;
            (Opened::MlflowRest(Arc::new(api)), "mlflow-rest")
        }
    };
    let provenance = Provenance {
        source: crate::redact::redact(source),
        source_kind: kind.into(),
        selection: plan.selection.to_string(),
    };
    Ok(Planned { source: opened, plan: Arc::new(plan), provenance })
}

impl Planned {
    /// What `runport plan` prints.
    pub fn describe(&self) -> Result<serde_json::Value> {
        let mut v = match &self.source {
            Opened::WandbFiles(files) => files.describe_plan(&self.plan),
            Opened::WandbApi(api) => api.describe_plan(&self.plan).map_err(|e| Error::source(api.name(), e))?,
            Opened::MlflowLocal(local) => local_plan(local, &self.plan),
            Opened::MlflowRest(api) => serde_json::json!({
                "source_kind": "mlflow-rest",
                "base_url": crate::redact::redact(&api.opts.base_url),
                "stages": [
                    {"stage": "listing", "endpoint": "POST runs/search", "max_results": api.opts.max_results,
                     "order_by": "attributes.start_time ASC", "requests": "one per page"},
                    {"stage": "history", "endpoint": "GET ajax-api metrics/get-history-bulk, GET metrics/get-history",
                     "requests": if self.plan.history {
                         "one bulk request per (group of runs, selected metric key) when its answer is not cut; \
                          else one per (run, selected metric key), paged"
                     } else { "none" }},
                ],
            }),
        };
        v["source"] = self.provenance.source.clone().into();
        v["plan"] = serde_json::to_value(&*self.plan).expect("invariant: the plan serialises");
        Ok(v)
    }

    /// The plan as recorded in the manifest (no request).
    fn manifest_plan(&self) -> serde_json::Value {
        match &self.source {
            Opened::WandbFiles(files) => files.describe_plan(&self.plan),
            Opened::WandbApi(api) => serde_json::json!({
                "source_kind": "wandb-api",
                "base_url": crate::redact::redact(&api.opts.base_url),
                "listing_fields": wandb_api::queries::ListingFields::from_plan(&self.plan),
                "per_page": api.opts.per_page,
            }),
            Opened::MlflowLocal(local) => local_plan(local, &self.plan),
            Opened::MlflowRest(api) => serde_json::json!({
                "source_kind": "mlflow-rest",
                "base_url": crate::redact::redact(&api.opts.base_url),
                "max_results": api.opts.max_results,
                "view": api.opts.view.api_name(),
            }),
        }
    }

    /// The source's column groups of `runs.parquet`, in output order.
    pub fn prefixes(&self) -> &'static [&'static str] {
        match &self.source {
            Opened::MlflowRest(_) | Opened::MlflowLocal(_) => MLFLOW_PREFIXES,
            _ => WANDB_PREFIXES,
        }
    }

    /// Request counters of network sources.
    pub fn http_counts(&self) -> Option<HttpCounts> {
        match &self.source {
            Opened::WandbApi(api) => Some(api.http.stats.snapshot()),
            Opened::MlflowRest(api) => Some(api.http.stats.snapshot()),
            Opened::WandbFiles(_) | Opened::MlflowLocal(_) => None,
        }
    }

    /// The number of runs, when known before reading (local files).
    pub fn run_count(&self) -> Option<usize> {
        match &self.source {
            Opened::WandbFiles(files) => Some(files.runs.len()),
            Opened::MlflowLocal(local) => Some(local.runs.len()),
            Opened::WandbApi(_) | Opened::MlflowRest(_) => None,
        }
    }

    /// Reads every run with `plan` and hands them to `consume` in run-id order.
    /// With `encoding`, the readers also turn each run's history into its
    /// Arrow batch (CPU work stays off the writer's thread).
    fn read_runs(
        &self,
        plan: &Arc<FetchPlan>,
        concurrency: usize,
        encoding: Option<Arc<HistoryEncoding>>,
        consume: impl FnMut(&str, Result<ReadRun, String>, RecordCounts) -> ControlFlow<()>,
    ) -> Result<Option<RunFailure>> {
        match &self.source {
            Opened::WandbFiles(files) => {
                let files = Arc::clone(files);
                let plan = Arc::clone(plan);
                let runs = Arc::clone(&files);
                let work = move |i: usize| {
                    let run = &runs.runs[i];
                    let mut counts = RecordCounts::default();
                    let out = decode_run(&run.run_id, &run.files, &plan, &mut counts)
                        .map_err(|e| e.to_string())
                        .and_then(|data| ReadRun::encode(data, encoding.as_deref()));
                    (out, counts)
                };
                read_local(files.runs.len(), |i| files.runs[i].run_id.as_str(), work, concurrency, consume);
                Ok(None)
            }
            Opened::WandbApi(api) => {
                read_remote(api, &api.name(), "listing page", plan, concurrency, encoding, consume)
            }
            Opened::MlflowLocal(local) => {
                let (local, plan) = (Arc::clone(local), Arc::clone(plan));
                let runs = Arc::clone(&local);
                let work = move |i: usize| {
                    let out = runs.read_run(i, &plan).and_then(|data| ReadRun::encode(data, encoding.as_deref()));
                    (out, RecordCounts::default())
                };
                read_local(local.runs.len(), |i| local.runs[i].run.run_id.as_str(), work, concurrency, consume);
                Ok(None)
            }
            Opened::MlflowRest(api) => {
                read_remote(api, &api.name(), "runs/search page", plan, concurrency, encoding, consume)
            }
        }
    }

    /// Key kinds of the selected history over all runs (the wide schema).
    fn wide_kinds(&self, concurrency: usize) -> Result<BTreeMap<String, ColumnKind>> {
        let mut history_only = (*self.plan).clone();
        history_only.config = false;
        history_only.summary = false;
        history_only.identity_columns = vec!["run_id".into()];
        let mut kinds = BTreeMap::new();
        self.read_runs(&Arc::new(history_only), concurrency, None, |_, run, _| {
            if let Ok(ReadRun { data: RunData { history: Some(h), .. }, .. }) = &run {
                collect_kinds(h, &mut kinds);
            }
            ControlFlow::Continue(())
        })?;
        Ok(kinds)
    }
}

type RunResult = (Result<ReadRun, String>, RecordCounts);

/// Local sources: `work(i)` reads run `i` on the CPU pool; results reach
/// `consume` in run order.
fn read_local<'a>(
    n: usize,
    label: impl Fn(usize) -> &'a str,
    work: impl Fn(usize) -> RunResult + Send + Sync + 'static,
    concurrency: usize,
    mut consume: impl FnMut(&str, Result<ReadRun, String>, RecordCounts) -> ControlFlow<()>,
) {
    let workers = concurrency.max(1);
    for_each_run(n, workers, workers * 2, work, |i, out| match out {
        Ok((run, counts)) => consume(label(i), run, counts),
        Err(panic) => consume(label(i), Err(format!("internal error: {panic}")), RecordCounts::default()),
    });
}

/// Network sources: the shared async pipeline; a listing cut short becomes a failure.
fn read_remote<S: remote::RemoteSource>(
    api: &Arc<S>,
    name: &str,
    page_label: &str,
    plan: &Arc<FetchPlan>,
    concurrency: usize,
    encoding: Option<Arc<HistoryEncoding>>,
    mut consume: impl FnMut(&str, Result<ReadRun, String>, RecordCounts) -> ControlFlow<()>,
) -> Result<Option<RunFailure>> {
    // Runs in flight or waiting: enough to keep the requests busy, few enough
    // that memory stays flat (a run's history is held until written).
    let window = concurrency.max(4) + 2;
    // Decoded runs (several times the size of what the server sent) waiting
    // for the writer: one per core and one more.
    let decode_ahead = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    let outcome = remote::read_runs(api, plan, window, decode_ahead, encoding, |label, run| {
        consume(label, run, RecordCounts::default())
    })?;
    match outcome {
        None => Ok(None),
        Some(ListingError::Unreadable(e)) => Err(Error::source(name, e)),
        Some(ListingError::Cut { page, error }) => {
            Ok(Some(RunFailure { run: format!("{page_label} {page} and later"), stage: "listing".into(), error }))
        }
    }
}

/// What `runport plan` shows for a local MLflow store.
fn local_plan(local: &MlflowLocal, plan: &FetchPlan) -> serde_json::Value {
    let keys: usize = local.runs.iter().map(|r| crate::sources::mlflow::history_keys(plan, &r.run.metrics).len()).sum();
    serde_json::json!({
        "source_kind": match local.store { LocalStore::Sqlite(_) => "mlflow-sqlite", LocalStore::FileStore(_) => "mlflow-files" },
        "store": local.name(),
        "runs": local.runs.len(),
        "stages": [
            {"stage": "listing", "reads": "runs, latest metrics, params and tags (done)"},
            {"stage": "history", "reads": "the selected metric keys of each run", "series": keys},
        ],
    })
}

/// Exports the source into `opts.out`. Per-run failures are in the summary;
/// `Err` means nothing was committed.
pub fn export(opts: &ExportOptions) -> Result<ExportSummary> {
    let started = Instant::now();
    let planned = open(&opts.source, opts.selection.as_deref(), opts.history, opts.concurrency, &opts.remote)?;
    let plan = Arc::clone(&planned.plan);
    let dataset = DatasetDir::open(&opts.out)?;
    let prov = &planned.provenance;

    let encoding = match (plan.history, plan.history_layout) {
        (true, HistoryLayout::Wide) => {
            let kinds = planned.wide_kinds(opts.concurrency)?;
            Some(Arc::new(HistoryEncoding::Wide(wide_schema(&kinds), kinds)))
        }
        (true, _) => Some(Arc::new(HistoryEncoding::Long(long_schema()))),
        (false, _) => None,
    };
    let history_schema = encoding.as_ref().map(|e| Arc::clone(e.schema()));
    let mut history_writer = encoding.as_ref().map(|e| {
        let props = history_writer_properties(prov, matches!(**e, HistoryEncoding::Long(_)));
        TableWriter::new(Arc::clone(e.schema()), props, "history/part-", true)
    });

    let progress = progress_bar(opts.progress, planned.run_count());
    let mut runs = RunsTable::new(&plan.identity_columns, planned.prefixes());
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    let mut records = RecordCounts::default();
    let mut fatal: Option<Error> = None;
    let listing_cut = planned.read_runs(&plan, opts.concurrency, encoding, |label, run, counts| {
        records.add(&counts);
        progress.inc(1);
        let ReadRun { data: mut run, batch } = match run {
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
        if let (Some(writer), Some(batch)) = (history_writer.as_mut(), batch)
            && let Err(e) = writer.write(&dataset, &batch)
        {
            fatal = Some(e);
            return ControlFlow::Break(());
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
    let manifest = serde_json::json!({
        "format_version": 1,
        "runport_version": env!("CARGO_PKG_VERSION"),
        "source": prov.source,
        "source_kind": prov.source_kind,
        "selection": prov.selection,
        "history_layout": if plan.history { plan.history_layout.as_str() } else { "none" },
        "plan": planned.manifest_plan(),
        "tables": tables,
        "runs": run_count,
        "failures": failures,
        "warnings": warnings,
        "records": records,
    });
    files.append(&mut history_files);
    let entries = dataset.commit(files, &manifest)?;
    let mut rows = BTreeMap::new();
    rows.insert("runs".to_string(), runs_rows);
    rows.insert("history".to_string(), history_rows);
    Ok(ExportSummary {
        runs: run_count,
        rows,
        files: entries.len(),
        bytes: entries.iter().map(|e| e.bytes).sum(),
        failures,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
        records,
        http: planned.http_counts(),
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

/// Lists runs (id, name, state, created), reading only run and exit records.
pub fn list_runs(
    source: &str,
    concurrency: usize,
    remote: &RemoteOptions,
) -> Result<(Vec<RunListing>, Vec<RunFailure>)> {
    let columns = match SourceSpec::parse(source)? {
        SourceSpec::WandbFiles(_) | SourceSpec::WandbApi { .. } => "name,state,created_at",
        SourceSpec::MlflowRest(_) | SourceSpec::MlflowSqlite(_) | SourceSpec::MlflowFiles(_) => {
            "run_name,status,start_time"
        }
    };
    let planned = open(source, Some(columns), HistoryLayout::None, concurrency, remote)?;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    let cut = planned.read_runs(&planned.plan, concurrency, None, |label, run, _| {
        match run {
            Ok(run) => out.push(listing(&run.data.identity)),
            Err(error) => failures.push(RunFailure { run: label.to_string(), stage: "decode".into(), error }),
        }
        ControlFlow::Continue(())
    })?;
    failures.extend(cut);
    Ok((out, failures))
}

fn listing(i: &RunIdentity) -> RunListing {
    RunListing {
        run_id: i.run_id.clone(),
        name: i.name.clone(),
        state: i.state.clone().or_else(|| i.status.clone()),
        created_at: i
            .created_at
            .or(i.start_time)
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.to_rfc3339()),
    }
}

/// The Arrow schemas an export would write (reads every run to type the columns).
pub fn schemas(
    source: &str,
    selection: Option<&str>,
    history: HistoryLayout,
    concurrency: usize,
    remote: &RemoteOptions,
) -> Result<(SchemaRef, Option<SchemaRef>)> {
    let planned = open(source, selection, history, concurrency, remote)?;
    let plan = &planned.plan;
    let mut runs = RunsTable::new(&plan.identity_columns, planned.prefixes());
    let mut kinds = BTreeMap::new();
    planned.read_runs(plan, concurrency, None, |_, run, _| {
        if let Ok(ReadRun { data: mut run, .. }) = run {
            if let Some(h) = run.history.take() {
                collect_kinds(&h, &mut kinds);
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
    Ok((runs.schema(), history))
}
