"""Adaptive micro-batching: requests that arrive together are scored in one call of the model.

A recurrent forecast spends its time in a step loop whose cost barely grows with the batch (one cell
call per step for every row: models/inference.py), so a worker that scores the requests waiting for
it together answers several for the price of about one. Each request is parsed and validated on its
own first (`prepare`: a bad request gets its own 400 and never shares a batch), then queued here. A
worker task takes what is waiting, all pinned to one served version (a reload between requests starts
a new batch), up to serving.max_batch_records, and scores it in the prediction thread; each request
gets exactly its own predictions back. Waiting is adaptive: the worker only holds a batch open (for
at most serving.batch_wait_ms) while other requests are being read or the last batch had company, so
a lone client pays no wait. A model whose class does not score prepared requests together (no
`batching` flag) is scored one request per batch through the same queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

from models.inference import DeadlineExceeded
from pipelines.serving.requests import error_body, serialize

log = logging.getLogger("seqops.gateway")

Answer = tuple[int, bytes]


@dataclass
class Job:
    """One validated request waiting for the model: the version it pinned, its rows, its deadline."""

    served: Any  # pipelines.serving.loading.Served, with a `scorer`
    prepared: Any  # the scorer's Prepared: .records, .rows
    deadline: float  # time.monotonic()
    future: asyncio.Future


class Batcher:
    """The queue between validated requests and the prediction thread(s); one per gateway worker process."""

    def __init__(self, executor: Executor, workers: int, combine: bool, max_records: int, wait_ms: float,
                 timed_out: bytes) -> None:
        self.executor, self.workers, self.combine = executor, workers, combine
        self.max_records, self.wait_s, self.timed_out = max_records, wait_ms / 1000.0, timed_out
        self.pending: deque[Job] = deque()
        self.arriving = 0  # requests being read or validated: batch-mates on their way (the gateway counts)
        self._ready: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._accompanied = False  # whether the last batch held more than one request

    def submit(self, served: Any, prepared: Any, deadline: float) -> asyncio.Future:
        """Queue a validated request; the future resolves to its (status, body)."""
        loop = asyncio.get_running_loop()
        if self._ready is None:
            self._ready = asyncio.Event()
            self._tasks = [loop.create_task(self._work()) for _ in range(self.workers)]
        job = Job(served, prepared, deadline, loop.create_future())
        self.pending.append(job)
        self._ready.set()
        return job.future

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self._ready.clear()
                await self._ready.wait()
            jobs = self._take([])
            if jobs and self.wait_s > 0 and self._room(jobs) and (self.arriving or self._accompanied):
                await asyncio.sleep(self.wait_s)
                jobs = self._take(jobs)
            if not jobs:
                continue
            self._accompanied = len(jobs) > 1
            answers = await loop.run_in_executor(self.executor, score, jobs, self.timed_out)
            for job, answer in zip(jobs, answers):
                if not job.future.done():  # done: the request already got its 504
                    job.future.set_result(answer)

    def _room(self, jobs: list[Job]) -> bool:
        return self.combine and jobs[0].served.scorer.batching and sum(j.prepared.records for j in jobs) < self.max_records

    def _take(self, jobs: list[Job]) -> list[Job]:
        """Add waiting jobs of the first job's served version while the batch has room; skip abandoned ones."""
        while self.pending:
            job = self.pending[0]
            if job.future.done():  # timed out while waiting: never scored
                self.pending.popleft()
                continue
            if jobs and (job.served is not jobs[0].served or not self._room(jobs)
                         or sum(j.prepared.records for j in jobs) + job.prepared.records > self.max_records):
                break
            jobs.append(self.pending.popleft())
            if not self._room(jobs):
                break
        return jobs


def score(jobs: list[Job], timed_out: bytes) -> list[Answer]:
    """Score a batch in the prediction thread: each job's (status, body). A failure is retried job by job, so
    one request's failure never becomes its batch-mates' answer. The batch stops at its earliest deadline and
    the jobs with time left are scored alone: batched to the latest one, small requests that joined a request
    heavy enough to run out its time all got its 504 (one client could time out everyone, every 10 s)."""
    scorer = jobs[0].served.scorer
    try:
        predictions = scorer.predict_prepared([j.prepared for j in jobs], min(j.deadline for j in jobs))
        return [(200, serialize(p)) for p in predictions]
    except DeadlineExceeded:
        if len(jobs) == 1:
            return [(504, timed_out)]
        return [score([job], timed_out)[0] if time.monotonic() < job.deadline else (504, timed_out) for job in jobs]
    except Exception as e:
        if len(jobs) > 1:
            return [score([job], timed_out)[0] for job in jobs]
        if isinstance(e, MlflowException):
            return [(e.get_http_status_code(), error_body(e.message, e.error_code))]
        log.exception("the model failed on a request")
        message = f"the model failed on this input ({type(e).__name__}: {e}); the server log has the traceback"
        return [(500, error_body(message, "INTERNAL_ERROR"))]
