"""POST /invocations without MLflow's per-request overhead: decode, check, predict, serialize.

MLflow's scoring server spends most of a small model's request in generic machinery (schema
enforcement, a DataFrame repr for its error message, json with a NumpyEncoder). Our pyfuncs
validate every field they read themselves (pipelines/serving/pyfunc.py), so this path parses MLflow's
JSON formats (dataframe_records, dataframe_split, instances, inputs; optional params) with
orjson, refuses what MLflow would silently drop (unknown top-level keys, unknown columns,
unknown params), calls the pyfunc's own predict and writes the response with orjson. Every
refusal is an InputError (400) whose message names the key, record or field.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.types import DataType
from mlflow.utils.proto_json_utils import NumpyEncoder

from pipelines.errors import SeqopsError

FORMATS = ("dataframe_records", "dataframe_split", "instances", "inputs")
FORMAT_LIST = ", ".join(FORMATS)
JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"  # the error_code of every 415: a body's type, not its content

log = logging.getLogger("seqops.gateway")


class InputError(SeqopsError, ValueError):
    """A request the model cannot score: answered with this status and message."""

    def __init__(self, message: str, status: int = 400, error_code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.message, self.status, self.error_code = message, status, error_code


@dataclass(frozen=True)
class ModelInputs:
    """What a model reads, from its signature: column names (required ones) and param names."""

    columns: tuple[str, ...]
    required: tuple[str, ...]
    params: tuple[str, ...]
    lists: tuple[str, ...] = ()  # columns whose values are lists (CSV cannot carry them)

    @classmethod
    def from_metadata(cls, metadata: Any) -> "ModelInputs":
        schema = metadata.get_input_schema()
        params = metadata.get_params_schema()
        specs = [s for s in (schema.inputs if schema is not None else []) if s.name is not None]
        return cls(tuple(s.name for s in specs), tuple(s.name for s in specs if s.required),
                   tuple(p.name for p in params.params) if params is not None else (),
                   tuple(s.name for s in specs if not isinstance(s.type, DataType)))

    def describe(self) -> str:
        return ", ".join(c if c in self.required else f"{c} (optional)" for c in self.columns)


def error_body(message: str, error_code: str = "BAD_REQUEST") -> bytes:
    """MLflow's error shape: {"error_code": ..., "message": ...}."""
    return orjson.dumps({"error_code": error_code, "message": message})


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def decode_json(body: bytes) -> Any:
    """Parse a JSON body; NaN/Infinity literals are accepted here so the model can name the field."""
    if not body.strip():
        raise InputError(f"the request body is empty: send a JSON object with one of {FORMAT_LIST}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # orjson refuses NaN/Infinity and integers over 64 bits; the standard parser takes them
    try:
        return json.loads(body, parse_int=_integer)
    except UnicodeDecodeError:
        raise InputError("the request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as e:
        raise InputError(f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise InputError("the request body is not acceptable JSON: it is nested too deeply") from None
    except ValueError as e:  # anything else the parser refuses is still the body's fault, never a 500
        raise InputError(f"the request body is not acceptable JSON: {e}") from None


def _integer(text: str) -> int | float:
    """An integer literal past 64 bits as the float JSON says it is: Python's int() refuses literals over 4,300
    digits (a 500 before this) and numpy cannot hold one anyway; the model then names the field (an infinite
    history value, a horizon out of range)."""
    return int(text) if len(text) <= 18 else float(text)


def _check_fields(where: str, names: Any, inputs: ModelInputs) -> None:
    if not inputs.columns:  # a model without named input columns: nothing to check against
        return
    for name in names:
        if name not in inputs.columns:
            raise InputError(f"{where}: unknown field {name!r}; this model reads {inputs.describe()} "
                             "(unknown fields are refused, not ignored)")


def _records(key: str, rows: Any, inputs: ModelInputs) -> pd.DataFrame:
    if not isinstance(rows, list):
        raise InputError(f"{key} must be a list of records (JSON objects), got {_kind(rows)}")
    if not rows:
        raise InputError(f"{key} is empty: send at least one record")
    allowed = set(inputs.columns)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{key}[{index}] must be a JSON object of fields ({inputs.describe()}), got {_kind(row)}")
        if allowed and not allowed.issuperset(row):
            _check_fields(f"{key}[{index}]", row, inputs)
    return pd.DataFrame(rows, dtype=object)  # object: plain Python values, as parsed


def _split(rows: Any, inputs: ModelInputs) -> pd.DataFrame:
    key = "dataframe_split"
    if not isinstance(rows, dict) or "columns" not in rows or "data" not in rows:
        raise InputError(f"{key} must be an object with 'columns' (a list of names) and 'data' (a list of rows)")
    extra = sorted(set(rows) - {"columns", "data", "index"})
    if extra:
        raise InputError(f"{key}: unknown key {extra[0]!r}; it has 'columns', 'data' and optionally 'index'")
    columns, data = rows["columns"], rows["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InputError(f"{key}.columns must be a list of column names (strings)")
    if len(set(columns)) != len(columns):
        raise InputError(f"{key}.columns names a column twice: {columns}")
    _check_fields(f"{key}.columns", columns, inputs)
    if not isinstance(data, list) or not data:
        raise InputError(f"{key}.data must be a non-empty list of rows")
    for index, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            got = f"{len(row)} values" if isinstance(row, list) else _kind(row)
            raise InputError(f"{key}.data[{index}] must be a list of {len(columns)} values (one per column), got {got}")
    return pd.DataFrame([dict(zip(columns, row)) for row in data], dtype=object)


def _columnar(key: str, table: dict, inputs: ModelInputs) -> pd.DataFrame:
    _check_fields(key, table, inputs)
    lengths = {name: len(v) if isinstance(v, list) else None for name, v in table.items()}
    for name, length in lengths.items():
        if length is None:
            raise InputError(f"{key}.{name} must be a list with one value per record, got {_kind(table[name])}")
    if len(set(lengths.values())) > 1:
        raise InputError(f"{key}: columns have different lengths {lengths}; each needs one value per record")
    if not table or not next(iter(lengths.values())):
        raise InputError(f"{key} is empty: send at least one record")
    return pd.DataFrame(table, dtype=object)


def _params(params: Any, inputs: ModelInputs) -> dict[str, Any] | None:
    if params is None:
        return None
    if not isinstance(params, dict):
        raise InputError(f"params must be a JSON object such as {{\"horizon\": 12}}, got {_kind(params)}")
    for name in params:
        if name not in inputs.params:
            takes = f"takes {', '.join(inputs.params)}" if inputs.params else "takes no params"
            raise InputError(f"unknown param {name!r}: this model {takes}")
    return params


def to_frame(document: Any, inputs: ModelInputs) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """A decoded request -> (model input, params), or an InputError naming what is wrong."""
    if not isinstance(document, dict):
        raise InputError(f"the request must be a JSON object with one of {FORMAT_LIST}, got {_kind(document)}")
    for key in document:
        if key not in FORMATS and key != "params":
            raise InputError(f"unknown top-level key {key!r}: a request has exactly one of {FORMAT_LIST}, "
                             "and optionally params")
    present = [k for k in FORMATS if k in document]
    if len(present) != 1:
        raise InputError(f"the request needs exactly one of {FORMAT_LIST}; it has {present or 'none'}")
    key, payload = present[0], document[present[0]]
    if key == "dataframe_split":
        frame = _split(payload, inputs)
    elif isinstance(payload, dict) and key != "dataframe_records":
        frame = _columnar(key, payload, inputs)
    else:
        frame = _records(key, payload, inputs)
    return frame, _params(document.get("params"), inputs)


def table_columns(mime: str, body: bytes) -> list[str] | None:
    """Column names of a CSV or Parquet body (None when it cannot be read; MLflow then answers)."""
    try:
        if mime == CSV:
            header = body.split(b"\n", 1)[0].decode("utf-8")
            return next(csv.reader([header]), [])
        import pyarrow.parquet as pq

        names = pq.read_schema(io.BytesIO(body)).names
        return [n for n in names if not n.startswith("__index_level_")]
    except Exception:
        return None


def check_table(mime: str, body: bytes, inputs: ModelInputs) -> None:
    """The unknown-column rule for CSV and Parquet bodies, which MLflow's own parser then reads."""
    if mime == CSV and inputs.lists:
        raise InputError(f"{CSV} cannot carry the list field(s) {', '.join(inputs.lists)}: send {JSON}", 415,
                         UNSUPPORTED_MEDIA_TYPE)
    columns = table_columns(mime, body)
    if columns is not None:
        _check_fields(f"{mime} header", columns, inputs)
    if mime == CSV and inputs.required:
        _check_cells(body, inputs)


def _check_cells(body: bytes, inputs: ModelInputs) -> None:
    """An empty cell in a required column of a CSV body, refused here naming its line and column: pandas reads it as
    missing and MLflow's app answered the model's refusal in its own shape, with the whole table's repr."""
    try:
        reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
        header = next(reader, [])
        required = [(i, name) for i, name in enumerate(header) if name in inputs.required]
        record = 0
        for row in reader:
            if not row:  # a blank line, which pandas skips
                continue
            for i, name in required:
                if i >= len(row) or not row[i]:
                    raise InputError(f"{CSV} line {reader.line_num} (record {record}): column {name!r} is empty; "
                                     "every record needs a value there")
            record += 1
    except (UnicodeDecodeError, csv.Error):  # not a table we can read: MLflow's parser answers
        return


def _jsonable(predictions: Any) -> Any:
    if isinstance(predictions, pd.DataFrame):  # records, as MLflow writes them; to_dict is ~5x slower
        columns = [str(c) for c in predictions.columns]
        values = [predictions[c].tolist() for c in predictions.columns]
        return [dict(zip(columns, row)) for row in zip(*values)]
    if isinstance(predictions, pd.Series):
        return predictions.tolist()
    return predictions


def serialize(predictions: Any) -> bytes:
    content = {"predictions": _jsonable(predictions)}
    try:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(content, cls=NumpyEncoder).encode()


Predict = Callable[[pd.DataFrame, "dict[str, Any] | None"], Any]


def check_records(records: int, limit: int) -> None:
    """A 400 naming serving.max_records when one request carries more records than that."""
    if records > limit:
        raise InputError(f"the request has {records} records; at most {limit} are accepted in one request "
                         "(serving.max_records): split it")


def check_steps(steps: int, records: int, limit: int) -> None:
    """A 400 naming serving.max_request_steps when scoring the request would cost more recurrent steps than that."""
    if steps > limit:
        raise InputError(f"the request costs {steps} recurrent steps over its {records} records (history + horizon "
                         f"each, the horizon once per sample path for a quantile model); at most {limit} are accepted (serving.max_request_steps): send fewer records, "
                         "shorter histories or a shorter horizon")


def prepare(scorer: Any, inputs: ModelInputs, body: bytes, max_records: int, max_steps: int) -> Any:
    """Decode and validate one JSON request whole for a model that scores prepared requests together
    (pipelines/serving/batching.py): its Prepared, or an InputError (400) naming the field or the limit."""
    frame, params = to_frame(decode_json(body), inputs)
    check_records(len(frame), max_records)
    try:
        prepared = scorer.prepare(frame, params)
    except MlflowException as e:
        raise InputError(e.message, e.get_http_status_code(), e.error_code) from None
    check_steps(prepared.steps, prepared.records, max_steps)
    return prepared


def invoke(predict: Predict, inputs: ModelInputs, body: bytes, max_records: int | None = None) -> tuple[int, bytes]:
    """One JSON request, end to end: (HTTP status, response body). Never raises."""
    try:
        frame, params = to_frame(decode_json(body), inputs)
        if max_records is not None:
            check_records(len(frame), max_records)
        return 200, serialize(predict(frame, params))
    except InputError as e:
        return e.status, error_body(e.message, e.error_code)
    except MlflowException as e:
        return e.get_http_status_code(), error_body(e.message, e.error_code)
    except Exception as e:  # a model bug, not a bad request: say so, and keep the traceback in the log
        log.exception("the model failed on a request")
        message = f"the model failed on this input ({type(e).__name__}: {e}); the server log has the traceback"
        return 500, error_body(message, "INTERNAL_ERROR")
