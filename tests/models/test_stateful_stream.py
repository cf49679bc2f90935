"""State carried across batches: a stream cut into batches trains and warms like one long sequence."""

from __future__ import annotations

import torch

from models import WARMUP_STEPS, ModelConfig, SequenceModel

CONFIG = dict(topology="many_to_many", cell="lstm", input_size=2, hidden_size=6, output_size=1, head="regression",
              lr=0.01, clip_algorithm=None, k1=16, k2=16)


def _recording(network: SequenceModel, losses: list[float]) -> SequenceModel:
    """Drive training_step outside a Trainer: a plain Adam, and every update's loss recorded."""
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    network.optimizers = lambda: optimizer
    network.manual_backward = lambda loss: (losses.append(float(loss.detach())), loss.backward())
    network.log = lambda *args, **kwargs: None
    return network


def test_batches_that_continue_each_other_train_exactly_like_one_full_sequence():
    torch.manual_seed(0)
    x, y = torch.randn(3, 96, 2), torch.randn(3, 96, 1)  # [B, T, F], [B, T, 1]
    streamed, whole = [], []
    stream = _recording(SequenceModel(ModelConfig(**CONFIG)), streamed)
    single = _recording(SequenceModel(ModelConfig(**CONFIG)), whole)
    single.load_state_dict(stream.state_dict())
    for j in range(3):
        batch = {"x": x[:, 32 * j:32 * (j + 1)], "y": y[:, 32 * j:32 * (j + 1)],
                 "reset": j == 0 or torch.zeros(3, dtype=torch.bool)}
        stream.training_step(batch, j)
    single.training_step({"x": x, "y": y}, 0)
    assert len(streamed) == len(whole) == 6
    torch.testing.assert_close(torch.tensor(streamed), torch.tensor(whole))


def test_a_history_longer_than_a_warmup_chunk_forecasts_as_one_pass_would():
    torch.manual_seed(0)
    network = SequenceModel(ModelConfig(**{**CONFIG, "input_size": 1})).eval()
    history = torch.randn(2, WARMUP_STEPS * 2 + 37, 1)  # [B, T, 1]
    with torch.no_grad():
        one_pass = network.net.forecast(history, 5)  # [B, 5, 1]
    torch.testing.assert_close(network.forecast(history, 5), one_pass, rtol=1e-4, atol=1e-5)


def test_a_validation_batch_without_scored_steps_only_warms_the_state():
    network = SequenceModel(ModelConfig(**CONFIG))
    logged = []
    network.log = lambda name, value, **kwargs: logged.append(name)
    x = torch.randn(2, 8, 2)  # [B, T, F]
    network.validation_step({"x": x, "y": torch.zeros(2, 8, 1), "mask": torch.zeros(2, 8, dtype=torch.bool)}, 0)
    assert logged == [] and network.carried_state["val"] is not None
    network.validation_step({"x": x, "y": torch.zeros(2, 8, 1), "mask": torch.ones(2, 8, dtype=torch.bool),
                             "reset": torch.zeros(2, dtype=torch.bool)}, 1)
    assert logged == ["val_loss"]
