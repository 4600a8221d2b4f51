#!/usr/bin/env python3
"""runport on one W&B run with a large stream of system metrics, against
the pure-Python reference reader.

    target/testbed-venv/bin/python benches/system_metrics.py \\
        [--seconds 120] [--gauges 1000] [--runport PATH [--runport PATH2]] [--data DIR] [--no-build]

Builds runport (`cargo build --release`), makes the data once (cached under
--data, default target/bench-data/system-s<seconds>-g<gauges>; kept once
DATA/scenarios.json is there): one run, `sys-large`, written by the W&B SDK
in offline mode (tests/testbed/make_wandb_runs.py --set system-large).
wandb-core samples the system metrics every 0.1 s (the least wandb.Settings
accepts) for --seconds while the writer process serves --gauges OpenMetrics
gauges whose values change at every scrape and logs one `train/loss` every
0.1 s. The default is about 1,200 stats records of 1,014 values each (1.2
million (sample, key) values, about 55 MB of .wandb), written in a little
over two minutes.

Then reads the .wandb file once (every command starts with it in the page
cache) and runs, one after the other, each as a child:

  runport system   runport export DATA/wandb -o OUT --select 'run_id,system.*' --json
  runport run_id   runport export DATA/wandb -o OUT --select run_id --json: the same
                   run without its system metrics, the memory baseline
  reference        tests/testbed/wandb_reference.py export --runs DATA/wandb -o OUT
                   --history none --system --select 'run_id,system.*'

The two runport commands run once per --runport (default
target/release/runport; give it more than once to compare builds, rows are
labelled by the path). Wall time, CPU seconds and peak RSS come from os.wait4
of each child; rows are system rows (runport's --json line, the reference's
Parquet file). Prints a Markdown table, the ratio reference/runport of wall
time and the peak RSS the system metrics take (`system` minus `run_id`).
Exits 1 when a command fails or when runport's system table
(OUT/system/*.parquet) does not have as many rows as the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTBED = ROOT / "tests" / "testbed"
VENV_PYTHON = ROOT / "target" / "testbed-venv" / "bin" / "python"
RUNPORT = ROOT / "target" / "release" / "runport"
SELECT = "run_id,system.*"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measured, build_runport, load_lines, machine_busy_s, run_child  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shown_path(path: Path) -> str:
    """A path as given (links not followed), relative to the repository when inside it."""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def make_data(python: str, data: Path, seconds: float, gauges: int) -> dict:
    """The `system-large` run (kept once DATA/scenarios.json, which the
    generator writes last, is there); returns its scenario."""
    marker = data / "scenarios.json"
    if not marker.exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        log(f"writing one run sampling system metrics for {seconds:g} s with {gauges} OpenMetrics gauges "
            f"with the W&B SDK into {data}")
        t0 = time.perf_counter()
        subprocess.run([python, str(TESTBED / "make_wandb_runs.py"), "--set", "system-large",
                        "--seconds", str(seconds), "--gauges", str(gauges), "--out", str(data)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        log(f"written in {time.perf_counter() - t0:.1f} s")
    doc = json.loads(marker.read_text())
    sc = doc["scenarios"]["large"]
    sc["generator"] = doc["generator"]
    return sc


def wandb_files(source: Path) -> list[Path]:
    return sorted(p for p in source.glob("*/*.wandb") if not p.parent.is_symlink())


def warm(files: list[Path]) -> None:
    """Reads the files into the page cache: every command is measured warm.
    In small reads: this process's peak RSS is the floor of every child's."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass


def own_peak_rss_mib() -> float:
    """This process's peak RSS. A child started by vfork keeps the parent's
    high-water mark through exec, so os.wait4 never reports a child's peak
    RSS below this."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parquet_rows(folder: Path) -> int | None:
    """Rows in folder/*.parquet (None without any file)."""
    import pyarrow.parquet as pq

    parts = sorted(folder.glob("*.parquet"))
    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts) if parts else None


def measure(name: str, argv: list[str], logs: Path) -> Measured:
    """Runs argv as a child; also the CPU time the rest of the machine used meanwhile."""
    log(f"[{name}] {' '.join(argv)}")
    busy = []

    def started(_proc):
        busy.append(machine_busy_s())
        return lambda: busy.append(machine_busy_s())

    m = run_child(Measured(name), argv, logs, ROOT, started=started)
    m.other_cpu_s = max(0.0, busy[1] - busy[0] - m.cpu_s)
    log(f"[{name}] {m.seconds:.2f} s, CPU {m.cpu_s:.2f} s, peak RSS {m.rss_mib:.0f} MiB, exit {m.status}")
    if m.status != 0:
        log(m.stderr[-3000:])
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120, help="seconds the run samples (120)")
    ap.add_argument("--gauges", type=int, default=1000, help="OpenMetrics gauges in every sample (1000)")
    ap.add_argument("--runport", type=Path, action="append",
                    help="runport binary, repeatable to compare builds (default: target/release/runport)")
    ap.add_argument("--data", type=Path,
                    help="where the run is (DATA/wandb/...); written there when DATA/scenarios.json is missing "
                         "(default: target/bench-data/system-s<seconds>-g<gauges>)")
    ap.add_argument("--python", type=Path,
                    help="python for the generator and the reference "
                         "(default: target/testbed-venv/bin/python if present, else this python)")
    ap.add_argument("--no-build", action="store_true", help="use the runport binaries as they are")
    args = ap.parse_args(argv)

    python = str(args.python or (VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)))
    binaries = args.runport or [RUNPORT]
    # One `cargo build` at most: it makes target/release/runport, the others are taken as they are.
    if not all(build_runport(ROOT, b, args.no_build or i > 0, log) for i, b in enumerate(binaries)):
        return 2
    data = (args.data or ROOT / "target" / "bench-data" / f"system-s{args.seconds:g}-g{args.gauges}").resolve()
    work = data / "work"
    logs = work / "logs"
    shutil.rmtree(work, ignore_errors=True)
    logs.mkdir(parents=True)

    sc = make_data(python, data, args.seconds, args.gauges)
    seen = sc["observed"]
    source = data / "wandb"
    files = wandb_files(source)
    nbytes = sum(f.stat().st_size for f in files)
    gen_s = sum(sc["generator"]["seconds"].values())
    log(f"{sc['run_id']}: {seen['samples']:,} stats records, {seen['rows']:,} values ({seen['key_count']:,} keys, "
        f"median interval {seen['median_interval_s']} s), {sc['history_rows']:,} history rows, "
        f"{nbytes / 1e6:.1f} MB of .wandb; written in {gen_s:.1f} s; warming the page cache")
    warm(files)

    load_start = os.getloadavg()
    floor_mib = own_peak_rss_mib()
    # (measurement, binary label, system rows it reports, the system folder it wrote)
    results: list[tuple[Measured, str, int | None, Path]] = []
    for i, binary in enumerate(binaries, 1):
        for what, select in (("system", SELECT), ("run_id", "run_id")):
            out = work / f"runport{i}-{what}"
            m = measure(f"runport{i} {what}", [os.path.abspath(binary), "export", str(source), "-o", str(out),
                                               "--select", select, "--json"], logs)
            summary = m.last_json() or {}
            m.command = f"runport `--select '{select}'`"
            rows = (summary.get("rows") or {}).get("system", 0) if summary else None
            results.append((m, shown_path(binary), rows, out / "system"))
            if m.status == 0 and (not summary or summary.get("failures")):
                log(f"[{m.name}] {'no JSON summary on stdout' if not summary else summary['failures'][:3]}")
                m.status = 1
    out = work / "reference"
    ref = measure("reference", [python, str(TESTBED / "wandb_reference.py"), "export", "--runs", str(source),
                                "-o", str(out), "--history", "none", "--system", "--select", SELECT], logs)
    ref.command = "reference `export --system`"
    results.append((ref, shown_path(TESTBED / "wandb_reference.py"), parquet_rows(out / "system"), out / "system"))
    load_end = os.getloadavg()

    # ------------------------------------------------------------------ checks
    status = 0
    want = results[-1][2]
    for m, _, rows, folder in results:
        if m.status != 0:
            log(f"{m.name} exited with {m.status}; see {logs}")
            status = 1
            continue
        if m is ref or not m.name.endswith("system"):
            continue
        written = parquet_rows(folder)
        if ref.status == 0 and (written != want or rows != want):
            log(f"{m.name}: {written} rows in {folder}/*.parquet ({rows} in its --json line), "
                f"the reference wrote {want}")
            status = 1

    # ------------------------------------------------------------------- table
    print(f"one run: {seen['samples']:,} stats records, {seen['key_count']:,} keys, {seen['rows']:,} values, "
          f"{nbytes / 1e6:.1f} MB of .wandb (written in {gen_s:.1f} s); --select '{SELECT}'")
    print()
    print("| command | binary | wall s | CPU s | peak RSS MiB | system rows |")
    print("|---|---|---:|---:|---:|---:|")
    for m, binary, rows, _ in results:
        print(f"| {m.command} | `{binary}` | {m.seconds:.2f} | {m.cpu_s:.2f} | {m.rss_mib:.1f} | "
              f"{'' if rows is None else f'{rows:,}'} |")
    print()
    for i in range(0, len(results) - 1, 2):
        (full, binary, _, _), (base, _, _, _) = results[i], results[i + 1]
        if full.status == 0 and ref.status == 0:
            print(f"`{binary}`: reference/runport wall {ref.seconds / full.seconds:.1f}x, "
                  f"CPU {ref.cpu_s / max(full.cpu_s, 1e-9):.1f}x")
        if full.status == 0 and base.status == 0:
            print(f"`{binary}`: peak RSS of the system metrics ('{SELECT}' minus 'run_id'): "
                  f"{full.rss_mib - base.rss_mib:+.1f} MiB ({full.rss_mib:.1f} - {base.rss_mib:.1f})")
    print(f"peak RSS floor {floor_mib:.1f} MiB: os.wait4 reports no child below this process's own peak")
    for line in load_lines(load_start, load_end, {m.name: m for m, *_ in results}):
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
