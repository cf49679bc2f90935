"""many_to_one: one output per sequence (classification, regression of a whole sequence)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.diagnostics import lag_profile
from models.heads import per_step_loss
from models.recurrent import RecurrentCore, State
from models.topologies.base import CoreFactory, Topology, embed_inputs, top_hidden

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

    ``pooling="concat"`` reads [last state; max; mean] of the top layer's outputs over the valid steps
    (ULMFiT's concat pooling): in a short text the telling word is often not the last one, and the
    max and mean let the readout see it without the last state having to remember it.

    A batch's ``offset`` [B, O], when present, is added to the readout's logits: another model's
    log-probabilities that the network learns to correct (a residual on a base model). With the readout
    zeroed (``zero_readout``) the network starts as exactly that base model.
    """

    name: ClassVar[str] = "many_to_one"
    causal: ClassVar[bool] = False
    accepts_tokens: ClassVar[bool] = True
    per_sequence: ClassVar[bool] = True

    def __init__(
        self, core: RecurrentCore, output_size: int, embedding: nn.Embedding | None = None, pooling: str = "last"
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.core = core
        self.pooling = pooling
        self.head = nn.Linear(core.output_size * (3 if pooling == "concat" else 1), output_size)

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
        pooling: str = "last",
    ) -> ManyToOne:
        """A core that reads every input step (or its embedding)."""
        return cls(core(input_size), output_size, embedding, pooling)

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
        out, state = self.core(packed)  # out packed [B, T, D*H]; state [L*D, B, H], original batch order
        h = state[0] if isinstance(state, tuple) else state  # [L*D, B, H]
        last = h[-self.core.num_directions :]  # [D, B, H]: forward dir at the last valid step, backward at step 0
        last = last.transpose(0, 1).reshape(h.shape[1], -1)  # [B, D*H]
        if self.pooling == "concat":
            last = torch.cat([last, *self._pool(out, lengths)], dim=-1)  # [B, 3*D*H]
        return self.head(last)  # [B, O]

    @staticmethod
    def _pool(out: Any, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Max and mean of the top layer's outputs over each sequence's valid steps (padding excluded)."""
        steps, _ = pad_packed_sequence(out, batch_first=True)  # [B, T', D*H], T' = longest in the batch
        valid = (torch.arange(steps.shape[1])[None, :] < lengths[:, None]).to(steps.device)  # [B, T']
        valid = valid.unsqueeze(-1)  # [B, T', 1]
        maximum = steps.masked_fill(~valid, float("-inf")).max(dim=1).values  # [B, D*H]
        mean = (steps * valid).sum(dim=1) / lengths.to(steps.device, steps.dtype)[:, None]  # [B, D*H]
        return maximum, mean

    def infer(self, batch: Mapping[str, Any]) -> Tensor:
        """One output per sequence, read at its last valid step, plus the batch's ``offset`` if it has one."""
        logits = self(batch["x"], lengths_of(batch))  # [B, O]
        offset = batch.get("offset")
        return logits if offset is None else logits + offset.to(logits.device, logits.dtype)  # [B, O]

    def zero_readout(self) -> None:
        """Zero the readout's weights and bias: the outputs are then the batch's offset alone."""
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def loss_mask(self, batch: Mapping[str, Any]) -> Tensor | None:
        """None: the loss sits on one output per sequence, so a per-step mask does not apply."""
        return None

    def readout_loss(self, head: str, target: Tensor) -> Callable[[State], Tensor]:
        """The readout's loss on a core state; with concat pooling, through the columns that read the last
        state (the max and mean paths reach other steps, which a lag probe from one state cannot follow)."""
        width = self.core.output_size

        def loss(state: State) -> Tensor:
            logits = nn.functional.linear(top_hidden(state), self.head.weight[:, :width], self.head.bias)  # [B, O]
            return per_step_loss(head, logits, target).sum()

        return loss

    def lag_profile(self, batch: Mapping[str, Any], config: ModelConfig, max_lag: int | None) -> Tensor:
        """The sequence's loss at its last valid step, back through its length."""
        x = batch["x"]
        positions = lengths_of(batch).to(x.device) - 1  # [B]
        loss = self.readout_loss(config.head, batch["y"])
        return lag_profile(self.core, self.embed(x), loss, positions=positions, max_lag=max_lag)  # [max_lag + 1]
