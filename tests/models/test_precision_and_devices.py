"""Precision and device agnosticism: bf16-mixed training, states on the module's device/dtype, the GPU check script."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from models import CELLS, TOPOLOGIES, GradientHealth, RecurrentCore
from tests.models.helpers import ResumableLoader, make_batch, make_model, make_trainer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("cell", CELLS)
def test_bf16_mixed_training_runs_on_any_accelerator(cell, topology):
    pl.seed_everything(0, verbose=False)
    window = {"k1": 3, "k2": 5} if topology == "many_to_many" else {}
    model = make_model(topology, "regression", cell, **window)
    trainer = make_trainer(
        accelerator="auto", precision="bf16-mixed", max_epochs=2, callbacks=[GradientHealth(probe_every_n_steps=1)]
    )
    trainer.fit(
        model,
        train_dataloaders=ResumableLoader([make_batch(topology, "regression")]),
        val_dataloaders=ResumableLoader([make_batch(topology, "regression", seed=1)]),
    )
    assert torch.isfinite(trainer.callback_metrics["train_loss"]) and torch.isfinite(
        trainer.callback_metrics["val_loss"]
    )


@pytest.mark.parametrize("cell", CELLS)
def test_init_state_is_created_on_the_module_device_and_dtype(cell):
    core = RecurrentCore(cell, 2, 5, num_layers=2).to(torch.float64)
    state = core.init_state(3)
    parts = state if isinstance(state, tuple) else (state,)
    assert len(parts) == (2 if cell == "lstm" else 1)
    assert all(
        p.shape == (2, 3, 5) and p.dtype == torch.float64 and p.device == core.rnn.weight_hh_l0.device for p in parts
    )
    out, _ = core(torch.randn(3, 4, 2, dtype=torch.float64), state)
    assert out.shape == (3, 4, 5)


def test_recurrent_weights_lists_every_hidden_to_hidden_matrix():
    core = RecurrentCore("gru", 2, 4, num_layers=2, bidirectional=True)
    weights = core.recurrent_weights()
    assert sorted(weights) == ["weight_hh_l0", "weight_hh_l0_reverse", "weight_hh_l1", "weight_hh_l1_reverse"]
    assert all(w.shape == (12, 4) for w in weights.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_check_without_cuda_says_so_and_exits_zero():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "No CUDA device found" in done.stdout


def test_gpu_check_cpu_half_trains_and_predicts_every_combination(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert (
        gpu_check.main(["--cpu-only", "--steps", "2", "--batch-size", "4", "--seq-len", "8", "--hidden-size", "8"]) == 0
    )
    assert "all combinations trained and predicted" in capsys.readouterr().out
