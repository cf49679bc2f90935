"""The forecast pipeline on data shaped like real data: several series and a covariate input."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.evaluate.stage import evaluate_task
from pipelines.project import metrics_file, train_record
from pipelines.tasks import kind_for
from pipelines.tasks.settings import task_spec
from pipelines.train.stage import train_task
from tests.conftest import make_project, prepared_task, use_project

TASK = {
    "kind": "timeseries",
    "source": "sources/stores.csv",
    "timestamp": "week",
    "target": "sales",
    "covariates": ["promo"],
    "series_id": "store",
    "prepare": {"holdout": 20, "validation": 20, "window": 40, "stride": 10, "season": 10, "difference": False},
    "evaluate": {"horizon": 5, "origin_stride": 5},
    "serving": {"min_history": 12, "max_history": 1000, "default_horizon": 5, "max_horizon": 20},
    "training": {"max_epochs": 2, "batch_size": 8},
    "variants": [
        {"name": "lstm", "cell": "lstm", "hidden_size": 8, "k1": 10, "k2": 20, "lr": 0.01},
        {"name": "seq2seq", "cell": "gru", "topology": "encoder_decoder", "hidden_size": 8, "lr": 0.01},
    ],
}


def _stores(weeks: int = 120) -> pd.DataFrame:
    """Two stores with a 10-week season, different levels, and promotions that lift sales."""
    rng = np.random.default_rng(0)
    frames = []
    for store, level in (("north", 100.0), ("south", 40.0)):
        t = np.arange(weeks)
        promo = (rng.random(weeks) < 0.2).astype(float)
        sales = level + 10 * np.sin(2 * np.pi * t / 10) + 15 * promo + rng.normal(0, 1, weeks)
        dates = pd.date_range("2020-01-06", periods=weeks, freq="W-MON")
        frames.append(pd.DataFrame({"store": store, "week": dates.strftime("%Y-%m-%d"), "sales": sales, "promo": promo}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def stores_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_project(make_project(tmp_path / "project", {"stores": TASK}), monkeypatch, {"stores": _stores()})


def test_several_series_with_a_covariate_train_evaluate_and_forecast(stores_project: Path) -> None:
    root = stores_project
    params, prepared = prepared_task(root, "stores")
    splits = json.loads((prepared / "splits.json").read_text())
    assert splits == {s: {"train": 80, "validation": 20, "holdout": 20} for s in ("north", "south")}

    train_task(root, "stores", params)
    evaluate_task(root, "stores", params)
    metrics = json.loads(metrics_file(root, "stores").read_text())
    assert set(metrics["variants"]) == {"lstm", "seq2seq", "ensemble"}
    for scores in metrics["variants"].values():
        assert np.isfinite(scores["mae"]) and np.isfinite(scores["baseline_mae"])

    record = json.loads(train_record(root, "stores").read_text())
    model = mlflow.pyfunc.load_model(record["variants"][0]["model_uri"])
    raw = _stores()
    rows = pd.DataFrame({
        "series_id": ["north", "south"],
        "history": [raw.loc[raw.store == s, "sales"].tolist()[:60] for s in ("north", "south")],
        "promo": [raw.loc[raw.store == s, "promo"].tolist()[:60] for s in ("north", "south")],
    })
    out = model.predict(rows, params={"horizon": 5})
    assert out["series_id"].tolist() == ["north", "south"]
    north, south = (np.mean(f) for f in out["forecast"])
    assert north > south  # each series keeps its own level

    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['promo'\]"):
        model.predict(rows.drop(columns=["promo"]), params={"horizon": 5})


def test_rolling_forecasts_send_many_series_in_one_call_and_give_each_its_own(stores_project: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.tasks.timeseries as timeseries

    params, prepared = prepared_task(stores_project, "stores")
    kind = kind_for(task_spec(stores_project, "stores", params))
    frame, calls = kind.load_prepared(prepared), []

    def last_value(rows: pd.DataFrame, horizon: int) -> tuple[list[np.ndarray], list[dict]]:
        calls.append(rows["series_id"].tolist())
        return [np.repeat(h[-1], horizon) for h in rows["history"]], [{"row": i} for i in range(len(rows))]

    together = kind.rolling_forecasts(frame, "validation", last_value)
    assert [sorted(set(call)) for call in calls] == [["north", "south"]]  # both series' records, one call
    assert [interval["row"] for run in together for interval in run.intervals] == list(range(8))  # in call order
    monkeypatch.setattr(timeseries, "FORECAST_CALL_STEPS", 1)  # a call per series
    apart = kind.rolling_forecasts(frame, "validation", last_value)
    assert [sorted(set(call)) for call in calls[1:]] == [["north"], ["south"]]

    for run, alone in zip(together, apart):
        assert run.series_id == alone.series_id and len(run.forecasts) == len(alone.forecasts) == 4
        for (origin, forecast), (origin_alone, forecast_alone) in zip(run.forecasts, alone.forecasts):
            assert origin == origin_alone and np.array_equal(forecast, forecast_alone)
            assert np.all(forecast == run.values[origin - 1])  # its own series' last value before the origin
        assert len(run.intervals) == len(run.forecasts)
