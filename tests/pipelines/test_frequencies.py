"""Series on any calendar: monthly (start and end), quarterly, yearly, business-day, weekly and hourly files
with UTC offsets load as five-line tasks, prepare on their inferred grid, and forecast through the logged
pyfunc with the horizon's real timestamps."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

from models import ModelConfig, SequenceModel
from pipelines.config import load_params
from pipelines.data.ingest import ingest
from pipelines.data.validate import InvalidDataError
from pipelines.prepare.stage import prepare
from pipelines.project import prepared_dir
from pipelines.tasks import kind_for
from pipelines.tasks.settings import task_spec
from tests.conftest import mlflow_store

# alias written in the file's timestamps -> (pandas alias the task should record, timestamp format)
CASES = {
    "MS": ("MS", "%Y-%m-%d"),
    "ME": ("ME", "%Y-%m-%d"),
    "QS": ("QS-JAN", "%Y-%m-%d"),
    "YS": ("YS-JAN", "%Y"),
    "B": ("B", "%Y-%m-%d"),
    "W-SUN": ("W-SUN", "%Y-%m-%d"),
    "h": ("h", "%Y-%m-%dT%H:%M:%S+00:00"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    with mlflow_store(tmp_path_factory.mktemp("mlflow")):
        yield mlflow.get_tracking_uri()


def five_line_project(root: Path, freq: str, fmt: str, length: int = 100) -> Path:
    """A project whose only task is kind, source, timestamp and target, on a seasonal series with two gaps."""
    stamps = pd.date_range("2001-01-01", periods=length, freq=freq)
    t = np.arange(length)
    frame = pd.DataFrame({"when": stamps.strftime(fmt), "value": 50 + 0.3 * t + 5 * np.sin(2 * np.pi * t / 4)})
    root.mkdir(parents=True)
    frame.drop(index=[10, 11]).to_csv(root / "series.csv", index=False)
    task = {"kind": "timeseries", "source": "series.csv", "timestamp": "when", "target": "value"}
    (root / "params.yaml").write_text(yaml.safe_dump({"tasks": {"series": task}}))
    return root


@pytest.fixture(params=list(CASES))
def served(request: pytest.FixtureRequest, tmp_path: Path, store: str):
    """(expected alias, the task's prepared frame, its kind, the loaded pyfunc) for one calendar."""
    expected, fmt = CASES[request.param]
    root = five_line_project(tmp_path / "project", request.param, fmt)
    params = load_params(root)
    ingest("series", params, root)
    prepare(root, "series", params)
    spec = task_spec(root, "series", params)
    kind = kind_for(spec)
    variant = spec.variants[0]
    datamodule = kind.datamodule(prepared_dir(root, "series"), variant)
    config = kind.model_config(variant, params, datamodule)
    with mlflow.start_run():
        uri = kind.log_model(prepared_dir(root, "series"), tmp_path / "model", SequenceModel(ModelConfig(**config)),
                             config)
    return expected, kind.load_prepared(prepared_dir(root, "series")), kind, mlflow.pyfunc.load_model(uri)


def test_each_calendar_prepares_on_its_grid_and_forecasts_on_real_timestamps(served) -> None:
    expected, frame, kind, model = served
    assert kind.spec.freq == expected
    stamps = pd.DatetimeIndex(frame["timestamp"])
    assert len(stamps) == 100 and list(stamps) == list(pd.date_range(stamps[0], periods=100, freq=expected))
    assert not frame["value"].isna().any()  # the two missing rows were gaps on the grid, filled

    history = frame["value"].tolist()[:80]
    last = stamps[79]
    out = model.predict(pd.DataFrame({"history": [history], "last_timestamp": [last.isoformat()]}),
                        params={"horizon": 3})
    assert len(out["forecast"][0]) == 3 and np.isfinite(out["forecast"][0]).all()
    assert out["timestamps"][0] == [t.isoformat() for t in stamps[80:83]]
    if expected in ("MS", "QS-JAN", "YS-JAN"):  # a date sent at its local midnight with its offset: the same date
        local = model.predict(pd.DataFrame({"history": [history], "last_timestamp": [f"{last.isoformat()}+02:00"]}),
                              params={"horizon": 3})
        assert local["timestamps"][0] == out["timestamps"][0]
    assert "timestamps" not in model.predict(pd.DataFrame({"history": [history]}), params={"horizon": 3})


@pytest.mark.parametrize("bad", ["yesterday", "2001-01-15T12:34:56", "9999-12-31", "2001-02-01T13:45:00",
                                 "2001-02-01T00:00:00.5", "02/01/2001"])
def test_a_bad_last_timestamp_is_refused_naming_the_field(tmp_path: Path, store: str, bad: str) -> None:
    root = five_line_project(tmp_path / "project", "MS", "%Y-%m-%d")
    params = load_params(root)
    ingest("series", params, root)
    prepare(root, "series", params)
    kind = kind_for(task_spec(root, "series", params))
    config = kind.model_config(kind.spec.variants[0], params, kind.datamodule(prepared_dir(root, "series"),
                                                                              kind.spec.variants[0]))
    with mlflow.start_run():
        uri = kind.log_model(prepared_dir(root, "series"), tmp_path / "model", SequenceModel(ModelConfig(**config)),
                             config)
    model = mlflow.pyfunc.load_model(uri)
    with pytest.raises(MlflowException, match=r"record 0: field 'last_timestamp'"):
        model.predict(pd.DataFrame({"history": [[1.0] * 30], "last_timestamp": [bad]}), params={"horizon": 2})


def test_the_calendar_is_recorded_where_serving_and_plots_read_it(tmp_path: Path) -> None:
    root = five_line_project(tmp_path / "project", "QS", "%Y-%m-%d")
    params = load_params(root)
    ingest("series", params, root)
    out = prepare(root, "series", params)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["derived"]["freq"] == "QS-JAN" and settings["task"]["freq"] == "QS-JAN"
    assert settings["derived"]["prepare.season"] == 4


def test_an_irregular_file_is_refused_at_prepare_naming_the_row_and_the_inferred_frequency(tmp_path: Path) -> None:
    root = five_line_project(tmp_path / "project", "MS", "%Y-%m-%d")
    frame = pd.read_csv(root / "series.csv")
    frame.loc[40, "when"] = "2004-07-15"
    frame.to_csv(root / "series.csv", index=False)
    params = load_params(root)
    ingest("series", params, root)
    with pytest.raises(InvalidDataError, match=r"row 41 \(2004-07-15 00:00:00\) is not on the inferred frequency 'MS'"):
        prepare(root, "series", params)
