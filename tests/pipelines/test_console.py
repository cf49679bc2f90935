"""The console of `seqops run`: one handler, a short console, the full log, the root cause last."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from tests.conftest import TINY_FORECAST, make_project

BIN = Path(sys.executable).parent
SHORT_SERIES_WEEKS = 60  # valid data, too short for TINY_FORECAST's holdout + validation + min_history


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQOPS_", "PREFECT_API_URL"))}
    env.update(SEQOPS_ROOT=str(root), MLFLOW_TRACKING_URI=f"sqlite:///{root / '.seqops' / 'mlflow.db'}",
               PREFECT_HOME=str(root / ".seqops" / "prefect"), OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def short_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose source file is valid but too short: prepare@forecast (a DVC subprocess) refuses it."""
    root = tmp_path_factory.mktemp("console") / "project"
    make_project(root, {"forecast": {**TINY_FORECAST, "source": "short.csv"}})
    weeks = pd.date_range("2000-01-02", periods=SHORT_SERIES_WEEKS, freq="W-SUN")
    pd.DataFrame({"date": weeks, "co2": [350.0 + 0.1 * i for i in range(len(weeks))]}).to_csv(
        root / "short.csv", index=False)
    return root


def _run(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "seqops"), "run", "--task", "forecast", "--no-serve-check", *args],
                          cwd=root, env=_env(root, **env), capture_output=True, text=True, timeout=600)


def _log_named_in(output: str) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("full log: "))
    return Path(line.removeprefix("full log: ").split()[0])


@pytest.mark.slow
def test_a_failed_stage_ends_the_run_with_its_root_cause_and_exit_2(short_project: Path) -> None:
    result = _run(short_project)

    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert lines[-1].startswith("error: prepare@forecast: series "), lines[-1]
    assert lines[-1].endswith(f"has {SHORT_SERIES_WEEKS} steps; prepare needs at least 157 (holdout 52 + "
                              "validation 52 + min_history 53)"), lines[-1]
    assert "Traceback" not in result.stdout + result.stderr
    assert "forecast  prepare   failed" in result.stdout
    assert len(lines) <= 6, lines  # log line, ingest, version, prepare failed, the cause
    log = _log_named_in(result.stdout)
    assert log.parent == short_project / ".seqops" / "logs" and log.name.endswith("-run.log")
    full = log.read_text()
    assert "Beginning flow run" in full and "prepare@forecast: error: series " in full  # Prefect's, the stage's


@pytest.mark.slow
def test_verbose_shows_the_full_logs_and_still_ends_with_the_cause(short_project: Path) -> None:
    result = _run(short_project, "--verbose")

    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "Beginning flow run" in output and "Running stage 'prepare@forecast'" in output
    assert output.strip().splitlines()[-1].startswith("error: prepare@forecast: series ")
    assert "Beginning flow run" in _log_named_in(output).read_text()


def test_seqops_log_debug_means_verbose_and_a_bad_level_is_one_line(tmp_path: Path) -> None:
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["run"], env={"SEQOPS_LOG": "loud", "SEQOPS_ROOT": str(tmp_path)})

    assert result.exit_code == 2
    assert "error: SEQOPS_LOG='loud': use one of ['info', 'debug']" in result.output
    assert "Traceback" not in result.output


def test_a_seqops_error_is_one_line_and_exit_2(project: Path) -> None:
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["serve", "nosuchtask"])

    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "nosuchtask" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("override", ["serving.max_history=20000", "tasks.forecast.serving.max_history=20000"])
def test_serve_refuses_a_task_limit_override_saying_it_takes_a_retrain(project: Path, override: str) -> None:
    """A task's request limits are recorded in its model when it is trained: `serve --set` of one would be
    accepted and change nothing (or was blamed on params.yaml as an extra input)."""
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["serve", "forecast", "--set", override])

    assert result.exit_code == 2, result.output
    assert f"error: --set {override}: `seqops serve` overrides only the server's settings" in result.output
    assert "tasks.forecast.serving: " in result.output and "retrain (`seqops run --task forecast`)" in result.output


def test_a_taken_port_is_one_error_before_anything_starts(project: Path) -> None:
    """uvicorn (serve) and mlflow ui report a taken port only after printing a successful start."""
    from pipelines.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--port", str(port)])

    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: cannot listen on 127.0.0.1:{port}: Address already in use (another "
                                     f"server listens there: choose another --port, or stop it)")


def test_ctrl_c_is_one_line_saying_so_and_exit_130(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a run ended with a stage shown failed and no last line saying why."""
    import pipelines.orchestration.flows as flows
    from pipelines import console
    from pipelines.cli import app

    def interrupted(**_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(flows, "retrain", interrupted)
    monkeypatch.setattr(console, "_last_log", None)  # the run's log is named by later errors of this process
    result = CliRunner().invoke(app, ["run", "--no-serve-check"])

    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == ("error: interrupted (Ctrl-C); stages that finished stay done, "
                                                      "and the next run goes on from there")


def test_an_unexpected_exception_is_named_a_bug_with_its_log_and_exit_1(project: Path) -> None:
    from pipelines.cli import _SeqopsGroup

    broken = typer.Typer(cls=_SeqopsGroup)

    @broken.command()
    def explode() -> None:
        {}["missing"]

    @broken.command()
    def other() -> None:
        """A second command, so `explode` is a subcommand as in the real app."""

    result = CliRunner().invoke(broken, ["explode"])

    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith("error: unexpected KeyError: 'missing' (a bug in seqops; the traceback is in ")
    log = Path(line.rsplit(" ", 1)[-1].rstrip(")"))
    assert log.parent == project / ".seqops" / "logs" and "Traceback" in log.read_text()


def test_the_summary_table_shows_candidates_baselines_the_choice_and_the_verdict(tmp_path: Path) -> None:
    from pipelines.summary import task_summary

    metrics = tmp_path / "forecast.json"
    metrics.write_text(json.dumps({
        "task": "forecast", "selection": "validation_mae (minimize)", "best_variant": "lstm",
        "variants": {"gru": {"mae": 1.9, "baseline_mae": 1.5, "validation_mae": 2.2},
                     "lstm": {"mae": 1.2, "baseline_mae": 1.5, "validation_mae": 1.4}}}))
    decision = {"version": "3", "promoted": False, "reason": "candidate mae 1.2 does not beat champion v2 (1.1)",
                "candidate_score": 1.2, "champion_score": 1.1, "champion_version": "2"}

    lines = task_summary(metrics, "forecast", decision, "mae", "minimize")

    assert lines == [
        "forecast: holdout mae (lower is better); variant chosen by validation_mae (minimize)",
        "  candidate         mae",
        "  gru            1.9000",
        "  lstm           1.2000  chosen",
        "  baseline       1.5000  baseline",
        "  not promoted: v3 registered, v2 stays champion (candidate mae 1.2 does not beat champion v2 (1.1))",
    ]
    assert task_summary(metrics, "forecast", None, "mae", "minimize")[-1] == (
        "  not retrained: data, params and code unchanged since the last run")


def test_variants_training_in_other_processes_show_as_lines_before_their_stage(tmp_path: Path) -> None:
    """A variant's epochs reach the console from another process (as from a Dask worker): not a TTY, one line each."""
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from pipelines import console\n"
        "with console.Session(Path(sys.argv[1]), console.verbose_requested()) as session, console.timed('forecast', 'train'):\n"
        "    subprocess.run([sys.executable, '-c', 'from pipelines import console\\n"
        "console.training_progress(\"forecast/lstm\", 1, 2, {\"train_loss\": 0.5})\\n"
        "print(\"lightning chatter\")\\n"
        "console.training_progress(\"forecast/lstm\", 2, 2, {\"train_loss\": 0.25}, seconds=1.5)'], check=True)\n"
    )
    quiet = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                           env=_env(tmp_path), timeout=120)
    verbose = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                             env=_env(tmp_path, SEQOPS_LOG="debug"), timeout=120)

    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stdout.splitlines()
    assert lines[1:] == ["forecast  train     lstm          1.5s  2 epochs  train_loss=0.2500",
                         lines[2]] and lines[2].startswith("forecast  train     done ")
    assert "lightning chatter" not in quiet.stdout + quiet.stderr
    assert "lightning chatter" in _log_named_in(quiet.stdout).read_text()
    assert "  forecast/lstm epoch 1/2 train_loss=0.5000" in verbose.stdout + verbose.stderr
    assert "lightning chatter" in verbose.stdout + verbose.stderr


def test_seqops_experiments_are_tagged_as_model_training(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.project import tracking_uri
    from pipelines.train.tracking import KIND_TAG, TRAINING_KIND, ensure_experiment, mark_training_experiments

    client = MlflowClient(tracking_uri(project))
    created = ensure_experiment("forecast", project)
    old = client.create_experiment("seqops-sentiment")  # as an older seqops created it: no kind
    foreign = client.create_experiment("someone-else")

    assert mark_training_experiments(project) == ["seqops-sentiment"]
    assert client.get_experiment(created).tags[KIND_TAG] == TRAINING_KIND
    assert client.get_experiment(old).tags[KIND_TAG] == TRAINING_KIND
    assert KIND_TAG not in client.get_experiment(foreign).tags


def test_a_params_typo_or_unknown_task_is_refused_before_the_run_starts(project: Path) -> None:
    """It took 13 to 40 s (Prefect's API started, the flow loaded) to answer a typo in one line."""
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["run", "--task", "forcast", "--no-serve-check"])
    assert result.exit_code == 2 and "unknown task 'forcast'" in result.output
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("promote:", "promote:\n  min_improvment: 0.1", 1))
    result = CliRunner().invoke(app, ["run", "--no-serve-check"])
    assert result.exit_code == 2 and "min_improvment" in result.output
    assert not list((project / ".seqops" / "logs").glob("*-run.log"))  # no run was started for either
