"""many_to_one: one output per sequence (classification, regression of a whole sequence)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from models.diagnostics import lag_profile
from models.recurrent import RecurrentCore
from models.topologies.base import CoreFactory, Topology, embed_inputs

if TYPE_CHECKING:
    from models.config import ModelConfig


def lengths_of(batch: Mapping[str, Any]) -> Tensor:
    """Valid steps per sequence [B]: the batch's ``lengths``, or all T steps when it has none."""
    lengths = batch.get("lengths")
    if lengths is None:
        x = batch["x"]
        return torch.full((x.shape[0],), x.shape[1], dtype=torch.long)  # [B]
    return lengths


class ManyToOne(Topology):
    """One output per sequence, read from the last valid step of each variable-length sequence.

    Packing (rather than reading ``out[:, -1]``) is what makes a padded sequence score exactly like the
    same sequence unpadded: the core never runs over the padding, in either direction.
    """

    name: ClassVar[str] = "many_to_one"
    causal: ClassVar[bool] = False
    accepts_tokens: ClassVar[bool] = True
    per_sequence: ClassVar[bool] = True

    def __init__(self, core: RecurrentCore, output_size: int, embedding: nn.Embedding | None = None) -> None:
        super().__init__()
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
    ) -> ManyToOne:
        """A core that reads every input step (or its embedding)."""
        return cls(core(input_size), output_size, embedding)

    def embed(self, x: Tensor) -> Tensor:
        """Inputs as the core sees them (token ids embedded)."""
        return embed_inputs(self.embedding, x)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``x`` [B, T, F] floats or [B, T] token ids, ``lengths`` [B] valid steps per sequence."""
        inputs = self.embed(x)  # [B, T, F]
        lengths = lengths.detach().to("cpu", torch.int64)  # [B]; pack_padded_sequence wants them on the CPU
        if lengths.dim() != 1 or lengths.numel() != inputs.shape[0]:
            raise ValueError(f"lengths must have shape [{inputs.shape[0]}], got {tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > inputs.shape[1]:
            raise ValueError(
                f"lengths must lie in [1, T={inputs.shape[1]}], got min {int(lengths.min())} max {int(lengths.max())}"
            )
        packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        _, state = self.core(packed)  # [L*D, B, H], original batch order
        h = state[0] if isinstance(state, tuple) else state  # [L*D, B, H]
        last = h[-self.core.num_directions :]  # [D, B, H]: forward dir at the last valid step, backward at step 0
        last = last.transpose(0, 1).reshape(h.shape[1], -1)  # [B, D*H]
        return self.head(last)  # [B, O]

    def infer(self, batch: Mapping[str, Any]) -> Tensor:
        """One output per sequence, read at its last valid step."""
        return self(batch["x"], lengths_of(batch))  # [B, O]

    def loss_mask(self, batch: Mapping[str, Any]) -> Tensor | None:
        """None: the loss sits on one output per sequence, so a per-step mask does not apply."""
        return None

    def lag_profile(self, batch: Mapping[str, Any], config: ModelConfig, max_lag: int | None) -> Tensor:
        """The sequence's loss at its last valid step, back through its length."""
        x = batch["x"]
        positions = lengths_of(batch).to(x.device) - 1  # [B]
        loss = self.readout_loss(config.head, batch["y"])
        return lag_profile(self.core, self.embed(x), loss, positions=positions, max_lag=max_lag)  # [max_lag + 1]
