#!/usr/bin/env python3
"""`runport sync` on W&B local files: what a sync costs against what changed.

    target/testbed-venv/bin/python benches/sync.py [--runs 100] [--steps 10000] [--keys 10]
        [--changed 0.02] [--new 0.01] [--no-build]

Builds runport (`cargo build --release`), writes the runs once with the W&B
SDK (make_wandb_runs.py --set bench; cached under --data, default
target/bench-data/sync), copies them into a work folder without the "new"
share of runs, then measures, each as a child process (wall, CPU, peak RSS):

  export     a plain `runport export` of the work folder (the baseline)
  full       the first `runport sync` into an empty TABLE
  unchanged  `runport sync` again, nothing changed
  changed    after --changed of the runs grew and the held-back --new runs
             were copied in. The runs that change are live at the first sync:
             their `.wandb` files are cut to their first 80% (at a 32 KiB
             block: whole records, no exit record), as a run still writing
             has them, and a live run's history gets a file of its own. They
             then grow back to the SDK's whole file (the run went on and
             finished)

and prints, for each sync, records and bytes of `.wandb` read (from
`--json`), history rows written, files added and removed, and the ratios the
issue sets targets for: full sync / export time (<= 1.2); changed sync /
full sync time and bytes read (<= 0.05). The unchanged sync must read no
record at all. Exits 1 when a command fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTBED = ROOT / "tests" / "testbed"
VENV_PYTHON = ROOT / "target" / "testbed-venv" / "bin" / "python"
RUNPORT = ROOT / "target" / "release" / "runport"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measured, build_runport, run_child  # noqa: E402



def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(name: str, argv: list[str], logs: Path) -> Measured:
    log(f"{name}: {' '.join(argv)}")
    m = run_child(Measured(name), argv, logs, ROOT)
    if m.status != 0 or m.last_json() is None:
        log(f"{name} failed (exit {m.status}); see {logs}\n{m.stderr[-3000:]}")
        raise SystemExit(1)
    m.summary = m.last_json()
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--changed", type=float, default=0.02, help="share of runs resumed before the last sync")
    ap.add_argument("--new", type=float, default=0.01, help="share of runs added before the last sync")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--data", default=str(ROOT / "target" / "bench-data" / "sync"))
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    if not build_runport(ROOT, RUNPORT, args.no_build, log):
        return 1
    data = Path(args.data) / f"files-{args.runs}x{args.steps}x{args.keys}"
    if not (data / "complete").exists():
        log(f"writing {args.runs} runs of {args.steps} steps x {args.keys} keys with the W&B SDK into {data}")
        subprocess.run([python, str(TESTBED / "make_wandb_runs.py"), "--set", "bench", "--runs", str(args.runs),
                        "--steps", str(args.steps), "--keys", str(args.keys), "--jobs", str(args.jobs),
                        "--out", str(data)], check=True)
        (data / "complete").write_text("\n")
    work = Path(args.data) / "work"
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    source, table, export = work / "wandb", work / "table", work / "export"
    folders = sorted(p for p in (data / "wandb").iterdir() if p.is_dir() and not p.is_symlink())
    n_new = max(1, round(args.runs * args.new))
    n_changed = max(1, round(args.runs * args.changed))
    held_back = folders[-n_new:]
    source.mkdir(parents=True)
    for f in folders[:-n_new]:
        shutil.copytree(f, source / f.name)
    growing = folders[:n_changed]
    for f in growing:  # live at the first sync: their logs cut short
        for log_file in (source / f.name).rglob("*.wandb"):
            size = log_file.stat().st_size
            with open(log_file, "r+b") as fh:
                fh.truncate(max(32768, size * 8 // 10 // 32768 * 32768))
    for f in source.rglob("*.wandb"):  # into the page cache, like every input measured here
        f.read_bytes()

    baseline = measure("export", [str(RUNPORT), "export", str(source), "-o", str(export), "--json"], logs)
    full = measure("full sync", [str(RUNPORT), "sync", str(source), str(table), "--json"], logs)
    unchanged = measure("unchanged sync", [str(RUNPORT), "sync", str(source), str(table), "--json"], logs)

    log(f"{len(growing)} live runs grow to their whole files; adding {len(held_back)} runs")
    t0 = time.perf_counter()
    for f in growing:
        for log_file in f.rglob("*.wandb"):
            shutil.copyfile(log_file, source / f.name / log_file.relative_to(f))
    for f in held_back:
        shutil.copytree(f, source / f.name)
    log(f"changes made in {time.perf_counter() - t0:.1f} s")
    for f in source.rglob("*.wandb"):
        f.read_bytes()
    changed = measure("changed sync", [str(RUNPORT), "sync", str(source), str(table), "--json"], logs)

    print(f"{args.runs} runs of {args.steps} x {args.keys}; changed {len(growing)} (live runs that grew from 80% "
          f"of their log to all of it), new {len(held_back)}")
    print(f"{'command':<15} {'wall s':>7} {'cpu s':>6} {'RSS MiB':>8} {'records read':>13} {'MB read':>8} "
          f"{'hist rows':>10} {'+files':>6} {'-files':>6} {'versions':>16}")
    for m in (baseline, full, unchanged, changed):
        s = m.summary
        rec = s.get("records") or {}
        versions = s.get("versions") or {}
        rows = s.get("history_rows", (s.get("rows") or {}).get("history", 0))
        print(f"{m.name:<15} {m.seconds:>7.2f} {m.user_s + m.sys_s:>6.2f} {m.rss_mib:>8.0f} "
              f"{rec.get('read', 0):>13,} {rec.get('bytes', 0) / 1e6:>8.1f} {rows:>10,} "
              f"{s.get('files_added', s.get('files', 0)):>6} {s.get('files_removed', 0):>6} "
              f"{str(versions.get('runs'))+'/'+str(versions.get('history')):>16}")
    fr, ch = full.summary["records"], changed.summary["records"]
    print()
    print(f"full sync / export wall time: {full.seconds / baseline.seconds:.2f} (target <= 1.20)")
    print(f"unchanged sync: {unchanged.summary['records']['read']} records read, committed "
          f"{unchanged.summary['committed']}, {unchanged.seconds:.2f} s")
    print(f"changed sync / full sync: wall {changed.seconds / full.seconds:.3f}, "
          f"bytes read {ch['bytes'] / max(1, fr['bytes']):.3f} (targets <= 0.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
