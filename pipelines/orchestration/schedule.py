"""`seqops schedule`: serve the retrain flow as a Prefect deployment on a cron schedule.

Prefect's ephemeral mode runs flows but cannot schedule them, so this needs a Prefect server:
PREFECT_API_URL's when set, otherwise a local `prefect server start` started here as a child
process (127.0.0.1, a free port, state in <SEQOPS_HOME>/prefect-server) and stopped when the
command stops, by Ctrl-C, SIGTERM or an error. `flow.serve` then registers the deployment
`retrain/retrain` and runs each due run in a subprocess; on shutdown it pauses the schedule.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipelines.errors import SeqopsError
from pipelines.serving.process import answers, free_port, stop_group, wait_until_answering

DEPLOYMENT = "retrain"
SERVER_HOME = "prefect-server"


class ScheduleError(SeqopsError):
    """No usable Prefect server; the message says what to set or start."""


def api_healthy(api_url: str, timeout: float = 5.0) -> bool:
    return answers(f"{api_url.rstrip('/')}/health", timeout)


class LocalPrefectServer:
    """`prefect server start` as a child process in its own session; a context manager.

    Stopping signals the whole process group (SIGTERM, then SIGKILL after `stop_timeout`), so
    nothing it started outlives it.
    """

    def __init__(self, home: Path, port: int | None = None, host: str = "127.0.0.1",
                 startup_timeout: float = 120.0, stop_timeout: float = 20.0,
                 env: dict[str, str] | None = None) -> None:
        self.home, self.host, self.port = home, host, port or free_port()
        self.startup_timeout, self.stop_timeout = startup_timeout, stop_timeout
        self.extra_env = env or {}
        self.log_path = home / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        prefect = str(Path(sys.executable).parent / "prefect")
        return [prefect, "server", "start", "--host", self.host, "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
        env.update({"PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_UI_API_URL": self.api_url, **self.extra_env})
        return env

    def start(self) -> "LocalPrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.environment(),
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:  # not ready, or Ctrl-C / SIGTERM while starting: leave nothing running
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        wait_until_answering(self.process, f"{self.api_url}/health", self.startup_timeout,
                             "`prefect server start`", self._log_tail, error=ScheduleError)

    def stop(self) -> None:
        """Stop the server's process group; a second Ctrl-C or SIGTERM waits until that is done."""
        process, self.process = self.process, None
        if process is None:
            return
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            stop_group(process, self.stop_timeout)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"; last lines of {self.log_path}:\n" + "\n".join(tail) if tail else ""

    def __enter__(self) -> "LocalPrefectServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def prefect_api(home: Path, start_local: bool = True, port: int | None = None,
                announce=print) -> Iterator[str]:
    """A Prefect API URL for the duration: PREFECT_API_URL's server, or a local one started here."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = os.environ.get("PREFECT_API_URL")
    if url:
        if not api_healthy(url):
            raise ScheduleError(f"PREFECT_API_URL={url} does not answer {url.rstrip('/')}/health: start that "
                                f"server, or unset PREFECT_API_URL to start a local one")
        announce(f"Prefect server: {url} (PREFECT_API_URL)")
        yield url
        return
    if not start_local:
        raise ScheduleError("PREFECT_API_URL is unset, so Prefect would run in ephemeral mode, which runs flows "
                            "but cannot schedule them. Set PREFECT_API_URL to a Prefect server "
                            "(e.g. http://127.0.0.1:4200/api), or drop --no-local-server to start one here")
    announce(f"starting a local Prefect server (state in {home}, log {home / 'server.log'}) ...")
    with LocalPrefectServer(home, port=port) as server:
        announce(f"Prefect server: {server.api_url}   UI: {server.ui_url}")
        os.environ["PREFECT_API_URL"] = server.api_url  # the runs `serve` starts are subprocesses
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                yield server.api_url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def serve_retrain(root: Path, cron: str, timezone: str = "UTC", tasks: list[str] | None = None,
                  force: bool = False) -> None:
    """Register `retrain/retrain` with the cron schedule and run due runs until stopped (blocks).

    One run of the deployment at a time (global_limit=1, as prefect.yaml declares); within a run,
    one retrain per task at a time (pipelines.orchestration.policy).
    """
    from prefect.client.schemas.schedules import CronSchedule

    from pipelines.orchestration.flows import retrain

    retrain.serve(
        name=DEPLOYMENT,
        schedules=[CronSchedule(cron=cron, timezone=timezone)],
        parameters={"tasks": tasks, "force": force, "root": str(root)},
        global_limit=1,
        tags=["seqops", "retrain"],
        description="Version data, prepare, train variants, evaluate and promote; DVC skips unchanged stages.",
        pause_on_shutdown=True,
    )


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit (until `serve` installs its own handler), so cleanup always runs."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
