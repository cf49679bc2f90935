"""One conformance check that every cell x topology x head must pass: shapes, learning, state_dict round trip."""

import pytest
import pytorch_lightning as pl
import torch

from models import CELLS, TOPOLOGIES, SequenceModel
from tests.models.helpers import (
    HORIZON,
    B,
    C,
    ResumableLoader,
    T,
    batch_loss,
    make_batch,
    make_model,
    make_trainer,
    output_size,
)

COMBOS = [
    (cell, topology, head)
    for cell in CELLS
    for topology in TOPOLOGIES
    for head in ("regression", "binary", "multiclass")
    if not (topology == "encoder_decoder" and head != "regression")
]


def expected_shape(topology: str, head: str) -> tuple[int, ...]:
    out = output_size(head)
    return {
        "many_to_many": (B, T, out),
        "many_to_one": (B, out),
        "one_to_many": (B, T, out),
        "encoder_decoder": (B, HORIZON, 1),
    }[topology]


@pytest.mark.parametrize("cell,topology,head", COMBOS)
def test_model_conforms_shapes_learning_and_state_dict_round_trip(cell, topology, head):
    pl.seed_everything(0, verbose=False)
    batch = make_batch(topology, head)
    model = make_model(topology, head, cell)

    model.eval()
    with torch.no_grad():
        raw = model(batch)
        probs = model.predict_step(batch)
    model.train()
    assert raw.shape == expected_shape(topology, head)
    if head == "multiclass":
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)
    if head == "binary":
        assert ((probs > 0) & (probs < 1)).all()

    before = batch_loss(model, batch)
    make_trainer(max_epochs=60).fit(model, train_dataloaders=ResumableLoader([batch]))
    after = batch_loss(model, batch)
    assert after < 0.7 * before, f"loss did not fall enough: {before:.4f} -> {after:.4f}"

    clone = SequenceModel(model.config)
    clone.load_state_dict(model.state_dict())
    model.eval()
    clone.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), clone(batch))


def test_model_with_multiclass_head_has_one_output_per_class():
    assert make_model("many_to_one", "multiclass", "gru")(make_batch("many_to_one", "multiclass")).shape == (B, C)


@pytest.mark.parametrize("condition", ["input", "both"])
def test_one_to_many_learns_with_every_conditioning(condition):
    pl.seed_everything(0, verbose=False)
    batch = make_batch("one_to_many", "regression")
    model = make_model("one_to_many", "regression", "lstm", condition=condition)
    before = batch_loss(model, batch)
    make_trainer(max_epochs=60).fit(model, train_dataloaders=ResumableLoader([batch]))
    assert model(batch).shape == (B, T, 1)
    assert batch_loss(model, batch) < 0.7 * before


def test_many_to_many_learns_with_truncated_bptt():
    pl.seed_everything(0, verbose=False)
    batch = make_batch("many_to_many", "regression")
    model = make_model("many_to_many", "regression", "gru", k1=3, k2=5)
    before = batch_loss(model, batch)
    make_trainer(max_epochs=20).fit(model, train_dataloaders=ResumableLoader([batch]))
    assert batch_loss(model, batch) < 0.5 * before


def test_sentiment_style_token_classifier_learns_from_token_ids():
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    tokens = torch.randint(2, 20, (B, T), generator=g) * (torch.arange(T)[None] < lengths[:, None])
    label = (tokens == 7).any(1).long() + (tokens == 9).any(1).long()  # 0, 1 or 2 marker words present
    batch = {"x": tokens, "lengths": lengths, "y": label}
    model = make_model("many_to_one", "multiclass", "lstm", vocab_size=20, embedding_dim=8)
    before = batch_loss(model, batch)
    make_trainer(max_epochs=60).fit(model, train_dataloaders=ResumableLoader([batch]))
    assert batch_loss(model, batch) < 0.7 * before
    probs = model.predict_proba(tokens, lengths)
    assert probs.shape == (B, C) and torch.allclose(probs.sum(-1), torch.ones(B), atol=1e-5)
