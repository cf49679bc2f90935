"""many_to_many: one output per input step (next-step forecasting, sequence labelling), trained with TBPTT.

It is the only topology whose state outlives a batch: training carries it from one TBPTT chunk to the
next and, when a batch continues the previous one, across batches (SequenceModel keeps that state).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from models.diagnostics import lag_profile
from models.heads import masked_sum, per_step_loss
from models.recurrent import RecurrentCore, State, detach_state
from models.rules import check_bidirectional, check_target_index
from models.tbptt import truncated_bptt
from models.topologies.base import CoreFactory, Topology, UpdateFn, clean_targets, embed_inputs

if TYPE_CHECKING:
    from models.config import ModelConfig


def last_valid(mask: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor:
    """Index of each row's last unmasked step (T-1 without a mask): where its loss sits in a lag probe."""
    if mask is None:
        return torch.full((batch,), steps - 1, dtype=torch.long, device=device)  # [B]
    order = torch.arange(steps, device=device).expand(batch, steps)  # [B, T]
    return torch.where(mask.to(torch.bool), order, torch.zeros_like(order)).max(dim=1).values  # [B]


class ManyToMany(Topology):
    """One output per input step; output t is read from the state after step t.

    ``target_index`` is the input feature that holds the target: ``forecast`` feeds each prediction back there.
    """

    name: ClassVar[str] = "many_to_many"
    causal: ClassVar[bool] = True
    accepts_tokens: ClassVar[bool] = True
    truncates: ClassVar[bool] = True
    forecasts: ClassVar[bool] = True

    def __init__(
        self, core: RecurrentCore, output_size: int, embedding: nn.Embedding | None = None, target_index: int = 0
    ) -> None:
        super().__init__()
        check_bidirectional(type(self), core.bidirectional)
        if embedding is None:
            check_target_index(target_index, core.input_size)
        self.target_index = target_index
        self.embedding = embedding
        self.core = core
        self.head = nn.Linear(core.output_size, output_size)

    @classmethod
    def build(
        cls,
        core: CoreFactory,
        *,
        input_size: int,
        output_size: int,
        embedding: nn.Embedding | None,
        condition: str,
        target_index: int,
    ) -> ManyToMany:
        """A core that reads every input step (or its embedding)."""
        return cls(core(input_size), output_size, embedding, target_index)

    def embed(self, x: Tensor) -> Tensor:
        """Inputs as the core sees them (token ids embedded)."""
        return embed_inputs(self.embedding, x)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Predict every step of ``x`` starting from ``state``; returns the state to carry on with."""
        inputs = self.embed(x)  # [B, T, F]
        out, state = self.core(inputs, state)  # [B, T, H]
        return self.head(out), state  # [B, T, O]

    def infer(self, batch: Mapping[str, Any]) -> Tensor:
        """Every step's output from a zero state."""
        return self(batch["x"])[0]  # [B, T, O]

    def fit_batch(
        self, batch: Mapping[str, Any], config: ModelConfig, update: UpdateFn, state: State | None
    ) -> tuple[Tensor, State | None]:
        """TBPTT(k1, k2) over the batch from ``state``: an update every k1 steps, masked steps carry no loss."""
        x, mask = batch["x"], batch.get("mask")
        y = clean_targets(batch["y"], mask)

        def chunk_loss(pred: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
            loss = per_step_loss(config.head, pred, y[:, start:end])  # [B, k1]
            return masked_sum(loss, None if mask is None else mask[:, start:end])

        result = truncated_bptt(self, x, chunk_loss, update, config.k1, config.k2, state)
        return result.loss, result.state

    def validation_outputs(self, batch: Mapping[str, Any], state: State | None) -> tuple[Tensor, State | None]:
        """Outputs from the carried validation state (separate from training's), and the state after them."""
        pred, state = self(batch["x"], state)  # [B, T, O]
        return pred, detach_state(state)

    def forecast(self, history: Tensor, horizon: int, future: Tensor | None = None,
                 state: State | None = None) -> Tensor:
        """Autoregressive: output t predicts the target at t+1, so each prediction is fed back as feature
        ``target_index`` of the next input. The other features of the inputs after the history come from
        ``future`` [B, horizon - 1, F] when given (inputs known ahead: future covariates, the calendar);
        without it they are held at their last observed value. ``history`` [B, T, F] -> [B, horizon, 1],
        read from ``state`` (the state warmed over the steps before it; None: zeros)."""
        if future is not None and tuple(future.shape) != (history.shape[0], horizon - 1, history.shape[2]):
            raise ValueError(f"future must have shape [B, horizon - 1, F] = "
                             f"{[history.shape[0], horizon - 1, history.shape[2]]}, got {list(future.shape)}")
        pred, state = self(history, state)  # [B, T, 1]
        step = pred[:, -1]  # [B, 1]
        x_next = history[:, -1].clone()  # [B, F]
        steps = [step]
        for h in range(horizon - 1):
            x_next = x_next.clone() if future is None else future[:, h].clone()  # [B, F]
            x_next[:, self.target_index] = step[:, 0]
            pred, state = self(x_next[:, None], state)  # [B, 1, 1]
            step = pred[:, 0]  # [B, 1]
            steps.append(step)
        return torch.stack(steps, dim=1)  # [B, horizon, 1]

    def lag_profile(self, batch: Mapping[str, Any], config: ModelConfig, max_lag: int | None) -> Tensor:
        """The loss at each sequence's last valid step, back to lag k2 unless ``max_lag`` says otherwise."""
        x, mask = batch["x"], batch.get("mask")
        positions = last_valid(mask, x.shape[0], x.shape[1], x.device)  # [B]
        target = clean_targets(batch["y"], mask)[torch.arange(x.shape[0], device=x.device), positions]  # [B, O]
        max_lag = config.k2 if max_lag is None else max_lag
        loss = self.readout_loss(config.head, target)
        return lag_profile(self.core, self.embed(x), loss, positions=positions, max_lag=max_lag)  # [max_lag + 1]
