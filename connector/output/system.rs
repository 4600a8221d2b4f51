//! The `system` table: a run's system metrics in the long layout, one row
//! per (sample, key), sorted by key then time (samples of one key at one
//! time keep the source's order).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::basic::Encoding;
use parquet::file::properties::WriterProperties;

use super::spill::{SpillDir, SpillFile};
use super::{Provenance, writer_properties};
use crate::error::{Error, Result};
use crate::run::{SystemSample, SystemSamples, key_ranks, table_order};

/// `run_id, timestamp, key, value`.
pub fn system_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// `run_id` and `key` dictionary-encoded, times delta-encoded, values split by byte.
pub fn system_writer_properties(prov: &Provenance) -> WriterProperties {
    writer_properties(
        prov,
        "system",
        &["run_id", "key"],
        &[("timestamp", Encoding::DELTA_BINARY_PACKED), ("value", Encoding::BYTE_STREAM_SPLIT)],
    )
}

/// Rows of each batch [`write_system`] passes on.
pub const SYSTEM_BATCH_ROWS: usize = 64 * 1024;

/// One run's samples in table order, as batches of `schema`
/// ([`system_schema`]) of at most [`SYSTEM_BATCH_ROWS`] rows passed to
/// `write`. Besides the samples held, writing holds 4 bytes per held
/// sample, one batch, and a read buffer per sorted run spilled; the held
/// samples and the spilled runs are merged (ties in the order the source
/// gave them: a spilled run before a later one, and before those held).
pub fn write_system(
    schema: &SchemaRef,
    run_id: &str,
    s: SystemSamples,
    write: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    if let Some(e) = s.error {
        return Err(Arc::try_unwrap(e).unwrap_or_else(|e| Error::Internal(e.to_string())));
    }
    if u32::try_from(s.samples.len()).is_err() {
        return Err(Error::Internal(format!(
            "system metrics of run {run_id}: {} samples held; at most {} are written for one run without a spill",
            s.samples.len(),
            u32::MAX
        )));
    }
    let key_rank = key_ranks(&s.keys);
    let held = table_order(&key_rank, &s.samples);
    // The sources of the merge, in source order: the spilled runs, then the held samples.
    let mut runs = s.spilled.iter().map(|r| r.reader()).collect::<Result<Vec<_>>>()?;
    let mut held = held.into_iter().map(|i| s.samples[i as usize]);
    let mut next = |source: usize, runs: &mut Vec<RunReader>| -> Result<Option<SystemSample>> {
        match runs.get_mut(source) {
            Some(r) => r.next(),
            None => Ok(held.next()),
        }
    };
    let order = |x: &SystemSample| (key_rank[x.key as usize], x.timestamp());
    let mut heads = std::collections::BinaryHeap::new();
    for source in 0..=runs.len() {
        if let Some(x) = next(source, &mut runs)? {
            heads.push(std::cmp::Reverse((order(&x), source, SortedSample(x))));
        }
    }
    let mut rows = Vec::with_capacity(SYSTEM_BATCH_ROWS);
    while let Some(std::cmp::Reverse((_, source, SortedSample(x)))) = heads.pop() {
        rows.push(x);
        if rows.len() == SYSTEM_BATCH_ROWS {
            write(&system_batch(schema, run_id, &s.keys, &rows)?)?;
            rows.clear();
        }
        if let Some(x) = next(source, &mut runs)? {
            heads.push(std::cmp::Reverse((order(&x), source, SortedSample(x))));
        }
    }
    if !rows.is_empty() {
        write(&system_batch(schema, run_id, &s.keys, &rows)?)?;
    }
    Ok(())
}

/// A sample in the merge's heap, which orders by what comes before it
/// (the table order and the source); never compared itself.
struct SortedSample(SystemSample);

impl PartialEq for SortedSample {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SortedSample {}

impl PartialOrd for SortedSample {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortedSample {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

fn system_batch(schema: &SchemaRef, run_id: &str, keys: &[String], rows: &[SystemSample]) -> Result<RecordBatch> {
    let n = rows.len();
    let run_ids = StringArray::from_iter_values(std::iter::repeat_n(run_id, n));
    let times = TimestampMicrosecondArray::from_iter(rows.iter().map(SystemSample::timestamp)).with_timezone("UTC");
    let key_names = StringArray::from_iter_values(rows.iter().map(|x| keys[x.key as usize].as_str()));
    let values = Float64Array::from_iter(rows.iter().map(SystemSample::value));
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(run_ids), Arc::new(times), Arc::new(key_names), Arc::new(values)],
    )
    .map_err(|e| Error::Internal(format!("system batch of run {run_id}: {e}")))
}

/// Bytes of the buffer of each sorted run read back.
const RUN_READ_BUFFER: usize = 64 * 1024;

/// Some of a run's system samples, sorted in table order, in a file of
/// the spill folder (removed when dropped).
#[derive(Debug)]
pub struct SpilledRun {
    guard: SpillFile,
    len: u64,
}

impl SpilledRun {
    /// Writes `samples` (sorted) to a new file of `dir`.
    pub fn write(dir: &Arc<SpillDir>, samples: impl Iterator<Item = SystemSample>) -> Result<SpilledRun> {
        let (file, mut guard) = dir.temp_file()?;
        let fail = |e| Error::write(guard.path().display(), e);
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut len = 0u64;
        for x in samples {
            out.write_all(&x.to_bytes()).map_err(fail)?;
            len += 1;
        }
        out.flush().map_err(fail)?;
        drop(out);
        guard.holds(len * SystemSample::SPILLED_BYTES as u64);
        Ok(SpilledRun { guard, len })
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn reader(&self) -> Result<RunReader> {
        let path = self.guard.path();
        let file = File::open(path).map_err(|e| Error::write(path.display(), e))?;
        Ok(RunReader {
            file: BufReader::with_capacity(RUN_READ_BUFFER, file),
            left: self.len,
            path: path.to_path_buf(),
        })
    }
}

/// One sorted run being read back.
struct RunReader {
    file: BufReader<File>,
    left: u64,
    path: std::path::PathBuf,
}

impl RunReader {
    fn next(&mut self) -> Result<Option<SystemSample>> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut b = [0u8; SystemSample::SPILLED_BYTES];
        self.file.read_exact(&mut b).map_err(|e| Error::write(self.path.display(), e))?;
        self.left -= 1;
        Ok(Some(SystemSample::from_bytes(&b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    #[test]
    fn rows_sorted_by_key_then_time_keeping_ties_in_order() {
        let mut s = SystemSamples::default();
        for (key, t, v) in
            [("gpu.0.gpu", 2, Some(1.0)), ("cpu", 2, Some(5.0)), ("cpu", 1, None), ("gpu.0.gpu", 1, Some(f64::NAN))]
        {
            s.push(key, Some(t), v);
        }
        s.push("cpu", Some(1), Some(7.0));
        let mut batches = Vec::new();
        write_system(&system_schema(), "r", s, &mut |b| {
            batches.push(b.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        let keys: Vec<&str> = b.column(2).as_any().downcast_ref::<StringArray>().unwrap().iter().flatten().collect();
        assert_eq!(keys, ["cpu", "cpu", "cpu", "gpu.0.gpu", "gpu.0.gpu"]);
        let t = b.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(t.values().to_vec(), [1, 1, 2, 1, 2]);
        let v = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        assert!(v.is_null(0) && v.value(1) == 7.0 && v.value(2) == 5.0 && v.value(3).is_nan());
    }

    #[test]
    fn a_large_run_is_written_in_batches_that_continue_the_order() {
        let mut s = SystemSamples::default();
        let n = SYSTEM_BATCH_ROWS as i64 + 10;
        for t in (0..n).rev() {
            s.push("b", Some(t), Some(t as f64));
            s.push("a", Some(t), None);
        }
        let (rows, sizes) = table_rows(s).unwrap();
        assert_eq!(sizes, [SYSTEM_BATCH_ROWS, SYSTEM_BATCH_ROWS, 20]);
        let want: Vec<_> = (0..n)
            .map(|t| ("a".to_string(), Some(t), None))
            .chain((0..n).map(|t| ("b".to_string(), Some(t), Some((t as f64).to_bits()))))
            .collect();
        assert_eq!(rows, want);
    }

    /// A row: key, timestamp, the value's bits.
    type Row = (String, Option<i64>, Option<u64>);

    /// Every row of a run's table, as `write_system` gives them, and the batch sizes.
    fn table_rows(s: SystemSamples) -> Result<(Vec<Row>, Vec<usize>)> {
        let mut rows = Vec::new();
        let mut sizes = Vec::new();
        write_system(&system_schema(), "r", s, &mut |b| {
            sizes.push(b.num_rows());
            let t = b.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
            let k = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
            let v = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
            for i in 0..b.num_rows() {
                let value = v.is_valid(i).then(|| v.value(i).to_bits());
                rows.push((k.value(i).to_string(), t.is_valid(i).then(|| t.value(i)), value));
            }
            Ok(())
        })?;
        Ok((rows, sizes))
    }

    /// The same samples, pushed into a run that holds them all and into
    /// one spilling every `budget` samples.
    fn pushed(n: usize, budget: usize, dir: &Arc<SpillDir>) -> (SystemSamples, SystemSamples) {
        let bytes = budget * SystemSample::SPILLED_BYTES;
        let mut spilling = SystemSamples::new(Some(crate::run::SystemBudget { bytes, spill: Arc::clone(dir) }));
        let mut held = SystemSamples::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        // Keys met in an order unlike their names' (a later key sorts
        // first); few distinct times, so that ties are many; some missing.
        let keys = ["m", "z", "gpu.0.gpu", "a", "cpu", "disk./.usagePercent", "B"];
        for i in 0..n {
            let key = keys[(next(keys.len() as u64) as usize).min(i % 3 + i / 50)];
            let time = (next(10) != 0).then(|| next(40) as i64 - 5);
            let value = match next(8) {
                0 => None,
                1 => Some(f64::NAN),
                _ => Some(i as f64),
            };
            spilling.push(key, time, value);
            held.push(key, time, value);
        }
        (spilling, held)
    }

    #[test]
    fn a_spilled_run_is_written_as_the_run_held_whole() {
        let base = tempfile::tempdir().unwrap();
        let dir = SpillDir::create(&base.path().join("spill")).unwrap();
        for (n, budget) in [(0, 3), (5, 1), (1000, 7), (10_000, 97), (SYSTEM_BATCH_ROWS + 5000, 20_000)] {
            let (spilling, held) = pushed(n, budget, &dir);
            assert_eq!((spilling.len(), held.len()), (n, n));
            assert_eq!(spilling.spilled.len(), n / budget, "{n} samples, {budget} a run");
            assert!(spilling.samples.len() < budget);
            let files = std::fs::read_dir(dir.path()).map_or(0, |d| d.count());
            assert_eq!(files, n / budget);
            let (got, sizes) = table_rows(spilling).unwrap();
            let (want, want_sizes) = table_rows(held).unwrap();
            assert_eq!(got.len(), n);
            assert!(got == want, "{n} samples, {budget} a run: the rows differ");
            assert_eq!(sizes, want_sizes);
            // The files go with the samples.
            assert_eq!(std::fs::read_dir(dir.path()).map_or(0, |d| d.count()), 0);
        }
        assert!(dir.peak_bytes() >= (SYSTEM_BATCH_ROWS as u64 + 5000) / 20_000 * 20_000 * 24);
    }

    #[test]
    fn a_spill_that_fails_fails_the_run_naming_the_file_and_holds_nothing_more() {
        let base = tempfile::tempdir().unwrap();
        // The spill folder cannot be made: a file stands in its way.
        let blocked = base.path().join("not-a-folder");
        std::fs::write(&blocked, b"").unwrap();
        let dir = SpillDir::create(&blocked.join("spill")).unwrap();
        let (spilling, _) = pushed(1000, 10, &dir);
        assert!(spilling.samples.is_empty() && spilling.spilled.is_empty());
        let e = table_rows(spilling).unwrap_err().to_string();
        assert!(e.contains("not-a-folder"), "{e}");
    }
}
