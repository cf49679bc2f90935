"""Prediction intervals for any forecaster: split-conformal, from its own rolling-origin errors.

Why conformal: it needs no retraining and no distributional assumption, so every candidate (each
variant, the ensemble, each statsforecast baseline) gets intervals the same way, and whichever wins
the gate is served with them. Evaluate already forecasts the validation segment (data no model
trained on) from rolling origins to choose a candidate; those forecasts are the calibration set. Per
forecast and horizon step h it keeps the absolute error |y - yhat| divided by the scale of the
history the forecast came from (the mean absolute one-step change of that history): a scale the
request itself carries, so residuals of series of different sizes are exchangeable and one
calibration serves any series.

A validation segment holds few origins (CO2: 7), too few for a quantile per step. So the residuals
are normalised per step by s_h, their mean at step h (a running maximum over h: uncertainty does not
shrink with the lead time), pooled over every step, and the conformal quantile is taken of the pool:
the interval at level L for step h is forecast +/- q_L * s_h * scale(history), q_L the
ceil((n + 1) L / 100)-th smallest of the n pooled values (the finite-sample conformal quantile; the
largest when n is too small for L). Steps past the calibrated horizon grow as sqrt(h / H) from the last.

That pool is n = origins x H residuals, but not n exchangeable ones: the errors of one forecast path
move together, so what the pool measures well is the shape of the errors, while their scale rests on
about as many independent draws as there are origins; and the scale the holdout meets differs from the
validation's (bench/intervals.py: holdout / validation mean scaled error 0.66 to 2.1 across its series).
An interval built as if that scale were known covers less than its level, the most at the highest
levels (the benchmark's 95 % interval covered 88.6 %). So the half-width is the Student-t predictive
interval of a scale estimated from nu = origins zero-mean forecasts: the conformal quantile times
t_nu((1 + L) / 2) / z((1 + L) / 2), which tends to 1 as origins grow (x 1.28 at 80 % and x 1.62 at 95 %
with 3 origins, x 1.10 and x 1.21 with 7). nu counts origins rather than residuals because the mean
error is known (zero), not estimated, and one origin is one draw of the scale. Measured alternatives
(bench/intervals.py, mean 80 % / 95 % coverage): as before 75.3 / 88.6; a power-law fit of the
lead-time scaling instead of per-step means 76.5 / 90.7; nu from a design effect estimated by the
intraclass correlation of the residuals 77.8 / 91.0 (too noisy with 3 origins); this one 85.0 / 98.2
(targets 80 +/- 7, 95 +/- 4), and 79.7 / 96.9 around the default GRU variant (`--quantile`).

The calibration travels inside the logged model as `calibration.json` beside its spec, written by
evaluate before registration (so the gate signs it with the model, pipelines/signing.py).

A quantile variant (params.yaml `quantiles: N` on a variant) serves its own intervals instead: its
network predicts N quantiles of the next value, which are not quantiles of the value h steps ahead (and
on differenced data not of the level), so the served model draws SAMPLE_PATHS paths step by step, each
feeding back a value drawn from its quantiles (models/inference.py), and reads the forecast (the
median) and every interval from the paths' empirical quantiles per step (`path_forecast`). Evaluate
scores them under the same metric keys as conformal intervals.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import SeqopsError

CALIBRATION_FILE = "calibration.json"
CONFORMAL = "conformal"
QUANTILE = "quantile"
SAMPLE_PATHS = 500        # paths per forecast of a quantile variant: ~12 beyond each end of a 95 % interval
PATH_SEED = 0             # the paths' levels are drawn from this seed: the same request, the same answer
DEFAULT_LEVELS = (80.0, 95.0)  # serving.levels' default: the levels a forecast carries when a request names none
MAX_LEVELS = 5            # levels one request may ask for (params.level)
MAX_RESIDUALS = 2000      # residuals kept per horizon step (evenly spaced order statistics beyond it)
GATE_LEVEL = 80.0         # the level whose holdout coverage the promotion gate checks (promote.coverage_floor)


class LevelError(SeqopsError, ValueError):
    """A `params.level` a forecast request cannot be answered with (out of range, not a number, too many)."""


def level_key(level: float) -> str:
    """The JSON key of a level: "80", "97.5"."""
    return f"{level:g}"


def parse_levels(value: Any) -> list[float]:
    """`params.level` as sorted unique floats, each in (0, 100), at most MAX_LEVELS of them."""
    values = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if len(values) > MAX_LEVELS:
        raise LevelError(f"params.level has {len(values)} levels; at most {MAX_LEVELS} are accepted")
    levels = []
    for item in values:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, float, np.integer, np.floating)):
            raise LevelError(f"params.level must be a list of numbers between 0 and 100 (e.g. [80, 95]), "
                             f"got {item!r}")
        if not (math.isfinite(float(item)) and 0.0 < float(item) < 100.0):
            # an integer literal too large for a float (thousands of digits) arrives as infinity
            shown = "a number too large to show" if math.isinf(float(item)) else repr(item)
            raise LevelError(f"params.level values must be strictly between 0 and 100, got {shown}")
        levels.append(float(item))
    return sorted(set(levels))


SCALE_CLIP_QUANTILE = 0.95


def history_scale(history: np.ndarray) -> float:
    """Mean absolute one-step change of a history [T], each change clipped at the changes' 95th percentile
    (when that is above zero): the unit residuals are measured in (1 if flat). The whole history:
    bench/intervals.py measured no gain from a recent window (the last 4 horizons).

    Clipped because one glitch in a request's history (a 9999 among values near 50) made the plain mean a
    hundred times larger and every interval as wide; calibration measures residuals in the same unit, so
    the clipped scale keeps coverage where it was (bench/intervals.py)."""
    steps = np.abs(np.diff(np.asarray(history, dtype=np.float64)))  # [T - 1]
    if len(steps) and np.isfinite(steps).all():
        ceiling = float(np.quantile(steps, SCALE_CLIP_QUANTILE))
        steps = np.minimum(steps, ceiling) if ceiling > 0 else steps
    scale = float(np.mean(steps)) if len(steps) else 0.0
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def residual_rows(forecasts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], horizon: int) -> np.ndarray:
    """Scaled absolute errors [N, horizon] of (history [T], forecast [H], actual [<= H]) triples; NaN where
    an origin's actual ends before the horizon does (the end of its segment)."""
    rows = []
    for history, forecast, actual in forecasts:
        row = np.full(horizon, np.nan)  # [H]
        n = min(len(actual), len(forecast), horizon)
        row[:n] = np.abs(np.asarray(actual[:n]) - np.asarray(forecast[:n])) / history_scale(history)
        rows.append(row)
    return np.stack(rows) if rows else np.empty((0, horizon))  # [N, H]


def calibration_payload(residuals: np.ndarray) -> dict[str, Any]:
    """What `calibration.json` holds: the method and, per horizon step, its sorted residuals (thinned to
    MAX_RESIDUALS order statistics, which keeps every quantile to within 1/MAX_RESIDUALS)."""
    steps = []
    for column in residuals.T:  # [N] per step
        kept = np.sort(column[np.isfinite(column)])
        if len(kept) > MAX_RESIDUALS:
            kept = kept[np.linspace(0, len(kept) - 1, MAX_RESIDUALS).round().astype(int)]
        steps.append([round(float(v), 6) for v in kept])
    return {"method": CONFORMAL, "scale": "mean absolute one-step change of the request's history",
            "origins": int(residuals.shape[0]), "residuals": steps}


def write_calibration(directory: Path, payload: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CALIBRATION_FILE
    path.write_text(json.dumps(payload))
    return path


def read_calibration(artifact: Path) -> dict[str, Any] | None:
    """The calibration.json of the logged model holding `artifact` (one of its files), at its root beside
    MLmodel, or None (a model logged before evaluate). MLflow nests artifacts one or two folders deep."""
    root = next((d for d in artifact.parents if (d / "MLmodel").is_file()), None)
    path = root / CALIBRATION_FILE if root is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def scale_uncertainty(level: float, draws: int) -> float:
    """t_nu(p) / z(p), p = (1 + level / 100) / 2, nu = `draws`: how much wider a central interval must be
    when the error scale is estimated from `draws` zero-mean forecasts rather than known (module docstring)."""
    from scipy import stats  # here, not at the top: pipelines.config imports this module, every command loads it

    p = 0.5 + level / 200.0
    return float(stats.t.ppf(p, max(draws, 1)) / stats.norm.ppf(p))


class ConformalIntervals:
    """Half-widths per level and step from a calibration payload; `bounds` turns them into intervals."""

    def __init__(self, payload: dict[str, Any]) -> None:
        steps = [np.asarray(r, dtype=np.float64) for r in payload["residuals"]]
        self.origins = int(payload.get("origins", 0))
        if not steps or not any(len(s) for s in steps):
            raise ValueError("a conformal calibration needs at least one residual")
        means = [float(np.mean(r)) if len(r) else np.nan for r in steps]
        first = next(m for m in means if np.isfinite(m))
        step_scale = np.maximum.accumulate(np.nan_to_num(means, nan=first))  # [H_cal], empty steps: the last
        self.step_scale = np.where(step_scale > 0, step_scale, 1.0)  # [H_cal]
        self.pooled = np.sort(np.concatenate([r / s for r, s in zip(steps, self.step_scale)]))  # [n]
        # evaluate writes the origin count; a payload without one: one origin per residual of step 1
        self.draws = self.origins or len(steps[0]) or 1

    def describe(self) -> str:
        return (f"{CONFORMAL}: split-conformal from {self.origins} rolling-origin validation forecasts of "
                f"{len(self.step_scale)} steps, per-step scaled and pooled, widened for a scale known from "
                f"{self.draws} origins (Student t), times the history's mean absolute change")

    def half_widths(self, level: float, horizon: int) -> np.ndarray:
        """Scaled half-widths [horizon] at `level`, non-decreasing in the lead time."""
        k = math.ceil((len(self.pooled) + 1) * level / 100.0)
        quantile = float(self.pooled[min(k, len(self.pooled)) - 1]) * scale_uncertainty(level, self.draws)
        widths = quantile * self.step_scale  # [H_cal]
        if horizon > len(widths):
            beyond = np.arange(len(widths) + 1, horizon + 1)  # [horizon - H_cal]
            widths = np.concatenate([widths, widths[-1] * np.sqrt(beyond / len(widths))])
        return widths[:horizon]  # [horizon]

    def bounds(self, forecast: np.ndarray, history: np.ndarray, levels: Sequence[float]) -> dict[str, dict]:
        """{"80": {"lower": [H], "upper": [H]}, ...} around `forecast` [H] made from `history` [T]."""
        scale = history_scale(history)
        out = {}
        for level in levels:
            half = self.half_widths(level, len(forecast)) * scale  # [H]
            out[level_key(level)] = {"lower": [float(v) for v in forecast - half],
                                     "upper": [float(v) for v in forecast + half]}
        return out


def path_forecast(paths: np.ndarray, levels: Sequence[float]) -> tuple[np.ndarray, dict[str, dict]]:
    """The forecast (per-step median) [H] of sample paths [N, H] and their central intervals at `levels`,
    {"80": {"lower": [H], "upper": [H]}, ...}: empirical quantiles per step, so lower <= median <= upper."""
    out = {}
    for level in levels:
        lower, upper = np.quantile(paths, [0.5 - level / 200.0, 0.5 + level / 200.0], axis=0)  # [H] each
        out[level_key(level)] = {"lower": [float(v) for v in lower], "upper": [float(v) for v in upper]}
    return np.median(paths, axis=0), out  # [H]


def describe_quantiles(quantiles: int) -> str:
    """What /version says of a quantile variant's intervals."""
    return (f"{QUANTILE}: {quantiles} quantiles of the next value per step (pinball loss); {SAMPLE_PATHS} sample "
            f"paths, each step drawn from them and fed back (seed {PATH_SEED}); the forecast is the paths' median "
            f"per step and each interval their empirical quantiles")


def interval_metrics(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float) -> dict[str, float]:
    """Empirical coverage, mean width and mean Winkler (interval) score of intervals over points [N].

    Winkler: width + (2 / alpha) * how far the actual falls outside, alpha = 1 - level / 100; lower is
    better, and it punishes both needless width and misses.
    """
    actual, lower, upper = (np.asarray(a, dtype=np.float64) for a in (actual, lower, upper))  # [N] each
    alpha = 1.0 - level / 100.0
    width = upper - lower  # [N]
    miss = np.maximum(lower - actual, 0.0) + np.maximum(actual - upper, 0.0)  # [N]
    key = level_key(level)
    # a float's rounding is not a miss: an exact forecaster's zero-width interval must cover its exact actuals
    slack = 1e-9 * np.maximum.reduce([np.ones_like(actual), np.abs(actual), np.abs(lower), np.abs(upper)])  # [N]
    return {f"coverage_{key}": float(np.mean((actual >= lower - slack) & (actual <= upper + slack))),
            f"width_{key}": float(np.mean(width)), f"winkler_{key}": float(np.mean(width + 2.0 / alpha * miss))}
