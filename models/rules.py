"""The rules a model configuration must follow, each stated once, as a function that raises ValueError.

ModelConfig, the modules that build a model (RecurrentCore, the topologies, TBPTT) and the params.yaml
schema in pipelines/ all call these functions, so a rule and its message cannot drift apart between
the place a user writes a value and the place the value is used. Rules that depend on the topology take
its class and read its capability flags, never its name. No imports from the rest of models/ at run
time: every other module can depend on this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.topologies.base import Topology


def check_memory_steps(cell: str, memory_steps: int | None) -> None:
    """`memory_steps` (chrono initialisation of the gates) needs a gated cell and at least 2 steps."""
    if memory_steps is None:
        return
    if isinstance(memory_steps, bool) or not isinstance(memory_steps, int) or memory_steps < 2:
        raise ValueError(f"memory_steps={memory_steps!r} must be an integer >= 2: the longest dependency, in steps, "
                         "the gates start out able to keep")
    if cell not in ("lstm", "gru"):
        raise ValueError(f"memory_steps (chrono initialisation of the gates) needs a gated cell, lstm or gru; "
                         f"got cell={cell!r}")


def check_tbptt_window(k1: int | None, k2: int | None) -> None:
    """TBPTT(k1, k2): k2 needs k1, k1 >= 1 and k2 >= k1 (the loss sits on the newest k1 outputs and
    backpropagation must reach all of them)."""
    if k1 is None and k2 is not None:
        raise ValueError(
            f"k2={k2} needs k1: with k1 unset each update covers the whole window, so k2 >= k1 cannot hold; "
            "set k1 (the steps between updates) <= k2"
        )
    if k1 is not None and k1 < 1:
        raise ValueError(f"k1={k1} must be >= 1: it is the number of steps between optimizer updates")
    if k1 is not None and k2 is not None and k2 < k1:
        raise ValueError(
            f"k2 ({k2}) must be >= k1 ({k1}): the loss sits on the newest k1 outputs and backpropagation must "
            "reach all of them; raise k2 or lower k1"
        )


def check_tbptt(topology: type[Topology], k1: int | None, k2: int | None) -> None:
    """k1/k2 apply only to a topology trained by truncated BPTT; then the window rule holds."""
    if (k1 is not None or k2 is not None) and not topology.truncates:
        raise ValueError(
            f"k1/k2 (TBPTT) apply only to a topology trained by truncated BPTT, got topology={topology.name!r}: "
            "it puts its loss on one output or on a decoded horizon; leave k1 and k2 unset"
        )
    check_tbptt_window(k1, k2)


def check_dropout(dropout: float, num_layers: int) -> None:
    """Recurrent dropout lies in [0, 1) and acts between stacked layers, so it needs num_layers >= 2."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    if dropout > 0.0 and num_layers == 1:
        raise ValueError(
            f"dropout={dropout!r} with num_layers=1 would do nothing: recurrent dropout acts between stacked "
            "layers only; set num_layers >= 2 or dropout=0"
        )


def check_bidirectional(topology: type[Topology], bidirectional: bool) -> None:
    """A causal topology predicts step t from steps <= t; a backward direction would read steps > t."""
    if bidirectional and topology.causal:
        raise ValueError(
            f"bidirectional=True is not allowed for topology {topology.name!r}: it is causal, and a backward "
            "direction reads the sequence from its end, so future steps would leak into the per-step predictions "
            "(the prediction at step t would see inputs after t, which do not exist at forecast time). Use "
            "bidirectional=False, or a topology that reads the whole sequence before its single prediction."
        )


def check_vocabulary(topology: type[Topology], vocab_size: int | None, embedding_dim: int | None) -> None:
    """Token-id inputs (vocab_size) need a topology that accepts tokens, and an embedding width."""
    if vocab_size is None:
        return
    if not topology.accepts_tokens:
        raise ValueError(
            f"vocab_size={vocab_size} (token-id inputs) is not supported by topology {topology.name!r}: it reads "
            "float features; leave vocab_size unset or use a topology that accepts tokens"
        )
    if embedding_dim is None:
        raise ValueError(f"vocab_size={vocab_size} is set: set embedding_dim too (the width of each token's vector)")


def check_target_index(target_index: int, input_size: int) -> None:
    """The target is one of the input features: it is fed back when forecasting and decoding."""
    if not 0 <= target_index < input_size:
        raise ValueError(f"target_index={target_index} must index one of the input_size={input_size} input features")


POOLINGS = ("last", "concat")
"""How a per-sequence topology reads its sequence: the last valid state, or [last; max; mean] over the valid steps."""


def check_pooling(topology: type[Topology], pooling: str) -> None:
    """Pooling over steps needs one output per sequence; a per-step topology has nothing to pool."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not known; use one of {POOLINGS}")
    if pooling != "last" and not topology.per_sequence:
        raise ValueError(
            f"pooling={pooling!r} applies to a topology with one output per sequence, not {topology.name!r}: "
            "leave pooling at 'last'"
        )


def check_embedding_dropout(embedding_dropout: float, vocab_size: int | None) -> None:
    """Embedding dropout lies in [0, 1) and needs token inputs (an embedding to drop from)."""
    if not 0.0 <= embedding_dropout < 1.0:
        raise ValueError(f"embedding_dropout={embedding_dropout!r} must be in [0, 1)")
    if embedding_dropout > 0.0 and vocab_size is None:
        raise ValueError(
            f"embedding_dropout={embedding_dropout!r} needs token-id inputs (vocab_size): float inputs have no "
            "embedding; set it to 0"
        )
