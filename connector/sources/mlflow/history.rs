//! A run's metric histories as [`RunHistory`] chunks: every MLflow store
//! hands its points here key by key, in the store's order, and the builder
//! hands them on to the [`HistorySink`] a chunk at a time.
//!
//! An MLflow history row is one point: its step and timestamp (ms, held as
//! µs), no runtime; a key's values are one [`HistorySeries`] over its rows.
//! A flush between two points cuts a key's series in two: the part before
//! goes with the chunk, the rest starts at row 0 of the next one.

use arrow_array::Float64Array;

use super::MetricPoint;
use crate::pipeline::HistorySink;
use crate::run::{HistoryRow, HistorySeries, RunHistory};

/// Points between two looks at the chunk's size.
const CHECK_EVERY: usize = 1024;

/// Builds a run's history from its metrics' points (keys one after the
/// other, in output order: by name), flushing to the sink between points.
///
/// The chunk's size is looked at every [`CHECK_EVERY`] points and counts the
/// rows and the values of the keys already closed; the values of the key
/// being read (8 bytes beside each row's 40) are not counted, so a chunk may
/// pass the sink's size by a fifth.
pub struct MetricHistoryBuilder<'s> {
    history: RunHistory,
    sink: &'s mut HistorySink,
    /// The key being read, and its values since `first_row`.
    key: Option<u32>,
    first_row: u32,
    values: Vec<f64>,
}

impl<'s> MetricHistoryBuilder<'s> {
    pub fn new(sink: &'s mut HistorySink) -> MetricHistoryBuilder<'s> {
        MetricHistoryBuilder { history: RunHistory::default(), sink, key: None, first_row: 0, values: Vec::new() }
    }

    /// Starts the points of `key` (a key without points adds only its name).
    pub fn start_key(&mut self, key: &str) -> Result<(), String> {
        self.close_series();
        let id = u32::try_from(self.history.keys.len()).map_err(|_| too_many())?;
        self.history.keys.push(key.to_string());
        self.key = Some(id);
        Ok(())
    }

    /// Adds one point of the current key as a row.
    pub fn push(&mut self, p: MetricPoint) -> Result<(), String> {
        // Row indices are 32-bit within a chunk.
        if self.history.rows.len() >= u32::MAX as usize {
            return Err(too_many());
        }
        self.history.rows.push(HistoryRow {
            step: p.step,
            timestamp: p.timestamp_ms.checked_mul(1000),
            runtime_s: None,
        });
        self.values.push(p.value);
        if self.values.len().is_multiple_of(CHECK_EVERY) && self.sink.is_full(&self.history) {
            self.close_series();
            self.sink.flush(&mut self.history)?;
            self.first_row = 0;
        }
        Ok(())
    }

    /// The last chunk (the whole history when the sink never took one).
    pub fn finish(mut self) -> RunHistory {
        self.close_series();
        self.history
    }

    /// Ends the current key's series at the last row (its buffer is kept).
    fn close_series(&mut self) {
        if let Some(key) = self.key
            && !self.values.is_empty()
        {
            let values = Float64Array::from_iter_values(self.values.iter().copied());
            self.history.series.push(HistorySeries { key, first_row: self.first_row, values });
            self.values.clear();
        }
        self.first_row = self.history.rows.len() as u32;
    }
}

fn too_many() -> String {
    format!("the run has more than {} metric points in one history chunk", u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::history::{long_batch, long_schema};
    use crate::output::runlength::expand_to_strings;
    use crate::output::spill::SpillDir;
    use crate::pipeline::{EncodedHistory, HistoryEncoding, HistoryTarget};
    use crate::run::{RunData, RunIdentity};
    use arrow_array::Array;
    use std::sync::Arc;

    fn point(step: i64, timestamp_ms: i64, value: f64) -> MetricPoint {
        MetricPoint { value, timestamp_ms, step }
    }

    /// Two keys, the second with steps out of order and repeated.
    fn series() -> Vec<(&'static str, Vec<MetricPoint>)> {
        let a = (0..5000).map(|i| point(i, 1000 + i, i as f64 / 7.0)).collect();
        let b =
            (0..6000).map(|i| point((6000 - i) / 3, 5000 + i, if i == 17 { f64::NAN } else { -(i as f64) })).collect();
        vec![("a", a), ("b", b), ("empty", Vec::new())]
    }

    fn build(sink: &mut HistorySink) -> RunHistory {
        let mut b = MetricHistoryBuilder::new(sink);
        for (key, points) in series() {
            b.start_key(key).unwrap();
            for p in points {
                b.push(p).unwrap();
            }
        }
        b.finish()
    }

    #[test]
    fn a_whole_history_is_a_row_per_point_and_a_series_per_key() {
        let h = build(&mut HistorySink::whole());
        assert_eq!(h.keys, ["a", "b", "empty"]);
        assert_eq!(h.rows.len(), 11_000);
        assert_eq!(h.series.len(), 2, "no series for a key without points");
        assert_eq!((h.series[1].key, h.series[1].first_row, h.series[1].values.len()), (1, 5000, 6000));
        assert_eq!(h.rows[5001], HistoryRow { step: 1999, timestamp: Some(5_001_000), runtime_s: None });
        assert!(h.series[1].values.value(17).is_nan());
    }

    #[test]
    fn chunks_make_the_same_long_rows_as_the_whole_history() {
        let schema = long_schema();
        let whole = long_batch(&schema, "r1", &build(&mut HistorySink::whole())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::create(&dir.path().join("spill")).unwrap();
        let target = Arc::new(HistoryTarget {
            encoding: HistoryEncoding::Long(Arc::clone(&schema)),
            chunk_bytes: 16 * 1024,
            spill: Some(spill),
        });
        let mut sink = HistorySink::new(Some(target), "r1");
        let last = build(&mut sink);
        assert!(sink.chunks() > 5, "{} chunks", sink.chunks());
        assert!(last.rows.len() < 11_000);
        let data = RunData { identity: RunIdentity::new("r1"), history: Some(last), ..Default::default() };
        let EncodedHistory::Spilled(spilled) = sink.finish(data).unwrap().history else {
            panic!("a history of many chunks is spilled")
        };
        let batches = spilled.read_all(&schema).unwrap();
        // Per column, the batches joined (run-length columns as strings).
        let joined = |batches: &[arrow_array::RecordBatch], name: &str| -> arrow_array::ArrayRef {
            let parts: Vec<arrow_array::ArrayRef> = batches
                .iter()
                .map(|b| {
                    let c = b.column_by_name(name).expect("a long column");
                    match c.data_type() {
                        arrow_schema::DataType::RunEndEncoded(..) => expand_to_strings(c.as_ref()).unwrap(),
                        _ => Arc::clone(c),
                    }
                })
                .collect();
            let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            arrow_select::concat::concat(&parts).unwrap()
        };
        for name in ["run_id", "step", "timestamp", "runtime_s", "key", "value", "value_json"] {
            let (got, want) = (joined(&batches, name), joined(std::slice::from_ref(&whole), name));
            assert!(got.as_ref() == want.as_ref(), "column {name}");
        }
    }
}
