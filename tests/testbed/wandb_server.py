#!/usr/bin/env python3
"""A W&B API test server: the GraphQL subset of `schemas/wandb/schema.graphql`
over runs read from `.wandb` files (or generated from a seed), with history
exported as Parquet files on a second origin behind signed URLs, HTTP Basic
auth, fault injection and request accounting.

    python tests/testbed/wandb_server.py --runs DIR --port 0 --files-port 0 --api-key KEY
        [--entity E --project P] [--synthetic RUNS:STEPS:KEYS[:SEED]] [--cache DIR]
        [--live-steps N] [--part-rows N (0: one file a run)] [--step-type int64|float64]
        [--timestamps micro|seconds] [--debug-flip history|summary|config|system]

When ready it prints one JSON line to stdout
(`{"base_url", "files_url", "entity", "project", "runs"}`) and serves until
killed. The admin endpoints (`/_testbed/...`, API origin, no auth) are
described in tests/testbed/README.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import math
import os
import random
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphql  # noqa: E402
from graphql import (  # noqa: E402
    GraphQLError, TypeInfo, TypeInfoVisitor, Visitor, build_schema, parse, validate, visit,
)
from graphql.language import ast as gast  # noqa: E402
from graphql.utilities import value_from_ast_untyped  # noqa: E402

import wandb_store as store  # noqa: E402

HERE = Path(__file__).resolve().parent
SCHEMA_PATH = HERE.parent.parent / "schemas" / "wandb" / "schema.graphql"
URL_TTL_S = 3600


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


class Rule:
    """One fault rule (see README: `POST /_testbed/faults`)."""

    ACTIONS = {"status", "reset", "truncate", "delay", "rate_limit"}

    def __init__(self, spec: dict, index: int):
        self.spec = dict(spec)
        self.index = index
        self.origin = spec.get("origin", "*")
        self.operation = spec.get("operation")
        self.field = spec.get("field")
        self.path = spec.get("path")
        self.action = spec.get("action", "status")
        if self.action not in self.ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        if self.origin not in ("api", "files", "*"):
            raise ValueError(f"unknown origin {self.origin!r}")
        self.status = int(spec.get("status", 429 if self.action == "rate_limit" else 503))
        self.times = spec.get("times")
        self.skip = int(spec.get("skip", 0) or 0)
        self.probability = spec.get("probability")
        self.rng = random.Random(spec.get("seed", 0))
        self.delay = float(spec.get("delay", 0) or 0)
        self.rate = float(spec.get("rate", 1.0))
        self.burst = float(spec.get("burst", max(1.0, self.rate)))
        self.tokens = self.burst
        self.last = time.monotonic()
        self.hits = 0
        self.matched = 0

    def matches(self, origin, operation, fields, path) -> bool:
        if self.origin != "*" and self.origin != origin:
            return False
        if self.operation is not None and self.operation != operation:
            return False
        if self.field is not None and self.field not in fields:
            return False
        if self.path is not None and self.path not in (path or ""):
            return False
        return True

    def fire(self) -> bool:
        """Called with the state lock held, for a matching request."""
        self.matched += 1
        if self.action == "rate_limit":
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return False
            self.hits += 1
            return True
        if self.matched <= self.skip:
            return False
        if self.times is not None and self.hits >= int(self.times):
            return False
        if self.probability is not None and self.rng.random() >= float(self.probability):
            return False
        self.hits += 1
        return True

    def headers(self) -> dict:
        h = {}
        s = self.spec
        if self.action == "rate_limit":
            wait = max(1, math.ceil((1.0 - self.tokens) / self.rate)) if self.rate > 0 else 60
            h["Retry-After"] = str(s.get("retry_after", wait))
            h["RateLimit-Limit"] = str(s.get("ratelimit_limit", int(self.burst)))
            h["RateLimit-Remaining"] = "0"
            h["RateLimit-Reset"] = str(s.get("ratelimit_reset", wait))
            return h
        if "retry_after" in s:
            h["Retry-After"] = str(s["retry_after"])
        if "ratelimit_reset" in s:
            h["RateLimit-Reset"] = str(s["ratelimit_reset"])
            h["RateLimit-Limit"] = str(s.get("ratelimit_limit", 1000))
            h["RateLimit-Remaining"] = str(s.get("ratelimit_remaining", 0))
        elif "ratelimit_limit" in s or "ratelimit_remaining" in s:
            h["RateLimit-Limit"] = str(s.get("ratelimit_limit", 1000))
            h["RateLimit-Remaining"] = str(s.get("ratelimit_remaining", 0))
        return h

    def describe(self) -> dict:
        d = dict(self.spec)
        d.update({"index": self.index, "hits": self.hits, "matched": self.matched})
        return d


# --------------------------------------------------------------------------
# Request accounting
# --------------------------------------------------------------------------


class Accounting:
    MAX_LOG = 20000

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.seq = 0
            self.log: list = []
            self.by_origin: dict = {}
            self.by_operation: dict = {}
            self.by_field: dict = {}
            self.by_status: dict = {}
            self.field_args: dict = {}
            self.files = {"downloads": 0, "range_requests": 0, "bytes": 0,
                          "rejected_credentials": 0, "rejected_token": 0, "not_found": 0}
            self.credential_leaks: list = []
            self.documents: dict = {}

    def add(self, entry: dict):
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            o = entry["origin"]
            self.by_origin[o] = self.by_origin.get(o, 0) + 1
            st = str(entry.get("status"))
            self.by_status[st] = self.by_status.get(st, 0) + 1
            if o == "api" and entry.get("graphql"):
                op = entry.get("operation") or "(anonymous)"
                self.by_operation[op] = self.by_operation.get(op, 0) + 1
                doc = entry.pop("_document", None)
                if doc and op not in self.documents:
                    self.documents[op] = doc
                for f in entry.get("fields", []):
                    self.by_field[f] = self.by_field.get(f, 0) + 1
                for f, arglist in entry.get("args", {}).items():
                    d = self.field_args.setdefault(f, {})
                    for a in arglist:
                        k = json.dumps(a, sort_keys=True, ensure_ascii=False)
                        d[k] = d.get(k, 0) + 1
            if o == "files":
                if entry.get("status") in (200, 206) and entry.get("method") == "GET":
                    self.files["downloads" if entry["status"] == 200 else "range_requests"] += 1
                    self.files["bytes"] += entry.get("bytes", 0)
                elif entry.get("reject") == "credentials":
                    self.files["rejected_credentials"] += 1
                    self.credential_leaks.append({"seq": entry["seq"], "path": entry.get("path"),
                                                  "where": entry.get("reject_where")})
                elif entry.get("reject") == "token":
                    self.files["rejected_token"] += 1
                elif entry.get("status") == 404:
                    self.files["not_found"] += 1
            if len(self.log) < self.MAX_LOG:
                self.log.append(entry)

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "total": self.seq,
                "by_origin": dict(self.by_origin),
                "by_status": dict(self.by_status),
                "by_operation": dict(self.by_operation),
                "by_field": dict(self.by_field),
                "field_args": {f: [{"args": json.loads(k), "count": n} for k, n in d.items()]
                               for f, d in self.field_args.items()},
                "files": dict(self.files),
                "credential_leaks": list(self.credential_leaks),
                "documents": dict(self.documents),
                "log": list(self.log),
            }


def analyze(schema, doc, operation_name, variables):
    """Static analysis of a GraphQL document: the operation's name, every
    `Type.field` selected (fragments included) and the arguments of each
    field (variables substituted)."""
    ops = [d for d in doc.definitions if isinstance(d, gast.OperationDefinitionNode)]
    op = None
    if operation_name:
        op = next((o for o in ops if o.name and o.name.value == operation_name), None)
    elif len(ops) == 1:
        op = ops[0]
    name = op.name.value if op is not None and op.name else operation_name
    fields: set = set()
    args: dict = {}
    type_info = TypeInfo(schema)

    class V(Visitor):
        def enter_field(self, node, *_):
            parent = type_info.get_parent_type()
            pname = parent.name if parent is not None else "?"
            key = f"{pname}.{node.name.value}"
            fields.add(key)
            if node.arguments:
                a = {}
                for arg in node.arguments:
                    try:
                        a[arg.name.value] = value_from_ast_untyped(arg.value, variables or {})
                    except Exception:
                        a[arg.name.value] = None
                lst = args.setdefault(key, [])
                if a not in lst and len(lst) < 50:
                    lst.append(a)

    visit(doc, TypeInfoVisitor(type_info, V()))
    return name, sorted(fields), args


# --------------------------------------------------------------------------
# The test bed state and GraphQL resolvers
# --------------------------------------------------------------------------


class DuplicateRuns(ValueError):
    """A run id served twice (in `--runs` and `--synthetic`)."""


class Testbed:
    def __init__(self, args):
        self.args = args
        self.entity = args.entity
        self.project = args.project
        self.api_key = args.api_key
        self.secret = os.urandom(32)
        self.micro = args.timestamps == "micro"
        self.step_type = args.step_type
        self.part_rows = max(0, args.part_rows)
        self.debug_flip = args.debug_flip
        self.events_samples_cap = args.events_samples_cap
        self.no_parquet_history = args.no_parquet_history
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.acct = Accounting()
        self.default_live = args.live_steps
        self.live_override: dict = {}
        self.live_global = None
        # the served view (POST /_testbed/hide, /_testbed/rows): hidden run
        # ids, and runs served with only their first N rows {id: N}
        self.hidden: set = set()
        self.row_limit: dict = {}
        self.file_locks: dict = {}
        if args.cache:
            self.cache = Path(args.cache)
            self.cache.mkdir(parents=True, exist_ok=True)
            self.tmp_cache = None
        else:
            self.tmp_cache = tempfile.mkdtemp(prefix="wandb-testbed-")
            self.cache = Path(self.tmp_cache)
        # the synthetic runs are made once and kept by every reload
        self.synthetic = store.parse_synthetic(args.synthetic).runs if args.synthetic else []
        self.reload_lock = threading.Lock()  # one reload at a time
        try:
            runs = self._read_runs([])
        except DuplicateRuns as e:
            raise SystemExit(str(e))
        # base_runs: every run read; runs/by_name: the served view of them
        self.base_runs = runs
        self.base_by_name = {r.name: r for r in runs}
        self.runs: list = []
        self.by_name: dict = {}
        self._rebuild_view()
        self.schema = build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))
        self._install_scalars()
        self._install_resolvers()
        self.files_url = None
        self.base_url = None

    # ---- the served runs --------------------------------------------------

    def _read_runs(self, previous) -> list:
        """The `--runs` folder as it is now (runs unchanged since `previous`
        reused), then the synthetic runs. Raises DuplicateRuns."""
        runs: list = []
        if self.args.runs:
            runs.extend(store.load_runs(Path(self.args.runs), self.cache, previous))
        runs.extend(self.synthetic)
        seen, dup = set(), set()
        for r in runs:
            (dup if r.name in seen else seen).add(r.name)
        if dup:
            raise DuplicateRuns("duplicate run ids between --runs and --synthetic: "
                                + ", ".join(sorted(dup)))
        return runs

    def reload(self):
        """Re-reads `--runs` and replaces the served runs in one step (the
        old ones stay if that fails). Per-run state that could outlive its
        run is dropped: live-tail overrides, hidden ids and row limits of
        runs that are gone (and row limits no longer below the run's rows),
        and the locks of Parquet files no served run uses. The Parquet files
        and the URL tokens are keyed by the run's content (`fingerprint()`),
        so a changed run never meets its old files or URLs."""
        with self.reload_lock:
            with self.lock:
                previous = self.base_runs
            runs = self._read_runs(previous)
            by_name = {r.name: r for r in runs}
            with self.lock:
                self.base_runs = runs
                self.base_by_name = by_name
                for name in [n for n in self.live_override if n not in by_name]:
                    del self.live_override[name]
                self.hidden &= set(by_name)
                for name, n in list(self.row_limit.items()):
                    if name not in by_name or n >= by_name[name].n_rows:
                        del self.row_limit[name]
                self._rebuild_view()
                dirs = {str(self.cache / "parquet" / r.fingerprint() / r.name)
                        for r in runs + self.runs}
                for path in [p for p in self.file_locks if os.path.dirname(p) not in dirs]:
                    del self.file_locks[path]

    def _rebuild_view(self):
        """`runs` and `by_name` from `base_runs` (with `lock` held, or before
        serving): hidden runs left out, row-limited ones wrapped in a
        store.TruncatedRun (kept from the previous view when unchanged, with
        its caches). O(runs), once per change: requests only read the view."""
        old = self.by_name
        runs = []
        for r in self.base_runs:
            if r.name in self.hidden:
                continue
            n = self.row_limit.get(r.name)
            if n is not None and n < r.n_rows:
                prev = old.get(r.name)
                if isinstance(prev, store.TruncatedRun) and prev.base is r and prev.n_rows == n:
                    r = prev
                else:
                    r = store.TruncatedRun(r, n)
            runs.append(r)
        self.runs = runs
        self.by_name = {r.name: r for r in runs}

    def is_flip_run(self, run) -> bool:
        """The run `--debug-flip` alters: the first run read (by id, so the
        truncated view of it too)."""
        base = self.base_runs
        return bool(base) and base[0].name == run.name

    # ---- history files (sent from disk, never held whole) --------------------

    def file_info(self, path: Path):
        """The size and ETag of a history file (written once, then renamed
        into place: its size and modification time identify its bytes)."""
        st = path.stat()
        return st.st_size, '"%x-%x"' % (st.st_size, st.st_mtime_ns)

    # ---- live tail -------------------------------------------------------

    def live_steps(self, run) -> int:
        with self.lock:
            if run.name in self.live_override:
                return self.live_override[run.name]
            if self.live_global is not None:
                return self.live_global
            return self.default_live

    def cut(self, run) -> int:
        """Rows [0, cut) are exported to Parquet; [cut, n) are live."""
        return max(0, run.n_rows - max(0, self.live_steps(run)))

    # ---- scalars -------------------------------------------------------------

    def _install_scalars(self):
        tm = self.schema.type_map

        def ser_jsonstring(v):
            return v if isinstance(v, str) else store.api_json(v)

        def parse_jsonstring(v):
            if not isinstance(v, str):
                raise GraphQLError("JSONString must be a string")
            return v

        def lit_string(node, _vars=None):
            if isinstance(node, gast.StringValueNode):
                return node.value
            raise GraphQLError("expected a string literal")

        tm["JSONString"].serialize = ser_jsonstring
        tm["JSONString"].parse_value = parse_jsonstring
        tm["JSONString"].parse_literal = lit_string
        tm["JSON"].serialize = lambda v: v
        tm["JSON"].parse_value = lambda v: v
        tm["JSON"].parse_literal = lambda node, _vars=None: value_from_ast_untyped(node, _vars)
        tm["DateTime"].serialize = lambda v: v
        tm["DateTime"].parse_value = lambda v: v
        tm["DateTime"].parse_literal = lit_string

        def parse_int64(v):
            if isinstance(v, bool):
                raise GraphQLError("Int64 cannot represent a boolean")
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int) or not (store.INT64_MIN <= v <= store.INT64_MAX):
                raise GraphQLError(f"Int64 cannot represent {v!r}")
            return v

        def lit_int64(node, _vars=None):
            if isinstance(node, gast.IntValueNode):
                return parse_int64(int(node.value))
            raise GraphQLError("expected an integer literal")

        tm["Int64"].serialize = parse_int64
        tm["Int64"].parse_value = parse_int64
        tm["Int64"].parse_literal = lit_int64

    # ---- resolvers ------------------------------------------------------

    def _install_resolvers(self):
        tm = self.schema.type_map
        q = tm["Query"].fields
        q["viewer"].resolve = lambda _r, _i: self.viewer()
        q["project"].resolve = lambda _r, _i, name=None, entityName=None: self.get_project(name, entityName)
        q["serverInfo"].resolve = lambda _r, _i: {"features": []}

    def viewer(self):
        return {"id": store.b64("User:testbed-user"), "name": "Test Bed", "username": "testbed-user",
                "email": "testbed@example.invalid", "entity": self.entity, "admin": False,
                "flags": "{}", "teams": lambda _info, first=None: {"edges": [
                    {"node": {"id": store.b64("Entity:" + self.entity), "name": self.entity}}]}}

    def get_project(self, name, entity):
        if name != self.project or (entity is not None and entity != self.entity):
            return None
        return ProjectView(self)


class ProjectView:
    def __init__(self, tb: Testbed):
        self.tb = tb
        self.id = store.b64(f"Project:v1:{tb.project}:{tb.entity}")
        self.internalId = store.b64(f"Project:internal:{tb.entity}/{tb.project}")
        self.name = tb.project
        self.entityName = tb.entity
        self.readOnly = False

    def _select(self, filters):
        flt = None
        if filters:
            try:
                flt = json.loads(filters)
            except ValueError as e:
                raise GraphQLError(f"invalid filters: {e}")
        try:
            return [r for r in self.tb.runs if store.matches(r, flt, self.tb.micro)]
        except store.FilterError as e:
            raise GraphQLError(f"invalid filters: {e}")

    def runCount(self, info, filters=None):
        return len(self._select(filters))

    def runs(self, info, filters=None, order=None, first=None, after=None):
        sel = self._select(filters)
        try:
            sel = store.sort_runs(sel, order, self.tb.micro)
        except store.FilterError as e:
            raise GraphQLError(str(e))
        start = 0
        if after:
            try:
                start = int(base64.b64decode(after).decode().split(":")[-1]) + 1
            except Exception:
                raise GraphQLError("invalid cursor")
        n = 50 if first is None else int(first)
        if n < 0:
            raise GraphQLError("first must be non-negative")
        page = sel[start:start + n]
        edges = [{"node": RunView(self.tb, r), "cursor": store.b64(f"RunCursor:v1:{start + j}")}
                 for j, r in enumerate(page)]
        return {"edges": edges,
                "pageInfo": {"startCursor": edges[0]["cursor"] if edges else None,
                             "endCursor": edges[-1]["cursor"] if edges else None,
                             "hasNextPage": start + n < len(sel),
                             "hasPreviousPage": start > 0}}

    def run(self, info, name):
        r = self.tb.by_name.get(name)
        return RunView(self.tb, r) if r is not None else None


def _flip(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return v + "!"
    return v


class RunView:
    def __init__(self, tb: Testbed, run):
        self.tb, self.r = tb, run
        r = run
        self.id = store.b64(f"Run:v1:{r.name}:{tb.project}:{tb.entity}")
        self.name = r.name
        self.displayName = r.display_name
        self.state = r.state
        self.tags = list(r.tags or [])
        self.group = r.group
        self.jobType = r.job_type
        self.sweepName = None
        self.commit = r.commit
        self.readOnly = False
        self.createdAt = store.iso_utc(r.created_us, tb.micro)
        self.heartbeatAt = store.iso_utc(r.heartbeat_us, tb.micro)
        self.updatedAt = self.heartbeatAt
        self.description = r.notes
        self.notes = r.notes
        self.host = r.host
        self.historyLineCount = r.n_rows
        self.eventsLineCount = len(r.events_lines())
        self.projectId = 1
        self.user = {"id": store.b64("User:testbed-user"), "name": "Test Bed",
                     "username": "testbed-user", "entity": tb.entity}

    def _first_run(self):
        return self.tb.is_flip_run(self.r)

    def config(self, info, keys=None):
        cfg = self.r.config_obj()
        out = {}
        for k, v in cfg.items():
            if keys is None or k in keys:
                out[k] = {"value": v, "desc": None}
        if self.tb.debug_flip == "config" and self._first_run():
            k0 = next((k for k, v in out.items()
                       if isinstance(v["value"], (int, float, str)) and v["value"] is not None), None)
            if k0 is not None:
                out[k0] = {"value": _flip(out[k0]["value"]), "desc": None}
        if keys is None or "_wandb" in keys:
            out["_wandb"] = {"value": self.r.config_wandb(), "desc": None}
        return store.api_json(out)

    def summaryMetrics(self, info, keys=None):
        s = self.r.summary_obj()
        if keys is not None:
            s = {k: v for k, v in s.items() if k in keys}
        if self.tb.debug_flip == "summary" and self._first_run():
            s = dict(s)
            k0 = next((k for k in s if not k.startswith("_")), None)
            if k0 is not None:
                s[k0] = _flip(s[k0])
        return store.api_json(s)

    def systemMetrics(self, info):
        return store.api_json(self.r.system_metrics())

    def historyKeys(self, info):
        return store.api_ready(self.r.history_keys())

    def _rows_at(self, idx):
        r = self.r
        if not idx:
            return []
        # contiguous fetch (synthetic runs compute rows by range)
        lo, hi = idx[0], idx[-1] + 1
        if hi - lo == len(idx):
            rows = r.rows(lo, hi)
        else:
            rows = [r.rows(i, i + 1)[0] for i in idx]
        if self.tb.debug_flip == "history" and self._first_run() and idx[0] == 0 and rows:
            rows = [dict(rows[0])] + rows[1:]
            _flip_row(rows[0])
        return rows

    def history(self, info, minStep=None, maxStep=None, samples=None):
        idx = self.r.indices_in_steps(minStep, maxStep, hi_inclusive=False)
        idx = store.sample_indices(idx, samples)
        return [store.api_json(row) for row in self._rows_at(idx)]

    def events(self, info, samples=None):
        """The events lines (system metrics), down-sampled like history:
        `samples` evenly spaced lines, the first and the last kept."""
        lines = self.r.events_lines()
        cap = self.tb.events_samples_cap
        # Without `samples`, or with 0 or less (every line), the cap too.
        if cap is not None and (samples is None or samples <= 0 or samples > cap):
            samples = cap
        idx = store.sample_indices(list(range(len(lines))), samples)
        out = [lines[i] for i in idx]
        if self.tb.debug_flip == "system" and self._first_run() and idx and idx[0] == 0:
            row = json.loads(out[0])
            k0 = next((k for k, v in row.items() if k.startswith("system.")
                       and isinstance(v, (int, float)) and not isinstance(v, bool)), None)
            if k0 is not None:
                row[k0] = _flip(row[k0])
                out[0] = store.api_json(row)
        return out

    def sampledHistory(self, info, specs):
        out = []
        for spec_text in specs:
            try:
                spec = json.loads(spec_text)
            except ValueError as e:
                raise GraphQLError(f"invalid spec: {e}")
            if not isinstance(spec, dict) or not isinstance(spec.get("keys", []), list):
                raise GraphQLError("a spec needs a list of keys")
            keys = spec.get("keys") or []
            samples = spec.get("samples", 500)
            idx = self.r.indices_in_steps(spec.get("minStep"), spec.get("maxStep"), hi_inclusive=True)
            rows = self._rows_at(idx)
            picked = []
            for i, row in zip(idx, rows):
                vals = {}
                for k in keys:
                    v = store.lookup(row, k)
                    if v is store._MISSING or v is None:
                        break
                    vals[k] = v
                else:
                    picked.append(vals)
            keep = store.sample_indices(list(range(len(picked))), samples)
            out.append([store.api_ready(picked[j]) for j in keep])
        return out

    def parquetHistory(self, info, liveKeys):
        tb, r = self.tb, self.r
        if tb.no_parquet_history:
            raise GraphQLError('Cannot query field "parquetHistory" on type "Run".')
        cut = tb.cut(r)
        urls = []
        part = tb.part_rows or max(1, cut)
        for lo in range(0, cut, part):
            hi = min(cut, lo + part)
            urls.append(tb_sign_url(tb, r, lo, hi))
        live = []
        if cut < r.n_rows:
            for row in self._rows_at(list(range(cut, r.n_rows))):
                live.append(store.api_ready({k: row[k] for k in liveKeys if k in row}))
        return {"parquetUrls": urls, "liveData": live}


def _flip_row(row):
    for k in row:
        if not k.startswith("_") and isinstance(row[k], (int, float, str)) and row[k] is not None:
            row[k] = _flip(row[k])
            return


def tb_sign_url(tb: Testbed, run, lo: int, hi: int) -> str:
    path = "/files/%s/%s/%s/history-%08d-%08d.parquet" % (
        urllib.parse.quote(tb.entity, safe=""), urllib.parse.quote(tb.project, safe=""),
        urllib.parse.quote(run.name, safe=""), lo, hi)
    exp = int(time.time()) + URL_TTL_S
    return f"{tb.files_url}{path}?expires={exp}&token={sign(tb, path, exp, run.fingerprint())}"


def sign(tb: Testbed, path: str, exp: int, content: str) -> str:
    """`content` is the run's fingerprint: a URL handed out before a reload
    that changed (or removed) the run no longer validates."""
    msg = f"{path}|{exp}|{tb.step_type}|{tb.debug_flip}|{content}".encode()
    return hmac.new(tb.secret, msg, hashlib.sha256).hexdigest()


def parquet_file(tb: Testbed, run, lo: int, hi: int) -> Path:
    """The Parquet file of rows [lo, hi) of a run, written on first use."""
    d = tb.cache / "parquet" / run.fingerprint() / run.name
    flip = "-flip" if tb.debug_flip == "history" and tb.is_flip_run(run) else ""
    path = d / f"{lo:08d}-{hi:08d}-{tb.step_type}{flip}.parquet"
    if path.exists():
        return path
    with tb.lock:
        lock = tb.file_locks.setdefault(str(path), threading.Lock())
    with lock:
        if not path.exists():
            d.mkdir(parents=True, exist_ok=True)
            if flip and lo == 0:
                rows = [dict(x) for x in run.rows(lo, hi)]
                _flip_row(rows[0])
                store.write_parquet(store.rows_to_table(rows, tb.step_type), path)
            else:
                run.write_history_parquet(lo, hi, tb.step_type, path)
    return path


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class Abort(Exception):
    """Ends the request without a (complete) response."""


class FileBody:
    """Bytes [start, start + length) of a file, sent from disk a block at a
    time: a history file of any size is served without being held."""

    BLOCK = 1 << 20

    def __init__(self, path: Path, start: int, length: int):
        self.path, self.start, self.length = path, start, length

    def __len__(self):
        return self.length

    def write_to(self, out, limit: int | None = None):
        left = self.length if limit is None else min(limit, self.length)
        with open(self.path, "rb") as f:
            f.seek(self.start)
            while left > 0:
                block = f.read(min(self.BLOCK, left))
                if not block:
                    raise OSError(f"{self.path} is shorter than expected")
                out.write(block)
                left -= len(block)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wandb-testbed/1"
    sys_version = ""
    tb: Testbed = None  # set per server class
    origin = "api"

    def setup(self):
        super().setup()
        # one segment per response part would otherwise wait for the peer's
        # delayed ACK (Nagle): 40 ms per keep-alive request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if os.environ.get("WANDB_TESTBED_VERBOSE"):
            sys.stderr.write("[%s] %s\n" % (self.origin, fmt % args))

    # ---- plumbing ---------------------------------------------------------

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = b""
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body: bytes, ctype="application/json", headers=None, truncate=False):
        # A GraphQL request is counted before its answer leaves: a client that
        # reads the answer and then asks /_testbed/requests must see it.
        pending = getattr(self, "_pending_entry", None)
        if pending is not None:
            self._pending_entry = None
            pending.setdefault("status", status)
            self.tb.acct.add(pending)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if truncate:
            if isinstance(body, FileBody):
                body.write_to(self.wfile, len(body) // 2)
            else:
                self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            raise Abort()
        if isinstance(body, FileBody):
            body.write_to(self.wfile)
        else:
            self.wfile.write(body)

    def _reset(self):
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        raise Abort()

    def _credentials(self):
        """Where W&B credentials appear in this request (None if nowhere)."""
        if self.headers.get("Authorization"):
            return "authorization header"
        key = self.tb.api_key
        if key:
            for k, v in self.headers.items():
                if key in v:
                    return f"header {k}"
            raw = urllib.parse.unquote(self.path)
            if key in raw or key in self.path:
                return "url"
            enc = base64.b64encode(f"api:{key}".encode()).decode()
            if enc in self.path:
                return "url"
        return None

    def _faults(self, operation, fields, path):
        """Returns the rule to apply, after sleeping for delay rules."""
        tb = self.tb
        chosen = None
        delay = 0.0
        with tb.lock:
            for rule in tb.rules:
                if not rule.matches(self.origin, operation, fields, path):
                    continue
                # every delay rule applies; of the others, the first that fires
                if rule.action != "delay" and chosen is not None:
                    continue
                if not rule.fire():
                    continue
                if rule.action == "delay":
                    delay += rule.delay
                else:
                    chosen = rule
        if delay:
            time.sleep(delay)
        return chosen

    def _apply(self, rule, entry, make_body):
        """Applies a non-delay rule; returns True if the request was consumed
        by it (status), raises Abort for reset/truncate."""
        entry["fault"] = rule.action
        if rule.delay and rule.action != "delay":
            time.sleep(rule.delay)
        if rule.action in ("status", "rate_limit"):
            body = rule.spec.get("body")
            if body is None:
                body = {"errors": [{"message": "rate limit exceeded" if rule.status == 429
                                    else f"injected fault {rule.status}"}]}
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            entry["status"] = rule.status
            self._send(rule.status, raw, headers=rule.headers())
            return True
        if rule.action == "reset":
            entry["status"] = "reset"
            self._reset()
        if rule.action == "truncate":
            status, body, ctype, headers = make_body()
            entry["status"] = f"truncated {status}"
            self._send(status, body, ctype, headers, truncate=True)
        return False

    def _entry(self, **kw):
        e = {"t": round(time.time(), 6), "origin": self.origin, "method": self.command,
             "path": urllib.parse.urlsplit(self.path).path,
             "credentials": self._credentials() is not None,
             "user_agent": self.headers.get("User-Agent")}
        e.update(kw)
        return e

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except Abort:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class ApiHandler(Handler):
    origin = "api"

    def do_GET(self):
        p = urllib.parse.urlsplit(self.path).path
        if p == "/_testbed/requests":
            return self._send(200, json.dumps(self.tb.acct.snapshot()).encode())
        if p == "/_testbed/faults":
            with self.tb.lock:
                rules = [r.describe() for r in self.tb.rules]
            return self._send(200, json.dumps({"rules": rules}).encode())
        if p == "/_testbed/state":
            return self._send(200, json.dumps(self._state()).encode())
        if p in ("/healthz", "/_testbed/health"):
            return self._send(200, b'{"ok":true}')
        entry = self._entry(graphql=False)
        entry["status"] = 404
        self.tb.acct.add(entry)
        self._send(404, b'{"errors":[{"message":"not found"}]}')

    def _state(self):
        tb = self.tb
        with tb.lock:
            return {"base_url": tb.base_url, "files_url": tb.files_url, "entity": tb.entity,
                    "project": tb.project, "runs": len(tb.runs), "runs_loaded": len(tb.base_runs),
                    "hidden": {"count": len(tb.hidden), "runs": sorted(tb.hidden)},
                    "rows": dict(sorted(tb.row_limit.items())),
                    "live_steps": {"default": tb.default_live, "global": tb.live_global,
                                   "runs": dict(tb.live_override)},
                    "part_rows": tb.part_rows, "step_type": tb.step_type,
                    "timestamps": "micro" if tb.micro else "seconds"}

    def do_POST(self):
        p = urllib.parse.urlsplit(self.path).path
        body = self._read_body()
        if p.startswith("/_testbed/"):
            return self._admin(p, body)
        if p.rstrip("/") == "/graphql":
            return self._graphql(body)
        entry = self._entry(graphql=False, status=404)
        self.tb.acct.add(entry)
        self._send(404, b'{"errors":[{"message":"not found"}]}')

    def _admin(self, p, body):
        tb = self.tb
        try:
            data = json.loads(body or b"{}")
        except ValueError as e:
            return self._send(400, json.dumps({"error": f"bad JSON: {e}"}).encode())
        try:
            if p == "/_testbed/faults":
                specs = data.get("rules", []) if isinstance(data, dict) else data
                with tb.lock:
                    base = [] if (not isinstance(data, dict) or data.get("replace", True)) else tb.rules
                    rules = list(base) + [Rule(s, len(base) + i) for i, s in enumerate(specs)]
                    tb.rules = rules
                return self._send(200, json.dumps({"rules": [r.describe() for r in rules]}).encode())
            if p == "/_testbed/reset":
                what = data if data else {"faults": True, "requests": True, "live": True, "view": True}
                with tb.lock:
                    if what.get("faults"):
                        tb.rules = []
                    if what.get("live"):
                        tb.live_override.clear()
                        tb.live_global = None
                    if what.get("view"):
                        tb.hidden.clear()
                        tb.row_limit.clear()
                        tb._rebuild_view()
                if what.get("requests"):
                    tb.acct.reset()
                return self._send(200, b'{"ok":true}')
            if p == "/_testbed/live":
                steps = int(data["steps"]) if data.get("steps") is not None else None
                with tb.lock:
                    if data.get("run"):
                        if data["run"] not in tb.base_by_name:
                            return self._send(404, b'{"error":"no such run"}')
                        if steps is None:
                            tb.live_override.pop(data["run"], None)
                        else:
                            tb.live_override[data["run"]] = steps
                    else:
                        tb.live_global = steps
                return self._send(200, json.dumps(self._state()).encode())
            if p == "/_testbed/hide":
                if not isinstance(data, dict) or set(data) != {"runs"}:
                    raise ValueError('hide wants {"runs": [ID, ...]}')
                ids = _run_ids(data["runs"], "runs")
                with tb.lock:
                    unknown = sorted({i for i in ids if i not in tb.base_by_name})
                    if not unknown:
                        tb.hidden = set(ids)
                        tb._rebuild_view()
                if unknown:
                    return self._unknown_runs(unknown)
                return self._send(200, json.dumps(self._state()).encode())
            if p == "/_testbed/rows":
                if (not isinstance(data, dict) or "rows" not in data
                        or len({"run", "runs"} & set(data)) != 1 or len(data) != 2):
                    raise ValueError('rows wants {"run": ID, "rows": N} or {"runs": [ID, ...], "rows": N}')
                ids = [data["run"]] if "run" in data else data["runs"]
                ids = _run_ids(ids, "run" if "run" in data else "runs")
                n = data["rows"]
                if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
                    raise ValueError('"rows" must be a non-negative integer or null')
                with tb.lock:
                    unknown = sorted({i for i in ids if i not in tb.base_by_name})
                    if not unknown:
                        for i in ids:
                            if n is None or n >= tb.base_by_name[i].n_rows:
                                tb.row_limit.pop(i, None)  # whole again
                            else:
                                tb.row_limit[i] = n
                        tb._rebuild_view()
                if unknown:
                    return self._unknown_runs(unknown)
                return self._send(200, json.dumps(self._state()).encode())
            if p == "/_testbed/reload":
                try:
                    tb.reload()
                except DuplicateRuns as e:
                    return self._send(400, json.dumps({"error": str(e)}).encode())
                except Exception as e:  # the old runs stay served
                    traceback.print_exc(file=sys.stderr)
                    return self._send(500, json.dumps({"error": f"reload failed: {e!r}"}).encode())
                return self._send(200, json.dumps(self._state()).encode())
        except (ValueError, KeyError, TypeError) as e:
            return self._send(400, json.dumps({"error": str(e)}).encode())
        return self._send(404, b'{"error":"unknown admin endpoint"}')

    def _unknown_runs(self, ids):
        return self._send(404, json.dumps({"error": "unknown run ids: " + ", ".join(ids),
                                           "runs": ids}).encode())

    def _auth_ok(self) -> bool:
        h = self.headers.get("Authorization") or ""
        if not h.lower().startswith("basic "):
            return False
        try:
            user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
        except Exception:
            return False
        return hmac.compare_digest(pw.encode(), (self.tb.api_key or "").encode())

    def _graphql(self, body):
        tb = self.tb
        entry = self._entry(graphql=True, operation=None, fields=[], args={})
        self._pending_entry = entry
        try:
            self._graphql_inner(body, entry)
        finally:
            # Not answered (a reset connection): counted now.
            if self._pending_entry is not None:
                self._pending_entry = None
                tb.acct.add(entry)

    def _graphql_inner(self, body, entry):
        tb = self.tb
        doc = None
        self._query_text = None
        variables = {}
        operation_name = None
        parse_error = None
        try:
            req = json.loads(body or b"{}")
            query = req.get("query")
            variables = req.get("variables") or {}
            operation_name = req.get("operationName") or None
            if not isinstance(query, str):
                raise ValueError("missing query")
            self._query_text = query
            entry["_document"] = query
            doc = parse(query)
        except GraphQLError as e:
            parse_error = [e.formatted]
        except ValueError as e:
            parse_error = [{"message": f"bad request: {e}"}]
        if doc is not None:
            try:
                name, fields, args = analyze(tb.schema, doc, operation_name, variables)
            except Exception as e:  # analysis must never break serving
                name, fields, args = operation_name, [], {"_error": [{"error": str(e)}]}
            entry.update(operation=name, fields=fields, args=args)
            entry["run_fields"] = sorted(f.split(".", 1)[1] for f in fields if f.startswith("Run."))
        field_names = {f.split(".", 1)[1] for f in entry.get("fields", [])}

        def make():
            return self._graphql_response(doc, variables, operation_name, parse_error)

        rule = self._faults(entry.get("operation"), field_names, entry["path"])
        if rule is not None and self._apply(rule, entry, lambda: _mk(make)):
            return
        if not self._auth_ok():
            entry["status"] = 401
            self._send(401, json.dumps({"errors": [{
                "message": "user is not logged in",
                "extensions": {"code": "PERMISSION_ERROR"}}]}).encode(),
                headers={"WWW-Authenticate": 'Basic realm="wandb"'})
            return
        status, raw, ctype, headers = _mk(make)
        entry["status"] = status
        if status != 200:
            entry["errors"] = json.loads(raw).get("errors")
            entry["query"] = self._query_text
        self._send(status, raw, ctype, headers)

    def _graphql_response(self, doc, variables, operation_name, parse_error):
        tb = self.tb
        if parse_error is not None:
            return 400, {"errors": parse_error}
        errors = validate(tb.schema, doc)
        if errors:
            if os.environ.get("WANDB_TESTBED_VERBOSE"):
                sys.stderr.write("validation errors: %s\n" % [e.message for e in errors])
            return 400, {"errors": [e.formatted for e in errors]}
        res = graphql.execute_sync(tb.schema, doc, variable_values=variables,
                                   operation_name=operation_name)
        out = {"data": res.data}
        if res.errors:
            out["errors"] = [e.formatted for e in res.errors]
            for e in res.errors:
                if e.original_error is not None and not isinstance(e.original_error, GraphQLError):
                    traceback.print_exception(e.original_error, file=sys.stderr)
        return 200, out


def _run_ids(ids, what) -> list:
    """`ids` checked to be a list of run id strings (400 otherwise)."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f'"{what}" must be ' + ("a list of run ids" if what == "runs" else "a run id"))
    return ids


def _mk(make):
    status, obj = make()
    raw = json.dumps(obj, ensure_ascii=False, allow_nan=False).encode()
    return status, raw, "application/json", {}


class FilesHandler(Handler):
    origin = "files"

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        self._read_body()
        self.do_GET()

    def do_GET(self):
        tb = self.tb
        entry = self._entry()
        try:
            self._serve(entry)
        finally:
            tb.acct.add(entry)

    def _serve(self, entry):
        tb = self.tb
        where = self._credentials()
        if where is not None:
            entry.update(status=403, reject="credentials", reject_where=where)
            return self._send(403, json.dumps({"error": "credentials must not be sent to the file origin",
                                               "where": where}).encode())
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        qs = urllib.parse.parse_qs(parts.query)
        segs = path.split("/")
        # /files/<entity>/<project>/<run>/history-<lo>-<hi>.parquet
        if len(segs) != 6 or segs[1] != "files":
            entry["status"] = 404
            return self._send(404, b'{"error":"not found"}')
        try:
            exp = int(qs.get("expires", ["0"])[0])
            token = qs.get("token", [""])[0]
        except ValueError:
            exp, token = 0, ""
        run = tb.by_name.get(urllib.parse.unquote(segs[4]))
        content = run.fingerprint() if run is not None else ""
        if not hmac.compare_digest(token, sign(tb, path, exp, content)) or exp < time.time():
            entry.update(status=403, reject="token")
            return self._send(403, b'{"error":"invalid or expired token"}')
        fname = segs[5]
        try:
            lo, hi = (int(x) for x in fname[len("history-"):-len(".parquet")].split("-"))
        except ValueError:
            run = None
        if run is None:
            entry["status"] = 404
            return self._send(404, b'{"error":"not found"}')
        entry["run"] = run.name
        entry["part"] = [lo, hi]
        if self.headers.get("Range"):
            entry["range"] = self.headers.get("Range")

        def make():
            path = parquet_file(tb, run, lo, hi)
            size, etag = tb.file_info(path)
            return self._range(path, size, etag)

        rule = self._faults(None, set(), path)
        if rule is not None and self._apply(rule, entry, make):
            return
        status, body, ctype, headers = make()
        entry["status"] = status
        entry["bytes"] = len(body)
        self._send(status, body, ctype, headers)

    def _range(self, path: Path, n: int, etag: str):
        rng = self.headers.get("Range")
        headers = {"Accept-Ranges": "bytes", "ETag": etag}
        ctype = "application/octet-stream"
        if not rng or not rng.startswith("bytes="):
            return 200, FileBody(path, 0, n), ctype, headers
        spec = rng[len("bytes="):].split(",")[0].strip()
        a, _, b = spec.partition("-")
        if a == "":
            start, end = max(0, n - int(b)), n - 1
        else:
            start = int(a)
            end = min(n - 1, int(b)) if b else n - 1
        if start >= n or start > end:
            headers["Content-Range"] = f"bytes */{n}"
            return 416, b"", ctype, headers
        headers["Content-Range"] = f"bytes {start}-{end}/{n}"
        return 206, FileBody(path, start, end + 1 - start), ctype, headers


def make_server(port, handler_cls, tb):
    cls = type(handler_cls.__name__ + "Bound", (handler_cls,), {"tb": tb})

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256
        allow_reuse_address = True

    return Server(("127.0.0.1", port), cls)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", help="folder with .wandb run files (searched recursively)")
    ap.add_argument("--synthetic", help="RUNS:STEPS:KEYS[:SEED[:STRIDE]] generated runs (row i at step i*STRIDE)")
    ap.add_argument("--no-parquet-history", action="store_true",
                    help="answer as a server without Run.parquetHistory (clients page with history(minStep, maxStep))")
    ap.add_argument("--cache", help="folder for Parquet files and parsed runs (default: a temporary folder)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--files-port", type=int, default=0)
    ap.add_argument("--api-key", default=None, help="the API key Basic auth must carry (user `api`)")
    ap.add_argument("--entity", default="testbed")
    ap.add_argument("--project", default="runport-testbed")
    ap.add_argument("--live-steps", type=int, default=0,
                    help="the last N rows of every run stay out of Parquet (liveData only)")
    ap.add_argument("--part-rows", type=int, default=50_000,
                    help="rows per Parquet file of a run's history (0: one file a run)")
    ap.add_argument("--step-type", choices=["int64", "float64"], default="int64",
                    help="Arrow type of `_step` in the Parquet files")
    ap.add_argument("--timestamps", choices=["micro", "seconds"], default="micro",
                    help="DateTime with microseconds (default) or whole seconds like W&B")
    ap.add_argument("--exit-with-stdin", action="store_true",
                    help="stop when stdin closes (a test harness that dies takes the server with it)")
    ap.add_argument("--debug-flip", choices=["history", "summary", "config", "system"], default=None,
                    help="serve one wrong value in the first run (to see a checker fail)")
    ap.add_argument("--events-samples-cap", type=int, default=None, metavar="N",
                    help="answer events(samples: M) with at most N lines, as a server that caps "
                         "its samples would (default: every line asked for)")
    args = ap.parse_args(argv)
    if args.events_samples_cap is not None and args.events_samples_cap < 1:
        ap.error("--events-samples-cap must be at least 1")
    if not args.runs and not args.synthetic:
        ap.error("give --runs and/or --synthetic")
    if args.api_key is None:
        args.api_key = os.environ.get("WANDB_TESTBED_API_KEY")
    if not args.api_key:
        ap.error("--api-key is required")

    tb = Testbed(args)
    api = make_server(args.port, ApiHandler, tb)
    files = make_server(args.files_port, FilesHandler, tb)
    tb.base_url = "http://127.0.0.1:%d" % api.server_address[1]
    tb.files_url = "http://127.0.0.1:%d" % files.server_address[1]
    for srv in (api, files):
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.exit_with_stdin:
        def watch_stdin():
            while sys.stdin.buffer.read(4096):
                pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"base_url": tb.base_url, "files_url": tb.files_url, "entity": tb.entity,
                      "project": tb.project, "runs": len(tb.runs)}), flush=True)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        api.shutdown()
        files.shutdown()
        if tb.tmp_cache:
            shutil.rmtree(tb.tmp_cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
