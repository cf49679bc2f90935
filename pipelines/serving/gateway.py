"""The serving gateway: the `champion` pyfunc behind our own ASGI app, in place of MLflow's scoring app.

MLflow's stock server (`mlflow.pyfunc.scoring_server.init(model)`) answers a request without a
Content-Type with a 500, accepts bodies of any size, exposes no metrics and never notices that
the `champion` alias moved (MLflow issues #4039, #8007). The gateway, per request:

- reads the body up to serving.max_body_bytes (413 beyond, read and discarded so the client
  sees the answer), treats a missing Content-Type (or curl's default for -d) as JSON, refuses
  other types with a 415;
- answers JSON, CSV and Parquet on a fast path (pipelines/serving/requests.py reads all three into the
  same records; the pyfunc's own validation, unknown columns and params refused); any other path is a 404
  (MLflow's /docs, /redoc and /openapi.json are not served);
- validates a request whole (records within serving.max_records, cost within
  serving.max_request_steps), then scores it beside the requests that arrive with it
  (pipelines/serving/batching.py) when the model scores prepared requests together;
- gives up after serving.request_timeout_s with a 504, and the model stops working on it (the deadline
  is checked inside the forecast loop); answers 503 with Retry-After past serving.max_queue requests;
- gives the body serving.read_timeout_s to arrive (408 and the connection closes), as it does the
  headers (pipelines/serving/limits.py), and caps open connections at serving.max_connections;
- adds `X-Model-Version` to every response and counts it in /metrics (Prometheus).

GET /health (and /ping) and /version describe the served model. A background thread per worker
polls the registry every serving.poll_interval_s; when `champion` moves it loads the new version
fully, then swaps one reference: a request pins the model it started with, so in-flight requests
finish on the old one and none fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from prometheus_client import CONTENT_TYPE_LATEST

from pipelines.serving.batching import Batcher
from pipelines.serving.loading import CHAMPION, GatewayConfig, GatewayError, Served, load_served
from pipelines.serving.metrics import ROUTES, Metrics
from pipelines.serving.requests import (
    CSV,
    JSON,
    PARQUET,
    UNSUPPORTED_MEDIA_TYPE,
    InputError,
    error_body,
    invoke,
    prepare,
)
from pipelines.signing import UnverifiedModel

__all__ = ["Gateway", "GatewayConfig", "GatewayError", "Served", "create_app", "load_served", "serve"]

CONFIG_ENV = "SEQOPS_GATEWAY_CONFIG"
FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends when not told otherwise
DRAIN_LIMIT = 64 * 1024 * 1024  # past this, an oversized body is not even read: the connection closes
INLINE_BYTES = 64 * 1024  # bodies up to this are validated on the event loop; larger ones in a thread of their own

log = logging.getLogger("seqops.gateway")


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class Gateway:
    """The ASGI application; `served` is swapped whole when the champion moves."""

    def __init__(self, config: GatewayConfig, served: Served | None = None) -> None:
        self.config = config
        self.served = served or load_served(config)
        self.metrics = Metrics(config.task)
        self.metrics.version.labels(config.task).set(float(self.served.version))
        self.executor = ThreadPoolExecutor(config.concurrency, thread_name_prefix="seqops-predict")
        self.validator = ThreadPoolExecutor(1, thread_name_prefix="seqops-validate")  # large bodies only
        self.timed_out = error_body(f"the request took longer than {config.request_timeout_s:g} s "
                                    "(serving.request_timeout_s); send fewer or shorter records", "REQUEST_TIMEOUT")
        self.batcher = Batcher(self.executor, config.concurrency, config.batching, config.max_batch_records,
                               config.batch_wait_ms, self.timed_out)
        self.admitted = 0  # /invocations requests being read, validated, queued or scored (serving.max_queue)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        served = self.served  # pinned: a reload during this request does not change it
        method, path, started = scope["method"], scope["path"], time.perf_counter()
        status = [500]

        async def tracked(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-model-version", served.header)]}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if path == "/invocations" and method == "POST":
                await self._invocations(scope, receive, tracked, served)
            elif path in ROUTES[1:] and method in ("GET", "HEAD"):
                await self._info(path, tracked, served)
            elif path in ROUTES:
                allowed = "POST" if path == "/invocations" else "GET"
                await _respond(tracked, 405, error_body(f"{method} {path} is not supported: use {allowed}",
                                                        "METHOD_NOT_ALLOWED"))
            else:  # MLflow's other routes (/docs, /redoc, /openapi.json) are not part of this API
                await _respond(tracked, 404, error_body(f"{path} is not a route of this server: it serves "
                                                        f"{', '.join(ROUTES)}", "ENDPOINT_NOT_FOUND"))
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe(method, path, status[0], time.perf_counter() - started)

    async def _invocations(self, scope: dict, receive: Any, send: Any, served: Served) -> None:
        if self.admitted >= self.config.max_queue:  # refused before its body is read: overload costs little
            await _respond(send, 503, error_body(f"the server has {self.admitted} requests waiting "
                                                 "(serving.max_queue); retry shortly", "TEMPORARILY_UNAVAILABLE"),
                           extra=[(b"retry-after", b"1"), (b"connection", b"close")])
            return
        self.admitted += 1
        try:
            await self._admitted(scope, receive, send, served)
        finally:
            self.admitted -= 1

    async def _admitted(self, scope: dict, receive: Any, send: Any, served: Served) -> None:
        deadline = time.monotonic() + self.config.request_timeout_s
        headers = dict(scope["headers"])
        raw_type = headers.get(b"content-type", b"").decode("latin-1")
        mime, *options = [part.strip() for part in raw_type.split(";")]
        mime = mime.lower()
        if mime in ("", FORM):  # no Content-Type (MLflow answers a 500), or curl's default for -d: JSON
            mime = JSON
        try:
            body = await self._read_body(receive, headers.get(b"content-length"))
        except BodyTooLarge as e:
            await _respond(send, 413, error_body(str(e), "REQUEST_LIMIT_EXCEEDED"))
            return
        except BodyTooSlow as e:
            await _respond(send, 408, error_body(str(e), "REQUEST_TIMEOUT"), extra=[(b"connection", b"close")])
            return
        charset = next((o.split("=", 1)[1].strip().strip('"').lower() for o in options
                        if o.lower().startswith("charset=")), "utf-8")
        if charset not in ("utf-8", "utf8"):
            await _respond(send, 415, error_body(f"charset {charset!r} is not supported: send UTF-8",
                                                 UNSUPPORTED_MEDIA_TYPE))
            return
        coding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if coding not in ("", "identity"):
            await _respond(send, 415, error_body(f"Content-Encoding {coding!r} is not supported: send the body "
                                                 "uncompressed", UNSUPPORTED_MEDIA_TYPE))
            return
        if mime in (JSON, CSV, PARQUET):
            status, payload = await (self._score(served, body, deadline, mime) if served.scorer is not None
                                     else self._predict(served, body, mime))
            await _respond(send, status, payload)
        else:
            message = (f"Content-Type {raw_type!r} is not supported: send {JSON} (the default when the header "
                       f"is absent), {CSV} or {PARQUET}")
            await _respond(send, 415, error_body(message, UNSUPPORTED_MEDIA_TYPE))

    async def _read_body(self, receive: Any, declared: bytes | None) -> bytes:
        """The body, which must arrive within serving.read_timeout_s (a client sending a byte a second is cut)."""
        limit, chunks, size = self.config.max_body_bytes, [], 0
        deadline = time.monotonic() + self.config.read_timeout_s
        length = int(declared) if declared and declared.isdigit() else None
        over = length is not None and length > limit
        if length is not None and length > DRAIN_LIMIT:
            raise BodyTooLarge(f"the request body is {length} bytes; at most {limit} are accepted "
                               "(serving.max_body_bytes)")
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise BodyTooSlow(f"the request body did not arrive within {self.config.read_timeout_s:g} s "
                                  f"(serving.read_timeout_s); {size} bytes came") from None
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            over = over or size > limit
            if not over:
                chunks.append(chunk)
            elif size > DRAIN_LIMIT:
                break
            if not message.get("more_body", False):
                break
        if over:  # read to the end (up to DRAIN_LIMIT) so the client is not cut off mid-upload
            shown = length if length is not None else f"over {size}"
            raise BodyTooLarge(f"the request body is {shown} bytes; at most {limit} are accepted "
                               "(serving.max_body_bytes)")
        return b"".join(chunks)

    async def _score(self, served: Served, body: bytes, deadline: float, mime: str) -> tuple[int, bytes]:
        """A model that scores prepared requests: validated alone, then scored with what arrives beside it."""
        config, self.batcher.arriving = self.config, self.batcher.arriving + 1
        try:
            args = (served.scorer, served.inputs, body, config.max_records, config.max_request_steps, mime)
            if len(body) <= INLINE_BYTES:
                prepared = prepare(*args)
            else:
                prepared = await asyncio.get_running_loop().run_in_executor(self.validator, prepare, *args)
        except InputError as e:
            return e.status, error_body(e.message, e.error_code)
        finally:
            self.batcher.arriving -= 1
        try:
            return await asyncio.wait_for(self.batcher.submit(served, prepared, deadline), deadline - time.monotonic())
        except asyncio.TimeoutError:
            return 504, self.timed_out

    async def _predict(self, served: Served, body: bytes, mime: str) -> tuple[int, bytes]:
        """Any other pyfunc: MLflow's predict, one request at a time."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, invoke, served.predict, served.inputs, body,
                                      self.config.max_records, mime)
        try:
            return await asyncio.wait_for(future, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            return 504, self.timed_out

    async def _info(self, path: str, send: Any, served: Served) -> None:
        if path == "/metrics":
            await _respond(send, 200, self.metrics.exposition(), CONTENT_TYPE_LATEST.encode())
            return
        about = {"task": self.config.task, "model": self.config.model_name, "version": served.version}
        if path == "/version":
            about.update(run_id=served.run_id, model_uri=f"models:/{self.config.model_name}/{served.version}",
                         loaded_at=served.loaded_at, mlflow_version=mlflow.__version__, **served.uncertainty)
        else:
            about = {"status": "ok", **about}
        await _respond(send, 200, json.dumps(about).encode())

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start_polling()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- champion reloads ----------------------------------------------------------------------

    def start_polling(self) -> None:
        if self.config.poll_interval_s > 0 and self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="seqops-champion-poll", daemon=True)
            self._poller.start()

    def close(self) -> None:
        self._stop.set()
        self.batcher.close()
        self.executor.shutdown(wait=False)
        self.validator.shutdown(wait=False)
        self.metrics.close()

    def _poll(self) -> None:
        client = MlflowClient(self.config.tracking_uri, self.config.tracking_uri)
        failed: str | None = None
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                version = str(client.get_model_version_by_alias(self.config.model_name, CHAMPION).version)
            except Exception as e:  # registry unreachable or alias removed: keep serving what we have
                log.warning("champion poll failed (%s: %s); still serving v%s", type(e).__name__, e,
                            self.served.version)
                continue
            if version in (self.served.version, failed):
                continue
            self.reload(version)
            failed = None if self.served.version == version else version

    def reload(self, version: str) -> bool:
        """Load `version` fully, then swap it in; on failure keep serving the current one."""
        previous = self.served.version
        try:
            served = load_served(self.config, version)
        except UnverifiedModel as e:
            self.metrics.reloads.labels("refused").inc()
            log.error("champion moved to v%s: %s; still serving v%s", version, e, previous)
            return False
        except Exception as e:
            self.metrics.reloads.labels("failed").inc()
            log.error("champion moved to v%s but it does not load (%s); still serving v%s", version, e, previous)
            return False
        self.served = served  # one reference swap: requests already running keep the model they pinned
        self.metrics.version.labels(self.config.task).set(float(served.version))
        self.metrics.reloads.labels("ok").inc()
        log.info("champion moved: now serving %s v%s (was v%s)", self.config.model_name, version, previous)
        return True


async def _respond(send: Any, status: int, body: bytes, content_type: bytes = b"application/json",
                   extra: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def _tune_process() -> None:
    """Settings for a server process (never applied on import: tests share their process).

    pandas 3 stores strings as Arrow arrays by default; building the pyfunc's one-row result frame
    that way and reading it back costs more than the model's forward on a small request (measured:
    ~25 % of the server's CPU per request). The option is deprecated (gone in pandas 4, pinned 3.1
    here): if it is refused, the server only gets slower.
    """
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pd.set_option("future.infer_string", False)
        except Exception:  # pandas >= 4: the option is gone
            pass
    _configure_logging()


def _configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     [seqops] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def create_app() -> Gateway:
    """uvicorn's factory for worker processes: each loads the champion and polls on its own."""
    _tune_process()
    config = GatewayConfig(**json.loads(os.environ[CONFIG_ENV]))
    return Gateway(config)


def serve(config: GatewayConfig, host: str, port: int, workers: int = 1, access_log: bool = False) -> None:
    """Run the gateway under uvicorn (blocks). Raises GatewayError before binding when the champion
    is missing or does not load."""
    import shutil
    import tempfile

    import uvicorn

    _tune_process()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    gateway = Gateway(config)  # loads here: a broken champion fails now, in one line, not in a worker
    from pipelines.serving.limits import HeaderDeadlineProtocol

    options = {"host": host, "port": port, "access_log": access_log, "log_level": "info", "lifespan": "on",
               "server_header": False, "timeout_graceful_shutdown": max(5, math.ceil(config.request_timeout_s)),
               "http": HeaderDeadlineProtocol, "loop": "uvloop", "timeout_keep_alive": config.read_timeout_s,
               "limit_concurrency": config.max_connections}
    if workers == 1:
        uvicorn.run(gateway, **options)
        return
    gateway.close()
    del gateway
    os.environ[CONFIG_ENV] = config.to_json()
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # workers write their metrics here; /metrics sums them
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="seqops-metrics-")
    try:
        uvicorn.run("pipelines.serving.gateway:create_app", factory=True, workers=workers, **options)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
