"""The Prefect servers seqops starts: `seqops schedule`'s, and the API of one `seqops run`.

Prefect's ephemeral mode runs flows but cannot schedule them, so `seqops schedule` needs a Prefect
server: PREFECT_API_URL's when set, otherwise a local `prefect server start` started here as a child
process (127.0.0.1, a free port, state in <SEQOPS_HOME>/prefect-server) and stopped when the
command stops, by Ctrl-C, SIGTERM or an error. A Prefect runner then registers the deployment
`retrain/retrain` and runs each due run in a subprocess; Ctrl-C or SIGTERM stops a run in flight at
its next stage boundary, then the runner, which pauses the schedule.

`seqops run` does not let Prefect start its own temporary server: that one is a plain child of the
flow's process and outlives a `kill -9` of it. `run_api` starts the same API (uvicorn, no UI, no
background services) under pipelines.processes' guard instead, so it dies with the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psutil

from pipelines.errors import SeqopsError
from pipelines.processes import STOP_AT_STAGE_BOUNDARY, Guarded, exit_on_sigterm
from pipelines.project import ENVIRONMENT_DEFAULTS, seqops_home
from pipelines.serving.process import answers, free_port, wait_until_answering

__all__ = ["LocalPrefectServer", "ScheduleError", "exit_on_sigterm", "prefect_api", "run_api", "serve_retrain"]

DEPLOYMENT = "retrain"
SERVER_HOME = "prefect-server"
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"  # Prefect's own, for its temporary server


class ScheduleError(SeqopsError):
    """No usable Prefect server; the message says what to set or start."""


def api_healthy(api_url: str, timeout: float = 5.0) -> bool:
    return answers(f"{api_url.rstrip('/')}/health", timeout)


class LocalPrefectServer:
    """A Prefect server as a guarded child process (pipelines.processes); a context manager.

    `api_only`: the API alone, as Prefect's own temporary server runs it (no UI, no background
    services), for one `seqops run`; otherwise `prefect server start` with its UI and scheduler.
    Stopping stops the whole process group, and so does the death of the command that started it.
    """

    def __init__(self, home: Path, port: int | None = None, host: str = "127.0.0.1",
                 startup_timeout: float = 120.0, stop_timeout: float = 20.0,
                 env: dict[str, str] | None = None, api_only: bool = False) -> None:
        self.home, self.host, self.port = home, host, port or free_port()
        self.startup_timeout, self.stop_timeout = startup_timeout, stop_timeout
        self.extra_env = env or {}
        self.api_only = api_only
        self.log_path = home / "server.log"
        self.server: Guarded | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        if self.api_only:
            import prefect

            return [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
                    "--factory", "prefect.server.api.server:create_app", "--host", self.host,
                    "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        prefect_bin = str(Path(sys.executable).parent / "prefect")
        return [prefect_bin, "server", "start", "--host", self.host, "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
        env.update({"PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_UI_API_URL": self.api_url, **self.extra_env})
        if self.api_only:  # what Prefect sets for its temporary server
            env.update({"PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1", "PREFECT_UI_ENABLED": "0"})
        return env

    def start(self) -> "LocalPrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        self.server = Guarded(self.command(), seqops_home(), "prefect-api" if self.api_only else "prefect-server",
                              env=self.environment(), log=self.log_path)
        try:
            self._wait_ready()
        except BaseException:  # not ready, or Ctrl-C / SIGTERM while starting: leave nothing running
            self.stop()
            raise
        return self

    @property
    def process(self) -> subprocess.Popen | None:
        return self.server.process if self.server else None

    def _wait_ready(self) -> None:
        what = "the Prefect API (uvicorn)" if self.api_only else "`prefect server start`"
        wait_until_answering(self.process, f"{self.api_url}/health", self.startup_timeout, what, self._log_tail,
                             error=ScheduleError)

    def stop(self) -> None:
        """Stop the server's process group; a second Ctrl-C or SIGTERM waits until that is done."""
        server, self.server = self.server, None
        if server is not None:
            server.stop(self.stop_timeout)

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
        with _pointed_at(server.api_url):  # the runs `serve` starts are subprocesses
            yield server.api_url


@contextmanager
def _pointed_at(url: str) -> Iterator[None]:
    """PREFECT_API_URL = `url` for the duration, in this process's settings and its children's environment."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@contextmanager
def run_api(home: Path) -> Iterator[str]:
    """The Prefect API of one `seqops run`: the configured one (PREFECT_API_URL), else a guarded local one.

    `home` is the run's PREFECT_HOME (its database); yields the URL the run's flows talk to.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    timeout = float(os.environ.get(STARTUP_TIMEOUT_ENV, ENVIRONMENT_DEFAULTS[STARTUP_TIMEOUT_ENV]))
    with LocalPrefectServer(home, api_only=True, startup_timeout=timeout) as server, \
            _pointed_at(server.api_url):  # DVC stages and Dask workers inherit it
        try:
            yield server.api_url
        finally:
            from prefect.logging.handlers import APILogWorker

            # Send the run's queued logs while the server answers; at exit they would wait a
            # minute on a stopped server, then print "Error logging to API".
            APILogWorker.drain_all(timeout=10)


def serve_retrain(root: Path, cron: str, timezone: str = "UTC", tasks: list[str] | None = None,
                  force: bool = False, announce=print) -> int | None:
    """Register `retrain/retrain` with the cron schedule and run due runs until SIGINT or SIGTERM; returns which
    (None: the runner ended by itself).

    One run of the deployment at a time (global_limit=1, as prefect.yaml declares); within a run,
    one retrain per task at a time (pipelines.orchestration.policy). Prefect's runner works in a thread
    of its own, so this (main) thread keeps the signals: the first one is relayed to the runs in flight,
    which stop at their next stage boundary (pipelines.orchestration.flows.retrain), and the runner
    stops once they have ended; a second one kills them now (the next run recovers, recovery.py).
    """
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.runner import Runner

    from pipelines.orchestration.flows import SCHEDULED_RUN_ENV, retrain

    runner = Runner(name=DEPLOYMENT, pause_on_shutdown=True)
    runner.add_flow(retrain, name=DEPLOYMENT, schedules=[CronSchedule(cron=cron, timezone=timezone)],
                    parameters={"tasks": tasks, "force": force, "root": str(root)}, concurrency_limit=1,
                    tags=["seqops", "retrain"],
                    description="Version data, prepare, train variants, evaluate and promote; "
                                "DVC skips unchanged stages.")
    signals, failed = _Signals(), []
    thread = threading.Thread(target=contextvars.copy_context().run, args=(_run_runner, runner, failed),
                              name="prefect-runner", daemon=True)  # with this thread's Prefect settings
    os.environ[SCHEDULED_RUN_ENV] = "1"  # the runs' processes inherit it
    with signals.caught():
        thread.start()
        try:
            announce("retrain/retrain is being served: `prefect deployment run retrain/retrain` runs it now")
            while thread.is_alive() and not signals.wait(0.5):
                pass
            runs = _runs_in_flight() if signals.first else []
            if runs:
                announce(f"{signal.Signals(signals.first).name}: the run in flight stops at its next stage "
                         f"boundary (a second Ctrl-C or SIGTERM stops it now)")
                _stop_runs(runs, signals)
        finally:
            os.environ.pop(SCHEDULED_RUN_ENV, None)
            _stop_runner(runner, thread)
    if failed:
        raise failed[0]
    return signals.first


def _run_runner(runner: Any, failed: list[BaseException]) -> None:
    try:
        asyncio.run(runner.start())
    except BaseException as e:  # raised again in the main thread, which has the error handler
        failed.append(e)


def _stop_runner(runner: Any, thread: threading.Thread, timeout: float = 60.0) -> None:
    """Stop the runner's polling and wait for its thread; on the way out it pauses the deployment."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and not runner.started and time.monotonic() < deadline:
        time.sleep(0.1)  # still starting: astop refuses a runner that has not started
    if thread.is_alive():
        runner.execute_in_background(runner.astop).result(timeout=timeout)
        thread.join(timeout=timeout)


class _Signals:
    """SIGINT and SIGTERM, recorded in order while `caught`."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._event = threading.Event()

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def _record(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        self._event.set()

    @contextmanager
    def caught(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._record) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


RUN_COMMANDS = ("--multiprocessing-fork", "prefect.engine")  # how Prefect's runner starts a flow run's process


def _runs_in_flight() -> list[psutil.Process]:
    """The flow runs' processes Prefect's runner started: children of this process, spawned by multiprocessing
    (a served flow object) or `python -m prefect.engine` (a flow loaded from storage)."""
    found = []
    for child in psutil.Process().children():
        try:
            if any(word in child.cmdline() for word in RUN_COMMANDS):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _stop_runs(runs: list[psutil.Process], signals: _Signals) -> None:
    """Ask each run to stop at its next stage boundary (pipelines.processes.stop_at_stage_boundaries), whichever
    signal came, and wait for them to end; on a second signal, kill each run's process group (the run leads its
    own: its stage subprocesses and Dask workers)."""
    for run in runs:
        with contextlib.suppress(psutil.Error):
            run.send_signal(STOP_AT_STAGE_BOUNDARY)
    while runs:
        _, runs = psutil.wait_procs(runs, timeout=0.5)
        if len(signals.received) > 1:
            for run in runs:
                try:
                    os.killpg(run.pid, signal.SIGKILL)
                except ProcessLookupError:  # not leading its group yet: nothing started under it
                    with contextlib.suppress(psutil.Error):
                        run.kill()
            psutil.wait_procs(runs, timeout=30)
            return
