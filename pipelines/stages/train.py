"""train@<task>: one MLflow child run per variant under the retrain's parent run.

models/ does the learning (TBPTT, clipping, gradient health); this stage wires data, the
tracking logger and the pyfunc logging around it, and writes artifacts/<task>/train.json so
evaluate and promote know which runs and logged models this retrain produced.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import MLFlowLogger

from models import ModelConfig, SequenceModel
from pipelines.config import Params, TimeSeriesTask, Variant, load_params
from pipelines.datamodules import SeriesDataModule
from pipelines.paths import prepared_dir, project_root, tracking_uri, train_record
from pipelines.plots import log_loss_curves
from pipelines.serving import log_forecast_model
from pipelines.tracking import child_run, parent_run
from pipelines.versioning import data_version


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


def model_config(variant: Variant, spec: TimeSeriesTask, params: Params, input_size: int) -> dict[str, Any]:
    """The full model configuration of a variant: variant keys over task and global defaults."""
    return {
        "cell": variant.cell,
        "input_size": input_size,
        "hidden_size": variant.hidden_size,
        "num_layers": variant.num_layers,
        "bidirectional": variant.bidirectional,
        "dropout": variant.dropout,
        "topology": variant.topology or spec.topology,
        "head": "regression",
        "output_size": 1,
        "k1": variant.k1,
        "k2": variant.k2 or variant.k1,
        "clip_algorithm": params.clipping.algorithm,
        "clip_value": variant.clip or params.clipping.max_norm,
        "lr": variant.lr,
        "target_index": 0,
    }


def trainer_for(params: Params, spec: TimeSeriesTask, run_id: str, root: Path, label: str) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=spec.training.max_epochs,
        accelerator=params.training.accelerator,
        devices=params.training.devices,
        precision=params.training.precision,
        logger=RunLogger(run_id=run_id, tracking_uri=tracking_uri(root)),
        callbacks=[EpochProgress(label)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )


def train_variant(root: Path, task: str, spec: TimeSeriesTask, params: Params, variant: Variant,
                  datamodule: SeriesDataModule, workdir: Path) -> dict[str, Any]:
    version = data_version(root)
    config = model_config(variant, spec, params, datamodule.transform.num_features)
    with child_run(variant.name, task, version) as run_id:
        mlflow.log_params({**config, "variant": variant.name, "max_epochs": spec.training.max_epochs,
                           "batch_size": spec.training.batch_size, "window": spec.prepare.window,
                           "difference": spec.prepare.difference, "precision": params.training.precision})
        pl.seed_everything(params.training.seed, workers=True, verbose=False)
        network = SequenceModel(ModelConfig(**config))
        trainer = trainer_for(params, spec, run_id, root, f"{task}/{variant.name}")
        trainer.fit(network, datamodule=datamodule)
        val_loss = float(trainer.callback_metrics["val_loss"])
        log_loss_curves(run_id)
        series = pd.read_parquet(prepared_dir(root, task) / "series.parquet")
        first = series[series["series_id"] == series["series_id"].iloc[0]]
        example = pd.DataFrame({"series_id": [str(first["series_id"].iloc[0])],
                                "history": [first[spec.target].to_numpy()[: spec.serving.min_history * 2].tolist()]})
        for column in spec.covariates:
            example[column] = [first[column].to_numpy()[: spec.serving.min_history * 2].tolist()]
        model_uri = log_forecast_model(workdir / variant.name, network.cpu(), config, datamodule.transform,
                                       spec.serving.model_dump(), list(spec.covariates), example)
    return {"variant": variant.name, "run_id": run_id, "model_uri": model_uri, "val_loss": val_loss}


def train_task(root: Path, task: str, params: Params) -> Path:
    spec = params.task(task)
    torch.set_num_threads(params.training.num_threads)
    datamodules: dict[str, SeriesDataModule] = {}
    results = []
    with parent_run(task, root, data_version(root)) as parent_id, tempfile.TemporaryDirectory() as tmp:
        for variant in spec.variants:
            print(f"train@{task}: variant {variant.name} ({variant.cell}, hidden {variant.hidden_size}, "
                  f"k1={variant.k1} k2={variant.k2 or variant.k1})", flush=True)
            topology = variant.topology or spec.topology
            if topology not in datamodules:
                datamodules[topology] = SeriesDataModule(prepared_dir(root, task), topology, spec.prepare.window,
                                                         spec.prepare.stride, spec.training.batch_size,
                                                         spec.evaluate.horizon)
                datamodules[topology].setup("fit")
            results.append(train_variant(root, task, spec, params, variant, datamodules[topology], Path(tmp)))
    record = train_record(root, task)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"task": task, "parent_run_id": parent_id, "variants": results}, indent=2))
    return record


def main(task: str) -> None:
    root = project_root()
    record = train_task(root, task, load_params(root / "params.yaml"))
    print(f"train@{task}: wrote {record.relative_to(root)}")


if __name__ == "__main__":
    main(sys.argv[1])
