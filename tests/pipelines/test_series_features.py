"""Series transforms: fitted on train, invertible, and the baseline and windows line up in time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from pipelines.config import load_params
from pipelines.data import versioning
from pipelines.data.ingest import ingest
from pipelines.prepare.features import SeriesTransform, horizon_windows, seasonal_naive, training_windows
from tests.conftest import REPO, make_project


def test_differenced_forecast_returns_to_raw_units() -> None:
    values = np.cumsum(np.arange(1.0, 21.0))[:, None]  # [T, 1], a trend
    transform = SeriesTransform.fit([values[:15]], ["y"], difference=True)
    z = transform.to_inputs(values)
    assert z.shape == (19, 1)
    restored = transform.to_target(z[15:, 0], last_value=float(values[15, 0]))
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
