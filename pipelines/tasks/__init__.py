"""Task kinds: what differs between forecasting a series and classifying a text, in one object per kind.

A task kind (`kind:` of a task in params.yaml) decides how raw rows are validated and merged, how
they are split and transformed, which batches and head a variant trains with, which pyfunc is
served, how a model and its baselines are scored, which plot shows it and what an example REST
request looks like. `kind_for(spec)` returns the task's kind object (the `TaskKind` protocol in
base.py); the stages (data, prepare, train, evaluate, promote) call it and never ask which kind
they hold.

To add a kind: write `pipelines/tasks/<kind>.py` with a class that implements `TaskKind` (its
`name` is the `kind:` value), add it to `KINDS` below, and add its spec class to the task union in
`pipelines/config.py` (with a `promote.metrics` entry). No stage changes.
"""

from __future__ import annotations

from pipelines.config import ConfigError
from pipelines.tasks.base import Calibration, Scored, TaskKind, TaskSpec, shared_model_config
from pipelines.tasks.text import TextKind
from pipelines.tasks.timeseries import TimeSeriesKind

KINDS: dict[str, type[TaskKind]] = {kind.name: kind for kind in (TimeSeriesKind, TextKind)}


def kind_for(spec: TaskSpec) -> TaskKind:
    """The kind object of a task, bound to its spec."""
    if spec.kind not in KINDS:
        raise ConfigError(f"task kind {spec.kind!r} has no implementation in pipelines/tasks "
                          f"(known kinds: {sorted(KINDS)})")
    return KINDS[spec.kind](spec)


__all__ = ["KINDS", "Calibration", "Scored", "TaskKind", "TaskSpec", "kind_for", "shared_model_config"]
