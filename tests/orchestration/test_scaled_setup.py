"""The scaled setup of docker-compose.yml, every service started natively, one retrain through it, one model served.

Each service runs compose's own command, entrypoint script and environment, with compose's host
names, ports, `/run/secrets/` and `/app` translated to this machine (`Compose` below):
PostgreSQL (the machine's; one non-superuser role per server, owning only its databases) backs the
basic-auth MLflow (deploy/mlflow/start.sh, identities from deploy/mlflow/identities.py) and the
Prefect server behind its auth string (deploy/prefect/start.sh); moto stands in for the S3 store.
The deployment is registered as compose's one-shot `prefect-deploy` does; compose's worker, under
the pipeline identity, picks the run up and fans its two variants out to a Dask scheduler and
worker talking TLS (certificates from deploy/dask/make_certs.py); the gate signs the champion with
the pipeline's key. Finally compose's model server, under the read-only identity and with only the
public key, serves that champion. Project-image services go through deploy/entrypoint.sh, which
turns the `*_FILE` secrets into the variables the clients read, as in the image.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipelines.registry import CANDIDATE_TYPE_TAG
from tests.conftest import REPO, TINY_FORECAST, make_project
from tests.orchestration.conftest import BIN, Service, base_env, free_port, port_open, running
from tests.security.conftest import owned_databases

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MLFLOW_BUCKET, DVC_BUCKET = "seqops-mlflow", "seqops-dvc"
TWO_VARIANTS = [
    {"name": "lstm", "cell": "lstm", "hidden_size": 8, "k1": 26, "k2": 26, "lr": 0.01},
    {"name": "gru", "cell": "gru", "hidden_size": 8, "k1": 26, "k2": 26, "lr": 0.01},
]
# .env for this run: identity names (moto accepts any key) and the values compose reads from secrets
VARIABLES = {"S3_MLFLOW_ACCESS_KEY": "seqops-mlflow", "S3_DVC_ACCESS_KEY": "seqops-dvc",
             "S3_MODEL_SERVER_ACCESS_KEY": "seqops-model-server"}
SECRET_VALUES = {"mlflow_admin_password": "admin-Pw-0123456789", "mlflow_flask_secret_key": "csrf-0123456789",
                 "mlflow_pipeline_password": "pipeline-Pw-0123456789",
                 "mlflow_model_server_password": "reader-Pw-0123456789",
                 "prefect_api_auth_string": "seqops:prefect-Pw-0123456789", "s3_mlflow_secret_key": "mlflow-s3-secret",
                 "s3_dvc_secret_key": "dvc-s3-secret", "s3_model_server_secret_key": "reader-s3-secret"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


class Compose:
    """docker-compose.yml's services as this machine runs them: same commands, environments, secrets."""

    def __init__(self, root: Path, secrets: Path, hosts: dict[str, str], tokens: dict[str, str]) -> None:
        self.services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
        self.root, self.secrets, self.hosts, self.tokens = root, secrets, hosts, tokens

    def translate(self, value: object) -> str:
        text = INTERPOLATION.sub(lambda m: VARIABLES.get(m.group(1), m.group(2) or ""), str(value))
        for compose_address, local in self.hosts.items():
            text = text.replace(compose_address, local)
        text = text.replace("/run/secrets/", f"{self.secrets}/")
        return str(self.root) + text[4:] if text == "/app" or text.startswith("/app/") else text

    def env(self, service: str, **extra: str) -> dict[str, str]:
        environment = self.services[service].get("environment", {})
        return base_env(**{**{key: self.translate(value) for key, value in environment.items()}, **extra})

    def command(self, service: str) -> list[str]:
        return [self.tokens.get(str(part), self.translate(part)) for part in self.services[service]["command"]]

    def image_command(self, service: str, *extra: str) -> list[str]:
        """A project-image service: the image's entrypoint (secrets from files), then its command."""
        command = self.command(service)
        return ["sh", str(self.root / "deploy" / "entrypoint.sh"), str(BIN / command[0]), *command[1:], *extra]


def make_secrets(directory: Path) -> Path:
    """Every secret compose mounts, as files named like compose's secrets (as under /run/secrets)."""
    made = subprocess.run([sys.executable, str(REPO / "deploy" / "dask" / "make_certs.py"), str(directory / "dask")],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    for role in ("scheduler", "worker", "client"):
        (directory / f"dask_{role}_cert").write_bytes((directory / "dask" / f"{role}.pem").read_bytes())
        (directory / f"dask_{role}_key").write_bytes((directory / "dask" / f"{role}.key.pem").read_bytes())
    (directory / "dask_ca").write_bytes((directory / "dask" / "ca.pem").read_bytes())
    key = Ed25519PrivateKey.generate()
    (directory / "model_signing_key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "model_verify_key").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for name, value in SECRET_VALUES.items():
        (directory / name).write_text(value + "\n")
    return directory


def scaled_project(path: Path) -> Path:
    """A tiny forecast project as the image holds it: code, params (Dask fan-out), prefect.yaml, deploy/."""
    spec = copy.deepcopy(TINY_FORECAST)
    spec["variants"] = TWO_VARIANTS
    # The setup under test is the services, not forecast quality: the cheap baselines and no ensemble keep
    # the worker's retrain (every model fetched through the proxied artifact store) within its bound.
    spec["evaluate"] = {**spec.get("evaluate", {}), "statistical_baselines": [], "ensemble_size": 1}
    root = make_project(path, {"forecast": spec})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["orchestration"] = {"task_runner": {"kind": "dask", "n_workers": 2}, "retries": 1,
                               "retry_delay_seconds": 2}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prefect_yaml = (REPO / "prefect.yaml").read_text().replace("directory: /app", f"directory: {root}")
    (root / "prefect.yaml").write_text(prefect_yaml)
    shutil.copytree(REPO / "deploy", root / "deploy")
    return root


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_retrain_runs_through_a_worker_on_postgres_s3_and_dask_and_the_champion_is_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = scaled_project(tmp_path / "app")
    logs, scratch = tmp_path / "logs", tmp_path / "tmp"  # scratch: the worker's (and Dask's) temp files
    logs.mkdir()
    scratch.mkdir()
    secrets = make_secrets(tmp_path / "secrets")
    ports = {name: free_port() for name in ("s3", "mlflow", "prefect", "dask", "scheduler_dashboard",
                                            "worker_dashboard", "worker_health", "serve")}
    s3, mlflow_url = f"http://127.0.0.1:{ports['s3']}", f"http://127.0.0.1:{ports['mlflow']}"
    prefect_api = f"http://127.0.0.1:{ports['prefect']}/api"
    compose = Compose(root, secrets, hosts={
        "http://mlflow:5000": mlflow_url, "http://prefect-server:4200/api": prefect_api,
        "http://seaweedfs:8333": s3, "tls://dask-scheduler:8786": f"tls://127.0.0.1:{ports['dask']}"},
        tokens={"0.0.0.0": "127.0.0.1", "5000": str(ports["mlflow"]), "8786": str(ports["dask"]),
                ":8787": f"127.0.0.1:{ports['scheduler_dashboard']}", "5055": str(ports["serve"]),
                ":8789": f"127.0.0.1:{ports['worker_dashboard']}"})

    moto = Service("moto S3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])],
                   f"{s3}/moto-api/", base_env(), logs / "moto.log")
    with running(moto), owned_databases("mlflow", "mlflow_auth") as mlflow_db, owned_databases("prefect") as prefect_db:
        s3_client(s3).create_bucket(Bucket=MLFLOW_BUCKET)
        s3_client(s3).create_bucket(Bucket=DVC_BUCKET)
        (secrets / "mlflow_db_password").write_text(mlflow_db["password"])
        (secrets / "prefect_db_password").write_text(prefect_db["password"])
        mlflow_server = Service(
            "mlflow server (basic auth)", ["sh", str(REPO / "deploy" / "mlflow" / "start.sh"), *compose.command("mlflow")],
            f"{mlflow_url}/health",
            compose.env("mlflow", SECRETS_DIR=str(secrets), MLFLOW_DB_HOST=mlflow_db["host"],
                        MLFLOW_DB_PORT=mlflow_db["port"], MLFLOW_DB_USER=mlflow_db["user"], MLFLOW_DB=mlflow_db["mlflow"],
                        MLFLOW_AUTH_DB=mlflow_db["mlflow_auth"],
                        MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "mlflow-auth" / "basic_auth.ini")),
            logs / "mlflow.log")
        prefect_server = Service(
            "prefect server (auth string)",
            ["sh", str(REPO / "deploy" / "prefect" / "start.sh"), *compose.command("prefect-server"),
             "--port", str(ports["prefect"])],
            f"{prefect_api}/health",
            compose.env("prefect-server", SECRETS_DIR=str(secrets), HOME=str(tmp_path / "prefect-server"),
                        PREFECT_HOME=str(tmp_path / "prefect-server"), PREFECT_DB_HOST=prefect_db["host"],
                        PREFECT_DB_PORT=prefect_db["port"], PREFECT_DB_USER=prefect_db["user"],
                        PREFECT_DB=prefect_db["prefect"]),
            logs / "prefect-server.log", startup_timeout=180)
        with running(mlflow_server, prefect_server):
            _run_one_shots(compose, root, secrets)
            worker_env = compose.env("prefect-worker", PREFECT_WORKER_WEBSERVER_PORT=str(ports["worker_health"]),
                                     TMPDIR=str(scratch))
            scheduler = Service("dask scheduler (tls)", compose.image_command("dask-scheduler"),
                                f"http://127.0.0.1:{ports['scheduler_dashboard']}/health",
                                compose.env("dask-scheduler"), logs / "dask-scheduler.log", cwd=root)
            dask_workers = Service("dask worker (tls)", compose.image_command("dask-worker", "--host", "127.0.0.1"),
                                   f"http://127.0.0.1:{ports['worker_dashboard']}/health",
                                   compose.env("dask-worker", TMPDIR=str(scratch)), logs / "dask-worker.log", cwd=root)
            worker = Service("prefect worker (--run-once)", compose.image_command("prefect-worker", "--run-once"),
                             "", worker_env, logs / "worker.log", cwd=root)  # its log survives a timeout
            with running(scheduler):
                with running(dask_workers):
                    try:
                        code = worker.start().process.wait(timeout=420)
                    finally:
                        worker.stop()
            assert code == 0, worker.tail(80)

            run, variants = _deployment_run(prefect_api, SECRET_VALUES["prefect_api_auth_string"])
            assert run.state.is_completed(), f"{run.state}\n{worker.tail(80)}"
            (first, first_end), (second, second_end) = variants.values()
            assert first < second_end and second < first_end, f"variants did not run at the same time: {variants}"
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "model-server")
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET_VALUES["mlflow_model_server_password"])
            _assert_registered_with_both_variants(mlflow_url)
            _assert_artifacts_and_data_in_the_object_store(s3, root)
            _assert_the_model_server_serves_the_signed_champion(compose, root, ports["serve"], logs)
        assert not port_open(ports["mlflow"]) and not port_open(ports["prefect"])
    assert not port_open(ports["s3"])


def _run_one_shots(compose: Compose, root: Path, secrets: Path) -> None:
    """compose's one-shots against the running servers: the MLflow identities, the Prefect deployment."""
    identities = subprocess.run([sys.executable, str(REPO / "deploy" / "mlflow" / "identities.py"),
                                 *compose.command("mlflow-identities")[2:]],
                                env=compose.env("mlflow-identities", SECRETS_DIR=str(secrets)),
                                capture_output=True, text=True, timeout=120)
    assert identities.returncode == 0, identities.stdout + identities.stderr
    deploy = subprocess.run(["sh", str(root / "deploy" / "entrypoint.sh"), *compose.command("prefect-deploy")],
                            cwd=root, capture_output=True, text=True, timeout=180, env=compose.env("prefect-deploy"))
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr


def _assert_the_model_server_serves_the_signed_champion(compose: Compose, root: Path, port: int, logs: Path) -> None:
    server = Service("seqops serve (read-only identity)", compose.image_command("serve-forecast"),
                     f"http://127.0.0.1:{port}/ping", compose.env("serve-forecast"), logs / "serve.log", cwd=root)
    history = [330.0 + 0.05 * i for i in range(60)]
    with running(server):
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60, json={
            "dataframe_records": [{"series_id": "a", "history": history}], "params": {"horizon": 4}})
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1", answer.text
    assert len(answer.json()["predictions"][0]["forecast"]) == 4


def _deployment_run(api: str, auth_string: str):
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth_string}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("retrain/retrain")
            runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id
                    and r.state and not r.state.is_scheduled()]
            variants = {t.name: (t.start_time, t.end_time) for t in client.read_task_runs()
                        if t.name.startswith("train[forecast/") and t.state.is_completed()}
    assert len(runs) == 1, [(r.name, r.state) for r in runs]
    assert sorted(variants) == ["train[forecast/gru]", "train[forecast/lstm]"], variants
    return runs[0], variants


def _assert_registered_with_both_variants(tracking: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking, tracking)
    champion = client.get_model_version_by_alias("seqops-forecast", "champion")
    assert champion.version == "1"
    experiment = client.get_experiment_by_name("seqops-forecast")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    parents = {r.info.run_id for r in runs if not r.data.tags.get("mlflow.parentRunId")}
    by_type = {(r.data.tags.get(CANDIDATE_TYPE_TAG, "variant"), r.info.run_name) for r in children}
    assert by_type == {("variant", "gru"), ("variant", "lstm"), ("baseline", "naive"),
                       ("baseline", "seasonal_naive")}, by_type
    assert {r.data.tags["mlflow.parentRunId"] for r in children} <= parents and len(parents) == 1


def _assert_artifacts_and_data_in_the_object_store(s3: str, root: Path) -> None:
    client = s3_client(s3)
    artifacts = keys(client, MLFLOW_BUCKET, "artifacts/")
    assert any(key.endswith("/MLmodel") for key in artifacts), artifacts[:20]
    assert any(key.endswith("forecast_vs_actual.png") for key in artifacts)
    md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    pushed = keys(client, DVC_BUCKET, "seqops/files/md5/")
    assert f"seqops/files/md5/{md5[:2]}/{md5[2:]}" in pushed, pushed[:20]
