"""The params.yaml schema.

Everything tunable lives in params.yaml; this module is the only place that reads it, so a typo
fails on load with the dotted key and the allowed values instead of deep inside a training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.rules import check_dropout, check_tbptt_window
from pipelines.errors import SeqopsError
from pipelines.project import params_path


class ConfigError(SeqopsError, ValueError):
    """params.yaml (or an override) does not match the schema; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]


class Variant(_Strict):
    """One model configuration trained for a task; each is an MLflow child run."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    cell: Literal["rnn", "lstm", "gru"]
    hidden_size: PositiveInt = 32
    num_layers: PositiveInt = 1
    bidirectional: bool = False
    dropout: float = 0.0
    topology: Literal["many_to_many", "many_to_one", "one_to_many", "encoder_decoder"] | None = None
    # TBPTT(k1, k2) for many_to_many: update every k1 steps, backpropagate through the last k2
    # (k2 default: k1). None: one update per window (full BPTT). Other topologies ignore them.
    k1: PositiveInt | None = None
    k2: PositiveInt | None = None
    clip: Annotated[float, Field(gt=0.0)] | None = None
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    embedding_dim: PositiveInt = 64
    teacher_forcing: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5

    @model_validator(mode="after")
    def _model_rules(self) -> "Variant":
        """The rules models/ enforces (models/rules.py), checked here so params.yaml fails on load."""
        check_tbptt_window(self.k1, self.k2)
        check_dropout(self.dropout, self.num_layers)
        return self


def _unique_names(variants: list[Variant]) -> list[Variant]:
    """Variant names key MLflow child runs and train.json entries: two with one name would collide."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    return variants


Variants = Annotated[list[Variant], Field(min_length=1), AfterValidator(_unique_names)]


class SeriesPrepare(_Strict):
    holdout: PositiveInt = 104
    validation: PositiveInt = 104
    window: PositiveInt = 208
    stride: PositiveInt = 26
    season: PositiveInt = 52
    difference: bool = True


class SeriesEvaluate(_Strict):
    horizon: PositiveInt = 26
    origin_stride: PositiveInt = 13


class SeriesServing(_Strict):
    min_history: PositiveInt = 53
    max_history: PositiveInt = 10000
    default_horizon: PositiveInt = 12
    max_horizon: PositiveInt = 520


class TaskTraining(_Strict):
    max_epochs: PositiveInt = 5
    batch_size: PositiveInt = 16


class TimeSeriesTask(_Strict):
    """A forecasting task: a table with a timestamp, numeric value columns and an optional series id."""

    kind: Literal["timeseries"]
    topology: Literal["many_to_many", "encoder_decoder"] = "many_to_many"
    source: str
    timestamp: str = "date"
    target: str
    covariates: list[str] = []
    series_id: str | None = None
    gap_fill: Literal["interpolate", "ffill", "drop"] = "interpolate"
    prepare: SeriesPrepare = SeriesPrepare()
    evaluate: SeriesEvaluate = SeriesEvaluate()
    serving: SeriesServing = SeriesServing()
    training: TaskTraining = TaskTraining()
    variants: Variants

    @model_validator(mode="after")
    def _consistent(self) -> "TimeSeriesTask":
        if self.serving.min_history <= self.prepare.season and self.prepare.difference:
            raise ValueError("serving.min_history must exceed prepare.season when prepare.difference is true")
        return self


class TextPrepare(_Strict):
    validation: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    holdout: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    min_freq: PositiveInt = 2
    max_vocab: PositiveInt = 20000
    max_length: PositiveInt = 48
    seed: int = 13


class TextServing(_Strict):
    max_text_length: PositiveInt = 1000
    # What happens to a text longer than max_text_length characters: a 400 (reject), or scored on its
    # first max_text_length characters (truncate). Tokens past prepare.max_length are always truncated.
    over_length: Literal["reject", "truncate"] = "reject"
    max_records: PositiveInt = 1000


class TextTask(_Strict):
    """A classification task over labelled text: a table with a text column and a label column."""

    kind: Literal["text"]
    topology: Literal["many_to_one"] = "many_to_one"
    source: str
    text: str = "text"
    label: str = "label"
    labels: Annotated[list[str], Field(min_length=2)]
    duplicates: Literal["keep", "drop"] = "drop"
    prepare: TextPrepare = TextPrepare()
    serving: TextServing = TextServing()
    training: TaskTraining = TaskTraining()
    variants: Variants

    @model_validator(mode="after")
    def _consistent(self) -> "TextTask":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        return self


Task = Annotated[TimeSeriesTask | TextTask, Field(discriminator="kind")]
TASK_KINDS = ("timeseries", "text")


class Training(_Strict):
    seed: int = 42
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = "auto"
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "64-true"] = "32-true"
    num_threads: PositiveInt = 1
    # Passed to Lightning's Trainer as they are: "auto", "ddp", "ddp_spawn", "fsdp", ...; nodes per variant.
    strategy: Annotated[str, Field(min_length=1)] = "auto"
    num_nodes: PositiveInt = 1


class Clipping(_Strict):
    algorithm: Literal["norm", "value"] = "norm"
    max_norm: Annotated[float, Field(gt=0.0)] = 1.0


class Diagnostics(_Strict):
    probe_every_n_steps: PositiveInt = 10
    vanishing_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-3


class Metric(_Strict):
    name: str
    goal: Literal["minimize", "maximize"]


class Promote(_Strict):
    metrics: dict[Literal["timeseries", "text"], Metric] = {
        "timeseries": Metric(name="mae", goal="minimize"),
        "text": Metric(name="macro_f1", goal="maximize"),
    }
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.0

    def metric_for(self, kind: str) -> Metric:
        if kind not in self.metrics:
            raise ConfigError(f"promote.metrics has no entry for task kind {kind!r}")
        return self.metrics[kind]


class Serving(_Strict):
    """`seqops serve`: where it listens and how the gateway (pipelines/gateway.py) guards the model."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 5055
    workers: PositiveInt = 1              # uvicorn worker processes; each loads the model and polls on its own
    concurrency: PositiveInt = 1          # requests one worker predicts at once (the rest queue)
    threads: PositiveInt = 1              # torch intra-op threads per worker (2-core machines stall above 1)
    max_body_bytes: PositiveInt = 2 * 1024 * 1024   # a larger request body gets a 413
    request_timeout_s: Annotated[float, Field(gt=0.0)] = 10.0  # a slower request gets a 504
    poll_interval_s: Annotated[float, Field(ge=0.0)] = 10.0    # how often `champion` is checked; 0: never


class TaskRunner(_Strict):
    """Where the variants of one retrain train: a Dask cluster (local unless `address`), or one at a time."""

    kind: Literal["dask", "sequential"] = "dask"
    address: str | None = None  # tcp://HOST:8786, an existing Dask scheduler; None starts a LocalCluster
    n_workers: PositiveInt = 2  # LocalCluster worker processes (never more than the variants to train)
    threads_per_worker: PositiveInt = 1


class Schedule(_Strict):
    cron: Annotated[str, Field(min_length=9)] = "0 3 * * *"
    timezone: str = "UTC"


class Orchestration(_Strict):
    """Prefect around the stages: fan-out, retries of transient failures, one retrain per task at a time."""

    task_runner: TaskRunner = TaskRunner()
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    retry_delay_seconds: Annotated[float, Field(gt=0.0)] = 10.0  # first retry; doubles on each next one
    concurrency: PositiveInt = 1  # retrains of one task at once (Prefect global concurrency limit retrain-<task>)
    schedule: Schedule = Schedule()


class Params(_Strict):
    tasks: Annotated[dict[str, Task], Field(min_length=1)]
    training: Training = Training()
    clipping: Clipping = Clipping()
    diagnostics: Diagnostics = Diagnostics()
    promote: Promote = Promote()
    serving: Serving = Serving()
    orchestration: Orchestration = Orchestration()

    def task(self, name: str) -> TimeSeriesTask | TextTask:
        """The named task, or a ConfigError that lists the tasks params.yaml defines."""
        if name not in self.tasks:
            raise ConfigError(f"unknown task {name!r}: params.yaml defines {sorted(self.tasks)}")
        return self.tasks[name]


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        loc = list(e["loc"])
        if len(loc) > 2 and loc[0] == "tasks" and loc[2] in TASK_KINDS:
            del loc[2]  # the union's tag, not a key the user wrote
        key = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` override in place; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    dotted, value = assignment.split("=", 1)
    node: Any = raw
    parts = dotted.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and isinstance(node.get(part), (dict, list)):
            node = node[part]
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[: i + 1])!r} is not a section of params.yaml")
    leaf = parts[-1]
    parsed = yaml.safe_load(value)
    if isinstance(node, list):
        if not (leaf.isdigit() and int(leaf) < len(node)):
            raise ConfigError(f"override {dotted!r}: {leaf!r} is not an index of the list")
        node[int(leaf)] = parsed
    else:
        node[leaf] = parsed


def load_params(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read and validate params.yaml: `path` is the file or the project root holding it
    (default: the project's, or $SEQOPS_PARAMS)."""
    path = Path(path) if path is not None else params_path()
    if path.is_dir():
        path = params_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path))) from None
