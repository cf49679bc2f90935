"""Shared setup for the models suite: one CPU thread (2-core machines stall with more) and quiet Lightning."""

import warnings

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _quiet_lightning():
    """Lightning's hints about dataloader workers and logging intervals are noise for tiny test runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")
        # validation_step called directly, without a Trainer, to test the carried state
        warnings.filterwarnings("ignore", message=".*`self.trainer` reference is not registered.*")
        # post-optimization state at batch end is exactly what a resume needs (loop progress counts that batch)
        warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be provided.*")
        yield
