"""The bad-input corpus against real `seqops serve` processes: every bad request gets a 4xx whose
message names the problem, and the server stays healthy and keeps answering good requests."""

from __future__ import annotations

import json
from typing import Iterator

import httpx
import pytest

from tests.serving.conftest import GOOD_FORECAST, GOOD_SENTIMENT
from tests.serving.corpus import CSV, JSON, PARQUET, Case, forecast_cases, parquet, sentiment_cases


def _send(http: httpx.Client, url: str, case: Case) -> httpx.Response:
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    if case.chunked:
        def chunks() -> Iterator[bytes]:
            for start in range(0, len(case.body), 1 << 20):
                yield case.body[start:start + (1 << 20)]
        return http.post(f"{url}/invocations", content=chunks(), headers=headers)
    return http.post(f"{url}/invocations", content=case.body, headers=headers)


# the error_code of a refusal that is about the request's form, whatever the model (a 400's depends on who refused)
CODES = {413: "REQUEST_LIMIT_EXCEEDED", 415: "UNSUPPORTED_MEDIA_TYPE"}


def _check(response: httpx.Response, case: Case) -> None:
    assert response.status_code == case.status, f"{case.id}: {response.status_code} {response.text[:500]}"
    assert set(response.json()) == {"error_code", "message"}, f"{case.id}: not our shape: {response.text[:500]}"
    message = response.json()["message"]
    assert case.message in message, f"{case.id}: {message[:500]}"
    if case.status in CODES:
        assert response.json()["error_code"] == CODES[case.status], f"{case.id}: {response.text[:500]}"
    assert response.headers["x-model-version"] == "1"


def test_the_corpus_has_at_least_30_payloads_per_task() -> None:
    assert len(forecast_cases()) >= 30 and len(sentiment_cases()) >= 30


@pytest.mark.parametrize("case", forecast_cases(), ids=lambda c: c.id)
def test_bad_forecast_request_gets_a_4xx_naming_the_problem(forecast_server, http, case: Case) -> None:
    _check(_send(http, forecast_server.url, case), case)


@pytest.mark.parametrize("case", sentiment_cases(), ids=lambda c: c.id)
def test_bad_sentiment_request_gets_a_4xx_naming_the_problem(sentiment_server, http, case: Case) -> None:
    _check(_send(http, sentiment_server.url, case), case)


def test_wrong_method_gets_405(forecast_server, http) -> None:
    response = http.get(f"{forecast_server.url}/invocations")
    assert response.status_code == 405 and "use POST" in response.json()["message"]
    assert response.json()["error_code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("task, body", [("forecast", GOOD_FORECAST), ("sentiment", GOOD_SENTIMENT)])
def test_servers_are_healthy_after_the_corpus(servers, http, task: str, body: dict) -> None:
    url = servers[task].wait_ready().url
    assert http.get(f"{url}/health").json()["status"] == "ok"
    response = http.post(f"{url}/invocations", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == len(body["dataframe_records"])
    metrics = http.get(f"{url}/metrics").text
    assert 'status="500"' not in metrics


@pytest.mark.parametrize("body, where", [(b'text\ngreat\n""\nfine\n', "line 3 (record 1)"),
                                         (b'text\r\ngreat\r\n\r\nfine\r\n""\r\n', "line 5 (record 2)")],
                         ids=["quoted-empty-cell", "after-a-blank-line"])
def test_a_csv_empty_cell_gets_our_error_shape_naming_its_line_and_column(sentiment_server, http, body: bytes,
                                                                           where: str) -> None:
    response = http.post(f"{sentiment_server.url}/invocations", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 400, response.text
    assert response.json() == {"error_code": "BAD_REQUEST", "message": f"text/csv {where}: column 'text' is empty; "
                                                                          "every record needs a value there"}


def _records(*texts: object) -> bytes:
    return json.dumps({"dataframe_records": [{"text": t} for t in texts]}).encode()


@pytest.mark.parametrize("table, mime, same", [
    (b'text\ngreat\n" "\n', CSV, _records("great", " ")),
    (b"text\n\xe2\x80\x8b\n", CSV, _records("\u200b")),
    (b"text\r\ngreat\r\n" + b"a" * 1001 + b"\r\n", CSV, _records("great", "a" * 1001)),
    (b"text\n" + b"great\n" * 101, CSV, _records(*["great"] * 101)),
    (parquet(text=["great", "  "]), PARQUET, _records("great", "  ")),
    (parquet(text=["great", None]), PARQUET, _records("great", None)),
    (parquet(text=[7]), PARQUET, _records(7)),
    (parquet(text=["a" * 1001]), PARQUET, _records("a" * 1001)),
], ids=["csv-blank", "csv-invisible", "csv-too-long", "csv-too-many", "parquet-blank", "parquet-null",
        "parquet-number", "parquet-too-long"])
def test_a_table_body_is_refused_exactly_as_the_same_records_in_json(sentiment_server, http, table: bytes, mime: str,
                                                                     same: bytes) -> None:
    url = f"{sentiment_server.url}/invocations"
    ours, theirs = (http.post(url, content=body, headers={"Content-Type": kind})
                    for body, kind in ((table, mime), (same, JSON)))
    assert theirs.status_code == 400, theirs.text
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
