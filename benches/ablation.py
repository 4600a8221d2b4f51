#!/usr/bin/env python3
"""runport with and without each of its own Parquet components, in one
invocation, on the benchmark sets.

    target/testbed-venv/bin/python benches/ablation.py \\
        [--sets files,api,mlflow] [--rounds 5] [--no-build]

One release build of runport; the benchmark-only switch RUNPORT_BENCH_WITHOUT
(connector/ablation.rs) turns a component off, and runport then takes the
parquet crate's own path (ArrowColumnWriter with the same WriterProperties,
or ParquetRecordBatchReader). Each round runs every variant of a set once,
in an order rotated from round to round, so that drift of the machine (other
work, thermal, page cache) falls on every variant alike. Every export starts
from an empty output folder and must export the same history rows as the
others.

Sets (the sets of the comparison scripts, smaller by default):

  files   runport export DATA/wandb: .wandb files written by the W&B SDK
          (tests/testbed/make_wandb_runs.py --set bench), generated when
          missing
  api     runport export wandb://E/P against tests/testbed/wandb_server.py
          --synthetic RUNS:STEPS:KEYS:0 (the W&B API source: the history
          files are read, then written)
  mlflow  runport export sqlite:///DATA/mlflow.db --experiment runport-bench:
          the database of benches/compare_mlflow.py (populated by it with
          --populate-only when missing)

Per variant: median wall and CPU (user + system, os.wait4) seconds over the
rounds, and the saving of the component, (without - with) / without, for
both. A component is worth keeping where it saves at least 10% of wall or CPU
time on a set. The table is printed as Markdown; --json-out writes the
measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTBED = ROOT / "tests" / "testbed"
VENV_PYTHON = ROOT / "target" / "testbed-venv" / "bin" / "python"
RUNPORT = ROOT / "target" / "release" / "runport"
SWITCH = "RUNPORT_BENCH_WITHOUT"
KEEP_AT = 0.10

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measured, build_runport, run_child  # noqa: E402

# component -> its sources (the components that paid for themselves; the
# history-file page reader did not and was deleted, see benches/README.md)
COMPONENTS = {
    "page-encoders": ["connector/output/primitive.rs", "connector/output/pages.rs"],
    "runlength": ["connector/output/runlength.rs"],
}
# which components a set exercises
SET_COMPONENTS = {
    "files": ["page-encoders", "runlength"],
    "api": ["page-encoders", "runlength"],
    "mlflow": ["page-encoders", "runlength"],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lines_of(component: str) -> int:
    return sum(len((ROOT / p).read_text().splitlines()) for p in COMPONENTS[component] if (ROOT / p).exists())


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def history_rows(m: Measured):
    s = m.last_json()
    return s.get("rows", {}).get("history") if s else None


def callgrind_total(path: Path) -> int:
    """Instructions executed (Ir) from a callgrind output file."""
    for line in path.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def measure_rounds(set_name: str, argv_for, env: dict, variants: list[str], rounds: int,
                   logs: Path, callgrind: bool = False) -> dict[str, list[Measured]]:
    """Runs every variant once per round, the order rotated each round."""
    got: dict[str, list[Measured]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            e = dict(env)
            e.pop(SWITCH, None)
            if v != "all":
                e[SWITCH] = v
            m = Measured(f"{set_name} {v} {r}")
            argv = argv_for(v)
            cg_out = logs / f"callgrind.{set_name}.{v}.{r}"
            if callgrind:
                argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}", *argv]
            run_child(m, argv, logs, ROOT, e)
            m.instructions = callgrind_total(cg_out) if callgrind and m.status == 0 else None
            log(f"[{set_name}] round {r + 1}/{rounds} {v:>14}: {m.seconds:7.2f} s wall, {m.cpu_s:7.2f} s CPU, "
                f"{m.rss_mib:5.0f} MiB, exit {m.status}"
                + (f", {m.instructions:,} instructions" if m.instructions else ""))
            if m.status != 0:
                log(m.stderr[-4000:])
                raise SystemExit(f"{set_name}: runport failed with {v}; see {logs}")
            got[v].append(m)
    rows = {v: {history_rows(m) for m in ms} for v, ms in got.items()}
    if len(set().union(*rows.values())) != 1 or None in set().union(*rows.values()):
        raise SystemExit(f"{set_name}: the variants wrote different history rows: {rows}")
    return got


# --------------------------------------------------------------------------
# The sets
# --------------------------------------------------------------------------


def files_set(args, python: str, out: Path, logs: Path):
    data = (args.files_data or ROOT / "target" / "bench-data" /
            f"r{args.files_runs}-s{args.files_steps}-k{args.files_keys}").resolve()
    log(f"files: runs in {data} (generated when missing)")
    subprocess.run([python, str(TESTBED / "make_wandb_runs.py"), "--set", "bench",
                    "--runs", str(args.files_runs), "--steps", str(args.files_steps),
                    "--keys", str(args.files_keys), "--jobs", str(args.jobs), "--out", str(data)],
                   cwd=ROOT, check=True)
    for f in (data / "wandb").rglob("*.wandb"):
        f.read_bytes()  # page cache
    dest = out / "files"
    argv = lambda v: [str(RUNPORT), "export", str(data / "wandb"), "-o", str(fresh(dest)), "--json"]
    desc = f"files: {args.files_runs} runs x {args.files_steps} steps x {args.files_keys} keys (.wandb, SDK)"
    return desc, argv, dict(os.environ), None


def api_set(args, python: str, out: Path, logs: Path):
    import compare_wandb_api as api
    key = "runport_bench_" + secrets.token_hex(20)
    spec = f"{args.api_runs}:{args.api_steps}:{args.api_keys}:0"
    cache = (out / "api-server-cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    server, info = api.start_server(python, spec, key, cache, logs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["WANDB_API_KEY"] = key
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    dest = out / "api"
    argv = lambda v: [str(RUNPORT), "export", f"wandb://{info['entity']}/{info['project']}",
                      "-o", str(fresh(dest)), "--base-url", info["base_url"], "--json",
                      "--concurrency", str(args.concurrency)]
    log("api: one unmeasured export (the server writes every history file)")
    warm = run_child(Measured("api warm-up"), argv("all"), logs, ROOT, env)
    if warm.status != 0:
        server.stdin.close()
        raise SystemExit(f"api: the warm-up export failed; see {logs}")
    desc = (f"api: {args.api_runs} runs x {args.api_steps} steps x {args.api_keys} keys "
            f"(W&B API test server, --concurrency {args.concurrency})")
    return desc, argv, env, server


def mlflow_set(args, python: str, out: Path, logs: Path):
    data = (args.mlflow_data or ROOT / "target" / "bench-mlflow" /
            f"r{args.mlflow_runs}-m{args.mlflow_metrics}-s{args.mlflow_steps}").resolve()
    if not (data / "populated.json").exists():
        log(f"mlflow: populating {data} with benches/compare_mlflow.py --populate-only")
        subprocess.run([python, str(ROOT / "benches" / "compare_mlflow.py"), "--populate-only",
                        "--runs", str(args.mlflow_runs), "--metrics", str(args.mlflow_metrics),
                        "--steps", str(args.mlflow_steps), "--data", str(data)], cwd=ROOT, check=True)
    db = data / "mlflow.db"
    db.read_bytes()  # page cache
    dest = out / "mlflow"
    argv = lambda v: [str(RUNPORT), "export", f"sqlite:///{db}", "--experiment", "runport-bench",
                      "-o", str(fresh(dest)), "--json"]
    desc = (f"mlflow: {args.mlflow_runs} runs x {args.mlflow_metrics} metrics x {args.mlflow_steps} steps "
            f"(sqlite:/// of the MLflow server's database)")
    return desc, argv, dict(os.environ), None


SETS = {"files": files_set, "api": api_set, "mlflow": mlflow_set}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="files,api,mlflow", help="comma-separated: files, api, mlflow")
    ap.add_argument("--components", default=",".join(COMPONENTS),
                    help="comma-separated: " + ", ".join(COMPONENTS))
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every variant (5)")
    ap.add_argument("--files-runs", type=int, default=20)
    ap.add_argument("--files-steps", type=int, default=10000)
    ap.add_argument("--files-keys", type=int, default=10)
    ap.add_argument("--files-data", type=Path, help="default: target/bench-data/r<runs>-s<steps>-k<keys>")
    ap.add_argument("--jobs", type=int, default=1, help="processes writing .wandb runs (1)")
    ap.add_argument("--api-runs", type=int, default=200)
    ap.add_argument("--api-steps", type=int, default=5000)
    ap.add_argument("--api-keys", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16, help="runport's --concurrency for the api set (16)")
    ap.add_argument("--mlflow-runs", type=int, default=200)
    ap.add_argument("--mlflow-metrics", type=int, default=5)
    ap.add_argument("--mlflow-steps", type=int, default=1000)
    ap.add_argument("--mlflow-data", type=Path, help="default: target/bench-mlflow/r<runs>-m<metrics>-s<steps>")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "bench-ablation",
                    help="exports and logs (default: target/bench-ablation)")
    ap.add_argument("--python", type=Path, help="python for the test bed (default: the test-bed venv)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/runport as it is")
    ap.add_argument("--callgrind", action="store_true",
                    help="run every export under valgrind --tool=callgrind and report instructions "
                         "executed (repeatable; use small sets and --rounds 1)")
    ap.add_argument("--json-out", type=Path, help="also write the measurements here as JSON")
    args = ap.parse_args(argv)

    sets = [s for s in args.sets.split(",") if s]
    components = [c for c in args.components.split(",") if c]
    for s in sets:
        if s not in SETS:
            ap.error(f"unknown set {s}")
    for c in components:
        if c not in COMPONENTS:
            ap.error(f"unknown component {c}")
    python = str(args.python or (VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)))
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not build_runport(ROOT, RUNPORT, args.no_build, log):
        return 2

    results = []
    for s in sets:
        desc, argv_for, env, server = SETS[s](args, python, out, logs)
        variants = ["all"] + [c for c in SET_COMPONENTS[s] if c in components]
        try:
            got = measure_rounds(s, argv_for, env, variants, args.rounds, logs, args.callgrind)
        finally:
            if server is not None:
                server.stdin.close()
                server.wait(timeout=60)
        med = {v: (statistics.median(m.seconds for m in ms), statistics.median(m.cpu_s for m in ms))
               for v, ms in got.items()}
        rows = history_rows(got["all"][0])
        for c in variants[1:]:
            (w_with, c_with), (w_without, c_without) = med["all"], med[c]
            results.append({
                "set": s, "description": desc, "component": c, "lines": lines_of(c), "history_rows": rows,
                "wall_with": w_with, "wall_without": w_without, "cpu_with": c_with, "cpu_without": c_without,
                "wall_gain": (w_without - w_with) / w_without, "cpu_gain": (c_without - c_with) / c_without,
                "wall_all": [m.seconds for m in got["all"]], "wall_all_without": [m.seconds for m in got[c]],
                "cpu_all": [m.cpu_s for m in got["all"]], "cpu_all_without": [m.cpu_s for m in got[c]],
            })
            if args.callgrind:
                i_with = statistics.median(m.instructions for m in got["all"])
                i_without = statistics.median(m.instructions for m in got[c])
                results[-1].update({"instructions_with": i_with, "instructions_without": i_without,
                                    "instructions_gain": (i_without - i_with) / i_without})

    print()
    if args.callgrind:
        print("(times under valgrind are not the program's; the instructions are the figure)")
    print(f"median of {args.rounds} rounds, variants alternated; gain = (without - with) / without; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at end")
    print()
    print("| set | component | lines | wall s with | wall s without | wall gain | CPU s with | CPU s without "
          "| CPU gain | pays (>= 10%) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        pays = "yes" if max(r["wall_gain"], r["cpu_gain"]) >= KEEP_AT else "no"
        print(f"| {r['set']} | {r['component']} | {r['lines']} | {r['wall_with']:.2f} | {r['wall_without']:.2f} "
              f"| {r['wall_gain']:+.1%} | {r['cpu_with']:.2f} | {r['cpu_without']:.2f} | {r['cpu_gain']:+.1%} "
              f"| {pays} |")
    if args.callgrind:
        print()
        print("| set | component | instructions with | instructions without | gain |")
        print("|---|---|---:|---:|---:|")
        for r in results:
            print(f"| {r['set']} | {r['component']} | {r['instructions_with']:,.0f} "
                  f"| {r['instructions_without']:,.0f} | {r['instructions_gain']:+.1%} |")
    print()
    for s in sets:
        d = next((r["description"] for r in results if r["set"] == s), None)
        if d:
            print(f"- {d}")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
