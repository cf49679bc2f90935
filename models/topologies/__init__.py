"""How a recurrent core is wired between inputs and outputs, and what each wiring does in training.

Four topologies, each a small ``nn.Module`` around one (or two) RecurrentCore(s) and a linear readout
that produces raw head outputs (regression values or logits; the head's activation and loss live in
``heads.py``). Each owns its loss, its updates of a training batch, its inference and its gradient
probe (see ``base.Topology``), and declares what it supports as class-level flags, so callers check
capabilities instead of topology names. ``TOPOLOGY_CLASSES`` is the one name-to-class mapping.
"""

from __future__ import annotations

from models.recurrent import RecurrentCore
from models.rules import check_embedding_dropout, check_pooling, check_vocabulary
from models.topologies.base import TokenEmbedding, Topology, top_hidden
from models.topologies.encoder_decoder import EncoderDecoder
from models.topologies.many_to_many import ManyToMany
from models.topologies.many_to_one import ManyToOne
from models.topologies.one_to_many import CONDITIONS, OneToMany

__all__ = [
    "CONDITIONS",
    "FORECASTERS",
    "PER_SEQUENCE",
    "TOPOLOGIES",
    "TOPOLOGY_CLASSES",
    "EncoderDecoder",
    "ManyToMany",
    "ManyToOne",
    "OneToMany",
    "TokenEmbedding",
    "Topology",
    "build_topology",
    "top_hidden",
    "topology_class",
]

TOPOLOGY_CLASSES: dict[str, type[Topology]] = {
    cls.name: cls for cls in (ManyToMany, ManyToOne, OneToMany, EncoderDecoder)
}
TOPOLOGIES = tuple(TOPOLOGY_CLASSES)
FORECASTERS = tuple(name for name, cls in TOPOLOGY_CLASSES.items() if cls.forecasts)
PER_SEQUENCE = tuple(name for name, cls in TOPOLOGY_CLASSES.items() if cls.per_sequence)


def topology_class(topology: str) -> type[Topology]:
    """The class of a topology name, or a ValueError that lists the known names."""
    if topology not in TOPOLOGY_CLASSES:
        raise ValueError(f"topology={topology!r} is not known; use one of {TOPOLOGIES}")
    return TOPOLOGY_CLASSES[topology]


def build_topology(
    topology: str,
    *,
    cell: str,
    input_size: int,
    hidden_size: int,
    output_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    condition: str = "state",
    target_index: int = 0,
    vocab_size: int | None = None,
    embedding_dim: int | None = None,
    pooling: str = "last",
    embedding_dropout: float = 0.0,
    memory_steps: int | None = None,
) -> Topology:
    """Build a topology with cores sized for it (one_to_many and the decoder read other widths than ``input_size``).

    ``pooling`` reaches only a per-sequence topology (the rule refuses it elsewhere), so the others'
    ``build`` need not know it."""
    cls = topology_class(topology)
    check_vocabulary(cls, vocab_size, embedding_dim)
    check_pooling(cls, pooling)
    check_embedding_dropout(embedding_dropout, vocab_size)

    def core(width: int) -> RecurrentCore:
        return RecurrentCore(cell, width, hidden_size, num_layers, bidirectional, dropout, memory_steps)

    embedding = None
    if vocab_size is not None:
        embedding = TokenEmbedding(vocab_size, embedding_dim, embedding_dropout)
        input_size = embedding_dim
    return cls.build(
        core,
        input_size=input_size,
        output_size=output_size,
        embedding=embedding,
        condition=condition,
        target_index=target_index,
        **({"pooling": pooling} if pooling != "last" else {}),
    )
