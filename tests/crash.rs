//! The plain dataset under SIGKILL: re-exports into an existing dataset are
//! killed at random moments while every rename is slowed down (fault
//! injection with strace, 300 ms before and 300 ms after a rename, as on a
//! network filesystem), and after each kill the folder is read as a user
//! reads it: `runs.parquet`, every `history/*.parquet` and `_manifest.json`
//! must be one whole export, the one before or the one being written. Also
//! the guards of the output folder: a folder runport did not write, and one
//! another export is writing, are refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Two exports that differ in every file: columns of both tables, history
/// rows and layout.
const EXPORT_A: &[&str] = &["--select", "name,state,history.loss", "--history", "long"];
const EXPORT_B: &[&str] = &["--select", "name,config.*,history.*", "--history", "wide"];
const KILLS: usize = 40;
/// Slowed renames: 300 ms each (microseconds, as strace takes them).
const RENAME_DELAY_US: u64 = 300_000;

/// The standard runs without the long one, so that an export takes a
/// fraction of a second and forty kills fit in a minute or two.
fn small_runs(dst: &Path) {
    let runs = wandb_runs("standard");
    let long = scenario_run_id(&runs, "long");
    let mut copied = 0;
    for p in wandb_logs(&runs).into_iter().filter(|p| !p.ends_with(format!("run-{long}.wandb"))) {
        let to = dst.join(p.strip_prefix(&runs).expect("under the runs folder"));
        fs::create_dir_all(to.parent().expect("a log has a folder")).expect("create run folder");
        fs::copy(&p, &to).expect("copy a log");
        copied += 1;
    }
    assert!(copied >= 5, "the test needs several runs, copied {copied}");
}

/// What a user reading the folder sees: the manifest's selection and
/// tables, the columns and rows of `runs.parquet` and of every
/// `history/*.parquet` (as a `history/*.parquet` glob finds them). Any file
/// that cannot be read, or a manifest that lists other files or row counts
/// than the folder holds, is an error.
fn fingerprint(dir: &Path) -> Result<String, String> {
    let text = fs::read(dir.join("_manifest.json")).map_err(|e| format!("_manifest.json: {e}"))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("_manifest.json is not JSON: {e}"))?;
    let mut listed = std::collections::BTreeMap::new();
    for table in manifest["tables"].as_object().ok_or("the manifest has no tables")?.values() {
        for f in table["files"].as_array().ok_or("a table without files")? {
            listed.insert(f["path"].as_str().ok_or("a file without path")?.to_string(), f["rows"].as_u64());
        }
    }
    let mut present = vec![PathBuf::from("runs.parquet")];
    if let Ok(rd) = fs::read_dir(dir.join("history")) {
        let mut parts: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .map(|p| Path::new("history").join(p.file_name().expect("a listed file has a name")))
            .collect();
        parts.sort();
        present.extend(parts);
    }
    let mut out = format!("selection={} layout={}", manifest["selection"], manifest["history_layout"]);
    let mut history_rows = 0;
    let mut history_columns = None;
    for rel in &present {
        let (columns, rows) = parquet_shape(&dir.join(rel))?;
        let key = rel.to_string_lossy().replace('\\', "/");
        match listed.remove(&key) {
            Some(Some(r)) if r == rows => {}
            other => return Err(format!("{key}: {rows} rows, the manifest says {other:?}")),
        }
        if key == "runs.parquet" {
            out += &format!(" runs[{rows} rows: {}]", columns.join(","));
        } else {
            history_rows += rows;
            if history_columns.get_or_insert_with(|| columns.clone()) != &columns {
                return Err(format!("{key}: columns differ from the other history parts"));
            }
        }
    }
    if !listed.is_empty() {
        return Err(format!("listed by the manifest but missing: {:?}", listed.keys().collect::<Vec<_>>()));
    }
    out += &format!(
        " history[{} parts, {history_rows} rows: {}]",
        present.len() - 1,
        history_columns.unwrap_or_default().join(",")
    );
    Ok(out)
}

/// Column names and rows of a Parquet file, every row read.
fn parquet_shape(path: &Path) -> Result<(Vec<String>, u64), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let f = fs::File::open(path).map_err(|e| fail(&e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| fail(&e))?;
    let columns = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = 0;
    for batch in builder.build().map_err(|e| fail(&e))? {
        rows += batch.map_err(|e| fail(&e))?.num_rows() as u64;
    }
    Ok((columns, rows))
}

/// How renames behave under strace.
#[derive(Clone, Copy, PartialEq)]
enum Renames {
    /// Every rename, renameat and renameat2 delayed on its way in (before
    /// the rename takes effect) and on its way out (after it took effect),
    /// so that random kills land on both sides of the switch however fast
    /// the export is up to its rename.
    Slow,
    /// The same, and renameat2 fails with EINVAL, as on a filesystem
    /// without `RENAME_EXCHANGE`.
    SlowWithoutExchange,
}

/// `runport export` under strace with `renames`; strace's own log (the
/// renames) goes to `log`.
fn slowed_export(source: &Path, out: &Path, extra: &[&str], renames: Renames, log: &Path) -> Child {
    let delay = format!("delay_enter={RENAME_DELAY_US}:delay_exit={RENAME_DELAY_US}");
    let injections = match renames {
        Renames::Slow => vec![format!("inject=rename,renameat,renameat2:{delay}")],
        Renames::SlowWithoutExchange => {
            vec![format!("inject=rename,renameat:{delay}"), format!("inject=renameat2:error=EINVAL:{delay}")]
        }
    };
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"]).arg(log).args(["-e", "trace=rename,renameat,renameat2"]);
    for i in &injections {
        cmd.args(["-e", i]);
    }
    cmd.arg(runport_bin())
        .arg("export")
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(extra)
        .env("RUST_LOG", "runport=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs strace (fault injection of renames) on PATH: {e}"))
}

/// The pid of the `runport` process strace started (its child).
fn traced_child(strace: u32) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for e in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.rsplit_once(") ") else { continue };
            let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(strace) && comm.ends_with("(runport") {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// SIGKILL by pid with the `kill` command; true when the process was there
/// to be killed.
fn sigkill(pid: u32) -> bool {
    Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A small generator for the kill times (seeded, so a failure can be replayed
/// with `RUNPORT_CRASH_SEED`).
struct XorShift(u64);

impl XorShift {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the kills left.
#[derive(Debug, Default)]
struct Outcomes {
    kills: usize,
    /// The previous export in place.
    old: usize,
    /// The new export in place.
    new: usize,
    /// No dataset folder, the previous export whole beside it (the
    /// fallback's window between its two renames).
    set_aside: usize,
    torn: Vec<String>,
}

/// Exports A and B in turn into one folder, each killed at a random moment
/// of its run, until `kills` exports were killed while running; after each
/// kill the folder is read as a user reads it.
fn kill_re_exports(renames: Renames, kills: usize) -> Outcomes {
    let work = tempdir();
    let source = work.path().join("runs");
    small_runs(&source);
    let out = work.path().join("out");
    let aside = work.path().join(".out.runport-old");
    let log = work.path().join("strace.log");

    // The two expected datasets, and how long a slowed re-export takes
    // (the first export into a new folder renames less).
    let mut expected = vec![String::new(); 2];
    let mut took = vec![Duration::ZERO; 2];
    for (i, target) in [0, 1, 0].into_iter().enumerate() {
        let extra = [EXPORT_A, EXPORT_B][target];
        let started = Instant::now();
        let o = slowed_export(&source, &out, extra, renames, &log).wait_with_output().expect("wait for strace");
        assert!(o.status.success(), "slowed export {extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        if i > 0 {
            took[target] = started.elapsed();
        }
        expected[target] = fingerprint(&out).unwrap_or_else(|e| panic!("a whole export is readable: {e}"));
    }
    assert_ne!(expected[0], expected[1], "the two exports must be told apart");
    eprintln!("slowed exports take {took:?}:\n  A: {}\n  B: {}", expected[0], expected[1]);
    let renamed = fs::read_to_string(&log).expect("strace's log");
    let refused = renamed.lines().any(|l| l.contains("renameat2(") && l.contains("EINVAL") && l.contains("INJECTED"));
    assert_eq!(refused, renames == Renames::SlowWithoutExchange, "renameat2 as injected:\n{renamed}");

    let seed = std::env::var("RUNPORT_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }) | 1;
    eprintln!("kill times seeded with RUNPORT_CRASH_SEED={seed}");
    let mut rng = XorShift(seed);
    let mut current = 0; // A is in place
    let mut seen = Outcomes::default();
    for attempt in 0..kills * 3 {
        if seen.kills == kills {
            break;
        }
        let target = 1 - current;
        let extra = [EXPORT_A, EXPORT_B][target];
        let at = took[target].mul_f64(0.15 + 0.85 * rng.unit());
        let started = Instant::now();
        let mut strace = slowed_export(&source, &out, extra, renames, &log);
        let pid = traced_child(strace.id()).expect("strace started runport");
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        // SIGKILL the traced process; it counts only if it was still running.
        let killed = sigkill(pid);
        let status = strace.wait().expect("wait for strace");
        if !killed || status.success() {
            let mut stderr = String::new();
            if let Some(mut s) = strace.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut stderr);
            }
            assert!(status.success(), "an export that was not killed failed: {stderr}");
            assert_eq!(fingerprint(&out).as_ref(), Ok(&expected[target]), "a finished export is whole");
            current = target;
            continue;
        }
        seen.kills += 1;
        match fingerprint(&out) {
            Ok(f) if f == expected[current] => seen.old += 1,
            Ok(f) if f == expected[target] => {
                seen.new += 1;
                current = target;
            }
            // The next export puts the previous one back first.
            Err(_) if !out.exists() && fingerprint(&aside).as_ref() == Ok(&expected[current]) => seen.set_aside += 1,
            other => {
                seen.torn.push(format!("attempt {attempt}, killed after {at:?}: {other:?}"));
                // Start again from a whole dataset.
                let o = slowed_export(&source, &out, extra, renames, &log).wait_with_output().expect("wait");
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                current = target;
            }
        }
    }
    eprintln!("{seen:?}");
    assert_eq!(seen.kills, kills, "not enough exports were killed while running");
    let torn = &seen.torn;
    assert!(torn.is_empty(), "{} of {kills} killed re-exports left a torn dataset:\n{}", torn.len(), torn.join("\n"));
    assert!(seen.old > 0 && seen.new + seen.set_aside > 0, "kills land before and after the switch: {seen:?}");

    // A last export, not killed, cleans up after the killed ones.
    export_json(&source, &out, EXPORT_A, 0);
    assert_eq!(fingerprint(&out).as_ref(), Ok(&expected[0]));
    fs::remove_file(&log).expect("remove strace's log");
    let mut leftovers: Vec<String> =
        fs::read_dir(work.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    leftovers.sort();
    assert_eq!(leftovers, ["out", "runs"], "nothing is left beside the dataset");
    seen
}

#[test]
fn killed_re_exports_leave_one_whole_export() {
    let seen = kill_re_exports(Renames::Slow, KILLS);
    assert_eq!(seen.set_aside, 0, "with RENAME_EXCHANGE the folder is never missing");
}

/// Without `RENAME_EXCHANGE` (renameat2 refused with EINVAL), a kill between
/// the fallback's two renames leaves no folder and the previous export whole
/// beside it, which the next export puts back; never a torn dataset.
#[test]
fn without_rename_exchange_killed_re_exports_are_whole_or_set_aside() {
    let seen = kill_re_exports(Renames::SlowWithoutExchange, KILLS);
    assert!(seen.set_aside > 0, "kills land between the two renames too: {seen:?}");
}

/// The output folder's guards, through the command line: a folder runport
/// did not write is refused, and so is a folder another export is writing;
/// both exit 2 and change nothing.
#[test]
fn foreign_folders_and_concurrent_exports_are_refused() {
    let work = tempdir();
    let source = work.path().join("runs");
    small_runs(&source);
    let mine = work.path().join("notes");
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("notes.txt"), b"mine").unwrap();
    let (code, _, stderr) = runport_out(&["export".as_ref(), source.as_os_str(), "-o".as_ref(), mine.as_os_str()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("notes.txt") && stderr.contains("not a runport dataset"), "{stderr}");
    assert_eq!(fs::read(mine.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(fs::read_dir(&mine).unwrap().count(), 1);

    // A second export while a slowed one is writing the same folder.
    let out = work.path().join("out");
    let log = work.path().join("strace.log");
    let first = slowed_export(&source, &out, EXPORT_A, Renames::Slow, &log);
    let lock = work.path().join(".out.runport-lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The owner writes its pid once it holds the lock.
    while fs::read_to_string(&lock).map_or(true, |pid| pid.is_empty()) {
        assert!(Instant::now() < deadline, "the first export never took its lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, _, stderr) = runport_out(&["export".as_ref(), source.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("another runport export") && stderr.contains("out"), "{stderr}");
    let o = first.wait_with_output().expect("wait for strace");
    assert!(o.status.success(), "the first export goes on: {}", String::from_utf8_lossy(&o.stderr));
    assert!(fingerprint(&out).is_ok_and(|f| f.contains("history.loss")), "the first export is in place");
    assert!(!lock.exists(), "the lock file goes with the export");
}
