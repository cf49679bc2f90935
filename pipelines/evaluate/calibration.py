"""Calibrated class probabilities: temperature scaling, expected calibration error, reliability.

Why: a score of 0.96 should be right 96 % of the time. Networks trained with cross-entropy (and
a regularised logistic regression) are often over- or under-confident. Temperature scaling
(Guo et al., 2017) divides every log-probability by one scalar T fitted on the validation split by
minimising the negative log-likelihood: it changes no predicted label (argmax is unchanged for
T > 0), so accuracy and macro-F1 stay as they are, and one parameter cannot overfit the validation
split. It applies to any model that outputs probabilities, so the TF-IDF baseline is calibrated by
the same code when it is the one served.

ECE: the mean over 15 equal-width confidence bins of |accuracy - confidence|, weighted by the bin's
share of the texts (the definition of Guo et al. and Naeini et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEMPERATURE = "temperature"
ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)  # log-T is searched in this range; outside it a model is broken, not miscalibrated
EPS = 1e-12


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1.0))  # [N, C]


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    """log softmax over the last axis in numpy: the served pyfunc applies it without scipy installed."""
    shifted = scores - scores.max(axis=-1, keepdims=True)  # [N, C]
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [N, C]


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities [N, C] rescaled by `temperature`: softmax(log p / T) (T > 1 softens)."""
    return np.exp(_log_softmax(_log_probabilities(probabilities) / temperature))  # [N, C]


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    scaled = _log_softmax(_log_probabilities(probabilities) / temperature)  # [N, C]
    return float(-np.mean(scaled[np.arange(len(labels)), labels]))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the NLL of `labels` [N] (class indices) under probabilities [N, C]."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.int64)  # [N]
    low, high = np.log(TEMPERATURE_BOUNDS)
    found = minimize_scalar(lambda log_t: negative_log_likelihood(probabilities, labels, float(np.exp(log_t))),
                            bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: mean confidence, accuracy and count (empty bins NaN / 0)."""

    confidence: np.ndarray  # [bins]
    accuracy: np.ndarray    # [bins]
    counts: np.ndarray      # [bins]

    @property
    def ece(self) -> float:
        filled = self.counts > 0
        weights = self.counts[filled] / self.counts.sum()
        return float(np.sum(weights * np.abs(self.accuracy[filled] - self.confidence[filled])))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """The top-label reliability table of probabilities [N, C] against class indices [N]."""
    probabilities = np.asarray(probabilities, dtype=np.float64)  # [N, C]
    confidence = probabilities.max(axis=1)  # [N]
    correct = (probabilities.argmax(axis=1) == np.asarray(labels)).astype(np.float64)  # [N]
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # [N], bin i holds (i/b, (i+1)/b]
    counts = np.bincount(which, minlength=bins).astype(np.float64)  # [bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / counts  # [bins]
        accuracy = np.bincount(which, correct, bins) / counts  # [bins]
    return Reliability(mean_confidence, accuracy, counts)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    return reliability(probabilities, labels, bins).ece


def temperature_calibration(validation: tuple[np.ndarray, np.ndarray], holdout: tuple[np.ndarray, np.ndarray]
                            ) -> tuple[dict, dict[str, float], tuple[Reliability, Reliability]]:
    """Fit T on the validation (probabilities, labels); report ECE on the holdout before and after.

    Returns the payload the pyfunc reads (calibration.json), the metrics to log, and the holdout's
    reliability before and after for the diagram."""
    temperature = fit_temperature(*validation)
    probabilities, labels = holdout
    before = reliability(probabilities, labels)
    after = reliability(apply_temperature(probabilities, temperature), labels)
    payload = {"method": TEMPERATURE, "temperature": temperature}
    metrics = {"temperature": temperature, "ece_uncalibrated": before.ece, "ece": after.ece,
               "validation_ece_uncalibrated": expected_calibration_error(*validation),
               "validation_ece": expected_calibration_error(apply_temperature(validation[0], temperature),
                                                            validation[1])}
    return payload, metrics, (before, after)
