"""A quantile variant (params.yaml `quantiles: N`): validated on load, trained by the forecast task, served with
intervals from its own sample paths and scored under the conformal intervals' metric keys."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.config import ConfigError, load_params
from pipelines.evaluate.intervals import SAMPLE_PATHS
from pipelines.evaluate.stage import load_prepared, score_model
from pipelines.project import train_record
from pipelines.tasks.settings import task_spec
from pipelines.train.stage import train_task
from tests.conftest import REPO, make_project, prepared_task, use_project

TASK = {
    "kind": "timeseries",
    "source": "sources/sales.csv",
    "timestamp": "week",
    "target": "sales",
    "prepare": {"holdout": 20, "validation": 20, "window": 40, "stride": 10, "season": 10, "difference": True},
    "evaluate": {"horizon": 5, "origin_stride": 5, "statistical_baselines": []},
    "serving": {"min_history": 12, "max_history": 1000, "default_horizon": 5, "max_horizon": 20},
    "training": {"max_epochs": 2, "batch_size": 8},
    "variants": [{"name": "quantile", "cell": "gru", "hidden_size": 8, "k1": 10, "k2": 10, "lr": 0.01,
                  "quantiles": 9}],
}


def _sales(weeks: int = 120) -> pd.DataFrame:
    """One series: a 10-week season, a trend and Gaussian noise."""
    rng = np.random.default_rng(0)
    t = np.arange(weeks)
    sales = 100.0 + 0.2 * t + 10 * np.sin(2 * np.pi * t / 10) + rng.normal(0, 2, weeks)  # [T]
    return pd.DataFrame({"week": pd.date_range("2020-01-06", periods=weeks, freq="W-MON").strftime("%Y-%m-%d"),
                         "sales": sales})


@pytest.fixture
def quantile_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_project(make_project(tmp_path / "project", {"sales": TASK}), monkeypatch, {"sales": _sales()})


def test_a_quantile_variant_trains_and_serves_ordered_intervals_from_its_sample_paths(quantile_project: Path) -> None:
    root = quantile_project
    params, _ = prepared_task(root, "sales")
    train_task(root, "sales", params)
    model = mlflow.pyfunc.load_model(json.loads(train_record(root, "sales").read_text())["variants"][0]["model_uri"])
    history = _sales()["sales"].tolist()[:80]
    request = pd.DataFrame({"series_id": ["a"], "history": [history]})

    first = model.predict(request, params={"horizon": 8, "level": [80, 95]}).iloc[0]
    again = model.predict(request, params={"horizon": 8, "level": [80, 95]}).iloc[0]

    forecast = np.asarray(first["forecast"])
    bands = {key: (np.asarray(b["lower"]), np.asarray(b["upper"])) for key, b in first["intervals"].items()}
    assert sorted(bands) == ["80", "95"] and len(forecast) == 8
    for lower, upper in bands.values():
        assert (lower <= forecast).all() and (forecast <= upper).all()
    assert ((bands["95"][1] - bands["95"][0]) > (bands["80"][1] - bands["80"][0])).all()
    assert first["forecast"] == again["forecast"] and first["intervals"] == again["intervals"]  # seeded paths
    assert model.unwrap_python_model().uncertainty["intervals"].startswith("quantile: 9 quantiles")
    # serving.max_request_steps counts the horizon once per sample path: what the stepper will run
    assert model.unwrap_python_model().prepare(request, {"horizon": 8}).steps == len(history) + 8 * SAMPLE_PATHS

    spec = task_spec(root, "sales", params)
    scored = score_model(spec, load_prepared(root, "sales", spec), model)  # evaluate's holdout scoring
    for key in ("coverage_80", "width_80", "winkler_80", "coverage_95", "width_95", "winkler_95"):
        assert np.isfinite(scored.metrics[key])


def _params(tmp_path: Path, variant: dict, task: str = "forecast") -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tasks"][task]["variants"][0].update(variant)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("value", [1, 100, "many"])
def test_a_bad_quantiles_value_is_refused_naming_the_key(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"tasks\.forecast\.variants\.0\.quantiles"):
        load_params(_params(tmp_path, {"quantiles": value}))


def test_quantiles_on_a_topology_that_cannot_sample_paths_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="quantiles needs topology many_to_many"):
        load_params(_params(tmp_path, {"quantiles": 9, "topology": "encoder_decoder"}))


def test_quantiles_on_a_text_classifier_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="quantiles is a forecasting option"):
        load_params(_params(tmp_path, {"quantiles": 9}, task="sentiment"))
