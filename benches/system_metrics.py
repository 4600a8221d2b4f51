#!/usr/bin/env python3
"""runport on one W&B run with a large stream of system metrics, against
the pure-Python reference reader (the run's .wandb file) and the official
W&B client (the same run on the W&B API test server).

    target/testbed-venv/bin/python benches/system_metrics.py \\
        [--seconds 120] [--gauges 1000] [--runport PATH [--runport PATH2]] [--data DIR] [--no-build]
        [--skip-api] [--memory-limit SIZE]

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

  files  runport system   runport export DATA/wandb -o OUT --select 'run_id,system.*' --json
  files  runport run_id   runport export DATA/wandb -o OUT --select run_id --json: the same
                          run without its system metrics, the memory baseline
  files  reference        tests/testbed/wandb_reference.py export --runs DATA/wandb -o OUT
                          --history none --system --select 'run_id,system.*'

Then (unless --skip-api) starts tests/testbed/wandb_server.py --runs
DATA/wandb (a fresh random API key, given to the server with --api-key; it
stops when this script ends, also on failure) and runs against it, each
child with WANDB_API_KEY in its environment (never on its command line), no
other WANDB_* variable and no proxy:

  api    runport system   runport export wandb://ENTITY/PROJECT --base-url URL -o OUT
                          --select 'run_id,system.*' --json
  api    runport run_id   the same with --select run_id, the memory baseline
  api    official client  this script's `__official` mode: wandb.Api(overrides={"base_url": URL},
                          api_key=$WANDB_API_KEY, timeout=60), api.run("E/P/sys-large"),
                          run.history(stream="system", pandas=False, samples=1_000_000), the
                          lines turned into the long table (run_id, timestamp, key without
                          `system.`, value: float64 for a number, else null; the rows of
                          tests/testbed/check_official_client.py --system, sorted by key and
                          timestamp as runport's) and written with pyarrow to
                          OUT/system/part-00000.parquet

The official client sends `samples` unchanged as `events(samples: N)`
(one GraphQL request, `RunFullHistory`): its default, 500, returns 500
evenly spaced lines of the 1,209, so a whole read asks for more than the
run has (check_official_client.py's 1,000,000; the test server returns
every line then). Its Run has no field for the line count: the script asks
the server for the run's eventsLineCount itself, and the client must have
read that many lines. Like check_official_client.py, the client runs with
HOME, the W&B folders and the proxies isolated (any connection to another
host counts as a failure). The client does its GraphQL through the
wandb-core process it starts: for the API commands the process tree's RSS
is sampled every 0.25 s (the `tree peak` column) and its CPU counted, and
the client reports its own and wandb-core's peak RSS (VmHWM) before it
exits. The server's CPU time and its request accounting (reset before each
API command, read after it) are reported too.

The runport commands run once per --runport (default
target/release/runport; give it more than once to compare builds, rows are
labelled by the path). Wall time, CPU seconds and peak RSS come from os.wait4
of each child; rows are system rows (runport's --json line, the reference's
and the official client's Parquet file). Prints a Markdown table, the ratios
reference/runport and official client/runport of wall time and the peak RSS
the system metrics take (`system` minus `run_id`) from the files and from
the API. Exits 1 when a command fails, when the official client read fewer
lines than the run's eventsLineCount or tried to reach another host, when
credentials reached the server's file origin, or when a runport system table
(OUT/system/*.parquet, and its --json line) or the official client's table
does not have as many rows as the reference's.
"""

from __future__ import annotations

import argparse
import base64
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
# What the official client asks for as `samples`: more lines than any run
# has (check_official_client.py's ALL_SAMPLES); its default is 500.
OFFICIAL_SAMPLES = 1_000_000
MIB = 1024 * 1024

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Only what the measurement needs is imported here: a child's peak RSS is
# never below this process's own (see own_peak_rss_mib), and urllib or
# http.client alone would add 6 to 8 MiB to that floor.
from _measure import (  # noqa: E402
    Measured, TreeSampler, admin, api_env, build_runport, http_json, load_lines, log, machine_busy_s,
    proc_cpu_s, request_counts, run_child, start_background, stop_background)


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


def measure(name: str, argv: list[str], logs: Path, env: dict | None = None,
            server_pid: int | None = None) -> Measured:
    """Runs argv as a child; also the CPU time the rest of the machine used
    meanwhile. With `server_pid` (the API side), also the server's CPU time
    and the sampled peak RSS and CPU of the child's process tree (the
    official client's wandb-core)."""
    log(f"[{name}] {' '.join(argv)}")
    busy, srv, tree = [], [], TreeSampler()

    def started(proc):
        busy.append(machine_busy_s())
        srv.append(proc_cpu_s(server_pid) if server_pid else 0.0)
        if server_pid:
            tree.start(proc.pid)

        def stop():
            tree.stop()
            busy.append(machine_busy_s())
            srv.append(proc_cpu_s(server_pid) if server_pid else 0.0)
        return stop

    m = run_child(Measured(name), argv, logs, ROOT, env=env, started=started)
    # wait4 counts the child and the descendants it reaped; a helper it
    # left running (wandb-core) only shows in the samples
    m.cpu_s = max(m.cpu_s, sum(tree.cpu.values()))
    m.tree_peak_mib = max(tree.peak / MIB, m.rss_mib) if server_pid else None
    m.server_cpu_s = srv[1] - srv[0]
    m.other_cpu_s = max(0.0, busy[1] - busy[0] - m.cpu_s - m.server_cpu_s)
    log(f"[{name}] {m.seconds:.2f} s, CPU {m.cpu_s:.2f} s, peak RSS {m.rss_mib:.0f} MiB"
        + (f" (tree {m.tree_peak_mib:.0f}), server CPU {m.server_cpu_s:.2f} s" if server_pid else "")
        + f", exit {m.status}")
    if m.status != 0:
        log(m.stderr[-3000:])
    return m


# --------------------------------------------------------------------------
# The official client (child process: `__official CONFIG`)
# --------------------------------------------------------------------------


def helper_peaks() -> dict[str, float]:
    """Peak RSS (VmHWM, MiB) of each process this one started (wandb-core)."""
    out = {}
    me = str(os.getpid())
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{d}/status").read_text().splitlines()
                          if ":" in line)
        except OSError:
            continue
        if status.get("PPid", "").strip() == me and "VmHWM" in status:
            out[f"{status['Name'].strip()} {d}"] = round(int(status["VmHWM"].split()[0]) / 1024, 1)
    return out


def official_main(cfg: dict) -> int:
    """Reads one run's system metrics with wandb.Api as a user does and
    writes them as the long table; prints one JSON line (rows, lines,
    seconds of each step). The key comes from WANDB_API_KEY."""
    t_start = time.perf_counter()
    import tempfile

    sys.path.insert(0, str(TESTBED))
    from check_official_client import BlackHole, api_system_rows, isolate_env
    import wandb_reference as ref

    key = os.environ["WANDB_API_KEY"]
    tmp = Path(tempfile.mkdtemp(prefix="wandb-official-system-"))
    hole = BlackHole()
    try:
        # HOME, the W&B folders and the proxies isolated: anything not on
        # loopback goes to the black hole
        isolate_env(tmp / "client", cfg["base_url"], key, hole.port)
        import pyarrow as pa
        import pyarrow.parquet as pq
        import wandb

        t0 = time.perf_counter()
        api = wandb.Api(overrides={"base_url": cfg["base_url"]}, api_key=key, timeout=60)
        run = api.run(f"{cfg['entity']}/{cfg['project']}/{cfg['run_id']}")
        t1 = time.perf_counter()
        lines = run.history(stream="system", pandas=False, samples=cfg["samples"])
        t2 = time.perf_counter()
        n_lines = len(lines)
        # the rows check_official_client.py --system compares with runport's
        rows = api_system_rows(run.id, lines, ref.select_patterns(cfg["select"]))
        del lines
        n = len(rows)
        run_ids, ts, keys, values = zip(*rows) if rows else ((), (), (), ())
        del rows
        table = pa.table([pa.array(run_ids, pa.string()),
                          pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                          pa.array(keys, pa.string()), pa.array(values, pa.float64())],
                         names=["run_id", "timestamp", "key", "value"])
        del run_ids, ts, keys, values
        out = Path(cfg["out"]) / "system"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        pq.write_table(table, str(out / "part-00000.parquet"), compression="zstd")
        t3 = time.perf_counter()
        helpers = helper_peaks()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"lines": n_lines, "rows": n, "import_seconds": round(t0 - t_start, 3),
                      "run_seconds": round(t1 - t0, 3), "history_seconds": round(t2 - t1, 3),
                      "table_seconds": round(t3 - t2, 3),
                      "python_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "helper_peak_mib": helpers, "blackhole_attempts": hole.attempts[:5]}))
    return 1 if hole.attempts else 0


# --------------------------------------------------------------------------
# The API side
# --------------------------------------------------------------------------


def events_line_count(info: dict, key: str, run_id: str) -> int | None:
    """The run's eventsLineCount, asked of the server directly (the
    official client's Run has no field for it)."""
    query = ("query C($entity: String!, $project: String!, $name: String!) "
             "{ project(name: $project, entityName: $entity) { run(name: $name) { eventsLineCount } } }")
    auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
    doc = http_json(info["base_url"].rstrip("/") + "/graphql",
                    {"query": query, "variables": {"entity": info["entity"], "project": info["project"],
                                                   "name": run_id}},
                    {"Authorization": auth})
    if doc.get("errors"):
        raise RuntimeError(f"eventsLineCount: {doc['errors']}")
    return (((doc.get("data") or {}).get("project") or {}).get("run") or {}).get("eventsLineCount")


def api_side(python: str, source: Path, binaries: list[Path], run_id: str, work: Path, logs: Path,
             results: list[dict], limit: list[str]) -> dict:
    """Starts the test server on the run, measures the API commands into
    `results` and stops the server (also on failure). Returns what the
    checks and the table need besides."""
    key = "runport_bench_" + os.urandom(20).hex()
    env = api_env(key)
    cmd = [python, str(TESTBED / "wandb_server.py"), "--runs", str(source), "--port", "0",
           "--files-port", "0", "--api-key", key, "--exit-with-stdin"]
    log(f"starting the W&B API test server: {' '.join(cmd[:-4])} ...")
    t0 = time.perf_counter()
    extra = {"requests": {}, "errors": [], "floor_mib": own_peak_rss_mib()}
    try:
        server, info = start_background(cmd, ROOT, logs / "server.stderr", "the W&B API test server")
    except SystemExit as e:  # it did not start: the files side is still reported
        log(str(e))
        extra["errors"].append(str(e))
        return extra
    extra["server_ready_s"] = time.perf_counter() - t0
    log(f"test server ready in {extra['server_ready_s']:.1f} s: {info['base_url']}, "
        f"{info['entity']}/{info['project']}, {info['runs']} runs")
    try:
        base = info["base_url"]
        extra["events_line_count"] = events_line_count(info, key, run_id)

        def measured(name, argv):
            admin(base, "/_testbed/reset", {"requests": True})
            m = measure(name, argv, logs, env, server.pid)
            extra["requests"][name] = request_counts(base)
            return m

        url = f"wandb://{info['entity']}/{info['project']}"
        for i, binary in enumerate(binaries, 1):
            for what, select in (("system", SELECT), ("run_id", "run_id")):
                out = work / f"api-runport{i}-{what}"
                m = measured(f"api runport{i} {what}",
                             [os.path.abspath(binary), "export", url, "--base-url", base, "-o", str(out),
                              "--select", select, "--json", *limit])
                m.command = f"runport `wandb:// --select '{select}'{' '.join(['', *limit])}`"
                results.append(runport_result(m, "api", what, shown_path(binary), out))
        out = work / "official"
        cfg = {"base_url": base, "entity": info["entity"], "project": info["project"], "run_id": run_id,
               "samples": OFFICIAL_SAMPLES, "select": SELECT, "out": str(out)}
        m = measured("official client", [python, str(Path(__file__).resolve()), "__official", json.dumps(cfg)])
        m.command = f"official client `run.history(stream='system', samples={OFFICIAL_SAMPLES:_})`"
        summary = m.last_json() or {}
        results.append({"m": m, "source": "api", "kind": "official", "binary": "wandb 0.31.0",
                        "rows": summary.get("rows"), "folder": out / "system", "summary": summary})
    except Exception as e:  # noqa: BLE001 - reported, makes the bench fail
        log(f"API side failed: {type(e).__name__}: {e}")
        extra["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        # this process's peak by the end of the API side: no API command's
        # floor was higher
        extra["floor_mib"] = own_peak_rss_mib()
        stop_background(server)
    return extra


def runport_result(m: Measured, source: str, kind: str, binary: str, out: Path) -> dict:
    summary = m.last_json() or {}
    rows = (summary.get("rows") or {}).get("system", 0) if summary else None
    if m.status == 0 and (not summary or summary.get("failures")):
        log(f"[{m.name}] {'no JSON summary on stdout' if not summary else summary['failures'][:3]}")
        m.status = 1
    return {"m": m, "source": source, "kind": kind, "binary": binary, "rows": rows,
            "folder": out / "system", "summary": summary}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["__official"]:
        return official_main(json.loads(argv[1]))

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120, help="seconds the run samples (120)")
    ap.add_argument("--gauges", type=int, default=1000, help="OpenMetrics gauges in every sample (1000)")
    ap.add_argument("--runport", type=Path, action="append",
                    help="runport binary, repeatable to compare builds (default: target/release/runport)")
    ap.add_argument("--data", type=Path,
                    help="where the run is (DATA/wandb/...); written there when DATA/scenarios.json is missing "
                         "(default: target/bench-data/system-s<seconds>-g<gauges>)")
    ap.add_argument("--python", type=Path,
                    help="python for the generator, the reference, the test server and the official client "
                         "(default: target/testbed-venv/bin/python if present, else this python)")
    ap.add_argument("--no-build", action="store_true", help="use the runport binaries as they are")
    ap.add_argument("--skip-api", action="store_true",
                    help="the .wandb files only: no test server, no official client")
    ap.add_argument("--memory-limit", metavar="SIZE",
                    help="runport's --memory-limit for every runport command (default: runport's own, 256MiB)")
    args = ap.parse_args(argv)
    limit = ["--memory-limit", args.memory_limit] if args.memory_limit else []

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
    # one dict a command: m (the measurement), source (files/api), kind
    # (system/run_id/reference/official), binary label, rows it reports,
    # folder of its system table
    results: list[dict] = []
    for i, binary in enumerate(binaries, 1):
        for what, select in (("system", SELECT), ("run_id", "run_id")):
            out = work / f"runport{i}-{what}"
            m = measure(f"runport{i} {what}", [os.path.abspath(binary), "export", str(source), "-o", str(out),
                                               "--select", select, "--json", *limit], logs)
            m.command = f"runport `--select '{select}'{' '.join(['', *limit])}`"
            results.append(runport_result(m, "files", what, shown_path(binary), out))
    out = work / "reference"
    ref = measure("reference", [python, str(TESTBED / "wandb_reference.py"), "export", "--runs", str(source),
                                "-o", str(out), "--history", "none", "--system", "--select", SELECT], logs)
    ref.command = "reference `export --system`"
    results.append({"m": ref, "source": "files", "kind": "reference",
                    "binary": shown_path(TESTBED / "wandb_reference.py"), "rows": None, "folder": out / "system"})
    api = None
    if not args.skip_api:
        api = api_side(python, source, binaries, sc["run_id"], work, logs, results, limit)
    load_end = os.getloadavg()

    # ------------------------------------------------------------------ checks
    status = 0
    ref_result = next(r for r in results if r["kind"] == "reference")
    ref_result["rows"] = parquet_rows(ref_result["folder"])
    want = ref_result["rows"] if ref.status == 0 else None
    for r in results:
        m = r["m"]
        if m.status != 0:
            log(f"{m.name} exited with {m.status}; see {logs}")
            status = 1
            continue
        if r["kind"] in ("system", "official"):
            written = parquet_rows(r["folder"])
            if want is not None and (written != want or r["rows"] != want):
                log(f"{m.name}: {written} rows in {r['folder']}/*.parquet ({r['rows']} reported), "
                    f"the reference wrote {want}")
                status = 1
        if r["kind"] == "official":
            s = r["summary"]
            if s.get("lines") != api.get("events_line_count"):
                log(f"{m.name}: read {s.get('lines')} lines, the run's eventsLineCount is "
                    f"{api.get('events_line_count')}")
                status = 1
    if api is not None:
        if api["errors"]:
            status = 1
        if not any(r["kind"] == "official" for r in results):
            status = 1
        for name, req in api["requests"].items():
            if req.get("credential_leaks"):
                log(f"{name}: credentials reached the file origin: {req['credential_leaks'][:3]}")
                status = 1
        # the official client's rows against each runport build's from the API
        for r in results:
            if r["source"] == "api" and r["kind"] == "system" and r["m"].status == 0:
                for o in results:
                    if o["kind"] == "official" and o["m"].status == 0 and o["rows"] != r["rows"]:
                        log(f"official client: {o['rows']} rows, {r['m'].name}: {r['rows']}")
                        status = 1

    # ------------------------------------------------------------------- table
    print(f"one run: {seen['samples']:,} stats records, {seen['key_count']:,} keys, {seen['rows']:,} values, "
          f"{nbytes / 1e6:.1f} MB of .wandb (written in {gen_s:.1f} s); --select '{SELECT}'")
    if api is not None and "server_ready_s" in api:
        print(f"api: tests/testbed/wandb_server.py --runs on the same files (ready in {api['server_ready_s']:.1f} s), "
              f"eventsLineCount {api.get('events_line_count')}")
    print()
    print("| source | command | binary | wall s | CPU s | peak RSS MiB | tree peak MiB | server CPU s | system rows |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m, rows = r["m"], r["rows"]
        print(f"| {r['source']} | {m.command} | `{r['binary']}` | {m.seconds:.2f} | {m.cpu_s:.2f} | "
              f"{m.rss_mib:.1f} | {'' if m.tree_peak_mib is None else f'{m.tree_peak_mib:.1f}'} | "
              f"{f'{m.server_cpu_s:.2f}' if r['source'] == 'api' else ''} | "
              f"{'' if rows is None else f'{rows:,}'} |")
    print()

    def find(source, kind, binary=None):
        return next((r["m"] for r in results if r["source"] == source and r["kind"] == kind
                     and (binary is None or r["binary"] == binary)), None)

    for source, other_kind, other_name in (("files", "reference", "reference"),
                                           ("api", "official", "official client")):
        other = find(source, other_kind)
        for binary in (shown_path(b) for b in binaries):
            full, base = find(source, "system", binary), find(source, "run_id", binary)
            if full is None:
                continue
            if full.status == 0 and other is not None and other.status == 0:
                print(f"{source}: `{binary}`: {other_name}/runport wall {other.seconds / full.seconds:.1f}x, "
                      f"CPU {other.cpu_s / max(full.cpu_s, 1e-9):.1f}x")
            if full.status == 0 and base is not None and base.status == 0:
                print(f"{source}: `{binary}`: peak RSS of the system metrics ('{SELECT}' minus 'run_id'): "
                      f"{full.rss_mib - base.rss_mib:+.1f} MiB ({full.rss_mib:.1f} - {base.rss_mib:.1f})")
    for r in results:
        if r["kind"] == "official" and r["summary"]:
            s = r["summary"]
            print(f"official client: {s.get('lines'):,} lines; import {s.get('import_seconds')} s, "
                  f"wandb.Api + api.run {s.get('run_seconds')} s, run.history {s.get('history_seconds')} s, "
                  f"long table + Parquet {s.get('table_seconds')} s; peak RSS: python {s.get('python_peak_mib')} MiB, "
                  + (", ".join(f"{k} {v} MiB" for k, v in (s.get("helper_peak_mib") or {}).items())
                     or "no helper process") + " (VmHWM before the client exits)")
    if api is not None:
        for name, req in api["requests"].items():
            print(f"requests: {name}: {json.dumps(req.get('by_operation'))} + "
                  f"{(req.get('files') or {}).get('downloads')} file downloads")
    print(f"peak RSS floor {floor_mib:.1f} MiB"
          + (f" (files), {api['floor_mib']:.1f} MiB (api)" if api is not None else "")
          + ": os.wait4 reports no child below this process's own peak")
    for line in load_lines(load_start, load_end, {r["m"].name: r["m"] for r in results}):
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
