"""`seqops serve` loads only versions the promotion gate signed, at start and on hot reload.

Real gateway processes on a throwaway registry: an unsigned champion and a tampered champion
stop the server from starting; a running server refuses both when `champion` moves to them,
logs and counts the refusal in /metrics, keeps serving what it had, and still takes the next
properly signed version.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.serving.conftest import GOOD_FORECAST
from tests.support.registered_models import register_forecast, set_champion, sign_as_gate, store_uri
from tests.support.servers import GatewayProcess

POLL_S = 0.5
TASKS = ("signed", "unsigned", "tampered")
REFUSED = re.compile(r'^seqops_model_reloads_total\{result="refused"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signed-models")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = {task: params["tasks"]["forecast"] for task in TASKS}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def client(root: Path) -> MlflowClient:
    return MlflowClient(store_uri(root), store_uri(root))


def move_champion_unsigned(root: Path, name: str, version: str) -> None:
    """What anyone with registry write access could do: point `champion` anywhere."""
    client(root).set_registered_model_alias(name, "champion", version)


def tamper(root: Path, name: str, version: str) -> None:
    """Change one stored file of a signed version behind the registry's back."""
    location = Path(unquote(urlparse(client(root).get_model_version_download_uri(name, version)).path))
    largest = max((p for p in location.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes() + b"\0")


def refused_count(http: httpx.Client, url: str) -> float:
    found = REFUSED.search(http.get(f"{url}/metrics").text)
    return float(found.group(1)) if found else 0.0


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_server_refuses_to_start_on_an_unsigned_or_tampered_champion(project: Path) -> None:
    register_forecast(project, "seqops-unsigned", seed=0)
    move_champion_unsigned(project, "seqops-unsigned", "1")
    register_forecast(project, "seqops-tampered", seed=0)
    set_champion(project, "seqops-tampered", "1")
    tamper(project, "seqops-tampered", "1")

    servers = {task: GatewayProcess(task, project, store_uri(project)).launch() for task in ("unsigned", "tampered")}
    try:
        for server in servers.values():
            server.process.wait(timeout=180)
    finally:
        for server in servers.values():
            server.stop()
    unsigned, tampered = servers["unsigned"], servers["tampered"]
    assert unsigned.process.returncode != 0 and tampered.process.returncode != 0
    assert "refused seqops-unsigned v1: it carries no promotion tags" in unsigned.log_tail()
    assert "refused seqops-tampered v1: its files hash to" in tampered.log_tail()
    assert "Traceback" not in unsigned.log_tail() + tampered.log_tail()


def test_a_running_server_refuses_unsigned_and_tampered_versions_and_keeps_serving(project: Path) -> None:
    name = "seqops-signed"
    register_forecast(project, name, seed=0)
    set_champion(project, name, "1")
    server = GatewayProcess("signed", project, store_uri(project), overrides=(f"serving.poll_interval_s={POLL_S}",))
    with server, httpx.Client(timeout=60) as http:
        register_forecast(project, name, seed=1)  # v2: never signed
        move_champion_unsigned(project, name, "2")
        wait_for(lambda: refused_count(http, server.url) == 1, "the refusal of unsigned v2")

        register_forecast(project, name, seed=2)  # v3: signed, then its files changed
        sign_as_gate(project, name, "3")
        tamper(project, name, "3")
        move_champion_unsigned(project, name, "3")
        wait_for(lambda: refused_count(http, server.url) == 2, "the refusal of tampered v3")

        response = http.post(f"{server.url}/invocations", json=GOOD_FORECAST)
        assert response.status_code == 200 and response.headers["x-model-version"] == "1"
        log = server.log_tail()
        assert "refused seqops-signed v2" in log and "refused seqops-signed v3: its files hash to" in log
        assert "still serving v1" in log

        register_forecast(project, name, seed=3)  # v4: promoted as the gate does
        set_champion(project, name, "4")
        wait_for(lambda: http.get(f"{server.url}/version").json()["version"] == "4", "signed v4 to be served")

