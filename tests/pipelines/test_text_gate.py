"""The gate on a text task: a recurrent model that loses to TF-IDF + logistic regression is not served;
the baseline is registered, tagged as a baseline, and answers the sentiment REST contract.

A real retrain (ingest, DVC, prepare, train, evaluate, promote into a real MLflow registry) of a
five-line text task over a small generated corpus whose label a single word decides: TF-IDF reads it
perfectly, while a 4-unit GRU after one epoch of two batches has barely moved from chance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import Params
from pipelines.evaluate.stage import evaluate_task
from pipelines.project import metrics_file, train_record
from pipelines.registry import CANDIDATE_TYPE_TAG, promote
from pipelines.serving.requests import ModelInputs, invoke
from pipelines.tasks import kind_for
from pipelines.tasks.settings import task_spec
from pipelines.train.stage import train_task
from tests.conftest import make_project, prepared_task, use_project

FILLER = ["the", "flight", "crew", "seat", "bag", "gate", "was", "today", "again", "my"]
CUES = {"positive": ["lovely", "great", "thanks"], "negative": ["awful", "lost", "delayed"]}
# Five lines and the tiny sizes that force the loss: one epoch, a 4-unit GRU, no language model.
TASK = {"kind": "text", "source": "sources/reviews.csv", "text": "review", "label": "mood",
        "pretrain": {"method": "none"},
        "training": {"max_epochs": 1, "batch_size": 256},
        "variants": [{"name": "gru", "cell": "gru", "hidden_size": 4, "embedding_dim": 4, "lr": 0.001}]}


def reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` distinct short texts: filler words around one cue word that alone decides the label."""
    rng = np.random.default_rng(seed)
    moods = rng.choice(sorted(CUES), n)
    texts = [" ".join([*rng.choice(FILLER, 5), rng.choice(CUES[mood]), f"n{i}"]) for i, mood in enumerate(moods)]
    return pd.DataFrame({"review": texts, "mood": moods})


@pytest.fixture
def text_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict], Path]]:
    """`text_project(task)`: a project whose `reviews` task is `task`, over 600 generated reviews."""
    yield lambda task: use_project(make_project(tmp_path / "project", {"reviews": task}), monkeypatch,
                                   {"reviews": reviews(600)})
    mlflow.set_tracking_uri(None)


def retrain(root: Path, task: str) -> tuple[Params, dict]:
    """Ingest, version, prepare, train and evaluate `task`; its params and metrics/<task>.json."""
    params, _ = prepared_task(root, task)
    train_task(root, task, params)
    evaluate_task(root, task, params)
    return params, json.loads(metrics_file(root, task).read_text())


def answer(model: Any, texts: list[str]) -> list[dict]:
    """`model`'s predictions for `texts` through the REST contract (status 200 asserted)."""
    body = json.dumps({"dataframe_records": [{"text": text} for text in texts]}).encode()
    status, response = invoke(lambda frame, p: model.predict(frame, params=p), ModelInputs.from_metadata(model.metadata),
                              body)
    assert status == 200, response
    return json.loads(response)["predictions"]


def test_a_recurrent_model_worse_than_tfidf_leaves_the_baseline_registered_and_served(
        text_project: Callable[[dict], Path]) -> None:
    root, task = text_project(TASK), "reviews"
    params, metrics = retrain(root, task)
    decision = promote(root, task, params, rescore=lambda uri: pytest.fail(f"no champion to re-score: {uri}"))

    gru, baseline = metrics["variants"]["gru"]["macro_f1"], metrics["baselines"]["tfidf_logreg"]["macro_f1"]
    assert baseline > gru + 0.2  # the tiny GRU really is worse
    assert metrics["chosen"] == "tfidf_logreg" and metrics["chosen_type"] == "baseline"
    assert "the recurrent models lost" in metrics["verdict"]
    # what the flow's promote tags the version with, for a later champion to be compared on (labels read at prepare)
    assert kind_for(task_spec(root, task, params)).outputs() == "labels ['negative', 'positive']"
    assert metrics["selection"] == "validation_macro_f1 (maximize), the validation split"  # not rolling origins
    assert decision.promoted
    for scores in (metrics["variants"]["gru"], metrics["baselines"]["tfidf_logreg"]):  # temperature scaling
        assert scores["temperature"] > 0 and {"ece", "ece_uncalibrated"} <= set(scores)

    client = MlflowClient()
    champion = client.get_model_version_by_alias(f"seqops-{task}", "champion")
    assert champion.tags[CANDIDATE_TYPE_TAG] == "baseline" and champion.tags["variant"] == "tfidf_logreg"
    served = mlflow.pyfunc.load_model(f"models:/seqops-{task}@champion")
    predictions = answer(served, ["the crew was lovely today", "my bag was lost again"])
    assert [p["label"] for p in predictions] == ["positive", "negative"]
    for p in predictions:
        assert set(p["scores"]) == {"negative", "positive"}
        assert p["score"] == pytest.approx(max(p["scores"].values()))
        assert sum(p["scores"].values()) == pytest.approx(1.0)


def test_a_gru_correcting_tfidf_is_trained_scored_and_served_through_the_retrain(
        text_project: Callable[[dict], Path]) -> None:
    """The same retrain with a `base: tfidf_logreg` variant: prepare fits its base, it trains from it, evaluate
    scores it beside the baseline it corrects (and the ensemble of it and a plain GRU of another seed), and
    its logged model answers the REST contract."""
    hybrid = {**TASK["variants"][0], "name": "hybrid", "base": "tfidf_logreg"}
    plain = {**TASK["variants"][0], "seed": 7}
    root, task = text_project({**TASK, "variants": [hybrid, plain]}), "reviews"
    params, metrics = retrain(root, task)
    # It starts as its base (TF-IDF reads this corpus perfectly) and one epoch cannot undo that.
    assert metrics["variants"]["hybrid"]["macro_f1"] >= metrics["baselines"]["tfidf_logreg"]["macro_f1"] - 0.02
    assert metrics["models"]["ensemble"]["type"] == "ensemble" and "macro_f1" in metrics["variants"]["ensemble"]
    record = json.loads(train_record(root, task).read_text())
    seeds = {v["variant"]: MlflowClient().get_run(v["run_id"]).data.params["seed"] for v in record["variants"]}
    assert seeds == {"hybrid": str(params.training.seed), "gru": "7"}
    served = mlflow.pyfunc.load_model(record["variants"][0]["model_uri"])
    predictions = answer(served, ["the crew was lovely today", "my bag was lost again"])
    assert [p["label"] for p in predictions] == ["positive", "negative"]
