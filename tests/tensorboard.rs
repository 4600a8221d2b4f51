//! The TensorBoard source against event files written by the real writers
//! (tensorboardX, the tensorboard package's own event file writer, and
//! TensorFlow itself),
//! checked value by value against TensorBoard's own reader
//! (`EventAccumulator`, every size guidance 0).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;
use crate::sync::{copy_dir, sync};

/// The standard set of `make_tensorboard_runs.py`, cached under `target/`.
fn standard() -> PathBuf {
    let script = fs::read(testbed_dir().join("make_tensorboard_runs.py")).expect("read make_tensorboard_runs.py");
    let reqs = fs::read(testbed_dir().join("requirements.txt")).expect("read requirements");
    let dir = target_dir().join("testbed-data").join(format!("tensorboard-standard-{:016x}", fnv(&[&script, &reqs])));
    cached_data(&dir, "testbed-data-tensorboard", || {
        testbed_script(
            "make_tensorboard_runs.py",
            &["--out".as_ref(), dir.join("logs").as_os_str(), "--set".as_ref(), "standard".as_ref()],
        );
    });
    dir.join("logs")
}

/// Runs written by TensorFlow itself (`make_tensorflow_runs.py`, in the
/// venv of `requirements-tensorflow.txt`), cached under `target/`.
fn tensorflow_written() -> PathBuf {
    let script = fs::read(testbed_dir().join("make_tensorflow_runs.py")).expect("read make_tensorflow_runs.py");
    let reqs = fs::read(testbed_dir().join("requirements-tensorflow.txt")).expect("read requirements-tensorflow.txt");
    let dir = target_dir().join("testbed-data").join(format!("tensorflow-{:016x}", fnv(&[&script, &reqs])));
    cached_data(&dir, "testbed-data-tensorflow", || {
        let py = venv_python("tensorflow-venv", "requirements-tensorflow.txt");
        run_checked(
            Command::new(py).arg(testbed_dir().join("make_tensorflow_runs.py")).arg("--out").arg(dir.join("logs")),
            "tests/testbed/make_tensorflow_runs.py",
        );
    });
    dir.join("logs")
}

fn source(logs: &Path) -> PathBuf {
    PathBuf::from(format!("tensorboard:{}", logs.display()))
}

/// Event files written by TensorFlow 2 itself: `tf.summary` scalars (0-d
/// tensors), text, images, histograms and audio; the hparams plugin's API
/// (the experiment's config, and each trial's values); the Keras
/// TensorBoard callback (epoch metrics, weight histograms, the model's
/// config and a `graph_def` event). Equal to `EventAccumulator`, with every
/// tag the writer was given at its step count.
#[test]
fn tensorflow_written_files_equal_tensorboards_own_reader() {
    let logs = tensorflow_written();
    let out = tempdir();
    let (_, checked) = export_equal_to_tensorboard(&logs, out.path());
    let printed = python_snippet(
        "import sys, json, polars as pl\n\
         want = json.loads(open(sys.argv[2]).read())['runs']\n\
         h = pl.read_parquet(sys.argv[1] + '/history/*.parquet')\n\
         got = {(r, k): n for r, k, n in h.group_by('run_id', 'key').agg(pl.len()).rows()}\n\
         bad = [(r, k, n, got.get((r, k))) for r, tags in want.items() for k, n in tags.items() if got.get((r, k)) != n]\n\
         assert not bad, bad\n\
         runs = {r['run_id']: r for r in pl.read_parquet(sys.argv[1] + '/runs.parquet').to_dicts()}\n\
         assert set(runs) == set(want), (sorted(runs), sorted(want))\n\
         t0 = runs['hparams/trial-0']\n\
         assert (t0['config.lr'], t0['config.units'], t0['config.optimizer']) == (0.01, 16.0, 'adam'), t0\n\
         assert runs['hparams']['hparams_metrics'] == ['accuracy'], runs['hparams']\n\
         print(len(want), h.height)",
        &[out.path().as_os_str(), logs.join("scenarios.json").as_os_str()],
    );
    eprintln!("{}: runs and rows {}", scenarios(&logs)["writer"], printed.trim());
    assert_eq!(checked["runs"], 6, "{checked}");
}

/// Writes a restarted run whose scalars are 0-d tensors, as TensorFlow 2
/// writes them, with the tensorboard package's own writer, each session
/// opening with `session_log START` as TensorFlow 1's `Supervisor` wrote
/// it: a first file with START at step 0 and `loss` at steps 0..99, then a
/// second file (sorted after it) with START at step 50 and `loss` at 50..149.
const TENSOR_RESTART: &str = r#"
import sys, time
from pathlib import Path
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
run = Path(sys.argv[1])
run.mkdir(parents=True)
def write(suffix, steps, base, start=None):
    w = EventFileWriter(str(run), filename_suffix=suffix)
    if start is not None:
        w.add_event(event_pb2.Event(wall_time=time.time(), step=start,
                                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    for s in steps:
        w.add_event(event_pb2.Event(wall_time=time.time(), step=s, summary=scalar_summary.scalar_pb("loss", base + s / 1000)))
    w.close()
write(".1", range(100), 1.0, start=0)
time.sleep(1.1)
write(".2", range(50, 150), 2.0, start=50)
files = sorted(p.name for p in run.iterdir())
assert files[-1].endswith(".2"), files
"#;

/// The restarted run's `loss` as TensorBoard's server reads it
/// (`plugin_event_accumulator`, which purges tensors at a restart), as the
/// older `EventAccumulator` class reads it (which purges all but tensors),
/// and as runport exported it: each a list of (step, value).
const TENSOR_RESTART_READ: &str = r#"
import sys, json, polars as pl
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util
def tensors(module):
    acc = module.EventAccumulator(sys.argv[1], size_guidance={module.TENSORS: 0})
    acc.Reload()
    return [[e.step, float(tensor_util.make_ndarray(e.tensor_proto))] for e in acc.Tensors("loss")]
h = pl.read_parquet(sys.argv[2] + "/history/*.parquet").filter(pl.col("key") == "loss").sort("step")
print(json.dumps({"server": tensors(pea), "event_accumulator": tensors(ea),
                  "runport": [[s, v] for s, v in h.select("step", "value").rows()]}))
"#;

/// A restart in a run of TensorFlow 2 style scalars (tensors): runport
/// drops the first file's steps from the restart on, as TensorBoard's
/// server does; the older `EventAccumulator` class keeps them.
#[test]
fn a_restart_drops_tensor_scalars_as_tensorboards_server_does() {
    let dir = tempdir();
    let logs = dir.path().join("logs");
    python_snippet(TENSOR_RESTART, &[logs.join("restart").as_os_str()]);
    let out = dir.path().join("out");
    export_json(&source(&logs), &out, &[], 0);
    let read: serde_json::Value = serde_json::from_str(
        python_snippet(TENSOR_RESTART_READ, &[logs.join("restart").as_os_str(), out.as_os_str()]).trim(),
    )
    .unwrap();
    let server = read["server"].as_array().unwrap();
    assert_eq!(server.len(), 150, "the server's reader: {read}");
    assert_eq!(read["runport"], read["server"]);
    // Steps 50..99 are the second writer's values.
    assert_eq!(server[50][0], 50, "{read}");
    assert!((server[50][1].as_f64().unwrap() - 2.05).abs() < 1e-6, "{read}");
    assert_eq!(read["event_accumulator"].as_array().unwrap().len(), 200, "{read}");
}

/// `tensorboard_reference.py compare`: its exit code and output.
fn compare(logs: &Path, export: &Path) -> (bool, String) {
    let out = Command::new(python())
        .arg(testbed_dir().join("tensorboard_reference.py"))
        .args(["compare".as_ref(), logs.as_os_str(), export.as_os_str()])
        .output()
        .expect("run tensorboard_reference.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn assert_equal_to_tensorboard(logs: &Path, export: &Path) -> serde_json::Value {
    let (ok, text) = compare(logs, export);
    assert!(ok, "export differs from EventAccumulator:\n{text}");
    let line = text.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no summary line:\n{text}"));
    serde_json::from_str(line).unwrap()
}

/// Exports every column of `logs` into `out`, without a failure or a
/// warning, and checks it against `EventAccumulator`: the export's summary
/// and the comparison's.
fn export_equal_to_tensorboard(logs: &Path, out: &Path) -> (serde_json::Value, serde_json::Value) {
    let summary = export_json(&source(logs), out, &[], 0);
    assert!(summary["failures"].as_array().unwrap().is_empty(), "{summary}");
    assert!(summary["warnings"].as_array().unwrap().is_empty(), "{summary}");
    let checked = assert_equal_to_tensorboard(logs, out);
    eprintln!("{checked}");
    (summary, checked)
}

#[test]
fn export_equals_tensorboards_own_reader() {
    let logs = standard();
    let out = tempdir();
    let (summary, checked) = export_equal_to_tensorboard(&logs, out.path());
    let written = scenarios(&logs);
    let runs = written["runs"].as_object().unwrap();
    assert_eq!(summary["runs"].as_u64().unwrap() as usize, checked["runs"].as_u64().unwrap() as usize);
    assert!(runs.len() >= 6 && checked["config_values"].as_u64().unwrap() >= 4, "{checked}");

    // The restarted run: the second writer's START at step 50 dropped the
    // first file's steps 50..99, as TensorBoard drops them.
    let steps = python_snippet(
        "import sys, polars as pl\n\
         h = pl.read_parquet(sys.argv[1] + '/history/*.parquet').filter(pl.col('run_id') == 'restart')\n\
         s = h['step'].to_list()\n\
         print(len(s), min(s), max(s), len(set(s)))",
        &[out.path().as_os_str()],
    );
    assert_eq!(steps.trim(), "150 0 149 150", "restart run steps: {steps}");

    // The check can fail: an export missing one tag is not equal.
    let partial = tempdir();
    export_json(&source(&logs), partial.path(), &["--select", "run_id,config.*,history.train/*"], 0);
    let (ok, text) = compare(&logs, partial.path());
    assert!(!ok, "a partial export passed the comparison:\n{text}");
}

#[test]
fn selections_decode_only_what_they_need() {
    let logs = standard();
    let out = tempdir();
    let s = export_json(&source(&logs), out.path(), &["--select", "run_id,name,created_at,updated_at"], 0);
    assert_eq!(s["records"]["decoded_history"], 0, "{s}");
    assert!(s["records"]["read"].as_u64().unwrap() > 1000, "{s}");
    assert!(!out.path().join("history").exists() || walk_files(&out.path().join("history")).is_empty());
    let one = tempdir();
    let s = export_json(&source(&logs), one.path(), &["--select", "run_id,history.train/loss"], 0);
    assert_eq!(s["rows"]["history"], 500, "{s}");
    let (code, stdout, stderr) = runport_out(&["ls".as_ref(), source(&logs).as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("nested/b/deeper/run2\trun2\ttensorboard\t")), "{stdout}");
    let (code, stdout, stderr) = runport_out(&["plan".as_ref(), source(&logs).as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"source_kind\": \"tensorboard\""), "{stdout}");
    let (code, stdout, stderr) = runport_out(&["schema".as_ref(), source(&logs).as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("config.lr") && stdout.contains("hparams_metrics"), "{stdout}");
}

/// Each record's (offset, total length) in an event file.
fn records(path: &Path) -> Vec<(usize, usize)> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        out.push((at, 12 + len + 4));
        at += 12 + len + 4;
    }
    out
}

fn event_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.file_name().unwrap().to_string_lossy().contains("tfevents"));
    files.sort();
    files.remove(0)
}

#[test]
fn damage_loses_only_the_damaged_records_and_a_foreign_file_fails_its_run() {
    let logs = standard();
    let scratch = tempdir();
    let damaged = scratch.path().join("logs");
    for run in ["scalars", "media"] {
        copy_dir(&logs.join(run), &damaged.join(run));
    }
    let clean = scratch.path().join("clean");
    let summary = export_json(&source(&damaged), &clean, &[], 0);
    let clean_rows = summary["rows"]["history"].as_u64().unwrap();

    // In `scalars` (one value per record): a flipped data byte, a flipped
    // length byte, and the last record cut short.
    let file = event_file(&damaged.join("scalars"));
    let recs = records(&file);
    let mut bytes = fs::read(&file).unwrap();
    let (data_at, len_at) = (recs[100].0, recs[200].0);
    bytes[data_at + 12 + 2] ^= 0x10;
    bytes[len_at + 1] ^= 0x01;
    let last = *recs.last().unwrap();
    bytes.truncate(last.0 + last.1 - 3);
    fs::write(&file, &bytes).unwrap();
    // A file named as an event file that is not one, in a run of its own.
    fs::create_dir_all(damaged.join("foreign")).unwrap();
    fs::write(damaged.join("foreign/events.out.tfevents.1.host"), b"plain text, not records").unwrap();

    let out = scratch.path().join("out");
    let summary = export_json(&source(&damaged), &out, &[], 1);
    assert_eq!(summary["rows"]["history"].as_u64().unwrap(), clean_rows - 3, "{summary}");
    let failures = summary["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{summary}");
    assert_eq!(failures[0]["run"], "foreign");
    assert!(failures[0]["error"].as_str().unwrap().contains("is not a TensorBoard event file"), "{summary}");
    let warnings: Vec<String> = summary["warnings"].as_array().unwrap().iter().map(|w| w.to_string()).collect();
    let shown = file.display().to_string();
    for want in [
        format!("record at offset {data_at} skipped: its data fails its checksum"),
        format!("bad record length at offset {len_at}"),
        format!("the file ends inside the record at offset {}", last.0),
    ] {
        assert!(warnings.iter().any(|w| w.contains(&want) && w.contains(&shown)), "{want} not in {warnings:?}");
    }
    // A folder without event files is a source error.
    let empty = tempdir();
    let (code, _, stderr) = runport_out(&[
        "export".as_ref(),
        source(empty.path()).as_os_str(),
        "-o".as_ref(),
        scratch.path().join("none").as_os_str(),
    ]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no TensorBoard event files found"), "{stderr}");
}

/// Appends a restart to run `restart` and writes a new run, with tensorboardX.
const MORE_EVENTS: &str = r#"
import sys, time
from tensorboardX import SummaryWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
logs = sys.argv[1]
w = SummaryWriter(logs + "/restart", filename_suffix=".3")
w.file_writer.add_event(Event(step=120, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START)))
for step in range(120, 200):
    w.add_scalar("loss", 1.0 / (step + 1), step)
w.close()
w = SummaryWriter(logs + "/added/run")
for step in range(30):
    w.add_scalar("x", step * 0.5, step)
w.close()
"#;

#[test]
fn sync_follows_new_files_and_runs_and_equals_an_export() {
    let logs = standard();
    let scratch = tempdir();
    let copy = scratch.path().join("logs");
    copy_dir(&logs, &copy);
    let table = scratch.path().join("table");
    let first = sync(&source(&copy), &table, &[], 0);
    let runs = scenarios(&logs)["runs"].as_object().unwrap().len() as u64;
    assert_eq!(first["runs"]["new"].as_u64(), Some(runs), "{first}");
    crate::sync::assert_same_as_export(&source(&copy), &table, scratch.path(), "tensorboard first sync");
    let again = sync(&source(&copy), &table, &[], 0);
    assert_eq!(again["records"]["read"], 0, "{again}");
    python_snippet(MORE_EVENTS, &[copy.as_os_str()]);
    let second = sync(&source(&copy), &table, &[], 0);
    assert_eq!(second["runs"]["new"].as_u64(), Some(1), "{second}");
    assert_eq!(second["runs"]["changed"].as_u64(), Some(1), "{second}");
    crate::sync::assert_same_as_export(&source(&copy), &table, scratch.path(), "tensorboard second sync");
    let export = scratch.path().join("export-tensorboard second sync");
    assert_equal_to_tensorboard(&copy, &export);
}
