//! History as Arrow record batches, one batch per run: the long layout (one row
//! per step and key, sorted by key then step) and the wide layout (one row per
//! step, one column per key). Columns are gathered by row index, not pushed
//! value by value.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{BooleanBufferBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_buffer::NullBuffer;

use super::runlength::{RunsBuilder, repeated, run_length_type};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::columns::{ColumnBuilder, ColumnKind, kind_metadata};
use crate::error::{Error, Result};
use crate::run::{HistoryRow, HistorySeries, RunHistory};
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

/// The kind of each key's values, by key id (`None` for a key without a
/// value): one pass, no key name touched per value.
pub fn kinds_by_key(history: &RunHistory) -> Vec<Option<ColumnKind>> {
    let mut by_key = vec![None; history.keys.len()];
    let mut add = |key: u32, kind: ColumnKind| {
        let k: &mut Option<ColumnKind> = &mut by_key[key as usize];
        *k = Some(k.unwrap_or(ColumnKind::Null).unify(kind));
    };
    for p in &history.points {
        add(p.key, ColumnKind::of(&p.value));
    }
    for s in &history.series {
        if s.values.null_count() < s.values.len() {
            add(s.key, ColumnKind::Float);
        }
    }
    by_key
}

/// Unifies the kinds of a run's history values into `kinds` (for the wide schema).
pub fn collect_kinds(history: &RunHistory, kinds: &mut BTreeMap<String, ColumnKind>) {
    for (key, kind) in history.keys.iter().zip(kinds_by_key(history)) {
        if let Some(kind) = kind {
            let k = kinds.entry(key.clone()).or_insert(ColumnKind::Null);
            *k = k.unify(kind);
        }
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

/// One value of a key in a run: from a series, or a point.
#[derive(Clone, Copy)]
enum Entry<'a> {
    Float(f64),
    Point(&'a Value),
}

/// The values of each key (by key id), series first then points, each in
/// log order; nothing for the keys marked in `skip`.
fn entries_by_key<'h>(h: &'h RunHistory, skip: &[bool]) -> Vec<Vec<(u32, Entry<'h>)>> {
    let mut per_key: Vec<Vec<(u32, Entry<'_>)>> = vec![Vec::new(); h.keys.len()];
    for s in h.series.iter().filter(|s| !skip[s.key as usize]) {
        let out = &mut per_key[s.key as usize];
        let values = s.values.values();
        match s.values.nulls() {
            None => out.extend(values.iter().enumerate().map(|(i, v)| (s.first_row + i as u32, Entry::Float(*v)))),
            Some(nulls) => out.extend(nulls.valid_indices().map(|i| (s.first_row + i as u32, Entry::Float(values[i])))),
        }
    }
    for p in h.points.iter().filter(|p| !skip[p.key as usize]) {
        per_key[p.key as usize].push((p.row, Entry::Point(&p.value)));
    }
    per_key
}

/// The run's history in the long layout, sorted by (key, step), log order
/// kept for ties (rows in log order; a key's series before its points).
pub fn long_batch(schema: &SchemaRef, run_id: &str, h: &RunHistory) -> Result<RecordBatch> {
    let parts = long_parts(run_id, h)?;
    let n = parts.rows();
    let mut key = RunsBuilder::default();
    for (id, count) in &parts.keys {
        key.push(&h.keys[*id as usize], *count);
    }
    let mut columns = vec![repeated(run_id, n)];
    let [step, timestamp, runtime, value, value_json] = parts.columns;
    columns.extend([step, timestamp, runtime, key.finish(), value, value_json]);
    RecordBatch::try_new(batch_schema(schema), columns)
        .map_err(|e| Error::Arrow { what: format!("history of run {run_id}"), source: e })
}

/// A run's (or a chunk's) long rows without `run_id` and `key`: the keys as
/// (key id, rows) in key-name order, and the columns `step, timestamp,
/// runtime_s, value, value_json` sorted by (key, step).
pub struct LongParts {
    pub keys: Vec<(u32, usize)>,
    pub columns: [ArrayRef; 5],
}

impl LongParts {
    pub fn rows(&self) -> usize {
        self.columns[0].len()
    }
}

/// The long rows of `h`, sorted by (key, step), log order kept for ties.
pub fn long_parts(run_id: &str, h: &RunHistory) -> Result<LongParts> {
    long_parts_except(run_id, h, &vec![false; h.keys.len()])
}

/// Keys (by id) that only have series, in ascending rows whose steps
/// ascend (the usual case): their rows are in step order as they are.
pub fn series_in_order(h: &RunHistory) -> Vec<bool> {
    let mut series_of: Vec<Vec<&HistorySeries>> = vec![Vec::new(); h.keys.len()];
    for s in &h.series {
        series_of[s.key as usize].push(s);
    }
    let mut has_points = vec![false; h.keys.len()];
    for p in &h.points {
        has_points[p.key as usize] = true;
    }
    (0..h.keys.len())
        .map(|k| {
            let ranges = || series_of[k].iter().map(|s| s.first_row as usize..s.first_row as usize + s.values.len());
            !has_points[k]
                && series_of[k]
                    .windows(2)
                    .all(|w| w[0].first_row as usize + w[0].values.len() <= w[1].first_row as usize)
                && ranges().flat_map(|r| h.rows[r].iter().map(|row| row.step)).is_sorted()
        })
        .collect()
}

/// [`long_parts`] without the keys marked in `skip` (by key id).
pub fn long_parts_except(run_id: &str, h: &RunHistory, skip: &[bool]) -> Result<LongParts> {
    // One batch a run, its run-length columns indexed by i32.
    let values = h.points.len() + h.series.iter().map(|s| s.values.len()).sum::<usize>();
    if i32::try_from(values).is_err() {
        return Err(Error::Internal(format!(
            "run {run_id} has {values} history values, more than the {} one batch can hold",
            i32::MAX
        )));
    }
    let mut by_name: Vec<u32> = (0..h.keys.len() as u32).filter(|k| !skip[*k as usize]).collect();
    by_name.sort_by(|a, b| h.keys[*a as usize].cmp(&h.keys[*b as usize]));
    let mut series_of: Vec<Vec<&HistorySeries>> = vec![Vec::new(); h.keys.len()];
    for s in &h.series {
        series_of[s.key as usize].push(s);
    }
    let direct = series_in_order(h);
    let not_entries: Vec<bool> = direct.iter().zip(skip).map(|(d, s)| *d || *s).collect();
    let mut per_key = entries_by_key(h, &not_entries);
    let n: usize = per_key.iter().map(Vec::len).sum::<usize>()
        + h.series
            .iter()
            .filter(|s| direct[s.key as usize] && !skip[s.key as usize])
            .map(|s| s.values.len() - s.values.null_count())
            .sum::<usize>();

    let mut rows: Vec<u32> = Vec::with_capacity(n);
    let mut values: Vec<f64> = Vec::with_capacity(n);
    // Rows whose value is not a number: their position and JSON text.
    let mut json: Vec<(usize, String)> = Vec::new();
    let mut key: Vec<(u32, usize)> = Vec::new();
    let step_of = |e: &(u32, Entry<'_>)| h.rows[e.0 as usize].step;
    for id in by_name {
        let start = rows.len();
        if direct[id as usize] {
            for s in &series_of[id as usize] {
                let v = s.values.values();
                match s.values.nulls() {
                    None => {
                        rows.extend(s.first_row..s.first_row + v.len() as u32);
                        values.extend_from_slice(v);
                    }
                    Some(nulls) => {
                        for i in nulls.valid_indices() {
                            rows.push(s.first_row + i as u32);
                            values.push(v[i]);
                        }
                    }
                }
            }
            key.push((id, rows.len() - start));
            continue;
        }
        let entries = &mut per_key[id as usize];
        // Steps within a key almost always ascend already: the stable sort is skipped.
        if !entries.is_sorted_by_key(step_of) {
            entries.sort_by_key(step_of);
        }
        key.push((id, entries.len()));
        for (row, entry) in entries.iter() {
            rows.push(*row);
            match entry {
                Entry::Float(v) => values.push(*v),
                Entry::Point(v @ (Value::Int(_) | Value::Float(_))) => values.push(v.as_f64().unwrap_or(f64::NAN)),
                Entry::Point(other) => {
                    json.push((values.len(), other.to_json()));
                    values.push(0.0);
                }
            }
        }
    }

    let [step, timestamp, runtime] = row_columns(h, &rows);
    let value_nulls = (!json.is_empty()).then(|| {
        let mut valid = BooleanBufferBuilder::new(n);
        valid.append_n(n, true);
        for (i, _) in &json {
            valid.set_bit(*i, false);
        }
        NullBuffer::new(valid.finish())
    });
    let value_json: ArrayRef = if json.is_empty() {
        Arc::new(StringArray::new_null(n))
    } else {
        let mut b = StringBuilder::with_capacity(n, json.iter().map(|(_, t)| t.len()).sum());
        let mut next = 0;
        for (i, text) in &json {
            (next..*i).for_each(|_| b.append_null());
            b.append_value(text);
            next = i + 1;
        }
        (next..n).for_each(|_| b.append_null());
        Arc::new(b.finish())
    };
    let value: ArrayRef = Arc::new(Float64Array::new(values.into(), value_nulls));
    Ok(LongParts { keys: key, columns: [step, timestamp, runtime, value, value_json] })
}

/// `step, timestamp, runtime_s` of the given rows. The row fields are laid
/// out as columns once per run; consecutive rows (a key's series, the usual
/// case) are then copied as slices, not gathered one by one.
fn row_columns(h: &RunHistory, rows: &[u32]) -> [ArrayRef; 3] {
    let steps: Vec<i64> = h.rows.iter().map(|r| r.step).collect();
    let stamps: Vec<i64> = h.rows.iter().map(|r| r.timestamp.unwrap_or(0)).collect();
    let runtimes: Vec<f64> = h.rows.iter().map(|r| r.runtime_s.unwrap_or(0.0)).collect();
    let mut step = Vec::with_capacity(rows.len());
    let mut timestamp = Vec::with_capacity(rows.len());
    let mut runtime = Vec::with_capacity(rows.len());
    for range in consecutive(rows) {
        step.extend_from_slice(&steps[range.clone()]);
        timestamp.extend_from_slice(&stamps[range.clone()]);
        runtime.extend_from_slice(&runtimes[range]);
    }
    let row = |r: &u32| &h.rows[*r as usize];
    let nulls = |valid: &dyn Fn(&HistoryRow) -> bool| -> Option<NullBuffer> {
        if h.rows.iter().all(valid) {
            return None;
        }
        Some(NullBuffer::from_iter(rows.iter().map(|r| valid(row(r)))))
    };
    let ts_nulls = nulls(&|r| r.timestamp.is_some());
    let rt_nulls = nulls(&|r| r.runtime_s.is_some());
    [
        Arc::new(Int64Array::new(step.into(), None)),
        Arc::new(TimestampMicrosecondArray::new(timestamp.into(), ts_nulls).with_timezone("UTC")),
        Arc::new(Float64Array::new(runtime.into(), rt_nulls)),
    ]
}

/// `rows` as ranges of consecutive row indices, in order.
fn consecutive(rows: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = *rows.get(i)? as usize;
        let mut end = start + 1;
        i += 1;
        while rows.get(i).is_some_and(|&r| r as usize == end) {
            end += 1;
            i += 1;
        }
        Some(start..end)
    })
}

/// The run's history in the wide layout, rows in log order. `kinds` must hold
/// every key of the run with a kind its values fit (see [`collect_kinds`]);
/// otherwise the run's history changed since the kinds were collected, and
/// it is an error, never a dropped or nulled value.
pub fn wide_batch(
    schema: &SchemaRef,
    kinds: &BTreeMap<String, ColumnKind>,
    run_id: &str,
    h: &RunHistory,
) -> Result<RecordBatch> {
    for (key, kind) in h.keys.iter().zip(kinds_by_key(h)) {
        let Some(kind) = kind else { continue };
        let detail = match kinds.get(key) {
            None => format!("key {key:?} is new"),
            Some(column) if column.unify(kind) != *column => {
                format!("key {key:?} now holds {kind:?} values, its column is {column:?}")
            }
            Some(_) => continue,
        };
        return Err(Error::HistoryChanged { run: run_id.to_string(), detail });
    }
    let n = h.rows.len();
    let all_rows: Vec<u32> = (0..n as u32).collect();
    let mut columns = vec![repeated(run_id, n)];
    columns.extend(row_columns(h, &all_rows));
    // The run's values per key name, in row order.
    let mut per_key: BTreeMap<&str, Vec<(u32, Entry<'_>)>> = BTreeMap::new();
    for (id, entries) in entries_by_key(h, &vec![false; h.keys.len()]).into_iter().enumerate() {
        per_key.entry(h.keys[id].as_str()).or_default().extend(entries);
    }
    for (key, kind) in kinds {
        let mut b = ColumnBuilder::new(*kind, n);
        match per_key.get_mut(key.as_str()) {
            None => (0..n).for_each(|_| b.push(None)),
            Some(entries) => {
                entries.sort_by_key(|e| e.0);
                let mut next_row = 0u32;
                for (i, (row, v)) in entries.iter().enumerate() {
                    // A key logged twice in one row: the later value wins.
                    if entries.get(i + 1).is_some_and(|(r, _)| r == row) {
                        continue;
                    }
                    while next_row < *row {
                        b.push(None);
                        next_row += 1;
                    }
                    match v {
                        Entry::Float(f) => b.push(Some(&Value::Float(*f))),
                        Entry::Point(v) => b.push(Some(v)),
                    }
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
            series: Vec::new(),
        }
    }

    /// The same values as points and as series must give the same batches,
    /// whatever the rows' step order, with nulls in series, and with a key
    /// that has both (a series and later points, as the API's live rows add).
    #[test]
    fn series_and_points_give_the_same_batches() {
        for steps in [vec![0, 1, 2, 3, 4, 5, 6, 7], vec![0, 5, 2, 3, 9, 1, 7, 7]] {
            let rows: Vec<HistoryRow> = steps
                .iter()
                .enumerate()
                .map(|(i, s)| HistoryRow {
                    step: *s,
                    timestamp: (i != 3).then_some(*s * 1000),
                    runtime_s: (i != 4).then_some(i as f64),
                })
                .collect();
            let keys: Vec<String> = ["b", "a", "c"].iter().map(|k| k.to_string()).collect();
            // b: rows 0..4 then 4..8 (a null at 2); a: rows 0..8 twice as two series; c: points only.
            let b1 = Float64Array::from(vec![Some(1.0), Some(2.0), None, Some(f64::NAN)]);
            let b2 = Float64Array::from(vec![Some(5.0), Some(6.0), Some(7.0), Some(8.0)]);
            let a1 = Float64Array::from(vec![Some(-1.0), None, Some(f64::INFINITY), Some(0.0)]);
            let a2 = Float64Array::from(vec![None, None, Some(3.5), None]);
            let series = vec![
                HistorySeries { key: 0, first_row: 0, values: b1.clone() },
                HistorySeries { key: 1, first_row: 0, values: a1.clone() },
                HistorySeries { key: 0, first_row: 4, values: b2.clone() },
                HistorySeries { key: 1, first_row: 4, values: a2.clone() },
            ];
            let tail = vec![
                HistoryPoint { row: 6, key: 0, value: Value::Float(9.0) },
                HistoryPoint { row: 1, key: 2, value: Value::Int(4) },
            ];
            let as_series = RunHistory { rows: rows.clone(), keys: keys.clone(), points: tail.clone(), series };
            let mut points = Vec::new();
            for (key, first, values) in [(0, 0, &b1), (1, 0, &a1), (0, 4, &b2), (1, 4, &a2)] {
                for (i, v) in values.iter().enumerate() {
                    if let Some(v) = v {
                        points.push(HistoryPoint { row: first + i as u32, key, value: Value::Float(v) });
                    }
                }
            }
            points.extend(tail);
            let as_points = RunHistory { rows, keys, points, series: Vec::new() };

            let long = |h: &RunHistory| long_batch(&long_schema(), "r", h).unwrap();
            let (l1, l2) = (long(&as_series), long(&as_points));
            assert_eq!(l1.num_rows(), 13);
            assert_eq!(expand(l1.column(4).as_ref()), expand(l2.column(4).as_ref()));
            for c in [1, 2, 3, 5, 6] {
                assert_eq!(l1.column(c).to_data(), l2.column(c).to_data(), "long column {c}, steps {steps:?}");
            }
            let mut kinds = BTreeMap::new();
            collect_kinds(&as_series, &mut kinds);
            let mut kinds2 = BTreeMap::new();
            collect_kinds(&as_points, &mut kinds2);
            assert_eq!(kinds, kinds2);
            let schema = wide_schema(&kinds);
            let (w1, w2) = (
                wide_batch(&schema, &kinds, "r", &as_series).unwrap(),
                wide_batch(&schema, &kinds, "r", &as_points).unwrap(),
            );
            for c in 1..w1.num_columns() {
                assert_eq!(w1.column(c).to_data(), w2.column(c).to_data(), "wide column {c}");
            }
        }
    }

    #[test]
    fn consecutive_rows_become_ranges() {
        let ranges = |rows: &[u32]| consecutive(rows).collect::<Vec<_>>();
        assert!(ranges(&[]).is_empty());
        assert_eq!(ranges(&[7]), vec![7..8]);
        assert_eq!(ranges(&[0, 1, 2, 5, 6, 9]), [0..3, 5..7, 9..10]);
        // Rows sorted by step need not ascend; a row may come twice.
        assert_eq!(ranges(&[5, 3, 4, 4, 9, 8]), [5..6, 3..5, 4..5, 9..10, 8..9]);
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
    fn wide_batches_refuse_keys_and_types_the_schema_lacks() {
        let h = sample();
        let mut kinds = BTreeMap::new();
        collect_kinds(&h, &mut kinds);
        let schema = wide_schema(&kinds);
        assert!(wide_batch(&schema, &kinds, "r1", &h).is_ok());
        for (key, narrowed) in kinds.clone() {
            // The key unseen by the first pass, then seen with a narrower type.
            let mut fewer = kinds.clone();
            fewer.remove(&key);
            let e = wide_batch(&wide_schema(&fewer), &fewer, "r1", &h).unwrap_err().to_string();
            assert!(e.contains("run r1") && e.contains(&format!("{key:?} is new")), "{e}");
            let other = if narrowed == ColumnKind::Bool { ColumnKind::Int } else { ColumnKind::Bool };
            if other.unify(narrowed) != other {
                let mut wrong = kinds.clone();
                wrong.insert(key.clone(), other);
                let e = wide_batch(&wide_schema(&wrong), &wrong, "r1", &h).unwrap_err().to_string();
                assert!(e.contains(&format!("{key:?} now holds")), "{e}");
            }
        }
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
