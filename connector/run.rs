//! What a source hands to the output: one run's identity, flattened config and
//! summary, and history, already cut down to what the plan selected.

use crate::value::Value;

/// The identity columns of `runs.parquet`; `None` is written as null.
/// Timestamps are microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunIdentity {
    pub source: String,
    pub entity: Option<String>,
    pub project: Option<String>,
    pub run_id: String,
    pub name: Option<String>,
    pub state: Option<String>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub runtime_s: Option<f64>,
    pub exit_code: Option<i64>,
    pub group: Option<String>,
    pub job_type: Option<String>,
    pub tags: Vec<String>,
    pub notes: Option<String>,
    pub host: Option<String>,
    pub git_remote: Option<String>,
    pub git_commit: Option<String>,
    // MLflow (`name` is the run name there).
    pub experiment_id: Option<String>,
    pub experiment_name: Option<String>,
    pub status: Option<String>,
    pub artifact_uri: Option<String>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub user_id: Option<String>,
    pub lifecycle_stage: Option<String>,
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

/// One run as read from a source, ready for the writers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunData {
    pub identity: RunIdentity,
    /// Flattened column groups in output order: `(prefix, [(path, leaf)])`,
    /// e.g. `("config.", [("opt.lr", 0.1)])`; paths without the prefix.
    pub groups: Vec<(&'static str, Vec<(String, Value)>)>,
    pub history: Option<RunHistory>,
    /// Damage that was skipped over while reading this run.
    pub warnings: Vec<String>,
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
}
