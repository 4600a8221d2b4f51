#!/usr/bin/env python3
"""Runs of any size in bounded memory: one very large run per source, and a
set of small runs of the same source for the throughput per history row.

    target/testbed-venv/bin/python benches/large_runs.py \\
        [--only files,api,mlflow] [--wandb-steps 1000000] [--api-steps 10000000] \\
        [--mlflow-points 5000000] [--keys 20] [--memory-limit 256MiB] [--no-build]

Builds runport (`cargo build --release`), makes the data once (cached under
--data, default target/bench-data/large; later invocations start measuring at
once), then for each source exports, one after the other:

  files  large  one run of --wandb-steps steps x --keys float metrics, written
                by the W&B SDK in offline mode (make_wandb_runs.py --set large);
                1.6 GB of .wandb for 1,000,000 x 20, about 20 minutes to write
         small  --small-runs runs of 10,000 steps x 10 keys, same writer
  api    large  one synthetic run of --api-steps steps x --keys keys on the
                W&B API test server (wandb_server.py --synthetic 1:STEPS:KEYS),
                its Parquet history in files of --part-rows rows (the server's
                default 50,000: 200 files for 10,000,000 steps)
         small  --small-runs * 10 synthetic runs of 10,000 steps x 10 keys
  mlflow large  one run with one metric of --mlflow-points points, logged by
                the MLflow client into a sqlite:/// store (mlflow_large_run.py;
                5,000,000 points take about 35 minutes to log)
         small  100 runs x 5 metrics x 1,000 points, same writer

Each export runs as a child: wall time, user and system CPU seconds and peak
RSS from os.wait4 (a small set three times, the median kept: it takes about a
second, and one measure of it is noisy); history rows and spill_bytes from runport's --json line.
The table gives rows per second and the ratio small/large of throughput per
history row (1.0 = a large run exports as fast per row as small ones), and
whether peak RSS stayed under 300 MiB. Exits 1 when an export fails or
reports failed runs.
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
MIB = 1024 * 1024
RSS_TARGET_MIB = 300

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measured, build_runport, run_child, start_background  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def warm(folder: Path, pattern: str) -> None:
    """Reads the files into the page cache: every input is measured warm."""
    for f in folder.rglob(pattern):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def wandb_set(python: str, data: Path, runs: int, steps: int, keys: int, jobs: int) -> Path:
    """A W&B SDK-written set (kept when complete); returns its wandb/ folder.
    One run is the `large` set (one process), more the `bench` set."""
    done = data / "complete"
    if not done.exists():
        log(f"writing {runs} run(s) of {steps} steps x {keys} keys with the W&B SDK into {data}")
        t0 = time.perf_counter()
        shutil.rmtree(data, ignore_errors=True)
        which = ["--set", "large"] if runs == 1 else ["--set", "bench", "--runs", str(runs), "--jobs", str(jobs)]
        subprocess.run([python, str(TESTBED / "make_wandb_runs.py"), *which, "--steps", str(steps), "--keys",
                        str(keys), "--out", str(data)], check=True)
        done.write_text(f"{time.perf_counter() - t0:.1f} s\n")
        log(f"written in {done.read_text().strip()}")
    return data / "wandb"


def mlflow_set(python: str, data: Path, runs: int, metrics: int, steps: int, jobs: int) -> str:
    """An MLflow sqlite store logged by the MLflow client; returns its sqlite:/// URI.
    One run of one metric is mlflow_large_run.py, more the `bench` set."""
    uri = f"sqlite:///{data / 'mlflow.db'}"
    done = data / "complete"
    if not done.exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        log(f"logging {runs} run(s) x {metrics} metric(s) x {steps} points with the MLflow client into {uri}")
        t0 = time.perf_counter()
        if runs == 1 and metrics == 1:
            cmd = [python, str(TESTBED / "mlflow_large_run.py"), "--tracking-uri", uri, "--points", str(steps),
                   "--jobs", str(jobs)]
        else:
            cmd = [python, str(TESTBED / "mlflow_testbed.py"), "populate", "--tracking-uri", uri, "--set", "bench",
                   "--runs", str(runs), "--metrics", str(metrics), "--steps", str(steps), "--jobs", str(jobs)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        done.write_text(f"{time.perf_counter() - t0:.1f} s\n")
        log(f"logged in {done.read_text().strip()}")
    return uri


def export(name: str, source: str, out_root: Path, logs: Path, memory_limit: str, extra: list[str],
           env: dict | None = None) -> Measured:
    out = out_root / name.replace(" ", "-")
    if out.exists():
        shutil.rmtree(out)
    argv = [str(RUNPORT), "export", source, "-o", str(out), "--json", "--memory-limit", memory_limit, *extra]
    log(f"{name}: {' '.join(argv)}")
    m = run_child(Measured(name), argv, logs, ROOT, env=env)
    summary = m.last_json()
    if m.status != 0 or summary is None or summary.get("failures"):
        log(f"{name} failed (exit {m.status}); see {logs}")
        log(m.stderr[-3000:])
        raise SystemExit(1)
    m.summary = summary
    m.out_bytes = du(out)
    shutil.rmtree(out)
    return m


def export_median(name: str, source: str, out_root: Path, logs: Path, memory_limit: str, extra: list[str],
                  env: dict | None = None, repeats: int = 3) -> Measured:
    """A short export (a small set) measured `repeats` times: the one of median wall time."""
    runs = sorted((export(name, source, out_root, logs, memory_limit, extra, env) for _ in range(repeats)),
                  key=lambda m: m.seconds)
    return runs[len(runs) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="files,api,mlflow")
    ap.add_argument("--wandb-steps", type=int, default=1_000_000)
    ap.add_argument("--api-steps", type=int, default=10_000_000)
    ap.add_argument("--mlflow-points", type=int, default=5_000_000)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--small-runs", type=int, default=20, help="W&B files small set: runs of 10,000 x 10")
    ap.add_argument("--part-rows", type=int, default=50_000,
                    help="API server: rows per Parquet file (0: one file a run)")
    ap.add_argument("--memory-limit", default="256MiB")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="generator processes")
    ap.add_argument("--data", default=str(ROOT / "target" / "bench-data" / "large"))
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    if not build_runport(ROOT, RUNPORT, args.no_build, log):
        return 1
    data = Path(args.data)
    work = data / "work"
    logs = work / "logs"
    shutil.rmtree(work, ignore_errors=True)
    logs.mkdir(parents=True)
    only = set(args.only.split(","))
    pairs: list[tuple[str, Measured, Measured]] = []

    if "files" in only:
        large = wandb_set(python, data / f"files-1x{args.wandb_steps}x{args.keys}", 1, args.wandb_steps,
                          args.keys, 1)
        small = wandb_set(python, data / f"files-{args.small_runs}x10000x10", args.small_runs, 10_000, 10,
                          args.jobs)
        for d in (large, small):
            warm(d, "*.wandb")
        pairs.append(("wandb files",
                      export("files large", str(large), work, logs, args.memory_limit, []),
                      export_median("files small", str(small), work, logs, args.memory_limit, [])))

    if "api" in only:
        key = "bench-" + os.urandom(8).hex()
        env = dict(os.environ, WANDB_API_KEY=key)
        measured = []
        for name, spec in (("api large", f"1:{args.api_steps}:{args.keys}:7"),
                           ("api small", f"{args.small_runs * 10}:10000:10:7")):
            cache = data / f"api-{spec.replace(':', 'x')}"
            cache.mkdir(parents=True, exist_ok=True)
            cmd = [python, str(TESTBED / "wandb_server.py"), "--synthetic", spec, "--port", "0", "--files-port", "0",
                   "--api-key", key, "--cache", str(cache), "--part-rows", str(args.part_rows), "--exit-with-stdin"]
            proc, info = start_background(cmd, ROOT, logs / f"{name.replace(' ', '-')}-server.stderr",
                                          "the W&B API test server")
            try:
                source = f"wandb://{info['entity']}/{info['project']}"
                extra = ["--base-url", info["base_url"]]
                # An unmeasured pass has the server write its Parquet files.
                export(f"{name} warm-up", source, work, logs, args.memory_limit, extra + ["--select", "history.*"],
                       env)
                measure = export if name == "api large" else export_median
                measured.append(measure(name, source, work, logs, args.memory_limit, extra, env))
            finally:
                proc.stdin.close()
                proc.wait(timeout=120)
        pairs.append(("wandb api", measured[0], measured[1]))

    if "mlflow" in only:
        large = mlflow_set(python, data / f"mlflow-1x1x{args.mlflow_points}", 1, 1, args.mlflow_points, args.jobs)
        small = mlflow_set(python, data / "mlflow-100x5x1000", 100, 5, 1000, args.jobs)
        for d in (f"mlflow-1x1x{args.mlflow_points}", "mlflow-100x5x1000"):
            warm(data / d, "mlflow.db*")
        pairs.append(("mlflow sqlite",
                      export("mlflow large", large, work, logs, args.memory_limit, []),
                      export_median("mlflow small", small, work, logs, args.memory_limit, [])))

    print(f"memory limit {args.memory_limit}; peak RSS target {RSS_TARGET_MIB} MiB")
    head = (f"{'export':<14} {'rows':>12} {'wall s':>8} {'user s':>7} {'sys s':>6} {'Mrows/s':>8} "
            f"{'RSS MiB':>8} {'spill MB':>9} {'out MB':>7}")
    print(head)
    worst_ratio, worst_rss = 0.0, 0.0
    for _, large, small in pairs:
        for m in (large, small):
            rows = m.summary["rows"]["history"]
            print(f"{m.name:<14} {rows:>12,} {m.seconds:>8.2f} {m.user_s:>7.2f} {m.sys_s:>6.2f} "
                  f"{rows / m.seconds / 1e6:>8.2f} {m.rss_mib:>8.0f} {m.summary.get('spill_bytes', 0) / 1e6:>9.0f} "
                  f"{m.out_bytes / 1e6:>7.0f}")
    print()
    for label, large, small in pairs:
        per_row = lambda m: m.seconds / max(1, m.summary["rows"]["history"])  # noqa: E731
        cpu_per_row = lambda m: (m.user_s + m.sys_s) / max(1, m.summary["rows"]["history"])  # noqa: E731
        ratio = per_row(large) / per_row(small)
        worst_ratio, worst_rss = max(worst_ratio, ratio), max(worst_rss, large.rss_mib)
        print(f"{label}: seconds per history row, large / small = {ratio:.2f} (target <= 1.20), "
              f"CPU seconds per row {cpu_per_row(large) / cpu_per_row(small):.2f}; "
              f"large run peak RSS {large.rss_mib:.0f} MiB ({'under' if large.rss_mib < RSS_TARGET_MIB else 'OVER'} "
              f"{RSS_TARGET_MIB}); spill peak {large.summary.get('spill_bytes', 0) / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
