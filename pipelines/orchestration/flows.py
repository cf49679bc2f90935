"""Prefect: the retrain flow, one Prefect task per stage of the trip, the variants fanned out.

DVC decides what is stale and runs each stage's one definition (pipelines/<stage>/, through
dvc.yaml). Prefect adds what DVC lacks (pipelines/orchestration/policy.py): the variants of train@<task>
as parallel tasks on a Dask task runner, retries of transient failures, one retrain per task at a
time, a failure summary, and schedules (pipelines/orchestration/schedule.py). Nothing here re-implements a stage:
the fanned-out train calls the stage's own `train_variant` once per variant and writes the stage's
output, then `dvc commit` records it in dvc.lock exactly as `dvc repro` would have.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.states import Cancelled, State

from pipelines import console, registry
from pipelines.config import load_params
from pipelines.data import fingerprint, ingest, versioning
from pipelines.orchestration import policy as orchestration
from pipelines.orchestration import recovery
from pipelines.processes import raise_if_interrupted, stop_at_stage_boundaries
from pipelines.project import project_root, raw_path, seqops_home, tracking_uri
from pipelines.tasks.settings import task_spec

SCHEDULED_RUN_ENV = "SEQOPS_SCHEDULED_RUN"  # "1" in the runs `seqops schedule` starts (its children inherit it)


def _stage_environment() -> None:
    """DVC runs stage commands with the first `python` on PATH: make it this interpreter's."""
    bindir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


@contextmanager
def environment_kept() -> Iterator[None]:
    """os.environ as it was, once the block ends.

    Dask's LocalCluster writes its workers' settings into this process's environment (its nanny applies
    `distributed.nanny.pre-spawn-environ` here: MALLOC_TRIM_THRESHOLD_=65536, PYTHONHASHSEED, thread
    counts), and every later stage's subprocess inherited them: glibc returning memory after every free
    made evaluate@forecast's AutoETS fits three times slower (139 s against 47 s in `make run`).
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@task(task_run_name="version-data")
def version_data(root: str, task_names: list[str]) -> dict[str, str]:
    """Ingest each task's source when it has no raw data yet or the source changed (its fingerprint,
    pipelines/data/fingerprint.py), then `dvc add data` and `dvc push`.

    One version for the whole retrain: data.dvc covers every task's raw data, so every run of this
    retrain is tagged with the version data.dvc records at its end.
    """
    from pipelines.tasks import kind_for

    logger = get_run_logger()
    path = Path(root)
    params = load_params(path)
    remote = versioning.use_remote_from_env(path)
    if any(not raw_path(path, name).is_file() for name in params.tasks) and versioning.restore(path):
        logger.info("restored the raw data data.dvc records from the DVC remote (this workspace lacked it)")
    for task_name in task_names:
        spec = params.task(task_name)
        source = spec.source
        reason = fingerprint.reingest_reason(path, task_name, source, kind_for(spec).read_settings())
        if reason is not None:
            logger.info("ingesting %s from %s: %s", task_name, source, reason)
            with console.timed(task_name, "ingest") as step:
                step.note = "; ".join(filter(None, [reason, ingest.ingest(task_name, params, path).note]))
    with console.timed("data", "version") as step:
        version = versioning.track(path)
        versioning.push(path)
        step.note = f"md5 {version.md5[:12]}, pushed"
    logger.info("data version %s (git %s) pushed%s", version.md5, version.git_sha[:12],
                f" to {remote}" if remote else "")
    return {"md5": version.md5, "git_sha": version.git_sha}


@task(task_run_name="{stage}")
def run_stage(root: str, stage: str, force: bool) -> bool:
    """One dvc.yaml stage (prepare@task, ...); returns whether DVC ran it or found it up to date."""
    _stage_environment()
    name, _, task_name = stage.partition("@")
    with console.timed(task_name, name) as step:
        ran = versioning.reproduce(Path(root), stage, force=force)
        step.status = "done" if ran else "up to date"
    get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


@task(task_run_name="dvc-status[{stage}]")
def stage_is_stale(root: str, stage: str) -> bool:
    """Whether DVC would rerun `stage`: its data, params, code or outputs changed."""
    stale = versioning.stage_changed(Path(root), stage)
    if not stale:
        name, _, task_name = stage.partition("@")
        console.report(task_name, name, "up to date")
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

    from pipelines.tasks import kind_for
    from pipelines.train.stage import train_variant
    from pipelines.train.tracking import configure

    os.environ["MLFLOW_TRACKING_URI"] = tracking
    path = Path(root)
    params = load_params(path)
    spec = task_spec(path, task_name, params)
    torch.set_num_threads(params.training.num_threads)
    chosen = next(v for v in spec.variants if v.name == variant)
    configure(path)
    with _inside_parent(parent_run_id), tempfile.TemporaryDirectory() as tmp:
        result = train_variant(path, task_name, params, chosen, kind_for(spec), Path(tmp))
    get_run_logger().info("%s/%s: val_loss %.4f, run %s", task_name, variant, result["val_loss"], result["run_id"])
    return result


@flow(name="train-variants")
def train_variants(root: str, task_name: str) -> str:
    """train@<task>, its variants fanned out: one MLflow parent run, one Prefect task and child run each.

    Writes the stage's output (artifacts/<task>/train.json) and records the stage in dvc.lock.
    """
    from pipelines.tasks import kind_for
    from pipelines.train.stage import pretrain_task, write_record
    from pipelines.train.tracking import parent_run

    path = Path(root)
    params = load_params(path)
    spec = task_spec(path, task_name, params)
    train = orchestration.retrying(params.orchestration)(train_one_variant)
    with console.timed(task_name, "train") as step:
        with parent_run(task_name, path, versioning.data_version(path)) as parent_id:
            pretrain_task(path, task_name, params, kind_for(spec))
            futures = [train.submit(root, task_name, v.name, parent_id, tracking_uri(path)) for v in spec.variants]
            wait(futures)
            results = [future.result() for future in futures]
        write_record(path, task_name, parent_id, results)
        versioning.commit_stage(path, f"train@{task_name}")
        step.note = f"{len(results)} variant{'s' if len(results) != 1 else ''}"
    return parent_id


@task(task_run_name="promote[{task_name}]")
def promote(root: str, task_name: str) -> dict[str, Any]:
    """Register the best variant; move `champion` only if it beats the champion on the same holdout."""
    from pipelines.evaluate.stage import load_prepared, score_model

    path = Path(root)
    params = load_params(path)
    spec = task_spec(path, task_name, params)
    prepared = load_prepared(path, task_name, spec)
    metric = params.promote.metric_for(spec.kind).name

    def rescore(model_uri: str) -> float:
        return float(score_model(spec, prepared, model_uri).metrics[metric])

    from pipelines.tasks import kind_for

    with console.timed(task_name, "promote") as step:
        kind = kind_for(spec)
        decision = registry.promote(path, task_name, params, rescore, kind.holdout_split(), kind.outputs(),
                                    json.dumps(spec.serving.model_dump(), sort_keys=True))
        step.note = f"v{decision.version} {'promoted' if decision.promoted else 'not promoted'}"
    get_run_logger().info("%s v%s: %s (%s)", task_name, decision.version,
                          "promoted to champion" if decision.promoted else "not promoted", decision.reason)
    return asdict(decision)


def _retrain_task(root: str, name: str, force: bool, data: dict[str, str]) -> dict[str, Any]:
    params = load_params(Path(root))
    retry = orchestration.retrying(params.orchestration)
    raise_if_interrupted()  # before each stage and the promotion: a Ctrl-C stops the run there
    ran = [retry(run_stage)(root, f"prepare@{name}", force)]
    raise_if_interrupted()
    stale = force or retry(stage_is_stale)(root, f"train@{name}")
    if stale:
        runner = orchestration.task_runner(params.orchestration.task_runner, len(task_spec(Path(root), name, params).variants),
                                           scratch=seqops_home(Path(root)) / "dask")
        with environment_kept():
            train_variants.with_options(task_runner=runner)(root, name)
    ran.append(stale)
    raise_if_interrupted()
    ran.append(retry(run_stage)(root, f"evaluate@{name}", force))
    raise_if_interrupted()
    # a promote that failed or was killed after evaluate committed leaves no stage stale: decided() sees it
    decision = retry(promote)(root, name) if any(ran) or not registry.decided(Path(root), name) else None
    return {"data": data, "trained": any(ran), "decision": decision}


@flow(name="retrain", on_failure=[orchestration.report_failure])
def retrain(tasks: list[str] | None = None, force: bool = False, root: str | None = None) -> dict[str, Any] | State:
    """Version data -> prepare -> train variants -> evaluate -> promote, for each task.

    When DVC finds every stage of a task up to date (same data, params and code) the task is
    skipped unless `force`: a nightly schedule only trains when something changed. Retrains of
    one task never overlap (Prefect global concurrency limit retrain-<task>).

    A run `seqops schedule` started (SCHEDULED_RUN_ENV set) that the scheduler tells to stop (its Ctrl-C or
    SIGTERM, relayed) ends its stage in flight and stops at the next stage boundary, Cancelled; stages
    that finished stay done, and the next run goes on from there.
    """
    if os.environ.get(SCHEDULED_RUN_ENV) != "1":
        return _retrain(tasks, force, root)
    with stop_at_stage_boundaries():
        try:
            return _retrain(tasks, force, root)
        except KeyboardInterrupt:
            message = ("stopped at a stage boundary: `seqops schedule` is stopping; stages that finished stay "
                       "done, and the next run goes on from there")
            get_run_logger().warning(message)
            return Cancelled(message=message)


def _retrain(tasks: list[str] | None, force: bool, root: str | None) -> dict[str, Any]:
    base = Path(root) if root else project_root()
    params = load_params(base)
    names = tasks or list(params.tasks)
    for name in names:
        params.task(name)
    _stage_environment()
    for repaired in recovery.recover(base):
        get_run_logger().warning("after a crash: %s", repaired)
    raise_if_interrupted()
    data = orchestration.retrying(params.orchestration)(version_data)(str(base), names)
    summary: dict[str, Any] = {}
    for name in names:
        with orchestration.one_retrain_at_a_time(name, params.orchestration.concurrency, seqops_home(base)):
            if killed := recovery.mark_killed_runs(base, name):
                get_run_logger().warning("after a crash: marked %d MLflow run(s) of %s left RUNNING by a dead "
                                         "process KILLED", len(killed), name)
            summary[name] = _retrain_task(str(base), name, force, data)
    return summary
