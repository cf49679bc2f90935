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

import httpx


class ServerError(RuntimeError):
    """The scoring server did not come up (the message carries the tail of its log)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise ServerError(f"scoring server for {self.model_uri} exited with {self.process.returncode}"
                                  f"{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"scoring server for {self.model_uri} did not answer /ping within "
                          f"{self.startup_timeout:.0f}s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return "\n--- server log (tail) ---\n" + self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "ScoringServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
