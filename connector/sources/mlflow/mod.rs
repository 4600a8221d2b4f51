//! MLflow sources: a tracking server's REST API (`mlflow+http(s)://`), its
//! `sqlite:///.../mlflow.db` read directly, and a `mlruns/` FileStore folder.
//!
//! All three give the same dataset: the runs table named as
//! `mlflow.search_runs()` names its columns (`run_id, experiment_id, status,
//! artifact_uri, start_time, end_time`, then `run_name, user_id,
//! lifecycle_stage, experiment_name`, then `metrics.<k>`, `params.<k>`,
//! `tags.<k>` with keys verbatim), and full metric histories in the long
//! layout, read only for the metric keys the selection needs.

pub mod filestore;
mod history;
mod pages;
pub mod rest;
mod source;
pub mod sqlite;

pub use history::MetricHistoryBuilder;
pub use source::{MlflowConfig, MlflowLocation, REGISTRATION};

use std::path::PathBuf;

use crate::pipeline::HistorySink;
use crate::run::IdentityKind::{Text, Timestamp};
use crate::run::{IdentityColumn, RunData, RunIdentity};
use crate::sources::RunColumns;
use crate::value::Value;

/// Identity columns of MLflow sources, in output order.
pub const MLFLOW_IDENTITY_COLUMNS: &[IdentityColumn] = &[
    IdentityColumn::new("run_id", Text),
    IdentityColumn::new("experiment_id", Text),
    IdentityColumn::new("status", Text),
    IdentityColumn::new("artifact_uri", Text),
    IdentityColumn::new("start_time", Timestamp),
    IdentityColumn::new("end_time", Timestamp),
    IdentityColumn::new("run_name", Text),
    IdentityColumn::new("user_id", Text),
    IdentityColumn::new("lifecycle_stage", Text),
    IdentityColumn::new("experiment_name", Text),
];

/// Column groups of MLflow sources' runs table.
pub const MLFLOW_PREFIXES: &[&str] = &["metrics.", "params.", "tags."];

/// The runs table of every MLflow source.
pub const MLFLOW_COLUMNS: RunColumns = RunColumns {
    identity: MLFLOW_IDENTITY_COLUMNS,
    groups: MLFLOW_PREFIXES,
    listing: ["run_name", "status", "start_time"],
    no_system: Some(
        "MLflow keeps system metrics as metrics named system/...: they are in the history (--select 'history.system/*')",
    ),
};

/// Which runs: `--view`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunView {
    #[default]
    Active,
    Deleted,
    All,
}

impl RunView {
    pub fn parse(s: &str) -> Option<RunView> {
        match s {
            "active" => Some(RunView::Active),
            "deleted" => Some(RunView::Deleted),
            "all" => Some(RunView::All),
            _ => None,
        }
    }

    pub fn api_name(self) -> &'static str {
        match self {
            RunView::Active => "ACTIVE_ONLY",
            RunView::Deleted => "DELETED_ONLY",
            RunView::All => "ALL",
        }
    }

    pub fn includes(self, lifecycle_stage: &str) -> bool {
        match self {
            RunView::Active => lifecycle_stage == "active",
            RunView::Deleted => lifecycle_stage == "deleted",
            RunView::All => true,
        }
    }
}

/// One metric value as MLflow stores it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricPoint {
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub step: i64,
}

/// A run as every MLflow store describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MlflowRun {
    pub run_id: String,
    pub experiment_id: String,
    pub experiment_name: Option<String>,
    pub run_name: Option<String>,
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub start_time_ms: Option<i64>,
    pub end_time_ms: Option<i64>,
    pub artifact_uri: Option<String>,
    pub lifecycle_stage: Option<String>,
    /// Latest value per key.
    pub metrics: Vec<(String, f64)>,
    /// The (step, timestamp in ms) of each key's latest value, where the
    /// store keeps them (sqlite's `latest_metrics`): a change signal.
    pub latest_marks: Vec<(String, i64, i64)>,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

impl MlflowRun {
    /// `runport sync`'s change fingerprint: the listing's status, end time,
    /// stage, name, latest metrics (values, and their step and timestamp
    /// where listed), params and tags, and `files` (what else the store
    /// shows of a change: a file store's metric files).
    pub fn fingerprint(&self, files: Vec<serde_json::Value>) -> String {
        let mut marks = self.latest_marks.clone();
        marks.sort();
        let mut metrics: Vec<(String, String)> = self.metrics.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        metrics.sort();
        let mut params = self.params.clone();
        params.sort();
        let mut tags = self.tags.clone();
        tags.sort();
        serde_json::json!([
            self.status,
            self.end_time_ms,
            self.lifecycle_stage,
            self.run_name,
            metrics,
            marks,
            params,
            tags,
            files
        ])
        .to_string()
    }
}

/// A local MLflow store, read directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalStore {
    Sqlite(PathBuf),
    FileStore(PathBuf),
}

/// A local store opened: its runs listed (runs table material), histories read per run.
#[derive(Debug)]
pub struct MlflowLocal {
    pub store: LocalStore,
    pub runs: Vec<filestore::StoredRun>,
}

impl MlflowLocal {
    pub fn open(store: LocalStore, experiments: &[String], view: RunView) -> Result<MlflowLocal, String> {
        let runs = match &store {
            LocalStore::Sqlite(p) => sqlite::list_runs(p, experiments, view)?
                .into_iter()
                .map(|run| filestore::StoredRun { run, metric_files: Vec::new() })
                .collect(),
            LocalStore::FileStore(root) => filestore::list_runs(root, experiments, view)?,
        };
        Ok(MlflowLocal { store, runs })
    }

    pub fn name(&self) -> String {
        match &self.store {
            LocalStore::Sqlite(p) => format!("sqlite:///{}", p.display()),
            LocalStore::FileStore(p) => p.display().to_string(),
        }
    }

    /// Run `i` with the histories of its selected metric keys, read in the
    /// store's order and handed to `sink` in chunks.
    /// A file store's run: its metric files read for the latest values
    /// and histories the plan selects; with `from` (a sync's earlier read),
    /// only what was appended since, when that is all that changed (see
    /// [`filestore::read_metrics`]).
    pub fn read_run(
        &self,
        i: usize,
        plan: &crate::plan::FetchPlan,
        from: Option<&crate::sources::SyncMark>,
        sink: &mut HistorySink,
    ) -> Result<RunData, String> {
        let stored = &self.runs[i];
        match &self.store {
            LocalStore::Sqlite(p) => {
                let mut keys = history_keys(plan, names(&stored.run.metrics));
                keys.sort();
                let mut data = stored.run.clone().into_run_data(plan);
                if plan.history {
                    let mut history = MetricHistoryBuilder::new(sink);
                    let conn = sqlite::open(p)?;
                    sqlite::read_histories(&conn, p, &stored.run.run_id, &keys, &mut history)?;
                    data.history = Some(history.finish());
                }
                Ok(data)
            }
            LocalStore::FileStore(_) => {
                let read = filestore::read_metrics(stored, plan, from, sink)?;
                let mut run = stored.run.clone();
                run.metrics = read.latest;
                let mut data = run.into_run_data(plan);
                data.history = read.history;
                data.history_mark = read.mark;
                Ok(data)
            }
        }
    }
}

/// MLflow's FileStore run status numbers.
pub fn status_name(code: i64) -> Option<&'static str> {
    Some(match code {
        1 => "RUNNING",
        2 => "SCHEDULED",
        3 => "FINISHED",
        4 => "FAILED",
        5 => "KILLED",
        _ => return None,
    })
}

/// Metric values as the stores spell them: numbers, `"NaN"`, Python's `nan`/`inf`.
pub fn parse_metric_value(text: &str) -> Option<f64> {
    match text.trim() {
        "NaN" | "nan" => Some(f64::NAN),
        "Infinity" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

impl MlflowRun {
    /// The run's columns, cut down to what `plan` selects.
    pub fn into_run_data(self, plan: &crate::plan::FetchPlan) -> RunData {
        let ms = |t: Option<i64>| t.and_then(|t| t.checked_mul(1000));
        let identity = RunIdentity::new(self.run_id)
            .with_text("experiment_id", Some(self.experiment_id))
            .with_text("status", self.status)
            .with_text("artifact_uri", self.artifact_uri)
            .with_timestamp("start_time", ms(self.start_time_ms))
            .with_timestamp("end_time", ms(self.end_time_ms))
            .with_text("run_name", self.run_name)
            .with_text("user_id", self.user_id)
            .with_text("lifecycle_stage", self.lifecycle_stage)
            .with_text("experiment_name", self.experiment_name);
        let pick = |prefix: &str, items: Vec<(String, Value)>| -> Vec<(String, Value)> {
            let mut v: Vec<(String, Value)> = items.into_iter().filter(|(k, _)| plan.wants_column(prefix, k)).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let metrics = if plan.selection.wants_prefix("metrics.") {
            pick("metrics.", self.metrics.into_iter().map(|(k, v)| (k, Value::Float(v))).collect())
        } else {
            Vec::new()
        };
        let params = if plan.selection.wants_prefix("params.") {
            pick("params.", self.params.into_iter().map(|(k, v)| (k, Value::Str(v))).collect())
        } else {
            Vec::new()
        };
        let tags = if plan.selection.wants_prefix("tags.") {
            pick("tags.", self.tags.into_iter().map(|(k, v)| (k, Value::Str(v))).collect())
        } else {
            Vec::new()
        };
        RunData {
            identity,
            groups: vec![("metrics.", metrics), ("params.", params), ("tags.", tags)],
            history: None,
            warnings: Vec::new(),
            system: None,
            history_mark: None,
        }
    }
}

/// The metric keys of a run whose history the plan selects.
pub fn history_keys<'a>(plan: &crate::plan::FetchPlan, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    if !plan.history {
        return Vec::new();
    }
    names.into_iter().filter(|k| plan.wants_history_key(k)).map(str::to_string).collect()
}

/// The metric names of `metrics` (latest values by key).
pub fn names(metrics: &[(String, f64)]) -> impl Iterator<Item = &str> {
    metrics.iter().map(|(k, _)| k.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_in_every_spelling() {
        assert!(parse_metric_value("NaN").unwrap().is_nan());
        assert!(parse_metric_value("nan").unwrap().is_nan());
        assert_eq!(parse_metric_value("inf"), Some(f64::INFINITY));
        assert_eq!(parse_metric_value("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_metric_value("1.7976931348623157e308"), Some(f64::MAX));
        assert_eq!(parse_metric_value(" 0.5\n"), Some(0.5));
        assert_eq!(parse_metric_value("x"), None);
        assert_eq!(status_name(3), Some("FINISHED"));
        assert_eq!(status_name(9), None);
    }
}
