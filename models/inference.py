"""Batched autoregressive forecasting for serving: many histories, one forward per horizon step.

``SequenceModel.forecast`` runs one batch of equal-length histories through the training-time module
stack (embedding check, core, head, a clone per step): ~0.13 ms a step for a 32-unit LSTM, most of it
Python around a cell that costs a fraction of that. A server scoring requests that arrive together
wants the opposite trade: histories of different lengths in one batch, different horizons in one
batch, and the cheapest possible step. So a ``Stepper`` holds the network's weights laid out for
stepping and

- warms each row's state over its own history in one fused call (a packed sequence: no padding
  step ever touches a state, so each row's state is exactly what it would be alone);
- runs one cell call per layer plus one readout per horizon step for the whole batch, to the
  longest horizon, and cuts each row to its own;
- checks a deadline between steps and between blocks of rows, so a request that ran out of time
  stops working instead of holding the worker.

Results equal ``SequenceModel.forecast`` within float tolerance (tests/models/test_inference.py).

A quantile head (O quantiles of the next value per step) is not fed back as one value: one-step quantiles
are not h-step quantiles. ``sample_paths`` warms each row once, copies its state into N paths, and at each
step draws a level u ~ U(0, 1) per path, reads that path's quantile function at u (models/heads.py) and
feeds the value back, so the N paths are draws from the model's joint distribution over the horizon.
The levels come from a generator seeded per call and are the same for every row (common random
numbers), so a row's paths do not depend on what it was batched with.

Only a network that feeds its prediction back step by step through a unidirectional core
(``stepper_for`` says which) can be stepped; callers fall back to ``SequenceModel.forecast``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

from models.heads import quantile_function

__all__ = ["BLOCK_STEPS", "DeadlineExceeded", "Stepper", "stepper_for"]

BLOCK_STEPS = 65536
"""History steps warmed per fused call: the deadline is checked between blocks of rows this size."""

_CELLS: dict[str, Callable[..., Any]] = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}


class DeadlineExceeded(TimeoutError):
    """The caller's deadline passed while forecasting: the work was abandoned, not finished."""


def stepper_for(network: Any) -> "Stepper | None":
    """A Stepper for a SequenceModel whose topology forecasts autoregressively from a carried state
    (``forecasts`` and ``truncates``) over a unidirectional core of float inputs; None otherwise (an
    encoder-decoder, a bidirectional core, token inputs, or no network at all: a baseline)."""
    net = getattr(network, "net", None)
    core = getattr(net, "core", None)
    if net is None or core is None or not (getattr(net, "forecasts", False) and getattr(net, "truncates", False)):
        return None
    if core.bidirectional or getattr(net, "embedding", None) is not None or core.cell not in _CELLS:
        return None
    return Stepper(net)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("the forecast ran past its deadline and was abandoned")


class Stepper:
    """A many-to-many network's weights, laid out for batched step-by-step inference."""

    def __init__(self, net: Any) -> None:
        rnn = net.core.rnn
        self.rnn, self.cell, self.target_index = rnn, _CELLS[net.core.cell], net.target_index
        self.layers = [tuple(getattr(rnn, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                       for k in range(rnn.num_layers)]
        self.paired = net.core.cell == "lstm"  # state (h, c) rather than h
        self.head_weight, self.head_bias = net.head.weight, net.head.bias  # [O, H], [O]
        self.outputs = int(self.head_weight.shape[0])  # 1: a value per step; O > 1: O quantiles (sample_paths)

    def warm(self, histories: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Each row's state after its own history [T_i, F], in one packed call: ([L, B, H],) or (h, c)."""
        lengths = torch.tensor([len(h) for h in histories])  # [B]
        padded = pad_sequence(list(histories), batch_first=True)  # [B, T_max, F]
        packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)  # [L, B, H] (lstm: a pair), rows in the given order
        return state if isinstance(state, tuple) else (state,)

    def readout(self, top: Tensor) -> Tensor:
        """Head outputs [B, O] of the top layer's hidden state [B, H]."""
        return torch.addmm(self.head_bias, top, self.head_weight.t())  # [B, O]

    def step(self, x: Tensor, state: list[tuple[Tensor, ...]]) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """One step of every layer for the whole batch: x [B, F] -> head outputs [B, O], new per-layer states."""
        new = []
        for (w_ih, w_hh, b_ih, b_hh), layer in zip(self.layers, state):
            if self.paired:
                h, c = self.cell(x, layer, w_ih, w_hh, b_ih, b_hh)  # [B, H], [B, H]
                new.append((h, c))
            else:
                h = self.cell(x, layer[0], w_ih, w_hh, b_ih, b_hh)  # [B, H]
                new.append((h,))
            x = h  # [B, H]: the next layer's input
        return self.readout(x), new  # [B, O]

    def forecast(self, histories: Sequence[Tensor], horizons: Sequence[int],
                 futures: Sequence[Tensor | None] | None = None, deadline: float | None = None) -> list[Tensor]:
        """Forecasts [h_i] for histories [T_i, F] (network space, T_i >= 1) and their horizons. ``futures[i]``
        [h_i - 1, F]: the inputs after history i where they are known ahead (its target feature is replaced by
        the fed-back prediction); None holds the last input's other features, as SequenceModel.forecast does.
        ``deadline`` (time.monotonic()) is checked between blocks and steps: DeadlineExceeded past it."""
        if self.outputs != 1:
            raise ValueError(f"this network predicts {self.outputs} quantiles per step: forecast it with sample_paths")
        with torch.inference_mode():
            state, ahead, longest = self._start(histories, horizons, futures, deadline)
            out = self._roll(state, ahead, longest, lambda outputs, h: outputs[:, 0], deadline)  # [B, longest]
        return [out[i, :n] for i, n in enumerate(horizons)]

    def sample_paths(self, histories: Sequence[Tensor], horizons: Sequence[int], paths: int, seed: int,
                     futures: Sequence[Tensor | None] | None = None, deadline: float | None = None) -> list[Tensor]:
        """``paths`` sample paths [paths, h_i] per history of a quantile network (module docstring); the
        arguments otherwise as ``forecast``. The same ``seed`` gives the same paths."""
        if self.outputs < 2:
            raise ValueError("sample_paths needs a quantile head (several outputs per step); this network has one")
        generator = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            state, ahead, longest = self._start(histories, horizons, futures, deadline)
            rows = len(histories)
            levels = torch.rand(paths, longest, generator=generator).repeat(rows, 1)  # [B * N, longest]
            state = [tuple(s.repeat_interleave(paths, dim=0) for s in layer) for layer in state]  # [B * N, H] each
            ahead = ahead.repeat_interleave(paths, dim=0)  # [B * N, longest - 1, F]

            def draw(outputs: Tensor, h: int) -> Tensor:
                return quantile_function(torch.sort(outputs, dim=-1).values, levels[:, h])  # [B * N]

            out = self._roll(state, ahead, longest, draw, deadline).reshape(rows, paths, longest)  # [B, N, longest]
        return [out[i, :, :n] for i, n in enumerate(horizons)]

    def _start(self, histories: Sequence[Tensor], horizons: Sequence[int], futures: Sequence[Tensor | None] | None,
               deadline: float | None) -> tuple[list[tuple[Tensor, ...]], Tensor, int]:
        """(each row's per-layer state after its history, the inputs after it [B, longest - 1, F], longest)."""
        if len(histories) != len(horizons) or not histories:
            raise ValueError("forecast needs one horizon per history, and at least one history")
        dtype = self.head_weight.dtype
        histories = [h.to(dtype) for h in histories]  # each [T_i, F]
        futures = [None if f is None else f.to(dtype) for f in (futures or [None] * len(histories))]  # [h_i - 1, F]
        longest = max(horizons)
        states, block, steps = [], [], 0
        for history in histories:
            block.append(history)
            steps += len(history)
            if steps >= BLOCK_STEPS:
                _check(deadline)
                states.append(self.warm(block))
                block, steps = [], 0
        if block:
            states.append(self.warm(block))
        state = [tuple(torch.cat([s[i][layer] for s in states]) for i in range(len(states[0])))
                 for layer in range(len(self.layers))]  # per layer: ([B, H],) or ([B, H], [B, H])
        return state, self._ahead(histories, futures, longest), longest

    def _roll(self, state: list[tuple[Tensor, ...]], ahead: Tensor, longest: int,
              pick: Callable[[Tensor, int], Tensor], deadline: float | None) -> Tensor:
        """Step the rows forward ``longest`` steps from ``state``, feeding back ``pick(head outputs [B, O], step)``
        [B] as the target feature of the next input ``ahead`` [B, longest - 1, F]: the picked values [B, longest]."""
        predicted = [pick(self.readout(state[-1][0]), 0)]  # [B]
        for h in range(longest - 1):
            _check(deadline)
            x = ahead[:, h].clone()  # [B, F]
            x[:, self.target_index] = predicted[-1]
            outputs, state = self.step(x, state)  # [B, O]
            predicted.append(pick(outputs, h + 1))
        return torch.stack(predicted, dim=1)  # [B, longest]

    @staticmethod
    def _ahead(histories: Sequence[Tensor], futures: Sequence[Tensor | None], longest: int) -> Tensor:
        """The inputs of the steps after each history [B, longest - 1, F]: its known future where given (padded
        past its own horizon: those steps are cut), else its last input held."""
        rows = []
        for history, future in zip(histories, futures):
            held = history[-1:].expand(max(longest - 1, 0), -1)  # [longest - 1, F]
            if future is not None and len(future):
                held = torch.cat([future, held[len(future):]])  # [longest - 1, F]
            rows.append(held)
        return torch.stack(rows)  # [B, longest - 1, F]
