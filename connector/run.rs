//! What a source hands to the output: one run's identity, flattened config and
//! summary, and history, already cut down to what the plan selected.

use std::sync::Arc;

use crate::error::Error;
use crate::output::spill::SpillDir;
use crate::output::system::SpilledRun;
use crate::value::Value;

/// How an identity column is typed in `runs.parquet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// utf8.
    Text,
    /// timestamp[us, UTC].
    Timestamp,
    /// float64.
    Float,
    /// int64.
    Int,
    /// list<utf8>, never null (a run without values has an empty list).
    TextList,
}

impl IdentityKind {
    pub fn name(self) -> &'static str {
        match self {
            IdentityKind::Text => "text",
            IdentityKind::Timestamp => "timestamp",
            IdentityKind::Float => "float",
            IdentityKind::Int => "int",
            IdentityKind::TextList => "text list",
        }
    }
}

/// An identity column a source declares: its name and type. Every source
/// has `run_id` (text), filled from [`RunIdentity::run_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityColumn {
    pub name: &'static str,
    pub kind: IdentityKind,
}

impl IdentityColumn {
    pub const fn new(name: &'static str, kind: IdentityKind) -> IdentityColumn {
        IdentityColumn { name, kind }
    }
}

/// One identity value; timestamps are microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityValue {
    Text(String),
    Timestamp(i64),
    Float(f64),
    Int(i64),
    TextList(Vec<String>),
}

impl IdentityValue {
    pub fn kind(&self) -> IdentityKind {
        match self {
            IdentityValue::Text(_) => IdentityKind::Text,
            IdentityValue::Timestamp(_) => IdentityKind::Timestamp,
            IdentityValue::Float(_) => IdentityKind::Float,
            IdentityValue::Int(_) => IdentityKind::Int,
            IdentityValue::TextList(_) => IdentityKind::TextList,
        }
    }
}

/// A run's identity: its id, and the values of the identity columns its
/// source declares, by column name. A column without a value is written as
/// null (an empty list for a text list).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunIdentity {
    pub run_id: String,
    values: Vec<(&'static str, IdentityValue)>,
}

impl RunIdentity {
    pub fn new(run_id: impl Into<String>) -> RunIdentity {
        RunIdentity { run_id: run_id.into(), values: Vec::new() }
    }

    /// The values set, by column, in the order they were set.
    pub fn values(&self) -> &[(&'static str, IdentityValue)] {
        &self.values
    }

    /// Sets (or with `None` clears) the value of `column`.
    pub fn set(&mut self, column: &'static str, value: Option<IdentityValue>) {
        self.values.retain(|(c, _)| *c != column);
        if let Some(v) = value {
            self.values.push((column, v));
        }
    }

    pub fn with_text(mut self, column: &'static str, value: Option<String>) -> RunIdentity {
        self.set(column, value.map(IdentityValue::Text));
        self
    }

    pub fn with_timestamp(mut self, column: &'static str, micros: Option<i64>) -> RunIdentity {
        self.set(column, micros.map(IdentityValue::Timestamp));
        self
    }

    pub fn with_float(mut self, column: &'static str, value: Option<f64>) -> RunIdentity {
        self.set(column, value.map(IdentityValue::Float));
        self
    }

    pub fn with_int(mut self, column: &'static str, value: Option<i64>) -> RunIdentity {
        self.set(column, value.map(IdentityValue::Int));
        self
    }

    pub fn with_list(mut self, column: &'static str, values: Vec<String>) -> RunIdentity {
        self.set(column, Some(IdentityValue::TextList(values)));
        self
    }

    /// The value of `column` (not `run_id`, which is [`RunIdentity::run_id`]).
    pub fn get(&self, column: &str) -> Option<&IdentityValue> {
        self.values.iter().find(|(c, _)| *c == column).map(|(_, v)| v)
    }

    /// A text column's value; `run_id` included.
    pub fn text(&self, column: &str) -> Option<&str> {
        if column == "run_id" {
            return Some(&self.run_id);
        }
        match self.get(column) {
            Some(IdentityValue::Text(t)) => Some(t),
            _ => None,
        }
    }

    pub fn timestamp(&self, column: &str) -> Option<i64> {
        match self.get(column) {
            Some(IdentityValue::Timestamp(t)) => Some(*t),
            _ => None,
        }
    }

    pub fn float(&self, column: &str) -> Option<f64> {
        match self.get(column) {
            Some(IdentityValue::Float(f)) => Some(*f),
            _ => None,
        }
    }

    pub fn int(&self, column: &str) -> Option<i64> {
        match self.get(column) {
            Some(IdentityValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn list(&self, column: &str) -> &[String] {
        match self.get(column) {
            Some(IdentityValue::TextList(l)) => l,
            _ => &[],
        }
    }
}

/// One history value at one row of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    /// Index into [`RunHistory::rows`].
    pub row: u32,
    /// Index into [`RunHistory::keys`].
    pub key: u32,
    pub value: Value,
}

/// The per-row columns of a history row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryRow {
    pub step: i64,
    /// Microseconds since the epoch, UTC.
    pub timestamp: Option<i64>,
    pub runtime_s: Option<f64>,
}

/// A key's float values at consecutive rows, `first_row..first_row +
/// values.len()`, null where the key is absent: how columnar sources (the
/// API's Parquet history) hand over their values without one point each.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySeries {
    /// Index into [`RunHistory::keys`].
    pub key: u32,
    /// Index into [`RunHistory::rows`] of the first value.
    pub first_row: u32,
    pub values: arrow_array::Float64Array,
}

/// A run's history in log order: rows, interned keys (encoded paths), and
/// the values as points and as series (a key may have both).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunHistory {
    pub rows: Vec<HistoryRow>,
    pub keys: Vec<String>,
    pub points: Vec<HistoryPoint>,
    pub series: Vec<HistorySeries>,
}

/// Where a run's system samples go once they pass their share of memory:
/// `bytes` of samples held at most (a history chunk, a sixteenth of
/// `--memory-limit`), the rest in sorted runs, each a file of the spill
/// folder of the export or sync.
#[derive(Debug, Clone)]
pub struct SystemBudget {
    pub bytes: usize,
    pub spill: Arc<SpillDir>,
}

impl PartialEq for SystemBudget {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes && Arc::ptr_eq(&self.spill, &other.spill)
    }
}

impl Eq for SystemBudget {}

/// A run's system metrics (W&B: GPU, CPU, memory, network, disk), one
/// sample per (time, key), in the order the source gave them. With a
/// [`SystemBudget`], a run holds at most its bytes of samples: each time
/// they reach it, they are sorted in table order and written to a spill
/// file of their own ([`SpilledRun`]), to be merged when the run is written.
#[derive(Debug, Clone, Default)]
pub struct SystemSamples {
    pub keys: Vec<String>,
    /// The samples not spilled, in source order.
    pub(crate) samples: Vec<SystemSample>,
    /// Key name → index in `keys`.
    ids: std::collections::HashMap<String, u32>,
    budget: Option<SystemBudget>,
    /// The sorted runs spilled, in source order.
    pub(crate) spilled: Vec<Arc<SpilledRun>>,
    /// A spill that failed: the run cannot be written whole (the samples
    /// after it are not kept).
    pub(crate) error: Option<Arc<Error>>,
}

/// One sample of one key, in 24 bytes: what a run holds per sample until
/// it is written or spilled (a week of 100 keys sampled every 15 s, the
/// SDK's default, is 4 million samples, 92 MiB).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SystemSample {
    /// Microseconds since the epoch, UTC; see [`SystemSample::timestamp`].
    time: i64,
    /// See [`SystemSample::value`].
    number: f64,
    /// Index into [`SystemSamples::keys`].
    pub key: u32,
    /// Bit 0: `time` is set; bit 1: `number` is set.
    set: u8,
}

impl SystemSample {
    const TIME: u8 = 1;
    const NUMBER: u8 = 2;
    /// Bytes of a sample in a spill file.
    pub const SPILLED_BYTES: usize = 24;

    fn new(timestamp: Option<i64>, key: u32, value: Option<f64>) -> SystemSample {
        let set = if timestamp.is_some() { Self::TIME } else { 0 } | if value.is_some() { Self::NUMBER } else { 0 };
        SystemSample { time: timestamp.unwrap_or(0), number: value.unwrap_or(0.0), key, set }
    }

    /// Microseconds since the epoch, UTC.
    pub fn timestamp(&self) -> Option<i64> {
        (self.set & Self::TIME != 0).then_some(self.time)
    }

    /// `None` when the sampled value is not a number.
    pub fn value(&self) -> Option<f64> {
        (self.set & Self::NUMBER != 0).then_some(self.number)
    }

    /// The sample as a spill file holds it (little-endian: time, value's
    /// bits, key, flags, 3 bytes of padding).
    pub fn to_bytes(self) -> [u8; Self::SPILLED_BYTES] {
        let mut b = [0u8; Self::SPILLED_BYTES];
        b[0..8].copy_from_slice(&self.time.to_le_bytes());
        b[8..16].copy_from_slice(&self.number.to_bits().to_le_bytes());
        b[16..20].copy_from_slice(&self.key.to_le_bytes());
        b[20] = self.set;
        b
    }

    /// The sample [`SystemSample::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8; Self::SPILLED_BYTES]) -> SystemSample {
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[r]);
            w
        };
        SystemSample {
            time: i64::from_le_bytes(word(0..8)),
            number: f64::from_bits(u64::from_le_bytes(word(8..16))),
            key: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
            set: b[20],
        }
    }
}

impl SystemSamples {
    /// Samples held in memory up to `budget`, spilled past it; `None`:
    /// all held.
    pub fn new(budget: Option<SystemBudget>) -> SystemSamples {
        SystemSamples { budget, ..SystemSamples::default() }
    }

    /// Adds one sample.
    pub fn push(&mut self, key: &str, timestamp: Option<i64>, value: Option<f64>) {
        if self.error.is_some() {
            return;
        }
        let id = match self.ids.get(key) {
            Some(id) => *id,
            None => {
                let id = self.keys.len() as u32;
                self.keys.push(key.to_string());
                self.ids.insert(key.to_string(), id);
                id
            }
        };
        self.samples.push(SystemSample::new(timestamp, id, value));
        let full = self.budget.as_ref().is_some_and(|b| self.samples.len() * SystemSample::SPILLED_BYTES >= b.bytes);
        if full {
            self.spill();
        }
    }

    /// The held samples, sorted, to a spill file as one more sorted run.
    fn spill(&mut self) {
        let Some(budget) = &self.budget else { return };
        let order = table_order(&key_ranks(&self.keys), &self.samples);
        match SpilledRun::write(&budget.spill, order.iter().map(|&i| self.samples[i as usize])) {
            Ok(run) => {
                self.spilled.push(Arc::new(run));
                self.samples.clear();
            }
            Err(e) => {
                self.error = Some(Arc::new(e));
                self.samples = Vec::new();
            }
        }
    }

    /// Samples in all, held and spilled.
    pub fn len(&self) -> usize {
        self.samples.len() + self.spilled.iter().map(|r| r.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Each key's place when the keys are sorted by name.
pub(crate) fn key_ranks(keys: &[String]) -> Vec<u32> {
    let mut rank = vec![0u32; keys.len()];
    let mut by_name: Vec<usize> = (0..keys.len()).collect();
    by_name.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
    for (r, k) in by_name.into_iter().enumerate() {
        rank[k] = r as u32;
    }
    rank
}

/// The indices of `samples` in table order: keys by name (their
/// [`key_ranks`]), then time; a stable sort keeps the source's order of
/// equal ones.
pub(crate) fn table_order(key_rank: &[u32], samples: &[SystemSample]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..samples.len() as u32).collect();
    order.sort_by_key(|&i| (key_rank[samples[i as usize].key as usize], samples[i as usize].timestamp()));
    order
}

/// One run as read from a source, ready for the writers.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    pub identity: RunIdentity,
    /// Flattened column groups in output order: `(prefix, [(path, leaf)])`,
    /// e.g. `("config.", [("opt.lr", 0.1)])`; paths without the prefix.
    pub groups: Vec<(&'static str, Vec<(String, Value)>)>,
    pub history: Option<RunHistory>,
    /// System metrics, when the plan selects them.
    pub system: Option<SystemSamples>,
    /// Damage that was skipped over while reading this run.
    pub warnings: Vec<String>,
    /// `runport sync`: where the history stands in the source (see [`HistoryMark`]).
    pub history_mark: Option<HistoryMark>,
}

/// Where a run's history stands in its source, for `runport sync` to read
/// only new steps next time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryMark {
    /// `Some(s)`: `history` holds only the steps from `s` on (the source
    /// read only those); the run's earlier rows are the table's.
    pub from_step: Option<i64>,
    /// The history lines the source listed for the run when it was read
    /// (W&B `historyLineCount`; the history records of W&B logs).
    pub lines: Option<i64>,
    /// W&B logs: the file offset where each log's complete records ended.
    pub offsets: Vec<u64>,
    /// MLflow file stores: where each metric file was read to.
    pub metric_files: std::collections::BTreeMap<String, crate::sources::MetricFileMark>,
}

impl RunData {
    /// The values of one column group (empty when the run has none).
    pub fn group(&self, prefix: &str) -> &[(String, Value)] {
        self.groups.iter().find(|(p, _)| *p == prefix).map_or(&[], |(_, v)| v.as_slice())
    }
}

/// Seconds (as W&B writes `_timestamp`) to microseconds, rounded half away from zero.
pub fn seconds_to_micros(seconds: f64) -> Option<i64> {
    if !seconds.is_finite() {
        return None;
    }
    let us = (seconds * 1_000_000.0).round();
    if us.abs() < 9.2e18 { Some(us as i64) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_to_micros() {
        assert_eq!(seconds_to_micros(1.795496877284472e9), Some(1_795_496_877_284_472));
        assert_eq!(seconds_to_micros(0.0000005), Some(1));
        assert_eq!(seconds_to_micros(f64::NAN), None);
        assert_eq!(seconds_to_micros(1e300), None);
    }

    #[test]
    fn a_system_sample_keeps_what_was_pushed_in_24_bytes() {
        assert_eq!(std::mem::size_of::<SystemSample>(), 24);
        let mut s = SystemSamples::default();
        for (key, t, v) in [("cpu", Some(-1), Some(0.0)), ("gpu", None, Some(f64::NAN)), ("cpu", Some(0), None)] {
            s.push(key, t, v);
        }
        s.push("gpu", None, None);
        let got: Vec<_> =
            s.samples.iter().map(|x| (s.keys[x.key as usize].as_str(), x.timestamp(), x.value())).collect();
        assert_eq!(got[0], ("cpu", Some(-1), Some(0.0)));
        assert!(got[1].0 == "gpu" && got[1].1.is_none() && got[1].2.is_some_and(f64::is_nan));
        assert_eq!(got[2..], [("cpu", Some(0), None), ("gpu", None, None)]);
    }

    #[test]
    fn a_spilled_sample_reads_back_as_written() {
        let mut s = SystemSamples::default();
        let nan = f64::from_bits(0x7ff8_0000_dead_beef);
        for (key, t, v) in [("a", Some(i64::MIN), Some(-0.0)), ("b", None, Some(nan)), ("a", Some(-1), None)] {
            s.push(key, t, v);
        }
        for x in &s.samples {
            let back = SystemSample::from_bytes(&x.to_bytes());
            assert_eq!((back.key, back.timestamp()), (x.key, x.timestamp()));
            assert_eq!(back.value().map(f64::to_bits), x.value().map(f64::to_bits));
        }
    }
}
