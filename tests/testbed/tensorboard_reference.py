#!/usr/bin/env python3
"""Reference reader for TensorBoard event files: TensorBoard's own
EventAccumulator, turned into the rows runport exports.

    python tensorboard_reference.py compare LOGDIR EXPORT_DIR
    python tensorboard_reference.py dump LOGDIR
    python tensorboard_reference.py table LOGDIR [--runs N]
    python tensorboard_reference.py tbparse LOGDIR

A run is a folder under LOGDIR directly holding `events.out.tfevents.*`
files; its id is the folder's path relative to LOGDIR with `/` separators
(`.` for LOGDIR itself). Each run is read by
`tensorboard.backend.event_processing.event_accumulator.EventAccumulator`
keeping every value (size guidance 0 for every kind), with TensorBoard's
purge of orphaned data (a `SessionLog.START` at step S drops the values read
before it at steps >= S). Its rows, per tag (the key, verbatim):

  Scalars     value = the float
  Tensors     0-d numeric (float, int, uint, float16, bfloat16): value = float(x);
              0-d bool: value_json true/false; anything else: value_json
              {"_type":"tensor","plugin":P,"size":<serialized TensorProto bytes>,"shape":[...]}
              (P: the tag's plugin in its first metadata, "" when none)
  Images      {"_type":"image","plugin":"images","size":<encoded bytes>,"width":w,"height":h}
  Audio       {"_type":"audio","plugin":"audio","size":<encoded bytes>}
  Histograms  {"_type":"histogram","plugin":"histograms","size":<buckets>,"count":<num>}

Tags of the hparams plugin give no rows: `_hparams_/session_start_info`
gives the run's config (runs.parquet `config.<name>`, the name verbatim:
numbers as floats, strings, bools) and `_hparams_/experiment` its
`hparams_metrics` (the metrics' tags, `group/tag` when grouped). `created_at` is the first
event's wall time (EventAccumulator's `FirstEventTimestamp()`, checked
against the files read again) and `updated_at` the greatest wall time of any
event in the run's files. Times are wall_time * 1e6 rounded half
away from zero to whole microseconds (as runport rounds; see `to_us`).

`compare` reads runport's export (runs.parquet, history/part-*.parquet,
long layout) with pyarrow and compares it with the reference: the set of
runs, their columns, config and times; per (run, key) the rows in order
(the reference's in step order, equal steps in the accumulator's order;
runport's as written). Floats are compared exactly (NaN equals NaN, the
sign of zero counts); JSON text is compared parsed. It prints up to 20
differences and their counts and exits 1, or prints one JSON line
`{"runs": .., "rows": .., ...}` and exits 0. `dump` prints the reference
as JSON lines (each run, then its rows). `table` reads the first N runs
into a pandas DataFrame of the same long rows and prints one JSON line
(runs, rows, seconds): the reference side of benches/tensorboard.py, whose
other reference is `tbparse` (tbparse's SummaryReader reading the scalars).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2, types_pb2
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

EVENTS_PREFIX = "events.out.tfevents."
# every kind kept whole (0: no reservoir sampling)
SIZE_GUIDANCE = {k: 0 for k in (ea.COMPRESSED_HISTOGRAMS, ea.IMAGES, ea.AUDIO, ea.SCALARS,
                                ea.HISTOGRAMS, ea.TENSORS)}
# the kinds that give rows, in the order their rows are gathered
KINDS = (ea.SCALARS, ea.TENSORS, ea.IMAGES, ea.AUDIO, ea.HISTOGRAMS)
NUMERIC_DTYPES = {
    types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16,
    types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32, types_pb2.DT_INT64,
    types_pb2.DT_UINT8, types_pb2.DT_UINT16, types_pb2.DT_UINT32, types_pb2.DT_UINT64,
}
HPARAMS_PLUGIN = "hparams"
SESSION_START_TAG = "_hparams_/session_start_info"
EXPERIMENT_TAG = "_hparams_/experiment"
MAX_SHOWN = 20


# --------------------------------------------------------------------------
# The reference: one run folder read by EventAccumulator
# --------------------------------------------------------------------------


class RunRef:
    """What the reference expects of one run."""

    def __init__(self, run_id: str, folder: Path):
        self.run_id = run_id
        self.folder = folder
        self.rows: dict[str, list[tuple]] = {}  # key -> [(step, timestamp_us, value, value_json)]
        self.config: dict[str, object] = {}     # hparam name -> float | str | bool
        self.hparams_metrics: list[str] = []
        self.created_us: int | None = None
        self.updated_us: int | None = None
        self.notes: list[str] = []              # what the accumulator does that a reader may not expect


def to_us(seconds: float) -> int:
    """Wall time in seconds to microseconds: seconds * 1e6 rounded half away
    from zero, as runport rounds (Rust's f64::round) and as
    wandb_reference.py does. Exact halves happen: a wall time near 1.8e9 s
    is a multiple of 2**-22 s and its product with 1e6 (near 1.8e15) a
    multiple of 0.25, so about a quarter of all timestamps land exactly on
    .5 µs, and Python's round() (half to even) would differ on half of
    those."""
    if seconds < 0:
        return -to_us(-seconds)
    x = seconds * 1e6
    f = math.floor(x)
    return int(f) + (1 if x - f >= 0.5 else 0)


def run_folders(logdir: Path) -> list[tuple[str, Path]]:
    """(run_id, folder) of every folder under logdir directly holding event files, by run id."""
    found = []
    for folder, dirs, files in os.walk(logdir):
        dirs.sort()
        if any(f.startswith(EVENTS_PREFIX) and os.path.isfile(os.path.join(folder, f)) for f in files):
            rel = os.path.relpath(folder, logdir)
            found.append((rel.replace(os.sep, "/"), Path(folder)))
    return sorted(found)


def to_ndarray(proto) -> np.ndarray:
    """tensor_util.make_ndarray, except for bfloat16, which it cannot decode
    without TensorFlow or ml_dtypes: the 16-bit patterns (half_val, or
    tensor_content) are the upper halves of float32s."""
    if proto.dtype != types_pb2.DT_BFLOAT16:
        return tensor_util.make_ndarray(proto)
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_content:
        bits = np.frombuffer(proto.tensor_content, dtype="<u2")
    else:
        bits = np.array(list(proto.half_val), dtype=np.uint32)
        if len(bits) == 1:  # one value stands for every element
            bits = np.repeat(bits, int(np.prod(shape, dtype=np.int64)))
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def tensor_value(proto, plugin: str) -> tuple[float | None, str | None]:
    """(value, value_json) of one TensorProto."""
    if not proto.tensor_shape.dim and proto.dtype in NUMERIC_DTYPES | {types_pb2.DT_BOOL}:
        x = to_ndarray(proto)
        if x.ndim == 0 and x.dtype.kind in "fiu":
            return float(x), None
        if x.ndim == 0 and x.dtype.kind == "b":
            return None, "true" if bool(x) else "false"
    desc = {"_type": "tensor", "plugin": plugin, "size": len(proto.SerializeToString()),
            "shape": [d.size for d in proto.tensor_shape.dim]}
    return None, json.dumps(desc, separators=(",", ":"))


def _json(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _number(x: float):
    """An integral float as an int (histogram counts are doubles in the proto)."""
    return int(x) if float(x).is_integer() else x


def hparam_value(v):
    """A google.protobuf.Value of session_start_info.hparams."""
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        return float(v.number_value)
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return bool(v.bool_value)
    # null, list and struct values are not written by tensorboardX or TF's
    # hparams API; the reference keeps them as compact JSON text (unspecified)
    from google.protobuf.json_format import MessageToDict
    return _json(MessageToDict(v))


def read_run(run_id: str, folder: Path, times: bool = True) -> RunRef:
    """Reads one run with EventAccumulator. `times`: also read the files
    again, event by event, for created_at / updated_at and for notes on
    the accumulator's purges."""
    ref = RunRef(run_id, folder)
    acc = ea.EventAccumulator(str(folder), size_guidance=SIZE_GUIDANCE)
    acc.Reload()
    tags = acc.Tags()

    def plugin(tag: str) -> str:
        md = acc.summary_metadata.get(tag)
        return md.plugin_data.plugin_name if md is not None else ""

    kinds_of = collections.defaultdict(list)
    for kind in KINDS:
        for tag in tags[kind]:
            if plugin(tag) == HPARAMS_PLUGIN:
                continue
            kinds_of[tag].append(kind)
            rows = ref.rows.setdefault(tag, [])
            if kind == ea.SCALARS:
                rows.extend((e.step, to_us(e.wall_time), float(e.value), None) for e in acc.Scalars(tag))
            elif kind == ea.TENSORS:
                p = plugin(tag)
                rows.extend((e.step, to_us(e.wall_time), *tensor_value(e.tensor_proto, p))
                            for e in acc.Tensors(tag))
            elif kind == ea.IMAGES:
                rows.extend((e.step, to_us(e.wall_time), None,
                             _json({"_type": "image", "plugin": "images", "size": len(e.encoded_image_string),
                                    "width": e.width, "height": e.height}))
                            for e in acc.Images(tag))
            elif kind == ea.AUDIO:
                rows.extend((e.step, to_us(e.wall_time), None,
                             _json({"_type": "audio", "plugin": "audio", "size": len(e.encoded_audio_string)}))
                            for e in acc.Audio(tag))
            else:
                rows.extend((e.step, to_us(e.wall_time), None,
                             _json({"_type": "histogram", "plugin": "histograms",
                                    "size": len(e.histogram_value.bucket),
                                    "count": _number(e.histogram_value.num)}))
                            for e in acc.Histograms(tag))
    for tag, kinds in kinds_of.items():
        if len(kinds) > 1:
            # the accumulator keeps one store per kind: the order of the two
            # kinds' values at equal steps is lost (here: kinds in KINDS order)
            ref.notes.append(f"tag {tag!r} is in several kinds: {', '.join(kinds)}")
    for rows in ref.rows.values():
        rows.sort(key=lambda r: r[0])  # stable: equal steps keep the accumulator's order

    try:
        content = acc.PluginTagToContent(HPARAMS_PLUGIN)
    except KeyError:  # no hparams summaries in this run
        content = {}
    if SESSION_START_TAG in content:
        data = plugin_data_pb2.HParamsPluginData.FromString(content[SESSION_START_TAG])
        ref.config = {name: hparam_value(v) for name, v in data.session_start_info.hparams.items()}
    if EXPERIMENT_TAG in content:
        data = plugin_data_pb2.HParamsPluginData.FromString(content[EXPERIMENT_TAG])
        ref.hparams_metrics = [f"{m.name.group}/{m.name.tag}" if m.name.group else m.name.tag
                               for m in data.experiment.metric_infos]
    if times:
        try:
            first_event_s = acc.FirstEventTimestamp()
        except ValueError:  # no event at all
            first_event_s = None
        read_times(ref, first_event_s)
    return ref


def read_times(ref: RunRef, first_event_s: float | None) -> None:
    """created_at / updated_at: the first event's wall time (the first
    event of the first file, checked against `first_event_s`, what
    EventAccumulator.FirstEventTimestamp() gave) and the greatest of any
    event of the run's files (in the accumulator's file order: sorted by
    name), and
    a note when a restart would have dropped tensors: EventAccumulator
    purges scalars, histograms, images and audio, not tensors."""
    wall = []
    tensor_steps: list[int] = []
    for name in sorted(os.listdir(ref.folder)):
        path = ref.folder / name
        if not (name.startswith(EVENTS_PREFIX) and path.is_file()):
            continue
        for event in event_file_loader.LegacyEventFileLoader(str(path)).Load():
            wall.append(event.wall_time)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                kept = [s for s in tensor_steps if s >= event.step]
                if kept:
                    ref.notes.append(f"SessionLog START at step {event.step}: {len(kept)} earlier tensor "
                                     f"values at steps >= {event.step} are kept by EventAccumulator")
            elif event.HasField("summary"):
                tensor_steps.extend(event.step for v in event.summary.value if v.HasField("tensor"))
    if wall:
        ref.created_us, ref.updated_us = to_us(wall[0]), to_us(max(wall))
        if wall[0] != first_event_s:
            raise RuntimeError(f"run {ref.run_id!r}: the first event read again ({wall[0]!r}) is not "
                               f"EventAccumulator's first event ({first_event_s!r})")


def reference(logdir: Path, limit: int | None = None, times: bool = True) -> dict[str, RunRef]:
    folders = run_folders(logdir)[:limit]
    return {run_id: read_run(run_id, folder, times) for run_id, folder in folders}


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------


def same_float(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) \
            or not isinstance(b, (int, float)):
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


def same_json(a, b) -> bool:
    """Parsed JSON, compared strictly: bools are not numbers, 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return same_float(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def same_cell(a, b) -> bool:
    """A runs.parquet cell: float, str or bool, of the same type."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return same_float(a, b)


class Differences:
    def __init__(self):
        self.items: list[str] = []
        self.counts: collections.Counter = collections.Counter()

    def add(self, what: str, detail: str) -> None:
        self.counts[what] += 1
        if len(self.items) < MAX_SHOWN:
            self.items.append(f"{what}: {detail}")


def read_export(export: Path, diffs: Differences):
    """runs.parquet as a list of dicts, and the history rows grouped by
    (run_id, key) in file order, checking the long layout's columns, types
    and order as it goes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (export / "runs.parquet").is_file():
        diffs.add("runs", "no runs.parquet")
        runs_table = pa.table({"run_id": pa.array([], pa.string())})
    else:
        runs_table = pq.read_table(export / "runs.parquet")
    for name, want in [("run_id", pa.string()), ("source", pa.string()),
                       ("created_at", pa.timestamp("us", tz="UTC")),
                       ("updated_at", pa.timestamp("us", tz="UTC"))]:
        if name not in runs_table.column_names:
            diffs.add("runs column missing", name)
        elif runs_table.schema.field(name).type != want:
            diffs.add("runs column type", f"{name}: {runs_table.schema.field(name).type}, expected {want}")
    if "hparams_metrics" not in runs_table.column_names:
        diffs.add("runs column missing", "hparams_metrics")
    elif not pa.types.is_list(runs_table.schema.field("hparams_metrics").type) and \
            not pa.types.is_large_list(runs_table.schema.field("hparams_metrics").type):
        diffs.add("runs column type", f"hparams_metrics: {runs_table.schema.field('hparams_metrics').type}")
    for t in ("created_at", "updated_at"):
        if t in runs_table.column_names and pa.types.is_timestamp(runs_table.schema.field(t).type):
            runs_table = runs_table.set_column(runs_table.column_names.index(t), t,
                                               runs_table.column(t).cast(pa.int64()))
    runs = runs_table.to_pylist()

    want = {"run_id": pa.string(), "step": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC"),
            "runtime_s": pa.float64(), "key": pa.string(), "value": pa.float64(), "value_json": pa.string()}
    groups: dict[tuple[str, str], list[tuple]] = {}
    parts = sorted((export / "history").glob("part-*.parquet"))
    if not parts:
        diffs.add("history", "no history/part-*.parquet")
    last = None
    for part in parts:
        pf = pq.ParquetFile(str(part))
        schema = pf.schema_arrow
        if schema.names != list(want):
            diffs.add("history columns", f"{part.name}: {schema.names}, expected {list(want)}")
            continue
        for name, t in want.items():
            got = schema.field(name).type
            if pa.types.is_dictionary(got):
                got = got.value_type
            if got != t:
                diffs.add("history column type", f"{part.name} {name}: {schema.field(name).type}, expected {t}")
        for rg in range(pf.num_row_groups):
            tbl = pf.read_row_group(rg)
            cols = {n: tbl.column(n) for n in want}
            for n in ("run_id", "key"):
                if pa.types.is_dictionary(cols[n].type):
                    cols[n] = cols[n].cast(pa.string())
            if pa.types.is_timestamp(cols["timestamp"].type):
                cols["timestamp"] = cols["timestamp"].cast(pa.int64())
            lists = {n: c.to_pylist() for n, c in cols.items()}
            for i in range(tbl.num_rows):
                run_id, key = lists["run_id"][i], lists["key"][i]
                if lists["runtime_s"][i] is not None:
                    diffs.add("runtime_s not null", f"run {run_id!r} key {key!r} step {lists['step'][i]}")
                if last is not None and (run_id, key) < last:
                    diffs.add("history order", f"({run_id!r}, {key!r}) after {last!r} in {part.name}")
                last = (run_id, key)
                groups.setdefault((run_id, key), []).append(
                    (lists["step"][i], lists["timestamp"][i], lists["value"][i], lists["value_json"][i]))
    return runs, groups


def compare_rows(run_id: str, key: str, want: list[tuple], got: list[tuple], diffs: Differences) -> None:
    where = f"run {run_id!r} key {key!r}"
    if len(want) != len(got):
        diffs.add("row count", f"{where}: {len(got)} rows, expected {len(want)}")
    for i, (w, g) in enumerate(zip(want, got)):
        step, ts, value, value_json = w
        gstep, gts, gvalue, gjson = g
        at = f"{where} row {i} (step {step})"
        if gstep != step:
            diffs.add("step", f"{at}: {gstep}")
            continue
        if gts != ts:
            diffs.add("timestamp", f"{at}: {gts} us, expected {ts} us")
        if value is not None:
            if gjson is not None:
                diffs.add("value_json set", f"{at}: {gjson!r}, expected value {value!r}")
            if gvalue is None or not same_float(gvalue, value):
                diffs.add("value", f"{at}: {gvalue!r}, expected {value!r}")
        else:
            if gvalue is not None:
                diffs.add("value set", f"{at}: {gvalue!r}, expected value_json {value_json}")
            try:
                parsed = json.loads(gjson) if gjson is not None else None
            except json.JSONDecodeError:
                diffs.add("value_json not JSON", f"{at}: {gjson!r}")
                continue
            if gjson is None or not same_json(parsed, json.loads(value_json)):
                diffs.add("value_json", f"{at}: {gjson}, expected {value_json}")


def compare(logdir: Path, export: Path) -> int:
    ref = reference(logdir)
    diffs = Differences()
    runs, groups = read_export(export, diffs)

    # runs.parquet: the set of runs, sorted, and each run's columns
    got_ids = [r.get("run_id") for r in runs]
    if got_ids != sorted(got_ids, key=lambda x: (x is None, x or "")):
        diffs.add("runs order", "runs.parquet is not sorted by run_id")
    for rid in sorted(set(ref) - set(got_ids)):
        diffs.add("run missing", rid)
    for rid in sorted(set(got_ids) - set(ref), key=str):
        diffs.add("run not in the reference", repr(rid))
    config_columns = sorted(c for c in (runs[0].keys() if runs else []) if c.startswith("config."))
    ref_columns = {f"config.{name}" for r in ref.values() for name in r.config}
    for c in sorted(ref_columns - set(config_columns)):
        diffs.add("config column missing", c)
    config_values = 0
    for row in runs:
        r = ref.get(row.get("run_id"))
        if r is None:
            continue
        at = f"run {r.run_id!r}"
        if row.get("source") != "tensorboard":
            diffs.add("source", f"{at}: {row.get('source')!r}")
        for col, want in [("created_at", r.created_us), ("updated_at", r.updated_us)]:
            if col in row and row[col] != want:
                diffs.add(col, f"{at}: {row[col]} us, expected {want} us")
        if "hparams_metrics" in row and row["hparams_metrics"] != r.hparams_metrics:  # [] when none, not null
            diffs.add("hparams_metrics", f"{at}: {row['hparams_metrics']!r}, expected {r.hparams_metrics!r}")
        for col in config_columns:
            want = r.config.get(col[len("config."):])
            config_values += want is not None
            if not same_cell(row[col], want):
                diffs.add("config", f"{at} {col}: {row[col]!r}, expected {want!r}")

    # history: the set of (run, key), then each one's rows in order
    want_keys = {(rid, key) for rid, r in ref.items() for key in r.rows}
    for rid, key in sorted(want_keys - set(groups)):
        diffs.add("key missing", f"run {rid!r} key {key!r} ({len(ref[rid].rows[key])} rows)")
    for rid, key in sorted(set(groups) - want_keys, key=str):
        diffs.add("key not in the reference", f"run {rid!r} key {key!r} ({len(groups[(rid, key)])} rows)")
    rows = 0
    for rid, key in sorted(want_keys & set(groups)):
        want = ref[rid].rows[key]
        rows += len(want)
        compare_rows(rid, key, want, groups[(rid, key)], diffs)

    for r in ref.values():
        for note in r.notes:
            print(f"note: run {r.run_id!r}: {note}", file=sys.stderr)
    if diffs.counts:
        print(f"runport's export differs from the reference ({sum(diffs.counts.values())} differences):")
        for line in diffs.items:
            print(f"  {line}")
        for what, n in diffs.counts.most_common():
            print(f"  {n:>8,}  {what}")
        return 1
    print(json.dumps({"runs": len(ref), "rows": rows, "keys": len(want_keys), "config_values": config_values,
                      "result": "equal"}))
    return 0


# --------------------------------------------------------------------------
# dump and table
# --------------------------------------------------------------------------


def _plain(x):
    """A float for JSON output: NaN and ±Infinity as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    return x


def dump(logdir: Path) -> int:
    for rid, r in reference(logdir).items():
        print(json.dumps({"run_id": rid, "created_at_us": r.created_us, "updated_at_us": r.updated_us,
                          "config": {k: _plain(v) for k, v in r.config.items()},
                          "hparams_metrics": r.hparams_metrics,
                          "keys": {k: len(v) for k, v in sorted(r.rows.items())}, "notes": r.notes},
                         ensure_ascii=False))
        for key in sorted(r.rows):
            for step, ts, value, value_json in r.rows[key]:
                print(json.dumps({"run_id": rid, "key": key, "step": step, "timestamp_us": ts,
                                  "value": _plain(value), "value_json": value_json}, ensure_ascii=False))
    return 0


def table(logdir: Path, limit: int | None) -> int:
    """The benchmark's reference: every run through EventAccumulator into
    one long pandas DataFrame with runport's history columns (run_id, step,
    timestamp, key, value, value_json)."""
    import pandas as pd

    t0 = time.perf_counter()
    rows = []
    folders = run_folders(logdir)[:limit]
    for rid, folder in folders:  # one run at a time: only the rows stay
        for key, key_rows in read_run(rid, folder, times=False).rows.items():
            rows.extend((rid, step, ts, key, value, value_json) for step, ts, value, value_json in key_rows)
    df = pd.DataFrame(rows, columns=["run_id", "step", "timestamp", "key", "value", "value_json"])
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="us", utc=True)
    print(json.dumps({"runs": len(folders), "rows": len(df), "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


def tbparse(logdir: Path) -> int:
    """The second reference of benches/tensorboard.py: tbparse (itself built
    on EventAccumulator) reading every run's scalars into a DataFrame."""
    from tbparse import SummaryReader

    t0 = time.perf_counter()
    df = SummaryReader(str(logdir), pivot=False, extra_columns={"dir_name", "wall_time"}).scalars
    print(json.dumps({"runs": int(df["dir_name"].nunique()) if len(df) else 0, "rows": len(df),
                      "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare runport's export with the reference")
    c.add_argument("logdir")
    c.add_argument("export")
    d = sub.add_parser("dump", help="print the reference as JSON lines")
    d.add_argument("logdir")
    t = sub.add_parser("table", help="read runs into a DataFrame (benchmark)")
    t.add_argument("logdir")
    t.add_argument("--runs", type=int, default=None, help="the first N runs (by run id)")
    b = sub.add_parser("tbparse", help="read every run's scalars with tbparse (benchmark)")
    b.add_argument("logdir")
    args = ap.parse_args(argv)
    if args.cmd == "compare":
        return compare(Path(args.logdir), Path(args.export))
    if args.cmd == "dump":
        return dump(Path(args.logdir))
    if args.cmd == "tbparse":
        return tbparse(Path(args.logdir))
    return table(Path(args.logdir), args.runs)


if __name__ == "__main__":
    sys.exit(main())
