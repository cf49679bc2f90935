"""The Prefect policy around retrain: what is retried, where variants run, one retrain per task, failure summary."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow.exceptions import MlflowException

from pipelines.config import ConfigError, load_params
from pipelines.config_runtime import Orchestration, TaskRunner
from pipelines.data.versioning import VersioningError
from pipelines.orchestration.policy import is_transient, limit_name, one_retrain_at_a_time, retrying, task_runner
from tests.conftest import REPO, TINY_FORECAST, make_project
from tests.orchestration.conftest import free_port

UNREACHABLE_MLFLOW = ("API request to endpoint /api/2.0/mlflow/runs/create failed with exception "
                      "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: ... "
                      "Failed to establish a new connection: [Errno 111] Connection refused")


def _dvc_lock_error() -> BaseException:
    from dvc.lock import LockError

    return LockError("Unable to acquire lock. Most likely another DVC process is running")


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize("error", [
    ConnectionRefusedError(111, "Connection refused"),
    httpx.ConnectError("All connection attempts failed"),
    MlflowException(UNREACHABLE_MLFLOW),
    _chained(RuntimeError("logging failed"), TimeoutError("read timed out")),
    VersioningError("stage train@forecast failed: failed to reproduce 'train@forecast': Unable to acquire lock"),
    sqlite3.OperationalError("database is locked"),
], ids=["refused", "httpx", "mlflow-unreachable", "chained-timeout", "dvc-lock-message", "sqlite-busy"])
def test_transient_errors_are_retried(error: BaseException) -> None:
    assert is_transient(error)


def test_dvc_lock_error_is_transient() -> None:
    assert is_transient(_dvc_lock_error())


@pytest.mark.parametrize("error", [
    ValueError("column 'co2' row 7: 'x' is not a number"),
    KeyError("val_loss"),
    FileNotFoundError("data/forecast/raw.parquet"),
    MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model with name=seqops-forecast not found"),
    VersioningError("stage train@forecast failed: failed to reproduce 'train@forecast': exited with 1"),
], ids=["bad-value", "bug", "missing-file", "mlflow-not-found", "stage-crash"])
def test_bugs_and_bad_data_fail_at_once(error: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")
    assert not is_transient(error)


def test_a_crashed_stage_is_retried_when_the_tracking_server_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert is_transient(VersioningError("stage evaluate@forecast failed: failed to reproduce 'evaluate@forecast'"))


def test_retries_back_off_exponentially_from_params() -> None:
    from prefect import task

    @task
    def step() -> None:
        return None

    retried = retrying(Orchestration(retries=3, retry_delay_seconds=5))(step)
    assert retried.retries == 3 and retried.retry_delay_seconds == [5, 10, 20]
    assert retried.retry_jitter_factor == 0.2 and retried.retry_condition_fn is not None


def test_variants_fan_out_on_a_local_dask_cluster_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_dask import DaskTaskRunner

    monkeypatch.delenv("SEQOPS_DASK_ADDRESS", raising=False)

    runner = task_runner(TaskRunner(), variants=4, scratch=Path("/srv/project/.seqops/dask"))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["local_directory"] == "/srv/project/.seqops/dask"
    assert runner.cluster_class == "distributed.LocalCluster" and runner.address is None
    assert runner.cluster_kwargs["n_workers"] == 2 and runner.cluster_kwargs["threads_per_worker"] == 1


def test_one_setting_points_the_fan_out_at_an_existing_dask_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEQOPS_DASK_ADDRESS", raising=False)
    runner = task_runner(TaskRunner(address="tcp://dask-scheduler:8786"), variants=1)
    assert runner.address == "tcp://dask-scheduler:8786"
    monkeypatch.setenv("SEQOPS_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert task_runner(TaskRunner(), variants=3).address == "tcp://10.0.0.5:8786"


@pytest.mark.parametrize("settings, variants", [(TaskRunner(), 1), (TaskRunner(kind="sequential"), 4)])
def test_a_single_variant_or_sequential_runs_in_the_flows_process(settings: TaskRunner, variants: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    monkeypatch.delenv("SEQOPS_DASK_ADDRESS", raising=False)

    runner = task_runner(settings, variants)
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 1


def test_orchestration_and_trainer_settings_are_validated_with_the_key_named(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["orchestration"] = {"task_runner": {"kind": "spark"}}
    params["training"]["num_nodes"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as error:
        load_params(tmp_path)
    assert "orchestration.task_runner.kind: Input should be 'dask' or 'sequential'" in str(error.value)
    assert "training.num_nodes: Input should be greater than 0" in str(error.value)


def test_a_local_dask_cluster_leaves_this_process_environment_as_it_was(prefect_harness, tmp_path: Path) -> None:
    """The stages after training are subprocesses of this process and inherit its environment, which Dask's
    nanny writes its workers' settings into (MALLOC_TRIM_THRESHOLD_ made evaluate three times slower)."""
    from prefect import flow, task

    from pipelines.orchestration.flows import environment_kept

    @task
    def malloc_setting() -> str | None:
        return os.environ.get("MALLOC_TRIM_THRESHOLD_")

    @flow
    def fan_out() -> list[str | None]:
        return [future.result() for future in [malloc_setting.submit(), malloc_setting.submit()]]

    runner = task_runner(TaskRunner(), variants=2, scratch=tmp_path / "dask")
    before = dict(os.environ)
    with environment_kept():
        assert fan_out.with_options(task_runner=runner)() == ["65536", "65536"]  # the workers keep Dask's setting
        assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536"  # and it leaked here
    assert dict(os.environ) == before


def test_lightning_strategy_devices_and_nodes_pass_through_from_params(tmp_path: Path) -> None:
    from models import GradientHealth
    from pipelines.train.stage import RestoreBestEpoch, trainer_for

    params = load_params(REPO, overrides=["training.accelerator=cpu", "training.devices=1",
                                                           "training.strategy=ddp", "training.num_nodes=2"])
    trainer = trainer_for(params, params.task("forecast"), "0" * 32, tmp_path, "t", GradientHealth(),
                          RestoreBestEpoch())
    assert trainer.num_nodes == 2 and type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.num_devices == 1


# --- with a Prefect API --------------------------------------------------------------------------------

def test_transient_failures_are_retried_and_others_fail_on_the_first_try(prefect_harness) -> None:
    from prefect import flow, task

    calls = {"flaky": 0, "broken": 0}

    @task
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"

    @task
    def broken() -> None:
        calls["broken"] += 1
        raise ValueError("column 'co2' row 7: 'x' is not a number")

    retry = retrying(Orchestration(retries=3, retry_delay_seconds=0.05))

    @flow
    def nightly() -> tuple[str, bool]:
        return retry(flaky)(), retry(broken)(return_state=True).is_failed()

    assert nightly() == ("ok", True)
    assert calls == {"flaky": 3, "broken": 1}


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes) -> Path:
    root = make_project(tmp_path / "project", {"forecast": {**TINY_FORECAST, **changes}})
    monkeypatch.setenv("SEQOPS_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / '.seqops' / 'mlflow.db'}")
    return root


@pytest.fixture
def broken_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose data source is missing: its retrain fails at the first step, for a clear reason."""
    return _project(tmp_path, monkeypatch, source="missing.csv")


@pytest.fixture
def unpreparable_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose retrain versions its data, then fails in prepare (a holdout longer than the series)."""
    return _project(tmp_path, monkeypatch, prepare={**TINY_FORECAST["prepare"], "holdout": 5000})


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_failed_retrain_logs_one_summary_naming_the_step_and_the_cause(prefect_harness, broken_project: Path) -> None:
    from pipelines.orchestration.flows import retrain

    records, logger = Records(), logging.getLogger("prefect.flow_runs")
    logger.addHandler(records)
    try:
        state = retrain(root=str(broken_project), return_state=True)
    finally:
        logger.removeHandler(records)

    assert state.is_failed()
    summaries = [m for m in records.messages if "retrain FAILED" in m]
    assert len(summaries) == 1
    assert "step version-data failed after 1 try" in summaries[0]
    assert "missing.csv" in summaries[0] and "champion aliases are unchanged" in summaries[0]


def test_a_second_retrain_of_a_task_waits_for_the_first(prefect_harness, unpreparable_project: Path) -> None:
    from prefect import get_client

    from pipelines.orchestration.flows import retrain

    outcome: dict[str, object] = {}

    def second() -> None:
        outcome["state"] = retrain(root=str(unpreparable_project), return_state=True)

    with one_retrain_at_a_time("forecast", 1):
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(6)
        assert waiting.is_alive() and "state" not in outcome
        assert not (unpreparable_project / "prepared" / "forecast").exists()
    waiting.join(timeout=120)
    assert not waiting.is_alive() and outcome["state"].is_failed()  # it went on to prepare (and failed there)
    assert "prepare@forecast" in str(outcome["state"].message)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(limit_name("forecast"))
    assert limit.limit == 1 and limit.active_slots == 0
