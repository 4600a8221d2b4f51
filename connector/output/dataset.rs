//! The dataset folder, replaced in one atomic step.
//!
//! An export into `PARENT/NAME` writes its files into a staging folder
//! beside it, `PARENT/.NAME.runport-new` (same parent, so same filesystem),
//! fsyncs every file, the manifest and the folders, and only then makes the
//! new folder visible:
//!
//! - no `NAME` yet: one `rename`;
//! - `NAME` exists (Linux): `renameat2(RENAME_EXCHANGE)` swaps the two
//!   folders in one step, the previous export (now under the staging name) is
//!   removed, and the parent folder is fsynced;
//! - where the exchange is not supported (`EINVAL`, `ENOTSUP`, `ENOSYS`, or not
//!   Linux with glibc): `NAME` is renamed aside to `PARENT/.NAME.runport-old`,
//!   the staging folder renamed to `NAME`, the old one removed. Between the
//!   two renames `NAME` does not exist (a reader finds no dataset, never a
//!   mixed one); a run killed there leaves the previous export whole under
//!   `.NAME.runport-old`, and the next export into `NAME` puts it back first.
//!
//! A reader of `NAME` thus sees one whole export, the previous or the new
//! one. An export that fails (or is dropped) removes its staging folder and
//! leaves `NAME` as it was. The next export removes what a killed one left
//! (`.NAME.runport-new`, `.NAME.runport-old`).
//!
//! Exports into the same folder exclude each other with a lock on
//! `PARENT/.NAME.runport-lock` (removed when the export ends): a second one
//! is refused with a usage error naming the folder.
//!
//! The folder is replaced whole, so runport replaces only what it wrote: an
//! existing `NAME` must be empty or hold a runport dataset and nothing else
//! (the files its manifest lists, `runs.parquet`, `history/part-*.parquet`,
//! `_manifest.json`, and the temporary `.*.tmp-runport-*` files that
//! versions writing in place left when killed, which is also all a folder
//! without manifest may hold). Anything else is a usage error naming it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

pub const MANIFEST: &str = "_manifest.json";
/// Temporary files of versions that wrote into the dataset folder in place.
const OLD_TMP_MARK: &str = ".tmp-runport-";
const STAGING_SUFFIX: &str = ".runport-new";
const ASIDE_SUFFIX: &str = ".runport-old";
const LOCK_SUFFIX: &str = ".runport-lock";
const SPILL_SUFFIX: &str = ".runport-spill";

/// A file of the export being written (in the staging folder); removed on
/// drop unless committed.
#[derive(Debug)]
pub struct TempFile {
    pub(super) tmp: PathBuf,
    /// Path relative to the dataset directory, with `/` separators.
    pub rel: String,
    pub rows: u64,
    pub bytes: u64,
    committed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A file of the committed export, as listed in the manifest.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// The output folder of one export, and the staging folder it is written in.
#[derive(Debug)]
pub struct DatasetDir {
    /// The folder readers see.
    dir: PathBuf,
    /// `.NAME.runport-new` beside it, where this export is written.
    staging: PathBuf,
    /// `.NAME.runport-old`: the previous export while the fallback swaps.
    aside: PathBuf,
    /// `.NAME.runport-spill`: runs larger than memory, while they are written.
    spill: PathBuf,
    /// Of the folder this export replaces, given to the new one at commit.
    permissions: Option<fs::Permissions>,
    _lock: OutputLock,
    published: bool,
}

impl DatasetDir {
    /// Locks the output folder, cleans up after a killed export, checks that
    /// an existing folder is a runport dataset, and creates the staging
    /// folder. A symbolic link given as the folder is followed: the folder it
    /// points to is replaced.
    pub fn open(dir: &Path) -> Result<DatasetDir> {
        let dir = resolve(dir)?;
        let parent = dir.parent().expect("invariant: a resolved output folder has a parent").to_path_buf();
        let name = dir.file_name().expect("invariant: a resolved output folder has a name").to_string_lossy();
        fs::create_dir_all(&parent).map_err(|e| Error::write(parent.display(), e))?;
        let beside = |suffix: &str| parent.join(format!(".{name}{suffix}"));
        let (staging, aside) = (beside(STAGING_SUFFIX), beside(ASIDE_SUFFIX));
        let lock = OutputLock::acquire(beside(LOCK_SUFFIX), &dir)?;

        // What a killed export left: a previous export set aside by the
        // fallback (put back when the folder is missing), a staging folder.
        if exists(&aside) {
            if exists(&dir) {
                remove_tree(&aside)?;
            } else {
                fs::rename(&aside, &dir).map_err(|e| Error::write(dir.display(), e))?;
                sync_dir(&parent)?;
                tracing::warn!(folder = %dir.display(), "put back the previous export, which a killed export had set aside");
            }
        }
        if exists(&staging) {
            remove_tree(&staging)?;
        }
        let spill = beside(SPILL_SUFFIX);
        if exists(&spill) {
            remove_tree(&spill)?;
        }
        check_replaceable(&dir)?;
        fs::create_dir(&staging).map_err(|e| Error::write(staging.display(), e))?;
        let permissions = fs::metadata(&dir).ok().map(|m| m.permissions());
        Ok(DatasetDir { dir, staging, aside, spill, permissions, _lock: lock, published: false })
    }

    /// `.NAME.runport-spill` beside the folder: where runs larger than
    /// memory wait to be written (see [`super::spill`]). Created when first
    /// needed; removed by the export that made it and, after a kill, by the
    /// next export into the same folder.
    pub fn spill_path(&self) -> PathBuf {
        self.spill.clone()
    }

    /// The dataset folder (absolute; where the export becomes visible).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates `rel` (e.g. `history/part-00000.parquet`) in the staging folder.
    pub fn create(&self, rel: &str) -> Result<(File, TempFile)> {
        let dest = self.staging.join(rel);
        let parent = dest.parent().expect("invariant: a file in the dataset has a parent");
        fs::create_dir_all(parent).map_err(|e| Error::write(parent.display(), e))?;
        let file = File::create(&dest).map_err(|e| Error::write(dest.display(), e))?;
        Ok((file, TempFile { tmp: dest, rel: rel.to_string(), rows: 0, bytes: 0, committed: false }))
    }

    /// Fsyncs every file, writes and fsyncs the manifest, fsyncs the
    /// folders, then makes the export visible in one step (see the module
    /// documentation) and removes the previous one.
    pub fn commit(mut self, mut files: Vec<TempFile>, manifest: &serde_json::Value) -> Result<Vec<FileEntry>> {
        let mut entries = Vec::new();
        for f in &mut files {
            File::open(&f.tmp).and_then(|file| file.sync_all()).map_err(|e| Error::write(f.tmp.display(), e))?;
            f.committed = true;
            entries.push(FileEntry { path: f.rel.clone(), rows: f.rows, bytes: f.bytes });
        }
        let path = self.staging.join(MANIFEST);
        let text = serde_json::to_vec_pretty(manifest).expect("invariant: the manifest is plain JSON");
        File::create(&path)
            .and_then(|mut file| file.write_all(&text).and_then(|_| file.sync_all()))
            .map_err(|e| Error::write(path.display(), e))?;
        let mut folders: Vec<PathBuf> = entries
            .iter()
            .filter_map(|e| Path::new(&e.path).parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| self.staging.join(p))
            .collect();
        folders.sort();
        folders.dedup();
        folders.push(self.staging.clone());
        // The new folder keeps the permissions of the one it replaces.
        if let Some(p) = &self.permissions {
            fs::set_permissions(&self.staging, p.clone()).map_err(|e| Error::write(self.staging.display(), e))?;
        }
        for folder in &folders {
            sync_dir(folder)?;
        }
        self.publish()?;
        Ok(entries)
    }

    /// Makes the staging folder the dataset folder.
    fn publish(&mut self) -> Result<()> {
        let parent = self.dir.parent().expect("invariant: a resolved output folder has a parent").to_path_buf();
        if !exists(&self.dir) {
            fs::rename(&self.staging, &self.dir).map_err(|e| Error::write(self.dir.display(), e))?;
            self.published = true;
            return sync_dir(&parent);
        }
        match exchange(&self.staging, &self.dir) {
            Ok(()) => {
                self.published = true;
                sync_dir(&parent)?;
                // The previous export, now under the staging name.
                if let Err(e) = remove_tree(&self.staging) {
                    tracing::warn!(error = %e, "the previous export stays until the next export into this folder");
                }
                Ok(())
            }
            Err(e) if exchange_unsupported(&e) => {
                tracing::debug!(error = %e, "no RENAME_EXCHANGE here: the folder is replaced by two renames");
                self.publish_by_renames(&parent)
            }
            Err(e) => Err(Error::write(self.dir.display(), e)),
        }
    }

    /// The fallback: the previous export aside, the new one in, the previous
    /// one removed.
    fn publish_by_renames(&mut self, parent: &Path) -> Result<()> {
        fs::rename(&self.dir, &self.aside).map_err(|e| Error::write(self.aside.display(), e))?;
        if let Err(e) = fs::rename(&self.staging, &self.dir) {
            // Put the previous export back; the next export does it otherwise.
            let _ = fs::rename(&self.aside, &self.dir);
            return Err(Error::write(self.dir.display(), e));
        }
        self.published = true;
        sync_dir(parent)?;
        if let Err(e) = remove_tree(&self.aside) {
            tracing::warn!(error = %e, "the previous export stays until the next export into this folder");
        }
        Ok(())
    }
}

impl Drop for DatasetDir {
    /// An export that was not committed leaves no trace.
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.staging);
        }
        let _ = fs::remove_dir_all(&self.spill);
    }
}

/// The output folder as an absolute path without `.`/`..`, a symbolic link
/// followed.
fn resolve(dir: &Path) -> Result<PathBuf> {
    let usage = |why: &str| Error::Usage(format!("cannot export into {}: {why}", dir.display()));
    let meta = fs::symlink_metadata(dir);
    let resolved = if meta.is_ok() {
        fs::canonicalize(dir).map_err(|e| Error::write(dir.display(), e))?
    } else {
        let abs = std::path::absolute(dir).map_err(|e| Error::write(dir.display(), e))?;
        let name = abs.file_name().ok_or_else(|| usage("not a folder name"))?.to_os_string();
        let parent = abs.parent().ok_or_else(|| usage("not a folder name"))?;
        // The parent may not exist yet; resolve the part of it that does.
        match fs::canonicalize(parent) {
            Ok(p) => p.join(name),
            Err(_) => abs,
        }
    };
    if resolved.parent().is_none() || resolved.file_name().is_none() {
        return Err(usage("the dataset is written beside the folder, which needs a parent"));
    }
    if exists(&resolved) && !resolved.is_dir() {
        return Err(usage("it exists and is not a folder"));
    }
    Ok(resolved)
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn remove_tree(p: &Path) -> Result<()> {
    fs::remove_dir_all(p).map_err(|e| Error::write(p.display(), e))
}

/// Fsyncs a folder, so the names in it are on disk.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::write(dir.display(), e))
}

/// Refuses a folder that holds anything runport did not write.
fn check_replaceable(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // missing (checked to be a folder when it exists)
    };
    let listed = previous_files(dir);
    let ours = |rel: &str, is_dir: bool| {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if is_dir {
            return rel == "history" || rel == "system" || listed.iter().any(|l| l.starts_with(&format!("{rel}/")));
        }
        listed.iter().any(|l| l == rel)
            || rel == MANIFEST
            || rel == "runs.parquet"
            || ((rel.starts_with("history/part-") || rel.starts_with("system/part-")) && rel.ends_with(".parquet"))
            || (name.starts_with('.') && name.contains(OLD_TMP_MARK))
    };
    let manifest = fs::read(dir.join(MANIFEST)).ok().and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok());
    let is_dataset = manifest.is_some_and(|m| m.get("format_version").is_some() && m.get("runport_version").is_some());
    let mut stack: Vec<(String, fs::ReadDir)> = vec![(String::new(), entries)];
    while let Some((prefix, entries)) = stack.pop() {
        for e in entries {
            let e = e.map_err(|e| Error::write(dir.display(), e))?;
            let rel = format!("{prefix}{}", e.file_name().to_string_lossy());
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !ours(&rel, is_dir) {
                let what = if is_dataset {
                    "it holds files runport did not write"
                } else {
                    "it is not a runport dataset (no _manifest.json)"
                };
                return Err(Error::Usage(format!(
                    "refusing to replace {}: {what}, such as {rel:?}; choose a new or empty folder, or move them out",
                    dir.display()
                )));
            }
            if is_dir {
                let sub = fs::read_dir(e.path()).map_err(|err| Error::write(e.path().display(), err))?;
                stack.push((format!("{rel}/"), sub));
            }
        }
    }
    Ok(())
}

/// Paths listed by an existing manifest (only plain relative paths).
fn previous_files(dir: &Path) -> Vec<String> {
    let Ok(text) = fs::read(dir.join(MANIFEST)) else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(tables) = json.get("tables").and_then(|t| t.as_object()) {
        for table in tables.values() {
            for f in table.get("files").and_then(|f| f.as_array()).into_iter().flatten() {
                if let Some(p) = f.get("path").and_then(|p| p.as_str()).filter(|p| is_safe_relative(p)) {
                    out.push(p.to_string());
                }
            }
        }
    }
    out
}

fn is_safe_relative(rel: &str) -> bool {
    !rel.is_empty() && !rel.starts_with('/') && !rel.split('/').any(|s| s == ".." || s.is_empty())
}

/// Swaps two folders in one step.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let b = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call;
    // renameat2 reads them and touches no memory of ours otherwise.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// The errors of a filesystem (or kernel) without `RENAME_EXCHANGE`.
fn exchange_unsupported(e: &io::Error) -> bool {
    const EINVAL: i32 = 22;
    const ENOSYS: i32 = 38;
    const ENOTSUP: i32 = 95;
    e.kind() == io::ErrorKind::Unsupported || matches!(e.raw_os_error(), Some(EINVAL | ENOSYS | ENOTSUP))
}

/// An exclusive lock on `.NAME.runport-lock` beside the output folder,
/// holding the pid of its owner; the file is removed on release.
#[derive(Debug)]
pub(crate) struct OutputLock {
    file: File,
    path: PathBuf,
}

impl OutputLock {
    fn acquire(path: PathBuf, dir: &Path) -> Result<OutputLock> {
        Self::acquire_for(path, dir, "export")
    }

    /// The lock at `path` for writing `dir`; `what` names the command that
    /// holds it in the error a second one gets (exit 2).
    pub(crate) fn acquire_for(path: PathBuf, dir: &Path, what: &str) -> Result<OutputLock> {
        loop {
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::write(path.display(), e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let owner = fs::read_to_string(&path).unwrap_or_default();
                    let owner = owner.trim();
                    return Err(Error::Usage(format!(
                        "{} is being written by another runport {what}{}; wait for it to end or choose another folder",
                        dir.display(),
                        if owner.is_empty() { String::new() } else { format!(" (pid {owner})") }
                    )));
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::write(path.display(), e)),
            }
            // The owner before us removes the file when it releases it: the
            // lock counts only when held on the file that is still there.
            if same_file(&file, &path) {
                file.set_len(0)
                    .and_then(|_| write!(file, "{}", std::process::id()))
                    .map_err(|e| Error::write(path.display(), e))?;
                return Ok(OutputLock { file, path });
            }
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the file handle.
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(ds: DatasetDir, files: &[(&str, &[u8])]) {
        let mut temps = Vec::new();
        for (rel, bytes) in files {
            let (mut f, tmp) = ds.create(rel).unwrap();
            f.write_all(bytes).unwrap();
            temps.push(tmp);
        }
        let listed: Vec<_> = files.iter().map(|(rel, _)| serde_json::json!({"path": rel})).collect();
        let manifest =
            serde_json::json!({"format_version": 1, "runport_version": "test", "tables": {"t": {"files": listed}}});
        ds.commit(temps, &manifest).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn an_export_replaces_the_folder_whole_and_leaves_nothing_beside() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        export(DatasetDir::open(&out).unwrap(), &[("runs.parquet", b"1"), ("history/part-00000.parquet", b"1")]);
        assert_eq!(names(&out), ["_manifest.json", "history", "runs.parquet"]);
        export(DatasetDir::open(&out).unwrap(), &[("runs.parquet", b"2")]);
        assert_eq!(names(&out), ["_manifest.json", "runs.parquet"], "the previous export's history is gone");
        assert_eq!(fs::read(out.join("runs.parquet")).unwrap(), b"2");
        assert_eq!(names(parent.path()), ["out"], "no staging, aside or lock left");
    }

    #[test]
    fn an_uncommitted_export_leaves_the_previous_one() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        export(DatasetDir::open(&out).unwrap(), &[("runs.parquet", b"1")]);
        {
            let ds = DatasetDir::open(&out).unwrap();
            let (mut f, _tmp) = ds.create("runs.parquet").unwrap();
            f.write_all(b"2").unwrap();
            assert!(exists(&parent.path().join(".out.runport-new/runs.parquet")));
        }
        assert_eq!(fs::read(out.join("runs.parquet")).unwrap(), b"1");
        assert_eq!(names(parent.path()), ["out"]);
    }

    #[test]
    fn the_fallback_swap_and_its_recovery() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        export(DatasetDir::open(&out).unwrap(), &[("runs.parquet", b"1")]);
        let mut ds = DatasetDir::open(&out).unwrap();
        let (mut f, tmp) = ds.create("runs.parquet").unwrap();
        f.write_all(b"2").unwrap();
        drop((f, tmp));
        // Killed between the fallback's two renames: the folder is missing,
        // the previous export is whole beside it.
        fs::rename(&out, &ds.aside).unwrap();
        ds.published = true; // as after a kill: nothing is cleaned up
        drop(ds);
        assert!(!exists(&out));
        let ds = DatasetDir::open(&out).unwrap();
        assert_eq!(fs::read(out.join("runs.parquet")).unwrap(), b"1", "the next export puts it back first");
        drop(ds);

        // The fallback itself.
        let mut ds = DatasetDir::open(&out).unwrap();
        let (mut f, mut tmp) = ds.create("runs.parquet").unwrap();
        f.write_all(b"3").unwrap();
        tmp.committed = true;
        ds.publish_by_renames(parent.path()).unwrap();
        drop(ds);
        assert_eq!(fs::read(out.join("runs.parquet")).unwrap(), b"3");
        assert_eq!(names(parent.path()), ["out"]);
    }

    #[test]
    fn a_folder_runport_did_not_write_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("thesis.tex"), b"x").unwrap();
        let e = DatasetDir::open(&out).unwrap_err().to_string();
        assert!(e.contains("not a runport dataset") && e.contains("thesis.tex") && e.contains("out"), "{e}");
        assert_eq!(names(parent.path()), ["out"], "nothing created beside it");

        // A dataset with a file added by hand is refused too.
        fs::remove_file(out.join("thesis.tex")).unwrap();
        export(DatasetDir::open(&out).unwrap(), &[("runs.parquet", b"1")]);
        fs::write(out.join("history-notes.txt"), b"x").unwrap();
        let e = DatasetDir::open(&out).unwrap_err().to_string();
        assert!(e.contains("files runport did not write") && e.contains("history-notes.txt"), "{e}");

        // What an older version killed in its first export left is replaced.
        let old = parent.path().join("old");
        fs::create_dir_all(old.join("history")).unwrap();
        fs::write(old.join("runs.parquet"), b"x").unwrap();
        fs::write(old.join("history/.part-00001.parquet.tmp-runport-77"), b"x").unwrap();
        fs::write(old.join(".runs.parquet.tmp-runport-77"), b"x").unwrap();
        export(DatasetDir::open(&old).unwrap(), &[("runs.parquet", b"1")]);
        assert_eq!(names(&old), ["_manifest.json", "runs.parquet"]);
        // A file, not a folder.
        fs::write(parent.path().join("file"), b"x").unwrap();
        assert!(matches!(DatasetDir::open(&parent.path().join("file")), Err(Error::Usage(_))));
    }

    #[test]
    fn a_second_export_into_the_same_folder_is_refused_while_the_first_runs() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        let first = DatasetDir::open(&out).unwrap();
        let e = DatasetDir::open(&out).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        let e = e.to_string();
        assert!(e.contains("another runport export") && e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        export(DatasetDir::open(&out).unwrap(), &[("runs.parquet", b"1")]);
        assert_eq!(names(parent.path()), ["out"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_is_followed() {
        let parent = tempfile::tempdir().unwrap();
        let real = parent.path().join("real");
        export(DatasetDir::open(&real).unwrap(), &[("runs.parquet", b"1")]);
        std::os::unix::fs::symlink(&real, parent.path().join("link")).unwrap();
        export(DatasetDir::open(&parent.path().join("link")).unwrap(), &[("runs.parquet", b"2")]);
        assert!(fs::symlink_metadata(parent.path().join("link")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(real.join("runs.parquet")).unwrap(), b"2");
    }

    #[cfg(unix)]
    #[test]
    fn the_new_folder_keeps_the_permissions_of_the_old_one() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        export(DatasetDir::open(&out).unwrap(), &[("runs.parquet", b"1")]);
        fs::set_permissions(&out, fs::Permissions::from_mode(0o750)).unwrap();
        export(DatasetDir::open(&out).unwrap(), &[("runs.parquet", b"2")]);
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o750);
        assert_eq!(fs::read(out.join("runs.parquet")).unwrap(), b"2");
    }

    #[test]
    fn unsafe_manifest_paths_are_ignored() {
        assert!(is_safe_relative("history/part-00000.parquet"));
        assert!(!is_safe_relative("../etc/passwd"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative("a//b"));
    }
}
