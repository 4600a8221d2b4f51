"""Run data behind the W&B API test server (`wandb_server.py`).

Two kinds of runs, one interface:

- `LoadedRun`: a run read from `.wandb` files by `wandb_reference.py` (the
  test bed's independent reader); its history rows are rebuilt as the nested
  JSON objects the SDK sends to W&B (`{"a": {"b": 1}, "a.b": 2, "_step": 0}`),
  and its stats records as the events lines wandb-core's filestream writes
  (`{"_runtime": .., "_timestamp": .., "_wandb": true, "system.cpu": 3.5}`).
- `SyntheticRun`: a run computed from a seed (`--synthetic RUNS:STEPS:KEYS`);
  every value is a closed-form function of (seed, run, key, step), so any row
  or summary can be produced without keeping the history in memory.

It also holds the W&B encodings (JSON with NaN/Infinity as strings, config
`{"key": {"value": v, "desc": null}}`, historyKeys), the run filters and
orders, and the Parquet export of a run's history (wide: one column per
top-level history key, nested objects as struct columns).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import os
import pickle
import re
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import wandb_reference as ref

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SPECIALS = ("_step", "_runtime", "_timestamp")

# --------------------------------------------------------------------------
# JSON encodings
# --------------------------------------------------------------------------


# A value made JSON-safe the way the W&B API writes it.
api_ready = ref.json_ready


def api_json(v) -> str:
    return json.dumps(api_ready(v), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def plain(v):
    """Reference trees (wandb_reference.Node) to plain dicts."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def iso_utc(us: int | None, micro: bool = True) -> str | None:
    """Microseconds since the epoch -> `2024-01-02T03:04:05.123456` (UTC, no
    suffix, as W&B writes DateTime; without `micro` the fraction is dropped)."""
    if us is None:
        return None
    t = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f" if micro else "%Y-%m-%dT%H:%M:%S")


def set_path(row: dict, path: tuple, value):
    node = row
    for seg in path[:-1]:
        child = node.get(seg)
        if not isinstance(child, dict):
            child = {}
            node[seg] = child
        node = child
    node[path[-1]] = value


_MISSING = object()


def lookup(obj: dict, key: str):
    """The value at `key` in a row/summary object: the top-level key itself,
    else a dotted path into nested objects (W&B's flattened key names)."""
    if key in obj:
        return obj[key]
    parts = key.split(".")
    return _lookup_parts(obj, parts)


def _lookup_parts(obj, parts):
    if not parts:
        return obj
    if not isinstance(obj, dict):
        return _MISSING
    # longest segment first: a key may itself contain dots
    for n in range(len(parts), 0, -1):
        k = ".".join(parts[:n])
        if k in obj:
            r = _lookup_parts(obj[k], parts[n:])
            if r is not _MISSING:
                return r
    return _MISSING


def flat_keys(row: dict, prefix: str = "", out: dict | None = None) -> dict:
    """Leaf keys of a history row as W&B names them (nested objects joined
    with '.'; objects with `_type` (media) stay one key)."""
    if out is None:
        out = {}
    for k, v in row.items():
        name = prefix + k
        if isinstance(v, dict) and v and "_type" not in v:
            flat_keys(v, name + ".", out)
        else:
            out[name] = v
    return out


def type_name(v) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return v.get("_type") if isinstance(v.get("_type"), str) else "map"
    return "unknown"


# --------------------------------------------------------------------------
# Arrow typing of history columns
# --------------------------------------------------------------------------


class _Json:
    """Marker type: values that do not fit one Arrow type (JSON text column)."""


JSON_T = _Json()


def infer(values) -> object:
    """Unified type of non-null values: 'bool' | 'int' | 'float' | 'string' |
    ('list', elem) | ('struct', {name: type}) | None (only nulls) | JSON_T."""
    t = None
    for v in values:
        if v is None:
            continue
        t = unify(t, type_of(v))
        if t is JSON_T:
            return t
    return t


def type_of(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int" if INT64_MIN <= v <= INT64_MAX else "float"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return ("list", infer(v))
    if isinstance(v, dict):
        if not v:
            return JSON_T  # Parquet has no empty struct
        return ("struct", {k: type_of(x) for k, x in v.items()})
    return JSON_T


def unify(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if a is JSON_T or b is JSON_T:
        return JSON_T
    if isinstance(a, str) and isinstance(b, str):
        if a == b:
            return a
        if {a, b} == {"int", "float"}:
            return "float"
        return JSON_T
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0]:
        if a[0] == "list":
            e = unify(a[1], b[1])
            return JSON_T if e is JSON_T else ("list", e)
        fields = dict(a[1])
        for k, t in b[1].items():
            u = unify(fields.get(k), t)
            if u is JSON_T:
                return JSON_T
            fields[k] = u
        return ("struct", fields)
    return JSON_T


def arrow_type(t):
    if t is None:
        return pa.null()
    if t is JSON_T:
        return pa.string()
    if t == "bool":
        return pa.bool_()
    if t == "int":
        return pa.int64()
    if t == "float":
        return pa.float64()
    if t == "string":
        return pa.string()
    if t[0] == "list":
        e = t[1]
        return pa.list_(pa.string() if e is None else arrow_type(e))
    return pa.struct([pa.field(k, arrow_type(x)) for k, x in t[1].items()])


def convert(t, v):
    """A Python value shaped for arrow type t (ints to floats, JSON text...)."""
    if v is None or t is None:
        return None
    if t is JSON_T:
        return ref.json_text(v)
    if t == "float":
        return float(v)
    if isinstance(t, tuple):
        if t[0] == "list":
            return [convert(t[1], x) for x in v]
        return {k: convert(ft, v.get(k)) for k, ft in t[1].items()}
    return v


def rows_to_table(rows: list[dict], step_type: str = "int64") -> pa.Table:
    """Wide table: `_step` first, then `_runtime`, `_timestamp` when present,
    then every other top-level key in first-seen order."""
    names: dict = {}
    for r in rows:
        for k in r:
            names.setdefault(k, None)
    order = [k for k in SPECIALS if k in names] + [k for k in names if k not in SPECIALS]
    cols, fields = [], []
    for k in order:
        vals = [r.get(k) for r in rows]
        if k == "_step":
            at = pa.float64() if step_type == "float64" else pa.int64()
            arr = pa.array([None if v is None else (float(v) if step_type == "float64" else int(v))
                            for v in vals], type=at)
        elif k in ("_runtime", "_timestamp"):
            t = infer(vals)
            t = "float" if t in ("int", "float") else t
            arr = pa.array([convert(t, v) for v in vals], type=arrow_type(t))
        else:
            t = infer(vals)
            arr = pa.array([convert(t, v) for v in vals], type=arrow_type(t))
            if t is JSON_T:
                fields.append(pa.field(k, arr.type, metadata={b"wandb.testbed.kind": b"json"}))
                cols.append(arr)
                continue
        fields.append(pa.field(k, arr.type))
        cols.append(arr)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


# Rows of a row group of the exported Parquet files.
PARQUET_ROW_GROUP = 65536


def write_parquet(table: pa.Table, path: Path):
    write_parquet_groups(iter([table]), path)


def write_parquet_groups(tables, path: Path):
    """Writes the tables (one schema) to `path` one after the other, in row
    groups of PARQUET_ROW_GROUP rows, under a temporary name renamed into
    place: a file of any size is written holding one table at a time."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    writer = None
    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd", write_statistics=True)
            writer.write_table(table, row_group_size=PARQUET_ROW_GROUP)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"no table to write to {path}")
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------


class BaseRun:
    """Common surface of loaded and synthetic runs (see module docstring)."""

    name: str            # run id (GraphQL `name`)
    display_name: str | None
    state: str
    created_us: int | None
    heartbeat_us: int | None
    tags: list
    group: str | None
    job_type: str | None
    notes: str | None
    commit: str | None
    host: str | None
    exit_code: int | None
    n_rows: int

    def step_at(self, i: int) -> int: ...
    def rows(self, lo: int, hi: int) -> list[dict]: ...
    def config_obj(self) -> dict: ...          # plain values, no _wandb
    def config_wandb(self) -> dict: ...        # the `_wandb` config value
    def summary_obj(self) -> dict: ...         # includes _wandb like W&B
    def system_metrics(self) -> dict: ...
    def history_keys(self) -> dict: ...

    def events_lines(self) -> list[str]:
        """The run's events lines (system metrics), one JSON text per stats
        record, in log order. Runs without system metrics have none."""
        return []

    def table(self, lo: int, hi: int, step_type: str) -> pa.Table:
        return rows_to_table(self.rows(lo, hi), step_type)

    def write_history_parquet(self, lo: int, hi: int, step_type: str, path: Path):
        """The Parquet export of rows [lo, hi)."""
        write_parquet(self.table(lo, hi, step_type), path)

    def fingerprint(self) -> str: ...

    # steps are non-decreasing except where a resumed run restarts; these
    # helpers scan in log order
    def indices_in_steps(self, lo_step, hi_step, hi_inclusive=False) -> list[int]:
        out = []
        for i in range(self.n_rows):
            s = self.step_at(i)
            if s is None or (lo_step is not None and s < lo_step):
                continue
            if hi_step is not None and (s > hi_step if hi_inclusive else s >= hi_step):
                continue
            out.append(i)
        return out

    def last_step(self) -> int:
        best = -1
        for i in range(self.n_rows):
            s = self.step_at(i)
            if s is not None and s > best:
                best = s
        return best


class _CapturingRun(ref.Run):
    """wandb_reference.Run plus what the API serves but the reference drops:
    the raw `_timestamp` of each history row, `_wandb` in config and summary,
    and the latest system metrics."""

    def __init__(self, run_id):
        super().__init__(run_id)
        self.raw_ts: list = []
        self.wandb_config: dict = {}
        self.wandb_summary: dict = {}
        self.stats: dict = {}

    def apply_updates(self, tree, rec):
        target = self.wandb_config if tree is self.config else self.wandb_summary
        for item in rec.update:
            path = ref.item_path(item)
            if path[0] == "_wandb":
                if len(path) == 1:
                    v = ref.parse_json(item.value_json)
                    if isinstance(v, dict):
                        target.clear()
                        target.update(v)
                else:
                    set_path(target, path[1:], ref.parse_json(item.value_json))
        super().apply_updates(tree, rec)

    def _history(self, h):
        raw = None
        for item in h.item:
            if ref.item_path(item) == ("_timestamp",):
                raw = ref.history_item_value(item)
        super()._history(h)
        self.raw_ts.append(raw)


class LoadedRun(BaseRun):
    def __init__(self, r: _CapturingRun):
        self.name = r.run_id
        ident = r.ident
        self.display_name = ident["name"] or r.run_id
        self.state = r.state
        self.created_us = r.created_at
        self.heartbeat_us = r.updated_at
        self.tags = list(ident["tags"])
        self.group = ident["group"]
        self.job_type = ident["job_type"]
        self.notes = ident["notes"]
        self.commit = ident["git_commit"]
        self.host = ident["host"]
        self.exit_code = r.exit_code
        self.runtime_s = r.runtime_s
        self._config = plain(r.config)
        self._wandb_config = r.wandb_config
        self._summary = plain(r.summary)
        self._wandb_summary = r.wandb_summary
        self._events = [events_line(ts_s, r.start_s, items) for _seg, ts_s, _us, items in r.system]
        self._rows = []
        for (step, ts_us, rt, keyed), raw_ts in zip(r.history, r.raw_ts):
            row: dict = {}
            if step is not None:
                row["_step"] = step
            if rt is not None:
                row["_runtime"] = rt
            if raw_ts is not None:
                row["_timestamp"] = raw_ts
            for path, v in keyed:
                set_path(row, path, v)
            self._rows.append(row)
        self.n_rows = len(self._rows)
        self._steps = [row.get("_step") for row in self._rows]
        self._fp = rows_fingerprint(self._rows)
        self.files_key = None  # set by load_runs

    def step_at(self, i):
        return self._steps[i]

    def rows(self, lo, hi):
        return self._rows[lo:hi]

    def config_obj(self):
        return self._config

    def config_wandb(self):
        return self._wandb_config

    def summary_obj(self):
        out = dict(self._summary)
        if self._wandb_summary:
            out["_wandb"] = self._wandb_summary
        return out

    def system_metrics(self):
        return {}

    def events_lines(self):
        return self._events

    def history_keys(self):
        return history_keys_of(self._rows, self.last_step())

    def fingerprint(self):
        """The history's content (row count and a hash of the rows): the
        Parquet cache is keyed by it, so a run whose history changed (a
        resumed run's second folder, a rewritten file) never meets its old
        files."""
        return self._fp


def events_line(ts_s, start_s, items) -> str:
    """One stats record as wandb-core 0.31.0's filestream (StatsUpdate) puts
    it in the run's events file: `_wandb: true`, `_timestamp` = the record's
    float seconds (float64(seconds) + float64(nanos)/1e9), `_runtime` =
    `_timestamp` minus the run's start time (its first run record: for a
    resumed run the first process's start), and `system.<key>` = the item's
    value_json parsed. Like Go's map, a repeated key keeps its last value and
    the keys come out sorted; an item whose value_json is not JSON is dropped
    (wandb-core logs an error and skips it); a record without a timestamp
    gets 0 (Go's zero Timestamp). Non-finite numbers would be the API
    strings "NaN"/"Infinity" like everywhere on this server, but wandb-core
    writes them as null in the files already."""
    ts = 0.0 if ts_s is None else ts_s
    row: dict = {"_wandb": True, "_timestamp": ts}
    if start_s is not None:
        row["_runtime"] = ts - start_s
    for key, v, ok in items:
        if ok:
            row["system." + key] = v
    return api_json(dict(sorted(row.items())))


def rows_fingerprint(rows) -> str:
    """`rows-<n>-<hash>`: a hash of the rows' JSON (key order, int/float,
    -0.0, NaN and Infinity kept apart), so equal content from other paths
    or copies shares its Parquet files and any change gets new ones."""
    h = hashlib.sha256()
    for lo in range(0, len(rows), 10_000):
        h.update(json.dumps(rows[lo:lo + 10_000], ensure_ascii=False, default=repr).encode())
    return "rows-%d-%s" % (len(rows), h.hexdigest()[:24])


def history_keys_of(rows, last_step) -> dict:
    keys: dict = {}
    for row in rows:
        for k, v in flat_keys(row).items():
            tc = keys.setdefault(k, {})
            t = type_name(v)
            tc[t] = tc.get(t, 0) + 1
    out = {}
    for k, tc in keys.items():
        out[k] = {"typeCounts": [{"type": t, "count": n} for t, n in tc.items()]}
    return {"lastStep": last_step, "keys": out}


# Bumped when a pickled LoadedRun would no longer match what this code builds.
LOAD_CACHE_VERSION = 3


def files_key(run_id: str, files) -> str:
    """A run's identity on disk: its id and its files' paths, sizes and
    mtimes (a folder added, removed or written to changes it)."""
    sig = []
    for f in files:
        st = f.stat()
        sig.append((str(f), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(pickle.dumps((LOAD_CACHE_VERSION, run_id, sig))).hexdigest()[:24]


def load_runs(runs_dir: Path, cache: Path | None = None, previous=None):
    """Reads every run under runs_dir with wandb_reference, run by run.

    A run whose files (paths, sizes, mtimes) are those of a run in
    `previous` (an earlier load) is taken from it; else from its pickle in
    `cache/runs/` (keyed the same way); else it is parsed (and pickled). A
    `running` run is never reused nor pickled: that state depends on the time
    of reading (files written to in the last minute), so it is read again."""
    prev = {r.files_key: r for r in (previous or [])
            if isinstance(r, LoadedRun) and getattr(r, "files_key", None)}
    groups = ref.discover(runs_dir)
    now = time.time()
    runs, failures = [], []
    for run_id, files in sorted(groups.items()):
        try:
            key = files_key(run_id, files)
        except OSError as e:  # removed while listed
            failures.append({"run": run_id, "error": str(e)})
            continue
        old = prev.get(key)
        if old is not None and old.state != "running":
            runs.append(old)
            continue
        pk = cache / "runs" / f"run-{key}.pickle" if cache else None
        run = None
        if pk is not None and pk.exists():
            try:
                with open(pk, "rb") as fh:
                    run = pickle.load(fh)
                if not isinstance(run, LoadedRun) or run.name != run_id or run.files_key != key:
                    run = None
            except Exception:
                run = None
        if run is None:
            r = _CapturingRun(run_id)
            r.files = files
            try:
                for f in files:
                    r.read_file(f)
                r.finish(now)
            except (ref.DecodeError, OSError) as e:
                failures.append({"run": run_id, "error": str(e)})
                continue
            run = LoadedRun(r)
            run.files_key = key
            if pk is not None and run.state != "running":
                pk.parent.mkdir(parents=True, exist_ok=True)
                tmp = pk.with_name(pk.name + f".tmp-{os.getpid()}-{threading.get_ident()}")
                with open(tmp, "wb") as fh:
                    pickle.dump(run, fh, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, pk)
        runs.append(run)
    return runs


# --------------------------------------------------------------------------
# Synthetic runs
# --------------------------------------------------------------------------

SYN_KEY_NAMES = ["loss", "acc", "train/loss", "val/acc", "lr", "grad norm", "énergie",
                 "eval.score"]


def syn_key_names(n: int) -> list[str]:
    return [SYN_KEY_NAMES[i] if i < len(SYN_KEY_NAMES) else "metric_%02d" % i for i in range(n)]


class SyntheticProject:
    """RUNS runs x STEPS rows x KEYS float keys, deterministic in SEED; row i
    is logged at step i * STRIDE (a stride above 1: steps counted in tokens)."""

    BASE_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00 UTC

    def __init__(self, runs: int, steps: int, keys: int, seed: int = 0, stride: int = 1):
        self.n_runs, self.steps, self.n_keys, self.seed = runs, steps, keys, seed
        self.stride = max(1, stride)
        self.keys = syn_key_names(keys)
        self.runs = [SyntheticRun(self, i) for i in range(runs)]


def _noise(seed, run, key, steps):
    """A deterministic pseudo-random value in [0, 1) for each step."""
    import numpy as np
    x = (np.asarray(steps, dtype=np.float64) * 12.9898 + (key + 1) * 78.233
         + (run + 1) * 37.719 + seed * 4.1414)
    return np.modf(np.abs(np.sin(x) * 43758.5453))[0]


class SyntheticRun(BaseRun):
    def __init__(self, proj: SyntheticProject, i: int):
        self.p, self.i = proj, i
        s = proj.seed
        self.name = "syn-%05d" % i
        self.display_name = "synthetic %d" % i
        self.state = "failed" if i % 50 == 7 else "crashed" if i % 97 == 3 else "finished"
        self.exit_code = 1 if self.state == "failed" else None if self.state == "crashed" else 0
        self.created_us = proj.BASE_US + (s * 86400 + i * 60) * 1_000_000 + (i * 7919) % 1_000_000
        self.n_rows = proj.steps
        self.runtime_s = proj.steps * 0.5
        self.heartbeat_us = self.created_us + int(max(0, proj.steps - 1) * 0.5 * 1e6)
        self.tags = ["synthetic", "t%d" % (i % 5)] + (["odd"] if i % 2 else [])
        self.group = "g%d" % (i % 10)
        self.job_type = ["train", "eval"][i % 2]
        self.notes = None
        self.commit = None
        self.host = "synthetic-host"

    def step_at(self, i):
        return i * self.p.stride

    def last_step(self):
        return (self.n_rows - 1) * self.p.stride

    def indices_in_steps(self, lo_step, hi_step, hi_inclusive=False):
        st = self.p.stride
        # rows whose step i * st is >= lo_step and < hi_step (<= when inclusive)
        lo = 0 if lo_step is None else max(0, -(-int(lo_step) // st))
        if hi_step is None:
            hi = self.n_rows
        else:
            h = int(hi_step)
            hi = min(self.n_rows, h // st + 1 if hi_inclusive else -(-h // st))
        # a range, not a list: a run of 10 million rows is never listed whole
        return range(lo, max(lo, hi))

    def _columns(self, lo, hi):
        import numpy as np
        steps = np.arange(lo, hi, dtype=np.int64)
        cols = {"_step": steps * self.p.stride,
                "_runtime": steps * 0.5,
                "_timestamp": self.created_us / 1e6 + steps * 0.5}
        for k, name in enumerate(self.p.keys):
            base = (k + 1) / (1.0 + 0.01 * steps * (1 + (self.i % 7)))
            cols[name] = base + 0.05 * _noise(self.p.seed, self.i, k, steps)
        return cols

    def rows(self, lo, hi):
        cols = self._columns(lo, hi)
        names = list(cols)
        out = []
        lists = {n: cols[n].tolist() for n in names}
        for j in range(hi - lo):
            out.append({n: lists[n][j] for n in names})
        return out

    def table(self, lo, hi, step_type):
        cols = self._columns(lo, hi)
        arrays, fields = [], []
        for n, v in cols.items():
            if n == "_step":
                v = v.astype("float64") if step_type == "float64" else v
            arrays.append(pa.array(v))
            fields.append(pa.field(n, arrays[-1].type))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def write_history_parquet(self, lo, hi, step_type, path):
        """Row group by row group: a file of any size in bounded memory."""
        groups = range(lo, max(hi, lo + 1), PARQUET_ROW_GROUP)
        write_parquet_groups((self.table(a, min(hi, a + PARQUET_ROW_GROUP), step_type) for a in groups), path)

    def config_obj(self):
        i, s = self.i, self.p.seed
        return {"lr": 10.0 ** -(1 + i % 4), "batch_size": 2 ** (4 + i % 4),
                "optimizer": ["adam", "sgd", "adamw"][i % 3], "seed": s * 100000 + i,
                "model": {"layers": 2 + i % 6, "width": 64 * (1 + i % 4)}}

    def config_wandb(self):
        return {"cli_version": "0.31.0", "python_version": "3.11", "synthetic": True}

    def summary_obj(self):
        if self.n_rows == 0:
            return {}
        last = self.rows(self.n_rows - 1, self.n_rows)[0]
        out = dict(last)
        out["_wandb"] = {"runtime": int(self.runtime_s)}
        return out

    def system_metrics(self):
        return {}

    def history_keys(self, n: int | None = None):
        """historyKeys of the whole run, or of its first `n` rows."""
        n = self.n_rows if n is None else n
        keys = {k: {"typeCounts": [{"type": "number", "count": n}]}
                for k in list(SPECIALS) + self.p.keys}
        return {"lastStep": (n - 1) * self.p.stride, "keys": keys}

    def fingerprint(self):
        p = self.p
        return "syn-%d-%d-%d-%d-%d" % (p.seed, p.n_runs, p.steps, p.n_keys, p.stride)


class TruncatedRun(BaseRun):
    """A run served as if it had only its first `n` history rows (the server's
    `POST /_testbed/rows`: a run that grows). History, Parquet export,
    historyKeys and the row count stop at row n; the run is `running` and its
    heartbeat is at n/n_rows of its duration (earlier than when whole, so a
    listing shows the change when it grows). Config and summary are the
    whole run's (the final summary). Its `fingerprint()` adds the row count,
    so its Parquet files and signed URLs are never those of the whole run.
    O(1) to make; the few answers that scan rows of a loaded run are cached."""

    def __init__(self, base: BaseRun, n: int):
        if not 0 <= n < base.n_rows:
            raise ValueError(f"{base.name}: {n} rows is not a truncation of {base.n_rows}")
        self.base = base
        self.n_rows = n
        self.name = base.name
        self.display_name = base.display_name
        self.state = "running"
        self.exit_code = None
        self.created_us = base.created_us
        hb, c = base.heartbeat_us, base.created_us
        self.heartbeat_us = hb if hb is None or c is None else c + (hb - c) * n // base.n_rows
        self.tags = base.tags
        self.group = base.group
        self.job_type = base.job_type
        self.notes = base.notes
        self.commit = base.commit
        self.host = base.host
        self.runtime_s = getattr(base, "runtime_s", None)
        self._last_step = None
        self._keys = None

    def step_at(self, i):
        if not 0 <= i < self.n_rows:
            raise IndexError(i)
        return self.base.step_at(i)

    def rows(self, lo, hi):
        return self.base.rows(lo, max(lo, min(hi, self.n_rows)))

    def table(self, lo, hi, step_type):
        return self.base.table(lo, max(lo, min(hi, self.n_rows)), step_type)

    def write_history_parquet(self, lo, hi, step_type, path):
        self.base.write_history_parquet(lo, max(lo, min(hi, self.n_rows)), step_type, path)

    def indices_in_steps(self, lo_step, hi_step, hi_inclusive=False):
        idx = self.base.indices_in_steps(lo_step, hi_step, hi_inclusive)
        if isinstance(idx, range):  # synthetic: O(1)
            return range(idx.start, max(idx.start, min(idx.stop, self.n_rows)))
        return [i for i in idx if i < self.n_rows]

    def last_step(self):
        if self._last_step is None:
            if isinstance(self.base, SyntheticRun):  # steps increase
                self._last_step = self.base.step_at(self.n_rows - 1) if self.n_rows else -1
            else:
                self._last_step = BaseRun.last_step(self)
        return self._last_step

    def history_keys(self):
        if self._keys is None:
            if isinstance(self.base, SyntheticRun):
                self._keys = self.base.history_keys(self.n_rows)
            else:
                self._keys = history_keys_of(self.base.rows(0, self.n_rows), self.last_step())
        return self._keys

    def config_obj(self):
        return self.base.config_obj()

    def config_wandb(self):
        return self.base.config_wandb()

    def summary_obj(self):
        return self.base.summary_obj()

    def system_metrics(self):
        return self.base.system_metrics()

    def events_lines(self):
        # the whole run's, like config and summary: only history is cut
        return self.base.events_lines()

    def fingerprint(self):
        return "%s-first%d" % (self.base.fingerprint(), self.n_rows)


def parse_synthetic(spec: str) -> SyntheticProject:
    parts = [int(x) for x in spec.split(":")]
    if len(parts) not in (3, 4, 5):
        raise ValueError("--synthetic wants RUNS:STEPS:KEYS[:SEED[:STRIDE]]")
    return SyntheticProject(*parts)


# --------------------------------------------------------------------------
# Filters and orders (the MongoDB-like language of the W&B runs query)
# --------------------------------------------------------------------------


class FilterError(ValueError):
    pass


def run_field(run: BaseRun, key: str, micro: bool = True):
    """The value a filter or an order key refers to, or _MISSING."""
    simple = {
        "name": lambda: run.name, "id": lambda: run.name,
        "displayName": lambda: run.display_name, "display_name": lambda: run.display_name,
        "state": lambda: run.state,
        "createdAt": lambda: iso_utc(run.created_us, micro),
        "created_at": lambda: iso_utc(run.created_us, micro),
        "updatedAt": lambda: iso_utc(run.heartbeat_us, micro),
        "updated_at": lambda: iso_utc(run.heartbeat_us, micro),
        "heartbeatAt": lambda: iso_utc(run.heartbeat_us, micro),
        "heartbeat_at": lambda: iso_utc(run.heartbeat_us, micro),
        "tags": lambda: run.tags, "group": lambda: run.group,
        "jobType": lambda: run.job_type, "job_type": lambda: run.job_type,
        "host": lambda: run.host, "notes": lambda: run.notes,
    }
    if key in simple:
        return simple[key]()
    if key.startswith("config."):
        rest = key[len("config."):]
        cfg = {k: {"value": v} for k, v in run.config_obj().items()}
        return lookup(cfg, rest)
    for prefix in ("summary_metrics.", "summaryMetrics.", "summary."):
        if key.startswith(prefix):
            return lookup(run.summary_obj(), key[len(prefix):])
    return _MISSING


def _cmp_key(v):
    if isinstance(v, bool):
        return (0, int(v))
    if isinstance(v, (int, float)):
        return (0, v)
    if isinstance(v, str):
        return (1, v)
    return (2, json.dumps(v, sort_keys=True, default=str))


def _comparable(a, b):
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return (isinstance(a, num) and isinstance(b, num)) or (isinstance(a, str) and isinstance(b, str))


def _eq(v, target):
    if isinstance(v, list) and not isinstance(target, list):
        return any(_eq(x, target) for x in v)
    if isinstance(v, bool) != isinstance(target, bool):
        return False
    return v == target


def _match_op(v, op, arg):
    missing = v is _MISSING
    if op == "$eq":
        return (arg is None) if missing else _eq(v, arg)
    if op == "$ne":
        return (arg is not None) if missing else not _eq(v, arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if missing or v is None:
            return False
        vals = v if isinstance(v, list) else [v]
        for x in vals:
            if not _comparable(x, arg):
                continue
            if ((op == "$gt" and x > arg) or (op == "$gte" and x >= arg)
                    or (op == "$lt" and x < arg) or (op == "$lte" and x <= arg)):
                return True
        return False
    if op == "$in":
        if not isinstance(arg, list):
            raise FilterError("$in needs a list")
        if missing:
            return None in arg
        return any(_eq(v, a) for a in arg)
    if op == "$nin":
        if not isinstance(arg, list):
            raise FilterError("$nin needs a list")
        if missing:
            return None not in arg
        return not any(_eq(v, a) for a in arg)
    if op == "$exists":
        return (not missing and v is not None) == bool(arg)
    if op == "$regex":
        if missing or v is None:
            return False
        try:
            rx = re.compile(arg)
        except re.error as e:
            raise FilterError(f"bad $regex: {e}")
        vals = v if isinstance(v, list) else [v]
        return any(isinstance(x, str) and rx.search(x) for x in vals)
    raise FilterError(f"unknown operator {op}")


def matches(run: BaseRun, flt, micro=True) -> bool:
    if flt is None:
        return True
    if not isinstance(flt, dict):
        raise FilterError("a filter must be an object")
    for k, cond in flt.items():
        if k in ("$and", "$or", "$nor"):
            if not isinstance(cond, list):
                raise FilterError(f"{k} needs a list")
            res = [matches(run, c, micro) for c in cond]
            ok = all(res) if k == "$and" else any(res) if k == "$or" else not any(res)
            if not ok:
                return False
            continue
        if k.startswith("$"):
            raise FilterError(f"unknown operator {k}")
        v = run_field(run, k, micro)
        if isinstance(cond, dict) and cond and all(c.startswith("$") for c in cond):
            for op, arg in cond.items():
                if not _match_op(v, op, arg):
                    return False
        else:
            if not _match_op(v, "$eq", cond):
                return False
    return True


ORDER_ALIASES = {"created_at": "createdAt", "createdAt": "createdAt",
                 "heartbeat_at": "heartbeatAt", "heartbeatAt": "heartbeatAt",
                 "updated_at": "updatedAt", "updatedAt": "updatedAt",
                 "name": "name", "display_name": "displayName", "displayName": "displayName",
                 "state": "state"}


def sort_runs(runs: list, order: str | None, micro=True) -> list:
    order = (order or "+created_at").strip() or "+created_at"
    desc = order.startswith("-")
    key = order.lstrip("+-")
    field = ORDER_ALIASES.get(key, key)
    if not (field in ORDER_ALIASES.values() or field.startswith(("config.", "summary_metrics.",
                                                                  "summaryMetrics.", "summary."))):
        raise FilterError(f"unsupported order {order!r}")
    present, missing = [], []
    for r in runs:
        v = run_field(r, field, micro)
        (missing if v is _MISSING or v is None else present).append((v, r))
    present.sort(key=lambda p: (_cmp_key(p[0]), p[1].name), reverse=desc)
    missing.sort(key=lambda p: p[1].name)
    return [r for _, r in present] + [r for _, r in missing]


def sample_indices(idx: list[int], samples: int | None) -> list[int]:
    if samples is None or samples <= 0 or len(idx) <= samples:
        return idx
    if samples == 1:
        return [idx[-1]]
    n = len(idx)
    return [idx[round(j * (n - 1) / (samples - 1))] for j in range(samples)]
