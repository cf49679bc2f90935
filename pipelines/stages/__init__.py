"""The pipeline's stages, one module each, one definition reached by `dvc repro` and by the flow.

`run_stage_main` is their shared command line, `python -m pipelines.stages.<stage> TASK`: it
quiets the libraries' start-up chatter (the stage prints its own progress), turns a known error
into one line naming the stage and task, and reports what the stage wrote.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable


def _quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*serialized using CloudPickle.*")
    warnings.filterwarnings("ignore", message="Add type hints to the `predict` method")


def run_stage_main(stage: str, run: Callable[..., Path]) -> None:
    """Run `run(root, task, params)` for the task named on the command line."""
    from pipelines.config import ConfigError, load_params
    from pipelines.paths import project_root
    from pipelines.sources import SourceError
    from pipelines.validate import ValidationError

    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m pipelines.stages.{stage} TASK")
    _quiet_libraries()
    task, root = sys.argv[1], project_root()
    try:
        out = run(root, task, load_params(root / "params.yaml"))
    except (ConfigError, SourceError, ValidationError, FileNotFoundError) as e:
        sys.exit(f"{stage}@{task}: error: {e}")
    print(f"{stage}@{task}: wrote {out.relative_to(root)}", flush=True)
