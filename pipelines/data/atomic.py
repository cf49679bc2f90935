"""Atomic file writes: every stage's table lands whole or not at all, even when the process is killed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def _replaced(path: Path) -> Iterator[str]:
    """A temp file beside `path` to write; renamed over `path` when the block ends, removed if it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write Parquet via a temp file and rename, so a crash never leaves a half-written file behind."""
    with _replaced(path) as tmp:
        frame.to_parquet(tmp, index=False, engine="pyarrow", compression="snappy")


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """`data` to `path` via a temp file and rename, like `write_atomic`."""
    with _replaced(path) as tmp:
        Path(tmp).write_bytes(data)
