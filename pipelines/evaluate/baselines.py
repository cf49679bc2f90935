"""Non-recurrent baselines: the scores a recurrent model has to beat to be worth its cost.

Series: statsforecast's local models (naive, seasonal naive, AutoETS, AutoTheta), refitted on
each request's history, so a baseline forecasts from the same origins and the same histories as a
recurrent model and can be served behind the same contract. AutoARIMA is left out: with weekly
seasons (52) one fit takes minutes on 2 cores, which `make run` cannot afford. statsforecast's
ETS has no seasonal component above a season of 24 (it falls back to a non-seasonal model); Theta
deseasonalises any season by classical decomposition.

Text: TF-IDF of word 1-2 grams + logistic regression, C chosen by cross-validation on the training
split, the usual strong setting for short texts.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Callable, get_args

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from threadpoolctl import threadpool_limits

from pipelines.config import StatsforecastBaseline
from pipelines.prepare.features import TWEET_TOKENS, seasonal_naive

STATISTICAL = ("naive", "seasonal_naive", *get_args(StatsforecastBaseline))
C_GRID = (0.25, 1.0, 4.0)  # logistic regression's inverse regularisation, chosen by 3-fold CV
CV_FOLDS = 3
BASE_FOLDS = 5  # out-of-fold log-probabilities of the training texts for `base: tfidf_logreg` variants


def macro_f1_scorer(estimator: Pipeline | LogisticRegressionCV, features: object, labels: Sequence[str]) -> float:
    """Macro-F1 of `estimator` on (features, labels): LogisticRegressionCV's `scoring`. A plain callable,
    because sklearn 1.9 rebuilds its named scorers ("f1_macro") with a `pos_label` that breaks on two
    string labels (TypeError: multiple values for keyword argument 'pos_label')."""
    return float(f1_score(labels, estimator.predict(features), average="macro"))


def _statsforecast_model(method: str, season: int) -> Callable[[np.ndarray, int], np.ndarray]:
    from statsforecast.models import AutoETS, AutoTheta

    model = {"auto_ets": AutoETS, "auto_theta": AutoTheta}[method](season_length=season)
    return lambda y, h: model.forecast(y=y, h=h)["mean"]


def statistical_forecast(method: str, history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """A forecast [H] of `history` [T] by one of STATISTICAL, fitted on that history alone.

    A model that cannot fit a history (too short for its season, constant values) falls back to
    seasonal naive for that request rather than failing it: the request is valid, the model is not
    applicable to it.
    """
    y = np.asarray(history, dtype=np.float64)  # [T]
    if method == "naive":
        return np.repeat(y[-1], horizon)  # [H]
    if method == "seasonal_naive" or len(y) < 2 * season + 2:
        return seasonal_naive(y, horizon, season)  # [H]
    if method not in STATISTICAL:
        raise ValueError(f"unknown statistical baseline {method!r}; known: {list(STATISTICAL)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            forecast = np.asarray(_statsforecast_model(method, season)(y, horizon), dtype=np.float64)  # [H]
    except (ValueError, ZeroDivisionError, np.linalg.LinAlgError):
        return seasonal_naive(y, horizon, season)
    return forecast if np.isfinite(forecast).all() else seasonal_naive(y, horizon, season)


def fit_tfidf_logreg(train_texts: Sequence[str], train_labels: Sequence[str], seed: int) -> Pipeline:
    """TF-IDF of word 1-2 grams + logistic regression, C chosen by cross-validation on the training texts.

    It tokenizes with the recurrent model's Tokenizer, so a gap between the two is the model's and
    not the preprocessing's. Word n-grams seen in fewer than 2 training texts are dropped and term
    counts are log-scaled (sublinear_tf). The vectorizer is fitted once on the whole training split
    and C is chosen on its folds (stratified, scored by macro-F1, the text gate's metric). BLAS runs
    on one thread: on a small machine shared with other work, more threads stall rather than speed up.
    """
    model = make_pipeline(
        TfidfVectorizer(tokenizer=TWEET_TOKENS, lowercase=False, token_pattern=None, ngram_range=(1, 2),
                        min_df=2, sublinear_tf=True),
        # l1_ratios and use_legacy_attributes as scikit-learn 1.10 will default them (the same fit; no FutureWarning)
        LogisticRegressionCV(Cs=list(C_GRID), cv=CV_FOLDS, scoring=macro_f1_scorer, max_iter=1000, random_state=seed,
                             l1_ratios=(0.0,), use_legacy_attributes=False),
    )
    with threadpool_limits(limits=1), _rare_label_warnings_off():
        model.fit(list(train_texts), list(train_labels))
    return model


@contextlib.contextmanager
def _rare_label_warnings_off() -> Iterator[None]:
    """Without scikit-learn's warnings for a label rarer than the folds, which advise what a user of this
    pipeline cannot do ("use a cross-validation technique resulting in properly stratified folds"): prepare
    says it in its own words (TextKind._prepare_base) and tfidf_logreg_log_proba mends the padding."""
    with warnings.catch_warnings():
        for message in ("The least populated class", "Number of classes in training fold"):
            warnings.filterwarnings("ignore", message=message)
        yield


def chosen_c(model: Pipeline) -> float:
    """The C cross-validation chose for `fit_tfidf_logreg`'s model (a float; an array of it in pipelines
    fitted before scikit-learn's new attributes)."""
    return float(np.ravel(model[-1].C_)[0])


def label_order(model: Pipeline | LogisticRegressionCV, labels: Sequence[str]) -> list[int]:
    """The columns of `model`'s class probabilities in `labels` order (scikit-learn sorts its classes)."""
    classes = list(model.classes_)
    return [classes.index(label) for label in labels]


def tfidf_logreg_log_proba(texts: Sequence[str], labels: Sequence[str], train: np.ndarray, classes: list[str],
                           seed: int) -> tuple[Pipeline, np.ndarray]:
    """`fit_tfidf_logreg` on the `train` rows, and its log-probabilities [N, C] for every text (columns in
    `classes` order), the base a `base: tfidf_logreg` variant corrects.

    A training text's row comes from a model fitted on the other folds (BASE_FOLDS, the chosen C, the
    vectorizer refitted per fold), not from the final one: that one has seen the text, so its training
    rows would be near-certain and the network would learn to trust the base more than it earns on
    texts it has not seen. Validation and holdout rows come from the final model, as at serving.
    """
    texts, labels = np.asarray(texts, dtype=object), np.asarray(labels, dtype=object)
    pipeline = fit_tfidf_logreg(texts[train].tolist(), labels[train].tolist(), seed)
    order = label_order(pipeline, classes)
    fold_model = clone(pipeline)
    fold_model.steps[-1] = ("logisticregression", LogisticRegression(C=chosen_c(pipeline), max_iter=1000))
    folds = StratifiedKFold(BASE_FOLDS, shuffle=True, random_state=seed)
    log_proba = np.empty((len(texts), len(classes)))
    with threadpool_limits(limits=1), _rare_label_warnings_off():
        log_proba[~train] = pipeline.predict_log_proba(texts[~train].tolist())[:, order]
        held_out = cross_val_predict(fold_model, texts[train].tolist(), labels[train].tolist(), cv=folds,
                                     method="predict_log_proba")[:, order]  # [n_train, C]
    # A label with fewer training texts than folds is missing from some fold's fit, and scikit-learn pads its
    # column with the most negative float (-inf once the network reads it as float32): such a text gets the
    # lowest log-probability any fold model gave instead, finite and still the least likely.
    padded = held_out <= np.finfo(held_out.dtype).min
    if padded.any():
        held_out[padded] = held_out[~padded].min()
    log_proba[train] = held_out
    return pipeline, log_proba  # [N, C]

