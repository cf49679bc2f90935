"""The stage runner: the shared command line of every stage, `python -m pipelines.<stage> TASK`.

`dvc repro` reaches each stage through it (dvc.yaml), and so does the flow, through DVC. It applies
the embedded defaults, quiets the libraries' start-up chatter (the stage prints its own progress),
turns a seqops error into one line naming the stage and task (and, inside `seqops run`, records
it as the run's root cause: pipelines/console.py), and reports what the stage wrote.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Callable

from pipelines import console, project
from pipelines.processes import die_with_parent


def quiet_libraries() -> None:
    """Silence warnings that say nothing to a user of seqops (their causes are known and harmless)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*serialized using CloudPickle.*")
    warnings.filterwarnings("ignore", message="Add type hints to the `predict` method")


def run_stage_main(stage: str, run: Callable[..., Path]) -> None:
    """Run `run(root, task, params)` for the task named on the command line."""
    root = project.project_root()
    project.apply_environment(root)
    die_with_parent()  # a stage of a killed `seqops run` stops too, rather than race the next run
    from pipelines.config import load_params
    from pipelines.errors import SeqopsError

    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m pipelines.{stage} TASK")
    quiet_libraries()
    task = sys.argv[1]
    try:
        out = run(root, task, load_params(root))
    except SeqopsError as e:
        console.record_cause(f"{stage}@{task}: {e}")
        sys.exit(f"{stage}@{task}: error: {e}")
    except Exception as e:  # a bug: the traceback goes to stderr (the run's log); the cause to the console
        console.record_cause(f"{stage}@{task}: unexpected {type(e).__name__}: {e}", bug=True)
        raise
    print(f"{stage}@{task}: wrote {out.relative_to(root)}", flush=True)
