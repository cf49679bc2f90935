"""Truncated backpropagation through time, TBPTT(k1, k2), independent of Lightning.

Every k1 steps one update: the loss sits on the newest k1 outputs and the gradient flows back
through the last k2 steps (k2 >= k1). To get exactly k2 steps of history per update the last k2
steps are re-run from a detached state saved k2 steps back (cost ~ k2/k1 forwards per update),
and each replay captures, detached, the state the next update will restart from.
k1 = k2 = T (both None) is full BPTT: one update per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from models.recurrent import State, detach_state
from models.rules import check_tbptt_window

StepFn = Callable[[Tensor, "State | None"], "tuple[Tensor, State]"]
"""Runs a chunk [B, t, ...] from a state; returns predictions [B, t, O] and the state after it."""

ChunkLossFn = Callable[[Tensor, int, int], "tuple[Tensor, Tensor]"]
"""(predictions for steps [start, end), start, end) -> (sum of per-step losses over the valid steps, their number)."""

UpdateFn = Callable[[Tensor], None]
"""Backward + clip + optimizer step on one update's loss (the mean over its valid steps)."""


@dataclass(frozen=True)
class Update:
    """One optimizer update: replay [replay_start, end), loss on [loss_start, end),
    and save the detached state at ``next_replay_start`` for the next update."""

    replay_start: int
    loss_start: int
    end: int
    next_replay_start: int


@dataclass
class TBPTTResult:
    """What one batch of TBPTT produced: the mean loss over all valid steps (detached), the number of
    optimizer updates taken, and the detached state after the last step (to carry into the next batch)."""

    loss: Tensor
    updates: int
    state: State | None


def resolve_window(T: int, k1: int | None, k2: int | None) -> tuple[int, int]:
    """Effective (k1, k2) for a sequence of length T: None means 'the whole batch', both are capped at T."""
    if T < 1:
        raise ValueError(f"the sequence must have at least one step, got T={T}")
    k1_eff = T if k1 is None else min(k1, T)
    k2_eff = T if k2 is None else min(k2, T)
    check_tbptt_window(k1_eff, k2_eff)
    return k1_eff, k2_eff


def plan_updates(T: int, k1: int | None, k2: int | None) -> list[Update]:
    """The ceil(T/k1) updates of one batch of length T."""
    k1_eff, k2_eff = resolve_window(T, k1, k2)
    ends = [min(k1_eff * j, T) for j in range(1, math.ceil(T / k1_eff) + 1)]
    plan = []
    for j, end in enumerate(ends):
        loss_start = ends[j - 1] if j > 0 else 0
        next_end = ends[j + 1] if j + 1 < len(ends) else end
        plan.append(Update(max(0, end - k2_eff), loss_start, end, max(0, next_end - k2_eff)))
    return plan


def truncated_bptt(
    step: StepFn,
    x: Tensor,
    chunk_loss: ChunkLossFn,
    update: UpdateFn,
    k1: int | None = None,
    k2: int | None = None,
    state: State | None = None,
) -> TBPTTResult:
    """Run TBPTT(k1, k2) over ``x`` [B, T, ...] starting from ``state`` (detached first: it comes from
    an earlier batch, whose graph is gone). An update whose chunk has no valid step is skipped, but
    its forward still runs, so the carried state stays right."""
    states: dict[int, State | None] = {0: detach_state(state)}
    total = x.new_zeros((), dtype=torch.float32)
    count = x.new_zeros((), dtype=torch.float32)
    updates = 0
    for u in plan_updates(x.shape[1], k1, k2):
        current = states[u.replay_start]
        outputs = []
        for a, b in ((u.replay_start, u.next_replay_start), (u.next_replay_start, u.end)):
            if b > a:
                pred, current = step(x[:, a:b], current)  # [B, b-a, O]
                outputs.append(pred)
            states[b] = detach_state(current)
        for key in [k for k in states if k < u.next_replay_start]:
            del states[key]
        pred = torch.cat(outputs, dim=1)[:, u.loss_start - u.replay_start :]  # [B, k1, O]
        loss_sum, n_valid = chunk_loss(pred, u.loss_start, u.end)
        total = total + loss_sum.detach().float()
        count = count + n_valid
        if int(n_valid) > 0:
            update(loss_sum / n_valid)
            updates += 1
    mean = total / count.clamp_min(1.0)
    return TBPTTResult(loss=mean, updates=updates, state=states[x.shape[1]])
