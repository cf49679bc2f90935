"""MLflow pyfunc models that take raw input, so the REST endpoint needs no client-side preprocessing.

The network's state_dict, its config and the fitted transform travel as artifacts; the code
travels as code_paths (models/ and pipelines/); dependencies are pinned. Bad input raises
MlflowException(INVALID_PARAMETER_VALUE), which MLflow's scoring server answers with a 400 and the
message: never a 500.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array, Map

from models import ModelConfig, SequenceModel
from pipelines.prepare.features import SeriesTransform, Vocabulary
from pipelines.project import PACKAGE_ROOT

CODE_PATHS = [str(PACKAGE_ROOT / "models"), str(PACKAGE_ROOT / "pipelines")]
PINNED = ["torch", "pytorch-lightning", "mlflow", "numpy", "pandas", "pyyaml", "pydantic"]


def pip_requirements() -> list[str]:
    """Exact versions of what the pyfunc imports; inference is slow and can silently drop torch's build."""
    return [f"{name}=={version(name).split('+')[0]}" for name in PINNED]


def _bad(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def _load_network(context: Any) -> tuple[SequenceModel, dict[str, Any]]:
    spec = json.loads(Path(context.artifacts["spec"]).read_text())
    network = SequenceModel(ModelConfig(**spec["model"]))
    network.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
    network.eval()
    return network, spec


def registered_version(run_id: str | None) -> str | None:
    """The registry version built from this model's training run, so every response names it.

    Looked up once at load time; None before registration (evaluation) or without a registry.
    """
    if not run_id:
        return None
    try:
        versions = mlflow.tracking.MlflowClient().search_model_versions(f"run_id='{run_id}'")
    except Exception:  # a scoring server without a reachable registry still serves; it cannot name its version
        return None
    return str(max(int(v.version) for v in versions)) if versions else None


class ForecastModel(mlflow.pyfunc.PythonModel):
    """Rows of {series_id?, history: [floats], <covariate>: [floats]...} -> {series_id, forecast}.

    `params.horizon` (default from params.yaml serving.default_horizon) sets the forecast length.
    """

    def load_context(self, context: Any) -> None:
        torch.set_num_threads(1)
        self.network, spec = _load_network(context)
        self.transform = SeriesTransform.load(Path(context.artifacts["transform"]))
        self.limits = spec["serving"]
        self.version = registered_version(spec.get("run_id"))

    def _history(self, row: dict[str, Any], index: int) -> np.ndarray:
        columns = ["history", *self.transform.columns[1:]]
        series = []
        for column in columns:
            value = row.get(column)
            if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
                raise _bad(f"record {index}: field {column!r} is required (a list of numbers)")
            if not isinstance(value, (list, tuple, np.ndarray)):
                raise _bad(f"record {index}: field {column!r} must be a list of numbers, got {type(value).__name__}")
            if any(isinstance(v, (bool, str, bytes)) for v in value):  # numpy would turn true / "1.5" into numbers
                raise _bad(f"record {index}: field {column!r} must be a list of numbers (no strings or booleans)")
            try:
                values = np.asarray(list(value), dtype=np.float64)
            except (TypeError, ValueError):
                raise _bad(f"record {index}: field {column!r} must be a list of numbers") from None
            if values.ndim != 1:
                raise _bad(f"record {index}: field {column!r} must be a flat list of numbers, not nested lists")
            if not np.isfinite(values).all():
                raise _bad(f"record {index}: field {column!r} contains NaN or infinite values")
            series.append(values)
        lengths = {len(s) for s in series}
        if len(lengths) != 1:
            raise _bad(f"record {index}: history and covariate lists must have the same length, got {sorted(lengths)}")
        length = lengths.pop()
        if length < self.limits["min_history"]:
            raise _bad(f"record {index}: history has {length} values; at least {self.limits['min_history']} are needed")
        if length > self.limits["max_history"]:
            raise _bad(f"record {index}: history has {length} values; at most {self.limits['max_history']} are accepted")
        return np.stack(series, axis=1)

    def _horizon(self, params: dict[str, Any] | None) -> int:
        horizon = (params or {}).get("horizon", self.limits["default_horizon"])
        if isinstance(horizon, float) and horizon.is_integer():
            horizon = int(horizon)
        if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool):
            raise _bad(f"params.horizon must be an integer, got {horizon!r}")
        if not 1 <= horizon <= self.limits["max_horizon"]:
            raise _bad(f"params.horizon must be between 1 and {self.limits['max_horizon']}, got {horizon}")
        return int(horizon)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or "history" not in model_input.columns:
            raise _bad("each record needs a 'history' field: a list of numbers, oldest first")
        if model_input.empty:
            raise _bad("no records to forecast")
        horizon = self._horizon(params)
        results = []
        for index, row in enumerate(model_input.to_dict("records")):
            values = self._history(row, index)
            inputs = torch.from_numpy(self.transform.to_inputs(values)).unsqueeze(0)  # [1, T, F]
            with torch.no_grad():
                predicted = self.network.forecast(inputs, horizon)  # [1, H, 1]
            forecast = self.transform.to_target(predicted[0, :, 0].numpy(), float(values[-1, 0]))
            results.append({
                "series_id": _series_id(row.get("series_id"), index),
                "forecast": [float(v) for v in forecast],
                "model_version": self.version,
            })
        return pd.DataFrame(results)


def _series_id(value: Any, index: int) -> str:
    """The optional series_id as a string ("main" when absent); a list, object or boolean is refused."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "main"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, np.integer)):
        raise _bad(f"record {index}: field 'series_id' must be a string, got {type(value).__name__}")
    return str(value)


def forecast_signature(covariates: list[str], default_horizon: int) -> ModelSignature:
    inputs = [ColSpec(DataType.string, "series_id", required=False), ColSpec(Array(DataType.double), "history")]
    inputs += [ColSpec(Array(DataType.double), c) for c in covariates]
    outputs = [ColSpec(DataType.string, "series_id"), ColSpec(Array(DataType.double), "forecast"),
               ColSpec(DataType.string, "model_version", required=False)]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs),
                          params=ParamSchema([ParamSpec("horizon", DataType.long, default_horizon)]))


class SentimentModel(mlflow.pyfunc.PythonModel):
    """Rows of {text} -> {label, score, scores: {label: probability}, model_version}.

    A text longer than serving.max_text_length characters is rejected with a 400, or scored on its
    first max_text_length characters, as serving.over_length says; tokens past prepare.max_length
    are always truncated (the network never saw longer sequences).
    """

    def load_context(self, context: Any) -> None:
        torch.set_num_threads(1)
        self.network, spec = _load_network(context)
        self.vocabulary = Vocabulary.load(Path(context.artifacts["vocabulary"]))
        self.labels, self.max_length = spec["labels"], spec["max_length"]
        self.limits = spec["serving"]
        self.version = registered_version(spec.get("run_id"))

    def _texts(self, model_input: Any) -> list[str]:
        if not isinstance(model_input, pd.DataFrame) or "text" not in model_input.columns:
            raise _bad("each record needs a 'text' field (a non-empty string)")
        if model_input.empty:
            raise _bad("no records to score")
        if len(model_input) > self.limits["max_records"]:
            raise _bad(f"{len(model_input)} records in one request; at most {self.limits['max_records']} are accepted")
        limit, texts = self.limits["max_text_length"], []
        for index, text in enumerate(model_input["text"].tolist()):
            if text is None or (isinstance(text, float) and math.isnan(text)):
                raise _bad(f"record {index}: field 'text' is required (a non-empty string)")
            if not isinstance(text, str):
                raise _bad(f"record {index}: field 'text' must be a string, got {type(text).__name__}")
            if not text.strip():
                raise _bad(f"record {index}: field 'text' is empty")
            if len(text) > limit:
                if self.limits["over_length"] == "reject":
                    raise _bad(f"record {index}: field 'text' has {len(text)} characters; at most {limit} are accepted")
                text = text[:limit]
            texts.append(text)
        return texts

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        texts = self._texts(model_input)
        ids, lengths = self.vocabulary.encode_batch(texts, self.max_length)
        probabilities = self.network.predict_proba(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()  # [B, C]
        rows = []
        for p in probabilities:
            best = int(np.argmax(p))
            rows.append({"label": self.labels[best], "score": float(p[best]),
                         "scores": {label: float(v) for label, v in zip(self.labels, p)},
                         "model_version": self.version})
        return pd.DataFrame(rows)


def sentiment_signature() -> ModelSignature:
    outputs = [ColSpec(DataType.string, "label"), ColSpec(DataType.double, "score"),
               ColSpec(Map(DataType.double), "scores"), ColSpec(DataType.string, "model_version", required=False)]
    return ModelSignature(inputs=Schema([ColSpec(DataType.string, "text")]), outputs=Schema(outputs))


def log_pyfunc(directory: Path, python_model: mlflow.pyfunc.PythonModel, network: SequenceModel,
               spec: dict[str, Any], extra_artifacts: dict[str, Path], signature: ModelSignature,
               input_example: pd.DataFrame) -> str:
    """Log a pyfunc to the active run: weights + spec (model config, serving limits, run id) + the
    fitted transform files, with this code and pinned dependencies. Returns its models:/m-... URI."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), directory / "weights.pt")
    spec = {**spec, "run_id": mlflow.active_run().info.run_id}
    (directory / "spec.json").write_text(json.dumps(spec, indent=2))
    artifacts = {"weights": str(directory / "weights.pt"), "spec": str(directory / "spec.json")}
    artifacts.update({name: str(path) for name, path in extra_artifacts.items()})
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=python_model,
        artifacts=artifacts,
        code_paths=CODE_PATHS,
        pip_requirements=pip_requirements(),
        signature=signature,
        input_example=input_example,
    )
    return info.model_uri
