"""encoder_decoder: encode a history, then decode a horizon one target value at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from models.diagnostics import lag_profile
from models.heads import per_step_loss
from models.recurrent import RecurrentCore, State
from models.rules import check_bidirectional, check_target_index
from models.topologies.base import CoreFactory, Topology, horizon_of

if TYPE_CHECKING:
    from models.config import ModelConfig


class EncoderDecoder(Topology):
    """Encode the history, then decode ``horizon`` steps whose input is the previous target value.

    The first decoder input is the last observed target (feature ``target_index`` of the history).
    In training a per-step coin with probability ``teacher_forcing`` feeds the true previous target,
    otherwise the model's own prediction; at inference (``target=None``) it is always autoregressive.
    """

    name: ClassVar[str] = "encoder_decoder"
    causal: ClassVar[bool] = True
    accepts_tokens: ClassVar[bool] = False
    forecasts: ClassVar[bool] = True
    decodes_targets: ClassVar[bool] = True

    def __init__(
        self, encoder: RecurrentCore, decoder: RecurrentCore, output_size: int = 1, target_index: int = 0
    ) -> None:
        super().__init__()
        check_bidirectional(type(self), encoder.bidirectional or decoder.bidirectional)
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
        check_target_index(target_index, encoder.input_size)
        self.target_index = target_index
        self.encoder = encoder
        self.decoder = decoder
        self.head = nn.Linear(decoder.output_size, output_size)

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
    ) -> EncoderDecoder:
        """An encoder over the history's features and a decoder over the previous target value."""
        return cls(core(input_size), core(output_size), output_size, target_index)

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

    def infer(self, batch: Mapping[str, Any]) -> Tensor:
        """Autoregressive decoding of the target's length (or the batch's ``horizon``)."""
        return self(batch["x"], horizon_of(batch, self.name))  # [B, H, 1]

    def training_outputs(self, batch: Mapping[str, Any], config: ModelConfig) -> Tensor:
        """Decoded with teacher forcing at the configured probability."""
        y = batch["y"]  # [B, H, 1]
        return self(batch["x"], y.shape[1], target=y, teacher_forcing=config.teacher_forcing)  # [B, H, 1]

    def forecast(self, history: Tensor, horizon: int, future: Tensor | None = None) -> Tensor:
        """Decode ``horizon`` steps from the encoded ``history`` [B, T, F], feeding back its own predictions.
        Its decoder reads only the previous target, so inputs known ahead (``future``) are refused."""
        if future is not None:
            raise ValueError("encoder_decoder cannot read future inputs: its decoder sees only its own predictions")
        return self(history, horizon)  # [B, horizon, 1]

    def lag_profile(self, batch: Mapping[str, Any], config: ModelConfig, max_lag: int | None) -> Tensor:
        """The whole decoded horizon's loss (teacher-forced), back through the encoder's steps."""
        x, y = batch["x"], batch["y"]
        first = self.first_input(x)  # [B, 1]

        def decoded_loss(state: State) -> Tensor:
            pred = self.decode(state, first, y.shape[1], y, 1.0)  # [B, H, 1]
            return per_step_loss(config.head, pred, y).sum()

        return lag_profile(self.encoder, x, decoded_loss, max_lag=max_lag)  # [max_lag + 1]
