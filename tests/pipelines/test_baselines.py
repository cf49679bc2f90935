"""The TF-IDF baseline learns a separable task, and every text model reports the same metric keys."""

from __future__ import annotations

import pytest

from pipelines.evaluate.baselines import fit_tfidf_logreg
from pipelines.evaluate.metrics import classification_metrics

LABELS = ["negative", "neutral", "positive"]
WORDS = {"negative": ["awful", "terrible", "hate"], "neutral": ["flight", "today", "gate"],
         "positive": ["great", "love", "amazing"]}


def _scored(train_texts: list[str], train_labels: list[str], eval_texts: list[str], eval_labels: list[str]) -> dict:
    """The baseline fitted on the training texts, scored on the eval texts as evaluate scores every candidate."""
    predicted = fit_tfidf_logreg(train_texts, train_labels, seed=0).predict(eval_texts)
    return classification_metrics(eval_labels, predicted.tolist(), LABELS)


def _dataset(n: int, offset: int) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for i in range(n):
        label = LABELS[i % 3] if i % 5 else "negative"  # negative is the majority class
        words = WORDS[label]
        texts.append(f"{words[(i + offset) % 3]} {words[(i + offset + 1) % 3]} trip number {i + offset}")
        labels.append(label)
    return texts, labels


def test_baseline_beats_the_majority_class_on_separable_data() -> None:
    train_texts, train_labels = _dataset(120, 0)
    eval_texts, eval_labels = _dataset(60, 1000)
    majority = max(set(eval_labels), key=eval_labels.count)
    metrics = _scored(train_texts, train_labels, eval_texts, eval_labels)
    assert metrics["accuracy"] > eval_labels.count(majority) / len(eval_labels)
    assert metrics["macro_f1"] > 0.9


def test_baseline_reports_every_metric_key() -> None:
    texts, labels = _dataset(60, 0)
    metrics = _scored(texts, labels, texts, labels)
    expected = {"accuracy", "macro_f1", "confusion_matrix"} | {f"{kind}_{label}" for kind in ("precision", "recall")
                                                               for label in LABELS}
    assert set(metrics) == expected


def test_confusion_matrix_rows_are_true_labels_in_declared_order() -> None:
    metrics = classification_metrics(["positive", "negative", "negative"], ["negative", "negative", "positive"],
                                      LABELS)
    assert metrics["confusion_matrix"] == [[1, 0, 1], [0, 0, 0], [1, 0, 0]]
    assert metrics["recall_negative"] == pytest.approx(0.5)
    assert metrics["precision_neutral"] == 0.0


def test_labels_outside_the_declared_set_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\['happy'\] are not among the declared labels"):
        classification_metrics(["positive"], ["happy"], LABELS)
