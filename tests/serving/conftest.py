"""One registry with untrained (seeded) models and real `seqops serve` processes, shared by the suite.

Tasks in the project's params.yaml: forecast and sentiment (champion v1 each), reload (a forecast
task with v1 champion and v2 registered, for the hot-reload test) and orphan (nothing registered).
The servers start together, in parallel, once per session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.support.registered_models import register_forecast, register_sentiment, set_champion, store_uri
from tests.support.servers import GatewayProcess

POLL_S = 0.5


@pytest.fixture(scope="session")
def serving_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    forecast = params["tasks"]["forecast"]
    params["tasks"] = {"forecast": forecast, "sentiment": params["tasks"]["sentiment"],
                       "reload": forecast, "orphan": forecast}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("seqops-forecast", "seqops-reload"):
        register_forecast(root, name, seed=0)
        register_forecast(root, name, seed=1)
        set_champion(root, name, "1")
    register_sentiment(root, "seqops-sentiment", seed=0)
    set_champion(root, "seqops-sentiment", "1")
    return root


@pytest.fixture(scope="session")
def servers(serving_project: Path):
    root, uri = serving_project, store_uri(serving_project)
    started = {
        "forecast": GatewayProcess("forecast", root, uri),
        "sentiment": GatewayProcess("sentiment", root, uri),
        "reload": GatewayProcess("reload", root, uri, workers=2, overrides=(f"serving.poll_interval_s={POLL_S}",)),
    }
    try:
        for server in started.values():
            server.launch()
        yield started
    finally:
        for server in started.values():
            server.stop()
        shutil.rmtree(root / ".seqops", ignore_errors=True)


def _ready(servers: dict, task: str) -> GatewayProcess:
    return servers[task].wait_ready()


@pytest.fixture(scope="session")
def forecast_server(servers) -> GatewayProcess:
    return _ready(servers, "forecast")


@pytest.fixture(scope="session")
def sentiment_server(servers) -> GatewayProcess:
    return _ready(servers, "sentiment")


@pytest.fixture(scope="session")
def reload_server(servers) -> GatewayProcess:
    return _ready(servers, "reload")


@pytest.fixture(scope="session")
def http() -> httpx.Client:
    with httpx.Client(timeout=60) as client:
        yield client


GOOD_FORECAST = {"dataframe_records": [{"series_id": "mlo", "history": [330.0 + 0.05 * i for i in range(60)]}],
                 "params": {"horizon": 4}}
GOOD_SENTIMENT = {"dataframe_records": [{"text": "what a lovely flight"}, {"text": "my bag is lost"}]}
