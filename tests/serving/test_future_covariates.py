"""Future-known covariates and calendar features: read over the horizon from the request (and the calendar),
not held at their last value; a missing or wrong-length future list is a 400 naming the field."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException

from models import ModelConfig, SequenceModel
from pipelines.config import load_params
from pipelines.data.ingest import ingest
from pipelines.prepare.future_inputs import FutureInputs
from pipelines.prepare.stage import prepare
from pipelines.project import prepared_dir
from pipelines.serving.requests import ModelInputs, to_frame
from pipelines.tasks import kind_for
from pipelines.tasks.settings import task_spec
from tests.conftest import mlflow_store

HORIZON = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """An hourly task with a past-only covariate, a known-future holiday flag and calendar features; its
    (untrained, seeded) pyfunc logged and loaded, and the prepared series."""
    root = tmp_path_factory.mktemp("future") / "project"
    root.mkdir()
    t = np.arange(200)
    stamps = pd.date_range("2024-03-01", periods=200, freq="h")
    pd.DataFrame({"when": stamps.strftime("%Y-%m-%dT%H:%M:%S+00:00"), "load": 50 + 5 * np.sin(2 * np.pi * t / 24),
                  "temp": 10 + np.cos(t / 7), "holiday": (stamps.dayofweek >= 5).astype(float)}
                 ).to_csv(root / "load.csv", index=False)
    task = {"kind": "timeseries", "source": "load.csv", "timestamp": "when", "target": "load",
            "covariates": ["temp"], "known_covariates": ["holiday"], "calendar_features": True}
    (root / "params.yaml").write_text(yaml.safe_dump({"tasks": {"load": task}}))
    params = load_params(root)
    ingest("load", params, root)
    prepare(root, "load", params)
    kind = kind_for(task_spec(root, "load", params))
    variant = kind.spec.variants[0]
    config = kind.model_config(variant, params, kind.datamodule(prepared_dir(root, "load"), variant))
    torch.manual_seed(0)
    with mlflow_store(root), mlflow.start_run():
        uri = kind.log_model(prepared_dir(root, "load"), root / "model", SequenceModel(ModelConfig(**config)), config)
        model = mlflow.pyfunc.load_model(uri)
    return model, kind.load_prepared(prepared_dir(root, "load"))


def record(frame: pd.DataFrame, future: list[float] | None = None) -> dict:
    history = frame.iloc[:120]
    row = {"history": history["load"].tolist(), "temp": history["temp"].tolist(),
           "holiday": history["holiday"].tolist(), "last_timestamp": history["timestamp"].iloc[-1].isoformat()}
    if future is not None:
        row["future_holiday"] = future
    return row


def test_the_future_values_of_a_known_covariate_move_the_forecast(served) -> None:
    model, frame = served
    workday = model.predict(pd.DataFrame([record(frame, [0.0] * HORIZON)]), params={"horizon": HORIZON})
    holiday = model.predict(pd.DataFrame([record(frame, [1.0] * HORIZON)]), params={"horizon": HORIZON})
    assert workday["forecast"][0][0] != holiday["forecast"][0][0]  # step 1 reads the holiday flag of step 1
    assert len(workday["timestamps"][0]) == HORIZON


@pytest.mark.parametrize("future, message", [
    (None, r"missing inputs \['future_holiday'\]"),  # MLflow's schema check names it first
    ([0.0, 1.0], r"record 0: field 'future_holiday' has 2 values; the horizon needs 3"),
])
def test_a_missing_or_short_future_list_is_refused_naming_it(served, future, message: str) -> None:
    model, frame = served
    with pytest.raises(MlflowException, match=message):
        model.predict(pd.DataFrame([record(frame, future)]), params={"horizon": HORIZON})


def test_calendar_features_need_the_last_timestamp(served) -> None:
    model, frame = served
    row = record(frame, [0.0] * HORIZON)
    del row["last_timestamp"]
    with pytest.raises(MlflowException, match=r"missing inputs \['last_timestamp'\]"):
        model.predict(pd.DataFrame([row]), params={"horizon": HORIZON})


def test_a_last_timestamp_between_the_hourly_slots_is_refused(served) -> None:
    """Any timestamp is a slot of pandas' "h": the calendar is anchored on the training grid instead."""
    model, frame = served
    row = record(frame, [0.0] * HORIZON)
    for off in ("2024-03-05T23:30:00", "2024-03-05T23:00:07"):
        with pytest.raises(MlflowException, match=rf"last_timestamp' '{off}' is not on the model's calendar"):
            model.predict(pd.DataFrame([{**row, "last_timestamp": off}]), params={"horizon": HORIZON})
    answer = model.predict(pd.DataFrame([{**row, "last_timestamp": "2024-03-05T23:00:00+00:00"}]),
                           params={"horizon": HORIZON})
    assert answer["timestamps"].iloc[0][0] == "2024-03-06T00:00:00"


def test_a_half_hour_grid_is_its_own_calendar() -> None:
    """Hourly data from a +05:30 zone is at :30 in UTC: those are the slots, not :00."""
    calendar = FutureInputs("h", anchor="2024-03-01T00:30:00")
    assert calendar.on_grid(pd.Timestamp("2024-06-01T07:30:00"))
    assert not calendar.on_grid(pd.Timestamp("2024-06-01T07:00:00"))
    assert FutureInputs("MS").on_grid(pd.Timestamp("2024-06-01")) and not FutureInputs("MS").on_grid(
        pd.Timestamp("2024-06-15"))


def test_the_gateway_accepts_the_future_fields_the_signature_declares(served) -> None:
    model, frame = served
    inputs = ModelInputs.from_metadata(model.metadata)
    frame_in, params = to_frame({"dataframe_records": [record(frame, [0.0] * HORIZON)],
                                 "params": {"horizon": HORIZON}}, inputs)
    assert {"future_holiday", "last_timestamp", "holiday", "temp"} <= set(frame_in.columns)
    assert "future_holiday" in inputs.lists


def test_without_future_inputs_covariates_are_held_at_their_last_value_as_before() -> None:
    torch.manual_seed(0)
    network = SequenceModel(ModelConfig(cell="gru", input_size=3, hidden_size=4, topology="many_to_many",
                                        head="regression", output_size=1))
    history = torch.randn(2, 10, 3)  # [B, T, F]
    held = history[:, -1:].expand(2, 4, 3)  # [B, H - 1, F]
    assert torch.allclose(network.forecast(history, 5), network.forecast(history, 5, held))


def test_a_horizon_or_history_running_past_the_storable_timestamps_is_refused(served) -> None:
    """`last_timestamp` 2262-04-11T22:00 is storable, its horizon's timestamps are not: OutOfBoundsDatetime, a 500."""
    model, frame = served
    row = record(frame, [0.0] * HORIZON)
    for last in ("2262-04-11T22:00:00", "1677-09-22T00:00:00"):
        with pytest.raises(MlflowException, match=r"record 0: field 'last_timestamp' .* runs outside the timestamps "
                                                  r"a model can forecast \(1677-09-21 to 2262-04-11\)") as caught:
            model.predict(pd.DataFrame([{**row, "last_timestamp": last}]), params={"horizon": HORIZON})
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
