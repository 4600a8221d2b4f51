//! The orchestrator recipes in `examples/`: the Dagster job runs, in
//! process, with the runport that the wheel (`pyproject.toml`, maturin's
//! `bin` bindings) installs into a fresh venv; the Airflow DAG compiles and
//! the Kubernetes Indexed Job parses.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;

/// The Python of a fresh venv, created with the system's python3.
fn fresh_venv(dir: &std::path::Path) -> PathBuf {
    let python3 = std::env::var("RUNPORT_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    run_checked(Command::new(python3).args(["-m", "venv"]).arg(dir), "creating a fresh venv");
    dir.join("bin").join("python")
}

/// The wheel built by maturin installs `runport` into a fresh venv; the
/// Dagster recipe, with that venv first on PATH, syncs the W&B standard set
/// in 4 shards (ops fanned out, then a final check) into tables equal to an
/// export.
#[test]
fn the_wheel_installs_runport_and_the_dagster_recipe_syncs_four_shards() {
    let orchestrators = orchestrator_python();
    let tmp = tempdir();
    let wheels = tmp.path().join("wheels");
    // A debug build, from the crates the test build compiled.
    let maturin = orchestrators.with_file_name("maturin");
    run_checked(
        Command::new(&maturin)
            .args(["build", "--profile", "dev", "--compatibility", "linux", "--out"])
            .arg(&wheels)
            .current_dir(repo_root()),
        "maturin build (pyproject.toml)",
    );
    let built: Vec<PathBuf> = std::fs::read_dir(&wheels).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(built.len(), 1, "{built:?}");
    let wheel = &built[0];
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("runport-{}-py3-none-", env!("CARGO_PKG_VERSION"))), "{name}");

    let venv = tmp.path().join("venv");
    let python = fresh_venv(&venv);
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index", "--no-deps"])
            .arg(wheel),
        "pip install the wheel",
    );
    let installed = venv.join("bin").join("runport");
    let version = run_checked(Command::new(&installed).arg("--version"), "the installed runport");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert_eq!(version.trim(), format!("runport {}", env!("CARGO_PKG_VERSION")));

    let source = wandb_runs("standard").join("wandb");
    let table = tmp.path().join("table");
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let out = run_checked(
        Command::new(&orchestrators)
            .arg(repo_root().join("examples/dagster/runport_sync_job.py"))
            .arg(&source)
            .arg(&table)
            .args(["--shards", "4"])
            .env("PATH", path),
        "the Dagster recipe",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = last_json_line(&stdout);
    assert_eq!((&result["success"], &result["shards"]), (&true.into(), &4.into()), "{stdout}");
    // Every run of the set, once, in the tables of the four shards.
    let runs = &result["runs"];
    let listed = std::fs::read_dir(&source)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("offline-run-"))
        .count();
    assert!(runs["new"].as_u64().unwrap() > 0 && runs["new"].as_u64().unwrap() <= listed as u64, "{stdout}");
    crate::sync::assert_same_as_export(&source, &table, tmp.path(), "dagster-shards");
}

/// The Airflow DAG is valid Python and the Kubernetes Job is YAML with
/// the indexed completion and the shard argument (neither orchestrator runs
/// here).
#[test]
fn the_airflow_dag_compiles_and_the_kubernetes_job_parses() {
    const CHECK: &str = r#"
import sys, py_compile, yaml
dag, job = sys.argv[1], sys.argv[2]
py_compile.compile(dag, doraise=True)
src = open(dag).read()
assert ".expand(" in src and "--shard" in src, "dynamic task mapping over shards"
docs = [d for d in yaml.safe_load_all(open(job)) if d]
jobs = [d for d in docs if d.get("kind") in ("Job", "CronJob")]
assert jobs, [d.get("kind") for d in docs]
spec = jobs[0]["spec"]
if jobs[0]["kind"] == "CronJob":
    spec = spec["jobTemplate"]["spec"]
assert spec["completionMode"] == "Indexed", spec
assert spec["completions"] == spec["parallelism"], spec
container = spec["template"]["spec"]["containers"][0]
command = " ".join(container.get("command", []) + container.get("args", []))
assert "--shard" in command and "JOB_COMPLETION_INDEX" in command, command
print("ok", jobs[0]["kind"], spec["completions"])
"#;
    let out = run_checked(
        Command::new(orchestrator_python())
            .arg("-c")
            .arg(CHECK)
            .arg(repo_root().join("examples/airflow/runport_sync_dag.py"))
            .arg(repo_root().join("examples/kubernetes/runport-sync-indexed-job.yaml")),
        "checking the Airflow and Kubernetes recipes",
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok"));
}
