"""`seqops`: the command line. Every command has --help; errors print one line, never a traceback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines import project
from pipelines.errors import SeqopsError
from pipelines.project import project_root

project.apply_environment(project_root())

app = typer.Typer(help="seqops: recurrent sequence models from raw data to a served model.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

EXAMPLE_HISTORY_STEPS = 104


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


EXAMPLE_TEXTS = ["What a great flight, the crew was lovely!", "My bag is lost and nobody answers the phone."]


def example_request(task: str, root: Path) -> dict:
    """A request for the task: two sentences, or the last EXAMPLE_HISTORY_STEPS values of its own series."""
    import pandas as pd

    from pipelines.config import TextTask, load_params
    from pipelines.project import prepared_dir

    spec = load_params(root).task(task)
    if isinstance(spec, TextTask):
        return {"dataframe_records": [{"text": text} for text in EXAMPLE_TEXTS]}
    series = pd.read_parquet(prepared_dir(root, task) / "series.parquet")
    first = series[series["series_id"] == series["series_id"].iloc[0]]
    record = {"series_id": str(first["series_id"].iloc[0]),
              "history": [round(float(v), 3) for v in first[spec.target].to_numpy()[-EXAMPLE_HISTORY_STEPS:]]}
    for column in spec.covariates:
        record[column] = [round(float(v), 3) for v in first[column].to_numpy()[-EXAMPLE_HISTORY_STEPS:]]
    return {"dataframe_records": [record], "params": {"horizon": spec.serving.default_horizon}}


@app.command()
def run(
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="Task(s) to run; default: all in params.yaml.")] = None,
    force: Annotated[bool, typer.Option(help="Rerun every stage even if DVC finds it up to date.")] = False,
    serve_check: Annotated[bool, typer.Option("--serve-check/--no-serve-check",
                                              help="Serve each champion and make one REST call.")] = True,
) -> None:
    """Run the retrain flow (version data, prepare, train, evaluate, promote), then query each champion over REST."""
    import httpx

    from pipelines.orchestration.flows import retrain
    from pipelines.project import tracking_uri
    from pipelines.serving.process import ScoringServer
    from pipelines.train.tracking import registered_name

    root = project_root()
    try:
        summary = retrain(tasks=task, force=force, root=str(root))
        for name, result in summary.items():
            decision = result["decision"]
            if decision is None:
                typer.echo(f"{name}: data and params unchanged since the last run; nothing retrained")
            else:
                verdict = "promoted to champion" if decision["promoted"] else "kept the current champion"
                typer.echo(f"{name}: registered {registered_name(name)} v{decision['version']}: {verdict} "
                           f"({decision['reason']})")
        if serve_check:
            for name in summary:
                uri = f"models:/{registered_name(name)}@champion"
                typer.echo(f"{name}: starting `mlflow models serve` for {uri} ...")
                log = Path(os.environ["PREFECT_HOME"]).parent / f"serve-{name}.log"
                with ScoringServer(uri, tracking_uri(root), log_path=log) as server:
                    body = example_request(name, root)
                    response = httpx.post(f"{server.url}/invocations", json=body, timeout=60)
                    typer.echo(f"{name}: POST {server.url}/invocations -> {response.status_code}")
                    typer.echo(json.dumps(response.json(), indent=2))
                typer.echo(f"{name}: server stopped")
    except SeqopsError as e:
        _fail(str(e))
    typer.echo("\nDone. Next:\n"
               "  .venv/bin/seqops ui                      # MLflow UI at http://127.0.0.1:5000 (runs, metrics, plots)\n"
               "  .venv/bin/seqops serve forecast --port 5055   # REST: POST http://127.0.0.1:5055/invocations")


@app.command()
def serve(
    task: Annotated[str, typer.Argument(help="Task whose champion to serve, e.g. forecast.")],
    port: Annotated[Optional[int], typer.Option(help="Port to listen on; default: serving.port.")] = None,
    host: Annotated[Optional[str], typer.Option(help="Interface to bind; default: serving.host (127.0.0.1).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="uvicorn worker processes; default: serving.workers.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override params.yaml, e.g. "
                                                             "--set serving.poll_interval_s=2 (repeatable).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs throughput).")] = False,
) -> None:
    """Serve models:/seqops-TASK@champion over REST (blocks; Ctrl-C stops).

    MLflow's scoring app inside the seqops gateway (pipelines/gateway.py); settings in params.yaml `serving`.
    A request without Content-Type is JSON; a body over serving.max_body_bytes gets a 413, a slow one a 504.
    Every response carries X-Model-Version; GET /health, /version and /metrics (Prometheus).
    The model reloads when `champion` moves (checked every serving.poll_interval_s).
    """
    from pipelines.config import load_params
    from pipelines.project import tracking_uri
    from pipelines.registry import champion_version
    from pipelines.serving.gateway import GatewayConfig, GatewayError
    from pipelines.serving.gateway import serve as run_gateway
    from pipelines.train.tracking import configure, registered_name

    root = project_root()
    try:
        params = load_params(root, overrides or ())
        params.task(task)
        name = registered_name(task)
        version = champion_version(configure(root), name)
        if version is None:
            _fail(f"{name} has no champion yet: run `seqops run --task {task}` first")
        settings = params.serving
        host, port = host or settings.host, port or settings.port
        config = GatewayConfig.from_params(task, name, tracking_uri(root), settings)
        typer.echo(f"serving {name} v{version} (champion) on http://{host}:{port}  "
                   "(POST /invocations; GET /health /version /metrics)")
        run_gateway(config, host, port, workers or settings.workers, access_log)
    except SeqopsError as e:
        _fail(str(e))


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the project's tracking store (blocks; Ctrl-C stops)."""
    from pipelines.project import tracking_uri

    root = project_root()
    uri = tracking_uri(root)
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port}")
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    os.execvpe(command[0], command, dict(os.environ))


@app.command()
def rollback(task: Annotated[str, typer.Argument(help="Task whose champion to roll back.")]) -> None:
    """Move the `champion` alias back to the version it pointed at before the last promotion."""
    from pipelines.registry import rollback as do_rollback
    from pipelines.train.tracking import registered_name

    try:
        old, new = do_rollback(project_root(), task)
    except SeqopsError as e:
        _fail(str(e))
    typer.echo(f"{registered_name(task)}: champion moved from v{old} back to v{new}")


@app.command()
def lineage(
    task: Annotated[str, typer.Argument(help="Task whose model to trace.")],
    version: Annotated[Optional[str], typer.Option(help="Registered version; default: the champion.")] = None,
) -> None:
    """Trace a model version to its training run, data version, git commit and params, and show how to restore the data."""
    from pipelines.registry import lineage as trace

    try:
        found = trace(project_root(), task, version)
    except SeqopsError as e:
        _fail(str(e))
    aliases = f" ({', '.join(found.aliases)})" if found.aliases else ""
    typer.echo(f"model     {found.name} v{found.version}{aliases}")
    typer.echo(f"decision  {found.decision}")
    typer.echo(f"run       {found.run_id}")
    typer.echo(f"data      md5 {found.data_md5} (data.dvc)")
    typer.echo(f"code      git {found.git_sha}   dvc.lock md5 {found.dvc_lock_md5}")
    typer.echo("params")
    for key, value in found.params.items():
        typer.echo(f"  {key} = {value}")
    if not found.data_committed:
        typer.echo("note: data.dvc was not committed when this model trained; the md5 above is its only record")
    typer.echo("restore the training data:")
    for command in found.restore_commands():
        typer.echo(f"  {command}")


@app.command()
def schedule(
    cron: Annotated[Optional[str], typer.Option(help="Cron expression; default: orchestration.schedule.cron in "
                                                     "params.yaml (\"0 3 * * *\").")] = None,
    timezone: Annotated[Optional[str], typer.Option(help="Time zone of the cron expression; default: "
                                                         "orchestration.schedule.timezone (UTC).")] = None,
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="Task(s) to retrain; default: all.")] = None,
    force: Annotated[bool, typer.Option(help="Retrain on every run even when DVC finds nothing changed.")] = False,
    local_server: Annotated[bool, typer.Option("--local-server/--no-local-server",
                                               help="Without PREFECT_API_URL, start a local Prefect server "
                                                    "(stopped when this command stops).")] = True,
    port: Annotated[int, typer.Option(help="Port of the local Prefect server (its UI too); 0: a free one.")] = 0,
) -> None:
    """Retrain on a schedule: serve the retrain flow as the Prefect deployment retrain/retrain (blocks; Ctrl-C stops).

    A run retrains only what DVC finds changed (new data, params or code) unless --force.
    """
    from prefect.client.schemas.schedules import CronSchedule

    from pipelines.config import ConfigError, load_params
    from pipelines.orchestration.schedule import SERVER_HOME, ScheduleError, exit_on_sigterm, prefect_api, serve_retrain
    from pipelines.project import seqops_home

    root = project_root()
    try:
        params = load_params(root)
        for name in task or []:
            params.task(name)
        settings = params.orchestration.schedule
        cron, timezone = cron or settings.cron, timezone or settings.timezone
        try:
            CronSchedule(cron=cron, timezone=timezone)
        except ValueError as e:
            reason = e.errors()[0]["msg"].removeprefix("Value error, ") if hasattr(e, "errors") else str(e)
            _fail(f"--cron {cron!r} --timezone {timezone!r}: {reason} (cron: minute hour day month weekday, "
                  f"e.g. \"0 3 * * *\")")
        with exit_on_sigterm(), prefect_api(seqops_home(root) / SERVER_HOME, start_local=local_server,
                                            port=port or None, announce=typer.echo):
            typer.echo(f"retrain/retrain: `{cron}` ({timezone}), tasks {task or 'all'}, root {root}; "
                       f"Ctrl-C or SIGTERM stops it (and the local server)")
            serve_retrain(root, cron, timezone, tasks=task, force=force)
    except SeqopsError as e:
        _fail(str(e))
    typer.echo("schedule stopped: deployment paused, local Prefect server (if any) stopped")


data_app = typer.Typer(help="Add data to a task: validated, versioned with DVC, committed.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("add")
def data_add(
    task: Annotated[str, typer.Argument(help="Task to add data to, e.g. forecast.")],
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file with the task's columns.", exists=True,
                                         dir_okay=False, readable=True)],
    mode: Annotated[str, typer.Option(help="append: add rows after the existing data; replace: the file becomes "
                                           "the task's data.")] = "append",
) -> None:
    """Validate FILE, merge it into TASK's raw data, version it (dvc add + push) and commit data.dvc.

    A file that breaks a rule changes nothing. The next retrain (scheduled or `seqops run`) trains on it.
    """
    from pipelines.config import load_params
    from pipelines.data.add import MODES, add_data

    if mode not in MODES:
        _fail(f"--mode must be one of {list(MODES)}, got {mode!r}")
    root = project_root()
    try:
        added = add_data(root, task, file.resolve(), load_params(root), mode)  # type: ignore[arg-type]
    except SeqopsError as e:
        _fail(str(e))
    typer.echo(added.summary)
    for reason, count in added.dropped.items():
        typer.echo(f"  {reason.replace('_', ' ')}: {count} rows")
    if not added.changed:
        typer.echo("  the data is unchanged: nothing new to train on")
    elif added.commit:
        typer.echo(f"  pushed; committed data.dvc as {added.commit[:12]}")
    else:
        typer.echo("  pushed; data.dvc not committed (not a git checkout, or already committed)")


if __name__ == "__main__":
    app()
