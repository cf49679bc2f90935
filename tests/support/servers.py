"""`seqops serve TASK` as a child process (for benchmarks and tests); the stock server is
pipelines.serving.process.ScoringServer. Both run with one torch thread (OMP_NUM_THREADS=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.serving.process import free_port, stop_group, wait_until_answering


def thread_env(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = "1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return env


class GatewayProcess:
    """A background `seqops serve` for a project root and tracking store; a context manager."""

    def __init__(self, task: str, root: Path, tracking_uri: str, port: int | None = None, workers: int = 1,
                 overrides: tuple[str, ...] = (), log_path: Path | None = None, startup_timeout: float = 120.0) -> None:
        self.task, self.root, self.tracking_uri = task, root, tracking_uri
        self.port = port or free_port()
        self.workers, self.overrides = workers, overrides
        self.log_path = log_path or root / f"serve-{task}-{self.port}.log"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        command = [str(Path(sys.executable).parent / "seqops"), "serve", self.task, "--port", str(self.port),
                   "--workers", str(self.workers)]
        for override in self.overrides:
            command += ["--set", override]
        return command

    def launch(self) -> "GatewayProcess":
        """Start without waiting (start several, then wait_ready each)."""
        env = thread_env()
        env.update(SEQOPS_ROOT=str(self.root), MLFLOW_TRACKING_URI=self.tracking_uri)
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        return self

    def wait_ready(self) -> "GatewayProcess":
        try:
            wait_until_answering(self.process, f"{self.url}/health", self.startup_timeout,
                                 f"`seqops serve {self.task}`", lambda: f": {self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, grace=20.0)
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> "GatewayProcess":
        return self.launch().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
