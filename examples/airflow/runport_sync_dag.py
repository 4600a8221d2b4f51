"""Airflow DAG: `runport sync` daily, in N shards mapped over one task, then a check.

Settings, from the environment first, then Airflow Variables, then the default:

    RUNPORT_SOURCE   / Variable runport_source   wandb/ folder, wandb://entity/project, sqlite:///mlflow.db, ...
    RUNPORT_TABLE    / Variable runport_table    folder of the Delta tables (TABLE/runs, TABLE/history)
    RUNPORT_SHARDS   / Variable runport_shards   N (read when the DAG file is parsed: prefer the env var,
                                                 which costs no metadata-database query per parse)
    RUNPORT          / Variable runport          the runport executable (default: runport on PATH)

Secrets (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...) reach runport from the
worker's environment, which the subprocess inherits. Changing N needs one run
with `--full-refresh` on every shard (see examples/README.md).
"""

import json
import os
import subprocess
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.sdk import Variable, dag, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task
    from airflow.models import Variable


def setting(name: str, default: str) -> str:
    value = os.environ.get(name.upper())
    if value is None:
        try:
            value = Variable.get(name.lower(), None)  # 2nd argument: the default in Airflow 2 and 3
        except Exception:  # no metadata database reachable (e.g. a plain `python` import)
            value = None
    return default if value is None else value


SHARDS = int(setting("runport_shards", "4"))


@dag(
    schedule="@daily",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs of one shard would exclude each other anyway (exit 2)
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},  # a re-run completes a failed shard's work
    tags=["runport"],
)
def runport_sync():
    @task
    def sync_shard(shard: int) -> dict:
        """`runport sync SOURCE TABLE --json --shard K/N`; returns its --json line."""
        expected = f"{shard}/{SHARDS}"
        command = [setting("runport", "runport"), "sync", setting("runport_source", "/data/wandb"),
                   setting("runport_table", "/lake/project"), "--json", "--shard", expected]
        print("running", " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        stderr_tail = "\n".join(done.stderr.splitlines()[-20:])
        if stderr_tail:
            print(stderr_tail)
        if done.returncode != 0:
            # 1: some runs failed or a commit lost a race; 2: usage (e.g. another shard
            # count without --full-refresh); 3: the source cannot be read.
            raise RuntimeError(f"runport sync --shard {expected} exited {done.returncode}:\n{stderr_tail}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        if summary.get("shard") != expected:
            raise RuntimeError(f"runport sync --shard {expected}: its summary says shard {summary.get('shard')!r}")
        return summary

    @task
    def check(summaries: list) -> dict:
        """Fails if any shard reported failed runs; returns the totals."""
        summaries = list(summaries)
        failed = [s for s in summaries if s["failures"] or s["runs"].get("failed")]
        if failed:
            raise RuntimeError("runport sync: failed runs in " + "; ".join(f"shard {s['shard']}: {s['failures']}" for s in failed))
        totals = {"shards": len(summaries), "runs": {}, "history_rows": 0, "commit_retries": 0, "versions": {}}
        for s in summaries:
            for key, count in s["runs"].items():
                totals["runs"][key] = totals["runs"].get(key, 0) + count
            totals["history_rows"] += s["history_rows"]
            totals["commit_retries"] += s.get("commit_retries", 0)
            for table, version in s["versions"].items():
                known = [v for v in (totals["versions"].get(table), version) if v is not None]
                totals["versions"][table] = max(known) if known else None
        print(json.dumps(totals))
        return totals

    check(sync_shard.expand(shard=list(range(SHARDS))))


runport_sync()
