"""What the gateway adds to MLflow's scoring app: Content-Type default, CSV and Parquet read into the
records JSON gives, model version on every response, /health /version /metrics, request timeout,
reload safety, and the same predictions as MLflow's own scoring path."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc import scoring_server

from pipelines.serving import batching
from pipelines.serving.batching import Job
from pipelines.serving.gateway import Gateway, GatewayConfig, Served, load_served
from pipelines.serving.requests import ModelInputs, invoke
from pipelines.signing import VERIFY_KEY_ENV, default_key_paths
from tests.serving.conftest import GOOD_FORECAST, GOOD_SENTIMENT
from tests.serving.corpus import CSV, PARQUET, parquet
from tests.support.registered_models import store_uri
from tests.support.servers import thread_env

OK_COUNT = re.compile(r'^seqops_http_requests_total\{method="POST",route="/invocations",status="200"\} (\S+)$', re.M)


def _ok_count(http: httpx.Client, url: str) -> float:
    found = OK_COUNT.search(http.get(f"{url}/metrics").text)
    return float(found.group(1)) if found else 0.0


def test_request_without_content_type_gets_a_prediction_and_metrics_count_it(forecast_server, http) -> None:
    before = _ok_count(http, forecast_server.url)
    response = http.post(f"{forecast_server.url}/invocations", content=json.dumps(GOOD_FORECAST).encode())
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["series_id"] == "mlo" and len(prediction["forecast"]) == 4
    assert prediction["model_version"] == "1" and response.headers["x-model-version"] == "1"
    assert _ok_count(http, forecast_server.url) == before + 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("header", [["-H", "Content-Type:"], []], ids=["no-header", "curl-default-form-type"])
def test_plain_curl_gets_a_prediction(forecast_server, header: list[str]) -> None:
    out = subprocess.run(["curl", "-s", "-X", "POST", f"{forecast_server.url}/invocations", *header,
                          "-d", json.dumps(GOOD_FORECAST)], capture_output=True, text=True, timeout=30)
    assert len(json.loads(out.stdout)["predictions"][0]["forecast"]) == 4, out.stdout


def test_sentiment_answers_json_and_csv(sentiment_server, http) -> None:
    by_json = http.post(f"{sentiment_server.url}/invocations", json=GOOD_SENTIMENT).json()["predictions"]
    by_csv = http.post(f"{sentiment_server.url}/invocations", content=b"text\nwhat a lovely flight\nmy bag is lost\n",
                       headers={"Content-Type": "text/csv"})
    assert by_csv.status_code == 200, by_csv.text
    assert [p["label"] for p in by_csv.json()["predictions"]] == [p["label"] for p in by_json]
    assert set(by_json[0]["scores"]) == {"negative", "neutral", "positive"}
    assert by_csv.headers["x-model-version"] == "1"


# Texts pandas' CSV defaults read as missing; a quoted cell with a comma and a line break; a number's digits
NA_LIKE = ["NA", "null", "None", "nan", "NaN", "N/A", "#N/A", "n/a", "<NA>", "-nan", "great, really\nyes", "42"]


def test_sentiment_scores_na_like_texts_sent_as_csv_or_parquet_as_it_does_json(sentiment_server, http) -> None:
    url = f"{sentiment_server.url}/invocations"
    by_json = http.post(url, json={"dataframe_records": [{"text": t} for t in NA_LIKE]})
    cells = "\r\n".join('"' + t.replace('"', '""') + '"' if "," in t or "\n" in t else t for t in NA_LIKE)
    by_csv = http.post(url, content=("\ufefftext\r\n" + cells + "\r\n").encode(), headers={"Content-Type": CSV})
    by_parquet = http.post(url, content=parquet(text=NA_LIKE), headers={"Content-Type": PARQUET})
    assert by_json.status_code == 200, by_json.text
    assert by_csv.status_code == 200, by_csv.text
    assert by_parquet.status_code == 200, by_parquet.text
    assert by_csv.json() == by_parquet.json() == by_json.json()


def test_forecast_answers_parquet_with_history_lists_as_it_does_json(forecast_server, http) -> None:
    records = GOOD_FORECAST["dataframe_records"]
    by_json = http.post(f"{forecast_server.url}/invocations", json={"dataframe_records": records})
    by_parquet = http.post(f"{forecast_server.url}/invocations", headers={"Content-Type": PARQUET},
                           content=parquet(series_id=[r["series_id"] for r in records],
                                           history=[r["history"] for r in records]))
    assert by_parquet.status_code == 200, by_parquet.text
    assert by_parquet.json() == by_json.json()


def test_health_version_and_metrics_describe_the_served_model(forecast_server, http, serving_project) -> None:
    health = http.get(f"{forecast_server.url}/health")
    version = http.get(f"{forecast_server.url}/version").json()
    metrics = http.get(f"{forecast_server.url}/metrics")
    missing = http.get(f"{forecast_server.url}/no-such-route")
    assert health.json() == {"status": "ok", "task": "forecast", "model": "seqops-forecast", "version": "1"}
    client = mlflow.MlflowClient(store_uri(serving_project), store_uri(serving_project))
    assert version["run_id"] == client.get_model_version("seqops-forecast", "1").run_id
    assert (version["task"], version["model"], version["version"]) == ("forecast", "seqops-forecast", "1")
    assert 'seqops_model_version{task="forecast"} 1.0' in metrics.text
    assert "seqops_http_request_duration_seconds_bucket" in metrics.text
    assert missing.status_code == 404
    for response in (health, metrics, missing):
        assert response.headers["x-model-version"] == "1"


def test_missing_champion_fails_in_one_line_without_a_traceback(serving_project) -> None:
    env = thread_env()
    env.update(SEQOPS_ROOT=str(serving_project), MLFLOW_TRACKING_URI=store_uri(serving_project))
    done = subprocess.run([str(Path(sys.executable).parent / "seqops"), "serve", "orphan", "--port", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip() == "error: seqops-orphan has no champion yet: run `seqops run --task orphan` first"
    assert "Traceback" not in done.stdout + done.stderr


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A tracking server behind basic auth, to a client without credentials: 401 to every request."""

    def _refuse(self) -> None:
        body = b"You are not authenticated. Please see the documentation to set up authentication."
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args) -> None:
        pass


def test_refused_credentials_are_named_not_blamed_on_a_missing_champion(serving_project) -> None:
    """`seqops serve` without MLflow credentials said "seqops-forecast has no champion yet" (the champion existed;
    the server had answered 401), and `seqops run` called such a 401 a bug in seqops."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = thread_env()
        env.update(SEQOPS_ROOT=str(serving_project), MLFLOW_TRACKING_URI=f"http://127.0.0.1:{server.server_port}")
        done = subprocess.run([str(Path(sys.executable).parent / "seqops"), "serve", "forecast", "--port", "1"],
                              capture_output=True, text=True, env=env, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 2 and "no champion" not in done.stderr and "a bug in seqops" not in done.stderr
    assert done.stderr.strip() == (f"error: the MLflow server at http://127.0.0.1:{server.server_port} refused these "
                                   "credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an "
                                   "identity it knows with the rights this command needs (README \"Scaled setup\")")


@pytest.fixture
def tracking(serving_project, monkeypatch):
    """load_served points MLflow at the store: point it back afterwards."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv(VERIFY_KEY_ENV, str(default_key_paths(serving_project)[1]))  # the key set_champion signed with
    yield GatewayConfig("forecast", "seqops-forecast", store_uri(serving_project))
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


@pytest.mark.parametrize("task, body", [("forecast", GOOD_FORECAST), ("sentiment", GOOD_SENTIMENT)])
def test_fast_path_answers_what_mlflow_scoring_answers(tracking, task: str, body: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """...from the model in memory: its download is gone once it is loaded (every reload left one behind)."""
    config = GatewayConfig(task, f"seqops-{task}", tracking.tracking_uri)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    served = load_served(config)
    assert not list(tmp_path.glob("seqops-model-*"))
    model = mlflow.pyfunc.load_model(f"models:/seqops-{task}/1")
    raw = json.dumps(body).encode()
    status, fast = invoke(served.predict, served.inputs, raw)
    stock = scoring_server.invocations(raw, "application/json", model, model.metadata.get_input_schema())
    assert status == stock.status == 200
    fast_rows, stock_rows = json.loads(fast)["predictions"], json.loads(stock.response)["predictions"]
    assert len(fast_rows) == len(stock_rows) == len(body["dataframe_records"])
    for ours, theirs in zip(fast_rows, stock_rows):
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            if key in ("forecast", "score"):
                assert np.allclose(value, theirs[key])
            elif key == "scores":
                assert np.allclose([value[k] for k in sorted(value)], [theirs[key][k] for k in sorted(value)])
            else:
                assert value == theirs[key]


def test_a_heavy_request_does_not_take_its_small_batch_mates_past_their_deadline(tracking) -> None:
    """A request within every limit (hundreds of long histories, the longest horizon) ran its 10 s out and every
    small request batched with it got its 504: the batch ran to the latest deadline, so all timed out together."""
    served = load_served(tracking)
    heavy = served.scorer.prepare(pd.DataFrame({"history": [[330.0 + 0.05 * i for i in range(3000)]] * 300}),
                                  {"horizon": 104})  # this model's serving.max_horizon
    small = served.scorer.prepare(pd.DataFrame(GOOD_FORECAST["dataframe_records"]), GOOD_FORECAST["params"])
    started = time.monotonic()
    served.scorer.predict_prepared([heavy])
    alone = time.monotonic() - started
    now = time.monotonic()
    jobs = [Job(served, heavy, now + alone / 4, None), Job(served, small, now + 30.0, None)]
    answers = batching.score(jobs, b"timed out")
    assert answers[0] == (504, b"timed out")
    assert answers[1][0] == 200 and len(json.loads(answers[1][1])["predictions"][0]["forecast"]) == 4
    assert time.monotonic() - now < alone  # stopped at the heavy request's deadline, not run to the end


def _stub(predict, version: str = "7") -> Served:
    return Served(version, "run-x", ModelInputs(("text",), ("text",), ()), predict, time.time())


def _call(gateway: Gateway, body: bytes, headers: dict | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post("/invocations", content=body, headers=headers or {})
    return asyncio.run(go())


def test_a_request_slower_than_the_timeout_gets_504() -> None:
    config = GatewayConfig("t", "m", "sqlite:///unused.db", request_timeout_s=0.2, poll_interval_s=0)
    gateway = Gateway(config, _stub(lambda frame, params: time.sleep(3.0) or frame))
    try:
        started = time.perf_counter()
        response = _call(gateway, b'{"dataframe_records": [{"text": "slow"}]}')
        assert response.status_code == 504 and "serving.request_timeout_s" in response.json()["message"]
        assert time.perf_counter() - started < 2.5  # answered at the timeout, not when the model finished
        assert response.headers["x-model-version"] == "7"
    finally:
        gateway.close()


def test_a_champion_that_does_not_load_leaves_the_current_model_serving(monkeypatch) -> None:
    import pipelines.serving.gateway as gateway_module

    config = GatewayConfig("t", "m", "sqlite:///unused.db", poll_interval_s=0)
    gateway = Gateway(config, _stub(lambda frame, params: [{"text": t} for t in frame["text"]]))

    def broken(config, version=None):
        raise gateway_module.GatewayError("v8 does not load")

    monkeypatch.setattr(gateway_module, "load_served", broken)
    try:
        assert gateway.reload("8") is False
        response = _call(gateway, b'{"dataframe_records": [{"text": "still here"}]}')
        assert response.status_code == 200 and response.headers["x-model-version"] == "7"
        assert 'seqops_model_reloads_total{result="failed"} 1.0' in gateway.metrics.exposition().decode()
    finally:
        gateway.close()


def test_body_limit_applies_before_parsing() -> None:
    config = GatewayConfig("t", "m", "sqlite:///unused.db", max_body_bytes=100, poll_interval_s=0)
    gateway = Gateway(config, _stub(lambda frame, params: []))
    try:
        response = _call(gateway, b'{"dataframe_records": [{"text": "' + b"x" * 200 + b'"}]}')
        assert response.status_code == 413 and "at most 100" in response.json()["message"]
    finally:
        gateway.close()


def test_a_compressed_body_is_refused_naming_its_content_encoding() -> None:
    """It was decoded as if plain: "the request body is not UTF-8 encoded JSON", a 400 that hid the cause."""
    config = GatewayConfig("t", "m", "sqlite:///unused.db", poll_interval_s=0)
    echo = Served("7", "run-x", ModelInputs(("text",), ("text",), ()), lambda frame, params: [[1]] * len(frame),
                  time.time())
    gateway = Gateway(config, echo)
    try:
        body = b'{"dataframe_records": [{"text": "fine"}]}'
        refused = _call(gateway, gzip.compress(body), {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert (refused.status_code, refused.json()) == (415, {
            "error_code": "UNSUPPORTED_MEDIA_TYPE",
            "message": "Content-Encoding 'gzip' is not supported: send the body uncompressed"})
        plain = _call(gateway, body, {"Content-Type": "application/json", "Content-Encoding": "identity"})
        assert plain.status_code == 200, plain.text
    finally:
        gateway.close()


def test_csv_cells_of_a_numeric_column_arrive_as_the_numbers_json_would_carry() -> None:
    """A model with scalar number columns (a task kind of its own, not forecast's lists): a cell is an int or a float,
    an empty optional cell a missing field (as in JSON), and a cell that is no number is refused naming its line."""
    config = GatewayConfig("t", "m", "sqlite:///unused.db", poll_interval_s=0)
    inputs = ModelInputs(("a", "b"), ("a",), (), (), ("a", "b"))
    echo = Served("7", "run-x", inputs, lambda frame, params: [[type(v).__name__ for v in row]
                                                                for row in frame.itertuples(index=False)], time.time())
    gateway = Gateway(config, echo)
    try:
        answered = _call(gateway, b"a,b\r\n1,2.5\r\n-3,\r\n", {"Content-Type": "text/csv"})
        same = _call(gateway, b'{"dataframe_records": [{"a": 1, "b": 2.5}, {"a": -3}]}')
        assert answered.status_code == 200, answered.text
        assert answered.json() == same.json() and answered.json()["predictions"][0] == ["int", "float"]
        refused = _call(gateway, b"a,b\n1,2\nten,3\n", {"Content-Type": "text/csv"})
        assert (refused.status_code, refused.json()["message"]) == \
            (400, "text/csv line 3 (record 1): column 'a' must be a number, got 'ten'")
        grouped = _call(gateway, b"a,b\n1_000,2\n", {"Content-Type": "text/csv"})
        assert (grouped.status_code, grouped.json()["message"]) == \
            (400, "text/csv line 2 (record 0): column 'a' must be a number, got '1_000'")
    finally:
        gateway.close()
