"""params.yaml's `serving` and `orchestration` sections: how models are served and retrains are run.

They describe the running service rather than a task, so they live beside the task schema
(pipelines/config.py), which composes them into `Params`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipelines.config_base import PositiveInt, _Strict


class Serving(_Strict):
    """`seqops serve`: where it listens and how the gateway (pipelines/gateway.py) guards the model."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 5055
    workers: PositiveInt = 1              # uvicorn worker processes; each loads the model and polls on its own
    concurrency: PositiveInt = 1          # requests one worker predicts at once (the rest queue)
    threads: PositiveInt = 1              # torch intra-op threads per worker (2-core machines stall above 1)
    max_body_bytes: PositiveInt = 2 * 1024 * 1024   # a larger request body gets a 413
    request_timeout_s: Annotated[float, Field(gt=0.0)] = 10.0  # a slower request gets a 504
    poll_interval_s: Annotated[float, Field(ge=0.0)] = 10.0    # how often `champion` is checked; 0: never
    batching: bool = True                 # score requests that arrive together in one forward per step
    batch_wait_ms: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0  # wait for batch-mates only while more are arriving
    max_batch_records: PositiveInt = 256  # records scored together at most
    max_records: PositiveInt = 1000       # records in one request; more get a 400
    # history + horizon summed over a request's records (the horizon once per sample path for a quantile
    # model); a request that costs more gets a 400
    max_request_steps: PositiveInt = 1_000_000
    max_queue: PositiveInt = 64           # requests waiting for the model; more get a 503 with Retry-After
    read_timeout_s: Annotated[float, Field(gt=0.0)] = 5.0  # headers and body must arrive within this; idle keep-alive too
    max_connections: PositiveInt = 256    # open connections at most; uvicorn answers 503 beyond


class TaskRunner(_Strict):
    """Where the variants of one retrain train: a Dask cluster (local unless `address`), or one at a time."""

    kind: Literal["dask", "sequential"] = "dask"
    address: str | None = None  # tcp://HOST:8786, an existing Dask scheduler; None starts a LocalCluster
    n_workers: PositiveInt = 2  # LocalCluster worker processes (never more than the variants to train)
    threads_per_worker: PositiveInt = 1


class Schedule(_Strict):
    cron: Annotated[str, Field(min_length=9)] = "0 3 * * *"
    timezone: str = "UTC"


class Orchestration(_Strict):
    """Prefect around the stages: fan-out, retries of transient failures, one retrain per task at a time."""

    task_runner: TaskRunner = TaskRunner()
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    retry_delay_seconds: Annotated[float, Field(gt=0.0)] = 10.0  # first retry; doubles on each next one
    concurrency: PositiveInt = 1  # retrains of one task at once (Prefect global concurrency limit retrain-<task>)
    schedule: Schedule = Schedule()
