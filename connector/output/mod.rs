//! The output dataset: a directory of Parquet files and `_manifest.json`.
//!
//! Files are written under temporary names in their final directory and
//! renamed into place by [`DatasetDir::commit`], manifest last; files of the
//! previous export that the new one did not write are removed after that. A
//! temporary file that is never committed (failure, panic) is deleted when it
//! is dropped. See `schemas/output/README.md`.

pub mod history;
pub mod pages;
pub mod parallel;
pub mod primitive;
pub mod runlength;
pub mod runs;
pub mod spool;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::parallel::ParallelWriter;
use self::spool::Spool;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::Serialize;

use crate::error::{Error, Result};

pub const MANIFEST: &str = "_manifest.json";
const TMP_MARK: &str = ".tmp-runport-";

/// Row groups close at this many encoded bytes (or rows, below).
pub const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;
/// A history part closes after this many bytes written.
pub const PART_BYTES: usize = 256 * 1024 * 1024;

/// Encodings of the history's row columns: steps and timestamps ascend
/// (delta-encoded to a few bits a row), floats are split by byte, which
/// zstd compresses better than plain doubles.
pub const HISTORY_ROW_ENCODINGS: [(&str, Encoding); 3] = [
    ("step", Encoding::DELTA_BINARY_PACKED),
    ("timestamp", Encoding::DELTA_BINARY_PACKED),
    ("runtime_s", Encoding::BYTE_STREAM_SPLIT),
];

/// Where the data came from, written into every file's key-value metadata.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub source: String,
    pub source_kind: String,
    pub selection: String,
}

/// A file written under a temporary name; deleted on drop unless committed.
#[derive(Debug)]
pub struct TempFile {
    tmp: PathBuf,
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

/// The output directory of one export.
#[derive(Debug)]
pub struct DatasetDir {
    dir: PathBuf,
    previous: Vec<String>,
}

impl DatasetDir {
    /// Creates the directory when needed and removes temporary files left by
    /// an export that was killed.
    pub fn open(dir: &Path) -> Result<DatasetDir> {
        fs::create_dir_all(dir).map_err(|e| Error::write(dir.display(), e))?;
        for sub in [dir.to_path_buf(), dir.join("history")] {
            if let Ok(entries) = fs::read_dir(&sub) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().contains(TMP_MARK) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        let previous = previous_files(dir);
        Ok(DatasetDir { dir: dir.to_path_buf(), previous })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates `rel` (e.g. `history/part-00000.parquet`) under a temporary name.
    pub fn create(&self, rel: &str) -> Result<(File, TempFile)> {
        let dest = self.dir.join(rel);
        let parent = dest.parent().expect("invariant: a file in the dataset has a parent").to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| Error::write(parent.display(), e))?;
        let name = dest.file_name().expect("invariant: rel names a file").to_string_lossy().into_owned();
        let tmp = parent.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::write(tmp.display(), e))?;
        Ok((file, TempFile { tmp, rel: rel.to_string(), rows: 0, bytes: 0, committed: false }))
    }

    /// Renames every file into place, then writes the manifest (also through a
    /// temporary file), then removes files of the previous export that this
    /// one did not write.
    pub fn commit(self, mut files: Vec<TempFile>, manifest: &serde_json::Value) -> Result<Vec<FileEntry>> {
        let mut entries = Vec::new();
        for f in &mut files {
            let dest = self.dir.join(&f.rel);
            fs::rename(&f.tmp, &dest).map_err(|e| Error::write(dest.display(), e))?;
            f.committed = true;
            entries.push(FileEntry { path: f.rel.clone(), rows: f.rows, bytes: f.bytes });
        }
        let (mut file, mut tmp) = self.create(MANIFEST)?;
        let text = serde_json::to_vec_pretty(manifest).expect("invariant: the manifest is plain JSON");
        use std::io::Write;
        file.write_all(&text).and_then(|_| file.sync_all()).map_err(|e| Error::write(tmp.tmp.display(), e))?;
        drop(file);
        let dest = self.dir.join(MANIFEST);
        fs::rename(&tmp.tmp, &dest).map_err(|e| Error::write(dest.display(), e))?;
        tmp.committed = true;

        let written: std::collections::HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let mut stale: Vec<String> = self.previous.iter().filter(|p| !written.contains(p.as_str())).cloned().collect();
        // Parts of older exports without a manifest, or beyond the new count.
        if let Ok(rd) = fs::read_dir(self.dir.join("history")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = format!("history/{name}");
                if name.starts_with("part-") && name.ends_with(".parquet") && !written.contains(rel.as_str()) {
                    stale.push(rel);
                }
            }
        }
        for rel in stale {
            if is_safe_relative(&rel) {
                let _ = fs::remove_file(self.dir.join(&rel));
            }
        }
        let history = self.dir.join("history");
        if fs::read_dir(&history).is_ok_and(|mut d| d.next().is_none()) {
            let _ = fs::remove_dir(&history);
        }
        Ok(entries)
    }
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
                if let Some(p) = f.get("path").and_then(|p| p.as_str()) {
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

/// Writer settings shared by every table: zstd, page statistics, byte-bounded
/// row groups, dictionaries only for the named columns, the given encodings
/// for others, provenance metadata.
pub fn writer_properties(
    prov: &Provenance,
    table: &str,
    dictionary_columns: &[&str],
    encodings: &[(&str, Encoding)],
) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("invariant: zstd level 1 is valid")))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_dictionary_enabled(false)
        .set_key_value_metadata(Some(vec![
            KeyValue::new("runport.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            KeyValue::new("runport.source".to_string(), prov.source.clone()),
            KeyValue::new("runport.source_kind".to_string(), prov.source_kind.clone()),
            KeyValue::new("runport.selection".to_string(), prov.selection.clone()),
            KeyValue::new("runport.table".to_string(), table.to_string()),
        ]));
    for c in dictionary_columns {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*c), true);
    }
    for (c, e) in encodings {
        b = b.set_column_encoding(ColumnPath::from(*c), *e);
    }
    b.build()
}

/// Settings of the history table: `run_id` and `key` dictionary-encoded,
/// [`HISTORY_ROW_ENCODINGS`], and in the long layout the float `value`
/// split by byte.
pub fn history_writer_properties(prov: &Provenance, long_layout: bool) -> WriterProperties {
    let mut encodings = HISTORY_ROW_ENCODINGS.to_vec();
    if long_layout {
        encodings.push(("value", Encoding::BYTE_STREAM_SPLIT));
    }
    writer_properties(prov, "history", &["run_id", "key"], &encodings)
}

/// Writes one table as one or more Parquet parts (`part-NNNNN.parquet` when
/// `parted`), starting a new part after [`PART_BYTES`].
pub struct TableWriter {
    schema: SchemaRef,
    props: WriterProperties,
    /// `runs.parquet`, or `history/part-` for parted tables.
    name: String,
    parted: bool,
    current: Option<(ParallelWriter<Spool>, TempFile)>,
    done: Vec<TempFile>,
    pub rows: u64,
}

impl TableWriter {
    pub fn new(schema: SchemaRef, props: WriterProperties, name: &str, parted: bool) -> TableWriter {
        TableWriter { schema, props, name: name.to_string(), parted, current: None, done: Vec::new(), rows: 0 }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn write(&mut self, dataset: &DatasetDir, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.is_none() {
            let rel =
                if self.parted { format!("{}{:05}.parquet", self.name, self.done.len()) } else { self.name.clone() };
            let (file, tmp) = dataset.create(&rel)?;
            let spool = Spool::new(file).map_err(|e| Error::write(tmp.tmp.display(), e))?;
            let writer = ParallelWriter::try_new(spool, Arc::clone(&self.schema), self.props.clone())
                .map_err(|e| Error::Parquet { path: rel.clone(), source: e })?;
            self.current = Some((writer, tmp));
        }
        let (writer, tmp) = self.current.as_mut().expect("invariant: a part is open");
        writer.write(batch).map_err(|e| Error::Parquet { path: tmp.rel.clone(), source: e })?;
        tmp.rows += batch.num_rows() as u64;
        self.rows += batch.num_rows() as u64;
        if self.parted && writer.bytes_written() + writer.in_progress_size() >= PART_BYTES {
            self.close_part()?;
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        if let Some((writer, mut tmp)) = self.current.take() {
            let spool = writer.close().map_err(|e| Error::Parquet { path: tmp.rel.clone(), source: e })?;
            let file = spool.finish().map_err(|e| Error::write(tmp.tmp.display(), e))?;
            tmp.bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.done.push(tmp);
        }
        Ok(())
    }

    /// Closes the last part; returns the files (empty when nothing was written,
    /// except for an unparted table, which is always written).
    pub fn finish(mut self, dataset: &DatasetDir) -> Result<Vec<TempFile>> {
        if !self.parted && self.current.is_none() && self.done.is_empty() {
            let (file, tmp) = dataset.create(&self.name)?;
            let spool = Spool::new(file).map_err(|e| Error::write(tmp.tmp.display(), e))?;
            let writer = ParallelWriter::try_new(spool, Arc::clone(&self.schema), self.props.clone())
                .map_err(|e| Error::Parquet { path: self.name.clone(), source: e })?;
            self.current = Some((writer, tmp));
        }
        self.close_part()?;
        Ok(std::mem::take(&mut self.done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_files_vanish_and_stale_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let ds = DatasetDir::open(dir.path()).unwrap();
        {
            let (_f, _tmp) = ds.create("history/part-00000.parquet").unwrap();
            assert_eq!(fs::read_dir(dir.path().join("history")).unwrap().count(), 1);
        }
        assert_eq!(fs::read_dir(dir.path().join("history")).unwrap().count(), 0, "dropped temp file must be removed");

        // First export: two parts. Second export: one part; the old second part goes.
        let (_f, a) = ds.create("history/part-00000.parquet").unwrap();
        let (_g, b) = ds.create("history/part-00001.parquet").unwrap();
        let manifest = serde_json::json!({"tables": {"history": {"files": [{"path": "history/part-00000.parquet"}, {"path": "history/part-00001.parquet"}]}}});
        ds.commit(vec![a, b], &manifest).unwrap();
        assert!(dir.path().join("history/part-00001.parquet").exists());
        let ds = DatasetDir::open(dir.path()).unwrap();
        let (_f, a) = ds.create("history/part-00000.parquet").unwrap();
        ds.commit(vec![a], &serde_json::json!({})).unwrap();
        assert!(dir.path().join("history/part-00000.parquet").exists());
        assert!(!dir.path().join("history/part-00001.parquet").exists());
        assert!(dir.path().join(MANIFEST).exists());
    }

    #[test]
    fn unsafe_manifest_paths_are_ignored() {
        assert!(is_safe_relative("history/part-00000.parquet"));
        assert!(!is_safe_relative("../etc/passwd"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative("a//b"));
    }
}
