"""Gradient health of a recurrent model, as a Lightning callback and a few plain functions.

What it watches and why:
- the global gradient norm before clipping, and how often clipping fires (a model that is clipped on
  most updates is training at the clip value, not at its learning rate);
- ||dL/dh_t|| against the lag between step t and the loss: the direct picture of vanishing gradients,
  and of whether k2 reaches as far back as the gradient still carries signal;
- the spectral radius of each recurrent matrix (per gate for lstm/gru): above 1 risks explosion,
  well below 1 means vanishing;
- a NaN/inf loss or gradient stops training at once with the step, the likely cause and the remedies,
  instead of silently turning every weight into NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from models.recurrent import GATES, RecurrentCore, State

log = logging.getLogger(__name__)

REMEDIES = (
    "Likely cause: exploding gradients through the recurrence (recurrent weights with spectral radius > 1, "
    "a learning rate too high) or NaN/inf in the input batch. Remedies: lower the learning rate (lr), clip "
    "gradients by norm (clip_algorithm='norm', a smaller clip_value), use a smaller k2, and check the input "
    "for NaN/inf (unmasked gaps, division by a zero scale)."
)


class GradientExplosionError(RuntimeError):
    """Training produced a non-finite loss or gradient; the message names the step, cause and remedies."""


def spectral_radius(matrix: Tensor) -> float:
    """Largest |eigenvalue| of a square matrix, computed in float64 on the CPU (exact enough to compare with numpy)."""
    return float(torch.linalg.eigvals(matrix.detach().to("cpu", torch.float64)).abs().max())


def spectral_radii(core: RecurrentCore, prefix: str = "") -> dict[str, float]:
    """``{"<prefix>weight_hh_l0/<gate>": radius}`` for every recurrent matrix; lstm gates i, f, g, o and
    gru gates r, z, n are the square [H, H] row blocks of ``weight_hh``; an Elman rnn has one block, no gate suffix."""
    radii = {}
    for name, weight in core.recurrent_weights().items():
        gates = GATES[core.cell]
        if not gates:
            radii[f"{prefix}{name}"] = spectral_radius(weight)
            continue
        for gate, block in zip(gates, weight.chunk(len(gates), dim=0)):
            radii[f"{prefix}{name}/{gate}"] = spectral_radius(block)
    return radii


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """Global L2 norm of all gradients (inf or NaN when any gradient is)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.stack(norms).norm())


def _state_parts(state: State) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def lag_profile(
    core: RecurrentCore,
    x: Tensor,
    loss_fn: Callable[[State], Tensor],
    state: State | None = None,
    positions: Tensor | None = None,
    max_lag: int | None = None,
) -> Tensor:
    """||dL/ds_{p-k}|| for k = 0..max_lag: the gradient reaching the state k steps before the loss.

    ``x`` [B, T, F] are the core's inputs; sequence b's loss sits at step ``positions[b]`` (default T-1)
    and ``loss_fn`` gets the state there ([L, B, H] per part, per sequence) and returns a scalar (sum the
    per-sequence losses so sequences do not dilute each other). The state is the full stacked state
    (lstm: h and c together). Entry k averages the per-sequence norms over sequences with p - k >= 0.

    The core runs one step per call so each step's state is a tensor in the graph; steps before the
    window run in one fused call under no_grad. Bidirectional cores have no causal lag and are refused.
    """
    if core.bidirectional:
        raise ValueError(
            "lag_profile needs a unidirectional core: a bidirectional state at step t depends on later steps"
        )
    batch, T = x.shape[:2]
    positions = torch.full((batch,), T - 1, dtype=torch.long) if positions is None else positions.to("cpu", torch.long)
    p_min, p_max = int(positions.min()), int(positions.max())
    max_lag = p_max if max_lag is None else min(max_lag, p_max)
    start = max(0, p_min - max_lag)
    if start > 0:
        with torch.no_grad():
            _, state = core(x[:, :start], state)  # [L, B, H]
    states = []
    for t in range(start, p_max + 1):
        _, state = core(x[:, t : t + 1], state)  # [L, B, H] per part
        states.append(state)
    rows = torch.arange(batch)
    index = (positions - start).to(x.device)  # [B]
    picked = [
        torch.stack(parts)[index, :, rows.to(x.device)].transpose(0, 1).contiguous()  # [L, B, H]; cuDNN wants it dense
        for parts in zip(*(_state_parts(s) for s in states))
    ]
    loss = loss_fn(tuple(picked) if len(picked) > 1 else picked[0])
    flat = [part for s in states for part in _state_parts(s)]
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    n_parts = len(picked)
    per_step = []
    for i in range(len(states)):
        sq = sum(
            (g.float().pow(2).sum(dim=(0, 2)) if g is not None else torch.zeros(batch, device=x.device))
            for g in grads[i * n_parts : (i + 1) * n_parts]
        )
        per_step.append(sq.sqrt())  # [B]
    norms = torch.stack(per_step).cpu()  # [T', B]
    profile = torch.full((max_lag + 1,), float("nan"))
    for k in range(max_lag + 1):
        t = positions - k  # [B]
        valid = t >= 0
        if valid.any():
            profile[k] = norms[(t - start)[valid], rows[valid]].mean()
    return profile


def default_lags(max_lag: int) -> list[int]:
    """0, 1, 2, 4, 8, ... and max_lag itself: enough points for a log-scale curve without a metric per step."""
    powers = [2**i for i in range(int(math.log2(max_lag)) + 1)] if max_lag >= 1 else []
    return sorted({0, *powers, max_lag})


def vanishing_advice(module: torch.nn.Module) -> str:
    """What to try against a vanishing gradient, fitted to the module's cells: a gated cell helps an Elman
    rnn, and is no advice to a model that already has one."""
    cells = {m.cell for m in module.modules() if isinstance(m, RecurrentCore)}
    if any(not GATES[cell] for cell in cells):
        return (
            "Consider a gated cell (lstm or gru), a smaller k2 (cheaper, same signal), or recurrent weights "
            "initialised nearer spectral radius 1."
        )
    return (
        "The cells are already gated: consider a smaller k2 (cheaper, same signal), or check whether the task "
        "needs memory that far back."
    )


class GradientHealth(pl.Callback):
    """Logs gradient health through the attached logger(s) against ``trainer.global_step`` (optimizer
    steps, which with chunked TBPTT is not the batch count) and keeps every record in ``history``.

    Keys: ``grad_norm/pre_clip`` (mean over the batch's updates), ``grad_norm/pre_clip_max``,
    ``grad_norm/post_clip``, ``grad_norm/clipped_fraction`` (updates clipped so far / updates so far);
    ``grad_h_lag/<k>`` for k in ``lags`` and ``grad_h_lag/ratio`` (lag max_lag over lag 0);
    ``spectral_radius/<core path>.weight_hh_l<k>[_reverse][/<gate>]``.

    The lag probe needs the module to offer ``gradient_lag_profile(batch, max_lag) -> Tensor | None``
    (SequenceModel does); it runs on the current batch every ``probe_every_n_steps`` optimizer steps, on a
    forked RNG so that probing does not change the training run. When the gradient at the largest lag
    (k2 by default) falls below ``vanishing_threshold`` times the gradient at lag 0, it logs a warning
    (once, through this module's logger) with advice that fits the model's cells.
    """

    def __init__(
        self,
        probe_every_n_steps: int = 50,
        max_lag: int | None = None,
        vanishing_threshold: float = 1e-3,
        lags: Sequence[int] | None = None,
        spectral_every_n_steps: int | None = None,
    ) -> None:
        super().__init__()
        if probe_every_n_steps < 1:
            raise ValueError(f"probe_every_n_steps={probe_every_n_steps} must be >= 1")
        self.probe_every_n_steps = probe_every_n_steps
        self.max_lag = max_lag
        self.vanishing_threshold = vanishing_threshold
        self.lags = None if lags is None else sorted(set(lags))
        self.spectral_every_n_steps = spectral_every_n_steps or probe_every_n_steps
        self.history: list[dict[str, Any]] = []
        self.updates = 0
        self.clipped = 0
        self._pre_clip: float | None = None
        self._batch_records: list[dict[str, Any]] = []
        self._batch: Any = None
        self._last_probe: int | None = None
        self._last_spectral: int | None = None
        self._warned: set[str] = set()

    @property
    def clipped_fraction(self) -> float:
        """Fraction of all updates so far whose gradient the clipping changed."""
        return self.clipped / self.updates if self.updates else 0.0

    def state_dict(self) -> dict[str, int]:
        """Checkpointed counters, so clipped_fraction continues across a resume (history stays in memory)."""
        return {"updates": self.updates, "clipped": self.clipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore the counters saved by ``state_dict`` (Lightning calls it when resuming)."""
        self.updates, self.clipped = state_dict["updates"], state_dict["clipped"]

    def _emit(self, trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _warn_once(self, key: str, message: str) -> None:
        """One channel (the logger, at WARNING), once per kind of finding: the console shows it once."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def _explode(self, trainer: pl.Trainer, what: str) -> None:
        bad = []
        if isinstance(self._batch, dict):
            bad = [
                k
                for k, v in self._batch.items()
                if isinstance(v, Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
            ]
        seen = f" The batch has NaN/inf in {bad} (harmless only if those positions are masked)." if bad else ""
        raise GradientExplosionError(
            f"{what} at optimizer step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx}); training stopped.{seen} {REMEDIES}"
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_spectral(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = batch
        self._batch_records = []

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            self._explode(trainer, f"Loss is {float(loss.detach().float().mean())}")

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        norm = grad_norm(pl_module.parameters())
        if not math.isfinite(norm):
            names = [
                n for n, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            self._explode(trainer, f"Non-finite gradient (norm {norm}) in {names[:5]}")
        self._pre_clip = norm

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        post = grad_norm(pl_module.parameters())
        pre = post if self._pre_clip is None else self._pre_clip
        clipped = post < pre * (1.0 - 1e-6)
        self.updates += 1
        self.clipped += int(clipped)
        record = {
            "kind": "update",
            "step": trainer.global_step,
            "grad_norm": pre,
            "grad_norm_clipped": post,
            "clipped": clipped,
        }
        self.history.append(record)
        self._batch_records.append(record)
        self._pre_clip = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._batch_records:
            pre = [r["grad_norm"] for r in self._batch_records]
            metrics = {
                "grad_norm/pre_clip": sum(pre) / len(pre),
                "grad_norm/pre_clip_max": max(pre),
                "grad_norm/post_clip": sum(r["grad_norm_clipped"] for r in self._batch_records) / len(pre),
                "grad_norm/clipped_fraction": self.clipped_fraction,
            }
            self._emit(trainer, metrics, step)
        if self._last_probe is None or step - self._last_probe >= self.probe_every_n_steps:
            self._last_probe = step
            self._probe(trainer, pl_module, batch, step)
        if self._last_spectral is None or step - self._last_spectral >= self.spectral_every_n_steps:
            self._log_spectral(trainer, pl_module)

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, step: int) -> None:
        probe = getattr(pl_module, "gradient_lag_profile", None)
        if probe is None:
            self._warn_once(
                "no-probe",
                f"{type(pl_module).__name__} has no gradient_lag_profile(batch, max_lag); grad_h_lag/* is not logged",
            )
            return
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            profile = probe(batch, self.max_lag)
        if profile is None:
            self._warn_once(
                "no-lag",
                f"{type(pl_module).__name__} has no causal lag profile (bidirectional core): grad_h_lag/* not logged",
            )
            return
        curve = [float(v) for v in profile]
        self.history.append({"kind": "lag", "step": step, "lag_profile": curve})
        max_lag = len(curve) - 1
        ratio = curve[max_lag] / curve[0] if curve[0] > 0 else float("nan")
        metrics = {f"grad_h_lag/{k}": curve[k] for k in (self.lags or default_lags(max_lag)) if k <= max_lag}
        metrics["grad_h_lag/ratio"] = ratio
        self._emit(trainer, metrics, step)
        if max_lag > 0 and ratio < self.vanishing_threshold:
            self._warn_once(
                "vanishing",
                f"Vanishing gradient at step {step}: ||dL/dh|| at lag {max_lag} is {ratio:.2e} of its value at lag 0 "
                f"(threshold {self.vanishing_threshold:g}); steps that far back barely learn. "
                + vanishing_advice(pl_module),
            )

    def _log_spectral(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self._last_spectral = step
        radii = {}
        for path, module in pl_module.named_modules():
            if isinstance(module, RecurrentCore):
                radii.update(spectral_radii(module, prefix=f"{path}." if path else ""))
        if not radii:
            return
        self.history.append({"kind": "spectral", "step": step, "spectral_radius": radii})
        self._emit(trainer, {f"spectral_radius/{k}": v for k, v in radii.items()}, step)
