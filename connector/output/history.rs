//! History as Arrow record batches, one batch per run: the long layout (one row
//! per step and key, sorted by key then step) and the wide layout (one row per
//! step, one column per key).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};

use super::runlength::{RunsBuilder, repeated, run_length_type};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::columns::{ColumnBuilder, ColumnKind, kind_metadata};
use crate::error::{Error, Result};
use crate::run::{HistoryRow, RunHistory};
use crate::value::Value;

fn row_fields() -> Vec<Field> {
    vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("runtime_s", DataType::Float64, true),
    ]
}

/// `run_id, step, timestamp, runtime_s, key, value, value_json`.
pub fn long_schema() -> SchemaRef {
    let mut fields = row_fields();
    fields.push(Field::new("key", DataType::Utf8, false));
    fields.push(Field::new("value", DataType::Float64, true));
    fields.push(kind_metadata(Field::new("value_json", DataType::Utf8, true), "json"));
    Arc::new(Schema::new(fields))
}

/// `run_id, step, timestamp, runtime_s`, then one column per key, typed by `kinds`.
pub fn wide_schema(kinds: &BTreeMap<String, ColumnKind>) -> SchemaRef {
    let mut fields = row_fields();
    fields.extend(kinds.iter().map(|(k, kind)| kind.field(k)));
    Arc::new(Schema::new(fields))
}

/// Unifies the kinds of a run's history values into `kinds` (for the wide schema).
pub fn collect_kinds(history: &RunHistory, kinds: &mut BTreeMap<String, ColumnKind>) {
    for p in &history.points {
        let k = kinds.entry(history.keys[p.key as usize].clone()).or_insert(ColumnKind::Null);
        *k = k.unify(ColumnKind::of(&p.value));
    }
}

/// The schema of the batches for a file schema: `run_id` and `key` travel
/// run-length encoded (see [`super::runlength`]); the file keeps `Utf8`.
pub fn batch_schema(file: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = file
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "run_id" | "key" if *f.data_type() == DataType::Utf8 => {
                Field::new(f.name(), run_length_type(), f.is_nullable()).with_metadata(f.metadata().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, file.metadata().clone()))
}

struct RowColumns {
    rows: usize,
    step: Int64Builder,
    timestamp: TimestampMicrosecondBuilder,
    runtime: Float64Builder,
}

impl RowColumns {
    fn new(n: usize) -> RowColumns {
        RowColumns {
            rows: 0,
            step: Int64Builder::with_capacity(n),
            timestamp: TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"),
            runtime: Float64Builder::with_capacity(n),
        }
    }

    fn push(&mut self, row: &HistoryRow) {
        self.rows += 1;
        self.step.append_value(row.step);
        self.timestamp.append_option(row.timestamp);
        self.runtime.append_option(row.runtime_s);
    }

    fn finish(mut self, run_id: &str) -> Vec<ArrayRef> {
        vec![
            repeated(run_id, self.rows),
            Arc::new(self.step.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.runtime.finish()),
        ]
    }
}

/// The run's history in the long layout, sorted by (key, step), log order kept for ties.
pub fn long_batch(schema: &SchemaRef, run_id: &str, h: &RunHistory) -> Result<RecordBatch> {
    let mut rank_of_key = vec![0u32; h.keys.len()];
    let mut by_name: Vec<u32> = (0..h.keys.len() as u32).collect();
    by_name.sort_by(|a, b| h.keys[*a as usize].cmp(&h.keys[*b as usize]));
    for (rank, id) in by_name.iter().enumerate() {
        rank_of_key[*id as usize] = rank as u32;
    }
    // Counting sort by key keeps log order within each key; steps within a
    // key are almost always ascending already, so the stable sort is skipped.
    let mut starts = vec![0usize; h.keys.len() + 1];
    for p in &h.points {
        starts[rank_of_key[p.key as usize] as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let bounds = starts.clone();
    let mut order = vec![0u32; h.points.len()];
    for (i, p) in h.points.iter().enumerate() {
        let slot = &mut starts[rank_of_key[p.key as usize] as usize];
        order[*slot] = i as u32;
        *slot += 1;
    }
    let step_of = |i: &u32| h.rows[h.points[*i as usize].row as usize].step;
    for w in bounds.windows(2) {
        let bucket = &mut order[w[0]..w[1]];
        if !bucket.is_sorted_by_key(step_of) {
            bucket.sort_by_key(step_of);
        }
    }

    let n = order.len();
    let mut rows = RowColumns::new(n);
    let mut key = RunsBuilder::default();
    for (rank, id) in by_name.iter().enumerate() {
        key.push(&h.keys[*id as usize], bounds[rank + 1] - bounds[rank]);
    }
    let mut value = Float64Builder::with_capacity(n);
    let mut value_json = StringBuilder::with_capacity(n, 0);
    let mut text = String::new();
    for i in order {
        let p = &h.points[i as usize];
        rows.push(&h.rows[p.row as usize]);
        match &p.value {
            Value::Int(_) | Value::Float(_) => {
                value.append_option(p.value.as_f64());
                value_json.append_null();
            }
            other => {
                value.append_null();
                text.clear();
                other.write_json(&mut text);
                value_json.append_value(&text);
            }
        }
    }
    let mut columns = rows.finish(run_id);
    columns.push(key.finish());
    columns.push(Arc::new(value.finish()));
    columns.push(Arc::new(value_json.finish()));
    RecordBatch::try_new(batch_schema(schema), columns)
        .map_err(|e| Error::Arrow { what: format!("history of run {run_id}"), source: e })
}

/// The run's history in the wide layout, rows in log order. `kinds` must hold
/// every key of the run (see [`collect_kinds`]).
pub fn wide_batch(
    schema: &SchemaRef,
    kinds: &BTreeMap<String, ColumnKind>,
    run_id: &str,
    h: &RunHistory,
) -> Result<RecordBatch> {
    let n = h.rows.len();
    let mut rows = RowColumns::new(n);
    for r in &h.rows {
        rows.push(r);
    }
    // The run's points per key name, in row order.
    let mut per_key: BTreeMap<&str, Vec<(u32, &Value)>> = BTreeMap::new();
    for p in &h.points {
        per_key.entry(h.keys[p.key as usize].as_str()).or_default().push((p.row, &p.value));
    }
    let mut columns = rows.finish(run_id);
    for (key, kind) in kinds {
        let mut b = ColumnBuilder::new(*kind, n);
        match per_key.get(key.as_str()) {
            None => (0..n).for_each(|_| b.push(None)),
            Some(points) => {
                let mut next_row = 0u32;
                for (i, (row, v)) in points.iter().enumerate() {
                    // A key logged twice in one row: the later value wins.
                    if points.get(i + 1).is_some_and(|(r, _)| r == row) {
                        continue;
                    }
                    while next_row < *row {
                        b.push(None);
                        next_row += 1;
                    }
                    b.push(Some(v));
                    next_row += 1;
                }
                while (next_row as usize) < n {
                    b.push(None);
                    next_row += 1;
                }
            }
        }
        columns.push(b.finish());
    }
    RecordBatch::try_new(batch_schema(schema), columns)
        .map_err(|e| Error::Arrow { what: format!("wide history of run {run_id}"), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::runlength::expand;
    use crate::run::HistoryPoint;
    use arrow_array::{Array, Float64Array, Int64Array, StringArray};

    fn sample() -> RunHistory {
        let row = |step| HistoryRow { step, timestamp: Some(step * 1000), runtime_s: Some(step as f64) };
        RunHistory {
            rows: vec![row(0), row(5), row(2)],
            keys: vec!["loss".into(), "acc".into(), "img".into()],
            points: vec![
                HistoryPoint { row: 0, key: 0, value: Value::Float(1.0) },
                HistoryPoint { row: 0, key: 1, value: Value::Int(1) },
                HistoryPoint { row: 1, key: 0, value: Value::Float(f64::NAN) },
                HistoryPoint { row: 2, key: 0, value: Value::Float(0.5) },
                HistoryPoint { row: 2, key: 2, value: Value::parse(r#"{"_type":"image-file"}"#).unwrap() },
            ],
        }
    }

    #[test]
    fn long_rows_sort_by_key_then_step() {
        let b = long_batch(&long_schema(), "r1", &sample()).unwrap();
        let keys = expand(b.column_by_name("key").unwrap().as_ref());
        let steps = b.column_by_name("step").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        let got: Vec<(&str, i64)> = (0..b.num_rows()).map(|i| (keys[i].as_str(), steps.value(i))).collect();
        assert_eq!(got, [("acc", 0), ("img", 2), ("loss", 0), ("loss", 2), ("loss", 5)]);
        assert_eq!(expand(b.column_by_name("run_id").unwrap().as_ref()), ["r1"; 5]);
        let value = b.column_by_name("value").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        let json = b.column_by_name("value_json").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert!(value.is_null(1));
        assert_eq!(json.value(1), r#"{"_type":"image-file"}"#);
        assert!(value.value(4).is_nan());
        assert!(json.is_null(4));
    }

    #[test]
    fn wide_rows_keep_log_order_with_nulls() {
        let h = sample();
        let mut kinds = BTreeMap::new();
        collect_kinds(&h, &mut kinds);
        kinds.insert("other".into(), ColumnKind::Int);
        let schema = wide_schema(&kinds);
        let b = wide_batch(&schema, &kinds, "r1", &h).unwrap();
        assert_eq!(b.num_rows(), 3);
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["run_id", "step", "timestamp", "runtime_s", "acc", "img", "loss", "other"]);
        let acc = b.column_by_name("acc").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(acc.iter().collect::<Vec<_>>(), [Some(1), None, None]);
        assert_eq!(b.column_by_name("other").unwrap().null_count(), 3);
    }
}
