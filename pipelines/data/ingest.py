"""Raw data in: read a source, validate it, write data/<task>/raw.parquet atomically.

Raw keeps what the source said (gaps stay NaN; filling them is a prepare-time, params-tracked
choice). Output bytes are deterministic for the same input, so re-ingesting unchanged data leaves
data.dvc untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from pipelines.config import Params, TextTask, TimeSeriesTask
from pipelines.data.sources import read_source, read_table
from pipelines.data.validate import validate_text, validate_timeseries
from pipelines.project import raw_path


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


def validate_for_task(frame: pd.DataFrame, spec: TimeSeriesTask | TextTask, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The task kind's validation; returns the clean table and counts of rows dropped by documented rules."""
    if isinstance(spec, TextTask):
        return validate_text(frame, text=spec.text, label=spec.label, labels=list(spec.labels),
                             duplicates=spec.duplicates, name=name)
    return validate_timeseries(frame, timestamp=spec.timestamp, target=spec.target,
                               covariates=list(spec.covariates), series_id=spec.series_id, name=name), {}


def ingest(task: str, params: Params, root: Path, source_file: Path | None = None) -> Path:
    """Validate the task's source (or `source_file`) and write it as the task's raw data.

    Raises pipelines.data.validate.InvalidDataError / pipelines.data.sources.SourceError before writing anything.
    """
    spec = params.task(task)
    if source_file is not None:
        frame, name = read_table(source_file), str(source_file)
    else:
        frame, name = read_source(spec.source, root), spec.source
    clean, dropped = validate_for_task(frame, spec, name)
    for reason, count in dropped.items():
        if count:
            print(f"ingest {task}: {reason.replace('_', ' ')}: {count} rows", flush=True)
    path = raw_path(root, task)
    write_atomic(clean, path)
    return path
