"""What the benchmark scripts share: one command run as a measured child; a
test-bed server started in the background; runport's history rows per run.

`run_child` runs argv with its stdout and stderr in LOGS/<name>.stdout and
.stderr and fills a `Measured`: wall time, and the child's own peak RSS and
CPU time from os.wait4 (unlike getrusage(RUSAGE_CHILDREN), whose ru_maxrss is
the maximum over every child this process ever waited for, so one command's
peak never hides another's). The scripts add what they measure around it
(the server's CPU time, the rest of the machine's, sampled process trees).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")


PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (not its children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_sample(root: int) -> dict[int, tuple[int, float]]:
    """(resident bytes, CPU seconds) of `root` and each of its descendants."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            info[int(d)] = (int(stat[21]) * PAGE, (int(stat[11]) + int(stat[12])) / CLK_TCK)
            children.setdefault(int(stat[1]), []).append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    out, stack = {}, [root]
    while stack:
        p = stack.pop()
        if p in info:
            out[p] = info[p]
        stack.extend(children.get(p, []))
    return out


class TreeSampler:
    """A process tree sampled every `every` s on a thread, from `start(pid)`
    until `stop()`: `peak`, the largest sum of its resident bytes, and
    `cpu`, the last CPU seconds seen per process. os.wait4 misses a helper
    the child leaves running (the official W&B client's wandb-core)."""

    def __init__(self, every: float = 0.25):
        self.every, self.peak, self.cpu = every, 0, {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        def sample():
            while not self._done.wait(self.every):
                tree = tree_sample(pid)
                self.peak = max(self.peak, sum(rss for rss, _ in tree.values()))
                for p, (_, cpu) in tree.items():
                    self.cpu[p] = cpu

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def api_env(key: str) -> dict:
    """The environment of a client of the W&B API test server: its key, no
    other W&B settings, no proxy for loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["WANDB_API_KEY"] = key
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def http_json(url: str, body=None, headers: dict | None = None) -> dict:
    """One HTTP/1.0 request to a test-bed server on loopback, its JSON answer
    (a plain socket, no proxy: urllib would raise the bench process's RSS,
    the floor of every child's)."""
    import socket

    rest = url.split("://", 1)[1]
    hostport, path = (rest.split("/", 1) + [""])[:2]
    host, port = hostport.rsplit(":", 1)
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{'GET' if body is None else 'POST'} /{path} HTTP/1.0", f"Host: {hostport}",
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, int(port)), timeout=120) as c:
        c.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        chunks = []
        while chunk := c.recv(1 << 16):
            chunks.append(chunk)
    answer = b"".join(chunks)
    status_line, _, rest = answer.partition(b"\r\n")
    if status_line.split()[1:2] != [b"200"]:
        raise RuntimeError(f"{url}: {status_line.decode(errors='replace')}")
    return json.loads(rest.partition(b"\r\n\r\n")[2])


def admin(base: str, path: str, body=None) -> dict:
    """A W&B API test server's admin endpoint (`/_testbed/...`)."""
    return http_json(base + path, body)


def request_counts(base: str) -> dict:
    """The server's request accounting without the per-request log."""
    r = admin(base, "/_testbed/requests")
    return {k: r.get(k) for k in ("total", "by_origin", "by_status", "by_operation", "files",
                                  "credential_leaks")}


def machine_busy_s() -> float:
    """CPU seconds spent outside idle/iowait by the whole machine so far."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK_TCK


class Measured:
    def __init__(self, name: str):
        self.name = name
        self.argv: list[str] = []
        self.seconds = 0.0
        self.maxrss_kib = 0
        self.cpu_s = 0.0
        self.user_s = 0.0
        self.sys_s = 0.0
        self.server_cpu_s = 0.0
        self.other_cpu_s = 0.0
        self.status = 0
        self.stdout = ""
        self.stderr = ""

    @property
    def rss_mib(self) -> float:
        return self.maxrss_kib / 1024

    def last_json(self) -> dict | None:
        """runport's `--json` summary (and the helpers' results): the last line of stdout."""
        lines = [l for l in self.stdout.splitlines() if l.strip()]
        if not lines:
            return None
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            return None


def shown(argv: list[str]) -> str:
    """The command line for the log, long arguments shortened."""
    return " ".join(a if len(a) < 120 else a[:60] + " ..." for a in argv)


def pinned(cpus: set[int] | None):
    """A `preexec_fn` that keeps a child (and every thread it starts) on `cpus`."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def run_child(m: Measured, argv: list[str], logs: Path, cwd: Path, env: dict | None = None,
              started: Callable[[subprocess.Popen], Callable[[], None]] | None = None,
              cpus: set[int] | None = None) -> Measured:
    """Runs argv (on `cpus` when given) and fills `m`. `started(proc)`, when
    given, is called once the child runs (to start samplers) and returns
    what to call once it has exited, before the output is read."""
    logs.mkdir(parents=True, exist_ok=True)
    slug = m.name.replace(" ", "-")
    out_path, err_path = logs / f"{slug}.stdout", logs / f"{slug}.stderr"
    m.argv = argv
    # Dirty pages of an earlier command (hundreds of MB of Parquet) are
    # written back now, not while this command is timed.
    os.sync()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd, env=env, preexec_fn=pinned(cpus))
        stop = started(proc) if started else None
        _, status, ru = os.wait4(proc.pid, 0)
        m.seconds = time.perf_counter() - t0
        if stop:
            stop()
    proc.returncode = m.status = os.waitstatus_to_exitcode(status)
    m.maxrss_kib = ru.ru_maxrss
    m.cpu_s = ru.ru_utime + ru.ru_stime
    m.user_s, m.sys_s = ru.ru_utime, ru.ru_stime
    m.stdout = out_path.read_text(errors="replace")
    m.stderr = err_path.read_text(errors="replace")
    return m


def start_background(cmd: list[str], cwd: Path, stderr_path: Path, what: str,
                     cpus: set[int] | None = None) -> tuple[subprocess.Popen, dict]:
    """Starts a test-bed server (on `cpus` when given) that prints one JSON
    line (its address) and stays up until its stdin closes; returns the
    process and that line."""
    err = open(stderr_path, "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=cwd,
                            preexec_fn=pinned(cpus))
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise SystemExit(f"{what} did not start; see {stderr_path}")

    def drain():
        for _ in proc.stdout:
            pass

    threading.Thread(target=drain, daemon=True).start()
    return proc, json.loads(line)


def stop_background(proc: subprocess.Popen) -> None:
    """Stops a server from `start_background`: closes its stdin, then
    terminates it if it has not exited within 15 s."""
    proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(15)


def runport_rows_by_run(out: Path) -> dict[str, int]:
    """History rows per run_id in a runport export (row group by row group)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    counts: dict[str, int] = {}
    for part in sorted((out / "history").glob("part-*.parquet")):
        pf = pq.ParquetFile(str(part))
        for rg in range(pf.num_row_groups):
            col = pf.read_row_group(rg, columns=["run_id"]).column(0)
            for item in pc.value_counts(col).to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


def log(msg: str) -> None:
    """Progress on stderr (stdout holds the results)."""
    import sys

    print(msg, file=sys.stderr, flush=True)


def measure(name: str, argv: list[str], logs: Path, cwd: Path, need_json: bool = False) -> Measured:
    """`run_child` that stops the benchmark when the command fails (or,
    with `need_json`, prints no JSON summary line); `m.summary` is that line."""
    log(f"{name}: {' '.join(argv)}")
    m = run_child(Measured(name), argv, logs, cwd)
    if m.status != 0 or (need_json and m.last_json() is None):
        log(f"{name} failed (exit {m.status}); see {logs}\n{m.stderr[-3000:]}")
        raise SystemExit(1)
    m.summary = m.last_json() or {}
    return m


def build_runport(root: Path, runport: Path, no_build: bool, log: Callable[[str], None]) -> bool:
    """`cargo build --release` of the binary unless `no_build`; whether it is there."""
    if not no_build:
        log("building runport (release)")
        subprocess.run(["cargo", "build", "--release", "--bin", "runport"], cwd=root, check=True)
    if not runport.exists():
        log(f"{runport} is missing: run without --no-build")
        return False
    return True


def load_lines(load_start, load_end, results: dict[str, Measured]) -> list[str]:
    """The load average around the measurements and, when other work used
    more than 0.2 CPUs during a command, a warning that the numbers are noisy."""
    lines = [f"load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end ({os.cpu_count()} CPUs)"]
    busy = {n: m.other_cpu_s / m.seconds for n, m in results.items() if m.seconds > 0}
    if any(v > 0.2 for v in busy.values()):
        lines.append("other work was running: it used on average " +
                     ", ".join(f"{v:.1f} CPUs during {n}" for n, v in busy.items()) +
                     "; the numbers are noisy")
    return lines
