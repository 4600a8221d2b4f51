//! Sources: where runs come from. A source is one folder here plus one line
//! in [`REGISTRY`]:
//!
//! - its [`SourceConfig`] (what the user asked for, parsed and checked, not
//!   yet opened) says which SOURCE strings it takes, which options, its
//!   identity columns and column groups, and opens the running source;
//! - its [`Source`] (opened) describes its plan, reads runs into the pipeline
//!   with one of the two read strategies in [`read`] (the local CPU pool or the
//!   network pipeline of [`crate::remote`]), and reports its counters.
//!
//! Nothing outside a source's folder matches on a source kind.

pub mod mlflow;
pub mod read;
pub mod spooled;
pub mod tensorboard;
pub mod wandb_api;
pub mod wandb_files;

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::export::RunFailure;
use crate::http::HttpCounts;
use crate::pipeline::{HistoryTarget, ReadRun};
use crate::plan::FetchPlan;
use crate::run::IdentityColumn;

pub use wandb_files::RecordCounts;

/// Requests in flight by default for network sources.
pub const DEFAULT_NETWORK_CONCURRENCY: usize = 16;

/// A command-line option that only some sources take (`--where`, `--view` ...),
/// with its value. Each source lists the ones it takes; any other is a usage
/// error naming the option and the source kind, never ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOption {
    /// `--base-url URL`.
    BaseUrl(String),
    /// `--where FILTER`: the source's own filter language.
    Where(String),
    /// `--order ORDER`.
    Order(String),
    /// `--per-page N`.
    PerPage(usize),
    /// `--samples N`.
    Samples(usize),
    /// `--experiment NAME|ID` (repeatable).
    Experiment(String),
    /// `--view active|deleted|all`.
    View(String),
}

impl SourceOption {
    /// The option as spelled on the command line.
    pub fn flag(&self) -> &'static str {
        match self {
            SourceOption::BaseUrl(_) => "--base-url",
            SourceOption::Where(_) => "--where",
            SourceOption::Order(_) => "--order",
            SourceOption::PerPage(_) => "--per-page",
            SourceOption::Samples(_) => "--samples",
            SourceOption::Experiment(_) => "--experiment",
            SourceOption::View(_) => "--view",
        }
    }

    /// The usage error for an option that `kind` does not take.
    pub fn not_taken(&self, kind: &str, takes: &[&str], hint: Option<&str>) -> Error {
        let takes = if takes.is_empty() { "no source options".to_string() } else { takes.join(", ") };
        let hint = hint.map(|h| format!("; {h}")).unwrap_or_default();
        Error::Usage(format!("{} does not apply to {kind} sources ({kind} takes {takes}){hint}", self.flag()))
    }
}

/// The source-specific options given, in command-line order.
pub type SourceOptions = Vec<SourceOption>;

/// The shape of a source's `runs.parquet`.
#[derive(Debug)]
pub struct RunColumns {
    /// Identity columns in output order (`run_id` among them).
    pub identity: &'static [IdentityColumn],
    /// Column groups after the identity columns, in output order, with their
    /// dots (`config.`, `summary.`).
    pub groups: &'static [&'static str],
    /// The identity columns `runport ls` shows: name, state, creation time
    /// (a text, a text and a timestamp column).
    pub listing: [&'static str; 3],
    /// Why the source has no `system` table (`--select system.*` is then a
    /// usage error saying so); `None` when it has one.
    pub no_system: Option<&'static str>,
}

/// A parsed SOURCE (vector's `SourceConfig`): validated, nothing opened yet.
pub trait SourceConfig: fmt::Debug + Send + Sync {
    /// The source kind, as the manifest records it (`wandb-files`, `mlflow-rest` ...).
    fn kind(&self) -> &'static str;

    /// Whether runs are read over the network (the default `--concurrency`
    /// is then requests in flight, else CPU threads). Local by default.
    fn network(&self) -> bool {
        false
    }

    /// The [`SourceOption`] flags this source takes (none by default).
    fn options(&self) -> &'static [&'static str] {
        &[]
    }

    /// Why an option is not taken, when there is more to say than that.
    fn option_hint(&self, _option: &SourceOption) -> Option<&'static str> {
        None
    }

    /// The columns of its `runs.parquet`.
    fn columns(&self) -> &'static RunColumns;

    /// Opens the source. `source` is the SOURCE text as given (for messages);
    /// `options` hold only options this source takes.
    fn open(&self, source: &str, options: &[SourceOption], concurrency: usize) -> Result<Box<dyn Source>>;
}

/// What [`Source::read_runs`] hands over for each run, in run-id order: the
/// run's label, the run or why it failed, and the records it took.
pub type ConsumeRun<'a> = dyn FnMut(&str, Result<ReadRun, String>, RecordCounts) -> ControlFlow<()> + 'a;

/// An opened source.
pub trait Source: Send + Sync {
    /// What `runport plan` shows (may ask the source, e.g. for run counts).
    fn describe_plan(&self, plan: &FetchPlan) -> Result<serde_json::Value>;

    /// The plan as recorded in the manifest (asks nothing).
    fn manifest_plan(&self, plan: &FetchPlan) -> serde_json::Value;

    /// The number of runs, when known before reading (local sources).
    fn run_count(&self) -> Option<usize>;

    /// Requests, retries and 429s (network sources).
    fn http_counts(&self) -> Option<HttpCounts> {
        None
    }

    /// Reads every run with `plan` and hands them to `consume` in run-id
    /// order. With `target`, the readers also turn each run's history into
    /// Arrow, whole or spilled in chunks (CPU work stays off the consumer's
    /// thread; see [`crate::pipeline::HistorySink`]). Returns a
    /// failure when the listing stopped early.
    fn read_runs(
        &self,
        plan: &Arc<FetchPlan>,
        concurrency: usize,
        target: Option<Arc<HistoryTarget>>,
        consume: &mut ConsumeRun<'_>,
    ) -> Result<Option<RunFailure>>;

    /// `runport sync`: each run's label and change fingerprint, in run-id
    /// order, from the listing alone (no history is read); `None` when the
    /// source cannot be synced yet.
    fn fingerprints(&self, _plan: &Arc<FetchPlan>) -> Result<Option<Vec<(String, String)>>> {
        Ok(None)
    }

    /// [`Source::read_runs`] for the runs labelled in `only`; the others
    /// are not read at all. With each label, where the table's history of
    /// the run stands, if it holds any: a source that can read only later
    /// steps does so and says so in the run's [`crate::run::HistoryMark`];
    /// the others read the run whole.
    fn read_only(
        &self,
        _plan: &Arc<FetchPlan>,
        _concurrency: usize,
        _target: Option<Arc<HistoryTarget>>,
        _only: &HashMap<String, Option<SyncMark>>,
        _consume: &mut ConsumeRun<'_>,
    ) -> Result<Option<RunFailure>> {
        Err(Error::Internal("this source reads every run".into()))
    }
}

/// A source's configuration, as registrations return it.
pub type BoxedConfig = Box<dyn SourceConfig>;

/// Where a table's history of a run stands: the last step it holds and the
/// history lines the source listed when those rows were read; for a source
/// of append-only logs, also where each log's complete records ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncMark {
    pub step: i64,
    pub lines: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<u64>,
    /// For a source of one append-only file per metric: where each was read to.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metric_files: std::collections::BTreeMap<String, MetricFileMark>,
}

/// Where a sync's earlier read of an append-only metric file stopped: the
/// offset past its last line, the greatest step and the latest point (as
/// the line `timestamp value step`) up to there.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricFileMark {
    pub offset: u64,
    pub step: i64,
    pub latest: String,
}

/// A source's registration: recognises its SOURCE strings.
pub struct Registration {
    /// `None` when `text` is not this source's syntax; `Some(Err)` when it is
    /// but is malformed.
    pub parse: fn(&str) -> Option<Result<BoxedConfig>>,
}

/// Every source, in the order SOURCE strings are tried (the W&B files source,
/// which takes any path, last).
pub static REGISTRY: &[Registration] =
    &[wandb_api::REGISTRATION, mlflow::REGISTRATION, tensorboard::REGISTRATION, wandb_files::REGISTRATION];

/// The configuration of the first registered source that takes `text`.
pub fn parse_config(text: &str) -> Result<BoxedConfig> {
    if text.is_empty() {
        return Err(Error::Usage("SOURCE is empty".into()));
    }
    for registration in REGISTRY {
        if let Some(config) = (registration.parse)(text) {
            return config;
        }
    }
    Err(Error::Usage(format!("SOURCE {}: no source takes it", crate::redact::redact(text))))
}

/// A parsed SOURCE argument.
#[derive(Debug)]
pub struct SourceSpec {
    config: Box<dyn SourceConfig>,
}

impl SourceSpec {
    /// Reads the SOURCE argument with the first registered source that takes it.
    pub fn parse(text: &str) -> Result<SourceSpec> {
        parse_config(text).map(|config| SourceSpec { config })
    }

    pub fn config(&self) -> &dyn SourceConfig {
        &*self.config
    }

    pub fn kind(&self) -> &'static str {
        self.config.kind()
    }

    /// `--concurrency` when not given: requests in flight for network
    /// sources, CPU threads for local ones (files and databases).
    pub fn default_concurrency(&self) -> usize {
        if self.config.network() { DEFAULT_NETWORK_CONCURRENCY } else { cpu_count() }
    }

    /// Refuses any option this source does not take.
    pub fn check_options(&self, options: &[SourceOption]) -> Result<()> {
        let takes = self.config.options();
        match options.iter().find(|o| !takes.contains(&o.flag())) {
            Some(o) => Err(o.not_taken(self.kind(), takes, self.config.option_hint(o))),
            None => Ok(()),
        }
    }
}

/// The number of CPUs (2 when unknown).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_kind_is_recognised_with_its_default_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let mlruns = dir.path().join("mlruns");
        std::fs::create_dir_all(mlruns.join("0")).unwrap();
        std::fs::write(mlruns.join("0/meta.yaml"), "experiment_id: '0'\nname: Default\n").unwrap();
        let cpus = cpu_count();
        for (text, kind, concurrency) in [
            ("wandb://team/project", "wandb-api", 16),
            ("mlflow+http://127.0.0.1:5000", "mlflow-rest", 16),
            ("mlflow+https://mlflow.example.com", "mlflow-rest", 16),
            ("sqlite:///mlflow.db", "mlflow-sqlite", cpus),
            ("sqlite:////abs/mlflow.db", "mlflow-sqlite", cpus),
            (&format!("file://{}", mlruns.display()), "mlflow-files", cpus),
            (mlruns.to_str().unwrap(), "mlflow-files", cpus),
            ("examples/data/wandb", "wandb-files", cpus),
            ("some/run-abc.wandb", "wandb-files", cpus),
        ] {
            let spec = SourceSpec::parse(text).unwrap();
            assert_eq!(spec.kind(), kind, "{text}");
            assert_eq!(spec.default_concurrency(), concurrency, "{text}");
        }
        for bad in ["", "wandb://only-entity", "mlflow+ftp://x", "sqlite:relative.db"] {
            let err = SourceSpec::parse(bad).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn options_a_source_does_not_take_are_refused_by_name_and_kind() {
        let files = SourceSpec::parse("examples/data/wandb").unwrap();
        let err = files.check_options(&[SourceOption::Samples(5)]).unwrap_err().to_string();
        assert!(err.contains("--samples") && err.contains("wandb-files"), "{err}");
        let api = SourceSpec::parse("wandb://team/project").unwrap();
        api.check_options(&[SourceOption::Where("{}".into()), SourceOption::Samples(5)]).unwrap();
        let err = api.check_options(&[SourceOption::View("all".into())]).unwrap_err().to_string();
        assert!(err.contains("--view") && err.contains("wandb-api"), "{err}");
    }
}
