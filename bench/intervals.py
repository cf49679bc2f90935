"""Prediction-interval coverage on the quality benchmark's real series: is an 80 % interval right 80 % of the time?

For each series of bench/quality.py, with the ONE default configuration derived at prepare time
(pipelines/tasks/defaults.py), this runs the conformal calibration of pipelines/evaluate/intervals.py
exactly as evaluate does: rolling-origin forecasts of the validation segment -> residuals -> intervals
on the holdout origins, scored by the same `TimeSeriesKind.interval_metrics`. The forecasters are the
statistical baselines (seasonal naive, AutoTheta): conformal calibration treats every forecaster alike,
and these are affordable on 2 cores (AutoETS takes ~5 s a fit on CO2's 2,000 weeks; the recurrent
candidates' figures come from `make bench-quality`, which logs coverage_80 / coverage_95 per candidate).

Sentiment: the built-in tweet corpus prepared with the default text settings, TF-IDF + logistic
regression (the text baseline; the recurrent model is calibrated by the same code in evaluate@sentiment)
fitted on the training split, temperature scaling fitted on the validation split, ECE (15 bins) on the
holdout before and after.

Targets (issue 11): mean coverage of the 80 % interval within 80 +/- 7 %, of the 95 % within 95 +/- 4 %;
sentiment ECE after scaling <= 0.03. `OMP_NUM_THREADS=1 python -m bench.intervals` (~2 minutes);
SERIES=name,name runs a subset. Writes bench/results/intervals.json.

`--quantile` (~5 minutes) compares the two methods on a recurrent network instead: per series, the default
GRU variant (pipelines/tasks/defaults.py, as derived for that series) and its twin with `quantiles: 19`
(levels 1/38 .. 37/38, so a 95 % interval needs no tail extrapolation), trained and evaluated through the
real stages in a throwaway project (bench/quality.py's); the GRU is scored with its conformal intervals,
the twin with its sample paths, under the same metric keys. Written into intervals.json as `recurrent`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import machine, pin_threads
from bench.quality import SERIES, project

RESULTS = Path(__file__).resolve().parent / "results" / "intervals.json"
METHODS = ("seasonal_naive", "auto_theta")
LEVELS = (80.0, 95.0)
TARGETS = {80.0: 7.0, 95.0: 4.0}  # level: allowed distance of the mean coverage, in points
QUANTILES = 19  # --quantile: the twin's outputs per step


def run_series(name: str, method: str, workdir: Path) -> dict[str, float]:
    """Holdout coverage, width and Winkler score of one series' conformal intervals around `method`."""
    from pipelines.config import TimeSeriesTask
    from pipelines.evaluate.baselines import statistical_forecast
    from pipelines.evaluate.intervals import ConformalIntervals, calibration_payload, residual_rows
    from pipelines.tasks.timeseries import TimeSeriesKind

    loader, _, extra = SERIES[name]
    kind = TimeSeriesKind(TimeSeriesTask(kind="timeseries", source="bench", timestamp="date", target="value", **extra))
    raw, _ = kind.validate(loader(), name)
    prepared = workdir / name
    prepared.mkdir(parents=True, exist_ok=True)
    kind.prepare(raw, prepared)
    frame, season, horizon = kind.load_prepared(prepared), kind.spec.prepare.season, kind.spec.evaluate.horizon

    def point(rows: pd.DataFrame, steps: int) -> tuple[list[np.ndarray], list[dict]]:
        return [statistical_forecast(method, np.asarray(h), steps, season) for h in rows["history"]], [{}] * len(rows)

    validation = kind.rolling_forecasts(frame, "validation", point)
    calibration = ConformalIntervals(calibration_payload(residual_rows(
        ((run.values[:o], f, run.values[o:min(o + horizon, run.end)]) for run in validation for o, f in run.forecasts),
        horizon)))

    def banded(rows: pd.DataFrame, steps: int) -> tuple[list[np.ndarray], list[dict]]:
        forecasts, _ = point(rows, steps)
        return forecasts, [calibration.bounds(f, np.asarray(h), LEVELS) for f, h in zip(forecasts, rows["history"])]

    return kind.interval_metrics(kind.rolling_forecasts(frame, "holdout", banded))


def sentiment_calibration(workdir: Path) -> dict[str, float]:
    """Holdout ECE of the TF-IDF baseline on the built-in tweets, before and after temperature scaling."""
    from pipelines.config import TextTask
    from pipelines.data.sources import read_source
    from pipelines.evaluate.baselines import label_order
    from pipelines.evaluate.calibration import temperature_calibration
    from pipelines.tasks.text import TextKind

    kind = TextKind(TextTask(kind="text", source="builtin:tweets"))
    raw, _ = kind.validate(read_source("builtin:tweets", workdir), "builtin:tweets")
    prepared = workdir / "sentiment"
    prepared.mkdir(parents=True, exist_ok=True)
    kind.prepare(raw, prepared)
    frame = kind.load_prepared(prepared)
    model = kind.tfidf_logreg(prepared, seed=42)  # prepare's fit: the default family's gru-tfidf asked for it
    order = label_order(model, kind.labels)

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        part = frame[frame["split"] == name]
        probabilities = model.predict_proba(part["text"].tolist())[:, order]  # [N, C] in label order
        return probabilities, np.array([kind.labels.index(label) for label in part["label"]])  # [N]

    _, metrics, _ = temperature_calibration(split("validation"), split("holdout"))
    return metrics


def run_recurrent(root: Path, name: str) -> dict[str, Any]:
    """Holdout coverage, width and Winkler score of the default GRU (conformal) and its quantile twin (sample paths)."""
    import yaml

    from pipelines.config import load_params
    from pipelines.evaluate.stage import evaluate_task
    from pipelines.prepare.stage import prepare
    from pipelines.project import metrics_file, params_path
    from pipelines.tasks.settings import task_spec
    from pipelines.train.stage import train_task

    started = time.monotonic()
    prepare(root, name, load_params(root))
    gru = next(v for v in task_spec(root, name, load_params(root)).variants if v.cell == "gru").model_dump(mode="json")
    raw = yaml.safe_load(params_path(root).read_text())
    raw["tasks"][name].update(variants=[gru, {**gru, "name": "gru_quantile", "quantiles": QUANTILES}],
                              evaluate={"statistical_baselines": [], "ensemble_size": 1})
    params_path(root).write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(root)
    prepare(root, name, params)
    train_task(root, name, params)
    evaluate_task(root, name, params)
    variants = json.loads(metrics_file(root, name).read_text())["variants"]
    keys = [f"{metric}_{level:g}" for metric in ("coverage", "width", "winkler") for level in LEVELS]
    scores = {method: {**{k: variants[v][k] for k in keys}, "mase": variants[v]["mase"]}
              for method, v in (("conformal", "gru"), ("quantile", "gru_quantile"))}
    return {**scores, "seconds": time.monotonic() - started}


def main_quantile() -> None:
    """--quantile (module docstring): written into intervals.json after each series."""
    pin_threads()
    chosen = [s for s in os.environ.get("SERIES", ",".join(SERIES)).split(",") if s]
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = project(Path(tmp), chosen, {})
        for name in chosen:
            results[name] = r = run_recurrent(root, name)
            print(f"{name:<28} gru conformal 80 % {r['conformal']['coverage_80']:.1%} 95 % "
                  f"{r['conformal']['coverage_95']:.1%} | quantile 80 % {r['quantile']['coverage_80']:.1%} 95 % "
                  f"{r['quantile']['coverage_95']:.1%}  {r['seconds']:.0f} s", flush=True)
            summary = {f"mean_{method}_{key}": float(np.mean([r[method][key] for r in results.values()]))
                       for method in ("conformal", "quantile") for key in ("coverage_80", "coverage_95")}
            RESULTS.write_text(json.dumps({**saved, "recurrent": {
                "machine": machine(), "threads": 1, "quantiles": QUANTILES, "summary": summary, "series": results}},
                indent=2, sort_keys=True))
    print(json.dumps(summary), flush=True)


def main() -> None:
    pin_threads()
    chosen = [s for s in os.environ.get("SERIES", ",".join(SERIES)).split(",") if s]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            for method in METHODS:
                started = time.monotonic()
                metrics = run_series(name, method, Path(tmp))
                results.setdefault(name, {})[method] = {**metrics, "seconds": time.monotonic() - started}
                print(f"{name:<28} {method:<15} coverage 80 % {metrics['coverage_80']:.1%}  "
                      f"95 % {metrics['coverage_95']:.1%}", flush=True)
    summary = {}
    for level, tolerance in TARGETS.items():
        key = f"coverage_{level:g}"
        mean = float(np.mean([r[key] for by_method in results.values() for r in by_method.values()]))
        summary[f"mean_{key}"] = mean
        summary[f"{key}_within_target"] = abs(100 * mean - level) <= tolerance
    if "SERIES" not in os.environ:
        with tempfile.TemporaryDirectory() as tmp:
            text = sentiment_calibration(Path(tmp))
        summary.update({f"sentiment_tfidf_{k}": v for k, v in text.items()}, sentiment_ece_within_target=text["ece"] <= 0.03)
    print(json.dumps(summary), flush=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**({"recurrent": saved["recurrent"]} if "recurrent" in saved else {}),
                                   "machine": machine(), "threads": 1, "methods": list(METHODS), "summary": summary,
                                   "series": results}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main_quantile() if "--quantile" in sys.argv[1:] else main()
