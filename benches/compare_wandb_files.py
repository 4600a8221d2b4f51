#!/usr/bin/env python3
"""runport against the pure-Python reference reader on real W&B runs.

    target/testbed-venv/bin/python benches/compare_wandb_files.py \\
        [--runs 200] [--steps 10000] [--keys 10] [--data DIR]

Builds runport (`cargo build --release`), writes the bench runs with the W&B
SDK (tests/testbed/make_wandb_runs.py --set bench; runs already there are
kept), then, one after the other on the same files:

  runport            runport export DATA -o OUT --json
  reference          tests/testbed/wandb_reference.py export --runs DATA -o OUT
  runport subset     runport on the first --subset runs (a folder of links to
                     the run folders): peak memory must not grow with runs
  runport select     runport export --select name,state: the planner skips the
                     history, config and summary records

Each command is timed by wall clock, and its peak RSS is the one the kernel
reports for that child alone (os.wait4). The .wandb files are read once
beforehand so every command starts with them in the page cache. Prints a table
(seconds, MB/s of .wandb input, peak RSS, CPU seconds) and the ratios; exits 1
when a runport export reports failed runs or any command fails.

Run it with the test-bed venv, whose wandb and pyarrow the generator and the
reference need (see tests/testbed/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    """Runs argv, returning its wall time and its own peak RSS and CPU time (os.wait4)."""
    log(f"[{name}] {' '.join(argv)}")
    m = run_child(Measured(name), argv, logs, ROOT)
    log(f"[{name}] {m.seconds:.2f} s, peak RSS {m.rss_mib:.0f} MiB, exit {m.status}")
    if m.status != 0:
        log(m.stderr[-4000:])
    return m


def run_folders(wandb_dir: Path) -> list[Path]:
    """Run folders (`run-*`, `offline-run-*`) holding a .wandb file, by name."""
    return sorted(p for p in wandb_dir.iterdir()
                  if (p.name.startswith("run-") or p.name.startswith("offline-run-"))
                  and p.is_dir() and any(p.glob("*.wandb")))


def wandb_bytes(folders: list[Path]) -> int:
    return sum(f.stat().st_size for d in folders for f in d.glob("*.wandb"))


def warm_cache(folders: list[Path]) -> None:
    """Reads every .wandb file once so that no command pays for cold reads."""
    for d in folders:
        for f in d.glob("*.wandb"):
            with open(f, "rb") as fh:
                while fh.read(1 << 20):
                    pass


def make_subset(folders: list[Path], n: int, where: Path) -> Path:
    """A wandb/ folder of links to the first n run folders."""
    if where.exists():
        shutil.rmtree(where)
    w = where / "wandb"
    w.mkdir(parents=True)
    for d in folders[:n]:
        (w / d.name).symlink_to(d.resolve(), target_is_directory=True)
    return w


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="bench runs to generate (200)")
    ap.add_argument("--steps", type=int, default=10000, help="history steps per run (10000)")
    ap.add_argument("--keys", type=int, default=10, help="float metrics per step (10)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                    help="processes writing runs (default: CPUs)")
    ap.add_argument("--data", type=Path,
                    help="where the runs are (DATA/wandb/...); generated there when missing "
                         "(default: target/bench-data/r<runs>-s<steps>-k<keys>)")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "bench-compare",
                    help="exports and logs (default: target/bench-compare)")
    ap.add_argument("--subset", type=int, default=50, help="runs in the subset export (50)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each runport command N times and keep the fastest (1)")
    ap.add_argument("--python", type=Path,
                    help="python for the generator and the reference "
                         "(default: target/testbed-venv/bin/python if present, else this python)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/runport as it is")
    ap.add_argument("--no-generate", action="store_true", help="use the runs already in DATA")
    ap.add_argument("--skip-reference", action="store_true", help="time runport only")
    ap.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = ap.parse_args(argv)

    python = str(args.python or (VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)))
    data = (args.data or ROOT / "target" / "bench-data" /
            f"r{args.runs}-s{args.steps}-k{args.keys}").resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"

    if not build_runport(ROOT, RUNPORT, args.no_build, log):
        return 2

    if not args.no_generate:
        log(f"writing bench runs into {data} (runs already there are kept)")
        t0 = time.perf_counter()
        subprocess.run([python, str(TESTBED / "make_wandb_runs.py"), "--set", "bench",
                        "--runs", str(args.runs), "--steps", str(args.steps),
                        "--keys", str(args.keys), "--jobs", str(args.jobs), "--out", str(data)],
                       cwd=ROOT, check=True)
        log(f"generation took {time.perf_counter() - t0:.1f} s")

    source = data / "wandb"
    if not source.is_dir():
        log(f"no runs under {source}")
        return 2
    folders = run_folders(source)
    n_runs = len(folders)
    total_bytes = wandb_bytes(folders)
    log(f"{n_runs} runs, {total_bytes / 1e6:.1f} MB of .wandb files; warming the page cache")
    warm_cache(folders)

    n_sub = min(args.subset, n_runs)
    sub_bytes = wandb_bytes(folders[:n_sub])
    subset_src = make_subset(folders, n_sub, out / f"subset-{n_sub}")
    results: list[tuple[Measured, int, int]] = []  # (measurement, runs, input bytes)

    def runport(name, src, dest, *extra):
        # The fastest of --repeat runs; the peak RSS is the largest of them.
        runs = [measure(name, [str(RUNPORT), "export", str(src), "-o", str(fresh(dest)), "--json", *extra],
                        logs) for _ in range(max(1, args.repeat))]
        m = min(runs, key=lambda r: r.seconds)
        m.maxrss_kib = max(r.maxrss_kib for r in runs)
        if any(r.status != 0 for r in runs):
            m = next(r for r in runs if r.status != 0)
        results.append((m, n_sub if "subset" in name else n_runs,
                        sub_bytes if "subset" in name else total_bytes))
        return m

    full = runport("runport", source, out / "runport")
    ref = None
    if not args.skip_reference:
        ref = measure("reference", [python, str(TESTBED / "wandb_reference.py"), "export",
                                    "--runs", str(source), "-o", str(fresh(out / "reference"))], logs)
        results.append((ref, n_runs, total_bytes))
    sub = runport("runport subset", subset_src, out / "runport-subset")
    sel = runport("runport select", source, out / "runport-select", "--select", "name,state")

    # ------------------------------------------------------------------ table
    def hist_rows(m: Measured):
        s = m.last_json()
        if s:
            return s.get("rows", {}).get("history")
        # The reference prints "runs: N, history rows: N, ...".
        found = re.search(r"history rows: (\d+)", m.stdout)
        return int(found.group(1)) if found else None

    def decoded(m: Measured):
        s = m.last_json()
        if not s:
            return None
        r = s.get("records", {})
        return sum(v for k, v in r.items() if k.startswith("decoded_"))

    header = f"{'command':<16} {'runs':>5} {'input MB':>9} {'seconds':>8} {'MB/s':>8} " \
             f"{'peak RSS MiB':>13} {'CPU s':>7} {'history rows':>13} {'decoded':>10}"
    print()
    print(header)
    print("-" * len(header))
    for m, runs, nbytes in results:
        h, d = hist_rows(m), decoded(m)
        print(f"{m.name:<16} {runs:>5} {nbytes / 1e6:>9.1f} {m.seconds:>8.2f} "
              f"{nbytes / 1e6 / m.seconds:>8.1f} {m.rss_mib:>13.1f} {m.cpu_s:>7.2f} "
              f"{'' if h is None else h:>13} {'' if d is None else d:>10}")
    print()
    ratios = {}
    if ref is not None and ref.status == 0 and full.status == 0:
        ratios["reference/runport seconds"] = ref.seconds / full.seconds
        ratios["reference/runport peak RSS"] = ref.rss_mib / full.rss_mib
        ratios["reference/runport CPU seconds"] = ref.cpu_s / max(full.cpu_s, 1e-9)
    if sub.status == 0 and full.status == 0:
        ratios[f"runport peak RSS, {n_runs} runs / {n_sub} runs"] = full.rss_mib / sub.rss_mib
    if sel.status == 0 and full.status == 0:
        ratios["runport seconds, full / --select name,state"] = full.seconds / sel.seconds
    for k, v in ratios.items():
        print(f"{k:<48} {v:8.2f}")

    # ----------------------------------------------------------- exit status
    status = 0
    for m, _, _ in results:
        if m.status != 0:
            log(f"{m.name} exited with {m.status}; see {logs}")
            status = 1
        if m.name.startswith("runport"):
            s = m.last_json()
            if s is None:
                log(f"{m.name}: no JSON summary on stdout")
                status = 1
            elif s.get("failures"):
                log(f"{m.name}: {len(s['failures'])} runs failed: {s['failures'][:3]}")
                status = 1
            elif s.get("runs") != (n_sub if "subset" in m.name else n_runs):
                log(f"{m.name}: exported {s.get('runs')} runs, expected "
                    f"{n_sub if 'subset' in m.name else n_runs}")
                status = 1

    if args.json_out:
        args.json_out.write_text(json.dumps({
            "runs": n_runs, "steps": args.steps, "keys": args.keys, "input_bytes": total_bytes,
            "commands": [{"name": m.name, "runs": r, "input_bytes": b, "seconds": m.seconds,
                          "peak_rss_mib": m.rss_mib, "cpu_seconds": m.cpu_s, "exit": m.status,
                          "summary": m.last_json() if m.name.startswith("runport") else None}
                         for m, r, b in results],
            "ratios": ratios,
        }, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
