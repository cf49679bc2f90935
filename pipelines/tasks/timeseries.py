"""The time-series kind: forecasting a target column, optionally with covariates and several series.

Raw rows are [series_id, timestamp, target, *covariates]; prepare puts each series on its regular
time grid, fills gaps, labels the last steps of every series validation and holdout (chronological:
a model never sees its future) and fits the scaling on the training steps. Scoring is
rolling-origin: forecasts from several origins inside a segment, each from the whole history
before it, beside a seasonal-naive forecast from the same origins.

Training, serving and plotting libraries are imported where they are used: validation and merging
also run in `seqops data add`, which should not pay for importing torch, MLflow or matplotlib.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from pipelines.config import Params, TimeSeriesTask, Variant
from pipelines.data.atomic import write_atomic
from pipelines.data.validate import InvalidDataError, fill_gaps, regular_grid, validate_timeseries
from pipelines.prepare.calendar_features import calendar_cycles
from pipelines.prepare.features import SeriesTransform
from pipelines.prepare.future_inputs import FutureInputs
from pipelines.tasks.base import Calibration, Scored, shared_model_config, write_counts
from pipelines.tasks.defaults import resolve, task_frequency
from pipelines.tasks.settings import describe, write_settings

if TYPE_CHECKING:
    from models import SequenceModel
    from pipelines.train.datamodules import SeriesDataModule
    from pipelines.train.streaming import StatefulSeriesDataModule

SERIES_FILE = "series.parquet"
TRANSFORM_FILE = "transform.json"
OBSERVED = "observed"  # series.parquet's column: the target was measured at that step (not a filled gap)
FORECAST_CALL_STEPS = 1_000_000  # history values in one call of rolling_forecasts' forecaster (~40 MB as lists)
EXAMPLE_HISTORY_STEPS = 104  # the example REST request's history (at least min_history): two years of weekly data

# request rows and a horizon -> one forecast [H] per row, and its intervals ({} when none were asked for)
Forecaster = Callable[[pd.DataFrame, int], tuple[list[np.ndarray], list[dict[str, Any]]]]


@dataclass(frozen=True)
class SeriesForecasts:
    """One series' rolling-origin forecasts inside a segment: what its metrics and its plot are made of."""

    series_id: str
    timestamps: pd.DatetimeIndex  # [T], the prepared grid
    values: np.ndarray            # [T] target
    n_train: int                  # steps of the training split at the start
    first: int                    # the segment's first step
    end: int                      # one past the segment's last step
    forecasts: list[tuple[int, np.ndarray]]  # (origin step, forecast [H])
    intervals: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per forecast: {level: {lower, upper}}
    observed: np.ndarray | None = None  # [T] bool: the target was measured there, not filled (None: everywhere)

    def actual(self, origin: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """The actuals [<= H] from `origin` inside the segment, and which of them were measured [<= H] bool."""
        stop = min(origin + horizon, self.end)
        return self.values[origin:stop], (np.ones(stop - origin, dtype=bool) if self.observed is None
                                          else self.observed[origin:stop])


def _mase_scale(train: np.ndarray, season: int) -> float:
    """The in-sample seasonal-naive MAE of a series' training values [n_train]; for an exactly seasonal series
    (zero) the one-step naive MAE, and for one constant over training a floor of 1e-12 of its size, which keeps
    its MASE finite (0 for an exact forecast, very large otherwise) rather than a division by zero."""
    for lag in (season, 1):
        if len(train) > lag and (scale := float(np.mean(np.abs(train[lag:] - train[:-lag])))) > 0:
            return scale
    return 1e-12 * max(float(np.max(np.abs(train))) if len(train) else 0.0, 1.0)


def pyfunc_forecaster(model: Any, levels: list[float] | None = None) -> Forecaster:
    """A loaded forecast pyfunc as a Forecaster: request rows and a horizon in, one forecast per row out,
    with its intervals at `levels` when the model is calibrated (else {} per forecast)."""
    def forecast(rows: pd.DataFrame, horizon: int) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        out = model.predict(rows, params={"horizon": horizon, **({"level": levels} if levels else {})})
        intervals = out["intervals"].tolist() if "intervals" in out else [{}] * len(out)
        return [np.asarray(v, dtype=np.float64) for v in out["forecast"]], intervals
    return forecast


class TimeSeriesKind:
    """Forecasting tasks (`kind: timeseries`); `forecast` is the built-in one."""

    name = "timeseries"
    selection_method = "rolling-origin cross-validation"

    def __init__(self, spec: TimeSeriesTask) -> None:
        self.spec = spec
        self._datamodules: dict[tuple[Path, str], SeriesDataModule] = {}

    @property
    def columns(self) -> list[str]:
        """Value columns of the raw table, target first, then covariates and known covariates."""
        return [self.spec.target, *self.spec.covariates, *self.spec.known_covariates]

    @property
    def future(self) -> FutureInputs:
        """The resolved task's frequency and the inputs it knows over the horizon."""
        spec = self.spec
        cycles = calendar_cycles(spec.freq) if spec.calendar_features else []
        return FutureInputs(spec.freq, tuple(spec.known_covariates), tuple(cycles))

    @property
    def network_columns(self) -> list[str]:
        """The network's features in order: target, covariates known up to the origin, lead columns."""
        return [self.spec.target, *self.spec.covariates, *self.future.columns]

    def holdout_split(self) -> None:
        return None

    def appended_gaps(self, existing: pd.DataFrame, merged: pd.DataFrame) -> list[str]:
        """Per series that had rows before, the grid steps after its old last row that the merged table leaves
        without a row: prepare fills them (`gap_fill`) without a word, and append can never add them later."""
        freq = task_frequency(self.spec, merged)
        lines = []
        for sid, old_rows in existing.groupby("series_id", sort=False):
            last = old_rows["timestamp"].max()
            stamps = merged.loc[(merged["series_id"] == sid) & (merged["timestamp"] > last), "timestamp"]
            if stamps.empty:
                continue
            slots = pd.date_range(last, stamps.max(), freq=freq)[1:]  # [steps after the old end]
            missing = slots.difference(pd.DatetimeIndex(stamps))
            if len(missing):
                where = f"series {sid!r}: " if self.spec.series_id else ""
                lines.append(f"{where}{len(missing)} step{'s' if len(missing) > 1 else ''} without a row after the "
                             f"raw data's last one ({last}), from {missing[0]} to {missing[-1]}: prepare fills them "
                             f"({self.spec.gap_fill}); append cannot add them later, so add those rows now if you "
                             f"have them")
        return lines

    def outputs(self) -> None:
        return None  # a forecast, in the target's units: what a renamed target changes, `_required_inputs` sees

    def read_settings(self) -> dict[str, Any]:
        spec = self.spec
        return {"timestamp": spec.timestamp, "target": spec.target, "covariates": list(spec.covariates),
                "known_covariates": list(spec.known_covariates), "series_id": spec.series_id}

    def validate(self, frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
        spec = self.spec
        clean = validate_timeseries(frame, timestamp=spec.timestamp, target=spec.target,
                                    covariates=[*spec.covariates, *spec.known_covariates],
                                    series_id=spec.series_id, name=name)
        return clean, {}

    def check_preparable(self, raw: pd.DataFrame, name: str) -> None:
        """What prepare refuses, on settings derived from `raw` as prepare derives them: a series too short for
        the holdout, validation and min_history (the shortest series bounds derived ones), or every series
        constant over its training split."""
        spec, _ = resolve(self.spec, raw)
        probe = type(self)(spec)
        try:
            series = probe.split(fill_gaps(raw, probe.columns, spec.gap_fill, self.spec.freq))
            probe._check_learnable([g.loc[g["split"] == "train", [spec.target]].to_numpy()
                                    for _, g in series.groupby("series_id", sort=False)])
        except InvalidDataError as e:
            raise InvalidDataError(f"{name}: {e}") from None

    def derived_settings(self, raw: pd.DataFrame) -> dict[str, Any]:
        return resolve(self.spec, raw)[1]

    def merge(self, existing: pd.DataFrame, new: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
        """Existing rows, then the file's: every series only grows forward in time on its own grid."""
        spec = self.spec
        if list(existing.columns) != list(new.columns):
            raise InvalidDataError(f"{name}: columns {list(new.columns)} do not match the raw data's "
                                   f"{list(existing.columns)}")
        last = existing.groupby("series_id")["timestamp"].max()
        for position, (sid, stamp) in enumerate(zip(new["series_id"], new["timestamp"])):
            if sid in last.index and stamp <= last[sid]:
                where = f" of series {sid!r}" if spec.series_id else ""
                raise InvalidDataError(
                    f"{name}: column {spec.timestamp!r} row {position + 1}: {stamp} is not after the last timestamp "
                    f"{last[sid]}{where} already in the raw data; append only adds later rows "
                    f"(use --mode replace to rewrite history)")
        merged = pd.concat([existing, new], ignore_index=True)
        # each row labelled by where it comes from, so a grid error names the file's row, not the merged table's
        merged.index = pd.Index([f"the raw data's row {i + 1}" for i in range(len(existing))]
                                + [f"row {i + 1}" for i in range(len(new))])
        order = {sid: i for i, sid in enumerate(pd.unique(merged["series_id"]))}
        merged = merged.sort_values("series_id", key=lambda s: s.map(order), kind="stable")
        for _, group in merged.groupby("series_id", sort=False):
            try:
                regular_grid(group, spec.freq)
            except InvalidDataError as e:
                raise InvalidDataError(f"{name}: after appending, {e}") from None
        return merged.reset_index(drop=True), {}

    def split(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Label each row train / validation / holdout, the last steps of every series held out."""
        spec = self.spec
        holdout, validation = spec.prepare.holdout, spec.prepare.validation
        need = holdout + validation + spec.serving.min_history
        labelled = []
        for sid, group in frame.groupby("series_id", sort=False):
            n = len(group)
            if n < need:
                raise InvalidDataError(f"series {sid!r} has {n} steps; prepare needs at least {need} "
                                       f"(holdout {holdout} + validation {validation} + min_history "
                                       f"{spec.serving.min_history})")
            split = np.array(["train"] * (n - holdout - validation) + ["validation"] * validation
                             + ["holdout"] * holdout)
            labelled.append(group.assign(split=split))
        return pd.concat(labelled, ignore_index=True)

    def prepare(self, raw: pd.DataFrame, prepared: Path) -> None:
        """settings.json (the task with its derived keys), series.parquet (on the calendar grid, gaps
        filled, with split and lead columns), transform.json, splits.json."""
        given = self.spec
        self.spec, derived = resolve(given, raw)
        write_settings(prepared, given, self.spec, derived)
        print(describe(prepared.name, derived), flush=True)
        # the task's own `freq` (None: inferred again, so an off-grid row is reported against the inferred one)
        series = self.split(fill_gaps(raw, self.columns, self.spec.gap_fill, given.freq, observed=OBSERVED))
        if self.future.columns:
            series = pd.concat([series, pd.concat([self.future.training_columns(g) for _, g in
                                                   series.groupby("series_id", sort=False)])], axis=1)
        columns = self.network_columns
        groups = list(series.groupby("series_id", sort=False))
        train = [g.loc[g["split"] == "train", columns].to_numpy() for _, g in groups]
        self._check_learnable(train)
        options_by_file = {TRANSFORM_FILE: self.spec.prepare,
                           **{self.transform_file(v): self.spec.prepare.for_variant(v) for v in self.spec.variants}}
        for file, options in options_by_file.items():
            SeriesTransform.fit(train, columns, bool(options.difference), target_transform=options.transform,
                                season=options.season, seasonal_difference=options.seasonal_difference,
                                smoothing=options.smoothing, scaling=options.scaling, window=options.window,
                                series_ids=[str(sid) for sid, _ in groups]).save(prepared / file)
        write_atomic(series, prepared / SERIES_FILE)
        write_counts(series.groupby(["series_id", "split"], sort=False).size().unstack(fill_value=0),
                     prepared / "splits.json")

    def load_prepared(self, prepared: Path) -> pd.DataFrame:
        return pd.read_parquet(prepared / SERIES_FILE)

    def _check_learnable(self, train: list[np.ndarray]) -> None:
        """Refuse a task whose every series is constant over its training split: there is nothing to learn,
        and MASE, the gate's metric, divides by seasonal naive's error there, zero (it crashed evaluate)."""
        spans = [float(np.ptp(t[:, 0])) for t in train if len(t)]
        size = max((float(np.max(np.abs(t[:, 0]))) for t in train if len(t)), default=0.0)
        if spans and max(spans) <= 1e-9 * max(size, 1.0):
            raise InvalidDataError(f"{self.spec.target!r}: every series is constant over its training split "
                                   f"({train[0][0, 0]:g} in the first): there is nothing to learn, and MASE, which "
                                   f"divides by the error of repeating last season's values (here zero), cannot "
                                   f"compare models")

    @staticmethod
    def transform_file(variant: Variant | None) -> str:
        """The prepared transform `variant` trains and serves with: the task's, or its own when it sets
        prepare options of its own (`transform-<variant>.json`, fitted beside the task's)."""
        return TRANSFORM_FILE if variant is None or variant.prepare is None else f"transform-{variant.name}.json"

    def datamodule(self, prepared: Path, variant: Variant) -> SeriesDataModule | StatefulSeriesDataModule:
        from pipelines.train.datamodules import SeriesDataModule

        spec = self.spec
        key = (prepared, variant.topology or spec.topology, self.transform_file(variant))
        if key not in self._datamodules:
            if spec.training.mode == "stateful":
                from pipelines.train.streaming import StatefulSeriesDataModule

                dm = StatefulSeriesDataModule(prepared, spec.prepare.window, spec.training.batch_size)
            else:
                dm = SeriesDataModule(prepared, key[1], spec.prepare.window, spec.prepare.stride,
                                      spec.training.batch_size, spec.evaluate.horizon, key[2])
            dm.setup("fit")
            self._datamodules[key] = dm
        return self._datamodules[key]

    def model_config(self, variant: Variant, params: Params, datamodule: SeriesDataModule) -> dict[str, Any]:
        """One next value per step, or `variant.quantiles` quantiles of it (the pinball loss, models/heads.py)."""
        return {**shared_model_config(variant, self.spec, params), "input_size": datamodule.transform.num_features,
                "head": "quantile" if variant.quantiles else "regression", "output_size": variant.quantiles or 1,
                "vocab_size": None, "embedding_dim": None}

    def pretrain(self, root: Path, task: str, params: Params) -> dict[str, Any] | None:
        """Series variants start from scratch: nothing to pretrain."""
        return None

    def warm_start(self, root: Path, task: str, network: SequenceModel, variant: Variant) -> list[str]:
        return []

    def selection_score(self, prepared: Path, variant: Variant, config: dict[str, Any], metric: str
                        ) -> Callable[[SequenceModel], float]:
        """`metric` of the network's rolling-origin forecasts of the validation split, made through the
        pyfunc evaluate scores it with (`ForecastModel.around`: the weights in training, no copy).

        Training minimizes one-step errors, and the epoch with the lowest one-step val_loss was often not
        the one that forecast a horizon best: on bench/quality.py's half-hourly series (96 steps ahead) the
        GRU's best val_loss epoch forecast at MASE 1.09 and its first epoch at 0.46."""
        from models import ModelConfig, SequenceModel
        from pipelines.serving.pyfunc import ForecastModel

        frame = self.load_prepared(prepared)
        spec = {"model": config, **self._served_spec(prepared)}
        transform = prepared / self.transform_file(variant)

        def score(network: SequenceModel) -> float:
            if network.device.type != "cpu":  # the pyfunc forecasts on the CPU, as served: score a CPU copy
                weights = {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}
                network = SequenceModel(ModelConfig(**config)).eval()
                network.load_state_dict(weights)
            model = ForecastModel.around(network, spec, transform)
            loaded = SimpleNamespace(predict=partial(model.predict, None))  # as mlflow.pyfunc.load_model's: no context
            return self.forecast_metrics(self.rolling_forecasts(frame, "validation", pyfunc_forecaster(loaded)))[metric]
        return score

    def log_model(self, prepared: Path, directory: Path, network: SequenceModel, config: dict[str, Any],
                  variant: Variant | None = None) -> str:
        """The forecast pyfunc with `variant`'s transform, its example a first stretch of the first series
        (twice min_history at most)."""
        from pipelines.serving.pyfunc import ForecastModel, log_pyfunc

        signature, example = self._contract(prepared)
        return log_pyfunc(directory, ForecastModel(), network, {"model": config, **self._served_spec(prepared)},
                          {"transform": prepared / self.transform_file(variant)}, signature, example)

    def _served_spec(self, prepared: Path) -> dict[str, Any]:
        """What every forecast pyfunc (network, baseline, ensemble) reads at load: limits and calendar, the
        calendar anchored on the prepared series' first timestamp (FutureInputs.on_grid)."""
        import pyarrow.parquet as pq

        first = pq.ParquetFile(prepared / SERIES_FILE).read_row_group(0, columns=["timestamp"]).column(0)[0].as_py()
        anchor = pd.Timestamp(first).isoformat() if first is not None else None
        return {"serving": self.spec.serving.model_dump(), "calendar": {**self.future.as_dict(), "anchor": anchor}}

    def _contract(self, prepared: Path) -> tuple[Any, pd.DataFrame]:
        """The forecast signature and input example every forecast pyfunc of this task is logged with."""
        from pipelines.serving.pyfunc import forecast_signature

        spec = self.spec
        first = self._first_series(self.load_prepared(prepared)).reset_index(drop=True)
        horizon = spec.serving.default_horizon
        origin = min(spec.serving.min_history * 2, len(first) - (horizon if spec.known_covariates else 0))
        return (forecast_signature(list(spec.covariates), horizon, self.future, list(spec.serving.levels)),
                self.request_rows(first, [origin], horizon))

    def request_rows(self, group: pd.DataFrame, origins: list[int], horizon: int) -> pd.DataFrame:
        """One REST record per origin of one prepared series: the history before the origin (target and
        every covariate; its last serving.max_history steps, what a client may send), its last timestamp, and
        the known covariates' values over the horizon."""
        first = {o: max(0, o - self.spec.serving.max_history) for o in origins}  # what a client may send
        rows = pd.DataFrame({"series_id": [str(group["series_id"].iloc[0])] * len(origins),
                             "history": [group[self.spec.target].to_numpy(dtype=np.float64)[first[o]:o].tolist()
                                         for o in origins],
                             "last_timestamp": [pd.Timestamp(group["timestamp"].iloc[o - 1]).isoformat()
                                                for o in origins]})
        for column in [*self.spec.covariates, *self.spec.known_covariates]:
            rows[column] = [group[column].to_numpy(dtype=np.float64)[first[o]:o].tolist() for o in origins]
        for column, field in zip(self.spec.known_covariates, self.future.future_fields):
            rows[field] = [group[column].to_numpy(dtype=np.float64)[o:o + horizon].tolist() for o in origins]
        return rows

    def rolling_forecasts(self, frame: pd.DataFrame, segment: str, forecaster: Forecaster) -> list[SeriesForecasts]:
        """Forecasts from every `evaluate.origin_stride`-th step inside `segment` of each series, each
        made from the whole history before its origin (the last possible origin when the segment is
        shorter than the horizon).

        The records of many series go to `forecaster` in one call, up to FORECAST_CALL_STEPS history values:
        a network's pyfunc steps them as one batch (models/inference.py), where a call per series ran its
        cell once per series, every epoch (TimeSeriesKind.selection_score); the bound keeps a task of
        thousands of long series from building every request at once."""
        horizon, stride = self.spec.evaluate.horizon, self.spec.evaluate.origin_stride
        runs: list[SeriesForecasts] = []
        pending: list[tuple[SeriesForecasts, list[int], pd.DataFrame]] = []  # series whose records await one call

        def forecast_pending() -> None:
            forecasts, intervals = forecaster(pd.concat([rows for *_, rows in pending], ignore_index=True), horizon)
            at = 0
            for run, origins, rows in pending:
                runs.append(dataclasses.replace(run, forecasts=list(zip(origins, forecasts[at:at + len(rows)])),
                                                intervals=list(intervals[at:at + len(rows)])))
                at += len(rows)
            pending.clear()

        steps = 0
        for sid, group in frame.groupby("series_id", sort=False):
            group = group.reset_index(drop=True)
            inside = np.flatnonzero((group["split"] == segment).to_numpy())
            first, end = int(inside[0]), int(inside[-1]) + 1
            origins = list(range(first, end - horizon + 1, stride)) or [max(first, end - horizon)]
            rows = self.request_rows(group, origins, horizon)
            size = int(rows["history"].map(len).sum())
            if pending and steps + size > FORECAST_CALL_STEPS:
                forecast_pending()
                steps = 0
            values = group[self.spec.target].to_numpy(dtype=np.float64)  # [T]
            observed = group[OBSERVED].to_numpy(dtype=bool) if OBSERVED in group else None  # [T]
            pending.append((SeriesForecasts(str(sid), pd.DatetimeIndex(group["timestamp"]), values,
                                            int((group["split"] == "train").sum()), first, end, [],
                                            observed=observed), origins, rows))
            steps += size
        forecast_pending()
        return runs

    def forecast_metrics(self, runs: list[SeriesForecasts]) -> dict[str, float]:
        """MAE, RMSE and MASE over every forecast step that has a measured actual inside its segment (a gap
        filled at prepare is not scored: forecasts are compared with the data, not with the filling).

        MASE is each series' MAE scaled by its own in-sample seasonal-naive MAE over the training segment
        (Hyndman & Koehler), then averaged over the series (as M4 scores a panel), so a value below 1 beats
        last season's values on average and a series in thousands weighs no more than one in units; MAE and
        RMSE pool the steps in the data's own units. `_mase_scale` says what scales a series without a
        seasonal-naive error.
        """
        season, horizon = self.spec.prepare.season, self.spec.evaluate.horizon
        errors, mases = [], []
        for run in runs:
            own = []
            for origin, forecast in run.forecasts:
                actual, measured = run.actual(origin, horizon)  # [<= H], [<= H] bool
                own.append((forecast[:len(actual)] - actual)[measured])
            own = np.concatenate(own) if own else np.empty(0)  # [steps scored]
            if len(own):
                errors.append(own)
                mases.append(float(np.mean(np.abs(own))) / _mase_scale(run.values[:run.n_train], season))
        if not errors:
            return {"mae": math.nan, "rmse": math.nan, "mase": math.nan}  # nothing measured: nothing to score
        error = np.concatenate(errors)  # [steps scored]
        return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2))),
                "mase": float(np.mean(mases))}

    def interval_metrics(self, runs: list[SeriesForecasts]) -> dict[str, float]:
        """Coverage, mean width and Winkler score per level over every forecast step with a measured actual."""
        from pipelines.evaluate.intervals import interval_metrics

        horizon, points = self.spec.evaluate.horizon, {}
        for run in runs:
            for (origin, _), bands in zip(run.forecasts, run.intervals):
                actual, measured = run.actual(origin, horizon)  # [<= H], [<= H] bool
                for key, band in bands.items():
                    got = points.setdefault(key, ([], [], []))
                    for part, values in zip(got, (actual, band["lower"], band["upper"])):
                        part.append(np.asarray(values, dtype=np.float64)[:len(actual)][measured])
        return {k: v for key, (actual, lower, upper) in points.items()
                for k, v in interval_metrics(np.concatenate(actual), np.concatenate(lower), np.concatenate(upper),
                                             float(key)).items()}

    def score(self, frame: pd.DataFrame, model: Any, segment: str) -> Scored:
        """Point metrics on `segment`; with a calibrated model, the intervals' coverage, width and Winkler
        score at serving.levels and the gate's level too."""
        from pipelines.evaluate.intervals import GATE_LEVEL

        levels = sorted({*self.spec.serving.levels, GATE_LEVEL})
        runs = self.rolling_forecasts(frame, segment, pyfunc_forecaster(model, levels))
        return Scored({**self.forecast_metrics(runs), **self.interval_metrics(runs)}, runs)

    def calibrate(self, frame: pd.DataFrame, model: Any, validation: Scored) -> Calibration:
        """Conformal residuals of the rolling-origin forecasts `score` made of the validation segment
        (pipelines/evaluate/intervals.py): no forecast is made twice. A step whose actual was a filled gap has
        no residual: the interval is for what will be measured, not for what gap filling drew in."""
        from pipelines.evaluate.intervals import calibration_payload, residual_rows

        horizon = self.spec.evaluate.horizon
        residuals = residual_rows(((run.values[:origin], forecast, self._measured(run, origin, horizon))
                                   for run in validation.details for origin, forecast in run.forecasts), horizon)
        return Calibration(calibration_payload(residuals), {"calibration_origins": float(len(residuals))})

    @staticmethod
    def _measured(run: SeriesForecasts, origin: int, horizon: int) -> np.ndarray:
        actual, measured = run.actual(origin, horizon)  # [<= H], [<= H] bool
        return np.where(measured, actual, np.nan)  # [<= H]

    def plot_calibration(self, run_id: str, title: str, calibration: Calibration) -> None:
        """The intervals are drawn on the forecast plot (`plot`): nothing more to draw."""

    def baselines(self, prepared: Path, seed: int) -> dict[str, Callable[[Path], str]]:
        """Naive, seasonal naive and `evaluate.statistical_baselines` (statsforecast's AutoETS and AutoTheta by
        default), each refitted on every request's history, behind the forecast contract
        (pipelines/evaluate/baselines.py says why these)."""
        from pipelines.serving.baseline_pyfunc import StatisticalForecastModel, log_baseline_pyfunc

        def logger(method: str) -> Callable[[Path], str]:
            def log(directory: Path) -> str:
                signature, example = self._contract(prepared)
                baseline = {"method": method, "season": self.spec.prepare.season}
                spec = {**self._served_spec(prepared), "baseline": baseline}
                return log_baseline_pyfunc(directory, StatisticalForecastModel(), spec,
                                           {"transform": str(prepared / TRANSFORM_FILE)}, signature, example)
            return log

        methods = ("naive", "seasonal_naive", *self.spec.evaluate.statistical_baselines)
        return {method: logger(method) for method in methods}

    def ensemble(self, prepared: Path, ranked: list[str]) -> Callable[[Path], str] | None:
        """The step-wise median of the best `evaluate.ensemble_size` recurrent models (`ranked` best first)."""
        from pipelines.serving.baseline_pyfunc import MEMBER_PREFIX, EnsembleForecastModel, log_baseline_pyfunc

        members = ranked[:self.spec.evaluate.ensemble_size]
        if len(members) < 2:
            return None

        def log(directory: Path) -> str:
            signature, example = self._contract(prepared)
            artifacts = {f"{MEMBER_PREFIX}{i}": uri for i, uri in enumerate(members)}
            return log_baseline_pyfunc(directory, EnsembleForecastModel(), self._served_spec(prepared),
                                       {"transform": str(prepared / TRANSFORM_FILE), **artifacts}, signature, example)
        return log

    def plot(self, run_id: str, title: str, scored: Scored, baselines: dict[str, Scored]) -> None:
        """The first series' segment with the model's and seasonal naive's forecasts, on its real dates."""
        from pipelines.train.plots import log_forecast_plot

        run, naive = scored.details[0], baselines["seasonal_naive"]
        log_forecast_plot(run_id, run.timestamps[:run.end], run.values[:run.first], run.values[run.first:run.end],
                          [(o - run.first, f) for o, f in run.forecasts],
                          [(o - run.first, f) for o, f in naive.details[0].forecasts],
                          f"{title}, series {run.series_id}: MAE {scored.metrics['mae']:.3f} vs seasonal naive "
                          f"{naive.metrics['mae']:.3f}", freq=self.spec.freq, intervals=run.intervals)

    def example_request(self, prepared: Path) -> dict[str, Any]:
        """The last EXAMPLE_HISTORY_STEPS values of the task's own first series (the horizon's before them
        when known covariates need future values), its last timestamp, and the default horizon."""
        spec = self.spec
        first = self._first_series(self.load_prepared(prepared)).reset_index(drop=True)
        horizon = spec.serving.default_horizon
        origin = len(first) - (horizon if spec.known_covariates else 0)
        start = max(0, origin - max(EXAMPLE_HISTORY_STEPS, spec.serving.min_history))
        record = self.request_rows(first.iloc[start:].reset_index(drop=True), [origin - start], horizon)
        record = record.to_dict("records")[0]
        for field, values in record.items():
            if isinstance(values, list):
                record[field] = [round(float(v), 3) for v in values]
        return {"dataframe_records": [record], "params": {"horizon": horizon}}

    @staticmethod
    def _first_series(series: pd.DataFrame) -> pd.DataFrame:
        return series[series["series_id"] == series["series_id"].iloc[0]]
