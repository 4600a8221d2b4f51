#!/usr/bin/env python3
"""Independent reference reader for W&B `.wandb` run files.

It implements the semantics of `schemas/output/README.md` (default selection:
every column, every history row) with its own LevelDB-log reader (CRC checked)
and the SDK's protobuf classes (`wandb.proto.wandb_internal_pb2`), and shares
no code with runport.

    python wandb_reference.py check  --runs DIR --export OUT [--history long|wide|none] [--system [--select P]]
    python wandb_reference.py check-system --runs DIR --export OUT [--select P]
    python wandb_reference.py dump-system --runs DIR [--select P] [--summary]
    python wandb_reference.py export --runs DIR -o OUT [--history long|wide|none] [--system [--select P]]
    python wandb_reference.py scenarios --runs DIR
    python wandb_reference.py selftest --runs DIR

`check` compares runport's export in OUT with the reference, value by value,
reading it with both pyarrow and polars; it exits 1 on any difference.
`check-system` (or `check --system`) does the same for the system table
(OUT/system/part-*.parquet: one row per item of every stats record), with
`--select` as runport takes it (globs over `system.<key>`). `dump-system`
prints the reference's system rows as JSON lines. `export` writes the
reference itself as Parquet (runs.parquet, history/part-00000.parquet,
with --system system/part-00000.parquet, _manifest.json). `scenarios`
checks the reference's own reading against the expectations that
make_wandb_runs.py wrote to DIR/scenarios.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
import time
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER = b":W&B\xe1\xbe\x00"
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RUNNING_WINDOW_S = 60.0
SPECIAL_HISTORY = {("_step",): "step", ("_timestamp",): "timestamp", ("_runtime",): "runtime"}


class DecodeError(Exception):
    pass


# --------------------------------------------------------------------------
# LevelDB log reader
# --------------------------------------------------------------------------


def read_log(path: Path) -> tuple[list[bytes], str | None]:
    """Returns the complete records of one `.wandb` file and a note on how it ended.

    Raises DecodeError on a bad header, a checksum mismatch or an inconsistent
    chunk sequence. A file that ends inside a chunk or a record (a crashed
    writer) yields the complete records before that point.
    """
    data = path.read_bytes()
    if len(data) < len(HEADER):
        raise DecodeError(f"{path.name}: file shorter than the 7-byte header")
    if data[: len(HEADER)] != HEADER:
        raise DecodeError(f"{path.name}: bad header {data[:7].hex()}")
    records: list[bytes] = []
    pending: list[bytes] | None = None
    pos = len(HEADER)
    end_note = None
    n = len(data)
    while pos < n:
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:
            pos += left  # block trailer (zero padding)
            continue
        if pos + CHUNK_HEADER > n:
            end_note = "truncated chunk header"
            break
        crc, length, ctype = struct.unpack_from("<IHB", data, pos)
        if ctype == 0 and length == 0 and crc == 0:
            # zeroed (preallocated) space: nothing more in this block
            pos += left
            continue
        start = pos + CHUNK_HEADER
        if start + length > n:
            end_note = "truncated chunk"
            break
        if length > left - CHUNK_HEADER:
            raise DecodeError(f"{path.name}: chunk at offset {pos} crosses a block boundary")
        payload = data[start : start + length]
        if zlib.crc32(bytes([ctype]) + payload) != crc:
            raise DecodeError(f"{path.name}: checksum mismatch at offset {pos}")
        pos = start + length
        if ctype == FULL:
            if pending is not None:
                raise DecodeError(f"{path.name}: FULL chunk inside a record at offset {pos}")
            records.append(payload)
        elif ctype == FIRST:
            if pending is not None:
                raise DecodeError(f"{path.name}: FIRST chunk inside a record at offset {pos}")
            pending = [payload]
        elif ctype == MIDDLE:
            if pending is None:
                raise DecodeError(f"{path.name}: MIDDLE chunk outside a record at offset {pos}")
            pending.append(payload)
        elif ctype == LAST:
            if pending is None:
                raise DecodeError(f"{path.name}: LAST chunk outside a record at offset {pos}")
            pending.append(payload)
            records.append(b"".join(pending))
            pending = None
        else:
            raise DecodeError(f"{path.name}: unknown chunk type {ctype} at offset {pos}")
    if pending is not None:
        end_note = "incomplete record at end of file"
    return records, end_note


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _parse_int(text: str):
    v = int(text)
    if INT64_MIN <= v <= INT64_MAX:
        return v
    return float(text)


def parse_json(text: str):
    """JSON with bare NaN/Infinity/-Infinity; ints beyond int64 become floats."""
    m = _NUMBER.fullmatch(text)
    if m is not None:
        if m.lastindex is None:  # no fraction, no exponent
            return _parse_int(text)
        return float(text)
    c = _CONSTANTS.get(text)
    if c is not None:
        return c
    return json.loads(text, parse_int=_parse_int, parse_constant=lambda s: _CONSTANTS[s])


def is_opaque(v) -> bool:
    """An object kept whole: empty, or carrying `_type`."""
    return isinstance(v, dict) and (len(v) == 0 or "_type" in v)


def flatten(path: tuple, value, out: list):
    if isinstance(value, dict) and not is_opaque(value):
        for k, v in value.items():
            flatten(path + (k,), v, out)
    else:
        out.append((path, value))


def encode_segment(s: str) -> str:
    return s.replace("\\", "\\\\").replace(".", "\\.")


def encode_path(path) -> str:
    return ".".join(encode_segment(s) for s in path)


def json_ready(v):
    """NaN and the infinities as the strings "NaN", "Infinity", "-Infinity"
    (as the W&B API writes them), everywhere in a value."""
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if isinstance(v, dict):
        return {k: json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    return v


def json_text(v) -> str:
    """Compact JSON, source key order, non-finite numbers as strings."""
    return json.dumps(json_ready(v), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def number_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return repr(v)


def kind_of(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "json"


def unify(kinds: set) -> str:
    kinds = kinds - {"null"}
    if not kinds:
        return "null"
    if "json" in kinds:
        return "json"
    if kinds == {"bool"}:
        return "bool"
    if kinds == {"int"}:
        return "int"
    if kinds <= {"int", "float"}:
        return "float"
    if kinds == {"string"}:
        return "string"
    return "mixed"


def convert(kind: str, v):
    """The cell written for value v in a column of the given unified kind."""
    if v is None:
        return None
    if kind in ("bool", "int", "string"):
        return v
    if kind == "float":
        return float(v)
    if kind == "json":
        return json_text(v)
    if kind == "mixed":
        return v if isinstance(v, str) else number_text(v)
    return None


def round_half_away(x: float) -> int:
    if x < 0:
        return -round_half_away(-x)
    f = math.floor(x)
    return int(f) + (1 if x - f >= 0.5 else 0)


def seconds_to_us(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return round_half_away(float(v) * 1e6)


def pb_timestamp_us(ts) -> int:
    return ts.seconds * 1_000_000 + round_half_away(ts.nanos / 1000.0)


def pb_timestamp_s(ts) -> float:
    """A protobuf Timestamp as float seconds, computed as wandb-core's
    filestream computes an events line's `_timestamp`:
    float64(seconds) + float64(nanos)/1e9."""
    return float(ts.seconds) + float(ts.nanos) / 1e9


def stats_timestamp_us(ts) -> int:
    """The system table's timestamp: the float seconds (what the W&B API's
    `_timestamp` gives back) times 1e6, rounded half away from zero. Near
    1.8e9 s a float64 resolves 2^-22 s (0.24 µs), so this differs from the
    exact `pb_timestamp_us` by 1 µs for some timestamps: a reader of files
    and a reader of the API agree only through the float."""
    return round_half_away(pb_timestamp_s(ts) * 1e6)


def stats_number(v):
    """The system table's `value`: float64 for a JSON number (NaN and the
    infinities included), None for anything else (string, bool, null,
    object, list)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


# --------------------------------------------------------------------------
# Config / summary trees
# --------------------------------------------------------------------------


class Node(dict):
    """An interior (flattened) object of a config or summary tree."""


def to_tree(v):
    if isinstance(v, dict) and not is_opaque(v):
        n = Node()
        for k, x in v.items():
            n[k] = to_tree(x)
        return n
    return v


def tree_set(root: Node, path: tuple, value):
    node = root
    for seg in path[:-1]:
        child = node.get(seg)
        if not isinstance(child, Node):
            child = Node()
            node[seg] = child
        node = child
    node[path[-1]] = to_tree(value)


def tree_remove(root: Node, path: tuple):
    node = root
    for seg in path[:-1]:
        node = node.get(seg)
        if not isinstance(node, Node):
            return
    node.pop(path[-1], None)


def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def tree_leaves(root: Node) -> dict:
    out: dict = {}

    def walk(prefix, node):
        for k, v in node.items():
            p = prefix + (k,)
            if isinstance(v, Node) and "_type" in v:
                # media the SDK wrote key by key: one object again
                out[p] = plain(v)
            elif isinstance(v, Node):
                walk(p, v)
            else:
                out[p] = v

    walk((), root)
    return out


def item_path(item) -> tuple:
    nk = item.nested_key
    return tuple(nk) if nk else (item.key,)


def history_item_value(item):
    which = item.WhichOneof("value")
    if which is None:
        return parse_json(item.value_json)
    if which == "none":
        return None
    if which == "json":
        return parse_json(item.json)
    return getattr(item, which)


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------


class Run:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.files: list[Path] = []
        self.ident = {
            "entity": None, "project": None, "name": None, "group": None, "job_type": None,
            "tags": [], "notes": None, "host": None, "git_remote": None, "git_commit": None,
        }
        self.created_at = None
        self.updated_at = None
        self.exit = None
        self.last_hist_runtime = None
        self.config = Node()
        self.summary = Node()
        # history: list of (step, ts_us, runtime, [(path, value), ...])
        self.history: list = []
        self.state = None
        self.state_alt = None
        self.end_notes: list[str] = []
        # the first run record's start_time as float seconds (the base of the
        # API's system `_runtime`)
        self.start_s = None
        # system metrics: one entry per stats record, in log order (files in
        # folder order): (file index, float seconds or None, µs or None,
        # [(key, parsed JSON value, parsed ok)])
        self.system: list = []
        self._segment = -1

    def _bump(self, us):
        if us is not None and (self.updated_at is None or us > self.updated_at):
            self.updated_at = us

    def apply_updates(self, tree: Node, rec):
        for item in rec.update:
            path = item_path(item)
            if path[0] == "_wandb":
                continue
            tree_set(tree, path, parse_json(item.value_json))
        for item in rec.remove:
            path = item_path(item)
            if path[0] == "_wandb":
                continue
            tree_remove(tree, path)

    def read_file(self, path: Path):
        payloads, note = read_log(path)
        if note:
            self.end_notes.append(f"{path.name}: {note}")
        self.exit = None  # a later segment (resume) restarts the run
        self._segment += 1
        for data in payloads:
            rec = pb.Record()
            rec.ParseFromString(data)
            t = rec.WhichOneof("record_type")
            if t == "history":
                self._history(rec.history)
            elif t == "summary":
                self.apply_updates(self.summary, rec.summary)
            elif t == "config":
                self.apply_updates(self.config, rec.config)
            elif t == "run":
                self._run(rec.run)
            elif t == "stats":
                if rec.stats.HasField("timestamp"):
                    self._bump(pb_timestamp_us(rec.stats.timestamp))
                self._stats(rec.stats)
            elif t == "exit":
                self.exit = rec.exit

    def _run(self, r):
        def setv(name, v):
            if v:
                self.ident[name] = v

        setv("entity", r.entity)
        setv("project", r.project)
        setv("name", r.display_name)
        setv("group", r.run_group)
        setv("job_type", r.job_type)
        setv("notes", r.notes)
        setv("host", r.host)
        if len(r.tags):
            self.ident["tags"] = list(r.tags)
        if r.HasField("git"):
            setv("git_remote", r.git.remote_url)
            setv("git_commit", r.git.commit)
        if r.HasField("start_time"):
            us = pb_timestamp_us(r.start_time)
            if self.created_at is None:
                self.created_at = us
                self.start_s = pb_timestamp_s(r.start_time)
            self._bump(us)
        if r.HasField("config"):
            self.apply_updates(self.config, r.config)
        if r.HasField("summary"):
            self.apply_updates(self.summary, r.summary)

    def _stats(self, s):
        """One stats record: its items verbatim (key as written, value_json
        parsed; a value that is not JSON is kept as not parsed, a null cell)."""
        items = []
        for item in s.item:
            try:
                items.append((item.key, parse_json(item.value_json), True))
            except (ValueError, KeyError):
                items.append((item.key, None, False))
        if s.HasField("timestamp"):
            ts_s, ts_us = pb_timestamp_s(s.timestamp), stats_timestamp_us(s.timestamp)
        else:
            ts_s = ts_us = None
        self.system.append((self._segment, ts_s, ts_us, items))

    def _history(self, h):
        pairs: list = []
        specials = {}
        # media (images, histograms) arrive key by key with a `_type` item:
        # regroup each into one object at its prefix
        media = {item_path(i)[:-1] for i in h.item
                 if len(item_path(i)) >= 2 and item_path(i)[-1] == "_type"}
        grouped: dict = {}
        for item in h.item:
            path = item_path(item)
            prefix = next((m for m in media if len(path) > len(m) and path[:len(m)] == m), None)
            if prefix is not None:
                node = grouped.setdefault(prefix, {})
                for seg in path[len(prefix):-1]:
                    node = node.setdefault(seg, {})
                node[path[-1]] = history_item_value(item)
                continue
            flatten(path, history_item_value(item), pairs)
        for prefix in sorted(media, key=lambda m: m):
            if prefix in grouped:
                pairs.append((prefix, grouped[prefix]))
        keyed = []
        for path, v in pairs:
            special = SPECIAL_HISTORY.get(path)
            if special is not None:
                specials[special] = v
            else:
                keyed.append((path, v))
        if h.HasField("step"):
            step = h.step.num
        else:
            s = specials.get("step")
            step = int(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None
        ts = seconds_to_us(specials.get("timestamp"))
        rt = specials.get("runtime")
        rt = float(rt) if isinstance(rt, (int, float)) and not isinstance(rt, bool) else None
        if rt is not None:
            self.last_hist_runtime = rt
        self._bump(ts)
        self.history.append((step, ts, rt, keyed))

    def finish(self, now: float, slack: float = 0.0):
        if self.exit is not None:
            code = self.exit.exit_code
            self.exit_code = code
            self.runtime_s = float(self.exit.runtime)
            self.state = "finished" if code == 0 else "failed"
        else:
            self.exit_code = None
            self.runtime_s = self.last_hist_runtime
            mtime = max(f.stat().st_mtime for f in self.files)
            self.state = "running" if now - mtime < RUNNING_WINDOW_S else "crashed"
            # `check` measures from the end of the export (runs.parquet's mtime); the
            # export read the files up to `slack` seconds earlier, so just past the
            # 60 s boundary either state is accepted
            age = now - mtime
            self.state_alt = ({"running", "crashed"}
                              if RUNNING_WINDOW_S - 1 <= age <= RUNNING_WINDOW_S + slack else None)
        self.config_leaves = tree_leaves(self.config)
        self.summary_leaves = tree_leaves(self.summary)


def discover(runs_dir: Path) -> dict[str, list[Path]]:
    """Run id -> its .wandb files in folder-name order."""
    groups: dict[str, list[Path]] = {}
    for p in runs_dir.rglob("*.wandb"):
        if not p.is_file() or p.parent.is_symlink() or "latest-run" in p.parts:
            continue
        name = p.name
        if not (name.startswith("run-") and name.endswith(".wandb")):
            continue
        groups.setdefault(name[4:-6], []).append(p)
    for files in groups.values():
        files.sort(key=lambda f: (f.parent.name, str(f)))
    return groups


def read_runs(runs_dir: Path, now: float | None = None, slack: float = 0.0):
    """Reads every run under runs_dir. `now` is the time against which the
    60 s `running` window is measured (default: the current time)."""
    now = time.time() if now is None else now
    runs: list[Run] = []
    failures = []
    for run_id, files in sorted(discover(runs_dir).items()):
        run = Run(run_id)
        run.files = files
        try:
            for f in files:
                run.read_file(f)
            run.finish(now, slack)
        except DecodeError as e:
            failures.append({"run": run_id, "stage": "decode", "error": str(e)})
            continue
        runs.append(run)
    runs.sort(key=lambda r: r.run_id)
    return runs, failures


# --------------------------------------------------------------------------
# Tables (as column lists + column kinds)
# --------------------------------------------------------------------------

IDENTITY = [
    ("source", "string"), ("entity", "string"), ("project", "string"), ("run_id", "string"),
    ("name", "string"), ("state", "string"), ("created_at", "timestamp"),
    ("updated_at", "timestamp"), ("runtime_s", "float"), ("exit_code", "int"),
    ("group", "string"), ("job_type", "string"), ("tags", "tags"), ("notes", "string"),
    ("host", "string"), ("git_remote", "string"), ("git_commit", "string"),
]


class Table:
    """Ordered columns: name -> (kind, values)."""

    def __init__(self):
        self.names: list[str] = []
        self.kinds: dict[str, str] = {}
        self.values: dict[str, list] = {}
        self.alternatives: dict[str, dict[int, set]] = {}  # accepted other values per cell

    def add(self, name, kind, values):
        self.names.append(name)
        self.kinds[name] = kind
        self.values[name] = values

    @property
    def num_rows(self):
        return len(self.values[self.names[0]]) if self.names else 0


def _unified_columns(per_run_leaves: list[dict], prefix: str):
    kinds: dict[str, set] = {}
    by_run = []
    for leaves in per_run_leaves:
        enc = {}
        for path, v in leaves.items():
            name = encode_path(path)
            enc[name] = v
            kinds.setdefault(name, set()).add(kind_of(v))
        by_run.append(enc)
    cols = []
    for name in sorted(kinds):
        k = unify(kinds[name])
        cols.append((prefix + name, k, [convert(k, enc.get(name)) for enc in by_run]))
    return cols


def runs_table(runs: list[Run]) -> Table:
    t = Table()
    for name, kind in IDENTITY:
        vals = []
        for r in runs:
            if name == "source":
                vals.append("wandb")
            elif name == "run_id":
                vals.append(r.run_id)
            elif name == "state":
                vals.append(r.state)
            elif name == "created_at":
                vals.append(r.created_at)
            elif name == "updated_at":
                vals.append(r.updated_at)
            elif name == "runtime_s":
                vals.append(r.runtime_s)
            elif name == "exit_code":
                vals.append(r.exit_code)
            else:
                vals.append(r.ident[name])
        t.add(name, kind, vals)
    t.alternatives["state"] = {i: r.state_alt for i, r in enumerate(runs) if r.state_alt}
    for name, k, vals in _unified_columns([r.config_leaves for r in runs], "config."):
        t.add(name, k, vals)
    for name, k, vals in _unified_columns([r.summary_leaves for r in runs], "summary."):
        t.add(name, k, vals)
    return t


def history_long(runs: list[Run]) -> Table:
    run_ids, steps, tss, rts, keys, values, value_jsons = [], [], [], [], [], [], []
    for r in runs:
        rows = []
        for step, ts, rt, keyed in r.history:
            for path, v in keyed:
                rows.append((encode_path(path), step, ts, rt, v))
        rows.sort(key=lambda x: (x[0], x[1]))  # stable: ties keep log order
        rid = r.run_id
        for key, step, ts, rt, v in rows:
            run_ids.append(rid)
            steps.append(step)
            tss.append(ts)
            rts.append(rt)
            keys.append(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                values.append(float(v))
                value_jsons.append(None)
            else:
                values.append(None)
                value_jsons.append(json_text(v))
    t = Table()
    t.add("run_id", "string", run_ids)
    t.add("step", "int", steps)
    t.add("timestamp", "timestamp", tss)
    t.add("runtime_s", "float", rts)
    t.add("key", "string", keys)
    t.add("value", "float", values)
    t.add("value_json", "json_plain", value_jsons)
    return t


def history_wide(runs: list[Run]) -> Table:
    kinds: dict[str, set] = {}
    rows = []
    for r in runs:
        for step, ts, rt, keyed in r.history:
            cells = {}
            for path, v in keyed:
                name = encode_path(path)
                cells[name] = v
                kinds.setdefault(name, set()).add(kind_of(v))
            rows.append((r.run_id, step, ts, rt, cells))
    t = Table()
    t.add("run_id", "string", [x[0] for x in rows])
    t.add("step", "int", [x[1] for x in rows])
    t.add("timestamp", "timestamp", [x[2] for x in rows])
    t.add("runtime_s", "float", [x[3] for x in rows])
    for name in sorted(kinds):
        k = unify(kinds[name])
        t.add(name, k, [convert(k, x[4].get(name)) for x in rows])
    return t


def select_patterns(select: str | None):
    """`--select` as runport takes it: comma-separated globs where only `*`
    is special (any run of characters, dots and slashes included). None:
    everything."""
    if select is None:
        return None
    pats = []
    for text in select.split(","):
        text = text.strip()
        if not text:
            raise ValueError("--select has an empty item")
        pats.append(re.compile(".*".join(re.escape(part) for part in text.split("*")), re.DOTALL))
    return pats


def selected(pats, name: str) -> bool:
    return pats is None or any(p.fullmatch(name) for p in pats)


def system_rows(runs: list[Run], select: str | None = None) -> list:
    """The system table's rows as (run_id, µs, key, value, folder index),
    sorted by (run_id, key, timestamp), ties in log order. One row per item
    of every stats record, the key verbatim; `--select` patterns match
    `system.<key>`. A record without a timestamp sorts first (null)."""
    pats = select_patterns(select)
    out = []
    for r in runs:
        rows = []
        for seg, _ts_s, ts_us, items in r.system:
            for key, v, _ok in items:
                if selected(pats, "system." + key):
                    rows.append((r.run_id, ts_us, key, stats_number(v), seg))
        rows.sort(key=lambda x: (x[2], -1 if x[1] is None else x[1]))  # stable
        out.extend(rows)
    return out


def system_table(runs: list[Run], select: str | None = None) -> Table:
    rows = system_rows(runs, select)
    t = Table()
    t.add("run_id", "string", [x[0] for x in rows])
    t.add("timestamp", "timestamp", [x[1] for x in rows])
    t.add("key", "string", [x[2] for x in rows])
    t.add("value", "float", [x[3] for x in rows])
    return t


# --------------------------------------------------------------------------
# Arrow types
# --------------------------------------------------------------------------


def arrow_type(kind: str):
    import pyarrow as pa

    return {
        "string": pa.string(), "json": pa.string(), "mixed": pa.string(), "null": pa.string(),
        "json_plain": pa.string(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(),
        "timestamp": pa.timestamp("us", tz="UTC"), "tags": pa.list_(pa.string()),
    }[kind]


def field_kind_meta(kind: str):
    if kind == "json":
        return {b"runport.kind": b"json"}
    if kind == "mixed":
        return {b"runport.kind": b"mixed"}
    return None


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------

VERSION = "reference"


def to_arrow(table: Table):
    import pyarrow as pa

    fields, arrays = [], []
    for name in table.names:
        kind = table.kinds[name]
        typ = arrow_type(kind)
        arrays.append(pa.array(table.values[name], type=typ))
        fields.append(pa.field(name, typ, metadata=field_kind_meta(kind)))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_parquet(table, path: Path, source: str, name: str):
    import pyarrow.parquet as pq

    meta = {
        b"runport.version": VERSION.encode(), b"runport.source": source.encode(),
        b"runport.selection": b"*", b"runport.table": name.encode(),
    }
    table = table.replace_schema_metadata(meta)
    dict_cols = [c for c in ("run_id", "key") if c in table.column_names]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(
        table, tmp, compression="zstd", write_statistics=True, use_dictionary=dict_cols,
        row_group_size=1_048_576, write_page_index=True,
    )
    os.replace(tmp, path)


def cmd_export(args) -> int:
    runs_dir = Path(args.runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs, failures = read_runs(runs_dir)
    t1 = time.perf_counter()
    source = str(args.runs)
    rt = to_arrow(runs_table(runs))
    write_parquet(rt, out / "runs.parquet", source, "runs")
    tables = {"runs": {"files": [{"path": "runs.parquet", "rows": rt.num_rows,
                                  "bytes": (out / "runs.parquet").stat().st_size}],
                       "columns": rt.column_names}}
    hist_rows = 0
    if args.history != "none":
        (out / "history").mkdir(exist_ok=True)
        ht = to_arrow(history_long(runs) if args.history == "long" else history_wide(runs))
        write_parquet(ht, out / "history" / "part-00000.parquet", source, "history")
        hist_rows = ht.num_rows
        tables["history"] = {"files": [{"path": "history/part-00000.parquet", "rows": ht.num_rows,
                                        "bytes": (out / "history" / "part-00000.parquet").stat().st_size}],
                             "columns": ht.column_names}
    sys_rows = 0
    if getattr(args, "system", False):
        (out / "system").mkdir(exist_ok=True)
        st = to_arrow(system_table(runs, getattr(args, "select", None)))
        write_parquet(st, out / "system" / "part-00000.parquet", source, "system")
        sys_rows = st.num_rows
        tables["system"] = {"files": [{"path": "system/part-00000.parquet", "rows": st.num_rows,
                                       "bytes": (out / "system" / "part-00000.parquet").stat().st_size}],
                            "columns": st.column_names}
    manifest = {
        "format_version": 1, "runport_version": VERSION, "source": source,
        "source_kind": "wandb-files", "selection": "*", "history_layout": args.history,
        "plan": {}, "tables": tables, "runs": len(runs), "failures": failures, "warnings": [],
    }
    tmp = out / f"._manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "_manifest.json")
    t2 = time.perf_counter()
    print(f"runs: {len(runs)}, history rows: {hist_rows}, "
          + (f"system rows: {sys_rows}, " if getattr(args, "system", False) else "")
          + f"failures: {len(failures)}; read {t1 - t0:.2f} s, write {t2 - t1:.2f} s")
    return 0


# --------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------


class Diffs:
    LIMIT = 20

    def __init__(self):
        self.items: list[str] = []
        self.count = 0

    def add(self, msg: str):
        self.count += 1
        if len(self.items) < self.LIMIT:
            self.items.append(msg)

    def failed(self, between: str) -> bool:
        """Prints the differences found between `between`; whether there were any."""
        if not self.count:
            return False
        print(f"FAIL: {self.count} difference(s) between {between}:")
        for d in self.items:
            print("  " + d)
        if self.count > len(self.items):
            print(f"  ... and {self.count - len(self.items)} more")
        return True


def float_eq(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def json_eq(a, b) -> bool:
    """Structural equality of parsed JSON; numbers by value, NaN == NaN."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a.keys()) == list(b.keys()) and all(json_eq(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _loads(s):
    try:
        return True, json.loads(s)
    except (ValueError, TypeError):
        return False, s


def _as_number(s: str):
    t = s.strip()
    if t in _CONSTANTS:
        return _CONSTANTS[t]
    if _NUMBER.fullmatch(t):
        return int(t) if re.fullmatch(r"-?[0-9]+", t) else float(t)
    return None


def cell_eq(kind: str, exp, got) -> bool:
    if exp is None or got is None:
        return exp is None and got is None
    if kind == "float":
        return isinstance(got, float) and float_eq(exp, got)
    if kind in ("json", "json_plain"):
        ok, g = _loads(got)
        return ok and json_eq(json.loads(exp), g)
    if kind == "mixed":
        if exp == got:
            return True
        ne, ng = _as_number(exp), _as_number(got)
        if ne is not None and ng is not None:
            return json_eq(float(ne), float(ng)) if (isinstance(ne, float) or isinstance(ng, float)) else ne == ng
        return False
    if kind == "bool":
        return isinstance(got, bool) and exp == got
    if kind == "int" or kind == "timestamp":
        return isinstance(got, int) and not isinstance(got, bool) and exp == got
    if kind == "tags":
        return list(got) == list(exp)
    return exp == got


def type_ok(kind: str, typ) -> bool:
    import pyarrow as pa

    if kind == "tags":
        return pa.types.is_list(typ) and typ.value_type == pa.string()
    return typ == arrow_type(kind)


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def read_export_table(paths: list[Path]):
    """Returns {reader: (column names, {name: values}, {name: arrow type or None})}."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = {}
    tables = [pq.read_table(p) for p in paths]
    t = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    vals, types, metas = {}, {}, {}
    for f in t.schema:
        col = t.column(f.name)
        if pa.types.is_timestamp(f.type):
            col = pc.cast(col, pa.int64())
        vals[f.name] = col.to_pylist()
        types[f.name] = f.type
        metas[f.name] = f.metadata or {}
    out["pyarrow"] = (t.schema.names, vals, types, metas)
    frames = [pl.read_parquet(p) for p in paths]
    df = pl.concat(frames) if len(frames) > 1 else frames[0]
    pvals = {}
    for name, dtype in df.schema.items():
        s = df[name]
        if isinstance(dtype, pl.Datetime):
            s = s.dt.epoch(time_unit="us")
        pvals[name] = s.to_list()
    out["polars"] = (list(df.columns), pvals, None, None)
    return out


def compare_table(label: str, exp: Table, paths: list[Path], diffs: Diffs, context) -> int:
    readers = read_export_table(paths)
    for reader, (names, vals, types, metas) in readers.items():
        tag = f"{label} [{reader}]"
        if names != exp.names:
            missing = [c for c in exp.names if c not in names]
            extra = [c for c in names if c not in exp.names]
            diffs.add(f"{tag}: columns differ; missing {missing[:10]}, unexpected {extra[:10]}"
                      + ("" if missing or extra else f"; order expected {exp.names}, got {names}"))
        n_got = len(vals[names[0]]) if names else 0
        if n_got != exp.num_rows:
            diffs.add(f"{tag}: {n_got} rows, expected {exp.num_rows}")
        for name in exp.names:
            if name not in vals:
                continue
            kind = exp.kinds[name]
            if types is not None:
                if not type_ok(kind, types[name]):
                    diffs.add(f"{tag}: column {name!r} has type {types[name]}, expected {arrow_type(kind)}")
                want = field_kind_meta(kind)
                got_kind = metas[name].get(b"runport.kind")
                if want is not None and got_kind != want[b"runport.kind"]:
                    diffs.add(f"{tag}: column {name!r} field metadata runport.kind={got_kind!r}, "
                              f"expected {want[b'runport.kind']!r}")
                if want is None and kind != "json_plain" and got_kind is not None:
                    diffs.add(f"{tag}: column {name!r} has runport.kind={got_kind!r}, expected none")
            ev, gv = exp.values[name], vals[name]
            alts = exp.alternatives.get(name, {})
            for i in range(min(len(ev), len(gv))):
                if i in alts and gv[i] in alts[i]:
                    continue
                if not cell_eq(kind, ev[i], gv[i]):
                    diffs.add(f"{tag}: {context(i)} column {name!r}: expected {_show(ev[i])}, got {_show(gv[i])}")
    return exp.num_rows


def check_parquet_properties(path: Path, table_name: str, diffs: Diffs, dict_cols):
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path).metadata
    kv = md.metadata or {}
    for key in (b"runport.version", b"runport.source", b"runport.selection", b"runport.table"):
        if key not in kv:
            diffs.add(f"{path.name}: key-value metadata lacks {key.decode()}")
    if kv.get(b"runport.table") not in (None, table_name.encode()):
        diffs.add(f"{path.name}: runport.table is {kv.get(b'runport.table')!r}, expected {table_name!r}")
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        if rg.num_rows > 1_048_576:
            diffs.add(f"{path.name}: row group {g} has {rg.num_rows} rows (> 1,048,576)")
        for c in range(rg.num_columns):
            col = rg.column(c)
            name = col.path_in_schema
            # Tables of more than 512 columns are Snappy (schemas/output/README.md).
            codec = "SNAPPY" if md.num_columns > 512 else "ZSTD"
            if col.compression != codec:
                diffs.add(f"{path.name}: row group {g} column {name} compression {col.compression}, expected {codec}")
            if col.statistics is None:
                diffs.add(f"{path.name}: row group {g} column {name} has no statistics")
            if name in dict_cols and not any("DICTIONARY" in e for e in col.encodings):
                diffs.add(f"{path.name}: row group {g} column {name} is not dictionary encoded ({col.encodings})")


def cmd_check(args) -> int:
    runs_dir, out = Path(args.runs), Path(args.export)
    diffs = Diffs()
    runs_path = out / "runs.parquet"
    # the `running`/`crashed` state depends on when the export read the files:
    # measure the 60 s window from the export's own time (runs.parquet's mtime)
    export_time = runs_path.stat().st_mtime if runs_path.is_file() else None
    runs, failures = read_runs(runs_dir, now=export_time, slack=120.0)
    for f in failures:
        print(f"note: reference could not read run {f['run']}: {f['error']}")
    exp_runs = runs_table(runs)
    if not runs_path.is_file():
        print(f"FAIL: {runs_path} is missing")
        return 1
    run_ids = exp_runs.values["run_id"]
    compare_table("runs.parquet", exp_runs, [runs_path], diffs,
                  lambda i: f"run {run_ids[i] if i < len(run_ids) else '?'}")
    check_parquet_properties(runs_path, "runs", diffs, {"run_id"})

    hist_dir = out / "history"
    hist_rows = 0
    ncols = len(exp_runs.names)
    parts = sorted(hist_dir.glob("part-*.parquet")) if hist_dir.is_dir() else []
    if args.history == "none":
        if hist_dir.exists():
            diffs.add("history/ exists although --history none")
    else:
        exp_hist = history_long(runs) if args.history == "long" else history_wide(runs)
        hist_rows = exp_hist.num_rows
        ncols += len(exp_hist.names)
        if not parts:
            diffs.add("history/part-*.parquet: no history files")
        else:
            names = [f"part-{i:05d}.parquet" for i in range(len(parts))]
            if [p.name for p in parts] != names:
                diffs.add(f"history parts are not numbered consecutively: {[p.name for p in parts]}")
            hr, hs = exp_hist.values["run_id"], exp_hist.values["step"]
            hk = exp_hist.values.get("key")

            def ctx(i):
                if i >= len(hr):
                    return f"row {i}"
                return f"row {i} run {hr[i]} step {hs[i]}" + (f" key {hk[i]!r}" if hk else "")

            compare_table("history", exp_hist, parts, diffs, ctx)
            dict_cols = {"run_id", "key"} if args.history == "long" else {"run_id"}
            for p in parts:
                check_parquet_properties(p, "history", diffs, dict_cols)

    man_path = out / "_manifest.json"
    if not man_path.is_file():
        diffs.add("_manifest.json is missing")
    else:
        check_manifest(json.loads(man_path.read_text()), out, args.history, len(runs), parts, diffs)
    leftovers = [p.name for p in out.rglob(".*tmp-*")]
    if leftovers:
        diffs.add(f"temporary files left behind: {leftovers[:5]}")
    sys_note = ""
    if getattr(args, "system", False):
        sys_rows, sys_runs = compare_system(runs, out, getattr(args, "select", None), diffs)
        sys_note = f", system rows: {sys_rows} ({sys_runs} runs)"

    if diffs.failed(f"the export in {out} and the reference"):
        return 1
    print(f"runs: {len(runs)}, history rows: {hist_rows}{sys_note}, columns: {ncols} — all equal")
    return 0


def compare_system(runs: list[Run], out: Path, select: str | None, diffs: Diffs):
    """Compares OUT/system/part-*.parquet with the reference's system table:
    the columns (run_id utf8, timestamp timestamp[us, UTC], key utf8, value
    float64) in that order, the same rows in the same order, values by bits
    (NaN equals NaN; -0.0 is not 0.0), timestamps to the microsecond; the
    Parquet properties of the other tables (zstd, statistics, dictionary
    `run_id` and `key`, `runport.table` = system) and, when `_manifest.json`
    is there, its `system` entry. No table is accepted only when no row is
    expected. Returns (expected rows, runs with rows)."""
    exp = system_table(runs, select)
    rids, tss, keys = exp.values["run_id"], exp.values["timestamp"], exp.values["key"]
    nruns = len(set(rids))
    sys_dir = out / "system"
    parts = sorted(sys_dir.glob("part-*.parquet")) if sys_dir.is_dir() else []
    man_path = out / "_manifest.json"
    man = json.loads(man_path.read_text()) if man_path.is_file() else None
    if not parts:
        if exp.num_rows:
            diffs.add(f"system/part-*.parquet: no system files, expected {exp.num_rows} rows "
                      f"of {nruns} runs ({', '.join(sorted(set(rids))[:5])})")
        if man is not None and (man.get("tables") or {}).get("system", {}).get("files"):
            diffs.add("_manifest.json: lists system files that are not there")
        return exp.num_rows, nruns
    names = [f"part-{i:05d}.parquet" for i in range(len(parts))]
    if [p.name for p in parts] != names:
        diffs.add(f"system parts are not numbered consecutively: {[p.name for p in parts]}")
    _system_series_counts(exp, parts, diffs)

    def ctx(i):
        if i >= len(rids):
            return f"row {i}"
        return f"row {i} run {rids[i]} key {keys[i]!r} timestamp {tss[i]}"

    compare_table("system", exp, parts, diffs, ctx)
    for p in parts:
        check_parquet_properties(p, "system", diffs, {"run_id", "key"})
    if man is not None:
        entry = (man.get("tables") or {}).get("system")
        if entry is None:
            diffs.add("_manifest.json: no 'system' table")
        else:
            check_manifest_table(out, "system", entry, parts, diffs)
    return exp.num_rows, nruns


def _system_series_counts(exp: Table, parts: list[Path], diffs: Diffs):
    """When the row counts differ, which (run, key) series differ: more
    telling than the first misaligned row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        t = pa.concat_tables([pq.read_table(p, columns=["run_id", "key"]) for p in parts])
    except Exception as e:  # wrong columns: compare_table reports them
        diffs.add(f"system: cannot read run_id/key: {e}")
        return
    if t.num_rows == exp.num_rows:
        return
    got: dict = {}
    for rid, key in zip(t.column("run_id").to_pylist(), t.column("key").to_pylist()):
        got[(rid, key)] = got.get((rid, key), 0) + 1
    want: dict = {}
    for rid, key in zip(exp.values["run_id"], exp.values["key"]):
        want[(rid, key)] = want.get((rid, key), 0) + 1
    diffs.add(f"system: {t.num_rows} rows, expected {exp.num_rows}")
    runs_w = {r for r, _ in want}
    runs_g = {r for r, _ in got}
    if runs_w - runs_g:
        diffs.add(f"system: runs missing: {sorted(runs_w - runs_g)[:10]}")
    if runs_g - runs_w:
        diffs.add(f"system: unexpected runs: {sorted(runs_g - runs_w)[:10]}")
    for k in sorted(set(want) | set(got), key=lambda x: (str(x[0]), str(x[1]))):
        if want.get(k, 0) != got.get(k, 0) and k[0] in runs_w & runs_g:
            diffs.add(f"system: run {k[0]} key {k[1]!r}: {got.get(k, 0)} rows, expected {want.get(k, 0)}")


def cmd_check_system(args) -> int:
    """The system table alone (see compare_system)."""
    runs_dir, out = Path(args.runs), Path(args.export)
    runs, failures = read_runs(runs_dir)
    for f in failures:
        print(f"note: reference could not read run {f['run']}: {f['error']}")
    diffs = Diffs()
    try:
        rows, nruns = compare_system(runs, out, args.select, diffs)
    except ValueError as e:
        print(f"FAIL: {e}")
        return 2
    if diffs.failed(f"{out / 'system'} and the reference"):
        return 1
    print(f"system rows: {rows} of {nruns} runs ({len(runs)} read)"
          + (f", --select {args.select}" if args.select is not None else "") + " — all equal")
    return 0


def cmd_dump_system(args) -> int:
    """The reference's system rows as JSON lines (table order), then with
    `--summary` one line per run: samples (per folder), rows, keys."""
    runs, failures = read_runs(Path(args.runs))
    for f in failures:
        print(f"note: reference could not read run {f['run']}: {f['error']}", file=sys.stderr)
    if args.summary:
        for r in runs:
            keys = sorted({k for *_, items in r.system for k, _v, _ok in items})
            print(json.dumps({
                "run_id": r.run_id, "samples": len(r.system),
                "samples_per_folder": [sum(1 for x in r.system if x[0] == i) for i in range(len(r.files))],
                "rows": sum(len(x[3]) for x in r.system), "keys": keys,
            }, ensure_ascii=False))
        return 0
    try:
        for rid, us, key, v, _seg in system_rows(runs, args.select):
            print(json.dumps({"run_id": rid, "timestamp_us": us, "key": key, "value": json_ready(v)},
                             ensure_ascii=False))
    except BrokenPipeError:  # `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def check_manifest_table(out: Path, name: str, entry: dict, files: list[Path], diffs: Diffs):
    """A table's entry in `_manifest.json` against its files: paths in order,
    each file's rows and bytes, the columns of the first."""
    import pyarrow.parquet as pq

    listed = [f.get("path") for f in entry.get("files", [])]
    actual = [str(p.relative_to(out)).replace(os.sep, "/") for p in files]
    if listed != actual:
        diffs.add(f"_manifest.json: {name} files {listed}, found {actual}")
        return
    for f, p in zip(entry["files"], files):
        rows = pq.ParquetFile(p).metadata.num_rows
        if f.get("rows") != rows:
            diffs.add(f"_manifest.json: {f['path']} rows {f.get('rows')}, file has {rows}")
        if "bytes" in f and f["bytes"] != p.stat().st_size:
            diffs.add(f"_manifest.json: {f['path']} bytes {f['bytes']}, file has {p.stat().st_size}")
    if files:
        cols = pq.ParquetFile(files[0]).schema_arrow.names
        if entry.get("columns") != cols:
            diffs.add(f"_manifest.json: {name} columns differ from the file's columns")


def check_manifest(man: dict, out: Path, layout: str, nruns: int, parts: list[Path], diffs: Diffs):
    if man.get("format_version") != 1:
        diffs.add(f"_manifest.json: format_version {man.get('format_version')!r}, expected 1")
    if man.get("runs") != nruns:
        diffs.add(f"_manifest.json: runs {man.get('runs')!r}, expected {nruns}")
    if man.get("history_layout") != layout:
        diffs.add(f"_manifest.json: history_layout {man.get('history_layout')!r}, expected {layout!r}")
    for key in ("runport_version", "source", "source_kind", "tables"):
        if key not in man:
            diffs.add(f"_manifest.json: missing {key!r}")
    if man.get("failures"):
        diffs.add(f"_manifest.json: failures {man['failures'][:3]}")
    tables = man.get("tables") or {}
    expected = {"runs": [out / "runs.parquet"]}
    if layout != "none":
        expected["history"] = parts
    elif "history" in tables:
        diffs.add("_manifest.json: lists a history table although --history none")
    for name, files in expected.items():
        entry = tables.get(name)
        if entry is None:
            diffs.add(f"_manifest.json: no {name!r} table")
            continue
        check_manifest_table(out, name, entry, files, diffs)


def _expect_eq(exp, got) -> bool:
    if isinstance(exp, str) and exp in _CONSTANTS and isinstance(got, float):
        return float_eq(_CONSTANTS[exp], got)
    if isinstance(exp, float) or isinstance(got, float):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and float(exp) == float(got)
    return type(exp) is type(got) and exp == got


def check_system_scenario(name: str, want: dict, run: Run, diffs: Diffs):
    """A scenario's `system` expectations: sample counts (exact, at least,
    at least per folder), keys present, a suffix on every key, values known
    by construction (in every sample), keys whose values increase; and that
    every record has a timestamp, timestamps never go back (folders in
    order) and every value_json parsed."""
    n = len(run.system)
    if "samples" in want and n != want["samples"]:
        diffs.add(f"{name}: {n} stats records, expected {want['samples']}")
    if n < want.get("min_samples", 0):
        diffs.add(f"{name}: {n} stats records, expected at least {want['min_samples']}")
    if "min_samples_per_folder" in want:
        per = [sum(1 for x in run.system if x[0] == i) for i in range(len(run.files))]
        if min(per, default=0) < want["min_samples_per_folder"]:
            diffs.add(f"{name}: stats records per folder {per}, expected at least "
                      f"{want['min_samples_per_folder']} in each")
    keys = {k for *_, items in run.system for k, _v, _ok in items}
    missing = [k for k in want.get("keys_include", []) if k not in keys]
    if missing:
        diffs.add(f"{name}: system keys missing {missing} (found {sorted(keys)})")
    suffix = want.get("key_suffix")
    lacking = sorted(k for k in keys if suffix is not None and not k.endswith(suffix))
    if lacking:
        diffs.add(f"{name}: system keys without the suffix {suffix!r}: {lacking}")
    prev = None
    for seg, _s, us, items in run.system:
        if us is None:
            diffs.add(f"{name}: a stats record without a timestamp (folder {seg})")
        elif prev is not None and us < prev:
            diffs.add(f"{name}: stats timestamps go back ({prev} then {us})")
        prev = us if us is not None else prev
        for k, v, ok in items:
            if not ok:
                diffs.add(f"{name}: {k!r} has a value_json that is not JSON")
    for key, value in want.get("values", {}).items():
        got = [v for *_, items in run.system for k, v, _ok in items if k == key]
        if len(got) != n:
            diffs.add(f"{name}: {key!r} in {len(got)} of {n} stats records")
        bad = [v for v in got if not (v is None if value is None else
                                      isinstance(v, float) and float_eq(float(value), v))]
        if bad:
            diffs.add(f"{name}: {key!r} = {bad[0]!r}, expected {value!r} in every sample")
    for key in want.get("increasing", []):
        got = [v for *_, items in run.system for k, v, _ok in items if k == key]
        if not got or any(not (isinstance(b, (int, float)) and isinstance(a, (int, float)) and b > a)
                          for a, b in zip(got, got[1:])):
            diffs.add(f"{name}: {key!r} does not increase: {got[:10]}")


def cmd_scenarios(args) -> int:
    """Checks the reference's reading of DIR against DIR/scenarios.json."""
    runs_dir = Path(args.runs)
    doc = json.loads((runs_dir / "scenarios.json").read_text())
    runs, failures = read_runs(runs_dir)
    table = runs_table(runs)
    by_id = {r.run_id: (i, r) for i, r in enumerate(runs)}
    diffs = Diffs()
    for f in failures:
        diffs.add(f"run {f['run']} could not be read: {f['error']}")
    for name, sc in doc["scenarios"].items():
        rid = sc["run_id"]
        if rid not in by_id:
            diffs.add(f"{name}: run {rid} not found")
            continue
        i, run = by_id[rid]
        states = {sc["state"], sc.get("state_if_modified_within_60s", sc["state"])}
        if run.state not in states:
            diffs.add(f"{name}: state {run.state}, expected {sorted(states)}")
        if run.exit_code != sc.get("exit_code"):
            diffs.add(f"{name}: exit_code {run.exit_code}, expected {sc.get('exit_code')}")
        if "folders" in sc and len(run.files) != sc["folders"]:
            diffs.add(f"{name}: {len(run.files)} folders, expected {sc['folders']}")
        if "history_rows" in sc and len(run.history) != sc["history_rows"]:
            diffs.add(f"{name}: {len(run.history)} history rows, expected {sc['history_rows']}")
        if len(run.history) < sc.get("min_history_rows", 0):
            diffs.add(f"{name}: {len(run.history)} history rows, expected at least {sc['min_history_rows']}")
        if "steps" in sc and [h[0] for h in run.history] != sc["steps"]:
            diffs.add(f"{name}: steps {[h[0] for h in run.history][:20]}, expected {sc['steps']}")
        for step, keys in sc.get("rows", {}).items():
            got = sorted({encode_path(p) for h in run.history if h[0] == int(step) for p, _ in h[3]})
            if got != sorted(keys):
                diffs.add(f"{name}: keys at step {step}: {got}, expected {sorted(keys)}")
        if "history_keys_include" in sc:
            keys = {encode_path(p) for h in run.history for p, _ in h[3]}
            missing = [k for k in sc["history_keys_include"] if k not in keys]
            if missing:
                diffs.add(f"{name}: history keys missing {missing}")
        if "system" in sc:
            check_system_scenario(name, sc["system"], run, diffs)
        type_names = {"float64": "float", "int64": "int", "bool": "bool", "utf8 mixed": "mixed",
                      "utf8 json": "json", "utf8": "string"}
        for col, desc in sc.get("column_types", {}).items():
            want = next((k for t, k in sorted(type_names.items(), key=lambda x: -len(x[0]))
                         if desc.split(" (")[0] == t), None)
            if col.startswith("history wide "):
                kinds = {kind_of(v) for r in runs for h in r.history for p, v in h[3]
                         if encode_path(p) == col[len("history wide "):]}
                got = unify(kinds) if kinds else None
            else:
                got = table.kinds.get(col)
            if got != want:
                diffs.add(f"{name}: column {col} unifies to {got}, expected {want} ({desc})")
        for col, exp in sc.get("expect", {}).items():
            if col == "absent":
                for c in exp:
                    if c in table.values and table.values[c][i] is not None:
                        diffs.add(f"{name}: {c} should be absent, is {table.values[c][i]!r}")
                continue
            if col not in table.values:
                diffs.add(f"{name}: no column {col!r}")
                continue
            got = table.values[col][i]
            if not _expect_eq(exp, got):
                diffs.add(f"{name}: {col} = {got!r}, expected {exp!r}")
    if diffs.count:
        print(f"FAIL: {diffs.count} scenario expectation(s) not met:")
        for d in diffs.items:
            print("  " + d)
        return 1
    print(f"scenarios: {len(doc['scenarios'])}, runs: {len(runs)} — all expectations met")
    return 0


def cmd_selftest(args) -> int:
    """Exports the reference, checks it (must pass), then checks copies with one
    corrupted cell each (must fail): proves that `check` can fail. The
    system table is exported and checked too (`check --system`)."""
    import contextlib
    import datetime as dt
    import io
    import shutil
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    ok = True

    runs_once = []

    def check(export, system_only=False) -> tuple[int, str]:
        # a corrupted system table needs only the system comparison, on runs
        # read once (the whole check reads every file again: 7 s on the
        # standard set)
        if system_only:
            if not runs_once:
                runs_once.append(read_runs(Path(args.runs))[0])
            diffs = Diffs()
            compare_system(runs_once[0], Path(export), None, diffs)
            return (1 if diffs.count else 0), (diffs.items[0] if diffs.items else "")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cmd_check(argparse.Namespace(runs=args.runs, export=str(export), history="long", system=True))
        first = next((ln.strip() for ln in buf.getvalue().splitlines() if ln.startswith("  ")), "")
        return rc, first

    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "good"
        with contextlib.redirect_stdout(io.StringIO()):
            cmd_export(argparse.Namespace(runs=args.runs, out=str(good), history="long", system=True))
        rc, first = check(good)
        print(f"selftest: reference export checks {'equal' if rc == 0 else 'DIFFERENT: ' + first}")
        ok &= rc == 0

        def rewrite_manifest(bad):
            man = json.loads((bad / "_manifest.json").read_text())
            for tab in man["tables"].values():
                for f in tab["files"]:
                    f["bytes"] = (bad / f["path"]).stat().st_size
            (bad / "_manifest.json").write_text(json.dumps(man))

        def verdict(name, bad) -> bool:
            rc, first = check(bad, system_only=name.startswith("system-"))
            print(f"selftest: {name}: check {'failed as it must' if rc == 1 else 'DID NOT FAIL'}: {first}")
            return rc == 1

        def corrupt(name, rel, column, change, pick=lambda v: v is not None):
            """One cell changed: the first row whose value `pick` accepts
            (skipped, and said so, when there is none)."""
            path = good / rel
            vals = pq.read_table(path, columns=[column]).column(0).to_pylist()
            row = next((r for r, v in enumerate(vals) if pick(v)), None)
            if row is None:
                print(f"selftest: {name}: skipped (no such cell in this set)")
                return True
            bad = Path(tmp) / name
            shutil.copytree(good, bad)  # copy2 keeps mtimes
            path = bad / rel
            st = path.stat()
            t = pq.ParquetFile(path).read()
            i = t.schema.get_field_index(column)
            vals[row] = change(vals[row])
            t = t.set_column(i, t.schema.field(i), pa.array(vals, t.schema.field(i).type))
            pq.write_table(t, path, compression="zstd", use_dictionary=["run_id", "key"])
            os.utime(path, (st.st_atime, st.st_mtime))
            rewrite_manifest(bad)
            return verdict(name, bad)

        ok &= corrupt("history-value", "history/part-00000.parquet", "value",
                      lambda v: v + 1.0 if math.isfinite(v) else 0.0)
        ok &= corrupt("runs-name", "runs.parquet", "project", lambda v: v + "x")
        ok &= corrupt("history-step", "history/part-00000.parquet", "step", lambda v: v + 1)
        sys_part = "system/part-00000.parquet"
        ok &= corrupt("system-value", sys_part, "value", lambda v: v + 1.0 if math.isfinite(v) else 0.0)
        ok &= corrupt("system-timestamp", sys_part, "timestamp", lambda v: v + dt.timedelta(microseconds=1))
        ok &= corrupt("system-key", sys_part, "key", lambda v: "system." + v)
        ok &= corrupt("system-negative-zero", sys_part, "value", lambda v: 0.0,
                      pick=lambda v: v == 0.0 and math.copysign(1.0, v) < 0)
        ok &= corrupt("system-null", sys_part, "value", lambda v: 0.0, pick=lambda v: v is None)
        n_sys = pq.ParquetFile(good / sys_part).metadata.num_rows
        if n_sys >= 2:
            # two rows swapped: the order counts
            bad = Path(tmp) / "system-order"
            shutil.copytree(good, bad)
            t = pq.read_table(bad / sys_part)
            order = list(range(t.num_rows))
            order[0], order[1] = 1, 0
            pq.write_table(t.take(order), bad / sys_part, compression="zstd", use_dictionary=["run_id", "key"])
            rewrite_manifest(bad)
            ok &= verdict("system-order", bad)
            # the table missing although the runs have stats
            bad = Path(tmp) / "system-missing"
            shutil.copytree(good, bad)
            shutil.rmtree(bad / "system")
            man = json.loads((bad / "_manifest.json").read_text())
            del man["tables"]["system"]
            (bad / "_manifest.json").write_text(json.dumps(man))
            ok &= verdict("system-missing", bad)
        else:
            print("selftest: system-order, system-missing: skipped (fewer than 2 system rows)")
    print("selftest: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="compare runport's export with the reference")
    c.add_argument("--runs", required=True, help="folder searched recursively for run-*.wandb files")
    c.add_argument("--export", required=True, help="runport's output folder")
    c.add_argument("--history", choices=["long", "wide", "none"], default="long")
    c.add_argument("--system", action="store_true", help="also compare the system table (see check-system)")
    c.add_argument("--select", default=None, help="with --system: runport's --select (globs over system.<key>)")
    cs = sub.add_parser("check-system", help="compare runport's system table with the reference")
    cs.add_argument("--runs", required=True)
    cs.add_argument("--export", required=True)
    cs.add_argument("--select", default=None,
                    help="runport's --select: comma-separated globs over system.<key> (only * is special)")
    d = sub.add_parser("dump-system", help="print the reference's system rows as JSON lines")
    d.add_argument("--runs", required=True)
    d.add_argument("--select", default=None)
    d.add_argument("--summary", action="store_true", help="one line per run instead of the rows")
    e = sub.add_parser("export", help="write the reference as Parquet")
    e.add_argument("--runs", required=True)
    e.add_argument("-o", "--out", required=True)
    e.add_argument("--history", choices=["long", "wide", "none"], default="long")
    e.add_argument("--system", action="store_true", help="also write system/part-00000.parquet")
    e.add_argument("--select", default=None, help="with --system: globs over system.<key>")
    s = sub.add_parser("scenarios", help="check the reference reading against DIR/scenarios.json")
    s.add_argument("--runs", required=True)
    t = sub.add_parser("selftest", help="prove that check passes on the reference and fails on corrupted copies")
    t.add_argument("--runs", required=True)
    args = ap.parse_args(argv)
    cmds = {"check": cmd_check, "export": cmd_export, "scenarios": cmd_scenarios, "selftest": cmd_selftest,
            "check-system": cmd_check_system, "dump-system": cmd_dump_system}
    return cmds[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
