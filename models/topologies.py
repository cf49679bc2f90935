"""How a recurrent core is wired between inputs and outputs.

Four topologies, each a small ``nn.Module`` around one (or two) RecurrentCore(s)
and a linear readout that produces raw head outputs (regression values or
logits; the head's activation and loss live in ``heads.py``). Each declares
what it supports as class-level flags, so callers check capabilities instead
of topology names.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from models.recurrent import RecurrentCore, State

TOPOLOGIES = ("many_to_many", "many_to_one", "one_to_many", "encoder_decoder")
CONDITIONS = ("state", "input", "both")


def reject_bidirectional(topology: str, bidirectional: bool) -> None:
    """A causal topology predicts step t from steps <= t; a backward direction would read steps > t."""
    if bidirectional:
        raise ValueError(
            f"bidirectional=True is not allowed for topology {topology!r}: it is causal, and a backward direction "
            "reads the sequence from its end, so future steps would leak into the per-step predictions (the "
            "prediction at step t would see inputs after t, which do not exist at forecast time). Use "
            "bidirectional=False, or many_to_one, which reads the whole sequence before its single prediction."
        )


def _embed(embedding: nn.Embedding | None, x: Tensor) -> Tensor:
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


class ManyToMany(nn.Module):
    """One output per input step (next-step forecasting, sequence labelling); trained with TBPTT."""

    causal: ClassVar[bool] = True
    accepts_tokens: ClassVar[bool] = True

    def __init__(self, core: RecurrentCore, output_size: int, embedding: nn.Embedding | None = None) -> None:
        super().__init__()
        reject_bidirectional("many_to_many", core.bidirectional)
        self.embedding = embedding
        self.core = core
        self.head = nn.Linear(core.output_size, output_size)

    def embed(self, x: Tensor) -> Tensor:
        """Inputs as the core sees them (token ids embedded)."""
        return _embed(self.embedding, x)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Predict every step of ``x`` starting from ``state``; returns the state to carry on with."""
        inputs = self.embed(x)  # [B, T, F]
        out, state = self.core(inputs, state)  # [B, T, H]
        return self.head(out), state  # [B, T, O]


class ManyToOne(nn.Module):
    """One output per sequence, read from the last valid step of each variable-length sequence.

    Packing (rather than reading ``out[:, -1]``) is what makes a padded sequence score exactly like the
    same sequence unpadded: the core never runs over the padding, in either direction.
    """

    causal: ClassVar[bool] = False
    accepts_tokens: ClassVar[bool] = True

    def __init__(self, core: RecurrentCore, output_size: int, embedding: nn.Embedding | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.core = core
        self.head = nn.Linear(core.output_size, output_size)

    def embed(self, x: Tensor) -> Tensor:
        """Inputs as the core sees them (token ids embedded)."""
        return _embed(self.embedding, x)

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


class OneToMany(nn.Module):
    """A vector to a sequence of a requested length.

    ``condition`` says how the vector reaches the core: "state" (it initialises the hidden state,
    the steps then see a constant zero input), "input" (it is fed at every step from a zero state)
    or "both".
    """

    causal: ClassVar[bool] = True
    accepts_tokens: ClassVar[bool] = False

    def __init__(self, core: RecurrentCore, input_size: int, output_size: int, condition: str = "state") -> None:
        super().__init__()
        reject_bidirectional("one_to_many", core.bidirectional)
        if condition not in CONDITIONS:
            raise ValueError(f"condition={condition!r} is not known; use one of {CONDITIONS}")
        step_width = 1 if condition == "state" else input_size
        if core.input_size != step_width:
            raise ValueError(
                f"one_to_many with condition={condition!r} feeds {step_width} feature(s) per step, "
                f"but the core takes input_size={core.input_size}"
            )
        self.condition = condition
        self.input_size = input_size
        self.core = core
        self.head = nn.Linear(core.output_size, output_size)
        if condition in ("state", "both"):
            parts = 2 if core.cell == "lstm" else 1
            self.to_state = nn.Linear(input_size, parts * core.num_layers * core.hidden_size)

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


class EncoderDecoder(nn.Module):
    """Encode the history, then decode ``horizon`` steps whose input is the previous target value.

    The first decoder input is the last observed target (feature ``target_index`` of the history).
    In training a per-step coin with probability ``teacher_forcing`` feeds the true previous target,
    otherwise the model's own prediction; at inference (``target=None``) it is always autoregressive.
    """

    causal: ClassVar[bool] = True
    accepts_tokens: ClassVar[bool] = False

    def __init__(
        self, encoder: RecurrentCore, decoder: RecurrentCore, output_size: int = 1, target_index: int = 0
    ) -> None:
        super().__init__()
        reject_bidirectional("encoder_decoder", encoder.bidirectional or decoder.bidirectional)
        if output_size != 1:
            raise ValueError(
                f"encoder_decoder feeds the previous target value back as the decoder input, so it predicts "
                f"one target: output_size must be 1, got {output_size}"
            )
        if any(getattr(encoder, a) != getattr(decoder, a) for a in ("cell", "hidden_size", "num_layers")):
            raise ValueError(
                "encoder and decoder must share cell, hidden_size and num_layers: the encoder state starts the decoder"
            )
        if decoder.input_size != output_size:
            raise ValueError(f"the decoder reads the previous target: its input_size must be {output_size}")
        if not 0 <= target_index < encoder.input_size:
            raise ValueError(f"target_index={target_index} must index one of the {encoder.input_size} input features")
        self.target_index = target_index
        self.encoder = encoder
        self.decoder = decoder
        self.head = nn.Linear(decoder.output_size, output_size)

    def first_input(self, x: Tensor) -> Tensor:
        """The last observed target value, [B, 1]: the decoder's first input."""
        return x[:, -1, self.target_index : self.target_index + 1]  # [B, 1]

    def forward(self, x: Tensor, horizon: int, target: Tensor | None = None, teacher_forcing: float = 0.0) -> Tensor:
        """``x`` [B, T, F] history -> [B, horizon, 1]; ``target`` [B, horizon, 1] enables teacher forcing."""
        if x.dim() != 3 or x.shape[-1] != self.encoder.input_size:
            raise ValueError(
                f"encoder_decoder expects x of shape [B, T, {self.encoder.input_size}], got {tuple(x.shape)}"
            )
        _, state = self.encoder(x)  # [L, B, H]
        return self.decode(state, self.first_input(x), horizon, target, teacher_forcing)  # [B, horizon, 1]

    def decode(
        self, state: State, first: Tensor, horizon: int, target: Tensor | None = None, teacher_forcing: float = 0.0
    ) -> Tensor:
        """Run the decoder from an encoder ``state``; one fused call when every step is teacher-forced."""
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1")
        if target is not None and target.shape[:2] != (first.shape[0], horizon):
            raise ValueError(f"target must have shape [B, {horizon}, 1], got {tuple(target.shape)}")
        if target is not None and teacher_forcing >= 1.0:
            target = target.reshape(first.shape[0], horizon, 1).to(first.dtype)  # [B, horizon, 1]
            inputs = torch.cat([first[:, None], target[:, :-1]], dim=1)  # [B, horizon, 1]
            out, _ = self.decoder(inputs, state)  # [B, horizon, H]
            return self.head(out)  # [B, horizon, 1]
        prev = first  # [B, 1]
        preds = []
        for t in range(horizon):
            out, state = self.decoder(prev[:, None], state)  # [B, 1, H]
            pred = self.head(out[:, 0])  # [B, 1]
            preds.append(pred)
            forced = target is not None and teacher_forcing > 0.0 and float(torch.rand(())) < teacher_forcing
            prev = target[:, t].reshape(-1, 1).to(pred.dtype) if forced else pred  # [B, 1]
        return torch.stack(preds, dim=1)  # [B, horizon, 1]


TOPOLOGY_CLASSES: dict[str, type[nn.Module]] = {
    "many_to_many": ManyToMany,
    "many_to_one": ManyToOne,
    "one_to_many": OneToMany,
    "encoder_decoder": EncoderDecoder,
}
CAUSAL = tuple(name for name, cls in TOPOLOGY_CLASSES.items() if cls.causal)
TOKEN_INPUTS = tuple(name for name, cls in TOPOLOGY_CLASSES.items() if cls.accepts_tokens)


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
) -> nn.Module:
    """Build a topology with cores sized for it (one_to_many and the decoder read other widths than ``input_size``)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology={topology!r} is not known; use one of {TOPOLOGIES}")
    if topology in CAUSAL:
        reject_bidirectional(topology, bidirectional)

    def core(width: int) -> RecurrentCore:
        return RecurrentCore(cell, width, hidden_size, num_layers, bidirectional, dropout)

    embedding = None
    if vocab_size is not None:
        if topology not in TOKEN_INPUTS:
            raise ValueError(f"vocab_size (token inputs) is supported by {TOKEN_INPUTS}, not {topology!r}")
        if embedding_dim is None:
            raise ValueError("vocab_size is set: set embedding_dim too (the width of each token's vector)")
        embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        input_size = embedding_dim
    if topology == "many_to_many":
        return ManyToMany(core(input_size), output_size, embedding)
    if topology == "many_to_one":
        return ManyToOne(core(input_size), output_size, embedding)
    if topology == "one_to_many":
        return OneToMany(core(1 if condition == "state" else input_size), input_size, output_size, condition)
    return EncoderDecoder(core(input_size), core(output_size), output_size, target_index)
