"""The source's fingerprint, data/<task>/source.json: which source the raw data was ingested from.

Without it, editing `source:` in params.yaml (or overwriting the file) kept the old raw data without
a word. Ingest records the source as params.yaml names it, the sha256 of its bytes (a built-in: its
name, package and pinned package version) and the settings the task reads it by
(`TaskKind.read_settings`: a `text:` or `target:` pointed at another column); the next run compares
and re-ingests when any changed. The record lives beside raw.parquet, so DVC versions it with the data.

`seqops data add` notes what it added. Rows added since the last ingest are never dropped
silently: when the source changes under them, the run stops and says how to keep or drop them
(`seqops data add TASK FILE --mode replace` with the new source, which takes it as the raw data).
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pipelines.data.sources import BUILTIN_PACKAGES, BUILTIN_PREFIX, SourceError
from pipelines.errors import SeqopsError
from pipelines.project import raw_path

SOURCE_FILE = "source.json"
_CHUNK = 1 << 20


class SourceChangedError(SeqopsError):
    """The source changed under rows added with `seqops data add`: re-ingesting would drop them."""


def record_path(root: Path, task: str) -> Path:
    return raw_path(root, task).parent / SOURCE_FILE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(source: str, root: Path, columns: dict[str, Any]) -> dict[str, Any]:
    """What identifies the raw data ingest makes of `source`: the file's sha256 and size, or a built-in's
    package version, and the `columns` settings it is read by."""
    if source.startswith(BUILTIN_PREFIX):
        package = BUILTIN_PACKAGES.get(source[len(BUILTIN_PREFIX):])
        try:
            pinned = version(package) if package else None
        except PackageNotFoundError:
            pinned = None
        return {"source": source, "package": package, "version": pinned, "columns": columns}
    path = root / source
    if not path.is_file():
        raise SourceError(f"{path}: no such file (tasks' `source:` in params.yaml)")
    return {"source": source, "sha256": file_sha256(path), "bytes": path.stat().st_size, "columns": columns}


def read_record(root: Path, task: str) -> dict[str, Any] | None:
    path = record_path(root, task)
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(root: Path, task: str, source: dict[str, Any], added: list[dict[str, Any]] | None = None) -> None:
    """source.json: the fingerprint and what `seqops data add` put on top of it since (sorted keys:
    the same source gives the same bytes, so data.dvc stays unchanged)."""
    path = record_path(root, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**source, "added": added or []}, indent=2, sort_keys=True) + "\n")


def note_added(root: Path, task: str, file: Path, mode: str, rows: int, configured: str,
               columns: dict[str, Any]) -> None:
    """Record a `seqops data add`: appended rows join the list; a replace by the configured source itself
    resets the record to that source (nothing added on top), any other replace is listed as added."""
    current = read_record(root, task)
    base = {k: v for k, v in (current or {}).items() if k != "added"} or fingerprint(configured, root, columns)
    added = list((current or {}).get("added", []))
    if mode == "replace":
        base["columns"] = columns  # the file was read by today's settings
        if not configured.startswith(BUILTIN_PREFIX) and (root / configured).resolve() == file.resolve():
            write_record(root, task, fingerprint(configured, root, columns))
            return
        added = []
    added.append({"file": file.name, "mode": mode, "rows": rows, "sha256": file_sha256(file)})
    write_record(root, task, base, added)


def _difference(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    if before.get("source") != now["source"]:
        return f"source changed from {before.get('source')!r} to {now['source']!r}"
    for key in ("sha256", "version"):
        if before.get(key) != now.get(key):
            what = f"{now['source']} changed" if key == "sha256" else f"{now['package']} is now {now['version']}"
            return f"{what} since it was ingested"
    if changed := [f"{key} {before['columns'].get(key)!r} -> {value!r}" for key, value in now["columns"].items()
                   if before["columns"].get(key) != value]:
        return f"the settings it is read by changed ({', '.join(changed)})"
    return None


def reingest_reason(root: Path, task: str, source: str, columns: dict[str, Any]) -> str | None:
    """Why the task's raw data must be (re)ingested from `source` read by `columns`, or None when it is current.

    Raw data from before fingerprints existed is kept and its source's fingerprint recorded (it
    may hold added rows nothing could tell apart); so are the settings of a record from before they
    were recorded. Raises SourceChangedError when the source changed under rows added with
    `seqops data add`.
    """
    if not raw_path(root, task).is_file():
        return "first ingest: no raw data yet"
    now, before = fingerprint(source, root, columns), read_record(root, task)
    if before is None:
        write_record(root, task, now)
        return None
    if "columns" not in before:
        before["columns"] = columns
        write_record(root, task, {k: v for k, v in before.items() if k != "added"}, before.get("added"))
    reason = _difference(before, now)
    if reason and before.get("added"):
        files = ", ".join(f"{a['file']} ({a['mode']}, {a['rows']} rows)" for a in before["added"])
        raise SourceChangedError(
            f"{task}: {reason}, but {raw_path(root, task).parent}/ also holds data added with `seqops data add` "
            f"({files}). Re-ingesting would drop it: take the new source with `seqops data add {task} {source} "
            f"--mode replace` (then add the other files again if the source lacks them), or restore the old source")
    return reason
