//! The MLflow sources against a real `mlflow server` (sqlite backend) and a
//! FileStore, both written by the real MLflow client, checked against what
//! `mlflow.search_runs()` and `MlflowClient().get_metric_history()` return.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::harness::*;

/// One server per test run, shared, with the standard set logged once; and
/// the same set logged into a FileStore.
struct Standard {
    server: MlflowServer,
    mlruns: PathBuf,
}

/// Tests that count the shared server's requests hold this exclusively;
/// every other test of the shared server holds it shared.
static SERVER_USE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_use() -> std::sync::RwLockReadGuard<'static, ()> {
    SERVER_USE.read().unwrap_or_else(|e| e.into_inner())
}

fn counting_use() -> std::sync::RwLockWriteGuard<'static, ()> {
    SERVER_USE.write().unwrap_or_else(|e| e.into_inner())
}

/// runport's own request count (`--json`) equals what the server answered.
fn assert_served(std: &Standard, before: usize, summary: &serde_json::Value) -> u64 {
    let served = (std.server.requests_served() - before) as u64;
    assert_eq!(summary["http"]["requests"].as_u64(), Some(served), "server answered {served}: {summary}");
    served
}

fn standard() -> &'static Standard {
    static STD: OnceLock<Standard> = OnceLock::new();
    STD.get_or_init(|| {
        let dir = target_dir().join("test-tmp").join(format!("mlflow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create mlflow test dir");
        let server = MlflowServer::start(&dir.join("mlflow.db"), false);
        testbed_script(
            "mlflow_testbed.py",
            &[
                "populate".as_ref(),
                "--tracking-uri".as_ref(),
                server.tracking_uri.as_ref(),
                "--set".as_ref(),
                "standard".as_ref(),
                "--scenarios".as_ref(),
                dir.join("scenarios.json").as_os_str(),
            ],
        );
        let fs_dir = dir.join("filestore");
        testbed_script("mlflow_testbed.py", &["filestore".as_ref(), "--out".as_ref(), fs_dir.as_os_str()]);
        Standard { server, mlruns: fs_dir.join("mlruns") }
    })
}

fn check(tracking_uri: &str, export: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "check".as_ref(),
        "--tracking-uri".as_ref(),
        tracking_uri.as_ref(),
        "--export".as_ref(),
        export.as_os_str(),
    ];
    args.extend(extra.iter().map(|s| s.as_ref() as &std::ffi::OsStr));
    let out = testbed_script("mlflow_testbed.py", &args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn export_source(source: &str, out: &Path, extra: &[&str], want: i32) -> serde_json::Value {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["export".as_ref(), source.as_ref(), "-o".as_ref(), out.as_os_str(), "--json".as_ref()];
    args.extend(extra.iter().map(|s| s.as_ref() as &std::ffi::OsStr));
    let (code, stdout, stderr) = runport_out(&args);
    assert_eq!(code, want, "runport {args:?}\n{stdout}\n{stderr}");
    last_json_line(&stdout)
}

#[test]
fn rest_export_equals_the_official_client() {
    let _shared = shared_use();
    let std = standard();
    for view in ["active", "all"] {
        let out = tempdir();
        let summary = export_source(&std.server.source(), out.path(), &["--view", view], 0);
        assert!(summary["rows"]["history"].as_u64().unwrap() > 10_000, "{summary}");
        eprintln!("{view}: {}", check(&std.server.tracking_uri, out.path(), &["--view", view]));
    }
}

#[test]
fn sqlite_and_mlruns_give_the_same_dataset() {
    let _shared = shared_use();
    let std = standard();
    let rest = tempdir();
    export_source(&std.server.source(), rest.path(), &["--view", "all"], 0);
    let sqlite = tempdir();
    let db = format!("sqlite:///{}", std.server.db.display());
    export_source(&db, sqlite.path(), &["--view", "all"], 0);
    let out = testbed_script("compare_exports.py", &[rest.path().as_os_str(), sqlite.path().as_os_str()]);
    eprintln!("rest = sqlite: {}", String::from_utf8_lossy(&out.stdout));

    let files = tempdir();
    export_source(std.mlruns.to_str().unwrap(), files.path(), &["--view", "all"], 0);
    let uri = format!("file://{}", std.mlruns.display());
    eprintln!("mlruns: {}", check(&uri, files.path(), &["--view", "all"]));
    // Across stores the data differs only where the stores and MLflow's own
    // readers do (SQL clamps infinities and keeps one of two identical
    // points; the FileStore reader gives 5-field metric lines step 0), which
    // `check` of each store against the official client's reading covers.
}

#[test]
fn selections_without_history_make_listing_requests_only() {
    let std = standard();
    let _counting = counting_use();
    let out = tempdir();
    let before = std.server.requests_served();
    let summary = export_source(&std.server.source(), out.path(), &["--select", "run_name,metrics.*,params.*"], 0);
    // experiments/search once, runs/search once (one page holds them all).
    assert_eq!(assert_served(std, before, &summary), 2, "{summary}");
    assert!(!out.path().join("history").exists());
    let (names, _) = read_parquet(&out.path().join("runs.parquet"));
    assert!(
        names.iter().all(|n| n == "run_id" || n == "run_name" || n.starts_with("metrics.") || n.starts_with("params.")),
        "{names:?}"
    );

    // One metric's history: one get-history request per run holding it.
    let before = std.server.requests_served();
    let summary =
        export_source(&std.server.source(), out.path(), &["--select", "history.train/loss", "--per-page", "3"], 0);
    let (_, batches) = read_parquet(&out.path().join("history/part-00000.parquet"));
    let runs_with_key: std::collections::BTreeSet<String> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("run_id").unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
            c.iter().map(|s| s.unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    let runs = summary["runs"].as_u64().unwrap();
    let pages = runs.div_ceil(3);
    assert_eq!(assert_served(std, before, &summary), 1 + pages + runs_with_key.len() as u64, "{summary}");
}

/// Histories come in bulk (one request per key for a group of runs holding
/// it) except where the bulk answer may have been cut: `runport-std-dense`
/// holds a run of 26,000 points on 10 steps, whose listing suggests 10, and
/// two small runs sharing `acc` (with NaN and infinities), in one group.
#[test]
fn bulk_history_requests_and_cut_answers() {
    let std = standard();
    let _counting = counting_use();
    let before = std.server.requests_served();
    let out = tempdir();
    let dense = "runport-std-dense";
    let source = std.server.source();
    let args: Vec<&std::ffi::OsStr> = vec![
        "export".as_ref(),
        source.as_ref(),
        "-o".as_ref(),
        out.path().as_os_str(),
        "--json".as_ref(),
        "--experiment".as_ref(),
        dense.as_ref(),
    ];
    let run = runport().env("RUST_LOG", "runport=debug").args(&args).output().expect("start runport");
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{stderr}");
    let summary = last_json_line(&stdout);
    assert_eq!(summary["rows"]["history"], 26_030, "{summary}");
    assert!(stderr.contains("bulk answer may be cut"), "{stderr}");
    // experiments/search, runs/search, bulk `acc`, the cut bulk `loss`, then
    // get-history of `loss`: two pages of 25,000 for the dense run, one for
    // its neighbour.
    assert_eq!(assert_served(std, before, &summary), 7, "{summary}");
    eprintln!("{dense}: {}", check(&std.server.tracking_uri, out.path(), &["--experiments", dense]));

    // The main experiment: fewer requests than (run, key) series.
    let out = tempdir();
    let before = std.server.requests_served();
    let summary = export_source(&std.server.source(), out.path(), &["--experiment", "runport-std"], 0);
    let (_, batches) = read_parquet(&out.path().join("history/part-00000.parquet"));
    let mut series = std::collections::BTreeSet::new();
    for b in &batches {
        let col = |n: &str| b.column_by_name(n).unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        for (r, k) in col("run_id").iter().zip(col("key").iter()) {
            series.insert((r.unwrap().to_string(), k.unwrap().to_string()));
        }
    }
    let requests = assert_served(std, before, &summary);
    assert!(requests < 2 + series.len() as u64, "{requests} requests for {} series: {summary}", series.len());
    eprintln!("runport-std: {}", check(&std.server.tracking_uri, out.path(), &["--experiments", "runport-std"]));
}

#[test]
fn basic_auth_rejects_a_wrong_password_and_accepts_the_right_one() {
    let dir = tempdir();
    let server = MlflowServer::start(&dir.path().join("auth.db"), true);
    let (user, password) = (server.username.clone().expect("username"), server.password.clone().expect("password"));
    let out = tempdir();
    let run = |pw: &str| {
        runport()
            .env("MLFLOW_TRACKING_USERNAME", &user)
            .env("MLFLOW_TRACKING_PASSWORD", pw)
            .args(["ls", &server.source()])
            .arg("--json")
            .current_dir(out.path())
            .output()
            .unwrap()
    };
    let o = run("not-the-password");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("rejected the credentials") && stderr.contains("MLFLOW_TRACKING_PASSWORD"), "{stderr}");
    assert!(!stderr.contains("not-the-password"));
    let o = run(&password);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    credentials_in_the_url_authenticate_and_never_show(&server, &user, &password);
}

/// Credentials given only inside the tracking URI (the source argument, or
/// `MLFLOW_TRACKING_URI` with the source `mlflow`): the export works, and
/// neither the password nor its Basic form shows in stdout, stderr (both
/// log formats, debug level), the plan, the manifest or any file's bytes.
fn credentials_in_the_url_authenticate_and_never_show(server: &MlflowServer, user: &str, password: &str) {
    // A few runs logged by the official client, which reads the credentials
    // from its own environment variables.
    let log = r#"
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("auth-exp")
for i in range(3):
    with mlflow.start_run(run_name=f"run-{i}"):
        mlflow.log_param("lr", 0.1 * (i + 1))
        for s in range(5):
            mlflow.log_metric("loss", 1.0 / (s + 1 + i), step=s)
"#;
    let o = std::process::Command::new(python())
        .arg("-c")
        .arg(log)
        .arg(&server.tracking_uri)
        .env("MLFLOW_TRACKING_USERNAME", user)
        .env("MLFLOW_TRACKING_PASSWORD", password)
        .output()
        .unwrap();
    assert!(o.status.success(), "logging runs: {}", String::from_utf8_lossy(&o.stderr));

    let with_creds = |pw: &str| {
        let uri = server.tracking_uri.replacen("http://", &format!("http://{user}:{pw}@"), 1);
        (format!("mlflow+{uri}"), uri)
    };
    let (source, uri) = with_creds(password);
    let forms = secret_forms(password, Some(user));
    let runport_clean = || {
        let mut c = runport();
        c.env_remove("MLFLOW_TRACKING_USERNAME")
            .env_remove("MLFLOW_TRACKING_PASSWORD")
            .env_remove("MLFLOW_TRACKING_TOKEN")
            .env("RUST_LOG", "runport=debug");
        c
    };
    for (log_format, via_env) in [("text", false), ("json", false), ("text", true)] {
        let out = tempdir();
        let mut cmd = runport_clean();
        cmd.args(["--log-format", log_format, "export"]);
        if via_env {
            cmd.arg("mlflow").env("MLFLOW_TRACKING_URI", &uri);
        } else {
            cmd.arg(&source);
        }
        let o = cmd.arg("-o").arg(out.path()).arg("--json").output().unwrap();
        let what = format!("export ({log_format} logs, URI in the environment: {via_env})");
        assert_eq!(o.status.code(), Some(0), "{what}: {}", String::from_utf8_lossy(&o.stderr));
        let summary = last_json_line(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(summary["runs"], 3, "{what}: {summary}");
        assert!(summary["rows"]["history"].as_u64().unwrap() >= 15, "{what}: {summary}");
        assert_no_secret_in(&format!("stdout of {what}"), &o.stdout, &forms);
        assert_no_secret_in(&format!("stderr of {what}"), &o.stderr, &forms);
        assert_no_secret_in_files(out.path(), &forms);
        let manifest = std::fs::read_to_string(out.path().join("_manifest.json")).unwrap();
        if !via_env {
            assert!(manifest.contains("http://***@127.0.0.1"), "the manifest names the redacted source: {manifest}");
        }
    }
    let o = runport_clean().args(["plan", &source, "--json"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_no_secret_in("plan", &[o.stdout.as_slice(), o.stderr.as_slice()].concat(), &forms);
    assert!(String::from_utf8_lossy(&o.stdout).contains("http://***@"), "{}", String::from_utf8_lossy(&o.stdout));

    // A wrong password in the URL: rejected, and named as the URL's.
    let (bad_source, _) = with_creds("wrong-url-password");
    let out = tempdir();
    let o = runport_clean().args(["export", &bad_source, "-o"]).arg(out.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("rejected the credentials") && stderr.contains("tracking URI"), "{stderr}");
    assert_no_secret_in("stderr of a rejected export", &o.stderr, &secret_forms("wrong-url-password", Some(user)));
}

#[test]
fn options_of_other_sources_are_usage_errors_its_own_are_applied_and_concurrency_follows_the_kind() {
    let std = standard();
    let local = ["--experiment", "--view"];
    let sources = [
        (std.server.source(), "mlflow-rest", &["--where", "--per-page", "--experiment", "--view"][..], 16),
        (format!("sqlite:///{}", std.server.db.display()), "mlflow-sqlite", &local[..], cpus()),
        (std.mlruns.to_str().unwrap().to_string(), "mlflow-files", &local[..], cpus()),
        (format!("file://{}", std.mlruns.display()), "mlflow-files", &local[..], cpus()),
    ];
    for (source, kind, takes, concurrency) in sources {
        let run = |args: &[&str]| {
            let mut all: Vec<&std::ffi::OsStr> = vec![args[0].as_ref(), source.as_ref()];
            all.extend(args[1..].iter().map(|a| a.as_ref() as &std::ffi::OsStr));
            runport_out(&all)
        };
        assert_options_refused(kind, takes, &run);
        if kind != "mlflow-rest" {
            let (_, _, stderr) = run(&["ls", "--where", "attributes.status = 'FINISHED'"]);
            assert!(stderr.contains("use the mlflow+http(s):// source"), "{kind}: {stderr}");
        }

        // Its own options, in a real export.
        let out = tempdir();
        let mut extra =
            vec!["--select", "run_name,status,experiment_name", "--experiment", "runport-std", "--view", "all"];
        if kind == "mlflow-rest" {
            extra.extend(["--where", "attributes.status = 'FINISHED'", "--per-page", "3"]);
        }
        let summary = export_source(&source, out.path(), &extra, 0);
        assert!(summary["runs"].as_u64().unwrap() > 0, "{kind}: {summary}");
        let (_, batches) = read_parquet(&out.path().join("runs.parquet"));
        for b in &batches {
            let text = |c: &str| {
                let a = b.column_by_name(c).unwrap();
                a.as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap()
                    .iter()
                    .map(|s| s.map(str::to_string))
                    .collect::<Vec<_>>()
            };
            assert!(
                text("experiment_name").iter().all(|e| e.as_deref() == Some("runport-std")),
                "{kind}: --experiment"
            );
            if kind == "mlflow-rest" {
                assert!(text("status").iter().all(|s| s.as_deref() == Some("FINISHED")), "{kind}: --where");
            }
        }

        let (code, stdout, stderr) = run(&["plan", "--json"]);
        assert_eq!(code, 0, "{kind}: {stdout}\n{stderr}");
        assert_eq!(planned_concurrency(&stdout), concurrency, "{kind}: default concurrency");
    }
}

/// The large run of the memory tests: 200,000 points over 4 keys (steps in
/// order, repeated, out of order, restarted; a NaN now and then). With
/// `--memory-limit 16MiB` a history chunk is 1 MiB, about 22,000 points:
/// the run spills in some ten chunks. Held whole, the same export peaks
/// 7 to 15 MiB higher (sqlite, mlruns, REST, as measured); the tests
/// check that it peaks higher.
const LARGE_POINTS: u64 = 200_000;
const LARGE_KEYS: u32 = 4;

fn large_run() -> &'static LargeMlflowRun {
    static RUN: OnceLock<LargeMlflowRun> = OnceLock::new();
    RUN.get_or_init(|| mlflow_large_run(LARGE_POINTS, LARGE_KEYS))
}

/// Every Parquet file of a dataset (by path), its columns read back and joined.
fn dataset_columns(dir: &Path) -> Vec<(String, Vec<(String, arrow_array::ArrayRef)>)> {
    let mut files: Vec<PathBuf> =
        walk_files(dir).into_iter().filter(|p| p.extension().is_some_and(|x| x == "parquet")).collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let (names, batches) = read_parquet(p);
            let columns = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let parts: Vec<&dyn arrow_array::Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
                    (name.clone(), arrow_select::concat::concat(&parts).expect("columns of one type"))
                })
                .collect();
            (p.strip_prefix(dir).expect("under the dataset").display().to_string(), columns)
        })
        .collect()
}

/// Exports `source` with `--memory-limit limit` into a folder of its own
/// (the spill folder is made beside the dataset); returns the summary, the
/// peak RSS in KiB and the folder.
fn export_with_limit(source: &str, limit: &str) -> (serde_json::Value, u64, tempfile::TempDir) {
    let dir = tempdir();
    let out = dir.path().join("dataset");
    let mut cmd = runport();
    cmd.args(["export", source, "--experiment", "runport-large", "--json", "--memory-limit", limit, "-o"]).arg(&out);
    let (o, peak_kib) = run_with_peak_rss(&mut cmd);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "export {source} --memory-limit {limit}\n{stdout}\n{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["dataset"], "--memory-limit {limit}: only the dataset is left beside it, no spill folder");
    (last_json_line(&stdout), peak_kib, dir)
}

/// A large run exported within 16 MiB (spilled) and with no limit to speak
/// of (held whole): the same dataset, every column and row order included;
/// spill bytes only in the first; no spill folder left; and a peak RSS
/// within the process's fixed cost plus twice the budget, below the
/// whole run's.
fn large_run_streams_within_the_budget(source: &str, in_flight_kib: u64) {
    let (fixed, fixed_kib, _) = {
        // The process's own cost (binary, runtime, listing, writers): the
        // same export without history.
        let dir = tempdir();
        let out = dir.path().join("dataset");
        let mut cmd = runport();
        cmd.args(["export", source, "--experiment", "runport-large", "--json", "--history", "none", "-o"]).arg(&out);
        let (o, kib) = run_with_peak_rss(&mut cmd);
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        (last_json_line(&String::from_utf8_lossy(&o.stdout)), kib, dir)
    };
    assert_eq!(fixed["runs"], 1, "{fixed}");
    let (whole, whole_kib, whole_dir) = export_with_limit(source, "64GiB");
    let (spilled, spilled_kib, spilled_dir) = export_with_limit(source, "16MiB");
    eprintln!(
        "{source}: peak RSS {fixed_kib} KiB without history, {whole_kib} KiB held whole, {spilled_kib} KiB within \
         16MiB; spill bytes {}",
        spilled["spill_bytes"]
    );
    assert_eq!(whole["rows"]["history"], LARGE_POINTS, "{whole}");
    assert_eq!(spilled["rows"]["history"], LARGE_POINTS, "{spilled}");
    assert_eq!(whole["spill_bytes"], 0, "nothing spills under 64GiB: {whole}");
    assert!(spilled["spill_bytes"].as_u64().is_some_and(|b| b > 0), "the run spills under 16MiB: {spilled}");
    let (a, b) =
        (dataset_columns(&whole_dir.path().join("dataset")), dataset_columns(&spilled_dir.path().join("dataset")));
    let files =
        |d: &[(String, Vec<(String, arrow_array::ArrayRef)>)]| d.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(files(&a), files(&b), "the same files");
    assert!(files(&a).iter().any(|f| f.starts_with("history/")), "{:?}", files(&a));
    for ((file, whole), (_, spilled)) in a.iter().zip(&b) {
        let names = |c: &[(String, arrow_array::ArrayRef)]| c.iter().map(|c| c.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(whole), names(spilled), "{file}: the same columns");
        for ((name, w), (_, s)) in whole.iter().zip(spilled) {
            assert!(w.as_ref() == s.as_ref(), "{file}: column {name} differs between the whole and the spilled export");
        }
    }
    // Held in chunks, the run adds at most the budget to the process's own
    // cost, as much again for the history file's writer, whose row groups
    // (up to 1Mi rows) do not follow --memory-limit, and the answers in
    // flight; held whole, it takes more than in chunks.
    let bound = fixed_kib + 2 * 16 * 1024 + in_flight_kib;
    assert!(
        spilled_kib <= bound,
        "peak RSS {spilled_kib} KiB within 16MiB, above {bound} KiB ({fixed_kib} KiB without history)"
    );
    // Answers in flight (network sources) vary by as much from run to run
    // on a loaded machine: they are left out of the comparison.
    assert!(
        spilled_kib < whole_kib + in_flight_kib,
        "peak RSS {spilled_kib} KiB within 16MiB, {whole_kib} KiB held whole (answers in flight: {in_flight_kib} KiB)"
    );
}

#[test]
fn large_sqlite_run_streams_within_the_memory_budget() {
    let run = large_run();
    large_run_streams_within_the_budget(&format!("sqlite:///{}", run.db.display()), 0);
}

#[test]
fn large_mlruns_run_streams_within_the_memory_budget() {
    let run = large_run();
    large_run_streams_within_the_budget(run.mlruns.to_str().expect("test paths are UTF-8"), 0);
}

/// The large run served by a real `mlflow server` (on a copy of the sqlite
/// store the official client wrote): `get-history` pages of 25,000 points,
/// spilled to a temporary file past the run's chunk.
#[test]
fn large_rest_run_streams_within_the_memory_budget() {
    let run = large_run();
    let dir = tempdir();
    let db = dir.path().join("mlflow.db");
    std::fs::copy(&run.db, &db).expect("copy the large run's store");
    let server = MlflowServer::start(&db, false);
    // Each key's pages are asked at once: 4 answers of 25,000 points in
    // flight, each about 2.5 MB of JSON and 0.6 MB of points (4 MiB allowed).
    large_run_streams_within_the_budget(&server.source(), LARGE_KEYS as u64 * 4 * 1024);
}
