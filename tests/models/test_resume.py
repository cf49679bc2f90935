"""Checkpoint/resume: a run killed mid-epoch and resumed from its last checkpoint ends where an
uninterrupted run ends."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from tests.models.helpers import ResumableLoader, make_model, make_trainer

EPOCHS, BATCHES, CHUNK = 2, 6, 6


class Killed(RuntimeError):
    pass


class KillAt(pl.Callback):
    """Simulates the process dying at the start of a given batch."""

    def __init__(self, epoch: int, batch_idx: int) -> None:
        self.epoch, self.batch_idx = epoch, batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            raise Killed(f"killed at epoch {self.epoch} batch {batch_idx}")


def long_sequence_batches() -> list[dict]:
    """One long series per row, split over consecutive batches: only the first batch of an epoch resets."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, BATCHES * CHUNK, 2, generator=g)
    y = x[..., :1].roll(1, dims=1).cumsum(1) * 0.1
    return [
        {"x": x[:, i * CHUNK : (i + 1) * CHUNK], "y": y[:, i * CHUNK : (i + 1) * CHUNK], "reset": i == 0}
        for i in range(BATCHES)
    ]


def new_model(seed: int):
    pl.seed_everything(seed, verbose=False)
    return make_model(
        "many_to_many", "regression", "lstm", k1=3, k2=5, scheduler="step", scheduler_step_size=1, scheduler_gamma=0.5
    )


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_killed_and_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path):
    uninterrupted = new_model(0)
    make_trainer(max_epochs=EPOCHS).fit(uninterrupted, train_dataloaders=ResumableLoader(long_sequence_batches()))

    killed = new_model(0)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True)
    with pytest.raises(Killed):
        make_trainer(max_epochs=EPOCHS, callbacks=[saver, KillAt(epoch=1, batch_idx=3)], enable_checkpointing=True).fit(
            killed, train_dataloaders=ResumableLoader(long_sequence_batches())
        )
    last = tmp_path / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == (BATCHES + 3) * 2  # saved after epoch 1 batch 2; two updates per batch
    assert saved["carried_state"]["train"] is not None

    resumed = new_model(123)  # different init: everything must come from the checkpoint
    trainer = make_trainer(max_epochs=EPOCHS)
    trainer.fit(resumed, train_dataloaders=ResumableLoader(long_sequence_batches()), ckpt_path=last)
    assert trainer.global_step == EPOCHS * BATCHES * 2
    for got, want in zip(params(resumed), params(uninterrupted)):
        assert torch.allclose(got, want, atol=1e-6)
    for got, want in zip(resumed.carried_state["train"], uninterrupted.carried_state["train"]):
        assert torch.allclose(got, want, atol=1e-6)

    saved["carried_state"] = {"train": None, "val": None}  # the bookkeeping is what makes the resume exact
    torch.save(saved, tmp_path / "stateless.ckpt")
    forgetful = new_model(123)
    make_trainer(max_epochs=EPOCHS).fit(
        forgetful, train_dataloaders=ResumableLoader(long_sequence_batches()), ckpt_path=tmp_path / "stateless.ckpt"
    )
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params(forgetful), params(uninterrupted)))


def test_checkpoint_loads_into_a_ready_model(tmp_path):
    model = make_model("many_to_one", "multiclass", "gru", vocab_size=12, embedding_dim=4)
    trainer = make_trainer(max_epochs=1, default_root_dir=tmp_path)
    batch = {"x": torch.randint(1, 12, (4, 5)), "lengths": torch.tensor([5, 3, 2, 5]), "y": torch.tensor([0, 1, 2, 1])}
    trainer.fit(model, train_dataloaders=ResumableLoader([batch]))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = type(model).load_from_checkpoint(tmp_path / "model.ckpt")
    assert loaded.config == model.config
    assert torch.equal(
        loaded.predict_proba(batch["x"], batch["lengths"]), model.predict_proba(batch["x"], batch["lengths"])
    )
