//! Runs larger than memory: one W&B run written by the real SDK (`--set
//! large`), exported with a small memory limit (its history handed over in
//! chunks and spilled beside the output) and with a limit so large that
//! nothing spills. The two datasets must be equal, and the small limit must
//! hold the export's memory down (peak RSS read from `/proc`).

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::RecordBatch;

use crate::harness::*;

fn large() -> PathBuf {
    wandb_runs("large")
}

/// The spill folder of an export into `out`: `.NAME.runport-spill` beside it.
fn spill_folder(out: &Path) -> PathBuf {
    let name = out.file_name().expect("an output folder has a name").to_string_lossy();
    out.with_file_name(format!(".{name}.runport-spill"))
}

/// Exports `runs` into `out`; returns the `--json` summary and the peak RSS in KiB.
fn export_measured(runs: &Path, out: &Path, args: &[&str]) -> (serde_json::Value, u64) {
    let mut cmd: Command = runport();
    cmd.arg("export").arg(runs).arg("-o").arg(out).arg("--json").args(args);
    let (output, peak_kib) = run_with_peak_rss(&mut cmd);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "runport export {args:?}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    let summary = last_json_line(&stdout);
    assert!(summary["failures"].as_array().is_some_and(|f| f.is_empty()), "{summary}");
    (summary, peak_kib)
}

/// A Parquet table of a dataset (`runs.parquet`, or every history part in
/// name order) as one batch: column names and values, row order included.
fn table(dir: &Path, files: &[PathBuf]) -> RecordBatch {
    assert!(!files.is_empty(), "no Parquet files in {}", dir.display());
    let mut batches = Vec::new();
    for f in files {
        batches.extend(read_parquet(f).1);
    }
    let schema = batches[0].schema();
    arrow_select::concat::concat_batches(&schema, &batches).expect("the parts of a table share their schema")
}

fn history_parts(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir.join("history"))
        .unwrap_or_else(|e| panic!("{}/history: {e}", dir.display()))
        .map(|e| e.expect("list history parts").path())
        .collect();
    parts.sort();
    parts
}

/// Asserts that two exports hold the same runs table and the same history.
fn assert_same_dataset(a: &Path, b: &Path, what: &str) {
    for (name, fa, fb) in [
        ("runs", vec![a.join("runs.parquet")], vec![b.join("runs.parquet")]),
        ("history", history_parts(a), history_parts(b)),
    ] {
        let (ta, tb) = (table(a, &fa), table(b, &fb));
        assert_eq!(ta.num_rows(), tb.num_rows(), "{what}: {name} rows");
        let names = |t: &RecordBatch| {
            t.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect::<Vec<_>>()
        };
        assert_eq!(names(&ta), names(&tb), "{what}: {name} columns");
        for (i, (ca, cb)) in ta.columns().iter().zip(tb.columns()).enumerate() {
            assert!(ca == cb, "{what}: {name} column {} differs", ta.schema().field(i).name());
        }
    }
}

#[test]
fn a_large_run_exports_in_bounded_memory_and_equals_the_unbounded_export() {
    let runs = large();
    let want = &scenarios(&runs)["scenarios"]["large"];
    let (rows, points) = (want["history_rows"].as_u64().unwrap(), want["history_long_rows"].as_u64().unwrap());
    for layout in ["long", "wide"] {
        let tmp = tempdir();
        let (bounded, whole) = (tmp.path().join("bounded"), tmp.path().join("whole"));
        let (small, small_peak) = export_measured(&runs, &bounded, &["--history", layout, "--memory-limit", "16MiB"]);
        let (big, big_peak) = export_measured(&runs, &whole, &["--history", layout, "--memory-limit", "64GiB"]);
        eprintln!(
            "{layout}: 16MiB limit: peak RSS {} KiB, spill {} bytes; 64GiB limit: peak RSS {} KiB",
            small_peak, small["spill_bytes"], big_peak
        );
        let history_rows = if layout == "long" { points } else { rows };
        for s in [&small, &big] {
            assert_eq!(s["rows"]["history"].as_u64(), Some(history_rows), "{layout}: {s}");
        }
        assert!(small["spill_bytes"].as_u64().is_some_and(|b| b > 0), "{layout}: nothing spilled: {small}");
        assert_eq!(big["spill_bytes"].as_u64(), Some(0), "{layout}: spilled without need: {big}");
        for out in [&bounded, &whole] {
            let spill = spill_folder(out);
            assert!(!spill.exists(), "{layout}: {} is left after the export", spill.display());
        }
        assert_same_dataset(&bounded, &whole, layout);
        // Held whole, the run's points alone take `HISTORY_POINT_BYTES` each;
        // in chunks, they must not show in the peak. Both peaks vary by a few
        // MiB from run to run (threads' allocator arenas): the bounded one
        // must be lower by at least half of what the points take.
        let whole_points_kib = points * HISTORY_POINT_BYTES / 1024;
        assert!(
            small_peak < BOUNDED_PEAK_KIB && small_peak + whole_points_kib / 2 < big_peak,
            "{layout}: peak RSS {small_peak} KiB with a 16 MiB limit, {big_peak} KiB with none: the bounded \
             export must stay under {BOUNDED_PEAK_KIB} KiB, and under the unbounded peak by more than half \
             of what the run's points take ({whole_points_kib} KiB)"
        );
    }
}

/// The peak RSS allowed to an export of the large run with `--memory-limit
/// 16MiB`. Measured with the test build: 26 MiB for an export without
/// history (the program); with the limit, 62 MiB on one thread, 80 to 87
/// MiB since a run's chunks are spilled on a thread of their own and a large
/// `.wandb` is read on two (the program, a row group of the history writer,
/// about 18 MiB of it, the chunks in flight, each thread's allocator arena);
/// 106 to 134 MiB without a limit (800,000 points of 40 bytes held whole,
/// and their Arrow batch).
const BOUNDED_PEAK_KIB: u64 = 100 * 1024;

/// What a source holds per history value (row, key, value).
const HISTORY_POINT_BYTES: u64 = std::mem::size_of::<runport::run::HistoryPoint>() as u64;

#[test]
fn a_spill_folder_left_by_a_killed_export_is_removed_by_the_next_and_spilled_runs_match_the_reference() {
    // `std-long` (100,000 rows) is larger than one chunk under a 16 MiB limit: it spills.
    let runs = wandb_runs("standard");
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let spill = spill_folder(&out);
    // What a killed export leaves: the folder with a half-written spill file
    // under the name the next export's first spill file takes.
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::write(spill.join("run-000000.arrow"), b"ARROW1\0\0 cut short by a kill").unwrap();
    let summary = export_json(&runs, &out, &["--memory-limit", "16MiB"], 0);
    assert!(summary["failures"].as_array().is_some_and(|f| f.is_empty()), "{summary}");
    assert!(summary["spill_bytes"].as_u64().is_some_and(|b| b > 0), "nothing spilled: {summary}");
    assert!(!spill.exists(), "{} is left after the export", spill.display());
    // The run read in chunks holds what the reference reader finds.
    reference_check(&runs, &out, "long");
}

/// A run with 20,000 config and 20,000 summary keys written by the SDK
/// (`--set wide`): a runs table of 40,000 columns, written a block of
/// columns at a time. Its values are what the reference reader finds, and
/// the export's memory stays far below what parquet's column writers took
/// for all columns at once (about 8 KB a column).
#[test]
fn a_run_with_very_many_config_and_summary_keys_exports_in_bounded_memory() {
    let runs = wandb_runs("wide");
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let (summary, peak) = export_measured(&runs, &out, &["--history", "none"]);
    eprintln!("40,000 columns: peak RSS {peak} KiB");
    assert_eq!(summary["rows"]["runs"].as_u64(), Some(1), "{summary}");
    reference_check(&runs, &out, "none");
    let columns = read_parquet(&out.join("runs.parquet")).0.len();
    assert!(columns > 40_000, "{columns} columns");
    assert!(peak < WIDE_PEAK_KIB, "peak RSS {peak} KiB for {columns} columns, over {WIDE_PEAK_KIB} KiB");
}

/// The peak RSS allowed to the export of the wide run. Measured with the
/// test build: 149,604 KiB; with all 40,021 column writers at once (one
/// block), 365,024 KiB.
const WIDE_PEAK_KIB: u64 = 250 * 1024;
