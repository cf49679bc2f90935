"""The contract between SequenceModel and a topology: capability flags and the behaviour each one owns.

SequenceModel owns the training step, the optimizer, clipping and the state carried between batches;
it asks its topology for everything that depends on how the core is wired: raw outputs at inference
settings (``infer``), the loss and updates of one training batch (``fit_batch``), validation outputs,
the loss itself and the gradient probe (``lag_profile``). Callers decide what a model can do from the
class flags below, never from its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from models.heads import masked_sum, per_step_loss
from models.recurrent import RecurrentCore, State

if TYPE_CHECKING:
    from models.config import ModelConfig

UpdateFn = Callable[[Tensor], None]
"""Backward + clip + optimizer step on a loss; SequenceModel's, so clipping stays in one place."""

CoreFactory = Callable[[int], RecurrentCore]
"""Builds a core of the model's cell, width, layers and dropout that reads the given number of features."""


class TokenEmbedding(nn.Embedding):
    """nn.Embedding (``<pad>`` = 0) with dropout on its vectors: a short-text classifier overfits its
    embedding first. A subclass rather than a wrapper, so the weights keep the key ``embedding.weight``
    that models saved before this option load with."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dropout: float = 0.0) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(super().forward(x))  # [B, T, E]


def embed_inputs(embedding: nn.Embedding | None, x: Tensor) -> Tensor:
    """Token ids [B, T] through the embedding, or float features [B, T, F] unchanged; a wrong dtype is
    a data bug worth a clear message rather than a cryptic one from inside the kernel."""
    if embedding is None:
        if x.dim() != 3 or not torch.is_floating_point(x):
            raise ValueError(f"expected float features of shape [B, T, F], got {tuple(x.shape)} {x.dtype}")
        return x
    if x.dim() != 2 or torch.is_floating_point(x):
        raise ValueError(
            f"this model has an embedding (vocab_size={embedding.num_embeddings}): expected integer token ids "
            f"of shape [B, T], got {tuple(x.shape)} {x.dtype}"
        )
    return embedding(x)  # [B, T, E]


def top_hidden(state: State) -> Tensor:
    """The top layer's hidden state [B, H] of a unidirectional core: what the readout sees."""
    h = state[0] if isinstance(state, tuple) else state  # [L, B, H]
    return h[-1]  # [B, H]


def clean_targets(y: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the targets of masked steps: a NaN there would turn the masked loss's gradient into NaN."""
    if mask is None:
        return y
    keep = mask.to(torch.bool).reshape(mask.shape + (1,) * (y.dim() - mask.dim()))  # [B, T, 1...]
    return torch.where(keep, y, torch.zeros_like(y))  # y's shape


def horizon_of(batch: Mapping[str, Any], topology: str) -> int:
    """How many steps a generating topology produces: the target's length, or the batch's ``horizon``."""
    if "y" in batch:
        return int(batch["y"].shape[1])
    if "horizon" in batch:
        return int(batch["horizon"])
    raise KeyError(f"a {topology} batch needs 'y' or 'horizon' to know how many steps to produce")


class Topology(nn.Module, ABC):
    """How a recurrent core is wired between inputs and outputs, and how that wiring is trained and probed.

    Flags (class-level, read by callers instead of the topology's name):
    - ``causal``: output t depends only on inputs <= t, so a bidirectional core is refused;
    - ``accepts_tokens``: inputs may be token ids through an embedding (vocab_size);
    - ``truncates``: trained by TBPTT(k1, k2), carrying its state from batch to batch;
    - ``forecasts``: offers ``forecast(history, horizon)`` on float histories;
    - ``per_sequence``: one output per sequence (no per-step mask; class probabilities per sequence);
    - ``decodes_targets``: its decoder reads the previous target value, so it predicts one regression target.
    """

    name: ClassVar[str]
    causal: ClassVar[bool]
    accepts_tokens: ClassVar[bool]
    truncates: ClassVar[bool] = False
    forecasts: ClassVar[bool] = False
    per_sequence: ClassVar[bool] = False
    decodes_targets: ClassVar[bool] = False

    head: nn.Linear

    @classmethod
    @abstractmethod
    def build(
        cls,
        core: CoreFactory,
        *,
        input_size: int,
        output_size: int,
        embedding: nn.Embedding | None,
        condition: str,
        target_index: int,
    ) -> Topology:
        """This topology with cores sized for it (``input_size``: the width of each input step or vector)."""

    @abstractmethod
    def infer(self, batch: Mapping[str, Any]) -> Tensor:
        """Raw outputs (values or logits) for a batch at inference settings: zero state, no teacher forcing."""

    @abstractmethod
    def lag_profile(self, batch: Mapping[str, Any], config: ModelConfig, max_lag: int | None) -> Tensor:
        """||dL/dh|| by lag from this topology's loss on ``batch`` (see diagnostics.lag_profile)."""

    def training_outputs(self, batch: Mapping[str, Any], config: ModelConfig) -> Tensor:
        """Raw outputs the training loss is taken on; the inference outputs unless a topology trains differently."""
        return self.infer(batch)

    def fit_batch(
        self, batch: Mapping[str, Any], config: ModelConfig, update: UpdateFn, state: State | None
    ) -> tuple[Tensor, State | None]:
        """The updates of one training batch: here one update on the whole batch. Returns the batch's mean
        loss and the state to carry into the next batch (None: this topology carries nothing)."""
        loss = self.loss(config.head, self.training_outputs(batch, config), batch)
        update(loss)
        return loss, None

    def validation_outputs(self, batch: Mapping[str, Any], state: State | None) -> tuple[Tensor, State | None]:
        """Raw outputs scored by validation, and the validation state to carry (None: nothing to carry)."""
        return self.infer(batch), None

    def loss_mask(self, batch: Mapping[str, Any]) -> Tensor | None:
        """Which output steps carry loss ([B, T] bool), None for all."""
        return batch.get("mask")

    def loss(self, head: str, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """Mean per-step loss of ``pred`` against ``batch["y"]`` over the valid steps."""
        mask = self.loss_mask(batch)
        loss = per_step_loss(head, pred, clean_targets(batch["y"], mask))  # [B] or [B, T]
        total, count = masked_sum(loss, mask)
        return total / count.clamp_min(1.0)

    def readout_loss(self, head: str, target: Tensor) -> Callable[[State], Tensor]:
        """The loss of the readout on a core state (summed over sequences): what a lag probe differentiates."""

        def loss(state: State) -> Tensor:
            return per_step_loss(head, self.head(top_hidden(state)), target).sum()

        return loss
