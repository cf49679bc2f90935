"""prepare@<task>: raw table -> model-ready splits, with every fitted transform fitted on train only.

Series (prepared/<task>/): series.parquet (gap-filled, every row with its chronological split),
transform.json, splits.json.
Text (prepared/<task>/): texts.parquet (every row with its stratified split), vocabulary.json,
splits.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import Params, TextTask, TimeSeriesTask
from pipelines.data.ingest import write_atomic
from pipelines.data.validate import InvalidDataError, fill_gaps
from pipelines.prepare.features import SeriesTransform, Vocabulary, stratified_split
from pipelines.project import prepared_dir, raw_path
from pipelines.runner import run_stage_main


def split_series(frame: pd.DataFrame, spec: TimeSeriesTask) -> pd.DataFrame:
    """Label each row train / validation / holdout, the last steps of every series held out."""
    holdout, validation = spec.prepare.holdout, spec.prepare.validation
    need = holdout + validation + spec.serving.min_history
    labelled = []
    for sid, group in frame.groupby("series_id", sort=False):
        n = len(group)
        if n < need:
            raise InvalidDataError(f"series {sid!r} has {n} steps; prepare needs at least {need} "
                                  f"(holdout {holdout} + validation {validation} + min_history "
                                  f"{spec.serving.min_history})")
        split = np.array(["train"] * (n - holdout - validation) + ["validation"] * validation + ["holdout"] * holdout)
        labelled.append(group.assign(split=split))
    return pd.concat(labelled, ignore_index=True)


def prepare_timeseries(root: Path, task: str, params: Params) -> Path:
    spec = params.task(task)
    columns = [spec.target, *spec.covariates]
    raw = pd.read_parquet(raw_path(root, task))
    series = split_series(fill_gaps(raw, columns, spec.gap_fill), spec)
    train_values = [g.loc[g["split"] == "train", columns].to_numpy() for _, g in series.groupby("series_id", sort=False)]
    transform = SeriesTransform.fit(train_values, columns, spec.prepare.difference)

    out = prepared_dir(root, task)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(series, out / "series.parquet")
    transform.save(out / "transform.json")
    counts = series.groupby(["series_id", "split"], sort=False).size().unstack(fill_value=0)
    (out / "splits.json").write_text(json.dumps(
        {sid: {k: int(v) for k, v in row.items()} for sid, row in counts.iterrows()}, indent=2))
    return out


def prepare_text(root: Path, task: str, params: Params) -> Path:
    spec = params.task(task)
    texts = pd.read_parquet(raw_path(root, task))
    texts["split"] = stratified_split(texts["label"].tolist(), spec.prepare.validation, spec.prepare.holdout,
                                      spec.prepare.seed)
    train = texts.loc[texts["split"] == "train", "text"]
    vocabulary = Vocabulary.fit(train, min_freq=spec.prepare.min_freq, max_size=spec.prepare.max_vocab)

    out = prepared_dir(root, task)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(texts, out / "texts.parquet")
    vocabulary.save(out / "vocabulary.json")
    counts = texts.groupby(["split", "label"]).size().unstack(fill_value=0)
    (out / "splits.json").write_text(json.dumps(
        {split: {k: int(v) for k, v in row.items()} for split, row in counts.iterrows()}, indent=2))
    return out


def prepare(root: Path, task: str, params: Params) -> Path:
    if isinstance(params.task(task), TextTask):
        return prepare_text(root, task, params)
    return prepare_timeseries(root, task, params)


if __name__ == "__main__":
    run_stage_main("prepare", prepare)
