"""Derived defaults of a forecasting task: what a five-line task (kind, source, timestamp, target) runs with.

A user brings a series nobody here has seen; asking them for twenty settings (season, splits, window,
TBPTT lengths, serving limits, variants) makes every new task a tuning job. Each of those follows
from two facts known only once the data is read, its calendar frequency and its length, so prepare
derives them here, one rule each, and writes the resolved task to prepared/<task>/settings.json. A
key written in params.yaml always wins. The rules (documented in the README, "Derived settings"):

season          periods of the frequency's natural cycle: 1 a year, 4 quarters, 12 months, 24
                half-months, 52 weeks, 5 business days; 7 days (a week) for daily steps, and one day
                for sub-daily steps (24 hours, 48 half-hours); 1 when the step does not divide it
horizon         M4's horizons where one exists (6 years, 8 quarters, 18 months, 13 weeks, 14 days),
                10 business days, 24 half-months, two days of sub-daily steps; at most a tenth of
                the shortest series and MAX_HORIZON
holdout         two horizons (at least one season), at most a fifth of the shortest series
validation      as holdout
origin_stride   half a horizon
difference      true unless prepare.smoothing is on (smoothing replaces differencing)
min_history     one more than a season and than the steps any variant's prepare options lose (differencing
                1, seasonal differencing a season + 1 with differencing, smoothing a season); at least MIN_HISTORY
window          four seasons or four horizons (at least 32), at most MAX_WINDOW and the training split
stride          an eighth of the window
k1, k2          k1 one season, k2 two (k1 at least 8); at most the window, MAX_K1 and MAX_K2
max_epochs      enough epochs for about TARGET_BATCHES batches, between MIN_EPOCHS and MAX_EPOCHS
serving         default_horizon = horizon, max_horizon = 20 horizons
variants        `default_variants`: the family every new task trains (chosen by bench/quality.py); its
                hybrid variant only when the training split holds `smoothing_min_steps(season)` steps, and not
                in stateful mode (its streams read the task's one transform); with more than one series, a
                `gru-series` variant too (`scaling: series`), not in stateful mode either

A text task derives one setting the same way, `text_epochs` at the end of this file (the rest of a
five-line text task is TextTask's fixed defaults, chosen by bench/text_quality.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries import offsets
from pandas.tseries.frequencies import to_offset

from pipelines.config import SeriesPrepare, TimeSeriesTask, Variant, VariantPrepare
from pipelines.config_base import ConfigError
from pipelines.data.calendar import infer_frequency
from pipelines.data.validate import InvalidDataError
from pipelines.prepare.features import smoothing_min_steps

MAX_HORIZON = 200
MIN_HISTORY = 8
MIN_WINDOW, MAX_WINDOW = 32, 1024
MIN_K1, MAX_K1, MAX_K2 = 8, 128, 256
TARGET_BATCHES, MIN_EPOCHS, MAX_EPOCHS = 200, 5, 100
HORIZON_SEASONS = 20  # serving.max_horizon, in horizons
DAY, WEEK = pd.Timedelta(days=1), pd.Timedelta(days=7)

# (offset classes, periods in their cycle, horizon): calendar offsets whose step is not a fixed duration.
_CALENDAR: tuple[tuple[tuple[type, ...], int, int], ...] = (
    ((offsets.YearBegin, offsets.YearEnd, offsets.BYearBegin, offsets.BYearEnd), 1, 6),
    ((offsets.QuarterBegin, offsets.QuarterEnd, offsets.BQuarterBegin, offsets.BQuarterEnd), 4, 8),
    ((offsets.MonthBegin, offsets.MonthEnd, offsets.BusinessMonthBegin, offsets.BusinessMonthEnd), 12, 18),
    ((offsets.SemiMonthBegin, offsets.SemiMonthEnd), 24, 24),
    ((offsets.Week,), 52, 13),
    ((offsets.BusinessDay, offsets.CustomBusinessDay), 5, 10),
)


def season_and_horizon(freq: str) -> tuple[int, int]:
    """(season, horizon) of a pandas offset alias, by the rules in the module docstring."""
    offset = to_offset(freq)
    for classes, periods, horizon in _CALENDAR:
        if isinstance(offset, classes):
            season = periods // offset.n if periods % offset.n == 0 else 1
            return season, max(1, horizon // offset.n)
    step = pd.Timedelta(offset)
    cycle = DAY if step < DAY else WEEK
    season = cycle // step if cycle % step == pd.Timedelta(0) else 1
    horizon = 14 if step == DAY else (2 * DAY) // step if step < DAY else season
    return max(1, season), max(1, horizon)


def default_variants(k1: int, k2: int, hybrid: bool = True, panel: bool = False) -> list[Variant]:
    """The family of variants a task without `variants:` trains. One function, so the benchmark
    (bench/quality.py) that chooses the family changes it here and nowhere else.

    `hybrid` reads the innovations of a Holt-Winters filter (its own transform, VariantPrepare) instead of
    first differences: bench/quality.py --options found it far better on the yearly series and worse on
    the seasonal ones than differencing, so it is a candidate of its own and cross-validation chooses.
    `hybrid=False` (a training split too short to fit the smoothing on) leaves it out.

    `panel` (a task of several series) adds `gru-series`, the gru with each series scaled by its own statistics
    (`scaling: series`). With the task-wide scaling, the mean step of the large series (GDP's growth per quarter)
    is what the network adds to every series, an interest rate too: on bench/panels.py's mixed panels the
    family's MASE reached 315 (consumption with an interest rate) where the same series alone scored under 1.
    Where the series share a scale the task-wide scaling did better, so it is a candidate beside the family
    and cross-validation, on the scale-free MASE, chooses.
    """
    family = [Variant(name="lstm", cell="lstm", hidden_size=32, k1=k1, k2=k2, lr=0.005),
              Variant(name="gru", cell="gru", hidden_size=32, k1=k1, k2=k2, lr=0.005)]
    family += [Variant(name="hybrid", cell="gru", hidden_size=32, k1=k1, k2=k2, lr=0.005,
                       prepare=VariantPrepare(smoothing="holt_winters"))] if hybrid else []
    return family + ([Variant(name="gru-series", cell="gru", hidden_size=32, k1=k1, k2=k2, lr=0.005,
                              prepare=VariantPrepare(scaling="series"))] if panel else [])


def task_frequency(spec: TimeSeriesTask, raw: pd.DataFrame) -> str:
    """The task's `freq`, or the one alias every series was inferred on (else an error naming two). A series of
    one timestamp has no calendar of its own to disagree with (the short-series check names it instead)."""
    if spec.freq is not None:
        return spec.freq
    groups = [(str(sid), pd.DatetimeIndex(group["timestamp"])) for sid, group in raw.groupby("series_id", sort=False)]
    found = {sid: infer_frequency(stamps) for sid, stamps in groups if len(stamps) > 1} or {"": "D"}
    aliases = sorted(set(found.values()))
    if len(aliases) > 1:
        pairs = ", ".join(f"series {next(s for s, f in found.items() if f == a)!r} is {a!r}" for a in aliases)
        raise InvalidDataError(f"the series of this task are on different calendars ({pairs}): set the task's "
                               f"`freq:` to one pandas offset alias, or split them into tasks")
    return aliases[0]


def _bounded(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def _epochs(lengths: list[int], window: int, stride: int, batch_size: int, stateful: bool) -> int:
    """Epochs for about TARGET_BATCHES batches. Window mode batches `batch_size` windows (one every `stride`
    steps); stateful mode reads each training step once, `batch_size` streams of `window` steps a batch."""
    if stateful:
        batches = math.ceil(sum(max(0, n - 1) for n in lengths) / (batch_size * window))
    else:
        windows = sum(max(0, n - 1 - window) // stride + 1 for n in lengths)  # training_windows' count per series
        batches = math.ceil(windows / batch_size)
    return _bounded(math.ceil(TARGET_BATCHES / max(1, batches)), MIN_EPOCHS, MAX_EPOCHS)


def resolve(spec: TimeSeriesTask, raw: pd.DataFrame) -> tuple[TimeSeriesTask, dict[str, Any]]:
    """The task with every key left out derived from the raw table, and the derived keys (dotted) with values.

    `raw` is the validated raw table ([series_id, timestamp, ...], gaps not yet filled); lengths
    count the calendar slots from each series' first to last timestamp, gaps included.
    """
    freq = task_frequency(spec, raw)
    lengths = [len(pd.date_range(g["timestamp"].min(), g["timestamp"].max(), freq=freq))
               for _, g in raw.groupby("series_id", sort=False)]
    shortest = min(lengths)
    season, horizon = season_and_horizon(freq)
    prepare, evaluate, serving, training = (spec.prepare.model_dump(), spec.evaluate.model_dump(),
                                            spec.serving.model_dump(), spec.training.model_dump())
    derived: dict[str, Any] = {}

    def pick(section: dict[str, Any], name: str, key: str, value: Any) -> Any:
        if section[key] is None:
            section[key] = value
            derived[f"{name}.{key}" if name else key] = value
        return section[key]

    top = {"freq": spec.freq, "horizon": spec.horizon or spec.evaluate.horizon}
    pick(top, "", "freq", freq)
    season = pick(prepare, "prepare", "season", season)
    cap = min(MAX_HORIZON, spec.serving.max_horizon or MAX_HORIZON)  # a horizon the served model refuses: none
    horizon = pick(top, "", "horizon", _bounded(horizon, 1, min(cap, max(1, shortest // 10))))
    horizon = pick(evaluate, "evaluate", "horizon", horizon)
    holdout = pick(prepare, "prepare", "holdout", _bounded(max(2 * horizon, season), horizon,
                                                           max(horizon, shortest // 5)))
    pick(prepare, "prepare", "validation", holdout)
    pick(evaluate, "evaluate", "origin_stride", max(1, horizon // 2))
    pick(prepare, "prepare", "difference", prepare["smoothing"] == "none")
    n_train = shortest - prepare["holdout"] - prepare["validation"]
    window = pick(prepare, "prepare", "window",
                  _bounded(max(4 * season, 4 * horizon, MIN_WINDOW), 2, min(MAX_WINDOW, max(2, n_train - 1))))
    stride = pick(prepare, "prepare", "stride", max(1, window // 8))
    pick(serving, "serving", "default_horizon", horizon)
    pick(serving, "serving", "max_horizon", HORIZON_SEASONS * horizon)
    for key, value in (("horizon", horizon), ("serving.default_horizon", serving["default_horizon"])):
        if value > serving["max_horizon"]:
            raise ConfigError(f"{key} ({value}{', derived' if key in derived else ''}) is above serving.max_horizon "
                              f"({serving['max_horizon']}): the model would refuse its own forecasts; raise "
                              f"serving.max_horizon or lower {key}")
    pick(training, "training", "max_epochs",
         _epochs([n - prepare["holdout"] - prepare["validation"] for n in lengths], window, stride,
                 training["batch_size"], training["mode"] == "stateful"))
    variants = spec.variants
    if variants is None:
        k1 = _bounded(season, MIN_K1, min(MAX_K1, window))
        variants = default_variants(k1, _bounded(2 * season, k1, min(MAX_K2, window)),
                                    # stateful streams read one task-wide transform: no smoothing variant
                                    hybrid=n_train >= smoothing_min_steps(season) and training["mode"] != "stateful",
                                    panel=len(lengths) > 1 and training["mode"] != "stateful")
        derived["variants"] = ", ".join(f"{v.name} (k1 {v.k1}, k2 {v.k2})" for v in variants)
    options = SeriesPrepare.model_validate(prepare)
    lost = max(options.for_variant(v).lost_steps for v in variants)
    pick(serving, "serving", "min_history", max(season + 1, lost + 1, MIN_HISTORY))
    if serving["max_history"] < serving["min_history"]:
        raise ConfigError(f"serving.max_history ({serving['max_history']}) is below serving.min_history "
                          f"({serving['min_history']}{', derived' if 'serving.min_history' in derived else ''}): no "
                          f"history could be both long enough and accepted; raise serving.max_history")
    resolved = TimeSeriesTask.model_validate({
        **spec.model_dump(exclude={"variants"}), **top, "prepare": prepare, "evaluate": evaluate,
        "serving": serving, "training": training, "variants": [v.model_dump() for v in variants]})
    return resolved, {key: (value.item() if isinstance(value, np.generic) else value)
                      for key, value in derived.items()}


# Text tasks: the one derived setting is the number of epochs (README "Text tasks").
TEXT_TARGET_BATCHES, TEXT_MIN_EPOCHS, TEXT_MAX_EPOCHS = 800, 2, 20


def text_epochs(train_texts: int, batch_size: int) -> int:
    """Epochs for about TEXT_TARGET_BATCHES optimizer steps: a fixed count undertrains a small corpus (a
    thousand texts make 15 batches an epoch) or costs minutes on a large one. Early stopping with the
    best epoch restored guards the small ones against the extra epochs."""
    return _bounded(math.ceil(TEXT_TARGET_BATCHES / max(1, math.ceil(train_texts / batch_size))),
                    TEXT_MIN_EPOCHS, TEXT_MAX_EPOCHS)
