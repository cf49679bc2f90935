"""Plots logged as MLflow artifacts: loss curves, forecast vs actual, confusion matrix.

matplotlib's Agg backend: stages run headless, in DVC subprocesses and Prefect workers.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
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


def log_forecast_plot(run_id: str, context: np.ndarray, actual: np.ndarray, forecasts: list[tuple[int, np.ndarray]],
                      baseline: list[tuple[int, np.ndarray]], title: str) -> None:
    """The holdout actuals with each rolling-origin forecast and the seasonal-naive baseline."""
    figure, axis = plt.subplots(figsize=(10, 4))
    start = len(context)
    axis.plot(range(start), context, color="grey", label="history")
    axis.plot(range(start, start + len(actual)), actual, color="black", label="actual (holdout)")
    for i, (origin, values) in enumerate(forecasts):
        axis.plot(range(start + origin, start + origin + len(values)), values, color="tab:blue",
                  alpha=0.8, label="forecast" if i == 0 else None)
    for i, (origin, values) in enumerate(baseline):
        axis.plot(range(start + origin, start + origin + len(values)), values, color="tab:orange",
                  alpha=0.5, linestyle="--", label="seasonal naive" if i == 0 else None)
    axis.set_xlim(max(0, start - 3 * len(actual)), start + len(actual))
    axis.set_title(title)
    axis.legend()
    _log_figure(figure, "plots/forecast_vs_actual.png", run_id)


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
