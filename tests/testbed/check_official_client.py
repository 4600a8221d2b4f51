#!/usr/bin/env python3
"""Checks the W&B API test server with the OFFICIAL W&B client (wandb 0.31.0).

    python tests/testbed/check_official_client.py --runs DIR
        [--base-url URL --api-key KEY --entity E --project P]
        [--debug-flip history|summary|config|system]
    python tests/testbed/check_official_client.py --runs DIR --system EXPORT [--select PATTERNS]
        [--base-url URL --api-key KEY --entity E --project P]

Without --base-url it starts `wandb_server.py` on free loopback ports (and
stops it at the end). It then drives `wandb.Api` (GraphQL through the
wandb-core service, history through Parquet files) and compares everything
it reads with `wandb_reference.py`'s reading of the same `.wandb` files:
listing with filters, orders and paging; every run's metadata, config and
summary; `run.history()` with and without keys (sampled), `scan_history()`
with and without keys for every run (all 100,000 rows of `std-long`
included), `Runs.histories()`, the system metrics
(`run.history(stream="system")`, whole and sampled), and a second pass with
a live (not yet exported) tail. It also checks that no credentials reached the file origin
and that nothing tried to reach another host (all proxies point at a local
black hole that counts connections).

Exit 1 with the differences on any mismatch; one summary line on success.
--debug-flip starts the server with one wrong value, and the check must fail.

With --system EXPORT it only reads every run's system metrics with
`run.history(stream="system", pandas=False, samples=<all>)` and compares
them with runport's EXPORT/system/part-*.parquet (keys without the
`system.` prefix, `_timestamp` to microseconds rounded half away from zero,
numbers as float64 and anything else null; --select: runport's patterns
over `system.<key>`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import wandb_reference as ref  # noqa: E402

DEFAULT_KEY = "runport_testbed_key_0123456789abcdefghijklmnopqrstuv"


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def same(exp, got, strict: bool) -> bool:
    """Value equality. Non-finite floats also match their API string form
    ("NaN", "Infinity", "-Infinity"). `strict` keeps int and float apart
    (JSON strings passed through untouched); otherwise numbers compare by
    value (wandb-core re-encodes Parquet values: 1.0 arrives as 1)."""
    if isinstance(exp, float) and not math.isfinite(exp):
        if isinstance(got, str):
            return got in NONFINITE and (
                math.isnan(exp) if got == "NaN" else exp == NONFINITE[got])
        if isinstance(got, float):
            return (math.isnan(exp) and math.isnan(got)) or exp == got
        return False
    if isinstance(exp, bool) or isinstance(got, bool):
        return isinstance(exp, bool) and isinstance(got, bool) and exp == got
    if isinstance(exp, (int, float)):
        if not isinstance(got, (int, float)):
            return False
        if strict and type(exp) is not type(got):
            return False
        if isinstance(got, float) and not math.isfinite(got):
            return False
        return exp == got
    if isinstance(exp, str) or exp is None:
        return exp == got
    if isinstance(exp, list):
        return isinstance(got, list) and len(exp) == len(got) and all(
            same(a, b, strict) for a, b in zip(exp, got))
    if isinstance(exp, dict):
        if not isinstance(got, dict):
            return False
        e = {k: v for k, v in exp.items() if v is not None}
        g = {k: v for k, v in got.items() if v is not None}
        return e.keys() == g.keys() and all(same(e[k], g[k], strict) for k in e)
    return exp == got


def show(v, n=160) -> str:
    s = json.dumps(v, ensure_ascii=False, default=repr, allow_nan=True)
    return s if len(s) <= n else s[:n] + "..."


def row_leaves(row: dict) -> dict:
    """A history row as {path tuple: value}: nested objects flattened,
    objects with `_type` (media) kept whole, null leaves dropped (a wide
    Parquet row cannot tell a logged null from an absent key)."""
    out = {}

    def walk(prefix, obj):
        for k, v in obj.items():
            p = prefix + (k,)
            if isinstance(v, dict) and v and "_type" not in v:
                walk(p, v)
            elif v is not None:
                out[p] = v

    walk((), row)
    return out


def expected_rows(run) -> list[dict]:
    rows = []
    for step, ts_us, rt, keyed in run.history:
        leaves = {}
        if step is not None:
            leaves[("_step",)] = step
        if rt is not None:
            leaves[("_runtime",)] = rt
        if ts_us is not None:
            leaves[("_timestamp",)] = ("us", ts_us)
        for path, v in keyed:
            if v is not None:
                leaves[path] = v
        rows.append(leaves)
    return rows


def leaf_same(exp, got, strict=False) -> bool:
    if isinstance(exp, tuple) and exp and exp[0] == "us":  # _timestamp in µs
        return isinstance(got, (int, float)) and ref.seconds_to_us(got) == exp[1]
    return same(exp, got, strict)


def pname(path) -> str:
    return ref.encode_path(path)


class Diffs:
    def __init__(self, limit=40):
        self.items: list[str] = []
        self.total = 0
        self.limit = limit

    def add(self, msg):
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append(msg)

    def __bool__(self):
        return self.total > 0


def by_step(rows: list[dict]) -> list[dict]:
    """Rows in step order, log order within a step (how wandb-core returns a
    scan: a resumed offline run restarts at step 0)."""
    return sorted(rows, key=lambda r: r.get(("_step",), -1))


def compare_rows(label, exp_rows, got_rows, diffs: Diffs, keys=None, step_order=False) -> int:
    """Compares two row lists in order. With `keys`, expected rows are
    projected on those keys and rows holding none of them are dropped on
    both sides."""
    got_l = [row_leaves(r) for r in got_rows]
    exp_l = by_step(exp_rows) if step_order else exp_rows
    if keys is not None:
        want = {tuple([k]) for k in keys}

        def proj(leaves):
            return {p: v for p, v in leaves.items() if p[:1] in want or p == ("_step",)}

        exp_l = [proj(r) for r in exp_l]
        exp_l = [r for r in exp_l if set(r) - {("_step",)}]
        got_l = [r for r in got_l if set(r) - {("_step",)}]
    if len(exp_l) != len(got_l):
        diffs.add(f"{label}: {len(got_l)} rows, expected {len(exp_l)}")
    bad = 0
    for i, (e, g) in enumerate(zip(exp_l, got_l)):
        if e.keys() != g.keys():
            missing = sorted(pname(p) for p in e.keys() - g.keys())
            extra = sorted(pname(p) for p in g.keys() - e.keys())
            diffs.add(f"{label}: row {i} (step {e.get(('_step',))}): missing {missing} extra {extra}")
            bad += 1
            continue
        for p, v in e.items():
            if not leaf_same(v, g[p]):
                diffs.add(f"{label}: row {i} (step {e.get(('_step',))}) {pname(p)}: "
                          f"got {show(g[p])}, expected {show(v)}")
                bad += 1
                break
    return len(got_l)


def api_form(v):
    """What the API serves for a reference value (NaN/Infinity as strings)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: api_form(x) for k, x in v.items()}
    if isinstance(v, list):
        return [api_form(x) for x in v]
    return v


def strict_same(exp, got) -> bool:
    """Config/summary arrive as JSON strings passed through untouched:
    compare kinds exactly, nulls included."""
    exp = api_form(exp)
    if type(exp) is not type(got):
        return False
    if isinstance(exp, dict):
        return exp.keys() == got.keys() and all(strict_same(exp[k], got[k]) for k in exp)
    if isinstance(exp, list):
        return len(exp) == len(got) and all(strict_same(a, b) for a, b in zip(exp, got))
    return exp == got


def compare_tree(label, exp: dict, got: dict, diffs: Diffs):
    for k in sorted(set(exp) | set(got)):
        if k not in got:
            diffs.add(f"{label}: missing key {k!r} (expected {show(exp[k])})")
        elif k not in exp:
            diffs.add(f"{label}: extra key {k!r} = {show(got[k])}")
        elif not strict_same(exp[k], got[k]):
            diffs.add(f"{label}: {k!r}: got {show(got[k])}, expected {show(api_form(exp[k]))}")


# --------------------------------------------------------------------------
# Server, environment, black-hole proxy
# --------------------------------------------------------------------------


class BlackHole:
    """A loopback listener set as HTTP(S) proxy: every connection to it is
    an attempt to reach a host other than the test server."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.attempts: list[str] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.settimeout(1.0)
                first = c.recv(512).split(b"\r\n", 1)[0].decode("latin-1")
            except OSError:
                first = "?"
            self.attempts.append(first)
            c.close()


def start_server(args, cache: Path):
    cmd = [sys.executable, str(HERE / "wandb_server.py"), "--runs", str(args.runs),
           "--port", "0", "--files-port", "0", "--api-key", args.api_key,
           "--entity", args.entity, "--project", args.project, "--cache", str(cache)]
    if args.debug_flip:
        cmd += ["--debug-flip", args.debug_flip]
    if args.part_rows:
        cmd += ["--part-rows", str(args.part_rows)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def server_ready(proc):
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise SystemExit("the test server did not start")
    return json.loads(line)


def admin(base, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as r:
        return json.loads(r.read())


def isolate_env(tmp: Path, base: str, key: str, proxy_port: int):
    for k in list(os.environ):
        if k.startswith("WANDB_") or k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            del os.environ[k]
    for sub in ("home", "wandb", "cache", "config", "data", "artifacts"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "HOME": str(tmp / "home"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "WANDB_DIR": str(tmp / "wandb"),
        "WANDB_CACHE_DIR": str(tmp / "cache"),
        "WANDB_CONFIG_DIR": str(tmp / "config"),
        "WANDB_DATA_DIR": str(tmp / "data"),
        "WANDB_ARTIFACT_DIR": str(tmp / "artifacts"),
        "WANDB_BASE_URL": base,
        "WANDB_API_KEY": key,
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "NETRC": str(tmp / "home" / "netrc"),
        # anything not on loopback goes to the black hole
        "HTTP_PROXY": f"http://127.0.0.1:{proxy_port}",
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
        "http_proxy": f"http://127.0.0.1:{proxy_port}",
        "https_proxy": f"http://127.0.0.1:{proxy_port}",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })


# --------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------


def iso(us):
    import datetime as dt
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%f")


def run_check(args, info, runs, diffs: Diffs, stats: dict):
    import wandb

    base, entity, project = info["base_url"], info["entity"], info["project"]
    path = f"{entity}/{project}"
    t0 = time.time()
    exp = {r.run_id: r for r in runs}

    api = wandb.Api(overrides={"base_url": base, "entity": entity, "project": project},
                    api_key=args.api_key, timeout=60)

    # ---- listing, filters, orders, paging ----------------------------------
    def by_created(rs, desc=False):
        return sorted(rs, key=lambda r: (r.created_at, r.run_id), reverse=desc)

    def cfg(r, k):
        return r.config.get(k)

    def summ(r, k):
        return r.summary.get(k)

    cases = [
        ("all, default order", None, None, lambda r: True, lambda rs: by_created(rs)),
        ("state finished", {"state": "finished"}, "+created_at",
         lambda r: r.state == "finished", lambda rs: by_created(rs)),
        ("$or tags/group, -created_at", {"$or": [{"tags": "resumed"}, {"group": "grp-a"}]}, "-created_at",
         lambda r: "resumed" in r.ident["tags"] or r.ident["group"] == "grp-a",
         lambda rs: by_created(rs, True)),
        ("config.seed.value >= 8", {"config.seed.value": {"$gte": 8}}, "+created_at",
         lambda r: isinstance(cfg(r, "seed"), int) and cfg(r, "seed") >= 8, lambda rs: by_created(rs)),
        ("summary loss < 0.5, +summary_metrics.loss", {"summary_metrics.loss": {"$lt": 0.5}},
         "+summary_metrics.loss",
         lambda r: isinstance(summ(r, "loss"), (int, float)) and summ(r, "loss") < 0.5,
         lambda rs: sorted(rs, key=lambda r: (summ(r, "loss"), r.run_id))),
        ("state $in failed/crashed", {"state": {"$in": ["failed", "crashed"]}}, "-heartbeat_at",
         lambda r: r.state in ("failed", "crashed"),
         lambda rs: sorted(rs, key=lambda r: (r.updated_at, r.run_id), reverse=True)),
        ("$nor jobType train, displayName $regex", {"$and": [
            {"$nor": [{"jobType": "train"}]}, {"displayName": {"$regex": "^std-s"}}]}, None,
         lambda r: r.ident["job_type"] != "train" and (r.ident["name"] or r.run_id).startswith("std-s"),
         lambda rs: by_created(rs)),
        ("createdAt > third run", "CREATED", "+created_at", None, None),
        ("tags $nin, group $exists false", {"$and": [{"tags": {"$nin": ["baseline"]}},
                                                       {"group": {"$exists": False}}]}, "+created_at",
         lambda r: "baseline" not in r.ident["tags"] and not r.ident["group"],
         lambda rs: by_created(rs)),
    ]
    third = by_created(runs)[min(2, len(runs) - 1)]
    listed = 0
    for label, flt, order, pred, sorter in cases:
        if flt == "CREATED":
            flt = {"createdAt": {"$gt": iso(third.created_at)}}
            pred = (lambda r: r.created_at > third.created_at)
            sorter = by_created
        want = [r.run_id for r in sorter([r for r in runs if pred(r)])]
        kw = {"per_page": 2}
        if flt is not None:
            kw["filters"] = flt
        if order is not None:
            kw["order"] = order
        res = api.runs(path, **kw)
        got = [r.id for r in res]
        listed += len(got)
        if got != want:
            diffs.add(f"runs({label}): got {got}, expected {want}")
        if len(res) != len(want):
            diffs.add(f"runs({label}): len (runCount) {len(res)}, expected {len(want)}")
    stats["listings"] = len(cases)

    stats["listing_s"] = round(time.time() - t0, 1)
    t0 = time.time()

    # ---- metadata, config, summary (lazy listing, then full fragment) -------
    for lazy in (True, False):
        for run in api.runs(path, per_page=4, lazy=lazy):
            e = exp.get(run.id)
            if e is None:
                diffs.add(f"unexpected run {run.id}")
                continue
            lab = f"{run.id}{'' if lazy else ' (full fragment)'}"
            ident = e.ident
            checks = [("name", run.name, ident["name"] or e.run_id), ("state", run.state, e.state),
                      ("tags", list(run.tags or []), ident["tags"]), ("group", run.group, ident["group"]),
                      ("job_type", run.job_type, ident["job_type"]), ("notes", run.notes, ident["notes"]),
                      ("created_at", run.created_at, iso(e.created_at)),
                      ("heartbeatAt", run._attrs.get("heartbeatAt"), iso(e.updated_at)),
                      ("historyLineCount", run._attrs.get("historyLineCount"), len(e.history))]
            for what, g, w in checks:
                if what in ("created_at", "heartbeatAt") and g == w[:19]:
                    continue  # a server serving whole seconds, as W&B does
                if g != w:
                    diffs.add(f"{lab}: {what} = {show(g)}, expected {show(w)}")
            compare_tree(f"{lab} config", ref.plain(e.config), dict(run.config), diffs)
            summary = {k: v for k, v in run.summary_metrics.items() if k != "_wandb"}
            compare_tree(f"{lab} summary", ref.plain(e.summary), summary, diffs)
            if "_wandb" not in run.rawconfig:
                diffs.add(f"{lab}: rawconfig lacks _wandb")

    stats["metadata_s"] = round(time.time() - t0, 1)

    # ---- history --------------------------------------------------------------
    n_rows = 0
    t0 = time.time()
    full = {}
    for run in api.runs(path, per_page=50):
        full[run.id] = run
    for rid, e in sorted(exp.items()):
        run = full.get(rid)
        if run is None:
            diffs.add(f"run {rid} not listed")
            continue
        erows = expected_rows(e)
        last = max([s for s, *_ in e.history if s is not None], default=-1)
        if run.lastHistoryStep != last:
            diffs.add(f"{rid}: lastHistoryStep {run.lastHistoryStep}, expected {last}")
        t1 = time.time()
        n_rows += compare_rows(f"{rid} scan_history()", erows, list(run.scan_history()), diffs,
                               step_order=True)
        stats.setdefault("scan_s", {})[rid] = round(time.time() - t1, 2)
        # keys: the first two non-special top-level keys of the run
        keys = []
        for row in erows:
            for p in row:
                if p[0] not in ("_step", "_runtime", "_timestamp") and p[0] not in keys:
                    keys.append(p[0])
        keys = keys[:2]
        if keys:
            t1 = time.time()
            n_rows += compare_rows(f"{rid} scan_history(keys={keys})", erows,
                                   list(run.scan_history(keys=keys)), diffs, keys=keys, step_order=True)
            stats.setdefault("scan_keys_s", {})[rid] = round(time.time() - t1, 2)
            # sampled: rows holding all keys, then at most `samples`
            got = run.history(keys=keys, pandas=False)
            holding = [r for r in erows if all(any(p[0] == k for p in r) for k in keys)]
            proj = [{p: v for p, v in r.items() if p[:1] in {(k,) for k in keys} or p == ("_step",)}
                    for r in holding]
            if len(holding) <= 500:
                compare_rows(f"{rid} history(keys={keys})", proj, got, diffs)
            else:
                check_sampled(f"{rid} history(keys={keys})", proj, got, 500, diffs)
        got = run.history(pandas=False)
        if len(erows) <= 500:
            compare_rows(f"{rid} history()", erows, got, diffs)
        else:
            check_sampled(f"{rid} history()", erows, got, 500, diffs)
    stats["history_s"] = round(time.time() - t0, 1)
    stats["history_rows"] = n_rows

    # ---- system metrics (events) ---------------------------------------------
    check_system_pass(api, path, runs, diffs, stats)

    # ---- Runs.histories --------------------------------------------------------
    if hasattr(wandb.apis.public.Runs, "histories"):
        sel = api.runs(path, filters={"displayName": {"$regex": "^std-(summary|failed)$"}})
        got = sel.histories(keys=["loss"], samples=100, format="default")
        want = []
        for rid in sorted(r.run_id for r in runs if (r.ident["name"] or r.run_id) in ("std-summary", "std-failed")):
            for row in expected_rows(exp[rid]):
                if ("loss",) in row:
                    want.append((rid, row[("_step",)], row[("loss",)]))
        got_t = sorted((g.get("run_id"), g.get("_step"), g.get("loss")) for g in got)
        if len(got_t) != len(want) or not all(
                a[0] == b[0] and a[1] == b[1] and same(b[2], a[2], False) for a, b in zip(got_t, sorted(want))):
            diffs.add(f"Runs.histories(keys=['loss']): got {show(got_t, 400)}, expected {show(sorted(want), 400)}")
        stats["histories"] = len(got)

    # ---- live tail -------------------------------------------------------------
    # wandb-core scans in pages of 1,000 steps: Parquet rows for the page,
    # plus, when the page reaches the live tail (the steps in `liveData`),
    # every row `history` (all keys) or `sampledHistory` (with keys) returns
    # for the whole page. An exact read-back needs a tail that starts on a
    # page boundary: small runs entirely live (no Parquet file) and std-long
    # with its last page live. A tail starting inside a page is probed and
    # its duplicated rows reported (stats), not failed.
    if args.live_pass:
        t0 = time.time()
        api2 = wandb.Api(overrides={"base_url": base, "entity": entity, "project": project},
                         api_key=args.api_key, timeout=60)
        plan = []
        for rid in args.live_runs:
            if rid not in exp:
                continue
            n = len(exp[rid].history)
            steps = [st for st, *_ in exp[rid].history]
            if n > 1000 and steps == list(range(n)):
                plan.append((rid, n % 1000 or 1000))
            else:
                plan.append((rid, n))
        try:
            for rid, tail in plan:
                admin(base, "/_testbed/live", {"run": rid, "steps": tail})
                run = api2.run(f"{path}/{rid}")
                erows = expected_rows(exp[rid])
                lab = f"{rid} with a {tail}-row live tail"
                t1 = time.time()
                compare_rows(f"{lab}: scan_history()", erows,
                             list(run.scan_history(use_cache=False)), diffs, step_order=True)
                t2 = time.time()
                keys = [p[0] for p in erows[-1] if p[0] not in ("_step", "_runtime", "_timestamp")][:1]
                compare_rows(f"{lab}: scan_history(keys={keys})", erows,
                             list(run.scan_history(keys=keys, use_cache=False)), diffs, keys=keys,
                             step_order=True)
                stats.setdefault("live_scan_s", {})[rid] = [round(t2 - t1, 2), round(time.time() - t2, 2)]
            stats["live_tail_runs"] = dict(plan)
            probe = "std-values" if "std-values" in exp else None
            if probe:
                admin(base, "/_testbed/live", {"run": probe, "steps": 3})
                got = list(api2.run(f"{path}/{probe}").scan_history(use_cache=False))
                stats["mid_page_tail_probe"] = {"run": probe, "tail": 3, "rows": len(got),
                                                "logged": len(exp[probe].history)}
        finally:
            admin(base, "/_testbed/reset", {"live": True})
        stats["live_s"] = round(time.time() - t0, 1)

    # ---- faults: the official client retries through them -----------------------
    if args.fault_pass and "std-values" in exp:
        t0 = time.time()
        rules = [
            {"operation": "Runs", "action": "status", "status": 500, "times": 1},
            {"operation": "Run", "action": "reset", "times": 1},
            {"operation": "RunParquetHistory", "action": "status", "status": 429,
             "retry_after": 1, "ratelimit_reset": 1, "times": 1},
            {"origin": "files", "action": "status", "status": 503, "times": 1},
            {"origin": "files", "action": "reset", "times": 1},
            {"operation": "RunHistoryKeys", "action": "delay", "delay": 0.2, "times": 1},
        ]
        admin(base, "/_testbed/faults", {"rules": rules})
        try:
            api3 = wandb.Api(overrides={"base_url": base, "entity": entity, "project": project},
                             api_key=args.api_key, timeout=60)
            want = [r.run_id for r in sorted(runs, key=lambda r: (r.created_at, r.run_id))]
            got = [r.id for r in api3.runs(path, per_page=3)]
            if got != want:
                diffs.add(f"runs() through faults: got {got}, expected {want}")
            run = api3.run(f"{path}/std-values")
            compare_rows("std-values scan_history() through faults", expected_rows(exp["std-values"]),
                         list(run.scan_history(use_cache=False)), diffs, step_order=True)
            for r in admin(base, "/_testbed/faults")["rules"]:
                if r["hits"] != r["times"]:
                    diffs.add(f"fault rule {r['index']} ({r['action']}) applied {r['hits']} times, "
                              f"expected {r['times']}")
        finally:
            admin(base, "/_testbed/reset", {"faults": True})
        stats["faults_s"] = round(time.time() - t0, 1)

    # ---- what the servers saw ---------------------------------------------------
    req = admin(base, "/_testbed/requests")
    stats["requests"] = req["by_origin"]
    stats["operations"] = req["by_operation"]
    f = req["files"]
    if f["rejected_credentials"]:
        diffs.add(f"credentials reached the file origin {f['rejected_credentials']} times: "
                  f"{req['credential_leaks'][:3]}")
    if not f["downloads"] + f["range_requests"]:
        diffs.add("no Parquet file was downloaded")
    api_entries = [e for e in req["log"] if e["origin"] == "api" and e.get("graphql")]
    no_cred = [e for e in api_entries if not e["credentials"]]
    if no_cred:
        diffs.add(f"{len(no_cred)} API requests without credentials")
    bad = [e for e in req["log"] if e["origin"] == "api" and e.get("status") != 200 and not e.get("fault")]
    for e in bad[:5]:
        diffs.add(f"API answered {e.get('status')} to {e.get('operation')}: {show(e.get('errors'), 300)}")
    stats["file_downloads"] = f["downloads"]
    stats["file_range_requests"] = f["range_requests"]


def check_sampled(label, exp_rows, got_rows, samples, diffs):
    """A sampled read of a long run: `samples` rows, steps increasing, each
    equal to the logged row at its step."""
    if len(got_rows) != samples:
        diffs.add(f"{label}: {len(got_rows)} rows, expected {samples} samples")
    by_step = {r[("_step",)]: r for r in exp_rows}
    prev = -1
    for g in got_rows:
        gl = row_leaves(g)
        s = gl.get(("_step",))
        e = by_step.get(s)
        if e is None or not isinstance(s, int) or s <= prev:
            diffs.add(f"{label}: unexpected step {s!r}")
            return
        prev = s
        for p, v in e.items():
            if p in gl and not leaf_same(v, gl[p]):
                diffs.add(f"{label}: step {s} {pname(p)}: got {show(gl[p])}, expected {show(v)}")
                return
        if set(gl) - set(e):
            diffs.add(f"{label}: step {s}: extra keys {sorted(pname(p) for p in set(gl) - set(e))}")
            return


# --------------------------------------------------------------------------
# System metrics (the events stream)
# --------------------------------------------------------------------------

ALL_SAMPLES = 1_000_000  # more than any run's events lines: nothing sampled

EVENTS_COUNT_QUERY = """
query RunEventsLineCount($project: String!, $entity: String!, $name: String!) {
    project(name: $project, entityName: $entity) { run(name: $name) { eventsLineCount } }
}
"""


def api_system_rows(run_id: str, lines: list[dict], pats=None) -> list[tuple]:
    """The system table's rows from the API's events lines, as runport reads
    them: `system.<key>` without the prefix (`_wandb`, `_timestamp` and
    `_runtime` are not keys), timestamp = round-half-away(`_timestamp` *
    1e6), value = float64 for a number and None for anything else, sorted by
    (key, timestamp) with ties in line order."""
    rows = []
    for line in lines:
        us = ref.seconds_to_us(line.get("_timestamp"))
        for k, v in line.items():
            if k.startswith("system.") and ref.selected(pats, k):
                rows.append((run_id, us, k[len("system."):], ref.stats_number(v)))
    rows.sort(key=lambda x: (x[2], -1 if x[1] is None else x[1]))
    return rows


def compare_system_rows(label, exp: list[tuple], got: list[tuple], diffs: Diffs) -> int:
    """Rows (run_id, µs, key, value) in order: the same count, each field
    equal; values by bits (NaN equals NaN; -0.0 is not 0.0)."""
    if len(exp) != len(got):
        diffs.add(f"{label}: {len(got)} rows, expected {len(exp)}")
        count = {}
        for sign, rows in ((1, exp), (-1, got)):
            for r in rows:
                count[(r[0], r[2])] = count.get((r[0], r[2]), 0) + sign
        for (rid, key), n in sorted(count.items()):
            if n:
                diffs.add(f"{label}: run {rid} key {key!r}: {'missing' if n > 0 else 'extra'} {abs(n)} rows")
    for i, (e, g) in enumerate(zip(exp, got)):
        if e[:3] != g[:3] or not ref.float_eq(e[3], g[3]) or (e[3] is None) != (g[3] is None):
            diffs.add(f"{label}: row {i}: got {show(list(g))}, expected {show(list(e))}")
    return len(got)


def check_system_pass(api, path, runs, diffs: Diffs, stats: dict):
    """The official client's system metrics against the reference's reading
    of the stats records: every run whole (rows, `_runtime` = `_timestamp` -
    the run's start, `_wandb`, eventsLineCount) and, for runs with more than
    5 lines, `samples=5` (5 evenly spaced lines, the first and the last)."""
    t0 = time.time()
    lines_total = rows_total = 0
    sampled = 0
    for e in sorted(runs, key=lambda r: r.run_id):
        run = api.run(f"{path}/{e.run_id}")
        lines = run.history(stream="system", pandas=False, samples=ALL_SAMPLES)
        lines_total += len(lines)
        label = f"{e.run_id} history(stream='system')"
        if len(lines) != len(e.system):
            diffs.add(f"{label}: {len(lines)} lines, expected {len(e.system)} (stats records)")
        for i, (line, rec) in enumerate(zip(lines, e.system)):
            _seg, ts_s, _us, _items = rec
            if line.get("_wandb") is not True:
                diffs.add(f"{label}: line {i} has _wandb = {show(line.get('_wandb'))}")
            if line.get("_timestamp") != ts_s:
                diffs.add(f"{label}: line {i} _timestamp {show(line.get('_timestamp'))}, expected {ts_s!r}")
            if e.start_s is not None and line.get("_runtime") != ts_s - e.start_s:
                diffs.add(f"{label}: line {i} _runtime {show(line.get('_runtime'))}, "
                          f"expected {ts_s - e.start_s!r}")
            extra = [k for k in line if not k.startswith("system.") and k not in ("_wandb", "_timestamp", "_runtime")]
            if extra:
                diffs.add(f"{label}: line {i} has other keys {extra}")
        exp = [r[:4] for r in ref.system_rows([e])]
        rows_total += compare_system_rows(label, exp, api_system_rows(e.run_id, lines), diffs)
        count = run._exec(EVENTS_COUNT_QUERY)["project"]["run"]["eventsLineCount"]
        if count != len(e.system):
            diffs.add(f"{e.run_id}: eventsLineCount {count!r}, expected {len(e.system)}")
        if len(e.system) > 5:
            got = run.history(stream="system", pandas=False, samples=5)
            n = len(e.system)
            idx = [round(j * (n - 1) / 4) for j in range(5)]
            if [g.get("_timestamp") for g in got] != [e.system[i][1] for i in idx]:
                diffs.add(f"{e.run_id} history(stream='system', samples=5): _timestamp "
                          f"{show([g.get('_timestamp') for g in got])}, expected lines {idx} "
                          f"{show([e.system[i][1] for i in idx])}")
            sampled += 1
    stats["system"] = {"runs": len(runs), "lines": lines_total, "rows": rows_total, "sampled_runs": sampled,
                       "s": round(time.time() - t0, 1)}


def read_system_export(export: Path) -> list[tuple]:
    """runport's system table: every OUT/system/part-*.parquet in name order,
    as rows (run_id, µs, key, value)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = sorted((export / "system").glob("part-*.parquet"))
    if not parts:
        return None
    t = pa.concat_tables([pq.read_table(p) for p in parts])
    # a dictionary-encoded string column is a string column here (the types
    # are wandb_reference.py check-system's business; this compares values)
    t = t.cast(pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                          for f in t.schema]))
    want = [("run_id", pa.string()), ("timestamp", pa.timestamp("us", tz="UTC")),
            ("key", pa.string()), ("value", pa.float64())]
    if [(f.name, f.type) for f in t.schema] != want:
        raise ValueError(f"system table schema {[(f.name, str(f.type)) for f in t.schema]}, "
                         f"expected {[(n, str(ty)) for n, ty in want]}")
    ts = pc.cast(t.column("timestamp"), pa.int64()).to_pylist()
    return list(zip(t.column("run_id").to_pylist(), ts, t.column("key").to_pylist(),
                    t.column("value").to_pylist()))


def run_system_export_check(args, info, diffs: Diffs, stats: dict):
    """--system EXPORT: every run of the project read with the official
    client, compared with runport's system table."""
    import wandb

    base, entity, project = info["base_url"], info["entity"], info["project"]
    path = f"{entity}/{project}"
    api = wandb.Api(overrides={"base_url": base, "entity": entity, "project": project},
                    api_key=args.api_key, timeout=60)
    pats = ref.select_patterns(args.select)
    exp = []
    lines_total = 0
    listed = sorted(r.id for r in api.runs(path, per_page=50))
    for rid in listed:
        lines = api.run(f"{path}/{rid}").history(stream="system", pandas=False, samples=ALL_SAMPLES)
        lines_total += len(lines)
        exp.extend(api_system_rows(rid, lines, pats))
    stats.update(runs=len(listed), lines=lines_total, rows=len(exp))
    try:
        got = read_system_export(Path(args.system))
    except ValueError as e:
        diffs.add(f"{args.system}/system: {e}")
        return
    if got is None:
        if exp:
            diffs.add(f"{args.system}/system/part-*.parquet: no system files, the API has {len(exp)} rows "
                      f"of {len({r[0] for r in exp})} runs")
        return
    compare_system_rows(f"{args.system}/system", exp, got, diffs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", help="folder with the .wandb files the server serves "
                                   "(not needed with --base-url and --system)")
    ap.add_argument("--base-url", help="a running test server (default: start one)")
    ap.add_argument("--api-key", default=DEFAULT_KEY)
    ap.add_argument("--entity", default="testbed")
    ap.add_argument("--project", default="runport-testbed")
    ap.add_argument("--debug-flip", choices=["history", "summary", "config", "system"],
                    help="start the server with one wrong value (the check must fail)")
    ap.add_argument("--system", metavar="EXPORT",
                    help="only compare every run's system metrics with runport's EXPORT/system/part-*.parquet")
    ap.add_argument("--select", default=None,
                    help="with --system: the export's --select (comma-separated globs over system.<key>)")
    ap.add_argument("--part-rows", type=int, default=None, help="rows per Parquet part (server)")
    ap.add_argument("--no-live", dest="live_pass", action="store_false",
                    help="skip the pass with live (not exported) history tails")
    ap.add_argument("--no-faults", dest="fault_pass", action="store_false",
                    help="skip the pass with injected 429/500/503/resets")
    ap.add_argument("--live-runs", nargs="*", default=["std-values", "std-steps", "std-killed", "std-long"])
    ap.add_argument("-v", "--verbose", action="store_true", help="print timings and request counts")
    args = ap.parse_args(argv)
    if not args.runs and not (args.base_url and args.system):
        ap.error("--runs is required (unless --system with --base-url)")
    try:
        ref.select_patterns(args.select)
    except ValueError as e:
        ap.error(str(e))

    t_start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="wandb-official-check-"))
    proc = None
    hole = BlackHole()
    diffs = Diffs()
    stats: dict = {}
    try:
        t0 = time.time()
        if not args.base_url:
            proc = start_server(args, tmp / "server-cache")
        runs = []
        if not args.system:
            # the reference reads the files while the server loads them
            runs, failures = ref.read_runs(Path(args.runs))
            for f in failures:
                diffs.add(f"reference could not read {f}")
            stats["reference_s"] = round(time.time() - t0, 1)
        if args.base_url:
            info = {"base_url": args.base_url.rstrip("/"), "entity": args.entity, "project": args.project}
        else:
            info = server_ready(proc)
            stats["server_ready_s"] = round(time.time() - t0, 1)
        if not args.system:
            # (with --system the server may be the one a test just exported
            # from: its request log is left as it is)
            admin(info["base_url"], "/_testbed/reset", {"requests": True})
        isolate_env(tmp / "client", info["base_url"], args.api_key, hole.port)
        try:
            if args.system:
                run_system_export_check(args, info, diffs, stats)
            else:
                run_check(args, info, runs, diffs, stats)
        except Exception as e:  # a client error is a failure with its message
            import traceback
            traceback.print_exc()
            diffs.add(f"official client raised {type(e).__name__}: {e}")
        if hole.attempts:
            diffs.add(f"{len(hole.attempts)} connection attempts to other hosts: {hole.attempts[:3]}")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    total = round(time.time() - t_start, 1)
    if diffs:
        print(f"official client check FAILED: {diffs.total} differences", file=sys.stderr)
        for d in diffs.items:
            print("  " + d, file=sys.stderr)
        print("stats: " + json.dumps(stats), file=sys.stderr)
        return 1
    if args.system:
        print(f"official client (wandb 0.31.0) system metrics equal {args.system}/system: "
              f"{stats.get('runs')} runs, {stats.get('lines')} events lines, {stats.get('rows')} rows"
              + (f" (--select {args.select})" if args.select is not None else "") + f", {total} s")
        return 0
    print(f"official client (wandb 0.31.0) read back everything: {stats.get('listings')} listings, "
          f"{stats.get('history_rows')} history rows, {stats.get('system', {}).get('lines')} system lines, "
          f"{stats.get('file_downloads')} Parquet downloads, "
          f"requests {json.dumps(stats.get('requests'))}, {total} s")
    if args.verbose:
        print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
