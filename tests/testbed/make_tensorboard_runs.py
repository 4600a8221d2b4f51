#!/usr/bin/env python3
"""Writes real TensorBoard event files with real writers (tensorboardX, and
the tensorboard package's own event file writer).

    python make_tensorboard_runs.py --out DIR --set standard
    python make_tensorboard_runs.py --out DIR --set bench [--runs 200 --steps 10000 --tags 10]

A run is a folder directly holding `events.out.tfevents.*` files; its id is
the folder's path relative to DIR with `/` separators (DIR itself would be
`.`). For `standard`, DIR/scenarios.json lists every run with the tags, row
counts and values a reader must find (known by construction). Contents are
deterministic (fixed seeds); wall times, and the writers' file names (which
hold the time and the host name), are not.

`bench` writes one run with tensorboardX (`--tags` random float tags `k0`,
`k1`, ... logged with one `add_scalar` each per step) and copies its folder
to `run-00000` ... `run-NNNNN`; runs already there are kept, so the set can
be grown or reused. DIR/bench.json records the parameters: a set written
with other `--steps` or `--tags` is refused.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import random
import shutil
import struct
import sys
import time
import wave
from pathlib import Path

import numpy as np

# tensorboardX: the writer most PyTorch-era code uses (torch.utils.tensorboard
# is a copy of it). It writes scalars as `simple_value`.
from tensorboardX import SummaryWriter
from tensorboardX.proto.event_pb2 import Event as XEvent
from tensorboardX.proto.event_pb2 import SessionLog as XSessionLog
from tensorboardX.proto.summary_pb2 import Summary as XSummary

# tensorboard's own writer and summary helpers: what TensorFlow 2's
# tf.summary writes (scalars as 0-d tensors with "scalars" plugin metadata).
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

EVENTS_GLOB = "events.out.tfevents.*"

# tensorboardX warns "NaN or Inf found in input tensor." for every such
# value; here they are on purpose.
logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


def _f32(x: float) -> float:
    """x as the float32 a writer stores (simple_value and DT_FLOAT are float32),
    widened back to a Python float: the value a reader must produce."""
    return float(np.float32(x))


def _json_float(x: float):
    """Floats for scenarios.json: NaN and ±Infinity as strings (valid JSON)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _files(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(EVENTS_GLOB))


def _tag(kind: str, steps: list[int], **extra) -> dict:
    """A tag's entry in scenarios.json: its kind in EventAccumulator (scalars,
    tensors, images, audio, histograms), row count, first and last step, the
    steps themselves when there are few, and what else is known."""
    entry = {"kind": kind, "rows": len(steps), "first_step": steps[0], "last_step": steps[-1]}
    if len(steps) <= 20:
        entry["steps"] = steps
    return {**entry, **extra}


# --------------------------------------------------------------------------
# The standard set: one function per run; each returns its scenario entry.
# --------------------------------------------------------------------------


def w_scalars(out: Path) -> dict:
    """tensorboardX add_scalar: 500 steps of two tags, one tag with a dot
    every 50 steps, NaN and ±Infinity at known steps."""
    run = out / "scalars"
    rnd = random.Random(1)
    nonfinite = {100: math.nan, 200: math.inf, 300: -math.inf}  # train/loss at these steps
    loss_special, acc_last = {}, None
    with SummaryWriter(str(run)) as w:
        for step in range(500):
            loss = nonfinite.get(step, 2.0 * math.exp(-step / 150) + rnd.random() * 0.05)
            acc = min(1.0, step / 500 + rnd.random() * 0.02)
            w.add_scalar("train/loss", loss, step)
            w.add_scalar("train/acc", acc, step)
            if step % 50 == 0:
                w.add_scalar("lr.value", 0.1 * 0.5 ** (step // 50), step)
            if step in nonfinite or step == 0:
                loss_special[str(step)] = _json_float(_f32(loss))
            acc_last = _f32(acc)
    return {
        "run_id": "scalars", "writer": "tensorboardX", "files": len(_files(run)),
        "purpose": "add_scalar (simple_value): 500 steps; a tag with a dot logged every 50 steps; "
                   "NaN, +Infinity, -Infinity",
        "tags": {
            "train/loss": _tag("scalars", list(range(500)), values=loss_special),
            "train/acc": _tag("scalars", list(range(500)), values={"499": acc_last}),
            "lr.value": _tag("scalars", list(range(0, 500, 50)),
                             values={str(s): _f32(0.1 * 0.5 ** (s // 50)) for s in range(0, 500, 50)}),
        },
    }


def w_nested(out: Path) -> list[dict]:
    """Two small runs in nested folders (the folders between them hold no events)."""
    entries = []
    for i, rel in enumerate(["nested/a/run1", "nested/b/deeper/run2"]):
        steps = 20 + 10 * i
        with SummaryWriter(str(out / rel)) as w:
            for step in range(steps):
                w.add_scalar("loss", 1.0 / (step + 1 + i), step)
        entries.append({
            "run_id": rel, "writer": "tensorboardX", "files": len(_files(out / rel)),
            "purpose": "a run in a nested folder; its parent folders are not runs",
            "tags": {"loss": _tag("scalars", list(range(steps)), values={"0": _f32(1.0 / (1 + i))})},
        })
    return entries


def _wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV, as tensorboardX's add_audio encodes it (it uses
    the soundfile package for that, which the test bed does not install)."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    with io.BytesIO() as f:
        with wave.open(f, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            wav.writeframes(pcm)
        return f.getvalue()


def w_media(out: Path) -> dict:
    """Image, histogram, audio, text and a scalar at a few steps."""
    run = out / "media"
    rng = np.random.default_rng(2)
    steps = [0, 5, 10]
    sizes = {"audio": []}
    with SummaryWriter(str(run)) as w:
        for step in steps:
            img = (rng.random((4, 6, 3)) * 255).astype(np.uint8)  # height 4, width 6, RGB
            w.add_image("img", img, step, dataformats="HWC")
            w.add_histogram("hist", rng.normal(loc=step, size=100), step)
            # add_audio's own encoder needs soundfile: the same Summary.Audio
            # (PCM 16 WAV, "audio/wav") built here, written by the same file writer
            samples = np.sin(np.linspace(0, 20 + step, 800)).astype(np.float32)
            wav = _wav(samples, 8000)
            audio = XSummary.Audio(sample_rate=8000, num_channels=1, length_frames=len(samples),
                                   encoded_audio_string=wav, content_type="audio/wav")
            w.file_writer.add_summary(XSummary(value=[XSummary.Value(tag="audio", audio=audio)]), step)
            sizes["audio"].append(len(wav))
            w.add_text("note", f"hello **step** {step}", step)  # tag becomes note/text_summary
            w.add_scalar("media/scalar", step * 0.5, step)
    return {
        "run_id": "media", "writer": "tensorboardX", "files": len(_files(run)),
        "purpose": "add_image (4x6 RGB uint8, PNG), add_histogram (100 samples), audio (800 frames, "
                   "8 kHz WAV), add_text (a string tensor of shape [1], plugin text), add_scalar",
        "tags": {
            "img": _tag("images", steps, width=6, height=4),
            "hist": _tag("histograms", steps, count=100),
            "audio": _tag("audio", steps, sizes=sizes["audio"]),
            "note/text_summary": _tag("tensors", steps, plugin="text", shape=[1]),
            "media/scalar": _tag("scalars", steps, values={str(s): s * 0.5 for s in steps}),
        },
    }


def w_hparams(out: Path) -> list[dict]:
    """tensorboardX add_hparams: it opens a writer of its own in a subfolder
    named after `name` (tensorboardX's argument; torch's is `run_name`)."""
    parent = out / "hparams"
    with SummaryWriter(str(parent)) as w:
        w.add_hparams({"lr": 0.1, "opt": "adam", "bn": True, "layers": 3}, {"hparam/acc": 0.9}, name="trial")
    trial = parent / "trial"
    if not _files(trial):
        raise RuntimeError("add_hparams did not write hparams/trial")
    return [
        {"run_id": "hparams", "writer": "tensorboardX", "files": len(_files(parent)),
         "purpose": "the writer add_hparams was called on: only its file_version event, no tags",
         "tags": {}},
        {"run_id": "hparams/trial", "writer": "tensorboardX add_hparams", "files": len(_files(trial)),
         "purpose": "hparams plugin summaries (experiment, session start and end info; no rows) "
                    "and the metric as a scalar at step 0",
         "tags": {"hparam/acc": _tag("scalars", [0], values={"0": _f32(0.9)})},
         "no_row_tags": ["_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"],
         "config": {"config.lr": 0.1, "config.opt": "adam", "config.bn": True, "config.layers": 3.0},
         "hparams_metrics": ["hparam/acc"]},
    ]


def w_multi(out: Path) -> list[dict]:
    """tensorboardX add_scalars: one writer per series, in folders of their
    own. Each series' first event is its summary, stamped with the time of
    the add_scalars call, which is taken before the series' writer is
    made: the writer's file_version event, first in the file, is later."""
    parent = out / "multi"
    with SummaryWriter(str(parent)) as w:
        for step in range(10):
            w.add_scalars("pair", {"a": step * 0.5, "b": -step * 0.5}, step)
    entries = [{"run_id": "multi", "writer": "tensorboardX", "files": len(_files(parent)),
                "purpose": "the writer add_scalars was called on: only its file_version event, no tags",
                "tags": {}}]
    for series, sign in (("a", 1), ("b", -1)):
        rel = f"multi/pair/{series}"
        if not _files(out / rel):
            raise RuntimeError(f"add_scalars did not write {rel}")
        entries.append({
            "run_id": rel, "writer": "tensorboardX add_scalars", "files": len(_files(out / rel)),
            "purpose": "one series of add_scalars: its first summary is older than the file_version "
                       "event before it (created_at is the first event's time, not the least)",
            "tags": {"pair": _tag("scalars", list(range(10)), values={"1": _f32(sign * 0.5)})},
        })
    return entries


def w_restart(out: Path) -> dict:
    """Two writers in one folder: the second one announces a restart at
    step 50 (SessionLog START), so TensorBoard drops the first file's steps
    50..99. The values of the two writers differ, so the survivors show it."""
    run = out / "restart"
    with SummaryWriter(str(run), filename_suffix=".1") as w:
        for step in range(100):
            w.add_scalar("loss", 1.0 + step / 1000, step)
    first = _files(run)
    time.sleep(1.1)  # the second file's name (its time in seconds) sorts after the first
    with SummaryWriter(str(run), filename_suffix=".2") as w:
        start = XEvent(session_log=XSessionLog(status=XSessionLog.START))
        w.file_writer.add_event(start, step=50)
        for step in range(50, 150):
            w.add_scalar("loss", 2.0 + step / 1000, step)
    files = _files(run)
    if len(files) != 2 or files[0] != first[0]:
        raise RuntimeError(f"restart: expected the second writer's file to sort last, got {files}")
    return {
        "run_id": "restart", "writer": "tensorboardX (two writers)", "files": 2,
        "purpose": "a restarted job: the second file starts with SessionLog START at step 50, which "
                   "discards every earlier value at step >= 50",
        "file_order": files,
        "restart": {"start_step": 50, "dropped_steps_of_first_file": [50, 99]},
        "tags": {"loss": _tag("scalars", list(range(150)),
                              values={"0": _f32(1.0), "49": _f32(1.049), "50": _f32(2.05),
                                      "99": _f32(2.099), "149": _f32(2.149)})},
    }


def _tensor_scalar_proto(value, dtype: str) -> tensor_pb2.TensorProto:
    """A 0-d TensorProto of `dtype` ("bfloat16": built by hand, since
    make_tensor_proto has no bfloat16 without TensorFlow or ml_dtypes; the
    16-bit pattern goes into half_val, the upper half of the float32)."""
    if dtype == "bfloat16":
        bits = struct.unpack("<I", struct.pack("<f", value))[0] >> 16  # truncated to 8 mantissa bits
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_BFLOAT16,
                                      tensor_shape=tensor_shape_pb2.TensorShapeProto(), half_val=[bits])
    return tensor_util.make_tensor_proto(np.array(value, dtype=dtype))


def _bfloat16_value(value: float) -> float:
    bits = struct.unpack("<I", struct.pack("<f", value))[0] >> 16
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def w_tbwriter(out: Path) -> dict:
    """tensorboard's own EventFileWriter: scalar_pb scalars (DT_FLOAT tensors,
    metadata on every value), and 0-d tensors of other dtypes with "scalars"
    metadata on the first value only (as TensorFlow's writer leaves them),
    a 0-d bool, and a vector without any metadata."""
    run = out / "tbwriter"
    w = EventFileWriter(str(run))
    scalars_md = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)
    # value at step i of each tag; the Python value the reader must produce
    series = {
        "dtype/float64": ("float64", lambda i: 1.0 / 3.0 + i, lambda v: v),
        "dtype/int32": ("int32", lambda i: -(2**31) if i == 9 else -7 * i, float),
        "dtype/int64": ("int64", lambda i: 2**53 + 1 if i == 9 else 2**40 + i, float),  # 2**53+1 rounds to 2**53
        "dtype/float16": ("float16", lambda i: math.nan if i == 5 else 0.333 * (i + 1),
                          lambda v: float(np.float16(v))),
        "dtype/bfloat16": ("bfloat16", lambda i: 3.14159 * (i - 4), _bfloat16_value),
        "dtype/bool": ("bool", lambda i: i % 3 == 0, None),
    }
    steps = range(10)
    expect: dict = {}
    for step in steps:
        values = []
        v = 2.0 * math.exp(-step / 5) if step != 3 else math.nan
        values.append(scalar_summary.scalar_pb("tb/scalar", v).value[0])  # metadata on every value
        expect.setdefault("tb/scalar", {})[str(step)] = _json_float(_f32(v))
        for tag, (dtype, make, widen) in series.items():
            x = make(step)
            value = summary_pb2.Summary.Value(tag=tag, tensor=_tensor_scalar_proto(x, dtype))
            if step == 0:
                value.metadata.CopyFrom(scalars_md)
            values.append(value)
            expect.setdefault(tag, {})[str(step)] = (("true" if x else "false") if widen is None
                                                     else _json_float(widen(x)))
        vec = tensor_util.make_tensor_proto(np.array([step, step + 0.5, -step], dtype=np.float32))
        values.append(summary_pb2.Summary.Value(tag="tensor/vector", tensor=vec))  # no plugin at all
        w.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                    summary=summary_pb2.Summary(value=values)))
    w.close()
    tags = {"tb/scalar": _tag("tensors", list(steps), plugin="scalars", values=expect["tb/scalar"])}
    for tag in series:
        known = {"value_json": expect[tag]} if tag == "dtype/bool" else {"values": expect[tag]}
        tags[tag] = _tag("tensors", list(steps), plugin="scalars", **known)
    tags["tensor/vector"] = _tag("tensors", list(steps), plugin="", shape=[3])
    return {
        "run_id": "tbwriter", "writer": "tensorboard.summary.writer.event_file_writer.EventFileWriter",
        "files": len(_files(run)),
        "purpose": "tensor-valued scalars: scalar_pb (DT_FLOAT), and DT_DOUBLE, DT_INT32, DT_INT64, DT_HALF, "
                   "DT_BFLOAT16 (half_val by hand), DT_BOOL with 'scalars' metadata on the first value only; "
                   "a float32 vector of shape [3] without metadata (a descriptor, plugin '')",
        "tags": tags,
    }


def gen_standard(out: Path) -> tuple[dict, dict]:
    runs, timings = {}, {}
    for name, fn in [("scalars", w_scalars), ("nested", w_nested), ("media", w_media),
                     ("hparams", w_hparams), ("multi", w_multi), ("restart", w_restart),
                     ("tbwriter", w_tbwriter)]:
        t = time.perf_counter()
        result = fn(out)
        timings[name] = round(time.perf_counter() - t, 2)
        for entry in result if isinstance(result, list) else [result]:
            runs[entry["run_id"]] = entry
    for entry in runs.values():  # defaults: no hparams
        entry.setdefault("config", {})
        entry.setdefault("hparams_metrics", [])
    return runs, timings


# --------------------------------------------------------------------------
# The bench set: one run written, then copied.
# --------------------------------------------------------------------------


def write_bench_run(folder: Path, steps: int, tags: int, seed: int = 0) -> None:
    rnd = random.Random(seed)
    names = [f"k{k}" for k in range(tags)]
    with SummaryWriter(str(folder), max_queue=1000) as w:
        for step in range(steps):
            for name in names:
                w.add_scalar(name, rnd.random(), step)  # one event per value


def gen_bench(out: Path, runs: int, steps: int, tags: int) -> None:
    params = {"steps": steps, "tags": tags, "writer": "tensorboardX add_scalar, one event per value"}
    meta = out / "bench.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        if (old["steps"], old["tags"]) != (steps, tags):
            raise SystemExit(f"{out} holds a bench set of {old['steps']} steps x {old['tags']} tags: "
                             f"use another --out")
    else:
        meta.write_text(json.dumps(params) + "\n")
    for tmp in out.glob("run-*.tmp"):  # left by an interrupted copy
        shutil.rmtree(tmp)
    existed = sum(1 for i in range(runs) if (out / f"run-{i:05d}").exists())
    template = out / "run-00000"
    if not template.exists():
        t = time.perf_counter()
        tmp = out / "run-00000.tmp"
        write_bench_run(tmp, steps, tags)
        tmp.rename(template)
        print(f"bench: wrote run-00000 ({steps} steps x {tags} tags) in {time.perf_counter() - t:.1f} s")
    for i in range(1, runs):
        dest = out / f"run-{i:05d}"
        if dest.exists():
            continue
        tmp = out / f"run-{i:05d}.tmp"
        shutil.copytree(template, tmp)  # whole copies: every run its own files, as on a real disk
        tmp.rename(dest)
    print(f"bench: {existed} of {runs} runs existed, {runs - existed} written")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write real TensorBoard event files for runport's tests.")
    ap.add_argument("--out", required=True, help="the log dir to write")
    ap.add_argument("--set", choices=["standard", "bench"], default="standard")
    ap.add_argument("--runs", type=int, default=200, help="bench: number of runs (200)")
    ap.add_argument("--steps", type=int, default=10_000, help="bench: steps per run (10000)")
    ap.add_argument("--tags", type=int, default=10, help="bench: float tags per step (10)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.set == "bench":
        gen_bench(out, args.runs, args.steps, args.tags)
        print(f"bench: done in {time.perf_counter() - t0:.1f} s")
        return 0
    if any(out.iterdir()):
        ap.error(f"{out} is not empty: use an empty folder")
    runs, timings = gen_standard(out)
    doc = {"set": "standard", "generator": {"tensorboardX": _version("tensorboardX"),
                                            "tensorboard": _version("tensorboard"), "seconds": timings},
           "runs": runs}
    (out / "scenarios.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"standard: {len(runs)} runs in {time.perf_counter() - t0:.1f} s")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
