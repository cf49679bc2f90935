"""Start, probe and stop a scoring-server process for a registered model.

`mlflow models serve --env-manager local` execs uvicorn through bash, which must find it on
PATH; the server runs under pipelines.processes' guard, in its own process group, so stopping it
(or the death of the command that started it) stops uvicorn too.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

from pipelines.errors import SeqopsError
from pipelines.processes import Guarded, stop_group
from pipelines.project import seqops_home

__all__ = ["ScoringServer", "ServerError", "answers", "check_port_free", "free_port", "stop_group",
           "wait_until_answering"]


class ServerError(SeqopsError):
    """The scoring server did not come up (the message carries the tail of its log)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """A ServerError naming `host:port` when a server cannot listen there (another one does, or the address is
    not this machine's). Checked before starting: uvicorn reports a taken port only after "Application startup
    complete", which reads as a successful start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            hint = (" (another server listens there: choose another --port, or stop it)"
                    if e.errno == errno.EADDRINUSE else "")
            raise ServerError(f"cannot listen on {host}:{port}: {e.strerror}{hint}") from None


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


def server_env(tracking_uri: str) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = env["MLFLOW_REGISTRY_URI"] = tracking_uri  # no stale registry URI may leak in
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    return [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port)]


class ScoringServer:
    """A background `mlflow models serve` process; use as a context manager.

    Recorded under <home>/pids/ (default: the project's .seqops/) so a later command stops it if the
    one that started it was killed before it could.
    """

    def __init__(self, model_uri: str, tracking_uri: str, host: str = "127.0.0.1", port: int | None = None,
                 log_path: Path | None = None, startup_timeout: float = 120.0, home: Path | None = None) -> None:
        self.model_uri, self.tracking_uri, self.host = model_uri, tracking_uri, host
        self.port = port or free_port()
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.home = home
        self.server: Guarded | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def process(self) -> subprocess.Popen | None:
        """The guard leading the server's process group (its pid is the group's id)."""
        return self.server.process if self.server else None

    def start(self) -> "ScoringServer":
        if self.log_path:
            self.log_path.write_bytes(b"")
        self.server = Guarded(serve_command(self.model_uri, self.host, self.port), self.home or seqops_home(),
                              "scoring-server", env=server_env(self.tracking_uri),
                              log=self.log_path or Path(os.devnull))
        try:
            wait_until_answering(self.server.process, f"{self.url}/ping", self.startup_timeout,
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
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> "ScoringServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
