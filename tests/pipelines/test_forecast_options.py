"""The prepare options (README "Forecasting options") through the real stages: prepare fits them on the
training split only, refuses a log of a non-positive target with the series and value, and a hybrid variant
(Holt-Winters innovations of the log, its own transform beside the task's) trains and forecasts through the
logged pyfunc as it is scored."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.exceptions import MlflowException

from models import ModelConfig, SequenceModel
from pipelines.config import ConfigError, load_params
from pipelines.data.ingest import ingest
from pipelines.errors import SeqopsError
from pipelines.prepare.features import SeriesTransform
from pipelines.prepare.stage import prepare
from pipelines.project import prepared_dir
from pipelines.tasks import kind_for
from pipelines.tasks.settings import task_spec
from pipelines.train import streaming
from tests.conftest import REPO, mlflow_store
from tests.models.helpers import make_trainer

HYBRID = {"transform": "log", "smoothing": "holt_winters"}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An experiment in a temporary store whose artifacts stay in the temporary folder too."""
    with mlflow_store(tmp_path_factory.mktemp("mlflow")) as experiment:
        yield experiment


def monthly_project(root: Path, prepare_keys: dict, values: np.ndarray | None = None,
                    variants: list[dict] | None = None) -> Path:
    """A five-line monthly task (plus `prepare_keys` and `variants`) over ten years of multiplicative seasonality."""
    t = np.arange(120)
    if values is None:
        values = (40 + 0.5 * t) * (1 + 0.25 * np.sin(2 * np.pi * t / 12))
    stamps = pd.date_range("2001-01-01", periods=len(values), freq="MS")
    root.mkdir(parents=True)
    pd.DataFrame({"month": stamps.strftime("%Y-%m-%d"), "sales": values}).to_csv(root / "sales.csv", index=False)
    task = {"kind": "timeseries", "source": "sales.csv", "timestamp": "month", "target": "sales",
            "prepare": prepare_keys, "training": {"max_epochs": 2}, **({"variants": variants} if variants else {})}
    (root / "params.yaml").write_text(yaml.safe_dump({"tasks": {"sales": task}}))
    return root


def prepared_transform(root: Path) -> SeriesTransform:
    params = load_params(root)
    ingest("sales", params, root)
    prepare(root, "sales", params)
    return SeriesTransform.load(prepared_dir(root, "sales") / "transform.json")


def forecast_params(tmp_path: Path, task: dict) -> Path:
    """The project's params.yaml with the built-in forecast task's keys updated by `task`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in task.items():
        raw["tasks"]["forecast"][key] = {**raw["tasks"]["forecast"].get(key, {}), **value} if isinstance(value, dict) \
            else value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("task, message", [
    ({"prepare": {"transform": "sqrt"}},
     r"tasks\.forecast\.prepare\.transform: Input should be 'none', 'log' or 'boxcox'"),
    ({"prepare": {"scaling": "robust"}},
     r"tasks\.forecast\.prepare\.scaling: Input should be 'global', 'series' or 'window'"),
    ({"training": {"mode": "stateful"}, "prepare": {"scaling": "series"}}, r"prepare\.scaling: window or series"),
    ({"prepare": {"smoothing": "holt_winters"}}, r"smoothing: holt_winters replaces differencing"),
    ({"prepare": {"seasonal_difference": True}}, r"serving\.min_history \(53\) must exceed prepare\.season \(52\) "
                                                 r"and the 53 steps"),
    ({"training": {"mode": "stateful"}, "variants": [{"name": "hybrid", "cell": "gru",
                                                      "prepare": {"smoothing": "holt_winters"}}]},
     r"training\.mode: stateful .* a variant's own prepare options need mode: window"),
    ({"variants": [{"name": "hybrid", "cell": "gru", "prepare": {"smoothing": "holt_winters", "difference": True}}]},
     r"variants 'hybrid': prepare: .*replaces differencing"),
])
def test_bad_prepare_options_are_refused_on_load_naming_the_key(tmp_path: Path, task: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(forecast_params(tmp_path, task))


def test_a_seasonally_differenced_log_stream_read_in_chunks_equals_the_whole_series(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stateful training reads series.parquet a few rows at a time: the rows a chunk loses to differencing
    come from the chunk before, so the memory map holds what the whole series gives."""
    monkeypatch.setattr(streaming, "READ_ROWS", 7)
    t = np.arange(150)
    series = {"a": (40 + 0.5 * t) * (1 + 0.25 * np.sin(2 * np.pi * t / 12)), "b": 5 + np.exp(t[:90] / 60)}
    splits = {sid: ["train"] * (len(v) - 20) + ["validation"] * 10 + ["holdout"] * 10 for sid, v in series.items()}
    pq.write_table(pa.table({"series_id": [sid for sid, v in series.items() for _ in v],
                             "split": [s for sid in series for s in splits[sid]],
                             "y": np.concatenate(list(series.values()))}), tmp_path / "series.parquet")
    transform = SeriesTransform.fit([v[:len(v) - 20, None] for v in series.values()], ["y"], True, season=12,
                                    seasonal_difference=True, target_transform="log")
    stream, spans = streaming.write_stream(tmp_path / "series.parquet", transform, tmp_path / "stream.map")
    expected = np.concatenate([transform.to_inputs(v[:len(v) - 10, None]) for v in series.values()])  # [N, 1]
    np.testing.assert_allclose(np.asarray(stream[:len(expected)]), expected, rtol=1e-6)
    assert [(s.n_train, s.n_val) for s in spans] == [(130 - 13, 10), (70 - 13, 10)]


def test_prepare_fits_the_options_on_the_training_rows_only(tmp_path: Path) -> None:
    t = np.arange(120)
    values = (40 + 0.5 * t) * (1 + 0.25 * np.sin(2 * np.pi * t / 12))
    changed = values.copy()
    changed[-36:] *= 3.0  # validation and holdout (18 steps each, derived for 120 months)
    first = prepared_transform(monthly_project(tmp_path / "a", {**HYBRID, "transform": "boxcox"}, values))
    second = prepared_transform(monthly_project(tmp_path / "b", {**HYBRID, "transform": "boxcox"}, changed))
    assert first == second
    assert first.smoothing == "holt_winters" and first.season == 12 and not first.difference


def test_a_log_of_a_target_with_a_zero_is_refused_naming_the_series_and_value(tmp_path: Path) -> None:
    values = 10 + 5 * np.sin(2 * np.pi * np.arange(120) / 12)
    values[9] = 0.0
    with pytest.raises(SeqopsError, match=r"prepare.transform: log needs a positive target, but series "
                                          r"'main' has 0 at training step 10"):
        prepared_transform(monthly_project(tmp_path / "p", {"transform": "log"}, values))


def test_a_hybrid_variant_trains_and_forecasts_with_its_own_transform_through_the_pyfunc(tmp_path: Path,
                                                                                          experiment: str) -> None:
    variants = [{"name": "gru", "cell": "gru", "hidden_size": 8, "k1": 12, "k2": 24},
                {"name": "hybrid", "cell": "gru", "hidden_size": 8, "k1": 12, "k2": 24, "prepare": HYBRID}]
    root = monthly_project(tmp_path / "project", {}, variants=variants)
    task_transform = prepared_transform(root)
    params = load_params(root)
    spec = task_spec(root, "sales", params)
    kind, folder = kind_for(spec), prepared_dir(root, "sales")
    plain, variant = spec.variants
    assert task_transform.smoothing == "none" and task_transform.difference
    assert kind.datamodule(folder, plain).transform == task_transform
    datamodule = kind.datamodule(folder, variant)
    config = kind.model_config(variant, params, datamodule)
    network = SequenceModel(ModelConfig(**config))
    make_trainer(max_epochs=2).fit(network, datamodule)
    with mlflow.start_run(experiment_id=experiment):
        uri = kind.log_model(folder, tmp_path / "model", network, config, variant)
    model = mlflow.pyfunc.load_model(uri)
    frame = kind.load_prepared(folder)
    scored = kind.score(frame, model, "holdout")
    assert np.isfinite(scored.metrics["mase"])
    rows = kind.request_rows(frame.reset_index(drop=True), [100], 12)
    forecast = np.asarray(model.predict(rows, params={"horizon": 12})["forecast"][0])  # [12]
    history = frame["sales"].to_numpy()[:100]
    transform = datamodule.transform
    assert transform.smoothing == "holt_winters" and transform.target_transform == "log" and not transform.difference
    assert json.loads((folder / "transform-hybrid.json").read_text())["alpha"] > 0
    assert forecast.shape == (12,) and np.all(forecast > 0)
    # the forecast is Holt-Winters' (rolled forward from the history's last level and season) plus what the
    # network adds to each innovation: two epochs keep it near the mean innovation (network output 0)
    smoothing_only = transform.to_target(np.zeros(12), history)  # [12]
    assert np.corrcoef(forecast, smoothing_only)[0, 1] > 0.9
    with pytest.raises(MlflowException, match="must be positive"):
        model.predict(pd.DataFrame({"series_id": ["a"], "history": [[0.0, *history[1:].tolist()]]}),
                      params={"horizon": 3})
