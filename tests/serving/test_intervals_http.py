"""Prediction intervals and calibrated scores through `seqops serve`: the contract and its 400s over HTTP,
and the same structure from Python and from MLflow's own scoring path (its ParamSchema declares `level`)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import scoring_server

from pipelines.evaluate.intervals import MAX_LEVELS
from tests.serving.conftest import GOOD_FORECAST
from tests.support.registered_models import SENTIMENT_TEMPERATURE, store_uri

HISTORY = GOOD_FORECAST["dataframe_records"][0]["history"]


def _forecast(http, server, params: dict) -> object:
    return http.post(f"{server.url}/invocations", json={"dataframe_records": [{"series_id": "mlo", "history": HISTORY}],
                                                       "params": params})


def _check_intervals(prediction: dict, levels: list[str], horizon: int) -> None:
    forecast = np.asarray(prediction["forecast"])
    assert sorted(prediction["intervals"], key=float) == levels
    widths = []
    for key in levels:
        lower, upper = (np.asarray(prediction["intervals"][key][side]) for side in ("lower", "upper"))
        assert len(lower) == len(upper) == len(forecast) == horizon
        assert (lower <= forecast).all() and (forecast <= upper).all()
        widths.append(upper - lower)
    for narrow, wide in zip(widths, widths[1:]):
        assert (wide > narrow).all()


def test_each_forecast_carries_intervals_at_the_requested_levels(forecast_server, http) -> None:
    response = _forecast(http, forecast_server, {"horizon": 12, "level": [95, 50, 80]})

    assert response.status_code == 200, response.text
    _check_intervals(response.json()["predictions"][0], ["50", "80", "95"], 12)


def test_without_params_level_the_default_levels_are_served(forecast_server, http) -> None:
    response = _forecast(http, forecast_server, {"horizon": 3})

    assert response.status_code == 200, response.text
    _check_intervals(response.json()["predictions"][0], ["80", "95"], 3)


@pytest.mark.parametrize("level", [[80, 100], [0], [-5], ["80"], [True], "eighty", [[80]],
                                   list(range(10, 10 * (MAX_LEVELS + 2), 10))])
def test_a_bad_level_is_a_400_naming_params_level(forecast_server, http, level: object) -> None:
    response = _forecast(http, forecast_server, {"horizon": 3, "level": level})

    assert response.status_code == 400, response.text
    assert "params.level" in response.json()["message"]


def test_version_states_the_interval_method_and_the_score_calibration(forecast_server, sentiment_server, http) -> None:
    forecast = http.get(f"{forecast_server.url}/version").json()
    sentiment = http.get(f"{sentiment_server.url}/version").json()

    assert forecast["intervals"].startswith("conformal")
    assert sentiment["calibration"] == f"temperature scaling, T = {SENTIMENT_TEMPERATURE:.3f}"


def test_python_and_mlflow_scoring_return_the_same_intervals_as_the_server(serving_project, forecast_server,
                                                                          http) -> None:
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(store_uri(serving_project))
    mlflow.set_registry_uri(store_uri(serving_project))
    try:
        model = mlflow.pyfunc.load_model("models:/seqops-forecast/1")
        params = {"horizon": 12, "level": [80, 95]}
        body = json.dumps({"dataframe_records": [{"series_id": "mlo", "history": HISTORY}], "params": params})
        stock = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
        local = model.predict(pd.DataFrame({"series_id": ["mlo"], "history": [HISTORY]}), params=params)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    served = _forecast(http, forecast_server, params).json()["predictions"][0]["intervals"]

    assert stock.status == 200 and json.loads(stock.response)["predictions"][0]["intervals"] == served
    assert local["intervals"].iloc[0] == served
