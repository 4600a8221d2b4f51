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

/// One run's samples as a batch of `schema` ([`system_schema`]).
pub fn system_batch(schema: &SchemaRef, run_id: &str, s: &SystemSamples) -> Result<RecordBatch> {
    let mut order: Vec<usize> = (0..s.samples.len()).collect();
    // Keys by name, then time; a stable sort keeps the source's order of equal ones.
    let mut key_rank = vec![0u32; s.keys.len()];
    let mut by_name: Vec<usize> = (0..s.keys.len()).collect();
    by_name.sort_by(|a, b| s.keys[*a].cmp(&s.keys[*b]));
    for (rank, k) in by_name.into_iter().enumerate() {
        key_rank[k] = rank as u32;
    }
    order.sort_by_key(|&i| (key_rank[s.samples[i].key as usize], s.samples[i].timestamp));
    let n = order.len();
    let run_ids = StringArray::from_iter_values(std::iter::repeat_n(run_id, n));
    let times = TimestampMicrosecondArray::from(order.iter().map(|&i| s.samples[i].timestamp).collect::<Vec<_>>())
        .with_timezone("UTC");
    let keys = StringArray::from_iter_values(order.iter().map(|&i| s.keys[s.samples[i].key as usize].as_str()));
    let values = Float64Array::from(order.iter().map(|&i| s.samples[i].value).collect::<Vec<_>>());
    RecordBatch::try_new(Arc::clone(schema), vec![Arc::new(run_ids), Arc::new(times), Arc::new(keys), Arc::new(values)])
        .map_err(|e| Error::Internal(format!("system batch of run {run_id}: {e}")))
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
        let b = system_batch(&system_schema(), "r", &s).unwrap();
        let keys: Vec<&str> = b.column(2).as_any().downcast_ref::<StringArray>().unwrap().iter().flatten().collect();
        assert_eq!(keys, ["cpu", "cpu", "cpu", "gpu.0.gpu", "gpu.0.gpu"]);
        let t = b.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(t.values().to_vec(), [1, 1, 2, 1, 2]);
        let v = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        assert!(v.is_null(0) && v.value(1) == 7.0 && v.value(2) == 5.0 && v.value(3).is_nan());
    }
}
