"""Classification metrics shared by every text model, so a baseline and a recurrent model are scored
by one definition and their numbers can be compared (and gated on) directly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: list[str]) -> dict:
    """accuracy, macro_f1, precision_<label> and recall_<label> per label, and confusion_matrix.

    Everything is computed over the declared `labels`, in that order (confusion_matrix rows are the
    true label, columns the predicted one), so a class that never occurs still has its keys, scored
    0 rather than warned about. Macro F1 is the headline because the classes are imbalanced.
    """
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(f"need as many predictions as true labels, at least one: got {len(y_true)} true, "
                         f"{len(y_pred)} predicted")
    unknown = sorted({str(v) for v in np.concatenate([y_true, y_pred])} - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the declared labels {labels}")
    precision = precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    for name, p, r in zip(labels, precision, recall):
        metrics[f"precision_{name}"] = float(p)
        metrics[f"recall_{name}"] = float(r)
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return metrics
