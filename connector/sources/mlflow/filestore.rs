//! A FileStore folder (`mlruns/`), read directly.
//!
//! `<exp>/meta.yaml` describes an experiment; `<exp>/<run>/meta.yaml` a run
//! (`status` is a number there: 1 RUNNING .. 5 KILLED), with `metrics/`,
//! `params/` and `tags/` below it, one file per key (keys with `/` are
//! nested folders). Metric lines are `timestamp value`, `timestamp value
//! step` or `timestamp value step dataset digest` with Python's `nan`/`inf`;
//! as MLflow's own reader does, only 3-field lines carry a step (the others
//! read as step 0, which `get_metric_history` on a FileStore returns). Deleted experiments live in `.trash/`; folders
//! under an experiment without a run's `meta.yaml` (`tags`, `datasets`,
//! `traces`, `models`) are not runs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{MetricHistoryBuilder, MetricPoint, MlflowRun, RunView, parse_metric_value, status_name};
use crate::pipeline::HistorySink;
use crate::plan::FetchPlan;
use crate::run::{HistoryMark, RunHistory};
use crate::sources::{MetricFileMark, SyncMark};

/// The `key: value` lines of a FileStore `meta.yaml` (top level only).
pub fn parse_meta(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t', '-', '#']) {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        let v = v
            .strip_prefix('\'')
            .and_then(|x| x.strip_suffix('\''))
            .map(|x| x.replace("''", "'"))
            .or_else(|| v.strip_prefix('"').and_then(|x| x.strip_suffix('"')).map(str::to_string))
            .unwrap_or_else(|| v.to_string());
        if v != "null" && v != "~" {
            out.insert(k.trim().to_string(), v);
        }
    }
    out
}

fn read_meta(path: &Path) -> Option<HashMap<String, String>> {
    fs::read_to_string(path).ok().map(|t| parse_meta(&t))
}

/// An experiment folder: id, name, lifecycle stage, path.
#[derive(Debug, Clone)]
struct Experiment {
    id: String,
    name: String,
    stage: String,
    dir: PathBuf,
}

fn experiments(root: &Path) -> Result<Vec<Experiment>, String> {
    let mut out = Vec::new();
    for (dir, deleted) in [(root.to_path_buf(), false), (root.join(".trash"), true)] {
        let Ok(entries) = fs::read_dir(&dir) else {
            if deleted {
                continue;
            }
            return Err(format!("{}: cannot list the folder", dir.display()));
        };
        for e in entries.flatten() {
            let p = e.path();
            let Some(meta) = read_meta(&p.join("meta.yaml")) else { continue };
            let Some(id) = meta.get("experiment_id").cloned() else { continue };
            let stage = meta
                .get("lifecycle_stage")
                .cloned()
                .unwrap_or_else(|| if deleted { "deleted" } else { "active" }.into());
            out.push(Experiment { id, name: meta.get("name").cloned().unwrap_or_default(), stage, dir: p });
        }
    }
    Ok(out)
}

/// Whether `path` looks like a FileStore root (an experiment folder with a `meta.yaml` below it).
pub fn is_filestore(path: &Path) -> bool {
    path.is_dir() && experiments(path).is_ok_and(|e| !e.is_empty())
}

/// Every file below `dir`, as (`a/b` key, path).
fn keyed_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            if e.path().is_dir() {
                stack.push((key, e.path()));
            } else {
                out.push((key, e.path()));
            }
        }
    }
    out.sort();
    out
}

/// The points of one metric file, in file order, each handed to `each`:
/// the file is read line by line, never whole.
pub fn read_metric_file(path: &Path, each: impl FnMut(MetricPoint) -> Result<(), String>) -> Result<(), String> {
    read_metric_file_from(path, 0, each).map(|_| ())
}

/// [`read_metric_file`] from byte `offset` (where a line starts) on;
/// returns the offset past the last line read.
pub fn read_metric_file_from(
    path: &Path,
    offset: u64,
    mut each: impl FnMut(MetricPoint) -> Result<(), String>,
) -> Result<u64, String> {
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let shown = |n: usize| {
        if offset == 0 {
            format!("{} line {n}", path.display())
        } else {
            format!("{} line {n} after byte {offset}", path.display())
        }
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut buf = Vec::new();
    let mut end = offset;
    for n in 1.. {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(|e| format!("{}: {e}", shown(n)))?;
        if read == 0 {
            break;
        }
        end += read as u64;
        let line = std::str::from_utf8(&buf).map_err(|_| format!("{}: not UTF-8", shown(n)))?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        each(
            metric_line(line)
                .ok_or_else(|| format!("{}: expected `timestamp value [step ...]`, got {line:?}", shown(n)))?,
        )?;
    }
    Ok(end)
}

/// One metric line: `timestamp value`, `timestamp value step` or
/// `timestamp value step dataset digest`.
fn metric_line(line: &str) -> Option<MetricPoint> {
    let mut f = line.split_whitespace();
    let (timestamp, value, step) = (f.next()?, f.next()?, f.next());
    let rest = f.count();
    Some(MetricPoint {
        timestamp_ms: timestamp.parse().ok()?,
        value: parse_metric_value(value)?,
        // As MLflow's own FileStore reader does: only 3-field lines carry
        // a step; 2-field (legacy) and 5-field (with a dataset name and
        // digest) lines read as step 0.
        step: match (step, rest) {
            (Some(s), 0) => s.parse().ok()?,
            (None, 0) | (Some(_), 2) => 0,
            _ => return None,
        },
    })
}

/// The latest point as MLflow picks it: the greatest (step, timestamp, value).
fn later(a: MetricPoint, b: MetricPoint) -> MetricPoint {
    let order = (a.step, a.timestamp_ms).cmp(&(b.step, b.timestamp_ms)).then(a.value.total_cmp(&b.value));
    if order.is_lt() { b } else { a }
}

/// A point as a metric line (`timestamp value step`), as marks keep it.
fn point_line(p: MetricPoint) -> String {
    format!("{} {} {}", p.timestamp_ms, p.value, p.step)
}

/// A run of the store: its listing and where its metric files are.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub run: MlflowRun,
    pub metric_files: Vec<(String, PathBuf)>,
}

impl StoredRun {
    /// Its metric names: a file store's metric files, sqlite's latest metrics.
    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.metric_files.iter().map(|(k, _)| k.as_str()).chain(super::names(&self.run.metrics))
    }
}

/// What [`read_metrics`] read of a run.
pub struct ReadMetrics {
    /// The latest value of each selected metric.
    pub latest: Vec<(String, f64)>,
    /// The history of the selected keys (the part after the marks when `mark.from_step` is set).
    pub history: Option<RunHistory>,
    pub mark: Option<HistoryMark>,
}

/// Reads a file store run's metric files: the latest value of each
/// metric the runs table selects, and the history of each key the plan
/// selects, handed to `sink`. With `from` (where a sync's earlier read of
/// each file stopped), when every file it read only grew by whole lines at
/// steps from the file's greatest step on, only those lines are read (the
/// latest values from the marks' and theirs) and the mark says so; any
/// other change (a file shortened or gone, a line cut at the mark, an
/// earlier step) reads them whole. The returned mark holds where each file
/// was read to, for the next sync.
pub fn read_metrics(
    stored: &StoredRun,
    plan: &FetchPlan,
    from: Option<&SyncMark>,
    sink: &mut HistorySink,
) -> Result<ReadMetrics, String> {
    let keys = super::history_keys(plan, stored.metric_files.iter().map(|(k, _)| k.as_str()));
    let continuing = from.filter(|m| !m.metric_files.is_empty() && appended(stored, &keys, m));
    let mut history = plan.history.then(|| MetricHistoryBuilder::new(sink));
    let mut latest = Vec::new();
    let mut marks = BTreeMap::new();
    let mut lines = continuing.map_or(0, |m| m.lines);
    for (key, path) in &stored.metric_files {
        let in_history = keys.contains(key);
        let wanted = plan.selection.wants_prefix("metrics.") && plan.wants_column("metrics.", key);
        if !in_history && !wanted {
            continue;
        }
        let mark = continuing.and_then(|m| m.metric_files.get(key));
        let (offset, mut top, mut best) = match mark {
            Some(m) => (m.offset, Some(m.step), metric_line(&m.latest)),
            None => (0, None, None),
        };
        let mut started = false;
        let end = read_metric_file_from(path, offset, |p| {
            best = Some(best.map_or(p, |b| later(b, p)));
            top = top.max(Some(p.step));
            if let (true, Some(h)) = (in_history, history.as_mut()) {
                if !started {
                    h.start_key(key)?;
                    started = true;
                }
                lines += 1;
                h.push(p)?;
            }
            Ok(())
        })?;
        if let (true, Some(step), Some(b)) = (in_history, top, best) {
            marks.insert(key.clone(), MetricFileMark { offset: end, step, latest: point_line(b) });
        }
        if let (true, Some(b)) = (wanted, best) {
            latest.push((key.clone(), b.value));
        }
    }
    let mark = plan.history.then(|| HistoryMark {
        from_step: continuing.map(|m| m.step),
        lines: Some(lines),
        offsets: Vec::new(),
        metric_files: marks,
    });
    Ok(ReadMetrics { latest, history: history.map(MetricHistoryBuilder::finish), mark })
}

/// Whether each metric file `mark` read only grew since, by whole lines at
/// steps from the file's greatest step then on (read to check), and the
/// plan still reads each.
fn appended(stored: &StoredRun, keys: &[String], mark: &SyncMark) -> bool {
    mark.metric_files.iter().all(|(key, m)| {
        let Some((_, path)) = stored.metric_files.iter().find(|(k, _)| k == key) else { return false };
        if !keys.contains(key) {
            return false;
        }
        let Ok(len) = fs::metadata(path).map(|meta| meta.len()) else { return false };
        if len < m.offset {
            return false;
        }
        if len == m.offset {
            return true;
        }
        // The mark must be a line's end.
        let mut before = [0u8; 1];
        let at_line = m.offset == 0
            || fs::File::open(path)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(m.offset - 1))?;
                    f.read_exact(&mut before)
                })
                .is_ok_and(|()| before[0] == b'\n');
        at_line
            && read_metric_file_from(path, m.offset, |p| if p.step < m.step { Err(String::new()) } else { Ok(()) })
                .is_ok()
    })
}

/// Every run of the selected experiments in the view.
pub fn list_runs(root: &Path, wanted: &[String], view: RunView) -> Result<Vec<StoredRun>, String> {
    let exps = experiments(root)?;
    let selected: Vec<&Experiment> = if wanted.is_empty() {
        exps.iter().filter(|e| view.includes(&e.stage)).collect()
    } else {
        wanted
            .iter()
            .map(|w| {
                exps.iter()
                    .find(|e| &e.name == w)
                    .or_else(|| exps.iter().find(|e| &e.id == w))
                    .ok_or_else(|| format!("{}: no experiment named or numbered {w:?}", root.display()))
            })
            .collect::<Result<_, _>>()?
    };
    let mut runs = Vec::new();
    for exp in selected {
        let Ok(entries) = fs::read_dir(&exp.dir) else { continue };
        for e in entries.flatten() {
            let dir = e.path();
            let Some(meta) = read_meta(&dir.join("meta.yaml")) else { continue };
            let Some(run_id) = meta.get("run_id").or_else(|| meta.get("run_uuid")).cloned() else { continue };
            let stage = meta.get("lifecycle_stage").cloned().unwrap_or_else(|| "active".into());
            if !view.includes(&stage) {
                continue;
            }
            // Latest values are read with the run (its metric files are
            // its fingerprint): a listing reads no metric file.
            let metric_files = keyed_files(&dir.join("metrics"));
            let text = |sub: &str| -> Vec<(String, String)> {
                keyed_files(&dir.join(sub))
                    .into_iter()
                    .map(|(k, p)| (k, fs::read_to_string(p).unwrap_or_default()))
                    .collect()
            };
            let int = |k: &str| meta.get(k).and_then(|v| v.parse::<i64>().ok());
            let run = MlflowRun {
                run_id,
                experiment_id: meta.get("experiment_id").cloned().unwrap_or_else(|| exp.id.clone()),
                experiment_name: Some(exp.name.clone()),
                run_name: meta.get("run_name").cloned().filter(|s| !s.is_empty()),
                user_id: meta.get("user_id").cloned(),
                status: int("status").and_then(status_name).map(str::to_string).or_else(|| meta.get("status").cloned()),
                start_time_ms: int("start_time"),
                end_time_ms: int("end_time"),
                artifact_uri: meta.get("artifact_uri").cloned(),
                lifecycle_stage: Some(stage),
                metrics: Vec::new(),
                // The metric files' sizes say more (see the source's fingerprint).
                latest_marks: Vec::new(),
                params: text("params"),
                tags: text("tags"),
            };
            runs.push(StoredRun { run, metric_files });
        }
    }
    runs.sort_by(|a, b| a.run.run_id.cmp(&b.run.run_id));
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::plan::HistoryLayout;
    use crate::selection::Selection;

    /// `(key, step, timestamp ms, value)` of each point of a history.
    fn points(h: &RunHistory) -> Vec<(String, i64, i64, String)> {
        let mut out = Vec::new();
        for s in &h.series {
            for (j, v) in s.values.values().iter().enumerate() {
                let row = &h.rows[s.first_row as usize + j];
                out.push((h.keys[s.key as usize].clone(), row.step, row.timestamp.unwrap() / 1000, v.to_string()));
            }
        }
        out
    }

    #[test]
    fn metric_files_read_after_an_earlier_read_give_their_appended_points() {
        let dir = tempfile::tempdir().unwrap();
        let (loss, acc) = (dir.path().join("loss"), dir.path().join("acc"));
        let lines = |steps: std::ops::Range<i64>, v: f64| -> String {
            steps.map(|s| format!("{} {} {s}\n", 1000 + s, v * s as f64)).collect()
        };
        let stored = StoredRun {
            run: MlflowRun { run_id: "r".into(), ..Default::default() },
            metric_files: vec![("acc".into(), acc.clone()), ("loss".into(), loss.clone())],
        };
        let plan = FetchPlan::new(Selection::all(), HistoryLayout::Long, super::super::MLFLOW_IDENTITY_COLUMNS);
        let read = |from: Option<&SyncMark>| read_metrics(&stored, &plan, from, &mut HistorySink::whole()).unwrap();
        let mark_of = |r: &ReadMetrics| {
            let m = r.mark.clone().unwrap();
            let step = r.history.as_ref().unwrap().rows.iter().map(|r| r.step).max().unwrap();
            SyncMark { step, lines: m.lines.unwrap(), metric_files: m.metric_files, ..Default::default() }
        };
        let write = |path: &Path, text: &str| fs::write(path, text).unwrap();
        let append = |path: &Path, text: &str| {
            use std::io::Write;
            fs::OpenOptions::new().append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
        };
        write(&loss, &lines(0..100, 0.5));
        write(&acc, &lines(0..50, f64::NAN));
        let earlier = read(None);
        let mark = mark_of(&earlier);
        assert_eq!(mark.metric_files["loss"].step, 99);
        assert_eq!(mark.lines, 150);
        // More points on both keys (one at the last step again), and on a new key.
        append(&loss, &lines(100..150, 0.5));
        append(&acc, &lines(49..60, 2.0));
        let whole = read(None);
        let later = read(Some(&mark));
        assert_eq!(later.mark.as_ref().unwrap().from_step, Some(99));
        assert_eq!(later.mark.as_ref().unwrap().metric_files, whole.mark.as_ref().unwrap().metric_files);
        assert_eq!(later.mark.as_ref().unwrap().lines, Some(211));
        assert_eq!(format!("{:?}", later.latest), format!("{:?}", whole.latest));
        let mut both = points(earlier.history.as_ref().unwrap());
        both.extend(points(later.history.as_ref().unwrap()));
        both.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(both, points(whole.history.as_ref().unwrap()));
        assert_eq!(points(later.history.as_ref().unwrap()).len(), 61);

        // Anything but an append reads the files whole.
        let is_whole = |r: ReadMetrics, why: &str| {
            assert_eq!(r.mark.as_ref().unwrap().from_step, None, "{why}");
            assert_eq!(points(r.history.as_ref().unwrap()), points(read(None).history.as_ref().unwrap()), "{why}");
        };
        let mark = mark_of(&whole);
        append(&loss, &lines(10..11, 1.0));
        is_whole(read(Some(&mark)), "a step before the file's last");
        write(&loss, &lines(0..100, 0.5));
        is_whole(read(Some(&mark)), "a file shortened");
        let mut inside = mark.clone();
        inside.metric_files.get_mut("loss").unwrap().offset -= 3;
        write(&loss, &lines(0..160, 0.5));
        is_whole(read(Some(&inside)), "a mark inside a line");
        fs::remove_file(&acc).unwrap();
        let gone = StoredRun { metric_files: vec![("loss".into(), loss.clone())], ..stored.clone() };
        let r = read_metrics(&gone, &plan, Some(&mark), &mut HistorySink::whole()).unwrap();
        assert_eq!(r.mark.unwrap().from_step, None, "a file gone");
    }

    #[test]
    fn meta_yaml_lines() {
        let m = parse_meta(
            "artifact_uri: file:///x\nexperiment_id: '0'\nname: 'it''s'\nend_time: null\ntags: []\n  nested: no\n",
        );
        assert_eq!(m["experiment_id"], "0");
        assert_eq!(m["name"], "it's");
        assert!(!m.contains_key("end_time") && !m.contains_key("nested"));
    }

    #[test]
    fn metric_lines_with_two_three_and_five_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss");
        fs::write(&p, "1000 0.5\n2000 nan 1\n3000 inf 2 train abc123\n4000 -inf 2\n").unwrap();
        let read = |p: &Path| {
            let mut pts = Vec::new();
            read_metric_file(p, |x| {
                pts.push(x);
                Ok(())
            })
            .map(|_| pts)
        };
        let pts = read(&p).unwrap();
        assert_eq!(pts.len(), 4);
        assert_eq!((pts[0].step, pts[0].timestamp_ms, pts[0].value), (0, 1000, 0.5));
        assert!(pts[1].value.is_nan());
        assert_eq!((pts[2].step, pts[2].value), (0, f64::INFINITY), "5-field lines read as step 0, as MLflow does");
        let latest = pts.iter().copied().reduce(later).map(|p| p.value);
        assert_eq!(latest, Some(f64::NEG_INFINITY), "greatest (step, timestamp)");
        fs::write(&p, "1000 0.5 1 x\n").unwrap();
        assert!(read(&p).is_err(), "4 fields is not a metric line");
        fs::write(&p, "1000 0.5 1\r\n\n2000 0.25 2").unwrap();
        let pts = read(&p).unwrap();
        assert_eq!(
            pts.iter().map(|p| (p.step, p.value)).collect::<Vec<_>>(),
            [(1, 0.5), (2, 0.25)],
            "CRLF, no last newline"
        );
        fs::write(&p, "1000 0.5\noops\n").unwrap();
        assert!(read(&p).unwrap_err().contains("line 2"));
        fs::write(&p, b"1000 0.5\n\xff 1\n").unwrap();
        assert!(read(&p).unwrap_err().contains("line 2: not UTF-8"));
    }
}
