"""New data in (`seqops data add TASK FILE`): validate, merge with the task's raw data, version, commit.

append   time series: a file's rows must come after the last timestamp of their series already in
         raw data (a new series id is welcome) and keep the series on its regular time grid.
         text: the file's rows are added to raw data and the task's duplicate policy is applied
         to the whole, so a repeat of an existing text is dropped like any other repeat.
replace  the file becomes the task's raw data.

A file that breaks any rule changes nothing: no write, no DVC version, no commit. A file that passes
is written atomically, versioned (`dvc add data`, `dvc push`) and, in a git checkout, data.dvc is
committed with a message naming the version; the next retrain sees a new data.md5 and trains on it.
"""

from __future__ import annotations

import io
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import pandas as pd

from pipelines.config import Params, TextTask, TimeSeriesTask
from pipelines.data import versioning
from pipelines.data.ingest import validate_for_task, write_atomic
from pipelines.data.sources import read_source, read_table
from pipelines.data.validate import InvalidDataError, regular_grid, validate_text
from pipelines.project import raw_path

Mode = Literal["append", "replace"]
MODES: tuple[str, ...] = ("append", "replace")


@dataclass(frozen=True)
class Added:
    task: str
    mode: str
    rows_before: int
    rows_in_file: int
    rows_after: int
    version: versioning.DataVersion
    changed: bool
    commit: str | None
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return (f"{self.task}: {self.mode} {self.rows_in_file} rows -> raw data has {self.rows_after} rows "
                f"(was {self.rows_before}); data version {self.version.md5}")


def commit_message(task: str, mode: str, file: Path, rows_in_file: int, md5: str) -> str:
    return f"data({task}): {mode} {file.name} ({rows_in_file} rows) -> data version {md5}"


def _current(root: Path, task: str, spec: TimeSeriesTask | TextTask) -> pd.DataFrame:
    """The task's raw data: data/<task>/raw.parquet, or (never ingested yet) its configured source,
    validated, exactly what the next retrain would ingest."""
    path = raw_path(root, task)
    if path.is_file():
        return pd.read_parquet(path)
    clean, _ = validate_for_task(read_source(spec.source, root), spec, spec.source)
    return clean


def append_series(existing: pd.DataFrame, new: pd.DataFrame, spec: TimeSeriesTask, name: str) -> pd.DataFrame:
    """Existing rows, then the file's: every series only grows forward in time on its own grid."""
    if list(existing.columns) != list(new.columns):
        raise InvalidDataError(f"{name}: columns {list(new.columns)} do not match the raw data's "
                              f"{list(existing.columns)}")
    last = existing.groupby("series_id")["timestamp"].max()
    for position, (sid, stamp) in enumerate(zip(new["series_id"], new["timestamp"])):
        if sid in last.index and stamp <= last[sid]:
            where = f" of series {sid!r}" if spec.series_id else ""
            raise InvalidDataError(
                f"{name}: column {spec.timestamp!r} row {position + 1}: {stamp} is not after the last timestamp "
                f"{last[sid]}{where} already in the raw data; append only adds later rows "
                f"(use --mode replace to rewrite history)")
    merged = pd.concat([existing, new], ignore_index=True)
    order = {sid: i for i, sid in enumerate(pd.unique(merged["series_id"]))}
    merged = merged.sort_values("series_id", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    for _, group in merged.groupby("series_id", sort=False):
        try:
            regular_grid(group.reset_index(drop=True))
        except InvalidDataError as e:
            raise InvalidDataError(f"{name}: after appending, {e}") from None
    return merged


def append_text(existing: pd.DataFrame, new: pd.DataFrame, spec: TextTask,
                name: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Existing rows, then the file's, with the task's duplicate policy applied to the whole."""
    return validate_text(pd.concat([existing, new], ignore_index=True), text="text", label="label",
                         labels=list(spec.labels), duplicates=spec.duplicates, name=f"{name} (appended)")


def add_data(root: Path, task: str, file: Path, params: Params, mode: Mode = "append") -> Added:
    """Validate `file` for `task`, merge it (append) or take it as is (replace), write, version, commit.

    Raises InvalidDataError / SourceError before anything is written; VersioningError when DVC or git
    fails after the write (the message says what state the workspace is in).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    spec = params.task(task)
    name = str(file)
    clean, dropped = validate_for_task(read_table(file), spec, name)
    path = raw_path(root, task)
    previous = path.read_bytes() if path.is_file() else None
    if mode == "replace":
        merged, rows_before = clean, _rows(previous)
    else:
        existing = _current(root, task, spec)
        rows_before = len(existing)
        if isinstance(spec, TextTask):
            merged, dropped = append_text(existing, clean, spec, name)
        else:
            merged = append_series(existing, clean, spec, name)

    before = versioning.data_version(root).md5 if (root / versioning.DATA_DVC).is_file() else None
    write_atomic(merged, path)
    try:
        with _quiet("dvc.repo.scm_context"):  # its "git add data.dvc" hint: this commits data.dvc itself
            version = versioning.track(root)
    except Exception:
        _restore(path, previous)
        raise
    try:
        versioning.use_remote_from_env(root)
        versioning.push(root)
    except versioning.VersioningError as e:
        raise versioning.VersioningError(
            f"{path.relative_to(root)} now holds the new data (version {version.md5}) but it is not pushed, "
            f"and data.dvc is not committed: {e}. Fix the remote, then `dvc push` and commit data.dvc "
            f"(the next retrain pushes it too)") from None
    commit = versioning.commit_data_version(root, commit_message(task, mode, file, len(clean), version.md5))
    return Added(task=task, mode=mode, rows_before=rows_before,
                 rows_in_file=len(clean), rows_after=len(merged), version=versioning.data_version(root),
                 changed=version.md5 != before, commit=commit, dropped={k: v for k, v in dropped.items() if v})


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _rows(data: bytes | None) -> int:
    return 0 if data is None else len(pd.read_parquet(io.BytesIO(data)))


def _restore(path: Path, previous: bytes | None) -> None:
    """Put the raw file back as it was before a failed `dvc add`."""
    if previous is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.restore")
    tmp.write_bytes(previous)
    os.replace(tmp, path)
