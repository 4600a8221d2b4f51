#!/usr/bin/env python3
"""`runport export` of TensorBoard event files against TensorBoard's own reader.

    target/testbed-venv/bin/python benches/tensorboard.py [--runs 200] [--steps 10000] [--tags 10]
        [--small 50] [--ref-runs N] [--skip-runport] [--no-build]

Builds runport (`cargo build --release`, unless --no-build), writes the bench
set once with tensorboardX (tests/testbed/make_tensorboard_runs.py --set
bench: one run of --steps steps x --tags random float tags, one event per
value, copied to run-00000 ...; cached under --data, default
target/bench-data/tensorboard), reads every event file once (into the page
cache, like every input measured here), then measures, each as a child
process (wall, CPU, peak RSS from os.wait4):

  runport           `runport export tensorboard:LOGDIR -o OUT --history long` on the --runs runs
  runport small     the same on a log dir of the first --small runs (50): peak RSS
                    should not grow with the number of runs
  EventAccumulator  tests/testbed/tensorboard_reference.py table: every run through
                    EventAccumulator (everything kept), the rows gathered in a list,
                    then one pandas DataFrame with runport's long columns
  tbparse           tests/testbed/tensorboard_reference.py tbparse: SummaryReader(LOGDIR,
                    pivot=False, extra_columns={"dir_name", "wall_time"}).scalars
                    (not run from this file: its name would hide the tensorboard package)

The log dirs measured are folders of hard links into the cached set, so a
set written once serves every --runs up to its size. Each command's rows
must be runs x steps x tags. With --ref-runs N, the two references read only
the first N runs, and runport is measured on the same N runs too, so that
the ratios (reference wall / runport wall) compare equal work. The Python
readers run at about 50,000 events/s on the 2-core machine (the full
200-run set: about 7 minutes each, and about 7.5 GB of RSS for
EventAccumulator's rows). --skip-runport measures the references alone.
Prints a table and, last, one JSON line with every measurement. Exits 1
when a command fails or a row count is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTBED = ROOT / "tests" / "testbed"
VENV_PYTHON = ROOT / "target" / "testbed-venv" / "bin" / "python"
RUNPORT = ROOT / "target" / "release" / "runport"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measured, build_runport, log, runport_rows_by_run  # noqa: E402
from _measure import measure as measure_in  # noqa: E402


def measure(name: str, argv: list[str], logs: Path) -> Measured:
    return measure_in(name, argv, logs, ROOT)


def linked_logdir(data: Path, dest: Path, runs: int) -> Path:
    """A log dir of the first `runs` runs of the cached set, as hard links
    (the same files, no copy)."""
    shutil.rmtree(dest, ignore_errors=True)
    for i in range(runs):
        src = data / f"run-{i:05d}"
        (dest / src.name).mkdir(parents=True)
        for f in src.iterdir():
            os.link(f, dest / src.name / f.name)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--tags", type=int, default=10)
    ap.add_argument("--small", type=int, default=50, help="runport again on the first N runs (peak RSS)")
    ap.add_argument("--ref-runs", type=int, default=None,
                    help="the references (and runport, for the ratios) on the first N runs only")
    ap.add_argument("--data", default=str(ROOT / "target" / "bench-data" / "tensorboard"))
    ap.add_argument("--skip-runport", action="store_true", help="measure the references alone")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    if not args.skip_runport and not build_runport(ROOT, RUNPORT, args.no_build, log):
        return 1
    ref_runs = min(args.ref_runs or args.runs, args.runs)
    small = min(args.small, args.runs)

    data = Path(args.data) / f"set-{args.steps}x{args.tags}"
    log(f"the bench set: {args.runs} runs of {args.steps} steps x {args.tags} tags in {data}")
    subprocess.run([python, str(TESTBED / "make_tensorboard_runs.py"), "--set", "bench", "--out", str(data),
                    "--runs", str(args.runs), "--steps", str(args.steps), "--tags", str(args.tags)], check=True)
    work = Path(args.data) / "work"
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    logdirs = {args.runs: linked_logdir(data, work / f"logdir-{args.runs}", args.runs)}
    for n in ({ref_runs} if args.skip_runport else {small, ref_runs}) - {args.runs}:
        logdirs[n] = linked_logdir(data, work / f"logdir-{n}", n)
    for f in logdirs[args.runs].rglob("events.out.tfevents.*"):  # into the page cache
        f.read_bytes()
    per_run = args.steps * args.tags

    def runport(n: int) -> Measured:
        out = work / f"export-{n}"
        m = measure(f"runport {n} runs", [str(RUNPORT), "export", f"tensorboard:{logdirs[n]}", "-o", str(out),
                                          "--history", "long", "--json"], logs)
        m.runs, m.rows = n, sum(runport_rows_by_run(out).values())
        shutil.rmtree(out, ignore_errors=True)  # hundreds of MB of Parquet
        return m

    results: list[Measured] = []
    port = port_small = port_ref = None
    if not args.skip_runport:
        port = runport(args.runs)
        results.append(port)
        if small != args.runs:
            port_small = runport(small)
            results.append(port_small)
        port_ref = port if ref_runs == args.runs else (port_small if ref_runs == small else runport(ref_runs))
        if port_ref not in results:
            results.append(port_ref)
    acc = measure(f"EventAccumulator {ref_runs} runs",
                  [python, str(TESTBED / "tensorboard_reference.py"), "table", str(logdirs[ref_runs])], logs)
    acc.runs, acc.rows = ref_runs, acc.summary.get("rows", 0)
    tbp = measure(f"tbparse {ref_runs} runs",
                  [python, str(TESTBED / "tensorboard_reference.py"), "tbparse", str(logdirs[ref_runs])], logs)
    tbp.runs, tbp.rows = ref_runs, tbp.summary.get("rows", 0)
    results += [acc, tbp]

    print(f"{args.runs} runs of {args.steps} steps x {args.tags} tags ({per_run:,} events a run), "
          f"tensorboardX add_scalar")
    if ref_runs != args.runs and port:
        print(f"the references read the first {ref_runs} runs only (--ref-runs); the ratios compare them with "
              f"runport on the same {ref_runs} runs")
    print(f"{'command':<26} {'runs':>5} {'rows':>12} {'wall s':>8} {'cpu s':>8} {'RSS MiB':>8} {'events/s':>11}")
    bad = False
    for m in results:
        print(f"{m.name:<26} {m.runs:>5} {m.rows:>12,} {m.seconds:>8.2f} {m.user_s + m.sys_s:>8.2f} "
              f"{m.rss_mib:>8.0f} {m.rows / m.seconds:>11,.0f}")
        if m.rows != m.runs * per_run:
            log(f"{m.name}: {m.rows:,} rows, expected {m.runs * per_run:,}")
            bad = True
    print()
    if port:
        print(f"runport: {port.seconds:.2f} s wall, peak RSS {port.rss_mib:.0f} MiB on {args.runs} runs"
              + (f", {port_small.rss_mib:.0f} MiB on {small}" if port_small else ""))
        print(f"EventAccumulator / runport wall time: {acc.seconds / port_ref.seconds:.1f} "
              f"({ref_runs} runs each)")
        print(f"tbparse / runport wall time: {tbp.seconds / port_ref.seconds:.1f} ({ref_runs} runs each)")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} ({os.cpu_count()} CPUs)")
    print(json.dumps({
        "runs": args.runs, "steps": args.steps, "tags": args.tags, "ref_runs": ref_runs,
        "measured": [{"name": m.name, "runs": m.runs, "rows": m.rows, "wall_s": round(m.seconds, 3),
                      "cpu_s": round(m.user_s + m.sys_s, 3), "rss_mib": round(m.rss_mib, 1)} for m in results],
        "ratios": ({"event_accumulator_over_runport": round(acc.seconds / port_ref.seconds, 2),
                    "tbparse_over_runport": round(tbp.seconds / port_ref.seconds, 2)} if port else None),
    }))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
