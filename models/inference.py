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
        self.head_weight, self.head_bias = net.head.weight, net.head.bias  # [1, H], [1]

    def warm(self, histories: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Each row's state after its own history [T_i, F], in one packed call: ([L, B, H],) or (h, c)."""
        lengths = torch.tensor([len(h) for h in histories])  # [B]
        padded = pad_sequence(list(histories), batch_first=True)  # [B, T_max, F]
        packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)  # [L, B, H] (lstm: a pair), rows in the given order
        return state if isinstance(state, tuple) else (state,)

    def step(self, x: Tensor, state: list[tuple[Tensor, ...]]) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """One step of every layer for the whole batch: x [B, F] -> prediction [B], new per-layer states."""
        new = []
        for (w_ih, w_hh, b_ih, b_hh), layer in zip(self.layers, state):
            if self.paired:
                h, c = self.cell(x, layer, w_ih, w_hh, b_ih, b_hh)  # [B, H], [B, H]
                new.append((h, c))
            else:
                h = self.cell(x, layer[0], w_ih, w_hh, b_ih, b_hh)  # [B, H]
                new.append((h,))
            x = h  # [B, H]: the next layer's input
        return torch.addmm(self.head_bias, x, self.head_weight.t())[:, 0], new  # [B]

    def forecast(self, histories: Sequence[Tensor], horizons: Sequence[int],
                 futures: Sequence[Tensor | None] | None = None, deadline: float | None = None) -> list[Tensor]:
        """Forecasts [h_i] for histories [T_i, F] (network space, T_i >= 1) and their horizons. ``futures[i]``
        [h_i - 1, F]: the inputs after history i where they are known ahead (its target feature is replaced by
        the fed-back prediction); None holds the last input's other features, as SequenceModel.forecast does.
        ``deadline`` (time.monotonic()) is checked between blocks and steps: DeadlineExceeded past it."""
        if len(histories) != len(horizons) or not histories:
            raise ValueError("forecast needs one horizon per history, and at least one history")
        dtype = self.head_weight.dtype
        histories = [h.to(dtype) for h in histories]  # each [T_i, F]
        futures = [None if f is None else f.to(dtype) for f in (futures or [None] * len(histories))]  # [h_i - 1, F]
        longest = max(horizons)
        with torch.inference_mode():
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
            top = state[-1][0]  # [B, H]
            predicted = [torch.addmm(self.head_bias, top, self.head_weight.t())[:, 0]]  # [B]
            ahead = self._ahead(histories, futures, longest)  # [B, longest - 1, F]
            for h in range(longest - 1):
                _check(deadline)
                x = ahead[:, h].clone()  # [B, F]
                x[:, self.target_index] = predicted[-1]
                step, state = self.step(x, state)  # [B]
                predicted.append(step)
            out = torch.stack(predicted, dim=1)  # [B, longest]
        return [out[i, :n] for i, n in enumerate(horizons)]

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
