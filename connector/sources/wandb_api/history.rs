//! History from the API: the wide Parquet files the server exported (one
//! column per key plus `_step`; nested objects as struct columns), read with
//! only the selected keys' columns, then the live rows not exported yet.
//!
//! A run of any size is read in bounded memory: a file is read row group by
//! row group, in batches of about [`BATCH_BYTES`] as held, and the history
//! is handed to the run's [`HistorySink`] between batches and between live
//! rows, never inside a row.
//!
//! Column names are single path segments (a flat key `a.b` is the column
//! `a.b`, encoded `a\.b`); struct children add segments (`nest.x`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use arrow_schema::Field;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::ChunkReader;

use crate::columns::{flatten, push_segment};
use crate::pipeline::{HistorySink, catch_third_party};
use crate::plan::FetchPlan;
use crate::run::{HistoryPoint, HistoryRow, HistorySeries, RunHistory, seconds_to_micros};
use crate::value::Value;

use super::listing::restore_non_finite;

const ROW_COLUMNS: [&str; 3] = ["_step", "_timestamp", "_runtime"];

/// About the bytes a batch read from a history file takes as held (rows,
/// series, points): a batch's rows are handed over whole, so this bounds
/// what a chunk can overshoot by.
pub const BATCH_BYTES: usize = 1 << 20;

/// Rows of a batch: at least this many, whatever a row's size...
const MIN_BATCH_ROWS: usize = 64;
/// ...and at most this many.
const MAX_BATCH_ROWS: usize = 65536;

/// Builds a run's history in step order.
pub struct HistoryBuilder<'p> {
    plan: &'p FetchPlan,
    history: RunHistory,
    key_ids: HashMap<String, Option<u32>>,
    /// The last step the exported files hold (a resumed run may repeat a
    /// step: every file row is kept).
    last_file_step: Option<i64>,
}

impl<'p> HistoryBuilder<'p> {
    pub fn new(plan: &'p FetchPlan) -> Self {
        HistoryBuilder { plan, history: RunHistory::default(), key_ids: HashMap::new(), last_file_step: None }
    }

    fn key_id(&mut self, key: &str) -> Option<u32> {
        if let Some(id) = self.key_ids.get(key) {
            return *id;
        }
        let id = self.plan.wants_history_key(key).then(|| {
            self.history.keys.push(key.to_string());
            (self.history.keys.len() - 1) as u32
        });
        self.key_ids.insert(key.to_string(), id);
        id
    }

    /// Whether a top-level column can hold a selected key.
    fn wants_column(&self, name: &str, is_struct: bool) -> bool {
        if ROW_COLUMNS.contains(&name) {
            return true;
        }
        let mut key = String::new();
        push_segment(&mut key, true, name);
        self.plan.wants_history_key(&key) || (is_struct && self.plan.selection.wants_prefix(&format!("history.{key}.")))
    }

    /// Adds the rows of one exported Parquet file (bytes, or a file on
    /// disk), a batch at a time, handing the history to `sink` between
    /// batches. Returns the rows added.
    pub fn add_parquet<R: ChunkReader + 'static>(&mut self, file: R, sink: &mut HistorySink) -> Result<usize, String> {
        let file_len = file.len();
        let builder = catch_third_party(|| ParquetRecordBatchReaderBuilder::try_new(file))
            .map_err(|p| damaged(&p))?
            .map_err(file_error)?;
        check_chunks(builder.metadata(), file_len).map_err(file_error)?;
        let schema = Arc::clone(builder.schema());
        let roots: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| self.wants_column(f.name(), matches!(f.data_type(), DataType::Struct(_))))
            .map(|(i, _)| i)
            .collect();
        let row_bytes: usize = ROW_BYTES
            + roots
                .iter()
                .map(|&i| schema.field(i))
                .filter(|f| !ROW_COLUMNS.contains(&f.name().as_str()))
                .map(held_bytes)
                .sum::<usize>();
        let rows = (BATCH_BYTES / row_bytes).clamp(MIN_BATCH_ROWS, MAX_BATCH_ROWS);
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        // parquet's reader and decoders may panic on damaged data that
        // runport's checks do not see: such a file is an error of this run,
        // not a crash. Only their calls are guarded; `add_batch` is
        // runport's own code, whose panics are bugs, not damaged data.
        let mut reader = catch_third_party(|| builder.with_projection(mask).with_batch_size(rows).build())
            .map_err(|p| damaged(&p))?
            .map_err(file_error)?;
        let mut added = 0;
        loop {
            let batch = match catch_third_party(|| reader.next()) {
                Ok(None) => break,
                Ok(Some(batch)) => batch.map_err(file_error)?,
                Err(p) => return Err(damaged(&p)),
            };
            added += self.add_batch(&batch)?;
            drop(batch);
            sink.flush_if_full(&mut self.history)?;
        }
        Ok(added)
    }

    fn add_batch(&mut self, batch: &RecordBatch) -> Result<usize, String> {
        #[cfg(test)]
        if tests::BUG_IN_ADD_BATCH.get() {
            panic!("a bug of add_batch");
        }
        let schema = batch.schema();
        let step_col = batch.column_by_name("_step").ok_or("history file without a _step column")?;
        let ts_col = batch.column_by_name("_timestamp");
        let rt_col = batch.column_by_name("_runtime");
        let others: Vec<(String, &ArrayRef)> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(f, _)| !ROW_COLUMNS.contains(&f.name().as_str()))
            .map(|(f, c)| {
                let mut key = String::new();
                push_segment(&mut key, true, f.name());
                (key, c)
            })
            .collect();
        // Rows first (a row per `_step`), then each key column at once: the
        // common numeric columns go straight to points, one key lookup per column.
        // Row indices are 32-bit; past them the run fails instead of wrapping.
        let first_row = u32::try_from(self.history.rows.len() + batch.num_rows())
            .map(|_| self.history.rows.len() as u32)
            .map_err(|_| format!("the run has more than {} history rows", u32::MAX))?;
        let mut row_of = Vec::with_capacity(batch.num_rows());
        let steps = numbers(step_col);
        let (ts, rt) = (ts_col.map(numbers), rt_col.map(numbers));
        for (i, step) in steps.into_iter().enumerate() {
            let Some(step) = step else {
                row_of.push(None);
                continue;
            };
            let step = step as i64;
            self.last_file_step = self.last_file_step.max(Some(step));
            row_of.push(Some(self.history.rows.len() as u32));
            self.history.rows.push(HistoryRow {
                step,
                timestamp: ts.as_ref().and_then(|c| c[i]).and_then(seconds_to_micros),
                runtime_s: rt.as_ref().and_then(|c| c[i]),
            });
        }
        // Every row kept (no null `_step`): a float column is handed over as
        // it is, a series of consecutive rows.
        let consecutive = row_of.iter().all(Option::is_some);
        for (key, col) in &others {
            match col.data_type() {
                DataType::Float64 | DataType::Int64 => {
                    let Some(id) = self.key_id(key) else { continue };
                    if let Some(f) = col.as_primitive_opt::<Float64Type>() {
                        if consecutive {
                            self.history.series.push(HistorySeries { key: id, first_row, values: f.clone() });
                            continue;
                        }
                        for (i, v) in f.iter().enumerate() {
                            if let (Some(v), Some(row)) = (v, row_of[i]) {
                                self.history.points.push(HistoryPoint { row, key: id, value: Value::Float(v) });
                            }
                        }
                    } else if let Some(n) = col.as_primitive_opt::<Int64Type>() {
                        for (i, v) in n.iter().enumerate() {
                            if let (Some(v), Some(row)) = (v, row_of[i]) {
                                self.history.points.push(HistoryPoint { row, key: id, value: Value::Int(v) });
                            }
                        }
                    }
                }
                _ => {
                    for (i, row) in row_of.iter().enumerate() {
                        if let (Some(row), Some(v)) = (row, cell(col, i)) {
                            self.push(*row, key, v);
                        }
                    }
                }
            }
        }
        Ok((self.history.rows.len() as u32 - first_row) as usize)
    }

    fn push(&mut self, row: u32, key: &str, value: Value) {
        let mut leaves = Vec::new();
        flatten(key, &value, &mut |p, leaf| leaves.push((p.to_string(), leaf.clone())));
        for (k, leaf) in leaves {
            if let Some(id) = self.key_id(&k) {
                self.history.points.push(HistoryPoint { row, key: id, value: leaf });
            }
        }
    }

    /// Adds a live row, given as the text of a JSON object with `_step`,
    /// unless the files held its step: the live tail starts after the
    /// exported rows, and a row the server has already exported is not
    /// added twice. Returns whether it was added; the caller hands the
    /// history to its sink between rows.
    pub fn add_live_row(&mut self, text: &[u8]) -> bool {
        let r = match serde_json::from_slice::<serde_json::Value>(text) {
            Ok(r) => r,
            // Bare NaN and infinities are not JSON.
            Err(_) => match std::str::from_utf8(text).ok().and_then(|t| Value::parse(t).ok()) {
                Some(v) => serde_json::from_str(&v.to_json()).unwrap_or(serde_json::Value::Null),
                None => return false,
            },
        };
        let Some(obj) = r.as_object() else { return false };
        let Some(step) = obj.get("_step").and_then(|s| s.as_f64()) else { return false };
        let step = step as i64;
        if self.last_file_step.is_some_and(|last| step <= last) {
            return false;
        }
        let row = self.history.rows.len() as u32;
        self.history.rows.push(HistoryRow {
            step,
            timestamp: obj.get("_timestamp").and_then(|v| v.as_f64()).and_then(seconds_to_micros),
            runtime_s: obj.get("_runtime").and_then(|v| v.as_f64()),
        });
        for (k, v) in obj {
            if ROW_COLUMNS.contains(&k.as_str()) || v.is_null() {
                continue;
            }
            let mut key = String::new();
            push_segment(&mut key, true, k);
            let value = restore_non_finite(Value::parse(&v.to_string()).unwrap_or(Value::Null));
            self.push(row, &key, value);
        }
        true
    }

    /// The history so far (for the caller's sink between live rows).
    pub fn history_mut(&mut self) -> &mut RunHistory {
        &mut self.history
    }

    /// The history: exported rows in the server's order, then the live tail.
    pub fn finish(self) -> RunHistory {
        self.history
    }
}

/// Bytes of a history row as held ([`HistoryRow`]).
const ROW_BYTES: usize = std::mem::size_of::<HistoryRow>();

/// About the bytes one cell of a file column takes as held: a float in a
/// series, else points (a struct's leaves each), plus a string's text.
fn held_bytes(field: &Field) -> usize {
    match field.data_type() {
        DataType::Float64 => std::mem::size_of::<f64>(),
        DataType::Struct(children) => children.iter().map(|c| held_bytes(c)).sum::<usize>().max(1),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => std::mem::size_of::<HistoryPoint>() + 32,
        _ => std::mem::size_of::<HistoryPoint>(),
    }
}

/// A column's cells as numbers; `None` where null or not a number.
fn numbers(col: &ArrayRef) -> Vec<Option<f64>> {
    if let Some(f) = col.as_primitive_opt::<Float64Type>() {
        f.iter().collect()
    } else if let Some(n) = col.as_primitive_opt::<Int64Type>() {
        n.iter().map(|v| v.map(|v| v as f64)).collect()
    } else {
        (0..col.len()).map(|i| cell(col, i).and_then(|v| v.as_f64())).collect()
    }
}

/// An error of reading a history file, as the run reports it.
fn file_error(e: impl std::fmt::Display) -> String {
    format!("history file: {e}")
}

/// A panic of parquet's reader on a file: damaged data.
fn damaged(panic: &str) -> String {
    format!("history file: damaged data ({panic})")
}

/// Checks the row counts and that every column chunk lies inside the file:
/// parquet's reader panics on a negative offset or size, and its sum of row
/// counts overflows.
fn check_chunks(meta: &ParquetMetaData, file_len: u64) -> Result<(), String> {
    let mut rows = 0i64;
    for (g, rg) in meta.row_groups().iter().enumerate() {
        rows = rows
            .checked_add(rg.num_rows())
            .filter(|_| rg.num_rows() >= 0)
            .ok_or_else(|| format!("row group {g} of {} rows", rg.num_rows()))?;
        for col in rg.columns() {
            let start = col.dictionary_page_offset().unwrap_or(col.data_page_offset());
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(col.compressed_size()).ok())
                .and_then(|(s, n)| s.checked_add(n))
                .is_some_and(|end| end <= file_len);
            if !inside {
                return Err(format!(
                    "column {} of row group {g}: bytes {start}+{} outside the file ({file_len} bytes)",
                    col.column_path(),
                    col.compressed_size(),
                ));
            }
        }
    }
    Ok(())
}

/// One cell as a value; `None` when null.
fn cell(col: &ArrayRef, i: usize) -> Option<Value> {
    if col.is_null(i) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Float64 => Value::Float(col.as_primitive::<Float64Type>().value(i)),
        DataType::Float32 => Value::Float(f64::from(col.as_primitive::<Float32Type>().value(i))),
        DataType::Int64 => Value::Int(col.as_primitive::<Int64Type>().value(i)),
        DataType::Int32 => Value::Int(i64::from(col.as_primitive::<Int32Type>().value(i))),
        DataType::Int16 => Value::Int(i64::from(col.as_primitive::<Int16Type>().value(i))),
        DataType::Int8 => Value::Int(i64::from(col.as_primitive::<Int8Type>().value(i))),
        DataType::UInt32 => Value::Int(i64::from(col.as_primitive::<UInt32Type>().value(i))),
        DataType::UInt64 => {
            let v = col.as_primitive::<UInt64Type>().value(i);
            i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64))
        }
        DataType::Boolean => Value::Bool(col.as_boolean().value(i)),
        DataType::Utf8 => Value::Str(col.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::Str(col.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::Str(col.as_string_view().value(i).to_string()),
        DataType::Struct(fields) => {
            let s = col.as_struct();
            Value::Object(
                fields.iter().zip(s.columns()).filter_map(|(f, c)| cell(c, i).map(|v| (f.name().clone(), v))).collect(),
            )
        }
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            let items = l.value(i);
            Value::List((0..items.len()).map(|j| cell(&items, j).unwrap_or(Value::Null)).collect())
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            let items = l.value(i);
            Value::List((0..items.len()).map(|j| cell(&items, j).unwrap_or(Value::Null)).collect())
        }
        other => Value::Str(format!("<unsupported {other}>")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HistoryLayout;
    use crate::selection::Selection;
    use crate::sources::wandb_files::WANDB_IDENTITY_COLUMNS;
    use arrow_array::{Float64Array, Int64Array};
    use bytes::Bytes;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
    use parquet::file::properties::WriterProperties;

    fn file(codec: Compression) -> Bytes {
        file_of(codec, 3000)
    }

    fn file_of(codec: Compression, n: i64) -> Bytes {
        let batch = RecordBatch::try_from_iter([
            ("_step", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
            (
                "_timestamp",
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| 1.7e9 + i as f64 / 8.0))) as ArrayRef,
            ),
            ("_runtime", Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64 / 8.0))) as ArrayRef),
            (
                "loss",
                Arc::new(Float64Array::from_iter((0..n).map(|i| (i % 5 != 2).then_some(1.0 / (1 + i) as f64))))
                    as ArrayRef,
            ),
            ("acc", Arc::new(Float64Array::from_iter_values((0..n).map(|i| (i % 100) as f64 / 100.0))) as ArrayRef),
        ])
        .unwrap();
        let props = WriterProperties::builder().set_compression(codec).set_max_row_group_row_count(Some(1000)).build();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        Bytes::from(out)
    }

    #[test]
    fn damaged_files_are_errors() {
        // Inputs the fuzz target found that parquet's reader panics on (a
        // dictionary-encoded page without its dictionary, a column chunk
        // outside the file, a damaged delta page, row counts whose sum
        // overflows): each is an error of the file, not a crash.
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        for (name, data) in [
            (
                "dictionary page missing",
                &include_bytes!("../../../tests/fixtures/history-dictionary-page-missing.parquet")[..],
            ),
            (
                "chunk outside the file",
                &include_bytes!("../../../tests/fixtures/history-chunk-outside-file.parquet")[..],
            ),
            ("delta page damaged", &include_bytes!("../../../tests/fixtures/history-delta-page-damaged.parquet")[..]),
            ("row counts overflow", &include_bytes!("../../../tests/fixtures/history-row-counts-overflow.parquet")[..]),
        ] {
            let mut b = HistoryBuilder::new(&plan);
            let e = b.add_parquet(Bytes::from_static(data), &mut HistorySink::whole()).expect_err(name);
            assert!(e.starts_with("history file: "), "{name}: {e}");
        }
    }

    thread_local! {
        pub static BUG_IN_ADD_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_panic_of_runports_own_code_is_not_damaged_data() {
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let data = file(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()));
        BUG_IN_ADD_BATCH.set(true);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            HistoryBuilder::new(&plan).add_parquet(data.clone(), &mut HistorySink::whole())
        }));
        BUG_IN_ADD_BATCH.set(false);
        match result {
            Err(p) => assert_eq!(crate::pipeline::panic_text(&*p), "a bug of add_batch"),
            Ok(r) => panic!("a bug of add_batch became {r:?}"),
        }
        assert!(!crate::pipeline::in_third_party_code(), "the guard is left when a panic passes it");
        assert_eq!(HistoryBuilder::new(&plan).add_parquet(data, &mut HistorySink::whole()).unwrap(), 3000);
    }

    #[test]
    fn every_codec_reads_the_same() {
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let read = |codec| {
            let mut b = HistoryBuilder::new(&plan);
            assert_eq!(b.add_parquet(file(codec), &mut HistorySink::whole()).unwrap(), 3000, "{codec:?}");
            b.finish()
        };
        let ours = read(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()));
        assert_eq!(ours.rows.len(), 3000);
        assert_eq!(ours.keys, ["loss", "acc"]);
        for codec in [
            Compression::UNCOMPRESSED,
            Compression::SNAPPY,
            Compression::LZ4_RAW,
            Compression::GZIP(GzipLevel::default()),
            Compression::BROTLI(BrotliLevel::default()),
        ] {
            assert_eq!(read(codec), ours, "{codec:?}");
        }
    }

    /// A file of 100,000 rows read from disk in chunks, then live rows (one
    /// the file holds), gives the run the whole read gives: the same long
    /// rows in the same order.
    #[test]
    fn a_file_and_live_rows_in_chunks_read_as_the_whole_run() {
        use crate::output::history::long_schema;
        use crate::output::runlength::expand_to_strings;
        use crate::output::spill::SpillDir;
        use crate::pipeline::{EncodedHistory, HistoryEncoding, HistoryTarget};
        use crate::run::{RunData, RunIdentity};
        use crate::sources::spooled::Spool;

        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let data = file_of(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()), 100_000);
        let live: Vec<&[u8]> = vec![
            br#"{"_step": 99999, "loss": 5}"#,
            br#"{"_step": 100000, "_timestamp": 1.8e9, "loss": NaN, "acc": 0.5, "note": "x"}"#,
            br#"{"_step": 100001, "loss": 0.25, "nest": {"a": 1}}"#,
        ];
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::create(&dir.path().join("spill")).unwrap();
        let read = |chunk_bytes: usize| {
            let target = Arc::new(HistoryTarget {
                encoding: HistoryEncoding::Long(long_schema()),
                chunk_bytes,
                spill: Some(Arc::clone(&spill)),
            });
            // The download as the source keeps it: in a temporary file past a chunk.
            let mut spool = Spool::for_history(Some(&target), 0);
            spool.write(&data).unwrap();
            assert_eq!(spool.in_file(), target.answer_bytes() < data.len());
            let mut sink = HistorySink::new(Some(Arc::clone(&target)), "r");
            let mut b = HistoryBuilder::new(&plan);
            let added = match spool.finish().unwrap() {
                crate::sources::spooled::Spooled::Memory(bytes) => b.add_parquet(bytes, &mut sink),
                crate::sources::spooled::Spooled::File { file, .. } => b.add_parquet(file, &mut sink),
            };
            assert_eq!(added.unwrap(), 100_000);
            let added: Vec<bool> = live
                .iter()
                .map(|row| {
                    let added = b.add_live_row(row);
                    sink.flush_if_full(b.history_mut()).unwrap();
                    added
                })
                .collect();
            assert_eq!(added, [false, true, true], "a step the file holds is not added twice");
            let chunks = sink.chunks();
            let run = RunData { identity: RunIdentity::new("r"), history: Some(b.finish()), ..Default::default() };
            let mut out = Vec::new();
            match sink.finish(run).unwrap().history {
                EncodedHistory::Batch(batch) => out.push(batch),
                EncodedHistory::Spilled(s) => {
                    s.replay(&long_schema(), &mut |b| {
                        out.push(b.clone());
                        Ok(())
                    })
                    .unwrap();
                }
                _ => panic!("no history"),
            }
            // Each column as one plain array (run-length columns as strings).
            let columns: Vec<(String, ArrayRef)> = out[0]
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    let parts: Vec<ArrayRef> = out
                        .iter()
                        .map(|b| {
                            let c = b.column_by_name(f.name()).unwrap();
                            match c.data_type() {
                                DataType::RunEndEncoded(..) => expand_to_strings(c.as_ref()).unwrap(),
                                _ => Arc::clone(c),
                            }
                        })
                        .collect();
                    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                    (f.name().clone(), arrow_select::concat::concat(&refs).unwrap())
                })
                .collect();
            (columns, chunks)
        };
        let (whole, chunks) = read(usize::MAX);
        assert_eq!(chunks, 0);
        assert_eq!(whole[0].1.len(), 2 * 100_000 - 100_000 / 5 + 5);
        let (chunked, chunks) = read(64 << 10);
        // 100,000 rows of 56 bytes held in batches of 1 MiB: six batches, a
        // chunk each; the live rows fill no chunk of their own.
        assert_eq!(chunks, 6);
        assert!(spill.peak_bytes() > 0);
        assert_eq!(whole.len(), chunked.len());
        for ((name, a), (_, b)) in whole.iter().zip(&chunked) {
            assert_eq!(a.to_data(), b.to_data(), "column {name}");
        }
        assert_eq!(std::fs::read_dir(spill.path()).map(|d| d.count()).unwrap_or(0), 0, "temporary files are removed");
    }
}
