#!/usr/bin/env python3
"""`runport export` and `runport sync` into S3 (the moto server on loopback)
against the same on local disk: time ratio and peak RSS.

    target/testbed-venv/bin/python benches/object_store.py [--source DIR] [--no-build]

--source defaults to the W&B local-files set of benches/sync.py
(target/bench-data/sync/files-100x10000x10/wandb: 100 runs of 10,000 steps
x 10 keys written by the W&B SDK; run `benches/sync.py --source files` once
to write it). The moto server (`moto[server]` from
tests/testbed/requirements-s3.txt, in target/s3-venv, created when missing)
runs on a free loopback port, in memory, on the same two cores. Each command
is a child process (wall, CPU, peak RSS from wait4): an export to a local
folder and to `s3://lake/export`, a first sync to a local TABLE and to
`s3://lake/table`, then an unchanged sync of each. Uploads go in 8 MiB
parts, at most two in flight, so the S3 peak RSS should stay near the
local one whatever the size of the files (up to 256 MiB each here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNPORT = ROOT / "target" / "release" / "runport"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measured, build_runport, run_child  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def s3_venv() -> Path:
    venv = ROOT / "target" / "s3-venv"
    requirements = ROOT / "tests" / "testbed" / "requirements-s3.txt"
    marker = venv / ".runport-requirements"
    if not (marker.exists() and marker.read_bytes() == requirements.read_bytes()):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
                       check=True)
        marker.write_bytes(requirements.read_bytes())
    return venv / "bin"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(ROOT / "target" / "bench-data" / "sync" / "files-100x10000x10" / "wandb"))
    ap.add_argument("--work", default=str(ROOT / "target" / "bench-data" / "object-store"))
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    source = Path(args.source)
    if not source.exists():
        log(f"{source} is missing: run benches/sync.py --source files first")
        return 1
    build_runport(ROOT, RUNPORT, args.no_build, log)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    bin_dir = s3_venv()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=open(logs / "moto.stderr", "wb"))
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        subprocess.run([str(bin_dir / "python"), "-c",
                        "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='bench', "
                        "aws_secret_access_key='bench', region_name='us-east-1').create_bucket(Bucket='lake')",
                        endpoint], check=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                   AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true")
        results = []

        def measure(name: str, argv: list[str]) -> Measured:
            log(f"{name}: {' '.join(argv)}")
            m = run_child(Measured(name), argv, logs, ROOT, env)
            if m.status != 0 or m.last_json() is None:
                log(f"{name} failed (exit {m.status})\n{m.stderr[-3000:]}")
                raise SystemExit(1)
            m.summary = m.last_json()
            results.append(m)
            return m

        rp = str(RUNPORT)
        measure("export local", [rp, "export", str(source), "-o", str(work / "export"), "--json"])
        measure("export s3", [rp, "export", str(source), "-o", "s3://lake/export", "--json"])
        measure("sync local", [rp, "sync", str(source), str(work / "table"), "--json"])
        measure("sync s3", [rp, "sync", str(source), "s3://lake/table", "--json"])
        measure("unchanged local", [rp, "sync", str(source), str(work / "table"), "--json"])
        measure("unchanged s3", [rp, "sync", str(source), "s3://lake/table", "--json"])
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"{source}: export and sync, local disk against S3 (moto on loopback)")
    print(f"{'command':<16} {'wall s':>7} {'cpu s':>6} {'RSS MiB':>8} {'MB written':>10}")
    for m in results:
        print(f"{m.name:<16} {m.seconds:>7.2f} {m.user_s + m.sys_s:>6.2f} {m.rss_mib:>8.0f} "
              f"{m.summary.get('bytes', 0) / 1e6:>10.1f}")
    by = {m.name: m for m in results}
    for what in ("export", "sync", "unchanged"):
        local, s3 = by[f"{what} local"], by[f"{what} s3"]
        print(f"{what}: S3 / local wall {s3.seconds / local.seconds:.2f}, peak RSS {s3.rss_mib:.0f} / "
              f"{local.rss_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
