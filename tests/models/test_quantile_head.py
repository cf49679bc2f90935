"""The quantile head: ordered outputs, the pinball loss, quantiles it learns from Gaussian noise, and the sample
paths a quantile network forecasts with (models/inference.py)."""

from __future__ import annotations

import pytest
import torch

from models import ModelConfig, SequenceModel
from models.heads import activate, check_head, per_step_loss, quantile_function, quantile_levels
from models.inference import stepper_for


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


def test_the_quantile_function_passes_through_the_learned_quantiles_and_extends_past_them() -> None:
    quantiles = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])  # [1, 4] at levels 0.125, 0.375, 0.625, 0.875
    at = lambda u: quantile_function(quantiles, torch.tensor([u]))[0].item()  # noqa: E731

    assert [at(u) for u in (0.125, 0.375, 0.5, 0.625, 0.875)] == pytest.approx([-1.0, 0.0, 0.25, 0.5, 2.0])
    assert at(0.01) < -1.0 and at(0.99) > 2.0  # tails, not a wall at the outermost quantiles
    assert at(0.001) < at(0.01) and at(0.999) > at(0.99)


def _quantile_network() -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(ModelConfig(cell="lstm", input_size=2, hidden_size=16, topology="many_to_many",
                                     head="quantile", output_size=5, k1=8, k2=8)).eval()


def test_first_step_draws_follow_the_networks_one_step_quantiles() -> None:
    network = _quantile_network()
    history = torch.randn(30, 2)  # [T, F]

    paths = stepper_for(network).sample_paths([history], [3], paths=4000, seed=1)[0]  # [N, 3]

    with torch.no_grad():
        expected = network.predict_step({"x": history[None]})[0, -1]  # [5]: the quantiles after the history
    drawn = torch.quantile(paths[:, 0], quantile_levels(5))  # [5]
    assert torch.allclose(drawn, expected, atol=0.05 * float(expected[-1] - expected[0]) + 1e-3)


def test_sample_paths_are_seeded_and_do_not_depend_on_the_batch() -> None:
    stepper = stepper_for(_quantile_network())
    histories, horizons = [torch.randn(n, 2) for n in (12, 40)], [4, 6]

    together = stepper.sample_paths(histories, horizons, paths=50, seed=7)
    alone = stepper.sample_paths(histories[1:], horizons[1:], paths=50, seed=7)

    assert [tuple(p.shape) for p in together] == [(50, 4), (50, 6)]
    torch.testing.assert_close(together[1], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.equal(together[1], stepper.sample_paths(histories[1:], horizons[1:], paths=50, seed=8)[0])
    with pytest.raises(ValueError, match="sample_paths"):
        stepper.forecast(histories, horizons)
