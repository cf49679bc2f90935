"""`seqops`: the command line. Every command has --help; errors print one line, never a traceback.

One handler (`_SeqopsGroup.invoke`) for every command: a SeqopsError prints its message
(`error: ...` on stderr) and exits 2; anything else is a bug: one line naming it and the log
that holds its traceback, exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from pipelines import console, project
from pipelines.errors import SeqopsError
from pipelines.processes import Guarded, exit_on_sigterm, remember_interrupts
from pipelines.project import project_root

project.apply_environment(project_root())

USER_ERROR, BUG, INTERRUPTED = 2, 1, 130  # exit codes (130: 128 + SIGINT, as a shell reports Ctrl-C)


class CommandError(SeqopsError):
    """A command's own arguments were refused."""


class _SeqopsGroup(TyperGroup):
    """The one error handler of every command (and subcommand group)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, typer.Exit, typer.Abort,
                typer.TyperException):  # typer >= 0.25 raises its own copy of click's usage errors
            raise
        except SeqopsError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(USER_ERROR) from None
        except KeyboardInterrupt:
            typer.secho("error: interrupted (Ctrl-C); stages that finished stay done, and the next run goes on from "
                        "there", fg=typer.colors.RED, err=True)
            raise typer.Exit(INTERRUPTED) from None
        except Exception as e:
            if refused := console.refused_access(e):
                typer.secho(f"error: {refused}", fg=typer.colors.RED, err=True)
                raise typer.Exit(USER_ERROR) from None
            log = console.bug_log(e, ctx.invoked_subcommand or "seqops")
            what = str(e) if isinstance(e, console.StageBug) else f"unexpected {type(e).__name__}: {e}"
            typer.secho(f"error: {what} (a bug in seqops; the traceback is in {log})", fg=typer.colors.RED, err=True)
            raise typer.Exit(BUG) from None


app = typer.Typer(cls=_SeqopsGroup, help="seqops: recurrent sequence models from raw data to a served model.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def example_request(task: str, root: Path) -> dict:
    """A request the task's champion answers: its kind builds it (pipelines/tasks/), from the prepared data and
    the task as prepare resolved it (a five-line task's min_history and horizon are derived, None in params)."""
    from pipelines.config import load_params
    from pipelines.project import prepared_dir
    from pipelines.tasks import kind_for
    from pipelines.tasks.settings import task_spec

    return kind_for(task_spec(root, task, load_params(root))).example_request(prepared_dir(root, task))


REST_NOTE_CHARS = 90  # the serve check's response, cut to one line


@app.command()
def run(
    task: Annotated[Optional[list[str]],
                    typer.Option("--task", "-t", help="Task(s) to run; default: all in params.yaml.")] = None,
    force: Annotated[bool, typer.Option(help="Rerun every stage even if DVC finds it up to date.")] = False,
    serve_check: Annotated[bool, typer.Option("--serve-check/--no-serve-check",
                                              help="Serve each champion and make one REST call.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the full logs (Prefect, DVC, Lightning, ...) "
                                          "here too; also SEQOPS_LOG=debug. Always in .seqops/logs/.")] = False,
) -> None:
    """Run the retrain flow (version data, prepare, train, evaluate, promote), then query each champion over REST.

    Prints one line per stage and task, a progress line while training, and a table per task; the
    full log of the run goes to .seqops/logs/<timestamp>-run.log.
    """
    from pipelines.config import load_params
    from pipelines.project import metrics_file
    from pipelines.summary import task_summary

    root = project_root()
    verbose = console.verbose_requested(verbose)
    params = load_params(root)  # params.yaml and the task names first: a typo is answered at once, not after
    for name in task or []:     # Prefect's API has started (13 to 40 s)
        params.task(name)
    with exit_on_sigterm(), remember_interrupts(), console.Session(root, verbose) as session:
        from pipelines.orchestration.flows import retrain
        from pipelines.orchestration.schedule import run_api

        with run_api(Path(os.environ["PREFECT_HOME"])):  # Prefect's API, stopped with this command
            summary = retrain(tasks=task, force=force, root=str(root))
        if serve_check:  # side by side: each is mostly an MLflow server process starting (imports), ~12 s
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=len(summary) or 1) as pool:
                for checked in [pool.submit(_serve_check, root, name) for name in summary]:
                    checked.result()
        serve = "; ".join(f"`seqops serve {name}`" for name in summary)
        session.say(f"next: `seqops ui` (MLflow UI, runs and plots); {serve} (REST on :{params.serving.port})")
        for name, result in summary.items():
            metric = params.promote.metric_for(params.task(name).kind)
            session.say()
            for line in task_summary(metrics_file(root, name), name, result["decision"], metric.name, metric.goal):
                session.say(line)


def _rounded(value: object) -> object:
    """A JSON body with floats at 3 decimals: the one line shows values, not float noise."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _serve_check(root: Path, task: str) -> None:
    """Serve the task's champion with MLflow's stock server and make one REST call: one line."""
    import httpx

    from pipelines.project import logs_dir, tracking_uri
    from pipelines.serving.process import ScoringServer
    from pipelines.train.tracking import registered_name

    uri = f"models:/{registered_name(task)}@champion"
    with console.timed(task, "serve") as step, \
            ScoringServer(uri, tracking_uri(root), log_path=logs_dir(root) / f"serve-{task}.log") as server:
        response = httpx.post(f"{server.url}/invocations", json=example_request(task, root), timeout=60)
        body = json.dumps(_rounded(response.json()), separators=(",", ":"))
        cut = body if len(body) <= REST_NOTE_CHARS else body[:REST_NOTE_CHARS - 1] + "…"
        step.note = f"POST /invocations -> {response.status_code} {cut}"


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

    The seqops gateway (pipelines/serving/gateway.py), in place of MLflow's scoring app; settings in params.yaml
    `serving`. JSON, CSV and Parquet bodies are read and checked alike.
    A request without Content-Type is JSON; a body over serving.max_body_bytes gets a 413, a slow one a 504.
    Every response carries X-Model-Version; GET /health, /version and /metrics (Prometheus).
    The model reloads when `champion` moves (checked every serving.poll_interval_s).
    """
    from pipelines.config import load_params
    from pipelines.project import tracking_uri
    from pipelines.registry import champion_version
    from pipelines.serving.gateway import GatewayConfig
    from pipelines.serving.gateway import serve as run_gateway
    from pipelines.serving.process import check_port_free
    from pipelines.train.tracking import configure, registered_name

    root = project_root()
    _check_serve_overrides(task, type(load_params(root).task(task).serving).model_fields, overrides or ())
    params = load_params(root, overrides or ())
    params.task(task)
    name = registered_name(task)
    version = champion_version(configure(root), name)
    if version is None:
        raise CommandError(f"{name} has no champion yet: run `seqops run --task {task}` first")
    settings = params.serving
    host, port = host or settings.host, port or settings.port
    check_port_free(host, port)
    config = GatewayConfig.from_params(task, name, tracking_uri(root), settings)
    typer.echo(f"serving {name} v{version} (champion) on http://{host}:{port}  "
               "(POST /invocations; GET /health /version /metrics)")
    run_gateway(config, host, port, workers or settings.workers, access_log)


def _check_serve_overrides(task: str, task_keys: Iterable[str], overrides: tuple[str, ...] | list[str]) -> None:
    """`seqops serve --set` reaches the server's settings (`serving.KEY`) only. A task's request limits
    (`tasks.TASK.serving`: min_history, max_history, max_horizon, ...) are recorded in its model when it is
    trained, so an override of them here would be accepted and do nothing: refused, saying where they live."""
    from pipelines.config_runtime import Serving

    task_keys = set(task_keys)
    task_only = task_keys - set(Serving.model_fields)  # keys a user may mean for the task under `serving.`
    for assignment in overrides:
        parts = assignment.split("=", 1)[0].strip().split(".")
        if parts[0] == "serving" and not (len(parts) == 2 and parts[1] in task_only):
            continue
        raise CommandError(
            f"--set {assignment}: `seqops serve` overrides only the server's settings (serving.KEY: "
            f"{', '.join(Serving.model_fields)}). A task's request limits (tasks.{task}.serving: "
            f"{', '.join(sorted(task_keys))}) are recorded in its model when it is trained: change them in "
            f"params.yaml and retrain (`seqops run --task {task}`)")


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the project's tracking store (blocks; Ctrl-C or SIGTERM stops it and all its processes)."""
    from pipelines.project import seqops_home, tracking_uri
    from pipelines.serving.process import check_port_free
    from pipelines.train.tracking import mark_training_experiments

    root = project_root()
    uri = tracking_uri(root)
    check_port_free(host, port)
    mark_training_experiments(root)
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port}")
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    with exit_on_sigterm():
        server = Guarded(command, seqops_home(root), "mlflow-ui")
        try:
            code = server.process.wait()
        except KeyboardInterrupt:
            code = 0
        finally:
            server.stop()
    if code:
        raise CommandError(f"mlflow ui exited with {code} (its output is above)")


@app.command()
def rollback(task: Annotated[str, typer.Argument(help="Task whose champion to roll back.")]) -> None:
    """Move the `champion` alias back to the version it pointed at before the last promotion."""
    from pipelines.registry import rollback as do_rollback
    from pipelines.train.tracking import registered_name

    old, new = do_rollback(project_root(), task)
    typer.echo(f"{registered_name(task)}: champion moved from v{old} back to v{new}")


@app.command()
def sign(
    task: Annotated[str, typer.Argument(help="Task whose model version to sign.")],
    version: Annotated[Optional[str], typer.Option(help="Registered version; default: the champion.")] = None,
    champion: Annotated[bool, typer.Option("--champion", help="Also sign the current champion when it carries no "
                                           "promotion tags at all: you vouch for the model already served.")] = False,
) -> None:
    """Sign a version promoted before model signing existed, so `seqops serve` loads it (README: Upgrading).

    Needs the gate's private key (SEQOPS_SIGNING_KEY; on one machine the pair under .seqops/keys/) and
    registry write access. Versions the gate rejected, and signatures that no longer verify, are refused.
    """
    from pipelines.signing import sign_registered
    from pipelines.train.tracking import configure, registered_name

    root = project_root()
    name = registered_name(task)
    done = sign_registered(configure(root), task, name, version, champion, root)
    how = " on your word (--champion)" if done.adopted else ""
    state = f"signed{how} with key {done.key_id}" if done.signed else f"already signed (key {done.key_id}): unchanged"
    typer.echo(f"{name} v{done.version}: {state}")


@app.command()
def lineage(
    task: Annotated[str, typer.Argument(help="Task whose model to trace.")],
    version: Annotated[Optional[str], typer.Option(help="Registered version; default: the champion.")] = None,
) -> None:
    """Trace a model version to its training run, data version, git commit and params, and show how to restore
    the data."""
    from pipelines.registry import lineage as trace

    found = trace(project_root(), task, version)
    aliases = f" ({', '.join(found.aliases)})" if found.aliases else ""
    typer.echo(f"model     {found.name} v{found.version}{aliases}")
    typer.echo(f"decision  {found.decision}")
    typer.echo(f"run       {found.run_id}")
    typer.echo(f"data      md5 {found.data_md5} (data.dvc)")
    typer.echo(f"code      git {found.git_sha}   dvc.lock md5 {found.dvc_lock_md5}")
    if found.uncommitted:
        typer.echo(f"          with uncommitted changes to {', '.join(found.uncommitted)}: git {found.git_sha[:12]} "
                   f"alone is not the code and params it trained with (params below are the run's own)")
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

    A run retrains only what DVC finds changed (new data, params or code) unless --force. Ctrl-C or SIGTERM
    stops a run in flight at its next stage boundary, then the schedule (exit 130 / 143).
    """
    from prefect.client.schemas.schedules import CronSchedule

    from pipelines.config import load_params
    from pipelines.orchestration.schedule import SERVER_HOME, exit_on_sigterm, prefect_api, serve_retrain
    from pipelines.project import seqops_home

    root = project_root()
    params = load_params(root)
    for name in task or []:
        params.task(name)
    settings = params.orchestration.schedule
    cron, timezone = cron or settings.cron, timezone or settings.timezone
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError as e:
        reason = e.errors()[0]["msg"].removeprefix("Value error, ") if hasattr(e, "errors") else str(e)
        raise CommandError(f"--cron {cron!r} --timezone {timezone!r}: {reason} (cron: minute hour day month "
                           f"weekday, e.g. \"0 3 * * *\")") from None
    with exit_on_sigterm(), prefect_api(seqops_home(root) / SERVER_HOME, start_local=local_server,
                                        port=port or None, announce=typer.echo):
        typer.echo(f"retrain/retrain: `{cron}` ({timezone}), tasks {task or 'all'}, root {root}; "
                   f"Ctrl-C or SIGTERM stops it (and the local server)")
        stopped_by = serve_retrain(root, cron, timezone, tasks=task, force=force, announce=typer.echo)
    how = f" by {signal.Signals(stopped_by).name}" if stopped_by else ""
    typer.echo(f"schedule stopped{how}: deployment paused, local Prefect server (if any) stopped")
    raise typer.Exit(128 + stopped_by if stopped_by else 0)


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
        raise CommandError(f"--mode must be one of {list(MODES)}, got {mode!r}")
    root = project_root()
    added = add_data(root, task, file.resolve(), load_params(root), mode)  # type: ignore[arg-type]
    if added.resumed:
        typer.echo(f"{task}: {file.name} is the file last added to the raw data ({added.rows_after} rows); "
                   + (f"versioned and committed now as {added.commit[:12]} (an earlier add was interrupted)"
                      if added.commit else "nothing left to do" if not added.changed
                      else "versioned and pushed now (an earlier add was interrupted)"))
        return
    typer.echo(added.summary)
    for reason, count in added.dropped.items():
        typer.echo(f"  {reason.replace('_', ' ')}: {count} rows")
    for gap in added.gaps:
        typer.secho(f"  warning: {gap}", fg=typer.colors.YELLOW)
    if added.derived_changes:
        typer.echo("  the next prepare derives " + ", ".join(
            f"{key} {after} (was {before})" for key, (before, after) in added.derived_changes.items())
            + ": set them in params.yaml to keep them")
    if not added.changed:
        typer.echo("  the data is unchanged: nothing new to train on")
    elif added.commit:
        typer.echo(f"  pushed; committed data.dvc as {added.commit[:12]}")
    else:
        typer.echo("  pushed; data.dvc not committed (not a git checkout, or already committed)")


if __name__ == "__main__":
    app()
