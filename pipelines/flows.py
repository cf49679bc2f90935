"""Prefect: the retrain flow, one Prefect task per stage of the trip.

DVC decides what is stale and runs each stage's one definition (pipelines/stages/*, through
dvc.yaml); Prefect adds retries, observability and, later, schedules. Nothing here re-implements
a stage.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from pipelines import ingest, registry, versioning
from pipelines.config import load_params
from pipelines.paths import project_root
from pipelines.stages.evaluate import load_prepared, score_model

STAGES = ("prepare", "train", "evaluate")


def _stage_environment() -> None:
    """DVC runs stage commands with the first `python` on PATH: make it this interpreter's."""
    bindir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


@task(retries=2, retry_delay_seconds=5)
def version_data(root: str, task_name: str) -> dict[str, str]:
    """Ingest the task's source if it has no raw data yet, then `dvc add data` and `dvc push`."""
    logger = get_run_logger()
    path = Path(root)
    params = load_params(path / "params.yaml")
    raw = ingest.raw_path(path, task_name)
    if not raw.exists():
        logger.info("ingesting %s from %s", task_name, params.task(task_name).source)
        ingest.ingest(task_name, params, path)
    version = versioning.track(path)
    versioning.push(path)
    logger.info("data version %s (git %s) pushed", version.md5, version.git_sha[:12])
    return {"md5": version.md5, "git_sha": version.git_sha}


@task
def run_stage(root: str, stage: str, force: bool) -> bool:
    """One dvc.yaml stage (prepare@task, ...); returns whether DVC ran it or found it up to date."""
    _stage_environment()
    ran = versioning.reproduce(Path(root), stage, force=force)
    get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


@task
def promote(root: str, task_name: str) -> dict[str, Any]:
    """Register the best variant; move `champion` only if it beats the champion on the same holdout."""
    path = Path(root)
    params = load_params(path / "params.yaml")
    spec = params.task(task_name)
    prepared = load_prepared(path, task_name, spec)
    metric = params.promote.metric_for(spec.kind).name

    def rescore(model_uri: str) -> float:
        return float(score_model(spec, prepared, model_uri)["metrics"][metric])

    decision = registry.promote(path, task_name, params, rescore)
    get_run_logger().info("%s v%s: %s (%s)", task_name, decision.version,
                          "promoted to champion" if decision.promoted else "not promoted", decision.reason)
    return asdict(decision)


@flow(name="retrain")
def retrain(tasks: list[str] | None = None, force: bool = False, root: str | None = None) -> dict[str, Any]:
    """Version data -> prepare -> train variants -> evaluate -> promote, for each task.

    When DVC finds every stage of a task up to date (same data, params and code) the task is
    skipped unless `force`: a nightly schedule only trains when something changed.
    """
    base = Path(root) if root else project_root()
    params = load_params(base / "params.yaml")
    summary: dict[str, Any] = {}
    for name in tasks or list(params.tasks):
        params.task(name)
        data = version_data(str(base), name)
        ran = [run_stage(str(base), f"{stage}@{name}", force) for stage in STAGES]
        decision = promote(str(base), name) if any(ran) else None
        summary[name] = {"data": data, "trained": any(ran), "decision": decision}
    return summary
