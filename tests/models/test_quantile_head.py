"""The quantile head: ordered outputs, the pinball loss, and quantiles it learns from Gaussian noise."""

from __future__ import annotations

import pytest
import torch

from models import ModelConfig, SequenceModel
from models.heads import activate, check_head, per_step_loss, quantile_levels


def test_quantile_outputs_are_ordered_whatever_the_network_emits() -> None:
    torch.manual_seed(0)
    config = ModelConfig(cell="gru", input_size=2, hidden_size=8, topology="many_to_many", head="quantile",
                         output_size=5, k1=8, k2=8)
    network = SequenceModel(config)

    quantiles = network.predict_step({"x": torch.randn(3, 12, 2)})  # [B, T, Q]

    assert quantiles.shape == (3, 12, 5)
    assert (quantiles.diff(dim=-1) >= 0).all()


def test_the_pinball_loss_recovers_the_quantiles_of_gaussian_noise() -> None:
    torch.manual_seed(0)
    y = torch.randn(20_000)  # [N]
    raw = torch.zeros(5, requires_grad=True)  # one set of 5 quantiles for every target
    optimizer = torch.optim.Adam([raw], lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        per_step_loss("quantile", raw.expand(len(y), 5), y).mean().backward()
        optimizer.step()

    learned = activate("quantile", raw.detach())  # [5]
    expected = torch.distributions.Normal(0.0, 1.0).icdf(quantile_levels(5))  # [5]: 0.1, 0.3, 0.5, 0.7, 0.9
    assert torch.allclose(learned, expected, atol=0.06)


def test_a_quantile_head_needs_at_least_two_outputs() -> None:
    with pytest.raises(ValueError, match="number of quantiles"):
        check_head("quantile", 1)
