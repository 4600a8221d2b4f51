#!/usr/bin/env python3
"""Compares two runport exports table by table, value by value.

    python compare_exports.py A B [--ignore-columns c1,c2] [--allow-missing-null-values]

Used to check that the W&B API source (B) exports what the local-files source
(A) exports for the same runs. Both are read with polars. Columns must match
in name and order, and types must match. Cells are compared exactly, except:
floats compare NaN == NaN; JSON-text cells (`runport.kind = json`, and
`value_json`) compare after json.loads (so 0 == 0.0 and key order does not
matter). `--ignore-columns` lists run columns the two sources cannot agree on
(documented in the README). `--allow-missing-null-values` accepts history
rows that hold an explicit JSON null in A and are absent in B (Parquet cannot
tell a logged None from a missing key). Prints differences and exits 1 on
any.
"""

from __future__ import annotations

import argparse
import json
import math
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


def norm(v):
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return v


def cell_eq(a, b, is_json: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if is_json:
        try:
            return norm(json.loads(a)) == norm(json.loads(b))
        except (TypeError, ValueError):
            return a == b
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


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
    args = ap.parse_args(argv)
    a, b = Path(args.a), Path(args.b)
    ignore = {c for c in args.ignore_columns.split(",") if c}
    diffs: list = []

    ra = pl.read_parquet(a / "runs.parquet")
    rb = pl.read_parquet(b / "runs.parquet")
    compare("runs", ra, rb, json_kinds(a / "runs.parquet") | json_kinds(b / "runs.parquet"), ignore, diffs)

    ha_files = sorted((a / "history").glob("*.parquet"))
    hb_files = sorted((b / "history").glob("*.parquet"))
    if bool(ha_files) != bool(hb_files):
        diffs.append(f"history: A has {len(ha_files)} files, B has {len(hb_files)}")
    elif ha_files:
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
