"""Start, probe and stop a scoring-server process for a registered model.

`mlflow models serve --env-manager local` execs uvicorn through bash, which must find it on
PATH; the server runs in its own process group so stopping it stops uvicorn too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

from pipelines.errors import SeqopsError


class ServerError(SeqopsError):
    """The scoring server did not come up (the message carries the tail of its log)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether GET `url` returns 200 now."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_answering(process: subprocess.Popen, url: str, timeout: float, what: str,
                         log_tail: Callable[[], str], error: type[Exception] = ServerError) -> None:
    """Poll `url` until it answers 200; raise `error` (with the log tail) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{what} exited with {process.returncode}{log_tail()}")
        if answers(url):
            return
        time.sleep(0.25)
    raise error(f"{what} did not answer {url} within {timeout:.0f}s{log_tail()}")


def stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process's group, SIGKILL what is left after `grace` seconds, and reap the leader.

    Servers run in their own session (start_new_session=True), so the group holds everything
    they started (mlflow's uvicorn, prefect's API workers); none of it may outlive a stop.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the group may outlive its leader for a moment
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def server_env(tracking_uri: str) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    return [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port)]


class ScoringServer:
    """A background `mlflow models serve` process; use as a context manager."""

    def __init__(self, model_uri: str, tracking_uri: str, host: str = "127.0.0.1", port: int | None = None,
                 log_path: Path | None = None, startup_timeout: float = 120.0) -> None:
        self.model_uri, self.tracking_uri, self.host = model_uri, tracking_uri, host
        self.port = port or free_port()
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ScoringServer":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(serve_command(self.model_uri, self.host, self.port), stdout=log,
                                        stderr=subprocess.STDOUT, env=server_env(self.tracking_uri),
                                        start_new_session=True)
        try:
            wait_until_answering(self.process, f"{self.url}/ping", self.startup_timeout,
                                 f"scoring server for {self.model_uri}", self._log_tail)
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return "\n--- server log (tail) ---\n" + self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)

    def __enter__(self) -> "ScoringServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
