"""TF-IDF + logistic regression scored from its fitted parameters: the served baseline and `base` variants.

scikit-learn fits the model (pipelines/evaluate/baselines.py) and stays the reference; serving scores with
what the fit learnt (vocabulary, idf, coefficients), because scikit-learn validates its input at every
step of every call (check_array, finiteness, array-API dispatch): 0.35 ms for one text, as long as the
GRU's whole forward, for a sparse dot product of a few dozen terms. Here one text takes 0.05 ms and a
batch of 1,000 about as long as scikit-learn's. The arithmetic is scikit-learn's, step for step (sublinear
tf, idf, L2 norm, the decision function, a sigmoid for two classes and a softmax for more; their logs taken
stably), and tests compare the two on a corpus.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import log_expit, log_softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression


class LinearTextScorer:
    """`predict_log_proba` / `predict_proba` of a fitted Pipeline(TfidfVectorizer, LogisticRegression[CV]),
    with the pipeline's `classes_`: a drop-in for the pipeline at serving time."""

    def __init__(self, pipeline: Any) -> None:
        vectorizer, classifier = pipeline[0], pipeline[-1]
        if not isinstance(vectorizer, TfidfVectorizer) or not isinstance(classifier, LogisticRegression):
            raise TypeError(f"expected TfidfVectorizer + LogisticRegression, got {type(vectorizer).__name__} + "
                            f"{type(classifier).__name__}")
        if vectorizer.norm != "l2" or not vectorizer.use_idf or vectorizer.binary or len(pipeline) != 2:
            raise ValueError("only the baseline's TF-IDF setting is scored here: l2 norm, idf, counts, two steps")
        self.analyze = vectorizer.build_analyzer()
        self.vocabulary = vectorizer.vocabulary_
        self.sublinear = vectorizer.sublinear_tf
        self.idf = vectorizer.idf_  # [V]
        self.coef = np.ascontiguousarray(classifier.coef_.T)  # [V, K]: K = 1 for two classes, else C
        self.intercept = classifier.intercept_  # [K]
        self.classes_ = classifier.classes_

    @classmethod
    def load(cls, path: Path) -> LinearTextScorer:
        """The scorer of a pickled pipeline (a served model's artifact)."""
        return cls(pickle.loads(path.read_bytes()))

    def _terms(self, text: str) -> list[int]:
        """The vocabulary ids of `text`'s n-grams, repeats kept; n-grams the fit did not keep are dropped."""
        return [i for i in map(self.vocabulary.get, self.analyze(text)) if i is not None]

    def _weights(self, term: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """TF-IDF weights [T] of terms seen `counts` times, before the L2 norm."""
        weights = np.log(counts) + 1.0 if self.sublinear else counts.astype(np.float64)  # [T]
        return weights * self.idf[term]  # [T]

    def _decision(self, texts: Sequence[str]) -> np.ndarray:
        """The decision function [B, K]. One text, the usual request, takes the short path: each array
        operation costs microseconds whatever its size, and the batch path makes three times as many."""
        return self._decision_one(texts[0])[None] if len(texts) == 1 else self._decision_batch(texts)

    def _decision_one(self, text: str) -> np.ndarray:
        counts = Counter(self._terms(text))
        if not counts:
            return self.intercept  # [K]: an all-zero row, as scikit-learn scores it
        term = np.fromiter(counts.keys(), np.int64, len(counts))  # [T]
        weights = self._weights(term, np.fromiter(counts.values(), np.float64, len(counts)))  # [T]
        weights /= np.sqrt(weights @ weights)
        return weights @ self.coef[term] + self.intercept  # [K]

    def _decision_batch(self, texts: Sequence[str]) -> np.ndarray:
        """A batch in a fixed number of array operations: one sort of every (text, term) pair, then sums per
        text (the one-text path in a loop costs more than scikit-learn from about 100 texts)."""
        rows: list[int] = []
        terms: list[int] = []
        for row, text in enumerate(texts):
            found = self._terms(text)
            terms += found
            rows += [row] * len(found)
        width = len(self.idf)
        pairs, counts = np.unique(np.asarray(rows, np.int64) * width + np.asarray(terms, np.int64),
                                  return_counts=True)  # [P] distinct (text, term), sorted; [P]
        row, term = np.divmod(pairs, width)  # [P], [P]
        weights = self._weights(term, counts)  # [P]
        weights /= np.sqrt(np.bincount(row, weights=weights * weights, minlength=len(texts)))[row]  # L2 per text
        parts = weights[:, None] * self.coef[term]  # [P, K]
        # a text with no known term has no pair: the intercept alone, as scikit-learn scores an all-zero row
        return self.intercept + np.column_stack([np.bincount(row, weights=parts[:, k], minlength=len(texts))
                                                 for k in range(parts.shape[1])])  # [B, K]

    def predict_log_proba(self, texts: Sequence[str]) -> np.ndarray:
        decision = self._decision(texts)  # [B, K]
        if decision.shape[1] == 1:  # two classes: the sigmoid of one decision, as scikit-learn's
            return log_expit(np.column_stack([-decision[:, 0], decision[:, 0]]))  # [B, 2]
        return log_softmax(decision, axis=1)  # [B, C]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return np.exp(self.predict_log_proba(texts))  # [B, C]
