//! Rebuilding one run from its transaction log(s): identity, config, summary,
//! history, exit. Only the record types the plan needs are decoded.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::{Duration, SystemTime};

use prost::Message;
use serde::Serialize;

use super::log_reader::{LogError, TransactionLogReader};
use super::records::{RecordType, RunExitRecord, RunRecord, StatsRecord, Timestamp, UpdateRecord, peek_record_type};
use super::tree::{Tree, parse_or_keep};
use super::wire::{ItemRef, RawValue, history_items, update_items};
use crate::columns::{encode_path, flatten};
use crate::plan::FetchPlan;
use crate::run::{HistoryPoint, HistoryRow, RunData, RunHistory, RunIdentity, seconds_to_micros};
use crate::value::Value;

/// A file modified more recently than this, without an exit record, is a live run.
pub const LIVE_WINDOW: Duration = Duration::from_secs(60);

/// Which record types to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecordNeeds {
    pub run: bool,
    pub config: bool,
    pub summary: bool,
    pub history: bool,
    pub stats: bool,
    pub exit: bool,
}

impl RecordNeeds {
    pub fn from_plan(plan: &FetchPlan) -> RecordNeeds {
        let id = |c: &str| plan.wants_identity(c);
        RecordNeeds {
            // The run record carries identity and the initial config.
            run: true,
            config: plan.config,
            summary: plan.summary,
            history: plan.history || id("updated_at") || id("runtime_s"),
            stats: id("updated_at"),
            exit: id("state") || id("exit_code") || id("runtime_s"),
        }
    }

    fn wants(&self, t: RecordType) -> bool {
        match t {
            RecordType::Run => self.run,
            RecordType::Config => self.config,
            RecordType::Summary => self.summary,
            RecordType::History => self.history,
            RecordType::Stats => self.stats,
            RecordType::Exit => self.exit,
        }
    }
}

/// Records seen while decoding, by type (for `--json` and the benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecordCounts {
    pub read: u64,
    pub decoded_run: u64,
    pub decoded_config: u64,
    pub decoded_summary: u64,
    pub decoded_history: u64,
    pub decoded_stats: u64,
    pub decoded_exit: u64,
    pub bytes: u64,
}

impl RecordCounts {
    pub fn add(&mut self, o: &RecordCounts) {
        self.read += o.read;
        self.decoded_run += o.decoded_run;
        self.decoded_config += o.decoded_config;
        self.decoded_summary += o.decoded_summary;
        self.decoded_history += o.decoded_history;
        self.decoded_stats += o.decoded_stats;
        self.decoded_exit += o.decoded_exit;
        self.bytes += o.bytes;
    }
}

/// Why a run could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{path}: {source}")]
    Log { path: String, source: LogError },
    #[error("{path}: cannot open: {source}")]
    Open { path: String, source: std::io::Error },
}

/// Marks a history key the selection does not want.
const EXCLUDED: u32 = u32::MAX;

/// Accumulates a run's state over its records.
struct RunDecoder<'p> {
    plan: &'p FetchPlan,
    needs: RecordNeeds,
    run: Option<RunRecord>,
    config: Tree,
    summary: Tree,
    history: RunHistory,
    /// Key (encoded path) → index in `history.keys`, or [`EXCLUDED`].
    key_ids: HashMap<String, u32>,
    last_time_us: Option<i64>,
    last_runtime: Option<f64>,
    exit: Option<RunExitRecord>,
    warnings: Vec<String>,
    counts: RecordCounts,
}

/// Reads a run from its log files (several when the run was resumed, in order).
pub fn decode_run(
    run_id: &str,
    files: &[impl AsRef<Path>],
    plan: &FetchPlan,
    counts: &mut RecordCounts,
) -> Result<RunData, DecodeError> {
    let needs = RecordNeeds::from_plan(plan);
    let mut d = RunDecoder {
        plan,
        needs,
        run: None,
        config: Tree::default(),
        summary: Tree::default(),
        history: RunHistory::default(),
        key_ids: HashMap::new(),
        last_time_us: None,
        last_runtime: None,
        exit: None,
        warnings: Vec::new(),
        counts: RecordCounts::default(),
    };
    let mut newest_mtime = None;
    for path in files {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|source| DecodeError::Open { path: shown.clone(), source })?;
        newest_mtime = newest_mtime.max(file.metadata().and_then(|m| m.modified()).ok());
        let mut reader = TransactionLogReader::new(BufReader::with_capacity(256 * 1024, file))
            .map_err(|source| DecodeError::Log { path: shown.clone(), source })?;
        // Each log holds its own exit record; a resumed run's state is its last log's.
        d.exit = None;
        loop {
            let rec = match reader.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(source) => {
                    return Err(DecodeError::Log { path: shown, source });
                }
            };
            d.counts.read += 1;
            if let Err(e) = d.record(rec) {
                d.warnings.push(format!("{shown}: record {} skipped: {e}", d.counts.read));
            }
        }
        d.counts.bytes += reader.bytes_read();
        for w in reader.warnings() {
            d.warnings.push(format!("{shown}: {w}"));
        }
    }
    counts.add(&d.counts);
    Ok(d.finish(run_id, newest_mtime))
}

impl RunDecoder<'_> {
    fn record(&mut self, rec: &[u8]) -> Result<(), String> {
        let Some((kind, payload)) = peek_record_type(rec).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        if !self.needs.wants(kind) {
            return Ok(());
        }
        let err = |e: prost::DecodeError| e.to_string();
        match kind {
            RecordType::Run => {
                self.counts.decoded_run += 1;
                let mut run = RunRecord::decode(payload).map_err(err)?;
                if let Some(c) = run.config.take().filter(|_| self.needs.config) {
                    self.apply_prost_updates(&c, true);
                }
                if let Some(s) = run.summary.take().filter(|_| self.needs.summary) {
                    self.apply_prost_updates(&s, false);
                }
                if let Some(t) = &run.start_time {
                    self.note_time(timestamp_micros(t));
                }
                self.merge_run(run);
            }
            RecordType::Config => {
                self.counts.decoded_config += 1;
                let tree = &mut self.config;
                update_items(payload, |removal, item| apply_item(tree, removal, &item)).map_err(|e| e.to_string())?;
            }
            RecordType::Summary => {
                self.counts.decoded_summary += 1;
                let tree = &mut self.summary;
                update_items(payload, |removal, item| apply_item(tree, removal, &item)).map_err(|e| e.to_string())?;
            }
            RecordType::History => {
                self.counts.decoded_history += 1;
                let mut items = Vec::new();
                let step = history_items(payload, |item| items.push(item)).map_err(|e| e.to_string())?;
                self.history_row(step, items);
            }
            RecordType::Stats => {
                self.counts.decoded_stats += 1;
                let s = StatsRecord::decode(payload).map_err(err)?;
                if let Some(t) = &s.timestamp {
                    self.note_time(timestamp_micros(t));
                }
            }
            RecordType::Exit => {
                self.counts.decoded_exit += 1;
                self.exit = Some(RunExitRecord::decode(payload).map_err(err)?);
            }
        }
        Ok(())
    }

    /// The first run record gives the identity; a later one (a resumed run)
    /// overrides the fields it sets, except the start time.
    fn merge_run(&mut self, new: RunRecord) {
        let Some(old) = self.run.as_mut() else {
            self.run = Some(new);
            return;
        };
        let keep = |old: &mut String, new: String| {
            if !new.is_empty() {
                *old = new;
            }
        };
        keep(&mut old.run_id, new.run_id);
        keep(&mut old.entity, new.entity);
        keep(&mut old.project, new.project);
        keep(&mut old.display_name, new.display_name);
        keep(&mut old.run_group, new.run_group);
        keep(&mut old.job_type, new.job_type);
        keep(&mut old.notes, new.notes);
        keep(&mut old.host, new.host);
        if !new.tags.is_empty() {
            old.tags = new.tags;
        }
        if let Some(g) = new.git {
            let og = old.git.get_or_insert_with(Default::default);
            keep(&mut og.remote_url, g.remote_url);
            keep(&mut og.commit, g.commit);
        }
        if old.start_time.is_none() {
            old.start_time = new.start_time;
        }
    }

    fn note_time(&mut self, t: Option<i64>) {
        if t.is_some() {
            self.last_time_us = self.last_time_us.max(t);
        }
    }

    /// Config and summary embedded in a run record (rare: prost-decoded).
    fn apply_prost_updates(&mut self, rec: &UpdateRecord, config: bool) {
        let tree = if config { &mut self.config } else { &mut self.summary };
        for (removal, items) in [(false, &rec.update), (true, &rec.remove)] {
            for kv in items {
                let nested: Vec<&str> = kv.nested_key.iter().map(String::as_str).collect();
                let item = ItemRef { key: &kv.key, nested_key: nested, value: RawValue::Json(&kv.value_json) };
                apply_item(tree, removal, &item);
            }
        }
    }

    fn history_row(&mut self, step: Option<i64>, items: Vec<ItemRef<'_>>) {
        let row_index = self.history.rows.len() as u32;
        let mut row = HistoryRow { step: 0, timestamp: None, runtime_s: None };
        let mut step_item = None;
        // Media objects (images, histograms) are written key by key, with a
        // `_type` item: gather each back into one object.
        let media: Vec<&[&str]> = items
            .iter()
            .filter_map(|i| match i.path() {
                [prefix @ .., "_type"] if !prefix.is_empty() => Some(prefix),
                _ => None,
            })
            .collect();
        let mut media_trees: Vec<Tree> = vec![Tree::default(); media.len()];
        for item in &items {
            let path = item.path();
            if let Some(m) = media.iter().position(|p| path.len() > p.len() && path.starts_with(p)) {
                let rest = &path[media[m].len()..];
                match item.value {
                    RawValue::Json(text) => media_trees[m].set_raw(rest, text),
                    other => media_trees[m].set(rest, raw_to_value(other, path, &mut self.warnings)),
                }
                continue;
            }
            match path {
                ["_step"] => step_item = raw_to_value(item.value, path, &mut self.warnings).as_f64(),
                ["_timestamp"] => {
                    row.timestamp =
                        raw_to_value(item.value, path, &mut self.warnings).as_f64().and_then(seconds_to_micros)
                }
                ["_runtime"] => row.runtime_s = raw_to_value(item.value, path, &mut self.warnings).as_f64(),
                _ if self.plan.history => {
                    let value = raw_to_value(item.value, path, &mut self.warnings);
                    self.push_point(row_index, path, value);
                }
                _ => {}
            }
        }
        for (prefix, tree) in media.iter().zip(media_trees) {
            if self.plan.history {
                let shown = encode_path(prefix);
                let value = tree.to_value(&mut |w| self.warnings.push(w), &shown);
                self.push_point(row_index, prefix, value);
            }
        }
        row.step = match (step, step_item) {
            (Some(s), _) => s,
            (None, Some(f)) => f as i64,
            (None, None) => self.history.rows.last().map_or(0, |r| r.step + 1),
        };
        self.note_time(row.timestamp);
        if row.runtime_s.is_some() {
            self.last_runtime = row.runtime_s;
        }
        if self.plan.history {
            self.history.rows.push(row);
        }
    }

    /// Adds a value at `path`, flattening objects from older writers.
    fn push_point(&mut self, row: u32, path: &[&str], value: Value) {
        // The common case: a flat key that needs no escaping.
        if let ([segment], false) = (path, matches!(value, Value::Object(_)))
            && !segment.contains(['.', '\\'])
        {
            if let Some(id) = self.key_id(segment) {
                self.history.points.push(HistoryPoint { row, key: id, value });
            }
            return;
        }
        let prefix = encode_path(path);
        let mut leaves = Vec::new();
        flatten(&prefix, &value, &mut |p, leaf| leaves.push((p.to_string(), leaf.clone())));
        for (key, leaf) in leaves {
            if let Some(id) = self.key_id(&key) {
                self.history.points.push(HistoryPoint { row, key: id, value: leaf });
            }
        }
    }

    /// The interned id of a key, or `None` when the selection excludes it.
    fn key_id(&mut self, key: &str) -> Option<u32> {
        let id = match self.key_ids.get(key) {
            Some(id) => *id,
            None => {
                let id = if self.plan.wants_history_key(key) {
                    self.history.keys.push(key.to_string());
                    (self.history.keys.len() - 1) as u32
                } else {
                    EXCLUDED
                };
                self.key_ids.insert(key.to_string(), id);
                id
            }
        };
        (id != EXCLUDED).then_some(id)
    }

    fn finish(mut self, run_id: &str, mtime: Option<SystemTime>) -> RunData {
        let run = self.run.take().unwrap_or_default();
        if run.run_id.is_empty() {
            self.warnings.push("no run record: identity columns are empty".to_string());
        }
        let nonempty = |s: String| if s.is_empty() { None } else { Some(s) };
        let created_at = run.start_time.as_ref().and_then(timestamp_micros);
        let state = match &self.exit {
            Some(e) if e.exit_code == 0 => "finished",
            Some(_) => "failed",
            None => {
                let live =
                    mtime.and_then(|m| SystemTime::now().duration_since(m).ok()).is_some_and(|age| age < LIVE_WINDOW);
                if live { "running" } else { "crashed" }
            }
        };
        let git = run.git.unwrap_or_default();
        let identity = RunIdentity {
            source: "wandb".to_string(),
            entity: nonempty(run.entity),
            project: nonempty(run.project),
            run_id: if run.run_id.is_empty() { run_id.to_string() } else { run.run_id },
            name: nonempty(run.display_name),
            state: Some(state.to_string()),
            created_at,
            updated_at: self.last_time_us,
            runtime_s: self.exit.as_ref().map(|e| f64::from(e.runtime)).or(self.last_runtime),
            exit_code: self.exit.as_ref().map(|e| i64::from(e.exit_code)),
            group: nonempty(run.run_group),
            job_type: nonempty(run.job_type),
            tags: run.tags,
            notes: nonempty(run.notes),
            host: nonempty(run.host),
            git_remote: nonempty(git.remote_url),
            git_commit: nonempty(git.commit),
            ..Default::default()
        };
        let plan = self.plan;
        let warnings = &mut self.warnings;
        let mut config = Vec::new();
        if plan.config {
            let keep = &mut |p: &str| plan.wants_column("config.", p);
            self.config.flatten_into(&["_wandb"], keep, &mut |w| warnings.push(format!("config: {w}")), &mut config);
        }
        let mut summary = Vec::new();
        if plan.summary {
            let keep = &mut |p: &str| plan.wants_column("summary.", p);
            self.summary.flatten_into(&["_wandb"], keep, &mut |w| warnings.push(format!("summary: {w}")), &mut summary);
        }
        RunData {
            identity,
            groups: vec![("config.", config), ("summary.", summary)],
            history: plan.history.then_some(self.history),
            warnings: self.warnings,
        }
    }
}

/// Applies one config or summary item to its tree.
fn apply_item(tree: &mut Tree, removal: bool, item: &ItemRef<'_>) {
    if removal {
        tree.remove(item.path());
    } else if let RawValue::Json(text) = item.value {
        tree.set_raw(item.path(), text);
    }
}

/// A history value as a [`Value`]; JSON text that does not parse is kept as a string.
fn raw_to_value(raw: RawValue<'_>, path: &[&str], warnings: &mut Vec<String>) -> Value {
    match raw {
        RawValue::Null => Value::Null,
        RawValue::Bool(b) => Value::Bool(b),
        RawValue::Int(i) => Value::Int(i),
        RawValue::Number(f) => Value::Float(f),
        RawValue::Text(s) => Value::Str(s.to_string()),
        RawValue::Json(text) => {
            parse_or_keep(text, &encode_path(path), &mut |w| warnings.push(format!("history: {w}")))
        }
    }
}

fn timestamp_micros(t: &Timestamp) -> Option<i64> {
    t.seconds.checked_mul(1_000_000)?.checked_add(i64::from(t.nanos) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{HistoryLayout, WANDB_IDENTITY_COLUMNS};
    use crate::selection::Selection;
    use crate::sources::wandb_files::log_reader::encode_log;
    use crate::sources::wandb_files::records::{
        HistoryItem, HistoryRecord, HistoryStep, KeyedValue, TypedValue, UpdateRecord,
    };

    fn envelope(field: u32, msg: &impl Message) -> Vec<u8> {
        let mut buf = Vec::new();
        prost::encoding::message::encode(field, msg, &mut buf);
        buf
    }

    fn item(key: &str, nested: &[&str], typed: Option<TypedValue>, json: &str) -> HistoryItem {
        HistoryItem {
            key: key.into(),
            nested_key: nested.iter().map(|s| s.to_string()).collect(),
            typed,
            value_json: json.into(),
        }
    }

    fn write_log(records: &[Vec<u8>]) -> tempfile::NamedTempFile {
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), encode_log(&refs)).unwrap();
        f
    }

    fn decode(records: &[Vec<u8>], select: Option<&str>) -> (RunData, RecordCounts) {
        let f = write_log(records);
        let sel = select.map_or_else(Selection::all, |s| {
            Selection::parse(s, WANDB_IDENTITY_COLUMNS, crate::plan::WANDB_PREFIXES).unwrap()
        });
        let plan = FetchPlan::new(sel, HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let mut counts = RecordCounts::default();
        let run = decode_run("fallback", &[f.path()], &plan, &mut counts).unwrap();
        (run, counts)
    }

    fn points(run: &RunData) -> Vec<(i64, String, String)> {
        let h = run.history.as_ref().unwrap();
        h.points
            .iter()
            .map(|p| (h.rows[p.row as usize].step, h.keys[p.key as usize].clone(), p.value.to_json()))
            .collect()
    }

    #[test]
    fn legacy_object_values_typed_values_and_steps() {
        let rec = HistoryRecord {
            item: vec![
                // An older writer: one key holding an object.
                item("legacy", &[], None, r#"{"a": 1, "b": {"c": 2.5}}"#),
                // A newer writer: typed values.
                item("n", &[], Some(TypedValue::Integer(7)), ""),
                item("t", &[], Some(TypedValue::Text("x".into())), ""),
                item("j", &[], Some(TypedValue::Json("[1, NaN]".into())), ""),
                item("_timestamp", &[], None, "1700000000.25"),
                item("_step", &[], None, "9"),
            ],
            step: None,
        };
        let with_step = HistoryRecord {
            item: vec![item("", &["nest", "x"], None, "Infinity"), item("bad", &[], None, "{oops")],
            step: Some(HistoryStep { num: 12 }),
        };
        let (run, _) = decode(&[envelope(2, &rec), envelope(2, &with_step)], None);
        assert_eq!(
            points(&run),
            [
                (9, "legacy.a", "1"),
                (9, "legacy.b.c", "2.5"),
                (9, "n", "7"),
                (9, "t", "\"x\""),
                (9, "j", "[1,\"NaN\"]"),
                (12, "nest.x", "\"Infinity\""),
                (12, "bad", "\"{oops\""),
            ]
            .map(|(s, k, v)| (s, k.to_string(), v.to_string()))
        );
        let h = run.history.as_ref().unwrap();
        assert_eq!(h.rows[0].timestamp, Some(1_700_000_000_250_000));
        assert_eq!(run.warnings.len(), 2, "{:?}", run.warnings);
        assert!(run.warnings[0].contains("value at bad is not valid JSON"), "{:?}", run.warnings);
        assert!(run.warnings[1].contains("no run record"), "{:?}", run.warnings);
        assert_eq!(run.identity.run_id, "fallback", "the id from the file name");
        assert_eq!(run.identity.state.as_deref(), Some("running"), "fresh file without exit record");
    }

    #[test]
    fn config_summary_and_identity_from_records() {
        let run = RunRecord {
            run_id: "r1".into(),
            display_name: "first".into(),
            tags: vec!["a".into()],
            config: Some(UpdateRecord {
                update: vec![KeyedValue { key: "opt".into(), nested_key: vec![], value_json: r#"{"lr": 0.1}"#.into() }],
                remove: vec![],
            }),
            ..Default::default()
        };
        let resumed = RunRecord { run_id: "r1".into(), display_name: "second".into(), ..Default::default() };
        let summary = UpdateRecord {
            update: vec![
                KeyedValue { key: String::new(), nested_key: vec!["m".into(), "x".into()], value_json: "1".into() },
                KeyedValue { key: "gone".into(), nested_key: vec![], value_json: "2".into() },
            ],
            remove: vec![KeyedValue { key: "gone".into(), nested_key: vec![], value_json: String::new() }],
        };
        let config = UpdateRecord {
            update: vec![KeyedValue {
                key: String::new(),
                nested_key: vec!["opt".into(), "lr".into()],
                value_json: "0.2".into(),
            }],
            remove: vec![],
        };
        let exit = RunExitRecord { exit_code: 2, runtime: 5 };
        let records = [
            envelope(17, &run),
            envelope(3, &summary),
            envelope(5, &config),
            envelope(17, &resumed),
            envelope(18, &exit),
        ];
        let (data, counts) = decode(&records, None);
        assert_eq!(data.identity.run_id, "r1");
        assert_eq!(data.identity.name.as_deref(), Some("second"), "a resumed run's record overrides");
        assert_eq!(data.identity.tags, ["a"]);
        assert_eq!(data.identity.state.as_deref(), Some("failed"));
        assert_eq!(data.identity.exit_code, Some(2));
        assert_eq!(data.identity.runtime_s, Some(5.0));
        assert_eq!(data.group("config."), [("opt.lr".to_string(), Value::Float(0.2))]);
        assert_eq!(data.group("summary."), [("m.x".to_string(), Value::Int(1))]);
        assert_eq!(
            (counts.decoded_run, counts.decoded_summary, counts.decoded_config, counts.decoded_exit),
            (2, 1, 1, 1)
        );

        // Selecting name,state decodes neither config nor summary records.
        let (data, counts) = decode(&records, Some("name,state"));
        assert!(data.group("config.").is_empty() && data.group("summary.").is_empty() && data.history.is_none());
        assert_eq!((counts.decoded_summary, counts.decoded_config, counts.decoded_history), (0, 0, 0));
        assert_eq!(counts.read, 5);
    }
}
