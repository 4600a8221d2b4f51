#!/usr/bin/env python3
"""runport against the official MLflow client and a raw-request floor, on one
real MLflow tracking server.

    target/testbed-venv/bin/python benches/compare_mlflow.py \\
        [--runs 1000] [--metrics 5] [--steps 1000] [--concurrency 16] [--data DIR]

Builds runport (`cargo build --release`), starts one `mlflow server` on a
SQLite database (tests/testbed/mlflow_testbed.py serve), logs the bench set
into it once with the official client (mlflow_testbed.py populate --set bench;
a marker file written after a complete population lets later invocations reuse
the database), then measures, one after the other, on the same data:

  runport            runport export mlflow+http://HOST:PORT --experiment E --json
                     (runs table and the full history, long layout)
  floor              the HTTP requests runport makes (experiments/search,
                     runs/search pages with runport's max_results and order_by,
                     then the histories as runport asks for them: a
                     metrics/get-history-bulk request per group of runs and
                     key, metrics/get-history per run and key where runport
                     falls back to it, paged as runport pages) from
                     --concurrency threads with keep-alive connections; bodies
                     read and discarded
  runport sqlite     runport export sqlite:///DATA/mlflow.db: the server's
                     database read directly
  official client    mlflow.search_runs(), then MlflowClient.get_metric_history
                     for every run and metric key, written to Parquet with
                     pyarrow (runs table, long history table)

Each command runs as a child process; its wall time, CPU time and its own peak
RSS (os.wait4) are measured, with the server's CPU time meanwhile. With fewer
--official-runs than runs, the official client reads the histories of that
many runs and its time for all runs is extrapolated linearly; the table says
so. Prints a table, the ratios and the targets (runport >= 10x the official
client, <= 1.3x the floor; runport sqlite >= 20x the official client). Exits 1
when a command fails, runport reports failed runs, runport's request count
differs from the floor's, or history row counts disagree between runport
(REST), runport (sqlite) and the official client.

Run it with the test-bed venv (tests/testbed/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTBED = ROOT / "tests" / "testbed"
VENV_PYTHON = ROOT / "target" / "testbed-venv" / "bin" / "python"
RUNPORT = ROOT / "target" / "release" / "runport"
MIB = 1024 * 1024
MARKER = "populated.json"
# How runport asks for histories (connector/sources/mlflow/rest.rs): the page
# size of `metrics/get-history` (HISTORY_PAGE), and for `get-history-bulk` the
# rows an answer holds at most (BULK_MAX), the expected points per request
# (BULK_BUDGET) and the runs per request (BULK_RUNS). If runport asks
# otherwise, its request count stops matching the floor's and the script fails.
HISTORY_PAGE = 25_000
BULK_MAX = 25_000
BULK_BUDGET = 20_000
BULK_RUNS = 100
# runport's default requests in flight for API sources
# (default_concurrency_for in connector/export.rs).
RUNPORT_API_CONCURRENCY = 16
TARGET_OFFICIAL = 10.0
TARGET_FLOOR = 1.3
TARGET_SQLITE = 20.0

sys.path.insert(0, str(TESTBED))
import mlflow_testbed as testbed  # noqa: E402  (stdlib only at import time)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    CLK_TCK, Measured, build_runport, load_lines, machine_busy_s, run_child, runport_rows_by_run, shown,
    start_background)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Measuring one child process
# --------------------------------------------------------------------------



def tree_cpu_s(root: int) -> float:
    """CPU seconds (utime + stime) of `root` and its living descendants."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(stat[1]), []).append(int(d))
            cpu[int(d)] = (int(stat[11]) + int(stat[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0.0, [root]
    while stack:
        p = stack.pop()
        total += cpu.get(p, 0.0)
        stack.extend(children.get(p, []))
    return total


def measure(name: str, argv: list[str], env: dict, logs: Path, server_pid: int | None) -> Measured:
    """Runs argv; its wall time, its own peak RSS and CPU time (os.wait4), and
    the CPU seconds of the server and of everything else on the machine
    meanwhile."""
    log(f"[{name}] {shown(argv)}")
    busy0 = machine_busy_s()
    srv0 = tree_cpu_s(server_pid) if server_pid else 0.0
    m = run_child(Measured(name), argv, logs, ROOT, env)
    busy1 = machine_busy_s()
    srv1 = tree_cpu_s(server_pid) if server_pid else 0.0
    m.server_cpu_s = max(0.0, srv1 - srv0)
    m.other_cpu_s = max(0.0, (busy1 - busy0) - m.cpu_s - m.server_cpu_s)
    log(f"[{name}] {m.seconds:.2f} s, peak RSS {m.rss_mib:.0f} MiB, CPU {m.cpu_s:.1f} s, "
        f"server CPU {m.server_cpu_s:.1f} s, other CPU {m.other_cpu_s:.1f} s, exit {m.status}")
    if m.status != 0:
        log(m.stderr[-4000:])
    return m


# --------------------------------------------------------------------------
# The server and the bench set
# --------------------------------------------------------------------------


def start_server(python: str, db: Path, workers: int, logs: Path):
    """mlflow_testbed.py serve: stays up until its stdin closes."""
    cmd = [python, str(TESTBED / "mlflow_testbed.py"), "serve", "--db", str(db), "--port", "0",
           "--workers", str(workers), "--log", str(logs / "mlflow-server.log")]
    return start_background(cmd, ROOT, logs / "serve.stderr",
                            f"the MLflow server (see also {logs / 'mlflow-server.log'})")


def stop_server(proc) -> None:
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(30)


def count_bench_set(db: Path) -> tuple[int, int, int]:
    """(active runs, finished active runs, their metric rows) of the bench
    experiment, read from the database itself (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        q = ("FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
             "WHERE e.name = ? AND r.lifecycle_stage = 'active'")
        exp = (testbed.BENCH_EXPERIMENT,)
        active = conn.execute(f"SELECT count(*) {q}", exp).fetchone()[0]
        finished = conn.execute(f"SELECT count(*) {q} AND r.status = 'FINISHED'", exp).fetchone()[0]
        rows = conn.execute(f"SELECT count(*) FROM metrics WHERE run_uuid IN (SELECT r.run_uuid {q})",
                            exp).fetchone()[0]
        return active, finished, rows
    finally:
        conn.close()


def marker_ok(data: Path, args) -> bool:
    try:
        m = json.loads((data / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return ((data / "mlflow.db").is_file() and m.get("runs") == args.runs
            and m.get("metrics") == args.metrics and m.get("steps") == args.steps)


def populate(python: str, data: Path, info: dict, args, env: dict, logs: Path) -> None:
    """Logs the bench set through the server (resumes a partial one), checks
    the database holds all of it, then writes the marker."""
    (data / MARKER).unlink(missing_ok=True)
    log(f"populating {data / 'mlflow.db'}: {args.runs} runs x {args.metrics} metrics x "
        f"{args.steps} steps with the official client, {args.jobs} jobs (runs already logged are kept)")
    t0 = time.perf_counter()
    with open(logs / "populate.stderr", "ab") as err:
        r = subprocess.run([python, str(TESTBED / "mlflow_testbed.py"), "populate",
                            "--tracking-uri", info["tracking_uri"], "--set", "bench",
                            "--runs", str(args.runs), "--metrics", str(args.metrics),
                            "--steps", str(args.steps), "--jobs", str(args.jobs)],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"populate failed (exit {r.returncode}); see {logs / 'populate.stderr'}")
    active, runs, rows = count_bench_set(data / "mlflow.db")
    want = args.runs * args.metrics * args.steps
    if active != args.runs or runs != args.runs or rows != want:
        raise SystemExit(f"after populate the database holds {active} active runs ({runs} finished) and "
                         f"{rows} metric rows in {testbed.BENCH_EXPERIMENT!r}, expected {args.runs} "
                         f"finished runs and {want} rows")
    summary = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
    (data / MARKER).write_text(json.dumps({
        "runs": args.runs, "metrics": args.metrics, "steps": args.steps,
        "experiment": testbed.BENCH_EXPERIMENT, "history_rows": rows, "populate_seconds": round(seconds, 1),
        "logged_runs": summary.get("logged_runs"), "skipped_runs": summary.get("skipped"),
        "jobs": args.jobs, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1) + "\n")
    log(f"populated in {seconds:.0f} s: {runs} runs, {rows} metric rows; marker {data / MARKER}")


def warm_file(path: Path) -> None:
    """Reads a file once so that the first command does not pay cold reads."""
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass


# --------------------------------------------------------------------------
# The floor (child process): runport's requests, bodies discarded
# --------------------------------------------------------------------------

TOKEN_RE = re.compile(rb'"next_page_token"\s*:\s*"([^"]*)"')
ROW_RE = re.compile(rb'"run_id"\s*:')


class Conn:
    """One keep-alive HTTP/1.1 connection (TCP_NODELAY), reopened when the
    server closed it between requests."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.c: HTTPConnection | None = None

    def _open(self) -> HTTPConnection:
        c = HTTPConnection(self.host, self.port, timeout=300)
        c.connect()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def request(self, method: str, target: str, body: bytes | None, headers: dict,
                sink: bytearray | None = None) -> tuple[int, bytes, int]:
        """Returns (status, body or its last 512 bytes when read into `sink`, body length)."""
        for attempt in (0, 1):
            if self.c is None:
                self.c = self._open()
            try:
                self.c.request(method, target, body=body, headers=headers)
                resp = self.c.getresponse()
                if sink is None:
                    data = resp.read()
                    return resp.status, data, len(data)
                n, view, tail = 0, memoryview(sink), b""
                while True:
                    k = resp.readinto(view)
                    if not k:
                        break
                    n += k
                    tail = (tail + bytes(view[max(0, k - 512):k]))[-512:]
                return resp.status, tail, n
            except (ConnectionError, OSError) as e:
                # a kept-alive connection the server closed: once more on a new one
                self.c.close()
                self.c = None
                if attempt:
                    raise e
        raise AssertionError("unreachable")


def floor_main(cfg: dict) -> int:
    u = urllib.parse.urlsplit(cfg["base_url"])
    api = u.path.rstrip("/") + "/api/2.0/mlflow/"
    ajax = u.path.rstrip("/") + "/ajax-api/2.0/mlflow/"
    host, port = u.hostname, u.port or 80
    post_headers = {"Content-Type": "application/json", "User-Agent": "runport-bench-floor", "Accept": "*/*"}
    get_headers = {"User-Agent": "runport-bench-floor", "Accept": "*/*"}
    t0 = time.perf_counter()
    stats = {"requests": 0, "bytes": 0, "errors": []}
    lock = threading.Lock()
    main = Conn(host, port)

    def post(endpoint: str, body: dict) -> dict:
        status, data, n = main.request("POST", api + endpoint, json.dumps(body).encode(), post_headers)
        stats["requests"] += 1
        stats["bytes"] += n
        if status != 200:
            raise SystemExit(f"{endpoint}: HTTP {status}: {data[:300]!r}")
        return json.loads(data) if data else {}

    # experiments/search, all pages (runport names experiments with it)
    experiments, token = [], None
    while True:
        body = {"max_results": 1000, "view_type": "ALL"}
        if token:
            body["page_token"] = token
        page = post("experiments/search", body)
        experiments += page.get("experiments", [])
        nxt = page.get("next_page_token")
        if not nxt or nxt == token:
            break
        token = nxt
    ids = []
    for wanted in cfg["experiments"]:
        e = (next((e for e in experiments if e["name"] == wanted), None)
             or next((e for e in experiments if e["experiment_id"] == wanted), None))
        if e is None:
            raise SystemExit(f"no experiment {wanted!r}")
        ids.append(e["experiment_id"])

    # runs/search pages: run ids, metric keys and latest steps (the JSON the floor needs)
    listed, token, pages = [], None, 0
    while True:
        body = {"experiment_ids": ids, "run_view_type": cfg["view"], "max_results": cfg["max_results"],
                "order_by": [cfg["order_by"]]}
        if token:
            body["page_token"] = token
        page = post("runs/search", body)
        pages += 1
        for r in page.get("runs", []):
            rid = r["info"].get("run_id") or r["info"].get("run_uuid")
            metrics = (r.get("data") or {}).get("metrics", [])
            steps = [int(m["step"]) for m in metrics if m.get("step") is not None]
            listed.append((rid, [m["key"] for m in metrics], max(0, max(steps)) + 1 if steps else 1))
        nxt = page.get("next_page_token")
        if not nxt or nxt == token:
            break
        token = nxt
    t_list = time.perf_counter() - t0

    # the history requests, in run-id order as runport reads the runs
    listed = sorted(l for l in listed if l[1])
    tasks = []  # ("one", run_id, key) or ("bulk", key, run_ids)
    if cfg["history"] == "bulk":
        # runport's grouping (plan_groups in rest.rs): runs while their expected
        # points stay within the budget, at most BULK_RUNS; one bulk request per
        # key for the group's runs that have it, when two or more do
        groups, members, points = [], [], 0
        for run in listed:
            if members and (points + run[2] > cfg["bulk_budget"] or len(members) == cfg["bulk_runs"]):
                groups.append(members)
                members, points = [], 0
            members.append(run)
            points += run[2]
        groups.append(members)
        for g in groups:
            by_key: dict[str, list[str]] = {}
            for rid, keys, _ in g:
                for k in keys:
                    by_key.setdefault(k, []).append(rid)
            for rid, keys, _ in g:
                for k in keys:
                    if len(g) < 2 or len(by_key[k]) < 2:
                        tasks.append(((rid, k), ("one", rid, k)))
                    elif by_key[k][0] == rid:
                        tasks.append(((rid, k), ("bulk", k, by_key[k])))
    else:
        tasks = [((rid, k), ("one", rid, k)) for rid, keys, _ in listed for k in keys]
    todo: queue.Queue = queue.Queue()
    for _, t in sorted(tasks, key=lambda t: t[0]):
        todo.put(t)
    pending = [todo.qsize()]  # tasks queued or running
    no_bulk = threading.Event()

    def history(conn, sink, rid, key) -> tuple[int, int]:
        """metrics/get-history of one (run, key), paged; (requests, bytes)."""
        req = nbytes = 0
        token = None
        while True:
            q = [("run_id", rid), ("metric_key", key), ("max_results", str(cfg["history_page"]))]
            if token:
                q.append(("page_token", token))
            status, tail, n = conn.request("GET", api + "metrics/get-history?" + urllib.parse.urlencode(q),
                                           None, get_headers, sink)
            req += 1
            nbytes += n
            if status != 200:
                raise RuntimeError(f"get-history {rid} {key!r}: HTTP {status}")
            # the token follows the points: a look at the body's tail, no JSON parse
            found = TOKEN_RE.search(tail)
            nxt = found.group(1).decode() if found else None
            if not nxt or nxt == token:
                return req, nbytes
            token = nxt

    def bulk(conn, key, rids) -> tuple[int, int, bool]:
        """One get-history-bulk request; (requests, bytes, whether runport uses the answer)."""
        q = [("run_id", r) for r in rids] + [("metric_key", key), ("max_results", str(cfg["bulk_max"]))]
        status, data, n = conn.request("GET", ajax + "metrics/get-history-bulk?" + urllib.parse.urlencode(q),
                                       None, get_headers)
        if status in (400, 404, 405, 501):
            no_bulk.set()
            return 1, n, False
        if status != 200:
            raise RuntimeError(f"get-history-bulk {key!r} of {len(rids)} runs: HTTP {status}")
        # rows counted, not parsed: an answer of bulk_max rows may have been cut
        return 1, n, len(ROW_RE.findall(data)) < cfg["bulk_max"]

    def worker():
        conn, sink = Conn(host, port), bytearray(1 << 20)
        req = nbytes = 0
        while True:
            try:
                task = todo.get_nowait()
            except queue.Empty:
                with lock:
                    if pending[0] == 0:
                        break
                time.sleep(0.001)
                continue
            try:
                if task[0] == "one":
                    r, n = history(conn, sink, task[1], task[2])
                else:
                    r, n, used = (0, 0, False) if no_bulk.is_set() else bulk(conn, task[1], task[2])
                    if not used:  # asked per run, as runport does
                        with lock:
                            pending[0] += len(task[2])
                        for rid in task[2]:
                            todo.put(("one", rid, task[1]))
                req += r
                nbytes += n
            except Exception as e:  # noqa: BLE001 - reported, makes the floor fail
                with lock:
                    stats["errors"].append(f"{type(e).__name__}: {e}")
            with lock:
                pending[0] -= 1
        with lock:
            stats["requests"] += req
            stats["bytes"] += nbytes

    threads = [threading.Thread(target=worker) for _ in range(cfg["concurrency"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.update(runs=len(listed), series=sum(len(k) for _, k, _ in listed), history=cfg["history"],
                 bulk_unavailable=no_bulk.is_set(), listing_pages=pages, listing_seconds=round(t_list, 3),
                 seconds=round(time.perf_counter() - t0, 3))
    print(json.dumps(stats))
    return 1 if stats["errors"] else 0


# --------------------------------------------------------------------------
# The official client (child process)
# --------------------------------------------------------------------------


def official_main(cfg: dict) -> int:
    t_start = time.perf_counter()
    import math

    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    t0 = time.perf_counter()
    mlflow.set_tracking_uri(cfg["tracking_uri"])
    client = MlflowClient(tracking_uri=cfg["tracking_uri"])
    out = Path(cfg["out"])
    if out.exists():
        shutil.rmtree(out)
    (out / "history").mkdir(parents=True)

    df = mlflow.search_runs(experiment_names=cfg["experiments"])
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), str(out / "runs.parquet"),
                   compression="zstd")
    t_search = time.perf_counter()

    df = df.sort_values("start_time", kind="stable")
    metric_cols = [c for c in df.columns if c.startswith("metrics.")]
    limit = cfg.get("history_runs")
    chosen = df if limit is None else df.head(limit)
    ts_type = pa.timestamp("us", tz="UTC")
    schema = pa.schema([("run_id", pa.string()), ("step", pa.int64()), ("timestamp", ts_type),
                        ("runtime_s", pa.float64()), ("key", pa.string()), ("value", pa.float64()),
                        ("value_json", pa.string())])
    writer = pq.ParquetWriter(str(out / "history" / "part-00000.parquet"), schema, compression="zstd")
    per_run, calls, total = {}, 0, 0
    for _, row in chosen.iterrows():
        rid = row["run_id"]
        # the run's keys: its non-empty metrics.<key> columns
        keys = sorted(c[len("metrics."):] for c in metric_cols
                      if row[c] is not None and not (isinstance(row[c], float) and math.isnan(row[c])))
        run_ids, steps, stamps, names, values = [], [], [], [], []
        for key in keys:
            hist = client.get_metric_history(rid, key)
            calls += 1
            for m in hist:
                run_ids.append(rid)
                steps.append(m.step)
                stamps.append(m.timestamp * 1000)
                names.append(key)
                values.append(m.value)
        n = len(steps)
        writer.write_table(pa.table([
            pa.array(run_ids, pa.string()), pa.array(steps, pa.int64()),
            pa.array(stamps, pa.int64()).cast(ts_type), pa.nulls(n, pa.float64()),
            pa.array(names, pa.string()), pa.array(values, pa.float64()), pa.nulls(n, pa.string())],
            schema=schema))
        per_run[rid] = n
        total += n
    writer.close()
    t1 = time.perf_counter()
    print(json.dumps({"runs": len(df), "history_runs": len(per_run), "history_calls": calls,
                      "history_rows": total, "per_run": per_run,
                      "import_seconds": round(t0 - t_start, 3), "search_seconds": round(t_search - t0, 3),
                      "history_seconds": round(t1 - t_search, 3)}))
    return 0


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------


def runport_plan(source: str, experiment: str, concurrency: int, env: dict) -> dict:
    """runport's listing parameters (`runport plan --json`; it sends no request)."""
    r = subprocess.run([str(RUNPORT), "plan", source, "--experiment", experiment,
                        "--concurrency", str(concurrency), "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    plan = json.loads([l for l in r.stdout.splitlines() if l.strip()][-1])
    return {s["stage"]: s for s in plan["stages"]}["listing"]


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["__floor"]:
        return floor_main(json.loads(Path(argv[1]).read_text()))
    if argv[:1] == ["__official"]:
        return official_main(json.loads(Path(argv[1]).read_text()))

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000, help="bench runs (1000)")
    ap.add_argument("--metrics", type=int, default=5, help="metric keys per run (5)")
    ap.add_argument("--steps", type=int, default=1000, help="steps per metric (1000)")
    ap.add_argument("--concurrency", type=int, default=RUNPORT_API_CONCURRENCY,
                    help=f"requests in flight, runport and the floor (runport's default, "
                         f"{RUNPORT_API_CONCURRENCY})")
    ap.add_argument("--data", type=Path,
                    help="the server's database DATA/mlflow.db, populated once and reused "
                         "(default: target/bench-mlflow/r<runs>-m<metrics>-s<steps>)")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "bench-mlflow" / "out",
                    help="exports and logs (default: target/bench-mlflow/out)")
    ap.add_argument("--official-runs", type=int,
                    help="runs whose histories the official client reads; the time for all runs "
                         "is extrapolated linearly (default: all runs)")
    ap.add_argument("--floor-history", choices=["bulk", "per-key"], default="bulk",
                    help="the floor's history requests: runport's get-history-bulk groups with "
                         "get-history where runport falls back to it (bulk), or get-history per run "
                         "and key only (per-key), for runport versions without bulk requests")
    ap.add_argument("--jobs", type=int, default=2, help="processes logging the bench set (2)")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers of the server (2)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure runport, the floor and runport sqlite N times each; the fastest counts (1)")
    ap.add_argument("--populate-only", action="store_true",
                    help="make sure the bench set is in DATA, then stop (nothing measured)")
    ap.add_argument("--skip-official", action="store_true", help="runport, the floor and runport sqlite only")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="skip the unmeasured floor pass made before measuring")
    ap.add_argument("--python", type=Path, help="python for the server and the official client "
                    "(default: target/testbed-venv/bin/python if present, else this python)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/runport as it is")
    ap.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    args = ap.parse_args(argv)
    if args.official_runs is not None and not 0 < args.official_runs:
        ap.error("--official-runs must be positive")

    python = str(args.python or (VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)))
    data = (args.data or ROOT / "target" / "bench-mlflow" /
            f"r{args.runs}-m{args.metrics}-s{args.steps}").resolve()
    data.mkdir(parents=True, exist_ok=True)
    db = data / "mlflow.db"
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    experiment = testbed.BENCH_EXPERIMENT

    if args.populate_only and marker_ok(data, args):
        log(f"bench set already in {db} ({data / MARKER})")
        return 0
    if not args.populate_only:
        if not build_runport(ROOT, RUNPORT, args.no_build, log):
            return 2

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(testbed.OFFLINE_ENV)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"

    load_start = os.getloadavg()
    log(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
        f"({os.cpu_count()} CPUs)")
    t_server = time.perf_counter()
    server, info = start_server(python, db, args.workers, logs)
    base = info["tracking_uri"]
    server_pid = info.get("pid")
    log(f"mlflow server ready in {time.perf_counter() - t_server:.1f} s at {base} ({db})")

    status = 0
    results: dict[str, Measured] = {}
    n_official = args.runs
    try:
        if marker_ok(data, args):
            log(f"bench set already in {db} ({data / MARKER})")
        else:
            populate(python, data, info, args, env, logs)
        if args.populate_only:
            return 0

        source = "mlflow+" + base
        sqlite_source = f"sqlite:///{db}"
        listing = runport_plan(source, experiment, args.concurrency, env)
        floor_cfg = logs / "floor.json"
        floor_cfg.write_text(json.dumps({
            "base_url": base, "experiments": [experiment], "view": "ACTIVE_ONLY",
            "max_results": listing["max_results"], "order_by": listing["order_by"],
            "history": args.floor_history, "history_page": HISTORY_PAGE, "bulk_max": BULK_MAX,
            "bulk_budget": BULK_BUDGET, "bulk_runs": BULK_RUNS, "concurrency": args.concurrency}))
        floor_argv = [python, str(Path(__file__).resolve()), "__floor", str(floor_cfg)]

        def runport_argv(src, dest, *extra):
            return [str(RUNPORT), "export", src, "-o", str(fresh(dest)), "--experiment", experiment,
                    "--json", *extra]

        log("reading the database once (page cache)")
        warm_file(db)
        if not args.no_warm_up:
            t_warm = time.perf_counter()
            warm = measure("warm-up", floor_argv, env, logs, server_pid)
            log(f"warm-up (one unmeasured floor pass) took {time.perf_counter() - t_warm:.1f} s")
            if warm.status != 0:
                log("the warm-up pass failed")
                return 1

        def keep(m: Measured):
            # the fastest successful measurement counts; a failure always shows
            old = results.get(m.name)
            if old is None or (old.status == 0 and (m.status != 0 or m.seconds < old.seconds)):
                results[m.name] = m

        for _ in range(max(1, args.repeat)):
            keep(measure("runport", runport_argv(source, out / "runport", "--concurrency",
                                                 str(args.concurrency)), env, logs, server_pid))
            keep(measure("floor", floor_argv, env, logs, server_pid))
        for _ in range(max(1, args.repeat)):
            keep(measure("runport sqlite", runport_argv(sqlite_source, out / "runport-sqlite"),
                         env, logs, server_pid))

        if not args.skip_official:
            history_runs = None
            if args.official_runs is not None and args.official_runs < args.runs:
                history_runs = n_official = args.official_runs
            cfg_path = logs / "official.json"
            cfg_path.write_text(json.dumps({"tracking_uri": base, "experiments": [experiment],
                                            "history_runs": history_runs,
                                            "out": str(out / "official")}))
            results["official client"] = measure(
                "official client", [python, str(Path(__file__).resolve()), "__official", str(cfg_path)],
                env, logs, server_pid)
    finally:
        stop_server(server)
    load_end = os.getloadavg()

    # ------------------------------------------------------------- checks
    for name, m in results.items():
        if m.status != 0:
            log(f"{name} exited with {m.status}; see {logs}")
            status = 1
    rp, fl, sq = results["runport"], results["floor"], results["runport sqlite"]
    off = results.get("official client")
    rp_sum, fl_sum, sq_sum = rp.last_json() or {}, fl.last_json() or {}, sq.last_json() or {}
    off_sum = (off.last_json() or {}) if off else {}
    expected_rows = args.runs * args.metrics * args.steps
    rows_by = {}
    for name, m, s in (("runport", rp, rp_sum), ("runport sqlite", sq, sq_sum)):
        if not s:
            log(f"{name}: no JSON summary on stdout")
            status = 1
            continue
        if s.get("failures"):
            log(f"{name}: {len(s['failures'])} runs failed: {s['failures'][:3]}")
            status = 1
        if s.get("runs") != args.runs:
            log(f"{name} exported {s.get('runs')} runs, expected {args.runs}")
            status = 1
        if s.get("rows", {}).get("history") != expected_rows:
            log(f"{name} wrote {s.get('rows', {}).get('history')} history rows, expected {expected_rows} "
                f"(runs x metrics x steps)")
            status = 1
        if m.status == 0:
            rows_by[name] = runport_rows_by_run(out / name.replace(" ", "-"))
    if "runport" in rows_by and "runport sqlite" in rows_by and rows_by["runport"] != rows_by["runport sqlite"]:
        bad = [r for r in set(rows_by["runport"]) | set(rows_by["runport sqlite"])
               if rows_by["runport"].get(r) != rows_by["runport sqlite"].get(r)]
        log(f"history rows per run differ between runport (REST) and runport sqlite in {len(bad)} runs, "
            f"e.g. {[(r, rows_by['runport'].get(r), rows_by['runport sqlite'].get(r)) for r in bad[:3]]}")
        status = 1
    if off is not None and off.status == 0:
        per_run = off_sum.get("per_run")
        ref = rows_by.get("runport") or rows_by.get("runport sqlite")
        if per_run is None or off_sum.get("runs") != args.runs or len(per_run) != n_official:
            log(f"official client: {off_sum.get('runs')} runs listed, histories of "
                f"{len(per_run or {})}, expected {args.runs} and {n_official}")
            status = 1
        elif ref is not None:
            bad = [(r, n, ref.get(r)) for r, n in per_run.items() if ref.get(r) != n]
            if bad:
                log(f"official client: history rows differ from runport's in {len(bad)} runs, e.g. {bad[:3]}")
                status = 1
        if n_official == args.runs and off_sum.get("history_rows") != expected_rows:
            log(f"official client: {off_sum.get('history_rows')} history rows, expected {expected_rows}")
            status = 1
    http = rp_sum.get("http") or {}
    rp_requests = http.get("requests", 0) - http.get("retries", 0) if http else None
    same_requests = rp_requests is not None and rp_requests == fl_sum.get("requests")
    if not same_requests:
        log(f"runport and the floor made different numbers of requests: runport {rp_requests} "
            f"({json.dumps(http)}), floor {fl_sum.get('requests')} (--floor-history {args.floor_history}); "
            f"if runport's requests changed, the floor must follow them")
        status = 1

    # -------------------------------------------------------------- table
    est: dict[str, float] = {}
    for name, m in results.items():
        est[name] = m.seconds
    if off is not None and n_official != args.runs and off_sum.get("history_seconds") is not None:
        h = off_sum["history_seconds"]
        est["official client"] = off.seconds - h + h * args.runs / n_official

    def rows_of(name):
        if name == "runport":
            return rp_sum.get("rows", {}).get("history")
        if name == "runport sqlite":
            return sq_sum.get("rows", {}).get("history")
        if name == "official client":
            return off_sum.get("history_rows")
        return None

    def requests_of(name):
        if name == "runport":
            return rp_requests
        if name == "floor":
            return fl_sum.get("requests")
        if name == "official client" and off_sum:
            return None if off_sum.get("history_calls") is None else off_sum["history_calls"]
        return None

    off_est = est.get("official client") if off is not None and off.status == 0 else None
    header = (f"{'command':<16} {'runs':>5} {'wall s':>8} {'est. all s':>10} {'CPU s':>7} "
              f"{'peak RSS MiB':>12} {'server CPU s':>12} {'other CPU s':>11} {'history rows':>12} "
              f"{'requests':>8} {'vs official':>11}")
    lines = ["", f"{args.runs} runs x {args.metrics} metrics x {args.steps} steps "
                 f"({expected_rows:,} history rows), concurrency {args.concurrency}, {base} "
                 f"with {args.workers} workers on {db}", header, "-" * len(header)]
    for name, m in results.items():
        runs = n_official if name == "official client" else args.runs
        ratio = off_est / est[name] if off_est and m.status == 0 and est[name] > 0 else None
        rows, reqs = rows_of(name), requests_of(name)
        lines.append(
            f"{name:<16} {runs:>5} {m.seconds:>8.2f} {est[name]:>10.1f} {m.cpu_s:>7.1f} {m.rss_mib:>12.1f} "
            f"{m.server_cpu_s:>12.1f} {m.other_cpu_s:>11.1f} {'' if rows is None else rows:>12} "
            f"{'' if reqs is None else reqs:>8} {'' if ratio is None else format(ratio, '.2f') + 'x':>11}")
    lines.append("")
    if off is not None and n_official != args.runs:
        lines.append(f"official client: histories of the first {n_official} of {args.runs} runs measured; "
                     f"'est. all s' = its time outside the histories + {args.runs / n_official:.1f} x its "
                     f"history time (linear extrapolation)")
    lines.append("'vs official': the official client's 'est. all s' over the command's wall time; "
                 "'requests' for the official client: get_metric_history calls")
    targets = []
    if off_est and rp.status == 0:
        targets.append((f"runport vs official client (>= {TARGET_OFFICIAL:g}x)", off_est / rp.seconds,
                        off_est / rp.seconds >= TARGET_OFFICIAL))
    if rp.status == 0 and fl.status == 0:
        targets.append((f"runport / floor (<= {TARGET_FLOOR:g}x)", rp.seconds / fl.seconds,
                        rp.seconds / fl.seconds <= TARGET_FLOOR))
    if off_est and sq.status == 0:
        targets.append((f"runport sqlite vs official client (>= {TARGET_SQLITE:g}x)", off_est / sq.seconds,
                        off_est / sq.seconds >= TARGET_SQLITE))
    for label, v, ok in targets:
        lines.append(f"{label:<46} {v:8.2f}x  {'PASS' if ok else 'FAIL'}")
    lines.append(f"requests: runport {rp_requests} (http {json.dumps(http)}), floor {fl_sum.get('requests')}: "
                 f"{'the same' if same_requests else 'DIFFERENT'}; response bytes runport "
                 f"{http.get('bytes')}, floor {fl_sum.get('bytes')}")
    lines.extend(load_lines(load_start, load_end, results))
    print("\n".join(lines))

    if args.json_out:
        args.json_out.write_text(json.dumps({
            "runs": args.runs, "metrics": args.metrics, "steps": args.steps, "concurrency": args.concurrency,
            "workers": args.workers, "official_history_runs": n_official,
            "commands": [{"name": n, "seconds": m.seconds, "estimated_all_runs_seconds": est[n],
                          "peak_rss_mib": m.rss_mib, "cpu_seconds": m.cpu_s,
                          "server_cpu_seconds": m.server_cpu_s, "other_cpu_seconds": m.other_cpu_s,
                          "exit": m.status,
                          "output": {k: v for k, v in (m.last_json() or {}).items() if k != "per_run"}}
                         for n, m in results.items()],
            "targets": [{"target": l, "value": v, "pass": ok} for l, v, ok in targets],
            "same_requests": same_requests, "load_average": {"start": load_start, "end": load_end},
        }, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
