"""Topology behaviour: variable lengths, causality, forecasting, token inputs, configuration errors."""

import pytest
import pytorch_lightning as pl
import torch

from models import EncoderDecoder, ManyToMany, ModelConfig, OneToMany, RecurrentCore, SequenceModel
from models.topologies import ManyToOne
from tests.models.helpers import ResumableLoader, make_model, make_trainer


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_many_to_one_output_for_a_padded_sequence_equals_the_unpadded_one(cell, bidirectional):
    torch.manual_seed(0)
    net = ManyToOne(RecurrentCore(cell, 3, 8, num_layers=2, bidirectional=bidirectional), output_size=2).eval()
    short, long = torch.randn(1, 4, 3), torch.randn(1, 9, 3)
    padded = torch.cat([torch.cat([short, torch.full((1, 5, 3), 7.0)], dim=1), long])  # garbage padding
    with torch.no_grad():
        batched = net(padded, torch.tensor([4, 9]))
        alone = torch.cat([net(short, torch.tensor([4])), net(long, torch.tensor([9]))])
    assert torch.allclose(batched, alone, atol=1e-6)


def test_token_padding_does_not_change_a_sentence_score():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_one", "binary", "gru", vocab_size=30, embedding_dim=4, bidirectional=True)
    sentence = torch.tensor([[5, 9, 12]])
    padded = torch.tensor([[5, 9, 12, 0, 0, 0], [3, 4, 5, 6, 7, 8]])
    alone = model.predict_proba(sentence, torch.tensor([3]))
    batched = model.predict_proba(padded, torch.tensor([3, 6]))
    assert torch.allclose(batched[0], alone[0], atol=1e-6)
    assert torch.allclose(batched.sum(-1), torch.ones(2))


@pytest.mark.parametrize("topology", ["many_to_many", "one_to_many", "encoder_decoder"])
def test_bidirectional_on_a_causal_topology_is_refused_with_the_reason(topology):
    reason = "it is causal, .* future steps would leak into the per-step predictions"
    with pytest.raises(ValueError, match=reason):
        ModelConfig(topology=topology, bidirectional=True)
    core = RecurrentCore("lstm", 1, 4, bidirectional=True)
    with pytest.raises(ValueError, match=reason):
        {
            "many_to_many": lambda: ManyToMany(core, 1),
            "one_to_many": lambda: OneToMany(core, 1, 1),
            "encoder_decoder": lambda: EncoderDecoder(core, core),
        }[topology]()


def test_forecast_feeds_predictions_back_and_holds_covariates():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_many", "regression", "lstm", target_index=1).eval()
    history = torch.randn(2, 6, 2)
    forecast = model.forecast(history, horizon=3)
    assert forecast.shape == (2, 3, 1)
    with torch.no_grad():
        inputs, expected = history, []
        for _ in range(3):
            step = model({"x": inputs})[:, -1]  # [B, 1]
            expected.append(step)
            nxt = torch.stack([inputs[:, -1, 0], step[:, 0]], dim=-1)  # covariate held, target fed back
            inputs = torch.cat([inputs, nxt[:, None]], dim=1)
    assert torch.allclose(forecast, torch.stack(expected, dim=1), atol=1e-5)


def test_encoder_decoder_forecast_is_autoregressive_and_teacher_forcing_one_uses_targets():
    pl.seed_everything(0, verbose=False)
    model = make_model("encoder_decoder", "regression", "gru").eval()
    history, target = torch.randn(2, 6, 2), torch.randn(2, 4, 1)
    forecast = model.forecast(history, horizon=4)
    with torch.no_grad():
        forced = model.net(history, 4, target=target, teacher_forcing=1.0)
        looped = model.net(history, 4, target=target, teacher_forcing=0.0)
    assert torch.allclose(forecast, looped) and not torch.allclose(forced, looped)
    with torch.no_grad():  # teacher forcing 1.0 is one fused call; it must equal the step loop fed the truth
        first = model.net.first_input(history)
        _, state = model.net.encoder(history)
        steps = []
        for t in range(4):
            out, state = model.net.decoder((first if t == 0 else target[:, t - 1])[:, None], state)
            steps.append(model.net.head(out[:, 0]))
    assert torch.allclose(forced, torch.stack(steps, dim=1), atol=1e-6)


def test_forecast_refuses_a_classifier():
    with pytest.raises(ValueError, match="head='regression'"):
        make_model("many_to_many", "binary", "gru").forecast(torch.randn(1, 3, 2), 2)


@pytest.mark.parametrize(
    "fields,message",
    [
        (
            {"cell": "transformer"},
            r"ModelConfig.cell='transformer' is not allowed; use one of \('rnn', 'lstm', 'gru'\)",
        ),
        ({"k1": 8, "k2": 4}, r"k2 \(4\) must be >= k1 \(8\)"),
        ({"k2": 4}, "needs k1"),
        ({"topology": "many_to_one", "k1": 4}, "truncated BPTT, got topology='many_to_one'"),
        ({"topology": "one_to_many", "vocab_size": 10, "embedding_dim": 4}, "not supported by topology 'one_to_many'"),
        ({"dropout": 0.2}, "num_layers=1 would do nothing"),
        ({"head": "binary", "output_size": 2}, "output_size must be 1"),
        ({"topology": "encoder_decoder", "head": "multiclass", "output_size": 3}, "head='regression'"),
        ({"vocab_size": 10}, "set embedding_dim"),
        ({"target_index": 2, "input_size": 2}, "target_index=2"),
    ],
)
def test_invalid_config_names_the_field_and_the_rule(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['hiden_size'\]"):
        ModelConfig.from_dict({"hiden_size": 3})


def test_wrong_input_dtype_for_a_token_model_says_what_was_expected():
    model = make_model("many_to_one", "binary", "lstm", vocab_size=10, embedding_dim=4)
    with pytest.raises(ValueError, match="expected integer token ids of shape"):
        model({"x": torch.randn(2, 5, 2), "lengths": torch.tensor([5, 5])})


def test_hparams_are_the_config_as_a_flat_dict_and_rebuild_the_model():
    model = make_model("one_to_many", "multiclass", "gru", condition="both")
    assert dict(model.hparams) == model.config.to_dict()
    assert SequenceModel(**model.hparams).config == model.config


def test_token_sequence_labelling_trains_with_truncated_bptt():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_many", "binary", "gru", vocab_size=16, embedding_dim=4, k1=3, k2=5)
    tokens = torch.randint(1, 16, (4, 9))
    batch = {"x": tokens, "y": (tokens % 2).float()[..., None]}
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, train_dataloaders=ResumableLoader([batch]))
    assert trainer.global_step == 6
    assert model.predict_step({"x": tokens}).shape == (4, 9, 1)
