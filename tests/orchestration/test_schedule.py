"""`seqops schedule`: the retrain flow served on a cron schedule from a Prefect server it starts and stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY_FORECAST, make_project
from tests.orchestration.conftest import BIN, base_env, port_open, stop_group


def test_without_a_server_it_explains_that_ephemeral_mode_cannot_schedule(project: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["schedule", "--no-local-server"])
    assert result.exit_code == 2
    assert "ephemeral mode" in result.output and "cannot schedule" in result.output
    assert "PREFECT_API_URL" in result.output


def test_an_unreachable_prefect_api_url_is_named(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cli import app
    from tests.orchestration.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    result = CliRunner().invoke(app, ["schedule"])
    assert result.exit_code == 2 and f"PREFECT_API_URL={url} does not answer" in result.output


def test_a_bad_cron_expression_is_refused_before_anything_starts(project: Path) -> None:
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["schedule", "--cron", "every night"])
    assert result.exit_code == 2 and "Invalid cron string" in result.output


def _server_processes(port: int) -> list[int]:
    """PIDs of any process whose command line serves Prefect on `port`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"server" in argv and b"--port" in argv and str(port).encode() in argv:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_schedule_serves_and_runs_the_deployment_and_sigterm_leaves_no_server(tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = make_project(tmp_path / "project", {"forecast": TINY_FORECAST})
    command = [str(BIN / "seqops"), "schedule", "--cron", "*/2 * * * *", "--task", "forecast"]
    log = tmp_path / "schedule.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=base_env(SEQOPS_ROOT=str(root)))
    try:
        api = _wait_for(log, r"Prefect server: (http://127\.0\.0\.1:\d+/api)", process)
        _wait_for(log, r"is being served", process)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name("retrain/retrain")
        assert [s.schedule.cron for s in deployment.schedules] == ["*/2 * * * *"]
        assert deployment.parameters == {"tasks": ["forecast"], "force": False, "root": str(root)}
        assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
        assert (root / ".seqops" / "prefect-server" / "prefect.db").is_file()
        port = int(api.rsplit(":", 1)[1].split("/")[0])
        assert _server_processes(port)

        # a run of the deployment executes here, in a subprocess of `seqops schedule`, with the served
        # parameters (a task params.yaml lacks: it fails at once, through the failure hook; a full retrain
        # through a deployment is test_scaled_setup's)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            from prefect.deployments import run_deployment

            run = run_deployment("retrain/retrain", parameters={"tasks": ["weather"]}, timeout=120, poll_interval=1)
        assert run.state.is_failed() and "unknown task 'weather'" in run.state.message, run.state
        assert run.parameters["root"] == str(root)
        _wait_for(log, r"retrain FAILED \(flow run", process)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            stop_group(process)
    output = log.read_text()
    assert "All deployments have been paused" in output and "schedule stopped" in output
    assert not port_open(port) and _server_processes(port) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig, whole_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-in-a-terminal", "sigterm"])
def test_a_signal_stops_the_run_in_flight_at_the_next_stage_boundary_and_the_next_run_goes_on(
        tmp_path: Path, sig: signal.Signals, whole_group: bool) -> None:
    """Ctrl-C reaches the terminal's whole process group (the scheduler, the run, its stage subprocess); SIGTERM
    (a service manager's stop) the scheduler alone. Either way the stage in flight ends, the run stops before
    the next one, and the schedule exits 128 + the signal with one line and no traceback. The next run going
    on from there is checked once (after SIGTERM): it is a whole retrain, and the state either signal leaves
    is the same."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = make_project(tmp_path / "project", {"forecast": TINY_FORECAST})
    command = [str(BIN / "seqops"), "schedule", "--cron", "0 3 1 1 *", "--task", "forecast"]
    log = tmp_path / "schedule.log"
    env = base_env(SEQOPS_ROOT=str(root))
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=env)
    try:
        api = _wait_for(log, r"Prefect server: (http://127\.0\.0\.1:\d+/api)", process)
        _wait_for(log, r"is being served", process)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            run_deployment("retrain/retrain", timeout=0)
        _wait_for(log, r"Running stage 'prepare@forecast'", process, timeout=300, poll=0.1)
        if whole_group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        assert process.wait(timeout=120) == 128 + sig, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            stop_group(process)
    output = log.read_text()
    assert f"schedule stopped by {sig.name}" in output and "Traceback" not in output, output[-3000:]
    assert re.search(r"forecast\s+prepare\s+done", output) and not re.search(r"forecast\s+train", output), output
    assert "Finished in state Cancelled('stopped at a stage boundary" in output
    if whole_group:
        return

    again = subprocess.run([str(BIN / "seqops"), "run", "--task", "forecast", "--no-serve-check"], cwd=root,
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"forecast\s+prepare\s+up to date", again.stdout), again.stdout
    assert re.search(r"forecast\s+promote\s+done", again.stdout), again.stdout


def _wait_for(log: Path, pattern: str, process: subprocess.Popen, timeout: float = 120, poll: float = 0.5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found.group(found.lastindex or 0)
        if process.poll() is not None:
            raise AssertionError(f"seqops schedule exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"no {pattern!r} in {timeout:.0f}s:\n{log.read_text()[-3000:]}")
