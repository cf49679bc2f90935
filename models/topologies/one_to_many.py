"""one_to_many: a vector to a sequence of a requested length."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from models.diagnostics import lag_profile
from models.recurrent import RecurrentCore, State
from models.rules import check_bidirectional
from models.topologies.base import CoreFactory, Topology, horizon_of

if TYPE_CHECKING:
    from models.config import ModelConfig

CONDITIONS = ("state", "input", "both")


def step_width(condition: str, input_size: int) -> int:
    """Features the core reads per step: a constant zero when the vector only sets the state, else the vector."""
    return 1 if condition == "state" else input_size


class OneToMany(Topology):
    """A vector to a sequence of a requested length.

    ``condition`` says how the vector reaches the core: "state" (it initialises the hidden state,
    the steps then see a constant zero input), "input" (it is fed at every step from a zero state)
    or "both".
    """

    name: ClassVar[str] = "one_to_many"
    causal: ClassVar[bool] = True
    accepts_tokens: ClassVar[bool] = False

    def __init__(self, core: RecurrentCore, input_size: int, output_size: int, condition: str = "state") -> None:
        super().__init__()
        check_bidirectional(type(self), core.bidirectional)
        if condition not in CONDITIONS:
            raise ValueError(f"condition={condition!r} is not known; use one of {CONDITIONS}")
        width = step_width(condition, input_size)
        if core.input_size != width:
            raise ValueError(
                f"one_to_many with condition={condition!r} feeds {width} feature(s) per step, "
                f"but the core takes input_size={core.input_size}"
            )
        self.condition = condition
        self.input_size = input_size
        self.core = core
        self.head = nn.Linear(core.output_size, output_size)
        if condition in ("state", "both"):
            parts = 2 if core.cell == "lstm" else 1
            self.to_state = nn.Linear(input_size, parts * core.num_layers * core.hidden_size)

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
    ) -> OneToMany:
        """A core as wide as what ``condition`` feeds it per step; the vector has ``input_size`` features."""
        return cls(core(step_width(condition, input_size)), input_size, output_size, condition)

    def core_inputs(self, v: Tensor, horizon: int) -> tuple[Tensor, State | None]:
        """The per-step inputs and initial state that the conditioning vector ``v`` [B, F] produces."""
        if v.dim() != 2 or v.shape[1] != self.input_size:
            raise ValueError(f"one_to_many expects x of shape [B, {self.input_size}], got {tuple(v.shape)}")
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1")
        batch = v.shape[0]
        if self.condition == "state":
            steps = v.new_zeros(batch, horizon, 1)  # [B, T, 1]
        else:
            steps = v[:, None, :].expand(batch, horizon, self.input_size).contiguous()  # [B, T, F]
        if self.condition == "input":
            return steps, None
        core = self.core
        flat = torch.tanh(self.to_state(v))  # [B, P*L*H]
        stacked = flat.view(batch, -1, core.hidden_size).transpose(0, 1).contiguous()  # [P*L, B, H]
        if core.cell == "lstm":
            h, c = stacked.split(core.num_layers)  # [L, B, H], [L, B, H]
            return steps, (h.contiguous(), c.contiguous())
        return steps, stacked

    def forward(self, v: Tensor, horizon: int) -> Tensor:
        """Generate ``horizon`` outputs from the vector ``v`` [B, F]."""
        steps, state = self.core_inputs(v, horizon)  # [B, T, F'], [L, B, H]
        out, _ = self.core(steps, state)  # [B, T, H]
        return self.head(out)  # [B, T, O]

    def infer(self, batch: Mapping[str, Any]) -> Tensor:
        """As many outputs as the target has steps (or the batch's ``horizon``)."""
        return self(batch["x"], horizon_of(batch, self.name))  # [B, T, O]

    def lag_profile(self, batch: Mapping[str, Any], config: ModelConfig, max_lag: int | None) -> Tensor:
        """The loss at the last generated step, back to the first."""
        y = batch["y"]
        inputs, state = self.core_inputs(batch["x"], y.shape[1])  # [B, T, F'], [L, B, H]
        loss = self.readout_loss(config.head, y[:, -1])  # target [B, O]
        return lag_profile(self.core, inputs, loss, state=state, max_lag=max_lag)  # [max_lag + 1]
