"""Weight transfer from a pretrained language model into a model that starts from it.

A language model (many_to_many over token ids, predicting the next token) learns the embedding and
the recurrent core from unlabelled text; a classifier of the same cell, widths and layers starts
from them and learns only its readout from scratch. Torch names a core's weights the same in both
(``core.rnn.weight_ih_l0``...), so a transfer is a copy by name where the shapes agree.

A bidirectional classifier has a second, backward direction (``..._reverse``) that a causal
language model cannot hold: it starts from a language model trained on the reversed token stream,
whose forward weights read text right to left exactly as the reverse direction does.
"""

from __future__ import annotations

from torch import Tensor, nn

REVERSE = "_reverse"


def encoder_weights(language_model: nn.Module) -> dict[str, Tensor]:
    """The embedding and core weights of a language model (its next-token readout stays behind)."""
    return {name: value for name, value in language_model.state_dict().items()
            if name.startswith(("net.embedding.", "net.core."))}


def transfer_encoder(target: nn.Module, forward: dict[str, Tensor],
                     backward: dict[str, Tensor] | None = None) -> list[str]:
    """Copy `forward`'s embedding and core weights (and `backward`'s into the ``_reverse`` direction,
    when given) into `target` wherever name and shape agree; returns the names of the target's tensors
    that were loaded. A layer whose shape differs (a bidirectional core's upper layers read 2H) keeps its
    initialisation."""
    own = target.state_dict()
    loaded: dict[str, Tensor] = {}
    for name, value in forward.items():
        if name in own and own[name].shape == value.shape:
            loaded[name] = value
    for name, value in (backward or {}).items():
        if not name.startswith("net.core."):
            continue
        reverse = name + REVERSE
        if reverse in own and own[reverse].shape == value.shape:
            loaded[reverse] = value
    target.load_state_dict(loaded, strict=False)
    return sorted(loaded)
