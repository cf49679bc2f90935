"""prepared/<task>/settings.json: the task as it ran, with every derived key filled in.

A kind may derive settings at prepare time from the data (a forecasting task's season, splits,
window, variants: pipelines/tasks/defaults.py). Prepare writes the resolved task here, inside the
DVC-tracked prepared/ output, and every later stage reads the task through `task_spec`, so train,
evaluate, promotion and the served model all see the values prepare used. A kind that derives
nothing writes no file and its stages read params.yaml's task as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipelines.config import ConfigError, Params
from pipelines.project import prepared_dir
from pipelines.tasks.base import TaskSpec

SETTINGS_FILE = "settings.json"


def write_settings(prepared: Path, given: BaseModel, resolved: BaseModel, derived: dict[str, Any]) -> None:
    """Record the task as written (`given`), as resolved, and which keys were derived with their values."""
    (prepared / SETTINGS_FILE).write_text(json.dumps(
        {"given": given.model_dump(mode="json"), "task": resolved.model_dump(mode="json"), "derived": derived},
        indent=2, sort_keys=True))


def _saved(root: Path, task: str) -> dict[str, Any] | None:
    path = prepared_dir(root, task) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def task_spec(root: Path, task: str, params: Params) -> TaskSpec:
    """The task as prepare resolved it (params.yaml's own when its kind derives nothing).

    Raises ConfigError when params.yaml's task changed since prepare ran: the derived values would
    belong to other settings.
    """
    spec = params.task(task)
    saved = _saved(root, task)
    if saved is None:
        return spec
    if saved["given"] != spec.model_dump(mode="json"):
        raise ConfigError(f"tasks.{task} in params.yaml changed since prepare@{task} wrote "
                          f"prepared/{task}/{SETTINGS_FILE}: run prepare@{task} again (`seqops run --task {task}`)")
    return type(spec).model_validate(saved["task"])


def derived_settings(root: Path, task: str) -> dict[str, Any]:
    """The keys prepare derived for `task` (dotted names, as logged to MLflow with a `derived.` prefix)."""
    saved = _saved(root, task)
    return dict(saved["derived"]) if saved else {}


def describe(task: str, derived: dict[str, Any]) -> str:
    """One line for the console: what a task without those keys runs with."""
    if not derived:
        return f"prepare@{task}: every setting is explicit in params.yaml"
    return f"prepare@{task}: derived " + ", ".join(f"{key} {value}" for key, value in derived.items())
