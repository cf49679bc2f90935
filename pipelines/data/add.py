"""New data in (`seqops data add TASK FILE`): validate, merge with the task's raw data, version, commit.

append   the file's rows are merged into raw data by the task kind's rules (`TaskKind.merge`):
         a series only grows forward in time on its grid (a new series id is welcome); texts are
         added and the task's duplicate policy applied to the whole.
replace  the file becomes the task's raw data.

A file that breaks any rule changes nothing: no write, no DVC version, no commit. A file that passes
is written atomically, versioned (`dvc add data`, `dvc push`) and, in a git checkout, data.dvc is
committed with a message naming the version; the next retrain sees a new data.md5 and trains on it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from pipelines.config import Params
from pipelines.data import versioning
from pipelines.data.atomic import write_atomic
from pipelines.data.fingerprint import file_sha256, note_added, read_record, record_path
from pipelines.data.sources import read_source, read_table
from pipelines.project import raw_path
from pipelines.tasks import TaskKind, TaskSpec, kind_for

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
    resumed: bool = False  # the file was the last one added: an interrupted add finished (versioned, committed)
    gaps: list[str] = field(default_factory=list)  # steps the appended rows leave without data (`appended_gaps`)
    # derived settings the data changed: key -> (before, after); the next prepare runs with `after`
    derived_changes: dict[str, tuple[object, object]] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return (f"{self.task}: {self.mode} {self.rows_in_file} rows -> raw data has {self.rows_after} rows "
                f"(was {self.rows_before}); data version {self.version.md5}")


def commit_message(task: str, mode: str, file: Path, rows_in_file: int, md5: str) -> str:
    return f"data({task}): {mode} {file.name} ({rows_in_file} rows) -> data version {md5}"


def _current(root: Path, task: str, spec: TaskSpec, kind: TaskKind) -> pd.DataFrame:
    """The task's raw data: data/<task>/raw.parquet, or (never ingested yet) its configured source,
    validated, exactly what the next retrain would ingest."""
    path = raw_path(root, task)
    if path.is_file():
        return pd.read_parquet(path)
    clean, _ = kind.validate(read_source(spec.source, root, spec.kind == "text"), spec.source)
    return clean


def add_data(root: Path, task: str, file: Path, params: Params, mode: Mode = "append") -> Added:
    """Validate `file` for `task`, merge it (append) or take it as is (replace), write, version, commit.

    Raises InvalidDataError / SourceError before anything is written; VersioningError when DVC or git
    fails after the write (the message says what state the workspace is in).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    spec = params.task(task)
    kind = kind_for(spec)
    if _last_added(root, task, file, mode):
        return _finish(root, task, file, mode)
    name = str(file)
    clean, dropped = kind.validate(read_table(file, spec.kind == "text"), name)
    path = raw_path(root, task)
    previous = path.read_bytes() if path.is_file() else None
    existing = _current(root, task, spec, kind) if mode == "append" or previous is not None else None
    if mode == "replace":
        merged, rows_before = clean, _rows(previous)
    else:
        rows_before = len(existing)
        merged, repeats = kind.merge(existing, clean, name)  # drops what repeats across the old rows and the file's
        dropped = {k: dropped.get(k, 0) + repeats.get(k, 0) for k in {*dropped, *repeats}}
    gaps = kind.appended_gaps(existing, merged) if mode == "append" else []

    kind.check_preparable(merged, f"{task} with {file.name} {'added' if mode == 'append' else 'as its data'}")
    changes = _derived_changes(kind, existing, merged)
    before = versioning.data_version(root).md5 if (root / versioning.DATA_DVC).is_file() else None
    record = record_path(root, task)
    previous_record = record.read_bytes() if record.is_file() else None
    write_atomic(merged, path)
    if path.read_bytes() != previous:  # a file that changes nothing is not recorded as added
        note_added(root, task, file, mode, len(clean), spec.source, kind.read_settings())
    try:
        with versioning.quiet("dvc.repo.scm_context"):  # its "git add data.dvc" hint: this commits data.dvc itself
            version = versioning.track(root)
    except Exception:
        _restore(path, previous)
        _restore(record, previous_record)
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
                 changed=version.md5 != before, commit=commit, dropped={k: v for k, v in dropped.items() if v},
                 derived_changes=changes, gaps=gaps)


def _last_added(root: Path, task: str, file: Path, mode: str) -> bool:
    """Whether `file` (same bytes, same mode) is the last one source.json records as added to the raw data."""
    last = ((read_record(root, task) or {}).get("added") or [None])[-1]
    return bool(last) and raw_path(root, task).is_file() and last["mode"] == mode \
        and last["sha256"] == file_sha256(file)


def _finish(root: Path, task: str, file: Path, mode: str) -> Added:
    """The rest of an add whose raw data was written: `dvc add`, `dvc push`, commit; each a no-op when done. A
    `data add` killed after writing left the rows unversioned and uncommitted, and its retry was refused (the
    rows were no longer after the raw data's end)."""
    before = versioning.data_version(root).md5 if (root / versioning.DATA_DVC).is_file() else None
    rows = len(pd.read_parquet(raw_path(root, task)))
    version = versioning.track(root)
    versioning.use_remote_from_env(root)
    versioning.push(root)
    commit = versioning.commit_data_version(root, commit_message(task, mode, file, rows, version.md5))
    return Added(task=task, mode=mode, rows_before=rows, rows_in_file=0, rows_after=rows,
                 version=versioning.data_version(root), changed=version.md5 != before or commit is not None,
                 commit=commit, resumed=True)


def _derived_changes(kind: TaskKind, existing: pd.DataFrame | None, merged: pd.DataFrame) -> dict[str, tuple]:
    """The settings prepare derives (`TaskKind.derived_settings`) that differ between the raw data before and
    after: a forecast task's horizon and splits follow its shortest series, so one short new series moves
    them for every series; a text task's epochs follow its size. `existing` None (replaced before any ingest):
    nothing to compare."""
    if existing is None:
        return {}
    before, after = kind.derived_settings(existing), kind.derived_settings(merged)
    return {key: (before.get(key), value) for key, value in after.items() if before.get(key) != value}


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
