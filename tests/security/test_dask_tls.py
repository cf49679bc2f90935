"""A Dask scheduler and worker started with TLS as compose starts them, on certificates made by
deploy/dask/make_certs.py: a client with the client certificate computes; one without is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.orchestration.conftest import BIN, Service, base_env, free_port, running

TLS_ENV = {  # how compose hands the certificate to Dask clients (the Prefect worker): Dask's own config
    "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "true",
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "{certs}/ca.pem",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": "{certs}/client.pem",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": "{certs}/client.key.pem",
}


def tls_options(certs: Path, role: str) -> list[str]:
    return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{role}.pem"),
            "--tls-key", str(certs / f"{role}.key.pem")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("dask-tls")
    certs = tmp / "certs"
    made = subprocess.run([sys.executable, str(REPO / "deploy" / "dask" / "make_certs.py"), str(certs)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    port, scheduler_dashboard, worker_dashboard = free_port(), free_port(), free_port()
    address = f"tls://127.0.0.1:{port}"
    scheduler = Service("dask scheduler (tls)",
                        [str(BIN / "dask"), "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port),
                         "--dashboard-address", f"127.0.0.1:{scheduler_dashboard}", *tls_options(certs, "scheduler")],
                        f"http://127.0.0.1:{scheduler_dashboard}/health", base_env(), tmp / "scheduler.log")
    worker = Service("dask worker (tls)",
                     [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                      "--dashboard-address", f"127.0.0.1:{worker_dashboard}", *tls_options(certs, "worker")],
                     f"http://127.0.0.1:{worker_dashboard}/health", base_env(), tmp / "worker.log")
    with running(scheduler):
        with running(worker):
            yield address, certs


def run_client(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A fresh process, so Dask reads its configuration from the environment as the Prefect worker does."""
    code = ("import sys; from distributed import Client\n"
            "with Client(sys.argv[1], timeout='8s') as client:\n"
            "    print(client.submit(sum, [20, 22]).result(timeout=30))\n")
    return subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True, timeout=120)


def test_a_client_with_the_certificate_computes_on_the_cluster(cluster) -> None:
    address, certs = cluster
    done = run_client(address, base_env(**{k: v.format(certs=certs) for k, v in TLS_ENV.items()}))
    assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr[-2000:]


def test_a_client_without_the_certificate_is_refused(cluster) -> None:
    address, certs = cluster
    ca_only = {k: v.format(certs=certs) for k, v in TLS_ENV.items() if "CLIENT" not in k}
    for env in (base_env(), base_env(**ca_only)):
        done = run_client(address, env)
        assert done.returncode != 0 and "42" not in done.stdout


def test_plain_tcp_is_refused(cluster) -> None:
    address, _ = cluster
    done = run_client(address.replace("tls://", "tcp://"), base_env())
    assert done.returncode != 0 and "42" not in done.stdout
