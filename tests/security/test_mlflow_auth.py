"""MLflow behind its basic-auth app, started the way compose's mlflow service starts it (deploy/mlflow/start.sh),
on PostgreSQL with a role that is not the superuser; identities created by deploy/mlflow/identities.py.

The read-only identity (the model servers) reads the registry but cannot register a version or move an
alias; the pipeline identity can; anonymous requests are turned away.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.orchestration.conftest import Service, base_env, free_port, running
from tests.security.conftest import owned_databases

API = "/api/2.0/mlflow"
PASSWORDS = {"mlflow_admin_password": "admin-Pw-0123456789", "pipeline_password": "pipeline-Pw-0123456789",
             "model_server_password": "reader-Pw-0123456789", "mlflow_flask_secret_key": "csrf-key-0123456789"}
MODEL = "seqops-forecast"


@pytest.fixture(scope="module")
def mlflow_with_auth(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    secrets = tmp / "secrets"
    secrets.mkdir()
    with owned_databases("mlflow", "mlflow_auth") as db:
        for name, value in {**PASSWORDS, "mlflow_db_password": db["password"]}.items():
            (secrets / name).write_text(value + "\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = base_env(SECRETS_DIR=str(secrets), MLFLOW_DB_HOST=db["host"], MLFLOW_DB_PORT=db["port"],
                       MLFLOW_DB_USER=db["user"], MLFLOW_DB=db["mlflow"], MLFLOW_AUTH_DB=db["mlflow_auth"],
                       MLFLOW_AUTH_CONFIG_PATH=str(tmp / "auth" / "basic_auth.ini"))
        server = Service("mlflow server (basic auth)",
                         ["sh", str(REPO / "deploy" / "mlflow" / "start.sh"), "--host", "127.0.0.1", "--port", str(port),
                          "--workers", "1", "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts"],
                         f"{url}/health", env, tmp / "mlflow.log")
        with running(server):
            identities = subprocess.run(
                [sys.executable, str(REPO / "deploy" / "mlflow" / "identities.py"),
                 "pipeline=pipeline_password", "model-server=model_server_password"],
                env={**env, "MLFLOW_TRACKING_URI": url}, capture_output=True, text=True, timeout=120)
            assert identities.returncode == 0, identities.stdout + identities.stderr
            yield url, tmp


def as_user(url: str, user: str, secret: str | None) -> httpx.Client:
    auth = (user, PASSWORDS[secret]) if secret else None
    return httpx.Client(base_url=f"{url}{API}", auth=auth, timeout=30)


@pytest.fixture(scope="module")
def registered(mlflow_with_auth) -> str:
    """The pipeline registers seqops-forecast v1 from one of its runs and makes it champion."""
    url, _ = mlflow_with_auth
    with as_user(url, "pipeline", "pipeline_password") as pipeline:
        experiment = pipeline.post("/experiments/create", json={"name": MODEL}).json()["experiment_id"]
        run = pipeline.post("/runs/create", json={"experiment_id": experiment}).json()["run"]["info"]
        assert pipeline.post("/registered-models/create", json={"name": MODEL}).status_code == 200
        created = pipeline.post("/model-versions/create", json={
            "name": MODEL, "source": f"{run['artifact_uri']}/model", "run_id": run["run_id"]})
        assert created.status_code == 200, created.text
        moved = pipeline.post("/registered-models/alias", json={"name": MODEL, "alias": "champion", "version": "1"})
        assert moved.status_code == 200, moved.text
        return run["run_id"]


def test_the_pipeline_identity_registers_versions_and_moves_the_champion(mlflow_with_auth, registered) -> None:
    url, _ = mlflow_with_auth
    with as_user(url, "pipeline", "pipeline_password") as pipeline:
        run = pipeline.get("/runs/get", params={"run_id": registered}).json()["run"]["info"]
        second = pipeline.post("/model-versions/create", json={
            "name": MODEL, "source": f"{run['artifact_uri']}/model", "run_id": registered})
        assert second.status_code == 200 and second.json()["model_version"]["version"] == "2"
        assert pipeline.post("/registered-models/alias",
                             json={"name": MODEL, "alias": "champion", "version": "2"}).status_code == 200
        assert pipeline.post("/registered-models/alias",
                             json={"name": MODEL, "alias": "champion", "version": "1"}).status_code == 200


def test_the_read_only_identity_reads_but_cannot_register_or_move_an_alias(mlflow_with_auth, registered) -> None:
    url, _ = mlflow_with_auth
    with as_user(url, "model-server", "model_server_password") as reader:
        champion = reader.get("/registered-models/alias", params={"name": MODEL, "alias": "champion"})
        assert champion.status_code == 200 and champion.json()["model_version"]["version"] == "1"
        register = reader.post("/model-versions/create", json={"name": MODEL, "source": "s3://elsewhere/model"})
        assert register.status_code == 403, register.text
        move = reader.post("/registered-models/alias", json={"name": MODEL, "alias": "champion", "version": "1"})
        assert move.status_code == 403, move.text
        tag = reader.post("/model-versions/set-tag", json={"name": MODEL, "version": "1",
                                                           "key": "promotion.decision", "value": "promoted"})
        assert tag.status_code == 403, tag.text


def test_requests_without_valid_credentials_are_turned_away(mlflow_with_auth, registered) -> None:
    url, _ = mlflow_with_auth
    with as_user(url, "anonymous", None) as anonymous:
        assert anonymous.get("/registered-models/get", params={"name": MODEL}).status_code == 401
    with httpx.Client(base_url=f"{url}{API}", auth=("pipeline", "wrong"), timeout=30) as wrong:
        assert wrong.get("/registered-models/get", params={"name": MODEL}).status_code == 401


def test_the_auth_config_holding_the_admin_password_is_private(mlflow_with_auth) -> None:
    _, tmp = mlflow_with_auth
    config = Path(tmp / "auth" / "basic_auth.ini")
    assert config.stat().st_mode & 0o077 == 0
