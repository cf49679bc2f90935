"""The served TF-IDF + logistic regression (serving/linear_text.py) answers as the scikit-learn pipeline it was
fitted as: the same log-probabilities on real tweets, with three labels (softmax) and two (sigmoid), for texts
with no known term among them; a pipeline it cannot reproduce is refused."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipelines.data.sources import read_source
from pipelines.evaluate.baselines import fit_tfidf_logreg
from pipelines.serving.linear_text import LinearTextScorer

UNKNOWN = ["zqxjv wvkkq", "qqqzzz", "xjqv zzkq wvvq"]  # no term of the vocabulary


@pytest.fixture(scope="module")
def tweets() -> tuple[list[str], list[str]]:
    frame = read_source("builtin:tweets", None).sample(3000, random_state=0)
    return frame["text"].tolist(), frame["label"].tolist()


@pytest.mark.parametrize("labels", [("negative", "neutral", "positive"), ("negative", "positive")],
                         ids=["three-labels", "two-labels"])
def test_scores_as_the_pipeline(tweets: tuple[list[str], list[str]], labels: tuple[str, ...]) -> None:
    texts, tags = tweets
    keep = [i for i, t in enumerate(tags) if t in labels]
    texts, tags = [texts[i] for i in keep], [tags[i] for i in keep]
    pipeline = fit_tfidf_logreg(texts[:2000], tags[:2000], seed=0)
    scorer = LinearTextScorer(pipeline)
    unseen = texts[2000:] + UNKNOWN

    assert list(scorer.classes_) == list(pipeline.classes_)
    expected = pipeline.predict_log_proba(unseen)  # [N, C]
    got = scorer.predict_log_proba(unseen)  # [N, C]
    assert got.shape == expected.shape == (len(unseen), len(labels))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scorer.predict_proba(unseen), pipeline.predict_proba(unseen), rtol=0, atol=1e-12)
    # one text at a time (a one-text request), an unknown one first in its batch: the same rows
    for index in (0, 1, len(unseen) - 1):
        np.testing.assert_allclose(scorer.predict_log_proba([unseen[index]]), expected[[index]], rtol=0, atol=1e-9)
    np.testing.assert_allclose(scorer.predict_log_proba([UNKNOWN[0], *unseen[:3]])[1:], expected[:3], rtol=0, atol=1e-9)
    # no known term: the intercept alone decides, as it does for scikit-learn's all-zero row
    assert np.ptp(got[-len(UNKNOWN):], axis=0).max() < 1e-12


def test_raw_term_counts_score_as_the_pipeline(tweets: tuple[list[str], list[str]]) -> None:
    """sublinear_tf off (not the baseline's setting, but one the scorer accepts): raw counts times idf."""
    texts, tags = tweets
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)).fit(texts[:1000], tags[:1000])
    scorer, unseen = LinearTextScorer(pipeline), texts[1000:1200]
    np.testing.assert_allclose(scorer.predict_log_proba(unseen), pipeline.predict_log_proba(unseen), rtol=0, atol=1e-9)
    np.testing.assert_allclose(scorer.predict_log_proba(unseen[:1]), pipeline.predict_log_proba(unseen[:1]), rtol=0,
                               atol=1e-9)


def test_refuses_a_pipeline_it_cannot_reproduce(tweets: tuple[list[str], list[str]]) -> None:
    texts, tags = tweets
    binary = make_pipeline(TfidfVectorizer(binary=True), LogisticRegression()).fit(texts[:500], tags[:500])
    with pytest.raises(ValueError, match="l2 norm, idf, counts"):
        LinearTextScorer(binary)
    with pytest.raises(TypeError, match="TfidfVectorizer \\+ LogisticRegression"):
        LinearTextScorer([LogisticRegression(), LogisticRegression()])
