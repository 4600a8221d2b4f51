//! The MLflow sources behind the [`Source`] trait: a tracking server
//! (`mlflow+http(s)://`, or `mlflow` for `MLFLOW_TRACKING_URI`), its
//! `sqlite:///` database and a `mlruns/` FileStore folder (`file://` or a path).

use std::path::PathBuf;
use std::sync::Arc;

use super::rest::{DEFAULT_MAX_RESULTS, MlflowRest, MlflowRestOptions};
use super::{LocalStore, MLFLOW_COLUMNS, MlflowLocal, RunView, filestore, sqlite};
use crate::error::{Error, Result};
use crate::http::Http;
use crate::pipeline::HistorySink;
use crate::plan::FetchPlan;
use crate::redact::redact;
use crate::run::RunData;
use crate::sources::read::{Local, LocalRuns, Network, NetworkSource, file_mark};
use crate::sources::{
    BoxedConfig, RecordCounts, Registration, RunColumns, Source, SourceConfig, SourceOption, parse_config,
};

pub const REGISTRATION: Registration = Registration { parse };

fn parse(text: &str) -> Option<Result<BoxedConfig>> {
    let config = |location| Some(Ok(Box::new(MlflowConfig { location }) as BoxedConfig));
    if let Some(url) = text.strip_prefix("mlflow+") {
        if url.starts_with("http://") || url.starts_with("https://") {
            return config(MlflowLocation::Rest(url.to_string()));
        }
        return Some(Err(Error::Usage(format!(
            "expected mlflow+http://HOST:PORT or mlflow+https://..., got {}",
            redact(text)
        ))));
    }
    if text == "mlflow" {
        let Ok(uri) = std::env::var("MLFLOW_TRACKING_URI") else {
            return Some(Err(Error::Usage("SOURCE `mlflow` reads MLFLOW_TRACKING_URI, which is not set".to_string())));
        };
        if uri.starts_with("http://") || uri.starts_with("https://") {
            return config(MlflowLocation::Rest(uri));
        }
        return Some(parse_config(&uri));
    }
    if text.starts_with("sqlite:") {
        return match sqlite::path_of(text) {
            Some(path) => config(MlflowLocation::Sqlite(path)),
            None => Some(Err(Error::Usage(format!(
                "expected sqlite:///relative/mlflow.db or sqlite:////absolute/mlflow.db, got {text}"
            )))),
        };
    }
    if let Some(rest) = text.strip_prefix("file:") {
        return config(MlflowLocation::Files(PathBuf::from(rest.trim_start_matches("//"))));
    }
    let path = PathBuf::from(text);
    if filestore::is_filestore(&path) {
        return config(MlflowLocation::Files(path));
    }
    None
}

/// Where the runs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlflowLocation {
    /// A tracking server's `http(s)://` base URL.
    Rest(String),
    /// `sqlite:///.../mlflow.db`, read directly.
    Sqlite(PathBuf),
    /// A `mlruns/` FileStore folder, read directly.
    Files(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlflowConfig {
    pub location: MlflowLocation,
}

/// The options every MLflow source takes.
struct Selected {
    experiments: Vec<String>,
    view: RunView,
    filter: Option<String>,
    max_results: usize,
}

impl MlflowConfig {
    fn selected(&self, options: &[SourceOption]) -> Result<Selected> {
        let mut s =
            Selected { experiments: Vec::new(), view: RunView::Active, filter: None, max_results: DEFAULT_MAX_RESULTS };
        let rest = matches!(self.location, MlflowLocation::Rest(_));
        for o in options {
            match o {
                SourceOption::Experiment(e) => s.experiments.push(e.clone()),
                SourceOption::View(v) => {
                    s.view = RunView::parse(v)
                        .ok_or_else(|| Error::Usage(format!("--view {v}: expected active, deleted or all")))?;
                }
                SourceOption::Where(f) if rest => s.filter = Some(f.clone()),
                SourceOption::PerPage(n) if rest => s.max_results = (*n).clamp(1, 50_000),
                other => return Err(other.not_taken(self.kind(), self.options(), self.option_hint(other))),
            }
        }
        Ok(s)
    }
}

impl SourceConfig for MlflowConfig {
    fn kind(&self) -> &'static str {
        match self.location {
            MlflowLocation::Rest(_) => "mlflow-rest",
            MlflowLocation::Sqlite(_) => "mlflow-sqlite",
            MlflowLocation::Files(_) => "mlflow-files",
        }
    }

    fn network(&self) -> bool {
        matches!(self.location, MlflowLocation::Rest(_))
    }

    fn options(&self) -> &'static [&'static str] {
        match self.location {
            MlflowLocation::Rest(_) => &["--where", "--per-page", "--experiment", "--view"],
            MlflowLocation::Sqlite(_) | MlflowLocation::Files(_) => &["--experiment", "--view"],
        }
    }

    fn option_hint(&self, option: &SourceOption) -> Option<&'static str> {
        match option {
            SourceOption::Where(_) => {
                Some("--where is evaluated by the MLflow server: use the mlflow+http(s):// source to filter")
            }
            _ => None,
        }
    }

    fn columns(&self) -> &'static RunColumns {
        &MLFLOW_COLUMNS
    }

    fn open(&self, source: &str, options: &[SourceOption], concurrency: usize) -> Result<Box<dyn Source>> {
        let s = self.selected(options)?;
        let local = |store| -> Result<Box<dyn Source>> {
            let local = MlflowLocal::open(store, &s.experiments, s.view).map_err(|e| Error::source(source, e))?;
            Ok(Box::new(Local(Arc::new(local))))
        };
        match &self.location {
            MlflowLocation::Sqlite(path) => local(LocalStore::Sqlite(path.clone())),
            MlflowLocation::Files(path) => local(LocalStore::FileStore(path.clone())),
            MlflowLocation::Rest(base_url) => {
                let api = MlflowRest::connect(MlflowRestOptions {
                    base_url: base_url.clone(),
                    experiments: s.experiments.clone(),
                    view: s.view,
                    filter: s.filter.clone(),
                    max_results: s.max_results,
                    concurrency,
                })?;
                Ok(Box::new(Network::new(api)))
            }
        }
    }
}

impl LocalRuns for MlflowLocal {
    fn len(&self) -> usize {
        self.runs.len()
    }

    fn run_id(&self, i: usize) -> &str {
        &self.runs[i].run.run_id
    }

    fn read(
        &self,
        i: usize,
        plan: &FetchPlan,
        from: Option<&crate::sources::SyncMark>,
        _counts: &mut RecordCounts,
        sink: &mut HistorySink,
    ) -> Result<RunData, String> {
        self.read_run(i, plan, from, sink)
    }

    /// The listing's status, end time, stage, name, latest metrics (values,
    /// and their step and timestamp in sqlite), params and tags, and the
    /// size and modification time of each metric file (a file store
    /// appends to them as a run logs).
    fn fingerprint(&self, i: usize) -> Option<String> {
        let stored = &self.runs[i];
        let files = stored.metric_files.iter().map(|(key, path)| file_mark(key, path)).collect();
        Some(stored.run.fingerprint(files))
    }

    fn describe_plan(&self, plan: &FetchPlan) -> serde_json::Value {
        let keys: usize = self.runs.iter().map(|r| super::history_keys(plan, r.metric_names()).len()).sum();
        serde_json::json!({
            "source_kind": match self.store { LocalStore::Sqlite(_) => "mlflow-sqlite", LocalStore::FileStore(_) => "mlflow-files" },
            "store": self.name(),
            "runs": self.runs.len(),
            "stages": [
                {"stage": "listing", "reads": "runs, latest metrics, params and tags (done)"},
                {"stage": "history", "reads": "the selected metric keys of each run", "series": keys},
            ],
        })
    }
}

impl NetworkSource for MlflowRest {
    const PAGE_LABEL: &'static str = "runs/search page";

    fn name(&self) -> String {
        MlflowRest::name(self)
    }

    fn http(&self) -> &Http {
        &self.http
    }

    fn describe_plan(&self, plan: &FetchPlan) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({
            "source_kind": "mlflow-rest",
            "base_url": redact(&self.opts.base_url),
            "stages": [
                {"stage": "listing", "endpoint": "POST runs/search", "max_results": self.opts.max_results,
                 "order_by": "attributes.start_time ASC", "requests": "one per page"},
                {"stage": "history", "endpoint": "GET ajax-api metrics/get-history-bulk, GET metrics/get-history",
                 "requests": if plan.history {
                     "one bulk request per (group of runs, selected metric key) when its answer is not cut; \
                      else one per (run, selected metric key), paged"
                 } else { "none" }},
            ],
        }))
    }

    fn manifest_plan(&self, _plan: &FetchPlan) -> serde_json::Value {
        serde_json::json!({
            "source_kind": "mlflow-rest",
            "base_url": redact(&self.opts.base_url),
            "max_results": self.opts.max_results,
            "view": self.opts.view.api_name(),
        })
    }
}
