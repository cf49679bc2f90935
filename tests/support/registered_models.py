"""Registered models for serving benchmarks and tests, without training.

A forward pass costs the same whatever the weights, so an untrained (seeded) network logged
through the project's own pyfunc (pipelines.serving.log_pyfunc) is enough to measure and test
the serving path; each version is its own MLflow run, so the pyfunc names its version.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from models import ModelConfig, SequenceModel
from pipelines.prepare.features import SeriesTransform, Vocabulary
from pipelines.serving.pyfunc import ForecastModel, forecast_signature, log_pyfunc
from pipelines.serving.sentiment import SentimentModel, sentiment_signature
from pipelines.signing import signature_tags

FORECAST_LIMITS = {"min_history": 53, "max_history": 5000, "default_horizon": 6, "max_horizon": 104}
TEXT_LIMITS = {"max_text_length": 1000, "over_length": "reject", "max_records": 100}
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["what a lovely flight, thank you", "my bag is lost and nobody answers", "the plane left on time",
         "worst service ever, never again", "great crew and a smooth landing", "delayed again, so annoying"]


def store_uri(directory: Path) -> str:
    return f"sqlite:///{directory / 'mlflow.db'}"


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    before_tracking, before_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before_tracking)
        mlflow.set_registry_uri(before_registry)


def _experiment(client: MlflowClient, directory: Path, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=(directory / "mlartifacts").as_uri())


def forecast_calibration(steps: int = 6, origins: int = 40) -> dict:
    """A conformal calibration as evaluate writes one: scaled residuals growing with the lead time."""
    from pipelines.evaluate.intervals import calibration_payload

    residuals = np.linspace(0.2, 2.0, origins)[:, None] * np.sqrt(np.arange(1, steps + 1))[None, :]  # [N, H]
    return calibration_payload(residuals)


def register_forecast(directory: Path, name: str = "seqops-forecast", seed: int = 0, hidden_size: int = 8,
                      limits: dict | None = None, calibrated: bool = True) -> str:
    """Log and register a forecast pyfunc (LSTM many-to-many on differenced, scaled values), with a conformal
    calibration written into it as evaluate does (unless `calibrated` is False); its version."""
    limits = {**FORECAST_LIMITS, **(limits or {})}
    torch.manual_seed(seed)
    config = ModelConfig(cell="lstm", input_size=1, hidden_size=hidden_size, topology="many_to_many",
                         head="regression", output_size=1, k1=26, k2=26)
    network = SequenceModel(config)
    uri = store_uri(directory)
    with _tracking(uri), tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(uri, uri)
        transform = Path(tmp) / "transform.json"
        SeriesTransform(("co2",), True, (0.03,), (0.3,)).save(transform)
        example = pd.DataFrame({"series_id": ["a"], "history": [[330.0 + 0.05 * i for i in range(60)]]})
        with mlflow.start_run(experiment_id=_experiment(client, directory, name), run_name=f"seed-{seed}"):
            model_uri = log_pyfunc(Path(tmp) / "model", ForecastModel(), network,
                                   {"model": asdict(config), "serving": limits}, {"transform": transform},
                                   forecast_signature([], limits["default_horizon"]), example)
        if calibrated:
            from pipelines.evaluate.stage import store_calibration

            store_calibration(model_uri, forecast_calibration())
        return str(mlflow.register_model(model_uri, name).version)


SENTIMENT_TEMPERATURE = 2.0


def register_sentiment(directory: Path, name: str = "seqops-sentiment", seed: int = 0,
                       limits: dict | None = None, calibrated: bool = True) -> str:
    """Log and register a sentiment pyfunc (GRU many-to-one over a tiny vocabulary), with a temperature
    written into it as evaluate does (unless `calibrated` is False); its version."""
    limits = {**TEXT_LIMITS, **(limits or {})}
    torch.manual_seed(seed)
    vocabulary = Vocabulary.fit(TEXTS, min_freq=1)
    config = ModelConfig(cell="gru", input_size=1, hidden_size=16, topology="many_to_one", head="multiclass",
                         output_size=len(LABELS), vocab_size=len(vocabulary), embedding_dim=16)
    network = SequenceModel(config)
    uri = store_uri(directory)
    with _tracking(uri), tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(uri, uri)
        path = Path(tmp) / "vocabulary.json"
        vocabulary.save(path)
        spec = {"model": asdict(config), "serving": limits, "labels": LABELS, "max_length": 40}
        with mlflow.start_run(experiment_id=_experiment(client, directory, name), run_name=f"seed-{seed}"):
            model_uri = log_pyfunc(Path(tmp) / "model", SentimentModel(), network, spec, {"vocabulary": path},
                                   sentiment_signature(), pd.DataFrame({"text": TEXTS[:2]}))
        if calibrated:
            from pipelines.evaluate.stage import store_calibration

            store_calibration(model_uri, {"method": "temperature", "temperature": SENTIMENT_TEMPERATURE})
        return str(mlflow.register_model(model_uri, name).version)


def sign_as_gate(directory: Path, name: str, version: str) -> None:
    """Tag and sign `version` as the promotion gate does (key pair under `directory`/.seqops/keys)."""
    uri = store_uri(directory)
    with _tracking(uri):
        tags = signature_tags(name, version, directory)
    client = MlflowClient(uri, uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def set_champion(directory: Path, name: str, version: str) -> None:
    """Move `champion` the way promotion does: signed first, so a server loads it."""
    sign_as_gate(directory, name, version)
    uri = store_uri(directory)
    MlflowClient(uri, uri).set_registered_model_alias(name, "champion", version)
