"""Series transforms: fitted on train, invertible, and the baseline and windows line up in time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.config import load_params
from pipelines.data import versioning
from pipelines.data.ingest import ingest
from pipelines.prepare.features import (SeriesTransform, TransformError, horizon_windows, seasonal_naive,
                                       training_windows)
from pipelines.train.datamodules import load_segments
from tests.conftest import REPO, make_project


def test_differenced_forecast_returns_to_raw_units() -> None:
    values = np.cumsum(np.arange(1.0, 21.0))[:, None]  # [T, 1], a trend
    transform = SeriesTransform.fit([values[:15]], ["y"], difference=True)
    z = transform.to_inputs(values)
    assert z.shape == (19, 1)
    restored = transform.to_target(z[15:, 0], history=values[:16, 0])
    np.testing.assert_allclose(restored, values[16:, 0], rtol=1e-5)


def test_transform_statistics_come_from_the_training_values_only() -> None:
    train, later = np.ones((10, 1)), np.full((10, 1), 100.0)
    transform = SeriesTransform.fit([train], ["y"], difference=False)
    assert transform.mean == (1.0,)
    assert transform.to_inputs(later)[0, 0] == 99.0  # std of a constant is guarded to 1


def test_transform_round_trips_through_json(tmp_path: Path) -> None:
    transform = SeriesTransform.fit([np.random.default_rng(0).normal(size=(30, 2))], ["y", "x"], difference=True)
    transform.save(tmp_path / "t.json")
    assert SeriesTransform.load(tmp_path / "t.json") == transform


def multiplicative_series(length: int = 120, season: int = 12) -> np.ndarray:
    """[T, 2]: a trending target whose seasonal swing grows with its level, and a noisy covariate."""
    t = np.arange(length, dtype=np.float64)
    rng = np.random.default_rng(3)
    target = (20 + 0.2 * t) * (1 + 0.3 * np.sin(2 * np.pi * t / season)) + rng.normal(0, 0.2, length)
    return np.column_stack([target, rng.normal(size=length)])


OPTIONS = {
    "difference": {"difference": True},
    "seasonal_difference": {"difference": True, "seasonal_difference": True},
    "seasonal_difference_only": {"difference": False, "seasonal_difference": True},
    "log": {"difference": True, "target_transform": "log"},
    "boxcox": {"difference": False, "target_transform": "boxcox"},
    "holt_winters": {"difference": False, "smoothing": "holt_winters"},
    "holt_winters_log": {"difference": False, "smoothing": "holt_winters", "target_transform": "log"},
    "window_scaling": {"difference": True, "scaling": "window", "window": 36},
    "series_scaling": {"difference": True, "scaling": "series"},
    "everything_but_smoothing": {"difference": True, "seasonal_difference": True, "target_transform": "boxcox",
                                 "scaling": "window", "window": 24},
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_round_trips_raw_to_inputs_to_target(option: str) -> None:
    """A network that forecast the true future exactly (in network space, scaled by the history's window
    as served) gets the raw future back."""
    values, origin = multiplicative_series(), 100
    kwargs = OPTIONS[option]
    transform = SeriesTransform.fit([values[:80]], ["y", "x"], kwargs["difference"], season=12,
                                    **{k: v for k, v in kwargs.items() if k != "difference"})
    z = transform.to_inputs(values, context=origin)  # [T - lost, 2], as the pyfunc builds it
    assert z.shape == (len(values) - transform.lost_steps, 2)
    restored = transform.to_target(z[origin - transform.lost_steps:, 0], history=values[:origin, 0])
    np.testing.assert_allclose(restored, values[origin:, 0], rtol=1e-5)


@pytest.mark.parametrize("option", ["seasonal_difference", "holt_winters_log", "window_scaling", "series_scaling"])
def test_sample_paths_come_back_as_each_path_would_alone(option: str) -> None:
    values = multiplicative_series()
    kwargs = OPTIONS[option]
    transform = SeriesTransform.fit([values[:80]], ["y", "x"], kwargs["difference"], season=12,
                                    **{k: v for k, v in kwargs.items() if k != "difference"})
    paths = np.random.default_rng(1).normal(size=(5, 15))  # [N, H] network space
    together = transform.to_target(paths, history=values[:100, 0])  # [N, H]
    np.testing.assert_allclose(together, [transform.to_target(p, history=values[:100, 0]) for p in paths])


def test_a_season_of_one_has_nothing_to_difference_seasonally() -> None:
    values = multiplicative_series()
    yearly = SeriesTransform.fit([values[:80]], ["y", "x"], True, season=1, seasonal_difference=True)
    assert yearly == SeriesTransform.fit([values[:80]], ["y", "x"], True, season=1)
    assert yearly.lost_steps == 1


def test_smoothing_and_boxcox_parameters_come_from_the_training_rows_only() -> None:
    values = multiplicative_series()
    later = values.copy()
    later[80:, 0] *= 5.0  # validation and holdout change; the training rows do not
    fitted = [SeriesTransform.fit([v[:80]], ["y", "x"], False, season=12, target_transform="boxcox",
                                  smoothing="holt_winters") for v in (values, later)]
    assert fitted[0] == fitted[1]
    assert 0 < fitted[0].alpha < 1 and 0 < fitted[0].gamma < 1


def test_window_scaling_normalises_each_training_window_by_its_own_statistics() -> None:
    transform = SeriesTransform.fit([multiplicative_series()], ["y", "x"], True, scaling="window", window=24)
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(4, 24, 2)).astype(np.float32)
    scaled_x, scaled_y = transform.scale_windows(x, x[:, :, :1] + 1.0)
    np.testing.assert_allclose(scaled_x.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled_x.std(axis=1), 1.0, atol=1e-4)
    shift = np.broadcast_to(1.0 / x[:, :, :1].std(axis=1, keepdims=True), scaled_y.shape)  # [4, 24, 1]
    np.testing.assert_allclose(scaled_y - scaled_x[:, :, :1], shift, rtol=1e-4)


def test_series_scaling_gives_every_series_of_a_panel_unit_scale_as_it_is_served(tmp_path: Path) -> None:
    """Under one task-wide scaling a rate in percent beside a series in thousands reached the network as a flat
    line shifted by the large one's mean step (MASE 315 on bench/panels.py's consumption + interest panel)."""
    t = np.arange(120, dtype=np.float64)
    rng = np.random.default_rng(0)
    panel = {"gdp": 5000 + 40 * t + rng.normal(0, 30, 120), "rate": 5 + np.sin(t / 6) + rng.normal(0, 0.1, 120)}
    splits = ["train"] * 90 + ["validation"] * 15 + ["holdout"] * 15
    pd.DataFrame({"series_id": np.repeat(list(panel), 120), "split": splits * 2,
                  "y": np.concatenate(list(panel.values()))}).to_parquet(tmp_path / "series.parquet")
    for scaling in ("global", "series"):
        SeriesTransform.fit([v[:90, None] for v in panel.values()], ["y"], True, scaling=scaling,
                            series_ids=list(panel)).save(tmp_path / f"{scaling}.json")
    _, flat = load_segments(tmp_path, "global.json")
    assert np.std(flat[1][0][:89]) < 0.05  # the rate, task-wide: a flat line
    transform, segments = load_segments(tmp_path, "series.json")
    for (z, n_train, _), values in zip(segments, panel.values()):
        np.testing.assert_allclose(z[:n_train].mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(z[:n_train].std(axis=0), 1.0, atol=1e-4)
        # the validation segment's first origin, served from the training rows: the same inputs training read
        np.testing.assert_allclose(transform.to_inputs(values[:90, None]), z[:n_train], rtol=1e-5, atol=1e-5)
        restored = transform.to_target(z[n_train:n_train + 15, 0], history=values[:90])
        np.testing.assert_allclose(restored, values[90:105], rtol=1e-5)


def test_a_transform_json_written_before_the_options_loads_as_it_forecast(tmp_path: Path) -> None:
    """tests/fixtures/legacy-layout-models.tar.gz's transform.json: four keys, first differences."""
    (tmp_path / "transform.json").write_text(
        '{"columns": ["co2"], "difference": true, "mean": [0.03], "std": [0.3]}')
    transform = SeriesTransform.load(tmp_path / "transform.json")
    assert (transform.target_transform, transform.seasonal_difference, transform.smoothing,
            transform.scaling, transform.lost_steps) == ("none", False, "none", "global", 1)
    np.testing.assert_allclose(transform.to_target(np.array([1.0, -1.0]), history=np.array([300.0, 310.0])),
                               [310.33, 310.06])  # 310 + cumsum([1, -1] * 0.3 + 0.03)


@pytest.mark.parametrize("kind", ["log", "boxcox"])
def test_log_and_boxcox_refuse_a_non_positive_target_naming_the_series_and_value(kind: str) -> None:
    values = multiplicative_series()
    values[30, 0] = 0.0
    with pytest.raises(TransformError, match=rf"prepare.transform: {kind} needs a positive target, but series "
                                             r"'north' has 0 at training step 31"):
        SeriesTransform.fit([values[:80]], ["y", "x"], True, target_transform=kind, series_ids=["north"])


def test_seasonal_naive_repeats_the_last_season() -> None:
    history = np.arange(10.0)
    np.testing.assert_array_equal(seasonal_naive(history, 5, season=3), [7.0, 8.0, 9.0, 7.0, 8.0])


def test_training_windows_pair_each_step_with_the_next_target() -> None:
    z = np.arange(12.0).reshape(6, 2)
    x, y = training_windows(z, window=3, stride=2)
    assert x.shape == (2, 3, 2) and y.shape == (2, 3, 1)
    np.testing.assert_array_equal(y[0, :, 0], z[1:4, 0])
    np.testing.assert_array_equal(x[-1], z[2:5])  # the last window reaches the last target


def test_horizon_windows_follow_their_context() -> None:
    z = np.arange(10.0)[:, None]
    x, y = horizon_windows(z, window=4, horizon=2, stride=3)
    np.testing.assert_array_equal(x[1, :, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(y[1, :, 0], [7, 8])


def test_demo_ingest_reproduces_the_committed_data_version(tmp_path: Path) -> None:
    """On a fresh clone, `make run` must leave data.dvc unchanged: the demo bytes are deterministic."""
    params = load_params(REPO)
    root = make_project(tmp_path / "fresh", yaml.safe_load((REPO / "params.yaml").read_text())["tasks"])
    for task in params.tasks:
        ingest(task, params, root)
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["md5"]
    assert versioning.track(root).md5 == committed
