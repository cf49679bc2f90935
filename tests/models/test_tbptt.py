"""Truncated BPTT(k1, k2): the update plan, gradient equivalences, truncation, update counts, carried state."""

import math

import pytest
import pytorch_lightning as pl
import torch

from models import RecurrentCore, Update, detach_state, plan_updates, truncated_bptt
from models.heads import masked_sum, per_step_loss
from models.topologies import ManyToMany
from tests.models.helpers import ResumableLoader, make_model, make_trainer


def tiny_net(cell: str = "lstm") -> ManyToMany:
    torch.manual_seed(0)
    return ManyToMany(RecurrentCore(cell, 2, 6), output_size=1)


def mse_chunk_loss(y):
    def chunk_loss(pred, start, end):
        return masked_sum(per_step_loss("regression", pred, y[:, start:end]), None)

    return chunk_loss


def test_plan_replays_k2_steps_and_puts_the_loss_on_the_newest_k1():
    assert plan_updates(10, 3, 5) == [
        Update(replay_start=0, loss_start=0, end=3, next_replay_start=1),
        Update(replay_start=1, loss_start=3, end=6, next_replay_start=4),
        Update(replay_start=4, loss_start=6, end=9, next_replay_start=5),
        Update(replay_start=5, loss_start=9, end=10, next_replay_start=5),
    ]


def test_k2_smaller_than_k1_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"k2 \(3\) must be >= k1 \(5\)"):
        plan_updates(10, 5, 3)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_k1_equal_k2_equal_T_gives_full_bptt_gradients(cell):
    net = tiny_net(cell)
    x, y = torch.randn(4, 12, 2), torch.randn(4, 12, 1)
    params = list(net.parameters())
    captured = []
    truncated_bptt(
        net, x, mse_chunk_loss(y), lambda loss: captured.append(torch.autograd.grad(loss, params)), k1=12, k2=12
    )
    full = torch.autograd.grad(per_step_loss("regression", net(x)[0], y).mean(), params)
    assert len(captured) == 1
    for g_tbptt, g_full in zip(captured[0], full):
        assert torch.allclose(g_tbptt, g_full, atol=1e-6)


def test_chunked_updates_without_truncation_add_up_to_the_full_bptt_gradient():
    net = tiny_net()
    x, y = torch.randn(4, 12, 2), torch.randn(4, 12, 1)
    params = list(net.parameters())
    total = [torch.zeros_like(p) for p in params]

    def accumulate(loss):
        for acc, g in zip(total, torch.autograd.grad(loss, params)):
            acc += g

    truncated_bptt(net, x, mse_chunk_loss(y), accumulate, k1=3, k2=None)
    full = torch.autograd.grad(per_step_loss("regression", net(x)[0], y).mean(), params)
    for acc, g in zip(total, full):
        assert torch.allclose(acc, 4 * g, atol=1e-5)  # 4 equal chunks, each loss a mean over its 3 steps


def test_gradient_wrt_inputs_older_than_k2_steps_is_exactly_zero():
    net = tiny_net()
    x = torch.randn(3, 20, 2, requires_grad=True)
    y = torch.randn(3, 20, 1)
    k1, k2 = 4, 7
    grads = []
    truncated_bptt(net, x, mse_chunk_loss(y), lambda loss: grads.append(torch.autograd.grad(loss, x)[0]), k1=k1, k2=k2)
    assert len(grads) == 5
    for j, g in enumerate(grads):
        end = min(k1 * (j + 1), 20)
        start = max(0, end - k2)
        assert torch.count_nonzero(g[:, :start]) == 0
        assert torch.count_nonzero(g[:, end:]) == 0
        assert (g[:, start:end].abs().sum(dim=(0, 2)) > 0).all()


def test_carried_state_continues_the_sequence_exactly():
    net = tiny_net()
    x, y = torch.randn(2, 12, 2), torch.randn(2, 12, 1)
    first = truncated_bptt(net, x[:, :6], mse_chunk_loss(y[:, :6]), lambda loss: None, k1=2, k2=4)
    second = truncated_bptt(net, x[:, 6:], mse_chunk_loss(y[:, 6:]), lambda loss: None, k1=2, k2=4, state=first.state)
    _, whole = net(x)
    assert torch.allclose(second.state[0], detach_state(whole)[0], atol=1e-6)
    expected = per_step_loss("regression", net(x)[0][:, 6:], y[:, 6:]).mean()
    assert torch.allclose(second.loss, expected, atol=1e-6)


def test_masked_steps_carry_no_loss_even_when_their_targets_are_nan():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_many", "regression", "lstm", k1=4, k2=4)
    x, y = torch.randn(4, 8, 2), torch.randn(4, 8, 1)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[:, 5:] = False
    y_gappy = y.clone()
    y_gappy[:, 5:] = float("nan")
    clean = model.net.loss("regression", model({"x": x}), {"x": x, "y": y, "mask": mask})
    gappy = model.net.loss("regression", model({"x": x}), {"x": x, "y": y_gappy, "mask": mask})
    assert torch.equal(clean, gappy) and torch.isfinite(gappy)
    make_trainer(max_epochs=2).fit(model, train_dataloaders=ResumableLoader([{"x": x, "y": y_gappy, "mask": mask}]))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("T,k1,k2", [(10, 3, 6), (12, 4, 4), (9, 9, 9), (7, 2, None)])
def test_module_takes_one_optimizer_step_per_k1_steps(T, k1, k2):
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_many", "regression", "gru", k1=k1, k2=k2)
    batch = {"x": torch.randn(4, T, 2), "y": torch.randn(4, T, 1)}
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=ResumableLoader([batch]))
    assert trainer.global_step == math.ceil(T / k1)


def test_reset_false_continues_from_the_previous_batch_and_true_restarts():
    pl.seed_everything(0, verbose=False)
    model = make_model("many_to_many", "regression", "lstm").eval()
    x, y = torch.randn(3, 10, 2), torch.randn(3, 10, 1)
    with torch.no_grad():
        whole = model({"x": x})
        model.validation_step({"x": x[:, :5], "y": y[:, :5]}, 0)
        continued = model.validation_step({"x": x[:, 5:], "y": y[:, 5:], "reset": False}, 1)
        restarted = model.validation_step({"x": x[:, 5:], "y": y[:, 5:], "reset": True}, 2)
        model.validation_step({"x": x[:, :5], "y": y[:, :5]}, 3)
        per_row = model.validation_step({"x": x[:, 5:], "y": y[:, 5:], "reset": torch.tensor([False, True, False])}, 4)
    assert torch.allclose(continued, per_step_loss("regression", whole[:, 5:], y[:, 5:]).mean(), atol=1e-6)
    alone = model({"x": x[:, 5:]})
    assert torch.allclose(restarted, per_step_loss("regression", alone, y[:, 5:]).mean(), atol=1e-6)
    mixed = torch.stack([whole[0, 5:], alone[1], whole[2, 5:]])
    assert torch.allclose(per_row, per_step_loss("regression", mixed, y[:, 5:]).mean(), atol=1e-6)


def test_reset_false_with_a_different_batch_size_is_refused():
    model = make_model("many_to_many", "regression", "gru")
    with torch.no_grad():
        model.validation_step({"x": torch.randn(3, 4, 2), "y": torch.randn(3, 4, 1)}, 0)
        with pytest.raises(ValueError, match="batch size changed from 3 to 2"):
            model.validation_step({"x": torch.randn(2, 4, 2), "y": torch.randn(2, 4, 1), "reset": False}, 1)
