"""Tiny learnable tasks, a trainer factory, an in-memory logger and a resumable loader for the models tests."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger

from models import ModelConfig, SequenceModel

B, T, F, C, HORIZON = 32, 10, 2, 3, 4


def make_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU trainer with every side effect (checkpoints, logs, bars) off unless asked for."""
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def _classes(signal: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(signal.contiguous(), torch.tensor([-0.5, 0.5]))


def make_batch(topology: str, head: str, seed: int = 0) -> dict[str, Any]:
    """A batch of a task each topology x head learns in a few dozen steps, built from a seed."""
    g = torch.Generator().manual_seed(seed)
    if topology == "many_to_many":
        x = torch.randn(B, T, F, generator=g)
        s = x[..., 0]
        if head == "regression":
            prev = torch.cat([torch.zeros(B, 1), s[:, :-1]], dim=1)
            return {"x": x, "y": (0.5 * (s + prev))[..., None]}
        if head == "binary":
            return {"x": x, "y": (s > 0).float()[..., None]}
        return {"x": x, "y": _classes(s)}
    if topology == "many_to_one":
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        valid = torch.arange(T)[None, :] < lengths[:, None]
        x = torch.randn(B, T, F, generator=g) * valid[..., None]
        s = x[..., 0].sum(1) / lengths.float().sqrt()
        y = {"regression": s, "binary": (s > 0).float(), "multiclass": _classes(s)}[head]
        return {"x": x, "lengths": lengths, "y": y}
    if topology == "one_to_many":
        x = torch.randn(B, F, generator=g)
        s = x[:, :1].expand(B, T)
        if head == "regression":
            return {"x": x, "y": (s * torch.linspace(0.1, 1.0, T))[..., None]}
        if head == "binary":
            return {"x": x, "y": (s > 0).float()[..., None]}
        return {"x": x, "y": _classes(s)}
    x = (0.3 * torch.randn(B, T, F, generator=g)).cumsum(1)
    return {"x": x, "y": x[:, -1:, :1].expand(B, HORIZON, 1).clone()}


def output_size(head: str) -> int:
    return C if head == "multiclass" else 1


def make_model(topology: str, head: str, cell: str, **fields: Any) -> SequenceModel:
    options = dict(
        cell=cell, input_size=F, hidden_size=16, topology=topology, head=head, output_size=output_size(head), lr=0.02
    )
    options.update(fields)
    return SequenceModel(ModelConfig(**options))


def batch_loss(model: SequenceModel, batch: dict[str, Any]) -> float:
    """The model's loss on a batch at inference settings."""
    model.eval()
    with torch.no_grad():
        loss = model.net.loss(model.config.head, model(batch), batch)
    model.train()
    return float(loss)


class MemoryLogger(Logger):
    """Keeps every log_metrics call, to assert on what a callback logged and at which step."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def values(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.records if key in m]


class ResumableLoader:
    """A fixed list of batches that remembers how many it has handed out this epoch (state_dict /
    load_state_dict), so a run resumed mid-epoch sees the remaining batches, not the epoch's first ones again."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches
        self.position = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        start = self.position if self.position < len(self.batches) else 0
        for i in range(start, len(self.batches)):
            self.position = i + 1
            yield self.batches[i]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]
