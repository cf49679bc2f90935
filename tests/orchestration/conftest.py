"""Real services for the orchestration tests, started natively and always stopped.

One helper per dependency the scaled setup has: a PostgreSQL database (created and dropped), a
process on a free port with a health endpoint (moto's S3, `mlflow server`, `prefect server`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from pipelines.serving.process import free_port, stop_group, wait_until_answering

__all__ = ["free_port", "stop_group"]  # re-exported for the orchestration tests

BIN = Path(sys.executable).parent
PG_HOST = os.environ.get("SEQOPS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SEQOPS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SEQOPS_TEST_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("SEQOPS_TEST_PG_PASSWORD", "")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Service:
    """A server process in its own session, ready once `health` answers 200; a context manager."""

    def __init__(self, name: str, command: list[str], health: str, env: dict[str, str], log: Path,
                 cwd: Path | None = None, startup_timeout: float = 120.0) -> None:
        self.name, self.command, self.health, self.env, self.log = name, command, health, env, log
        self.cwd, self.startup_timeout = cwd, startup_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> "Service":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=self.cwd, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self) -> "Service":
        wait_until_answering(self.process, self.health, self.startup_timeout, self.name,
                             lambda: f":\n{self.tail()}", error=RuntimeError)
        return self

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


@contextmanager
def running(*services: Service) -> Iterator[tuple[Service, ...]]:
    """Start every service at once (they boot in parallel), wait for all, stop all whatever happens."""
    try:
        for service in services:
            service.start()
        for service in services:
            service.wait_ready()
        yield services
    finally:
        for service in services:
            service.stop()


def _pg_connect(database: str = "postgres"):
    import psycopg2

    return psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD or None,
                            dbname=database, connect_timeout=5)


def admin_connection():
    """An autocommit connection to the test PostgreSQL as its admin user, or a skip that says why not."""
    try:
        admin = _pg_connect()
    except Exception as e:  # no PostgreSQL on this machine: say so instead of failing obscurely
        pytest.skip(f"PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}) is not reachable: {e}")
    admin.autocommit = True
    return admin


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this venv first on PATH, quiet telemetry, one thread."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "MLFLOW_", "DVC_", "SEQOPS_", "AWS_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
                "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GIT_PYTHON_REFRESH": "quiet",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    env.update(extra)
    return env
