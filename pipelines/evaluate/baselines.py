"""Non-recurrent baselines: the score a recurrent text model has to beat to be worth its cost."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from pipelines.evaluate.metrics import classification_metrics
from pipelines.prepare.features import Tokenizer


def tfidf_logreg_baseline(train_texts: Sequence[str], train_labels: Sequence[str], eval_texts: Sequence[str],
                          eval_labels: Sequence[str], labels: list[str], seed: int) -> dict:
    """TF-IDF of word 1-2 grams + logistic regression, fitted on train, scored on the eval texts.

    It tokenizes with the recurrent model's Tokenizer, so a gap between the two is the model's and
    not the preprocessing's. Word n-grams seen in fewer than 2 training texts are dropped and term
    counts are log-scaled (sublinear_tf), the usual strong setting for short texts. BLAS runs on one
    thread (LogisticRegression's own n_jobs has no effect since scikit-learn 1.8): on a small machine
    shared with other work, more threads stall rather than speed up.
    """
    model = make_pipeline(
        TfidfVectorizer(tokenizer=Tokenizer(), lowercase=False, token_pattern=None, ngram_range=(1, 2),
                        min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=1000, random_state=seed),
    )
    with threadpool_limits(limits=1):
        model.fit(list(train_texts), list(train_labels))
        predicted = model.predict(list(eval_texts))
    return classification_metrics(list(eval_labels), predicted.tolist(), labels)
