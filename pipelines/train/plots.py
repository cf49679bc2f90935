"""Plots logged as MLflow artifacts: loss curves, gradient health, forecast vs actual (with its prediction
intervals shaded), confusion matrix, reliability diagram.

matplotlib's Agg backend: stages run headless, in DVC subprocesses and Prefect workers.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


def _log_figure(figure: plt.Figure, name: str, run_id: str | None = None) -> None:
    if run_id is None:
        mlflow.log_figure(figure, name)
    else:
        MlflowClient().log_figure(run_id, figure, name)
    plt.close(figure)


def log_loss_curves(run_id: str) -> None:
    """Per-epoch train and validation loss, read back from the run's own metric history."""
    client = MlflowClient()
    figure, axis = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "val_loss"):
        history = client.get_metric_history(run_id, key)
        if history:
            axis.plot(range(1, len(history) + 1), [m.value for m in history], marker="o", label=key)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.legend()
    axis.set_title("loss by epoch")
    _log_figure(figure, "plots/loss_curves.png", run_id)


def log_gradient_health(run_id: str, history: list[dict], clip_norm: float | None) -> None:
    """Three panels from GradientHealth's records: the global gradient norm before and after clipping
    by optimizer step; ||dL/dh_t|| by lag (vanishing shows as decay, exploding as growth); the
    spectral radius of each recurrent matrix over training (above 1 invites explosion)."""
    updates = [r for r in history if r["kind"] == "update"]
    lags = [r for r in history if r["kind"] == "lag"]
    spectral = [r for r in history if r["kind"] == "spectral"]
    figure, (norms, by_lag, radii) = plt.subplots(1, 3, figsize=(15, 4))
    if updates:
        steps = [r["step"] for r in updates]
        norms.plot(steps, [r["grad_norm"] for r in updates], label="before clipping", linewidth=0.8)
        norms.plot(steps, [r["grad_norm_clipped"] for r in updates], label="after clipping", linewidth=0.8)
        if clip_norm is not None:
            norms.axhline(clip_norm, color="red", linestyle="--", linewidth=0.8, label=f"max norm {clip_norm:g}")
        norms.set_yscale("log")
        norms.legend(fontsize=8)
    norms.set(title="global gradient norm", xlabel="optimizer step")
    for record in (lags[0], lags[-1]) if len(lags) > 1 else lags:
        curve = np.asarray(record["lag_profile"])
        by_lag.plot(range(len(curve)), np.where(curve > 0, curve, np.nan), label=f"step {record['step']}")
    if lags:
        by_lag.set_yscale("log")
        by_lag.legend(fontsize=8)
    by_lag.set(title="||dL/dh_t|| by lag", xlabel="lag (steps before the loss)")
    if spectral:
        steps = [r["step"] for r in spectral]
        for name in spectral[0]["spectral_radius"]:
            radii.plot(steps, [r["spectral_radius"].get(name, np.nan) for r in spectral], label=name, linewidth=0.8)
        radii.axhline(1.0, color="red", linestyle="--", linewidth=0.8)
        radii.legend(fontsize=6)
    radii.set(title="spectral radius of recurrent weights", xlabel="optimizer step")
    figure.tight_layout()
    _log_figure(figure, "plots/gradient_health.png", run_id)


def _time_axis(timestamps: pd.DatetimeIndex, length: int, freq: str | None = None) -> pd.DatetimeIndex:
    """`length` points of the series' own time axis, continued on its calendar (`freq`, else its
    last step) where a forecast runs past the data (a holdout shorter than the horizon)."""
    if length <= len(timestamps):
        return timestamps[:length]
    extra = pd.date_range(timestamps[-1], periods=length - len(timestamps) + 1,
                          freq=freq or timestamps[-1] - timestamps[-2])[1:]
    return timestamps.append(extra)


def forecast_figure(timestamps: pd.DatetimeIndex, context: np.ndarray, actual: np.ndarray,
                    forecasts: list[tuple[int, np.ndarray]], baseline: list[tuple[int, np.ndarray]],
                    title: str, freq: str | None = None, intervals: list[dict] | None = None) -> plt.Figure:
    """The holdout actuals with each rolling-origin forecast and the seasonal-naive baseline, on the
    series' real dates: `timestamps` cover context then actual; origins count from the first actual.
    `intervals` (one {level: {lower, upper}} per forecast) are shaded, the higher levels lighter."""
    start = len(context)
    longest = max(origin + len(values) for origin, values in [*forecasts, *baseline, (0, actual)])
    times = _time_axis(pd.DatetimeIndex(timestamps), start + longest, freq)
    figure, axis = plt.subplots(figsize=(10, 4))
    axis.plot(times[:start], context, color="grey", label="history")
    axis.plot(times[start:start + len(actual)], actual, color="black", label="actual (holdout)")
    for i, (origin, values) in enumerate(forecasts):
        axis.plot(times[start + origin:start + origin + len(values)], values, color="tab:blue",
                  alpha=0.8, label="forecast" if i == 0 else None)
    for i, ((origin, values), bands) in enumerate(zip(forecasts, intervals or [])):
        for j, key in enumerate(sorted(bands, key=float, reverse=True)):
            axis.fill_between(times[start + origin:start + origin + len(values)], bands[key]["lower"],
                              bands[key]["upper"], color="tab:blue", alpha=0.08 + 0.08 * j, linewidth=0,
                              label=f"{key} % interval" if i == 0 else None)
    for i, (origin, values) in enumerate(baseline):
        axis.plot(times[start + origin:start + origin + len(values)], values, color="tab:orange",
                  alpha=0.5, linestyle="--", label="seasonal naive" if i == 0 else None)
    axis.set_xlim(times[max(0, start - 3 * len(actual))], times[-1])
    axis.set_title(title)
    axis.legend()
    figure.autofmt_xdate()
    return figure


def log_forecast_plot(run_id: str, timestamps: pd.DatetimeIndex, context: np.ndarray, actual: np.ndarray,
                      forecasts: list[tuple[int, np.ndarray]], baseline: list[tuple[int, np.ndarray]],
                      title: str, freq: str | None = None, intervals: list[dict] | None = None) -> None:
    """`forecast_figure`, logged to run `run_id` as plots/forecast_vs_actual.png."""
    _log_figure(forecast_figure(timestamps, context, actual, forecasts, baseline, title, freq, intervals),
                "plots/forecast_vs_actual.png", run_id)


def log_confusion_matrix(run_id: str, matrix: list[list[int]], labels: list[str], title: str) -> None:
    """Counts with true labels as rows, predictions as columns, each cell annotated."""
    counts = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(5, 4.5))
    image = axis.imshow(counts, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            axis.text(j, i, str(counts[i, j]), ha="center", va="center",
                      color="white" if counts[i, j] > counts.max() / 2 else "black")
    figure.colorbar(image, ax=axis)
    axis.set_title(title, fontsize=9)
    _log_figure(figure, "plots/confusion_matrix.png", run_id)


def log_reliability_diagram(run_id: str, before: Any, after: Any, title: str) -> None:
    """Accuracy against confidence per bin (pipelines.evaluate.calibration.Reliability), before and after
    calibration, with the diagonal a calibrated model follows and the share of texts per bin below."""
    figure, (curve, share) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, height_ratios=[3, 1])
    curve.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="calibrated")
    for name, table, colour in (("uncalibrated", before, "tab:orange"), ("temperature scaled", after, "tab:blue")):
        filled = table.counts > 0
        curve.plot(table.confidence[filled], table.accuracy[filled], marker="o", color=colour, label=name)
        share.plot(table.confidence[filled], table.counts[filled] / table.counts.sum(), marker=".", color=colour)
    curve.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    curve.legend(fontsize=8)
    curve.set_title(title, fontsize=9)
    share.set(xlabel="confidence (top label's probability)", ylabel="share")
    figure.tight_layout()
    _log_figure(figure, "plots/reliability_diagram.png", run_id)
