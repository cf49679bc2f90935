"""Models registered before the stage folders existed, and before model signing, still load and answer.

tests/fixtures/legacy-layout-models.tar.gz holds a forecast and a sentiment pyfunc logged at commit
030bf1a (flat pipelines/ layout): their python_model.pkl names `pipelines.serving.ForecastModel`
and `pipelines.serving.SentimentModel`, and their code/ folder carries the old modules. They must
load both in a process that already imported today's `pipelines` (the gateway, evaluation) and in
a fresh one (`mlflow models serve`, a user's script), where MLflow puts their own code first.

Registered as champions from before signing, `seqops serve` refuses them in one line that names the
`seqops sign` command; once signed with it (README: Upgrading) a real `seqops serve` answers with them.
The forecast carries the promotion tags the old gate wrote; the sentiment carries none, so only
`--champion` (the operator's word for the model already served) signs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.signing import ADOPTED_TAG, DECISION_TAG, SIGNATURE_TAG
from tests.conftest import REPO
from tests.support.registered_models import store_uri
from tests.support.servers import GatewayProcess, thread_env

ARCHIVE = REPO / "tests" / "fixtures" / "legacy-layout-models.tar.gz"
HISTORY = [330.0 + 0.05 * i for i in range(60)]

pytestmark = pytest.mark.heavy  # an old MLflow store unpacked and served


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("legacy")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


def test_legacy_models_pickle_the_old_module_names(legacy: Path) -> None:
    assert b"pipelines.serving" in (legacy / "forecast" / "python_model.pkl").read_bytes()
    assert (legacy / "forecast" / "code" / "pipelines" / "serving.py").is_file()


def test_legacy_forecast_loads_beside_todays_pipelines(legacy: Path) -> None:
    import pipelines.serving  # noqa: F401  (today's package is imported first, as in the gateway)

    model = mlflow.pyfunc.load_model(str(legacy / "forecast"))
    out = model.predict(pd.DataFrame({"series_id": ["a"], "history": [HISTORY]}), params={"horizon": 5})
    forecast = list(out["forecast"][0])
    assert len(forecast) == 5 and all(300 < v < 400 for v in forecast)


def test_legacy_sentiment_loads_beside_todays_pipelines(legacy: Path) -> None:
    model = mlflow.pyfunc.load_model(str(legacy / "sentiment"))
    out = model.predict(pd.DataFrame({"text": ["what a lovely flight", "my bag is lost"]}))
    assert set(out["label"]) <= {"negative", "neutral", "positive"}
    assert all(abs(sum(scores.values()) - 1.0) < 1e-5 for scores in out["scores"])


@pytest.mark.parametrize("name", ["forecast", "sentiment"])
def test_legacy_models_load_in_a_fresh_process(legacy: Path, name: str) -> None:
    """A fresh interpreter, as `mlflow models serve` or a user's script: nothing of pipelines imported first."""
    payload = ({"series_id": ["a"], "history": [HISTORY]} if name == "forecast" else {"text": ["so bad"]})
    script = ("import json, sys, mlflow, pandas as pd\n"
              "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "print(json.dumps(m.predict(pd.DataFrame(json.loads(sys.argv[2]))).to_dict('records')))\n")
    done = subprocess.run([sys.executable, "-c", script, str(legacy / name), json.dumps(payload)],
                          capture_output=True, text=True, timeout=120, cwd=legacy)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 1 and ("forecast" in rows[0] or "label" in rows[0])


@pytest.fixture(scope="module")
def legacy_registry(legacy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose store holds both legacy models as champions, registered before signing existed."""
    root = tmp_path_factory.mktemp("legacy-registry")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = {task: params["tasks"][task] for task in ("forecast", "sentiment")}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = store_uri(root)
    client = MlflowClient(uri, uri)
    for task in ("forecast", "sentiment"):
        name = f"seqops-{task}"
        experiment = client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(legacy / task), "model")
        client.set_terminated(run.info.run_id)
        client.create_registered_model(name)
        version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version
        client.set_registered_model_alias(name, "champion", version)
    # what the gate wrote before signing existed; the sentiment stands for a version older than the tags
    client.set_model_version_tag("seqops-forecast", "1", DECISION_TAG, "promoted")
    client.set_model_version_tag("seqops-forecast", "1", "promotion.reason", "beat the best baseline")
    return root


def seqops(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**thread_env(), "SEQOPS_ROOT": str(root), "MLFLOW_TRACKING_URI": store_uri(root)}
    return subprocess.run([str(Path(sys.executable).parent / "seqops"), *args], env=env, capture_output=True,
                          text=True, timeout=180, cwd=root)


def test_unsigned_legacy_champions_are_refused_with_the_command_that_signs_them(legacy_registry: Path) -> None:
    servers = {task: GatewayProcess(task, legacy_registry, store_uri(legacy_registry)).launch()
               for task in ("forecast", "sentiment")}
    try:
        for server in servers.values():
            server.process.wait(timeout=180)
    finally:
        for server in servers.values():
            server.stop()
    for task, fix in (("forecast", "`seqops sign forecast --version 1`"),
                      ("sentiment", "`seqops sign sentiment --version 1 --champion`")):
        log = servers[task].log_tail()
        assert servers[task].process.returncode == 2, log
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"refused seqops-{task} v1" in errors[0] and fix in errors[0], log
        assert "Traceback" not in log


def test_seqops_sign_signs_a_promoted_version_and_a_tagless_champion_only_with_champion(
        legacy_registry: Path) -> None:
    refused = seqops(legacy_registry, "sign", "sentiment")
    assert refused.returncode == 2 and "carries no promotion tags" in refused.stderr, refused.stderr
    assert "`seqops sign sentiment --champion`" in refused.stderr

    forecast = seqops(legacy_registry, "sign", "forecast")
    assert forecast.returncode == 0 and "seqops-forecast v1: signed with key" in forecast.stdout, forecast.stderr
    sentiment = seqops(legacy_registry, "sign", "sentiment", "--champion")
    assert sentiment.returncode == 0 and "signed on your word" in sentiment.stdout, sentiment.stderr
    again = seqops(legacy_registry, "sign", "forecast")
    assert again.returncode == 0 and "already signed" in again.stdout, again.stderr

    client = MlflowClient(store_uri(legacy_registry), store_uri(legacy_registry))
    forecast_tags = client.get_model_version("seqops-forecast", "1").tags
    sentiment_tags = client.get_model_version("seqops-sentiment", "1").tags
    assert forecast_tags[SIGNATURE_TAG] and ADOPTED_TAG not in forecast_tags
    assert sentiment_tags[SIGNATURE_TAG] and sentiment_tags[DECISION_TAG] == "promoted"
    assert ADOPTED_TAG in sentiment_tags


def test_signed_legacy_champions_are_served_by_seqops_serve(legacy_registry: Path) -> None:
    if "already signed" not in seqops(legacy_registry, "sign", "forecast").stdout:  # this test run alone
        assert seqops(legacy_registry, "sign", "sentiment", "--champion").returncode == 0
    uri = store_uri(legacy_registry)
    servers = [GatewayProcess(task, legacy_registry, uri).launch() for task in ("forecast", "sentiment")]
    try:
        forecast, sentiment = (server.wait_ready() for server in servers)
        with httpx.Client(timeout=60) as http:
            answer = http.post(f"{forecast.url}/invocations", json={
                "dataframe_records": [{"series_id": "a", "history": HISTORY}], "params": {"horizon": 5}})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-model-version"] == "1"
            predicted = answer.json()["predictions"][0]["forecast"]
            assert len(predicted) == 5 and all(300 < v < 400 for v in predicted)
            answer = http.post(f"{sentiment.url}/invocations", json={"dataframe_records": [{"text": "so bad"}]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["label"] in {"negative", "neutral", "positive"}
    finally:
        for server in servers:
            server.stop()
