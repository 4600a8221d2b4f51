//! `runport sync`: Delta tables kept up to date with W&B local files written
//! by the real SDK. After each sync the tables, read back with Python
//! `deltalake` and polars `read_delta`, equal a plain `export` of the same
//! source; a sync with nothing changed commits nothing; new, changed
//! (a resumed run's second folder) and deleted runs are brought in.

use std::path::{Path, PathBuf};

use crate::harness::*;

/// Reads the Delta tables with deltalake, polars and DuckDB's `delta_scan`
/// and compares them with an export (sync columns aside), rows sorted by
/// every column.
const SAME_AS_EXPORT: &str = r#"
import sys
import polars as pl
from polars.testing import assert_frame_equal
from deltalake import DeltaTable

table, export = sys.argv[1], sys.argv[2]

def same(got, want, what, by):
    assert sorted(got.columns) == sorted(want.columns), (what, sorted(set(got.columns) ^ set(want.columns)))
    got = got.select(want.columns)
    assert got.schema == want.schema, (what, [(n, got.schema[n], want.schema[n]) for n in want.columns if got.schema[n] != want.schema[n]])
    assert_frame_equal(got.sort(by, nulls_last=True), want.sort(by, nulls_last=True), check_exact=True)

runs = pl.read_delta(f"{table}/runs")
sync_cols = [c for c in runs.columns if c.startswith("_sync_")]
assert sync_cols == ["_sync_key", "_sync_fingerprint", "_sync_history_file", "_sync_history_mark", "_sync_values"], sync_cols
runs = runs.drop(sync_cols)
same(runs, pl.read_parquet(f"{export}/runs.parquet"), "runs", ["run_id"])

dt = DeltaTable(f"{table}/history")
assert dt.protocol().min_reader_version == 1 and dt.protocol().min_writer_version == 2, dt.protocol()
hist = pl.read_delta(f"{table}/history")
want = pl.read_parquet(f"{export}/history/*.parquet")
cols = ["run_id", "key", "step", "timestamp", "runtime_s", "value", "value_json"]
same(hist, want, "history", cols)
adds = pl.DataFrame(dt.get_add_actions(flatten=True))
assert adds["num_records"].min() > 0 and adds["num_records"].sum() == hist.height, adds
# DuckDB's delta_scan, read into Parquet by the DuckDB venv.
duck_runs, duck_history = sys.argv[3], sys.argv[4]
duck = pl.read_parquet(duck_runs)
same(duck.drop(sync_cols), pl.read_parquet(f"{export}/runs.parquet"), "runs (DuckDB)", ["run_id"])
same(pl.read_parquet(duck_history), want, "history (DuckDB)", cols)
print(f"runs {runs.height}, history {hist.height}, files {adds.height}, version {dt.version()}")
print(f"runs table id {DeltaTable(f'{table}/runs').metadata().id}")
"#;

pub(crate) fn sync(source: &Path, table: &Path, args: &[&str], want_code: i32) -> serde_json::Value {
    let mut all: Vec<&std::ffi::OsStr> =
        vec!["sync".as_ref(), source.as_os_str(), table.as_os_str(), "--json".as_ref()];
    all.extend(args.iter().map(|a| a.as_ref() as &std::ffi::OsStr));
    let (code, stdout, stderr) = runport_out(&all);
    assert_eq!(code, want_code, "runport {all:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    // A sync with failed runs (exit 1) prints its summary too.
    if want_code <= 1 { last_json_line(&stdout) } else { serde_json::Value::Null }
}

/// Returns the `runs` table's id (its metadata id).
pub(crate) fn assert_same_as_export(source: &Path, table: &Path, scratch: &Path, what: &str) -> String {
    let export = scratch.join(format!("export-{what}"));
    export_json(source, &export, &[], 0);
    assert_same_as(table, &export, what)
}

/// [`assert_same_as_export`] with the export made already.
fn assert_same_as(table: &Path, export: &Path, what: &str) -> String {
    let duck = export.with_extension("duckdb");
    std::fs::create_dir_all(&duck).unwrap();
    let (duck_runs, duck_history) = (duck.join("runs.parquet"), duck.join("history.parquet"));
    duckdb_delta_scan(&table.join("runs"), &duck_runs);
    duckdb_delta_scan(&table.join("history"), &duck_history);
    let args = [table.as_os_str(), export.as_os_str(), duck_runs.as_os_str(), duck_history.as_os_str()];
    let out = python_snippet(SAME_AS_EXPORT, &args);
    eprintln!("{what}: {}", out.trim());
    out.lines().last().and_then(|l| l.strip_prefix("runs table id ")).expect("the table id").to_string()
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&src, &dst);
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).unwrap();
            // The copy keeps the time the SDK last wrote (a run's state may
            // follow it: a run not written to for a while has crashed).
            let modified = entry.metadata().unwrap().modified().unwrap();
            std::fs::File::options().write(true).open(&dst).unwrap().set_modified(modified).unwrap();
        }
    }
}

/// The run folders of the standard set, by the run id they end with.
fn folders(wandb: &Path, id: &str) -> Vec<PathBuf> {
    let mut f: Vec<PathBuf> = std::fs::read_dir(wandb)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().ends_with(&format!("-{id}")))
        .collect();
    f.sort();
    assert!(!f.is_empty(), "no run folder for {id} in {}", wandb.display());
    f
}

/// The standard set's run folders, held back from a source until
/// [`Held::apply`]: a new run (`std-config`) and a resumed run's second
/// folder (`std-resumed` grows).
pub(crate) struct Held(Vec<PathBuf>);

/// `DIR/wandb` (the standard set but for the held runs) synced into
/// `DIR/table`, then changed ([`Held::apply`]).
fn synced_then_changed(dir: &Path) -> (PathBuf, PathBuf) {
    let source = dir.join("wandb");
    let table = dir.join("table");
    let held = Held::copy_standard(&source);
    sync(&source, &table, &[], 0);
    held.apply(&source);
    (source, table)
}

impl Held {
    /// Copies the standard set into `source` but for the held folders.
    pub(crate) fn copy_standard(source: &Path) -> Held {
        let set = wandb_runs("standard").join("wandb");
        let resumed = folders(&set, "std-resumed");
        assert_eq!(resumed.len(), 2, "{resumed:?}");
        let held: Vec<PathBuf> = folders(&set, "std-config").into_iter().chain([resumed[1].clone()]).collect();
        std::fs::create_dir_all(source).unwrap();
        for entry in std::fs::read_dir(&set).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() && !p.is_symlink() && !held.contains(&p) {
                copy_dir(&p, &source.join(p.file_name().unwrap()));
            }
        }
        Held(held)
    }

    /// A new run, a changed run and a deleted run (`std-values`).
    pub(crate) fn apply(&self, source: &Path) {
        for f in &self.0 {
            copy_dir(f, &source.join(f.file_name().unwrap()));
        }
        for f in folders(source, "std-values") {
            std::fs::remove_dir_all(f).unwrap();
        }
    }
}

#[test]
fn sync_brings_delta_tables_to_the_source_and_reads_only_what_changed() {
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    let table = tmp.path().join("table");
    let held = Held::copy_standard(&source);

    let first = sync(&source, &table, &[], 0);
    assert_eq!(first["committed"], true, "{first}");
    assert_eq!(first["runs"]["changed"], 0, "{first}");
    assert!(first["runs"]["new"].as_u64().unwrap() >= 8, "{first}");
    assert_eq!(first["versions"]["runs"], 0, "{first}");
    assert_eq!(first["versions"]["history"], 0, "{first}");
    let id = assert_same_as_export(&source, &table, tmp.path(), "first");

    // Nothing changed: no history read, no commit.
    let again = sync(&source, &table, &[], 0);
    assert_eq!(again["committed"], false, "{again}");
    assert_eq!(again["runs"]["new"], 0, "{again}");
    assert_eq!(again["runs"]["changed"], 0, "{again}");
    assert_eq!(again["runs"]["unchanged"], first["runs"]["new"], "{again}");
    assert_eq!(again["history_rows"], 0, "{again}");
    assert_eq!(again["records"]["read"], 0, "{again}");
    assert_eq!(again["versions"], first["versions"], "{again}");

    // A new run, a changed run (resumed: its second folder), a deleted run.
    held.apply(&source);
    let changed = sync(&source, &table, &[], 0);
    assert_eq!(changed["committed"], true, "{changed}");
    assert_eq!(
        (&changed["runs"]["new"], &changed["runs"]["changed"], &changed["runs"]["deleted"]),
        (&1.into(), &1.into(), &1.into()),
        "{changed}"
    );
    assert_eq!(changed["versions"]["runs"], 1, "{changed}");
    // Only the new and the changed run were read: not the 100,000-step run.
    let read = changed["records"]["read"].as_u64().unwrap();
    assert!(read > 0 && read < first["records"]["read"].as_u64().unwrap() / 10, "{changed}\n{first}");
    assert_eq!(changed["versions"]["history"], 1, "{changed}");
    // New config keys changed the schema; the table stays the same table.
    assert_eq!(assert_same_as_export(&source, &table, tmp.path(), "changed"), id);

    // Another selection is refused without --full-refresh, and taken with it.
    let narrower = ["--select", "run_id,name,state,config.*,history.*"];
    sync(&source, &table, &narrower, 2);
    let refreshed = sync(&source, &table, &[&narrower[..], &["--full-refresh"]].concat(), 0);
    assert_eq!(refreshed["committed"], true, "{refreshed}");
    assert_eq!(refreshed["versions"]["runs"], 2, "{refreshed}");
    // The tables now hold the new selection: it syncs without --full-refresh.
    let next = sync(&source, &table, &narrower, 0);
    assert_eq!(next["committed"], false, "{next}");
    sync(&source, &table, &[], 2);
}

/// A sync killed between its two commits (`history` committed, `runs` not):
/// the next sync removes the history files no run of `runs` refers to and
/// reads their runs again, and the tables equal an export. The kill falls
/// in that window for sure: strace holds every `linkat` (how delta-rs
/// commits a version on local disk) for 5 s after it is done (time for a
/// second, refused sync to run on a loaded machine), and the sync is
/// killed as soon as the new `history` version is there.
#[test]
fn a_sync_killed_between_its_commits_is_completed_by_the_next() {
    use std::time::{Duration, Instant};
    let tmp = tempdir();
    let (source, table) = synced_then_changed(tmp.path());
    let mut child = traced_sync(&source, &table, &["-e", "trace=linkat", "-e", "inject=linkat:delay_exit=5000000"]);
    let history_v1 = table.join("history/_delta_log/00000000000000000001.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !history_v1.exists() {
        assert!(Instant::now() < deadline, "the sync never committed its history");
        assert!(child.try_wait().unwrap().is_none(), "the sync ended before its history commit");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Meanwhile, a second sync into the same tables is refused (exit 2).
    sync(&source, &table, &[], 2);
    // strace and the traced runport share a process group of their own:
    // kill both, and go on only when the runport's last thread is gone (a
    // thread still inside a delayed syscall keeps the table's lock).
    let traced = std::process::Command::new("pgrep").args(["-P", &child.id().to_string()]).output().expect("pgrep");
    assert!(!traced.stdout.trim_ascii().is_empty(), "no traced runport to kill");
    kill_group(&mut child);
    assert!(!table.join("runs/_delta_log/00000000000000000001.json").exists(), "runs committed before the kill");

    let next = sync(&source, &table, &[], 0);
    assert_eq!(next["committed"], true, "{next}");
    assert_same_as_export(&source, &table, tmp.path(), "after-kill");
}

/// A run left RUNNING, its points logged by the MLflow client.
const MLFLOW_LIVE_RUN: &str = r#"
import os, sys
# A file store (`file://.../mlruns`) is in maintenance mode: allowed explicitly.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
from mlflow.tracking import MlflowClient
c = MlflowClient(tracking_uri=sys.argv[1])
exp = c.search_experiments()[0].experiment_id
live = c.create_run(exp, run_name="live")
for s in range(20):
    c.log_metric(live.info.run_id, "loss", 1.0 / (s + 1), step=s)
"#;

/// Changes made with the MLflow client between syncs: more points on one
/// finished run (a new key among them) and on the live run, a tag on
/// another run, a run deleted, a new run.
const MLFLOW_CHANGES: &str = r#"
import os, sys
# A file store (`file://.../mlruns`) is in maintenance mode: allowed explicitly.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
from mlflow.tracking import MlflowClient
c = MlflowClient(tracking_uri=sys.argv[1])
exps = [e.experiment_id for e in c.search_experiments()]
runs = c.search_runs(experiment_ids=exps, order_by=["attributes.start_time ASC"])
assert len(runs) >= 4, len(runs)
live = [r for r in runs if r.info.run_name == "live"][0].info.run_id
runs = [r for r in runs if r.info.run_id != live]
for s in range(20, 30):
    c.log_metric(live, "loss", 1.0 / (s + 1), step=s)
r0, r1, r2 = runs[0].info.run_id, runs[1].info.run_id, runs[2].info.run_id
for s in range(1000, 1010):
    c.log_metric(r0, "m_extra", s * 0.5, step=s)
c.set_tag(r1, "note", "checked")
c.delete_run(r2)
new = c.create_run(runs[0].info.experiment_id)
c.log_metric(new.info.run_id, "loss", 0.25, step=0)
c.set_terminated(new.info.run_id)
"#;

/// Six runs of three metrics × 200 steps logged by the MLflow client at `uri`.
fn populate_mlflow(uri: &str) {
    let args = [
        "populate",
        "--tracking-uri",
        uri,
        "--set",
        "bench",
        "--runs",
        "6",
        "--metrics",
        "3",
        "--steps",
        "200",
        "--jobs",
        "1",
    ];
    testbed_script("mlflow_testbed.py", &args.map(std::ffi::OsStr::new));
}

#[test]
fn sync_of_an_mlflow_sqlite_store_follows_what_the_mlflow_client_logs() {
    let tmp = tempdir();
    let uri = format!("sqlite:///{}", tmp.path().join("mlflow.db").display());
    populate_mlflow(&uri);
    follow_mlflow_changes(&uri, Path::new(&uri), tmp.path(), "mlflow-sqlite", &|| 0);
}

/// A `mlruns/` folder written by the MLflow client's file store: the same
/// changes; the runs whose metric files only grew (the live run logging
/// more points, a run with a new metric, a run with a new tag) have only
/// their appended lines read.
#[test]
fn sync_of_an_mlruns_folder_reads_only_appended_metric_lines() {
    let tmp = tempdir();
    let mlruns = tmp.path().join("mlruns");
    let uri = format!("file://{}", mlruns.display());
    populate_mlflow(&uri);
    let [_, _, changed] = follow_mlflow_changes(&uri, &mlruns, tmp.path(), "mlflow-mlruns", &|| 0);
    assert_eq!(changed.0["runs"]["appended"], 3, "{}", changed.0);
}

/// Syncs an MLflow store (`source`, tracking URI `uri`) while the MLflow
/// client changes it: a live run, then [`MLFLOW_CHANGES`]; the tables
/// equal an export after each change. Returns each sync's summary (first,
/// unchanged, changed) with the requests `served` counted during it.
fn follow_mlflow_changes(
    uri: &str,
    source: &Path,
    scratch: &Path,
    what: &str,
    served: &dyn Fn() -> usize,
) -> [(serde_json::Value, usize); 3] {
    let table = scratch.join("table");
    let counted = |args: &[&str]| {
        let before = served();
        let summary = sync(source, &table, args, 0);
        let n = served() - before;
        (summary, n)
    };
    python_snippet(MLFLOW_LIVE_RUN, &[std::ffi::OsStr::new(uri)]);
    let first = counted(&[]);
    assert_eq!(first.0["runs"]["new"], 7, "{}", first.0);
    // The live run's history is a file of its own: two history files and the runs file.
    assert_eq!(first.0["files_added"], 3, "{}", first.0);
    assert_same_as_export(source, &table, scratch, &format!("{what}-first"));
    let again = counted(&[]);
    assert_eq!(again.0["committed"], false, "{}", again.0);
    assert_eq!(again.0["runs"]["unchanged"], 7, "{}", again.0);

    python_snippet(MLFLOW_CHANGES, &[std::ffi::OsStr::new(uri)]);
    let changed = counted(&[]);
    let runs = &changed.0["runs"];
    assert_eq!(
        (&runs["new"], &runs["changed"], &runs["deleted"], &runs["unchanged"]),
        (&1.into(), &3.into(), &1.into(), &3.into()),
        "{}",
        changed.0
    );
    assert_same_as_export(source, &table, scratch, &format!("{what}-changed"));
    [first, again, changed]
}

/// The same changes, made with the MLflow client through a real `mlflow
/// server`, synced over its REST API: an unchanged sync sends listing
/// requests only, and a changed one fetches the history of the changed
/// runs alone.
#[test]
fn sync_over_the_mlflow_rest_api_follows_what_the_mlflow_client_logs() {
    let tmp = tempdir();
    let server = MlflowServer::start(&tmp.path().join("mlflow.db"), false);
    let uri = server.tracking_uri.clone();
    testbed_script(
        "mlflow_testbed.py",
        &["populate", "--tracking-uri", &uri, "--set", "bench", "--runs", "6", "--metrics", "3", "--steps", "200"]
            .map(std::ffi::OsStr::new),
    );
    let source = server.source();
    let [first, again, changed] =
        follow_mlflow_changes(&uri, Path::new(&source), tmp.path(), "mlflow-rest", &|| server.requests_served());
    for (summary, served) in [&first, &again, &changed] {
        assert_eq!(summary["http"]["requests"].as_u64(), Some(*served as u64), "{summary}");
    }
    // Nothing changed: the listing's requests only (experiments, runs/search).
    assert!(again.1 <= 3, "an unchanged sync sent {} requests: {}", again.1, again.0);
    // The history of the four runs read, not of the other three (the
    // requests are bulk ones, for several runs each: count the bytes).
    let bytes = |s: &serde_json::Value| s["http"]["bytes"].as_u64().unwrap();
    assert!(bytes(&changed.0) < bytes(&first.0) * 3 / 4, "{}\n{}", changed.0, first.0);
}

/// Reads killed and completed tables the way a user does (deltalake,
/// polars; DuckDB's reads given as `duckdb:PATH`) and says which state each table is at: the export before the
/// changes (`old`) or after (`new`). A completed table must be `new` with
/// no file that no version refers to.
const KILLED_TABLES: &str = r#"
import sys, os, json, glob
import polars as pl
from polars.testing import assert_frame_equal
from deltalake import DeltaTable

old, new, tables = sys.argv[1], sys.argv[2], sys.argv[3:]
cols = ["run_id", "key", "step", "timestamp", "runtime_s", "value", "value_json"]
sys_cols = ["run_id", "key", "timestamp", "value"]
def export(d):
    return pl.read_parquet(f"{d}/runs.parquet"), pl.read_parquet(f"{d}/history/*.parquet"), pl.read_parquet(f"{d}/system/*.parquet")
states = {"old": export(old), "new": export(new)}


def same(got, want, by):
    if sorted(got.columns) != sorted(want.columns):
        return False
    try:
        assert_frame_equal(got.select(want.columns).sort(by, nulls_last=True), want.sort(by, nulls_last=True), check_exact=True)
        return True
    except AssertionError:
        return False

assert not same(states["old"][2], states["new"][2], sys_cols), "the change leaves the system metrics as they were"

def state(got, i, by):
    found = [name for name, s in states.items() if same(got, s[i], by)]
    return found[0] if found else None

def referred(table):
    names = set()
    for log in glob.glob(f"{table}/_delta_log/*.json"):
        for line in open(log):
            a = json.loads(line)
            for kind in ("add", "remove"):
                if kind in a:
                    names.add(a[kind]["path"])
    return names

seen = {}
for t in tables:
    kind, path = t.split(":", 1)
    if kind == "duckdb":
        # What DuckDB's delta_scan read of a killed table (DuckDB venv).
        runs, hist = pl.read_parquet(f"{path}/duck-runs.parquet"), pl.read_parquet(f"{path}/duck-history.parquet")
        system = pl.read_parquet(f"{path}/duck-system.parquet")
    else:
        runs = pl.read_delta(f"{path}/runs")
        hist = pl.read_delta(f"{path}/history")
        system = pl.read_delta(f"{path}/system")
        DeltaTable(f"{path}/runs").to_pyarrow_table()
    runs = runs.drop([c for c in runs.columns if c.startswith("_sync_")])
    got = (state(runs, 0, ["run_id"]), state(hist, 1, cols), state(system, 2, sys_cols))
    assert None not in got, (path, got, runs.height, hist.height, system.height)
    if kind == "done":
        assert got == ("new", "new", "new"), (path, got)
        for sub in ("runs", "history", "system"):
            files = {os.path.basename(f) for f in glob.glob(f"{path}/{sub}/part-*.parquet")}
            stray = files - referred(f"{path}/{sub}")
            assert not stray, (path, sub, stray)
            staged = glob.glob(f"{path}/{sub}/_delta_log/*#*")
            assert not staged, (path, staged)
    name = f"{kind} runs={got[0]} history={got[1]} system={got[2]}"
    seen[name] = seen.get(name, 0) + 1
print(json.dumps(seen, sort_keys=True))
"#;

/// SIGKILL to strace and the traced runport (a process group of their
/// own); returns once neither runs any more (a zombie has released its locks).
fn kill_group(child: &mut std::process::Child) {
    let group = child.id();
    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
    let _ = child.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("pgrep").args(["-g", &group.to_string()]).output().expect("pgrep");
        let running = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // The state follows the command name in parentheses. A
                // zombie leader may still have threads exiting (one inside
                // an fsync): the process's files, its lock among them, are
                // closed only when the last one is gone.
                let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
                let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
                !zombie || threads > 1
            })
            .count();
        if running == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the killed sync is still running");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// SIGKILL at 40 points spread over a sync of every column and the system
/// metrics (three tables; with each `fsync`, `linkat` and `unlink` slowed
/// by strace, so that every window is wide): each table is always at a
/// whole version, old or new; the next sync completes to the tables of an
/// uninterrupted sync and removes the files the killed one wrote and never
/// committed.
#[test]
fn syncs_killed_at_40_points_leave_whole_versions_and_the_next_sync_completes_them() {
    use std::time::Instant;
    const ALL: &[&str] = &["--select", "*,system.*"];
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    let base = tmp.path().join("base");
    let held = Held::copy_standard(&source);
    sync(&source, &base, ALL, 0);
    let (old, new) = (tmp.path().join("export-old"), tmp.path().join("export-new"));
    export_json(&source, &old, ALL, 0);
    held.apply(&source);
    export_json(&source, &new, ALL, 0);

    // Each fsync, linkat (a commit) and unlink slowed.
    let slowed = [
        "-e",
        "trace=fsync,linkat,unlink,unlinkat",
        "-e",
        "inject=fsync:delay_exit=150000",
        "-e",
        "inject=linkat:delay_exit=300000",
        "-e",
        "inject=unlink,unlinkat:delay_exit=50000",
    ];
    let traced = |table: &Path| traced_sync_logged(&source, table, &slowed, None, ALL);
    // How long a traced sync takes, uninterrupted.
    let whole = tmp.path().join("whole");
    copy_dir(&base, &whole);
    let started = Instant::now();
    let status = traced(&whole).wait().unwrap();
    let span = started.elapsed();
    assert!(status.success(), "the traced sync failed: {status}");
    eprintln!("a traced sync takes {span:?}");

    let kills = 40u32;
    let seed = std::env::var("RUNPORT_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("kill points from seed {seed} (RUNPORT_TEST_SEED)");
    let mut rng = seed | 1;
    let mut tables: Vec<String> = Vec::new();
    let mut removed = 0u64;
    for i in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Kill points spread over the whole sync: one in each of 40 slices, at random within it.
        let within = (rng % 1000) as f64 / 1000.0;
        let at = span.mul_f64((f64::from(i) + within) / f64::from(kills));
        let work = tmp.path().join(format!("work-{i}"));
        copy_dir(&base, &work);
        let mut child = traced(&work);
        std::thread::sleep(at);
        kill_group(&mut child);
        let killed = tmp.path().join(format!("killed-{i}"));
        copy_dir(&work, &killed);
        tables.push(format!("killed:{}", killed.display()));
        if i % 5 == 0 {
            // DuckDB too, on every fifth.
            duckdb_delta_scan(&killed.join("runs"), &killed.join("duck-runs.parquet"));
            duckdb_delta_scan(&killed.join("history"), &killed.join("duck-history.parquet"));
            duckdb_delta_scan(&killed.join("system"), &killed.join("duck-system.parquet"));
            tables.push(format!("duckdb:{}", killed.display()));
        }
        let next = sync(&source, &work, ALL, 0);
        removed += next["unreferenced_removed"].as_u64().unwrap();
        tables.push(format!("done:{}", work.display()));
    }
    let mut args: Vec<&std::ffi::OsStr> = vec![old.as_os_str(), new.as_os_str()];
    args.extend(tables.iter().map(std::ffi::OsStr::new));
    let out = python_snippet(KILLED_TABLES, &args);
    eprintln!("states after {kills} kills: {}", out.trim());
    let seen: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(seen.as_object().unwrap().iter().filter(|(k, _)| k.starts_with("done")).count(), 1, "{seen}");
    // The kills fell both before any commit and after one: both states were read.
    let killed_old = seen.get("killed runs=old history=old system=old").and_then(|v| v.as_u64()).unwrap_or(0);
    assert!(killed_old > 0 && killed_old < u64::from(kills), "{seen}");
    assert!(removed > 0, "no kill left a file to clean up: {seen}");
}

/// The W&B API (the test server, serving SDK-written runs): runs added, a
/// run whose history grows (a resumed run's second folder) and a run
/// deleted between syncs; the tables equal an export after each, an
/// unchanged sync sends the listing's requests only, and a changed one
/// fetches the history of the changed runs alone.
#[test]
fn sync_over_the_wandb_api_follows_added_grown_and_deleted_runs() {
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    let table = tmp.path().join("table");
    let table_arg = table.to_str().unwrap();
    let held = Held::copy_standard(&source);
    let server = WandbServer::start(&source, &[]);
    // A run still logging: its first half of steps at the first sync.
    server.admin("/_testbed/rows", Some(serde_json::json!({"run": "std-long", "rows": 95_000})));
    let api_sync = |what: &str| {
        server.admin("/_testbed/reset", Some(serde_json::json!({"requests": true})));
        let (code, stdout, stderr) = server.runport(&["sync", table_arg, "--json"]);
        assert_eq!(code, 0, "sync {what}\n{stdout}\n{stderr}");
        let mut summary = last_json_line(&stdout);
        let served = server.admin("/_testbed/requests", None);
        assert_eq!(summary["http"]["requests"], served["total"], "{summary}");
        summary["served"] = served["by_operation"].clone();
        let export = tmp.path().join(format!("export-{what}"));
        let (code, stdout, stderr) = server.runport(&["export", "-o", export.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "export {what}\n{stdout}\n{stderr}");
        assert_same_as(&table, &export, what);
        summary
    };
    let first = api_sync("wandb-api-first");
    assert!(first["runs"]["new"].as_u64().unwrap() >= 8, "{first}");
    let again = api_sync("wandb-api-again");
    assert_eq!(again["committed"], false, "{again}");
    assert_eq!(again["runs"]["unchanged"], first["runs"]["new"], "{again}");
    // The listing alone: one page for this set.
    assert_eq!(again["http"]["requests"], 1, "{again}");

    held.apply(&source);
    server.admin("/_testbed/reload", Some(serde_json::json!({})));
    server.admin("/_testbed/rows", Some(serde_json::json!({"run": "std-long", "rows": null})));
    let changed = api_sync("wandb-api-changed");
    let runs = &changed["runs"];
    assert_eq!((&runs["new"], &runs["changed"], &runs["deleted"]), (&1.into(), &2.into(), &1.into()), "{changed}");
    // The long run grew by appending: its later steps alone were fetched
    // (the tables still equal an export, a full read). The resumed run
    // logged a step again in its second folder: read whole.
    assert_eq!(runs["appended"], 1, "{changed}");
    // History files for the new and the resumed run alone; pages for the
    // long run's new steps.
    assert_eq!(changed["served"]["RunParquetHistory"], 2, "{changed}");
    assert!(changed["served"]["RunHistoryPage"].as_u64().unwrap() > 0, "{changed}");
}

/// Logs with the W&B SDK in this child process: 200 steps, then waits for
/// the file `go`, then 200 more steps and finishes. Creates `ready` once the
/// first steps are logged.
const SDK_WRITER: &str = r#"
import os, sys, time
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
import wandb
out, ready, go = sys.argv[1], sys.argv[2], sys.argv[3]
settings = wandb.Settings(host="testbed-host", program="train.py", disable_git=True, disable_code=True,
                          save_code=False, x_save_requirements=False, x_disable_stats=True)
run = wandb.init(project="sync-live", id="live-sdk", dir=out, settings=settings, config={"lr": 0.1})
for s in range(200):
    run.log({"loss": 1.0 / (s + 1), "acc": s / 400})
run.summary["phase"] = 1
open(ready, "w").close()
deadline = time.time() + 300
while not os.path.exists(go):
    assert time.time() < deadline, "never told to go on"
    time.sleep(0.05)
for s in range(200, 400):
    run.log({"loss": 1.0 / (s + 1), "acc": s / 400})
run.summary["phase"] = 2
run.finish()
"#;

/// `runport sync SOURCE TABLE` under strace with `strace_args` (the
/// syscalls traced and the faults injected), in a process group of its
/// own (see [`kill_group`]), its output discarded.
fn traced_sync(source: &Path, table: &Path, strace_args: &[&str]) -> std::process::Child {
    traced_sync_logged(source, table, strace_args, None, &[])
}

/// [`traced_sync`], its stderr written to `log` when given.
fn traced_sync_logged(
    source: &Path,
    table: &Path,
    strace_args: &[&str],
    log: Option<&Path>,
    runport_args: &[&str],
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let stderr = match log {
        Some(path) => std::process::Stdio::from(std::fs::File::create(path).unwrap()),
        None => std::process::Stdio::null(),
    };
    std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null"])
        .args(strace_args)
        .arg(runport_bin())
        .arg("sync")
        .arg(source)
        .arg(table)
        .args(runport_args)
        .env("RUST_LOG", "runport=warn")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs strace (fault injection) on PATH: {e}"))
}

/// Two syncs whose lock did not hold (its file removed by hand; a shared
/// file system whose locks do not reach other machines): their commits
/// race through Delta's optimistic concurrency. The first sync is held by
/// strace for 4 s before each commit; the second, started meanwhile,
/// commits first. The one that commits second fails cleanly (exit 1,
/// naming the race) with nothing committed, the winner's versions stay,
/// the tables equal an export, and the loser's files are removed by the
/// next sync that commits.
#[test]
fn a_sync_that_loses_a_commit_race_fails_cleanly_and_the_winners_commits_stay() {
    use std::time::{Duration, Instant};
    let tmp = tempdir();
    let (source, table) = synced_then_changed(tmp.path());
    let log = tmp.path().join("held.log");
    let mut first = KillOnDrop(traced_sync_logged(
        &source,
        &table,
        &["-e", "trace=linkat", "-e", "inject=linkat:delay_enter=4000000"],
        Some(&log),
        &[],
    ));
    // The held sync is at its history commit: its staging file is there.
    let staging = || {
        std::fs::read_dir(table.join("history/_delta_log"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains(".json#"))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !staging() {
        assert!(Instant::now() < deadline, "the held sync never reached its commit");
        assert!(first.0.try_wait().unwrap().is_none(), "the held sync ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    let versions_before = delta_versions(&table);
    // The lock does not hold: the second sync runs beside the first.
    std::fs::remove_file(table.join(".runport-sync-lock")).unwrap();
    let (code, stdout, stderr) =
        runport_out(&["sync".as_ref(), source.as_os_str(), table.as_os_str(), "--json".as_ref()]);
    let held_status = first.0.wait().unwrap();
    let held_log = std::fs::read_to_string(&log).unwrap();
    let (won, lost_log) = match (code, held_status.code()) {
        (0, Some(1)) => ("second", held_log),
        (1, Some(0)) => ("held", stderr.clone()),
        other => panic!("one sync must win and one fail (exit 1): {other:?}\n{stdout}\n{stderr}\n{held_log}"),
    };
    assert!(lost_log.contains("another sync committed") && lost_log.contains("run the sync again"), "{lost_log}");
    // One commit per table landed: the winner's.
    let after = delta_versions(&table);
    assert_eq!(after, versions_before.iter().map(|v| v + 1).collect::<Vec<_>>(), "{won} won");
    assert_same_as_export(&source, &table, tmp.path(), "after-race");
    let again = sync(&source, &table, &[], 0);
    assert_eq!(again["committed"], false, "{again}");

    // The next sync that commits removes the loser's files.
    for f in folders(&source, "std-config") {
        std::fs::remove_dir_all(f).unwrap();
    }
    let next = sync(&source, &table, &[], 0);
    assert_eq!(next["committed"], true, "{next}");
    // The winner, when second, removed them after its commits (they were
    // older than its start: the loser could no longer commit after it).
    let removed = next["unreferenced_removed"].as_u64().unwrap()
        + if won == "second" { last_json_line(&stdout)["unreferenced_removed"].as_u64().unwrap() } else { 0 };
    assert!(removed > 0, "{won} won; {stdout}\n{next}");
    assert_same_as_export(&source, &table, tmp.path(), "after-race-next");
    for t in ["history", "runs"] {
        let unreferenced = unreferenced_files(&table.join(t));
        assert!(unreferenced.is_empty(), "{t}: {unreferenced:?}");
    }
}

/// Files in a Delta table's folder that no commit of its log adds or
/// removes (a data file, or a commit's staging file).
fn unreferenced_files(table: &Path) -> Vec<String> {
    let log = table.join("_delta_log");
    let mut referred = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in std::fs::read_dir(&log).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".json#") {
            out.push(format!("_delta_log/{name}"));
        } else if name.ends_with(".json") {
            for line in std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.trim().is_empty()) {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                for kind in ["add", "remove"] {
                    if let Some(p) = action[kind]["path"].as_str() {
                        referred.insert(p.to_string());
                    }
                }
            }
        }
    }
    for e in std::fs::read_dir(table).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".parquet") && !referred.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Starts shards `0/4` .. `3/4` (`start(shard)`) a random delay apart,
/// kills one of them at a random point, and checks that the others exit 0;
/// returns the killed shard's number and the others' commit retries.
pub(crate) fn race_shards(
    next: &mut impl FnMut(u64) -> u64,
    what: &str,
    start: impl Fn(&str) -> std::process::Child,
) -> (u64, u64) {
    use std::time::Duration;
    let killed = next(4);
    let mut children = Vec::new();
    for k in 0..4 {
        std::thread::sleep(Duration::from_millis(next(150)));
        children.push((k, start(&format!("{k}/4"))));
    }
    std::thread::sleep(Duration::from_millis(next(1500)));
    let _ = children[killed as usize].1.kill();
    let mut retries = 0;
    for (k, child) in children {
        let out = child.wait_with_output().unwrap();
        if k == killed {
            continue;
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{what}, shard {k}/4:\n{stdout}\n{stderr}");
        retries += last_json_line(&stdout)["commit_retries"].as_u64().unwrap();
    }
    (killed, retries)
}

/// `runport sync --shard K/N` as a child process into `table`, its
/// summary on stdout.
fn shard_sync(source: &Path, table: &Path, shard: &str) -> std::process::Child {
    runport()
        .args(["sync".as_ref(), source.as_os_str(), table.as_os_str(), "--json".as_ref(), "--shard".as_ref()])
        .arg(shard)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start runport")
}

/// `--shard K/N`: 4 shard processes started together (each after a random
/// delay) sync into one table, 10 rounds: a fresh table, then the source
/// changed (a new run, a grown one, a deleted one) and the shards again.
/// In each round one shard is killed at a random point and run again. The
/// tables always equal an export of the source (one unsharded sync's
/// tables); every shard commits only its runs, racing the others through
/// Delta's optimistic concurrency.
#[test]
fn four_shards_started_together_sync_into_tables_equal_to_an_export() {
    let tmp = tempdir();
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    let held = Held::copy_standard(&old.join("wandb"));
    copy_dir(&old, &new);
    held.apply(&new.join("wandb"));
    let mut next = seeded_rng("delays and kills");
    let mut retries = 0;
    for round in 0..10 {
        let dir = tmp.path().join(format!("round-{round}"));
        let source = dir.join("wandb");
        let table = dir.join("table");
        for (state, from) in [("old", &old), ("new", &new)] {
            if source.exists() {
                std::fs::remove_dir_all(&source).unwrap();
            }
            copy_dir(&from.join("wandb"), &source);
            let (killed, more) =
                race_shards(&mut next, &format!("round {round} ({state})"), |k| shard_sync(&source, &table, k));
            retries += more;
            // The killed shard, run again.
            let again = sync(&source, &table, &["--shard", &format!("{killed}/4")], 0);
            assert_eq!(again["shard"], format!("{killed}/4"), "{again}");
            assert_same_as_export(&source, &table, &dir, &format!("round-{round}-{state}"));
            for t in ["history", "runs"] {
                let unreferenced = unreferenced_files(&table.join(t));
                // Only the killed shard's own files may be left (for its next commit to remove).
                assert!(
                    unreferenced.iter().all(|f| f.contains(&format!("s{killed}of4")) || f.contains(".json#")),
                    "round {round}: {t}: {unreferenced:?}"
                );
            }
        }
        // Another shard count is refused without --full-refresh.
        sync(&source, &table, &["--shard", "0/2"], 2);
        sync(&source, &table, &[], 2);
    }
    eprintln!("commit retries over the rounds: {retries}");
}

/// The latest version of `TABLE/history` and `TABLE/runs`, from their logs.
fn delta_versions(table: &Path) -> Vec<u64> {
    ["history", "runs"]
        .iter()
        .map(|t| {
            std::fs::read_dir(table.join(t).join("_delta_log"))
                .unwrap()
                .filter_map(|e| {
                    let name = e.unwrap().file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".json").and_then(|n| n.parse::<u64>().ok())
                })
                .max()
                .unwrap()
        })
        .collect()
}

/// A child process, killed when the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The SDK-written live run's state and last step, as the tables hold them.
const LIVE_RUN_IN_TABLES: &str = r#"
import sys, polars as pl
r = pl.read_delta(sys.argv[1] + "/runs").filter(pl.col("run_id") == "live-sdk")
h = pl.read_delta(sys.argv[1] + "/history").filter(pl.col("run_id") == "live-sdk")
print(r["state"][0], h["step"].max())
"#;

/// A run being written by the SDK in a child process: a sync while it logs
/// reads what the SDK has written so far (the tables equal an export of the
/// same files), and the sync after it finished brings in the rest.
#[test]
fn sync_follows_a_run_the_sdk_is_still_writing() {
    let tmp = tempdir();
    // The SDK writes its run folder into DIR/wandb, beside the copied ones.
    let source = tmp.path().join("wandb");
    let table = tmp.path().join("table");
    Held::copy_standard(&source);
    let (ready, go) = (tmp.path().join("ready"), tmp.path().join("go"));
    let mut writer = KillOnDrop(
        std::process::Command::new(python())
            .arg("-c")
            .arg(SDK_WRITER)
            .arg(tmp.path())
            .arg(&ready)
            .arg(&go)
            .spawn()
            .expect("start the SDK writer"),
    );
    let child = &mut writer.0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !ready.exists() {
        assert!(std::time::Instant::now() < deadline, "the SDK never logged its first steps");
        assert!(child.try_wait().unwrap().is_none(), "the SDK writer ended early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The SDK's service writes the log behind the client: wait until it is still.
    let log_size = || -> u64 {
        walk_files(&source)
            .iter()
            .filter(|p| p.to_string_lossy().ends_with("live-sdk.wandb"))
            .map(|p| p.metadata().unwrap().len())
            .sum()
    };
    let mut last = (log_size(), std::time::Instant::now());
    while last.1.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = log_size();
        if now != last.0 {
            last = (now, std::time::Instant::now());
        }
        assert!(std::time::Instant::now() < deadline, "the SDK's log never stopped growing");
    }
    assert!(last.0 > 0, "no .wandb file for the live run under {}", source.display());
    let first = sync(&source, &table, &[], 0);
    assert_same_as_export(&source, &table, tmp.path(), "sdk-live");
    let out = python_snippet(LIVE_RUN_IN_TABLES, &[table.as_os_str()]);
    // What the SDK had written: the run, running, and its steps up to one
    // of the last (the SDK writes a step's row once the next one begins).
    let (state, step) = out.trim().split_once(' ').expect("state and step");
    assert_eq!(state, "running", "{first}");
    assert!((100..200).contains(&step.parse::<i64>().unwrap()), "last step {step}: {first}");

    std::fs::write(&go, b"").unwrap();
    assert!(child.wait().unwrap().success(), "the SDK writer failed");
    let done = sync(&source, &table, &[], 0);
    assert_eq!((&done["runs"]["changed"], &done["runs"]["new"]), (&1.into(), &0.into()), "{done}");
    // The log grew by appending: only its later records became rows, after
    // the table's (and the tables still equal an export, a whole read).
    assert_eq!(done["runs"]["appended"], 1, "{done}");
    assert_same_as_export(&source, &table, tmp.path(), "sdk-finished");
    let out = python_snippet(LIVE_RUN_IN_TABLES, &[table.as_os_str()]);
    assert_eq!(out.trim(), "finished 399", "{done}");
}

/// A run that cannot be read keeps its rows (the sync exits 1 and names
/// it), and is read again at the next sync, which brings it in.
#[test]
fn a_run_that_fails_to_read_keeps_its_rows_and_is_read_again_next_time() {
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    let table = tmp.path().join("table");
    Held::copy_standard(&source);
    sync(&source, &table, &[], 0);
    let before = tmp.path().join("export-before");
    export_json(&source, &before, &[], 0);
    let log = wandb_logs(&folders(&source, "std-summary")[0]).remove(0);
    let good = std::fs::read(&log).unwrap();
    std::fs::write(&log, b"this is not a W&B log, but it is where the run's log was".repeat(100)).unwrap();
    let failed = sync(&source, &table, &[], 1);
    assert_eq!((&failed["runs"]["failed"], &failed["runs"]["changed"]), (&1.into(), &0.into()), "{failed}");
    // Nothing else to write: no new version.
    assert_eq!(failed["committed"], false, "{failed}");
    assert_eq!((&failed["versions"]["runs"], &failed["versions"]["history"]), (&0.into(), &0.into()), "{failed}");
    assert!(failed["failures"][0]["run"].as_str().unwrap().contains("std-summary"), "{failed}");
    // The failed run's rows are those of before; nothing else changed.
    assert_same_as(&table, &before, "failed-run-kept");

    std::fs::write(&log, &good).unwrap();
    let again = sync(&source, &table, &[], 0);
    assert_eq!((&again["runs"]["changed"], &again["runs"]["failed"]), (&1.into(), &0.into()), "{again}");
    assert_same_as_export(&source, &table, tmp.path(), "failed-run-read-again");
}
