"""Raw data in: read a source, validate it, write data/<task>/raw.parquet atomically, and the
source's fingerprint beside it (data/<task>/source.json, pipelines/data/fingerprint.py).

Raw keeps what the source said (gaps stay NaN; filling them is a prepare-time, params-tracked
choice). Output bytes are deterministic for the same input, so re-ingesting unchanged data leaves
data.dvc untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pipelines.config import Params
from pipelines.data.atomic import write_atomic
from pipelines.data.fingerprint import fingerprint, write_record
from pipelines.data.sources import read_source, read_table
from pipelines.project import raw_path
from pipelines.tasks import kind_for


class Ingested(NamedTuple):
    path: Path                # data/<task>/raw.parquet
    dropped: dict[str, int]   # rows dropped by the kind's documented rules, by reason ({} or zeros: none)

    @property
    def note(self) -> str:
        """`dropped empty 1, conflicting 2` for the run's ingest line; empty when nothing was dropped."""
        counts = [f"{reason.removeprefix('dropped_')} {count}" for reason, count in self.dropped.items() if count]
        return f"rows dropped: {', '.join(counts)}" if counts else ""


def ingest(task: str, params: Params, root: Path, source_file: Path | None = None) -> Ingested:
    """Validate the task's source (or `source_file`) and write it as the task's raw data.

    The task kind validates it and reports rows dropped by its documented rules. Raises
    pipelines.data.validate.InvalidDataError / pipelines.data.sources.SourceError before writing anything.
    """
    spec = params.task(task)
    strings = spec.kind == "text"  # "NA" in a text column is text
    if source_file is not None:
        frame, name = read_table(source_file, strings), str(source_file)
    else:
        frame, name = read_source(spec.source, root, strings), spec.source
    kind = kind_for(spec)
    clean, dropped = kind.validate(frame, name)
    for reason, count in dropped.items():
        if count:
            print(f"ingest {task}: {reason.replace('_', ' ')}: {count} rows", flush=True)
    path = raw_path(root, task)
    write_atomic(clean, path)
    if source_file is None:
        write_record(root, task, fingerprint(spec.source, root, kind.read_settings()))
    return Ingested(path, dropped)
