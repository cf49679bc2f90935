"""train@<task>: one MLflow child run per variant under the retrain's parent run.

models/ does the learning (TBPTT, clipping, gradient health); this stage wires data, the
tracking logger and the pyfunc logging around it, and writes artifacts/<task>/train.json so
evaluate and promote know which runs and logged models this retrain produced.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import mlflow
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.loggers import MLFlowLogger

from models import GradientHealth, ModelConfig, SequenceModel
from pipelines import console
from pipelines.config import Params, Variant
from pipelines.data.versioning import data_version
from pipelines.project import prepared_dir, tracking_uri, train_record
from pipelines.runner import run_stage_main
from pipelines.tasks import TaskKind, TaskSpec, kind_for
from pipelines.tasks.settings import derived_settings, task_spec
from pipelines.train.plots import log_gradient_health, log_loss_curves
from pipelines.train.tracking import child_run, parent_run


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger, minus its hyperparameter dump: the stage logs one flat, stable
    set of param keys itself, so every variant lines up in MLflow's compare view."""

    def log_hyperparams(self, params: Any) -> None:
        return None


class EpochProgress(pl.Callback):
    """Epochs and losses of variant `label` ("task/variant") for `seqops run`'s progress line.

    Reported through pipelines.console, not stdout: the variant may train in a Dask worker whose
    stdout is not the console. Outside a run, one line per epoch.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()

    @staticmethod
    def _losses(trainer: pl.Trainer) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train_loss", "val_loss")}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        console.training_progress(self.label, trainer.current_epoch + 1, trainer.max_epochs, self._losses(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        console.training_progress(self.label, trainer.current_epoch, trainer.max_epochs, self._losses(trainer),
                                  seconds=time.monotonic() - self.started)


class ValidationScore(pl.Callback):
    """Logs `name`, the task's own validation score of the network (`TaskKind.selection_score`), after each
    validation epoch, for RestoreBestEpoch and EarlyStopping to watch instead of the one-step val_loss."""

    def __init__(self, name: str, score: Callable[[SequenceModel], float]) -> None:
        self.name, self.score = name, score

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log(self.name, self.score(pl_module), on_epoch=True)


class RestoreBestEpoch(pl.Callback):
    """Keep the weights of the epoch with the lowest `monitor` and load them when training ends; the
    epoch's val_loss too (`best_val_loss`). `mode` "max": the highest.

    Lightning's EarlyStopping stops but keeps the last epoch's weights, and ModelCheckpoint would
    write every improvement to disk; a copy in memory is enough for these small networks.
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min") -> None:
        self.monitor, self.mode, self.sign = monitor, mode, 1.0 if mode == "min" else -1.0
        self.best_loss, self.best_val_loss, self.best_epoch, self.best_state = self.sign * math.inf, math.nan, -1, None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = float(trainer.callback_metrics.get(self.monitor, math.nan))
        if self.sign * loss < self.sign * self.best_loss:  # NaN never improves
            self.best_loss, self.best_epoch = loss, trainer.current_epoch
            self.best_val_loss = float(trainer.callback_metrics.get("val_loss", math.nan))
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)


class CosineLearningRate(pl.Callback):
    """Cosine annealing of every optimizer's learning rate over max_epochs, down to 1/100 of it.

    torch's scheduler, stepped once per epoch here: with manual optimization (TBPTT) Lightning does
    not step schedulers itself.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, trainer.max_epochs), eta_min=opt.param_groups[0]["lr"] / 100)
            for opt in trainer.optimizers]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for scheduler in self.schedulers:
            scheduler.step()


def trainer_for(params: Params, spec: TaskSpec, run_id: str, root: Path, label: str,
                health: GradientHealth, best: RestoreBestEpoch, scores: Sequence[ValidationScore] = ()) -> pl.Trainer:
    """The Trainer of one variant: early stopping on `best.monitor` (the best epoch restored by `best`;
    `scores` log it when it is not val_loss) and the task's learning-rate schedule."""
    schedule = [CosineLearningRate()] if spec.training.lr_schedule == "cosine" else []
    return pl.Trainer(
        max_epochs=spec.training.max_epochs,
        accelerator=params.training.accelerator,
        devices=params.training.devices,
        num_nodes=params.training.num_nodes,
        strategy=params.training.strategy,
        precision=params.training.precision,
        logger=RunLogger(run_id=run_id, tracking_uri=tracking_uri(root)),
        callbacks=[EpochProgress(label), health, *scores, best, *schedule,
                   EarlyStopping(monitor=best.monitor, mode=best.mode, patience=spec.training.patience,
                                 check_finite=False)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
    )


def train_variant(root: Path, task: str, params: Params, variant: Variant, kind: TaskKind,
                  workdir: Path) -> dict[str, Any]:
    """Train one variant as a child run of the active parent run and log its pyfunc.

    `kind` is the task's kind object (`kind_for(spec)`), shared by the variants of a retrain so they
    share its datamodules; `workdir` stages the pyfunc's files.
    """
    spec = task_spec(root, task, params)
    prepared = prepared_dir(root, task)
    datamodule = kind.datamodule(prepared, variant)
    config = kind.model_config(variant, params, datamodule)
    seed = params.seed_of(variant)
    with child_run(variant.name, task, data_version(root)) as run_id:
        mlflow.log_params({**config, "variant": variant.name, "max_epochs": spec.training.max_epochs,
                           "batch_size": spec.training.batch_size, "precision": params.training.precision,
                           "seed": seed})
        mlflow.log_params({f"derived.{key}": value for key, value in derived_settings(root, task).items()})
        pl.seed_everything(seed, workers=True, verbose=False)
        network = SequenceModel(ModelConfig(**config))
        mlflow.log_param("warm_started_tensors", len(kind.warm_start(root, task, network, variant)))
        health = GradientHealth(probe_every_n_steps=params.diagnostics.probe_every_n_steps,
                                vanishing_threshold=params.diagnostics.vanishing_threshold)
        metric = params.promote.metric_for(spec.kind)
        score = kind.selection_score(prepared, variant, config, metric.name)
        scores = [] if score is None else [ValidationScore(f"val_forecast_{metric.name}", score)]
        best = RestoreBestEpoch(scores[0].name, "min" if metric.goal == "minimize" else "max") if scores \
            else RestoreBestEpoch()
        trainer = trainer_for(params, spec, run_id, root, f"{task}/{variant.name}", health, best, scores)
        trainer.fit(network, datamodule=datamodule)
        val_loss = best.best_val_loss if best.best_state is not None else float(trainer.callback_metrics["val_loss"])
        mlflow.log_metrics({"best_epoch": best.best_epoch, "best_val_loss": val_loss,
                            "epochs_trained": trainer.current_epoch})
        log_loss_curves(run_id)
        log_gradient_health(run_id, health.history, config["clip_value"] if config["clip_algorithm"] == "norm" else None)
        model_uri = kind.log_model(prepared, workdir / variant.name, network.cpu(), config, variant)
    return {"variant": variant.name, "run_id": run_id, "model_uri": model_uri, "val_loss": val_loss}


def pretrain_task(root: Path, task: str, params: Params, kind: TaskKind) -> None:
    """What every variant starts from (the kind's `pretrain`: text tasks' language models), trained once
    inside the active parent run before the variants, whichever runner then trains them."""
    torch.set_num_threads(params.training.num_threads)
    started = time.monotonic()
    summary = kind.pretrain(root, task, params)
    if summary is not None:
        print(f"train@{task}: pretrained {len(summary['models'])} language model(s) on {summary['texts']} texts "
              f"({summary['tokens']} tokens) in {time.monotonic() - started:.0f} s", flush=True)


def train_task(root: Path, task: str, params: Params) -> Path:
    spec = task_spec(root, task, params)
    torch.set_num_threads(params.training.num_threads)
    kind = kind_for(spec)
    results = []
    with parent_run(task, root, data_version(root)) as parent_id, tempfile.TemporaryDirectory() as tmp:
        pretrain_task(root, task, params, kind)
        for variant in spec.variants:
            print(f"train@{task}: variant {variant.name} ({variant.cell}, hidden {variant.hidden_size}, "
                  f"layers {variant.num_layers}, {variant.topology or spec.topology})", flush=True)
            results.append(train_variant(root, task, params, variant, kind, Path(tmp)))
    return write_record(root, task, parent_id, results)


def write_record(root: Path, task: str, parent_id: str, results: list[dict[str, Any]]) -> Path:
    """artifacts/<task>/train.json: the retrain's parent run and one entry per variant (the stage's output)."""
    record = train_record(root, task)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"task": task, "parent_run_id": parent_id, "variants": results}, indent=2))
    return record


if __name__ == "__main__":
    run_stage_main("train", train_task)
