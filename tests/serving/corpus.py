"""Bad requests for each task: every one must get a 4xx whose message names the problem.

A case is (id, body, content type, expected status, a phrase the message must contain). The
limits are those of tests.support.registered_models (forecast: history 53..5000 values, horizon 1..104; sentiment:
texts up to 1000 characters, 100 records) and params.yaml's serving.max_body_bytes (2 MiB).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
NO_TYPE = None  # the header is left out
TEN_MB = 10 * 1024 * 1024
HISTORY = [330.0 + 0.05 * i for i in range(60)]


@dataclass(frozen=True)
class Case:
    id: str
    body: bytes
    content_type: str | None
    status: int
    message: str
    chunked: bool = False  # sent without Content-Length


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _records(*records: dict, params: dict | None = None) -> bytes:
    body: dict[str, Any] = {"dataframe_records": list(records)}
    if params is not None:
        body["params"] = params
    return _json(body)


def parquet(**columns: list) -> bytes:
    """A Parquet body with these columns (a list of values each; an empty one is a column of strings)."""
    out = io.BytesIO()
    pq.write_table(pa.table({name: values or pa.array([], pa.string()) for name, values in columns.items()}), out)
    return out.getvalue()


def _history(raw: str) -> bytes:
    """A forecast request whose history is the raw JSON text given (for NaN, Infinity, 1e999)."""
    return ('{"dataframe_records": [{"history": [' + ", ".join([raw] + ["330.0"] * 59) + "]}]}").encode()


def _horizon(raw: str) -> bytes:
    """A forecast request whose horizon is the raw JSON text given (for integers of hundreds of digits)."""
    return ('{"dataframe_records": [{"history": [' + ", ".join(["330.0"] * 60) + ']}], "params": {"horizon": '
            + raw + "}}").encode()


def envelope_cases(good: dict) -> list[Case]:
    """What is wrong with the request itself, whatever the model."""
    one = _json({"dataframe_records": [good]})
    return [
        Case("malformed-json", b'{"dataframe_records": [', JSON, 400, "not valid JSON"),
        Case("trailing-garbage", one + b" xyz", JSON, 400, "not valid JSON"),
        Case("empty-body", b"", JSON, 400, "body is empty"),
        Case("whitespace-body", b"  \n ", NO_TYPE, 400, "body is empty"),
        Case("json-list", b"[1, 2]", JSON, 400, "must be a JSON object"),
        Case("json-string", b'"dataframe_records"', JSON, 400, "must be a JSON object"),
        Case("json-null", b"null", NO_TYPE, 400, "must be a JSON object"),
        Case("not-utf8", b'{"dataframe_records": [{"x": "\xff\xfe"}]}', JSON, 400, "not UTF-8"),
        # bytes json.loads would take: it guesses UTF-16 from the first bytes, a charset the contract refuses
        Case("utf16-without-charset", one.decode().encode("utf-16"), JSON, 400, "not UTF-8"),
        Case("deeply-nested", b"[" * 5000 + b"]" * 5000, JSON, 400, "nested too deeply"),
        Case("no-input-key", _json({"params": {}}), JSON, 400, "needs exactly one of"),
        Case("two-input-keys", _json({"dataframe_records": [good], "instances": [good]}), JSON, 400,
             "needs exactly one of"),
        Case("unknown-top-level-key", _json({"dataframe_records": [good], "extra": 1}), JSON, 400,
             "unknown top-level key 'extra'"),
        Case("mlflow-1-format", _json({"columns": list(good), "data": [list(good.values())]}), JSON, 400,
             "unknown top-level key 'columns'"),
        Case("records-not-a-list", _json({"dataframe_records": good}), JSON, 400, "must be a list of records"),
        Case("records-empty", _json({"dataframe_records": []}), JSON, 400, "dataframe_records is empty"),
        Case("record-not-an-object", _json({"dataframe_records": [[1, 2]]}), JSON, 400,
             "dataframe_records[0] must be a JSON object"),
        Case("split-missing-data", _json({"dataframe_split": {"columns": list(good)}}), JSON, 400,
             "must be an object with 'columns'"),
        Case("split-ragged-row", _json({"dataframe_split": {"columns": list(good), "data": [[]]}}), JSON, 400,
             f"dataframe_split.data[0] must be a list of {len(good)} values"),
        Case("split-unknown-column", _json({"dataframe_split": {"columns": ["foo"], "data": [[1]]}}), JSON, 400,
             "unknown field 'foo'"),
        Case("params-not-an-object", _json({"dataframe_records": [good], "params": [12]}), JSON, 400,
             "params must be a JSON object"),
        Case("body-10mb", b"{" + b" " * TEN_MB + b"}", JSON, 413, "at most 2097152"),
        Case("body-10mb-chunked", b"{" + b" " * TEN_MB + b"}", JSON, 413, "at most 2097152", chunked=True),
        Case("content-type-text-plain", one, "text/plain", 415, "is not supported"),
        Case("content-type-xml", b"<records><history>1</history></records>", "application/xml", 415,
             "is not supported"),
        Case("content-type-multipart", one, "multipart/form-data; boundary=x", 415, "is not supported"),
        Case("charset-latin-1", one, "application/json; charset=latin-1", 415, "charset 'latin-1'"),
        Case("parquet-garbage", b"PAR1 not really parquet", PARQUET, 400,
             f"the request body is not a readable {PARQUET} file"),
    ]


def forecast_cases() -> list[Case]:
    good = {"series_id": "a", "history": HISTORY}
    h = HISTORY
    cases = [
        Case("missing-history", _records({"series_id": "a"}), JSON, 400, "'history' field"),
        Case("wrong-column-name", _records({"values": h}), JSON, 400, "unknown field 'values'"),
        Case("extra-column", _records({"history": h, "unit": "ppm"}), JSON, 400, "unknown field 'unit'"),
        Case("ragged-records", _records({"history": h}, {"series_id": "b"}), JSON, 400,
             "record 1: field 'history' is required"),
        Case("history-csv-string", _records({"history": "330.1,330.2"}), JSON, 400, "must be a list of numbers"),
        Case("history-digit-string", _records({"history": "3" * 60}), JSON, 400, "must be a list of numbers"),
        Case("history-number", _records({"history": 330.0}), JSON, 400, "must be a list of numbers"),
        Case("history-object", _records({"history": {"a": 1.0}}), JSON, 400, "must be a list of numbers"),
        Case("history-null", _records({"history": None}), JSON, 400, "'history' is required"),
        Case("history-words", _records({"history": ["a"] * 60}), JSON, 400, "must be a list of numbers"),
        Case("history-numeric-strings", _records({"history": ["330.0"] * 60}), JSON, 400, "no strings"),
        Case("history-booleans", _records({"history": [True] * 60}), JSON, 400, "no strings or booleans"),
        Case("history-null-value", _records({"history": h[:30] + [None] + h[31:]}), JSON, 400, "NaN or infinite"),
        Case("history-nan", _history("NaN"), JSON, 400, "NaN or infinite"),
        Case("history-infinity", _history("-Infinity"), JSON, 400, "NaN or infinite"),
        Case("history-overflow", _history("1e999"), JSON, 400, "NaN or infinite"),
        Case("history-nested", _records({"history": [[v, v] for v in h]}), JSON, 400, "flat list"),
        Case("history-ragged", _records({"history": [[1.0], [1.0, 2.0]] + h}), JSON, 400, "list of numbers"),
        Case("history-empty", _records({"history": []}), JSON, 400, "history has 0 values; at least 53"),
        Case("history-too-short", _records({"history": h[:10]}), JSON, 400, "history has 10 values; at least 53"),
        Case("history-too-long", _records({"history": [330.0] * 5001}), JSON, 400,
             "history has 5001 values; at most 5000"),
        Case("horizon-zero", _records(good, params={"horizon": 0}), JSON, 400, "between 1 and 104, got 0"),
        Case("horizon-negative", _records(good, params={"horizon": -3}), JSON, 400, "between 1 and 104, got -3"),
        Case("horizon-huge", _records(good, params={"horizon": 10**12}), JSON, 400, "between 1 and 104"),
        Case("horizon-beyond-int64", _records(good, params={"horizon": 10**30}), JSON, 400, "between 1 and 104"),
        Case("horizon-300-digits", _horizon("9" * 300), JSON, 400, "between 1 and 104, got 1000...160 (301 digits)"),
        Case("horizon-5000-digits", _horizon("9" * 5000), JSON, 400,
             "params.horizon must be between 1 and 104, got a number over the limit, too large to show"),
        Case("horizon-minus-5000-digits", _horizon("-" + "9" * 5000), JSON, 400, "got a number below 1"),
        Case("level-5000-digits", _horizon("12, \"level\": " + "9" * 5000), JSON, 400,
             "params.level values must be strictly between 0 and 100, got a number too large to show"),
        Case("horizon-fraction", _records(good, params={"horizon": 2.5}), JSON, 400, "must be an integer"),
        Case("horizon-string", _records(good, params={"horizon": "12"}), JSON, 400, "must be an integer"),
        Case("horizon-boolean", _records(good, params={"horizon": True}), JSON, 400, "must be an integer"),
        Case("horizon-null", _records(good, params={"horizon": None}), JSON, 400, "must be an integer"),
        Case("unknown-param", _records(good, params={"horizn": 3}), JSON, 400, "unknown param 'horizn'"),
        Case("columnar-ragged", _json({"inputs": {"series_id": ["a", "b"], "history": [h]}}), JSON, 400,
             "different lengths"),
        Case("series-id-list", _records({"series_id": ["a"], "history": h}), JSON, 400,
             "'series_id' must be a string"),
        Case("csv-cannot-carry-history", b"series_id,history\na,330.0\n", CSV, 415,
             "cannot carry the list field(s) history"),
    ]
    return envelope_cases(good) + cases


def sentiment_cases() -> list[Case]:
    good = {"text": "what a lovely flight"}
    cases = [
        Case("missing-text", _records({}), JSON, 400, "record 0: field 'text' is required"),
        Case("wrong-column-name", _records({"review": "great"}), JSON, 400, "unknown field 'review'"),
        Case("extra-column", _records({"text": "great", "label": "positive"}), JSON, 400, "unknown field 'label'"),
        Case("ragged-records", _records(good, {}), JSON, 400, "record 1: field 'text' is required"),
        Case("text-null", _records({"text": None}), JSON, 400, "record 0: field 'text' is required"),
        Case("text-number", _records({"text": 42}), JSON, 400, "'text' must be a string, got int"),
        Case("text-list", _records({"text": ["great"]}), JSON, 400, "'text' must be a string, got list"),
        Case("text-object", _records({"text": {"body": "great"}}), JSON, 400, "'text' must be a string, got dict"),
        Case("text-boolean", _records({"text": True}), JSON, 400, "'text' must be a string, got bool"),
        Case("text-nan", b'{"dataframe_records": [{"text": NaN}]}', JSON, 400, "field 'text' is required"),
        Case("text-infinity", b'{"dataframe_records": [{"text": Infinity}]}', JSON, 400,
             "'text' must be a string, got float"),
        Case("text-empty", _records({"text": ""}), JSON, 400, "record 0: field 'text' is empty"),
        Case("text-whitespace", _records({"text": " \n\t "}), JSON, 400, "field 'text' is empty"),
        Case("text-zero-width-space", _records(good, {"text": "\u200b"}), JSON, 400, "record 1: field 'text' is empty"),
        Case("text-invisible", _records({"text": " \u200b\u200d\ufeff\u2060\u00ad\u202e\n\u3000"}), JSON, 400,
             "record 0: field 'text' is empty"),
        Case("text-too-long", _records({"text": "a" * 1001}), JSON, 400, "1001 characters; at most 1000"),
        Case("text-1mb", _records({"text": "spam " * 200_000}), JSON, 400, "1000000 characters; at most 1000"),
        Case("too-many-records", _records(*[good] * 101), JSON, 400, "101 records in one request; at most 100"),
        Case("params-for-a-model-without-params", _records(good, params={"horizon": 3}), JSON, 400,
             "unknown param 'horizon': this model takes no params"),
        Case("params-a-list-for-a-model-without-params", _records(good, params=[1]), JSON, 400,
             "params must be a JSON object such as {} (this model takes no params), got a list"),
        Case("columnar-scalar", _json({"inputs": {"text": "great"}}), JSON, 400, "inputs.text must be a list"),
        Case("csv-extra-column", b"text,label\ngreat,positive\n", CSV, 400, "unknown field 'label'"),
        Case("csv-wrong-column", b"review\ngreat\n", CSV, 400, "unknown field 'review'"),
        Case("csv-duplicate-column", b"text,text\ngreat,fine\n", CSV, 400, "header names column 'text' twice"),
        Case("csv-empty", b"", CSV, 400, "the request body is empty: send a text/csv table"),
        Case("csv-no-rows", b"text\n", CSV, 400, "the text/csv body has no records (columns but no rows)"),
        Case("csv-whitespace-cell", b'text\ngreat\n"  \t "\n', CSV, 400, "record 1: field 'text' is empty"),
        Case("csv-too-long", b"text\n" + b"a" * 1001 + b"\n", CSV, 400,
             "record 0: field 'text' has 1001 characters; at most 1000"),
        Case("csv-too-many-records", b"text\n" + b"great\n" * 101, CSV, 400,
             "101 records in one request; at most 100"),
        Case("csv-unclosed-quote", b'text\ngreat\n"unclosed\n', CSV, 400,
             "not valid text/csv: unexpected end of data (line 3)"),
        Case("csv-ragged-row", b"text\ngreat,extra\n", CSV, 400,
             "text/csv line 2 (record 0): 2 values for the header's 1 columns"),
        Case("csv-not-utf8", b"text\n\xff\xfe\n", CSV, 400, "not UTF-8 encoded text/csv"),
        Case("parquet-no-rows", parquet(text=[]), PARQUET, 400, f"the {PARQUET} body has no records"),
        Case("parquet-whitespace", parquet(text=["great", " \u200b "]), PARQUET, 400,
             "record 1: field 'text' is empty"),
        Case("parquet-null", parquet(text=["great", None]), PARQUET, 400, "record 1: field 'text' is required"),
        Case("parquet-number", parquet(text=[42]), PARQUET, 400, "record 0: field 'text' must be a string, got int"),
        Case("parquet-too-long", parquet(text=["a" * 1001]), PARQUET, 400, "1001 characters; at most 1000"),
        Case("parquet-extra-column", parquet(text=["great"], label=["positive"]), PARQUET, 400,
             "unknown field 'label'"),
    ]
    return envelope_cases(good) + cases
