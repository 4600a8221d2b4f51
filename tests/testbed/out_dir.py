"""The command line of the test bed's writers that take only `--out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path


def out_dir(doc: str, argv=None) -> Path:
    """Parses `--out DIR` (the script's docstring's first paragraph as its
    description) and returns DIR, created if missing."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    out = Path(ap.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    return out
