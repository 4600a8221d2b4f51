//! The W&B local-files source behind the [`Source`] trait: any path other
//! sources do not take.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::decode::decode_run_from;
use super::log_reader::TransactionLogReader;
use super::{RecordCounts, WANDB_COLUMNS, WandbFiles};
use crate::error::{Error, Result};
use crate::pipeline::HistorySink;
use crate::plan::FetchPlan;
use crate::run::RunData;
use crate::sources::read::{Local, LocalRuns, file_marks};
use crate::sources::{BoxedConfig, Registration, RunColumns, Source, SourceConfig, SourceOption, SyncMark};

pub const REGISTRATION: Registration = Registration { parse };

fn parse(text: &str) -> Option<Result<BoxedConfig>> {
    Some(Ok(Box::new(WandbFilesConfig { path: PathBuf::from(text) })))
}

/// A `wandb/` folder, a run folder or a `.wandb` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WandbFilesConfig {
    pub path: PathBuf,
}

impl SourceConfig for WandbFilesConfig {
    fn kind(&self) -> &'static str {
        "wandb-files"
    }

    fn columns(&self) -> &'static RunColumns {
        &WANDB_COLUMNS
    }

    fn open(&self, _source: &str, options: &[SourceOption], _concurrency: usize) -> Result<Box<dyn Source>> {
        if let Some(o) = options.first() {
            return Err(o.not_taken(self.kind(), self.options(), None));
        }
        let path = &self.path;
        let files = WandbFiles::discover(path)?;
        if path.is_file() {
            // A single file that is not a log is a source error, not a run failure.
            let f = File::open(path).map_err(|e| Error::source(path.display(), e))?;
            TransactionLogReader::new(f).map_err(|e| Error::source(path.display(), e))?;
        }
        Ok(Box::new(Local(Arc::new(files))))
    }
}

impl LocalRuns for WandbFiles {
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
        from: Option<&SyncMark>,
        counts: &mut RecordCounts,
        sink: &mut HistorySink,
    ) -> Result<RunData, String> {
        let run = &self.runs[i];
        decode_run_from(&run.run_id, &run.files, plan, from, counts, sink).map_err(|e| e.to_string())
    }

    fn describe_plan(&self, plan: &FetchPlan) -> serde_json::Value {
        WandbFiles::describe_plan(self, plan)
    }

    /// Each log file's name, size and modification time (nanoseconds): a
    /// `.wandb` file is only appended to while its run lives. And whether
    /// the newest was written within the live window: a run without an
    /// exit record is `running` inside it and `crashed` past it, so a run
    /// that stopped writing is read again once, to be marked crashed.
    fn fingerprint(&self, i: usize) -> Option<String> {
        let files = &self.runs[i].files;
        let mut marks = file_marks(files);
        // The newest modification time, from the marks (`[name, size, ns]`; 0 unknown).
        let newest = marks.iter().filter_map(|m| m[2].as_u64()).filter(|ns| *ns > 0).max();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let recent = newest
            .and_then(|ns| now.checked_sub(std::time::Duration::from_nanos(ns)))
            .is_some_and(|age| age < super::decode::LIVE_WINDOW);
        // A log that ends with its exit record is done: its run's state
        // does not change with time.
        if recent && !files.last().is_some_and(|f| super::decode::ends_with_exit(f)) {
            marks.push("written within the live window".into());
        }
        Some(serde_json::Value::Array(marks).to_string())
    }
}
