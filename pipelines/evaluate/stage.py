"""evaluate@<task>: score every variant of the retrain on the holdout, beside a baseline.

Series: rolling-origin MAE / RMSE / MASE beside a seasonal-naive forecast on the same origins.
Text: accuracy, macro-F1, per-class precision and recall, a confusion matrix, beside TF-IDF +
logistic regression fitted on the same training split.

Scoring goes through the logged pyfunc, the exact object the REST server loads, so a holdout
metric is a promise about what users will get. `score_model` re-scores the champion in
promotion, on the same holdout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd

from pipelines.config import Params, TextTask, TimeSeriesTask
from pipelines.evaluate.baselines import tfidf_logreg_baseline
from pipelines.evaluate.metrics import classification_metrics
from pipelines.prepare.features import seasonal_naive
from pipelines.project import metrics_file, prepared_dir, train_record
from pipelines.runner import run_stage_main
from pipelines.train.plots import log_confusion_matrix, log_forecast_plot
from pipelines.train.tracking import configure

Forecaster = Callable[[pd.DataFrame, int], list[np.ndarray]]


def pyfunc_forecaster(model: Any) -> Forecaster:
    def forecast(rows: pd.DataFrame, horizon: int) -> list[np.ndarray]:
        out = model.predict(rows, params={"horizon": horizon})
        return [np.asarray(v, dtype=np.float64) for v in out["forecast"]]
    return forecast


def segment_bounds(series: pd.DataFrame, segment: str) -> list[tuple[str, pd.DataFrame, int, int]]:
    """(series id, the series, first index, end index) of `segment` (validation | holdout) per series."""
    out = []
    for sid, group in series.groupby("series_id", sort=False):
        group = group.reset_index(drop=True)
        inside = np.flatnonzero((group["split"] == segment).to_numpy())
        out.append((str(sid), group, int(inside[0]), int(inside[-1]) + 1))
    return out


def score_series(spec: TimeSeriesTask, series: pd.DataFrame, forecaster: Forecaster,
                 segment: str = "holdout") -> dict[str, Any]:
    """Rolling-origin forecasts inside `segment`: MAE, RMSE, MASE of the model and of the seasonal-naive
    baseline, every forecast made from the whole history before its origin.

    MASE scales by the in-sample seasonal-naive MAE of the training segment (Hyndman & Koehler),
    so a value below 1 beats last year's values on average.
    """
    horizon, stride, season = spec.evaluate.horizon, spec.evaluate.origin_stride, spec.prepare.season
    model_err, base_err, scales, plots = [], [], [], []
    for sid, group, first, end in segment_bounds(series, segment):
        values = group[spec.target].to_numpy(dtype=np.float64)
        train = values[: int((group["split"] == "train").sum())]
        scales.append(np.mean(np.abs(train[season:] - train[:-season])))
        origins = list(range(first, end - horizon + 1, stride)) or [max(first, end - horizon)]
        rows = pd.DataFrame({"series_id": [sid] * len(origins), "history": [values[:o].tolist() for o in origins]})
        for column in spec.covariates:
            rows[column] = [group[column].to_numpy(dtype=np.float64)[:o].tolist() for o in origins]
        forecasts = forecaster(rows, horizon)
        baselines = [seasonal_naive(values[:o], horizon, season) for o in origins]
        for o, f, b in zip(origins, forecasts, baselines):
            actual = values[o:min(o + horizon, end)]
            model_err.append(f[:len(actual)] - actual)
            base_err.append(b[:len(actual)] - actual)
        plots.append((sid, values[:first], values[first:end], [(o - first, f) for o, f in zip(origins, forecasts)],
                      [(o - first, b) for o, b in zip(origins, baselines)]))
    model_err, base_err = np.concatenate(model_err), np.concatenate(base_err)
    scale = float(np.mean(scales))
    mae, base_mae = float(np.mean(np.abs(model_err))), float(np.mean(np.abs(base_err)))
    return {
        "metrics": {
            "mae": mae, "rmse": float(np.sqrt(np.mean(model_err ** 2))), "mase": mae / scale,
            "baseline_mae": base_mae, "baseline_rmse": float(np.sqrt(np.mean(base_err ** 2))),
            "baseline_mase": base_mae / scale,
        },
        "plots": plots,
    }


def score_texts(spec: TextTask, texts: pd.DataFrame, model: Any, segment: str = "holdout") -> dict[str, Any]:
    """Classification metrics of a sentiment pyfunc on `segment` (confusion matrix kept aside for the plot)."""
    # The pyfunc refuses what the REST endpoint refuses: requests over max_records, and (by default)
    # texts over max_text_length characters, which a corpus may hold; score those on their prefix.
    part = [text[:spec.serving.max_text_length] for text in texts.loc[texts["split"] == segment, "text"]]
    size = spec.serving.max_records
    predicted = [label for start in range(0, len(part), size)
                 for label in model.predict(pd.DataFrame({"text": part[start:start + size]}))["label"]]
    truth = texts.loc[texts["split"] == segment, "label"].tolist()
    metrics = classification_metrics(truth, predicted, list(spec.labels))
    return {"metrics": {k: v for k, v in metrics.items() if k != "confusion_matrix"},
            "confusion_matrix": metrics["confusion_matrix"]}


def text_baseline(spec: TextTask, texts: pd.DataFrame, seed: int) -> dict[str, float]:
    train, holdout = texts[texts["split"] == "train"], texts[texts["split"] == "holdout"]
    metrics = tfidf_logreg_baseline(train["text"].tolist(), train["label"].tolist(), holdout["text"].tolist(),
                                    holdout["label"].tolist(), list(spec.labels), seed)
    return {f"baseline_{k}": v for k, v in metrics.items() if k != "confusion_matrix"}


def load_prepared(root: Path, task: str, spec: TimeSeriesTask | TextTask) -> pd.DataFrame:
    name = "texts.parquet" if isinstance(spec, TextTask) else "series.parquet"
    return pd.read_parquet(prepared_dir(root, task) / name)


def score_model(spec: TimeSeriesTask | TextTask, prepared: pd.DataFrame, model: Any,
                segment: str = "holdout") -> dict[str, Any]:
    """Metrics (and plot data) on `segment` of a loaded pyfunc, or of a model URI (logged or registered)."""
    if isinstance(model, str):
        model = mlflow.pyfunc.load_model(model)
    if isinstance(spec, TextTask):
        return score_texts(spec, prepared, model, segment)
    return score_series(spec, prepared, pyfunc_forecaster(model), segment)


def _log_plot(spec: TimeSeriesTask | TextTask, task: str, entry: dict[str, Any], scored: dict[str, Any],
              baseline: dict[str, float]) -> None:
    metrics, title = scored["metrics"], f"{task}/{entry['variant']} holdout"
    if isinstance(spec, TextTask):
        log_confusion_matrix(entry["run_id"], scored["confusion_matrix"], list(spec.labels),
                             f"{title}: macro-F1 {metrics['macro_f1']:.3f} (TF-IDF baseline "
                             f"{baseline['baseline_macro_f1']:.3f})")
        return
    sid, context, actual, forecasts, naive = scored["plots"][0]
    log_forecast_plot(entry["run_id"], context, actual, forecasts, naive,
                      f"{title}, series {sid}: MAE {metrics['mae']:.3f} vs seasonal naive {metrics['baseline_mae']:.3f}")


def evaluate_task(root: Path, task: str, params: Params) -> Path:
    spec = params.task(task)
    configure(root)
    record = json.loads(train_record(root, task).read_text())
    prepared = load_prepared(root, task, spec)
    baseline = text_baseline(spec, prepared, params.training.seed) if isinstance(spec, TextTask) else {}
    metric = params.promote.metric_for(spec.kind)
    results = {}
    for entry in record["variants"]:
        print(f"evaluate@{task}: scoring {entry['variant']} on validation and holdout", flush=True)
        model = mlflow.pyfunc.load_model(entry["model_uri"])
        selection = score_model(spec, prepared, model, "validation")["metrics"][metric.name]
        scored = score_model(spec, prepared, model, "holdout")
        metrics = {**scored["metrics"], **baseline}
        with mlflow.start_run(run_id=entry["run_id"]):
            mlflow.log_metrics({**{f"holdout_{k}": v for k, v in metrics.items()}, f"validation_{metric.name}": selection})
        _log_plot(spec, task, entry, scored, baseline)
        results[entry["variant"]] = {**metrics, f"validation_{metric.name}": selection, "val_loss": entry["val_loss"]}
    out = metrics_file(root, task)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": task, "selection": f"validation_{metric.name} ({metric.goal})",
                               "best_variant": best_variant(results, f"validation_{metric.name}", metric.goal),
                               "variants": results}, indent=2, sort_keys=True))
    return out


def best_variant(results: dict[str, dict[str, float]], key: str, goal: str) -> str:
    """The variant with the best selection metric; NaN ranks last, ties go to the first name.

    Selection uses the validation segment, never the holdout: the holdout stays an unbiased
    estimate for the promotion gate.
    """
    sign = 1.0 if goal == "minimize" else -1.0
    return min(results, key=lambda v: (np.nan_to_num(sign * results[v][key], nan=np.inf), v))


if __name__ == "__main__":
    run_stage_main("evaluate", evaluate_task)
