"""Dagster job: `runport sync` in N shards, then one combined summary.

    pip install dagster==1.13.29 runport
    python runport_sync_job.py SOURCE TABLE [--shards 4] [--runport PATH] [--full-refresh]

`plan_shards` fans out one `sync_shard` op per shard K in 0..N-1, each running
`runport sync SOURCE TABLE --json --shard K/N`; `collect` checks the shards'
summaries and adds them up. The N shards write into the same Delta tables,
each only its own runs. Secrets (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...)
come from the environment, which runport inherits.

The in-process executor runs the shards one after another in this process (no
daemon). To run them at the same time under a Dagster deployment, give the job
`multiprocess_executor` instead.
"""

import argparse
import json
import subprocess
import sys

from dagster import (
    Config,
    DynamicOut,
    DynamicOutput,
    Failure,
    MetadataValue,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
)


class SyncConfig(Config):
    source: str  # a wandb/ folder, wandb://entity/project, sqlite:///mlflow.db, mlflow+https://host
    table: str  # folder of the Delta tables TABLE/runs and TABLE/history
    shards: int = 4  # changing it needs full_refresh on every shard once
    runport: str = "runport"  # the executable, found on PATH
    full_refresh: bool = False


@op(out=DynamicOut(dict))
def plan_shards(config: SyncConfig):
    """One command per shard K of N."""
    for k in range(config.shards):
        shard = f"{k}/{config.shards}"
        command = [config.runport, "sync", config.source, config.table, "--json", "--shard", shard]
        if config.full_refresh:
            command.append("--full-refresh")
        yield DynamicOutput({"shard": shard, "command": command}, mapping_key=str(k))


@op
def sync_shard(context: OpExecutionContext, task: dict) -> dict:
    """Runs one shard's sync; its `--json` line (the last line of stdout) is the result."""
    context.log.info("running " + " ".join(task["command"]))
    try:
        # The environment is inherited: the API keys reach runport from it.
        done = subprocess.run(task["command"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise Failure(f"runport executable not found: {task['command'][0]!r} (pip install runport, or give its path)")
    stderr_tail = "\n".join(done.stderr.splitlines()[-20:])
    lines = done.stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        summary = None
    if done.returncode != 0 or summary is None:
        # 1: some runs failed (listed in the JSON line) or a commit lost a race;
        # 2: usage, e.g. another shard count without --full-refresh; 3: source unreadable.
        failures = (summary or {}).get("failures") or []
        raise Failure(
            description=f"runport sync --shard {task['shard']} exited {done.returncode}"
            + (f", {len(failures)} run(s) failed" if failures else "")
            + (f":\n{stderr_tail}" if stderr_tail else " (no stderr)"),
            metadata={
                "exit_code": done.returncode,
                "stderr_tail": MetadataValue.text(stderr_tail),
                "failures": MetadataValue.json(failures),
            },
        )
    context.log.info(f"shard {task['shard']}: {json.dumps(summary['runs'])}, versions {json.dumps(summary['versions'])}")
    return {"shard": task["shard"], "summary": summary}


@op
def collect(context: OpExecutionContext, results: list) -> dict:
    """Checks every shard's summary and adds them up."""
    shards = len(results)
    problems = []
    totals = {"runs": {}, "history_rows": 0, "commit_retries": 0, "versions": {}}
    for result in sorted(results, key=lambda r: int(r["shard"].split("/")[0])):
        shard, summary = result["shard"], result["summary"]
        if summary.get("shard") != shard:
            problems.append(f"shard {shard}: its summary says shard {summary.get('shard')!r}")
        if summary["failures"] or summary["runs"].get("failed"):
            problems.append(f"shard {shard}: failed runs {summary['failures']}")
        for key, count in summary["runs"].items():
            totals["runs"][key] = totals["runs"].get(key, 0) + count
        totals["history_rows"] += summary["history_rows"]
        totals["commit_retries"] += summary.get("commit_retries", 0)
        for table, version in summary["versions"].items():  # the last commit wins: max over shards
            known = [v for v in (totals["versions"].get(table), version) if v is not None]
            totals["versions"][table] = max(known) if known else None
    if problems:
        raise Failure("runport sync: " + "; ".join(problems))
    combined = {"shards": shards, **totals}
    context.log.info("runport sync, all shards: " + json.dumps(combined))
    return combined


@job(executor_def=in_process_executor)
def runport_sync():
    collect(plan_shards().map(sync_shard).collect())


def main() -> int:
    parser = argparse.ArgumentParser(description="runport sync in N shards, as a Dagster job run in process")
    parser.add_argument("source")
    parser.add_argument("table")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--runport", default="runport", help="the runport executable (default: runport on PATH)")
    parser.add_argument("--full-refresh", action="store_true", help="rewrite the tables (needed when --shards changes)")
    args = parser.parse_args()
    if args.shards < 1:
        parser.error("--shards must be at least 1")

    config = {"source": args.source, "table": args.table, "shards": args.shards,
              "runport": args.runport, "full_refresh": args.full_refresh}
    # Dagster logs to stderr; stdout gets only the final JSON line.
    result = runport_sync.execute_in_process(run_config={"ops": {"plan_shards": {"config": config}}},
                                             raise_on_error=False)
    if result.success:
        print(json.dumps({"success": True, **result.output_for_node("collect")}), flush=True)
        return 0
    errors = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        text = data.user_failure_data.description if data.user_failure_data else None
        errors.append(f"{event.step_key}: {text or (data.error.message.strip() if data.error else 'failed')}")
    print("runport sync failed:\n" + "\n".join(errors), file=sys.stderr)
    print(json.dumps({"success": False, "shards": args.shards, "errors": errors}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
