#!/usr/bin/env python3
"""`runport sync` on W&B local files or the W&B API: what a sync costs against what changed.

    target/testbed-venv/bin/python benches/sync.py [--source files|api] [--runs N] [--steps 10000]
        [--keys 10] [--changed 0.02] [--new 0.01] [--cut 0.8] [--shards 4] [--no-build]

--source api (default --runs 1000): the W&B API test server's synthetic runs
(tests/testbed/wandb_server.py --synthetic RUNS:STEPS:KEYS, history files
cached under --data). Before the first sync the --new share of runs is hidden
(`/_testbed/hide`) and the --changed share is cut to its first 80% of rows,
live (`/_testbed/rows`: state running, an earlier heartbeat; --cut sets the
share, 0.8); before the last
sync those runs grow back to all their rows and the hidden runs appear. The
server's own request accounting is printed beside runport's. Ratios: full
sync / export time, and changed sync / full sync time, requests and bytes.
Then (--shards N, default 4; 1 for none) the full sync's state synced again
by N shard processes (`--shard K/N`) started together into a fresh table:
each shard's wall, CPU, peak RSS, requests, bytes and commit retries, and
their sums against the one-process full sync (target: requests and bytes
within 2%: sharding adds only the per-shard listing).

--source files (default --runs 100):

Builds runport (`cargo build --release`), writes the runs once with the W&B
SDK (make_wandb_runs.py --set bench; cached under --data, default
target/bench-data/sync), copies them into a work folder without the "new"
share of runs, then measures, each as a child process (wall, CPU, peak RSS):

  export     a plain `runport export` of the work folder (the baseline)
  full       the first `runport sync` into an empty TABLE
  unchanged  `runport sync` again, nothing changed
  changed    after --changed of the runs grew and the held-back --new runs
             were copied in. The runs that change are live at the first sync:
             their `.wandb` files are cut to their first 80% (at a 32 KiB
             block: whole records, no exit record), as a run still writing
             has them, and a live run's history gets a file of its own. They
             then grow back to the SDK's whole file (the run went on and
             finished)

and prints, for each sync, records and bytes of `.wandb` read (from
`--json`), history rows written, files added and removed, and the ratios the
issue sets targets for: full sync / export time (<= 1.2); changed sync /
full sync time and bytes read (<= 0.05). The unchanged sync must read no
record at all. Exits 1 when a command fails.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measured, build_runport, run_child  # noqa: E402



def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(name: str, argv: list[str], logs: Path) -> Measured:
    log(f"{name}: {' '.join(argv)}")
    m = run_child(Measured(name), argv, logs, ROOT)
    if m.status != 0 or m.last_json() is None:
        log(f"{name} failed (exit {m.status}); see {logs}\n{m.stderr[-3000:]}")
        raise SystemExit(1)
    m.summary = m.last_json()
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["files", "api"], default="files")
    ap.add_argument("--runs", type=int, default=None, help="100 for files, 1000 for api")
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--changed", type=float, default=0.02, help="share of runs resumed before the last sync")
    ap.add_argument("--new", type=float, default=0.01, help="share of runs added before the last sync")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--data", default=str(ROOT / "target" / "bench-data" / "sync"))
    ap.add_argument("--shards", type=int, default=4,
                    help="api: then N shard processes (--shard K/N) started together into a fresh table "
                         "(1: none)")
    ap.add_argument("--cut", type=float, default=0.8,
                    help="api: share of a changed run's rows served at the first sync (0.8)")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
    if not build_runport(ROOT, RUNPORT, args.no_build, log):
        return 1
    if args.source == "api":
        args.runs = args.runs or 1000
        return api_main(args, python)
    args.runs = args.runs or 100
    data = Path(args.data) / f"files-{args.runs}x{args.steps}x{args.keys}"
    if not (data / "complete").exists():
        log(f"writing {args.runs} runs of {args.steps} steps x {args.keys} keys with the W&B SDK into {data}")
        subprocess.run([python, str(TESTBED / "make_wandb_runs.py"), "--set", "bench", "--runs", str(args.runs),
                        "--steps", str(args.steps), "--keys", str(args.keys), "--jobs", str(args.jobs),
                        "--out", str(data)], check=True)
        (data / "complete").write_text("\n")
    work = Path(args.data) / "work"
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    source, table, export = work / "wandb", work / "table", work / "export"
    folders = sorted(p for p in (data / "wandb").iterdir() if p.is_dir() and not p.is_symlink())
    n_new = max(1, round(args.runs * args.new))
    n_changed = max(1, round(args.runs * args.changed))
    held_back = folders[-n_new:]
    source.mkdir(parents=True)
    for f in folders[:-n_new]:
        shutil.copytree(f, source / f.name)
    growing = folders[:n_changed]
    for f in growing:  # live at the first sync: their logs cut short
        for log_file in (source / f.name).rglob("*.wandb"):
            size = log_file.stat().st_size
            with open(log_file, "r+b") as fh:
                fh.truncate(max(32768, size * 8 // 10 // 32768 * 32768))
    for f in source.rglob("*.wandb"):  # into the page cache, like every input measured here
        f.read_bytes()

    baseline = measure("export", [str(RUNPORT), "export", str(source), "-o", str(export), "--json"], logs)
    full = measure("full sync", [str(RUNPORT), "sync", str(source), str(table), "--json"], logs)
    unchanged = measure("unchanged sync", [str(RUNPORT), "sync", str(source), str(table), "--json"], logs)

    log(f"{len(growing)} live runs grow to their whole files; adding {len(held_back)} runs")
    t0 = time.perf_counter()
    for f in growing:
        for log_file in f.rglob("*.wandb"):
            shutil.copyfile(log_file, source / f.name / log_file.relative_to(f))
    for f in held_back:
        shutil.copytree(f, source / f.name)
    log(f"changes made in {time.perf_counter() - t0:.1f} s")
    for f in source.rglob("*.wandb"):
        f.read_bytes()
    changed = measure("changed sync", [str(RUNPORT), "sync", str(source), str(table), "--json"], logs)

    print(f"{args.runs} runs of {args.steps} x {args.keys}; changed {len(growing)} (live runs that grew from 80% "
          f"of their log to all of it), new {len(held_back)}")
    table_of((baseline, full, unchanged, changed), [
        ("records read", 13, lambda m: f"{(m.summary.get('records') or {}).get('read', 0):,}"),
        ("MB read", 8, lambda m: f"{(m.summary.get('records') or {}).get('bytes', 0) / 1e6:.1f}"),
    ])
    fr, ch = full.summary["records"], changed.summary["records"]
    print()
    print(f"full sync / export wall time: {full.seconds / baseline.seconds:.2f} (target <= 1.20)")
    print(f"unchanged sync: {unchanged.summary['records']['read']} records read, committed "
          f"{unchanged.summary['committed']}, {unchanged.seconds:.2f} s")
    print(f"changed sync / full sync: wall {changed.seconds / full.seconds:.3f}, "
          f"bytes read {ch['bytes'] / max(1, fr['bytes']):.3f} (targets <= 0.05)")
    return 0


def table_of(measured, source_columns) -> None:
    """One line per command: time, CPU, RSS, the source's own columns
    (name, width, value of a Measured), then what the command wrote."""
    columns = [("wall s", 7, lambda m: f"{m.seconds:.2f}"), ("cpu s", 6, lambda m: f"{m.user_s + m.sys_s:.2f}"),
               ("RSS MiB", 8, lambda m: f"{m.rss_mib:.0f}")] + list(source_columns) + [
        ("hist rows", 11, lambda m: f"{m.summary.get('history_rows', (m.summary.get('rows') or {}).get('history', 0)):,}"),
        ("+files", 6, lambda m: str(m.summary.get("files_added", m.summary.get("files", 0)))),
        ("-files", 6, lambda m: str(m.summary.get("files_removed", 0))),
        ("versions", 9, lambda m: "{}/{}".format(*[(m.summary.get("versions") or {}).get(t) for t in ("runs", "history")])),
    ]
    print(f"{'command':<15} " + " ".join(f"{name:>{width}}" for name, width, _ in columns))
    for m in measured:
        print(f"{m.name:<15} " + " ".join(f"{value(m):>{width}}" for _, width, value in columns))


def api_main(args, python: str) -> int:
    from compare_wandb_api import admin, api_env, start_server

    work = Path(args.data) / "api-work"
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    cache = Path(args.data) / f"api-cache-{args.runs}x{args.steps}x{args.keys}"
    cache.mkdir(parents=True, exist_ok=True)
    key = "runport_bench_" + "0123456789abcdef" * 2 + "01234567"
    spec = f"{args.runs}:{args.steps}:{args.keys}:0"
    server, info = start_server(python, spec, key, cache, logs)
    base = info["base_url"]
    env = api_env(key)
    uri = f"wandb://{info['entity']}/{info['project']}"
    table, export = work / "table", work / "export"
    try:
        ids = sorted(r for r in list_run_ids(base, key, info))
        n_new = max(1, round(args.runs * args.new))
        n_changed = max(1, round(args.runs * args.changed))
        hidden, growing = ids[-n_new:], ids[:n_changed]
        admin(base, "/_testbed/hide", {"runs": hidden})
        admin(base, "/_testbed/rows", {"runs": growing, "rows": int(args.steps * args.cut)})

        def api(name: str, argv: list[str]) -> Measured:
            admin(base, "/_testbed/reset", {"requests": True})
            log(f"{name}: {' '.join(argv)}")
            m = run_child(Measured(name), argv + ["--base-url", base], logs, ROOT, env)
            if m.status != 0 or m.last_json() is None:
                log(f"{name} failed (exit {m.status}); see {logs}\n{m.stderr[-3000:]}")
                raise SystemExit(1)
            m.summary = m.last_json()
            m.served = admin(base, "/_testbed/requests")
            return m

        # Warm-up: the server writes (or finds in its cache) every history file once.
        api("warm-up export", [str(RUNPORT), "export", uri, "-o", str(work / "warm"), "--json"])
        shutil.rmtree(work / "warm", ignore_errors=True)
        baseline = api("export", [str(RUNPORT), "export", uri, "-o", str(export), "--json"])
        full = api("full sync", [str(RUNPORT), "sync", uri, str(table), "--json"])
        # The same state, synced by N shard processes at once into a table of their own.
        shards = sharded_full_sync(args.shards, uri, work, base, logs, env) if args.shards > 1 else None
        unchanged = api("unchanged sync", [str(RUNPORT), "sync", uri, str(table), "--json"])
        admin(base, "/_testbed/rows", {"runs": growing, "rows": None})
        admin(base, "/_testbed/hide", {"runs": []})
        changed = api("changed sync", [str(RUNPORT), "sync", uri, str(table), "--json"])
    finally:
        server.stdin.close()
        server.wait(timeout=60)

    print(f"W&B API: {args.runs} synthetic runs of {args.steps} x {args.keys}; changed {n_changed} (live runs "
          f"that grew from {args.cut:.0%} of their rows to all of them; appended "
          f"{changed.summary['runs'].get('appended', 0)}), new {n_new}")
    table_of((baseline, full, unchanged, changed), [
        ("requests", 9, lambda m: f"{(m.summary.get('http') or {}).get('requests', 0):,}"),
        ("served", 7, lambda m: f"{m.served.get('total', 0):,}"),
        ("MB", 8, lambda m: f"{(m.summary.get('http') or {}).get('bytes', 0) / 1e6:.1f}"),
    ])
    fh, ch = full.summary["http"], changed.summary["http"]
    print()
    print(f"full sync / export wall time: {full.seconds / baseline.seconds:.2f} (target <= 1.20)")
    print(f"unchanged sync: {unchanged.summary['http']['requests']} requests (the listing), history rows "
          f"{unchanged.summary['history_rows']}, committed {unchanged.summary['committed']}, "
          f"{unchanged.seconds:.2f} s")
    print(f"changed sync / full sync: wall {changed.seconds / full.seconds:.3f}, requests "
          f"{ch['requests'] / max(1, fh['requests']):.3f}, bytes {ch['bytes'] / max(1, fh['bytes']):.3f} "
          f"(targets <= 0.05)")
    if shards:
        print_shards(args.shards, shards, full)
    return 0


def sharded_full_sync(n: int, uri: str, work: Path, base: str, logs: Path, env: dict) -> tuple[list, float, dict]:
    """N shard processes (`--shard K/N`) started together into a fresh
    table: each measured as a child process; the wall time is the last
    one's end."""
    import threading
    from compare_wandb_api import admin

    table = work / "table-shards"
    admin(base, "/_testbed/reset", {"requests": True})
    measured: list = [None] * n

    def one(k: int) -> None:
        argv = [str(RUNPORT), "sync", uri, str(table), "--json", "--shard", f"{k}/{n}", "--base-url", base]
        measured[k] = run_child(Measured(f"shard {k} of {n}"), argv, logs, ROOT, env)

    log(f"{n} shards into {table}")
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for m in measured:
        if m.status != 0 or m.last_json() is None:
            log(f"{m.name} failed (exit {m.status}); see {logs}\n{m.stderr[-3000:]}")
            raise SystemExit(1)
        m.summary = m.last_json()
    return measured, wall, admin(base, "/_testbed/requests")


def print_shards(n: int, shards: tuple[list, float, dict], full: Measured) -> None:
    measured, wall, served = shards
    print()
    print(f"{n} shards started together into a fresh table (the full sync above: one process)")
    print(f"{'shard':<10} {'wall s':>7} {'cpu s':>6} {'RSS MiB':>8} {'runs':>5} {'requests':>9} {'MB':>8} "
          f"{'retries':>7}")
    for m in measured:
        http = m.summary.get("http") or {}
        print(f"{m.summary.get('shard', '?'):<10} {m.seconds:>7.2f} {m.user_s + m.sys_s:>6.2f} {m.rss_mib:>8.0f} "
              f"{m.summary['runs']['new']:>5} {http.get('requests', 0):>9,} {http.get('bytes', 0) / 1e6:>8.1f} "
              f"{m.summary.get('commit_retries', 0):>7}")
    requests = sum((m.summary.get("http") or {}).get("requests", 0) for m in measured)
    nbytes = sum((m.summary.get("http") or {}).get("bytes", 0) for m in measured)
    fh = full.summary["http"]
    retries = sum(m.summary.get("commit_retries", 0) for m in measured)
    print(f"all shards: wall {wall:.2f} s (one process: {full.seconds:.2f} s), requests {requests:,} "
          f"(served {served.get('total', 0):,}; one process: {fh['requests']:,}, ratio "
          f"{requests / max(1, fh['requests']):.4f}), bytes {nbytes / 1e6:.1f} MB (ratio "
          f"{nbytes / max(1, fh['bytes']):.4f}; target: within 2%), commit retries {retries}, "
          f"peak RSS per shard {max(m.rss_mib for m in measured):.0f} MiB at most")


def list_run_ids(base: str, key: str, info: dict) -> list[str]:
    """Every run id of the project, from the API (as a client lists them)."""
    import base64
    import json
    import urllib.request
    ids, cursor = [], None
    auth = base64.b64encode(f"api:{key}".encode()).decode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        query = ("query R($p: String!, $e: String!, $c: String) { project(name: $p, entityName: $e) { "
                 "runs(first: 500, after: $c) { edges { node { name } } pageInfo { endCursor hasNextPage } } } }")
        body = json.dumps({"query": query, "variables": {"p": info["project"], "e": info["entity"], "c": cursor}})
        req = urllib.request.Request(base + "/graphql", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}"})
        with opener.open(req, timeout=120) as r:
            runs = json.loads(r.read())["data"]["project"]["runs"]
        ids.extend(e["node"]["name"] for e in runs["edges"])
        if not runs["pageInfo"]["hasNextPage"]:
            return ids
        cursor = runs["pageInfo"]["endCursor"]


if __name__ == "__main__":
    sys.exit(main())
