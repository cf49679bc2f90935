"""Candidates against baselines: selection by cross-validation, ensembles, the gate, and what is served.

A real pipeline on the CO2 series (prepare, train, evaluate, promote into a real MLflow store) with
tiny recurrent variants that one epoch leaves far behind the statistical baselines: the gate must
then register and serve the best baseline, and a second promotion re-scores that champion by loading
it on the new holdout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.config import Metric, load_params
from pipelines.evaluate.stage import choose, evaluate_task, load_prepared, score_model
from pipelines.project import metrics_file
from pipelines.registry import CANDIDATE_TYPE_TAG, decide, promote
from pipelines.train.stage import RestoreBestEpoch, train_task
from tests.conftest import TINY_FORECAST, make_project, prepared_task

TWO_TINY = {**TINY_FORECAST, "variants": [
    {"name": "lstm", "cell": "lstm", "hidden_size": 4, "k1": 26, "k2": 26, "lr": 0.01},
    {"name": "gru", "cell": "gru", "hidden_size": 4, "k1": 26, "k2": 26, "lr": 0.01}],
    # every baseline, as a task gets by default (TINY_FORECAST leaves the statsforecast ones out)
    "evaluate": {key: value for key, value in TINY_FORECAST["evaluate"].items() if key != "statistical_baselines"}}
MAE = Metric(name="mae", goal="minimize")


@pytest.fixture
def forecast_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_project(tmp_path / "project", {"forecast": TWO_TINY})
    monkeypatch.setenv("SEQOPS_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / '.seqops' / 'mlflow.db'}")
    return root


def _retrain(root: Path):
    params = load_params(root)
    spec = params.task("forecast")
    train_task(root, "forecast", params)
    evaluate_task(root, "forecast", params)
    prepared = load_prepared(root, "forecast", spec)
    rescored: list[str] = []

    def rescore(uri: str) -> float:
        rescored.append(uri)
        return float(score_model(spec, prepared, uri).metrics["mase"])  # the gate's metric (params.yaml promote)

    return promote(root, "forecast", params, rescore), rescored, json.loads(metrics_file(root, "forecast").read_text())


@pytest.mark.slow
def test_losing_recurrent_models_leave_the_best_baseline_registered_served_and_rescored(forecast_project: Path) -> None:
    root = forecast_project
    params, _ = prepared_task(root, "forecast")

    first, rescored, metrics = _retrain(root)
    assert set(metrics["baselines"]) == {"naive", "seasonal_naive", "auto_ets", "auto_theta"}
    assert {"lstm", "gru", "ensemble"} <= set(metrics["variants"])
    for name, scores in {**metrics["variants"], **metrics["baselines"]}.items():
        assert {"mae", "mase", "validation_mase", "coverage_80", "width_80", "winkler_80", "coverage_95"} <= set(scores), name
    # Every candidate is a child run of the retrain with the same metric keys.
    client = MlflowClient()
    runs = {name: client.get_run(entry["run_id"]) for name, entry in metrics["models"].items()}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == \
        {runs["lstm"].data.tags["mlflow.parentRunId"]}
    assert all({"holdout_mae", "holdout_mase", "validation_mase"} <= set(r.data.metrics) for r in runs.values())

    # The ensemble is scored through its own pyfunc: the step-wise median of its members.
    spec = params.task("forecast")
    prepared = load_prepared(root, "forecast", spec)
    ensemble = mlflow.pyfunc.load_model(metrics["models"]["ensemble"]["model_uri"])
    assert score_model(spec, prepared, ensemble).metrics["mae"] == pytest.approx(metrics["variants"]["ensemble"]["mae"])

    # One tiny epoch loses to the baselines: the best baseline is the candidate, registered and promoted.
    best = metrics["best_baseline"]
    assert metrics["chosen"] == best and metrics["chosen_type"] == "baseline"
    assert "the recurrent models lost" in metrics["verdict"] and metrics["margin"]["relative"] > 0
    assert first.promoted and rescored == []
    name = "seqops-forecast"
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags[CANDIDATE_TYPE_TAG] == "baseline" and champion.tags["variant"] == best
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    history = prepared["co2"].to_numpy()[:300].tolist()
    out = served.predict(pd.DataFrame({"history": [history]}), params={"horizon": 6})
    assert len(out["forecast"].iloc[0]) == 6 and np.isfinite(out["forecast"].iloc[0]).all()
    band = out["intervals"].iloc[0]["80"]  # evaluate calibrated the champion before it was registered
    assert np.all(np.asarray(band["lower"]) <= out["forecast"].iloc[0]) and len(band["upper"]) == 6
    with pytest.raises(Exception, match="history"):
        served.predict(pd.DataFrame({"history": [history[:3]]}), params={"horizon": 6})

    # Second promotion: the champion is loaded from the registry and re-scored on the new holdout.
    second, rescored, metrics = _retrain(root)
    assert rescored == [f"models:/{name}@champion"]
    assert second.champion_version == first.version
    assert second.champion_score == pytest.approx(metrics["baselines"][best]["mase"])
    assert not second.promoted and "does not beat" in second.reason  # an equal baseline does not replace it
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version


def test_a_recurrent_candidate_worse_than_the_best_baseline_is_never_chosen() -> None:
    variants = {"lstm": {"mae": 2.0, "validation_mae": 1.0}, "gru": {"mae": 1.0, "validation_mae": 3.0}}
    baselines = {"auto_theta": {"mae": 1.5, "validation_mae": 0.5}, "naive": {"mae": 3.0, "validation_mae": 4.0}}
    choice = choose(variants, baselines, MAE)
    # Cross-validation picks lstm, even though gru is better on the holdout; lstm loses to theta there.
    assert choice["best_variant"] == "lstm"
    assert choice["chosen"] == "auto_theta" and choice["chosen_type"] == "baseline"
    assert choice["margin"]["relative"] == pytest.approx(1 / 3)
    winning = choose({"lstm": {"mae": 1.2, "validation_mae": 1.0}}, baselines, MAE)
    assert winning["chosen"] == "lstm" and "beats the best baseline" in winning["verdict"]


def test_selection_ranks_recurrent_candidates_by_cross_validation_not_holdout() -> None:
    variants = {"a": {"mae": 0.5, "validation_mae": 0.9}, "b": {"mae": 0.9, "validation_mae": 0.4},
                "ensemble": {"mae": 0.6, "validation_mae": 0.6}}
    assert choose(variants, {"naive": {"mae": 10.0}}, MAE)["best_variant"] == "b"


def test_a_nan_champion_score_loses_to_any_finite_candidate_and_a_nan_candidate_never_wins() -> None:
    # README (promote): a NaN candidate never promotes; a champion whose score is NaN on the new holdout
    # is replaced by any finite candidate.
    assert decide(1.0, math.nan, 0.0) == (True, "the champion's score on this holdout is NaN")
    assert not decide(math.nan, 1.0, 0.0)[0]
    assert not decide(math.nan, math.nan, 0.0)[0]


def test_early_stopping_restores_the_best_epochs_weights() -> None:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping
    from torch.utils.data import DataLoader, TensorDataset

    class Drifting(pl.LightningModule):
        """Its validation loss is the epoch's weight value: best after epoch 1, then worse and worse."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))  # [1]
            self.losses = [3.0, 1.0, 2.0, 4.0, 5.0, 6.0]

        def training_step(self, batch, batch_idx):
            with torch.no_grad():
                self.w.fill_(self.losses[self.current_epoch])
            return (self.w * 0).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.w.detach().sum())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)
    best = RestoreBestEpoch()
    model = Drifting()
    trainer = pl.Trainer(max_epochs=6, callbacks=[best, EarlyStopping(monitor="val_loss", patience=2)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, data, data)
    assert trainer.current_epoch < 6  # stopped early
    assert best.best_epoch == 1 and best.best_loss == 1.0
    assert float(model.w.detach()) == 1.0  # the best epoch's weights, not the last epoch's


def test_candidates_below_the_coverage_floor_give_way_to_one_that_meets_it() -> None:
    variants = {"lstm": {"mae": 1.0, "validation_mae": 0.5, "coverage_80": 0.4},
                "gru": {"mae": 1.1, "validation_mae": 0.6, "coverage_80": 0.8}}
    baselines = {"auto_theta": {"mae": 1.5, "coverage_80": 0.5}, "naive": {"mae": 3.0, "coverage_80": 0.75}}
    assert choose(variants, baselines, MAE, floor=0.7)["chosen"] == "gru"
    uncovered = {name: {**row, "coverage_80": 0.4} for name, row in variants.items()}
    fallback = choose(uncovered, baselines, MAE, floor=0.7)
    assert fallback["chosen"] == "naive" and fallback["chosen_type"] == "baseline"
    assert fallback["best_baseline"] == "auto_theta"
