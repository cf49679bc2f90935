"""The params.yaml schema.

Everything tunable lives in params.yaml; this module is the only place that reads it, so a typo
fails on load with the dotted key and the allowed values instead of deep inside a training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from models.rules import check_dropout, check_memory_steps, check_tbptt_window
from pipelines.config_base import ConfigError, PositiveInt, _Strict
from pipelines.config_runtime import Orchestration, Serving
from pipelines.data.calendar import frequency_error
from pipelines.evaluate.intervals import DEFAULT_LEVELS, MAX_LEVELS
from pipelines.prepare.features import lost_steps
from pipelines.project import params_path


Transform = Literal["none", "log", "boxcox"]
Smoothing = Literal["none", "holt_winters"]
Scaling = Literal["global", "series", "window"]


class VariantPrepare(_Strict):
    """A forecasting variant's own prepare options (README "Forecasting options"): a key left out is the
    task's `prepare` key. A variant with its own options trains and serves with its own fitted transform,
    so one run compares them and rolling-origin cross-validation chooses per series."""

    transform: Transform | None = None
    seasonal_difference: bool | None = None
    difference: bool | None = None
    smoothing: Smoothing | None = None
    scaling: Scaling | None = None


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
    # Text classifiers: the readout ("last" state, or "concat" of last + max + mean over the steps)
    # and dropout on the token vectors.
    pooling: Literal["last", "concat"] = "last"
    embedding_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # Text classifiers: a base model whose log-probabilities the network's logits are added to, so it
    # learns what the base gets wrong (README "Text tasks"). tfidf_logreg: the text baseline, fitted by
    # prepare on the training split (out-of-fold on the training texts themselves).
    base: Literal["none", "tfidf_logreg"] = "none"
    # The seed of this variant's initial weights and batch order (None: training.seed). Variants that differ
    # only in their seed, with the task's ensemble, make an ensemble of seeds.
    seed: int | None = None
    # Forecasting only. None: a point forecast trained on squared error, served with conformal intervals.
    # N (3..99): N quantiles of the next value per step trained with the pinball loss; the forecast and its
    # intervals are read from sample paths (README "Prediction intervals"). many_to_many topology only.
    quantiles: Annotated[int, Field(ge=3, le=99)] | None = None
    # Forecasting only: prepare options of this variant's own, over the task's (VariantPrepare).
    prepare: VariantPrepare | None = None
    # lstm, gru: chrono initialisation of the gates for dependencies up to this many steps (README "Long
    # series"); None: PyTorch's initialisation, whose gates forget half the state a step.
    memory_steps: Annotated[int, Field(ge=2)] | None = None

    @model_validator(mode="after")
    def _model_rules(self) -> "Variant":
        """The rules models/ enforces (models/rules.py), checked here so params.yaml fails on load."""
        check_tbptt_window(self.k1, self.k2)
        check_dropout(self.dropout, self.num_layers)
        check_memory_steps(self.cell, self.memory_steps)
        return self


def _unique_names(variants: list[Variant]) -> list[Variant]:
    """Variant names key MLflow child runs and train.json entries: two with one name would collide."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    return variants


Variants = Annotated[list[Variant], Field(min_length=1), AfterValidator(_unique_names)]


# A time-series key left out (None) is derived at prepare time from the series' frequency and length
# (pipelines/tasks/defaults.py, rules in the README) and written to prepared/<task>/settings.json;
# a key written here always wins over its derived default.
StatsforecastBaseline = Literal["auto_ets", "auto_theta"]


class SeriesPrepare(_Strict):
    holdout: PositiveInt | None = None
    validation: PositiveInt | None = None
    window: PositiveInt | None = None
    stride: PositiveInt | None = None
    season: PositiveInt | None = None
    # What the network reads (pipelines/prepare/features.py SeriesTransform, README "Forecasting options");
    # the defaults are bench/quality.py's choice (bench/results/quality_options.json).
    transform: Transform = "none"           # of the target; log / boxcox need it positive
    seasonal_difference: bool = False       # difference at lag `season` (then first, if difference)
    difference: bool | None = None          # first differences; None: true unless smoothing is on
    smoothing: Smoothing = "none"           # hybrid: the network models Holt-Winters' innovations
    scaling: Scaling = "global"             # window: each input window by its own statistics

    @model_validator(mode="after")
    def _one_way_to_stationarity(self) -> "SeriesPrepare":
        if self.smoothing == "holt_winters" and (self.difference or self.seasonal_difference):
            raise ValueError("prepare.smoothing: holt_winters replaces differencing: leave prepare.difference and "
                             "prepare.seasonal_difference out (or false)")
        return self

    @property
    def lost_steps(self) -> int | None:
        """Steps a history loses before its first network input (SeriesTransform.lost_steps); None while
        the season is not derived yet."""
        if self.season is None:
            return None
        return lost_steps(self.season, self.difference is not False, self.seasonal_difference, self.smoothing)

    def for_variant(self, variant: Variant) -> "SeriesPrepare":
        """The options `variant` trains and serves with: these, overridden by the variant's own. A variant
        that turns smoothing on (or off) without saying how to difference gets the derived default: smoothing
        replaces differencing."""
        if variant.prepare is None:
            return self
        own = variant.prepare.model_dump(exclude_none=True)
        if "smoothing" in own:
            own.setdefault("difference", own["smoothing"] == "none")
            if own["smoothing"] != "none":
                own.setdefault("seasonal_difference", False)
        return SeriesPrepare.model_validate({**self.model_dump(), **own})


class SeriesEvaluate(_Strict):
    horizon: PositiveInt | None = None
    origin_stride: PositiveInt | None = None
    # The median of the best `ensemble_size` recurrent variants (by rolling-origin CV) is a candidate of
    # its own; 1 disables it. Baselines (statsforecast) are scored in every run beside the candidates.
    ensemble_size: PositiveInt = 3
    # Naive and seasonal naive are always scored; these statsforecast models too (each costs a fit per
    # forecast origin; an empty list keeps a tiny or test task fast, at the price of a weaker bar).
    statistical_baselines: list[StatsforecastBaseline] = list(get_args(StatsforecastBaseline))


Levels = Annotated[list[Annotated[float, Field(gt=0.0, lt=100.0)]], Field(min_length=1, max_length=MAX_LEVELS)]


class SeriesServing(_Strict):
    min_history: PositiveInt | None = None
    max_history: PositiveInt = 10000
    default_horizon: PositiveInt | None = None
    max_horizon: PositiveInt | None = None
    # Coverage levels (%) of the intervals a forecast carries when a request sends no params.level; the
    # levels evaluate scores (with the gate's 80 %).
    levels: Levels = list(DEFAULT_LEVELS)


class TaskTraining(_Strict):
    max_epochs: PositiveInt = 5
    batch_size: PositiveInt = 16
    # Stop when val_loss has not improved for `patience` epochs and restore the best epoch's weights.
    patience: PositiveInt = 5
    # Learning rate over the epochs: constant, or cosine annealing from the variant's lr to lr / 100
    # (series tasks default to cosine, chosen by bench/quality.py).
    lr_schedule: Literal["constant", "cosine"] = "constant"


class TextTraining(TaskTraining):
    # None: enough epochs for about TEXT_TARGET_BATCHES batches (pipelines/tasks/defaults.py text_epochs):
    # two over 30,000 tweets, twenty over a thousand debate lines, so one default fits every corpus size.
    max_epochs: PositiveInt | None = None
    batch_size: PositiveInt = 64


class SeriesTraining(TaskTraining):
    max_epochs: PositiveInt | None = None  # None: derived from the number of training windows
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    # window: shuffled windows (prepare.window long), each from a zero state. stateful: every series'
    # training steps cut into batch_size contiguous streams read in order, prepare.window steps a batch,
    # the state carried across batches (many_to_many only; pipelines/train/streaming.py).
    mode: Literal["window", "stateful"] = "window"


def _frequency(freq: str | None) -> str | None:
    if freq is not None and (message := frequency_error(freq)):
        raise ValueError(message)
    return freq


class TimeSeriesTask(_Strict):
    """A forecasting task: a table with a timestamp, numeric value columns and an optional series id.

    `kind`, `source`, `timestamp` and `target` make a complete task; every section left out is derived.
    """

    kind: Literal["timeseries"]
    topology: Literal["many_to_many", "encoder_decoder"] = "many_to_many"
    source: str
    timestamp: str = "date"
    target: str
    # A pandas offset alias (MS, W-SUN, h, ...); None: inferred per series at prepare time.
    freq: Annotated[str | None, AfterValidator(_frequency)] = None
    horizon: PositiveInt | None = None         # steps to forecast: evaluate.horizon and serving.default_horizon
    covariates: list[str] = []                 # known up to the forecast origin only: held at their last value
    known_covariates: list[str] = []           # known over the horizon too: a request sends their future values
    calendar_features: bool = False            # sin/cos of the timestamp's position in its cycles, per frequency
    series_id: str | None = None
    gap_fill: Literal["interpolate", "ffill", "drop"] = "interpolate"
    prepare: SeriesPrepare = SeriesPrepare()
    evaluate: SeriesEvaluate = SeriesEvaluate()
    serving: SeriesServing = SeriesServing()
    training: SeriesTraining = SeriesTraining()
    variants: Variants | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "TimeSeriesTask":
        options = [self.prepare]
        for variant in self.variants or []:
            try:
                options.append(self.prepare.for_variant(variant))
            except ValidationError as e:
                raise ValueError(f"variants {variant.name!r}: prepare: {e.errors()[0]['msg']}") from None
        lost, min_history = max((o.lost_steps or 0) for o in options), self.serving.min_history
        if self.prepare.season and lost and min_history and min_history <= max(self.prepare.season, lost):
            raise ValueError(f"serving.min_history ({min_history}) must exceed prepare.season ({self.prepare.season}) "
                             f"and the {lost} steps the prepare options lose before the network's first input "
                             f"(difference: 1, seasonal_difference and smoothing: a season)")
        if self.training.mode == "stateful" and (self.prepare.smoothing != "none" or self.prepare.scaling != "global"
                                                 or any(v.prepare for v in self.variants or [])):
            raise ValueError("training.mode: stateful reads each series in chunks with the task's one transform: "
                             "prepare.smoothing, prepare.scaling: window or series (they need the whole window or "
                             "series) and a variant's own prepare options need mode: window")
        columns = [self.target, *self.covariates, *self.known_covariates]
        if len(set(columns)) != len(columns):
            raise ValueError(f"target, covariates and known_covariates must name different columns, got {columns}")
        topologies = {v.topology or self.topology for v in self.variants or []} | {self.topology}
        if self.training.mode == "stateful" and topologies != {"many_to_many"}:
            raise ValueError("training.mode: stateful carries each stream's state across batches, which only "
                             "many_to_many does: set every variant's topology to many_to_many, or use mode: window")
        if based := [v.name for v in self.variants or [] if v.base != "none"]:
            raise ValueError(f"variants {based}: base is a text option (a classifier correcting TF-IDF + logistic "
                             "regression): remove it")
        for variant in self.variants or []:
            if variant.quantiles and (variant.topology or self.topology) != "many_to_many":
                raise ValueError(f"variants {variant.name!r}: quantiles needs topology many_to_many (sample paths feed "
                                 f"each drawn value back); {variant.topology or self.topology} decodes one value per "
                                 "step: remove quantiles or set the variant's topology to many_to_many")
        if self.known_covariates or self.calendar_features:
            if "encoder_decoder" in topologies:
                raise ValueError("known_covariates and calendar_features need many_to_many variants: the "
                                 "encoder_decoder decoder reads only its own predictions")
        return self


class TextPrepare(_Strict):
    validation: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    holdout: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    # subword: byte-level BPE over the tweet tokens (pipelines/prepare/text.py); words: the word vocabulary.
    tokenizer: Literal["subword", "words"] = "subword"
    min_freq: PositiveInt = 2      # words: times a word is seen; subword: times a merge is seen
    max_vocab: PositiveInt = 2000  # table size, special tokens included: embedding rows, LM softmax width (its cost)
    max_length: PositiveInt = 64   # tokens per text; longer texts keep their first max_length
    seed: int = 13


class TextPretrain(_Strict):
    """The language model every text variant starts from (pipelines/train/pretrain.py).

    Off by default: in bench/text_quality.py it helped one corpus of four (1,052 debate lines, +6.6
    accuracy points), not the larger ones (-3.5 on 13,835 reviews, -0.8 on 17,361 Chinese reviews, -0.6
    on the 37,185 tweets), and it adds 16 CPU seconds to the tweets' retrain. `method: lm` turns it on (worth trying on a small corpus
    or with an `unlabelled` file)."""

    method: Literal["lm", "none"] = "none"
    max_epochs: PositiveInt = 1
    streams: PositiveInt = 32   # contiguous streams a batch holds (its rows), consumed in order
    steps: PositiveInt = 64     # tokens per stream and batch; TBPTT cuts them into k1-step updates
    k1: PositiveInt = 32
    k2: PositiveInt = 32
    lr: Annotated[float, Field(gt=0.0)] = 3e-3
    validation: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.05  # of the stream's texts, for its perplexity

    @model_validator(mode="after")
    def _window(self) -> "TextPretrain":
        check_tbptt_window(self.k1, self.k2)
        return self


def _default_text_variants() -> list[Variant]:
    """The one default family for every corpus: a GRU classifier, and the same GRU correcting TF-IDF +
    logistic regression (`base`). 64 units keep the built-in tweets' retrain near 2 minutes on 2 cores
    (bench/results/text_quality.json has their cost and scores, and why the second is there)."""
    gru = {"cell": "gru", "hidden_size": 64, "embedding_dim": 64, "lr": 0.002, "pooling": "concat",
           "embedding_dropout": 0.1}
    return [Variant(name="gru", **gru), Variant(name="gru-tfidf", base="tfidf_logreg", **gru)]


class TextEvaluate(_Strict):
    # The mean of the label probabilities of the best `ensemble_size` variants (by validation macro-F1) is a
    # candidate of its own; 1 disables it.
    ensemble_size: PositiveInt = 3


class TextServing(_Strict):
    max_text_length: PositiveInt = 1000
    # What happens to a text longer than max_text_length characters: a 400 (reject), or scored on its
    # first max_text_length characters (truncate). Tokens past prepare.max_length are always truncated.
    over_length: Literal["reject", "truncate"] = "reject"
    max_records: PositiveInt = 1000


def _label_name(value: Any) -> Any:
    """A whole-number label written bare in params.yaml (`labels: [1, 2, 3]`) as the string a data file's
    `1` becomes at ingest; anything else as written, for the str check to judge."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class TextTask(_Strict):
    """A classification task over labelled text: a table with a text column and a label column.

    `kind`, `source`, `text` and `label` are a complete task. `labels` (the classes, in the order the
    model's outputs take) defaults to the labels found in the data, sorted; `unlabelled` is an optional
    extra file of texts (a .txt, one text a line, or a table with the `text` column) that only the
    language model reads. Everything else has the defaults below.
    """

    kind: Literal["text"]
    topology: Literal["many_to_one"] = "many_to_one"
    source: str
    text: str = "text"
    label: str = "label"
    labels: Annotated[list[Annotated[str, BeforeValidator(_label_name)]], Field(min_length=2)] | None = None
    unlabelled: str | None = None
    duplicates: Literal["keep", "drop"] = "drop"
    prepare: TextPrepare = TextPrepare()
    pretrain: TextPretrain = TextPretrain()
    evaluate: TextEvaluate = TextEvaluate()
    serving: TextServing = TextServing()
    training: TextTraining = TextTraining()
    variants: Variants = Field(default_factory=_default_text_variants)

    @model_validator(mode="after")
    def _consistent(self) -> "TextTask":
        if self.text == self.label:
            raise ValueError(f"text and label both name column {self.text!r}: the labels need a column of their own")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        if quantile := [v.name for v in self.variants if v.quantiles]:
            raise ValueError(f"variants {quantile}: quantiles is a forecasting option; a text classifier predicts "
                             "class probabilities: remove it")
        if own := [v.name for v in self.variants if v.prepare]:
            raise ValueError(f"variants {own}: prepare is a forecasting option (a variant's own series transforms): "
                             "remove it")
        return self


# A new task kind adds its spec class here (and a `promote.metrics` entry); its behaviour lives in
# pipelines/tasks/<kind>.py, registered in pipelines.tasks.KINDS.
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
        "timeseries": Metric(name="mase", goal="minimize"),
        "text": Metric(name="macro_f1", goal="maximize"),
    }
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.0
    # A forecast candidate whose holdout coverage of its 80 % interval is below this is not promoted.
    coverage_floor: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7

    def metric_for(self, kind: str) -> Metric:
        if kind not in self.metrics:
            raise ConfigError(f"promote.metrics has no entry for task kind {kind!r}")
        return self.metrics[kind]


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

    def seed_of(self, variant: Variant) -> int:
        """The seed of `variant`'s initial weights and batch order: its own, else training.seed."""
        return self.training.seed if variant.seed is None else variant.seed


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        loc = list(e["loc"])
        if len(loc) > 2 and loc[0] == "tasks" and loc[2] in TASK_KINDS:
            del loc[2]  # the union's tag, not a key the user wrote
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "union_tag_not_found":  # pydantic's "Unable to extract tag using discriminator 'kind'"
            lines.append(f"  {key}: missing key 'kind': say what the task is, one of {list(TASK_KINDS)}")
            continue
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
        elif isinstance(node, dict) and part not in node and ((parts[0] == "tasks" and i >= 2)
                                                              or (i == 0 and part in Params.model_fields)):
            # a section params.yaml leaves at its defaults; validation names a wrong key in it
            node = node.setdefault(part, {})
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
        source = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
        raise ConfigError(_format_error(e, source)) from None
