"""Task kinds are objects behind one protocol: the stages run any kind without knowing which it is.

The proof is a third kind that exists only in this file ("toy": three numbers -> up or down), with
its own spec class, validation, merge rule, split, datamodule, pyfunc, metric, baseline, plot and
example request. It runs through the real stage code (ingest, `data add`, prepare, train,
evaluate, promote's re-scoring) on a real git + DVC project and a real MLflow store. A stage that
still switched on the kind (`isinstance(spec, TextTask)` ... else time series) would send it down
the time-series path and fail here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal

import mlflow
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema
from pydantic import BaseModel
from torch.utils.data import DataLoader, TensorDataset

from models import ModelConfig, SequenceModel
from pipelines.config import ConfigError, Metric, Params, Promote, TaskTraining, Variant
from pipelines.data import versioning
from pipelines.data.add import add_data
from pipelines.data.atomic import write_atomic
from pipelines.data.ingest import ingest
from pipelines.data.validate import InvalidDataError
from pipelines.evaluate.stage import evaluate_task, load_prepared, score_model
from pipelines.prepare.stage import prepare
from pipelines.project import metrics_file, raw_path, train_record
from pipelines.serving.pyfunc import log_pyfunc
from pipelines.tasks import KINDS, Calibration, Scored, kind_for, shared_model_config
from pipelines.tasks.text import TextKind
from pipelines.tasks.timeseries import SeriesForecasts, TimeSeriesKind
from pipelines.train.plots import forecast_figure
from pipelines.train.stage import train_task
from tests.conftest import TINY_FORECAST, TINY_SENTIMENT, git, make_project

COLUMNS = ["a", "b", "c"]
LABELS = ["down", "up"]


class ToyTask(BaseModel):
    """The toy kind's params.yaml section: what a real kind adds to pipelines/config.py."""

    kind: Literal["toy"]
    source: str
    topology: Literal["many_to_one"] = "many_to_one"
    training: TaskTraining = TaskTraining(max_epochs=1, batch_size=32)
    variants: list[Variant]


class ToyPromote(Promote):
    metrics: dict[str, Metric] = {"toy": Metric(name="error_rate", goal="minimize")}


class ToyParams(Params):
    tasks: dict[str, ToyTask]
    promote: ToyPromote = ToyPromote()


class ToyModel(mlflow.pyfunc.PythonModel):
    """Rows of {a, b, c} -> {label}: the served object of the toy kind."""

    def load_context(self, context: Any) -> None:
        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.network = SequenceModel(ModelConfig(**spec["model"]))
        self.network.load_state_dict(torch.load(context.artifacts["weights"], weights_only=True))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        x = torch.tensor(model_input[COLUMNS].to_numpy(np.float32)).unsqueeze(-1)  # [B, 3, 1]
        probabilities = self.network.predict_proba(x)  # [B, 2]
        return pd.DataFrame({"label": [LABELS[i] for i in probabilities.argmax(-1).tolist()]})


class MajorityModel(mlflow.pyfunc.PythonModel):
    """The toy kind's baseline: the training split's most common label, whatever the input."""

    def __init__(self, label: str) -> None:
        self.label = label

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return pd.DataFrame({"label": [self.label] * len(model_input)})


class ToyData(pl.LightningDataModule):
    def __init__(self, rows: pd.DataFrame, batch_size: int) -> None:
        super().__init__()
        self.sets = {split: self._dataset(rows[rows["split"] == split]) for split in ("train", "validation")}
        self.batch_size = batch_size

    @staticmethod
    def _dataset(rows: pd.DataFrame) -> TensorDataset:
        x = torch.tensor(rows[COLUMNS].to_numpy(np.float32)).unsqueeze(-1)  # [N, 3, 1]
        y = torch.tensor(rows["label"].map(LABELS.index).to_numpy(np.int64))  # [N]
        return TensorDataset(x, y)

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.sets[split], batch_size=self.batch_size,
                          collate_fn=lambda items: {"x": torch.stack([x for x, _ in items]),  # [B, 3, 1]
                                                    "y": torch.stack([y for _, y in items])})  # [B]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")


class ToyKind:
    """A third task kind, defined outside pipelines/: the stages must run it as they run the built-ins."""

    name = "toy"
    selection_method = "the validation split"

    def __init__(self, spec: ToyTask) -> None:
        self.spec = spec

    def read_settings(self) -> dict[str, Any]:
        return {"columns": COLUMNS}

    def holdout_split(self) -> None:
        return None

    def validate(self, frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
        missing = [c for c in [*COLUMNS, "label"] if c not in frame.columns]
        if missing:
            raise InvalidDataError(f"{name}: missing columns {missing}")
        incomplete = frame[COLUMNS].isna().any(axis=1)
        clean = frame.loc[~incomplete, [*COLUMNS, "label"]].reset_index(drop=True)
        return clean, {"dropped_incomplete": int(incomplete.sum())}

    def merge(self, existing: pd.DataFrame, new: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
        merged = pd.concat([existing, new], ignore_index=True)
        repeated = merged.duplicated()
        return merged[~repeated].reset_index(drop=True), {"dropped_repeated": int(repeated.sum())}

    def appended_gaps(self, existing: pd.DataFrame, merged: pd.DataFrame) -> list[str]:
        return []

    def check_preparable(self, raw: pd.DataFrame, name: str) -> None:
        if raw["label"].nunique() < 2:
            raise InvalidDataError(f"{name}: one label only")

    def derived_settings(self, raw: pd.DataFrame) -> dict[str, Any]:
        return {}  # every setting of this kind is explicit

    def prepare(self, raw: pd.DataFrame, prepared: Path) -> None:
        split = np.array(["train", "train", "train", "validation", "holdout"])[np.arange(len(raw)) % 5]
        rows = raw.assign(split=split)
        write_atomic(rows, prepared / "rows.parquet")
        (prepared / "splits.json").write_text(json.dumps(rows["split"].value_counts().to_dict()))

    def load_prepared(self, prepared: Path) -> pd.DataFrame:
        return pd.read_parquet(prepared / "rows.parquet")

    def datamodule(self, prepared: Path, variant: Variant) -> ToyData:
        return ToyData(self.load_prepared(prepared), self.spec.training.batch_size)

    def model_config(self, variant: Variant, params: Params, datamodule: ToyData) -> dict[str, Any]:
        return {**shared_model_config(variant, self.spec, params), "input_size": 1, "head": "multiclass",
                "output_size": len(LABELS), "vocab_size": None, "embedding_dim": None}

    def pretrain(self, root: Path, task: str, params: Params) -> dict[str, Any] | None:
        return None

    def warm_start(self, root: Path, task: str, network: SequenceModel, variant: Variant) -> list[str]:
        return []

    def selection_score(self, prepared: Path, variant: Variant, config: dict[str, Any], metric: str) -> None:
        return None

    def log_model(self, prepared: Path, directory: Path, network: SequenceModel, config: dict[str, Any],
                  variant: Variant | None = None) -> str:
        signature = ModelSignature(inputs=Schema([ColSpec(DataType.double, c) for c in COLUMNS]),
                                   outputs=Schema([ColSpec(DataType.string, "label")]))
        example = self.load_prepared(prepared)[COLUMNS].head(2)
        return log_pyfunc(directory, ToyModel(), network, {"model": config}, {}, signature, example)

    def score(self, frame: pd.DataFrame, model: Any, segment: str) -> Scored:
        rows = frame[frame["split"] == segment]
        predicted = model.predict(rows[COLUMNS])["label"].to_numpy()
        return Scored({"error_rate": float(np.mean(predicted != rows["label"].to_numpy()))})

    def baselines(self, prepared: Path, seed: int) -> dict[str, Callable[[Path], str]]:
        def log(directory: Path) -> str:
            frame = self.load_prepared(prepared)
            majority = frame.loc[frame["split"] == "train", "label"].mode().iloc[0]
            info = mlflow.pyfunc.log_model(name="model", python_model=MajorityModel(majority),
                                           pip_requirements=["mlflow"])
            return info.model_uri
        return {"majority": log}

    def ensemble(self, prepared: Path, ranked: list[str]) -> Callable[[Path], str] | None:
        return None

    def calibrate(self, frame: pd.DataFrame, model: Any, validation: Scored) -> Calibration:
        return Calibration({"method": "none"}, {})

    def plot_calibration(self, run_id: str, title: str, calibration: Calibration) -> None:
        """The toy kind draws no calibration plot."""

    def plot(self, run_id: str, title: str, scored: Scored, baselines: dict[str, Scored]) -> None:
        MlflowClient().log_dict(run_id, {"title": title, "model": scored.metrics,
                                         "majority": baselines["majority"].metrics}, "plots/toy.json")

    def example_request(self, prepared: Path) -> dict[str, Any]:
        return {"dataframe_records": [{"a": 0.0, "b": 0.5, "c": 1.0}, {"a": 1.0, "b": 0.5, "c": 0.0}]}


def _toy_rows(n: int, seed: int) -> pd.DataFrame:
    """Three numbers and whether the last is above the first: learnable, with a NaN row to drop."""
    values = np.random.default_rng(seed).normal(size=(n, 3))
    frame = pd.DataFrame(values, columns=COLUMNS)
    frame["label"] = np.where(frame["c"] > frame["a"], "up", "down")
    frame.loc[0, "b"] = np.nan
    return frame


@pytest.fixture
def toy_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(KINDS, "toy", ToyKind)
    root = make_project(tmp_path / "project", {"forecast": TINY_FORECAST})
    (root / "sources").mkdir()
    _toy_rows(200, seed=0).to_csv(root / "sources" / "toy.csv", index=False)
    for key, value in (("user.email", "t@example.invalid"), ("user.name", "t")):
        git(root, "config", key, value)
    monkeypatch.setenv("SEQOPS_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / '.seqops' / 'mlflow.db'}")
    return root


def test_a_third_kind_runs_through_every_stage_without_editing_them(toy_project: Path, tmp_path: Path) -> None:
    root = toy_project
    params = ToyParams(tasks={"toy": ToyTask(kind="toy", source="sources/toy.csv", variants=[
        Variant(name="tiny", cell="gru", hidden_size=4, lr=0.05)])})
    spec = params.task("toy")

    ingested = ingest("toy", params, root)
    assert len(pd.read_parquet(raw_path(root, "toy"))) == 199  # the kind's rule dropped the NaN row
    assert ingested.note == "rows dropped: incomplete 1"  # what `seqops run`'s ingest line says
    versioning.track(root)
    new = pd.concat([_toy_rows(200, seed=0).iloc[1:6], _toy_rows(20, seed=1).iloc[1:]])  # 5 repeats, 19 new
    file = tmp_path / "more.csv"
    new.to_csv(file, index=False)
    added = add_data(root, "toy", file, params)
    assert (added.rows_before, added.rows_after, added.dropped) == (199, 218, {"dropped_repeated": 5})

    prepare(root, "toy", params)
    assert json.loads((root / "prepared" / "toy" / "splits.json").read_text()) == \
        {"train": 132, "validation": 43, "holdout": 43}
    train_task(root, "toy", params)
    evaluate_task(root, "toy", params)

    report = json.loads(metrics_file(root, "toy").read_text())
    scores = report["variants"]["tiny"]
    assert report["best_variant"] == "tiny"
    assert set(scores) == {"error_rate", "baseline_error_rate", "validation_error_rate", "val_loss"}
    entry = json.loads(train_record(root, "toy").read_text())["variants"][0]
    assert "plots/toy.json" in {a.path for a in MlflowClient().list_artifacts(entry["run_id"], "plots")}
    rescored = score_model(spec, load_prepared(root, "toy", spec), entry["model_uri"])  # what promote calls
    assert rescored.metrics["error_rate"] == pytest.approx(scores["error_rate"])
    model = mlflow.pyfunc.load_model(entry["model_uri"])
    request = kind_for(spec).example_request(root / "prepared" / "toy")
    assert set(model.predict(pd.DataFrame(request["dataframe_records"]))["label"]) <= set(LABELS)


def test_each_built_in_kind_is_found_by_its_spec_and_an_unknown_kind_is_named() -> None:
    params = Params.model_validate({"tasks": {"forecast": TINY_FORECAST, "sentiment": TINY_SENTIMENT}})
    assert isinstance(kind_for(params.task("forecast")), TimeSeriesKind)
    assert isinstance(kind_for(params.task("sentiment")), TextKind)
    with pytest.raises(ConfigError, match=r"task kind 'toy' has no implementation .*'text', 'timeseries'"):
        kind_for(ToyTask(kind="toy", source="x.csv", variants=[Variant(name="v", cell="gru")]))


def test_forecast_plot_is_drawn_on_the_series_dates() -> None:
    dates = pd.date_range("2020-01-05", periods=30, freq="W-SUN")
    values = np.arange(30, dtype=float)
    figure = forecast_figure(dates, values[:20], values[20:], [(0, values[20:26]), (8, np.array([28.0, 29.0, 30.0]))],
                             [(0, values[14:20])], "weekly")
    history, actual, first, last_forecast = figure.axes[0].get_lines()[:4]
    assert pd.Timestamp(history.get_xdata()[0]) == dates[0]
    assert pd.Timestamp(actual.get_xdata()[0]) == dates[20]
    assert pd.Timestamp(first.get_xdata()[-1]) == dates[25]
    # a forecast past the data continues on the series' own weekly step
    beyond = dates[29] + pd.Timedelta(weeks=1)
    assert list(pd.DatetimeIndex(last_forecast.get_xdata())) == [dates[28], dates[29], beyond]


def test_series_example_request_ends_the_prepared_series_with_its_covariates(tmp_path: Path) -> None:
    spec = Params.model_validate({"tasks": {"stores": {
        **TINY_FORECAST, "source": "stores.csv", "covariates": ["promo"],
        "prepare": {**TINY_FORECAST["prepare"], "holdout": 20, "validation": 20}}}}).task("stores")
    kind = kind_for(spec)
    dates = pd.date_range("2020-01-05", periods=200, freq="W-SUN")
    raw, _ = kind.validate(pd.DataFrame({"date": dates, "co2": np.arange(200.0), "promo": np.arange(200.0) % 2}),
                           "stores.csv")
    kind.prepare(raw, tmp_path)

    request = kind.example_request(tmp_path)
    record = request["dataframe_records"][0]
    assert record["history"] == list(np.arange(96.0, 200.0))  # the last 104 steps
    assert record["promo"] == list(np.arange(96.0, 200.0) % 2)
    assert request["params"] == {"horizon": TINY_FORECAST["serving"]["default_horizon"]}
    assert kind.load_prepared(tmp_path)["timestamp"].iloc[-1] == dates[-1]  # the plots' dates travel with it


def test_a_series_with_nothing_to_learn_is_refused_before_evaluate_divides_by_zero(tmp_path: Path) -> None:
    """Constant over training: nothing to learn, and MASE divides by seasonal naive's error, zero."""
    spec = Params.model_validate({"tasks": {"flat": {**TINY_FORECAST, "source": "flat.csv"}}}).task("flat")
    kind = kind_for(spec)
    dates = pd.date_range("2020-01-05", periods=200, freq="W-SUN")
    raw, _ = kind.validate(pd.DataFrame({"date": dates, "co2": np.full(200, 5.0)}), "flat.csv")
    with pytest.raises(InvalidDataError, match=r"'co2': every series is constant over its training split \(5 in"):
        kind.prepare(raw, tmp_path)
    raw, _ = kind.validate(pd.DataFrame({"date": dates, "co2": 5.0 + np.arange(200) % 52}), "flat.csv")
    kind.prepare(raw, tmp_path)  # exactly seasonal is not constant: seasonal naive is exact, MASE stays finite
    values = np.tile(np.arange(52.0), 4)  # [208]
    run = SeriesForecasts(series_id="main", timestamps=pd.date_range("2020-01-05", periods=208, freq="W-SUN"),
                          values=values, n_train=104, first=104, end=208, forecasts=[(104, values[104:104 + 26])])
    metrics = kind.forecast_metrics([run])
    assert metrics["mase"] == 0.0


def test_filled_gaps_are_not_scored_as_actuals(tmp_path: Path) -> None:
    """A series whose last weeks were blank was scored against the values gap filling made up for them."""
    spec = Params.model_validate({"tasks": {"gappy": {**TINY_FORECAST, "source": "gappy.csv"}}}).task("gappy")
    kind = kind_for(spec)
    dates = pd.date_range("2020-01-05", periods=200, freq="W-SUN")
    values = 5.0 + np.arange(200) % 52 + np.arange(200) * 0.1
    values[180:183] = np.nan  # three blank weeks inside the holdout's last forecast (origin 174, 13 weeks)
    raw, _ = kind.validate(pd.DataFrame({"date": dates, "co2": values}), "gappy.csv")
    kind.prepare(raw, tmp_path)
    frame = kind.load_prepared(tmp_path)
    assert frame["observed"].tolist() == [True] * 180 + [False] * 3 + [True] * 17
    filled = frame["co2"].to_numpy()[180:183]

    def forecaster(rows: pd.DataFrame, horizon: int) -> tuple[list[np.ndarray], list[dict]]:
        return [np.zeros(horizon) for _ in range(len(rows))], [{}] * len(rows)
    runs = kind.rolling_forecasts(frame, "holdout", forecaster)
    steps = [(origin + h, actual) for run in runs for origin, _ in run.forecasts
             for h, actual in enumerate(run.values[origin:origin + 13])]
    assert {180, 181, 182} <= {step for step, _ in steps}  # forecast there, and the filling is in the values
    assert [actual for step, actual in steps if step in (180, 181, 182)] == pytest.approx(filled.tolist())
    measured = [abs(actual) for step, actual in steps if step not in (180, 181, 182)]
    assert kind.forecast_metrics(runs)["mae"] == pytest.approx(np.mean(measured))  # the filled steps left out


def test_filled_gaps_give_no_conformal_residuals(tmp_path: Path) -> None:
    """The intervals were calibrated on residuals against filled values too: what gap filling drew in is not
    what the interval has to cover."""
    spec = Params.model_validate({"tasks": {"gappy": {**TINY_FORECAST, "source": "gappy.csv"}}}).task("gappy")
    kind = kind_for(spec)
    horizon = spec.evaluate.horizon
    values = np.arange(100.0)  # [100]
    observed = np.ones(100, dtype=bool)
    observed[62:65] = False  # three filled steps inside the forecast from origin 60
    run = SeriesForecasts(series_id="main", timestamps=pd.date_range("2020-01-05", periods=100, freq="W-SUN"),
                          values=values, n_train=50, first=50, end=100, observed=observed,
                          forecasts=[(60, np.zeros(horizon)), (80, np.zeros(horizon))])
    payload = kind.calibrate(pd.DataFrame(), None, Scored({}, [run])).payload
    counts = [len(step) for step in payload["residuals"]]  # per horizon step: origins with a measured actual
    assert counts == [2, 2, 1, 1, 1] + [2] * (horizon - 5)


def test_mase_averages_each_series_scaled_by_its_own_seasonal_naive_error() -> None:
    """MASE was the pooled MAE over the mean scale: a series in thousands decided it, one in units did not count."""
    spec = Params.model_validate({"tasks": {"panel": {**TINY_FORECAST, "source": "p.csv"}}}).task("panel")
    kind, season = kind_for(spec), spec.prepare.season
    stamps = pd.date_range("2020-01-05", periods=120, freq="W-SUN")
    runs = []
    for sid, size, miss in (("big", 1000.0, 1.0), ("small", 1.0, 1.0)):
        values = size * (np.arange(120.0) % season + np.arange(120.0) * 0.01)  # [120]
        runs.append(SeriesForecasts(series_id=sid, timestamps=stamps, values=values, n_train=80, first=80, end=120,
                                    forecasts=[(80, values[80:100] + miss * (size if sid == "small" else 0.0))]))
    scale = 0.01 * season * np.array([1000.0, 1.0])  # each series' in-sample seasonal-naive MAE (its trend)
    assert kind.forecast_metrics(runs)["mase"] == pytest.approx(np.mean([0.0, 1.0 / scale[1]]))
    assert kind.forecast_metrics(runs)["mae"] == pytest.approx(0.5)  # pooled, in the data's units
