"""ModelConfig: every choice that shapes a SequenceModel, validated where it is made.

A flat dataclass of plain values, so it round-trips through a dict (Lightning hparams, MLflow
params, params.yaml) unchanged. Invalid combinations fail here, naming the field, the value and
what is allowed, rather than deep inside a forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from models.heads import HEADS, check_head
from models.recurrent import CELLS
from models.rules import (
    check_bidirectional,
    check_dropout,
    check_embedding_dropout,
    check_memory_steps,
    check_pooling,
    check_target_index,
    check_tbptt,
    check_vocabulary,
)
from models.topologies import CONDITIONS, TOPOLOGIES, topology_class

CLIP_ALGORITHMS = ("norm", "value", None)
SCHEDULERS = (None, "step", "cosine")


@dataclass
class ModelConfig:
    """Architecture, head, TBPTT window, clipping and optimizer of one model variant.

    Precision is not here on purpose: the same config trains in fp32 on a CPU and bf16-mixed on a
    GPU; callers pass precision to the Trainer.

    - ``k1``/``k2``: TBPTT(k1, k2) for many_to_many (update every k1 steps, backprop through the last
      k2). ``k1=None``: one update per batch; ``k2=None``: no truncation. Both None: full BPTT.
    - ``clip_algorithm``: "norm", "value" or None, at ``clip_value``; applied inside the training step.
    - ``teacher_forcing``: encoder_decoder's probability of feeding the true previous target in training.
    - ``target_index``: which input feature is the target (encoder_decoder's decoder input; forecast feedback).
    - ``condition``: one_to_many's conditioning ("state", "input", "both").
    - ``vocab_size``/``embedding_dim``: token-id inputs through nn.Embedding(padding_idx=0); input_size is
      then unused.
    - ``pooling``: a per-sequence topology's readout: "last" (the last valid state) or "concat"
      ([last; max; mean] over the valid steps).
    - ``embedding_dropout``: dropout on the token vectors (token-id inputs only).
    - ``memory_steps``: chrono initialisation of the gates (lstm, gru) for dependencies up to that many
      steps long (RecurrentCore.chrono_init); None keeps PyTorch's initialisation.
    - ``scheduler``: None, "step" (StepLR by ``scheduler_step_size`` epochs, ``scheduler_gamma``) or
      "cosine" (over the Trainer's max_epochs); stepped once per epoch.
    """

    cell: str = "lstm"
    input_size: int = 1
    hidden_size: int = 32
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    topology: str = "many_to_many"
    head: str = "regression"
    output_size: int = 1
    k1: int | None = None
    k2: int | None = None
    clip_algorithm: str | None = "norm"
    clip_value: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    teacher_forcing: float = 0.5
    target_index: int = 0
    condition: str = "state"
    vocab_size: int | None = None
    embedding_dim: int | None = None
    scheduler: str | None = None
    scheduler_step_size: int = 10
    scheduler_gamma: float = 0.5
    pooling: str = "last"
    embedding_dropout: float = 0.0
    memory_steps: int | None = None

    def __post_init__(self) -> None:
        self._choice("cell", CELLS)
        self._choice("topology", TOPOLOGIES)
        self._choice("head", HEADS)
        self._choice("condition", CONDITIONS)
        self._choice("clip_algorithm", CLIP_ALGORITHMS)
        self._choice("scheduler", SCHEDULERS)
        for name in ("input_size", "hidden_size", "num_layers", "output_size", "scheduler_step_size"):
            self._positive_int(name)
        for name in ("k1", "k2", "vocab_size", "embedding_dim"):
            if getattr(self, name) is not None:
                self._positive_int(name)
        check_head(self.head, self.output_size)
        check_memory_steps(self.cell, self.memory_steps)
        self._check_ranges()
        self._check_topology()

    def _choice(self, name: str, allowed: tuple) -> None:
        if getattr(self, name) not in allowed:
            raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} is not allowed; use one of {allowed}")

    def _positive_int(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ModelConfig.{name}={value!r} must be a positive integer")

    def _check_ranges(self) -> None:
        check_dropout(self.dropout, self.num_layers)
        if self.clip_algorithm is not None and not self.clip_value > 0:
            raise ValueError(f"ModelConfig.clip_value={self.clip_value!r} must be > 0 when clip_algorithm is set")
        if not self.lr > 0:
            raise ValueError(f"ModelConfig.lr={self.lr!r} must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"ModelConfig.weight_decay={self.weight_decay!r} must be >= 0")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError(f"ModelConfig.teacher_forcing={self.teacher_forcing!r} must be in [0, 1]")
        if not 0 < self.scheduler_gamma <= 1:
            raise ValueError(f"ModelConfig.scheduler_gamma={self.scheduler_gamma!r} must be in (0, 1]")

    def _check_topology(self) -> None:
        topology = topology_class(self.topology)
        check_bidirectional(topology, self.bidirectional)
        check_tbptt(topology, self.k1, self.k2)
        check_vocabulary(topology, self.vocab_size, self.embedding_dim)
        check_pooling(topology, self.pooling)
        check_embedding_dropout(self.embedding_dropout, self.vocab_size)
        if topology.decodes_targets and (self.head != "regression" or self.output_size != 1):
            raise ValueError(
                f"ModelConfig topology={self.topology!r} feeds the previous target value back into the decoder: it "
                f"needs head='regression' and output_size=1, got head={self.head!r}, output_size={self.output_size}"
            )
        check_target_index(self.target_index, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only: safe for Lightning hparams, YAML and MLflow params."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping, refusing unknown keys (a typo would otherwise be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"ModelConfig got unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(values))
