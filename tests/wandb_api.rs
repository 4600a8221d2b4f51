//! The W&B API source against the W&B API test server (graphql-core, loaded
//! from the `.wandb` files the real SDK wrote), which the official client is
//! checked against too.

use std::fs;
use std::path::Path;

use crate::harness::*;

/// Columns the API cannot give as the local files do (see the README):
/// runtime_s (summary `_runtime` vs the exit record), exit_code. `entity`
/// and `name` are compared with `--api-identity` (the URI's entity where the
/// offline run has none; the run id where the run has no name).
const API_ONLY_DIFFERENCES: &str = "runtime_s,exit_code";

fn compare_exports(a: &Path, b: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![a.as_os_str(), b.as_os_str()];
    args.extend(extra.iter().map(|s| s.as_ref() as &std::ffi::OsStr));
    let out = testbed_script("compare_exports.py", &args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn requests(server: &WandbServer) -> serde_json::Value {
    server.admin("/_testbed/requests", None)
}

fn reset(server: &WandbServer) {
    server.admin("/_testbed/reset", Some(serde_json::json!({})));
}

fn op_count(req: &serde_json::Value, op: &str) -> u64 {
    req["by_operation"][op].as_u64().unwrap_or(0)
}

#[test]
fn api_export_equals_local_export() {
    let runs = wandb_runs("standard");
    let server = WandbServer::start(&runs, &[]);
    for layout in ["long", "wide"] {
        let local = tempdir();
        export_json(&runs, local.path(), &["--history", layout], 0);
        let api = tempdir();
        let (code, stdout, stderr) =
            server.runport(&["export", "-o", api.path().to_str().unwrap(), "--history", layout, "--json"]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let summary = last_json_line(&stdout);
        assert!(summary["failures"].as_array().unwrap().is_empty(), "{summary}");
        let report = compare_exports(
            local.path(),
            api.path(),
            &[
                "--ignore-columns",
                API_ONLY_DIFFERENCES,
                "--api-identity",
                &server.entity,
                "--allow-missing-null-values",
                "--list-numbers-as-floats",
            ],
        );
        eprintln!("{layout}: {report}");
    }
}

#[test]
fn live_tail_merges_without_duplicate_or_missing_steps() {
    let runs = wandb_runs("standard");
    let server = WandbServer::start(&runs, &[]);
    let full = tempdir();
    let (code, _, stderr) = server.runport(&["export", "-o", full.path().to_str().unwrap(), "--select", "history.*"]);
    assert_eq!(code, 0, "{stderr}");
    // The last 777 steps of the long run, and the last 2 of every run with
    // increasing steps, exist only as live data.
    server.admin("/_testbed/live", Some(serde_json::json!({"steps": 2})));
    server.admin("/_testbed/live", Some(serde_json::json!({"run": scenario_run_id(&runs, "long"), "steps": 777})));
    server.admin("/_testbed/live", Some(serde_json::json!({"run": scenario_run_id(&runs, "resumed"), "steps": 0})));
    reset_requests_only(&server);
    let live = tempdir();
    let (code, _, stderr) = server.runport(&["export", "-o", live.path().to_str().unwrap(), "--select", "history.*"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(op_count(&requests(&server), "RunHistoryPage") > 0, "the live rows were read");
    // Live rows come as JSON, exported rows from Parquet: a list mixing ints
    // and floats is all floats in the second (see the README).
    compare_exports(full.path(), live.path(), &["--list-numbers-as-floats"]);
}

fn reset_requests_only(server: &WandbServer) {
    server.admin("/_testbed/reset", Some(serde_json::json!({"requests": true})));
}

#[test]
fn requests_follow_the_selection() {
    let runs = wandb_runs("standard");
    let server = WandbServer::start(&runs, &[]);
    let n = scenarios(&runs)["scenarios"].as_object().unwrap().len() as u64;
    let pages = n.div_ceil(2);
    let out = tempdir();
    let o = out.path().to_str().unwrap();

    reset(&server);
    let (code, _, stderr) = server.runport(&["export", "-o", o, "--select", "name,state", "--per-page", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let req = requests(&server);
    assert_eq!(op_count(&req, "Runs"), pages, "{}", req["by_operation"]);
    assert_eq!(req["total"].as_u64().unwrap(), pages, "listing only: {}", req["by_operation"]);
    assert_eq!(req["by_field"]["Run.config"].as_u64().unwrap_or(0), 0);
    for entry in req["log"].as_array().unwrap() {
        let ua = entry["user_agent"].as_str().unwrap_or_default();
        assert!(ua.starts_with("W&B Public Client runport/"), "user agent {ua:?}");
    }

    // --where passes a W&B filter to the server (the failed run's state does
    // not depend on how long ago its file was written, the killed run's does).
    let failed = scenario_run_id(&runs, "failed");
    let (code, stdout, stderr) = server.runport(&["ls", "--where", r#"{"state": "failed"}"#]);
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<&str> = stdout.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(ids, [failed.as_str()], "{stdout}");

    reset(&server);
    let (code, _, stderr) = server.runport(&["export", "-o", o, "--select", "name,config.lr", "--per-page", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let req = requests(&server);
    assert_eq!(req["total"].as_u64().unwrap(), pages, "config.lr adds no request: {}", req["by_operation"]);
    let args = &req["field_args"]["Run.config"];
    assert!(args.to_string().contains("[\"lr\"]"), "config(keys: [lr]) was asked: {args}");

    // history.loss: history is asked only for runs whose historyKeys hold loss.
    let local = tempdir();
    export_json(&runs, local.path(), &["--select", "history.loss"], 0);
    let with_loss = python_snippet(
        "import sys, polars as pl; print(pl.read_parquet(sys.argv[1] + '/history/').filter(pl.col('key') == 'loss')['run_id'].n_unique())",
        &[local.path().as_os_str()],
    );
    let with_loss: u64 = with_loss.trim().parse().unwrap();
    assert!(with_loss > 0 && with_loss < n, "the test needs runs with and without loss: {with_loss} of {n}");
    reset(&server);
    let (code, _, stderr) = server.runport(&["export", "-o", o, "--select", "history.loss", "--per-page", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let req = requests(&server);
    assert_eq!(op_count(&req, "RunParquetHistory"), with_loss, "{}", req["by_operation"]);
    compare_exports(
        local.path(),
        out.path(),
        &["--ignore-columns", API_ONLY_DIFFERENCES, "--api-identity", &server.entity],
    );

    // `runport plan` shows the listing query and the number of pages.
    let (code, stdout, stderr) = server.runport(&["plan", "--select", "name,config.lr", "--per-page", "2", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let plan = last_json_line(&stdout);
    assert_eq!(plan["stages"][0]["requests"], pages);
    assert!(plan["stages"][0]["query"].as_str().unwrap().contains("config(keys: $configKeys)"), "{plan}");
}

#[test]
fn faults_change_nothing_and_secrets_stay_put() {
    let runs = wandb_runs("standard");
    let server = WandbServer::start(&runs, &[]);
    let clean = tempdir();
    let (code, _, stderr) = server.runport(&["export", "-o", clean.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    reset(&server);
    let rules = serde_json::json!({"rules": [
        {"origin": "api", "operation": "Runs", "action": "status", "status": 429, "retry_after": 1, "times": 2},
        {"origin": "api", "field": "parquetHistory", "action": "status", "status": 503, "times": 3},
        {"origin": "api", "field": "parquetHistory", "action": "status", "status": 429, "ratelimit_reset": 1, "times": 1},
        {"origin": "api", "action": "reset", "times": 2},
        {"origin": "files", "action": "truncate", "times": 2},
        {"origin": "files", "action": "reset", "times": 1},
        {"origin": "files", "action": "status", "status": 502, "times": 2},
        {"origin": "api", "action": "delay", "delay": 0.2, "times": 3},
        {"origin": "*", "action": "rate_limit", "rate": 40, "burst": 8}
    ], "replace": true});
    server.admin("/_testbed/faults", Some(rules));
    let faulty = tempdir();
    let (code, stdout, stderr) = runport()
        .env("WANDB_API_KEY", TEST_API_KEY)
        .env("RUST_LOG", "runport=debug")
        .args([
            "export",
            &server.uri(),
            "-o",
            faulty.path().to_str().unwrap(),
            "--json",
            "--base-url",
            &server.base_url,
        ])
        .output()
        .map(|o| {
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let faults = server.admin("/_testbed/faults", None);
    let fired: u64 = faults["rules"].as_array().unwrap().iter().map(|r| r["hits"].as_u64().unwrap_or(0)).sum();
    assert!(fired >= 10, "the faults fired: {faults}");
    compare_exports(clean.path(), faulty.path(), &[]);

    let req = requests(&server);
    assert_eq!(req["files"]["rejected_credentials"], 0, "no credentials at the file origin: {}", req["files"]);
    assert_eq!(req["credential_leaks"].as_u64().unwrap_or(0), 0, "{}", req["credential_leaks"]);
    assert!(req["files"]["downloads"].as_u64().unwrap() > 0);
    // The key never shows in output, logs (both formats) or the dataset,
    // neither raw nor as the Basic header's base64 of `api:KEY`.
    let forms = secret_forms(TEST_API_KEY, Some("api"));
    assert_no_secret_in("stdout", stdout.as_bytes(), &forms);
    assert_no_secret_in("stderr", stderr.as_bytes(), &forms);
    assert!(stderr.contains("retrying"), "debug logs show the retries");
    assert_no_secret_in_files(faulty.path(), &forms);
    let json_logs = tempdir();
    let o = runport()
        .env("WANDB_API_KEY", TEST_API_KEY)
        .env("RUST_LOG", "runport=debug")
        .args(["--log-format", "json", "export", &server.uri(), "-o"])
        .arg(json_logs.path())
        .args(["--json", "--base-url", &server.base_url])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_no_secret_in("stdout (JSON logs)", &o.stdout, &forms);
    assert_no_secret_in("stderr (JSON logs)", &o.stderr, &forms);
    assert_no_secret_in_files(json_logs.path(), &forms);
    let (code, stdout, stderr) = server.runport(&["plan", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_no_secret_in("plan", format!("{stdout}{stderr}").as_bytes(), &forms);
}

#[test]
fn bad_key_and_unknown_project_say_what_to_check() {
    let runs = wandb_runs("standard");
    let server = WandbServer::start(&runs, &[]);
    reset(&server);
    let out = tempdir();
    let wrong = "wrong_key_0123456789abcdefghijklmnopqrstuvwxyz";
    let o = runport()
        .env("WANDB_API_KEY", wrong)
        .args(["export", &server.uri(), "-o", out.path().to_str().unwrap(), "--base-url", &server.base_url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("rejected the API key") && stderr.contains("WANDB_API_KEY"), "{stderr}");
    assert!(!stderr.contains(wrong), "the key is not printed: {stderr}");
    assert_eq!(requests(&server)["by_status"]["401"], 1, "a 401 is not retried");

    let o = runport()
        .env("WANDB_API_KEY", TEST_API_KEY)
        .args([
            "export",
            "wandb://testbed/no-such-project",
            "-o",
            out.path().to_str().unwrap(),
            "--base-url",
            &server.base_url,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("not found") && stderr.contains("no-such-project"), "{stderr}");

    let o = runport()
        .env_remove("WANDB_API_KEY")
        .env("HOME", out.path())
        .env_remove("NETRC")
        .args(["ls", &server.uri(), "--base-url", &server.base_url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("set WANDB_API_KEY"), "{stderr}");

    // A key from ~/.netrc for the API host works.
    fs::write(out.path().join(".netrc"), format!("machine 127.0.0.1\n  login user\n  password {TEST_API_KEY}\n"))
        .unwrap();
    let o = runport()
        .env_remove("WANDB_API_KEY")
        .env("HOME", out.path())
        .env_remove("NETRC")
        .args(["ls", &server.uri(), "--base-url", &server.base_url])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&scenario_run_id(&runs, "long")));
}

#[test]
fn sampled_history_uses_sampled_requests() {
    let runs = wandb_runs("standard");
    let server = WandbServer::start(&runs, &[]);
    reset(&server);
    let out = tempdir();
    let (code, stdout, stderr) = server.runport(&[
        "export",
        "-o",
        out.path().to_str().unwrap(),
        "--select",
        "history.loss",
        "--samples",
        "50",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let req = requests(&server);
    assert!(op_count(&req, "RunSampledHistory") > 0, "{}", req["by_operation"]);
    assert_eq!(op_count(&req, "RunParquetHistory"), 0);
    let summary = last_json_line(&stdout);
    let rows = summary["rows"]["history"].as_u64().unwrap();
    assert!(rows > 0 && rows < 1000, "a sample, not the 100,000-step history: {rows}");
}

#[test]
fn official_client_reads_back_what_the_sdk_logged() {
    let runs = wandb_runs("standard");
    let out = testbed_script("check_official_client.py", &["--runs".as_ref(), runs.as_os_str()]);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

/// Servers without `parquetHistory` are read with `history(minStep,
/// maxStep, samples)` pages: requests in proportion to rows, not to the
/// step range, and never a sampled page; the result equals the Parquet path.
#[test]
fn paged_history_requests_follow_rows_and_are_never_sampled() {
    // (synthetic spec, most history pages on the server's own counter)
    // Dense: 45,000 rows a run (pages of about 10,000 rows).
    // Sparse: 300 rows a run at steps 0, 1e6, 2e6, ... (steps counted in
    // tokens): one page each, where pages of 10,000 steps would take 29,900.
    for (spec, most_pages) in [("2:45000:3:0:1", 2 * 7), ("3:300:2:0:1000000", 3)] {
        let synthetic = ["--synthetic", spec];
        let parquet = WandbServer::start_with(&synthetic.map(std::ffi::OsStr::new));
        let expected = tempdir();
        let (code, _, stderr) = parquet.runport(&["export", "-o", expected.path().to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        if spec.starts_with("2:45000:") {
            // 30,000 live rows a run: the first page (everything left) comes
            // back full, so sampled, and is asked again narrower.
            parquet.admin("/_testbed/live", Some(serde_json::json!({"steps": 30000})));
            reset_requests_only(&parquet);
            let live = tempdir();
            let (code, _, stderr) = parquet.runport(&["export", "-o", live.path().to_str().unwrap()]);
            assert_eq!(code, 0, "{stderr}");
            let pages = op_count(&requests(&parquet), "RunHistoryPage");
            eprintln!("{spec}: {pages} history pages for 2 live tails of 30,000 rows");
            assert!((2 * 3..=2 * 5).contains(&pages), "{pages} history pages: a full page was used or paging drifted");
            compare_exports(expected.path(), live.path(), &[]);
        }

        let paged = WandbServer::start_with(&["--synthetic", spec, "--no-parquet-history"].map(std::ffi::OsStr::new));
        let out = tempdir();
        let (code, stdout, stderr) = paged.runport(&["export", "-o", out.path().to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let pages = op_count(&requests(&paged), "RunHistoryPage");
        eprintln!("{spec}: {pages} history pages without parquetHistory");
        assert!(pages > 0 && pages <= most_pages, "{spec}: {pages} history pages: {}", requests(&paged));
        assert_eq!(
            last_json_line(&stdout)["http"]["requests"].as_u64().unwrap(),
            requests(&paged)["total"].as_u64().unwrap(),
            "{spec}: runport's count is the server's"
        );
        compare_exports(expected.path(), out.path(), &[]);
    }
}

/// Every file under `dir` with its bytes, by relative path.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    walk_files(dir).into_iter().map(|p| (p.strip_prefix(dir).unwrap().to_path_buf(), fs::read(&p).unwrap())).collect()
}

/// `--fail-fast`: a run that fails, and a listing cut short, each end the
/// export with exit 1 and leave the previous dataset byte for byte (and
/// nothing beside it); without `--fail-fast` the cut listing is a failure of
/// an export that is committed.
#[test]
fn fail_fast_commits_nothing_when_a_run_or_the_listing_fails() {
    let runs = wandb_runs("standard");
    let server = WandbServer::start(&runs, &[]);
    let work = tempdir();
    let out = work.path().join("out");
    let o = out.to_str().unwrap();
    let (code, _, stderr) = server.runport(&["export", "-o", o, "--select", "name,state,history.loss"]);
    assert_eq!(code, 0, "{stderr}");
    let before = snapshot(&out);
    assert!(before.len() >= 3, "runs, history and manifest: {:?}", before.keys());
    let beside = || fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    let faults = |rules: serde_json::Value| {
        reset(&server);
        server.admin("/_testbed/faults", Some(serde_json::json!({"rules": rules, "replace": true})));
    };
    let hits = || -> u64 {
        let rules = server.admin("/_testbed/faults", None)["rules"].clone();
        rules.as_array().unwrap().iter().map(|r| r["hits"].as_u64().unwrap_or(0)).sum()
    };

    // A run fails: its history files are refused (404 is not retried).
    faults(serde_json::json!([{"origin": "files", "action": "status", "status": 404}]));
    let (code, _, stderr) = server.runport(&["export", "-o", o, "--fail-fast"]);
    assert!(hits() > 0, "the fault fired");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("failed"), "{stderr}");
    assert!(snapshot(&out) == before, "the previous dataset is untouched after a failed run");
    assert_eq!(beside(), ["out"], "nothing left beside the dataset");

    // The listing is cut after its first page (400 is not retried).
    let cut = serde_json::json!([{"origin": "api", "operation": "Runs", "skip": 1, "action": "status", "status": 400}]);
    faults(cut.clone());
    let (code, _, stderr) = server.runport(&["export", "-o", o, "--per-page", "2", "--fail-fast"]);
    assert!(hits() > 0, "the fault fired");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("listing"), "{stderr}");
    assert!(snapshot(&out) == before, "the previous dataset is untouched after a cut listing");
    assert_eq!(beside(), ["out"], "nothing left beside the dataset");

    // Without --fail-fast the runs listed before the cut are exported and
    // the cut is a failure (exit 1).
    faults(cut);
    let (code, stdout, stderr) = server.runport(&["export", "-o", o, "--per-page", "2", "--json"]);
    assert_eq!(code, 1, "{stderr}");
    let summary = last_json_line(&stdout);
    assert_eq!(summary["failures"][0]["stage"], "listing", "{summary}");
    assert_eq!(summary["runs"], 2, "the first page's runs: {summary}");
    assert!(snapshot(&out) != before);
}

#[test]
fn options_of_other_sources_are_usage_errors_its_own_are_applied_and_concurrency_defaults_to_16() {
    let runs = wandb_runs("standard");
    let server = WandbServer::start(&runs, &[]);
    // `server.runport` adds --base-url, which this source takes.
    let takes = ["--base-url", "--where", "--order", "--per-page", "--samples"];
    assert_options_refused("wandb-api", &takes, &|args| server.runport(args));

    // All of its own options at once, in a real export.
    let out = tempdir();
    let o = out.path().to_str().unwrap();
    let (code, stdout, stderr) = server.runport(&[
        "export",
        "-o",
        o,
        "--select",
        "state,history.loss",
        "--where",
        r#"{"state": "finished"}"#,
        "--order=-created_at",
        "--per-page",
        "2",
        "--samples",
        "5",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let summary = last_json_line(&stdout);
    assert!(summary["runs"].as_u64().unwrap() > 0, "{summary}");
    let (_, batches) = read_parquet(&out.path().join("runs.parquet"));
    for b in &batches {
        let states = b.column_by_name("state").unwrap();
        let states = states.as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        assert!(states.iter().all(|s| s == Some("finished")), "--where was applied: {states:?}");
    }

    let (code, stdout, stderr) = server.runport(&["plan", "--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(planned_concurrency(&stdout), 16, "a network source keeps 16 requests in flight by default");
}
