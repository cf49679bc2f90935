"""Heads: what the raw outputs of a topology mean, how they are scored and how they become predictions.

The readout layer itself is the topology's ``nn.Linear``; a head here is only its loss and its
activation, kept as plain functions so that TBPTT, validation and diagnostics score outputs the same way.

``quantile``: O outputs per step estimate the quantiles tau_k = (2k + 1) / (2 O), k = 0..O-1, of one target
(the midpoints of O equal slices of probability, as in QR-DQN), trained with the pinball loss. Its outputs
are sorted before use, so they are ordered whatever the network emits (rearrangement, Chernozhukov et al.
2010, never raises the pinball loss); a central interval at level L reads the quantiles (1 -+ L) / 2.
``quantile_function`` reads the whole distribution from them (to draw from it): linear between the learned
levels and, beyond the outermost, exponential tails whose slope continues the outermost pair's (the tails
of a Laplace), so a draw lands past the outermost quantile as often as its level says, never at a wall.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

HEADS = ("regression", "binary", "multiclass", "quantile")


def quantile_levels(output_size: int) -> Tensor:
    """The probability levels tau [O] a quantile head with ``output_size`` outputs estimates, ascending."""
    return (2 * torch.arange(output_size, dtype=torch.float32) + 1) / (2 * output_size)  # [O]


def pinball_loss(pred: Tensor, y: Tensor) -> Tensor:
    """Mean pinball (quantile) loss over the O quantiles of sorted ``pred`` [..., O] for targets [...] -> [...]."""
    quantiles = torch.sort(pred.float(), dim=-1).values  # [..., O]
    taus = quantile_levels(pred.shape[-1]).to(pred.device)  # [O]
    error = y.float().unsqueeze(-1) - quantiles  # [..., O]
    return torch.maximum(taus * error, (taus - 1) * error).mean(-1)  # [...]


def quantile_function(quantiles: Tensor, u: Tensor) -> Tensor:
    """The value at probability ``u`` [B] of the distributions whose ascending quantiles at
    ``quantile_levels(O)`` are ``quantiles`` [B, O] -> [B]: linear between levels, exponential beyond them."""
    taus = quantile_levels(quantiles.shape[-1]).to(quantiles)  # [O]
    u = u.to(quantiles).clamp(1e-6, 1.0 - 1e-6)  # [B]: a tail is unbounded at 0 and 1
    slopes = (quantiles.diff(dim=-1) / taus.diff()).clamp_min(0.0)  # [B, O - 1] dq / dtau per interval
    right = torch.searchsorted(taus, u.contiguous()).clamp(1, len(taus) - 1)  # [B] upper level of u's interval
    left = right - 1  # [B]
    q_left = quantiles.gather(-1, left[:, None])[:, 0]  # [B]
    inner = q_left + slopes.gather(-1, left[:, None])[:, 0] * (u - taus[left])  # [B]
    low, high = taus[0], taus[-1]
    # exponential tails: q(u) = q_0 + b ln(u / tau_0), b = slope_0 * tau_0 (and mirrored at the top)
    below = quantiles[:, 0] + slopes[:, 0] * low * torch.log(u / low)  # [B]
    above = quantiles[:, -1] - slopes[:, -1] * (1 - high) * torch.log((1 - u) / (1 - high))  # [B]
    return torch.where(u < low, below, torch.where(u > high, above, inner))  # [B]


def check_head(head: str, output_size: int) -> None:
    """Reject head/output_size pairs that cannot be scored, with the fix in the message."""
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not known; use one of {HEADS}")
    if head == "binary" and output_size != 1:
        raise ValueError(f"head='binary' uses one logit: output_size must be 1, got {output_size}")
    if head == "multiclass" and output_size < 2:
        raise ValueError(f"head='multiclass' needs output_size = number of classes >= 2, got {output_size}")
    if head == "quantile" and output_size < 2:
        raise ValueError(f"head='quantile' needs output_size = number of quantiles >= 2, got {output_size}")


def per_step_loss(head: str, pred: Tensor, y: Tensor) -> Tensor:
    """Unreduced loss, one value per prediction position: pred [..., O] -> [...].

    Targets: regression [..., O] (or [...] when O == 1) floats; binary [...] or [..., 1] of 0/1;
    multiclass [...] or [..., 1] class ids; quantile [...] or [..., 1] floats (one target, O quantiles). Computed in float32 so bf16 autocast does not round the loss.
    """
    pred = pred.float()  # [..., O]
    lead = pred.shape[:-1]
    if head == "regression":
        if y.numel() != pred.numel():
            raise ValueError(f"regression target must have shape {tuple(pred.shape)}, got {tuple(y.shape)}")
        return (pred - y.reshape(pred.shape).float()).pow(2).mean(-1)  # [...]
    if y.numel() != lead.numel():
        raise ValueError(f"{head} target must have shape {tuple(lead)}, got {tuple(y.shape)}")
    if head == "quantile":
        return pinball_loss(pred, y.reshape(lead))  # [...]
    if head == "binary":
        return F.binary_cross_entropy_with_logits(pred[..., 0], y.reshape(lead).float(), reduction="none")  # [...]
    if head == "multiclass":
        flat = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1).long(), reduction="none")  # [N]
        return flat.reshape(lead)  # [...]
    raise ValueError(f"head={head!r} is not known; use one of {HEADS}")


def activate(head: str, pred: Tensor) -> Tensor:
    """Raw outputs [..., O] to predictions: values (regression), P(y=1) [..., 1] (binary), class probabilities
    (multiclass), ascending quantiles at ``quantile_levels(O)`` (quantile)."""
    if head == "regression":
        return pred  # [..., O]
    if head == "quantile":
        return torch.sort(pred, dim=-1).values  # [..., O]
    if head == "binary":
        return torch.sigmoid(pred)  # [..., 1]
    if head == "multiclass":
        return torch.softmax(pred.float(), dim=-1)  # [..., C]
    raise ValueError(f"head={head!r} is not known; use one of {HEADS}")


def masked_sum(loss: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """(sum of ``loss`` over valid positions, number of valid positions): TBPTT averages per update
    over valid steps only, so padded steps weigh nothing."""
    if mask is None:
        return loss.sum(), loss.new_tensor(float(loss.numel()))
    mask = mask.to(torch.bool)
    if mask.shape != loss.shape:
        raise ValueError(f"mask must have shape {tuple(loss.shape)}, got {tuple(mask.shape)}")
    return torch.where(mask, loss, torch.zeros_like(loss)).sum(), mask.sum().to(loss.dtype)
