//! Rebuilding one run from its transaction log(s): identity, config, summary,
//! history, exit. Only the record types the plan needs are decoded.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, SystemTime};

use prost::Message;
use serde::Serialize;
use smallvec::SmallVec;

use super::log_reader::{LogError, TransactionLogReader};
use super::records::{EnvelopeError, MAX_KEY_DEPTH};
use super::records::{
    RecordType, RunExitRecord, RunRecord, StatsRecord, StatsSamples, Timestamp, UpdateRecord, peek_record_type,
};
use super::tree::{Tree, parse_or_keep};
use super::wire::{ItemRef, RawBytes, RawItem, RawValue, history_items_raw, update_items_raw};
use crate::columns::{encode_path, flatten};
use crate::pipeline::HistorySink;
use crate::plan::FetchPlan;
use crate::run::{
    HistoryMark, HistoryPoint, HistoryRow, RunData, RunHistory, RunIdentity, SystemSamples, seconds_to_micros,
};
use crate::sources::SyncMark;
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
            stats: id("updated_at") || plan.system,
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
    #[error("{path}: record {record}: {reason}")]
    Record { path: String, record: u64, reason: String },
    #[error("{path}: history up to record {record} could not be handed over: {reason}")]
    History { path: String, record: u64, reason: String },
    /// Reading only the history after an earlier read's end is not the
    /// whole read: the run is read whole instead.
    #[error("{path}: the log did not grow by appending: {reason}")]
    NotAppended { path: String, reason: String },
}

/// Warnings kept per run: past these, only their number (a run damaged in
/// every row must not hold a message per row).
pub const MAX_RUN_WARNINGS: usize = 100;

/// A run's warnings: the first [`MAX_RUN_WARNINGS`], and how many more there were.
#[derive(Debug, Default)]
pub struct RunWarnings {
    kept: Vec<String>,
    more: u64,
}

impl RunWarnings {
    pub fn push(&mut self, w: String) {
        if self.kept.len() < MAX_RUN_WARNINGS {
            self.kept.push(w);
        } else {
            self.more += 1;
        }
    }

    pub fn into_vec(mut self) -> Vec<String> {
        if self.more > 0 {
            self.kept.push(format!("{} more warnings of this run were not kept", self.more));
        }
        self.kept
    }
}

/// History items of one record kept on the stack: the SDK writes the
/// logged keys plus `_step`, `_timestamp` and `_runtime`.
type RowItems<'a> = SmallVec<[RawItem<'a>; 32]>;

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
    /// What raw keys resolved to, per record type (see [`Slots`]).
    config_slots: Slots<usize>,
    summary_slots: Slots<usize>,
    history_slots: Slots<u32>,
    last_time_us: Option<i64>,
    last_runtime: Option<f64>,
    /// The step of the last history row (rows are handed over in chunks:
    /// `history.rows` holds only the current chunk's).
    last_step: Option<i64>,
    exit: Option<RunExitRecord>,
    /// System metrics (stats records), when the plan selects them.
    system: SystemSamples,
    warnings: RunWarnings,
    counts: RecordCounts,
    /// History records met (decoded or passed over).
    history_records: i64,
    /// Where each log's complete records ended.
    log_ends: Vec<u64>,
    /// Decoding a history record for the run's state only (its step, time
    /// and runtime), not for rows: one an earlier read turned into rows.
    state_only: bool,
    /// The first row decoded must have a step at least this (the last step
    /// of the rows an earlier read gave), or the later rows are not an append.
    check_from: Option<i64>,
    not_appended: Option<String>,
}

/// Reads a run from its log files (several when the run was resumed, in
/// order), handing its history to `sink` in chunks of whole rows (a row is
/// one history record); the last chunk is left in the run's `history`.
pub fn decode_run(
    run_id: &str,
    files: &[impl AsRef<Path>],
    plan: &FetchPlan,
    counts: &mut RecordCounts,
    sink: &mut HistorySink,
) -> Result<RunData, DecodeError> {
    decode_run_from(run_id, files, plan, None, counts, sink)
}

/// [`decode_run`], for `runport sync`: with `from`, where a table's earlier
/// read of the run stopped, the history records before it are passed over
/// (logs are only appended to) and only the later ones become rows, the
/// run's `history_mark` saying so. Anything but an append (a log replaced
/// or shortened, a new log, history added to a log before the last, a step
/// before the table's last) reads the run whole. Either way the mark holds
/// where each log's complete records end, for the next sync.
pub fn decode_run_from(
    run_id: &str,
    files: &[impl AsRef<Path>],
    plan: &FetchPlan,
    from: Option<&SyncMark>,
    counts: &mut RecordCounts,
    sink: &mut HistorySink,
) -> Result<RunData, DecodeError> {
    if let Some(mark) = from.filter(|m| plan.history && !m.offsets.is_empty() && m.offsets.len() == files.len()) {
        // Nothing reaches `sink` before the first later row, which is checked
        // before it is handed over: a read that turns out not to be an
        // append leaves `sink` as it was.
        match read_logs(run_id, files, plan, Some(mark), counts, sink) {
            Err(DecodeError::NotAppended { path, reason }) => {
                tracing::debug!(run = run_id, path, reason, "history read whole");
            }
            done => return done,
        }
    }
    read_logs(run_id, files, plan, None, counts, sink)
}

fn read_logs(
    run_id: &str,
    files: &[impl AsRef<Path>],
    plan: &FetchPlan,
    from: Option<&SyncMark>,
    counts: &mut RecordCounts,
    sink: &mut HistorySink,
) -> Result<RunData, DecodeError> {
    let mut d = RunDecoder::new(plan, RecordNeeds::from_plan(plan));
    let mut gate = from.map(Continuing::new);
    d.check_from = from.map(|m| m.step);
    let mut newest_mtime = None;
    for (i, path) in files.iter().enumerate() {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|source| DecodeError::Open { path: shown.clone(), source })?;
        let meta = file.metadata().ok();
        newest_mtime = newest_mtime.max(meta.as_ref().and_then(|m| m.modified().ok()));
        // Each log holds its own exit record; a resumed run's state is its last log's.
        d.exit = None;
        if let Some(g) = gate.as_mut() {
            g.enter(i, files.len());
        }
        if d.needs.history && meta.is_some_and(|m| pipelined(m.len())) {
            d.read_pipelined(file, &shown, sink, gate.as_mut())?;
            continue;
        }
        let mut reader =
            TransactionLogReader::new(file).map_err(|source| DecodeError::Log { path: shown.clone(), source })?;
        loop {
            let (rec, at) = match reader.next_record_at() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(source) => {
                    return Err(DecodeError::Log { path: shown, source });
                }
            };
            d.counts.read += 1;
            let peeked = peek_record_type(rec);
            if let Ok(Some((RecordType::History, _))) = peeked {
                d.history_records += 1;
                if let Some(g) = gate.as_mut() {
                    match g.admit(d.counts.read, rec, &at).map_err(|reason| not_appended(&shown, reason))? {
                        Pass::Skip => continue,
                        Pass::Decode(Some((number, stash))) => d.state_record(number, &stash, &shown)?,
                        Pass::Decode(None) => {}
                    }
                }
            }
            let done = d.record_peeked(peeked);
            d.after_record(done, &shown)?;
            // Between records, so between rows.
            d.flush(sink, &shown)?;
        }
        if let Some((number, stash)) = gate.as_mut().and_then(Continuing::end_log) {
            d.state_record(number, &stash, &shown)?;
        }
        d.log_ends.push(reader.record_end());
        d.counts.bytes += reader.bytes_read();
        for w in reader.warnings() {
            d.warnings.push(format!("{shown}: {w}"));
        }
    }
    if let Some(g) = &gate {
        let last = files.last().map(|p| p.as_ref().display().to_string()).unwrap_or_default();
        g.finish().map_err(|reason| not_appended(&last, reason))?;
    }
    counts.add(&d.counts);
    let mark = HistoryMark {
        from_step: from.map(|m| m.step),
        lines: Some(d.history_records),
        offsets: std::mem::take(&mut d.log_ends),
        metric_files: Default::default(),
    };
    let mut data = d.finish(run_id, newest_mtime);
    if plan.history {
        data.history_mark = Some(mark);
    }
    Ok(data)
}

/// Whether the log at `path` ends with an exit record (the SDK writes it
/// last, when the run ends), from its last two blocks.
pub fn ends_with_exit(path: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else { return false };
    let Ok(len) = file.metadata().map(|m| m.len()) else { return false };
    let block = super::log_reader::BLOCK_SIZE as u64;
    let from = (len.saturating_sub(1) / block).saturating_sub(1) * block;
    let mut last: Option<Vec<u8>> = None;
    let mut keep = |reader: &mut dyn FnMut() -> Result<Option<Vec<u8>>, LogError>| {
        while let Ok(Some(rec)) = reader() {
            last = Some(rec);
        }
    };
    if from == 0 {
        let Ok(mut r) = TransactionLogReader::new(file) else { return false };
        keep(&mut || r.next_record().map(|o| o.map(<[u8]>::to_vec)));
    } else {
        if file.seek(SeekFrom::Start(from)).is_err() {
            return false;
        }
        let Ok(mut r) = TransactionLogReader::at_block(file, from) else { return false };
        keep(&mut || r.next_record().map(|o| o.map(<[u8]>::to_vec)));
    }
    last.is_some_and(|rec| matches!(peek_record_type(&rec), Ok(Some((RecordType::Exit, _)))))
}

fn not_appended(path: &str, reason: String) -> DecodeError {
    DecodeError::NotAppended { path: path.to_string(), reason }
}

/// A sync's earlier read of a run (its [`SyncMark`]): the history records
/// that start before where each log's complete records then ended are the
/// table's rows already; only those after it, in the run's last log, are
/// decoded into rows.
struct Continuing<'m> {
    mark: &'m SyncMark,
    /// The current log's offset from the mark, and whether it is the run's last log.
    offset: u64,
    last: bool,
    /// History records passed over so far.
    skipped: i64,
    /// Whether a later history record was met.
    reached: bool,
    /// The current log's last history record passed over, with its number,
    /// to be decoded for the run's state (step, time, runtime).
    stashed: Option<(u64, Vec<u8>)>,
}

/// What to do with a history record ([`Continuing::admit`]).
enum Pass {
    /// Passed over: its rows are the table's (kept, for the run's state).
    Skip,
    /// Decoded into rows, after the log's last record passed over, when
    /// there is one (its number and bytes), is decoded for the run's state.
    Decode(Option<(u64, Vec<u8>)>),
}

impl<'m> Continuing<'m> {
    fn new(mark: &'m SyncMark) -> Self {
        Continuing { mark, offset: 0, last: false, skipped: 0, reached: false, stashed: None }
    }

    fn enter(&mut self, log: usize, logs: usize) {
        self.offset = self.mark.offsets.get(log).copied().unwrap_or(0);
        self.last = log + 1 == logs;
    }

    /// What to do with the history record `rec`, number `number` of the
    /// run, at `at` in its log.
    fn admit(&mut self, number: u64, rec: &[u8], at: &std::ops::Range<u64>) -> Result<Pass, String> {
        if at.start < self.offset {
            if at.end > self.offset {
                return Err(format!(
                    "the record at byte {} runs past byte {}, where the earlier read ended",
                    at.start, self.offset
                ));
            }
            self.skipped += 1;
            let (n, buf) = self.stashed.get_or_insert_with(|| (0, Vec::new()));
            *n = number;
            buf.clear();
            buf.extend_from_slice(rec);
            return Ok(Pass::Skip);
        }
        if !self.last {
            return Err(format!("history was added after byte {} of a log before the run's last", self.offset));
        }
        if !self.reached {
            self.reached = true;
            self.check_count()?;
        }
        Ok(Pass::Decode(self.stashed.take()))
    }

    /// At the end of a log: its last record passed over, still to be
    /// decoded for the run's state.
    fn end_log(&mut self) -> Option<(u64, Vec<u8>)> {
        self.stashed.take()
    }

    fn check_count(&self) -> Result<(), String> {
        if self.skipped == self.mark.lines {
            return Ok(());
        }
        Err(format!(
            "{} history records lie before where the earlier read ended, which had {}",
            self.skipped, self.mark.lines
        ))
    }

    /// After the last log: the history records passed over must be the earlier read's.
    fn finish(&self) -> Result<(), String> {
        if self.reached { Ok(()) } else { self.check_count() }
    }
}

/// Logs at least this large are read on two threads ([`RunDecoder::read_pipelined`]).
pub const PIPELINED_FILE_BYTES: u64 = 16 << 20;

#[cfg(test)]
thread_local! {
    /// Tests read small logs on two threads too.
    static PIPELINE_FROM: std::cell::Cell<u64> = const { std::cell::Cell::new(PIPELINED_FILE_BYTES) };
}

/// Whether a log of `len` bytes is read on two threads.
fn pipelined(len: u64) -> bool {
    #[cfg(test)]
    return len >= PIPELINE_FROM.get();
    #[cfg(not(test))]
    return len >= PIPELINED_FILE_BYTES;
}

/// Bytes of history records in one batch handed between the threads.
const HISTORY_BATCH_BYTES: usize = 256 << 10;

/// History records read by the reading thread: their bytes, and each
/// record's number in the log, place in `buf`, and whether it is decoded
/// for the run's state only ([`RunDecoder::state_only`]).
#[derive(Default)]
struct HistoryBatch {
    buf: Vec<u8>,
    records: Vec<(u64, std::ops::Range<usize>, bool)>,
}

impl HistoryBatch {
    fn push(&mut self, number: u64, rec: &[u8], state_only: bool) {
        let start = self.buf.len();
        self.buf.extend_from_slice(rec);
        self.records.push((number, start..self.buf.len(), state_only));
    }
}

/// A record that could not be read: skipped with a warning, or the end of
/// its run (input no writer makes, such as keys nested past [`MAX_KEY_DEPTH`]).
enum RecordError {
    Skipped(String),
    Fatal(String),
}

impl From<EnvelopeError> for RecordError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::KeyTooDeep | EnvelopeError::TooManyRows => RecordError::Fatal(e.to_string()),
            e => RecordError::Skipped(e.to_string()),
        }
    }
}

impl From<prost::DecodeError> for RecordError {
    fn from(e: prost::DecodeError) -> Self {
        RecordError::Skipped(e.to_string())
    }
}

impl<'p> RunDecoder<'p> {
    fn new(plan: &'p FetchPlan, needs: RecordNeeds) -> Self {
        RunDecoder {
            plan,
            needs,
            run: None,
            config: Tree::default(),
            summary: Tree::default(),
            history: RunHistory::default(),
            key_ids: HashMap::new(),
            config_slots: Slots::default(),
            summary_slots: Slots::default(),
            history_slots: Slots::default(),
            last_time_us: None,
            last_runtime: None,
            last_step: None,
            exit: None,
            system: SystemSamples::new(plan.system_budget.clone()),
            warnings: RunWarnings::default(),
            counts: RecordCounts::default(),
            history_records: 0,
            log_ends: Vec::new(),
            state_only: false,
            check_from: None,
            not_appended: None,
        }
    }

    /// Whether history rows are built (not in [`Self::state_only`] records).
    fn keeps_rows(&self) -> bool {
        self.plan.history && !self.state_only
    }

    /// Decodes a history record passed over for the run's state only.
    fn state_record(&mut self, number: u64, rec: &[u8], shown: &str) -> Result<(), DecodeError> {
        let read = std::mem::replace(&mut self.counts.read, number);
        self.state_only = true;
        let done = self.record(rec);
        self.state_only = false;
        let done = self.after_record(done, shown);
        self.counts.read = read;
        done
    }

    fn record(&mut self, rec: &[u8]) -> Result<(), RecordError> {
        self.record_peeked(peek_record_type(rec))
    }

    /// [`Self::record`] of a record whose type was peeked already.
    fn record_peeked(&mut self, peeked: Result<Option<(RecordType, &[u8])>, EnvelopeError>) -> Result<(), RecordError> {
        let Some((kind, payload)) = peeked? else {
            return Ok(());
        };
        if !self.needs.wants(kind) {
            return Ok(());
        }
        match kind {
            RecordType::Run => {
                self.counts.decoded_run += 1;
                let mut run = RunRecord::decode(payload)?;
                if let Some(c) = run.config.take().filter(|_| self.needs.config) {
                    self.apply_prost_updates(&c, true)?;
                    self.config_slots.clear();
                }
                if let Some(s) = run.summary.take().filter(|_| self.needs.summary) {
                    self.apply_prost_updates(&s, false)?;
                    self.summary_slots.clear();
                }
                if let Some(t) = &run.start_time {
                    self.note_time(timestamp_micros(t));
                }
                self.merge_run(run);
            }
            RecordType::Config => {
                self.counts.decoded_config += 1;
                apply_updates(&mut self.config, &mut self.config_slots, payload)?;
            }
            RecordType::Summary => {
                self.counts.decoded_summary += 1;
                apply_updates(&mut self.summary, &mut self.summary_slots, payload)?;
            }
            RecordType::History => {
                self.counts.decoded_history += 1;
                let mut items = RowItems::new();
                let step = history_items_raw(payload, |item| items.push(item))?;
                if items.iter().all(|i| i.single_segment().is_some()) {
                    let kept = self.history.points.len();
                    if let Err(e) = self.flat_history_row(step, &items) {
                        // The row is skipped whole.
                        self.history.points.truncate(kept);
                        return Err(e.into());
                    }
                } else {
                    let items = items.iter().map(RawItem::validate).collect::<Result<Vec<_>, _>>()?;
                    self.history_row(step, items)?;
                }
            }
            RecordType::Stats => {
                self.counts.decoded_stats += 1;
                // The items only when system metrics are selected.
                let timestamp = if self.plan.system {
                    let s = StatsSamples::decode(payload)?;
                    self.system_samples(&s);
                    s.timestamp
                } else {
                    StatsRecord::decode(payload)?.timestamp
                };
                if let Some(t) = &timestamp {
                    self.note_time(timestamp_micros(t));
                }
            }
            RecordType::Exit => {
                self.counts.decoded_exit += 1;
                self.exit = Some(RunExitRecord::decode(payload)?);
            }
        }
        Ok(())
    }

    /// The selected items of a stats record, one sample each. The time is
    /// the record's seconds and nanoseconds as one float of seconds, as the
    /// W&B API gives it back (`_timestamp`), so both sources give the same
    /// microseconds.
    fn system_samples(&mut self, s: &StatsSamples) {
        let timestamp = s.timestamp.as_ref().and_then(|t| seconds_to_micros(t.seconds as f64 + t.nanos as f64 / 1e9));
        for item in &s.item {
            if !self.plan.wants_system_key(&item.key) {
                continue;
            }
            let value = Value::parse(&item.value_json).ok().and_then(|v| v.as_f64());
            self.system.push(&item.key, timestamp, value);
        }
    }

    /// A warning when a record was skipped; the end of the run when it
    /// cannot go on.
    fn after_record(&mut self, done: Result<(), RecordError>, shown: &str) -> Result<(), DecodeError> {
        if let Some(reason) = self.not_appended.take() {
            return Err(not_appended(shown, reason));
        }
        match done {
            Ok(()) => Ok(()),
            Err(RecordError::Skipped(e)) => {
                self.warnings.push(format!("{shown}: record {} skipped: {e}", self.counts.read));
                Ok(())
            }
            Err(RecordError::Fatal(reason)) => {
                Err(DecodeError::Record { path: shown.to_string(), record: self.counts.read, reason })
            }
        }
    }

    /// Hands the history to `sink` when it holds a chunk's worth.
    fn flush(&mut self, sink: &mut HistorySink, shown: &str) -> Result<(), DecodeError> {
        sink.flush_if_full(&mut self.history).map_err(|reason| DecodeError::History {
            path: shown.to_string(),
            record: self.counts.read,
            reason,
        })
    }

    /// Reads a large log on two threads: a reading thread frames the
    /// records and decodes all but the history records (run, config,
    /// summary, stats, exit: the state they build moves there and back),
    /// handing the history records, in order and with their numbers, to
    /// this thread, which builds the history. A large run's file is then
    /// read on two cores. The result is the sequential read's, but for the
    /// order of warnings: those of history records come after the others'.
    fn read_pipelined(
        &mut self,
        file: File,
        shown: &str,
        sink: &mut HistorySink,
        gate: Option<&mut Continuing<'_>>,
    ) -> Result<(), DecodeError> {
        let plan = self.plan;
        let mut other = RunDecoder::new(plan, RecordNeeds { history: false, ..self.needs });
        other.run = self.run.take();
        other.config = std::mem::take(&mut self.config);
        other.summary = std::mem::take(&mut self.summary);
        other.config_slots = std::mem::take(&mut self.config_slots);
        other.summary_slots = std::mem::take(&mut self.summary_slots);
        other.last_time_us = self.last_time_us;
        other.system = std::mem::take(&mut self.system);
        other.counts.read = self.counts.read;
        let read_shown = shown.to_string();
        let other = std::thread::scope(|scope| {
            let (tx, rx) = crossbeam_channel::bounded::<HistoryBatch>(2);
            let reader = std::thread::Builder::new()
                .name("runport-wandb-read".into())
                .spawn_scoped(scope, move || other.read_all_but_history(file, &read_shown, &tx, gate).map(|()| other))
                .map_err(|e| DecodeError::History {
                    path: shown.to_string(),
                    record: 0,
                    reason: format!("cannot start a thread to read the file: {e}"),
                })?;
            let mut built = Ok(());
            'batches: for batch in rx {
                for (number, range, state_only) in &batch.records {
                    self.counts.read = *number;
                    self.state_only = *state_only;
                    let done = self.record(&batch.buf[range.clone()]);
                    self.state_only = false;
                    built = self.after_record(done, shown).and_then(|()| self.flush(sink, shown));
                    if built.is_err() {
                        // The reading thread stops at its next batch.
                        break 'batches;
                    }
                }
            }
            let other = match reader.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            };
            // This thread's error comes first: it is of an earlier record.
            built?;
            other
        })?;
        self.run = other.run;
        self.config = other.config;
        self.summary = other.summary;
        self.config_slots = other.config_slots;
        self.summary_slots = other.summary_slots;
        self.exit = other.exit;
        self.system = other.system;
        self.last_time_us = self.last_time_us.max(other.last_time_us);
        let c = other.counts;
        self.counts.read = c.read;
        self.counts.decoded_run += c.decoded_run;
        self.counts.decoded_config += c.decoded_config;
        self.counts.decoded_summary += c.decoded_summary;
        self.counts.decoded_stats += c.decoded_stats;
        self.counts.decoded_exit += c.decoded_exit;
        self.counts.bytes += c.bytes;
        self.history_records += other.history_records;
        self.log_ends.extend(other.log_ends);
        self.warnings.kept.extend(other.warnings.kept);
        while self.warnings.kept.len() > MAX_RUN_WARNINGS {
            self.warnings.kept.pop();
            self.warnings.more += 1;
        }
        self.warnings.more += other.warnings.more;
        Ok(())
    }

    /// The reading thread of [`RunDecoder::read_pipelined`]: decodes the
    /// records that are not history and sends the history records to `tx`.
    fn read_all_but_history(
        &mut self,
        file: File,
        shown: &str,
        tx: &crossbeam_channel::Sender<HistoryBatch>,
        mut gate: Option<&mut Continuing<'_>>,
    ) -> Result<(), DecodeError> {
        let mut reader =
            TransactionLogReader::new(file).map_err(|source| DecodeError::Log { path: shown.to_string(), source })?;
        let mut batch = HistoryBatch::default();
        loop {
            let (rec, at) = match reader.next_record_at() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(source) => {
                    let _ = tx.send(batch);
                    return Err(DecodeError::Log { path: shown.to_string(), source });
                }
            };
            self.counts.read += 1;
            let peeked = peek_record_type(rec);
            if let Ok(Some((RecordType::History, _))) = peeked {
                self.history_records += 1;
                if let Some(g) = gate.as_deref_mut() {
                    match g.admit(self.counts.read, rec, &at) {
                        Ok(Pass::Skip) => continue,
                        Ok(Pass::Decode(Some((number, stash)))) => batch.push(number, &stash, true),
                        Ok(Pass::Decode(None)) => {}
                        Err(reason) => {
                            let _ = tx.send(batch);
                            return Err(not_appended(shown, reason));
                        }
                    }
                }
                batch.push(self.counts.read, rec, false);
                if batch.buf.len() >= HISTORY_BATCH_BYTES && tx.send(std::mem::take(&mut batch)).is_err() {
                    // The history thread stopped on an error of its own.
                    return Ok(());
                }
                continue;
            }
            let done = self.record_peeked(peeked);
            if let Err(e) = self.after_record(done, shown) {
                let _ = tx.send(batch);
                return Err(e);
            }
        }
        if let Some((number, stash)) = gate.and_then(Continuing::end_log) {
            batch.push(number, &stash, true);
        }
        let _ = tx.send(batch);
        self.log_ends.push(reader.record_end());
        self.counts.bytes += reader.bytes_read();
        for w in reader.warnings() {
            self.warnings.push(format!("{shown}: {w}"));
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
    fn apply_prost_updates(&mut self, rec: &UpdateRecord, config: bool) -> Result<(), EnvelopeError> {
        let tree = if config { &mut self.config } else { &mut self.summary };
        if rec.update.iter().chain(&rec.remove).any(|kv| kv.nested_key.len() > MAX_KEY_DEPTH) {
            return Err(EnvelopeError::KeyTooDeep);
        }
        for (removal, items) in [(false, &rec.update), (true, &rec.remove)] {
            for kv in items {
                let nested: Vec<&str> = kv.nested_key.iter().map(String::as_str).collect();
                let item = ItemRef { key: &kv.key, nested_key: nested, value: RawValue::Json(&kv.value_json) };
                apply_item(tree, removal, &item);
            }
        }
        Ok(())
    }

    /// A history row whose keys all have one segment (what the SDK writes
    /// for `run.log({"loss": ...})`): keys are resolved through the slot
    /// cache, so text seen at the same position before is neither checked
    /// nor hashed again.
    fn flat_history_row(&mut self, step: Option<i64>, items: &[RawItem<'_>]) -> Result<(), EnvelopeError> {
        let row_index = self.next_row_index()?;
        let mut row = HistoryRow { step: 0, timestamp: None, runtime_s: None };
        let mut step_item = None;
        for item in items {
            let segment = item.single_segment().expect("invariant: checked by the caller");
            match segment {
                b"_step" => step_item = self.raw_value(item.value, segment)?.as_f64(),
                b"_timestamp" => {
                    row.timestamp = self.raw_value(item.value, segment)?.as_f64().and_then(seconds_to_micros)
                }
                b"_runtime" => row.runtime_s = self.raw_value(item.value, segment)?.as_f64(),
                _ if self.keeps_rows() => {
                    let value = self.raw_value(item.value, segment)?;
                    if matches!(value, Value::Object(_)) {
                        let key = std::str::from_utf8(segment).map_err(|_| EnvelopeError::NotUtf8)?;
                        self.push_point(row_index, &[key], value);
                    } else if let Some(id) = self.slot_key_id(segment)? {
                        self.history.points.push(HistoryPoint { row: row_index, key: id, value });
                    }
                }
                _ => {}
            }
        }
        self.end_row(row, step, step_item);
        Ok(())
    }

    /// A history value as a [`Value`]; JSON text that does not parse is kept
    /// as a string, with a warning.
    fn raw_value(&mut self, raw: RawBytes<'_>, segment: &[u8]) -> Result<Value, EnvelopeError> {
        bytes_to_value(raw, || encode_path(&[String::from_utf8_lossy(segment).as_ref()]), &mut self.warnings)
    }

    /// The key id of a one-segment history key.
    fn slot_key_id(&mut self, segment: &[u8]) -> Result<Option<u32>, EnvelopeError> {
        let id = match self.history_slots.get(segment) {
            Some(id) => id,
            None => {
                let key = std::str::from_utf8(segment).map_err(|_| EnvelopeError::NotUtf8)?;
                let id = if key.contains(['.', '\\']) {
                    let encoded = encode_path(&[key]);
                    self.key_id(&encoded)
                } else {
                    self.key_id(key)
                };
                let id = id.unwrap_or(EXCLUDED);
                self.history_slots.set(segment, id);
                id
            }
        };
        Ok((id != EXCLUDED).then_some(id))
    }

    /// The index the next history row gets.
    fn next_row_index(&self) -> Result<u32, EnvelopeError> {
        u32::try_from(self.history.rows.len()).map_err(|_| EnvelopeError::TooManyRows)
    }

    fn history_row(&mut self, step: Option<i64>, items: Vec<ItemRef<'_>>) -> Result<(), EnvelopeError> {
        let row_index = self.next_row_index()?;
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
                    RawValue::Json(text) => {
                        media_trees[m].set_raw(rest, text);
                    }
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
                _ if self.keeps_rows() => {
                    let value = raw_to_value(item.value, path, &mut self.warnings);
                    self.push_point(row_index, path, value);
                }
                _ => {}
            }
        }
        for (prefix, tree) in media.iter().zip(media_trees) {
            if self.keeps_rows() {
                let mut shown = encode_path(prefix);
                let value = tree.to_value(&mut |w| self.warnings.push(w), &mut shown);
                self.push_point(row_index, prefix, value);
            }
        }
        self.end_row(row, step, step_item);
        Ok(())
    }

    /// Completes a row: its step from the record, else `_step`, else the
    /// previous row's plus one.
    fn end_row(&mut self, mut row: HistoryRow, step: Option<i64>, step_item: Option<f64>) {
        row.step = match (step, step_item) {
            (Some(s), _) => s,
            (None, Some(f)) => f as i64,
            (None, None) => self.last_step.map_or(0, |s| s + 1),
        };
        self.last_step = Some(row.step);
        self.note_time(row.timestamp);
        if row.runtime_s.is_some() {
            self.last_runtime = row.runtime_s;
        }
        if !self.state_only
            && let Some(from) = self.check_from.take()
            && row.step < from
        {
            self.not_appended = Some(format!("step {} follows step {from}, the table's last", row.step));
        }
        if self.keeps_rows() {
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
        let identity = RunIdentity::new(if run.run_id.is_empty() { run_id.to_string() } else { run.run_id })
            .with_text("source", Some("wandb".to_string()))
            .with_text("entity", nonempty(run.entity))
            .with_text("project", nonempty(run.project))
            .with_text("name", nonempty(run.display_name))
            .with_text("state", Some(state.to_string()))
            .with_timestamp("created_at", created_at)
            .with_timestamp("updated_at", self.last_time_us)
            .with_float("runtime_s", self.exit.as_ref().map(|e| f64::from(e.runtime)).or(self.last_runtime))
            .with_int("exit_code", self.exit.as_ref().map(|e| i64::from(e.exit_code)))
            .with_text("group", nonempty(run.run_group))
            .with_text("job_type", nonempty(run.job_type))
            .with_list("tags", run.tags)
            .with_text("notes", nonempty(run.notes))
            .with_text("host", nonempty(run.host))
            .with_text("git_remote", nonempty(git.remote_url))
            .with_text("git_commit", nonempty(git.commit));
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
            warnings: self.warnings.into_vec(),
            system: plan.system.then_some(self.system),
            history_mark: None,
        }
    }
}

/// What raw keys resolved to before: the SDK writes the same keys at every
/// step (in varying order), so a key met again resolves without checking its
/// text again or hashing it with the slower hasher of the maps it indexes.
struct Slots<T> {
    map: HashMap<Vec<u8>, T, foldhash::fast::RandomState>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots { map: HashMap::default() }
    }
}

impl<T: Copy> Slots<T> {
    fn get(&self, key: &[u8]) -> Option<T> {
        self.map.get(key).copied()
    }

    fn set(&mut self, key: &[u8], value: T) {
        self.map.insert(key.to_vec(), value);
    }

    fn clear(&mut self) {
        self.map.clear();
    }
}

/// Applies a config or summary record to its tree. One-segment keys are
/// resolved through `slots` to their top-level index (indices stay valid
/// until a removal, which clears the cache).
fn apply_updates(tree: &mut Tree, slots: &mut Slots<usize>, payload: &[u8]) -> Result<(), EnvelopeError> {
    let mut failed = None;
    update_items_raw(payload, |removal, item| {
        if failed.is_none()
            && let Err(e) = apply_raw_item(tree, slots, removal, &item)
        {
            failed = Some(e);
        }
    })?;
    failed.map_or(Ok(()), Err)
}

fn apply_raw_item(
    tree: &mut Tree,
    slots: &mut Slots<usize>,
    removal: bool,
    item: &RawItem<'_>,
) -> Result<(), EnvelopeError> {
    if let (false, Some(segment), RawBytes::Json(json)) = (removal, item.single_segment(), item.value) {
        if let Some(index) = slots.get(segment)
            && tree.set_raw_at(index, json)
        {
            return Ok(());
        }
        let key = std::str::from_utf8(segment).map_err(|_| EnvelopeError::NotUtf8)?;
        if let Some(index) = tree.set_raw(&[key], json) {
            slots.set(segment, index);
        }
        return Ok(());
    }
    let item = item.validate()?;
    if removal {
        slots.clear();
    }
    apply_item(tree, removal, &item);
    Ok(())
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
fn raw_to_value(raw: RawValue<'_>, path: &[&str], warnings: &mut RunWarnings) -> Value {
    // Text that came as `&str` is UTF-8: the error case cannot happen.
    bytes_to_value(raw.into(), || encode_path(path), warnings).unwrap_or(Value::Null)
}

/// A history value as written, as a [`Value`]: text must be UTF-8; JSON text
/// that does not parse is kept as a string, with a warning naming `path()`.
fn bytes_to_value(
    raw: RawBytes<'_>,
    path: impl FnOnce() -> String,
    warnings: &mut RunWarnings,
) -> Result<Value, EnvelopeError> {
    Ok(match raw {
        RawBytes::Null => Value::Null,
        RawBytes::Bool(b) => Value::Bool(b),
        RawBytes::Int(i) => Value::Int(i),
        RawBytes::Number(f) => Value::Float(f),
        RawBytes::Text(b) => Value::Str(std::str::from_utf8(b).map_err(|_| EnvelopeError::NotUtf8)?.to_string()),
        RawBytes::Json(text) => parse_or_keep(text, path, &mut |w| warnings.push(format!("history: {w}"))),
    })
}

fn timestamp_micros(t: &Timestamp) -> Option<i64> {
    t.seconds.checked_mul(1_000_000)?.checked_add(i64::from(t.nanos) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HistoryLayout;
    use crate::selection::Selection;
    use crate::sources::wandb_files::WANDB_IDENTITY_COLUMNS;
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
            Selection::parse(s, WANDB_IDENTITY_COLUMNS, crate::sources::wandb_files::WANDB_PREFIXES).unwrap()
        });
        let plan = FetchPlan::new(sel, HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let mut counts = RecordCounts::default();
        let run = decode_run("fallback", &[f.path()], &plan, &mut counts, &mut HistorySink::whole()).unwrap();
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
    fn keys_nested_too_deep_fail_their_run_and_deep_paths_build_linearly() {
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let deep: Vec<String> = (0..100_000).map(|i| format!("k{i}")).collect();
        let deep: Vec<&str> = deep.iter().map(String::as_str).collect();
        let kv = |nested: &[&str]| KeyedValue {
            key: String::new(),
            nested_key: nested.iter().map(|s| s.to_string()).collect(),
            value_json: "1".into(),
        };
        let run = RunRecord { run_id: "r1".into(), ..Default::default() };
        let in_run =
            RunRecord { config: Some(UpdateRecord { update: vec![kv(&deep)], remove: vec![] }), ..run.clone() };
        let records: [(&str, Vec<u8>); 4] = [
            ("history", envelope(2, &HistoryRecord { item: vec![item("", &deep, None, "1")], step: None })),
            ("config", envelope(5, &UpdateRecord { update: vec![kv(&deep)], remove: vec![] })),
            ("summary removal", envelope(3, &UpdateRecord { update: vec![], remove: vec![kv(&deep)] })),
            ("run record's config", envelope(17, &in_run)),
        ];
        for (what, rec) in records {
            let f = write_log(&[envelope(17, &run), rec]);
            let e = decode_run("r1", &[f.path()], &plan, &mut RecordCounts::default(), &mut HistorySink::whole())
                .unwrap_err();
            let text = e.to_string();
            assert!(text.contains("record 2") && text.contains("nested more than 256 levels"), "{what}: {text}");
        }

        // 256 levels of 4 KiB segments: accepted, paths whole.
        let long: Vec<String> = (0..MAX_KEY_DEPTH).map(|i| format!("{i:0>4096}")).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let records = [
            envelope(17, &run),
            envelope(5, &UpdateRecord { update: vec![kv(&long)], remove: vec![] }),
            envelope(2, &HistoryRecord { item: vec![item("", &long, None, "2")], step: None }),
        ];
        let (data, _) = decode(&records, None);
        let path = encode_path(&long);
        assert_eq!(path.len(), MAX_KEY_DEPTH * 4097 - 1);
        assert_eq!(data.group("config."), &[(path.clone(), Value::Int(1))]);
        assert_eq!(points(&data), vec![(0, path, "2".to_string())]);
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
        assert_eq!(run.identity.text("state"), Some("running"), "fresh file without exit record");
    }

    fn kv(nested: &[&str], json: &str) -> KeyedValue {
        KeyedValue {
            key: String::new(),
            nested_key: nested.iter().map(|s| s.to_string()).collect(),
            value_json: json.into(),
        }
    }

    #[test]
    fn cached_keys_stay_right_across_removals_and_orders() {
        let update = |update: Vec<KeyedValue>, remove: Vec<KeyedValue>| envelope(3, &UpdateRecord { update, remove });
        let records = [
            update(vec![kv(&["a"], "1"), kv(&["b"], "2"), kv(&["c"], "3")], vec![]),
            update(vec![kv(&["c"], "4"), kv(&["a"], "5")], vec![]),
            // A removal shifts the keys after it: cached positions must not be reused.
            update(vec![], vec![kv(&["a"], "")]),
            update(vec![kv(&["c"], "6"), kv(&["b"], "7")], vec![]),
            update(vec![kv(&["a"], "8"), kv(&["d", "e"], "9")], vec![]),
            update(vec![kv(&["d"], "10")], vec![]),
        ];
        let (run, _) = decode(&records, None);
        let got: Vec<(String, String)> = run.group("summary.").iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        let want = [("b", "7"), ("c", "6"), ("a", "8"), ("d", "10")].map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, want);

        // History rows with the same keys in varying order, a key with a dot,
        // and a key that is not UTF-8 (that row is skipped whole, with a warning).
        let row = |items: Vec<HistoryItem>, step| {
            envelope(2, &HistoryRecord { item: items, step: Some(HistoryStep { num: step }) })
        };
        let mut bad = row(vec![item("", &["x"], None, "1"), item("", &["ok"], None, "1")], 3);
        let at = bad.windows(2).position(|w| w == b"ok").unwrap();
        bad[at] = 0xFF;
        let records = [
            row(vec![item("", &["x"], None, "1"), item("", &["a.b"], None, "2")], 0),
            row(vec![item("", &["a.b"], None, "3"), item("", &["x"], None, "4")], 1),
            bad,
            row(vec![item("", &["x"], None, "5")], 2),
        ];
        let (run, _) = decode(&records, None);
        assert_eq!(
            points(&run),
            [(0, "x", "1"), (0, "a\\.b", "2"), (1, "a\\.b", "3"), (1, "x", "4"), (2, "x", "5")].map(|(s, k, v)| (
                s,
                k.to_string(),
                v.to_string()
            ))
        );
        assert_eq!(run.history.as_ref().unwrap().rows.len(), 3);
        assert!(run.warnings.iter().any(|w| w.contains("record 3 skipped")), "{:?}", run.warnings);
    }

    /// A history handed over in chunks of a few rows reads back as the whole
    /// run would: a row without a step counts on from the previous row, also
    /// when that row went out with the previous chunk.
    #[test]
    fn history_in_chunks_keeps_steps_counting_across_chunks() {
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Float64Type, Int64Type};

        use crate::output::history::long_schema;
        use crate::output::spill::SpillDir;
        use crate::pipeline::{EncodedHistory, HistoryEncoding, HistoryTarget};

        let n = 500;
        let records: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let items = vec![item("", &["a"], None, &format!("{i}")), item("", &["b"], None, &format!("-{i}"))];
                envelope(2, &HistoryRecord { item: items, step: (i == 200).then_some(HistoryStep { num: 1000 }) })
            })
            .collect();
        let steps: Vec<i64> = (0..n).map(|i| if i < 200 { i } else { 800 + i }).collect();
        let f = write_log(&records);
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let dir = tempfile::tempdir().unwrap();
        let schema = long_schema();
        let target = HistoryTarget {
            encoding: HistoryEncoding::Long(std::sync::Arc::clone(&schema)),
            chunk_bytes: 4096,
            spill: Some(SpillDir::create(&dir.path().join("spill")).unwrap()),
        };
        let mut sink = HistorySink::new(Some(std::sync::Arc::new(target)), "r");
        let data = decode_run("r", &[f.path()], &plan, &mut RecordCounts::default(), &mut sink).unwrap();
        let last = data.history.as_ref().unwrap();
        assert!(last.rows.len() < 100 && sink.chunks() > 5, "{} rows left, {} chunks", last.rows.len(), sink.chunks());
        assert_eq!(last.keys, ["a", "b"], "keys stay over chunks");
        let EncodedHistory::Spilled(spilled) = sink.finish(data).unwrap().history else {
            panic!("a history larger than a chunk is spilled")
        };
        let batches = spilled.read_all(&schema).unwrap();
        let col = |name: &str| batches.iter().map(|b| b.column_by_name(name).unwrap().clone()).collect::<Vec<_>>();
        let got_steps: Vec<i64> =
            col("step").iter().flat_map(|c| c.as_primitive::<Int64Type>().values().to_vec()).collect();
        let got_values: Vec<f64> =
            col("value").iter().flat_map(|c| c.as_primitive::<Float64Type>().values().to_vec()).collect();
        // The long layout: key a's rows by step, then key b's.
        assert_eq!(got_steps, [steps.clone(), steps].concat());
        let want: Vec<f64> = (0..n).map(|i| i as f64).chain((0..n).map(|i| -(i as f64))).collect();
        assert_eq!(got_values, want);
    }

    #[test]
    fn warnings_past_the_cap_are_counted_not_kept() {
        let records: Vec<Vec<u8>> = (0..150)
            .map(|_| envelope(2, &HistoryRecord { item: vec![item("", &["bad"], None, "{oops")], step: None }))
            .collect();
        let (run, _) = decode(&records, None);
        assert_eq!(run.history.as_ref().unwrap().rows.len(), 150);
        assert_eq!(run.warnings.len(), MAX_RUN_WARNINGS + 1, "{:?}", run.warnings.last());
        assert!(run.warnings[..MAX_RUN_WARNINGS].iter().all(|w| w.contains("value at bad is not valid JSON")));
        // 150 values and the missing run record; 100 kept.
        assert_eq!(run.warnings[MAX_RUN_WARNINGS], "51 more warnings of this run were not kept");
    }

    #[test]
    fn a_log_read_on_two_threads_reads_as_on_one() {
        // Every kind of record, interleaved: config and summary updates
        // between history rows (flat, nested, without a step, with a bad
        // value), records that do not decode, a resumed run record, exit.
        let mut records = vec![envelope(17, &RunRecord { run_id: "r1".into(), ..Default::default() })];
        for i in 0..3000u32 {
            let step = (i % 7 != 3).then(|| HistoryStep { num: i64::from(i) });
            let mut items = vec![
                item("loss", &[], None, &format!("{}", f64::from(i) / 3.0)),
                item("_timestamp", &[], None, &format!("{}", 1.7e9 + f64::from(i))),
            ];
            if i % 5 == 0 {
                items.push(item("", &["nest", "x"], None, &i.to_string()));
            }
            if i % 250 == 0 {
                items.push(item("bad", &[], None, "{oops"));
            }
            records.push(envelope(2, &HistoryRecord { item: items, step }));
            let kv = KeyedValue { key: format!("k{}", i % 13), nested_key: vec![], value_json: i.to_string() };
            records.push(envelope(3, &UpdateRecord { update: vec![kv.clone()], remove: vec![] }));
            if i % 100 == 0 {
                records.push(envelope(5, &UpdateRecord { update: vec![kv], remove: vec![] }));
                records.push(vec![0x12, 0x05, 0xff, 0xff]);
            }
        }
        records
            .push(envelope(17, &RunRecord { run_id: "r1".into(), display_name: "later".into(), ..Default::default() }));
        records.push(envelope(18, &RunExitRecord { exit_code: 0, runtime: 9 }));
        let f = write_log(&records);
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let read = |from: u64| {
            PIPELINE_FROM.set(from);
            let mut counts = RecordCounts::default();
            let run = decode_run("r", &[f.path(), f.path()], &plan, &mut counts, &mut HistorySink::whole());
            PIPELINE_FROM.set(PIPELINED_FILE_BYTES);
            (run.unwrap(), counts)
        };
        let (one, one_counts) = read(u64::MAX);
        let (two, two_counts) = read(0);
        assert_eq!(two.identity, one.identity);
        assert_eq!(two.groups, one.groups);
        assert_eq!(two.history, one.history);
        assert_eq!(two_counts, one_counts);
        assert_eq!(one.history.as_ref().unwrap().rows.len(), 6000);
        let sorted = |mut w: Vec<String>| {
            w.sort();
            w
        };
        // Under the cap: the same warnings, in another order.
        assert_eq!(one.warnings.len(), 84, "{:?}", one.warnings);
        assert!(one.warnings.iter().any(|w| w.contains("skipped")), "{:?}", one.warnings);
        assert_eq!(sorted(two.warnings), sorted(one.warnings));
    }

    /// A run's records: history rows with steps, time and runtime (some
    /// without a step), config and summary updates between them.
    fn growing_run(rows: u32) -> Vec<Vec<u8>> {
        let mut records = vec![envelope(17, &RunRecord { run_id: "r1".into(), ..Default::default() })];
        for i in 0..rows {
            let step = (i % 7 != 3).then(|| HistoryStep { num: i64::from(i) });
            let mut items = vec![
                item("loss", &[], None, &format!("{}", f64::from(i) / 3.0)),
                item("_timestamp", &[], None, &format!("{}", 1.7e9 + f64::from(i))),
                item("_runtime", &[], None, &format!("{}", f64::from(i) / 2.0)),
            ];
            if i % 5 == 0 {
                items.push(item("", &["nest", "x"], None, &i.to_string()));
            }
            records.push(envelope(2, &HistoryRecord { item: items, step }));
            let kv = KeyedValue { key: format!("k{}", i % 13), nested_key: vec![], value_json: i.to_string() };
            records.push(envelope(3, &UpdateRecord { update: vec![kv.clone()], remove: vec![] }));
            if i % 100 == 0 {
                records.push(envelope(5, &UpdateRecord { update: vec![kv], remove: vec![] }));
            }
        }
        records
    }

    #[test]
    fn a_log_read_after_an_earlier_read_gives_its_later_rows_and_the_whole_state() {
        let mut records = growing_run(3000);
        records.push(envelope(18, &RunExitRecord { exit_code: 0, runtime: 9 }));
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        let whole_log = encode_log(&refs);
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, WANDB_IDENTITY_COLUMNS);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run-r1.wandb");
        let read = |from: Option<&SyncMark>, files: &[&Path]| {
            let mut counts = RecordCounts::default();
            decode_run_from("r", files, &plan, from, &mut counts, &mut HistorySink::whole()).unwrap()
        };
        let mark_of = |run: &RunData| {
            let m = run.history_mark.clone().unwrap();
            let step = run.history.as_ref().unwrap().rows.iter().map(|r| r.step).max().unwrap();
            SyncMark { step, lines: m.lines.unwrap(), offsets: m.offsets, ..Default::default() }
        };
        for pipeline_from in [u64::MAX, 0] {
            PIPELINE_FROM.set(pipeline_from);
            // The earlier read saw the log up to `cut` bytes (mid-record: a
            // run being written), or all of it but the exit record.
            let cuts = [20_000, 150_001, encode_log(&refs[..refs.len() - 1]).len()];
            for cut in cuts {
                std::fs::write(&path, &whole_log[..cut]).unwrap();
                let earlier = read(None, &[&path]);
                let mark = mark_of(&earlier);
                assert!(mark.offsets[0] <= cut as u64 && mark.offsets[0] > (cut as u64).saturating_sub(32 * 1024));
                std::fs::write(&path, &whole_log).unwrap();
                let whole = read(None, &[&path]);
                let later = read(Some(&mark), &[&path]);
                let shown = format!("cut {cut}, two threads from {pipeline_from}");
                assert_eq!(later.history_mark.as_ref().unwrap().from_step, Some(mark.step), "{shown}");
                assert_eq!(later.history_mark.as_ref().unwrap().lines, Some(3000), "{shown}");
                assert_eq!(later.history_mark.as_ref().unwrap().offsets, [whole_log.len() as u64], "{shown}");
                assert_eq!(later.identity, whole.identity, "{shown}");
                assert_eq!(later.groups, whole.groups, "{shown}");
                let mut rows = points(&earlier);
                rows.extend(points(&later));
                assert_eq!(rows, points(&whole), "{shown}");
                assert!(points(&later).len() < points(&whole).len(), "{shown}");

                // Anything but an append reads the run whole.
                let is_whole = |run: &RunData, why: &str| {
                    assert_eq!(run.history_mark.as_ref().unwrap().from_step, None, "{shown}: {why}");
                    assert_eq!(points(run), points(&whole), "{shown}: {why}");
                    assert_eq!(run.identity, whole.identity, "{shown}: {why}");
                };
                let lines = SyncMark { lines: mark.lines + 1, ..mark.clone() };
                is_whole(&read(Some(&lines), &[&path]), "other line count");
                if !points(&later).is_empty() {
                    let step = SyncMark { step: 10_000, ..mark.clone() };
                    is_whole(&read(Some(&step), &[&path]), "a later step in the table");
                }
                let mut log = TransactionLogReader::new(&whole_log[..cut]).unwrap();
                let mut last_row = 0..0;
                while let Some((rec, at)) = log.next_record_at().unwrap() {
                    if matches!(peek_record_type(rec), Ok(Some((RecordType::History, _)))) {
                        last_row = at;
                    }
                }
                let inside = SyncMark { offsets: vec![last_row.start + 1], ..mark.clone() };
                is_whole(&read(Some(&inside), &[&path]), "an offset inside a record");
                let short = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(short.path(), &whole_log[..cut]).unwrap();
                let first_grew = SyncMark { offsets: vec![mark.offsets[0], 7], ..mark.clone() };
                let two = read(Some(&first_grew), &[&path, short.path()]);
                assert_eq!(two.history_mark.as_ref().unwrap().from_step, None, "{shown}: an earlier log grew");
            }
        }
        PIPELINE_FROM.set(PIPELINED_FILE_BYTES);
    }

    #[test]
    fn a_log_ends_with_an_exit_record_when_its_run_ended() {
        let exit = envelope(18, &RunExitRecord { exit_code: 0, runtime: 9 });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run-r1.wandb");
        let check = |records: &[Vec<u8>]| {
            let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
            std::fs::write(&path, encode_log(&refs)).unwrap();
            ends_with_exit(&path)
        };
        let mut small = growing_run(3);
        assert!(!check(&small), "running");
        small.push(exit.clone());
        assert!(check(&small), "ended, one block");
        let mut large = growing_run(3000);
        assert!(!check(&large));
        large.push(exit.clone());
        assert!(check(&large), "ended, many blocks");
        // An exit record cut by a block boundary (a record spanning blocks before it).
        let mut spanning = growing_run(30);
        spanning.push(vec![0x12, 0x00]);
        let refs: Vec<&[u8]> = spanning.iter().map(|r| r.as_slice()).collect();
        let used = encode_log(&refs).len();
        let room = 3 * super::super::log_reader::BLOCK_SIZE - used - 7 - 5;
        spanning.last_mut().unwrap().extend(std::iter::repeat_n(0u8, room));
        spanning.push(exit.clone());
        assert!(check(&spanning), "exit across a block boundary");
        large.push(envelope(2, &HistoryRecord { item: vec![item("x", &[], None, "1")], step: None }));
        assert!(!check(&large), "a record after the exit");
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
        assert_eq!(data.identity.text("name"), Some("second"), "a resumed run's record overrides");
        assert_eq!(data.identity.list("tags"), ["a"]);
        assert_eq!(data.identity.text("state"), Some("failed"));
        assert_eq!(data.identity.int("exit_code"), Some(2));
        assert_eq!(data.identity.float("runtime_s"), Some(5.0));
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
