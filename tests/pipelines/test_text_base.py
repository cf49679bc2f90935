"""A `base: tfidf_logreg` text variant: a recurrent classifier that corrects TF-IDF + logistic regression.

Real parts: prepare fits the base (scikit-learn, C by cross-validation) on the training split, the GRU
trains on batches that carry the base's log-probabilities, and the variant is logged to and loaded from
a real MLflow store as the sentiment pyfunc, which computes the base itself from raw text.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from models import ModelConfig, SequenceModel
from pipelines.config import Params, TextTask
from pipelines.data.validate import InvalidDataError
from pipelines.evaluate.baselines import tfidf_logreg_log_proba
from pipelines.prepare.text import BASE_LOG_PROBA_FILE, BASE_MODEL_FILE, read_base_log_proba
from pipelines.tasks.text import TextKind
from tests.conftest import mlflow_store

FILLER = ["the", "flight", "crew", "seat", "bag", "gate", "was", "today", "again", "my"]
CUES = {"negative": ["awful", "lost", "delayed"], "neutral": ["ok", "fine", "usual"],
        "positive": ["lovely", "great", "thanks"]}


def reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """Filler around one cue word that decides the label, one text in five with a cue of another label
    (so the base is not certain of everything)."""
    rng = np.random.default_rng(seed)
    moods = rng.choice(sorted(CUES), n)
    texts = []
    for i, mood in enumerate(moods):
        cue = rng.choice(CUES[mood] if rng.random() > 0.2 else CUES[rng.choice(sorted(CUES))])
        texts.append(" ".join([*rng.choice(FILLER, 4), cue, f"n{i}"]))
    return pd.DataFrame({"text": texts, "label": moods})


def fit(network: SequenceModel, datamodule: pl.LightningDataModule, epochs: int) -> None:
    pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0).fit(network, datamodule=datamodule)


def scores(answers: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """The served `scores` [N, C], columns in `labels` order."""
    return np.array([[row[label] for label in labels] for row in answers["scores"]])


def task(**variant: object) -> TextTask:
    return TextTask.model_validate({
        "kind": "text", "source": "x.csv", "prepare": {"max_vocab": 200}, "training": {"max_epochs": 2},
        "variants": [{"name": "hybrid", "cell": "gru", "hidden_size": 8, "embedding_dim": 8, "lr": 0.01,
                      "base": "tfidf_logreg", **variant}]})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextKind, Path]:
    kind, directory = TextKind(task()), tmp_path_factory.mktemp("prepared")
    clean, _ = kind.validate(reviews(400), "reviews")
    kind.prepare(clean, directory)
    return kind, directory


def test_prepare_fits_the_base_on_training_texts_and_scores_them_out_of_fold(prepared: tuple[TextKind, Path]) -> None:
    kind, directory = prepared
    texts = kind.load_prepared(directory)
    base = pickle.loads((directory / BASE_MODEL_FILE).read_bytes())
    log_proba = read_base_log_proba(directory, kind.labels)  # [N, C]
    assert log_proba.shape == (len(texts), 3)
    np.testing.assert_allclose(np.exp(log_proba).sum(axis=1), 1.0, atol=1e-5)
    final = base.predict_log_proba(texts["text"].tolist())[:, [list(base.classes_).index(c) for c in kind.labels]]
    held = (texts["split"] != "train").to_numpy()
    np.testing.assert_allclose(log_proba[held], final[held], atol=1e-5)  # what serving computes
    # A training text's row comes from a model that did not see it: less sure of it than the final model.
    train = ~held
    labels = texts["label"].map({c: i for i, c in enumerate(kind.labels)}).to_numpy()
    own = np.arange(len(texts))
    assert log_proba[train, labels[train]].mean() < final[own[train], labels[train]].mean() - 0.05


def test_without_a_base_variant_prepare_writes_no_base(tmp_path: Path) -> None:
    kind = TextKind(TextTask.model_validate({"kind": "text", "source": "x.csv", "prepare": {"max_vocab": 200},
                                             "variants": [{"name": "gru", "cell": "gru"}]}))
    (tmp_path / BASE_MODEL_FILE).write_bytes(b"stale")
    clean, _ = kind.validate(reviews(200), "reviews")
    kind.prepare(clean, tmp_path)
    assert not (tmp_path / BASE_MODEL_FILE).exists() and not (tmp_path / BASE_LOG_PROBA_FILE).exists()


def test_a_label_rarer_than_the_folds_gets_finite_base_log_probabilities() -> None:
    """One 'neutral' training text: the fold that holds it out fits without the label, and scikit-learn
    pads that column with the most negative float (-inf in float32); the base the network reads stays finite."""
    raw = reviews(300)
    train = np.ones(len(raw), dtype=bool)
    train[raw.index[raw["label"] == "neutral"][1:]] = False
    _, log_proba = tfidf_logreg_log_proba(raw["text"].tolist(), raw["label"].tolist(), train, sorted(CUES), seed=0)
    assert np.isfinite(log_proba.astype(np.float32)).all()
    # the rows of the fold fitted without it (a fifth of them) share one value: the lowest log-probability
    # of the fold models, not the padding
    floor = log_proba[train, sorted(CUES).index("neutral")] == log_proba[train].min()  # [n_train]
    assert floor.sum() > train.sum() // 10


def test_prepare_says_which_labels_are_rarer_than_the_folds_instead_of_scikit_learn(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder) -> None:
    kind = TextKind(task())
    raw = reviews(300)
    clean, _ = kind.validate(raw.drop(raw.index[raw["label"] == "neutral"][4:]), "reviews")
    kind.prepare(clean, tmp_path)
    assert re.search(r"labels \{'neutral': [1-4]\} have fewer training texts than the base's 5 folds",
                     capsys.readouterr().out)
    assert not [w for w in recwarn if "sklearn" in w.filename], [str(w.message) for w in recwarn]


def test_a_declared_label_without_texts_stops_prepare_naming_it(tmp_path: Path) -> None:
    kind = TextKind(task().model_copy(update={"labels": ["negative", "neutral", "positive", "sarcastic"]}))
    clean, _ = kind.validate(reviews(200), "reviews")
    with pytest.raises(InvalidDataError, match=r"labels \['sarcastic'\] are declared in `labels` but no text has"):
        kind.prepare(clean, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_label_too_rare_to_split_is_a_data_error_with_the_counts(tmp_path: Path) -> None:
    kind = TextKind(task())
    raw = reviews(200)
    clean, _ = kind.validate(raw.drop(raw.index[raw["label"] == "neutral"][1:]), "reviews")
    with pytest.raises(InvalidDataError, match=r"'neutral': 1,.*add texts of the rare labels"):
        kind.prepare(clean, tmp_path)


def test_a_corpus_of_one_label_is_a_data_error(tmp_path: Path) -> None:
    raw = reviews(60)
    kind = TextKind(task())
    clean, _ = kind.validate(raw.assign(label="positive"), "reviews")
    with pytest.raises(InvalidDataError, match=r"every text has the label \['positive'\].*at least two labels"):
        kind.prepare(clean, tmp_path)
    assert not list(tmp_path.iterdir())


def test_texts_added_to_the_corpus_never_move_a_training_text_into_the_holdout(tmp_path: Path) -> None:
    """evaluate re-scores the champion on the new holdout: it must not hold texts the champion trained on."""
    grown = reviews(440)
    splits = []
    for name, raw in (("before", grown.iloc[:400]), ("after", grown)):
        kind = TextKind(task())
        clean, _ = kind.validate(raw, "reviews")
        (tmp_path / name).mkdir()
        kind.prepare(clean, tmp_path / name)
        frame = kind.load_prepared(tmp_path / name)
        splits.append(dict(zip(frame["text"], frame["split"])))
    before, after = splits
    assert all(after[text] == split for text, split in before.items())
    assert {after[text] for text in set(after) - set(before)} >= {"train", "holdout"}


def test_a_base_variant_starts_as_its_base_and_serves_the_correction_from_raw_text(
        prepared: tuple[TextKind, Path], tmp_path: Path) -> None:
    kind, directory = prepared
    variant = kind.spec.variants[0]
    params = Params.model_validate({"tasks": {"t": kind.spec.model_dump()}})
    datamodule = kind.datamodule(directory, variant)
    config = kind.model_config(variant, params, datamodule)
    pl.seed_everything(0, verbose=False)
    network = SequenceModel(ModelConfig(**config))
    assert kind.warm_start(tmp_path, "t", network, variant) == []  # no language model; the readout zeroed
    texts = kind.load_prepared(directory)
    holdout = texts[texts["split"] == "holdout"]
    base = pickle.loads((directory / BASE_MODEL_FILE).read_bytes())
    order = [list(base.classes_).index(c) for c in kind.labels]
    with mlflow_store(tmp_path / "store") as experiment, mlflow.start_run(experiment_id=experiment):
        untrained = mlflow.pyfunc.load_model(kind.log_model(directory, tmp_path / "before", network, config, variant))
        served = untrained.predict(pd.DataFrame({"text": holdout["text"].tolist()}))
        expected = base.predict_proba(holdout["text"].tolist())[:, order]  # [N, C]
        np.testing.assert_allclose(scores(served, kind.labels), expected, atol=1e-5)

        batch = next(iter(datamodule.train_dataloader()))
        assert batch["offset"].shape == (batch["x"].shape[0], 3)
        fit(network, datamodule, epochs=2)
        assert network.net.head.weight.abs().sum() > 0  # the network learnt a correction
        trained = mlflow.pyfunc.load_model(kind.log_model(directory, tmp_path / "after", network, config, variant))
        answers = trained.predict(pd.DataFrame({"text": holdout["text"].tolist()}))
    ids, lengths = datamodule.encoder.encode_batch(holdout["text"].tolist(), kind.spec.prepare.max_length)
    offset = torch.from_numpy(read_base_log_proba(directory, kind.labels)[(texts["split"] == "holdout").to_numpy()])
    direct = network.predict_proba(torch.from_numpy(ids), torch.from_numpy(lengths), offset).numpy()  # [N, C]
    np.testing.assert_allclose(scores(answers, kind.labels), direct, atol=1e-5)
    assert not np.allclose(direct, expected, atol=1e-3)


def test_the_default_text_family_has_a_plain_and_a_tfidf_based_gru() -> None:
    spec = TextTask.model_validate({"kind": "text", "source": "x.csv"})
    assert [(v.name, v.base) for v in spec.variants] == [("gru", "none"), ("gru-tfidf", "tfidf_logreg")]


def test_base_is_refused_on_a_forecasting_variant_naming_it() -> None:
    with pytest.raises(ValueError, match=r"variants \['gru'\]: base is a text option"):
        Params.model_validate({"tasks": {"s": {"kind": "timeseries", "source": "s.csv", "timestamp": "t",
                                                 "target": "y", "variants": [{"name": "gru", "cell": "gru",
                                                                               "base": "tfidf_logreg"}]}}})


def test_the_text_ensemble_serves_the_mean_of_its_members_probabilities(
        prepared: tuple[TextKind, Path], tmp_path: Path) -> None:
    kind, directory = prepared
    params = Params.model_validate({"tasks": {"t": kind.spec.model_dump()}})
    texts = kind.load_prepared(directory)
    holdout = pd.DataFrame({"text": texts.loc[texts["split"] == "holdout", "text"].tolist()})
    with mlflow_store(tmp_path / "store") as experiment, mlflow.start_run(experiment_id=experiment):
        uris = []
        for seed, variant in ((1, kind.spec.variants[0]), (2, kind.spec.variants[0].model_copy(update={"base": "none"}))):
            datamodule = kind.datamodule(directory, variant)
            config = kind.model_config(variant, params, datamodule)
            pl.seed_everything(seed, verbose=False)
            network = SequenceModel(ModelConfig(**config))
            fit(network, datamodule, epochs=1)
            uris.append(kind.log_model(directory, tmp_path / f"m{seed}", network, config, variant))
        assert kind.ensemble(directory, uris[:1]) is None  # one member is no ensemble
        ensemble = mlflow.pyfunc.load_model(kind.ensemble(directory, uris)(tmp_path / "ensemble"))
        members = [mlflow.pyfunc.load_model(uri).unwrap_python_model() for uri in uris]
        answers = ensemble.predict(holdout)
    expected = np.mean([m._probabilities(holdout["text"].tolist()) for m in members], axis=0)  # [N, C]
    np.testing.assert_allclose(scores(answers, kind.labels), expected, atol=1e-5)
    assert not np.allclose(expected, members[0]._probabilities(holdout["text"].tolist()), atol=1e-3)
