#!/usr/bin/env python3
"""One MLflow run with a long metric history, logged by the official client.

    mlflow_large_run.py --tracking-uri URI --points N [--keys K] [--jobs J] [--info FILE]

URI is where the client logs: `sqlite:///PATH/mlflow.db`, `file:///PATH/mlruns`
(a FileStore) or `http://HOST:PORT` (a tracking server). The run (experiment
`runport-large`, run name `large-<N>x<K>`) holds N points in all, spread over
K metric keys (K = 1: one metric of N points). Keys past the first have the
shapes that a long history can have, in logging order:

  - `loss` (always): one point per step, steps 0, 1, 2, ...
  - `acc`: each step logged twice (two timestamps, two values)
  - `eval/score`: steps logged in reversed blocks of 1,000 (out of order)
  - `lr`: steps 0.. for the first half, then again from 0 (a restarted
    loop: every step logged twice, far apart in the log), a NaN now and then

Points go through `MlflowClient.log_batch`, 100,000 at a call; the client
cuts them into the largest batches the stores take (1,000 metrics). With
`--jobs J`, J processes log a contiguous part of every key each, at once
(about J times faster on a SQL store; a FileStore's lines then interleave).
A final JSON line tells the run id, the points, and the seconds it took.

The benchmark's metric of 5,000,000 points in a sqlite store:

    mlflow_large_run.py --tracking-uri sqlite:////tmp/bench/mlflow.db --points 5000000 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

T0 = 1_700_000_000_000  # ms, as the other MLflow test-bed runs
EXPERIMENT = "runport-large"
KEYS = ["loss", "acc", "eval/score", "lr"]
# Points handed to one log_batch call: the client cuts them into batches of
# 1,000 (the stores' limit); this bounds the client's own memory.
CALL_POINTS = 100_000


def points_of(key: str, n: int):
    """(value, timestamp_ms, step) of key `key` with `n` points, in logging order."""
    for i in range(n):
        ts = T0 + i
        if key == "loss":
            yield 1.0 / (1.0 + i * 1e-3) + math.sin(i * 0.01) * 1e-3, ts, i
        elif key == "acc":
            yield (i % 997) / 997.0, ts, i // 2
        elif key == "eval/score":
            block, at = divmod(i, 1000)
            yield math.cos(i * 0.003), ts, block * 1000 + (999 - at)
        else:  # lr
            half = (n + 1) // 2
            step = i if i < half else i - half
            value = math.nan if i % 50_000 == 49_999 else 0.1 * 0.99999**i
            yield value, ts, step


def log_part(uri: str, run_id: str, keys: list, per_key: list, job: int, jobs: int) -> int:
    """Job `job` of `jobs`: its contiguous part of every key's points."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    if uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    c = MlflowClient(tracking_uri=uri)
    logged = 0
    for key, n in zip(keys, per_key):
        lo, hi = n * job // jobs, n * (job + 1) // jobs
        batch = []
        for i, (value, ts, step) in enumerate(points_of(key, n)):
            if i < lo:
                continue
            if i >= hi:
                break
            batch.append(Metric(key, value, ts, step))
            if len(batch) == CALL_POINTS:
                c.log_batch(run_id, metrics=batch)
                logged += len(batch)
                batch = []
        if batch:
            c.log_batch(run_id, metrics=batch)
            logged += len(batch)
    return logged


def _log_part(a):
    return log_part(*a)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--points", type=int, required=True, help="points in all, over every key")
    p.add_argument("--keys", type=int, default=1, choices=range(1, len(KEYS) + 1))
    p.add_argument("--jobs", type=int, default=1, help="processes logging at once")
    p.add_argument("--info", help="also write the final JSON line to this file")
    args = p.parse_args(argv)
    if args.tracking_uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        Path(args.tracking_uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    c = MlflowClient(tracking_uri=args.tracking_uri)
    t0 = time.time()
    e = c.get_experiment_by_name(EXPERIMENT)
    exp_id = e.experiment_id if e is not None else c.create_experiment(EXPERIMENT)
    keys = KEYS[: args.keys]
    name = f"large-{args.points}x{args.keys}"
    run = c.create_run(exp_id, start_time=T0, tags={"mlflow.user": "testbed"}, run_name=name)
    rid = run.info.run_id
    per_key = [args.points // len(keys) + (1 if k < args.points % len(keys) else 0) for k in range(len(keys))]
    parts = [(args.tracking_uri, rid, keys, per_key, j, args.jobs) for j in range(args.jobs)]
    if args.jobs == 1:
        logged = log_part(*parts[0])
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            logged = sum(pool.map(_log_part, parts))
    if logged != args.points:
        raise SystemExit(f"logged {logged} points, expected {args.points}")
    # The client may print a run's address on stdout: keep stdout for the JSON line.
    saved, sys.stdout = sys.stdout, sys.stderr
    try:
        c.set_terminated(rid, status="FINISHED", end_time=T0 + max(per_key))
    finally:
        sys.stdout = saved
    info = {
        "tracking_uri": args.tracking_uri,
        "experiment": EXPERIMENT,
        "run_id": rid,
        "run_name": name,
        "points": args.points,
        "keys": dict(zip(keys, per_key)),
        "jobs": args.jobs,
        "mlflow": mlflow.__version__,
        "seconds": round(time.time() - t0, 2),
    }
    line = json.dumps(info)
    if args.info:
        Path(args.info).write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
