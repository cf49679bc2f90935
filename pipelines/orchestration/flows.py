"""Prefect: the retrain flow, one Prefect task per stage of the trip, the variants fanned out.

DVC decides what is stale and runs each stage's one definition (pipelines/<stage>/, through
dvc.yaml). Prefect adds what DVC lacks (pipelines/orchestration/policy.py): the variants of train@<task>
as parallel tasks on a Dask task runner, retries of transient failures, one retrain per task at a
time, a failure summary, and schedules (pipelines/orchestration/schedule.py). Nothing here re-implements a stage:
the fanned-out train calls the stage's own `train_variant` once per variant and writes the stage's
output, then `dvc commit` records it in dvc.lock exactly as `dvc repro` would have.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger, task
from prefect.futures import wait

from pipelines import registry
from pipelines.config import load_params
from pipelines.data import ingest, versioning
from pipelines.orchestration import policy as orchestration
from pipelines.project import project_root, raw_path, seqops_home, tracking_uri


def _stage_environment() -> None:
    """DVC runs stage commands with the first `python` on PATH: make it this interpreter's."""
    bindir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


@task(task_run_name="version-data")
def version_data(root: str, task_names: list[str]) -> dict[str, str]:
    """Ingest each task's source if it has no raw data yet, then `dvc add data` and `dvc push`.

    One version for the whole retrain: data.dvc covers every task's raw data, so every run of this
    retrain is tagged with the version data.dvc records at its end.
    """
    logger = get_run_logger()
    path = Path(root)
    params = load_params(path)
    for task_name in task_names:
        if not raw_path(path, task_name).exists():
            logger.info("ingesting %s from %s", task_name, params.task(task_name).source)
            ingest.ingest(task_name, params, path)
    remote = versioning.use_remote_from_env(path)
    version = versioning.track(path)
    versioning.push(path)
    logger.info("data version %s (git %s) pushed%s", version.md5, version.git_sha[:12],
                f" to {remote}" if remote else "")
    return {"md5": version.md5, "git_sha": version.git_sha}


@task(task_run_name="{stage}")
def run_stage(root: str, stage: str, force: bool) -> bool:
    """One dvc.yaml stage (prepare@task, ...); returns whether DVC ran it or found it up to date."""
    _stage_environment()
    ran = versioning.reproduce(Path(root), stage, force=force)
    get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


@task(task_run_name="dvc-status[{stage}]")
def stage_is_stale(root: str, stage: str) -> bool:
    """Whether DVC would rerun `stage`: its data, params, code or outputs changed."""
    stale = versioning.stage_changed(Path(root), stage)
    get_run_logger().info("%s: %s", stage, "stale" if stale else "up to date, skipped")
    return stale


@contextmanager
def _inside_parent(parent_run_id: str) -> Iterator[None]:
    """Make the retrain's parent run the active MLflow run of this thread or worker process."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == parent_run_id:
        yield
        return
    with mlflow.start_run(run_id=parent_run_id):
        yield


@task(task_run_name="train[{task_name}/{variant}]")
def train_one_variant(root: str, task_name: str, variant: str, parent_run_id: str, tracking: str) -> dict[str, Any]:
    """One variant of train@<task> as the stage defines it, as a child run of `parent_run_id`.

    Runs wherever the task runner puts it (a Dask worker process, or a thread of the flow), so it
    sets up its own MLflow target and torch threads.
    """
    import torch

    from pipelines.train.stage import adapter_for, train_variant
    from pipelines.train.tracking import configure

    os.environ["MLFLOW_TRACKING_URI"] = tracking
    path = Path(root)
    params = load_params(path)
    spec = params.task(task_name)
    torch.set_num_threads(params.training.num_threads)
    chosen = next(v for v in spec.variants if v.name == variant)
    configure(path)
    with _inside_parent(parent_run_id), tempfile.TemporaryDirectory() as tmp:
        result = train_variant(path, task_name, params, chosen, adapter_for(path, task_name, spec), Path(tmp))
    get_run_logger().info("%s/%s: val_loss %.4f, run %s", task_name, variant, result["val_loss"], result["run_id"])
    return result


@flow(name="train-variants")
def train_variants(root: str, task_name: str) -> str:
    """train@<task>, its variants fanned out: one MLflow parent run, one Prefect task and child run each.

    Writes the stage's output (artifacts/<task>/train.json) and records the stage in dvc.lock.
    """
    from pipelines.train.stage import write_record
    from pipelines.train.tracking import parent_run

    path = Path(root)
    params = load_params(path)
    spec = params.task(task_name)
    train = orchestration.retrying(params.orchestration)(train_one_variant)
    with parent_run(task_name, path, versioning.data_version(path)) as parent_id:
        futures = [train.submit(root, task_name, v.name, parent_id, tracking_uri(path)) for v in spec.variants]
        wait(futures)
        results = [future.result() for future in futures]
    write_record(path, task_name, parent_id, results)
    versioning.commit_stage(path, f"train@{task_name}")
    return parent_id


@task(task_run_name="promote[{task_name}]")
def promote(root: str, task_name: str) -> dict[str, Any]:
    """Register the best variant; move `champion` only if it beats the champion on the same holdout."""
    from pipelines.evaluate.stage import load_prepared, score_model

    path = Path(root)
    params = load_params(path)
    spec = params.task(task_name)
    prepared = load_prepared(path, task_name, spec)
    metric = params.promote.metric_for(spec.kind).name

    def rescore(model_uri: str) -> float:
        return float(score_model(spec, prepared, model_uri)["metrics"][metric])

    decision = registry.promote(path, task_name, params, rescore)
    get_run_logger().info("%s v%s: %s (%s)", task_name, decision.version,
                          "promoted to champion" if decision.promoted else "not promoted", decision.reason)
    return asdict(decision)


def _retrain_task(root: str, name: str, force: bool, data: dict[str, str]) -> dict[str, Any]:
    params = load_params(Path(root))
    retry = orchestration.retrying(params.orchestration)
    ran = [retry(run_stage)(root, f"prepare@{name}", force)]
    stale = force or retry(stage_is_stale)(root, f"train@{name}")
    if stale:
        runner = orchestration.task_runner(params.orchestration.task_runner, len(params.task(name).variants),
                                           scratch=seqops_home(Path(root)) / "dask")
        train_variants.with_options(task_runner=runner)(root, name)
    ran.append(stale)
    ran.append(retry(run_stage)(root, f"evaluate@{name}", force))
    decision = retry(promote)(root, name) if any(ran) else None
    return {"data": data, "trained": any(ran), "decision": decision}


@flow(name="retrain", on_failure=[orchestration.report_failure])
def retrain(tasks: list[str] | None = None, force: bool = False, root: str | None = None) -> dict[str, Any]:
    """Version data -> prepare -> train variants -> evaluate -> promote, for each task.

    When DVC finds every stage of a task up to date (same data, params and code) the task is
    skipped unless `force`: a nightly schedule only trains when something changed. Retrains of
    one task never overlap (Prefect global concurrency limit retrain-<task>).
    """
    base = Path(root) if root else project_root()
    params = load_params(base)
    names = tasks or list(params.tasks)
    for name in names:
        params.task(name)
    _stage_environment()
    data = orchestration.retrying(params.orchestration)(version_data)(str(base), names)
    summary: dict[str, Any] = {}
    for name in names:
        with orchestration.one_retrain_at_a_time(name, params.orchestration.concurrency):
            summary[name] = _retrain_task(str(base), name, force, data)
    return summary
