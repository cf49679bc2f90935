"""Gradient health: spectral radii, the lag curve, clipping statistics, the NaN guard, the vanishing warning."""

import logging
import re
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from models import GATES, GradientExplosionError, GradientHealth, RecurrentCore, lag_profile
from tests.models.helpers import MemoryLogger, ResumableLoader, make_batch, make_model, make_trainer


def fit_with_health(model, batch, health, epochs=1, logger=None):
    make_trainer(max_epochs=epochs, callbacks=[health], logger=logger or False).fit(
        model, train_dataloaders=ResumableLoader([batch])
    )


def test_logged_spectral_radius_of_an_elman_rnn_matches_numpy():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_many", "regression", "rnn", hidden_size=6)
    matrix = np.random.default_rng(0).normal(size=(6, 6)) * 0.4
    with torch.no_grad():
        model.net.core.rnn.weight_hh_l0.copy_(torch.from_numpy(matrix))
    logger, health = MemoryLogger(), GradientHealth()
    fit_with_health(model, make_batch("many_to_many", "regression"), health, logger=logger)
    step, logged = logger.values("spectral_radius/net.core.weight_hh_l0")[0]
    assert step == 0
    assert logged == pytest.approx(np.abs(np.linalg.eigvals(matrix)).max(), rel=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_spectral_radius_is_logged_per_gate_for_gated_cells(cell):
    model = make_model("many_to_many", "regression", cell, hidden_size=5, num_layers=2)
    logger = MemoryLogger()
    weights = {name: w.detach().numpy().copy() for name, w in model.net.core.recurrent_weights().items()}
    fit_with_health(model, make_batch("many_to_many", "regression"), GradientHealth(), logger=logger)
    for name, w in weights.items():
        for gate, block in zip(GATES[cell], np.split(w, len(GATES[cell]))):
            _, logged = logger.values(f"spectral_radius/net.core.{name}/{gate}")[0]
            assert logged == pytest.approx(np.abs(np.linalg.eigvals(block)).max(), rel=1e-6)


def scaled_elman(radius: float, hidden: int = 8) -> RecurrentCore:
    torch.manual_seed(0)
    core = RecurrentCore("rnn", 1, hidden)
    q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
    with torch.no_grad():
        core.rnn.weight_hh_l0.copy_(radius * q)
    return core


def test_gradient_by_lag_decays_when_the_spectral_radius_is_well_below_one():
    core = scaled_elman(0.5)
    x = 0.1 * torch.randn(4, 30, 1)
    profile = lag_profile(core, x, lambda state: state[-1].sum())
    assert profile.shape == (30,)
    assert (profile[1:] < profile[:-1]).all()
    assert profile[-1] < 1e-6 * profile[0]


def test_lag_profile_reads_each_sequence_from_its_own_last_step():
    core = scaled_elman(0.9)
    x = 0.1 * torch.randn(3, 12, 1)
    positions = torch.tensor([11, 6, 3])
    full = lag_profile(core, x[:1], lambda state: state[-1].sum(), max_lag=3)
    short = lag_profile(core, x[1:2, :7], lambda state: state[-1].sum(), max_lag=3)
    mixed = lag_profile(core, x, lambda state: state[-1].sum(), positions=positions, max_lag=3)
    shortest = lag_profile(core, x[2:3, :4], lambda state: state[-1].sum(), max_lag=3)
    assert torch.allclose(mixed, (full + short + shortest) / 3, atol=1e-6)


def test_callback_logs_the_lag_curve_and_clipping_statistics_against_optimizer_steps():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_many", "regression", "lstm", k1=2, k2=4)
    logger, health = MemoryLogger(), GradientHealth(probe_every_n_steps=5)
    fit_with_health(model, make_batch("many_to_many", "regression"), health, epochs=3, logger=logger)
    assert [step for step, _ in logger.values("grad_norm/pre_clip")] == [5, 10, 15]  # 5 updates per batch of T=10
    at_step_5 = set().union(*(m for step, m in logger.records if step == 5))
    assert {"grad_h_lag/0", "grad_h_lag/1", "grad_h_lag/2", "grad_h_lag/4", "grad_h_lag/ratio"} <= at_step_5
    lag_records = [h for h in health.history if h["kind"] == "lag"]
    assert [h["step"] for h in lag_records] == [5, 10, 15] and len(lag_records[0]["lag_profile"]) == 5
    assert len([h for h in health.history if h["kind"] == "update"]) == 15


def test_probing_does_not_change_the_training_run():
    batch = make_batch("many_to_many", "regression")
    runs = []
    for callbacks in ([], [GradientHealth(probe_every_n_steps=1)]):
        pl.seed_everything(0, verbose=False)
        model = make_model("many_to_many", "regression", "lstm", num_layers=2, dropout=0.3, k1=4, k2=6)
        make_trainer(max_epochs=3, callbacks=callbacks).fit(model, train_dataloaders=ResumableLoader([batch]))
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_clipping_by_norm_keeps_the_gradient_norm_at_most_the_clip_value():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_many", "regression", "gru", k1=5, clip_algorithm="norm", clip_value=0.05)
    health = GradientHealth()
    fit_with_health(model, make_batch("many_to_many", "regression"), health, epochs=2)
    updates = [h for h in health.history if h["kind"] == "update"]
    assert len(updates) == 4
    assert all(u["grad_norm_clipped"] <= 0.05 * (1 + 1e-5) for u in updates)
    assert all(u["grad_norm"] > 0.05 for u in updates) and health.clipped_fraction == 1.0
    resumed = GradientHealth()
    resumed.load_state_dict(health.state_dict())
    assert (resumed.updates, resumed.clipped_fraction) == (4, 1.0)


def test_clipping_by_value_bounds_every_gradient_entry():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_one", "binary", "lstm", clip_algorithm="value", clip_value=1e-3)
    seen = []

    class Spy(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(max(p.grad.abs().max().item() for p in pl_module.parameters()))

    make_trainer(max_epochs=2, callbacks=[Spy()]).fit(
        model, train_dataloaders=ResumableLoader([make_batch("many_to_one", "binary")])
    )
    assert len(seen) == 2 and max(seen) <= 1e-3 * (1 + 1e-6)  # float32 rounding of 1e-3


def test_nan_loss_stops_training_with_the_step_cause_and_remedies():
    model = make_model("many_to_many", "regression", "lstm", k1=5)
    batch = make_batch("many_to_many", "regression")
    batch["x"][0, 7, 1] = float("nan")
    with pytest.raises(GradientExplosionError) as info:
        fit_with_health(model, batch, GradientHealth())
    message = str(info.value)
    assert "optimizer step 1" in message and "NaN/inf in ['x']" in message
    for remedy in ("lower the learning rate", "clip gradients by norm", "smaller k2", "check the input"):
        assert remedy in message


def test_non_finite_gradient_stops_training_before_the_weights_are_corrupted():
    model = make_model("many_to_one", "regression", "gru")

    class PoisonGradient(pl.Callback):
        def on_after_backward(self, trainer, pl_module):
            pl_module.net.head.bias.grad.fill_(float("inf"))

    with pytest.raises(GradientExplosionError, match=r"Non-finite gradient .* in \['net.head.bias'\]"):
        make_trainer(callbacks=[PoisonGradient(), GradientHealth()]).fit(
            model, train_dataloaders=ResumableLoader([make_batch("many_to_one", "regression")])
        )
    assert all(torch.isfinite(p).all() for p in model.parameters())


def vanishing_warnings(caplog, model, threshold):
    """Fit one batch under GradientHealth and return the vanishing-gradient log records; Python warnings fail it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the logger is the one channel: no warnings.warn as well
        with caplog.at_level(logging.WARNING, logger="models.diagnostics"):
            fit_with_health(
                model, make_batch("many_to_many", "regression"), GradientHealth(vanishing_threshold=threshold), epochs=2
            )
    return [r for r in caplog.records if r.name == "models.diagnostics" and "Vanishing gradient" in r.getMessage()]


def test_vanishing_gradient_at_lag_k2_is_logged_once_and_suggests_a_gated_cell_to_an_elman_rnn(caplog):
    model = make_model("many_to_many", "regression", "rnn", k1=10, k2=10)
    with torch.no_grad():
        model.net.core.rnn.weight_hh_l0.mul_(0.05)
    records = vanishing_warnings(caplog, model, threshold=1e-2)
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert re.search("Vanishing gradient .* at lag 9", message) and "gated cell (lstm or gru)" in message


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_vanishing_gradient_advice_to_a_gated_cell_does_not_suggest_a_gated_cell(caplog, cell):
    model = make_model("many_to_many", "regression", cell, k1=10, k2=10)
    with torch.no_grad():
        model.net.core.rnn.weight_hh_l0.mul_(0.05)
    records = vanishing_warnings(caplog, model, threshold=0.5)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "already gated" in message and "smaller k2" in message and "lstm" not in message


def test_bidirectional_models_skip_the_lag_probe_with_a_warning_and_log_the_rest(caplog):
    model = make_model("many_to_one", "binary", "lstm", bidirectional=True)
    logger = MemoryLogger()
    with caplog.at_level(logging.WARNING, logger="models.diagnostics"):
        fit_with_health(model, make_batch("many_to_one", "binary"), GradientHealth(), logger=logger)
    assert any("no causal lag profile" in r.getMessage() for r in caplog.records)
    keys = set().union(*(m for _, m in logger.records))
    assert "spectral_radius/net.core.weight_hh_l0_reverse/f" in keys and "grad_norm/pre_clip" in keys
    assert not any(k.startswith("grad_h_lag/") for k in keys)


@pytest.mark.parametrize("topology", ["many_to_one", "one_to_many", "encoder_decoder"])
def test_every_unidirectional_topology_offers_a_lag_profile(topology):
    model = make_model(topology, "regression", "lstm")
    profile = model.gradient_lag_profile(make_batch(topology, "regression"))
    assert profile.ndim == 1 and len(profile) >= 4 and torch.isfinite(profile).all() and profile[0] > 0
