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
from models.diagnostics import lag_profile
from models.heads import activate, masked_sum, per_step_loss
from models.recurrent import State, detach_state, map_state
from models.tbptt import truncated_bptt
from models.topologies import build_topology, top_hidden

__all__ = ["ModelConfig", "SequenceModel"]


def _require(batch: Mapping[str, Any], key: str, topology: str) -> Any:
    if key not in batch:
        raise KeyError(f"a {topology} batch needs the key {key!r}; it has {sorted(batch)} (see models/module.py)")
    return batch[key]


def _clean_targets(y: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the targets of masked steps: a NaN there would turn the masked loss's gradient into NaN."""
    if mask is None:
        return y
    keep = mask.to(torch.bool).reshape(mask.shape + (1,) * (y.dim() - mask.dim()))  # [B, T, 1...]
    return torch.where(keep, y, torch.zeros_like(y))  # y's shape


def _last_valid(mask: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor:
    """Index of each row's last unmasked step (T-1 without a mask): where its loss sits in a lag probe."""
    if mask is None:
        return torch.full((batch,), steps - 1, dtype=torch.long, device=device)  # [B]
    order = torch.arange(steps, device=device).expand(batch, steps)  # [B, T]
    return torch.where(mask.to(torch.bool), order, torch.zeros_like(order)).max(dim=1).values  # [B]


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
        )
        self.carried_state: dict[str, State | None] = {"train": None, "val": None}

    # ---- forward and inference ------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Raw outputs (values or logits) for a batch, at inference settings (no teacher forcing, zero state)."""
        topology, x = self.config.topology, batch["x"]
        if topology == "many_to_many":
            return self.net(x)[0]  # [B, T, O]
        if topology == "many_to_one":
            return self.net(x, self._lengths(batch))  # [B, O]
        return self.net(x, self._horizon(batch))  # [B, horizon, O]

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> Tensor:
        """Activated predictions for any topology: values, P(y=1) or class probabilities."""
        return activate(self.config.head, self(batch))

    def forecast(self, history: Tensor, horizon: int) -> Tensor:
        """Forecast ``horizon`` steps after ``history`` [B, T, F]: returns [B, horizon, 1].

        many_to_many (trained so that output t predicts the target at t+1) runs autoregressively: each
        prediction is fed back as feature ``target_index`` of the next input; the other features
        (covariates) are held at their last observed value, since their future is unknown.
        encoder_decoder decodes the horizon from the encoded history, feeding back its own predictions.
        """
        cfg = self.config
        if cfg.topology not in ("many_to_many", "encoder_decoder"):
            raise ValueError(f"forecast needs topology many_to_many or encoder_decoder, this model is {cfg.topology!r}")
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
            history = history.to(self.device, next(self.parameters()).dtype)  # [B, T, F]
            if cfg.topology == "encoder_decoder":
                return self.net(history, horizon)  # [B, horizon, 1]
            pred, state = self.net(history)  # [B, T, 1]
            step = pred[:, -1]  # [B, 1]
            x_next = history[:, -1].clone()  # [B, F]
            steps = [step]
            for _ in range(horizon - 1):
                x_next = x_next.clone()  # [B, F]
                x_next[:, cfg.target_index] = step[:, 0]
                pred, state = self.net(x_next[:, None], state)  # [B, 1, 1]
                step = pred[:, 0]  # [B, 1]
                steps.append(step)
            return torch.stack(steps, dim=1)  # [B, horizon, 1]

    def predict_proba(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Class probabilities [B, C] of a many_to_one classifier (binary: C = 2, columns P(0), P(1))."""
        cfg = self.config
        if cfg.topology != "many_to_one" or cfg.head == "regression":
            raise ValueError(
                f"predict_proba needs a many_to_one binary/multiclass model, this is {cfg.topology}/{cfg.head}"
            )
        with self._inference():
            probs = self.predict_step({"x": x.to(self.device), "lengths": lengths})  # [B, 1] or [B, C]
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

    def _lengths(self, batch: Mapping[str, Any]) -> Tensor:
        lengths = batch.get("lengths")
        if lengths is None:
            x = batch["x"]
            return torch.full((x.shape[0],), x.shape[1], dtype=torch.long)  # [B]
        return lengths

    def _horizon(self, batch: Mapping[str, Any]) -> int:
        if "y" in batch:
            return int(batch["y"].shape[1])
        if "horizon" in batch:
            return int(batch["horizon"])
        raise KeyError(f"a {self.config.topology} batch needs 'y' or 'horizon' to know how many steps to produce")

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
        """One batch: TBPTT updates for many_to_many, a single update otherwise."""
        cfg, opt = self.config, self.optimizers()
        x = _require(batch, "x", cfg.topology)
        y = _require(batch, "y", cfg.topology)
        if cfg.topology == "many_to_many":
            mask = batch.get("mask")
            y = _clean_targets(y, mask)

            def chunk_loss(pred: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
                loss = per_step_loss(cfg.head, pred, y[:, start:end])  # [B, k1]
                return masked_sum(loss, None if mask is None else mask[:, start:end])

            result = truncated_bptt(
                self.net,
                x,
                chunk_loss,
                lambda loss: self._update(opt, loss),
                cfg.k1,
                cfg.k2,
                self._start_state("train", batch),
            )
            self.carried_state["train"] = result.state
            loss = result.loss
        else:
            if cfg.topology == "many_to_one":
                pred = self.net(x, self._lengths(batch))  # [B, O]
            elif cfg.topology == "one_to_many":
                pred = self.net(x, y.shape[1])  # [B, T, O]
            else:
                pred = self.net(x, y.shape[1], target=y, teacher_forcing=cfg.teacher_forcing)  # [B, H, 1]
            loss = self._loss(pred, batch)
            self._update(opt, loss)
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
        """Scored at inference settings: encoder_decoder decodes autoregressively; many_to_many carries its
        own validation state (separate from training's)."""
        cfg = self.config
        x = _require(batch, "x", cfg.topology)
        _require(batch, "y", cfg.topology)
        if cfg.topology == "many_to_many":
            pred, state = self.net(x, self._start_state("val", batch))  # [B, T, O]
            self.carried_state["val"] = detach_state(state)
        else:
            pred = self(batch)  # [B, O] or [B, H, O]
        loss = self._loss(pred, batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _loss(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """Mean per-step loss over valid steps (the mask applies to per-step topologies)."""
        mask = None if self.config.topology == "many_to_one" else batch.get("mask")
        loss = per_step_loss(self.config.head, pred, _clean_targets(batch["y"], mask))  # [B] or [B, T]
        total, count = masked_sum(loss, mask)
        return total / count.clamp_min(1.0)

    def _start_state(self, phase: str, batch: Mapping[str, Any]) -> State | None:
        """The state a many_to_many batch starts from: zeros on reset, else the one carried from the last batch."""
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
        bidirectional core, whose states have no causal lag. Default max_lag: k2, else the sequence length - 1.
        On a GPU call it in training mode (as GradientHealth does): cuDNN's RNN backward refuses eval mode."""
        cfg = self.config
        if cfg.bidirectional:
            return None
        x, y, head, net = batch["x"], batch["y"], cfg.head, self.net
        with torch.enable_grad():
            if cfg.topology == "encoder_decoder":
                first = net.first_input(x)  # [B, 1]

                def decoded_loss(state: State) -> Tensor:
                    pred = net.decode(state, first, y.shape[1], y, 1.0)  # [B, H, 1]
                    return per_step_loss(head, pred, y).sum()

                return lag_profile(net.encoder, x, decoded_loss, max_lag=max_lag)
            if cfg.topology == "one_to_many":
                inputs, state = net.core_inputs(x, y.shape[1])  # [B, T, F'], [L, B, H]
                target, positions = y[:, -1], None  # [B, O]
            else:
                inputs, state = net.embed(x), None  # [B, T, F]
                if cfg.topology == "many_to_one":
                    positions = self._lengths(batch).to(x.device) - 1  # [B]
                    target = y  # [B]
                else:
                    mask = batch.get("mask")
                    positions = _last_valid(mask, x.shape[0], x.shape[1], x.device)  # [B]
                    target = _clean_targets(y, mask)[torch.arange(x.shape[0], device=x.device), positions]  # [B, O]
                    max_lag = cfg.k2 if max_lag is None else max_lag

            def last_step_loss(state: State) -> Tensor:
                return per_step_loss(head, net.head(top_hidden(state)), target).sum()

            return lag_profile(net.core, inputs, last_step_loss, state=state, positions=positions, max_lag=max_lag)
