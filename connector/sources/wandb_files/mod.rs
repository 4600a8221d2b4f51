//! The W&B local-files source: the `.wandb` transaction log every run writes.
//!
//! Accepts a `wandb/` (or `.wandb/`) folder holding `run-*` and
//! `offline-run-*` folders, a folder that holds such a folder, a single run
//! folder, or one `.wandb` file. `latest-run` and other links to run folders
//! already found are not read twice. Folders with the same run id (a resumed
//! run) are read in folder-name order as one run.

pub mod decode;
pub mod log_reader;
pub mod records;
mod source;
pub mod tree;
pub mod wire;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use decode::{RecordCounts, RecordNeeds, decode_run};

use crate::error::{Error, Result};
use crate::plan::FetchPlan;
use crate::run::IdentityColumn;
use crate::run::IdentityKind::{Float, Int, Text, TextList, Timestamp};
use crate::sources::RunColumns;

pub use source::REGISTRATION;

/// The identity columns of the W&B sources (these files and the API), in output order.
pub const WANDB_IDENTITY_COLUMNS: &[IdentityColumn] = &[
    IdentityColumn::new("source", Text),
    IdentityColumn::new("entity", Text),
    IdentityColumn::new("project", Text),
    IdentityColumn::new("run_id", Text),
    IdentityColumn::new("name", Text),
    IdentityColumn::new("state", Text),
    IdentityColumn::new("created_at", Timestamp),
    IdentityColumn::new("updated_at", Timestamp),
    IdentityColumn::new("runtime_s", Float),
    IdentityColumn::new("exit_code", Int),
    IdentityColumn::new("group", Text),
    IdentityColumn::new("job_type", Text),
    IdentityColumn::new("tags", TextList),
    IdentityColumn::new("notes", Text),
    IdentityColumn::new("host", Text),
    IdentityColumn::new("git_remote", Text),
    IdentityColumn::new("git_commit", Text),
];

/// Column groups of the W&B sources' runs table.
pub const WANDB_PREFIXES: &[&str] = &["config.", "summary."];

/// The runs table of the W&B sources (these files and the API).
pub const WANDB_COLUMNS: RunColumns = RunColumns {
    identity: WANDB_IDENTITY_COLUMNS,
    groups: WANDB_PREFIXES,
    listing: ["name", "state", "created_at"],
    no_system: None,
};

/// One run's log files, in the order to read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunFiles {
    pub run_id: String,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// The runs found under a path, sorted by run id.
#[derive(Debug, Clone, Serialize)]
pub struct WandbFiles {
    pub root: PathBuf,
    pub runs: Vec<RunFiles>,
}

impl WandbFiles {
    /// Finds the runs under `root`. Errors when the path cannot be read or
    /// holds no W&B run.
    pub fn discover(root: &Path) -> Result<WandbFiles> {
        let meta = fs::metadata(root).map_err(|e| Error::source(root.display(), format!("cannot read: {e}")))?;
        let mut logs = Vec::new();
        if meta.is_file() {
            logs.push(root.to_path_buf());
        } else {
            find_logs(root, 0, &mut logs).map_err(|e| Error::source(root.display(), format!("cannot list: {e}")))?;
        }
        // Dedupe links (latest-run) by the file they resolve to.
        let mut seen = std::collections::HashSet::new();
        logs.retain(|p| seen.insert(fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
        if logs.is_empty() {
            return Err(Error::source(
                root.display(),
                "no W&B runs found (expected a wandb/ folder, a run-* folder or a .wandb file)",
            ));
        }
        let mut by_id: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for log in logs {
            by_id.entry(run_id_of(&log)).or_default().push(log);
        }
        let runs = by_id
            .into_iter()
            .map(|(run_id, mut files)| {
                // Folder names start with the run's start time: name order is time order.
                files.sort_by(|a, b| a.parent().cmp(&b.parent()).then(a.cmp(b)));
                let bytes = files.iter().filter_map(|f| fs::metadata(f).ok()).map(|m| m.len()).sum();
                RunFiles { run_id, files, bytes }
            })
            .collect();
        Ok(WandbFiles { root: root.to_path_buf(), runs })
    }

    pub fn total_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.bytes).sum()
    }

    /// What `runport plan` shows for this source.
    pub fn describe_plan(&self, plan: &FetchPlan) -> serde_json::Value {
        let needs = RecordNeeds::from_plan(plan);
        serde_json::json!({
            "source_kind": "wandb-files",
            "runs": self.runs.len(),
            "files": self.runs.iter().map(|r| r.files.len()).sum::<usize>(),
            "bytes": self.total_bytes(),
            "stages": [
                {"stage": "discover", "reads": "run folders and .wandb files", "done": true},
                {"stage": "decode", "reads": "every .wandb log once, checksums verified",
                 "records_decoded": needs},
                {"stage": "write", "tables": tables(plan)},
            ],
        })
    }
}

fn tables(plan: &FetchPlan) -> Vec<&'static str> {
    let mut t = vec!["runs.parquet"];
    if plan.history {
        t.push("history/");
    }
    t
}

/// `run-<id>.wandb` → `<id>`; otherwise the file stem.
fn run_id_of(log: &Path) -> String {
    let stem = log.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.strip_prefix("run-").map(str::to_string).unwrap_or(stem)
}

fn is_run_folder(name: &str) -> bool {
    name.starts_with("run-") || name.starts_with("offline-run-")
}

/// Collects `.wandb` logs: in `dir` itself (a run folder), in run folders
/// below it, and (up to two levels) in `wandb/` or `.wandb/` folders below it.
fn find_logs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in &entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.ends_with(".wandb") && path.is_file() {
            out.push(path);
        }
    }
    for e in &entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        // `latest-run` is a link to a run folder listed beside it; read it only
        // where it is a real folder.
        let is_link = e.file_type().is_ok_and(|t| t.is_symlink());
        if is_run_folder(&name) || (name == "latest-run" && !is_link) {
            find_logs_in_run_folder(&path, out)?;
        } else if depth < 2 && (name == "wandb" || name == ".wandb") {
            find_logs(&path, depth + 1, out)?;
        }
    }
    Ok(())
}

fn find_logs_in_run_folder(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wandb") && p.is_file())
        .collect();
    logs.sort();
    out.extend(logs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_from_file_names() {
        assert_eq!(run_id_of(Path::new("x/offline-run-20240101_000000-abc123/run-abc123.wandb")), "abc123");
        assert_eq!(run_id_of(Path::new("custom.wandb")), "custom");
    }

    #[test]
    fn discovery_finds_runs_once_and_groups_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("wandb");
        for (folder, id) in [
            ("run-20240101_000000-aaa", "aaa"),
            ("offline-run-20240102_000000-bbb", "bbb"),
            ("run-20240103_000000-aaa", "aaa"),
        ] {
            let f = w.join(folder);
            fs::create_dir_all(&f).unwrap();
            fs::write(f.join(format!("run-{id}.wandb")), log_reader::HEADER).unwrap();
            fs::create_dir_all(f.join("files")).unwrap();
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(w.join("run-20240103_000000-aaa"), w.join("latest-run")).unwrap();
        for root in [dir.path().to_path_buf(), w.clone()] {
            let found = WandbFiles::discover(&root).unwrap();
            let ids: Vec<_> = found.runs.iter().map(|r| (r.run_id.as_str(), r.files.len())).collect();
            assert_eq!(ids, [("aaa", 2), ("bbb", 1)], "from {root:?}");
            assert!(found.runs[0].files[0].to_string_lossy().contains("20240101"));
        }
        // A `.wandb/` folder instead of `wandb/`.
        let hidden = tempfile::tempdir().unwrap();
        let f = hidden.path().join(".wandb/run-20240101_000000-ccc");
        fs::create_dir_all(&f).unwrap();
        fs::write(f.join("run-ccc.wandb"), log_reader::HEADER).unwrap();
        assert_eq!(WandbFiles::discover(hidden.path()).unwrap().runs[0].run_id, "ccc");
        let single = WandbFiles::discover(&w.join("offline-run-20240102_000000-bbb")).unwrap();
        assert_eq!(single.runs.len(), 1);
        let err = WandbFiles::discover(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = WandbFiles::discover(empty.path()).unwrap_err();
        assert!(err.to_string().contains("no W&B runs found"), "{err}");
    }
}
