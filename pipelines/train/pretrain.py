"""Language-model pretraining of a text task, run by train@<task> before its variants.

Enters: prepared/<task>/ (texts with their split, the fitted encoder) and the task's optional
`unlabelled` file. Leaves: one next-token language model per encoder shape the variants need
(cell, embedding, hidden size, layers; plus a backward one for a bidirectional variant), saved under
artifacts/<task>/pretrained/ and logged, with its perplexity per epoch, to a `pretrain-lm` child run.

Only training-split texts and the unlabelled file enter the stream: validation and holdout texts
never do, so the classifier's early stopping and the gate see texts the encoder never read. The
stream's own validation (its perplexity) is a fraction of those training texts, cut before shuffling.

The model is models/' many_to_many topology over token ids, trained with TBPTT(k1, k2): the texts,
shuffled once, are one long stream cut into B contiguous rows; batch j holds steps
[j*steps, (j+1)*steps) of every row, so with `reset: False` each batch continues the state the last
one left (the first batch of an epoch starts from zeros). That is the cheapest way to read every
token in context, and the reason the seed's many-to-many topology carries state across batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from models import ModelConfig, SequenceModel, encoder_weights, transfer_encoder
from pipelines.config import Params, TextTask, Variant
from pipelines.data.validate import blank_text
from pipelines.data.sources import read_table
from pipelines.data.versioning import data_version
from pipelines.errors import SeqopsError
from pipelines.prepare.text import TextEncoder, stream
from pipelines.train.tracking import child_run

RUN_NAME = "pretrain-lm"
DIRECTIONS = ("forward", "backward")


class PretrainError(SeqopsError, ValueError):
    """The pretraining stream cannot be built (an unreadable `unlabelled` file, too little text)."""


@dataclass(frozen=True)
class Encoder:
    """The shape a language model shares with the classifiers it starts: one LM per distinct shape."""

    cell: str
    embedding_dim: int
    hidden_size: int
    num_layers: int

    @classmethod
    def of(cls, variant: Variant) -> Encoder:
        return cls(variant.cell, variant.embedding_dim, variant.hidden_size, variant.num_layers)

    def file(self, direction: str) -> str:
        return f"lm-{self.cell}-e{self.embedding_dim}-h{self.hidden_size}-l{self.num_layers}-{direction}.pt"


def needed(variants: list[Variant]) -> dict[tuple[Encoder, str], None]:
    """(shape, direction) of every LM the variants start from, in variant order, without repeats."""
    wanted: dict[tuple[Encoder, str], None] = {}
    for variant in variants:
        for direction in DIRECTIONS[:2 if variant.bidirectional else 1]:
            wanted[(Encoder.of(variant), direction)] = None
    return wanted


def unlabelled_texts(spec: TextTask, root: Path) -> list[str]:
    """The task's `unlabelled` file: a .txt holds one text a line; a table holds them in the `text` column."""
    if spec.unlabelled is None:
        return []
    path = Path(spec.unlabelled) if Path(spec.unlabelled).is_absolute() else root / spec.unlabelled
    if not path.is_file():
        raise PretrainError(f"unlabelled: {path} does not exist; point the task's `unlabelled` at a text file")
    if path.suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if not blank_text(line)]
    table = read_table(path, strings=True)
    if spec.text not in table.columns:
        raise PretrainError(f"unlabelled: {path} has no column {spec.text!r} (the task's `text`); "
                            f"it has {list(table.columns)}")
    return [t for t in table[spec.text].dropna().astype(str) if not blank_text(t)]


def stream_texts(texts: pd.DataFrame, extra: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation) texts of the LM: training-split rows plus `extra`, shuffled by `seed`, the
    last `fraction` kept for perplexity. Rows of any other split never enter."""
    pool = texts.loc[texts["split"] == "train", "text"].tolist() + list(extra)
    order = np.random.default_rng(seed).permutation(len(pool))
    cut = len(pool) - max(1, int(round(fraction * len(pool))))
    return [pool[i] for i in order[:cut]], [pool[i] for i in order[cut:]]


class StreamBatches(Dataset):
    """Batch j of a token stream [N] cut into `rows` contiguous rows: x [rows, steps], y the next tokens,
    reset True only for batch 0 (every later batch continues its rows)."""

    def __init__(self, tokens: np.ndarray, rows: int, steps: int) -> None:
        usable = (len(tokens) - 1) // rows * rows
        if usable < rows * 2:
            raise PretrainError(f"the pretraining stream has {len(tokens)} tokens: too few for {rows} rows; "
                                f"add texts (or `unlabelled`), or set pretrain.method: none")
        self.x = torch.as_tensor(tokens[:usable].reshape(rows, -1))  # [rows, N/rows]
        self.y = torch.as_tensor(tokens[1:usable + 1].reshape(rows, -1))  # [rows, N/rows]
        self.steps = steps

    def __len__(self) -> int:
        return math.ceil(self.x.shape[1] / self.steps)

    def __getitem__(self, j: int) -> dict[str, Any]:
        cut = slice(j * self.steps, (j + 1) * self.steps)
        return {"x": self.x[:, cut], "y": self.y[:, cut], "reset": j == 0}  # x, y [rows, steps]


class StreamData(pl.LightningDataModule):
    def __init__(self, train: np.ndarray, validation: np.ndarray, rows: int, steps: int) -> None:
        super().__init__()
        self.train_set = StreamBatches(train, rows, steps)
        self.val_set = StreamBatches(validation, min(rows, max(1, (len(validation) - 1) // 2)), steps)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=None, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=None, shuffle=False)


class Perplexity(pl.Callback):
    """exp(mean next-token loss) per epoch, train and validation, as MLflow metrics of the active run."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logged = {f"lm_{k.removesuffix('_loss')}_perplexity": math.exp(min(float(v), 50.0))
                  for k, v in trainer.callback_metrics.items() if k in ("train_loss", "val_loss")}
        self.history.append(logged)
        mlflow.log_metrics(logged, step=trainer.current_epoch + 1)


def language_model_config(shape: Encoder, vocab_size: int, spec: TextTask, params: Params) -> dict[str, Any]:
    """models.ModelConfig of a next-token model with the classifier's embedding and core."""
    settings = spec.pretrain
    return {"cell": shape.cell, "hidden_size": shape.hidden_size, "num_layers": shape.num_layers,
            "topology": "many_to_many", "head": "multiclass", "output_size": vocab_size, "vocab_size": vocab_size,
            "embedding_dim": shape.embedding_dim, "k1": settings.k1, "k2": settings.k2, "lr": settings.lr,
            "clip_algorithm": params.clipping.algorithm, "clip_value": params.clipping.max_norm}


def train_language_model(config: dict[str, Any], data: StreamData, max_epochs: int, seed: int) -> tuple[
        SequenceModel, list[dict[str, float]]]:
    """Fit one LM over the stream; returns it and its perplexity per epoch."""
    pl.seed_everything(seed, workers=True, verbose=False)
    network = SequenceModel(ModelConfig(**config))
    perplexity = Perplexity()
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, callbacks=[perplexity],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, deterministic=True)
    trainer.fit(network, datamodule=data)
    return network, perplexity.history


def pretrain(spec: TextTask, params: Params, texts: pd.DataFrame, extra: list[str], encoder: TextEncoder,
             out: Path) -> dict[str, Any]:
    """Train every LM the task's variants need, logging to the active MLflow run (the stage opens a
    `pretrain-lm` child run for it); save each LM's encoder weights to `out`. `texts` are the prepared
    rows with their split, `extra` the unlabelled texts. Returns what was trained (texts, tokens, the
    perplexities per epoch of each LM file, seconds) for the console and the benchmark."""
    settings = spec.pretrain
    train, validation = stream_texts(texts, extra, settings.validation, params.training.seed)
    length = spec.prepare.max_length
    tokens = {"forward": (stream(encoder, train, length), stream(encoder, validation, length))}
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"texts": len(train), "tokens": int(len(tokens["forward"][0])), "models": {}}
    started = time.monotonic()
    mlflow.set_tag("seqops.role", "pretrain")
    mlflow.log_params({"lm_texts": len(train), "lm_validation_texts": len(validation),
                       "lm_tokens": summary["tokens"], **{f"lm_{k}": v for k, v in settings.model_dump().items()}})
    for shape, direction in needed(spec.variants):
        if direction not in tokens:  # the backward LM reads every text right to left
            tokens[direction] = tuple(stream(encoder, part, length)[::-1].copy() for part in (train, validation))
        data = StreamData(*tokens[direction], settings.streams, settings.steps)
        config = language_model_config(shape, len(encoder), spec, params)
        network, history = train_language_model(config, data, settings.max_epochs, params.training.seed)
        path = out / shape.file(direction)
        torch.save(encoder_weights(network.cpu()), path)
        mlflow.log_artifact(str(path), "language_models")
        summary["models"][path.name] = history
    summary["seconds"] = time.monotonic() - started
    mlflow.log_metric("lm_seconds", summary["seconds"])
    return summary


def pretrain_task(root: Path, task: str, spec: TextTask, params: Params, texts: pd.DataFrame,
                  encoder: TextEncoder, out: Path) -> dict[str, Any]:
    """`pretrain` as a `pretrain-lm` child run of the retrain's parent run, with the task's unlabelled file."""
    with child_run(RUN_NAME, task, data_version(root)):
        return pretrain(spec, params, texts, unlabelled_texts(spec, root), encoder, out)


def warm_start(network: SequenceModel, variant: Variant, directory: Path) -> list[str]:
    """Load the variant's pretrained embedding and core (forward, and backward into a bidirectional core's
    reverse direction) from `directory`; returns the loaded tensor names (empty: nothing was pretrained)."""
    shape = Encoder.of(variant)
    forward = directory / shape.file("forward")
    if not forward.is_file():
        return []
    backward = directory / shape.file("backward")
    return transfer_encoder(network, torch.load(forward, weights_only=True),
                            torch.load(backward, weights_only=True) if backward.is_file() else None)
