//! `runport sync`: Delta tables kept up to date with W&B local files written
//! by the real SDK. After each sync the tables, read back with Python
//! `deltalake` and polars `read_delta`, equal a plain `export` of the same
//! source; a sync with nothing changed commits nothing; new, changed
//! (a resumed run's second folder) and deleted runs are brought in.

use std::path::{Path, PathBuf};

use crate::harness::*;

/// Reads the Delta tables with deltalake and polars and compares them with
/// an export (sync columns aside), rows sorted by every column.
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
assert sync_cols == ["_sync_key", "_sync_fingerprint", "_sync_history_file"], sync_cols
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
print(f"runs {runs.height}, history {hist.height}, files {adds.height}, version {dt.version()}")
print(f"runs table id {DeltaTable(f'{table}/runs').metadata().id}")
"#;

fn sync(source: &Path, table: &Path, args: &[&str], want_code: i32) -> serde_json::Value {
    let mut all: Vec<&std::ffi::OsStr> =
        vec!["sync".as_ref(), source.as_os_str(), table.as_os_str(), "--json".as_ref()];
    all.extend(args.iter().map(|a| a.as_ref() as &std::ffi::OsStr));
    let (code, stdout, stderr) = runport_out(&all);
    assert_eq!(code, want_code, "runport {all:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    if want_code == 0 { last_json_line(&stdout) } else { serde_json::Value::Null }
}

/// Returns the `runs` table's id (its metadata id).
fn assert_same_as_export(source: &Path, table: &Path, scratch: &Path, what: &str) -> String {
    let export = scratch.join(format!("export-{what}"));
    export_json(source, &export, &[], 0);
    let out = python_snippet(SAME_AS_EXPORT, &[table.as_os_str(), export.as_os_str()]);
    eprintln!("{what}: {}", out.trim());
    out.lines().last().and_then(|l| l.strip_prefix("runs table id ")).expect("the table id").to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&src, &dst);
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).unwrap();
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

#[test]
fn sync_brings_delta_tables_to_the_source_and_reads_only_what_changed() {
    let set = wandb_runs("standard").join("wandb");
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    let table = tmp.path().join("table");
    // The source without one run (added later) and without the second
    // folder of a resumed run (its run changes later).
    std::fs::create_dir_all(&source).unwrap();
    let later_new = folders(&set, "std-config");
    let resumed = folders(&set, "std-resumed");
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    for entry in std::fs::read_dir(&set).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() && !p.is_symlink() && !later_new.contains(&p) && p != resumed[1] {
            copy_dir(&p, &source.join(p.file_name().unwrap()));
        }
    }

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
    for f in &later_new {
        copy_dir(f, &source.join(f.file_name().unwrap()));
    }
    copy_dir(&resumed[1], &source.join(resumed[1].file_name().unwrap()));
    for f in folders(&source, "std-values") {
        std::fs::remove_dir_all(f).unwrap();
    }
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
}

/// A sync killed between its two commits (`history` committed, `runs` not):
/// the next sync removes the history files no run of `runs` refers to and
/// reads their runs again, and the tables equal an export. The kill falls
/// in that window for sure: strace holds every `linkat` (how delta-rs
/// commits a version on local disk) for 1.5 s after it is done, and the
/// sync is killed as soon as the new `history` version is there.
#[test]
fn a_sync_killed_between_its_commits_is_completed_by_the_next() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let set = wandb_runs("standard").join("wandb");
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    let table = tmp.path().join("table");
    let later_new = folders(&set, "std-config");
    std::fs::create_dir_all(&source).unwrap();
    for entry in std::fs::read_dir(&set).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() && !p.is_symlink() && !later_new.contains(&p) {
            copy_dir(&p, &source.join(p.file_name().unwrap()));
        }
    }
    sync(&source, &table, &[], 0);
    for f in &later_new {
        copy_dir(f, &source.join(f.file_name().unwrap()));
    }
    for f in folders(&source, "std-values") {
        std::fs::remove_dir_all(f).unwrap();
    }
    let mut child = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=linkat", "-e", "inject=linkat:delay_exit=1500000"])
        .arg(env!("CARGO_BIN_EXE_runport"))
        .arg("sync")
        .arg(&source)
        .arg(&table)
        .env("RUST_LOG", "runport=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs strace (fault injection) on PATH: {e}"));
    let history_v1 = table.join("history/_delta_log/00000000000000000001.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !history_v1.exists() {
        assert!(Instant::now() < deadline, "the sync never committed its history");
        assert!(child.try_wait().unwrap().is_none(), "the sync ended before its history commit");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Meanwhile, a second sync into the same tables is refused (exit 2).
    sync(&source, &table, &[], 2);
    // strace and the traced runport: SIGKILL to the whole process group is
    // not ours to send; kill the traced child, then strace.
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-P", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(killed, "no traced runport to kill");
    let _ = child.kill();
    let _ = child.wait();
    assert!(!table.join("runs/_delta_log/00000000000000000001.json").exists(), "runs committed before the kill");

    let next = sync(&source, &table, &[], 0);
    assert_eq!(next["committed"], true, "{next}");
    assert_same_as_export(&source, &table, tmp.path(), "after-kill");
}

/// A run left RUNNING, its points logged by the MLflow client.
const MLFLOW_LIVE_RUN: &str = r#"
import sys
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
import sys
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

#[test]
fn sync_of_an_mlflow_sqlite_store_follows_what_the_mlflow_client_logs() {
    let tmp = tempdir();
    let uri = format!("sqlite:///{}", tmp.path().join("mlflow.db").display());
    testbed_script(
        "mlflow_testbed.py",
        &[
            "populate",
            "--tracking-uri",
            &uri,
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
        ]
        .map(std::ffi::OsStr::new),
    );
    python_snippet(MLFLOW_LIVE_RUN, &[std::ffi::OsStr::new(&uri)]);
    let (source, table) = (Path::new(&uri), tmp.path().join("table"));
    let first = sync(source, &table, &[], 0);
    assert_eq!(first["runs"]["new"], 7, "{first}");
    // The live run's history is a file of its own: two history files and the runs file.
    assert_eq!(first["files_added"], 3, "{first}");
    assert_same_as_export(source, &table, tmp.path(), "mlflow-first");
    let again = sync(source, &table, &[], 0);
    assert_eq!(again["committed"], false, "{again}");
    assert_eq!(again["runs"]["unchanged"], 7, "{again}");

    python_snippet(MLFLOW_CHANGES, &[std::ffi::OsStr::new(&uri)]);
    let changed = sync(source, &table, &[], 0);
    assert_eq!(
        (
            &changed["runs"]["new"],
            &changed["runs"]["changed"],
            &changed["runs"]["deleted"],
            &changed["runs"]["unchanged"]
        ),
        (&1.into(), &3.into(), &1.into(), &3.into()),
        "{changed}"
    );
    assert_same_as_export(source, &table, tmp.path(), "mlflow-changed");
}
