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

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{MetricPoint, MlflowRun, RunView, parse_metric_value, status_name};

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
pub fn read_metric_file(path: &Path, mut each: impl FnMut(MetricPoint) -> Result<(), String>) -> Result<(), String> {
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut buf = Vec::new();
    for n in 1.. {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(|e| format!("{} line {n}: {e}", path.display()))? == 0 {
            break;
        }
        let line = std::str::from_utf8(&buf).map_err(|_| format!("{} line {n}: not UTF-8", path.display()))?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        each(metric_line(line).ok_or_else(|| {
            format!("{} line {n}: expected `timestamp value [step ...]`, got {line:?}", path.display())
        })?)?;
    }
    Ok(())
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

/// The latest value of a metric file, read line by line.
fn latest(path: &Path) -> Result<Option<f64>, String> {
    let mut latest: Option<MetricPoint> = None;
    read_metric_file(path, |p| {
        latest = Some(latest.map_or(p, |l| later(l, p)));
        Ok(())
    })?;
    Ok(latest.map(|p| p.value))
}

/// A run of the store: its listing and where its metric files are.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub run: MlflowRun,
    pub metric_files: Vec<(String, PathBuf)>,
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
            let metric_files = keyed_files(&dir.join("metrics"));
            let mut metrics = Vec::new();
            for (k, p) in &metric_files {
                if let Some(v) = latest(p)? {
                    metrics.push((k.clone(), v));
                }
            }
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
                metrics,
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
        assert_eq!(latest(&p).unwrap(), Some(f64::NEG_INFINITY), "greatest (step, timestamp)");
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
