"""Prefect policy around the retrain flow: where variants train, what is retried, what runs at once.

- Task runner: the variants of one retrain fan out on Dask (prefect-dask's DaskTaskRunner): a
  LocalCluster by default, an existing scheduler when params.orchestration.task_runner.address is
  set; `sequential` trains one variant at a time in the flow's process.
- Retries: only transient failures (a server that does not answer, DVC's workspace lock held, a
  busy SQLite store) are retried, with exponential backoff; a bug or bad data fails at once.
- Concurrency: one retrain per task at a time, through a Prefect global concurrency limit
  `retrain-<task>` (params.orchestration.concurrency slots).
- Failure hook: a failed retrain logs one summary: which step, after how many tries, why.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from pipelines.config_runtime import Orchestration, TaskRunner

LIMIT_PREFIX = "retrain-"
SLOT_WAIT_S = 60.0  # longest wait for a free retrain-<task> slot before saying who holds it
DASK_ADDRESS_ENV = "SEQOPS_DASK_ADDRESS"  # overrides params' task_runner.address (e.g. set by compose)

# Text that marks a failure as transient once DVC or MLflow has flattened the exception into a message.
_TRANSIENT_TEXT = re.compile(
    r"Unable to acquire lock|Connection refused|Max retries exceeded|Failed to establish a new connection"
    r"|Temporary failure in name resolution|Name or service not known|Connection reset|Connection aborted"
    r"|Remote end closed connection|RemoteDisconnected|timed out|database is locked|TEMPORARILY_UNAVAILABLE"
    r"|(?:error|status) code:? (?:502|503|504)\b|\b(?:502 Bad Gateway|503 Service Unavailable|504 Gateway Timeout)\b",
    re.IGNORECASE,
)
_TRANSIENT_TYPES = {"LockError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "ConcurrencySlotAcquisitionError"}


def limit_name(task: str) -> str:
    return f"{LIMIT_PREFIX}{task}"


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx
    import requests

    return (ConnectionError, TimeoutError, httpx.TransportError, requests.ConnectionError, requests.Timeout)


def tracking_server_down() -> bool:
    """True when MLFLOW_TRACKING_URI is an HTTP server that does not answer /health right now."""
    import httpx

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return False
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=5).status_code != 200
    except httpx.HTTPError:
        return True


def is_transient(error: BaseException) -> bool:
    """Whether a failure is worth retrying: a server unreachable, a lock held, a store busy.

    A DVC stage runs in its own process, so its failure arrives as "failed to reproduce ..." with
    the cause only in the stage's log: it counts as transient when the MLflow server is down now.
    """
    chain = list(_chain(error))
    if any(isinstance(e, _transport_errors()) or type(e).__name__ in _TRANSIENT_TYPES for e in chain):
        return True
    text = " ".join(str(e) for e in chain)
    if _TRANSIENT_TEXT.search(text):
        return True
    return "failed to reproduce" in text and tracking_server_down()


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry a failed task run only when its error is transient."""
    try:
        state.result()
    except BaseException as error:  # the task's own exception, re-raised by result()
        transient = is_transient(error)
        if transient:
            from prefect.logging import get_logger

            get_logger("seqops.retry").warning("%s failed with a transient error, retrying: %s",
                                               getattr(task_run, "name", task), error)
        return transient
    return False


def retrying(settings: Orchestration) -> Callable[[Any], Any]:
    """task -> the same task with params' retries: exponential backoff, jitter, transient errors only."""
    from prefect.tasks import exponential_backoff

    def apply(task: Any) -> Any:
        return task.with_options(retries=settings.retries,
                                 retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_delay_seconds),
                                 retry_jitter_factor=0.2, retry_condition_fn=retry_transient)
    return apply


def task_runner(settings: TaskRunner, variants: int, scratch: Path | None = None) -> Any:
    """The runner for one retrain's variants.

    dask + address (or $SEQOPS_DASK_ADDRESS): that scheduler (its workers need this project installed,
    the checkout at the same path and the same MLFLOW_/PREFECT_/AWS_ variables); dask without one: a
    LocalCluster of min(n_workers, variants) single-threaded worker processes, or none at all for a
    single variant; sequential: one variant at a time. `scratch`: the LocalCluster's working directory
    (default: Dask's, under the system temp directory).
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    address = os.environ.get(DASK_ADDRESS_ENV) or settings.address
    if settings.kind == "dask" and address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=address)
    if settings.kind == "dask" and variants > 1:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
            "n_workers": min(settings.n_workers, variants), "threads_per_worker": settings.threads_per_worker,
            "processes": True, "dashboard_address": None, "silence_logs": logging.ERROR,
            **({"local_directory": str(scratch)} if scratch else {})})
    return ThreadPoolTaskRunner(max_workers=1)


@contextmanager
def one_retrain_at_a_time(task: str, slots: int, home: Path | None = None,
                          wait_s: float = SLOT_WAIT_S) -> Iterator[None]:
    """Hold a slot of the global concurrency limit retrain-<task> (created or resized to `slots`).

    Slots of dead holders are released first (pipelines.orchestration.recovery; holders are recorded
    under `home`, default the project's .seqops/). When live retrains hold every slot this says so,
    naming them, and waits at most `wait_s` before raising RetrainBusy: never a silent hang.
    """
    from prefect import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.logging import get_logger

    from pipelines.orchestration.recovery import RetrainBusy, SlotHolders, busy_message, waiting_message

    name = limit_name(task)
    holders = SlotHolders(name, home)
    with ExitStack() as held:
        with holders.locked(), get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(name, slots)
            live = holders.reclaim(lambda dead, seconds: client.release_concurrency_slots([name], dead, seconds))
            granted = held.enter_context(holders.waiting())
        if len(live) >= slots:
            get_logger("seqops.concurrency").warning(waiting_message(name, live, wait_s))
        try:
            held.enter_context(concurrency(name, occupy=1, strict=True, timeout_seconds=wait_s))
        except TimeoutError:
            raise RetrainBusy(busy_message(name, live, wait_s)) from None
        granted()
        yield


def failure_summary(flow_run: Any, state: Any, failed_tasks: list[Any], cause: str | None = None) -> str:
    """One readable paragraph: the flow run, the step(s) that failed and why, and what that means.

    `cause`: a stage subprocess's own one-line cause (DVC only says the stage "exited with 1").
    """
    params = getattr(flow_run, "parameters", {}) or {}
    tasks = params.get("tasks") or "all tasks"
    lines = [f"retrain FAILED (flow run {flow_run.name!r}, tasks: {tasks}, force: {params.get('force', False)})"]
    for run in failed_tasks:
        tries = getattr(run, "run_count", 1) or 1
        message = run.state.message if run.state else ""
        lines.append(f"  step {run.name} failed after {tries} tr{'y' if tries == 1 else 'ies'}: {message}")
    if not failed_tasks:
        lines.append(f"  {state.message}")
    if cause:
        lines.append(f"  root cause: {cause}")
    lines.append("  No model was promoted by this run; champion aliases are unchanged. "
                 "Fix the cause and rerun (`seqops run`, or the deployment `retrain/retrain`).")
    return "\n".join(lines)


def report_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure hook of the retrain flow: log the summary on the flow run (UI and console)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.logging.loggers import flow_run_logger

    failed: list[Any] = []
    try:
        with get_client(sync_client=True) as client:
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])))
            failed = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id, *[r.id for r in subflows]])),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                    type=TaskRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED]))))
    except Exception:  # the API itself may be what failed; the flow state's message still says why
        failed = []
    from pipelines.console import recorded_cause

    cause = recorded_cause()
    flow_run_logger(flow_run, flow).error(failure_summary(flow_run, state, failed, cause and cause["cause"]))
