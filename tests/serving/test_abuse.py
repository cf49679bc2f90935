"""Limits that hold under abuse, over HTTP against a real `seqops serve` with small limits: caps on records
and cost, huge integer literals, routes outside the API, slow headers and bodies, too many connections, a
full queue; while one client abuses the server, a small request from another still gets its answer fast."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.serving.conftest import GOOD_FORECAST
from tests.support.loadgen import run_load
from tests.support.registered_models import store_uri
from tests.support.servers import GatewayProcess

READ_S, QUEUE, CONNECTIONS, MAX_RECORDS, MAX_STEPS = 1.0, 6, 24, 200, 150_000
LIMITS = (f"serving.read_timeout_s={READ_S}", f"serving.max_queue={QUEUE}", f"serving.max_records={MAX_RECORDS}",
          f"serving.max_request_steps={MAX_STEPS}", f"serving.max_connections={CONNECTIONS}")


@pytest.fixture(scope="module")
def guarded(serving_project):
    with GatewayProcess("forecast", serving_project, store_uri(serving_project), overrides=LIMITS) as server:
        yield server


def _records(count: int, length: int) -> dict:
    return {"dataframe_records": [{"history": [330.0 + (i % 7) for i in range(length)]} for _ in range(count)],
            "params": {"horizon": 4}}


def _connect(server: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_all(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic()


def test_too_many_records_and_too_costly_requests_get_a_400_naming_the_limit(guarded, http) -> None:
    records = http.post(f"{guarded.url}/invocations", json=_records(MAX_RECORDS + 1, 60))
    costly = http.post(f"{guarded.url}/invocations", json=_records(100, MAX_STEPS // 100))
    assert records.status_code == 400 and "serving.max_records" in records.json()["message"]
    assert costly.status_code == 400 and "serving.max_request_steps" in costly.json()["message"]
    assert http.post(f"{guarded.url}/invocations", json=GOOD_FORECAST).status_code == 200


@pytest.mark.parametrize("where", ["history", "horizon"])
def test_an_integer_of_thousands_of_digits_gets_a_400_not_a_500(guarded, http, where: str) -> None:
    huge = "9" * 5000
    history = ", ".join(["330.0"] * 59 + [huge if where == "history" else "331.0"])
    horizon = huge if where == "horizon" else "4"
    body = f'{{"dataframe_records": [{{"history": [{history}]}}], "params": {{"horizon": {horizon}}}}}'
    response = http.post(f"{guarded.url}/invocations", content=body.encode(),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert where in response.json()["message"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/invocations/extra"])
def test_paths_outside_the_gateway_routes_get_a_404(guarded, http, path: str) -> None:
    response = http.get(f"{guarded.url}{path}")
    assert response.status_code == 404 and "swagger" not in response.text.lower()


def test_slow_headers_and_slow_bodies_are_cut_while_a_small_request_answers(guarded, http) -> None:
    normal = run_load(f"{guarded.url}/invocations", GOOD_FORECAST, 1, 2.0, warmup=0.3).summary()
    heads, body = _connect(guarded), _connect(guarded)
    opened = time.monotonic()
    heads.sendall(b"POST /invocations HTTP/1.1\r\n")
    body.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 5000\r\n\r\n{")
    answers: dict[str, tuple[bytes, float]] = {}
    readers = [threading.Thread(target=lambda k=k, s=s: answers.__setitem__(k, _read_all(s)))
               for k, s in (("headers", heads), ("body", body))]
    for reader in readers:
        reader.start()
    held_out = []
    for _ in range(int(3 * READ_S / 0.25)):  # a byte every 0.25 s on each, and a small request beside them
        for sock in (heads, body):
            try:
                sock.sendall(b"x")
            except OSError:
                pass
        started = time.perf_counter()
        assert http.post(f"{guarded.url}/invocations", json=GOOD_FORECAST).status_code == 200
        held_out.append((time.perf_counter() - started) * 1e3)
        time.sleep(0.25)
    for reader in readers:
        reader.join(10)
    for name, (data, closed) in answers.items():
        assert data.startswith(b"HTTP/1.1 408"), (name, data[:200])
        assert closed - opened < READ_S + 1.5, (name, closed - opened)
    assert sorted(held_out)[len(held_out) // 2] < 3 * max(normal["p99_ms"], 5.0), (held_out, normal)


def test_idle_connections_past_the_cap_get_503_until_the_header_deadline_closes_them(guarded, http) -> None:
    idle = [_connect(guarded) for _ in range(CONNECTIONS + 2)]
    try:
        time.sleep(0.2)
        with httpx.Client(timeout=10) as fresh:
            refused = fresh.post(f"{guarded.url}/invocations", json=GOOD_FORECAST)
        assert refused.status_code == 503
        time.sleep(READ_S + 1.0)  # the header deadline closes every idle connection
        with httpx.Client(timeout=10) as fresh:
            assert fresh.post(f"{guarded.url}/invocations", json=GOOD_FORECAST).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_full_queue_answers_503_with_retry_after(guarded, http) -> None:
    waiting = []
    for _ in range(QUEUE):  # each holds a place in the queue while its body dribbles in
        sock = _connect(guarded)
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        waiting.append(sock)
    try:
        time.sleep(0.2)
        refused = http.post(f"{guarded.url}/invocations", json=GOOD_FORECAST)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        time.sleep(READ_S + 0.5)  # their bodies time out (408): the queue is free again
        assert http.post(f"{guarded.url}/invocations", json=GOOD_FORECAST).status_code == 200
    finally:
        for sock in waiting:
            sock.close()


def test_a_request_at_the_caps_does_not_starve_a_small_one(guarded, http) -> None:
    heavy = _records(MAX_RECORDS // 2, MAX_STEPS // (MAX_RECORDS // 2) - 4)
    normal = run_load(f"{guarded.url}/invocations", GOOD_FORECAST, 1, 2.0, warmup=0.3).summary()
    results = []
    worker = threading.Thread(target=lambda: results.append(http.post(f"{guarded.url}/invocations", json=heavy)))
    worker.start()
    beside = run_load(f"{guarded.url}/invocations", GOOD_FORECAST, 1, 1.0).summary()
    worker.join(30)
    assert results and results[0].status_code == 200, results and results[0].text[:300]
    assert beside["errors"] == 0 and beside["p50_ms"] < 3 * max(normal["p99_ms"], 5.0), (beside, normal)
