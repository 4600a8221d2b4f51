#!/usr/bin/env python3
"""Reads a Delta table with DuckDB's `delta_scan` and writes it to one Parquet file.

    target/duckdb-venv/bin/python tests/testbed/duckdb_delta.py TABLE_DIR OUT.parquet

Run it with the python of the DuckDB venv (requirements-duckdb.txt: duckdb
1.5.5 and duckdb-extension-delta 1.5.5), not with target/testbed-venv, whose
duckdb is 2.0.0. Works offline: the `delta` extension binary is taken from
the installed `duckdb_extension_delta` package (the first
`delta.duckdb_extension` under the package's folder whose path names this
duckdb's version, `extensions/v1.5.5/`), never from DuckDB's extension
repository. Auto-install and auto-load of known extensions are switched off,
and INSTALL copies the file into a temporary folder (DuckDB's extension and
home directory, removed at exit), so nothing is written to or read from
~/.duckdb and HOME need not be set. The extension binary is signed, so
allow_unsigned_extensions stays off.

The latest version of the table is read, as delta_scan does, and written with
`COPY (SELECT * FROM delta_scan(TABLE_DIR)) TO OUT (FORMAT parquet)`. On
success it prints one JSON line to stdout:

    {"rows": 3, "columns": ["id", "x", "name", "ts", "tags"]}

On any failure (extension file not found, extension that does not load, a
table delta_scan cannot read) it prints `duckdb_delta.py: error: ...` to
stderr, removes OUT if it was started, and exits 2 (1 for bad arguments).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

PROG = "duckdb_delta.py"
EXT_FILE = "delta.duckdb_extension"
EXT_PACKAGE = "duckdb_extension_delta"


class Failure(Exception):
    pass


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def find_extension(duckdb_version: str) -> Path:
    """The delta extension file in the installed package, for this duckdb version."""
    spec = importlib.util.find_spec(EXT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise Failure(
            f"package {EXT_PACKAGE!r} is not installed in {sys.prefix} "
            "(pip install -r tests/testbed/requirements-duckdb.txt)"
        )
    found: list[Path] = []
    for folder in spec.submodule_search_locations:
        found.extend(sorted(Path(folder).rglob(EXT_FILE)))
    if not found:
        raise Failure(f"no {EXT_FILE} under {list(spec.submodule_search_locations)}")
    tag = "v" + duckdb_version.lstrip("v")
    matching = [p for p in found if tag in p.parts]
    if not matching:
        raise Failure(
            f"no {EXT_FILE} for duckdb {duckdb_version} in {EXT_PACKAGE} "
            f"(found: {', '.join(map(str, found))}); the two versions must match"
        )
    return matching[0]


def run(table_dir: Path, out: Path) -> dict:
    # delta-kernel (Rust) attaches a ~25-frame backtrace to every error message
    # when RUST_BACKTRACE=1 (cargo test sets it); RUST_LIB_BACKTRACE=0 drops
    # those and keeps panic backtraces. Set it yourself to override.
    os.environ.setdefault("RUST_LIB_BACKTRACE", "0")
    try:
        import duckdb
    except ImportError as e:
        raise Failure(f"duckdb is not installed in {sys.prefix}: {e}") from e
    ext = find_extension(duckdb.__version__)
    if not (table_dir / "_delta_log").is_dir():
        raise Failure(f"{table_dir} is not a Delta table (no _delta_log folder)")

    with tempfile.TemporaryDirectory(prefix="duckdb-ext-") as ext_dir:
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET autoinstall_known_extensions=false")
            con.execute("SET autoload_known_extensions=false")
            # INSTALL copies into the extension directory (default ~/.duckdb);
            # keep it private and temporary. INSTALL also fails when DuckDB
            # finds no home directory (HOME unset), even with extension_directory
            # set, so the temporary folder is the home directory too.
            con.execute(f"SET home_directory={sql_string(ext_dir)}")
            con.execute(f"SET extension_directory={sql_string(ext_dir)}")
            try:
                con.execute(f"INSTALL {sql_string(str(ext))}")
                con.execute("LOAD delta")
            except duckdb.Error as e:
                raise Failure(
                    f"cannot load the delta extension {ext} into duckdb {duckdb.__version__}: {e}"
                ) from e
            loaded = con.execute(
                "SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'delta'"
            ).fetchone()
            if not loaded or not loaded[0]:
                raise Failure(f"the delta extension {ext} is not loaded after LOAD delta")

            try:
                (rows,) = con.execute(
                    f"COPY (SELECT * FROM delta_scan({sql_string(str(table_dir))})) "
                    f"TO {sql_string(str(out))} (FORMAT parquet)"
                ).fetchone()
                columns = [
                    r[0]
                    for r in con.execute(
                        f"DESCRIBE SELECT * FROM read_parquet({sql_string(str(out))})"
                    ).fetchall()
                ]
            except duckdb.Error as e:
                out.unlink(missing_ok=True)
                raise Failure(f"delta_scan of {table_dir} failed: {e}") from e
        finally:
            con.close()
    return {"rows": int(rows), "columns": columns}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0].startswith("-"):
        print(f"usage: python {PROG} TABLE_DIR OUT.parquet", file=sys.stderr)
        return 1
    table_dir = Path(argv[0]).resolve()
    out = Path(argv[1]).resolve()
    try:
        result = run(table_dir, out)
    except Failure as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
