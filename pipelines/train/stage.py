"""train@<task>: one MLflow child run per variant under the retrain's parent run.

models/ does the learning (TBPTT, clipping, gradient health); this stage wires data, the
tracking logger and the pyfunc logging around it, and writes artifacts/<task>/train.json so
evaluate and promote know which runs and logged models this retrain produced.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import MLFlowLogger

from models import GradientHealth, ModelConfig, SequenceModel
from pipelines.config import Params, TextTask, TimeSeriesTask, Variant
from pipelines.data.versioning import data_version
from pipelines.project import prepared_dir, tracking_uri, train_record
from pipelines.runner import run_stage_main
from pipelines.serving.pyfunc import ForecastModel, SentimentModel, forecast_signature, log_pyfunc, sentiment_signature
from pipelines.train.datamodules import SeriesDataModule, TextDataModule
from pipelines.train.plots import log_gradient_health, log_loss_curves
from pipelines.train.tracking import child_run, parent_run


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger, minus its hyperparameter dump: the stage logs one flat, stable
    set of param keys itself, so every variant lines up in MLflow's compare view."""

    def log_hyperparams(self, params: Any) -> None:
        return None


class EpochProgress(pl.Callback):
    """One line per epoch: long runs show progress without a progress bar's log noise."""

    def __init__(self, label: str) -> None:
        self.label = label

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train_loss", "val_loss")}
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"  {self.label} epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {shown}", flush=True)


def model_config(variant: Variant, spec: TimeSeriesTask | TextTask, params: Params,
                 input_size: int, vocab_size: int | None = None) -> dict[str, Any]:
    """The full model configuration of a variant: variant keys over task and global defaults."""
    topology = variant.topology or spec.topology
    tbptt = topology == "many_to_many"
    text = isinstance(spec, TextTask)
    return {
        "cell": variant.cell,
        "input_size": input_size,
        "hidden_size": variant.hidden_size,
        "num_layers": variant.num_layers,
        "bidirectional": variant.bidirectional,
        "dropout": variant.dropout,
        "topology": topology,
        "head": "multiclass" if text else "regression",
        "output_size": len(spec.labels) if text else 1,
        "k1": variant.k1 if tbptt else None,
        "k2": (variant.k2 or variant.k1) if tbptt else None,
        "clip_algorithm": params.clipping.algorithm,
        "clip_value": variant.clip or params.clipping.max_norm,
        "lr": variant.lr,
        "teacher_forcing": variant.teacher_forcing,
        "target_index": 0,
        "vocab_size": vocab_size,
        "embedding_dim": variant.embedding_dim if text else None,
    }


def trainer_for(params: Params, spec: TimeSeriesTask | TextTask, run_id: str, root: Path, label: str,
                health: GradientHealth) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=spec.training.max_epochs,
        accelerator=params.training.accelerator,
        devices=params.training.devices,
        num_nodes=params.training.num_nodes,
        strategy=params.training.strategy,
        precision=params.training.precision,
        logger=RunLogger(run_id=run_id, tracking_uri=tracking_uri(root)),
        callbacks=[EpochProgress(label), health],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
    )


class _SeriesAdapter:
    """What a time-series task adds around training: datamodules per topology, the forecast pyfunc."""

    def __init__(self, root: Path, task: str, spec: TimeSeriesTask) -> None:
        self.root, self.task, self.spec = root, task, spec
        self.datamodules: dict[str, SeriesDataModule] = {}

    def datamodule(self, variant: Variant) -> SeriesDataModule:
        topology = variant.topology or self.spec.topology
        if topology not in self.datamodules:
            dm = SeriesDataModule(prepared_dir(self.root, self.task), topology, self.spec.prepare.window,
                                  self.spec.prepare.stride, self.spec.training.batch_size, self.spec.evaluate.horizon)
            dm.setup("fit")
            self.datamodules[topology] = dm
        return self.datamodules[topology]

    def config(self, variant: Variant, params: Params) -> dict[str, Any]:
        return model_config(variant, self.spec, params, self.datamodule(variant).transform.num_features)

    def log_model(self, directory: Path, network: SequenceModel, config: dict[str, Any]) -> str:
        spec, prepared = self.spec, prepared_dir(self.root, self.task)
        series = pd.read_parquet(prepared / "series.parquet")
        first = series[series["series_id"] == series["series_id"].iloc[0]]
        length = spec.serving.min_history * 2
        example = pd.DataFrame({"series_id": [str(first["series_id"].iloc[0])],
                                "history": [first[spec.target].to_numpy()[:length].tolist()]})
        for column in spec.covariates:
            example[column] = [first[column].to_numpy()[:length].tolist()]
        return log_pyfunc(directory, ForecastModel(), network, {"model": config, "serving": spec.serving.model_dump()},
                          {"transform": prepared / "transform.json"},
                          forecast_signature(list(spec.covariates), spec.serving.default_horizon), example)


class _TextAdapter:
    """What a text task adds around training: the token datamodule, the sentiment pyfunc."""

    def __init__(self, root: Path, task: str, spec: TextTask) -> None:
        self.root, self.task, self.spec = root, task, spec
        self.dm = TextDataModule(prepared_dir(root, task), list(spec.labels), spec.prepare.max_length,
                                 spec.training.batch_size)
        self.dm.setup("fit")

    def datamodule(self, variant: Variant) -> TextDataModule:
        return self.dm

    def config(self, variant: Variant, params: Params) -> dict[str, Any]:
        return model_config(variant, self.spec, params, 1, vocab_size=len(self.dm.vocabulary))

    def log_model(self, directory: Path, network: SequenceModel, config: dict[str, Any]) -> str:
        spec = self.spec
        payload = {"model": config, "serving": spec.serving.model_dump(), "labels": list(spec.labels),
                   "max_length": spec.prepare.max_length}
        example = pd.DataFrame({"text": ["what a lovely day", "this is awful"]})
        return log_pyfunc(directory, SentimentModel(), network, payload,
                          {"vocabulary": prepared_dir(self.root, self.task) / "vocabulary.json"},
                          sentiment_signature(), example)


def adapter_for(root: Path, task: str, spec: TimeSeriesTask | TextTask) -> _SeriesAdapter | _TextAdapter:
    return _TextAdapter(root, task, spec) if isinstance(spec, TextTask) else _SeriesAdapter(root, task, spec)


def train_variant(root: Path, task: str, params: Params, variant: Variant,
                  adapter: _SeriesAdapter | _TextAdapter, workdir: Path) -> dict[str, Any]:
    spec = params.task(task)
    config = adapter.config(variant, params)
    with child_run(variant.name, task, data_version(root)) as run_id:
        mlflow.log_params({**config, "variant": variant.name, "max_epochs": spec.training.max_epochs,
                           "batch_size": spec.training.batch_size, "precision": params.training.precision,
                           "seed": params.training.seed})
        pl.seed_everything(params.training.seed, workers=True, verbose=False)
        network = SequenceModel(ModelConfig(**config))
        health = GradientHealth(probe_every_n_steps=params.diagnostics.probe_every_n_steps,
                                vanishing_threshold=params.diagnostics.vanishing_threshold)
        trainer = trainer_for(params, spec, run_id, root, f"{task}/{variant.name}", health)
        trainer.fit(network, datamodule=adapter.datamodule(variant))
        val_loss = float(trainer.callback_metrics["val_loss"])
        mlflow.log_metric("clipped_fraction", health.clipped_fraction)
        log_loss_curves(run_id)
        log_gradient_health(run_id, health.history, config["clip_value"] if config["clip_algorithm"] == "norm" else None)
        model_uri = adapter.log_model(workdir / variant.name, network.cpu(), config)
    return {"variant": variant.name, "run_id": run_id, "model_uri": model_uri, "val_loss": val_loss}


def train_task(root: Path, task: str, params: Params) -> Path:
    spec = params.task(task)
    torch.set_num_threads(params.training.num_threads)
    adapter = adapter_for(root, task, spec)
    results = []
    with parent_run(task, root, data_version(root)) as parent_id, tempfile.TemporaryDirectory() as tmp:
        for variant in spec.variants:
            print(f"train@{task}: variant {variant.name} ({variant.cell}, hidden {variant.hidden_size}, "
                  f"layers {variant.num_layers}, {variant.topology or spec.topology})", flush=True)
            results.append(train_variant(root, task, params, variant, adapter, Path(tmp)))
    return write_record(root, task, parent_id, results)


def write_record(root: Path, task: str, parent_id: str, results: list[dict[str, Any]]) -> Path:
    """artifacts/<task>/train.json: the retrain's parent run and one entry per variant (the stage's output)."""
    record = train_record(root, task)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"task": task, "parent_run_id": parent_id, "variants": results}, indent=2))
    return record


if __name__ == "__main__":
    run_stage_main("train", train_task)
