#!/usr/bin/env python3
"""Writes real W&B runs with the wandb SDK in offline mode (no network).

    python make_wandb_runs.py --out DIR --set standard [--jobs 2]
    python make_wandb_runs.py --out DIR --set sample
    python make_wandb_runs.py --out DIR --set bench [--runs 200 --steps 10000 --keys 10 --jobs 2]
    python make_wandb_runs.py --out DIR --set large [--steps 40000 --keys 20]
    python make_wandb_runs.py --out DIR --set wide [--keys 20000]
    python make_wandb_runs.py --out DIR --set system [--jobs 2]
    python make_wandb_runs.py --out DIR --set system-large [--seconds 120 --gauges 1000]

Runs land in DIR/wandb/offline-run-<time>-<id>/run-<id>.wandb. Every run has a
fixed id. `system-large` is one run, `sys-large`, sampling system metrics
every 0.1 s for --seconds while it serves --gauges OpenMetrics gauges whose
values change at every scrape (benches/system_metrics.py). For `standard`,
`sample`, `large`, `system` and `system-large`, DIR/scenarios.json maps each
scenario name to its run id and to what a reader must find (state, exit code,
values known by construction). Each run is written by its own Python process (the
`--worker` mode of this script); the parameters travel in an environment
variable so that no path shows up in the run's recorded command line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARAMS_ENV = "RUNPORT_GEN_PARAMS"
PROJECT = "runport-testbed"


# --------------------------------------------------------------------------
# Worker side: one process writes one (or, for bench, several) runs.
# --------------------------------------------------------------------------


def _settings(**extra):
    import wandb

    base = dict(
        host="testbed-host", program="train.py", disable_git=True, disable_code=True,
        save_code=False, x_save_requirements=False,
    )
    base.update(extra)
    return wandb.Settings(**base)


def _init(p, run_id, **kw):
    import wandb

    settings = kw.pop("settings", None) or _settings()
    return wandb.init(project=kw.pop("project", PROJECT), id=run_id, dir=p["out"],
                      settings=settings, **kw)


def w_config(p):
    """Nested config, later updates, metadata, first half of the type pairs."""
    run = _init(
        p, "std-config",
        name="config and metadata", group="grp-a", job_type="train",
        tags=["baseline", "ünïcode", "with space"], notes="nested config; later updates",
        config={
            "opt": {"name": "adam", "lr": 0.001, "betas": [0.9, 0.999], "sched": {"kind": "cos", "warmup": 100}},
            "epochs": 10,            # int here, float in std-types -> float64
            "use_amp": True,         # bool here, int in std-types -> mixed
            "layers": 4,             # int here, list in std-types -> JSON text
            "optimizer_id": 1,       # int here, string in std-types -> mixed
            "a.b": 1,                # flat key with a dot   -> config.a\.b
            "a": {"b": 2},           # nested a -> b         -> config.a.b
            "train/batch size": 32,  # slash and space kept verbatim
            "température": 0.7,      # non-ASCII
            "back\\slash": "bs",     # backslash escaped as \\
            "nan_cfg": math.nan,     # the SDK writes NaN in config as null
            "inf_cfg": math.inf,
            "ninf_cfg": -math.inf,
            "big_int": 2**70,        # written as an exact integer beyond int64 -> float
            "empty": {},             # empty object kept whole as "{}"
            "seed": 7,
        },
    )
    run.config.update({"later": "added after init", "seed": 8}, allow_val_change=True)
    # updating a nested key: the SDK sends the whole top-level value again,
    # which replaces the subtree (opt.betas and opt.sched disappear)
    run.config.update({"opt": {"name": "adam", "lr": 0.0005}}, allow_val_change=True)
    for i in range(5):
        run.log({"loss": 1.0 / (i + 1), "m/int_float": i, "m/bool_int": i % 2 == 0,
                 "m/list_int": i, "m/str_num": "s%d" % i})
    run.finish()


def w_types(p):
    """Second half of the type pairs: the same keys with other kinds."""
    run = _init(
        p, "std-types", group="grp-a", job_type="eval",
        config={"epochs": 10.5, "use_amp": 1, "layers": [64, 64], "optimizer_id": "sgd",
                "seed": 9, "opt": {"lr": 1}},
    )
    for i in range(5):
        run.log({"loss": 2.0 / (i + 1), "m/int_float": i + 0.5, "m/bool_int": i,
                 "m/list_int": [i, i + 1], "m/str_num": float(i) + 0.25})
    run.summary["s/bool_int"] = 3
    run.summary["s/str_float"] = 1e300
    run.finish()


def w_values(p):
    """Keys with dots/slashes/spaces/non-ASCII, non-finite numbers, strings, media."""
    import numpy as np
    import wandb

    run = _init(p, "std-values", config={"k": 1})
    rng = np.random.default_rng(0)
    for i in range(6):
        row = {
            "train/loss": 1.0 / (i + 1),
            "a.b": i,                  # flat dotted key      -> a\.b
            "a": {"b": 10 * i},        # nested a -> b        -> a.b
            "with space": i * 0.5,
            "ключ": i,                 # non-ASCII
            "back\\slash": i,
            "nonfinite": [math.nan, math.inf, -math.inf][i % 3],
            "phase": "warmup" if i < 3 else "train",
            "flag": i % 2 == 1,
            "maybe": None if i == 2 else i,
            "vec": [i, i * 0.5],
        }
        if i in (1, 4):
            row["img"] = wandb.Image(
                (rng.random((4, 4, 3)) * 255).astype(np.uint8), caption="tiny %d" % i)
            row["hist"] = wandb.Histogram(rng.normal(size=50), num_bins=8)
        run.log(row)
    run.summary["nan_s"] = math.nan          # written as null (summary.update path)
    run.log({"nan_via_log": math.nan})       # via log: written as NaN
    run.summary.update({"inf_s": math.inf, "ninf_s": -math.inf, "nested_s": {"x": math.inf}})
    run.finish()


def w_summary(p):
    """Summary updates and removals."""
    run = _init(p, "std-summary", config={"k": 2})
    for i in range(4):
        run.log({"loss": 1.0 - i / 10, "acc": i / 10, "grp": {"x": i, "y": -i}})
    run.summary["best"] = {"loss": 0.7, "epoch": 3, "meta": {"by": "val"}}
    run.summary["loss"] = 0.123               # overrides the value logged last
    run.summary["to_remove"] = 1
    run.summary["best"]["meta"]["by"] = "test"  # nested update: sent as an update at best.meta.by
    del run.summary["to_remove"]
    del run.summary["acc"]                    # removes a key that came from history
    del run.summary["best"]["meta"]           # nested removal
    del run.summary["grp"]                    # removes a whole subtree
    run.finish()


def w_steps(p):
    """Explicit steps with gaps, commit=False, same-step merges, a step going back."""
    run = _init(p, "std-steps")
    run.log({"a": 0}, step=0)
    run.log({"b": 1}, commit=False)
    run.log({"c": 2}, commit=False)          # a, b, c -> one row at step 0
    run.log({"a": 10}, step=10)              # gap 1..9
    run.log({"b": 11}, step=10)              # same step: merged into the row of step 10
    run.log({"a": 100}, step=100)
    run.log({"a": 5}, step=5)                # lower than the current step: the SDK drops it
    run.log({"d": "partial"}, commit=False)
    run.log({"e": 101})                      # commits the step-100 row (a, d, e); next row 101
    run.log({"a": 1000}, step=1000)
    run.finish()


def w_long(p):
    """A long run with few keys."""
    run = _init(p, "std-long", config={"steps": p["steps"]})
    n = p["steps"]
    for i in range(n):
        run.log({"loss": 1.0 / (1 + i), "lr": 0.001})
    run.finish()


def w_failed(p):
    """Exits non-zero inside the run: the exit record carries the code."""
    run = _init(p, "std-failed", config={"will_fail": True})
    for i in range(3):
        run.log({"loss": 1.0 + i})
    sys.exit(3)


def w_resumed(p):
    """Two processes, same id, resume="allow" (part 1 or 2 from params)."""
    part = p["part"]
    kw = dict(name="resumed run", group="grp-r", tags=["resumed"], resume="allow")
    if part == 1:
        run = _init(p, "std-resumed", config={"part": 1, "lr": 0.1, "opt": {"m": 0.9}}, **kw)
        for i in range(5):
            run.log({"loss": 1.0 - i / 10, "part1_only": i})
        run.summary["keep_from_part1"] = "yes"
    else:
        run = _init(p, "std-resumed", **kw)
        run.config.update({"part": 2, "resumed_key": True}, allow_val_change=True)
        run.log({"loss": 0.5, "part2": 0})           # offline: the step restarts at 0
        run.log({"loss": 0.4, "part2": 1}, step=5)  # continue after part 1's last step
        run.log({"loss": 0.3, "part2": 2}, step=6)
    run.finish()


def w_killed(p):
    """Logs until killed (the parent sends SIGKILL)."""
    run = _init(p, "std-killed", config={"killed": True})
    i = 0
    while True:
        run.log({"x": i, "y": i * 0.5, "pad": "p" * 40})
        i += 1
        if i % 200 == 0:
            time.sleep(0.01)


def w_sample(p):
    """Three small demo runs (sequentially in one process)."""
    import random

    import wandb

    s = lambda: _settings(host="demo-host", x_disable_meta=True, x_disable_stats=True,
                          x_disable_machine_info=True)
    specs = [
        ("sgd-baseline", "sgd baseline", {"optimizer": "sgd", "lr": 0.1, "batch_size": 64,
                                          "model": {"layers": 4, "width": 128}, "epochs": 3}, ["baseline"]),
        ("adam-wide", "adam wide", {"optimizer": "adam", "lr": 0.001, "batch_size": 64,
                                    "model": {"layers": 4, "width": 512}, "epochs": 3}, ["adam", "wide"]),
        ("adam-lowlr", "adam low lr", {"optimizer": "adam", "lr": 0.0001, "batch_size": 128,
                                       "model": {"layers": 6, "width": 256}, "epochs": 3}, ["adam"]),
    ]
    steps = p["steps"]
    for idx, (rid, name, cfg, tags) in enumerate(specs):
        rnd = random.Random(idx)
        run = wandb.init(project="runport-demo", entity="runport-demo", id=rid, name=name,
                         config=cfg, tags=tags, group="demo", job_type="train",
                         dir=p["out"], settings=s())
        speed = [0.004, 0.008, 0.002][idx]
        for i in range(steps):
            loss = 2.3 * math.exp(-speed * i) + 0.05 + rnd.random() * 0.05
            row = {"train/loss": round(loss, 4), "train/acc": round(1 - loss / 2.5, 4),
                   "phase": "warmup" if i < 20 else "train"}
            if i % 50 == 49:
                row["val/loss"] = round(loss * 1.1, 4)
            run.log(row)
        run.summary["best_val_loss"] = round(2.3 * math.exp(-speed * steps) * 1.1 + 0.06, 4)
        run.finish()


def w_bench(p):
    """Several bench runs, sequentially; a marker file per finished run."""
    import random

    import wandb

    done = Path(p["out"]) / ".bench-done"
    done.mkdir(exist_ok=True)
    for rid in p["ids"]:
        rnd = random.Random(rid)
        keys = [f"metric_{k:02d}" for k in range(p["keys"])]
        run = wandb.init(project="runport-bench", id=rid, dir=p["out"],
                         config={"lr": rnd.choice([0.1, 0.01, 0.001]), "seed": rnd.randrange(1000),
                                 "model": {"width": rnd.choice([64, 128, 256])}},
                         settings=_settings(x_disable_stats=True, x_disable_meta=True))
        for i in range(p["steps"]):
            run.log({k: rnd.random() for k in keys})
        run.finish()
        (done / rid).touch()


def w_large(p):
    """One large run: STEPS rows of KEYS float metrics (the memory-bound tests and benchmark)."""
    import random

    import wandb

    rnd = random.Random(p["steps"] * 1000 + p["keys"])
    keys = [f"metric_{k:02d}" for k in range(p["keys"])]
    run = wandb.init(project="runport-large", id=p["run_id"], dir=p["out"], config={"steps": p["steps"]},
                     settings=_settings(x_disable_stats=True, x_disable_meta=True))
    for _ in range(p["steps"]):
        run.log({k: rnd.random() for k in keys})
    run.finish()


def w_wide(p):
    """One run with KEYS config keys (nested in groups of 100, mixed types)
    and KEYS summary keys: a very wide runs table."""
    import wandb

    n = p["keys"]
    config = {f"group_{g:03d}": {f"c{i}": (i * 0.5 if i % 3 else f"v{i}") for i in range(g * 100, min(n, g * 100 + 100))}
              for g in range((n + 99) // 100)}
    run = wandb.init(project="runport-wide", id=p["run_id"], dir=p["out"], config=config,
                     settings=_settings(x_disable_stats=True, x_disable_meta=True))
    for i in range(n):
        run.summary[f"s{i}"] = i if i % 2 else float(i) / 3
    run.log({"loss": 0.5})
    run.finish()


# --------------------------------------------------------------------------
# The `system` set: system metrics (stats records)
# --------------------------------------------------------------------------

# wandb-core samples every x_stats_sampling_interval seconds (default 15;
# wandb.Settings refuses less than 0.1) and writes each sample as one stats
# record: 0.31.0 has no setting that averages samples (older SDKs had
# _stats_samples_to_average). It also takes one sample right at the start, so
# every run of the other sets (15 s default) holds one stats record unless
# x_disable_stats.
SYSTEM_INTERVAL_S = 0.1

# Gauges served to wandb-core's OpenMetrics scraper (x_stats_open_metrics_endpoints)
# with values known by construction. wandb-core names them
# `openmetrics.<endpoint>.<metric>.<label index>` and writes every non-finite
# value as JSON null (so a NaN, unlike in history, never reaches a file).
OPENMETRICS_ENDPOINT = "tb"
OPENMETRICS_LABEL = "node-0"
OPENMETRICS_GAUGES = [
    # (metric line, value_json wandb-core writes for it: the same in every sample)
    ('testbed_gauge{dev="a"} 0.5', 0.5),      # two label sets -> indices .0 and .1
    ('testbed_gauge{dev="b"} 2', 2.0),        # an integer is written 2.0
    ("testbed_nan NaN", None),
    ("testbed_inf +Inf", None),
    ("testbed_ninf -Inf", None),
    ("testbed_negzero -0.0", -0.0),
    ("testbed_big 1e300", 1e300),
    ("testbed_tiny 5e-324", 5e-324),
]


def openmetrics_key(line: str, index: int = 0) -> str:
    name = line.split("{")[0].split(" ")[0]
    return f"openmetrics.{OPENMETRICS_ENDPOINT}.{name}.{index}/l:{OPENMETRICS_LABEL}"


def openmetrics_expect() -> dict:
    out = {}
    seen: dict = {}
    for line, value in OPENMETRICS_GAUGES:
        name = line.split("{")[0].split(" ")[0]
        i = seen.get(name, 0)
        seen[name] = i + 1
        out[openmetrics_key(line, i)] = value
    return out


def _log_for(run, seconds: float, steps: int, first_step: int = 0, keys=("loss",)):
    """`steps` history rows spread over `seconds`, so that the system monitor
    samples while the run logs."""
    for i in range(steps):
        run.log({k: 1.0 / (first_step + i + 1) + j for j, k in enumerate(keys)}, step=first_step + i)
        time.sleep(seconds / steps)


def w_sys_basic(p):
    """The default system metrics, sampled every 0.1 s for about 2.5 s."""
    run = _init(p, "sys-basic", config={"set": "system"},
                settings=_settings(x_stats_sampling_interval=SYSTEM_INTERVAL_S))
    _log_for(run, 2.5, 10, keys=("loss", "acc"))
    run.finish()


def _serve_openmetrics(lines):
    """An OpenMetrics `/metrics` endpoint on loopback, served by a thread of
    this process: `lines(n)` gives the text lines of the n-th scrape (from
    1). Returns the server (`shutdown()` it) and its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    scrapes = [0]

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            scrapes[0] += 1
            body = ("\n".join(lines(scrapes[0])) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, "http://127.0.0.1:%d/metrics" % srv.server_address[1]


def w_sys_openmetrics(p):
    """System metrics plus an OpenMetrics endpoint served from this process
    (gauges with known values: null for NaN/Infinity, -0.0, 1e300, 5e-324,
    and a counter of scrapes), and x_label, which wandb-core appends to
    every key as `/l:<label>`."""
    def lines(scrape):
        out = ["# TYPE testbed_scrapes counter", f"testbed_scrapes {scrape}"]
        for line, _ in OPENMETRICS_GAUGES:
            out += [f"# TYPE {line.split('{')[0].split(' ')[0]} gauge", line]
        return list(dict.fromkeys(out))

    srv, url = _serve_openmetrics(lines)
    run = _init(p, "sys-openmetrics", config={"set": "system"},
                settings=_settings(x_stats_sampling_interval=SYSTEM_INTERVAL_S,
                                   x_stats_open_metrics_endpoints={OPENMETRICS_ENDPOINT: url},
                                   x_label=OPENMETRICS_LABEL))
    _log_for(run, 2.0, 8)
    run.finish()
    srv.shutdown()


def w_sys_resumed(p):
    """Two processes, same id, resume="allow", each sampling for about 1.5 s:
    one run whose stats come from two logs."""
    part = p["part"]
    run = _init(p, "sys-resumed", resume="allow", config={"part": part} if part == 1 else None,
                settings=_settings(x_stats_sampling_interval=SYSTEM_INTERVAL_S))
    if part == 2:
        run.config.update({"part": 2}, allow_val_change=True)
    _log_for(run, 1.5, 4 if part == 1 else 3, first_step=0 if part == 1 else 4)
    run.finish()


def w_sys_nostats(p):
    """x_disable_stats: no stats record at all (no system rows; eventsLineCount 0)."""
    run = _init(p, "sys-nostats", config={"set": "system"},
                settings=_settings(x_disable_stats=True))
    _log_for(run, 0.5, 5)
    run.finish()


# --------------------------------------------------------------------------
# The `system-large` set: one run with a large stream of system metrics
# --------------------------------------------------------------------------

SYSTEM_LARGE_RUN_ID = "sys-large"


def system_large_key(i: int) -> str:
    """The key wandb-core writes for gauge i of the `system-large` run."""
    return f"openmetrics.{OPENMETRICS_ENDPOINT}.testbed_g{i:05d}.0"


def w_sys_large(p):
    """System metrics sampled every 0.1 s for SECONDS s, plus an OpenMetrics
    endpoint served from this process with GAUGES gauges whose values change
    at every scrape, while logging one `train/loss` every 0.1 s."""
    gauges = p["gauges"]

    def lines(scrape):
        out = ["# TYPE testbed_scrapes counter", f"testbed_scrapes {scrape}"]
        for i in range(gauges):
            out += [f"# TYPE testbed_g{i:05d} gauge",
                    f"testbed_g{i:05d} {((scrape * 7919 + i * 104729) % 1000003) / 1000!r}"]
        return out

    srv, url = _serve_openmetrics(lines)
    run = _init(p, SYSTEM_LARGE_RUN_ID, config={"set": "system-large", "gauges": gauges},
                settings=_settings(x_stats_sampling_interval=SYSTEM_INTERVAL_S,
                                   x_stats_open_metrics_endpoints={OPENMETRICS_ENDPOINT: url}))
    _log_for(run, p["seconds"], round(p["seconds"] / SYSTEM_INTERVAL_S), keys=("train/loss",))
    run.finish()
    srv.shutdown()


def scenarios_system_large(seconds: float, gauges: int) -> dict:
    """Expectations of the `system-large` set: lower bounds, as for `system`
    (at least one sample a second), and what was written under `observed`."""
    scrapes = f"openmetrics.{OPENMETRICS_ENDPOINT}.testbed_scrapes.0"
    return {"large": {
        "run_id": SYSTEM_LARGE_RUN_ID,
        "purpose": f"system metrics sampled every {SYSTEM_INTERVAL_S} s for {seconds} s with "
                   f"{gauges} OpenMetrics gauges changing at every scrape, one train/loss every "
                   f"{SYSTEM_INTERVAL_S} s",
        "state": "finished", "exit_code": 0, "folders": 1,
        "history_rows": round(seconds / SYSTEM_INTERVAL_S),
        "system": {"min_samples": int(seconds),
                   "keys_include": SYSTEM_KEYS_LINUX + [scrapes] +
                                   [system_large_key(i) for i in sorted({0, gauges - 1}) if gauges > 0],
                   "increasing": [scrapes]},
    }}


WORKERS = {
    "sys-basic": w_sys_basic, "sys-openmetrics": w_sys_openmetrics,
    "sys-resumed": w_sys_resumed, "sys-nostats": w_sys_nostats, "sys-large": w_sys_large,
    "wide": w_wide,
    "config": w_config, "types": w_types, "values": w_values, "summary": w_summary,
    "steps": w_steps, "long": w_long, "failed": w_failed, "resumed": w_resumed,
    "killed": w_killed, "sample": w_sample, "bench": w_bench, "large": w_large,
}


def worker_main(name: str):
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    p = json.loads(os.environ[PARAMS_ENV])
    WORKERS[name](p)


# --------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------


def _env(params: dict) -> dict:
    env = dict(os.environ)
    env.update({
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off",
        PARAMS_ENV: json.dumps(params),
    })
    for k in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_DIR",
              "WANDB_RESUME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_TAGS", "WANDB_NAME",
              "WANDB_NOTES"):
        env.pop(k, None)
    return env


def spawn(name: str, params: dict, cwd: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", name],
                            env=_env(params), cwd=cwd, **kw)


def run_worker(name: str, params: dict, cwd: str, expect_rc: int = 0):
    p = spawn(name, params, cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = p.communicate()
    if p.returncode != expect_rc:
        sys.stderr.write(out.decode(errors="replace"))
        raise RuntimeError(f"worker {name} exited {p.returncode}, expected {expect_rc}")
    return p.returncode


def run_files(out: Path, run_id: str) -> list[Path]:
    return sorted(Path(x) for x in glob.glob(str(out / "wandb" / f"*-{glob.escape(run_id)}" / f"run-{run_id}.wandb")))


def _children(pid: int) -> list[int]:
    kids = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(e))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def job_killed(out: Path, cwd: str) -> dict:
    """Starts the training loop in a child, SIGKILLs it once the file holds
    at least two 32 KiB blocks, and watches what the wandb-core service does."""
    sys.path.insert(0, str(HERE))
    from wandb_reference import read_log
    from wandb.proto import wandb_internal_pb2 as pb

    proc = spawn("killed", {"out": str(out)}, cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while True:
        files = run_files(out, "std-killed")
        if files and files[0].stat().st_size >= 2 * 32768:
            break
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("killed scenario: the run did not reach two blocks")
        time.sleep(0.05)
    service = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while any(_alive(s) for s in service) and time.time() - t0 < 10:
        time.sleep(0.1)
    service_exited = not any(_alive(s) for s in service)
    if not service_exited:
        for s in service:
            try:
                os.kill(s, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.2)
    f = run_files(out, "std-killed")[0]
    records, note = read_log(f)
    kinds = []
    for data in records:
        r = pb.Record()
        r.ParseFromString(data)
        kinds.append(r.WhichOneof("record_type"))
    if "exit" in kinds:
        raise RuntimeError("killed scenario: the file has an exit record")
    return {
        "service_pids": len(service),
        "service_exited_by_itself": service_exited,
        "file_bytes": f.stat().st_size,
        "history_records": kinds.count("history"),
        "file_end": note or "clean",
    }


def job_resumed(out: Path, cwd: str, worker: str = "resumed", run_id: str = "std-resumed") -> dict:
    run_worker(worker, {"out": str(out), "part": 1}, cwd)
    # run folders are named by the second the run started: make sure part 2
    # starts in a later second so that it gets its own folder
    first = run_files(out, run_id)[0].parent.name
    while time.strftime("%Y%m%d_%H%M%S", time.gmtime()) in first or \
            time.strftime("%Y%m%d_%H%M%S", time.localtime()) in first:
        time.sleep(0.05)
    time.sleep(0.1)
    run_worker(worker, {"out": str(out), "part": 2}, cwd)
    return {"folders": len(run_files(out, run_id))}


def scenarios_standard(long_steps: int) -> dict:
    """Expectations known by construction (values a reader must produce)."""
    return {
        "config": {
            "run_id": "std-config",
            "purpose": "nested config, config.update incl. a nested key, tags/group/job_type/notes, "
                       "dotted/slashed/spaced/non-ASCII/backslash keys, flat 'a.b' beside nested a->b, "
                       "NaN/Infinity in config, int beyond int64, empty object; first half of the type pairs",
            "state": "finished", "exit_code": 0, "folders": 1, "history_rows": 5,
            "expect": {
                "name": "config and metadata", "group": "grp-a", "job_type": "train",
                "tags": ["baseline", "ünïcode", "with space"], "notes": "nested config; later updates",
                "config.opt.name": "adam", "config.opt.lr": 0.0005,
                "absent": ["config.opt.betas", "config.opt.sched.kind", "config._wandb"],
                "config.a\\.b": 1, "config.a.b": 2, "config.train/batch size": 32,
                "config.température": 0.7, "config.back\\\\slash": "bs",
                "config.nan_cfg": None, "config.inf_cfg": "Infinity", "config.ninf_cfg": "-Infinity",
                "config.big_int": 1.1805916207174113e21, "config.empty": "{}",
                "config.seed": 8, "config.later": "added after init",
            },
        },
        "types": {
            "run_id": "std-types",
            "purpose": "second half of the type pairs: unification across runs",
            "state": "finished", "exit_code": 0, "folders": 1, "history_rows": 5,
            "column_types": {
                "config.epochs": "float64 (int 10 in std-config, 10.5 here)",
                "config.use_amp": "utf8 mixed (bool true / int 1)",
                "config.layers": "utf8 json (int 4 / list [64,64])",
                "config.optimizer_id": "utf8 mixed (int 1 / string sgd)",
                "config.seed": "int64",
                "config.opt.lr": "float64 (0.0005 / int 1)",
                "summary.m/int_float": "float64", "summary.m/bool_int": "utf8 mixed",
                "summary.m/list_int": "utf8 json", "summary.m/str_num": "utf8 mixed",
                "history wide m/int_float": "float64", "history wide m/bool_int": "utf8 mixed",
                "history wide m/list_int": "utf8 json", "history wide m/str_num": "utf8 mixed",
            },
        },
        "values": {
            "run_id": "std-values",
            "purpose": "history keys with dots, slashes, spaces, non-ASCII, backslash; "
                       "NaN/+Infinity/-Infinity in history and summary; strings, bools, null, lists; "
                       "wandb.Image and wandb.Histogram",
            "state": "finished", "exit_code": 0, "folders": 1, "history_rows": 7,
            "history_keys_include": ["train/loss", "a\\.b", "a.b", "with space", "ключ",
                                     "back\\\\slash", "nonfinite", "phase", "flag", "maybe", "vec"],
            "notes": "the SDK flattens media objects into leaf items (img._type, img.path, ...) "
                     "and writes NaN set through run.summary[...] as null",
        },
        "summary": {
            "run_id": "std-summary",
            "purpose": "summary updates, nested summary objects, del run.summary[...] removals",
            "state": "finished", "exit_code": 0, "folders": 1, "history_rows": 4,
            "expect": {"summary.loss": 0.123, "summary.best.loss": 0.7, "summary.best.epoch": 3,
                       "absent": ["summary.acc", "summary.to_remove", "summary.grp.x",
                                  "summary.grp.y", "summary.best.meta.by"]},
        },
        "steps": {
            "run_id": "std-steps",
            "purpose": "explicit step= with gaps, commit=False partial rows, same-step merges, "
                       "a step lower than the current one (dropped by the SDK)",
            "state": "finished", "exit_code": 0, "folders": 1,
            "steps": [0, 10, 100, 1000],
            "history_rows": 4,
            "rows": {"0": ["a", "b", "c"], "10": ["a", "b"], "100": ["a", "d", "e"], "1000": ["a"]},
        },
        "long": {
            "run_id": "std-long",
            "purpose": f"{long_steps} steps, two keys",
            "state": "finished", "exit_code": 0, "folders": 1, "history_rows": long_steps,
            "history_long_rows": 2 * long_steps,
        },
        "failed": {
            "run_id": "std-failed",
            "purpose": "sys.exit(3) inside the run",
            "state": "failed", "exit_code": 3, "folders": 1, "history_rows": 3,
        },
        "resumed": {
            "run_id": "std-resumed",
            "purpose": "the same id written by two processes (resume='allow'): two folders read as one run",
            "state": "finished", "exit_code": 0, "folders": 2,
            "history_rows": 8, "steps": [0, 1, 2, 3, 4, 0, 5, 6],
            "expect": {"config.part": 2, "config.lr": 0.1, "config.opt.m": 0.9,
                       "config.resumed_key": True, "summary.keep_from_part1": "yes",
                       "name": "resumed run", "group": "grp-r", "tags": ["resumed"]},
        },
        "killed": {
            "run_id": "std-killed",
            "purpose": "user process SIGKILLed mid-way: no exit record, the file ends in an incomplete record",
            "state": "crashed", "state_if_modified_within_60s": "running", "exit_code": None,
            "folders": 1, "min_history_rows": 1,
        },
    }


def scenarios_sample(steps: int) -> dict:
    out = {}
    for rid in ("sgd-baseline", "adam-wide", "adam-lowlr"):
        out[rid] = {"run_id": rid, "purpose": "demo run", "state": "finished", "exit_code": 0,
                    "folders": 1, "history_rows": steps, "entity": "runport-demo",
                    "project": "runport-demo"}
    return out


LARGE_RUN_ID = "large-run"
WIDE_RUN_ID = "wide-run"


def scenarios_large(steps: int, keys: int) -> dict:
    return {"large": {"run_id": LARGE_RUN_ID, "purpose": f"{steps} steps of {keys} float keys",
                      "state": "finished", "exit_code": 0, "folders": 1, "history_rows": steps,
                      "history_long_rows": steps * keys}}


def gen_standard(out: Path, jobs: int, long_steps: int):
    cwd = str(out)
    meta = {}
    timings = {}

    def timed(name, fn):
        t = time.perf_counter()
        r = fn()
        timings[name] = round(time.perf_counter() - t, 2)
        if r:
            meta[name] = r

    simple = lambda name, rc=0, **extra: (lambda: run_worker(name, {"out": cwd, **extra}, cwd, rc) and None)
    tasks = [
        ("long", simple("long", steps=long_steps)),
        ("killed", lambda: job_killed(out, cwd)),
        ("resumed", lambda: job_resumed(out, cwd)),
        ("config", simple("config")),
        ("types", simple("types")),
        ("values", simple("values")),
        ("summary", simple("summary")),
        ("steps", simple("steps")),
        ("failed", simple("failed", rc=3)),
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        futs = [ex.submit(timed, name, fn) for name, fn in tasks]
        for f in futs:
            f.result()
    sc = scenarios_standard(long_steps)
    sc["killed"]["observed"] = meta.get("killed", {})
    return sc, timings


# Keys wandb-core 0.31.0 writes on any Linux machine (the first sample lacks
# `cpu`: a percentage needs two readings). Others depend on the machine:
# `disk.<device>.in/out` per block device, `gpu.<i>.*` per GPU (none here).
SYSTEM_KEYS_LINUX = ["cpu", "memory_percent", "proc.memory.rssMB", "proc.memory.availableMB",
                     "proc.memory.percent", "proc.cpu.threads", "network.sent", "network.recv",
                     "disk./.usagePercent", "disk./.usageGB"]


def scenarios_system() -> dict:
    """Expectations of the `system` set. How many samples a run gets depends
    on the machine's load, so only lower bounds; what was written is under
    each scenario's `observed`."""
    om = openmetrics_expect()
    scrapes = f"openmetrics.{OPENMETRICS_ENDPOINT}.testbed_scrapes.0/l:{OPENMETRICS_LABEL}"
    return {
        "basic": {
            "run_id": "sys-basic",
            "purpose": "default system metrics sampled every 0.1 s for about 2.5 s while logging 10 steps",
            "state": "finished", "exit_code": 0, "folders": 1, "history_rows": 10,
            "system": {"min_samples": 5, "keys_include": SYSTEM_KEYS_LINUX},
        },
        "openmetrics": {
            "run_id": "sys-openmetrics",
            "purpose": "system metrics plus an OpenMetrics endpoint with known values (non-finite -> null, "
                       "-0.0, 1e300, 5e-324, a scrape counter) and x_label: every key ends in /l:node-0",
            "state": "finished", "exit_code": 0, "folders": 1, "history_rows": 8,
            "system": {"min_samples": 5,
                       "keys_include": [f"{k}/l:{OPENMETRICS_LABEL}" for k in SYSTEM_KEYS_LINUX] + list(om) + [scrapes],
                       "key_suffix": f"/l:{OPENMETRICS_LABEL}",
                       "values": om, "increasing": [scrapes]},
        },
        "resumed": {
            "run_id": "sys-resumed",
            "purpose": "the same id written by two processes (resume='allow'), each sampling: "
                       "the run's stats come from two logs, in folder order",
            "state": "finished", "exit_code": 0, "folders": 2, "history_rows": 7,
            "steps": [0, 1, 2, 3, 4, 5, 6],
            "system": {"min_samples": 4, "min_samples_per_folder": 2, "keys_include": SYSTEM_KEYS_LINUX},
        },
        "nostats": {
            "run_id": "sys-nostats",
            "purpose": "x_disable_stats: no stats record, no system rows",
            "state": "finished", "exit_code": 0, "folders": 1, "history_rows": 5,
            "system": {"samples": 0},
        },
    }


def observe_system(out: Path, sc: dict, list_keys: bool = True):
    """What the SDK wrote, per scenario (read with the reference reader);
    without `list_keys`, the number of keys instead of their list."""
    sys.path.insert(0, str(HERE))
    from wandb_reference import read_runs

    runs, _ = read_runs(out)
    by_id = {r.run_id: r for r in runs}
    for s in sc.values():
        r = by_id.get(s["run_id"])
        if r is None:
            continue
        per_folder = [sum(1 for x in r.system if x[0] == i) for i in range(len(r.files))]
        ts = [x[1] for x in r.system if x[1] is not None]
        gaps = sorted(b - a for a, b in zip(ts, ts[1:]))
        keys = sorted({k for x in r.system for k, *_ in x[3]})
        s["observed"] = {
            "samples": len(r.system), "samples_per_folder": per_folder,
            "rows": sum(len(x[3]) for x in r.system),
            **({"keys": keys} if list_keys else {"key_count": len(keys)}),
            "median_interval_s": round(gaps[len(gaps) // 2], 3) if gaps else None,
        }


def gen_system(out: Path, jobs: int):
    cwd = str(out)
    timings = {}

    def timed(name, fn):
        t = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - t, 2)

    tasks = [
        ("resumed", lambda: job_resumed(out, cwd, "sys-resumed", "sys-resumed")),
        ("basic", lambda: run_worker("sys-basic", {"out": cwd}, cwd)),
        ("openmetrics", lambda: run_worker("sys-openmetrics", {"out": cwd}, cwd)),
        ("nostats", lambda: run_worker("sys-nostats", {"out": cwd}, cwd)),
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        for f in [ex.submit(timed, name, fn) for name, fn in tasks]:
            f.result()
    sc = scenarios_system()
    observe_system(out, sc)
    return sc, timings


def gen_system_large(out: Path, seconds: float, gauges: int):
    t = time.perf_counter()
    run_worker("sys-large", {"out": str(out), "seconds": seconds, "gauges": gauges}, str(out))
    timings = {"large": round(time.perf_counter() - t, 2)}
    sc = scenarios_system_large(seconds, gauges)
    observe_system(out, sc, list_keys=False)
    return sc, timings


def gen_bench(out: Path, runs: int, steps: int, keys: int, jobs: int):
    done = out / ".bench-done"
    ids = [f"bench-{i:05d}" for i in range(runs)]
    todo = []
    for rid in ids:
        if (done / rid).exists() and run_files(out, rid):
            continue
        for f in run_files(out, rid):  # an interrupted run: start it again
            shutil.rmtree(f.parent, ignore_errors=True)
        todo.append(rid)
    print(f"bench: {runs - len(todo)} runs exist, writing {len(todo)}")
    if not todo:
        return
    shards = [todo[i::jobs] for i in range(jobs) if todo[i::jobs]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(shards)) as ex:
        futs = [ex.submit(run_worker, "bench", {"out": str(out), "ids": s, "steps": steps, "keys": keys},
                          str(out)) for s in shards]
        for f in futs:
            f.result()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write real W&B offline runs for runport's tests.")
    ap.add_argument("--out", help="output folder (runs go to OUT/wandb/...)")
    ap.add_argument("--set", choices=["standard", "sample", "bench", "large", "wide", "system", "system-large"],
                    default="standard")
    ap.add_argument("--runs", type=int, default=200, help="bench: number of runs")
    ap.add_argument("--steps", type=int, default=None,
                    help="bench: steps per run (10000); standard: steps of the long run (100000); "
                         "sample: steps per run (300); large: steps of the run (40000)")
    ap.add_argument("--keys", type=int, default=None,
                    help="bench: float keys per step (10); large: (20); wide: config and summary keys (20000)")
    ap.add_argument("--seconds", type=float, default=120, help="system-large: seconds of sampling (120)")
    ap.add_argument("--gauges", type=int, default=1000, help="system-large: OpenMetrics gauges (1000)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    if not args.out:
        ap.error("--out is required")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.set == "bench":
        gen_bench(out, args.runs, args.steps or 10000, args.keys or 10, max(1, args.jobs))
        print(f"bench: done in {time.perf_counter() - t0:.1f} s")
        return 0
    if (out / "wandb").exists():
        ap.error(f"{out / 'wandb'} already exists: use an empty folder")
    if args.set == "standard":
        sc, timings = gen_standard(out, max(1, args.jobs), args.steps or 100_000)
    elif args.set == "system":
        sc, timings = gen_system(out, max(1, args.jobs))
    elif args.set == "system-large":
        sc, timings = gen_system_large(out, args.seconds, args.gauges)
    elif args.set == "large":
        steps, keys = args.steps or 40_000, args.keys or 20
        t = time.perf_counter()
        run_worker("large", {"out": str(out), "run_id": LARGE_RUN_ID, "steps": steps, "keys": keys}, str(out))
        sc, timings = scenarios_large(steps, keys), {"large": round(time.perf_counter() - t, 2)}
    elif args.set == "wide":
        keys = args.keys or 20_000
        t = time.perf_counter()
        run_worker("wide", {"out": str(out), "run_id": WIDE_RUN_ID, "keys": keys}, str(out))
        sc = {"wide": {"run_id": WIDE_RUN_ID, "purpose": f"{keys} config and {keys} summary keys",
                       "state": "finished", "exit_code": 0, "folders": 1, "history_rows": 1}}
        timings = {"wide": round(time.perf_counter() - t, 2)}
    else:
        steps = args.steps or 300
        t = time.perf_counter()
        run_worker("sample", {"out": str(out), "steps": steps}, str(out))
        sc, timings = scenarios_sample(steps), {"sample": round(time.perf_counter() - t, 2)}
    doc = {"set": args.set, "generator": {"wandb": _wandb_version(), "seconds": timings},
           "scenarios": sc}
    (out / "scenarios.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"{args.set}: {len(sc)} scenarios in {time.perf_counter() - t0:.1f} s "
          f"({', '.join(f'{k} {v}s' for k, v in timings.items())})")
    return 0


def _wandb_version() -> str:
    from importlib.metadata import version

    return version("wandb")


if __name__ == "__main__":
    sys.exit(main())
