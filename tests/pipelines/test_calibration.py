"""Temperature scaling and the expected calibration error."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluate.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability,
    temperature_calibration,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # [N, C]
    return shifted / shifted.sum(axis=1, keepdims=True)  # [N, C]


def _overconfident(n: int, seed: int, sharpen: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true class probabilities, and a model that reports those logits `sharpen` times."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, 3))  # [N, C]
    labels = np.array([rng.choice(3, p=p) for p in _softmax(logits)])  # [N]
    return _softmax(sharpen * logits), labels


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model_and_keeps_its_labels() -> None:
    validation, holdout = _overconfident(4000, 0), _overconfident(4000, 1)

    payload, metrics, (before, after) = temperature_calibration(validation, holdout)

    assert payload["temperature"] == pytest.approx(3.0, rel=0.15)  # it undoes the sharpening
    assert metrics["ece_uncalibrated"] > 0.1
    assert metrics["ece"] < 0.03 < metrics["ece_uncalibrated"]
    assert before.ece == pytest.approx(metrics["ece_uncalibrated"]) and after.ece == pytest.approx(metrics["ece"])
    calibrated = apply_temperature(holdout[0], payload["temperature"])
    assert (calibrated.argmax(axis=1) == holdout[0].argmax(axis=1)).all()
    assert np.allclose(calibrated.sum(axis=1), 1.0)


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    probabilities, labels = _overconfident(4000, 2, sharpen=1.0)

    assert fit_temperature(probabilities, labels) == pytest.approx(1.0, abs=0.1)


def test_ece_is_the_count_weighted_gap_between_accuracy_and_confidence() -> None:
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])  # [4, 2]
    labels = np.array([0, 1, 0, 0])  # accuracy 0.5 at confidence 0.9, 1.0 at 0.6

    table = reliability(probabilities, labels, bins=10)

    assert table.counts.sum() == 4 and table.counts[8] == 2 and table.counts[5] == 2
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_what_was_fitted_on_validation_is_not_logged_under_a_holdout_name() -> None:
    """Runs logged `holdout_temperature` and `holdout_validation_ece`: validation figures under holdout names."""
    from pipelines.evaluate.stage import _logged_name

    assert [_logged_name(k) for k in ("ece", "temperature", "validation_ece", "baseline_validation_ece_uncalibrated",
                                      "baseline_ece", "macro_f1")] == [
        "holdout_ece", "temperature", "validation_ece", "baseline_validation_ece_uncalibrated", "holdout_baseline_ece",
        "holdout_macro_f1"]
