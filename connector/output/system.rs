//! The `system` table: a run's system metrics in the long layout, one row
//! per (sample, key), sorted by key then time (samples of one key at one
//! time keep the source's order).

use std::sync::Arc;

use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::basic::Encoding;
use parquet::file::properties::WriterProperties;

use super::{Provenance, writer_properties};
use crate::error::{Error, Result};
use crate::run::SystemSamples;

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
/// `write`: besides the samples, writing holds 4 bytes per sample and one
/// batch.
pub fn write_system(
    schema: &SchemaRef,
    run_id: &str,
    s: &SystemSamples,
    write: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let n = u32::try_from(s.samples.len()).map_err(|_| {
        Error::Internal(format!(
            "system metrics of run {run_id}: {} samples; at most {} are written for one run",
            s.samples.len(),
            u32::MAX
        ))
    })?;
    let mut order: Vec<u32> = (0..n).collect();
    // Keys by name, then time; a stable sort keeps the source's order of equal ones.
    let mut key_rank = vec![0u32; s.keys.len()];
    let mut by_name: Vec<usize> = (0..s.keys.len()).collect();
    by_name.sort_by(|a, b| s.keys[*a].cmp(&s.keys[*b]));
    for (rank, k) in by_name.into_iter().enumerate() {
        key_rank[k] = rank as u32;
    }
    let sample = |i: u32| &s.samples[i as usize];
    order.sort_by_key(|&i| (key_rank[sample(i).key as usize], sample(i).timestamp()));
    for chunk in order.chunks(SYSTEM_BATCH_ROWS) {
        let n = chunk.len();
        let run_ids = StringArray::from_iter_values(std::iter::repeat_n(run_id, n));
        let times =
            TimestampMicrosecondArray::from_iter(chunk.iter().map(|&i| sample(i).timestamp())).with_timezone("UTC");
        let keys = StringArray::from_iter_values(chunk.iter().map(|&i| s.keys[sample(i).key as usize].as_str()));
        let values = Float64Array::from_iter(chunk.iter().map(|&i| sample(i).value()));
        let batch = RecordBatch::try_new(
            Arc::clone(schema),
            vec![Arc::new(run_ids), Arc::new(times), Arc::new(keys), Arc::new(values)],
        )
        .map_err(|e| Error::Internal(format!("system batch of run {run_id}: {e}")))?;
        write(&batch)?;
    }
    Ok(())
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
        write_system(&system_schema(), "r", &s, &mut |b| {
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
        let mut rows: Vec<(String, i64, Option<f64>)> = Vec::new();
        let mut sizes = Vec::new();
        write_system(&system_schema(), "r", &s, &mut |b| {
            sizes.push(b.num_rows());
            let t = b.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
            let k = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
            let v = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
            for i in 0..b.num_rows() {
                rows.push((k.value(i).to_string(), t.value(i), v.is_valid(i).then(|| v.value(i))));
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(sizes, [SYSTEM_BATCH_ROWS, SYSTEM_BATCH_ROWS, 20]);
        let want: Vec<_> = (0..n)
            .map(|t| ("a".to_string(), t, None))
            .chain((0..n).map(|t| ("b".to_string(), t, Some(t as f64))))
            .collect();
        assert_eq!(rows, want);
    }
}
