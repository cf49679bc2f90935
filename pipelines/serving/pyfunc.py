"""MLflow pyfunc models that take raw input, so the REST endpoint needs no client-side preprocessing.

The network's state_dict, its config and the fitted transform travel as artifacts; the code
travels as code_paths (models/ and pipelines/); dependencies are pinned. Bad input raises
MlflowException(INVALID_PARAMETER_VALUE), which MLflow's scoring server answers with a 400 and the
message: never a 500.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array, Map
from pandas.tseries.frequencies import to_offset

from models import ModelConfig, SequenceModel
from models.inference import DeadlineExceeded, stepper_for
from pipelines.data.calendar import outside_range, parse_timestamp
from pipelines.evaluate.intervals import (
    CONFORMAL,
    DEFAULT_LEVELS,
    PATH_SEED,
    SAMPLE_PATHS,
    ConformalIntervals,
    LevelError,
    describe_quantiles,
    parse_levels,
    path_forecast,
    read_calibration,
)
from pipelines.prepare.features import SeriesTransform
from pipelines.prepare.future_inputs import LEAD, FutureInputs
from pipelines.project import PACKAGE_ROOT

CODE_PATHS = [str(PACKAGE_ROOT / "models"), str(PACKAGE_ROOT / "pipelines")]
PINNED = ["torch", "pytorch-lightning", "mlflow", "numpy", "pandas", "pyyaml", "pydantic", "tokenizers"]


def pip_requirements() -> list[str]:
    """Exact versions of what the pyfunc imports; inference is slow and can silently drop torch's build."""
    return [f"{name}=={version(name).split('+')[0]}" for name in PINNED]


def bad_input(message: str) -> MlflowException:
    """A 400 with `message`: MLflow's scoring server and the gateway answer INVALID_PARAMETER_VALUE so."""
    return MlflowException.invalid_parameter_value(message)


def load_network(context: Any) -> tuple[SequenceModel, dict[str, Any]]:
    spec = json.loads(Path(context.artifacts["spec"]).read_text())
    network = SequenceModel(ModelConfig(**spec["model"]))
    network.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
    network.eval()
    return network, spec


def registered_version(run_id: str | None) -> str | None:
    """The registry version built from this model's training run, so every response names it.

    Looked up once at load time; None before registration (evaluation) or without a registry. A local
    store that does not exist is no registry: asking it would create it, and a model loaded from a path in
    Python with no tracking configured left a new mlflow.db (MLflow's default URI) in the working directory.
    """
    if not run_id or not _store_exists(mlflow.get_tracking_uri()):
        return None
    try:
        versions = mlflow.tracking.MlflowClient().search_model_versions(f"run_id='{run_id}'")
    except Exception:  # a scoring server without a reachable registry still serves; it cannot name its version
        return None
    return str(max(int(v.version) for v in versions)) if versions else None


def _store_exists(uri: str) -> bool:
    """False for a SQLite or file store whose file or folder is missing (MlflowClient would create it)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).exists()
    if uri.startswith("file:") or "://" not in uri:
        return Path(uri[len("file://"):] if uri.startswith("file://") else uri.removeprefix("file:")).exists()
    return True


@dataclass(frozen=True)
class Prepared:
    """One request, validated whole and ready to be scored beside others (pipelines/serving/batching.py): a bad
    request is refused alone, before it can share a batch. `steps` is what scoring it costs in recurrent steps
    (forecast: the records' history + horizon, the horizon times SAMPLE_PATHS for a quantile variant), checked
    against serving.max_request_steps."""

    rows: list[Any]
    steps: int

    @property
    def records(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class ForecastRow:
    """One validated forecast record, with the request's horizon and levels."""

    series_id: str
    history: dict[str, np.ndarray]
    future: dict[str, np.ndarray]
    last: pd.Timestamp | None
    horizon: int
    levels: list[float]


class ForecastModel(mlflow.pyfunc.PythonModel):
    """Rows of {series_id?, history: [floats], <covariate>: [floats]..., last_timestamp?, future_<known>: [floats]}
    -> {series_id, forecast, intervals?, timestamps?}.

    `params.horizon` (default from params.yaml serving.default_horizon) sets the forecast length. With
    `last_timestamp` (the history's last step) the answer carries the horizon's `timestamps` on the
    task's calendar; a model with calendar features needs it. A known covariate (known_covariates in
    params.yaml) sends its history like any covariate plus `future_<name>`: one value per horizon step.
    `params.level` (default serving.levels) lists the coverage levels of the `intervals` each prediction
    carries: conformal, from the calibration evaluate wrote into the model (pipelines/evaluate/intervals.py); a
    quantile variant's from its own sample paths, whose median is then the forecast.
    """

    batching: ClassVar[bool] = True  # prepare / predict_prepared: the gateway scores requests together

    def load_context(self, context: Any) -> None:
        torch.set_num_threads(1)
        network, spec = self._load_predictor(context)
        self._assemble(network, spec, Path(context.artifacts["transform"]),
                       read_calibration(Path(context.artifacts["spec"])))

    @classmethod
    def around(cls, network: SequenceModel, spec: dict[str, Any], transform: Path) -> ForecastModel:
        """The pyfunc of a network still in training (its weights shared, not copied), uncalibrated and
        unregistered: what train scores on the validation origins after each epoch, as evaluate will."""
        model = cls()
        model._assemble(network, spec, transform, None)
        return model

    def _assemble(self, network: Any, spec: dict[str, Any], transform: Path,
                  calibration: dict[str, Any] | None) -> None:
        self.network = network
        self.stepper = stepper_for(self.network)  # None: not one steppable network (a baseline, an ensemble)
        # a quantile variant (several outputs per step): forecast and intervals from sample paths
        self.quantiles = self.stepper.outputs if self.stepper is not None and self.stepper.outputs > 1 else None
        self.transform = SeriesTransform.load(transform)
        self.limits = spec["serving"]
        self.version = registered_version(spec.get("run_id"))
        # Models logged before calendars were recorded have no frequency: they forecast without timestamps.
        self.future = FutureInputs.from_dict(spec["calendar"]) if spec.get("calendar") else None
        self.past = [c for c in self.transform.columns[1:] if not c.endswith(LEAD)]
        self.known = list(self.future.known) if self.future else []
        conformal = calibration and calibration["method"] == CONFORMAL and not self.quantiles
        self.intervals = ConformalIntervals(calibration) if conformal else None
        self.uncertainty = {"intervals": describe_quantiles(self.quantiles) if self.quantiles else
                            self.intervals.describe() if self.intervals else
                            "none: this model was logged without a calibration (evaluate writes one)"}

    def _load_predictor(self, context: Any) -> tuple[Any, dict[str, Any]]:
        """What forecasts and the logged spec; a baseline or an ensemble (serving/baseline_pyfunc.py)
        loads its own predictor behind the same request contract."""
        return load_network(context)

    def _values(self, row: dict[str, Any], index: int, column: str) -> np.ndarray:
        value = row.get(column)
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            raise bad_input(f"record {index}: field {column!r} is required (a list of numbers)")
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise bad_input(f"record {index}: field {column!r} must be a list of numbers, got {type(value).__name__}")
        if any(isinstance(v, (bool, str, bytes)) for v in value):  # numpy would turn true / "1.5" into numbers
            raise bad_input(f"record {index}: field {column!r} must be a list of numbers (no strings or booleans)")
        try:
            values = np.asarray(list(value), dtype=np.float64)
        except (TypeError, ValueError):
            raise bad_input(f"record {index}: field {column!r} must be a list of numbers") from None
        if values.ndim != 1:
            raise bad_input(f"record {index}: field {column!r} must be a flat list of numbers, not nested lists")
        if not np.isfinite(values).all():
            raise bad_input(f"record {index}: field {column!r} contains NaN or infinite values")
        return values

    def _history(self, row: dict[str, Any], index: int) -> dict[str, np.ndarray]:
        """The history and every covariate's past values, by field, all of one length within the limits."""
        series = {column: self._values(row, index, column) for column in ["history", *self.past, *self.known]}
        lengths = {len(s) for s in series.values()}
        if len(lengths) != 1:
            raise bad_input(f"record {index}: history and covariate lists must have the same length, "
                            f"got {sorted(lengths)}")
        length = lengths.pop()
        if length < self.limits["min_history"]:
            raise bad_input(f"record {index}: history has {length} values; "
                            f"at least {self.limits['min_history']} are needed")
        if length > self.limits["max_history"]:
            raise bad_input(f"record {index}: history has {length} values; "
                            f"at most {self.limits['max_history']} are accepted")
        if self.transform.positive and (series["history"] <= 0).any():
            raise bad_input(f"record {index}: field 'history' must be positive: this model forecasts the "
                            f"{self.transform.target_transform} of its target (prepare.transform)")
        return series

    def _future(self, row: dict[str, Any], index: int, horizon: int) -> dict[str, np.ndarray]:
        """Each known covariate's values over the horizon, by covariate name: exactly `horizon` of them."""
        future = {}
        for name, field in zip(self.known, self.future.future_fields if self.future else []):
            values = self._values(row, index, field)
            if len(values) != horizon:
                raise bad_input(f"record {index}: field {field!r} has {len(values)} values; the horizon needs "
                                f"{horizon} (the future values of known covariate {name!r}, one per step)")
            future[name] = values
        return future

    def _last_timestamp(self, row: dict[str, Any], index: int) -> pd.Timestamp | None:
        """The history's last timestamp (UTC when it has an offset), on the task's calendar; None if absent."""
        value = row.get("last_timestamp")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if self.future is not None and self.future.cycles:
                raise bad_input(f"record {index}: field 'last_timestamp' is required: this model reads calendar "
                                "features (send the history's last timestamp, e.g. \"2024-06-01T00:00:00\")")
            return None
        if self.future is None:
            raise bad_input(f"record {index}: field 'last_timestamp' is not supported by this model (logged without a "
                       "calendar frequency)")
        stamp = parse_timestamp(value)
        if stamp is None and outside_range(value):
            raise bad_input(f"record {index}: field 'last_timestamp' {value!r} is outside the timestamps a model can "
                            f"forecast from ({pd.Timestamp.min:%Y-%m-%d} to {pd.Timestamp.max:%Y-%m-%d})")
        if stamp is None:
            raise bad_input(f"record {index}: field 'last_timestamp' must be an ISO 8601 timestamp string, "
                            f"got {value!r}")
        if self.future.on_grid(stamp):
            return stamp
        local = parse_timestamp(value, local=True)  # a date at local midnight sent with its offset: a local date
        if local != local.normalize() or not self.future.on_grid(local):
            raise bad_input(f"record {index}: field 'last_timestamp' {value!r} is not on the model's calendar "
                       f"(frequency {self.future.freq!r})")
        return local

    def _check_span(self, last: pd.Timestamp, length: int, horizon: int, index: int) -> None:
        """Refuse a history or horizon whose calendar runs past the timestamps pandas can hold (a `last_timestamp`
        of 2262-04-05 with 10 days ahead): the horizon's timestamps raised OutOfBoundsDatetime, a 500."""
        step = to_offset(self.future.freq)
        try:
            last + step * horizon, last - step * (length - 1)
        except (OverflowError, pd.errors.OutOfBoundsDatetime):
            raise bad_input(f"record {index}: field 'last_timestamp' {last.isoformat()} with {length} history steps "
                            f"and horizon {horizon} runs outside the timestamps a model can forecast "
                            f"({pd.Timestamp.min:%Y-%m-%d} to {pd.Timestamp.max:%Y-%m-%d})") from None

    def _horizon(self, params: dict[str, Any] | None) -> int:
        """`params.horizon` within 1..serving.max_horizon. An integer literal too large for a float (thousands of
        digits) arrives as infinity (pipelines/serving/requests.py): out of range, not a non-integer."""
        horizon, limit = (params or {}).get("horizon", self.limits["default_horizon"]), self.limits["max_horizon"]
        if isinstance(horizon, float) and math.isinf(horizon):
            side = "over the limit" if horizon > 0 else "below 1"
            raise bad_input(f"params.horizon must be between 1 and {limit}, got a number {side}, too large to show")
        if isinstance(horizon, float) and horizon.is_integer():
            horizon = int(horizon)
        if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool):
            raise bad_input(f"params.horizon must be an integer, got {horizon!r}")
        if not 1 <= horizon <= limit:
            raise bad_input(f"params.horizon must be between 1 and {limit}, got {_shortened(int(horizon))}")
        return int(horizon)

    def _levels(self, params: dict[str, Any] | None) -> list[float]:
        """The requested coverage levels (serving.levels when none are sent). A model without a calibration
        (only between train and evaluate: every registered one has it) validates them and draws none; a quantile
        variant draws its own."""
        try:
            levels = parse_levels((params or {}).get("level", self.limits.get("levels", DEFAULT_LEVELS)))
        except LevelError as e:
            raise bad_input(str(e)) from None
        return levels if self.intervals or self.quantiles else []

    def _inputs(self, history: dict[str, np.ndarray], future: dict[str, np.ndarray], last: pd.Timestamp | None,
                horizon: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Network-space inputs: the history [T', F] and, for a model that reads inputs known ahead, the steps
        after it [H - 1, F]. Covariates known only up to the origin are held at their last network-space value;
        the lead columns of the steps after the history come from `future` and the calendar."""
        raw = np.stack([history[c] for c in ["history", *self.past]], axis=1)  # [T, 1 + P]
        length = len(raw)
        if self.future is None or not self.future.columns:
            return self.transform.to_inputs(raw), None  # [T', F]
        held = np.repeat(raw[-1:], horizon - 1, axis=0)  # [H - 1, 1 + P]
        known = {k: history[k] for k in self.known}
        lead = self.future.request_lead(last, known, future, length, horizon)  # [T + H - 1, L]
        z = self.transform.to_inputs(np.concatenate([np.concatenate([raw, held]), lead], axis=1),
                                     context=length)  # [T' + H - 1, F], window statistics of the history only
        split = length - self.transform.lost_steps
        past, ahead = z[:split], z[split:].copy()  # [T', F], [H - 1, F]
        ahead[:, 1:1 + len(self.past)] = past[-1, 1:1 + len(self.past)]
        return past, ahead

    def _forecast(self, history: dict[str, np.ndarray], future: dict[str, np.ndarray], last: pd.Timestamp | None,
                  horizon: int) -> np.ndarray:
        """Raw-unit forecast [H] of one record by the network's own forecast: what an ensemble calls on its
        members, and what a network the batched stepper cannot run (models/inference.py) falls back to. A quantile
        variant's is the median of its sample paths."""
        if self.quantiles:
            return self._sampled([ForecastRow("", history, future, last, horizon, [])], None)[0][0]
        past, ahead = self._inputs(history, future, last, horizon)
        with torch.no_grad():
            ahead = None if ahead is None else torch.from_numpy(ahead).unsqueeze(0)  # [1, H - 1, F]
            predicted = self.network.forecast(torch.from_numpy(past).unsqueeze(0), horizon, ahead)  # [1, H, 1]
        return self.transform.to_target(predicted[0, :, 0].numpy(), history["history"])

    def _forecast_rows(self, rows: list[ForecastRow], deadline: float | None) -> list[np.ndarray]:
        """Raw-unit forecasts [h_i] of many records: stepped together, one forward per horizon step
        (models/inference.py), or record by record through `_forecast` for a predictor that is not one steppable
        network (a baseline, an ensemble). Past `deadline` (time.monotonic()) the work stops: DeadlineExceeded."""
        if self.stepper is None:
            forecasts = []
            for row in rows:
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded("the forecast ran past its deadline and was abandoned")
                forecasts.append(self._forecast(row.history, row.future, row.last, row.horizon))
            return forecasts
        inputs = [self._inputs(r.history, r.future, r.last, r.horizon) for r in rows]
        predicted = self.stepper.forecast([torch.from_numpy(past) for past, _ in inputs], [r.horizon for r in rows],
                                          [None if ahead is None else torch.from_numpy(ahead) for _, ahead in inputs],
                                          deadline)  # [h_i] per row
        return [self.transform.to_target(p.numpy(), r.history["history"]) for p, r in zip(predicted, rows)]

    def _sampled(self, rows: list[ForecastRow], deadline: float | None) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """(forecast [h_i], intervals at the row's levels) of many records by a quantile variant: SAMPLE_PATHS
        paths each, stepped together (models/inference.py), brought to raw units path by path, so differencing
        and scaling act on whole paths, then their per-step median and empirical quantiles."""
        inputs = [self._inputs(r.history, r.future, r.last, r.horizon) for r in rows]
        paths = self.stepper.sample_paths([torch.from_numpy(past) for past, _ in inputs], [r.horizon for r in rows],
                                          SAMPLE_PATHS, PATH_SEED,
                                          [None if ahead is None else torch.from_numpy(ahead) for _, ahead in inputs],
                                          deadline)  # [N, h_i] per row, network space
        return [path_forecast(self.transform.to_target(p.numpy(), r.history["history"]), r.levels)
                for p, r in zip(paths, rows)]  # per row: paths [N, h_i] raw, in one call -> (median, bands)

    def prepare(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Prepared:
        """Validate a request whole (every record, its params) into rows ready to forecast beside others."""
        if not isinstance(model_input, pd.DataFrame) or "history" not in model_input.columns:
            raise bad_input("each record needs a 'history' field: a list of numbers, oldest first")
        if model_input.empty:
            raise bad_input("no records to forecast")
        horizon, levels = self._horizon(params), self._levels(params)
        rows = []
        for index, row in enumerate(model_input.to_dict("records")):
            history = self._history(row, index)
            future, last = self._future(row, index, horizon), self._last_timestamp(row, index)
            if last is not None:
                self._check_span(last, len(history["history"]), horizon, index)
            rows.append(ForecastRow(_series_id(row.get("series_id"), index), history, future, last, horizon, levels))
        # a quantile variant warms each record once, then steps SAMPLE_PATHS paths over the horizon
        paths = SAMPLE_PATHS if self.quantiles else 1
        return Prepared(rows, sum(len(r.history["history"]) + horizon * paths for r in rows))

    def predict_prepared(self, requests: list[Prepared], deadline: float | None = None) -> list[list[dict[str, Any]]]:
        """The records of every request, forecast together; each request's predictions, in order."""
        rows = [row for r in requests for row in r.rows]
        if self.quantiles:
            answers = iter(self._sampled(rows, deadline))
        else:
            answers = iter((f, self.intervals.bounds(f, row.history["history"], row.levels) if row.levels else {})
                           for f, row in zip(self._forecast_rows(rows, deadline), rows))
        return [[self._result(row, *next(answers)) for row in r.rows] for r in requests]

    def _result(self, row: ForecastRow, forecast: np.ndarray, intervals: dict[str, Any]) -> dict[str, Any]:
        result = {"series_id": row.series_id, "forecast": [float(v) for v in forecast], "model_version": self.version}
        if row.levels:
            result["intervals"] = intervals
        if row.last is not None:
            result["timestamps"] = [t.isoformat() for t in self.future.horizon_stamps(row.last, row.horizon)]
        return result

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return pd.DataFrame(self.predict_prepared([self.prepare(model_input, params)])[0])


def _shortened(number: int, digits: int = 12) -> str:
    """An integer as written, or its first and last digits and its length past `digits` digits: a message that
    echoes a 300-digit horizon whole buries what it says."""
    text = str(number)
    length = len(text.lstrip("-"))
    return text if length <= digits else f"{text[:4]}...{text[-3:]} ({length} digits)"


def _series_id(value: Any, index: int) -> str:
    """The optional series_id as a string ("main" when absent); a list, object or boolean is refused."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "main"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, np.integer)):
        raise bad_input(f"record {index}: field 'series_id' must be a string, got {type(value).__name__}")
    return str(value)


def forecast_signature(covariates: list[str], default_horizon: int, future: FutureInputs | None = None,
                       levels: list[float] | None = None) -> ModelSignature:
    """The forecast contract: history and covariates; with a calendar, `last_timestamp` in and `timestamps`
    out; with known covariates, their past lists and `future_<name>` lists; `params.level` (a list, default
    `levels`) in and `intervals` {level: {lower, upper}} out."""
    inputs = [ColSpec(DataType.string, "series_id", required=False), ColSpec(Array(DataType.double), "history")]
    inputs += [ColSpec(Array(DataType.double), c) for c in covariates]
    outputs = [ColSpec(DataType.string, "series_id"), ColSpec(Array(DataType.double), "forecast"),
               ColSpec(DataType.string, "model_version", required=False),
               ColSpec(Map(Map(Array(DataType.double))), "intervals", required=False)]
    if future is not None:
        inputs += [ColSpec(Array(DataType.double), c) for c in [*future.known, *future.future_fields]]
        inputs.append(ColSpec(DataType.string, "last_timestamp", required=bool(future.cycles)))
        outputs.append(ColSpec(Array(DataType.string), "timestamps", required=False))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs),
                          params=ParamSchema([ParamSpec("horizon", DataType.long, default_horizon),
                                              ParamSpec("level", DataType.double,
                                                        [float(v) for v in levels or DEFAULT_LEVELS], shape=(-1,))]))


def log_pyfunc(directory: Path, python_model: mlflow.pyfunc.PythonModel, network: SequenceModel,
               spec: dict[str, Any], extra_artifacts: dict[str, Path], signature: ModelSignature,
               input_example: pd.DataFrame, requirements: list[str] | None = None) -> str:
    """Log a pyfunc to the active run: weights + spec (model config, serving limits, run id) + the
    fitted transform files, with this code and pinned dependencies (`requirements`, default
    `pip_requirements()`). Returns its models:/m-... URI."""
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
        pip_requirements=requirements or pip_requirements(),
        signature=signature,
        input_example=input_example,
    )
    return info.model_uri
