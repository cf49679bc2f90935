"""Atomic file writes: every stage's table lands whole or not at all, even when the process is killed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write Parquet via a temp file and rename, so a crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False, engine="pyarrow", compression="snappy")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """`data` to `path` via a temp file and rename, like `write_atomic`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
