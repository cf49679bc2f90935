"""`seqops`: the command line. Every command has --help; errors print one line, never a traceback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines import environment
from pipelines.paths import project_root

environment.apply(project_root())

app = typer.Typer(help="seqops: recurrent sequence models from raw data to a served model.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

EXAMPLE_HISTORY_STEPS = 104


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _known_errors() -> tuple[type[Exception], ...]:
    from pipelines.config import ConfigError
    from pipelines.registry import RegistryError
    from pipelines.server import ServerError
    from pipelines.sources import SourceError
    from pipelines.validate import ValidationError
    from pipelines.versioning import VersioningError

    return ConfigError, RegistryError, ServerError, SourceError, ValidationError, VersioningError


EXAMPLE_TEXTS = ["What a great flight, the crew was lovely!", "My bag is lost and nobody answers the phone."]


def example_request(task: str, root: Path) -> dict:
    """A request for the task: two sentences, or the last EXAMPLE_HISTORY_STEPS values of its own series."""
    import pandas as pd

    from pipelines.config import TextTask, load_params
    from pipelines.paths import prepared_dir

    spec = load_params(root / "params.yaml").task(task)
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

    from pipelines.flows import retrain
    from pipelines.paths import tracking_uri
    from pipelines.server import ScoringServer
    from pipelines.tracking import registered_name

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
    except _known_errors() as e:
        _fail(str(e))
    typer.echo("\nDone. Next:\n"
               "  .venv/bin/seqops ui                      # MLflow UI at http://127.0.0.1:5000 (runs, metrics, plots)\n"
               "  .venv/bin/seqops serve forecast --port 5055   # REST: POST http://127.0.0.1:5055/invocations")


@app.command()
def serve(
    task: Annotated[str, typer.Argument(help="Task whose champion to serve, e.g. forecast.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5055,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
) -> None:
    """Serve models:/seqops-TASK@champion over REST with MLflow's scoring server (blocks; Ctrl-C stops)."""
    from pipelines.paths import tracking_uri
    from pipelines.registry import champion_version
    from pipelines.server import serve_command, server_env
    from pipelines.tracking import configure, registered_name

    root = project_root()
    try:
        from pipelines.config import load_params

        load_params(root / "params.yaml").task(task)
        name = registered_name(task)
        client = configure(root)
        version = champion_version(client, name)
        if version is None:
            _fail(f"{name} has no champion yet: run `seqops run --task {task}` first")
    except _known_errors() as e:
        _fail(str(e))
    typer.echo(f"serving {name} v{version} (champion) on http://{host}:{port}  (POST /invocations, GET /ping)")
    env = server_env(tracking_uri(root))
    command = serve_command(f"models:/{name}@champion", host, port)
    os.execvpe(command[0], command, env)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port for the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the project's tracking store (blocks; Ctrl-C stops)."""
    from pipelines.paths import tracking_uri

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
    from pipelines.tracking import registered_name

    try:
        old, new = do_rollback(project_root(), task)
    except _known_errors() as e:
        _fail(str(e))
    typer.echo(f"{registered_name(task)}: champion moved from v{old} back to v{new}")


if __name__ == "__main__":
    app()
