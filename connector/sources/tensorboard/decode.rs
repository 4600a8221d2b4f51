//! One TensorBoard run's event files into a [`RunData`], in two passes.
//!
//! TensorBoard's reader (`EventAccumulator`) drops data a restarted job
//! wrote again: an event with `session_log.status = START` at step `s`
//! discards every value read before it whose step is `s` or later (files of
//! `file_version` 2 and later, which every current writer writes); in older
//! files an event with a summary whose step is below the greatest step so
//! far discards the earlier values of its own tags from that step on.
//! runport drops the same values, so its history equals what TensorBoard
//! shows. The drops are known only at the restart, possibly after much of
//! the run was handed to the writers in chunks; so a first pass frames
//! every record, checks its checksums and reads only the events' times,
//! steps and session logs, and finds the restarts; the second pass decodes
//! the summaries and leaves the dropped values out.
//!
//! The second pass reads as many records as the first found in each file,
//! so a file still being written gives one consistent read.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;

use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, skip_field};

use super::TbRun;
use super::event::{self, Event, HPARAMS_PLUGIN, HParamsPluginData, SESSION_START};
use super::record_reader::RecordReader;
use crate::pipeline::HistorySink;
use crate::plan::FetchPlan;
use crate::run::{HistoryPoint, HistoryRow, RunData, RunHistory, RunIdentity, seconds_to_micros};
use crate::sources::RecordCounts;
use crate::sources::wandb_files::decode::RunWarnings;
use crate::value::Value;

/// Reads one run with `plan`.
pub fn decode_run(
    run: &TbRun,
    plan: &FetchPlan,
    counts: &mut RecordCounts,
    sink: &mut HistorySink,
) -> Result<RunData, String> {
    let scan = scan(run)?;
    counts.read += scan.records.iter().sum::<u64>();
    counts.bytes += scan.bytes;
    let mut warnings = scan.warnings;
    let mut identity = RunIdentity::new(run.run_id.clone())
        .with_text("source", Some("tensorboard".into()))
        .with_text("name", Some(run.run_id.rsplit('/').next().unwrap_or(&run.run_id).to_string()))
        .with_timestamp("created_at", scan.first_wall.and_then(seconds_to_micros))
        .with_timestamp("updated_at", scan.last_wall.and_then(seconds_to_micros));
    let mut data = RunData { groups: vec![("config.", Vec::new()), ("summary.", Vec::new())], ..RunData::default() };
    let wants_metrics = plan.wants_identity("hparams_metrics");
    if !(plan.history || plan.summary || plan.config || wants_metrics) {
        identity = identity.with_list("hparams_metrics", Vec::new());
        data.identity = identity;
        data.warnings = warnings.into_vec();
        return Ok(data);
    }
    let mut d = Decoder {
        plan,
        purges: scan.purges,
        tags: HashMap::new(),
        history: RunHistory::default(),
        summary: Vec::new(),
        config: None,
        metrics: None,
        decoded: 0,
    };
    let mut index = 0u64;
    for (path, &records) in run.files.iter().zip(&scan.records) {
        let shown = path.display();
        let file = File::open(path).map_err(|e| format!("{shown}: cannot open: {e}"))?;
        let mut reader = RecordReader::new(BufReader::with_capacity(0, file));
        for _ in 0..records {
            let Some((at, rec)) = reader.next_record().map_err(|e| format!("{shown}: cannot read: {e}"))? else {
                return Err(format!("{shown}: the file changed while it was read (it holds fewer records)"));
            };
            // A record the first pass found not to be an Event was warned of there.
            if !scan.not_events.contains(&index) {
                match Event::decode(rec) {
                    Ok(ev) => d.event(index, ev).map_err(|e| format!("{shown}: {e}"))?,
                    Err(e) => warnings.push(format!("{shown}: record at offset {at} skipped: not an Event ({e})")),
                }
            }
            index += 1;
            // Between events, so between rows.
            sink.flush_if_full(&mut d.history)?;
        }
    }
    counts.decoded_history += d.decoded;
    data.identity = identity.with_list("hparams_metrics", d.metrics.unwrap_or_default());
    let mut config: Vec<(String, Value)> = d
        .config
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| plan.config && plan.wants_column("config.", k))
        .collect();
    config.sort_by(|a, b| a.0.cmp(&b.0));
    let mut summary = d.summary;
    summary.sort_by(|a, b| a.0.cmp(&b.0));
    data.groups = vec![("config.", config), ("summary.", summary)];
    data.history = plan.history.then_some(d.history);
    data.warnings = warnings.into_vec();
    Ok(data)
}

/// What the first pass finds.
struct Scan {
    /// Records (whole, checked) per file.
    records: Vec<u64>,
    /// The records (indices over the run's files) that are not an `Event`.
    not_events: HashSet<u64>,
    purges: Purges,
    first_wall: Option<f64>,
    last_wall: Option<f64>,
    warnings: RunWarnings,
    bytes: u64,
}

/// An event's fields the first pass reads.
#[derive(Default)]
struct Top {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    /// The summary's bytes, when it has one.
    summary: Option<(usize, usize)>,
    session_start: bool,
}

/// Reads the top-level fields of an `Event` without decoding its summary.
fn peek(rec: &[u8]) -> Result<Top, String> {
    peek_fields(rec).map_err(|e| e.to_string())
}

fn peek_fields(rec: &[u8]) -> Result<Top, Box<dyn std::error::Error>> {
    let mut top = Top::default();
    let mut buf = rec;
    let ctx = prost::encoding::DecodeContext::default();
    while !buf.is_empty() {
        let (field, wire) = decode_key(&mut buf)?;
        match (field, wire) {
            (1, WireType::SixtyFourBit) => {
                let mut b = [0u8; 8];
                if buf.len() < 8 {
                    return Err("an Event field runs past the record".into());
                }
                b.copy_from_slice(&buf[..8]);
                buf = &buf[8..];
                top.wall_time = f64::from_le_bytes(b);
            }
            (2, WireType::Varint) => top.step = decode_varint(&mut buf)? as i64,
            (3 | 5 | 7, WireType::LengthDelimited) => {
                let len = decode_varint(&mut buf)? as usize;
                if len > buf.len() {
                    return Err("an Event field runs past the record".into());
                }
                let start = rec.len() - buf.len();
                let body = &buf[..len];
                buf = &buf[len..];
                match field {
                    3 => top.file_version = Some(String::from_utf8_lossy(body).into_owned()),
                    5 => top.summary = Some((start, start + len)),
                    _ => top.session_start = event::SessionLog::decode(body)?.status == SESSION_START,
                }
            }
            // The fields read above, with another wire type: not an Event (as prost finds).
            (1 | 2 | 3 | 5 | 7, _) => return Err(format!("Event field {field} has wire type {wire:?}").into()),
            _ => skip_field(wire, field, &mut buf, ctx.clone())?,
        }
    }
    Ok(top)
}

/// `brain.Event:2` → 2, as TensorBoard reads it (-1 when unreadable).
fn file_version(text: &str) -> f64 {
    text.rsplit("brain.Event:").next().and_then(|v| v.trim().parse().ok()).unwrap_or(-1.0)
}

/// The first pass: frames and checks every record of every file, and finds
/// the restarts.
fn scan(run: &TbRun) -> Result<Scan, String> {
    let mut s = Scan {
        records: Vec::new(),
        not_events: HashSet::new(),
        purges: Purges::default(),
        first_wall: None,
        last_wall: None,
        warnings: RunWarnings::default(),
        bytes: 0,
    };
    let mut version: Option<f64> = None;
    let mut most_recent_step = -1i64;
    let mut index = 0u64;
    for path in &run.files {
        let shown = path.display();
        let file = File::open(path).map_err(|e| format!("{shown}: cannot open: {e}"))?;
        let mut reader = RecordReader::new(BufReader::with_capacity(0, file));
        match reader.starts_with_record().map_err(|e| format!("{shown}: cannot read: {e}"))? {
            None => {
                // An empty file: a writer that has written nothing yet.
                s.records.push(0);
                continue;
            }
            Some(false) => {
                return Err(format!("{shown} is not a TensorBoard event file (its first record is not framed as one)"));
            }
            Some(true) => {}
        }
        let mut records = 0u64;
        while let Some((at, rec)) = reader.next_record().map_err(|e| format!("{shown}: cannot read: {e}"))? {
            let this = index;
            index += 1;
            records += 1;
            let top = match peek(rec) {
                Ok(top) => top,
                Err(e) if records == 1 => {
                    return Err(format!(
                        "{shown} is not a TensorBoard event file (its first record is not an Event: {e})"
                    ));
                }
                Err(e) => {
                    s.warnings.push(format!("{shown}: record at offset {at} skipped: not an Event ({e})"));
                    s.not_events.insert(this);
                    continue;
                }
            };
            s.first_wall.get_or_insert(top.wall_time);
            if top.wall_time.is_finite() {
                s.last_wall = Some(s.last_wall.map_or(top.wall_time, |w: f64| w.max(top.wall_time)));
            }
            if let Some(v) = &top.file_version {
                version = Some(file_version(v));
            }
            // As EventAccumulator._MaybePurgeOrphanedData.
            if version.is_some_and(|v| v >= 2.0) {
                if top.session_start {
                    s.purges.push(this, top.step, None);
                }
            } else if top.step < most_recent_step && top.summary.is_some() {
                let (a, b) = top.summary.expect("checked");
                let tags = event::Summary::decode(&rec[a..b])
                    .map(|sm| sm.value.into_iter().map(|v| v.tag).collect())
                    .unwrap_or_default();
                s.purges.push(this, top.step, Some(tags));
            } else {
                most_recent_step = top.step;
            }
        }
        s.records.push(records);
        s.bytes += reader.offset();
        for w in reader.warnings() {
            s.warnings.push(format!("{shown}: {w}"));
        }
    }
    s.purges.finish();
    Ok(s)
}

/// A tag's restarts: (record index, step) in index order, with suffix minimums.
type TagPurges = (Vec<(u64, i64)>, Vec<i64>);

/// The restarts of a run: each drops the values read before it (record
/// index) whose step is at or past its step, of every tag or of some.
#[derive(Default)]
struct Purges {
    /// Restarts of every tag: (index, step), and the least step of those
    /// at or after each (suffix minimum).
    all: Vec<(u64, i64)>,
    all_min: Vec<i64>,
    /// Restarts of some tags, by tag.
    by_tag: HashMap<String, TagPurges>,
}

impl Purges {
    fn push(&mut self, index: u64, step: i64, tags: Option<Vec<String>>) {
        match tags {
            None => self.all.push((index, step)),
            Some(tags) => {
                for t in tags {
                    self.by_tag.entry(t).or_default().0.push((index, step));
                }
            }
        }
    }

    fn finish(&mut self) {
        fn suffix_min(v: &[(u64, i64)]) -> Vec<i64> {
            let mut out = vec![i64::MAX; v.len()];
            let mut m = i64::MAX;
            for (i, (_, s)) in v.iter().enumerate().rev() {
                m = m.min(*s);
                out[i] = m;
            }
            out
        }
        self.all_min = suffix_min(&self.all);
        for (v, min) in self.by_tag.values_mut() {
            *min = suffix_min(v);
        }
    }

    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_tag.is_empty()
    }

    /// Whether a restart after record `index` drops its value of `tag` at `step`.
    fn drops(&self, index: u64, step: i64, tag: &str) -> bool {
        fn later(v: &[(u64, i64)], min: &[i64], index: u64, step: i64) -> bool {
            let first = v.partition_point(|(i, _)| *i <= index);
            first < v.len() && min[first] <= step
        }
        later(&self.all, &self.all_min, index, step)
            || self.by_tag.get(tag).is_some_and(|(v, min)| later(v, min, index, step))
    }
}

/// What the run knows of a tag.
struct Tag {
    /// Whether the plan selects its history, and its key id once it has a value.
    wants_key: bool,
    key: Option<u32>,
    /// Whether the plan selects its summary column, and its index in
    /// `summary` once it has a value.
    wants_summary: bool,
    summary: Option<usize>,
    /// Its plugin, from its first metadata (TensorBoard keeps the first).
    plugin: Option<String>,
}

/// The second pass.
struct Decoder<'p> {
    plan: &'p FetchPlan,
    purges: Purges,
    tags: HashMap<String, Tag>,
    history: RunHistory,
    summary: Vec<(String, Value)>,
    config: Option<Vec<(String, Value)>>,
    metrics: Option<Vec<String>>,
    decoded: u64,
}

impl Decoder<'_> {
    fn tag(&mut self, name: &str) -> &mut Tag {
        if !self.tags.contains_key(name) {
            let plan = self.plan;
            let tag = Tag {
                wants_key: plan.history && plan.wants_history_key(name),
                key: None,
                wants_summary: plan.summary && plan.wants_column("summary.", name),
                summary: None,
                plugin: None,
            };
            self.tags.insert(name.to_string(), tag);
        }
        self.tags.get_mut(name).expect("invariant: just inserted")
    }

    fn event(&mut self, index: u64, ev: Event) -> Result<(), String> {
        self.decoded += 1;
        let Some(summary) = ev.summary else { return Ok(()) };
        let mut row: Option<u32> = None;
        for v in summary.value {
            if let Some(md) = &v.metadata {
                let plugin = md.plugin_data.as_ref().map(|p| p.plugin_name.clone()).unwrap_or_default();
                let t = self.tag(&v.tag);
                if t.plugin.is_none() {
                    t.plugin = Some(plugin.clone());
                    if plugin == HPARAMS_PLUGIN {
                        self.hparams(md.plugin_data.as_ref().map_or(&[][..], |p| &p.content));
                    }
                }
            }
            // A tensor written without a tag (old writers) is named by its node.
            let name = if v.tag.is_empty() && v.tensor.is_some() { &v.node_name } else { &v.tag };
            let t = self.tag(name);
            let plugin = t.plugin.as_deref().unwrap_or("");
            if plugin == HPARAMS_PLUGIN || !t.wants_key && !t.wants_summary {
                continue;
            }
            let Some(value) = event::history_value(&v, plugin) else { continue };
            if !self.purges.is_empty() && self.purges.drops(index, ev.step, name) {
                continue;
            }
            let t = self.tags.get_mut(name.as_str()).expect("invariant: looked up above");
            if t.wants_summary {
                let i = *t.summary.get_or_insert_with(|| {
                    self.summary.push((name.clone(), Value::Null));
                    self.summary.len() - 1
                });
                self.summary[i].1 = value.clone();
            }
            let key = t.wants_key.then(|| {
                *t.key.get_or_insert_with(|| {
                    self.history.keys.push(name.clone());
                    (self.history.keys.len() - 1) as u32
                })
            });
            if let Some(key) = key {
                let r = match row {
                    Some(r) => r,
                    None => {
                        let r = u32::try_from(self.history.rows.len())
                            .map_err(|_| format!("more than {} history rows in one chunk", u32::MAX))?;
                        self.history.rows.push(HistoryRow {
                            step: ev.step,
                            timestamp: seconds_to_micros(ev.wall_time),
                            runtime_s: None,
                        });
                        row = Some(r);
                        r
                    }
                };
                self.history.points.push(HistoryPoint { row: r, key, value });
            }
        }
        Ok(())
    }

    /// The hparams plugin's content: the hyperparameters of the session
    /// start, the metric names of the experiment (the first of each).
    fn hparams(&mut self, content: &[u8]) {
        let Ok(data) = HParamsPluginData::decode(content) else { return };
        if let Some(start) = data.session_start_info
            && self.config.is_none()
        {
            self.config = Some(start.hparams.iter().map(|(k, v)| (k.clone(), v.to_value(0))).collect());
        }
        if let Some(exp) = data.experiment
            && self.metrics.is_none()
        {
            self.metrics = Some(exp.metric_infos.iter().filter_map(|m| m.name.as_ref()).map(|n| n.path()).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_drop_earlier_values_at_or_past_their_step() {
        let mut p = Purges::default();
        // Record 10 restarts every tag at step 50; record 20 restarts "a" at step 5.
        p.push(10, 50, None);
        p.push(20, 5, Some(vec!["a".into()]));
        p.finish();
        assert!(p.drops(3, 50, "b") && p.drops(3, 99, "b"));
        assert!(!p.drops(3, 49, "b"));
        // Values after the restart stay.
        assert!(!p.drops(10, 50, "b") && !p.drops(11, 60, "b"));
        // The tag restart: only its tag, only before it.
        assert!(p.drops(15, 5, "a") && !p.drops(15, 5, "b") && !p.drops(20, 5, "a"));
        assert!(p.drops(3, 7, "a"));
        assert!(!Purges::default().drops(0, i64::MAX, "a"));
    }

    #[test]
    fn a_record_that_is_not_an_event_is_skipped_with_one_warning() {
        use crate::plan::HistoryLayout;
        use crate::selection::Selection;
        use crate::sources::tensorboard::record_reader::frame;
        let scalar = |step: i64| {
            let v = event::SummaryValue { tag: "loss".into(), simple_value: Some(0.5), ..Default::default() };
            Event { wall_time: 1.0, step, summary: Some(event::Summary { value: vec![v] }), ..Default::default() }
                .encode_to_vec()
        };
        let first = Event { file_version: Some("brain.Event:2".into()), ..Default::default() }.encode_to_vec();
        // Field 1 length-delimited (as a tf.Example's features): Event's field 1 is a double.
        let foreign = vec![0x0a, 0x02, 0x08, 0x01];
        assert!(peek(&foreign).is_err() && Event::decode(foreign.as_slice()).is_err());
        let bytes = [frame(&first), frame(&scalar(1)), frame(&foreign), frame(&scalar(2))].concat();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.out.tfevents.1.host");
        std::fs::write(&path, bytes).unwrap();
        let run = TbRun { run_id: "r".into(), files: vec![path], bytes: 0 };
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, super::super::TENSORBOARD_IDENTITY_COLUMNS);
        let mut counts = RecordCounts::default();
        let data = decode_run(&run, &plan, &mut counts, &mut HistorySink::whole()).unwrap();
        assert_eq!(data.warnings.len(), 1, "{:?}", data.warnings);
        assert!(data.warnings[0].contains("not an Event"), "{:?}", data.warnings);
        assert_eq!(data.history.unwrap().points.len(), 2);
        assert_eq!(counts.read, 4);
    }

    #[test]
    fn file_versions_as_tensorboard_reads_them() {
        assert_eq!(file_version("brain.Event:2"), 2.0);
        assert_eq!(file_version("brain.Event:1"), 1.0);
        assert_eq!(file_version("garbage"), -1.0);
    }
}
