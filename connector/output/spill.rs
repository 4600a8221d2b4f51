//! Runs larger than memory: a run's history arrives in chunks of whole rows
//! (see [`crate::pipeline::HistorySink`]); once a run outgrows one chunk, each
//! chunk is written to a spill file as Arrow IPC and the run's rows are read
//! back from it, in the history table's order, when the writer reaches the run.
//!
//! - Long layout: a key logged as numbers with ascending steps in a chunk
//!   (series, or points in ascending rows: the usual case) is written as its
//!   values, one array over the rows it spans, beside the chunk's row columns
//!   (`step`, `timestamp`, `runtime_s`), written once per chunk in a file of
//!   their own. Other keys are sorted by (key, step) and written key by key,
//!   in batches of at most [`SPILL_BATCH_ROWS`] long rows without the
//!   `run_id` and `key` columns. Reading back takes the keys in name order; a
//!   key's segments (one per chunk) are concatenated in chunk order when
//!   their steps do not overlap (a key logged with ascending steps, the usual
//!   case), else merged by step, ties in chunk order (log order).
//! - Wide layout: rows stay in log order; each chunk's batch (without
//!   `run_id`) is written as it comes and read back in order.
//!
//! Spill files live in a folder of their own beside the output
//! (`.NAME.runport-spill`), removed when the export ends, whether it
//! succeeds or fails, and by the next export into the same folder after a
//! kill (it holds the output's lock). A spill file is removed as soon as its
//! run is written.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_buffer::{BooleanBufferBuilder, NullBuffer};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::history::{LongParts, batch_schema, long_parts_except, series_in_order};
use super::runlength::{RunsBuilder, repeated};
use crate::columns::kind_metadata;
use crate::error::{Error, Result};
use crate::run::{HistoryRow, HistorySeries, RunHistory};
use crate::value::Value;

/// Spilled batches are not compressed: with LZ4 frames the 10,000,000-step
/// benchmark run spilled 4.4 GB instead of 7.2 GB but took 20 s more CPU
/// (see `benches/README.md`).
const SPILL_COMPRESSION: Option<arrow_ipc::CompressionType> = None;

/// Rows of one spilled batch: what a merge holds per chunk it reads from.
pub const SPILL_BATCH_ROWS: usize = 8192;

/// Rows of the batches a spilled run is read back in.
pub const REPLAY_BATCH_ROWS: usize = 64 * 1024;

/// The spill folder of one export, and how much it holds.
#[derive(Debug)]
pub struct SpillDir {
    path: PathBuf,
    next: AtomicU64,
    used: AtomicU64,
    peak: AtomicU64,
    total: AtomicU64,
}

impl SpillDir {
    /// Creates the folder (removing what a killed export left there).
    pub fn create(path: &Path) -> Result<Arc<SpillDir>> {
        if fs::symlink_metadata(path).is_ok() {
            fs::remove_dir_all(path).map_err(|e| Error::write(path.display(), e))?;
        }
        Ok(Arc::new(SpillDir {
            path: path.to_path_buf(),
            next: AtomicU64::new(0),
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The most bytes the spill files held at once.
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Bytes written to spill files in all.
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// A temporary file in the folder (a download too large to hold in
    /// memory, say), removed when the returned [`SpillFile`] is dropped;
    /// report what it holds with [`SpillFile::holds`].
    pub fn temp_file(self: &Arc<Self>) -> Result<(File, SpillFile)> {
        let (file, path) = self.new_file().map_err(|e| Error::write(self.path.display(), e))?;
        Ok((file, SpillFile { dir: Arc::clone(self), path, bytes: 0 }))
    }

    fn new_file(&self) -> std::io::Result<(File, PathBuf)> {
        if fs::symlink_metadata(&self.path).is_err() {
            fs::create_dir_all(&self.path)?;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(format!("run-{n:06}.arrow"));
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok((file, path))
    }

    fn added(&self, bytes: u64) {
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    fn removed(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A spill file, removed when dropped.
#[derive(Debug)]
pub struct SpillFile {
    dir: Arc<SpillDir>,
    path: PathBuf,
    bytes: u64,
}

impl SpillFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that the file now holds `bytes` (for the spill folder's peak).
    pub fn holds(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            self.dir.added(bytes - self.bytes);
        } else {
            self.dir.removed(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        self.dir.removed(self.bytes);
    }
}

/// The columns of a spilled long batch: the long layout without `run_id` and `key`.
fn long_spill_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("step", DataType::Int64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("runtime_s", DataType::Float64, true),
        Field::new("value", DataType::Float64, true),
        kind_metadata(Field::new("value_json", DataType::Utf8, true), "json"),
    ]))
}

/// The row columns of a chunk, spilled once for all its series keys.
fn rows_spill_schema() -> SchemaRef {
    Arc::new(Schema::new(long_spill_schema().fields()[..3].to_vec()))
}

/// A series key's values in a chunk: one per row of a range of the chunk's rows.
fn values_spill_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("value", DataType::Float64, true)]))
}

/// One key's rows in one chunk: pieces `first..first + batches`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    first: u32,
    batches: u32,
    min_step: i64,
    max_step: i64,
}

/// A piece of a key's rows, read back as a batch of [`long_spill_schema`].
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// A batch of the long file.
    Long(u32),
    /// A series key's values (batch `values` of the values file) for the
    /// rows `start..` of the chunk's row columns (batch `rows` of the rows file).
    Series { rows: u32, values: u32, start: u32 },
}

/// One Arrow IPC spill file being written.
struct IpcOut {
    writer: Option<FileWriter<BufWriter<File>>>,
    path: PathBuf,
    batches: u32,
}

impl IpcOut {
    fn create(dir: &Arc<SpillDir>, schema: &SchemaRef) -> Result<IpcOut> {
        let (file, path) = dir.new_file().map_err(|e| Error::write(dir.path().display(), e))?;
        let what = || format!("spill file {}", path.display());
        let options = arrow_ipc::writer::IpcWriteOptions::default()
            .try_with_compression(SPILL_COMPRESSION)
            .map_err(|e| Error::Arrow { what: what(), source: e })?;
        let writer = FileWriter::try_new_with_options(BufWriter::with_capacity(1 << 20, file), schema, options)
            .map_err(|e| Error::Arrow { what: what(), source: e })?;
        Ok(IpcOut { writer: Some(writer), path, batches: 0 })
    }

    /// Writes `batch`; returns its index.
    fn write(&mut self, batch: &RecordBatch) -> Result<u32> {
        let w = self.writer.as_mut().expect("invariant: the spill file is open until finished");
        w.write(batch).map_err(|e| Error::Arrow { what: format!("spill file {}", self.path.display()), source: e })?;
        self.batches += 1;
        Ok(self.batches - 1)
    }

    fn finish(mut self, dir: &Arc<SpillDir>) -> Result<SpillFile> {
        let error = |e| Error::Arrow { what: format!("spill file {}", self.path.display()), source: e };
        let mut w = self.writer.take().expect("invariant: finished once");
        w.finish().map_err(error)?;
        let inner = w.into_inner().map_err(error)?;
        let file = inner.into_inner().map_err(|e| Error::write(self.path.display(), e.into_error()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        dir.added(bytes);
        Ok(SpillFile { dir: Arc::clone(dir), path: std::mem::take(&mut self.path), bytes })
    }
}

impl Drop for IpcOut {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A run's history being spilled, chunk by chunk.
pub struct SpillWriter {
    dir: Arc<SpillDir>,
    /// Long batches (keys with points or steps out of order), or the wide
    /// layout's batches.
    main: Option<IpcOut>,
    /// Long layout: each chunk's row columns, once for its series keys...
    rows: Option<IpcOut>,
    /// ...and each series key's values.
    values: Option<IpcOut>,
    wide: Option<SchemaRef>,
    pieces: Vec<Piece>,
    /// Long layout: each key's segments (by key id), in chunk order.
    segments: Vec<Vec<Segment>>,
    chunks: u32,
}

impl SpillWriter {
    /// A spill writer for the long layout, or for wide batches of `schema`
    /// (the file schema, `run_id` first).
    pub fn create(dir: &Arc<SpillDir>, wide: Option<&SchemaRef>) -> Result<SpillWriter> {
        Ok(SpillWriter {
            dir: Arc::clone(dir),
            main: None,
            rows: None,
            values: None,
            wide: wide.map(without_run_id),
            pieces: Vec::new(),
            segments: Vec::new(),
            chunks: 0,
        })
    }

    fn out<'a>(slot: &'a mut Option<IpcOut>, dir: &Arc<SpillDir>, schema: SchemaRef) -> Result<&'a mut IpcOut> {
        if slot.is_none() {
            *slot = Some(IpcOut::create(dir, &schema)?);
        }
        Ok(slot.as_mut().expect("invariant: just created"))
    }

    fn segment(&mut self, key: u32, segment: Segment) {
        let k = key as usize;
        if self.segments.len() <= k {
            self.segments.resize(k + 1, Vec::new());
        }
        self.segments[k].push(segment);
    }

    /// Writes one chunk of the long layout. Keys whose rows are in step
    /// order as held, each value a number (series, or points in ascending
    /// rows, the usual case), are written as their values beside the
    /// chunk's row columns, written once; the other keys as long rows
    /// sorted by (key, step).
    pub fn write_long(&mut self, run_id: &str, chunk: &RunHistory) -> Result<()> {
        debug_assert!(self.wide.is_none());
        self.chunks += 1;
        let error = |e| Error::Arrow { what: format!("history of run {run_id}"), source: e };
        let in_order = series_in_order(chunk);
        let mut series_of: Vec<Vec<&HistorySeries>> = vec![Vec::new(); chunk.keys.len()];
        for s in &chunk.series {
            if in_order[s.key as usize] {
                series_of[s.key as usize].push(s);
            }
        }
        let mut as_values: Vec<Option<(u32, ArrayRef)>> =
            series_of.iter().map(|of| spanning(of).map(|v| (of[0].first_row, v))).collect();
        let taken: Vec<bool> = as_values.iter().map(Option::is_some).collect();
        for (k, dense) in dense_points(chunk, &taken).into_iter().enumerate() {
            if dense.is_some() {
                as_values[k] = dense;
            }
        }
        let mut spilled = vec![false; chunk.keys.len()];
        let mut rows_batch: Option<(u32, Int64Array)> = None;
        for (k, entry) in as_values.into_iter().enumerate() {
            let Some((start, values)) = entry else { continue };
            let mut valid = (0..values.len()).filter(|i| values.is_valid(*i));
            let Some(first) = valid.next() else {
                spilled[k] = true;
                continue;
            };
            let last = valid.next_back().unwrap_or(first);
            if rows_batch.is_none() {
                let columns = chunk_row_columns(chunk);
                let steps = columns[0].as_any().downcast_ref::<Int64Array>().expect("invariant: steps").clone();
                let batch = RecordBatch::try_new(rows_spill_schema(), columns.to_vec()).map_err(error)?;
                let index = Self::out(&mut self.rows, &self.dir, rows_spill_schema())?.write(&batch)?;
                rows_batch = Some((index, steps));
            }
            let (rows, steps) = rows_batch.as_ref().expect("invariant: written above");
            let segment = Segment {
                first: self.pieces.len() as u32,
                batches: 1,
                min_step: steps.value(start as usize + first),
                max_step: steps.value(start as usize + last),
            };
            let rows = *rows;
            let batch = RecordBatch::try_new(values_spill_schema(), vec![values]).map_err(error)?;
            let values = Self::out(&mut self.values, &self.dir, values_spill_schema())?.write(&batch)?;
            self.pieces.push(Piece::Series { rows, values, start });
            self.segment(k as u32, segment);
            spilled[k] = true;
        }
        if spilled.iter().all(|s| *s) {
            return Ok(());
        }
        let parts = long_parts_except(run_id, chunk, &spilled)?;
        self.write_long_parts(&parts)
    }

    /// Writes long rows sorted by (key, step).
    fn write_long_parts(&mut self, parts: &LongParts) -> Result<()> {
        let schema = long_spill_schema();
        let steps = parts.columns[0].as_any().downcast_ref::<Int64Array>().expect("invariant: steps are int64");
        let mut offset = 0usize;
        for &(key, rows) in &parts.keys {
            if rows == 0 {
                continue;
            }
            let key_steps = &steps.values()[offset..offset + rows];
            let segment = Segment {
                first: self.pieces.len() as u32,
                batches: rows.div_ceil(SPILL_BATCH_ROWS) as u32,
                min_step: key_steps.iter().copied().min().unwrap_or(0),
                max_step: key_steps.iter().copied().max().unwrap_or(0),
            };
            let mut start = offset;
            while start < offset + rows {
                let len = SPILL_BATCH_ROWS.min(offset + rows - start);
                let columns: Vec<ArrayRef> = parts.columns.iter().map(|c| c.slice(start, len)).collect();
                let batch = RecordBatch::try_new(Arc::clone(&schema), columns)
                    .map_err(|e| Error::Arrow { what: "spilled history".into(), source: e })?;
                let index = Self::out(&mut self.main, &self.dir, Arc::clone(&schema))?.write(&batch)?;
                self.pieces.push(Piece::Long(index));
                start += len;
            }
            self.segment(key, segment);
            offset += rows;
        }
        Ok(())
    }

    /// Writes one chunk of the wide layout (a batch of the file schema; its
    /// `run_id` column is dropped).
    pub fn write_wide(&mut self, batch: &RecordBatch) -> Result<()> {
        let schema = self.wide.clone().expect("invariant: a wide spill");
        self.chunks += 1;
        let columns: Vec<ArrayRef> = batch.columns()[1..].to_vec();
        let b = RecordBatch::try_new(Arc::clone(&schema), columns)
            .map_err(|e| Error::Arrow { what: "spilled history".into(), source: e })?;
        Self::out(&mut self.main, &self.dir, schema)?.write(&b)?;
        Ok(())
    }

    /// Closes the files: the run's rows wait there for the writer.
    pub fn finish(mut self, run_id: &str, keys: Vec<String>) -> Result<SpilledHistory> {
        let dir = Arc::clone(&self.dir);
        let finish = |slot: Option<IpcOut>| slot.map(|o| o.finish(&dir)).transpose();
        Ok(SpilledHistory {
            run_id: run_id.to_string(),
            keys,
            segments: std::mem::take(&mut self.segments),
            pieces: std::mem::take(&mut self.pieces),
            chunks: self.chunks,
            long: self.wide.is_none(),
            main: finish(self.main.take())?,
            rows: finish(self.rows.take())?,
            values: finish(self.values.take())?,
        })
    }
}

/// A key's series in a chunk (ascending, not overlapping) as one array
/// over the rows they span, null where none holds a value; `None` without any.
fn spanning(series: &[&HistorySeries]) -> Option<ArrayRef> {
    let (first, last) = (series.first()?, series.last()?);
    if series.len() == 1 {
        return Some(Arc::new(first.values.clone()));
    }
    let start = first.first_row as usize;
    let end = last.first_row as usize + last.values.len();
    let mut values = vec![0.0; end - start];
    let mut valid = BooleanBufferBuilder::new(end - start);
    valid.append_n(end - start, false);
    for s in series {
        let at = s.first_row as usize - start;
        values[at..at + s.values.len()].copy_from_slice(s.values.values());
        for i in 0..s.values.len() {
            if s.values.is_valid(i) {
                valid.set_bit(at + i, true);
            }
        }
    }
    Some(Arc::new(Float64Array::new(values.into(), Some(NullBuffer::new(valid.finish())))))
}

/// Keys (by id, not `taken`) held as points only, each a number, in
/// ascending rows whose steps do not go down, with a value in at least half
/// the rows they span: their values as one array over those rows (null
/// where the key has none), with its first row. Their long rows are these
/// rows in order, as [`long_parts_except`] sorts them.
fn dense_points(chunk: &RunHistory, taken: &[bool]) -> Vec<Option<(u32, ArrayRef)>> {
    let n = chunk.keys.len();
    let mut ok: Vec<bool> = taken.iter().map(|t| !t).collect();
    for s in &chunk.series {
        ok[s.key as usize] = false;
    }
    let mut span: Vec<Option<(u32, u32)>> = vec![None; n];
    let mut count = vec![0usize; n];
    for p in &chunk.points {
        let k = p.key as usize;
        if !ok[k] {
            continue;
        }
        let number = matches!(p.value, Value::Int(_) | Value::Float(_));
        let after = span[k]
            .is_none_or(|(_, last)| last < p.row && chunk.rows[last as usize].step <= chunk.rows[p.row as usize].step);
        if !(number && after) {
            ok[k] = false;
            continue;
        }
        span[k] = Some((span[k].map_or(p.row, |(first, _)| first), p.row));
        count[k] += 1;
    }
    let mut values: Vec<Option<(u32, Vec<f64>, BooleanBufferBuilder)>> = (0..n)
        .map(|k| match span[k] {
            Some((first, last)) if ok[k] && count[k] * 2 >= (last - first + 1) as usize => {
                let len = (last - first + 1) as usize;
                let mut valid = BooleanBufferBuilder::new(len);
                valid.append_n(len, false);
                Some((first, vec![0.0; len], valid))
            }
            _ => None,
        })
        .collect();
    for p in &chunk.points {
        if let Some((first, v, valid)) = &mut values[p.key as usize] {
            let at = (p.row - *first) as usize;
            v[at] = p.value.as_f64().unwrap_or(f64::NAN);
            valid.set_bit(at, true);
        }
    }
    values
        .into_iter()
        .map(|e| {
            e.map(|(first, v, mut valid)| {
                let nulls = NullBuffer::new(valid.finish());
                let nulls = (nulls.null_count() > 0).then_some(nulls);
                (first, Arc::new(Float64Array::new(v.into(), nulls)) as ArrayRef)
            })
        })
        .collect()
}

/// `step, timestamp, runtime_s` of every row of a chunk.
fn chunk_row_columns(chunk: &RunHistory) -> [ArrayRef; 3] {
    let rows = &chunk.rows;
    let nulls = |valid: &dyn Fn(&HistoryRow) -> bool| -> Option<NullBuffer> {
        if rows.iter().all(valid) { None } else { Some(NullBuffer::from_iter(rows.iter().map(valid))) }
    };
    [
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.step))),
        Arc::new(
            TimestampMicrosecondArray::new(
                rows.iter().map(|r| r.timestamp.unwrap_or(0)).collect(),
                nulls(&|r| r.timestamp.is_some()),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::new(
            rows.iter().map(|r| r.runtime_s.unwrap_or(0.0)).collect(),
            nulls(&|r| r.runtime_s.is_some()),
        )),
    ]
}

fn without_run_id(schema: &SchemaRef) -> SchemaRef {
    let batch = batch_schema(schema);
    Arc::new(Schema::new(batch.fields().iter().filter(|f| f.name() != "run_id").cloned().collect::<Vec<_>>()))
}

/// A run's history in spill files, to be read back in table order.
#[derive(Debug)]
pub struct SpilledHistory {
    run_id: String,
    keys: Vec<String>,
    segments: Vec<Vec<Segment>>,
    pieces: Vec<Piece>,
    chunks: u32,
    long: bool,
    main: Option<SpillFile>,
    rows: Option<SpillFile>,
    values: Option<SpillFile>,
}

/// A spill file opened for reading back.
type IpcIn = FileReader<BufReader<File>>;

fn open(file: &Option<SpillFile>) -> Result<Option<IpcIn>> {
    let Some(file) = file else { return Ok(None) };
    let f = File::open(&file.path).map_err(|e| Error::write(file.path.display(), e))?;
    FileReader::try_new(BufReader::with_capacity(1 << 20, f), None)
        .map(Some)
        .map_err(|e| Error::Arrow { what: format!("spill file {}", file.path.display()), source: e })
}

/// Batch `i` of a spill file.
fn read_batch(reader: &mut Option<IpcIn>, i: u32) -> Result<RecordBatch> {
    let what = "a spill file";
    let r = reader.as_mut().ok_or_else(|| Error::Internal(format!("{what} is missing")))?;
    r.set_index(i as usize).map_err(|e| Error::Arrow { what: what.into(), source: e })?;
    match r.next() {
        Some(b) => b.map_err(|e| Error::Arrow { what: what.into(), source: e }),
        None => Err(Error::Internal(format!("{what}: batch {i} is missing"))),
    }
}

/// The long rows of a series piece: its values' rows of the chunk's row
/// columns, without the rows where it has no value.
fn series_batch(rows: &RecordBatch, values: &RecordBatch, start: u32) -> Result<RecordBatch> {
    let error = |e| Error::Arrow { what: "spilled history".into(), source: e };
    let value = values.column(0);
    let n = value.len();
    let mut columns: Vec<ArrayRef> = rows.columns().iter().map(|c| c.slice(start as usize, n)).collect();
    columns.push(Arc::clone(value));
    if value.null_count() > 0 {
        let keep = BooleanArray::new(value.logical_nulls().expect("invariant: has nulls").into_inner(), None);
        columns = columns
            .iter()
            .map(|c| arrow_select::filter::filter(c, &keep))
            .collect::<std::result::Result<_, _>>()
            .map_err(error)?;
    }
    let len = columns[0].len();
    columns.push(arrow_array::new_null_array(&DataType::Utf8, len));
    RecordBatch::try_new(long_spill_schema(), columns).map_err(error)
}

impl SpilledHistory {
    /// Chunks the run was spilled in.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// The run read back whole, as [`SpilledHistory::replay`] hands it over.
    #[cfg(test)]
    pub fn read_all(self, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        self.replay(schema, &mut |b| {
            out.push(b.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads the run back as batches of the history table's batch schema
    /// (`schema` is the file schema), in table order, and hands each to
    /// `write`. The spill files are removed afterwards.
    pub fn replay(self, schema: &SchemaRef, write: &mut dyn FnMut(&RecordBatch) -> Result<()>) -> Result<()> {
        let out_schema = batch_schema(schema);
        let mut main = open(&self.main)?;
        if !self.long {
            let Some(reader) = main.as_mut() else { return Ok(()) };
            for batch in reader.by_ref() {
                let batch = batch.map_err(|e| Error::Arrow { what: "a spill file".into(), source: e })?;
                let mut columns = vec![repeated(&self.run_id, batch.num_rows())];
                columns.extend(batch.columns().iter().cloned());
                let b = RecordBatch::try_new(Arc::clone(&out_schema), columns)
                    .map_err(|e| Error::Arrow { what: "a spill file".into(), source: e })?;
                write(&b)?;
            }
            return Ok(());
        }
        let (mut rows, mut values) = (open(&self.rows)?, open(&self.values)?);
        // The last row columns read: a merge reads a chunk's pieces in turn.
        let mut last_rows: Option<(u32, RecordBatch)> = None;
        let pieces = &self.pieces;
        let mut read = |i: u32| -> Result<RecordBatch> {
            match pieces.get(i as usize) {
                Some(Piece::Long(b)) => read_batch(&mut main, *b),
                Some(Piece::Series { rows: r, values: v, start }) => {
                    if last_rows.as_ref().is_none_or(|(at, _)| at != r) {
                        last_rows = Some((*r, read_batch(&mut rows, *r)?));
                    }
                    let value = read_batch(&mut values, *v)?;
                    series_batch(&last_rows.as_ref().expect("invariant: read above").1, &value, *start)
                }
                None => Err(Error::Internal(format!("spilled piece {i} is missing"))),
            }
        };
        let mut by_name: Vec<usize> = (0..self.segments.len()).filter(|k| !self.segments[*k].is_empty()).collect();
        by_name.sort_by(|a, b| self.keys[*a].cmp(&self.keys[*b]));
        let mut out = LongOut::new(&self.run_id, out_schema);
        for k in by_name {
            let segments = &self.segments[k];
            let ordered = segments.windows(2).all(|w| w[0].max_step <= w[1].min_step);
            if ordered {
                for s in segments {
                    for i in s.first..s.first + s.batches {
                        let b = read(i)?;
                        out.push(&self.keys[k], &b, write)?;
                    }
                }
            } else {
                merge_segments(segments, &mut read, &mut |b| out.push(&self.keys[k], b, write))?;
            }
        }
        out.flush(write)
    }
}

/// Gathers a key's spilled rows into batches of the table's batch schema.
struct LongOut {
    run_id: String,
    schema: SchemaRef,
    pending: Vec<(String, RecordBatch)>,
    rows: usize,
}

impl LongOut {
    fn new(run_id: &str, schema: SchemaRef) -> LongOut {
        LongOut { run_id: run_id.to_string(), schema, pending: Vec::new(), rows: 0 }
    }

    fn push(&mut self, key: &str, b: &RecordBatch, write: &mut dyn FnMut(&RecordBatch) -> Result<()>) -> Result<()> {
        self.rows += b.num_rows();
        self.pending.push((key.to_string(), b.clone()));
        if self.rows >= REPLAY_BATCH_ROWS { self.flush(write) } else { Ok(()) }
    }

    fn flush(&mut self, write: &mut dyn FnMut(&RecordBatch) -> Result<()>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let n = std::mem::take(&mut self.rows);
        let mut key = RunsBuilder::default();
        for (k, b) in &pending {
            key.push(k, b.num_rows());
        }
        let column = |i: usize| -> Result<ArrayRef> {
            let parts: Vec<&dyn Array> = pending.iter().map(|(_, b)| b.column(i).as_ref()).collect();
            arrow_select::concat::concat(&parts)
                .map_err(|e| Error::Arrow { what: format!("spilled history of run {}", self.run_id), source: e })
        };
        let columns =
            vec![repeated(&self.run_id, n), column(0)?, column(1)?, column(2)?, key.finish(), column(3)?, column(4)?];
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| Error::Arrow { what: format!("spilled history of run {}", self.run_id), source: e })?;
        write(&batch)
    }
}

/// Merges a key's segments whose steps overlap: by step, ties in chunk
/// order. One batch of each segment is held at a time.
fn merge_segments(
    segments: &[Segment],
    read: &mut dyn FnMut(u32) -> Result<RecordBatch>,
    emit: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    struct Cursor {
        segment: Segment,
        next_batch: u32,
        batch: RecordBatch,
        row: usize,
    }
    let mut cursors: Vec<Cursor> = Vec::with_capacity(segments.len());
    // (step, cursor): cursors are in chunk order, so ties go to the earlier chunk.
    let mut heap: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    let step_at = |b: &RecordBatch, row: usize| {
        b.column(0).as_any().downcast_ref::<Int64Array>().expect("invariant: steps are int64").value(row)
    };
    for s in segments {
        let batch = read(s.first)?;
        heap.push(Reverse((step_at(&batch, 0), cursors.len())));
        cursors.push(Cursor { segment: *s, next_batch: s.first + 1, batch, row: 0 });
    }
    // Output rows as (cursor's batch held, row), gathered per output batch.
    let mut held: Vec<RecordBatch> = Vec::new();
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(SPILL_BATCH_ROWS);
    let mut held_of: Vec<Option<usize>> = vec![None; cursors.len()];
    let flush = |held: &mut Vec<RecordBatch>,
                 picks: &mut Vec<(usize, usize)>,
                 held_of: &mut Vec<Option<usize>>,
                 emit: &mut dyn FnMut(&RecordBatch) -> Result<()>|
     -> Result<()> {
        if picks.is_empty() {
            return Ok(());
        }
        let refs: Vec<&RecordBatch> = held.iter().collect();
        let batch = interleave_batches(&refs, picks)?;
        emit(&batch)?;
        held.clear();
        picks.clear();
        held_of.iter_mut().for_each(|h| *h = None);
        Ok(())
    };
    while let Some(Reverse((_, c))) = heap.pop() {
        let slot = match held_of[c] {
            Some(s) => s,
            None => {
                held.push(cursors[c].batch.clone());
                held_of[c] = Some(held.len() - 1);
                held.len() - 1
            }
        };
        picks.push((slot, cursors[c].row));
        let cur = &mut cursors[c];
        cur.row += 1;
        if cur.row == cur.batch.num_rows() {
            if cur.next_batch < cur.segment.first + cur.segment.batches {
                // The held copy keeps the old batch alive until the flush.
                let next = read(cur.next_batch)?;
                let cur = &mut cursors[c];
                cur.next_batch += 1;
                cur.batch = next;
                cur.row = 0;
                held_of[c] = None;
                heap.push(Reverse((step_at(&cur.batch, 0), c)));
            }
        } else {
            heap.push(Reverse((step_at(&cur.batch, cur.row), c)));
        }
        if picks.len() >= SPILL_BATCH_ROWS {
            flush(&mut held, &mut picks, &mut held_of, emit)?;
        }
    }
    flush(&mut held, &mut picks, &mut held_of, emit)
}

/// The rows `picks` (batch, row) of `batches`, one column at a time.
fn interleave_batches(batches: &[&RecordBatch], picks: &[(usize, usize)]) -> Result<RecordBatch> {
    let schema = batches[0].schema();
    let columns = (0..schema.fields().len())
        .map(|i| {
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            arrow_select::interleave::interleave(&arrays, picks)
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Arrow { what: "merging spilled history".into(), source: e })?;
    RecordBatch::try_new(schema, columns)
        .map_err(|e| Error::Arrow { what: "merging spilled history".into(), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::ColumnKind;
    use crate::output::history::{collect_kinds, long_schema, wide_schema};
    use crate::output::runlength::expand;
    use crate::pipeline::{EncodedHistory, HistoryEncoding, HistorySink, HistoryTarget};
    use crate::run::{HistoryPoint, RunData, RunIdentity};
    use std::collections::BTreeMap;

    /// A run of `rows` rows: keys `k0..k5` with ascending steps, `shuffled`
    /// with steps out of order (repeated steps among them), `text` with
    /// strings now and then, and a key first seen half-way.
    fn run(rows: u32) -> RunHistory {
        let mut h = RunHistory { keys: (0..6).map(|k| format!("k{k}")).collect(), ..Default::default() };
        h.keys.push("shuffled".into());
        h.keys.push("text".into());
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        for r in 0..rows {
            h.rows.push(HistoryRow {
                step: r as i64 * 2,
                timestamp: (r % 5 != 0).then_some(r as i64),
                runtime_s: Some(r as f64),
            });
            for k in 0..6 {
                if (r + k) % 3 != 0 {
                    h.points.push(HistoryPoint { row: r, key: k, value: Value::Float(r as f64 + k as f64 / 10.0) });
                }
            }
            h.points.push(HistoryPoint { row: r, key: 6, value: Value::Int((next() % 50) as i64) });
            if r % 7 == 0 {
                h.points.push(HistoryPoint { row: r, key: 7, value: Value::Str(format!("t{r}")) });
            }
            if r == rows / 2 {
                h.keys.push("late".into());
            }
            if r >= rows / 2 {
                h.points.push(HistoryPoint { row: r, key: 8, value: Value::Float(-(r as f64)) });
            }
        }
        // A key in series (pieces of 100 rows, every third left out, some
        // values null); a sparse key (long rows); a key logged twice in some
        // rows; in the last quarter, steps start again (a restarted run).
        h.keys.extend(["series".to_string(), "sparse".into(), "twice".into()]);
        for first in (0..rows).step_by(100).filter(|f| f % 300 != 200) {
            let len = 100.min(rows - first);
            let values = Float64Array::from_iter((0..len).map(|i| (i % 9 != 4).then_some((first + i) as f64 * 0.5)));
            h.series.push(HistorySeries { key: 9, first_row: first, values });
        }
        for r in 0..rows {
            if r % 10 == 3 {
                h.points.push(HistoryPoint { row: r, key: 10, value: Value::Float(r as f64) });
            }
            h.points.push(HistoryPoint { row: r, key: 11, value: Value::Int(r as i64) });
            if r % 50 == 0 {
                h.points.push(HistoryPoint { row: r, key: 11, value: Value::Int(-(r as i64)) });
            }
            if r >= rows * 3 / 4 {
                h.rows[r as usize].step = (r - rows * 3 / 4) as i64 * 2 + 1;
            }
        }
        h
    }

    /// Splits a history into chunks of `rows` rows (keys as the source has them then).
    fn chunks(h: &RunHistory, rows: usize) -> Vec<RunHistory> {
        let mut out = Vec::new();
        for start in (0..h.rows.len()).step_by(rows) {
            let end = (start + rows).min(h.rows.len());
            let points: Vec<HistoryPoint> = h
                .points
                .iter()
                .filter(|p| (start..end).contains(&(p.row as usize)))
                .map(|p| HistoryPoint { row: p.row - start as u32, ..p.clone() })
                .collect();
            let series: Vec<HistorySeries> = h
                .series
                .iter()
                .filter_map(|s| {
                    let (from, to) = (s.first_row as usize, s.first_row as usize + s.values.len());
                    let (a, b) = (from.max(start), to.min(end));
                    (a < b).then(|| HistorySeries {
                        key: s.key,
                        first_row: (a - start) as u32,
                        values: s.values.slice(a - from, b - a),
                    })
                })
                .collect();
            let keys = points
                .iter()
                .map(|p| p.key as usize + 1)
                .chain(series.iter().map(|s| s.key as usize + 1))
                .max()
                .unwrap_or(0)
                .max(out.last().map_or(0, |c: &RunHistory| c.keys.len()));
            out.push(RunHistory { rows: h.rows[start..end].to_vec(), keys: h.keys[..keys].to_vec(), points, series });
        }
        out
    }

    fn through_sink(target: Arc<HistoryTarget>, h: &RunHistory, rows: usize) -> (Vec<RecordBatch>, u32) {
        let mut sink = HistorySink::new(Some(Arc::clone(&target)), "r");
        let mut parts = chunks(h, rows);
        let last = parts.pop().unwrap();
        for mut c in parts {
            sink.flush(&mut c).unwrap();
        }
        let data = RunData { identity: RunIdentity::new("r"), history: Some(last), ..Default::default() };
        let schema = match &target.encoding {
            HistoryEncoding::Long(s) | HistoryEncoding::Wide(s, _) => Arc::clone(s),
            HistoryEncoding::Kinds => unreachable!(),
        };
        match sink.finish(data).unwrap().history {
            EncodedHistory::Spilled(s) => {
                let chunks = s.chunks();
                (s.read_all(&schema).unwrap(), chunks)
            }
            EncodedHistory::Batch(b) => (vec![b], 1),
            _ => panic!("no history"),
        }
    }

    /// A column of the batches as one array (run-length columns expanded to strings).
    fn column(batches: &[RecordBatch], name: &str) -> arrow_array::ArrayRef {
        let parts: Vec<ArrayRef> = batches
            .iter()
            .map(|b| {
                let c = b.column_by_name(name).unwrap();
                if matches!(c.data_type(), DataType::RunEndEncoded(..)) {
                    Arc::new(arrow_array::StringArray::from(expand(c.as_ref()))) as ArrayRef
                } else {
                    Arc::clone(c)
                }
            })
            .collect();
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        arrow_select::concat::concat(&refs).unwrap()
    }

    #[test]
    fn keys_in_step_order_are_spilled_as_values_beside_their_rows() {
        let h = run(600);
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::create(&dir.path().join("spill")).unwrap();
        let mut w = SpillWriter::create(&spill, None).unwrap();
        w.write_long("r", &h).unwrap();
        fn kind(w: &SpillWriter, h: &RunHistory, key: &str) -> &'static str {
            let k = h.keys.iter().position(|n| n == key).unwrap();
            let pieces: Vec<Piece> = w.segments[k]
                .iter()
                .flat_map(|s| (s.first..s.first + s.batches).map(|i| w.pieces[i as usize]))
                .collect();
            assert!(!pieces.is_empty(), "{key}");
            if pieces.iter().all(|p| matches!(p, Piece::Series { .. })) {
                "values"
            } else if pieces.iter().all(|p| matches!(p, Piece::Long(_))) {
                "long"
            } else {
                "mixed"
            }
        }
        // Steps go back in the last quarter: every key spans it in one chunk.
        for key in ["k0", "series", "sparse", "twice", "text", "shuffled"] {
            assert_eq!(kind(&w, &h, key), "long", "{key}");
        }
        let mut w = SpillWriter::create(&spill, None).unwrap();
        let first_half = chunks(&h, 300).remove(0);
        w.write_long("r", &first_half).unwrap();
        for (key, want) in [
            ("k0", "values"),
            ("shuffled", "values"),
            ("series", "values"),
            ("sparse", "long"),
            ("twice", "long"),
            ("text", "long"),
        ] {
            assert_eq!(kind(&w, &first_half, key), want, "{key}");
        }
    }

    #[test]
    fn spilled_runs_read_back_as_the_whole_run_is_written() {
        let h = run(5000);
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::create(&dir.path().join("spill")).unwrap();
        let long = Arc::new(HistoryTarget {
            encoding: HistoryEncoding::Long(long_schema()),
            chunk_bytes: 1,
            spill: Some(Arc::clone(&spill)),
        });
        let (whole, _) = through_sink(Arc::clone(&long), &h, 5000);
        for rows in [1, 333, 1024, 4999] {
            let (spilled, chunks) = through_sink(Arc::clone(&long), &h, rows);
            assert_eq!(chunks as usize, 5000usize.div_ceil(rows));
            for c in ["run_id", "step", "timestamp", "runtime_s", "key", "value", "value_json"] {
                assert_eq!(
                    column(&spilled, c).to_data(),
                    column(&whole, c).to_data(),
                    "long column {c}, chunks of {rows} rows"
                );
            }
        }
        let mut kinds: BTreeMap<String, ColumnKind> = BTreeMap::new();
        collect_kinds(&h, &mut kinds);
        let schema = wide_schema(&kinds);
        let wide = Arc::new(HistoryTarget {
            encoding: HistoryEncoding::Wide(Arc::clone(&schema), kinds),
            chunk_bytes: 1,
            spill: Some(Arc::clone(&spill)),
        });
        let (whole, _) = through_sink(Arc::clone(&wide), &h, 5000);
        let (spilled, _) = through_sink(Arc::clone(&wide), &h, 700);
        for f in schema.fields() {
            assert_eq!(
                column(&spilled, f.name()).to_data(),
                column(&whole, f.name()).to_data(),
                "wide column {}",
                f.name()
            );
        }
        assert!(spill.total_bytes() > 0);
        assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0, "spill files are removed once read");
    }
}
