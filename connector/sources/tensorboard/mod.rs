//! The TensorBoard source: the event files (`events.out.tfevents.*`) that
//! TensorBoard's summary writers (TensorFlow, PyTorch, tensorboardX,
//! Keras, JAX loops) write.
//!
//! SOURCE is `tensorboard:PATH` (or `tensorboard://PATH`). PATH is a log
//! folder, searched recursively; as in TensorBoard, every folder that
//! directly holds event files (a file name containing `tfevents`, not
//! ending with `.profile-empty`) is one run, named by its path relative to
//! PATH (`.` for PATH itself). A run's files are read in name order (the
//! writers name them by their start time) as one log: a restarted job adds
//! a file.

mod decode;
pub mod event;
pub mod record_reader;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use decode::decode_run;

use crate::error::{Error, Result};
use crate::pipeline::HistorySink;
use crate::plan::FetchPlan;
use crate::run::IdentityColumn;
use crate::run::IdentityKind::{Text, TextList, Timestamp};
use crate::run::RunData;
use crate::sources::read::{Local, LocalRuns, file_marks};
use crate::sources::{
    BoxedConfig, RecordCounts, Registration, RunColumns, Source, SourceConfig, SourceOption, SyncMark,
};

pub const REGISTRATION: Registration = Registration { parse };

/// The identity columns of TensorBoard runs, in output order.
pub const TENSORBOARD_IDENTITY_COLUMNS: &[IdentityColumn] = &[
    IdentityColumn::new("source", Text),
    IdentityColumn::new("run_id", Text),
    IdentityColumn::new("name", Text),
    IdentityColumn::new("created_at", Timestamp),
    IdentityColumn::new("updated_at", Timestamp),
    IdentityColumn::new("hparams_metrics", TextList),
];

/// `config.` holds the hparams plugin's hyperparameters; `summary.` each
/// tag's last value.
pub const TENSORBOARD_COLUMNS: RunColumns = RunColumns {
    identity: TENSORBOARD_IDENTITY_COLUMNS,
    groups: &["config.", "summary."],
    listing: ["name", "source", "created_at"],
    no_system: Some("TensorBoard event files hold no system metrics"),
};

fn parse(text: &str) -> Option<Result<BoxedConfig>> {
    let rest = text.strip_prefix("tensorboard:")?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Some(Err(Error::Usage(format!("SOURCE {text}: no path after tensorboard:"))));
    }
    Some(Ok(Box::new(TensorboardConfig { path: PathBuf::from(path) })))
}

/// A TensorBoard log folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorboardConfig {
    pub path: PathBuf,
}

impl SourceConfig for TensorboardConfig {
    fn kind(&self) -> &'static str {
        "tensorboard"
    }

    fn columns(&self) -> &'static RunColumns {
        &TENSORBOARD_COLUMNS
    }

    fn open(&self, _source: &str, options: &[SourceOption], _concurrency: usize) -> Result<Box<dyn Source>> {
        if let Some(o) = options.first() {
            return Err(o.not_taken(self.kind(), self.options(), None));
        }
        Ok(Box::new(Local(Arc::new(TensorboardRuns::discover(&self.path)?))))
    }
}

/// One run: its folder's event files in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TbRun {
    pub run_id: String,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// The runs under a log folder, sorted by run id.
#[derive(Debug, Clone)]
pub struct TensorboardRuns {
    pub root: PathBuf,
    pub runs: Vec<TbRun>,
}

/// Whether a file name is an event file's, as TensorBoard decides it.
pub fn is_event_file(name: &str) -> bool {
    name.contains("tfevents") && !name.ends_with(".profile-empty")
}

impl TensorboardRuns {
    /// Finds the runs under `root` (symbolic links to folders are not
    /// followed). Errors when `root` cannot be read or holds no event file.
    pub fn discover(root: &Path) -> Result<TensorboardRuns> {
        let meta = fs::metadata(root).map_err(|e| Error::source(root.display(), format!("cannot read: {e}")))?;
        if !meta.is_dir() {
            return Err(Error::source(root.display(), "not a folder (a TensorBoard source is a log folder)"));
        }
        let mut runs = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = fs::read_dir(&dir).map_err(|e| Error::source(dir.display(), format!("cannot list: {e}")))?;
            let mut files = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Error::source(dir.display(), format!("cannot list: {e}")))?;
                let Ok(kind) = entry.file_type() else { continue };
                let path = entry.path();
                if kind.is_dir() {
                    stack.push(path);
                } else if (kind.is_file() || kind.is_symlink() && path.is_file())
                    && entry.file_name().to_str().is_some_and(is_event_file)
                {
                    files.push(path);
                }
            }
            if files.is_empty() {
                continue;
            }
            files.sort();
            let bytes = files.iter().filter_map(|f| fs::metadata(f).ok()).map(|m| m.len()).sum();
            runs.push(TbRun { run_id: run_id_of(root, &dir), files, bytes });
        }
        if runs.is_empty() {
            return Err(Error::source(root.display(), "no TensorBoard event files found (events.out.tfevents.*)"));
        }
        runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        Ok(TensorboardRuns { root: root.to_path_buf(), runs })
    }
}

/// The folder's path relative to the root, `/`-separated (`.` for the root).
fn run_id_of(root: &Path, dir: &Path) -> String {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.is_empty() { ".".to_string() } else { parts.join("/") }
}

impl LocalRuns for TensorboardRuns {
    fn len(&self) -> usize {
        self.runs.len()
    }

    fn run_id(&self, i: usize) -> &str {
        &self.runs[i].run_id
    }

    fn read(
        &self,
        i: usize,
        plan: &FetchPlan,
        _from: Option<&SyncMark>,
        counts: &mut RecordCounts,
        sink: &mut HistorySink,
    ) -> Result<RunData, String> {
        decode_run(&self.runs[i], plan, counts, sink)
    }

    fn describe_plan(&self, plan: &FetchPlan) -> serde_json::Value {
        let decodes = plan.history || plan.config || plan.summary;
        serde_json::json!({
            "source_kind": "tensorboard",
            "runs": self.runs.len(),
            "event_files": self.runs.iter().map(|r| r.files.len()).sum::<usize>(),
            "bytes": self.runs.iter().map(|r| r.bytes).sum::<u64>(),
            "reads": if decodes {
                "every record's framing, then the summaries of the events (values of unselected tags are not built)"
            } else {
                "every record's framing and the events' times and steps; no summary is decoded"
            },
        })
    }

    /// Each event file's name, size and modification time: writers only
    /// append to them, and a restarted job adds a file.
    fn fingerprint(&self, i: usize) -> Option<String> {
        Some(serde_json::Value::Array(file_marks(&self.runs[i].files)).to_string())
    }
}
