"""DVC inside a flow run: each of its lines printed once, and none of its git hints."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from pipelines.config import load_params
from pipelines.data import versioning
from pipelines.data.ingest import ingest


class _Messages(logging.Handler):
    """The records a logger hands its handlers: (logger name, message)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.name, record.getMessage()))


def test_dvc_lines_reach_one_handler_and_its_git_hints_stay_quiet(project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A flow run's console is Prefect's handler on the root logger: DVC's records, already printed by DVC's own
    handlers, must not reach it too, and `dvc add` / `dvc repro` must not tell the user to `git add`."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the stage's python
    dvc_side, root_side = _Messages(), _Messages()
    logging.getLogger("dvc").addHandler(dvc_side)
    logging.getLogger().addHandler(root_side)
    try:
        ingest("forecast", load_params(project), project)
        versioning.track(project)
        versioning.reproduce(project, "prepare@forecast")
    finally:
        logging.getLogger("dvc").removeHandler(dvc_side)
        logging.getLogger().removeHandler(root_side)
    said = [message for _, message in dvc_side.seen]
    assert any("Running stage 'prepare@forecast'" in message for message in said), said
    assert [name for name, _ in root_side.seen if name.split(".")[0] == "dvc"] == [], root_side.seen
    assert not [message for message in said if "git add" in message or "autostage" in message], said
