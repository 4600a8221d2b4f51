#!/usr/bin/env python3
"""MLflow test bed for runport.

Subcommands (run from the repository root with the test-bed venv):

  serve      start a real `mlflow server` on a sqlite file, print one JSON line,
             stop it when stdin closes or on SIGTERM/SIGINT
  populate   log the `standard` or `bench` set through the official client
  filestore  log the same `standard` set into a FileStore `DIR/mlruns`
  reference  the official client's view of a store, written as runport's Parquet
  check      compare runport's export with the reference computed live
  scenarios  check the reference against the expectations of scenarios.json
  selftest   reference -> check must pass; corrupted copies must fail

See tests/testbed/README.md ("MLflow test bed").
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Keep the client and the server offline and quiet (set before mlflow is imported).
OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "PYTHONWARNINGS": "ignore",
}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

T0 = 1_700_000_000_000  # fixed epoch in ms (2023-11-14T22:13:20Z) for start times and timestamps
HOUR = 3_600_000
DBL_MAX = 1.7976931348623157e308
STD_EXPERIMENTS = {
    "main": "runport-std",
    "unicode": "runport-std-é 実験",
    "deleted": "runport-std-deleted",
    "dense": "runport-std-dense",
}
BENCH_EXPERIMENT = "runport-bench"
USER = "testbed"
INFO_COLUMNS = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]
EXTRA_COLUMNS = ["run_name", "user_id", "lifecycle_stage", "experiment_name"]
HISTORY_COLUMNS = ["run_id", "step", "timestamp", "runtime_s", "key", "value", "value_json"]
NAME_KEY = "\x1f"  # joins experiment name and run name in --match-by-name mode


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def python_exe():
    return sys.executable


# ----------------------------------------------------------------------------------------------
# serve


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url, proc, timeout):
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.25)
    return False


def stop_group(proc, grace=10.0):
    """SIGTERM the server's process group (mlflow -> uvicorn -> workers), then SIGKILL."""
    if proc.poll() is None or _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and _group_alive(proc.pid):
            with contextlib.suppress(Exception):
                proc.wait(timeout=0.2)
            time.sleep(0.1)
        if _group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cmd_serve(args):
    db = Path(args.db).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    artifacts = Path(args.artifacts).resolve() if args.artifacts else db.parent / (db.stem + "-artifacts")
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        python_exe(), "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{db}",
        "--host", "127.0.0.1",
        "--workers", str(args.workers),
        "--artifacts-destination", str(artifacts),
    ]
    out = {"db": str(db)}
    if args.basic_auth:
        password = os.environ.get("MLFLOW_TESTBED_ADMIN_PASSWORD") or ("pw-" + secrets.token_hex(12))
        auth_db = db.parent / (db.stem + "-auth.db")
        ini = db.parent / (db.stem + "-auth.ini")
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{auth_db}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n"
        )
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env["MLFLOW_AUTH_ADMIN_USERNAME"] = "admin"
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
        # the basic-auth app refuses to start without a static CSRF secret shared by the workers
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(16))
        cmd += ["--app-name", "basic-auth"]
        out.update(username="admin", password=password)
    logf = open(args.log, "ab") if args.log else subprocess.DEVNULL
    t0 = time.time()
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # A port found free may be taken by another process before the server
    # binds it; the server then exits, and (without --port) another port is
    # tried, three in all.
    proc = None
    tries = 1 if args.port else 3
    try:
        for attempt in range(tries):
            port = args.port or free_port()
            out["tracking_uri"] = f"http://127.0.0.1:{port}"
            proc = subprocess.Popen(
                cmd + ["--port", str(port)], env=env, cwd=str(db.parent), stdin=subprocess.DEVNULL,
                stdout=logf, stderr=logf, start_new_session=True,
            )
            if wait_health(out["tracking_uri"], proc, args.timeout):
                break
            code = proc.poll()
            stop_group(proc)
            if code is None or stopping.is_set():
                log(f"mlflow server did not answer /health on port {port} within {args.timeout} s")
                return 1
            log(f"mlflow server exited with {code} before answering on port {port}"
                + ("; trying another port" if attempt + 1 < tries else ""))
        else:
            return 1
        out["pid"] = proc.pid
        out["startup_s"] = round(time.time() - t0, 2)
        print(json.dumps(out, ensure_ascii=False), flush=True)

        def stdin_watch():
            try:
                while sys.stdin.buffer.read(65536):
                    pass
            except Exception:
                pass
            stopping.set()

        threading.Thread(target=stdin_watch, daemon=True).start()
        while not stopping.is_set():
            if proc.poll() is not None:
                log(f"mlflow server exited with {proc.returncode}")
                return 1
            stopping.wait(0.5)
        return 0
    finally:
        if proc is not None:
            stop_group(proc)


# ----------------------------------------------------------------------------------------------
# logging helpers (official client)


@contextlib.contextmanager
def quiet_stdout():
    """The client prints 'View run ... at: URL' to stdout on set_terminated; keep stdout clean."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def client_for(uri):
    import mlflow
    from mlflow import MlflowClient

    if uri.startswith("file:"):
        # The file store is in maintenance mode: allowed explicitly.
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def chunks(seq, n):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def log_all(c, run_id, metrics=(), params=(), tags=()):
    """log_batch within the limits: 1000 metrics, 100 params+tags, 1000 entities per request."""
    from mlflow.entities import Metric, Param, RunTag

    ms = [m if isinstance(m, Metric) else Metric(*m) for m in metrics]
    ps = [Param(k, v) for k, v in params]
    ts = [RunTag(k, v) for k, v in tags]
    for part in chunks(ps, 100):
        c.log_batch(run_id, params=part)
    for part in chunks(ts, 100):
        c.log_batch(run_id, tags=part)
    for part in chunks(ms, 1000):
        c.log_batch(run_id, metrics=part)


def get_or_create_experiment(c, name):
    e = c.get_experiment_by_name(name)
    if e is not None:
        if e.lifecycle_stage == "deleted":
            c.restore_experiment(e.experiment_id)
        return e.experiment_id
    return c.create_experiment(name)


# ----------------------------------------------------------------------------------------------
# the standard set


def standard_set(c):
    """Log the standard scenarios with client `c`; returns {scenario: description}."""
    from mlflow.entities import Metric

    exps = {}
    for k, name in STD_EXPERIMENTS.items():
        if c.get_experiment_by_name(name) is not None:
            raise SystemExit(f"experiment {name!r} already exists in this store: use a fresh store")
        exps[k] = c.create_experiment(name, tags={"purpose": "runport test bed"})
    scenarios = {}
    index = [0]

    def run(scenario, purpose, exp="main", name=None, user=USER, tags=None, status="FINISHED",
            metrics=(), params=(), extra_tags=(), duration=600_000, expect=None, lifecycle="active"):
        i = index[0]
        index[0] += 1
        start = T0 + i * HOUR
        name = name or f"std-{scenario}"
        t = {"mlflow.user": user} if user else {}
        t.update(tags or {})
        r = c.create_run(exps[exp], start_time=start, tags=t, run_name=name)
        rid = r.info.run_id
        log_all(c, rid, metrics, params, extra_tags)
        end = None
        if status in ("FINISHED", "FAILED", "KILLED"):
            end = start + duration
            with quiet_stdout():
                c.set_terminated(rid, status=status, end_time=end)
        elif status != "RUNNING":
            c.update_run(rid, status=status)
        keys = {}
        for m in metrics:
            k = m.key if isinstance(m, Metric) else m[0]
            keys[k] = keys.get(k, 0) + 1
        scenarios[scenario] = {
            "experiment": STD_EXPERIMENTS[exp], "run_name": name, "run_id": rid,
            "experiment_id": exps[exp], "purpose": purpose, "status": status,
            "lifecycle_stage": lifecycle, "start_time_ms": start, "end_time_ms": end,
            "user_id": user or "unknown", "logged_metric_rows": len(metrics),
            "metric_keys": len(keys), "params": len(params),
            "expect": expect or {},
        }
        return rid

    def series(key, n, f, ts0=None, dt=1000):
        base = (T0 + index[0] * HOUR) if ts0 is None else ts0
        return [(key, float(f(s)), base + s * dt, s) for s in range(n)]

    run("basic", "a plain finished run: 3 params, 2 metrics x 10 steps, a tag",
        params=[("lr", "0.001"), ("optimizer", "adam"), ("epochs", "10")],
        extra_tags=[("team", "runport")],
        metrics=series("loss", 10, lambda s: 1.0 / (s + 1)) + series("acc", 10, lambda s: s / 10),
        expect={"params.lr": "0.001", "metrics.loss": 0.1, "metrics.acc": 0.9, "tags.team": "runport",
                "status": "FINISHED", "run_name": "std-basic", "user_id": USER,
                "tags.mlflow.runName": "std-basic", "tags.mlflow.user": USER})

    run("nested-keys", "keys with '/' (nested folders in mlruns): metrics, params and tags",
        params=[("opt/lr", "0.01"), ("opt/beta/1", "0.9")],
        extra_tags=[("sweep/id", "s-1")],
        metrics=(series("train/loss", 20, lambda s: 2.0 - s * 0.05) + series("train/acc", 20, lambda s: s * 0.04)
                 + series("val/loss", 20, lambda s: 2.5 - s * 0.05) + series("a/b/c/d", 20, lambda s: s)),
        expect={"metrics.train/loss": 2.0 - 19 * 0.05, "metrics.a/b/c/d": 19.0, "params.opt/beta/1": "0.9",
                "tags.sweep/id": "s-1"})

    t = T0 + index[0] * HOUR
    mixed = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, DBL_MAX, -DBL_MAX, -1e-300, 1e300, 0.1]
    run("special-values", "NaN, +inf, -inf (SQL stores clamp to +-DBL_MAX), -0.0, subnormal; latest NaN/inf",
        metrics=([("mixed", v, t + i, i) for i, v in enumerate(mixed)]
                 + [("nan_last", v, t + i, i) for i, v in enumerate([1.0, 2.0, math.nan])]
                 + [("inf_last", v, t + i, i) for i, v in enumerate([1.0, math.inf])]
                 + [("neginf_last", v, t + i, i) for i, v in enumerate([1.0, -math.inf])]
                 + [("only_nan", math.nan, t, 0)]),
        expect={"metrics.mixed": 0.1, "metrics.nan_last": "NaN", "metrics.inf_last": "Infinity",
                "metrics.neginf_last": "-Infinity", "metrics.only_nan": "NaN"})

    long_ascii = ("0123456789abcdef" * 400)[:6000]
    long_unicode = ("é実🚀x" * 1500)[:6000]
    long_tag = ("tag-value " * 800)[:8000]
    run("long-values", "params of 6,000 characters (ASCII and non-ASCII), a tag of 8,000, empty and multi-line values",
        params=[("long", long_ascii), ("long_unicode", long_unicode), ("empty", ""),
                ("multiline", "line 1\nline 2\n  indented"), ("spaces", "  padded  ")],
        extra_tags=[("long_tag", long_tag), ("mlflow.note.content", "# Notes\n\nmarkdown *text* é"),
                    ("empty_tag", "")],
        metrics=[("m", 1.0, t + HOUR, 0)],
        expect={"params.long": long_ascii, "params.long_unicode": long_unicode, "params.empty": "",
                "params.multiline": "line 1\nline 2\n  indented", "tags.long_tag": long_tag,
                "tags.empty_tag": ""})

    run("non-ascii-keys", "non-ASCII keys and values; keys with spaces, dots, dashes, colons",
        name="std-non-ascii-ü",
        params=[("paramètre", "valeur é"), ("学习率", "0.1")],
        extra_tags=[("étiquette", "valeur ü"), ("emoji", "🚀 ok")],
        metrics=(series("損失", 5, lambda s: 1 - s / 10) + series("précision/val", 5, lambda s: s / 10)
                 + series("val loss", 5, lambda s: s) + series("eval.score", 5, lambda s: s * 2)
                 + series("f1-macro", 5, lambda s: 0.5) + series("x:y", 5, lambda s: -s)),
        expect={"params.学习率": "0.1", "tags.emoji": "🚀 ok", "metrics.損失": 1 - 4 / 10,
                "metrics.eval.score": 8.0, "run_name": "std-non-ascii-ü"})

    many = []
    for k in range(50):
        many += series(f"m/{k:02d}", 10, lambda s, k=k: k + s / 100)
    run("many-metrics", "50 metric keys x 10 steps, 150 params and 120 tags (several batches)",
        metrics=many,
        params=[(f"p{i:03d}", str(i)) for i in range(150)],
        extra_tags=[(f"t{i:03d}", f"v{i}") for i in range(120)],
        expect={"metrics.m/49": 49.09, "params.p149": "149", "tags.t119": "v119"})

    run("long-history", "5,000 steps on 3 keys (15,000 history rows)",
        metrics=(series("loss", 5000, lambda s: 1.0 / (1 + s)) + series("acc", 5000, lambda s: s / 5000)
                 + series("lr", 5000, lambda s: 0.1 * (0.999 ** s))),
        expect={"metrics.acc": 4999 / 5000})

    t = T0 + index[0] * HOUR
    rep = ([("rep", float(v), t + i, s) for i, (s, v) in enumerate([(0, 0), (1, 10), (1, 11), (2, 20), (2, 22), (2, 21), (3, 30)])]
           + [("same_ts", v, t + 100, 7) for v in (0.3, 0.1, 0.2)]
           + [("ts_order", 2.0, t + 50, 1), ("ts_order", 1.0, t + 40, 1)]
           + [("dup", 1.0, t + 5, 1), ("dup", 1.0, t + 5, 1), ("dup", 2.0, t + 6, 2)]
           + [("backwards", float(s), t + i, s) for i, s in enumerate([5, 3, 4, 0])]
           + [("neg_step", -1.0, t, -5), ("neg_step", 1.0, t + 1, -1)]
           + [("big_step", 1.0, t, 2 ** 40), ("big_step", 2.0, t + 1, 2 ** 53 + 1)]
           + [("epoch_ts", 1.0, 0, 0), ("epoch_ts", 2.0, 1, 1)])
    run("repeated-steps", "repeated steps, equal step with different timestamps and equal timestamps with "
        "different values, an exact duplicate row (SQL keeps one), decreasing, negative and 2^53+1 steps, "
        "timestamps 0 and 1 ms",
        metrics=rep, expect={"metrics.rep": 30.0, "metrics.same_ts": 0.3, "metrics.ts_order": 2.0,
                             "metrics.backwards": 5.0, "metrics.big_step": 2.0, "metrics.neg_step": 1.0})

    run("no-params", "metrics only: no params, no extra tags", metrics=series("loss", 3, lambda s: s),
        expect={"metrics.loss": 2.0})
    run("empty", "no metrics, no params, no extra tags")
    run("running", "still RUNNING: no end_time", status="RUNNING", metrics=series("loss", 3, lambda s: s),
        expect={"status": "RUNNING", "end_time": None})
    run("scheduled", "status SCHEDULED (update_run), no end_time", status="SCHEDULED",
        expect={"status": "SCHEDULED", "end_time": None})
    run("failed", "FAILED with an end time", status="FAILED", metrics=series("loss", 3, lambda s: s),
        expect={"status": "FAILED"})
    run("killed", "KILLED with an end time", status="KILLED", metrics=series("loss", 3, lambda s: s),
        expect={"status": "KILLED"})
    rid = run("deleted-run", "deleted run (view deleted/all only)", metrics=series("loss", 3, lambda s: s),
              lifecycle="deleted", expect={"lifecycle_stage": "deleted"})
    c.delete_run(rid)
    rid = run("restored-run", "deleted, then restored", metrics=series("loss", 3, lambda s: s))
    c.delete_run(rid)
    c.restore_run(rid)
    run("default-user", "no mlflow.user tag: user_id is 'unknown'", user=None,
        metrics=series("loss", 2, lambda s: s), expect={"user_id": "unknown"})
    t = T0 + index[0] * HOUR
    run("dataset-metrics", "metrics logged with dataset_name/dataset_digest (5-field lines in mlruns)",
        metrics=[Metric("ds_loss", 1.0 - s / 10, t + s, s, dataset_name="train_ds", dataset_digest="d1g3st")
                 for s in range(4)])
    run("unicode-exp", "a run in the experiment with a non-ASCII name", exp="unicode", name="运行-ü 1",
        params=[("lr", "0.5")], metrics=series("loss", 4, lambda s: s) + series("train/acc", 4, lambda s: s / 4),
        expect={"experiment_name": STD_EXPERIMENTS["unicode"], "params.lr": "0.5"})
    run("unicode-exp-2", "second run there, other keys (nulls across runs)", exp="unicode", name="运行-ü 2",
        params=[("batch", "32")], metrics=series("other", 2, lambda s: s))
    t = T0 + index[0] * HOUR
    run("dense-steps", "26,000 points on 10 steps: the listing's latest step underestimates the history, "
        "so the bulk answer for its experiment is cut and runport must ask per run",
        exp="dense", metrics=[("loss", float(i), t + i, i // 2600) for i in range(26_000)],
        expect={"metrics.loss": 25_999.0})
    run("dense-neighbour", "a small run beside dense-steps, the same key; and `acc` with a NaN", exp="dense",
        metrics=series("loss", 10, lambda s: s) + series("acc", 10, lambda s: math.nan if s == 3 else s / 10),
        expect={"metrics.loss": 9.0, "metrics.acc": 0.9})
    run("dense-acc", "`acc` with NaN and infinities: its bulk answer (written with bare NaN) is used", exp="dense",
        metrics=series("acc", 10, lambda s: {5: math.nan, 6: math.inf, 7: -math.inf}.get(s, s / 20)),
        expect={"metrics.acc": 0.45})
    run("deleted-exp-run", "a run of an experiment that is deleted afterwards", exp="deleted",
        metrics=series("loss", 3, lambda s: s), lifecycle="deleted")
    c.delete_experiment(exps["deleted"])
    return scenarios


# ----------------------------------------------------------------------------------------------
# the bench set


def bench_value(run, key, step):
    return math.sin(run * 0.37 + key * 1.3 + step * 0.01) + step * 1e-4


def bench_worker(uri, exp_id, runs, metrics, steps, job, jobs, skip):
    from mlflow.entities import Metric

    c = client_for(uri)
    done = 0
    per_batch = max(1, 1000 // metrics)
    for r in range(job, runs, jobs):
        name = f"bench-{r:05d}"
        if name in skip:
            continue
        start = T0 + r * 60_000
        run = c.create_run(exp_id, start_time=start, tags={"mlflow.user": USER}, run_name=name)
        rid = run.info.run_id
        c.log_batch(rid, params=[Param_(f"p{k}", str(r * 10 + k)) for k in range(3)],
                    tags=[Tag_("bench", "1")])
        for s0 in range(0, steps, per_batch):
            c.log_batch(rid, metrics=[Metric(f"metric_{k}", bench_value(r, k, s), start + s * 100, s)
                                      for s in range(s0, min(steps, s0 + per_batch)) for k in range(metrics)])
        with quiet_stdout():
            c.set_terminated(rid, status="FINISHED", end_time=start + steps * 100)
        done += 1
    return done


def Param_(k, v):
    from mlflow.entities import Param

    return Param(k, v)


def Tag_(k, v):
    from mlflow.entities import RunTag

    return RunTag(k, v)


def _bench_job(a):
    return bench_worker(*a)


def populate_bench(uri, runs, metrics, steps, jobs):
    import multiprocessing as mp

    from mlflow.entities import ViewType

    c = client_for(uri)
    exp_id = get_or_create_experiment(c, BENCH_EXPERIMENT)
    skip = set()
    for r in c.search_runs([exp_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=50000):
        if r.info.status == "FINISHED":
            skip.add(r.info.run_name)
        else:  # interrupted earlier: log it again
            c.delete_run(r.info.run_id)
    t0 = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(jobs) as pool:
        done = sum(pool.map(_bench_job, [(uri, exp_id, runs, metrics, steps, j, jobs, skip) for j in range(jobs)]))
    return {"set": "bench", "experiment": BENCH_EXPERIMENT, "experiment_id": exp_id, "runs": runs,
            "metrics": metrics, "steps": steps, "jobs": jobs, "logged_runs": done, "skipped": len(skip),
            "history_rows": runs * metrics * steps, "seconds": round(time.time() - t0, 2)}


# ----------------------------------------------------------------------------------------------
# populate / filestore


def cmd_populate(args):
    import mlflow

    t0 = time.time()
    if args.set == "bench":
        out = populate_bench(args.tracking_uri, args.runs, args.metrics, args.steps, args.jobs)
    else:
        c = client_for(args.tracking_uri)
        scen = standard_set(c)
        out = {"set": "standard", "tracking_uri": args.tracking_uri, "mlflow": mlflow.__version__,
               "experiments": list(STD_EXPERIMENTS.values()), "seconds": round(time.time() - t0, 2),
               "scenarios": scen}
    if args.scenarios:
        Path(args.scenarios).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    summary = {k: v for k, v in out.items() if k != "scenarios"}
    if "scenarios" in out:
        summary["scenarios"] = len(out["scenarios"])
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0


def cmd_filestore(args):
    out = Path(args.out).resolve()
    store = out / "mlruns"
    if store.exists():
        raise SystemExit(f"{store} already exists")
    store.mkdir(parents=True)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    uri = store.as_uri()  # file:///.../mlruns
    args.tracking_uri = uri
    args.scenarios = args.scenarios or str(out / "scenarios.json")
    return cmd_populate(args)


# ----------------------------------------------------------------------------------------------
# reference


def _resolve_experiments(c, names, view):
    from mlflow.entities import ViewType

    exps = c.search_experiments(view_type=ViewType.ALL, max_results=50000)
    by_name = {e.name: e for e in exps}
    by_id = {e.experiment_id: e for e in exps}
    if not names:
        return sorted(exps, key=lambda e: e.experiment_id)
    chosen = []
    for n in names:
        if n.startswith("id:") and n[3:] in by_id:
            chosen.append(by_id[n[3:]])
        elif n in by_name:
            chosen.append(by_name[n])
        else:
            raise SystemExit(f"no experiment named {n!r}")
    return chosen


def view_type(view):
    from mlflow.entities import ViewType

    return {"active": ViewType.ACTIVE_ONLY, "deleted": ViewType.DELETED_ONLY, "all": ViewType.ALL}[view]


def compute_reference(uri, experiments=None, view="active", threads=1, history=True, stats=None):
    """The official client's view: (runs table, history table) as pyarrow tables."""
    import mlflow
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    c = client_for(uri)
    stats = stats if stats is not None else {}
    t0 = time.time()
    exps = _resolve_experiments(c, experiments, view)
    exp_name = {e.experiment_id: e.name for e in exps}
    ids = [e.experiment_id for e in exps]
    vt = view_type(view)
    if ids:
        df = mlflow.search_runs(experiment_ids=ids, run_view_type=vt, max_results=100000)
        runs = mlflow.search_runs(experiment_ids=ids, run_view_type=vt, max_results=100000, output_format="list")
    else:
        df, runs = pd.DataFrame(), []
    stats["search_s"] = round(time.time() - t0, 3)
    stats["dataframe_columns"] = list(df.columns)
    stats["dataframe_dtypes"] = {k: str(v) for k, v in df.dtypes.items()}
    runs = sorted(runs, key=lambda r: r.info.run_id)
    by_id = {r.info.run_id: r for r in runs}
    if len(df):
        assert sorted(df["run_id"]) == sorted(by_id), "search_runs pandas/list disagree on runs"
        df = df.set_index("run_id", drop=False).loc[[r.info.run_id for r in runs]]
    cols = {}

    def ms_to_us(v):
        return None if v is None else int(v) * 1000

    cols["run_id"] = pa.array([r.info.run_id for r in runs], pa.string())
    cols["experiment_id"] = pa.array([r.info.experiment_id for r in runs], pa.string())
    cols["status"] = pa.array([r.info.status for r in runs], pa.string())
    cols["artifact_uri"] = pa.array([r.info.artifact_uri for r in runs], pa.string())
    ts = pa.timestamp("us", tz="UTC")
    cols["start_time"] = pa.array([ms_to_us(r.info.start_time) for r in runs], pa.int64()).cast(ts)
    cols["end_time"] = pa.array([ms_to_us(r.info.end_time) for r in runs], pa.int64()).cast(ts)
    cols["run_name"] = pa.array([r.info.run_name for r in runs], pa.string())
    cols["user_id"] = pa.array([r.info.user_id for r in runs], pa.string())
    cols["lifecycle_stage"] = pa.array([r.info.lifecycle_stage for r in runs], pa.string())
    cols["experiment_name"] = pa.array([exp_name.get(r.info.experiment_id) for r in runs], pa.string())
    # Cross-check with the DataFrame: start/end times as pandas gives them.
    if len(df):
        for col in ("start_time", "end_time"):
            mine = cols[col].to_pylist()
            theirs = [None if pd.isna(v) else pd.Timestamp(v).tz_localize("UTC") if pd.Timestamp(v).tzinfo is None
                      else pd.Timestamp(v) for v in df[col]]
            for a, b in zip(mine, theirs):
                assert (a is None and b is None) or (a is not None and b is not None and
                                                     int(pd.Timestamp(a).value) == int(b.value)), (col, a, b)
    groups = {"metrics": set(), "params": set(), "tags": set()}
    for r in runs:
        groups["metrics"].update(r.data.metrics)
        groups["params"].update(r.data.params)
        groups["tags"].update(r.data.tags)
    for g in ("metrics", "params", "tags"):
        for k in sorted(groups[g]):
            name = f"{g}.{k}"
            vals = [getattr(r.data, g).get(k) for r in runs]
            if g == "metrics":
                arr = pa.array(vals, pa.float64())
                if len(df):  # the DataFrame has NaN for both "absent" and "NaN": must agree otherwise
                    dfv = df[name].to_numpy(dtype=np.float64)
                    for a, b in zip(vals, dfv):
                        assert (a is None and math.isnan(b)) or (a is not None and (a == b or (math.isnan(a) and math.isnan(b)))), (name, a, b)
            else:
                arr = pa.array(vals, pa.string())
                if len(df):
                    for a, b in zip(vals, df[name]):
                        assert (a is None and (b is None or (isinstance(b, float) and math.isnan(b)))) or a == b, (name, a, b)
            cols[name] = arr
    if len(df):
        missing = set(df.columns) - set(cols)
        assert not missing, f"search_runs has columns the reference lacks: {missing}"
    runs_table = pa.table(cols)
    assert runs_table.column_names[:10] == INFO_COLUMNS + EXTRA_COLUMNS
    stats["runs"] = len(runs)
    stats["runs_s"] = round(time.time() - t0, 3)
    if not history:
        return runs_table, None
    t1 = time.time()
    tasks = [(r.info.run_id, k) for r in runs for k in sorted(r.data.metrics)]

    def fetch(task):
        rid, key = task
        hist = c.get_metric_history(rid, key)
        rows = [(m.step, m.timestamp, m.value) for m in hist]
        rows.sort(key=lambda x: x[0])  # stable: equal steps keep the client's order
        return rows

    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as ex:
            results = list(ex.map(fetch, tasks))
    else:
        results = [fetch(t) for t in tasks]
    run_col, key_col, steps, tss, vals = [], [], [], [], []
    for (rid, key), rows in zip(tasks, results):
        n = len(rows)
        run_col += [rid] * n
        key_col += [key] * n
        for s, t_, v in rows:
            steps.append(s)
            tss.append(t_ * 1000)
            vals.append(v)
    n = len(steps)
    hist = pa.table({
        "run_id": pa.array(run_col, pa.string()),
        "step": pa.array(steps, pa.int64()),
        "timestamp": pa.array(tss, pa.int64()).cast(ts),
        "runtime_s": pa.nulls(n, pa.float64()),
        "key": pa.array(key_col, pa.string()),
        "value": pa.array(vals, pa.float64()),
        "value_json": pa.nulls(n, pa.string()),
    })
    assert hist.column_names == HISTORY_COLUMNS
    stats["history_calls"] = len(tasks)
    stats["history_rows"] = n
    stats["history_s"] = round(time.time() - t1, 3)
    return runs_table, hist


def write_reference(runs, hist, out):
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(runs, out / "runs.parquet", compression="zstd")
    if hist is not None:
        (out / "history").mkdir(exist_ok=True)
        for old in (out / "history").glob("part-*.parquet"):
            old.unlink()
        pq.write_table(hist, out / "history" / "part-00000.parquet", compression="zstd", row_group_size=1 << 20)


def split_list(s):
    return [x for x in s.split(",") if x] if s else None


def cmd_reference(args):
    stats = {}
    t0 = time.time()
    runs, hist = compute_reference(args.tracking_uri, split_list(args.experiments), args.view,
                                   args.threads, not args.no_history, stats)
    write_reference(runs, hist, args.o)
    stats["total_s"] = round(time.time() - t0, 3)
    stats.pop("dataframe_dtypes", None)
    stats["dataframe_columns"] = len(stats.get("dataframe_columns", []))
    print(json.dumps(stats), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# check


def read_export(path):
    """(runs, history) read with pyarrow, and the same read with polars (as Arrow tables)."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    runs = pq.read_table(path / "runs.parquet")
    parts = sorted(glob.glob(str(path / "history" / "part-*.parquet")))
    hist = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None
    pl_runs = pl.read_parquet(path / "runs.parquet")
    pl_hist = pl.concat([pl.read_parquet(p) for p in parts]) if parts else None
    return runs, hist, pl_runs, pl_hist


def _plain_type(t):
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    return t


def _column_diff(ref_col, got_col):
    """Indices where the columns differ (vectorised; floats exact, NaN == NaN)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    got_col = got_col.cast(ref_col.type) if got_col.type != ref_col.type else got_col
    if ref_col.equals(got_col):
        return []
    rn = ref_col.is_null().to_numpy(zero_copy_only=False)
    gn = got_col.is_null().to_numpy(zero_copy_only=False)
    bad = rn != gn
    both = ~rn & ~gn
    if pa.types.is_floating(ref_col.type):
        r = ref_col.fill_null(0.0).to_numpy(zero_copy_only=False).view(np.uint64)
        g = got_col.fill_null(0.0).to_numpy(zero_copy_only=False).view(np.uint64)
        rf, gf = r.view(np.float64), g.view(np.float64)
        nan_both = np.isnan(rf) & np.isnan(gf)
        bad |= both & (r != g) & ~nan_both
    else:
        eq = pc.equal(ref_col, got_col).fill_null(True).to_numpy(zero_copy_only=False)
        bad |= both & ~eq
    return np.nonzero(bad)[0].tolist()


def _fmt(v):
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, str) and len(v) > 60:
        return repr(v[:57] + "...") + f" ({len(v)} chars)"
    if isinstance(v, float):
        return repr(v) + ("" if not (v == 0.0 and math.copysign(1, v) < 0) else " (negative zero)")
    return repr(v)


class Diff:
    def __init__(self, limit=20):
        self.items = []
        self.count = 0
        self.limit = limit

    def add(self, msg):
        self.count += 1
        if len(self.items) < self.limit:
            self.items.append(msg)


def compare_tables(label, ref, got, ids, diff, ignore=()):
    """Compare two Arrow tables column by column, row by row; `ids` names each row."""
    import pyarrow as pa

    ref_cols = [c for c in ref.column_names if c not in ignore]
    got_cols = [c for c in got.column_names if c not in ignore]
    if ref_cols != got_cols:
        missing = [c for c in ref_cols if c not in got_cols]
        extra = [c for c in got_cols if c not in ref_cols]
        if missing:
            diff.add(f"{label}: missing columns {missing}")
        if extra:
            diff.add(f"{label}: unexpected columns {extra}")
        if not missing and not extra:
            diff.add(f"{label}: column order differs: expected {ref_cols}, got {got_cols}")
    for c in ref_cols:
        if c not in got_cols:
            continue
        rt, gt = ref.schema.field(c).type, got.schema.field(c).type
        if _plain_type(gt) != rt:
            diff.add(f"{label}: column {c!r} has type {gt}, expected {rt}")
    if ref.num_rows != got.num_rows:
        diff.add(f"{label}: {got.num_rows} rows, expected {ref.num_rows}")
        _explain_rows(label, ref, got, diff)
        return
    for c in ref_cols:
        if c not in got_cols:
            continue
        rc = ref.column(c).combine_chunks()
        gc = got.column(c).combine_chunks()
        if pa.types.is_dictionary(gc.type):
            gc = gc.dictionary_decode()
        try:
            bad = _column_diff(rc, gc)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            diff.add(f"{label}: column {c!r} not comparable: {e}")
            continue
        for i in bad:
            diff.add(f"{label}: {ids(i)} column {c!r}: got {_fmt(gc[i].as_py())}, expected {_fmt(rc[i].as_py())}")


def _explain_rows(label, ref, got, diff):
    """Which runs (or (run, key) series) are missing, extra, or have another row count."""
    from collections import Counter

    cols = [c for c in ("run_id", "key") if c in ref.column_names and c in got.column_names]
    if not cols:
        return

    def count(t):
        return Counter(zip(*[t.column(c).to_pylist() for c in cols]))

    a, b = count(ref), count(got)
    shown = 0
    for k in sorted(set(a) | set(b), key=lambda x: tuple(str(v) for v in x)):
        if a.get(k, 0) != b.get(k, 0) and shown < 10:
            what = " / ".join(str(v).replace(NAME_KEY, " / ") for v in k)
            diff.add(f"{label}: {what}: {b.get(k, 0)} rows, expected {a.get(k, 0)}")
            shown += 1


def _name_keys(runs):
    e = runs.column("experiment_name").to_pylist()
    n = runs.column("run_name").to_pylist()
    return [f"{a}{NAME_KEY}{b}" for a, b in zip(e, n)]


def _by_name(runs, hist):
    """Re-key runs and history by (experiment_name, run_name) and sort by that key."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = _name_keys(runs)
    if len(set(keys)) != len(keys):
        raise SystemExit("--match-by-name: (experiment_name, run_name) is not unique")
    runs = runs.append_column("_name", pa.array(keys, pa.string()))
    runs = runs.take(pc.sort_indices(runs, [("_name", "ascending")]))
    if hist is not None:
        m = dict(zip(runs.column("run_id").to_pylist(), runs.column("_name").to_pylist()))
        names = [m.get(r) for r in hist.column("run_id").to_pylist()]
        hist = hist.set_column(0, "run_id", pa.array(names, pa.string()))
        hist = hist.take(pc.sort_indices(hist, [("run_id", "ascending"), ("key", "ascending"), ("step", "ascending")]))
    return runs, hist


def _polars_expected(arrow_type):
    import polars as pl
    import pyarrow as pa

    if pa.types.is_timestamp(arrow_type):
        return pl.Datetime("us", "UTC")
    return {pa.string(): pl.String, pa.float64(): pl.Float64, pa.int64(): pl.Int64}.get(arrow_type)


def sql_normalize(runs, hist):
    """What a SQL store does to FileStore data: +-inf -> +-DBL_MAX, -0.0 -> 0.0, and exact
    duplicate metric rows (run, key, step, timestamp, value) kept once."""
    import numpy as np
    import pyarrow as pa

    def fix(col):
        a = col.combine_chunks() if hasattr(col, "combine_chunks") else col
        mask = a.is_null().to_numpy(zero_copy_only=False)
        v = a.fill_null(0.0).to_numpy(zero_copy_only=False).copy()
        v = np.where(np.isposinf(v), DBL_MAX, np.where(np.isneginf(v), -DBL_MAX, v))
        v = np.where(v == 0.0, 0.0, v)
        return pa.array(v, pa.float64(), mask=mask)

    if runs is not None:
        for i, name in enumerate(runs.column_names):
            if name.startswith("metrics.") and pa.types.is_floating(runs.schema.field(i).type):
                runs = runs.set_column(i, name, fix(runs.column(i)))
    if hist is not None and hist.num_rows:
        i = hist.schema.get_field_index("value")
        hist = hist.set_column(i, "value", fix(hist.column(i)))
        cols = [hist.column(c).to_pylist() for c in ("run_id", "key", "step", "timestamp", "value")]
        keep, prev = [], None
        for j, row in enumerate(zip(*cols)):
            k = tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in row)
            if k != prev:
                keep.append(j)
            prev = k
        if len(keep) != hist.num_rows:
            hist = hist.take(pa.array(keep, pa.int64()))
        # SQL stores return equal steps ordered by (timestamp, value); FileStore in log order
        import pyarrow.compute as pc

        order = [(c, "ascending") for c in ("run_id", "key", "step", "timestamp", "value")]
        hist = hist.take(pc.sort_indices(hist, order))
    return runs, hist


def check_export(uri, export, view="active", experiments=None, match_by_name=False, threads=1, limit=20,
                 normalize_sql=False):
    stats = {}
    ref_runs, ref_hist = compute_reference(uri, experiments, view, threads, True, stats)
    runs, hist, pl_runs, pl_hist = read_export(export)
    diff = Diff(limit)
    ignore = ()
    variants = [("pyarrow", runs, hist)]
    # polars: check its dtypes, then compare its values too
    for name, plt, ref in (("runs", pl_runs, ref_runs), ("history", pl_hist, ref_hist)):
        if plt is None:
            continue
        for f in ref.schema:
            if f.name in plt.columns:
                exp = _polars_expected(f.type)
                got = plt.schema[f.name]
                if exp is not None and got != exp:
                    diff.add(f"polars {name}: column {f.name!r} is {got}, expected {exp}")
    variants.append(("polars", pl_runs.to_arrow(), pl_hist.to_arrow() if pl_hist is not None else None))
    if match_by_name:
        ignore = ("run_id", "experiment_id", "artifact_uri", "_name")
        ref_runs, ref_hist = _by_name(ref_runs, ref_hist)
    if normalize_sql:
        ref_runs, ref_hist = sql_normalize(ref_runs, ref_hist)
    for lib, r, h in variants:
        if match_by_name:
            r, h = _by_name(r, h)
        if normalize_sql:
            r, h = sql_normalize(r, h)
        rid = r.column("_name" if match_by_name else "run_id").to_pylist() if "run_id" in r.column_names else []

        def run_label(i, rid=rid):
            return f"run {str(rid[i]).replace(NAME_KEY, ' / ')!r}" if i < len(rid) else f"row {i}"

        compare_tables(f"{lib} runs.parquet", ref_runs, r, run_label, diff, ignore)
        if ref_hist is None:
            continue
        if h is None:
            if ref_hist.num_rows:
                diff.add(f"{lib}: no history/part-*.parquet, expected {ref_hist.num_rows} rows")
            continue
        hr = h.column("run_id").to_pylist() if "run_id" in h.column_names else None
        hk = h.column("key").to_pylist() if "key" in h.column_names else None
        hs = h.column("step").to_pylist() if "step" in h.column_names else None

        def hist_label(i, hr=hr, hk=hk, hs=hs):
            if hr is None or hk is None or hs is None or i >= len(hr):
                return f"row {i}"
            return f"row {i} (run {str(hr[i]).replace(NAME_KEY, ' / ')!r}, key {hk[i]!r}, step {hs[i]})"

        compare_tables(f"{lib} history", ref_hist, h, hist_label, diff, ("_name",) if match_by_name else ())
    return diff, stats, ref_runs, ref_hist


def cmd_check(args):
    t0 = time.time()
    diff, stats, ref_runs, ref_hist = check_export(args.tracking_uri, args.export, args.view,
                                                    split_list(args.experiments), args.match_by_name,
                                                    args.threads, args.limit, args.normalize_sql)
    if diff.count:
        print(f"MISMATCH: {diff.count} difference(s); the first {len(diff.items)}:")
        for d in diff.items:
            print("  " + d)
        return 1
    print(f"runs: {ref_runs.num_rows}, history rows: {ref_hist.num_rows if ref_hist is not None else 0}, "
          f"columns: {ref_runs.num_columns} — all equal (pyarrow and polars, {time.time() - t0:.1f} s)")
    return 0


# ----------------------------------------------------------------------------------------------
# scenarios / selftest


def _expect_equal(got, want, sql_store):
    if want == "NaN":
        return isinstance(got, float) and math.isnan(got)
    if want in ("Infinity", "-Infinity"):
        inf = math.inf if want == "Infinity" else -math.inf
        return got == inf or (sql_store and got == math.copysign(DBL_MAX, inf))
    if isinstance(want, float) and isinstance(got, float):
        return got == want
    if want is None:
        return got is None
    return got == want


def cmd_scenarios(args):
    doc = json.loads(Path(args.scenarios).read_text())
    stats = {}
    runs, hist = compute_reference(args.tracking_uri, doc.get("experiments"), "all", 1, True, stats)
    sql_store = not args.tracking_uri.startswith("file:")
    rows = runs.to_pylist()
    by_name = {(r["experiment_name"], r["run_name"]): r for r in rows}
    hist_rows = {}
    for rid, key in zip(hist.column("run_id").to_pylist(), hist.column("key").to_pylist()):
        hist_rows[rid] = hist_rows.get(rid, 0) + 1
    bad = []
    for name, s in doc["scenarios"].items():
        r = by_name.get((s["experiment"], s["run_name"]))
        if r is None:
            bad.append(f"{name}: run {s['run_name']!r} not found in {s['experiment']!r}")
            continue
        want = dict(s["expect"])
        want.setdefault("status", s["status"])
        want.setdefault("user_id", s["user_id"])
        want.setdefault("lifecycle_stage", s["lifecycle_stage"])
        for col, w in want.items():
            got = r.get(col, "<missing column>")
            if not _expect_equal(got, w, sql_store):
                bad.append(f"{name}: {col} = {_fmt(got)}, expected {_fmt(w)}")
        if r["start_time"] is None or int(r["start_time"].timestamp() * 1000) != s["start_time_ms"]:
            bad.append(f"{name}: start_time {r['start_time']}, expected {s['start_time_ms']} ms")
        n = hist_rows.get(r["run_id"], 0)
        lo = s["logged_metric_rows"] - (1 if name == "repeated-steps" and sql_store else 0)
        if n != lo:
            bad.append(f"{name}: {n} history rows, expected {lo}")
    if bad:
        print("SCENARIOS FAILED:")
        for b in bad:
            print("  " + b)
        return 1
    print(f"{len(doc['scenarios'])} scenarios as expected ({runs.num_rows} runs, {hist.num_rows} history rows)")
    return 0


def cmd_selftest(args):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tmp = Path(tempfile.mkdtemp(prefix="mlflow-selftest-"))
    try:
        exps = split_list(args.experiments)
        runs, hist = compute_reference(args.tracking_uri, exps, args.view)
        good = tmp / "good"
        write_reference(runs, hist, good)
        diff, *_ = check_export(args.tracking_uri, good, args.view, exps)
        ok = diff.count == 0
        print(f"unchanged reference: {'passes' if ok else 'FAILS: ' + '; '.join(diff.items)}")

        def corrupt(label, fn):
            d = tmp / label
            shutil.copytree(good, d)
            fn(d)
            df, *_ = check_export(args.tracking_uri, d, args.view, exps)
            print(f"{label}: {'fails as it must (' + df.items[0] + ')' if df.count else 'PASSES (bad)'}")
            return df.count > 0

        def flip_history(d):
            p = d / "history" / "part-00000.parquet"
            t = pq.read_table(p)
            v = t.column("value").to_pylist()
            i = next(i for i, x in enumerate(v) if x is not None and not math.isnan(x))
            v[i] = v[i] + 1e-9 if abs(v[i]) < 1e300 else 0.0
            pq.write_table(t.set_column(t.schema.get_field_index("value"), "value", pa.array(v, pa.float64())), p)

        def nan_to_null(d):
            p = d / "history" / "part-00000.parquet"
            t = pq.read_table(p)
            v = [None if x is not None and math.isnan(x) else x for x in t.column("value").to_pylist()]
            pq.write_table(t.set_column(t.schema.get_field_index("value"), "value", pa.array(v, pa.float64())), p)

        def flip_param(d):
            p = d / "runs.parquet"
            t = pq.read_table(p)
            name = next(c for c in t.column_names if c.startswith("params."))
            v = t.column(name).to_pylist()
            i = next(i for i, x in enumerate(v) if x is not None)
            v[i] = v[i] + "x"
            pq.write_table(t.set_column(t.schema.get_field_index(name), name, pa.array(v, pa.string())), p)

        def step_type(d):
            p = d / "history" / "part-00000.parquet"
            t = pq.read_table(p)
            pq.write_table(t.set_column(1, "step", pc.cast(t.column("step"), pa.float64(), safe=False)), p)

        def drop_row(d):
            p = d / "history" / "part-00000.parquet"
            t = pq.read_table(p)
            pq.write_table(t.slice(1), p)

        results = [corrupt("history-value", flip_history), corrupt("param-value", flip_param),
                   corrupt("step-type", step_type), corrupt("dropped-row", drop_row)]
        if any(x is not None and math.isnan(x) for x in hist.column("value").to_pylist()):
            results.append(corrupt("nan-to-null", nan_to_null))
        ok = ok and all(results)
        print("selftest " + ("passed" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run a real mlflow server on a sqlite file")
    s.add_argument("--db", required=True, help="sqlite file (created if missing)")
    s.add_argument("--port", type=int, default=0, help="0 = a free loopback port")
    s.add_argument("--basic-auth", action="store_true",
                   help="--app-name basic-auth; admin user 'admin', password from MLFLOW_TESTBED_ADMIN_PASSWORD or random")
    s.add_argument("--artifacts", help="--artifacts-destination (default: DB's folder/<db stem>-artifacts)")
    s.add_argument("--workers", type=int, default=2, help="uvicorn workers (mlflow's default is 4)")
    s.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for /health")
    s.add_argument("--log", help="append the server's stdout/stderr to this file (default: discarded)")
    s.set_defaults(fn=cmd_serve)

    for name in ("populate", "filestore"):
        s = sub.add_parser(name, help="log the standard or bench set with the official client")
        if name == "populate":
            s.add_argument("--tracking-uri", required=True)
            s.add_argument("--set", choices=["standard", "bench"], required=True)
        else:
            s.add_argument("--out", required=True, help="writes OUT/mlruns and OUT/scenarios.json")
            s.add_argument("--set", choices=["standard"], default="standard")
        s.add_argument("--runs", type=int, default=1000)
        s.add_argument("--metrics", type=int, default=5)
        s.add_argument("--steps", type=int, default=1000)
        s.add_argument("--jobs", type=int, default=2)
        s.add_argument("--scenarios", help="write scenarios.json here")
        s.set_defaults(fn=cmd_populate if name == "populate" else cmd_filestore)

    def common(s):
        s.add_argument("--tracking-uri", required=True, help="http://..., sqlite:///..., file:///.../mlruns")
        s.add_argument("--experiments", help="comma-separated names (or id:N); default: every experiment")
        s.add_argument("--view", choices=["active", "deleted", "all"], default="active")
        s.add_argument("--threads", type=int, default=1, help="parallel get_metric_history calls")

    s = sub.add_parser("reference", help="the official client's view as Parquet")
    common(s)
    s.add_argument("-o", required=True, help="output folder")
    s.add_argument("--no-history", action="store_true")
    s.set_defaults(fn=cmd_reference)

    s = sub.add_parser("check", help="compare runport's export with the reference")
    common(s)
    s.add_argument("--export", required=True)
    s.add_argument("--match-by-name", action="store_true",
                   help="match runs by (experiment_name, run_name); ignore run_id, experiment_id, artifact_uri")
    s.add_argument("--normalize-sql", action="store_true",
                   help="cross-store: clamp +-inf to +-DBL_MAX, -0.0 to 0.0, drop exact duplicate history rows (both sides)")
    s.add_argument("--limit", type=int, default=20, help="differences to print")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("scenarios", help="check a store against scenarios.json")
    s.add_argument("--tracking-uri", required=True)
    s.add_argument("--scenarios", required=True)
    s.set_defaults(fn=cmd_scenarios)

    s = sub.add_parser("selftest", help="check must pass on the reference and fail on corrupted copies")
    s.add_argument("--tracking-uri", required=True)
    s.add_argument("--experiments")
    s.add_argument("--view", choices=["active", "deleted", "all"], default="all")
    s.set_defaults(fn=cmd_selftest)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
