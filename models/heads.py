"""Heads: what the raw outputs of a topology mean, how they are scored and how they become predictions.

The readout layer itself is the topology's ``nn.Linear``; a head here is only its loss and its
activation, kept as plain functions so that TBPTT, validation and diagnostics score outputs the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

HEADS = ("regression", "binary", "multiclass")


def check_head(head: str, output_size: int) -> None:
    """Reject head/output_size pairs that cannot be scored, with the fix in the message."""
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not known; use one of {HEADS}")
    if head == "binary" and output_size != 1:
        raise ValueError(f"head='binary' uses one logit: output_size must be 1, got {output_size}")
    if head == "multiclass" and output_size < 2:
        raise ValueError(f"head='multiclass' needs output_size = number of classes >= 2, got {output_size}")


def per_step_loss(head: str, pred: Tensor, y: Tensor) -> Tensor:
    """Unreduced loss, one value per prediction position: pred [..., O] -> [...].

    Targets: regression [..., O] (or [...] when O == 1) floats; binary [...] or [..., 1] of 0/1;
    multiclass [...] or [..., 1] class ids. Computed in float32 so bf16 autocast does not round the loss.
    """
    pred = pred.float()  # [..., O]
    lead = pred.shape[:-1]
    if head == "regression":
        if y.numel() != pred.numel():
            raise ValueError(f"regression target must have shape {tuple(pred.shape)}, got {tuple(y.shape)}")
        return (pred - y.reshape(pred.shape).float()).pow(2).mean(-1)  # [...]
    if y.numel() != lead.numel():
        raise ValueError(f"{head} target must have shape {tuple(lead)}, got {tuple(y.shape)}")
    if head == "binary":
        return F.binary_cross_entropy_with_logits(pred[..., 0], y.reshape(lead).float(), reduction="none")  # [...]
    if head == "multiclass":
        flat = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1).long(), reduction="none")  # [N]
        return flat.reshape(lead)  # [...]
    raise ValueError(f"head={head!r} is not known; use one of {HEADS}")


def activate(head: str, pred: Tensor) -> Tensor:
    """Raw outputs [..., O] to predictions: values (regression), P(y=1) [..., 1] (binary), class probabilities
    (multiclass)."""
    if head == "regression":
        return pred  # [..., O]
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
