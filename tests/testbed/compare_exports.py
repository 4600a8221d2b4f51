#!/usr/bin/env python3
"""Compares two runport exports table by table, value by value.

    python compare_exports.py A B [--ignore-columns c1,c2] [--allow-missing-null-values]
                                  [--api-identity ENTITY] [--no-history]

Used to check that the W&B API source (B) exports what the local-files source
(A) exports for the same runs, and that two exports of one source agree.
Both are read with polars. Columns must match in name and order, and types
must match. Cells are compared exactly: floats bit for bit (-0.0 is not 0.0,
NaN payloads count), ints are never turned into floats. JSON-text cells
(`runport.kind = json`, and `value_json`) compare after json.loads, with the
same rules for the numbers inside (1 is not 1.0) and key order ignored.
`--ignore-columns` lists run columns the two sources cannot agree on
(documented in the README). `--api-identity ENTITY` compares `entity` and
`name` as the API gives them: B's entity is A's, or ENTITY where A has none
(offline runs); B's name is A's, or the run id where A has none (the server
names unnamed runs by id). `--allow-missing-null-values` accepts history
rows that hold an explicit JSON null in A and are absent in B (Parquet cannot
tell a logged None from a missing key). `--list-numbers-as-floats` lets an
int and a float of the same value inside a list be equal (the API's Parquet
files hold lists that mix ints and floats as floats). History is expected on both sides
(files with rows) unless `--no-history`. Prints differences and exits 1 on
any.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq


def json_kinds(path: Path) -> set:
    schema = pq.read_schema(path)
    out = set()
    for f in schema:
        meta = f.metadata or {}
        if meta.get(b"runport.kind") == b"json":
            out.add(f.name)
    return out


def float_bits(f: float) -> bytes:
    return struct.pack("<d", f)


LIST_NUMBERS_AS_FLOATS = False


def same(a, b, in_list: bool = False) -> bool:
    """Exact equality: types as well as values, floats bit for bit. With
    LIST_NUMBERS_AS_FLOATS, an int and a float inside a list are equal when
    the int as a float has the float's bits (the API's Parquet gives lists
    mixing ints and floats as floats)."""
    if in_list and LIST_NUMBERS_AS_FLOATS and {type(a), type(b)} == {int, float}:
        return float_bits(float(a)) == float_bits(float(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return float_bits(a) == float_bits(b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, True) for x, y in zip(a, b))
    return a == b


def cell_eq(a, b, is_json: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if is_json:
        try:
            return same(json.loads(a), json.loads(b))
        except (TypeError, ValueError):
            return a == b
    return same(a, b)


def compare(label, a: pl.DataFrame, b: pl.DataFrame, json_cols: set, ignore: set, diffs: list):
    ca = [c for c in a.columns if c not in ignore]
    cb = [c for c in b.columns if c not in ignore]
    if ca != cb:
        diffs.append(f"{label}: columns differ:\n  only in A: {sorted(set(ca) - set(cb))}\n  only in B: {sorted(set(cb) - set(ca))}")
        return
    for c in ca:
        if a[c].dtype != b[c].dtype:
            diffs.append(f"{label}: column {c!r} is {a[c].dtype} in A, {b[c].dtype} in B")
    if a.height != b.height:
        diffs.append(f"{label}: {a.height} rows in A, {b.height} in B")
        return
    for c in ca:
        xa, xb = a[c].to_list(), b[c].to_list()
        for i, (x, y) in enumerate(zip(xa, xb)):
            if not cell_eq(x, y, c in json_cols):
                diffs.append(f"{label}: row {i} column {c!r}: A={x!r:.120} B={y!r:.120}")
                if len(diffs) > 40:
                    return


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--ignore-columns", default="")
    ap.add_argument("--allow-missing-null-values", action="store_true")
    ap.add_argument("--api-identity", metavar="ENTITY")
    ap.add_argument("--no-history", action="store_true", help="history is not expected on either side")
    ap.add_argument("--list-numbers-as-floats", action="store_true",
                    help="an int and a float in a list compare by value (the API's documented difference)")
    args = ap.parse_args(argv)
    global LIST_NUMBERS_AS_FLOATS
    LIST_NUMBERS_AS_FLOATS = args.list_numbers_as_floats
    a, b = Path(args.a), Path(args.b)
    ignore = {c for c in args.ignore_columns.split(",") if c}
    diffs: list = []

    ra = pl.read_parquet(a / "runs.parquet")
    rb = pl.read_parquet(b / "runs.parquet")
    if args.api_identity is not None:
        if ra["run_id"].to_list() != rb["run_id"].to_list():
            diffs.append("runs: run ids differ")
        else:
            for col, fallback in (("entity", [args.api_identity] * ra.height), ("name", ra["run_id"].to_list())):
                if col not in ra.columns or col not in rb.columns:
                    if (col in ra.columns) != (col in rb.columns):
                        diffs.append(f"runs: column {col!r} only on one side")
                    continue
                want = [x if x is not None else f for x, f in zip(ra[col].to_list(), fallback)]
                for i, (w, got) in enumerate(zip(want, rb[col].to_list())):
                    if w != got:
                        diffs.append(f"runs: row {i} column {col!r}: expected {w!r} from the API, B={got!r}")
            ignore = ignore | {"entity", "name"}
    compare("runs", ra, rb, json_kinds(a / "runs.parquet") | json_kinds(b / "runs.parquet"), ignore, diffs)

    ha_files = sorted((a / "history").glob("*.parquet"))
    hb_files = sorted((b / "history").glob("*.parquet"))
    if args.no_history:
        if ha_files or hb_files:
            diffs.append(f"history: not expected, A has {len(ha_files)} files, B has {len(hb_files)}")
    elif not ha_files or not hb_files:
        diffs.append(f"history: expected on both sides, A has {len(ha_files)} files, B has {len(hb_files)}")
    else:
        ha = pl.concat([pl.read_parquet(f) for f in ha_files])
        hb = pl.concat([pl.read_parquet(f) for f in hb_files])
        dropped = 0
        if args.allow_missing_null_values and "value_json" in ha.columns:
            keys = ["run_id", "key", "step"]
            nulls = ha.filter(pl.col("value_json") == "null")
            missing = nulls.join(hb.select(keys), on=keys, how="anti")
            dropped = missing.height
            ha = ha.join(missing.select(keys).with_columns(pl.lit(True).alias("_drop")), on=keys, how="left")
            ha = ha.filter(pl.col("_drop").is_null()).drop("_drop")
        if ha.height == 0:
            diffs.append("history: expected rows, both sides have none")
        jc = {"value_json"} | json_kinds(ha_files[0]) | json_kinds(hb_files[0])
        compare("history", ha, hb, jc, set(), diffs)
        if dropped:
            print(f"(accepted {dropped} explicit null values absent from B)")

    if diffs:
        print(f"{len(diffs)} differences between {a} and {b}:")
        for d in diffs[:40]:
            print("  " + d)
        return 1
    print(f"runs: {ra.height}, columns: {len(ra.columns)} — equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
