"""Pyfuncs for what is not one network: statistical baselines, TF-IDF + logistic regression, ensembles.

Each subclasses the recurrent model's pyfunc and replaces only what predicts (`_load_predictor` and
`_forecast`, or `_probabilities`), so request validation, limits, the REST contract and its 400s
stay one definition: when a baseline wins the gate, users get the same answers to the same bodies.
"""

from __future__ import annotations

import json
import pickle
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature

from pipelines.evaluate.baselines import label_order, statistical_forecast
from pipelines.serving.linear_text import LinearTextScorer
from pipelines.serving.pyfunc import CODE_PATHS, ForecastModel, pip_requirements
from pipelines.serving.sentiment import SentimentModel

SPEC, PIPELINE = "spec", "pipeline"
MEMBER_PREFIX = "member_"


def _spec(context: Any) -> dict[str, Any]:
    return json.loads(Path(context.artifacts[SPEC]).read_text())


def _members(context: Any) -> list[Any]:
    """An ensemble's member pyfuncs (its `member_<i>` artifacts), unwrapped to call their scoring directly."""
    members = sorted(k for k in context.artifacts if k.startswith(MEMBER_PREFIX))
    return [mlflow.pyfunc.load_model(context.artifacts[k]).unwrap_python_model() for k in members]


class StatisticalForecastModel(ForecastModel):
    """A statsforecast model (or naive / seasonal naive) fitted on each request's history at predict time."""

    def _load_predictor(self, context: Any) -> tuple[Any, dict[str, Any]]:
        spec = _spec(context)
        self.method, self.season = spec["baseline"]["method"], int(spec["baseline"]["season"])
        return None, spec

    def _forecast(self, history: dict[str, np.ndarray], future: dict[str, np.ndarray], last: pd.Timestamp | None,
                  horizon: int) -> np.ndarray:
        return statistical_forecast(self.method, history["history"], horizon, self.season)  # [H]


class EnsembleForecastModel(ForecastModel):
    """The median, step by step, of several forecast pyfuncs (carried inside this model as artifacts).

    The median rather than the mean: one member that diverged on a history cannot drag the ensemble
    with it. Members are called through their `_forecast`, after this model validated the request once.
    """

    def _load_predictor(self, context: Any) -> tuple[Any, dict[str, Any]]:
        self.members = _members(context)
        return None, _spec(context)

    def _forecast(self, history: dict[str, np.ndarray], future: dict[str, np.ndarray], last: pd.Timestamp | None,
                  horizon: int) -> np.ndarray:
        forecasts = np.stack([m._forecast(history, future, last, horizon) for m in self.members])  # [M, H]
        return np.median(forecasts, axis=0)  # [H]


class TfidfSentimentModel(SentimentModel):
    """TF-IDF + logistic regression behind the sentiment contract: raw texts in, label and scores out (scored
    from the fitted pipeline's parameters, serving/linear_text.py)."""

    def _load_predictor(self, context: Any) -> dict[str, Any]:
        spec = _spec(context)
        self.pipeline = LinearTextScorer.load(Path(context.artifacts[PIPELINE]))
        self.order = label_order(self.pipeline, spec["labels"])
        return spec

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        return self.pipeline.predict_proba(texts)[:, self.order]  # [B, C] in the task's label order


class EnsembleSentimentModel(SentimentModel):
    """The mean of several sentiment pyfuncs' label probabilities (carried inside this model as artifacts).

    The mean rather than the median: probabilities of a few members average into probabilities, and the
    ensemble's own temperature (fitted by evaluate on its validation scores) calibrates the result. Members
    are called through their `_probabilities`, before their own temperatures, after this model validated
    the request once.
    """

    def _load_predictor(self, context: Any) -> dict[str, Any]:
        self.members = _members(context)
        return _spec(context)

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        return np.mean([member._probabilities(texts) for member in self.members], axis=0)  # [B, C]


def baseline_requirements() -> list[str]:
    """The recurrent pyfunc's pins plus what the baselines import."""
    return [*pip_requirements(), *(f"{name}=={version(name)}" for name in ("statsforecast", "scikit-learn"))]


def log_baseline_pyfunc(directory: Path, python_model: mlflow.pyfunc.PythonModel, spec: dict[str, Any],
                        artifacts: dict[str, str], signature: ModelSignature, input_example: pd.DataFrame) -> str:
    """Log a baseline or ensemble pyfunc to the active run (spec + `artifacts`, which may be model URIs:
    MLflow copies them in), with this code and pinned dependencies. Returns its models:/m-... URI."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "run_id": mlflow.active_run().info.run_id}
    (directory / "spec.json").write_text(json.dumps(spec, indent=2))
    info = mlflow.pyfunc.log_model(name="model", python_model=python_model,
                                   artifacts={SPEC: str(directory / "spec.json"), **artifacts},
                                   code_paths=CODE_PATHS, pip_requirements=baseline_requirements(),
                                   signature=signature, input_example=input_example)
    return info.model_uri


def save_pipeline(directory: Path, pipeline: Any) -> str:
    """A fitted scikit-learn pipeline pickled for `TfidfSentimentModel`; the path to log as its artifact."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pipeline.pkl"
    path.write_bytes(pickle.dumps(pipeline))
    return str(path)
