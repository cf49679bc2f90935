"""Conformal prediction intervals, their metrics, the coverage floor of the gate and the summary's column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.evaluate.intervals import (
    MAX_LEVELS,
    ConformalIntervals,
    LevelError,
    calibration_payload,
    history_scale,
    interval_metrics,
    parse_levels,
    residual_rows,
    scale_uncertainty,
)
from pipelines.registry import coverage_check
from pipelines.summary import task_summary

SEASON, SIGMA, HORIZON = 12, 0.5, 6


def _signal(t: np.ndarray) -> np.ndarray:
    return 10.0 + 2.0 * np.sin(2 * np.pi * t / SEASON)  # [T]


def _triples(values: np.ndarray, origins: range) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(history, forecast, actual) from each origin, the forecast being the known noise-free signal."""
    return [(values[:o], _signal(np.arange(o, o + HORIZON)), values[o:o + HORIZON]) for o in origins]


def test_the_80_percent_interval_covers_80_percent_of_a_long_holdout_under_gaussian_noise() -> None:
    rng = np.random.default_rng(0)
    steps = 3000
    values = _signal(np.arange(steps)) + rng.normal(0.0, SIGMA, steps)  # [T]
    calibration = ConformalIntervals(calibration_payload(residual_rows(_triples(values, range(100, 500)), HORIZON)))

    actual, lower, upper = [], {80.0: [], 95.0: []}, {80.0: [], 95.0: []}
    for history, forecast, truth in _triples(values, range(600, steps - HORIZON, 3)):
        bands = calibration.bounds(forecast, history, [80.0, 95.0])
        actual.append(truth)
        for level in (80.0, 95.0):
            lower[level].append(bands[f"{level:g}"]["lower"])
            upper[level].append(bands[f"{level:g}"]["upper"])
    actual = np.concatenate(actual)

    coverage = {level: interval_metrics(actual, np.concatenate(lower[level]), np.concatenate(upper[level]), level)
                for level in (80.0, 95.0)}
    assert abs(coverage[80.0]["coverage_80"] - 0.80) <= 0.05
    assert abs(coverage[95.0]["coverage_95"] - 0.95) <= 0.03
    assert coverage[95.0]["width_95"] > coverage[80.0]["width_80"]


def test_intervals_hold_the_forecast_widen_with_the_level_and_never_narrow_with_the_lead_time() -> None:
    rng = np.random.default_rng(1)
    residuals = np.abs(rng.normal(size=(50, HORIZON))) * np.arange(1, HORIZON + 1)  # [N, H]
    calibration = ConformalIntervals(calibration_payload(residuals))
    forecast, history = np.linspace(5.0, 6.0, 20), np.arange(40.0)  # [H'], [T]

    bands = calibration.bounds(forecast, history, [50.0, 80.0, 95.0])

    for key in bands:
        low, high = np.asarray(bands[key]["lower"]), np.asarray(bands[key]["upper"])
        assert len(low) == len(high) == len(forecast)
        assert (low <= forecast).all() and (forecast <= high).all()
        assert (np.diff(high - low) >= 0).all()  # past the 6 calibrated steps too
    width = {key: np.asarray(b["upper"]) - np.asarray(b["lower"]) for key, b in bands.items()}
    assert (width["50"] < width["80"]).all() and (width["80"] < width["95"]).all()


def test_one_glitch_in_the_history_barely_widens_the_intervals() -> None:
    """The scale was the plain mean absolute change: one 9999 among 200 values near 50 made the 80 % interval
    [48.3, 51.2] become [-12.0, 110.5] while the forecast hardly moved."""
    rng = np.random.default_rng(0)
    clean = 50.0 + rng.normal(0.0, 0.5, 200)  # [T]
    glitch = clean.copy()
    glitch[100] = 9999.0
    assert history_scale(glitch) < 1.3 * history_scale(clean)
    assert history_scale(clean) == pytest.approx(np.mean(np.abs(np.diff(clean))), rel=0.1)
    assert history_scale(np.full(50, 3.0)) == 1.0  # flat: the unit is 1
    intermittent = np.zeros(200)  # [T]: spikes on fewer than 5 % of the steps keep their mean
    intermittent[::50] = 10.0
    assert history_scale(intermittent) == pytest.approx(np.mean(np.abs(np.diff(intermittent))))


def test_too_few_residuals_for_a_level_give_the_widest_seen_rather_than_a_narrow_interval() -> None:
    residuals = np.array([[1.0], [2.0], [3.0]])  # [N=3, H=1]: (3 + 1) * 0.95 > 3

    half = ConformalIntervals(calibration_payload(residuals)).half_widths(95.0, 1)

    # the widest seen, widened for an error scale known from only 3 origins
    assert half.tolist() == pytest.approx([3.0 * scale_uncertainty(95.0, 3)])


def test_few_origins_widen_the_interval_most_at_high_levels_and_many_origins_do_not() -> None:
    assert scale_uncertainty(95.0, 3) > scale_uncertainty(80.0, 3) > scale_uncertainty(80.0, 30) > 1.0
    assert scale_uncertainty(95.0, 5000) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("value, fragment", [
    ([80, 100], "strictly between 0 and 100"), ([0], "strictly between 0 and 100"), (["80"], "list of numbers"),
    ([True], "list of numbers"), ([float("nan")], "strictly between"),
    ([float("inf")], "between 0 and 100, got a number too large to show"),
    (list(range(10, 10 + 10 * (MAX_LEVELS + 1), 10)), f"at most {MAX_LEVELS}")])
def test_bad_levels_are_refused_naming_params_level(value: object, fragment: str) -> None:
    with pytest.raises(LevelError, match="params.level") as caught:
        parse_levels(value)
    assert fragment in str(caught.value)


def test_levels_are_sorted_and_unique_and_a_single_number_is_one_level() -> None:
    assert parse_levels([95, 80.0, 80]) == [80.0, 95.0]
    assert parse_levels(90) == [90.0]


def test_winkler_score_adds_the_scaled_miss_to_the_width() -> None:
    actual, lower, upper = np.array([0.0, 5.0, -2.0]), np.array([-1.0, -1.0, -1.0]), np.array([1.0, 1.0, 1.0])

    metrics = interval_metrics(actual, lower, upper, 80.0)

    # alpha = 0.2: misses of 4 (above) and 1 (below) cost 2 / 0.2 = 10 per unit
    assert metrics["coverage_80"] == pytest.approx(1 / 3)
    assert metrics["width_80"] == pytest.approx(2.0)
    assert metrics["winkler_80"] == pytest.approx((2.0 + 42.0 + 12.0) / 3)


def test_an_exact_forecast_s_zero_width_interval_covers_actuals_off_by_rounding_only() -> None:
    """A noise-free seasonal series: seasonal naive is exact up to float rounding, and was refused by the
    coverage floor (8 % coverage) for it."""
    actual = np.sin(np.linspace(0, 20, 50)) * 1e3  # [50]
    rounded = actual + np.spacing(actual) * 3  # [50]
    assert interval_metrics(actual, rounded, rounded, 80.0)["coverage_80"] == 1.0
    assert interval_metrics(actual, rounded + 1e-3, rounded + 1e-3, 80.0)["coverage_80"] == 0.0


def test_the_gate_refuses_a_forecast_whose_80_percent_interval_covers_too_little() -> None:
    refused, reason = coverage_check({"mae": 1.0, "coverage_80": 0.55}, 0.7)
    passed, _ = coverage_check({"mae": 1.0, "coverage_80": 0.78}, 0.7)
    text, _ = coverage_check({"macro_f1": 0.7}, 0.7)

    assert not refused and "55.0%" in reason and "promote.coverage_floor" in reason
    assert passed and text


def test_the_summary_marks_the_chosen_baseline_and_shows_coverage(tmp_path: Path) -> None:
    metrics = tmp_path / "forecast.json"
    metrics.write_text(json.dumps({
        "selection": "validation_mae", "best_variant": "lstm", "chosen": "auto_ets",
        "variants": {"lstm": {"mae": 1.2, "coverage_80": 0.62}},
        "baselines": {"auto_ets": {"mae": 1.0, "coverage_80": 0.81}}}))

    lines = task_summary(metrics, "forecast", None, "mae", "minimize")

    assert lines[1].split() == ["candidate", "mae", "cover", "80%"]
    assert lines[2].split() == ["lstm", "1.2000", "62.0%"]
    assert lines[3].split() == ["auto_ets", "1.0000", "81.0%", "baseline,", "chosen"]
