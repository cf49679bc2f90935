"""Five-line tasks: every setting left out is derived from the frequency and the length, recorded in
prepared/<task>/settings.json, and an explicit key always wins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.cli import example_request
from pipelines.config import ConfigError, TimeSeriesTask, load_params
from pipelines.data.ingest import ingest
from pipelines.prepare.stage import prepare
from pipelines.data.validate import InvalidDataError
from pipelines.tasks.defaults import (MAX_EPOCHS, MAX_K2, MIN_EPOCHS, TARGET_BATCHES, resolve, season_and_horizon,
                                     task_frequency)
from pipelines.tasks.settings import derived_settings, task_spec

FIVE_LINES = {"kind": "timeseries", "source": "s.csv", "timestamp": "month", "target": "y"}


@pytest.mark.parametrize("freq, season, horizon", [
    ("YS-JAN", 1, 6), ("QS-JAN", 4, 8), ("MS", 12, 18), ("ME", 12, 18), ("W-SUN", 52, 13), ("D", 7, 14),
    ("B", 5, 10), ("h", 24, 48), ("30min", 48, 96), ("7h", 1, 6), ("2D", 1, 1),
])
def test_season_and_horizon_follow_the_frequency(freq: str, season: int, horizon: int) -> None:
    assert season_and_horizon(freq) == (season, horizon)


def monthly(length: int) -> pd.DataFrame:
    stamps = pd.date_range("1990-01-01", periods=length, freq="MS")
    return pd.DataFrame({"series_id": "main", "timestamp": stamps, "y": np.arange(length, dtype=float)})


def test_a_five_line_task_gets_every_setting_from_its_length_and_frequency() -> None:
    spec, derived = resolve(TimeSeriesTask.model_validate(FIVE_LINES), monthly(240))
    assert (spec.freq, spec.prepare.season, spec.evaluate.horizon) == ("MS", 12, 18)
    assert (spec.prepare.holdout, spec.prepare.validation) == (36, 36)
    assert spec.serving.min_history == 13 and spec.serving.default_horizon == 18
    assert [(v.k1, v.k2) for v in spec.variants] == [(12, 24)] * len(spec.variants)
    assert spec.prepare.window <= 240 - 72 - 1
    assert derived["prepare.season"] == 12 and "variants" in derived


def test_explicit_keys_win_over_derived_ones() -> None:
    given = {**FIVE_LINES, "horizon": 6, "prepare": {"season": 6, "holdout": 20},
             "variants": [{"name": "mine", "cell": "gru", "k1": 5}]}
    spec, derived = resolve(TimeSeriesTask.model_validate(given), monthly(240))
    assert (spec.evaluate.horizon, spec.prepare.season, spec.prepare.holdout) == (6, 6, 20)
    assert [v.name for v in spec.variants] == ["mine"] and spec.variants[0].k2 is None
    assert not {"horizon", "prepare.season", "prepare.holdout", "variants"} & set(derived)


def test_a_max_history_below_the_derived_min_history_is_a_config_error_naming_it() -> None:
    """It passed, trained, and crashed evaluate, whose requests the served model then refused."""
    given = {**FIVE_LINES, "serving": {"max_history": 10}}
    with pytest.raises(ConfigError, match=r"serving\.max_history \(10\) is below serving\.min_history \(13, derived\)"):
        resolve(TimeSeriesTask.model_validate(given), monthly(240))


def test_a_max_horizon_bounds_the_derived_horizon_and_an_explicit_one_above_it_is_a_config_error() -> None:
    """serving.max_horizon 1 with a derived horizon of 18 passed, and train crashed logging its own example."""
    spec, derived = resolve(TimeSeriesTask.model_validate({**FIVE_LINES, "serving": {"max_horizon": 1}}), monthly(240))
    assert (spec.evaluate.horizon, spec.serving.default_horizon, derived["horizon"]) == (1, 1, 1)
    given = {**FIVE_LINES, "horizon": 6, "serving": {"max_horizon": 4}}
    with pytest.raises(ConfigError, match=r"horizon \(6\) is above serving\.max_horizon \(4\): the model "
                                          r"would refuse its own forecasts"):
        resolve(TimeSeriesTask.model_validate(given), monthly(240))
    given = {**FIVE_LINES, "serving": {"max_horizon": 4, "default_horizon": 5}}
    with pytest.raises(ConfigError, match=r"serving\.default_horizon \(5\) is above serving\.max_horizon \(4\)"):
        resolve(TimeSeriesTask.model_validate(given), monthly(240))


def test_a_one_row_series_does_not_put_the_task_on_two_calendars() -> None:
    """A one-row series appended to a monthly task was inferred daily: 'different calendars (series 'a' is 'D',
    series 'main' is 'MS')' instead of the short-series error."""
    one = pd.DataFrame({"series_id": "a", "timestamp": [pd.Timestamp("2021-07-01")], "y": [1.0]})
    assert task_frequency(TimeSeriesTask.model_validate(FIVE_LINES), pd.concat([monthly(240), one])) == "MS"
    two = pd.DataFrame({"series_id": "a", "timestamp": pd.to_datetime(["2021-07-01", "2021-07-02"]), "y": [1.0, 2.0]})
    with pytest.raises(InvalidDataError, match=r"different calendars \(series 'a' is 'B', series 'main' is 'MS'\)"):
        task_frequency(TimeSeriesTask.model_validate(FIVE_LINES), pd.concat([monthly(240), two]))


def test_a_short_series_bounds_the_horizon_splits_and_window() -> None:
    spec, _ = resolve(TimeSeriesTask.model_validate(FIVE_LINES), monthly(60))
    assert spec.evaluate.horizon == 6 and spec.prepare.holdout == 12
    assert spec.prepare.window <= 60 - 24 - 1 and all(v.k2 <= min(spec.prepare.window, MAX_K2) for v in spec.variants)


def test_a_stateful_five_line_task_resolves_without_the_hybrid_and_with_epochs_for_its_batches() -> None:
    window_spec, _ = resolve(TimeSeriesTask.model_validate(FIVE_LINES), monthly(2400))
    spec, _ = resolve(TimeSeriesTask.model_validate({**FIVE_LINES, "training": {"mode": "stateful"}}), monthly(2400))
    assert "hybrid" in [v.name for v in window_spec.variants] and "hybrid" not in [v.name for v in spec.variants]
    steps = 2400 - spec.prepare.holdout - spec.prepare.validation - 1
    batches = -(-steps // (spec.training.batch_size * spec.prepare.window))  # each step read once an epoch
    assert spec.training.max_epochs == min(MAX_EPOCHS, max(MIN_EPOCHS, -(-TARGET_BATCHES // batches)))
    assert spec.training.max_epochs > window_spec.training.max_epochs  # window mode re-reads each step


def test_the_default_family_has_a_hybrid_variant_where_the_smoothing_can_be_fitted() -> None:
    long, _ = resolve(TimeSeriesTask.model_validate(FIVE_LINES), monthly(240))
    hybrid = long.variants[-1]
    assert hybrid.name == "hybrid" and long.prepare.for_variant(hybrid).smoothing == "holt_winters"
    assert not long.prepare.for_variant(hybrid).difference and long.prepare.difference
    short, _ = resolve(TimeSeriesTask.model_validate(FIVE_LINES), monthly(40))  # 24 training months < 26
    assert [v.name for v in short.variants] == ["lstm", "gru"]


def test_a_panel_adds_a_variant_scaled_per_series_beside_the_family() -> None:
    """One task-wide scaling read a small series beside a large one as a flat line (bench/panels.py)."""
    single, _ = resolve(TimeSeriesTask.model_validate(FIVE_LINES), monthly(240))
    panel = pd.concat([monthly(240), monthly(240).assign(series_id="b", y=lambda f: f["y"] * 1000)])
    spec, derived = resolve(TimeSeriesTask.model_validate(FIVE_LINES), panel)
    assert [v.name for v in spec.variants] == [v.name for v in single.variants] + ["gru-series"]
    assert spec.prepare.for_variant(spec.variants[-1]).scaling == "series" and spec.prepare.scaling == "global"
    assert "gru-series" in derived["variants"]
    stateful, _ = resolve(TimeSeriesTask.model_validate({**FIVE_LINES, "training": {"mode": "stateful"}}), panel)
    assert "gru-series" not in [v.name for v in stateful.variants]  # its streams read the task's one transform


def test_a_bad_freq_is_refused_on_load_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tasks": {"sales": {**FIVE_LINES, "freq": "monthly"}}}))
    with pytest.raises(ConfigError, match=r"tasks\.sales\.freq: .*'monthly' is not a pandas offset alias"):
        load_params(tmp_path)


def test_prepare_writes_the_resolved_task_that_later_stages_read(tmp_path: Path) -> None:
    frame = monthly(120).rename(columns={"timestamp": "month"}).drop(columns="series_id")
    frame.to_csv(tmp_path / "s.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tasks": {"sales": FIVE_LINES}}))
    params = load_params(tmp_path)
    ingest("sales", params, tmp_path)
    prepare(tmp_path, "sales", params)
    spec = task_spec(tmp_path, "sales", params)
    assert spec.freq == "MS" and spec.variants and derived_settings(tmp_path, "sales")["freq"] == "MS"
    # `seqops run`'s REST check builds its request from the resolved task: params.yaml's min_history is None
    # (a TypeError every night for every five-line forecast task)
    request = example_request("sales", tmp_path)
    assert len(request["dataframe_records"][0]["history"]) >= spec.serving.min_history
    assert request["params"] == {"horizon": spec.serving.default_horizon}

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tasks": {"sales": {**FIVE_LINES, "horizon": 3}}}))
    with pytest.raises(ConfigError, match=r"tasks\.sales in params.yaml changed since prepare@sales"):
        task_spec(tmp_path, "sales", load_params(tmp_path))
