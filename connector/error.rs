//! Library errors. The command line maps them to exit codes.

use std::fmt::Display;

/// Errors that stop an export (per-run failures are collected instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source cannot be read at all (missing path, not a W&B log, no runs).
    #[error("cannot read source {source_name}: {reason}")]
    Source { source_name: String, reason: String },
    /// Bad arguments: selection, options.
    #[error("{0}")]
    Usage(String),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Parquet { path: String, source: parquet::errors::ParquetError },
    #[error("cannot build Arrow data for {what}: {source}")]
    Arrow { what: String, source: arrow_schema::ArrowError },
    /// A fault of runport itself or of its environment (a thread or runtime
    /// that cannot start, a task that stopped); nothing was committed.
    #[error("internal error: {0}")]
    Internal(String),
    /// The wide layout's columns were typed by a first pass; a run read
    /// again holds a key or a type that pass did not see (the source
    /// changed during the export). The run fails rather than lose values.
    #[error("history of run {run} changed while it was exported: {detail}; export again")]
    HistoryChanged { run: String, detail: String },
    /// An object store cannot be used: a bucket missing, credentials
    /// refused, an endpoint unreachable.
    #[error("object store {location}: {reason}")]
    Storage { location: String, reason: String },
    /// A commit to a Delta table lost a race: another writer committed
    /// what this one depends on since it read the table.
    #[error(
        "Delta table {table}: another sync committed since this one read the table ({detail}); this commit was not made: run the sync again"
    )]
    CommitConflict { table: String, detail: String },
    /// `--fail-fast`: the first run that failed.
    #[error("run {run} failed ({stage}): {error}")]
    RunFailed { run: String, stage: String, error: String },
}

impl Error {
    /// The source is shown without credentials ([`crate::redact`]).
    pub fn source(name: impl Display, reason: impl Display) -> Error {
        Error::Source { source_name: crate::redact::redact(&name.to_string()), reason: reason.to_string() }
    }

    pub fn write(path: impl Display, source: std::io::Error) -> Error {
        Error::Write { path: path.to_string(), source }
    }
}

impl From<crate::selection::SelectionError> for Error {
    fn from(e: crate::selection::SelectionError) -> Self {
        Error::Usage(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
