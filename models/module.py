"""SequenceModel: the LightningModule that trains any topology with manual optimization.

Manual optimization because TBPTT takes several optimizer steps per batch (Lightning 2.x dropped
its built-in TBPTT), which also means clipping happens here, in the step, via ``self.clip_gradients``.

Batch format (dicts of tensors; a contract with the data modules):
- many_to_many: {"x": [B, T, F] float or [B, T] token ids, "y": [B, T, O] ([B, T] class ids for multiclass),
  optional "mask": [B, T] bool (False steps carry no loss; their y may be NaN), optional "reset": bool or
  [B] bool (False: continue from the state carried over from the previous batch; absent: True)}
- many_to_one: {"x": [B, T, F] float or [B, T] token ids, "lengths": [B] long (absent: all T), "y": [B]}
- one_to_many: {"x": [B, F], "y": [B, T, O]} (or "horizon": int instead of "y" for prediction)
- encoder_decoder: {"x": [B, T, F], "y": [B, H, 1]} (or "horizon": int instead of "y" for prediction)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from models.config import ModelConfig
from models.heads import activate
from models.recurrent import State, map_state
from models.topologies import FORECASTERS, PER_SEQUENCE, build_topology

__all__ = ["WARMUP_STEPS", "ModelConfig", "SequenceModel"]

WARMUP_STEPS = 4096
"""Steps per forward when a carried state is warmed over a long history (forecast, stateful validation):
activations stay bounded by a chunk, whatever the history's length."""


def _require(batch: Mapping[str, Any], key: str, topology: str) -> Any:
    if key not in batch:
        raise KeyError(f"a {topology} batch needs the key {key!r}; it has {sorted(batch)} (see models/module.py)")
    return batch[key]


class SequenceModel(pl.LightningModule):
    """A recurrent sequence model (core x topology x head) trained with TBPTT, clipping and Adam.

    Build it from a ModelConfig, a mapping of its fields, or the fields as keyword arguments (the
    last form is what ``load_from_checkpoint`` uses, from the saved hparams).
    """

    def __init__(self, config: ModelConfig | Mapping[str, Any] | None = None, **fields: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig.from_dict(fields)
        elif isinstance(config, Mapping):
            config = ModelConfig.from_dict({**config, **fields})
        elif fields:
            config = replace(config, **fields)
        self.config = config
        self.save_hyperparameters(config.to_dict())
        self.automatic_optimization = False
        self.net = build_topology(
            config.topology,
            cell=config.cell,
            input_size=config.input_size,
            hidden_size=config.hidden_size,
            output_size=config.output_size,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            dropout=config.dropout,
            condition=config.condition,
            target_index=config.target_index,
            vocab_size=config.vocab_size,
            embedding_dim=config.embedding_dim,
            pooling=config.pooling,
            embedding_dropout=config.embedding_dropout,
            memory_steps=config.memory_steps,
        )
        self.carried_state: dict[str, State | None] = {"train": None, "val": None}

    # ---- forward and inference ------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Raw outputs (values or logits) for a batch, at inference settings (no teacher forcing, zero state)."""
        return self.net.infer(batch)  # [B, T, O], [B, O] or [B, horizon, O]

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> Tensor:
        """Activated predictions for any topology: values, P(y=1) or class probabilities."""
        return activate(self.config.head, self(batch))

    def forecast(self, history: Tensor, horizon: int, future: Tensor | None = None) -> Tensor:
        """Forecast ``horizon`` steps after ``history`` [B, T, F]: returns [B, horizon, 1]. ``future``
        [B, horizon - 1, F]: the inputs after the history where they are known ahead (the target feature
        in them is replaced by the fed-back prediction).

        The topology decides how (many_to_many runs autoregressively, feeding each prediction back as the
        target feature; encoder_decoder decodes the horizon from the encoded history); this checks that the
        model can forecast at all and runs it at inference settings. A topology that carries its state
        (many_to_many) warms it over a history longer than WARMUP_STEPS chunk by chunk under inference_mode,
        so a 10^6-step history costs one pass and a chunk's activations.
        """
        cfg = self.config
        if not self.net.forecasts:
            raise ValueError(f"forecast needs a forecasting topology {FORECASTERS}, this model is {cfg.topology!r}")
        if cfg.head != "regression" or cfg.output_size != 1 or cfg.vocab_size is not None:
            raise ValueError(
                "forecast feeds predictions back as an input feature: "
                "it needs head='regression', output_size=1 and float inputs"
            )
        if history.dim() != 3 or history.shape[-1] != cfg.input_size:
            raise ValueError(f"history must have shape [B, T, {cfg.input_size}], got {tuple(history.shape)}")
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1")
        with self._inference():
            dtype = next(self.parameters()).dtype
            history = history.to(self.device, dtype)  # [B, T, F]
            future = None if future is None else future.to(self.device, dtype)  # [B, horizon - 1, F]
            if not self.net.truncates or history.shape[1] <= WARMUP_STEPS:
                return self.net.forecast(history, horizon, future)  # [B, horizon, 1]
            with torch.inference_mode():
                state = None
                for start in range(0, history.shape[1] - 1, WARMUP_STEPS):
                    _, state = self.net(history[:, start:min(start + WARMUP_STEPS, history.shape[1] - 1)], state)
                return self.net.forecast(history[:, -1:], horizon, future, state=state)  # [B, horizon, 1]

    def predict_proba(self, x: Tensor, lengths: Tensor | None = None, offset: Tensor | None = None) -> Tensor:
        """Class probabilities [B, C] of a per-sequence classifier (binary: C = 2, columns P(0), P(1)).
        ``offset`` [B, O]: logits added to the network's (a base model's, see ``ManyToOne``)."""
        cfg = self.config
        if not self.net.per_sequence or cfg.head == "regression":
            raise ValueError(
                f"predict_proba needs a binary/multiclass model with a per-sequence topology {PER_SEQUENCE}, "
                f"this is {cfg.topology}/{cfg.head}"
            )
        with self._inference():
            batch = {"x": x.to(self.device), "lengths": lengths}
            if offset is not None:
                batch["offset"] = offset.to(self.device)  # [B, O]
            probs = self.predict_step(batch)  # [B, 1] or [B, C]
            if cfg.head == "binary":
                return torch.cat([1.0 - probs, probs], dim=-1)  # [B, 2]
            return probs  # [B, C]

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    # ---- training ---------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        """Adam, plus an epoch-wise scheduler; Lightning checkpoints both, so a resume restores them."""
        cfg = self.config
        optimizer = torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.scheduler is None:
            return optimizer
        if cfg.scheduler == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.scheduler_step_size, cfg.scheduler_gamma)
        else:
            epochs = self.trainer.max_epochs
            if epochs is None or epochs < 1:
                raise ValueError("scheduler='cosine' anneals over Trainer(max_epochs=...): set max_epochs >= 1")
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """One batch: the topology takes its updates (TBPTT for a truncating one, a single update otherwise)
        through ``_update``; the state it returns is carried into the next batch."""
        cfg, opt = self.config, self.optimizers()
        x = _require(batch, "x", cfg.topology)
        _require(batch, "y", cfg.topology)
        loss, self.carried_state["train"] = self.net.fit_batch(
            batch, cfg, lambda loss: self._update(opt, loss), self._start_state("train", batch)
        )
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss.detach()

    def _update(self, opt: Any, loss: Tensor) -> None:
        """Backward, clip (inside the step: Trainer(gradient_clip_val) is refused in manual optimization), step."""
        cfg = self.config
        opt.zero_grad()
        self.manual_backward(loss)
        if cfg.clip_algorithm is not None:
            self.clip_gradients(opt, gradient_clip_val=cfg.clip_value, gradient_clip_algorithm=cfg.clip_algorithm)
        opt.step()

    def on_train_epoch_end(self) -> None:
        """Manual optimization: Lightning leaves scheduler stepping to us; once per epoch."""
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """Scored at inference settings (encoder_decoder decodes autoregressively); a topology that carries
        state carries its own validation state, separate from training's."""
        cfg = self.config
        x = _require(batch, "x", cfg.topology)
        _require(batch, "y", cfg.topology)
        pred, self.carried_state["val"] = self.net.validation_outputs(batch, self._start_state("val", batch))
        loss = self.net.loss(cfg.head, pred, batch)
        mask = batch.get("mask")
        if mask is None or bool(mask.any()):  # a batch with no scored step only warms the carried state
            self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _start_state(self, phase: str, batch: Mapping[str, Any]) -> State | None:
        """The state a batch starts from: zeros on reset, else the one the topology carried from the last batch."""
        carried, reset = self.carried_state[phase], batch.get("reset", True)
        if carried is None:
            return None
        x = batch["x"]
        if not isinstance(reset, Tensor) and bool(reset):
            return None
        h = carried[0] if isinstance(carried, tuple) else carried
        if h.shape[1] != x.shape[0]:
            raise ValueError(
                f"reset=False continues the previous batch's sequences, but the batch size changed from "
                f"{h.shape[1]} to {x.shape[0]}: a carried state needs the same sequences in the same order"
            )
        dtype = next(self.parameters()).dtype
        state = map_state(carried, lambda s: s.to(self.device, dtype))  # [L, B, H]
        if isinstance(reset, Tensor):
            keep = (~reset.to(self.device, torch.bool)).reshape(1, -1, 1).to(dtype)  # [1, B, 1]
            state = map_state(state, lambda s: s * keep)  # [L, B, H]
        return state

    # ---- checkpoints and diagnostics ----------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Carry the stateful bookkeeping: a run resumed mid-sequence continues from the same state."""
        checkpoint["carried_state"] = {
            phase: None if s is None else map_state(s, lambda t: t.detach().cpu())
            for phase, s in self.carried_state.items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the carried states (moved to the right device when next used)."""
        self.carried_state = {"train": None, "val": None, **checkpoint.get("carried_state", {})}

    def gradient_lag_profile(self, batch: Mapping[str, Any], max_lag: int | None = None) -> Tensor | None:
        """||dL/dh_t|| by lag from the loss, on one batch (see diagnostics.lag_profile); None for a
        bidirectional core, whose states have no causal lag. The topology says where its loss sits and how far
        back to look by default (k2 under TBPTT, else the sequence length - 1).
        On a GPU call it in training mode (as GradientHealth does): cuDNN's RNN backward refuses eval mode."""
        if self.config.bidirectional:
            return None
        with torch.enable_grad():
            return self.net.lag_profile(batch, self.config, max_lag)  # [max_lag + 1]
