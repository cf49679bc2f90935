"""Which epoch a forecast variant keeps: the one whose validation forecasts evaluate scores best, not the one
with the lowest one-step validation loss (a text classifier's stays chosen by its validation loss)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from mlflow.tracking import MlflowClient
from pytorch_lightning.callbacks import EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

from pipelines.evaluate.stage import evaluate_task
from pipelines.project import metrics_file, train_record
from pipelines.train.stage import RestoreBestEpoch, ValidationScore, train_task
from tests.conftest import prepared_task


class Stepping(pl.LightningModule):
    """Its weight is set to the epoch's entry of `values`; its val_loss is always 0."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))  # [1]
        self.values = values

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.w.fill_(self.values[self.current_epoch])
        return (self.w * 0).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", 0.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.parametrize("mode, kept", [("min", 1.0), ("max", 9.0)])
def test_the_best_epoch_by_a_logged_score_is_restored_in_either_direction(mode: str, kept: float) -> None:
    data = DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)
    module = Stepping([3.0, 1.0, 9.0, 4.0])
    score = ValidationScore("val_score", lambda network: float(network.w.detach()))
    best = RestoreBestEpoch("val_score", mode)
    trainer = pl.Trainer(max_epochs=4, callbacks=[score, best, EarlyStopping("val_score", mode=mode, patience=10)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data, data)
    assert best.best_loss == kept and float(module.w.detach()) == kept
    assert best.best_epoch == [3.0, 1.0, 9.0, 4.0].index(kept) and best.best_val_loss == 0.0


def test_a_forecast_variant_keeps_the_epoch_whose_validation_forecasts_evaluate_scores_best(project: Path) -> None:
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["tasks"]["forecast"]["training"]["max_epochs"] = 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    params, _ = prepared_task(project, "forecast")

    train_task(project, "forecast", params)
    evaluate_task(project, "forecast", params)

    entry, = json.loads(train_record(project, "forecast").read_text())["variants"]
    client = MlflowClient()
    history = [m.value for m in sorted(client.get_metric_history(entry["run_id"], "val_forecast_mase"),
                                       key=lambda m: m.step)]
    run = client.get_run(entry["run_id"]).data.metrics
    assert len(history) == 4  # one score per epoch, beside val_loss
    assert run["best_epoch"] == history.index(min(history))
    # evaluate loads the logged pyfunc and scores the same validation origins: the kept epoch's score
    variant = json.loads(metrics_file(project, "forecast").read_text())["variants"]["lstm"]
    assert math.isclose(variant["validation_mase"], min(history), rel_tol=1e-5)
    assert math.isclose(entry["val_loss"], run["best_val_loss"]) and math.isfinite(entry["val_loss"])


def test_a_network_training_on_a_gpu_is_scored_through_a_cpu_copy(project: Path) -> None:
    """No GPU here: a stand-in reports a CUDA device; the pyfunc forecasts on the CPU, so the score must read
    the weights into a CPU copy of the network (a GPU network's own weights would meet CPU inputs)."""
    from models import ModelConfig, SequenceModel
    from pipelines.tasks import kind_for
    from pipelines.tasks.settings import task_spec

    params, prepared = prepared_task(project, "forecast")
    kind = kind_for(task_spec(project, "forecast", params))
    variant = kind.spec.variants[0]
    config = kind.model_config(variant, params, kind.datamodule(prepared, variant))
    network = SequenceModel(ModelConfig(**config)).eval()

    class OnCuda:
        device = torch.device("cuda")

        def state_dict(self) -> dict[str, torch.Tensor]:
            return network.state_dict()

    score = kind.selection_score(prepared, variant, config, "mae")
    assert math.isfinite(score(network)) and score(OnCuda()) == score(network)
