"""evaluate@<task>: every candidate (variants, an ensemble) beside every baseline, on the same origins.

What is scored and how (rolling-origin MAE / RMSE / MASE for a series, accuracy and macro-F1 for
text) is the task kind's (`TaskKind.score`, pipelines/tasks/). This stage
- logs each of the kind's baselines (`TaskKind.baselines`: statsforecast models, TF-IDF) as a pyfunc
  in a child run of the retrain's parent run, so MLflow's Compare lines them up with the variants;
- scores every candidate and baseline through its logged pyfunc, the exact object the REST server
  loads, on the validation segment (rolling-origin cross-validation: forecasts from every
  `origin_stride`-th step of the segment before the holdout, averaged: the selection score
  `validation_<metric>`) and on the holdout (the reported and gated score, `holdout_<metric>`);
- calibrates every candidate and baseline on the validation segment (`TaskKind.calibrate`: conformal
  residuals for prediction intervals, a temperature for class probabilities) and writes the result into
  its logged model as calibration.json, before the holdout is scored and before registration, so
  whichever candidate is served carries its intervals or calibrated scores (and the gate signs them);
  the holdout metrics then include interval coverage / width / Winkler score, or ECE before and after;
- builds the kind's ensemble of the best variants by cross-validation (`TaskKind.ensemble`), a
  candidate of its own;
- chooses: the best recurrent candidate by cross-validation, unless it does not beat the best
  baseline on the holdout; then the best baseline is the candidate, and metrics/<task>.json says
  plainly that the recurrent models lost and by how much.

metrics/<task>.json: `variants` {name: metrics} (recurrent candidates, the ensemble included; each
with the best baseline's as `baseline_<metric>`), `baselines` {name: metrics}, `best_variant` (best
recurrent by cross-validation), `chosen` (what promote registers), `chosen_type`, `best_baseline`,
`margin` and `verdict`, `models` {name: {type, run_id, model_uri}}, `selection`.
`score_model` re-scores the champion in promotion, on the same holdout.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd

from pipelines.config import Metric, Params
from pipelines.data.versioning import data_version
from pipelines.evaluate.intervals import write_calibration
from pipelines.project import metrics_file, prepared_dir, train_record
from pipelines.registry import CANDIDATE_TYPE_TAG, coverage_check, decide
from pipelines.runner import run_stage_main
from pipelines.tasks import Calibration, Scored, TaskKind, TaskSpec, kind_for
from pipelines.tasks.settings import task_spec
from pipelines.train.tracking import child_run, configure

VARIANT, ENSEMBLE, BASELINE = "variant", "ensemble", "baseline"
CHOSEN_TAG = "seqops.chosen"  # on the parent run: the candidate this retrain chose


def load_prepared(root: Path, task: str, spec: TaskSpec) -> pd.DataFrame:
    """The task's prepared rows with their split, as its kind scores them."""
    return kind_for(spec).load_prepared(prepared_dir(root, task))


def score_model(spec: TaskSpec, prepared: pd.DataFrame, model: Any, segment: str = "holdout") -> Scored:
    """Metrics (and plot data) on `segment` of a loaded pyfunc, or of a model URI (logged or registered)."""
    if isinstance(model, str):
        model = mlflow.pyfunc.load_model(model)
    return kind_for(spec).score(prepared, model, segment)


def best_variant(results: dict[str, dict[str, float]], key: str, goal: str) -> str:
    """The entry with the best `key`; NaN ranks last, ties go to the first name.

    Recurrent candidates are ranked by their cross-validation score, never the holdout: the holdout
    stays an unbiased estimate for the gate.
    """
    sign = 1.0 if goal == "minimize" else -1.0
    return min(results, key=lambda v: (np.nan_to_num(sign * results[v][key], nan=np.inf), v))


def _log_candidate(name: str, kind_of: str, log: Callable[[Path], str], workdir: Path, task: str,
                   root: Path) -> dict[str, str]:
    """A baseline or an ensemble as a child run of the active (parent) run, with its pyfunc logged."""
    with child_run(name, task, data_version(root)) as run_id:
        mlflow.set_tag(CANDIDATE_TYPE_TAG, kind_of)
        mlflow.log_param("candidate_type", kind_of)
        model_uri = log(workdir / name)
    return {"type": kind_of, "run_id": run_id, "model_uri": model_uri}


def store_calibration(model_uri: str, payload: dict[str, Any]) -> None:
    """calibration.json into a logged model (models:/m-...), at its root beside MLmodel, where its pyfunc reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        write_calibration(Path(tmp), payload)
        mlflow.MlflowClient().log_model_artifacts(model_uri.rsplit("/", 1)[-1], tmp)


def _score(kind: TaskKind, prepared: pd.DataFrame, model_uri: str, metric: Metric
           ) -> tuple[float, Scored, Calibration]:
    """(cross-validation score on the validation origins, holdout Scored with the calibration's metrics,
    the calibration) of one logged model, calibrated in between."""
    model = mlflow.pyfunc.load_model(model_uri)
    validation = kind.score(prepared, model, "validation")
    calibration = kind.calibrate(prepared, model, validation)
    store_calibration(model_uri, calibration.payload)
    holdout = kind.score(prepared, mlflow.pyfunc.load_model(model_uri), "holdout")
    scored = Scored({**holdout.metrics, **calibration.metrics}, holdout.details)
    return validation.metrics[metric.name], scored, calibration


def margin(recurrent: float, baseline: float, goal: str) -> float:
    """How much worse (> 0) or better (< 0) the recurrent score is than the baseline's, relative to it."""
    if not (math.isfinite(recurrent) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    worse = recurrent - baseline if goal == "minimize" else baseline - recurrent
    return worse / abs(baseline)


def _covering(rows: dict[str, dict[str, float]], floor: float) -> dict[str, dict[str, float]]:
    """The candidates whose 80 % interval meets promote.coverage_floor (the gate refuses the others);
    all of them when none does, so the gate's refusal names the reason."""
    return {name: row for name, row in rows.items() if coverage_check(row, floor)[0]} or rows


def choose(variants: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]],
           metric: Metric, floor: float = 0.0) -> dict[str, Any]:
    """The candidate promote registers, with the comparison that chose it.

    The best recurrent candidate (by cross-validation, among those whose 80 % holdout coverage meets
    `floor`, promote.coverage_floor, while any does) goes forward only if its intervals meet the
    floor and it beats the best baseline on the holdout metric (the served model must never be worse
    than any baseline there); otherwise the best baseline that meets the floor does, so that a first
    run still serves a model the gate accepts.
    """
    best = best_variant(_covering(variants, floor), f"validation_{metric.name}", metric.goal)
    base = best_variant(baselines, metric.name, metric.goal)
    fallback = best_variant(_covering(baselines, floor), metric.name, metric.goal)
    ours, theirs = variants[best][metric.name], baselines[base][metric.name]
    covered, _ = coverage_check(variants[best], floor)
    wins = covered and decide(ours, theirs, 0.0, metric.goal)[0]
    gap = margin(ours, theirs, metric.goal)
    if wins:
        verdict = (f"recurrent candidate {best} beats the best baseline {base} on the holdout: {metric.name} "
                   f"{ours:.4g} vs {theirs:.4g} ({-gap:.1%} better)")
    elif not covered:
        verdict = (f"the recurrent models lost: no recurrent candidate's 80 % interval meets "
                   f"promote.coverage_floor ({floor:.0%}); the baseline {fallback} is the candidate")
    else:
        verdict = (f"the recurrent models lost: the best, {best}, has holdout {metric.name} {ours:.4g} against "
                   f"{theirs:.4g} for the baseline {base} ({gap:.1%} worse); the baseline {fallback} is the candidate")
    return {"best_variant": best, "best_baseline": base, "chosen": best if wins else fallback,
            "chosen_type": None if wins else BASELINE, "verdict": verdict,
            "margin": {"metric": metric.name, "recurrent": ours, "baseline": theirs, "relative": gap}}


FITTED_ON_VALIDATION = ("temperature", "validation_")


def _logged_name(key: str) -> str:
    """A scored metric's MLflow key: `holdout_` + key, except for what was fitted or measured on the validation
    split (the temperature, validation ECE), which keeps its own name (a `baseline_` one too)."""
    own = key.removeprefix("baseline_")
    return key if own.startswith(FITTED_ON_VALIDATION) else f"holdout_{key}"


def _log_outcome(parent_run_id: str, choice: dict[str, Any], rows: dict[str, dict[str, float]],
                 metric: Metric) -> None:
    """The retrain's outcome on its parent run, under the keys its children use (`holdout_<metric>` of the
    chosen candidate, `holdout_baseline_<metric>` of the best baseline, tag seqops.chosen): MLflow's runs list
    shows the parents, which otherwise carried no metric at all."""
    baseline = rows[choice["best_baseline"]][metric.name]
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_metrics({_logged_name(metric.name): rows[choice["chosen"]][metric.name],
                            _logged_name(f"baseline_{metric.name}"): baseline})
        mlflow.set_tag(CHOSEN_TAG, choice["chosen"])


def evaluate_task(root: Path, task: str, params: Params) -> Path:
    spec = task_spec(root, task, params)
    kind = kind_for(spec)
    configure(root)
    record = json.loads(train_record(root, task).read_text())
    folder = prepared_dir(root, task)
    prepared = kind.load_prepared(folder)
    metric = params.promote.metric_for(spec.kind)
    cv_key = f"validation_{metric.name}"
    models = {e["variant"]: {"type": VARIANT, "run_id": e["run_id"], "model_uri": e["model_uri"]}
              for e in record["variants"]}
    scores: dict[str, tuple[float, Scored, Calibration]] = {}
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=record["parent_run_id"]):
        for name, log in kind.baselines(folder, params.training.seed).items():
            print(f"evaluate@{task}: fitting and logging baseline {name}", flush=True)
            models[name] = _log_candidate(name, BASELINE, log, Path(tmp), task, root)
        for name, entry in models.items():
            print(f"evaluate@{task}: scoring {name} on the validation origins and the holdout", flush=True)
            scores[name] = _score(kind, prepared, entry["model_uri"], metric)
        ranked = sorted((n for n in models if models[n]["type"] == VARIANT),
                        key=lambda n: (np.nan_to_num(scores[n][0] * (1 if metric.goal == "minimize" else -1),
                                                     nan=np.inf), n))
        ensemble = kind.ensemble(folder, [models[n]["model_uri"] for n in ranked])
        if ensemble is not None:
            print(f"evaluate@{task}: logging and scoring the ensemble of {', '.join(ranked)}", flush=True)
            models[ENSEMBLE] = _log_candidate(ENSEMBLE, ENSEMBLE, ensemble, Path(tmp), task, root)
            scores[ENSEMBLE] = _score(kind, prepared, models[ENSEMBLE]["model_uri"], metric)
    baselines = {n: scores[n][1] for n in models if models[n]["type"] == BASELINE}
    best_base = best_variant({n: s.metrics for n, s in baselines.items()}, metric.name, metric.goal)
    reference = {f"baseline_{k}": v for k, v in baselines[best_base].metrics.items()}
    val_losses = {e["variant"]: e["val_loss"] for e in record["variants"]}
    variants, baseline_results = {}, {}
    for name, entry in models.items():
        selection, scored, calibration = scores[name]
        metrics = {**scored.metrics, **({} if entry["type"] == BASELINE else reference)}
        with mlflow.start_run(run_id=entry["run_id"]):
            mlflow.log_metrics({**{_logged_name(k): v for k, v in {**scored.metrics, **reference}.items()},
                                cv_key: selection})
        kind.plot(entry["run_id"], f"{task}/{name} holdout", scored, baselines)
        kind.plot_calibration(entry["run_id"], f"{task}/{name} holdout", calibration)
        row = {**metrics, cv_key: selection, **({"val_loss": val_losses[name]} if name in val_losses else {})}
        (baseline_results if entry["type"] == BASELINE else variants)[name] = row
    choice = choose(variants, baseline_results, metric, params.promote.coverage_floor)
    choice["chosen_type"] = choice["chosen_type"] or models[choice["chosen"]]["type"]
    _log_outcome(record["parent_run_id"], choice, {**variants, **baseline_results}, metric)
    print(f"evaluate@{task}: {choice['verdict']}", flush=True)
    out = metrics_file(root, task)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": task, "selection": f"{cv_key} ({metric.goal}), {kind.selection_method}",
                               **choice, "variants": variants, "baselines": baseline_results, "models": models},
                              indent=2, sort_keys=True))
    return out


if __name__ == "__main__":
    run_stage_main("evaluate", evaluate_task)
