#!/usr/bin/env python3
"""runport against the official W&B client and a raw-transfer floor, on the
W&B API test server.

    target/testbed-venv/bin/python benches/compare_wandb_api.py \\
        [--runs 1000] [--steps 10000] [--keys 10] [--concurrency 16] [--quick]

Builds runport (`cargo build --release`), starts tests/testbed/wandb_server.py
with one project of synthetic runs (`--synthetic RUNS:STEPS:KEYS:SEED`, Parquet
files cached under --cache), makes one unmeasured pass that has the server
write every history file, then measures, one after the other against the same
server:

  runport            runport export wandb://E/P --base-url URL --json
                     (config, summary and the full history, long layout)
  floor              the HTTP requests runport makes (the listing pages with
                     runport's document, one RunParquetHistory request per
                     run, the Parquet downloads) from --concurrency threads
                     with keep-alive connections; bodies read and discarded
  official scan      wandb.Api: api.runs(path, lazy=False), then
                     run.scan_history() for every run; rows written as the
                     long table with pyarrow, config and summary flattened
                     into a runs table
  official histories the same with Runs.histories(samples=STEPS) (its default
                     samples=500 returns at most 500 sampled rows per run)

The official client reads one run after the other; with more runs than
--official-runs (default 50) it reads that many (the first runs by creation
time) and the time for all runs is extrapolated linearly; the table says so.

Each command runs as a child process; its wall time and its own peak RSS
(os.wait4) are measured, and the RSS of its process tree (the official client
starts wandb-core) is sampled. The server's request accounting
(/_testbed/requests) is reset before each command and read after it: runport
and the floor must have made the same requests. Exits 1 when runport reports
failures, a command fails, request counts of runport and the floor differ, or
history row counts disagree between tools.

Run it with the test-bed venv (tests/testbed/requirements.txt).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTBED = ROOT / "tests" / "testbed"
VENV_PYTHON = ROOT / "target" / "testbed-venv" / "bin" / "python"
RUNPORT = ROOT / "target" / "release" / "runport"
ROW_COLUMNS = ("_step", "_timestamp", "_runtime")
MIB = 1024 * 1024


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    Measured, TreeSampler, admin, api_env, build_runport, load_lines, machine_busy_s, proc_cpu_s,
    request_counts, run_child, runport_rows_by_run, shown, start_background, stop_background)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Machine: CPU, RSS of a process tree, loopback bytes
# --------------------------------------------------------------------------

def loopback_bytes() -> int | None:
    try:
        return int(Path("/sys/class/net/lo/statistics/rx_bytes").read_text())
    except OSError:
        return None


class ApiMeasured(Measured):
    def __init__(self, name: str):
        super().__init__(name)
        self.tree_peak = 0
        self.lo_bytes: int | None = None
        self.requests: dict = {}
        self.load = (0.0, 0.0)


def measure(name: str, argv: list[str], env: dict, logs: Path, server_pid: int,
            cpus: set[int] | None = None) -> ApiMeasured:
    """Runs argv; wall time, its own peak RSS and CPU time (os.wait4), the
    sampled peak RSS of its process tree, the server's and everything else's
    CPU seconds meanwhile, and the loopback bytes."""
    m = ApiMeasured(name)
    log(f"[{name}] {shown(argv)}")
    m.load = (os.getloadavg()[0], 0.0)
    lo0, busy0, srv0 = loopback_bytes(), machine_busy_s(), proc_cpu_s(server_pid)
    tree = TreeSampler()

    def started(proc):
        tree.start(proc.pid)
        return tree.stop

    run_child(m, argv, logs, ROOT, env, started, cpus)
    lo1, busy1, srv1 = loopback_bytes(), machine_busy_s(), proc_cpu_s(server_pid)
    m.load = (m.load[0], os.getloadavg()[0])
    m.tree_peak = max(tree.peak, m.maxrss_kib * 1024)
    # wait4 counts the child and the descendants it reaped; a helper it left
    # running (wandb-core) only shows in the samples
    m.cpu_s = max(m.cpu_s, sum(tree.cpu.values()))
    m.server_cpu_s = srv1 - srv0
    m.other_cpu_s = max(0.0, (busy1 - busy0) - m.cpu_s - m.server_cpu_s)
    m.lo_bytes = None if lo0 is None or lo1 is None else lo1 - lo0
    log(f"[{name}] {m.seconds:.2f} s, peak RSS {m.rss_mib:.0f} MiB (tree {m.tree_peak / MIB:.0f}), "
        f"CPU {m.cpu_s:.1f} s, server CPU {m.server_cpu_s:.1f} s, other CPU {m.other_cpu_s:.1f} s, "
        f"exit {m.status}")
    if m.status != 0:
        log(m.stderr[-4000:])
    return m


# --------------------------------------------------------------------------
# The test server
# --------------------------------------------------------------------------


def start_server(python: str, spec: str, key: str, cache: Path, logs: Path, cpus: set[int] | None = None):
    cmd = [python, str(TESTBED / "wandb_server.py"), "--synthetic", spec, "--port", "0",
           "--files-port", "0", "--api-key", key, "--cache", str(cache), "--exit-with-stdin"]
    return start_background(cmd, ROOT, logs / "server.stderr", "the test server", cpus)


# --------------------------------------------------------------------------
# The floor (child process): runport's requests, bodies discarded
# --------------------------------------------------------------------------


class Conns:
    """Keep-alive HTTP/1.1 connections of one thread, one per origin."""

    def __init__(self):
        self.conns: dict[tuple[str, int], HTTPConnection] = {}

    def get(self, host: str, port: int) -> HTTPConnection:
        c = self.conns.get((host, port))
        if c is None:
            c = HTTPConnection(host, port, timeout=300)
            c.connect()
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[(host, port)] = c
        return c

    def request(self, url: str, method="GET", body: bytes | None = None, headers=None,
                sink: bytearray | None = None) -> tuple[int, bytes | None, int]:
        """Sends one request; returns (status, body or None when discarded, body length)."""
        u = urllib.parse.urlsplit(url)
        target = u.path + (f"?{u.query}" if u.query else "")
        c = self.get(u.hostname, u.port or 80)
        c.request(method, target, body=body, headers=headers or {})
        resp = c.getresponse()
        if sink is None:
            data = resp.read()
            return resp.status, data, len(data)
        n, view = 0, memoryview(sink)
        while True:
            k = resp.readinto(view)
            if not k:
                break
            n += k
        return resp.status, None, n


def floor_main(cfg: dict) -> int:
    key = os.environ["WANDB_API_KEY"]
    auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
    gql_url = cfg["base_url"].rstrip("/") + "/graphql"
    api_headers = {"Content-Type": "application/json", "Authorization": auth,
                   "User-Agent": "runport-bench-floor", "Accept": "*/*"}
    base_vars = {"entity": cfg["entity"], "project": cfg["project"]}
    t0 = time.perf_counter()
    stats = {"api_requests": 0, "file_requests": 0, "api_bytes": 0, "file_bytes": 0, "errors": []}
    lock = threading.Lock()

    # listing: sequential pages, runport's document and variables
    main = Conns()
    names, wide_rows, long_rows = [], 0, 0
    cursor, page = None, 0
    while True:
        page += 1
        vars_ = dict(base_vars, cursor=cursor, perPage=cfg["per_page"], order="+created_at",
                     filters=None)
        body = json.dumps({"query": cfg["listing_document"], "variables": vars_}).encode()
        status, data, n = main.request(gql_url, "POST", body, api_headers)
        stats["api_requests"] += 1
        stats["api_bytes"] += n
        if status != 200:
            print(f"listing page {page}: HTTP {status}", file=sys.stderr)
            return 1
        runs = json.loads(data)["data"]["project"]["runs"]
        for e in runs["edges"]:
            node = e["node"]
            names.append(node["name"])
            hk = node.get("historyKeys") or {}
            if isinstance(hk, str):
                hk = json.loads(hk)
            nkeys = sum(1 for k in (hk.get("keys") or {}) if k not in ROW_COLUMNS)
            lines = node.get("historyLineCount") or 0
            wide_rows += lines
            long_rows += lines * nkeys
        info = runs["pageInfo"]
        if not info.get("hasNextPage"):
            break
        cursor = info["endCursor"]
    t_list = time.perf_counter() - t0

    # per run: RunParquetHistory, then its files, from `concurrency` threads
    todo: queue.Queue = queue.Queue()
    for n in sorted(names):
        todo.put(n)

    def worker():
        conns, sink = Conns(), bytearray(1 << 20)
        a_req = a_bytes = f_req = f_bytes = 0
        while True:
            try:
                name = todo.get_nowait()
            except queue.Empty:
                break
            body = json.dumps({"query": cfg["parquet_document"],
                               "variables": dict(base_vars, name=name, liveKeys=["_step"])}).encode()
            try:
                status, data, n = conns.request(gql_url, "POST", body, api_headers)
                a_req += 1
                a_bytes += n
                if status != 200:
                    raise RuntimeError(f"RunParquetHistory {name}: HTTP {status}")
                ph = json.loads(data)["data"]["project"]["run"]["parquetHistory"]
                for url in ph.get("parquetUrls") or []:
                    status, _, n = conns.request(url, "GET", headers={"User-Agent": "runport-bench-floor"},
                                                 sink=sink)
                    f_req += 1
                    f_bytes += n
                    if status != 200:
                        raise RuntimeError(f"history file of {name}: HTTP {status}")
            except Exception as e:  # noqa: BLE001 - reported, makes the floor fail
                with lock:
                    stats["errors"].append(f"{type(e).__name__}: {e}")
        with lock:
            stats["api_requests"] += a_req
            stats["api_bytes"] += a_bytes
            stats["file_requests"] += f_req
            stats["file_bytes"] += f_bytes

    threads = [threading.Thread(target=worker) for _ in range(cfg["concurrency"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.update(runs=len(names), listing_pages=page, wide_rows=wide_rows, history_rows=long_rows,
                 listing_seconds=round(t_list, 3), seconds=round(time.perf_counter() - t0, 3))
    print(json.dumps(stats))
    return 1 if stats["errors"] else 0


# --------------------------------------------------------------------------
# The official client (child process)
# --------------------------------------------------------------------------


def flatten_into(prefix: str, v, out: dict) -> None:
    if isinstance(v, dict) and v and "_type" not in v:
        for k, x in v.items():
            flatten_into(f"{prefix}.{k}", x, out)
    else:
        out[prefix] = v


class LongWriter:
    """The long history table (run_id, step, timestamp, runtime_s, key,
    value, value_json), written with pyarrow one run at a time."""

    def __init__(self, path: Path):
        import pyarrow as pa
        self.pa = pa
        self.schema = pa.schema([
            ("run_id", pa.string()), ("step", pa.int64()), ("timestamp", pa.timestamp("us", tz="UTC")),
            ("runtime_s", pa.float64()), ("key", pa.string()), ("value", pa.float64()),
            ("value_json", pa.string())])
        import pyarrow.parquet as pq
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self.rows = 0

    def write_run(self, run_id: str, rows) -> int:
        steps, ts, rt, keys, vals, vjson = [], [], [], [], [], []
        for row in rows:
            s = row.get("_step")
            t = row.get("_timestamp")
            t = None if t is None else int(round(float(t) * 1e6))
            r = row.get("_runtime")
            leaves: dict = {}
            for k, v in row.items():
                if k in ROW_COLUMNS or k == "run_id":
                    continue
                flatten_into(k, v, leaves)
            for k, v in leaves.items():
                if v is None:
                    continue
                steps.append(s)
                ts.append(t)
                rt.append(r)
                keys.append(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    vals.append(float(v))
                    vjson.append(None)
                else:
                    vals.append(None)
                    vjson.append(json.dumps(v))
        pa = self.pa
        n = len(steps)
        table = pa.table([pa.array([run_id] * n, pa.string()), pa.array(steps, pa.int64()),
                          pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                          pa.array(rt, pa.float64()), pa.array(keys, pa.string()),
                          pa.array(vals, pa.float64()), pa.array(vjson, pa.string())],
                         schema=self.schema)
        self.writer.write_table(table)
        self.rows += n
        return n

    def close(self):
        self.writer.close()


def run_record(run) -> dict:
    rec = {"run_id": run.id, "name": run.name, "state": run.state, "created_at": run.created_at,
           "group": run.group, "job_type": run.job_type, "tags": list(run.tags or [])}
    for k, v in (run.config or {}).items():
        if k != "_wandb":
            flatten_into(f"config.{k}", v, rec)
    for k, v in (run.summary_metrics or {}).items():
        if k != "_wandb":
            flatten_into(f"summary.{k}", v, rec)
    return rec


def write_runs_table(records: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # mixed kinds in a column: JSON text for every non-identity column
        table = pa.Table.from_pylist([{k: (v if k in ("run_id", "name", "state") else json.dumps(v))
                                       for k, v in r.items()} for r in records])
    pq.write_table(table, str(path), compression="zstd")


def official_main(cfg: dict) -> int:
    t_start = time.perf_counter()
    sys.path.insert(0, str(TESTBED))
    from check_official_client import BlackHole, isolate_env

    tmp = Path(tempfile.mkdtemp(prefix="wandb-official-bench-"))
    hole = BlackHole()
    isolate_env(tmp / "client", cfg["base_url"], os.environ["WANDB_API_KEY"], hole.port)
    import wandb
    out = Path(cfg["out"])
    if out.exists():
        shutil.rmtree(out)
    (out / "history").mkdir(parents=True)
    t0 = time.perf_counter()
    api = wandb.Api(overrides={"base_url": cfg["base_url"], "entity": cfg["entity"],
                               "project": cfg["project"]}, api_key=os.environ["WANDB_API_KEY"], timeout=60)
    path = f"{cfg['entity']}/{cfg['project']}"
    filters = {"name": {"$in": cfg["names"]}} if cfg.get("names") else None
    runs = api.runs(path, filters=filters, per_page=cfg["per_page"], lazy=False)
    writer = LongWriter(out / "history" / "part-00000.parquet")
    records, per_run = [], {}
    if cfg["mode"] == "scan":
        for run in runs:
            records.append(run_record(run))
            per_run[run.id] = writer.write_run(run.id, run.scan_history())
    else:
        rows = runs.histories(samples=cfg["samples"], format="default")
        for run in runs:
            records.append(run_record(run))
        by_run: dict[str, list] = {}
        for row in rows:
            by_run.setdefault(row["run_id"], []).append(row)
        for rid, rs in by_run.items():
            per_run[rid] = writer.write_run(rid, rs)
        del rows, by_run
    writer.close()
    write_runs_table(records, out / "runs.parquet")
    t1 = time.perf_counter()
    print(json.dumps({"runs": len(records), "history_rows": writer.rows, "per_run": per_run,
                      "work_seconds": round(t1 - t0, 3), "import_seconds": round(t0 - t_start, 3),
                      "blackhole_attempts": hole.attempts[:5]}))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if hole.attempts else 0


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------


def runport_plan_documents(env: dict, info: dict, per_page: int, concurrency: int) -> tuple[str, str]:
    """runport's own listing and RunParquetHistory documents (`runport plan`)."""
    r = subprocess.run([str(RUNPORT), "plan", f"wandb://{info['entity']}/{info['project']}",
                        "--base-url", info["base_url"], "--per-page", str(per_page),
                        "--concurrency", str(concurrency), "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    plan = json.loads([l for l in r.stdout.splitlines() if l.strip()][-1])
    stages = {s["stage"]: s for s in plan["stages"]}
    return stages["listing"]["query"], stages["history"]["query"]


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["__floor"]:
        return floor_main(json.loads(argv[1]))
    if argv[:1] == ["__official"]:
        return official_main(json.loads(Path(argv[1]).read_text()))

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000, help="synthetic runs (1000)")
    ap.add_argument("--steps", type=int, default=10000, help="history rows per run (10000)")
    ap.add_argument("--keys", type=int, default=10, help="float keys per row (10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic values (0)")
    ap.add_argument("--quick", action="store_true",
                    help="100 runs x 2000 steps (overrides --runs/--steps), official client on all runs")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight, runport and floor (16)")
    ap.add_argument("--per-page", type=int, default=500, help="runs per listing page (500, runport's default)")
    ap.add_argument("--official-runs", type=int, default=50,
                    help="runs the official client reads; more runs are extrapolated (50)")
    ap.add_argument("--skip-official", action="store_true", help="runport and the floor only")
    ap.add_argument("--skip-histories", action="store_true", help="skip Runs.histories()")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure runport and the floor N times each, alternating; the best counts (1)")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "bench-api",
                    help="exports and logs (default: target/bench-api)")
    ap.add_argument("--cache", type=Path,
                    help="the server's Parquet cache, kept between invocations "
                         "(default: OUT/server-cache)")
    ap.add_argument("--python", type=Path, help="python for the server and the official client "
                    "(default: target/testbed-venv/bin/python if present, else this python)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/runport as it is")
    ap.add_argument("--separate-cores", action="store_true",
                    help="the server on the first CPU, every measured command on the others "
                         "(as if the server ran on a machine of its own)")
    ap.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.steps = 100, 2000
        args.official_runs = max(args.official_runs, args.runs)

    python = str(args.python or (VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)))
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or out / "server-cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)

    if not build_runport(ROOT, RUNPORT, args.no_build, log):
        return 2

    key = "runport_bench_" + secrets.token_hex(20)
    spec = f"{args.runs}:{args.steps}:{args.keys}:{args.seed}"
    load_start = os.getloadavg()
    log(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
        f"({os.cpu_count()} CPUs)")
    server_cpus = client_cpus = None
    if args.separate_cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            log("--separate-cores needs at least 2 CPUs")
            return 2
        server_cpus, client_cpus = {cpus[0]}, set(cpus[1:])
        log(f"separate cores: the server on CPU {cpus[0]}, measured commands on CPUs "
            f"{','.join(map(str, cpus[1:]))}")
    t_server = time.perf_counter()
    server, info = start_server(python, spec, key, cache, logs, server_cpus)
    log(f"test server ready in {time.perf_counter() - t_server:.1f} s: {info['runs']} runs ({spec})")
    base = info["base_url"]
    env = api_env(key)

    status = 0
    results: dict[str, Measured] = {}
    extra: dict[str, dict] = {}
    try:
        listing_doc, parquet_doc = runport_plan_documents(env, info, args.per_page, args.concurrency)
        floor_cfg = json.dumps({"base_url": base, "entity": info["entity"], "project": info["project"],
                                "per_page": args.per_page, "concurrency": args.concurrency,
                                "listing_document": listing_doc, "parquet_document": parquet_doc})
        floor_argv = [python, str(Path(__file__).resolve()), "__floor", floor_cfg]
        runport_argv = [str(RUNPORT), "export", f"wandb://{info['entity']}/{info['project']}",
                        "-o", str(out / "runport"), "--base-url", base, "--json",
                        "--concurrency", str(args.concurrency), "--per-page", str(args.per_page)]

        # warm-up: every history file written (or found in --cache) and read once
        t_warm = time.perf_counter()
        warm = measure("warm-up", floor_argv, env, logs, server.pid, client_cpus)
        log(f"warm-up (every history file written or found in the cache) took "
            f"{time.perf_counter() - t_warm:.1f} s")
        if warm.status != 0:
            log("the warm-up pass failed")
            return 1

        def measured(name, argv_):
            if name == "runport":
                # every runport run starts from an empty directory, as a first export does
                shutil.rmtree(out / "runport", ignore_errors=True)
            admin(base, "/_testbed/reset", {"requests": True})
            m = measure(name, argv_, env, logs, server.pid, client_cpus)
            m.requests = request_counts(base)
            return m

        for i in range(max(1, args.repeat)):
            for name, av in (("runport", runport_argv), ("floor", floor_argv)):
                m = measured(name, av)
                if name not in results or (m.status == 0 and m.seconds < results[name].seconds):
                    results[name] = m

        rp, fl = results["runport"], results["floor"]
        rp_sum, fl_sum = rp.last_json(), fl.last_json()

        official_names = None
        n_official = args.runs
        if not args.skip_official:
            rows_by_run = runport_rows_by_run(out / "runport") if rp.status == 0 else {}
            if args.official_runs < args.runs:
                # the first runs by creation time (synthetic ids follow it)
                official_names = sorted(rows_by_run or
                                        [f"syn-{i:05d}" for i in range(args.runs)])[:args.official_runs]
                n_official = len(official_names)
            modes = [("official scan", "scan")]
            if not args.skip_histories:
                modes.append(("official histories", "histories"))
            for name, mode in modes:
                cfg_path = logs / f"{name.replace(' ', '-')}.json"
                cfg_path.write_text(json.dumps({
                    "mode": mode, "base_url": base, "entity": info["entity"], "project": info["project"],
                    "per_page": args.per_page, "names": official_names, "samples": args.steps,
                    "out": str(out / name.replace(" ", "-"))}))
                m = measured(name, [python, str(Path(__file__).resolve()), "__official", str(cfg_path)])
                results[name] = m
                s = m.last_json() or {}
                # rows must equal runport's rows of the same runs
                if rows_by_run and s.get("per_run") is not None:
                    bad = [(r, n, rows_by_run.get(r)) for r, n in s["per_run"].items()
                           if rows_by_run.get(r) != n]
                    want = sum(rows_by_run.get(r, 0) for r in (official_names or rows_by_run))
                    extra[name] = {"runport_rows_same_runs": want, "mismatched_runs": bad[:5]}
                    if bad or s.get("history_rows") != want or s.get("runs") != n_official:
                        log(f"{name}: history rows differ from runport's: {s.get('history_rows')} "
                            f"rows of {s.get('runs')} runs vs {want}; first runs: {bad[:5]}")
                        status = 1
    finally:
        stop_background(server)
    load_end = os.getloadavg()

    # ------------------------------------------------------------- checks
    for name, m in results.items():
        if m.status != 0:
            log(f"{name} exited with {m.status}; see {logs}")
            status = 1
    rp_rows = (rp_sum or {}).get("rows", {}).get("history")
    if rp_sum is None:
        log("runport: no JSON summary on stdout")
        status = 1
    else:
        if rp_sum.get("failures"):
            log(f"runport: {len(rp_sum['failures'])} runs failed: {rp_sum['failures'][:3]}")
            status = 1
        if rp_sum.get("runs") != args.runs:
            log(f"runport exported {rp_sum.get('runs')} runs, expected {args.runs}")
            status = 1
    if fl_sum is None or fl_sum.get("history_rows") != rp_rows:
        log(f"history rows: runport {rp_rows}, listing (floor) {(fl_sum or {}).get('history_rows')}")
        status = 1
    expected_rows = args.runs * args.steps * args.keys
    if rp_rows != expected_rows:
        log(f"runport wrote {rp_rows} history rows, expected {expected_rows} (runs x steps x keys)")
        status = 1
    same_requests = (rp.requests.get("by_operation") == fl.requests.get("by_operation")
                     and rp.requests.get("by_origin") == fl.requests.get("by_origin")
                     and (rp.requests.get("files") or {}).get("downloads")
                     == (fl.requests.get("files") or {}).get("downloads"))
    if not same_requests:
        log(f"runport and the floor made different requests:\n  runport {json.dumps(rp.requests)}\n"
            f"  floor   {json.dumps(fl.requests)}")
        status = 1
    for name, m in results.items():
        leaks = m.requests.get("credential_leaks") or []
        if leaks:
            log(f"{name}: credentials reached the file origin: {leaks[:3]}")
            status = 1

    # -------------------------------------------------------------- table
    def rows_of(name, m):
        if name == "runport":
            return rp_rows
        if name == "floor":
            return (fl_sum or {}).get("history_rows")
        return (m.last_json() or {}).get("history_rows")

    scale = args.runs / n_official if n_official else 1.0
    est: dict[str, float] = {}
    header = (f"{'command':<19} {'runs':>5} {'seconds':>8} {'est. all':>9} {'rows/s':>11} "
              f"{'Parquet MB':>10} {'loopback MB':>11} {'peak RSS MiB':>12} {'tree MiB':>8} "
              f"{'CPU s':>7} {'server CPU':>10} {'other CPU':>9} {'requests':>8}")
    lines = ["", header, "-" * len(header)]
    for name, m in results.items():
        official = name.startswith("official")
        runs = n_official if official else args.runs
        s = m.last_json() or {}
        if official and runs != args.runs:
            work = s.get("work_seconds")
            est[name] = (m.seconds - (work or 0)) + (work or 0) * scale if work else m.seconds * scale
        else:
            est[name] = m.seconds
        rows = rows_of(name, m)
        files = m.requests.get("files") or {}
        lines.append(
            f"{name:<19} {runs:>5} {m.seconds:>8.2f} {est[name]:>9.1f} "
            f"{fmt(rows / m.seconds if rows else None, ',.0f'):>11} {files.get('bytes', 0) / 1e6:>10.1f} "
            f"{fmt(m.lo_bytes / 1e6 if m.lo_bytes is not None else None, '.1f'):>11} "
            f"{m.rss_mib:>12.1f} {m.tree_peak / MIB:>8.1f} {m.cpu_s:>7.1f} {m.server_cpu_s:>10.1f} "
            f"{m.other_cpu_s:>9.1f} {m.requests.get('total', 0):>8}")
    lines.append("")
    lines.append("cores: the server on CPU " + ",".join(map(str, sorted(server_cpus))) + ", the commands on CPUs "
                 + ",".join(map(str, sorted(client_cpus))) if args.separate_cores else
                 f"cores: the server and the commands share the machine's {os.cpu_count()} CPUs")
    if n_official != args.runs and not args.skip_official:
        lines.append(f"official client: measured on the first {n_official} of {args.runs} runs; "
                     f"'est. all' = start-up + {scale:.0f} x its measured work (linear extrapolation)")
    ratios, met = {}, {}
    if rp.status == 0:
        for name in ("official scan", "official histories"):
            if name in results and results[name].status == 0:
                k = f"{name} / runport seconds (target >= 30)"
                ratios[k] = est[name] / rp.seconds
                met[k] = ratios[k] >= 30
        if fl.status == 0:
            k = "runport / floor seconds (target <= 1.3)"
            ratios[k] = rp.seconds / fl.seconds
            met[k] = ratios[k] <= 1.3
        k = "runport peak RSS MiB (target < 300)"
        ratios[k] = rp.rss_mib
        met[k] = rp.rss_mib < 300
    for k, v in ratios.items():
        lines.append(f"{k:<52} {v:8.2f}  {'met' if met[k] else 'NOT met'}")
    lines.append(f"requests: runport {json.dumps(rp.requests.get('by_operation'))} + "
                 f"{(rp.requests.get('files') or {}).get('downloads')} downloads; floor "
                 f"{json.dumps(fl.requests.get('by_operation'))} + "
                 f"{(fl.requests.get('files') or {}).get('downloads')} downloads: "
                 f"{'the same' if same_requests else 'DIFFERENT'}")
    for name in ("official scan", "official histories"):
        if name in results:
            r = results[name].requests
            lines.append(f"requests: {name} {json.dumps(r.get('by_operation'))} + "
                         f"{(r.get('files') or {}).get('downloads')} downloads")
    lines.extend(load_lines(load_start, load_end, results))
    print("\n".join(lines))

    if args.json_out:
        args.json_out.write_text(json.dumps({
            "runs": args.runs, "steps": args.steps, "keys": args.keys, "concurrency": args.concurrency,
            "separate_cores": args.separate_cores,
            "official_runs": n_official,
            "commands": [{"name": n, "seconds": m.seconds, "estimated_all_runs_seconds": est[n],
                          "peak_rss_mib": m.rss_mib, "tree_peak_rss_mib": m.tree_peak / MIB,
                          "cpu_seconds": m.cpu_s, "server_cpu_seconds": m.server_cpu_s,
                          "other_cpu_seconds": m.other_cpu_s, "loopback_bytes": m.lo_bytes,
                          "exit": m.status, "requests": m.requests, "output": m.last_json(),
                          "checks": extra.get(n)}
                         for n, m in results.items()],
            "ratios": ratios, "load_average": {"start": load_start, "end": load_end},
        }, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
