"""The walking skeleton, end to end on real parts: a git+DVC project, a Prefect flow run, an MLflow
store and registry, and a real `mlflow models serve` process answering HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.registry import CANDIDATE_TYPE_TAG
from pipelines.serving.process import ScoringServer
from tests.conftest import TINY_FORECAST, TINY_SENTIMENT, make_project, use_project

pytestmark = pytest.mark.heavy  # module fixtures: a retrain of two tasks, two scoring servers


# A sample of the built-in tweets as the user's own file: the skeleton does not need all 37,000 (the TF-IDF
# baseline's cross-validation over them was half of this module's time); `make run` trains on them all.
TWEETS_SAMPLE = 4000


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory: pytest.TempPathFactory):
    from pipelines.data.sources import read_source

    patch = pytest.MonkeyPatch()
    sentiment = {**TINY_SENTIMENT, "source": "sources/tweets.csv"}
    root = make_project(tmp_path_factory.mktemp("trained") / "project",
                        {"forecast": TINY_FORECAST, "sentiment": sentiment})
    tweets = read_source("builtin:tweets", root)
    labelled = tweets[tweets["label"].isin(TINY_SENTIMENT["labels"])].sample(TWEETS_SAMPLE, random_state=0)
    # the built-in has blank labels; pandas writes a lone carriage return unquoted, and reads it as a line end
    use_project(root, patch, {"tweets": labelled.assign(text=labelled["text"].str.replace("\r", "\n"))})
    uri = f"sqlite:///{root / '.seqops' / 'mlflow.db'}"
    from pipelines.orchestration.flows import retrain

    summary = retrain(root=str(root))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield root, summary, MlflowClient(uri, uri)
    patch.undo()


def test_flow_run_completes_and_promotes_the_first_model(trained) -> None:
    from prefect.client.orchestration import get_client

    _, summary, _ = trained
    for task in ("forecast", "sentiment"):
        decision = summary[task]["decision"]
        assert summary[task]["trained"] is True
        assert decision["promoted"] is True and decision["version"] == "1"
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.name and r.state_name]
    assert any(r.state.is_completed() for r in runs)


def test_data_is_versioned_and_pushed_to_the_dvc_remote(trained) -> None:
    root, summary, _ = trained
    recorded = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert summary["forecast"]["data"]["md5"] == recorded
    remote = root / ".seqops" / "dvc-remote" / "files" / "md5"
    pushed = {p.parent.name + p.name for p in remote.rglob("*") if p.is_file()}
    assert recorded.replace(".dir", "") + ".dir" in pushed


def test_mlflow_run_records_params_epoch_losses_holdout_metrics_and_plots(trained) -> None:
    _, _, client = trained
    experiment = client.get_experiment_by_name("seqops-forecast")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    parents = [r for r in runs if not r.data.tags.get("mlflow.parentRunId")]
    variants = [r for r in children if CANDIDATE_TYPE_TAG not in r.data.tags]
    baselines = {r.data.tags["seqops.variant"] for r in children if r.data.tags.get(CANDIDATE_TYPE_TAG) == "baseline"}
    assert len(parents) == 1 and len(variants) == 1
    assert {"naive", "seasonal_naive"} <= baselines
    child = variants[0]
    assert child.data.params["cell"] == "lstm"
    assert child.data.params["k1"] == "26" and child.data.params["clip_value"] == "1.0"
    assert len(client.get_metric_history(child.info.run_id, "train_loss")) == TINY_FORECAST["training"]["max_epochs"]
    assert len(client.get_metric_history(child.info.run_id, "val_loss")) == TINY_FORECAST["training"]["max_epochs"]
    for key in ("holdout_mae", "holdout_rmse", "holdout_mase", "holdout_baseline_mae", "holdout_baseline_mase"):
        assert key in child.data.metrics
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert {"plots/forecast_vs_actual.png", "plots/loss_curves.png"} <= artifacts
    assert child.data.tags["data.md5"] == parents[0].data.tags["data.md5"]
    assert child.inputs.dataset_inputs[0].dataset.digest == child.data.tags["data.md5"][:36]
    assert "grad_norm/clipped_fraction" in child.data.metrics and "clipped_fraction" not in child.data.metrics


def test_the_parent_run_shows_the_retrains_outcome(trained) -> None:
    """The runs list shows parents: each carries the chosen candidate's holdout metric and the best baseline's."""
    root, _, client = trained
    outcome = json.loads((root / "metrics" / "forecast.json").read_text())
    rows = {**outcome["variants"], **outcome["baselines"]}
    experiment = client.get_experiment_by_name("seqops-forecast")
    parent, = [r for r in client.search_runs([experiment.experiment_id]) if not r.data.tags.get("mlflow.parentRunId")]
    assert parent.data.metrics == {"holdout_mase": rows[outcome["chosen"]]["mase"],
                                   "holdout_baseline_mase": rows[outcome["best_baseline"]]["mase"]}
    assert parent.data.tags["seqops.chosen"] == outcome["chosen"]


def test_champion_loads_as_pyfunc_and_forecasts_raw_history(trained) -> None:
    root, _, _ = trained
    model = mlflow.pyfunc.load_model("models:/seqops-forecast@champion")
    history = pd.read_parquet(root / "prepared" / "forecast" / "series.parquet")["co2"].tolist()[-80:]
    out = model.predict(pd.DataFrame({"series_id": ["a"], "history": [history]}), params={"horizon": 5})
    assert out["series_id"].tolist() == ["a"]
    forecast = out["forecast"].iloc[0]
    assert len(forecast) == 5
    assert all(abs(v - history[-1]) < 10 for v in forecast)  # ppm: a forecast continues the level


def test_unchanged_data_and_params_skip_retraining(trained) -> None:
    root, _, _ = trained
    from pipelines.orchestration.flows import retrain

    again = retrain(root=str(root))
    for task in ("forecast", "sentiment"):
        assert again[task]["trained"] is False and again[task]["decision"] is None


def _serve(root: Path, task: str, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("server") / f"serve-{task}.log"
    return ScoringServer(f"models:/seqops-{task}@champion", f"sqlite:///{root / '.seqops' / 'mlflow.db'}",
                         log_path=log)


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory: pytest.TempPathFactory):
    with _serve(trained[0], "forecast", tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def sentiment_server(trained, tmp_path_factory: pytest.TempPathFactory):
    with _serve(trained[0], "sentiment", tmp_path_factory) as running:
        yield running


def _post(server: ScoringServer, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/invocations", json=body, timeout=30)


def test_rest_forecast_from_a_raw_history(server: ScoringServer) -> None:
    history = [330.0 + 0.05 * i for i in range(60)]
    response = _post(server, {"dataframe_records": [{"series_id": "mlo", "history": history}], "params": {"horizon": 4}})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["series_id"] == "mlo" and len(prediction["forecast"]) == 4
    assert prediction["model_version"] == "1"


@pytest.mark.parametrize("record, params, message", [
    ({"history": []}, {}, "history has 0 values; at least 53"),
    ({"history": [1.0] * 10}, {}, "history has 10 values; at least 53"),
    ({"history": ["a"] * 60}, {}, "history"),
    ({"values": [1.0] * 60}, {}, "history"),
    ({"history": [1.0] * 60}, {"horizon": 0}, "horizon must be between 1 and 104"),
    ({"history": [1.0] * 60}, {"horizon": 10_000}, "horizon must be between 1 and 104"),
])
def test_bad_forecast_requests_get_400_with_a_message(server: ScoringServer, record, params, message) -> None:
    response = _post(server, {"dataframe_records": [record], "params": params})
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


def test_sentiment_variant_is_compared_with_the_tfidf_baseline(trained) -> None:
    _, _, client = trained
    experiment = client.get_experiment_by_name("seqops-sentiment")
    child = next(r for r in client.search_runs([experiment.experiment_id])
                 if r.data.tags.get("mlflow.parentRunId") and CANDIDATE_TYPE_TAG not in r.data.tags)
    for key in ("holdout_accuracy", "holdout_macro_f1", "holdout_baseline_macro_f1", "holdout_recall_positive",
                "holdout_precision_negative", "validation_macro_f1"):
        assert key in child.data.metrics
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/gradient_health.png", "plots/loss_curves.png"} <= artifacts
    assert child.data.params["topology"] == "many_to_one" and child.data.params["head"] == "multiclass"


def test_rest_sentiment_scores_raw_strings(sentiment_server: ScoringServer) -> None:
    response = _post(sentiment_server, {"dataframe_records": [{"text": "I love this airline"}, {"text": "worst. flight. ever."}]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for p in predictions:
        assert p["label"] in ("negative", "neutral", "positive")
        assert set(p["scores"]) == {"negative", "neutral", "positive"}
        assert abs(sum(p["scores"].values()) - 1.0) < 1e-5 and p["score"] == max(p["scores"].values())
        assert p["model_version"] == "1"


@pytest.mark.parametrize("body, message", [
    ({"dataframe_records": [{"text": ""}]}, "record 0: field 'text' is empty"),
    ({"dataframe_records": [{"text": "   "}]}, "record 0: field 'text' is empty"),
    ({"dataframe_records": [{"text": "ok"}, {"text": 42}]}, "text"),
    ({"dataframe_records": [{"tweet": "hello"}]}, "text"),
    ({"dataframe_records": [{"text": "x" * 281}]}, "record 0: field 'text' has 281 characters; at most 280"),
    ({"dataframe_records": [{"text": "hi"}] * 101}, "101 records in one request; at most 100"),
])
def test_bad_sentiment_requests_get_400_with_a_message(sentiment_server: ScoringServer, body, message) -> None:
    response = _post(sentiment_server, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
