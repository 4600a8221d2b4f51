//! The test bed: a Python virtual environment with the real W&B SDK (and
//! polars, pyarrow, duckdb), runs written by that SDK, and the reference
//! reader. Everything is created on first use under `target/` and reused;
//! a cross-process lock makes parallel test processes wait for one setup.
//! A step that fails panics with what to check: tests never pass without
//! their test bed.

#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

pub fn testbed_dir() -> PathBuf {
    repo_root().join("tests").join("testbed")
}

/// Holds an exclusive lock on a file under `target/` while alive.
pub struct Lock(File);

pub fn lock(name: &str) -> Lock {
    let dir = target_dir();
    fs::create_dir_all(&dir).expect("create target dir");
    let f = File::create(dir.join(format!("{name}.lock"))).expect("create lock file");
    f.lock().expect("lock the test bed");
    Lock(f)
}

/// Stable FNV-1a hash, to key cached test data by the scripts that made it.
pub fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The test-bed Python: `target/testbed-venv`, created from
/// `tests/testbed/requirements.txt` when missing or out of date.
pub fn python() -> PathBuf {
    let venv = target_dir().join("testbed-venv");
    let py = venv.join("bin").join("python");
    let requirements = testbed_dir().join("requirements.txt");
    let wanted = fs::read(&requirements).expect("read tests/testbed/requirements.txt");
    let marker = venv.join(".runport-requirements");
    if fs::read(&marker).ok().as_deref() == Some(wanted.as_slice()) && py.exists() {
        return py;
    }
    let _guard = lock("testbed-venv");
    if fs::read(&marker).ok().as_deref() == Some(wanted.as_slice()) && py.exists() {
        return py;
    }
    let python3 = std::env::var("RUNPORT_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    eprintln!("test bed: creating {} from {} (first run only)", venv.display(), requirements.display());
    let _ = fs::remove_dir_all(&venv);
    run_checked(
        Command::new(&python3).args(["-m", "venv"]).arg(&venv),
        "creating the test-bed venv (needs python3 with venv)",
    );
    run_checked(
        Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        "installing tests/testbed/requirements.txt",
    );
    fs::write(&marker, &wanted).expect("write venv marker");
    py
}

/// Runs a test-bed script with the venv's Python; panics with its output on failure.
pub fn testbed_script(script: &str, args: &[&std::ffi::OsStr]) -> Output {
    let py = python();
    run_checked(
        Command::new(py).arg(testbed_dir().join(script)).args(args).env("WANDB_SILENT", "true"),
        &format!("tests/testbed/{script}"),
    )
}

/// A set of runs written by the real W&B SDK with `make_wandb_runs.py --set NAME`,
/// cached under `target/testbed-data/` and regenerated when the script changes.
pub fn wandb_runs(set: &str) -> PathBuf {
    let script = testbed_dir().join("make_wandb_runs.py");
    let source = fs::read(&script).expect("read tests/testbed/make_wandb_runs.py");
    let reqs = fs::read(testbed_dir().join("requirements.txt")).expect("read requirements");
    let key = fnv(&[&source, &reqs, set.as_bytes()]);
    let dir = target_dir().join("testbed-data").join(format!("wandb-{set}-{key:016x}"));
    let done = dir.join(".complete");
    if done.exists() {
        return dir;
    }
    python();
    let _guard = lock(&format!("testbed-data-{set}"));
    if done.exists() {
        return dir;
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create test data dir");
    eprintln!("test bed: writing W&B runs ({set}) into {} (first run only)", dir.display());
    testbed_script(
        "make_wandb_runs.py",
        &["--out".as_ref(), dir.as_os_str(), "--set".as_ref(), set.as_ref(), "--jobs".as_ref(), "2".as_ref()],
    );
    fs::write(&done, b"").expect("write data marker");
    dir
}

/// The scenario table `make_wandb_runs.py` writes next to the runs.
pub fn scenarios(dir: &Path) -> serde_json::Value {
    let text = fs::read(dir.join("scenarios.json")).expect("read scenarios.json");
    serde_json::from_slice(&text).expect("scenarios.json is JSON")
}

/// The run id of a named scenario.
pub fn scenario_run_id(dir: &Path, name: &str) -> String {
    let s = scenarios(dir);
    s["scenarios"]
        .get(name)
        .and_then(|v| v.get("run_id").or(Some(v)))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("scenario {name:?} missing from scenarios.json: {s}"))
        .to_string()
}

pub fn runport() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runport"));
    c.env("RUST_LOG", "runport=warn");
    c
}

/// Runs `runport` and returns (exit code, stdout, stderr).
pub fn runport_out(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = runport().args(args).output().expect("start runport");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON summary on the last stdout line of `--json`.
pub fn last_json_line(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no stdout: {stdout:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

/// Exports `source` into `out` with extra args; asserts the exit code; returns the summary.
pub fn export_json(source: &Path, out: &Path, extra: &[&str], want_code: i32) -> serde_json::Value {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["export".as_ref(), source.as_os_str(), "-o".as_ref(), out.as_os_str(), "--json".as_ref()];
    args.extend(extra.iter().map(|s| s.as_ref() as &std::ffi::OsStr));
    let (code, stdout, stderr) = runport_out(&args);
    assert_eq!(code, want_code, "runport {args:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    last_json_line(&stdout)
}

/// Compares an export with the reference reader (pyarrow and polars read it back).
pub fn reference_check(runs: &Path, export: &Path, layout: &str) -> String {
    let out = testbed_script(
        "wandb_reference.py",
        &[
            "check".as_ref(),
            "--runs".as_ref(),
            runs.as_os_str(),
            "--export".as_ref(),
            export.as_os_str(),
            "--history".as_ref(),
            layout.as_ref(),
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a Python snippet in the test-bed venv; returns stdout.
pub fn python_snippet(code: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = run_checked(Command::new(python()).arg("-c").arg(code).args(args), "python snippet");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a Parquet file with the parquet crate: (column names, rows).
pub fn read_parquet(path: &Path) -> (Vec<String>, Vec<arrow_array::RecordBatch>) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).expect("a Parquet file");
    let names = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
    let batches: Vec<_> = builder.build().expect("a reader").map(|b| b.expect("a batch")).collect();
    (names, batches)
}

/// A fresh temporary directory under `target/` (kept small; removed on drop).
pub fn tempdir() -> tempfile::TempDir {
    let base = target_dir().join("test-tmp");
    fs::create_dir_all(&base).expect("create test tmp");
    tempfile::tempdir_in(base).expect("tempdir")
}
