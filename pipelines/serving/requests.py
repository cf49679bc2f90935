"""POST /invocations without MLflow's per-request overhead: decode, check, predict, serialize.

MLflow's scoring server spends most of a small model's request in generic machinery (schema
enforcement, a DataFrame repr for its error message, json with a NumpyEncoder). Our pyfuncs
validate every field they read themselves (pipelines/serving/pyfunc.py), so this path parses MLflow's
JSON formats (dataframe_records, dataframe_split, instances, inputs; optional params) with
orjson, refuses what MLflow would silently drop (unknown top-level keys, unknown columns,
unknown params), calls the pyfunc's own predict and writes the response with orjson. CSV and
Parquet bodies are read here too, into the records a JSON body would give, so the same checks
refuse them with the same messages. Every refusal is an InputError (400) whose message names the
key, record or field.
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
NUMERIC = (DataType.integer, DataType.long, DataType.float, DataType.double)

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
    numbers: tuple[str, ...] = ()  # numeric columns: a CSV cell there is read as a number

    @classmethod
    def from_metadata(cls, metadata: Any) -> "ModelInputs":
        schema = metadata.get_input_schema()
        params = metadata.get_params_schema()
        specs = [s for s in (schema.inputs if schema is not None else []) if s.name is not None]
        return cls(tuple(s.name for s in specs), tuple(s.name for s in specs if s.required),
                   tuple(p.name for p in params.params) if params is not None else (),
                   tuple(s.name for s in specs if not isinstance(s.type, DataType)),
                   tuple(s.name for s in specs if s.type in NUMERIC))

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
    try:  # decoded here: given bytes, json.loads guesses UTF-16 or UTF-32 from the first bytes and accepts them
        return json.loads(body.decode("utf-8"), parse_int=_integer)
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
        example = f"{{\"{inputs.params[0]}\": ...}}" if inputs.params else "{} (this model takes no params)"
        raise InputError(f"params must be a JSON object such as {example}, got {_kind(params)}")
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


def _table_records(mime: str, columns: list[str], records: list[dict[str, Any]], inputs: ModelInputs) -> pd.DataFrame:
    """The records of a CSV or Parquet body as the JSON path builds them, after the header's own rules."""
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise InputError(f"the {mime} header names column {name!r} twice")
        seen.add(name)
    _check_fields(f"{mime} header", columns, inputs)
    if not records:
        raise InputError(f"the {mime} body has no records (columns but no rows): send at least one record")
    return pd.DataFrame(records, columns=columns, dtype=object)


def read_csv(body: bytes, inputs: ModelInputs) -> pd.DataFrame:
    """A CSV body -> the records JSON would give, every cell a string as sent: pandas' defaults (which MLflow's app
    used) read `NA`, `null`, `None` or `nan` as missing, so such a text was refused as absent, and every other
    refusal came back in MLflow's shape with the whole table in it. Only an empty cell is empty: in a required column
    it is refused naming its line; in an optional one the field is left out, as a JSON record would. Blank lines are
    skipped (as pandas does) and do not count as records."""
    if inputs.lists:
        raise InputError(f"{CSV} cannot carry the list field(s) {', '.join(inputs.lists)}: send {JSON}", 415,
                         UNSUPPORTED_MEDIA_TYPE)
    if not body.strip():
        raise InputError(f"the request body is empty: send a {CSV} table whose first line names the columns")
    try:
        text = body.decode("utf-8-sig")  # a leading byte order mark (Excel's "CSV UTF-8") is not part of the header
    except UnicodeDecodeError:
        raise InputError(f"the request body is not UTF-8 encoded {CSV}") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[dict[str, Any]] = []
    try:
        header = next(reader)
        for row in reader:
            if row:
                records.append(_csv_record(header, row, f"{CSV} line {reader.line_num} (record {len(records)})",
                                           inputs))
    except csv.Error as e:
        raise InputError(f"the request body is not valid {CSV}: {e} (line {reader.line_num})") from None
    return _table_records(CSV, header, records, inputs)


def _csv_record(header: list[str], row: list[str], where: str, inputs: ModelInputs) -> dict[str, Any]:
    if len(row) != len(header):
        raise InputError(f"{where}: {len(row)} values for the header's {len(header)} columns; each row needs one "
                         "value per column")
    record: dict[str, Any] = {}
    for name, cell in zip(header, row):
        if not cell and name in inputs.required:
            raise InputError(f"{where}: column {name!r} is empty; every record needs a value there")
        if cell:
            record[name] = _number(cell, name, where) if name in inputs.numbers else cell
    return record


def _number(cell: str, name: str, where: str) -> int | float:
    """A cell of a numeric column as the number JSON would carry (an integer, else a float); Python's digit
    grouping (`1_000`), which JSON has no spelling for, is refused with the other non-numbers."""
    try:
        if "_" in cell:
            raise ValueError(cell)
        return int(cell) if cell.strip().lstrip("+-").isdigit() and len(cell) <= 18 else float(cell)
    except ValueError:
        raise InputError(f"{where}: column {name!r} must be a number, got {cell[:40]!r}") from None


def read_parquet(body: bytes, inputs: ModelInputs) -> pd.DataFrame:
    """A Parquet body -> the records JSON would give (a null is JSON's null, a list a list), so refusals come from
    the same checks, in our shape; MLflow's app answered them with the whole table in its own shape."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not body:
        raise InputError(f"the request body is empty: send a {PARQUET} file")
    try:
        table = pq.read_table(pa.BufferReader(body))
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"the request body is not a readable {PARQUET} file: {e}") from None
    index = (table.schema.pandas_metadata or {}).get("index_columns", [])  # a DataFrame's index, stored as a column
    table = table.drop_columns([n for n in index if isinstance(n, str)])
    return _table_records(PARQUET, table.column_names, table.to_pylist(), inputs)


def decode(mime: str, body: bytes, inputs: ModelInputs) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """A request body of any accepted type -> (model input, params); only JSON carries params."""
    if mime == CSV:
        return read_csv(body, inputs), None
    if mime == PARQUET:
        return read_parquet(body, inputs), None
    return to_frame(decode_json(body), inputs)


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


def prepare(scorer: Any, inputs: ModelInputs, body: bytes, max_records: int, max_steps: int, mime: str = JSON) -> Any:
    """Decode and validate one request whole for a model that scores prepared requests together
    (pipelines/serving/batching.py): its Prepared, or an InputError (400) naming the field or the limit."""
    frame, params = decode(mime, body, inputs)
    check_records(len(frame), max_records)
    try:
        prepared = scorer.prepare(frame, params)
    except MlflowException as e:
        raise InputError(e.message, e.get_http_status_code(), e.error_code) from None
    check_steps(prepared.steps, prepared.records, max_steps)
    return prepared


def invoke(predict: Predict, inputs: ModelInputs, body: bytes, max_records: int | None = None,
           mime: str = JSON) -> tuple[int, bytes]:
    """One request, end to end: (HTTP status, response body). Never raises."""
    try:
        frame, params = decode(mime, body, inputs)
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
