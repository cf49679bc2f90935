"""Adaptive micro-batching over HTTP: 32 clients at once, mixed history lengths, horizons and some invalid
requests, each get their own answer (equal to the unbatched forecast) or their own 400; a champion reload
during a batched load loses no request."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import numpy as np
import pandas as pd

from tests.support.loadgen import run_load
from tests.support.registered_models import set_champion, store_uri

CLIENTS, ROUNDS = 32, 3


def _request(i: int) -> dict:
    """Client i's request: its own history length and horizon; every 8th is invalid in its own way."""
    length, horizon = 53 + (i * 37) % 400, 1 + (i * 5) % 24
    history = [330.0 + 0.05 * t + np.sin(t / (3 + i)) for t in range(length)]
    if i % 8 == 3:
        history = history[:20]  # too short
    if i % 8 == 7:
        horizon = 0
    return {"dataframe_records": [{"series_id": f"s{i}", "history": history}], "params": {"horizon": horizon}}


def _unbatched(model, body: dict) -> list[float] | None:
    """The forecast of the model's own per-record path (SequenceModel.forecast), or None if it refuses the body."""
    try:
        prepared = model.prepare(pd.DataFrame(body["dataframe_records"], dtype=object), body["params"])
    except mlflow.exceptions.MlflowException:
        return None
    row = prepared.rows[0]
    return [float(v) for v in model._forecast(row.history, row.future, row.last, row.horizon)]


def test_32_concurrent_clients_each_get_their_own_answer_or_their_own_400(forecast_server, serving_project) -> None:
    bodies = [_request(i) for i in range(CLIENTS)]
    uri = store_uri(serving_project)
    model = mlflow.pyfunc.load_model(mlflow.MlflowClient(uri, uri).get_model_version_download_uri(
        "seqops-forecast", "1")).unwrap_python_model()
    expected = [_unbatched(model, b) for b in bodies]
    barrier = threading.Barrier(CLIENTS)

    def client(i: int) -> list[httpx.Response]:
        with httpx.Client(timeout=60) as http:
            answers = []
            for _ in range(ROUNDS):
                barrier.wait(30)
                answers.append(http.post(f"{forecast_server.url}/invocations", json=bodies[i]))
            return answers

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    for i, answers in enumerate(results):
        for response in answers:
            if expected[i] is None:
                assert response.status_code == 400, (i, response.text)
                assert "history" in response.text or "horizon" in response.text
                continue
            assert response.status_code == 200, (i, response.text)
            (prediction,) = response.json()["predictions"]
            assert prediction["series_id"] == f"s{i}"
            np.testing.assert_allclose(prediction["forecast"], expected[i], rtol=1e-5, atol=1e-4)


def test_a_reload_during_a_batched_load_loses_no_request(reload_server, serving_project, http) -> None:
    body = _request(1)
    assert http.get(f"{reload_server.url}/version").json()["version"] == "1"
    forward = threading.Timer(1.5, set_champion, args=(serving_project, "seqops-reload", "2"))
    back = threading.Timer(7.0, set_champion, args=(serving_project, "seqops-reload", "1"))
    forward.start()
    back.start()
    try:
        result = run_load(f"{reload_server.url}/invocations", body, CLIENTS, 12.0)
    finally:
        forward.join()
        back.join()
    assert not result.errors and not result.failures, (result.failures[:3], [s.body[:300] for s in result.errors[:3]])
    assert {s.version for s in result.samples} == {"1", "2"}
    assert [s.version for s in sorted(result.samples, key=lambda s: s.start)][-1] == "1"
