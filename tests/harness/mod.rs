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

pub fn run_checked(cmd: &mut Command, what: &str) -> Output {
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
    venv_python("testbed-venv", "requirements.txt")
}

/// The Python that reads Delta tables with DuckDB's `delta_scan`:
/// `target/duckdb-venv` from `tests/testbed/requirements-duckdb.txt` (the
/// extension's package pins a DuckDB of its own).
pub fn duckdb_python() -> PathBuf {
    venv_python("duckdb-venv", "requirements-duckdb.txt")
}

/// The Python of the orchestrator recipes' tests (Dagster, maturin, PyYAML):
/// `target/orchestrator-venv` from `tests/testbed/requirements-orchestrators.txt`.
pub fn orchestrator_python() -> PathBuf {
    venv_python("orchestrator-venv", "requirements-orchestrators.txt")
}

/// Random numbers below `n` (`next(n)`) for `what`, from the seed in
/// `RUNPORT_TEST_SEED` or the clock (printed, so that a run can be repeated).
pub fn seeded_rng(what: &str) -> impl FnMut(u64) -> u64 {
    let seed = std::env::var("RUNPORT_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{what} from seed {seed} (RUNPORT_TEST_SEED)");
    let mut rng = seed | 1;
    move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}

/// Azurite's blob server (`azurite-blob`), the npm package `azurite` at
/// [`AZURITE`], installed under `target/azurite` with the machine's npm when
/// missing.
pub fn azurite_blob() -> PathBuf {
    const AZURITE: &str = "3.37.0";
    let dir = target_dir().join("azurite");
    let bin = dir.join("node_modules").join(".bin").join("azurite-blob");
    let marker = dir.join(".runport-version");
    if fs::read_to_string(&marker).ok().as_deref() == Some(AZURITE) && bin.exists() {
        return bin;
    }
    let _guard = lock("azurite");
    if fs::read_to_string(&marker).ok().as_deref() == Some(AZURITE) && bin.exists() {
        return bin;
    }
    eprintln!("test bed: installing azurite {AZURITE} into {} (first run only)", dir.display());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create target/azurite");
    run_checked(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
            .arg(&dir)
            .arg(format!("azurite@{AZURITE}")),
        "installing azurite with npm (needs Node.js and npm)",
    );
    fs::write(&marker, AZURITE).expect("write azurite marker");
    bin
}

/// `target/NAME/bin/python`, the venv created from `tests/testbed/REQUIREMENTS`
/// when missing or out of date.
pub fn venv_python(name: &str, requirements: &str) -> PathBuf {
    let venv = target_dir().join(name);
    let py = venv.join("bin").join("python");
    let requirements = testbed_dir().join(requirements);
    let wanted = fs::read(&requirements).unwrap_or_else(|e| panic!("read {}: {e}", requirements.display()));
    let marker = venv.join(".runport-requirements");
    if fs::read(&marker).ok().as_deref() == Some(wanted.as_slice()) && py.exists() {
        return py;
    }
    let _guard = lock(name);
    if fs::read(&marker).ok().as_deref() == Some(wanted.as_slice()) && py.exists() {
        return py;
    }
    let python3 = std::env::var("RUNPORT_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    eprintln!("test bed: creating {} from {} (first run only)", venv.display(), requirements.display());
    let _ = fs::remove_dir_all(&venv);
    run_checked(
        Command::new(&python3).args(["-m", "venv"]).arg(&venv),
        "creating a test-bed venv (needs python3 with venv)",
    );
    run_checked(
        Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        &format!("installing {}", requirements.display()),
    );
    fs::write(&marker, &wanted).expect("write venv marker");
    py
}

/// Reads the Delta table at `table` with DuckDB's `delta_scan` into the
/// Parquet file `out` (`tests/testbed/duckdb_delta.py`); panics with its
/// output on failure.
pub fn duckdb_delta_scan(table: &Path, out: &Path) {
    run_checked(
        Command::new(duckdb_python()).arg(testbed_dir().join("duckdb_delta.py")).arg(table).arg(out),
        &format!("reading {} with DuckDB delta_scan", table.display()),
    );
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
    wandb_runs_with(set, &[])
}

/// [`wandb_runs`] with more arguments of `make_wandb_runs.py` (the set's
/// own options, e.g. `--seconds 8` for `system-large`).
pub fn wandb_runs_with(set: &str, args: &[&str]) -> PathBuf {
    let script = testbed_dir().join("make_wandb_runs.py");
    let source = fs::read(&script).expect("read tests/testbed/make_wandb_runs.py");
    let reqs = fs::read(testbed_dir().join("requirements.txt")).expect("read requirements");
    let joined = args.join(" ");
    let key = fnv(&[&source, &reqs, set.as_bytes(), joined.as_bytes()]);
    let dir = target_dir().join("testbed-data").join(format!("wandb-{set}-{key:016x}"));
    cached_data(&dir, &format!("testbed-data-{set}"), || {
        eprintln!("test bed: writing W&B runs ({set} {joined}) into {} (first run only)", dir.display());
        write_wandb_runs(&dir, set, args)
    });
    dir
}

/// Test data in `dir`, made by `make` (into the empty folder) unless a
/// complete copy is there; one process makes it while the others wait.
pub fn cached_data(dir: &Path, lock_name: &str, make: impl FnOnce()) {
    let done = dir.join(".complete");
    if done.exists() {
        return;
    }
    python();
    let _guard = lock(lock_name);
    if done.exists() {
        return;
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create test data dir");
    make();
    fs::write(&done, b"").expect("write data marker");
}

fn write_wandb_runs(dir: &Path, set: &str, more: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["--out".as_ref(), dir.as_os_str(), "--set".as_ref(), set.as_ref(), "--jobs".as_ref(), "2".as_ref()];
    args.extend(more.iter().map(std::ffi::OsStr::new));
    testbed_script("make_wandb_runs.py", &args);
    // Runs finished long ago: a run without an exit record is then crashed,
    // whatever minute a test reads it in. Twice, a few seconds apart, in case
    // the SDK's service process was still closing a file.
    for round in 0..2 {
        if round == 1 {
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in wandb_logs(dir) {
            File::options().write(true).open(&p).and_then(|f| f.set_modified(past)).expect("set test data mtime");
        }
    }
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

/// The runport binary this test process runs: a hard link to the one cargo
/// built, made once per process. The wheel test builds runport again with
/// maturin in the same target folder, which links a new binary at cargo's
/// path; a test started meanwhile keeps the file it linked.
pub fn runport_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = Path::new(env!("CARGO_BIN_EXE_runport"));
        let dir = target_dir().join("test-bin");
        fs::create_dir_all(&dir).expect("create target/test-bin");
        // Links of test processes that ended hold old binaries: removed.
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        // Named `runport`, in a folder of this process: tests find the
        // processes it runs by their name.
        let own_dir = dir.join(std::process::id().to_string());
        fs::create_dir_all(&own_dir).expect("create target/test-bin/PID");
        let own = own_dir.join("runport");
        let mut last = None;
        // The built binary is missing for an instant while it is linked again.
        for _ in 0..100 {
            let _ = fs::remove_file(&own);
            match fs::hard_link(built, &own).or_else(|_| fs::copy(built, &own).map(|_| ())) {
                Ok(()) => return own,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("cannot link {} into {}: {last:?}", built.display(), dir.display())
    })
}

pub fn runport() -> Command {
    let mut c = Command::new(runport_bin());
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

/// Starts a test-bed server whose first stdout line is a JSON object saying it
/// is ready; its stdin stays open (the servers stop when it closes).
fn spawn_ready(mut cmd: Command, what: &str) -> (std::process::Child, serde_json::Value) {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = child.stdout.take().expect("invariant: stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .unwrap_or_else(|_| panic!("{what} was not ready within 300 s"));
    let info = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what} printed {line:?}: {e}"));
    (child, info)
}

/// The API key the W&B test server expects (the official client wants 40+ word characters).
pub const TEST_API_KEY: &str = "runport_testbed_key_0123456789abcdefghijklmnop";

/// A running W&B API test server (`tests/testbed/wandb_server.py`); stopped on drop.
pub struct WandbServer {
    child: std::process::Child,
    pub base_url: String,
    pub files_url: String,
    pub entity: String,
    pub project: String,
}

impl WandbServer {
    /// Starts a server for the runs under `runs` on free loopback ports.
    pub fn start(runs: &Path, extra: &[&str]) -> WandbServer {
        let mut args: Vec<&std::ffi::OsStr> = vec!["--runs".as_ref(), runs.as_os_str()];
        args.extend(extra.iter().map(|a| a.as_ref() as &std::ffi::OsStr));
        WandbServer::start_with(&args)
    }

    /// Starts a server with `args` (`--runs DIR`, `--synthetic SPEC`, ...).
    pub fn start_with(args: &[&std::ffi::OsStr]) -> WandbServer {
        let cache = target_dir().join("testbed-data").join("wandb-server-cache");
        let mut cmd = Command::new(python());
        cmd.arg(testbed_dir().join("wandb_server.py"))
            .args(["--port", "0", "--files-port", "0", "--api-key", TEST_API_KEY, "--exit-with-stdin", "--cache"])
            .arg(&cache)
            .args(args);
        let (child, info) = spawn_ready(cmd, "the W&B test server");
        let s = |k: &str| info[k].as_str().unwrap_or_else(|| panic!("server info lacks {k}: {info}")).to_string();
        WandbServer {
            base_url: s("base_url"),
            files_url: s("files_url"),
            entity: s("entity"),
            project: s("project"),
            child,
        }
    }

    pub fn uri(&self) -> String {
        format!("wandb://{}/{}", self.entity, self.project)
    }

    /// Calls an admin endpoint (`/_testbed/...`) of the API origin.
    pub fn admin(&self, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        use std::io::{Read, Write};
        let addr = self.base_url.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).expect("connect to the test server");
        let (method, payload) = match &body {
            Some(b) => ("POST", b.to_string()),
            None => ("GET", String::new()),
        };
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        )
        .expect("send admin request");
        let mut resp = String::new();
        conn.read_to_string(&mut resp).expect("read admin response");
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("admin {path}: {e}: {resp}"))
    }

    /// `runport` with the key in its environment (never on the command line).
    pub fn runport(&self, args: &[&str]) -> (i32, String, String) {
        let out = runport()
            .env("WANDB_API_KEY", TEST_API_KEY)
            .env_remove("WANDB_BASE_URL")
            .arg(args[0])
            .arg(self.uri())
            .args(&args[1..])
            .args(["--base-url", &self.base_url])
            .output()
            .expect("start runport");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for WandbServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `mlflow server` on a SQLite file (`mlflow_testbed.py serve`); stopped
/// when dropped, or when this process ends (its stdin closes).
pub struct MlflowServer {
    child: std::process::Child,
    pub tracking_uri: String,
    pub db: PathBuf,
    /// The server's own log (uvicorn's access lines among it).
    pub log: PathBuf,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl MlflowServer {
    pub fn start(db: &Path, basic_auth: bool) -> MlflowServer {
        let log = db.with_extension("server.log");
        let mut cmd = Command::new(python());
        cmd.arg(testbed_dir().join("mlflow_testbed.py")).arg("serve").arg("--db").arg(db).args(["--port", "0"]);
        cmd.arg("--log").arg(&log);
        if basic_auth {
            cmd.arg("--basic-auth");
        }
        let (child, info) = spawn_ready(cmd, "mlflow_testbed.py serve");
        let s = |k: &str| info[k].as_str().map(str::to_string);
        MlflowServer {
            tracking_uri: s("tracking_uri").expect("tracking_uri"),
            db: db.to_path_buf(),
            log,
            username: s("username"),
            password: s("password"),
            child,
        }
    }

    /// `mlflow+http://...` for runport.
    pub fn source(&self) -> String {
        format!("mlflow+{}", self.tracking_uri)
    }

    /// API requests the server has answered so far, counted from its own
    /// access log (`"POST /api/2.0/mlflow/runs/search HTTP/1.1" 200`); waits
    /// until the count has been still for half a second, since the server
    /// logs a request after answering it.
    pub fn requests_served(&self) -> usize {
        let count = || {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains("\"GET /api/") || l.contains("\"POST /api/") || l.contains(" /ajax-api/"))
                .count()
        };
        let mut last = count();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let now = count();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        // Closing stdin lets the test bed stop the server cleanly.
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One MLflow run with a long metric history (`mlflow_large_run.py`: `points`
/// points over `keys` keys), logged by the official client into a sqlite
/// store and into a FileStore at once, cached under `target/testbed-data/`
/// and made again when the script changes.
pub struct LargeMlflowRun {
    /// `mlflow.db`, for `sqlite:///` (and a server started on a copy).
    pub db: PathBuf,
    /// The FileStore's `mlruns/` folder.
    pub mlruns: PathBuf,
}

pub fn mlflow_large_run(points: u64, keys: u32) -> LargeMlflowRun {
    let script = testbed_dir().join("mlflow_large_run.py");
    let source = fs::read(&script).expect("read tests/testbed/mlflow_large_run.py");
    let reqs = fs::read(testbed_dir().join("requirements.txt")).expect("read requirements");
    let shape = format!("{points}x{keys}");
    let key = fnv(&[&source, &reqs, shape.as_bytes()]);
    let dir = target_dir().join("testbed-data").join(format!("mlflow-large-{shape}-{key:016x}"));
    let run = LargeMlflowRun { db: dir.join("mlflow.db"), mlruns: dir.join("mlruns") };
    cached_data(&dir, &format!("testbed-data-mlflow-large-{shape}"), || {
        eprintln!("test bed: logging an MLflow run of {shape} points into {} (first run only)", dir.display());
        let uris = [format!("sqlite:///{}", run.db.display()), format!("file://{}", run.mlruns.display())];
        // Both stores at once: one process each.
        let children: Vec<_> = uris
            .iter()
            .map(|uri| {
                let mut cmd = Command::new(python());
                cmd.arg(&script)
                    .args(["--tracking-uri", uri, "--points", &points.to_string(), "--keys", &keys.to_string()])
                    .current_dir(&dir)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                (uri, cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display())))
            })
            .collect();
        for (uri, child) in children {
            let out = child.wait_with_output().expect("wait for mlflow_large_run.py");
            assert!(
                out.status.success(),
                "mlflow_large_run.py --tracking-uri {uri} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("test bed: {}", String::from_utf8_lossy(&out.stdout).trim());
        }
    });
    run
}

/// Every file under `dir`, recursively.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())).flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every `.wandb` log under `dir`, sorted.
pub fn wandb_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> =
        walk_files(dir).into_iter().filter(|p| p.extension().is_some_and(|x| x == "wandb")).collect();
    logs.sort();
    logs
}

/// A secret and the forms it travels in: itself and, with `basic_user`, the
/// base64 of `user:secret` that an `Authorization: Basic` header carries.
pub fn secret_forms(secret: &str, basic_user: Option<&str>) -> Vec<String> {
    use base64::Engine;
    let mut forms = vec![secret.to_string()];
    if let Some(user) = basic_user {
        forms.push(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}")));
    }
    forms
}

/// Panics when any form of a secret appears in `text` (what `label` names).
pub fn assert_no_secret_in(label: &str, text: &[u8], forms: &[String]) {
    for f in forms {
        assert!(!text.windows(f.len()).any(|w| w == f.as_bytes()), "a secret ({} bytes) leaked into {label}", f.len());
    }
}

/// Panics when any form of a secret appears in any file under `dir`.
pub fn assert_no_secret_in_files(dir: &Path, forms: &[String]) {
    for p in walk_files(dir) {
        let bytes = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        assert_no_secret_in(&p.display().to_string(), &bytes, forms);
    }
}

/// Exit code, stdout and stderr of a `runport` run.
pub type Outcome = (i32, String, String);

/// Every option only some sources take, each with a value the sources that
/// take it accept.
pub const SOURCE_OPTIONS: &[(&str, &str)] = &[
    ("--base-url", "http://127.0.0.1:9"),
    ("--where", r#"{"state": "crashed"}"#),
    ("--order", "+created_at"),
    ("--per-page", "5"),
    ("--samples", "5"),
    ("--experiment", "foo"),
    ("--view", "all"),
];

/// For every option of [`SOURCE_OPTIONS`] outside `takes`, and every
/// command: `run([command, option, value])` (the closure adds the source)
/// exits 2 with a message naming the option and the source kind, and an
/// export writes nothing.
pub fn assert_options_refused(kind: &str, takes: &[&str], run: &dyn Fn(&[&str]) -> Outcome) {
    let mut refused = 0;
    for (option, value) in SOURCE_OPTIONS.iter().filter(|(o, _)| !takes.contains(o)) {
        let out = tempdir();
        let target = out.path().join("dataset");
        let target = target.to_str().expect("temporary paths are UTF-8");
        for command in [&["export", "-o", target][..], &["plan"], &["ls"], &["schema"]] {
            let mut args = command.to_vec();
            args.extend([*option, *value]);
            let (code, stdout, stderr) = run(&args);
            assert_eq!(code, 2, "{kind} {args:?} should be a usage error\n{stdout}\n{stderr}");
            let expected = format!("{option} does not apply to {kind} sources");
            assert!(stderr.contains(&expected), "{kind} {args:?}: stderr lacks {expected:?}:\n{stderr}");
        }
        assert!(!Path::new(target).exists(), "{kind} {option}: a refused export wrote {target}");
        refused += 1;
    }
    assert_eq!(refused, SOURCE_OPTIONS.len() - takes.len(), "{kind}: every option outside {takes:?} was tried");
}

/// `concurrency` of `runport plan --json` (the default when not given).
pub fn planned_concurrency(stdout: &str) -> u64 {
    let plan = last_json_line(stdout);
    plan["concurrency"].as_u64().unwrap_or_else(|| panic!("plan --json without concurrency: {plan}"))
}

/// The number of CPUs, the default concurrency of local sources.
pub fn cpus() -> u64 {
    std::thread::available_parallelism().expect("the CPU count is known on test machines").get() as u64
}

/// Runs `cmd` to its end and returns its output and its peak resident set
/// in KiB, read from `/proc/PID/status` (`VmHWM`, the kernel's high-water
/// mark) every few milliseconds while it runs: the last reading before the
/// process exits is its peak up to then.
pub fn run_with_peak_rss(cmd: &mut Command) -> (Output, u64) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the command");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(3));
    };
    assert!(peak > 0, "no VmHWM was read from {status_path}: /proc is needed to measure memory");
    (Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }, peak)
}
