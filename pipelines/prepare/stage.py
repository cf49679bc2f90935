"""prepare@<task>: raw table -> model-ready splits, with every fitted transform fitted on train only.

What the splits are (chronological per series, by a hash of each text for text) and which files the prepared
directory holds is the task kind's (`TaskKind.prepare`, pipelines/tasks/); this stage reads the raw
table, gives the kind a fresh prepared/<task>/ and reports it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.config import Params
from pipelines.project import prepared_dir, raw_path
from pipelines.runner import run_stage_main
from pipelines.tasks import kind_for


def prepare(root: Path, task: str, params: Params) -> Path:
    """Write prepared/<task>/ from data/<task>/raw.parquet; returns the directory."""
    raw = pd.read_parquet(raw_path(root, task))
    out = prepared_dir(root, task)
    out.mkdir(parents=True, exist_ok=True)
    kind_for(params.task(task)).prepare(raw, out)
    return out


if __name__ == "__main__":
    run_stage_main("prepare", prepare)
