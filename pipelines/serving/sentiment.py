"""The sentiment pyfunc: raw texts in, labels with calibrated probabilities out.

It encodes text with the tokenizer fitted at prepare time (subwords, or the word vocabulary of
models logged before subwords), scores with the network and applies the temperature evaluate
fitted on the validation split. A `base: tfidf_logreg` variant carries its base model (TF-IDF +
logistic regression) and adds its log-probabilities to the network's logits, as in training. Bad
input raises the same 400s as the forecast pyfunc.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Map

from pipelines.data.validate import blank_text
from pipelines.evaluate.calibration import TEMPERATURE, apply_temperature
from pipelines.evaluate.intervals import read_calibration
from pipelines.prepare.text import load_encoder
from pipelines.serving.pyfunc import Prepared, bad_input, load_network, registered_version

BASE_ARTIFACT = "base_model"


class SentimentModel(mlflow.pyfunc.PythonModel):
    """Rows of {text} -> {label, score, scores: {label: probability}, model_version}.

    A text longer than serving.max_text_length characters is rejected with a 400, or scored on its
    first max_text_length characters, as serving.over_length says; tokens past prepare.max_length
    are always truncated (the network never saw longer sequences).
    """

    batching: ClassVar[bool] = True  # prepare / predict_prepared: the gateway scores requests together

    def load_context(self, context: Any) -> None:
        torch.set_num_threads(1)
        spec = self._load_predictor(context)
        self.labels, self.limits = spec["labels"], spec["serving"]
        self.version = registered_version(spec.get("run_id"))
        self._calibrate(context)

    def _load_predictor(self, context: Any) -> dict[str, Any]:
        """The network, its encoder and a `base` variant's base model (a pickled scikit-learn pipeline, scored
        from its parameters by LinearTextScorer, its columns put in label order once here); returns the
        model's spec."""
        self.network, spec = load_network(context)
        # "encoder": subwords or words; "vocabulary": the artifact name of models logged before subwords.
        self.encoder = load_encoder(Path(context.artifacts.get("encoder") or context.artifacts["vocabulary"]))
        self.max_length = spec["max_length"]
        self.base, self.base_order = None, None
        if BASE_ARTIFACT in context.artifacts:
            from pipelines.evaluate.baselines import label_order
            from pipelines.serving.linear_text import LinearTextScorer

            self.base = LinearTextScorer.load(Path(context.artifacts[BASE_ARTIFACT]))
            self.base_order = label_order(self.base, spec["labels"])
        return spec

    def _calibrate(self, context: Any) -> None:
        """The temperature evaluate fitted on the validation split (pipelines/evaluate/calibration.py), or 1."""
        calibration = read_calibration(Path(context.artifacts["spec"]))
        fitted = calibration is not None and calibration["method"] == TEMPERATURE
        self.temperature = float(calibration["temperature"]) if fitted else None
        self.uncertainty = {"calibration": f"temperature scaling, T = {self.temperature:.3f}" if self.temperature
                            else "none: uncalibrated probabilities (logged before evaluate fitted a temperature)"}

    def _texts(self, model_input: Any) -> list[str]:
        if not isinstance(model_input, pd.DataFrame) or "text" not in model_input.columns:
            first = "record 0: " if isinstance(model_input, pd.DataFrame) and len(model_input) else ""
            raise bad_input(f"{first}field 'text' is required (a non-empty string): each record needs one")
        if model_input.empty:
            raise bad_input("no records to score")
        if len(model_input) > self.limits["max_records"]:
            raise bad_input(f"{len(model_input)} records in one request; "
                            f"at most {self.limits['max_records']} are accepted")
        limit, texts = self.limits["max_text_length"], []
        for index, text in enumerate(model_input["text"].tolist()):
            if text is None or (isinstance(text, float) and math.isnan(text)):
                raise bad_input(f"record {index}: field 'text' is required (a non-empty string)")
            if not isinstance(text, str):
                raise bad_input(f"record {index}: field 'text' must be a string, got {type(text).__name__}")
            if blank_text(text):
                raise bad_input(f"record {index}: field 'text' is empty")
            if len(text) > limit:
                if self.limits["over_length"] == "reject":
                    raise bad_input(f"record {index}: field 'text' has {len(text)} characters; "
                                    f"at most {limit} are accepted")
                text = text[:limit]
            texts.append(text)
        return texts

    def prepare(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Prepared:
        """Validate a request whole into texts ready to score beside others; it costs a step per character."""
        texts = self._texts(model_input)
        return Prepared(texts, sum(len(t) for t in texts))

    def predict_prepared(self, requests: list[Prepared], deadline: float | None = None) -> list[list[dict[str, Any]]]:
        """The texts of every request in one forward; each request's predictions, in order."""
        probabilities = self._probabilities([t for r in requests for t in r.rows])  # [B, C]
        if self.temperature:
            probabilities = apply_temperature(probabilities, self.temperature)  # [B, C]
        rows, answers = iter(probabilities), []
        for request in requests:
            answers.append([self._row(next(rows)) for _ in request.rows])
        return answers

    def _row(self, p: np.ndarray) -> dict[str, Any]:
        best = int(np.argmax(p))
        return {"label": self.labels[best], "score": float(p[best]),
                "scores": {label: float(v) for label, v in zip(self.labels, p)}, "model_version": self.version}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return pd.DataFrame(self.predict_prepared([self.prepare(model_input, params)])[0])

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        """Label probabilities [B, C] of valid texts; the TF-IDF baseline (serving/baseline_pyfunc.py) has its own."""
        return text_probabilities(self.network, self.encoder, self.max_length, texts, self.base, self.base_order)


def text_probabilities(network: Any, encoder: Any, max_length: int, texts: list[str], base: Any = None,
                       base_order: list[int] | None = None) -> np.ndarray:
    """A text classifier's label probabilities [B, C]: `texts` encoded to at most `max_length` tokens and, for a
    `base` variant, its base model's log-probabilities (columns `base_order`) added to the network's logits."""
    ids, lengths = encoder.encode_batch(texts, max_length)
    offset = None
    if base is not None:
        offset = torch.from_numpy(base.predict_log_proba(texts)[:, base_order]).float()  # [B, C]
    return network.predict_proba(torch.from_numpy(ids), torch.from_numpy(lengths), offset).numpy()  # [B, C]


def sentiment_signature() -> ModelSignature:
    outputs = [ColSpec(DataType.string, "label"), ColSpec(DataType.double, "score"),
               ColSpec(Map(DataType.double), "scores"), ColSpec(DataType.string, "model_version", required=False)]
    return ModelSignature(inputs=Schema([ColSpec(DataType.string, "text")]), outputs=Schema(outputs))
