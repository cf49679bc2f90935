"""The recurrent core: one swappable module that owns the cell and its state.

Everything above it (topologies, truncated BPTT, diagnostics) talks to the core
through three things only: ``forward(x, state) -> (out, state)``, ``init_state``
and ``recurrent_weights``. Keeping the state explicit (in and out) is what lets
truncated BPTT carry and detach it between chunks and across batches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from models.rules import check_dropout, check_memory_steps

State = Tensor | tuple[Tensor, Tensor]
"""``h`` ([L*D, B, H]) for rnn and gru; ``(h, c)`` for lstm."""

CELLS = ("rnn", "lstm", "gru")

GATES: dict[str, tuple[str, ...]] = {"rnn": (), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
"""Gate blocks of ``weight_hh`` in torch's row order; an Elman cell has one block and no gates."""

_TORCH_RNN = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def detach_state(state: State | None) -> State | None:
    """Cut the graph behind a state so the next chunk's backward stops here (the k2 boundary)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)  # type: ignore[return-value]
    return state.detach()


def map_state(state: State, fn: Callable[[Tensor], Tensor]) -> State:
    """Apply ``fn`` to every tensor of a state; keeps the lstm ``(h, c)`` structure."""
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)  # type: ignore[return-value]
    return fn(state)


def _cpu_bf16_unsupported(x: Tensor | PackedSequence) -> bool:
    """Whether `x` is about to meet a fused CPU kernel under bf16 autocast on a CPU whose oneDNN has no bf16
    (no AVX-512: "could not create a primitive descriptor for the LSTM forward propagation primitive")."""
    device = x.data.device if isinstance(x, PackedSequence) else x.device
    return (device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not _bf16_kernels())


@functools.cache
def _bf16_kernels() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # private, and the only probe torch offers


class RecurrentCore(nn.Module):
    """A batch-first stack of rnn (Elman, tanh), lstm or gru layers on torch's fused kernels.

    The fused kernels (cuDNN on GPU, oneDNN on CPU) are the reason this wraps
    ``nn.RNN``/``nn.LSTM``/``nn.GRU`` rather than looping over cells: they are
    many times faster, and a step-by-step loop is only needed by diagnostics.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        memory_steps: int | None = None,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell={cell!r} is not a known recurrent cell; use one of {CELLS}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        check_dropout(dropout, num_layers)
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.rnn = _TORCH_RNN[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            batch_first=True,
            **kwargs,
        )
        check_memory_steps(cell, memory_steps)
        if memory_steps is not None:
            self.chrono_init(memory_steps)

    @property
    def num_directions(self) -> int:
        """2 when bidirectional: the output width and the state's first dim double."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Width of each output step: hidden_size times the number of directions."""
        return self.hidden_size * self.num_directions

    def forward(self, x: Tensor | PackedSequence, state: State | None = None) -> tuple[Tensor | PackedSequence, State]:
        """Run the sequence from ``state`` (zeros when None) and return every step's output and the final state.

        ``x`` is [B, T, F] or a PackedSequence (variable lengths, many_to_one).
        """
        if isinstance(x, Tensor) and (x.dim() != 3 or x.shape[-1] != self.input_size):
            raise ValueError(f"RecurrentCore expects input of shape [B, T, {self.input_size}], got {tuple(x.shape)}")
        if _cpu_bf16_unsupported(x):
            with torch.autocast("cpu", enabled=False):  # this CPU's oneDNN has no bf16 LSTM: the cell runs in fp32
                x = x.to(torch.float32)
                state = None if state is None else map_state(state, lambda s: s.to(torch.float32))
                return self.rnn(x, state)
        out, state = self.rnn(x, state)  # out: [B, T, D*H]; state: [L*D, B, H] (lstm: a pair)
        return out, state

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """A zero state on the module's device and dtype (unless given), so GPU and mixed precision just work."""
        ref = next(self.rnn.parameters())
        shape = (self.num_layers * self.num_directions, batch_size, self.hidden_size)
        h = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)  # [L*D, B, H]
        if self.cell == "lstm":
            return h, torch.zeros_like(h)  # ([L*D, B, H], [L*D, B, H])
        return h

    @torch.no_grad()
    def chrono_init(self, memory_steps: int) -> None:
        """Chrono initialisation (Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018):
        each unit's keep gate starts with a time constant drawn from [1, memory_steps - 1] on a log scale, so
        some units start out keeping their cell for up to `memory_steps` steps and the gradient reaches that
        far back. PyTorch's default biases (about zero) give keep gates near 0.5: every unit starts forgetting
        half its cell a step, and a dependency longer than a few dozen steps is learnt only by luck.

        lstm: forget-gate bias log(u), input-gate bias -log(u); gru: update-gate bias log(u) (z near 1 keeps
        the previous state). u ~ U(1, memory_steps - 1) per unit, from torch's generator (seeded runs repeat);
        the hidden-to-hidden biases of those gates start at zero so the input-side bias is the gate's bias."""
        h = self.hidden_size
        for name, bias in self.rnn.named_parameters():
            if not name.startswith("bias_"):
                continue
            if name.startswith("bias_hh"):
                bias[: 2 * h].zero_()  # lstm: i, f; gru: r, z
                continue
            keep = torch.log(torch.empty(h, device=bias.device).uniform_(1.0, memory_steps - 1.0))  # [H]
            if self.cell == "lstm":
                bias[h: 2 * h] = keep  # forget gate
                bias[:h] = -keep  # input gate
            else:
                bias[h: 2 * h] = keep  # update gate z

    def recurrent_weights(self) -> dict[str, Tensor]:
        """Every hidden-to-hidden matrix (``weight_hh_l{k}[_reverse]``, [G*H, H]): the ones whose spectrum
        decides whether gradients vanish or explode through time."""
        return {name: p for name, p in self.rnn.named_parameters() if name.startswith("weight_hh")}
