"""The scaled setup of docker-compose.yml, every service started natively, one retrain through it.

PostgreSQL (the machine's; two fresh databases) backs `mlflow server` and `prefect server`; moto
stands in for the S3-compatible store: MLflow proxies artifacts to one bucket, DVC pushes to
another. The deployment is registered the way compose's one-shot `prefect-deploy` service does
(deploy/prefect-deploy.sh with prefect.yaml), and compose's worker command picks the run up with
compose's environment. The retrain fans its two variants out to a Dask scheduler and worker
started with compose's commands.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_FORECAST, make_project
from tests.orchestration.conftest import BIN, Service, base_env, free_port, pg_url, port_open, running

pytestmark = pytest.mark.slow

S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
MLFLOW_BUCKET, DVC_BUCKET = "seqops-mlflow", "seqops-dvc"
TWO_VARIANTS = [
    {"name": "lstm", "cell": "lstm", "hidden_size": 8, "k1": 26, "k2": 26, "lr": 0.01},
    {"name": "gru", "cell": "gru", "hidden_size": 8, "k1": 26, "k2": 26, "lr": 0.01},
]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def compose_command(service: str) -> list[str]:
    return [str(part) for part in compose()["services"][service]["command"]]


def scaled_project(path: Path) -> Path:
    """A tiny forecast project as the image holds it: code, params (Dask fan-out), prefect.yaml, deploy/."""
    spec = copy.deepcopy(TINY_FORECAST)
    spec["variants"] = TWO_VARIANTS
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


def test_retrain_runs_through_a_worker_on_postgres_s3_and_dask(tmp_path: Path, postgres_databases) -> None:
    root = scaled_project(tmp_path / "app")
    logs, scratch = tmp_path / "logs", tmp_path / "tmp"  # scratch: the worker's (and Dask's) temp files
    logs.mkdir()
    scratch.mkdir()
    s3_port, mlflow_port, prefect_port = free_port(), free_port(), free_port()
    s3 = f"http://127.0.0.1:{s3_port}"
    mlflow_url, prefect_api = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}/api"

    moto = Service("moto S3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                   f"{s3}/moto-api/", base_env(), logs / "moto.log")
    with running(moto):
        s3_client(s3).create_bucket(Bucket=MLFLOW_BUCKET)
        s3_client(s3).create_bucket(Bucket=DVC_BUCKET)
        mlflow_server = Service(
            "mlflow server",
            [str(BIN / "mlflow"), "server", "--backend-store-uri", pg_url("psycopg2", postgres_databases["mlflow"]),
             "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts", "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            f"{mlflow_url}/health", base_env(**S3_KEYS, MLFLOW_S3_ENDPOINT_URL=s3), logs / "mlflow.log")
        prefect_server = Service(
            "prefect server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            f"{prefect_api}/health",
            base_env(PREFECT_HOME=str(tmp_path / "prefect-server"),
                     PREFECT_API_DATABASE_CONNECTION_URL=pg_url("asyncpg", postgres_databases["prefect"])),
            logs / "prefect-server.log")
        with running(mlflow_server, prefect_server):
            # compose's one-shot prefect-deploy service: work pool, prefect.yaml deployments, first run
            deploy = subprocess.run(["sh", str(root / "deploy" / "prefect-deploy.sh")], cwd=root, capture_output=True,
                                    text=True, timeout=180,
                                    env=base_env(SEQOPS_ROOT=str(root), PREFECT_API_URL=prefect_api,
                                                 SEQOPS_TRAIN_ON_START="true"))
            assert deploy.returncode == 0, deploy.stdout + deploy.stderr

            # compose's prefect-worker: its command and environment, pointed at the native services
            dask_port, scheduler_dashboard, worker_dashboard = free_port(), free_port(), free_port()
            worker_env = base_env(**S3_KEYS, SEQOPS_ROOT=str(root), SEQOPS_HOME=str(root / ".seqops"),
                                  PREFECT_HOME=str(root / ".seqops" / "prefect"), MLFLOW_TRACKING_URI=mlflow_url,
                                  PREFECT_API_URL=prefect_api, MLFLOW_S3_ENDPOINT_URL=s3,
                                  DVC_REMOTE_URL=f"s3://{DVC_BUCKET}/seqops", DVC_S3_ENDPOINT_URL=s3,
                                  PREFECT_WORKER_WEBSERVER_PORT=str(free_port()), TMPDIR=str(scratch),
                                  SEQOPS_DASK_ADDRESS=f"tcp://127.0.0.1:{dask_port}")
            compose_env = compose()["services"]["prefect-worker"]["environment"]
            assert set(compose_env) <= set(worker_env), "the native worker must get every variable compose sets"
            # compose's dask-scheduler and dask-worker, on local ports, sharing the worker's checkout
            scheduler = Service("dask scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                                   str(dask_port), "--dashboard-address", f"127.0.0.1:{scheduler_dashboard}"],
                                f"http://127.0.0.1:{scheduler_dashboard}/health", worker_env, logs / "dask-scheduler.log")
            dask_workers = Service("dask worker", [str(BIN / "dask"), "worker", f"tcp://127.0.0.1:{dask_port}",
                                                   "--nworkers", "2", "--nthreads", "1",
                                                   "--dashboard-address", f"127.0.0.1:{worker_dashboard}"],
                                   f"http://127.0.0.1:{worker_dashboard}/health", {**worker_env, "OMP_NUM_THREADS": "1"},
                                   logs / "dask-worker.log", cwd=root)
            with running(scheduler):
                with running(dask_workers):
                    worker = subprocess.run([*compose_command("prefect-worker"), "--run-once"], cwd=root,
                                            env=worker_env, capture_output=True, text=True, timeout=420)
            (logs / "worker.log").write_text(worker.stdout + worker.stderr)
            assert worker.returncode == 0, worker.stdout[-4000:] + worker.stderr[-4000:]

            run, variants = _deployment_run(prefect_api)
            assert run.state.is_completed(), f"{run.state}\n{worker.stdout[-4000:]}{worker.stderr[-4000:]}"
            (first, first_end), (second, second_end) = variants.values()
            assert first < second_end and second < first_end, f"variants did not run at the same time: {variants}"
            _assert_registered_with_both_variants(mlflow_url)
            _assert_artifacts_and_data_in_the_object_store(s3, root)
        assert not port_open(mlflow_port) and not port_open(prefect_port)
    assert not port_open(s3_port)


def _deployment_run(api: str):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
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
    assert sorted(r.info.run_name for r in children) == ["gru", "lstm"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} <= parents and len(parents) == 1


def _assert_artifacts_and_data_in_the_object_store(s3: str, root: Path) -> None:
    client = s3_client(s3)
    artifacts = keys(client, MLFLOW_BUCKET, "artifacts/")
    assert any(key.endswith("/MLmodel") for key in artifacts), artifacts[:20]
    assert any(key.endswith("forecast_vs_actual.png") for key in artifacts)
    md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    pushed = keys(client, DVC_BUCKET, "seqops/files/md5/")
    assert f"seqops/files/md5/{md5[:2]}/{md5[2:]}" in pushed, pushed[:20]
