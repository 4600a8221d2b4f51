//! The `system` table: W&B system metrics written by the real SDK (stats
//! sampled every 0.1 s), exported from the `.wandb` files and from the API
//! (the test server serving the same files), checked against the
//! independent reference reader and the official client's
//! `run.history(stream="system")`; read only when selected; synced into
//! `TABLE/system`.

use std::path::Path;

use crate::harness::*;

const SYSTEM: &[&str] = &["--select", "run_id,name,system.*"];

fn check_system(runs: &Path, export: &Path, select: Option<&str>) -> String {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["check-system".as_ref(), "--runs".as_ref(), runs.as_os_str(), "--export".as_ref(), export.as_os_str()];
    if let Some(s) = select {
        args.extend::<[&std::ffi::OsStr; 2]>(["--select".as_ref(), s.as_ref()]);
    }
    String::from_utf8_lossy(&testbed_script("wandb_reference.py", &args).stdout).into_owned()
}

#[test]
fn files_export_equals_the_reference_and_reads_stats_only_when_selected() {
    let runs = wandb_runs("system");
    let out = tempdir();
    let summary = export_json(&runs, out.path(), SYSTEM, 0);
    let rows = summary["rows"]["system"].as_u64().unwrap();
    assert!(rows > 500, "{summary}");
    assert!(summary["records"]["decoded_stats"].as_u64().unwrap() > 50, "{summary}");
    eprintln!("{}", check_system(&runs, out.path(), None));

    // A part of the keys.
    let part = tempdir();
    let pattern = "system.cpu,system.disk.*";
    let s = export_json(&runs, part.path(), &["--select", &format!("run_id,{pattern}")], 0);
    assert!(s["rows"]["system"].as_u64().unwrap() < rows, "{s}");
    check_system(&runs, part.path(), Some(pattern));

    // Not selected: no stats record decoded, no table.
    let none = tempdir();
    let s = export_json(&runs, none.path(), &["--select", "run_id,name,history.*"], 0);
    assert_eq!(s["records"]["decoded_stats"], 0, "{s}");
    assert!(s["rows"].get("system").is_none() && !none.path().join("system").exists(), "{s}");
    let all = tempdir();
    let s = export_json(&runs, all.path(), &[], 0);
    assert!(s["rows"].get("system").is_none(), "the default selection has no system table: {s}");

    // The check can fail: an export without the table is not equal.
    let out = std::process::Command::new(python())
        .arg(testbed_dir().join("wandb_reference.py"))
        .args([
            "check-system".as_ref(),
            "--runs".as_ref(),
            runs.as_os_str(),
            "--export".as_ref(),
            none.path().as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an export without system rows passed the check");
}

#[test]
fn api_export_equals_the_files_and_the_official_client_with_one_request_per_run_with_samples() {
    let runs = wandb_runs("system");
    let server = WandbServer::start(&runs, &[]);
    let out = tempdir();
    let o = out.path().to_str().unwrap();
    server.admin("/_testbed/reset", Some(serde_json::json!({"requests": true})));
    let (code, stdout, stderr) = server.runport(&["export", "-o", o, "--select", "run_id,name,system.*", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let summary = last_json_line(&stdout);
    let served = server.admin("/_testbed/requests", None);
    // One listing page and one events request per run with samples (the
    // run written with stats off has none: no request).
    let scen = scenarios(&runs);
    let with_samples =
        scen["scenarios"].as_object().unwrap().values().filter(|s| s["system"]["samples"].as_u64() != Some(0)).count()
            as u64;
    assert_eq!(served["by_operation"]["RunEvents"].as_u64(), Some(with_samples), "{}", served["by_operation"]);
    assert_eq!(served["total"].as_u64(), Some(with_samples + 1), "{}", served["by_operation"]);
    assert_eq!(summary["http"]["requests"], served["total"], "{summary}");
    check_system(&runs, out.path(), None);
    let official = testbed_script(
        "check_official_client.py",
        &["--runs".as_ref(), runs.as_os_str(), "--system".as_ref(), out.path().as_os_str()],
    );
    eprintln!("{}", String::from_utf8_lossy(&official.stdout));

    // The wide layout reads history twice (its columns, then its rows);
    // system metrics only in the second pass: still one request a run.
    server.admin("/_testbed/reset", Some(serde_json::json!({"requests": true})));
    let wide = ["export", "-o", o, "--select", "run_id,history.*,system.*", "--history", "wide"];
    let (code, _, stderr) = server.runport(&wide);
    assert_eq!(code, 0, "{stderr}");
    let served = server.admin("/_testbed/requests", None);
    assert_eq!(served["by_operation"]["RunEvents"].as_u64(), Some(with_samples), "{}", served["by_operation"]);
    check_system(&runs, out.path(), None);

    // Without system columns, no events request and no eventsLineCount.
    server.admin("/_testbed/reset", Some(serde_json::json!({"requests": true})));
    let (code, _, stderr) = server.runport(&["export", "-o", o, "--select", "run_id,name"]);
    assert_eq!(code, 0, "{stderr}");
    let served = server.admin("/_testbed/requests", None);
    assert_eq!(served["total"].as_u64(), Some(1), "{}", served["by_operation"]);
}

/// A server that caps `events(samples)` (how the real one answers a large
/// `samples` is not known): runport keeps the lines it was given, equal to
/// what the official client gets from the same server, and warns for each
/// run that it got fewer than the run lists, naming the run (history
/// selected too: the warning rides with the run through its history fetch).
#[test]
fn a_server_that_caps_system_samples_gives_a_warning_per_run_and_its_lines() {
    const CAP: u64 = 5;
    let runs = wandb_runs("system");
    let server = WandbServer::start(&runs, &["--events-samples-cap", &CAP.to_string()]);
    let out = tempdir();
    let o = out.path().to_str().unwrap();
    let (code, stdout, stderr) = server.runport(&["export", "-o", o, "--select", "*,system.*", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let summary = last_json_line(&stdout);
    let scen = scenarios(&runs);
    let mut capped = Vec::new();
    for s in scen["scenarios"].as_object().unwrap().values() {
        let n = s["observed"]["samples"].as_u64().unwrap_or(0);
        if n > CAP {
            let id = s["run_id"].as_str().unwrap_or_else(|| panic!("a scenario without run_id: {s}"));
            capped.push((id.to_string(), n));
        }
    }
    assert!(!capped.is_empty(), "no run has more than {CAP} samples: {scen}");
    let warnings = summary["warnings"].as_array().unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(warnings.len(), capped.len(), "{summary}");
    for (id, n) in &capped {
        let said = format!("system metrics of run {id}: the server gave {CAP} of the {n} samples it lists");
        assert!(stderr.contains(&said), "no warning {said:?}:\n{stderr}");
        assert!(warnings.iter().any(|w| w["run"] == id.as_str()), "{summary}");
    }
    // The lines given: what the official client reads from this server.
    let official = testbed_script(
        "check_official_client.py",
        &[
            "--base-url".as_ref(),
            server.base_url.as_ref(),
            "--api-key".as_ref(),
            TEST_API_KEY.as_ref(),
            "--system".as_ref(),
            out.path().as_os_str(),
        ],
    );
    eprintln!("{}", String::from_utf8_lossy(&official.stdout));
    let per_run = python_snippet(
        "import sys, polars as pl\n\
         t = pl.read_parquet(sys.argv[1] + '/system/*.parquet')\n\
         print(t.group_by('run_id').agg(pl.col('timestamp').n_unique()).sort('run_id').rows())",
        &[out.path().as_os_str()],
    );
    for (id, _) in &capped {
        assert!(per_run.contains(&format!("('{id}', {CAP})")), "{id}: {per_run}");
    }
}

#[test]
fn sync_keeps_a_system_table_equal_to_an_export() {
    let runs = wandb_runs("system");
    let scratch = tempdir();
    let source = scratch.path().join("wandb");
    crate::sync::copy_dir(&runs.join("wandb"), &source);
    let table = scratch.path().join("table");
    let args = ["--select", "*,system.*"];
    let first = crate::sync::sync(&source, &table, &args, 0);
    assert!(first["system_rows"].as_u64().unwrap() > 500, "{first}");
    assert_eq!(first["versions"]["system"], 0, "{first}");
    let same = |what: &str| {
        let export = scratch.path().join(format!("export-{what}"));
        export_json(&source, &export, &args, 0);
        let printed = python_snippet(
            "import sys, polars as pl\n\
             from polars.testing import assert_frame_equal\n\
             by = ['run_id', 'key', 'timestamp']\n\
             got = pl.read_delta(sys.argv[1] + '/system').sort(by)\n\
             want = pl.read_parquet(sys.argv[2] + '/system/*.parquet').sort(by)\n\
             assert_frame_equal(got, want, check_exact=True)\n\
             print(got.height)",
            &[table.as_os_str(), export.as_os_str()],
        );
        eprintln!("{what}: {} system rows", printed.trim());
        check_system(&runs_with(&source), &export, None);
    };
    same("first");
    let again = crate::sync::sync(&source, &table, &args, 0);
    assert_eq!(again["committed"], false, "{again}");
    // A run deleted: its system rows go, the others stay.
    let victim = std::fs::read_dir(&source)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains("sys-basic"))
        .expect("the sys-basic run folder");
    std::fs::remove_dir_all(&victim).unwrap();
    let third = crate::sync::sync(&source, &table, &args, 0);
    assert_eq!(third["runs"]["deleted"], 1, "{third}");
    assert_eq!(third["versions"]["system"], 1, "{third}");
    same("after a deletion");
    // Another selection is refused without --full-refresh.
    crate::sync::sync(&source, &table, &["--select", "*"], 2);
}

/// The folder holding `wandb/` (what the reference reader takes).
fn runs_with(wandb: &Path) -> std::path::PathBuf {
    wandb.parent().unwrap().to_path_buf()
}

#[test]
fn sources_without_system_metrics_refuse_the_selection_with_the_reason() {
    let dir = tempdir();
    let mlruns = dir.path().join("mlruns");
    std::fs::create_dir_all(mlruns.join("0")).unwrap();
    std::fs::write(mlruns.join("0/meta.yaml"), "experiment_id: '0'\nname: Default\n").unwrap();
    let (code, _, stderr) = runport_out(&[
        "export".as_ref(),
        mlruns.as_os_str(),
        "-o".as_ref(),
        dir.path().join("out").as_os_str(),
        "--select".as_ref(),
        "run_id,system.*".as_ref(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("history.system/*"), "{stderr}");
}

/// A run with more system samples than a run's share of memory (a
/// sixteenth of `--memory-limit`; 1 MiB, 43,690 samples, at the smallest
/// limit): its samples are spilled in sorted runs and merged when it is
/// written. The tables equal those of exports that hold the run whole,
/// row for row and in order, from the files, through the API and by
/// `sync`, and the reference reader's.
/// Bytes of two sorted runs spilled at `--memory-limit 16MiB` (43,690
/// samples of 24 bytes each).
const TWO_SPILLED_RUNS: u64 = 2 * 43_690 * 24;

#[test]
fn a_run_with_more_samples_than_its_memory_share_is_spilled_and_written_the_same() {
    // About 120 samples of 1,000 gauges and the SDK's own keys.
    let runs = wandb_runs_with("system-large", &["--seconds", "12", "--gauges", "1000"]);
    let select = ["--select", "run_id,system.*"];
    let small = ["--select", "run_id,system.*", "--memory-limit", "16MiB"];
    let scratch = tempdir();
    let whole = scratch.path().join("whole");
    let s = export_json(&runs, &whole, &select, 0);
    let rows = s["rows"]["system"].as_u64().unwrap();
    assert!(rows > 2 * 43_690, "too few samples to spill twice: {s}");
    assert_eq!(s["spill_bytes"], 0, "at the default limit the run is held whole: {s}");
    let spilled = scratch.path().join("spilled");
    let s = export_json(&runs, &spilled, &small, 0);
    assert_eq!(s["rows"]["system"], rows, "{s}");
    // All but the last run of samples went to disk at once.
    assert!(s["spill_bytes"].as_u64().unwrap() >= TWO_SPILLED_RUNS, "{s}");
    eprintln!("{}", check_system(&runs, &spilled, None));

    let server = WandbServer::start(&runs, &[]);
    let api = scratch.path().join("api");
    let (code, stdout, stderr) =
        server.runport(&["export", "-o", api.to_str().unwrap(), "--json", small[0], small[1], small[2], small[3]]);
    assert_eq!(code, 0, "{stderr}");
    let s = last_json_line(&stdout);
    assert!(s["spill_bytes"].as_u64().unwrap() >= TWO_SPILLED_RUNS, "{s}");

    let source = scratch.path().join("wandb");
    crate::sync::copy_dir(&runs.join("wandb"), &source);
    let table = scratch.path().join("table");
    let s = crate::sync::sync(&source, &table, &small, 0);
    assert_eq!(s["system_rows"], rows, "{s}");
    assert!(s["spill_bytes"].as_u64().unwrap() >= TWO_SPILLED_RUNS, "{s}");

    let printed = python_snippet(
        SAME_SYSTEM_TABLES,
        &[whole.as_os_str(), spilled.as_os_str(), api.as_os_str(), table.as_os_str()],
    );
    eprintln!("rows and keys, equal in all four tables: {}", printed.trim());
}

/// The system table of the export in argv[1] equals, row for row and in
/// order, those of the exports in argv[2] and argv[3] and of the Delta
/// table argv[4]; prints its rows and keys.
const SAME_SYSTEM_TABLES: &str = r#"
import sys, polars as pl
from polars.testing import assert_frame_equal
want = pl.read_parquet(sys.argv[1] + "/system/*.parquet")
for got in (pl.read_parquet(sys.argv[2] + "/system/*.parquet"),
            pl.read_parquet(sys.argv[3] + "/system/*.parquet"),
            pl.read_delta(sys.argv[4] + "/system")):
    assert_frame_equal(got, want, check_exact=True)
print(want.height, want["key"].n_unique())
"#;
