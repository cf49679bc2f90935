"""Text tasks start from a language model pretrained on their own training texts (issue 12).

Real parts throughout: the `tokenizers` BPE, models/' many_to_many LM trained by TBPTT with state
carried across batches, a real MLflow SQLite store for the perplexity, and the classifier that loads
the LM's weights. Tiny sizes: the whole file runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from models import ModelConfig, SequenceModel
from pipelines.config import Params, TextTask
from pipelines.data.validate import validate_text
from pipelines.prepare.features import UNK_ID
from pipelines.prepare.text import SubwordTokenizer, load_encoder, stream
from pipelines.tasks.defaults import text_epochs
from pipelines.tasks.settings import SETTINGS_FILE
from pipelines.tasks.text import TextKind
from pipelines.train.pretrain import Encoder, StreamBatches, pretrain, stream_texts, warm_start
from tests.conftest import mlflow_store

WORDS = ["the", "flight", "was", "late", "crew", "lovely", "bag", "lost", "great", "seat"]


def corpus(n: int, seed: int = 0) -> pd.DataFrame:
    """Short texts in a regular pattern (so a small LM can learn it), with their split."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(WORDS[(start + k) % len(WORDS)] for k in range(6)) for start in rng.integers(0, 10, n)]
    split = np.array(["train"] * n, dtype=object)
    split[-n // 5:] = "holdout"
    split[-2 * n // 5:-n // 5] = "validation"
    return pd.DataFrame({"text": texts, "label": ["a"] * n, "split": split})


def tiny_task(**pretrain: object) -> TextTask:
    settings = {"max_epochs": 3, "streams": 4, "steps": 16, "k1": 8, "k2": 8, "lr": 0.01, **pretrain}
    return TextTask.model_validate({"kind": "text", "source": "x.csv", "prepare": {"max_vocab": 300},
                                    "pretrain": settings,
                                    "variants": [{"name": "gru", "cell": "gru", "hidden_size": 16,
                                                  "embedding_dim": 8}]})


@pytest.fixture()
def tracking(tmp_path: Path) -> str:
    """A store of the test's own, its experiment's id; the process's MLflow target is restored after."""
    with mlflow_store(tmp_path) as experiment:
        yield experiment


def test_the_language_models_loss_falls_and_its_perplexity_is_logged_per_epoch(tracking: str, tmp_path: Path) -> None:
    texts = corpus(300)
    encoder = SubwordTokenizer.fit(texts.loc[texts["split"] == "train", "text"], 300, 2)
    spec = tiny_task()
    with mlflow.start_run(experiment_id=tracking) as run:
        summary = pretrain(spec, Params.model_validate({"tasks": {"t": spec.model_dump()}}), texts, [], encoder,
                           tmp_path / "lm")
    history = summary["models"][Encoder("gru", 8, 16, 1).file("forward")]
    assert len(history) == 3
    assert history[-1]["lm_train_perplexity"] < history[0]["lm_train_perplexity"]
    assert history[-1]["lm_val_perplexity"] < 0.5 * len(encoder)  # far below a uniform guess
    logged = MlflowClient().get_metric_history(run.info.run_id, "lm_val_perplexity")
    assert [m.step for m in logged] == [1, 2, 3]


def test_the_classifier_starts_from_the_language_models_embedding_and_core(tracking: str, tmp_path: Path) -> None:
    texts = corpus(120)
    encoder = SubwordTokenizer.fit(texts["text"], 300, 2)
    spec = tiny_task(max_epochs=1)
    with mlflow.start_run(experiment_id=tracking):
        pretrain(spec, Params.model_validate({"tasks": {"t": spec.model_dump()}}), texts, [], encoder, tmp_path)
    variant = spec.variants[0]
    classifier = SequenceModel(ModelConfig(cell="gru", hidden_size=16, topology="many_to_one", head="multiclass",
                                           output_size=3, vocab_size=len(encoder), embedding_dim=8, pooling="concat"))
    loaded = warm_start(classifier, variant, tmp_path)
    saved = torch.load(tmp_path / Encoder.of(variant).file("forward"), weights_only=True)
    assert "net.embedding.weight" in loaded and "net.core.rnn.weight_hh_l0" in loaded
    own = classifier.state_dict()
    for name in loaded:
        assert torch.equal(own[name], saved[name]), name


def test_no_validation_or_holdout_text_reaches_the_pretraining_stream() -> None:
    texts = corpus(200)
    texts["text"] = [f"{t} row{i}" for i, t in enumerate(texts["text"])]
    extra = ["an unlabelled review of the seat"]
    train, validation = stream_texts(texts, extra, 0.1, seed=0)
    kept = set(train) | set(validation)
    assert kept == set(texts.loc[texts["split"] == "train", "text"]) | set(extra)
    assert not kept & set(texts.loc[texts["split"] != "train", "text"])


def test_stream_batches_are_contiguous_rows_consumed_in_order() -> None:
    tokens = np.arange(1, 42, dtype=np.int64)
    batches = StreamBatches(tokens, rows=2, steps=5)
    first, second = batches[0], batches[1]
    assert first["reset"] and not second["reset"]
    assert torch.equal(second["x"][:, 0], first["x"][:, -1] + 1)  # each row continues where it stopped
    assert torch.equal(first["y"][:, :-1], first["x"][:, 1:])  # targets are the next tokens


def test_subwords_keep_a_misspelt_word_known_and_reload_the_same(tmp_path: Path) -> None:
    encoder = SubwordTokenizer.fit(["the flight was delayed", "delayed again, flight late"] * 20, 300, 2)
    ids = encoder.encode("flihgt delayd", 10)
    assert UNK_ID not in ids and len(ids) >= 2
    encoder.save(tmp_path / "tokenizer.json")
    assert load_encoder(tmp_path / "tokenizer.json").encode("flihgt delayd", 10) == ids
    assert stream(encoder, ["late", "flight"], 10).tolist().count(0) == 2  # one boundary after each text


def test_a_five_line_text_task_is_complete_and_its_labels_and_epochs_come_from_the_data(tmp_path: Path) -> None:
    spec = Params.model_validate({"tasks": {"r": {"kind": "text", "source": "r.csv", "text": "review",
                                                  "label": "stars"}}}).tasks["r"]
    assert spec.labels is None and spec.training.max_epochs is None and spec.variants
    frame = pd.DataFrame({"review": [f"good flight {i}" if i % 2 else f"bad seat {i}" for i in range(200)],
                          "stars": ["pos" if i % 2 else "neg" for i in range(200)]})
    clean, _ = validate_text(frame, text="review", label="stars", labels=None, duplicates="drop", name="r.csv")
    kind = TextKind(spec)
    kind.prepare(clean, tmp_path)
    assert kind.labels == ["neg", "pos"]
    saved = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert saved["derived"]["training.max_epochs"] == kind.spec.training.max_epochs == text_epochs(160, 64)


def test_text_epochs_give_a_small_corpus_more_passes_and_a_large_one_fewer() -> None:
    # About 800 batches of 64: two epochs over 30,000 tweets, the cap over a thousand texts.
    assert text_epochs(30_000, 64) == 2
    assert text_epochs(11_000, 64) == 5
    assert text_epochs(900, 64) == 20


def test_concat_pooling_scores_a_padded_text_like_the_same_text_unpadded() -> None:
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(cell="gru", hidden_size=8, topology="many_to_one", head="multiclass",
                                      output_size=3, vocab_size=20, embedding_dim=4, pooling="concat",
                                      bidirectional=True))
    text = torch.tensor([[3, 5, 7]])
    padded = torch.tensor([[3, 5, 7, 0, 0], [4, 4, 4, 4, 4]])
    alone = model.predict_proba(text, torch.tensor([3]))
    batched = model.predict_proba(padded, torch.tensor([3, 5]))
    assert torch.allclose(alone[0], batched[0], atol=1e-6)
