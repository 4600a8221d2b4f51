//! The W&B local-files source against runs written by the real W&B SDK,
//! checked value by value against the independent reference reader.

use std::fs;
use std::path::{Path, PathBuf};

use arrow_array::{Array, StringArray};

use crate::harness::*;

fn standard() -> PathBuf {
    wandb_runs("standard")
}

fn log_of(dir: &Path, run_id: &str) -> PathBuf {
    wandb_logs(dir)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() == format!("run-{run_id}.wandb"))
        .unwrap_or_else(|| panic!("no log for run {run_id} under {}", dir.display()))
}

fn strings(batches: &[arrow_array::RecordBatch], column: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column_by_name(column).unwrap_or_else(|| panic!("no column {column}"));
        let col = col.as_any().downcast_ref::<StringArray>().expect("utf8 column");
        out.extend(col.iter().map(|s| s.map(str::to_string)));
    }
    out
}

fn run_value(dir: &Path, run_id: &str, column: &str) -> Option<String> {
    let (_, batches) = read_parquet(&dir.join("runs.parquet"));
    let ids = strings(&batches, "run_id");
    let idx =
        ids.iter().position(|i| i.as_deref() == Some(run_id)).unwrap_or_else(|| panic!("run {run_id} not exported"));
    strings(&batches, column)[idx].clone()
}

#[test]
fn long_export_equals_reference_reader() {
    let runs = standard();
    let out = tempdir();
    let summary = export_json(&runs, out.path(), &[], 0);
    assert!(summary["failures"].as_array().unwrap().is_empty(), "{summary}");
    assert!(summary["rows"]["history"].as_u64().unwrap() > 100_000, "{summary}");
    let report = reference_check(&runs, out.path(), "long");
    eprintln!("{report}");
}

#[test]
fn wide_export_equals_reference_reader() {
    let runs = standard();
    let out = tempdir();
    export_json(&runs, out.path(), &["--history", "wide"], 0);
    reference_check(&runs, out.path(), "wide");
}

#[test]
fn states_and_exit_codes_follow_the_log() {
    let runs = standard();
    let out = tempdir();
    export_json(&runs, out.path(), &["--select", "name,state,exit_code"], 0);
    let (_, batches) = read_parquet(&out.path().join("runs.parquet"));
    let ids = strings(&batches, "run_id");
    let mut exit_codes = Vec::new();
    for b in &batches {
        let col = b.column_by_name("exit_code").expect("exit_code column");
        let col = col.as_any().downcast_ref::<arrow_array::Int64Array>().expect("exit_code is Int64");
        exit_codes.extend(col.iter());
    }
    // Every scenario the SDK wrote states its state and exit code.
    let scenarios = scenarios(&runs);
    let mut checked = 0;
    for (scenario, want) in scenarios["scenarios"].as_object().expect("scenarios") {
        let (Some(state), Some(code)) = (want["state"].as_str(), want.get("exit_code")) else { continue };
        let id = scenario_run_id(&runs, scenario);
        let i =
            ids.iter().position(|r| r.as_deref() == Some(id.as_str())).unwrap_or_else(|| panic!("{id} not exported"));
        assert_eq!(run_value(out.path(), &id, "state").as_deref(), Some(state), "scenario {scenario} (run {id})");
        assert_eq!(exit_codes[i], code.as_i64(), "exit code of scenario {scenario} (run {id})");
        checked += 1;
    }
    assert!(checked >= 3, "{checked} scenarios with a state: {scenarios}");
    for (scenario, state, code) in
        [("killed", "crashed", None), ("failed", "failed", Some(3)), ("config", "finished", Some(0))]
    {
        let i = ids.iter().position(|r| r.as_deref() == Some(scenario_run_id(&runs, scenario).as_str())).unwrap();
        assert_eq!(
            (run_value(out.path(), ids[i].as_deref().unwrap(), "state").as_deref(), exit_codes[i]),
            (Some(state), code)
        );
    }
}

#[test]
fn selecting_name_and_state_decodes_nothing_else() {
    let runs = standard();
    let out = tempdir();
    let summary = export_json(&runs, out.path(), &["--select", "name,state"], 0);
    let (names, _) = read_parquet(&out.path().join("runs.parquet"));
    assert_eq!(names, ["run_id", "name", "state"]);
    assert!(!out.path().join("history").exists(), "no history was selected");
    let rec = &summary["records"];
    for kind in ["decoded_config", "decoded_summary", "decoded_history", "decoded_stats"] {
        assert_eq!(rec[kind], 0, "{kind} must not be decoded: {summary}");
    }
    assert!(rec["decoded_run"].as_u64().unwrap() >= 1);
    assert!(rec["read"].as_u64().unwrap() > 100_000, "every record is still read (checksums): {summary}");

    // And with history of one key only, other keys never reach the output.
    let out2 = tempdir();
    let summary = export_json(&runs, out2.path(), &["--select", "name,config.*,history.loss"], 0);
    assert_eq!(summary["records"]["decoded_summary"], 0);
    let (names, batches) = read_parquet(&out2.path().join("history/part-00000.parquet"));
    assert!(names.contains(&"key".to_string()));
    let keys = strings(&batches, "key");
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.as_deref() == Some("loss")), "only history.loss was selected");
    let (names, _) = read_parquet(&out2.path().join("runs.parquet"));
    assert!(names.iter().any(|n| n.starts_with("config.")));
    assert!(!names.iter().any(|n| n.starts_with("summary.")));
}

/// Copies the standard runs into a fresh folder where tests may damage them.
fn copy_runs(src: &Path, dst: &Path) {
    for log in wandb_logs(src) {
        let rel = log.strip_prefix(src).unwrap();
        let to = dst.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&log, &to).unwrap();
    }
}

#[test]
fn corrupt_block_is_skipped_with_a_warning() {
    let runs = standard();
    let id = scenario_run_id(&runs, "long");
    let work = tempdir();
    let folder = work.path().join("wandb");
    let log = log_of(&runs, &id);
    let rel = log.strip_prefix(&runs).unwrap().to_path_buf();
    let damaged = folder.join(rel.file_name().unwrap());
    fs::create_dir_all(&folder).unwrap();
    let mut bytes = fs::read(&log).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5A;
    fs::write(&damaged, &bytes).unwrap();

    let full = tempdir();
    let good = export_json(&log, full.path(), &["--select", "history.*"], 0);
    let out = tempdir();
    let summary = export_json(&damaged, out.path(), &["--select", "history.*"], 0);
    let warnings = summary["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{summary}");
    let msg = warnings[0]["message"].as_str().unwrap();
    assert!(msg.contains("corrupt chunk") && msg.contains(&damaged.display().to_string()), "{msg}");
    let (all, got) = (good["rows"]["history"].as_u64().unwrap(), summary["rows"]["history"].as_u64().unwrap());
    assert!(got < all && got * 100 > all * 95, "one 32 KiB block lost at most: {got} of {all}");
}

#[test]
fn truncated_and_header_only_logs_keep_what_was_complete() {
    let runs = standard();
    let id = scenario_run_id(&runs, "long");
    let log = log_of(&runs, &id);
    let bytes = fs::read(&log).unwrap();
    let work = tempdir();
    let cut = work.path().join(format!("run-{id}.wandb"));
    fs::write(&cut, &bytes[..bytes.len() * 2 / 3 + 13]).unwrap();
    let out = tempdir();
    let summary = export_json(&cut, out.path(), &[], 0);
    let w = summary["warnings"].as_array().unwrap();
    assert!(w.iter().any(|w| w["message"].as_str().unwrap().contains("file ends inside")), "{summary}");
    assert!(summary["rows"]["history"].as_u64().unwrap() > 0);
    // Just written and without an exit record: a live run.
    assert_eq!(run_value(out.path(), &id, "state").as_deref(), Some("running"));
    // An hour later, the same file is a crashed run.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options().write(true).open(&cut).unwrap().set_modified(hour_ago).unwrap();
    export_json(&cut, out.path(), &[], 0);
    assert_eq!(run_value(out.path(), &id, "state").as_deref(), Some("crashed"), "no exit record survived the cut");

    let header_only = work.path().join("run-empty1.wandb");
    fs::write(&header_only, [0x3A, 0x57, 0x26, 0x42, 0xE1, 0xBE, 0x00]).unwrap();
    let out = tempdir();
    let summary = export_json(&header_only, out.path(), &[], 0);
    assert_eq!(summary["runs"], 1);
    assert!(summary["warnings"][0]["message"].as_str().unwrap().contains("no run record"), "{summary}");
}

#[test]
fn a_file_that_is_not_a_log_fails_its_run_only() {
    let runs = standard();
    let work = tempdir();
    copy_runs(&runs, work.path());
    let bogus = work.path().join("wandb/run-20200101_000000-bogus/run-bogus.wandb");
    fs::create_dir_all(bogus.parent().unwrap()).unwrap();
    fs::write(&bogus, b"PAR1 this is not a transaction log").unwrap();
    let out = tempdir();
    let all = tempdir();
    let good = export_json(&runs, all.path(), &["--history", "none"], 0);
    let summary = export_json(work.path(), out.path(), &["--history", "none"], 1);
    let failures = summary["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{summary}");
    assert_eq!(failures[0]["run"], "bogus");
    assert!(failures[0]["error"].as_str().unwrap().contains("run-bogus.wandb"), "{summary}");
    assert!(failures[0]["error"].as_str().unwrap().contains("not a W&B transaction log"), "{summary}");
    assert_eq!(summary["runs"], good["runs"], "every other run is exported");

    // With --fail-fast the export stops at that run and writes nothing.
    let ff = tempdir();
    let (code, _, stderr) = runport_out(&[
        "export".as_ref(),
        work.path().as_os_str(),
        "-o".as_ref(),
        ff.path().as_os_str(),
        "--fail-fast".as_ref(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("run bogus failed"), "{stderr}");
    assert!(!ff.path().join("runs.parquet").exists() && !ff.path().join("_manifest.json").exists());
    assert_eq!(fs::read_dir(ff.path()).unwrap().flatten().filter(|e| e.path().is_file()).count(), 0, "no partial file");

    // Given directly, the same file is a source error: exit 3, naming the file.
    let (code, _, stderr) = runport_out(&["export".as_ref(), bogus.as_os_str(), "-o".as_ref(), out.path().as_os_str()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("run-bogus.wandb") && stderr.contains("not a W&B transaction log"), "{stderr}");
}

#[test]
fn usage_and_source_errors_have_their_exit_codes() {
    let runs = standard();
    let out = tempdir();
    let (code, _, stderr) = runport_out(&[
        "export".as_ref(),
        runs.as_os_str(),
        "-o".as_ref(),
        out.path().as_os_str(),
        "--select".as_ref(),
        "nmae".as_ref(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("\"nmae\" is not a column"), "{stderr}");
    let (code, _, stderr) =
        runport_out(&["export".as_ref(), "no/such/folder".as_ref(), "-o".as_ref(), out.path().as_os_str()]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no/such/folder"), "{stderr}");
    let (code, _, stderr) = runport_out(&["export".as_ref(), runs.as_os_str()]);
    assert_eq!(code, 2, "missing -o: {stderr}");
    // JSON logs: every stderr line is one JSON object.
    let (code, _, stderr) = runport_out(&[
        "--log-format".as_ref(),
        "json".as_ref(),
        "export".as_ref(),
        "no/such/folder".as_ref(),
        "-o".as_ref(),
        out.path().as_os_str(),
    ]);
    assert_eq!(code, 3);
    let err: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert!(err["fields"]["message"].as_str().unwrap().contains("no/such/folder"), "{err}");
    let out2 = tempdir();
    let mut cmd = runport();
    cmd.env("RUST_LOG", "runport=info").args(["--log-format", "json", "export"]).arg(&runs).arg("-o").arg(out2.path());
    let o = cmd.output().unwrap();
    assert!(o.status.success());
    let logs = String::from_utf8_lossy(&o.stderr);
    assert!(logs.lines().count() >= 1, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    let (code, _, stderr) = runport_out(&[
        "export".as_ref(),
        runs.as_os_str(),
        "-o".as_ref(),
        out.path().as_os_str(),
        "--history".as_ref(),
        "tall".as_ref(),
    ]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn re_export_replaces_the_previous_one() {
    let runs = standard();
    let out = tempdir();
    export_json(&runs, out.path(), &[], 0);
    assert!(out.path().join("history/part-00000.parquet").exists());
    let summary = export_json(&runs, out.path(), &["--history", "none", "--select", "name"], 0);
    assert_eq!(summary["files"], 1);
    assert!(!out.path().join("history").exists(), "history of the previous export is removed");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.path().join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["selection"], "name");
    assert_eq!(manifest["history_layout"], "none");
    let leftovers: Vec<_> = fs::read_dir(out.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only runs.parquet and _manifest.json: {leftovers:?}");
}

#[test]
fn plan_ls_and_schema_commands() {
    let runs = standard();
    let (code, stdout, stderr) = runport_out(&[
        "plan".as_ref(),
        runs.as_os_str(),
        "--select".as_ref(),
        "name,state".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let plan = last_json_line(&stdout);
    let needs = &plan["stages"][1]["records_decoded"];
    assert_eq!(needs["history"], false, "{plan}");
    assert_eq!(needs["config"], false, "{plan}");
    assert_eq!(needs["exit"], true, "{plan}");
    assert_eq!(plan["plan"]["identity_columns"], serde_json::json!(["run_id", "name", "state"]));

    let (code, stdout, stderr) = runport_out(&["ls".as_ref(), runs.as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
    let id = scenario_run_id(&runs, "killed");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{id}\t")))
        .unwrap_or_else(|| panic!("{id} not listed:\n{stdout}"));
    assert!(line.contains("\tcrashed\t"), "{line}");

    let (code, stdout, stderr) =
        runport_out(&["schema".as_ref(), runs.as_os_str(), "--history".as_ref(), "wide".as_ref(), "--json".as_ref()]);
    assert_eq!(code, 0, "{stderr}");
    let schema = last_json_line(&stdout);
    let runs_cols: Vec<&str> = schema["runs"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(&runs_cols[..4], ["source", "entity", "project", "run_id"]);
    assert!(schema["history"].as_array().unwrap().len() > 4);
}

#[test]
fn sample_in_examples_exports_and_reads_in_polars_and_duckdb() {
    let sample = repo_root().join("examples/data/wandb");
    let out = tempdir();
    let summary = export_json(&sample, out.path(), &[], 0);
    assert!(summary["runs"].as_u64().unwrap() >= 2, "{summary}");
    reference_check(&sample, out.path(), "long");
    // The README's snippets.
    let code = r#"
import sys, polars as pl, duckdb
out = sys.argv[1]
runs = pl.read_parquet(f"{out}/runs.parquet")
hist = pl.scan_parquet(f"{out}/history/*.parquet").filter(pl.col("key") == "train/loss").collect()
assert runs.height >= 2 and hist.height > 0
n = duckdb.sql(f"select count(*) from read_parquet('{out}/history/*.parquet') h join read_parquet('{out}/runs.parquet') r using (run_id)").fetchall()[0][0]
print(runs.height, hist.height, n)
"#;
    let printed = python_snippet(code, &[out.path().as_os_str()]);
    let nums: Vec<u64> = printed.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(nums[2], summary["rows"]["history"].as_u64().unwrap(), "duckdb join sees every history row");
}

/// `runport ARGS[0] SOURCE ARGS[1..]`.
fn runport_on(source: &str, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&std::ffi::OsStr> = vec![args[0].as_ref(), source.as_ref()];
    all.extend(args[1..].iter().map(|a| a.as_ref() as &std::ffi::OsStr));
    runport_out(&all)
}

#[test]
fn options_of_other_sources_are_usage_errors_and_concurrency_defaults_to_the_cpus() {
    let runs = standard();
    let source = runs.to_str().unwrap();
    // The command of the issue used to export every run and exit 0.
    let out = tempdir();
    let target = out.path().join("out");
    let target = target.to_str().unwrap();
    let (code, stdout, stderr) = runport_on(
        source,
        &["export", "--where", r#"{"state":"crashed"}"#, "--samples", "5", "--experiment", "foo", "-o", target],
    );
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("--where does not apply to wandb-files sources"), "{stderr}");
    assert!(!Path::new(target).exists(), "a refused export wrote {target}");
    assert_options_refused("wandb-files", &[], &|args| runport_on(source, args));

    let (code, stdout, stderr) = runport_on(source, &["plan", "--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(planned_concurrency(&stdout), cpus(), "a local source reads on every CPU by default");
    let (code, stdout, stderr) = runport_on(source, &["plan", "--json", "--concurrency", "3"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(planned_concurrency(&stdout), 3);
}
