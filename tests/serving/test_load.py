"""Load and hot reload on loopback, bounded: 8 keep-alive clients for LOAD_S seconds (the benchmark,
bench/serving.py, runs longer), and a promotion in the middle of a load on a 2-worker server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.serving.conftest import GOOD_FORECAST
from tests.support.loadgen import run_load
from tests.support.registered_models import set_champion

CLIENTS, LOAD_S = 8, 20.0
RELOAD_LOAD_S, PROMOTE_AT_S, RELOADED_BY_S = 15.0, 2.0, 12.0  # both workers on v2 by 12 s


@pytest.mark.slow
def test_8_clients_get_no_errors_and_p50_p99_are_reported(forecast_server, capsys) -> None:
    result = run_load(f"{forecast_server.url}/invocations", GOOD_FORECAST, CLIENTS, LOAD_S, warmup=1.0)
    summary = result.summary()
    with capsys.disabled():
        print(f"\nload: {CLIENTS} clients x {LOAD_S:.0f} s: {summary['requests']} requests, "
              f"{summary['throughput_rps']} req/s, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, "
              f"errors {summary['errors']}")
    assert summary["errors"] == 0, (result.failures[:3], [s.body[:300] for s in result.errors[:3]])
    assert summary["requests"] >= CLIENTS * LOAD_S  # at least one request a second per client
    assert summary["p50_ms"] is not None and summary["p99_ms"] >= summary["p50_ms"]


@pytest.fixture
def back_to_version_1(reload_server, serving_project, http) -> Iterator[None]:
    """Put seqops-reload's champion back to v1 after the test, and wait until both workers serve it: the
    serving fixtures are shared with test_batching.py, which starts from v1 too (under xdist either may
    run first)."""
    yield
    set_champion(serving_project, "seqops-reload", "1")
    deadline, in_a_row = time.monotonic() + 60, 0
    while in_a_row < 10:  # /version is answered by either worker
        assert time.monotonic() < deadline, "the reload server did not return to v1"
        in_a_row = in_a_row + 1 if http.get(f"{reload_server.url}/version").json()["version"] == "1" else 0
        time.sleep(0.2)


@pytest.mark.slow
def test_promoting_a_new_champion_under_load_fails_no_request(reload_server, serving_project, http,
                                                                back_to_version_1) -> None:
    assert http.get(f"{reload_server.url}/version").json()["version"] == "1"
    promote = threading.Timer(PROMOTE_AT_S, set_champion, args=(serving_project, "seqops-reload", "2"))
    promote.start()
    result = run_load(f"{reload_server.url}/invocations", GOOD_FORECAST, CLIENTS, RELOAD_LOAD_S)
    promote.join()

    assert not result.errors and not result.failures, (result.failures[:3], [s.body[:300] for s in result.errors[:3]])
    samples = sorted(result.samples, key=lambda s: s.start)
    assert samples[0].version == "1"
    switched = [s for s in samples if s.start > RELOADED_BY_S]  # polls every POLL_S, then a load of ~1-3 s
    assert switched and all(s.version == "2" for s in switched)
    assert max(s.start for s in samples if s.version == "1") < RELOADED_BY_S
    response = http.post(f"{reload_server.url}/invocations", json=GOOD_FORECAST)
    assert response.json()["predictions"][0]["model_version"] == "2" and response.headers["x-model-version"] == "2"
    metrics = http.get(f"{reload_server.url}/metrics").text  # summed over both workers
    served = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith('seqops_http_requests_total{method="POST",route="/invocations",status="200"'))
    assert served >= len(samples)
