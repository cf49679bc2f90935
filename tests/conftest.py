"""Shared fixtures: one per real dependency (a git+DVC project, an MLflow store, a Prefect harness)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
import pytest
import torch
import yaml

if TYPE_CHECKING:
    from pipelines.config import Params

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
torch.set_num_threads(1)



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules holding a slow (end-to-end) test first, then heavy ones, each module's order kept: `make test`
    runs two workers a module at a time (in this order: --no-loadscope-reorder), and a minutes-long module
    picked up last would run alone at the end."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    heavy = {item.module.__name__ for item in items if item.get_closest_marker("heavy")}
    items.sort(key=lambda item: (item.module.__name__ not in slow, item.module.__name__ not in heavy))


# Small enough to train in seconds on 2 cores, real enough to exercise every stage on CO2.
TINY_FORECAST = {
    "kind": "timeseries",
    "topology": "many_to_many",
    "source": "builtin:co2",
    "timestamp": "date",
    "target": "co2",
    "prepare": {"holdout": 52, "validation": 52, "window": 104, "stride": 52, "season": 52, "difference": True},
    # Naive and seasonal naive only: AutoETS at season 52 refits per origin and was a third of every tiny
    # run; tests/pipelines/test_candidates.py and test_baselines.py score the statsforecast baselines.
    "evaluate": {"horizon": 13, "origin_stride": 26, "statistical_baselines": []},
    "serving": {"min_history": 53, "max_history": 5000, "default_horizon": 6, "max_horizon": 104},
    "training": {"max_epochs": 1, "batch_size": 16},
    "variants": [{"name": "lstm", "cell": "lstm", "hidden_size": 8, "k1": 26, "k2": 26, "lr": 0.01}],
}

TINY_SENTIMENT = {
    "kind": "text",
    "source": "builtin:tweets",
    "labels": ["negative", "neutral", "positive"],
    "prepare": {"validation": 0.05, "holdout": 0.05, "min_freq": 5, "max_vocab": 2000, "max_length": 24},
    "serving": {"max_text_length": 280, "over_length": "reject", "max_records": 100},
    "pretrain": {"method": "none"},  # the language model has its own tests (test_text_pretraining.py)
    "training": {"max_epochs": 1, "batch_size": 256},
    "variants": [{"name": "gru", "cell": "gru", "hidden_size": 8, "embedding_dim": 8, "lr": 0.01}],
}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def make_project(path: Path, tasks: dict) -> Path:
    """A throwaway checkout: git repo + DVC (local remote under .seqops/) + the project's code and pipeline."""
    path.mkdir(parents=True, exist_ok=True)
    for item in ("pipelines", "models"):
        shutil.copytree(REPO / item, path / item, ignore=shutil.ignore_patterns("__pycache__"))
    for item in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / item, path / item)
    shutil.copytree(REPO / ".dvc", path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = tasks
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(path, "init", "-q", "-b", "main")
    git(path, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "add", ".")
    git(path, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "project")
    return path


@contextmanager
def mlflow_store(directory: Path) -> Iterator[str]:
    """An MLflow SQLite store under `directory` as the active one; yields the id of its experiment "tests",
    active too, whose artifacts live beside the store.

    A bare SQLite URI, or an experiment created without an artifact location, puts artifacts in ./mlruns of
    the working directory: the repository, under pytest.
    """
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.MlflowClient(uri).create_experiment("tests", (directory / "mlartifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment)
        yield experiment
    finally:
        mlflow.set_tracking_uri(before)
        # MLflow has no public unset: a later test of this worker resuming a run of another store's experiment
        # (the retrain's parent, in pipelines/orchestration/flows.py) would be refused for not matching it.
        mlflow.tracking.fluent._active_experiment_id = None


_DEFAULT_STORE = REPO / "mlflow.db"
# Where any pytest worker records the stack that opened the default store: the check runs in each worker at its
# own session end, and the worker that finds the file is often not the one that opened it.
_OPENINGS = (Path(tempfile.gettempdir())
             / f"seqops-tests-default-store-{os.environ.get('PYTEST_XDIST_TESTRUNUID', 'solo')}.log")
_checking_store = False


def _note_default_store(event: str, args: tuple) -> None:
    """Audit hook: where the repository's default MLflow store (MLflow's URI when none is set) was opened."""
    if event == "sqlite3.connect" and not _checking_store and args and isinstance(args[0], (str, Path)):
        if Path(os.path.abspath(args[0])) == _DEFAULT_STORE and not _OPENINGS.exists():
            _OPENINGS.write_text(f"pid {os.getpid()} ({os.environ.get('PYTEST_XDIST_WORKER', 'main')}), "
                                 f"test {os.environ.get('PYTEST_CURRENT_TEST', '?')}:\n"
                                 + "".join(traceback.format_stack(limit=25)))


sys.addaudithook(_note_default_store)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The run's record of who opened the default store goes with the run (the controller ends last)."""
    if not hasattr(session.config, "workerinput"):
        _OPENINGS.unlink(missing_ok=True)


def _logged_anything(store: Path) -> bool:
    """Whether a SQLite MLflow store holds more than the Default experiment a bare client creates."""
    global _checking_store
    _checking_store = True
    try:
        with closing(sqlite3.connect(store)) as db:
            counts = [db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 (fixed names)
                      for table in ("runs", "registered_models", "logged_models")]
            experiments = db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
    finally:
        _checking_store = False
    return any(counts) or experiments > 1


@pytest.fixture(scope="session", autouse=True)
def nothing_written_to_the_repository() -> Iterator[None]:
    """Fail the session if a test left an MLflow store in the repository (a client without our URI).

    A bare store (the Default experiment only: a client opened MLflow's default URI and logged nothing) is
    removed with a warning carrying the stack that opened it, from whichever worker of this run it was; one
    that holds a run, model or artifact fails.
    """
    strays = [REPO / "mlruns", _DEFAULT_STORE]
    existing = {path for path in strays if path.exists()}
    yield
    appeared = [path for path in strays if path.exists() and path not in existing]
    opened = _OPENINGS.read_text() if _OPENINGS.exists() else "(not seen by any pytest worker: a subprocess?)"
    if appeared == [_DEFAULT_STORE] and not _logged_anything(_DEFAULT_STORE):
        _DEFAULT_STORE.unlink()
        warnings.warn(f"a test opened MLflow's default store {_DEFAULT_STORE} and logged nothing; removed. Opened "
                      f"by {opened}", stacklevel=1)
        _OPENINGS.unlink(missing_ok=True)
        return
    assert not appeared, f"a test wrote an MLflow store into the repository: {[str(p) for p in appeared]}; {opened}"


def use_project(root: Path, monkeypatch: pytest.MonkeyPatch, sources: dict[str, pd.DataFrame] | None = None) -> Path:
    """Point this test's process at `root` (SEQOPS_ROOT, its MLflow store); write `sources` as sources/<name>.csv."""
    for name, frame in (sources or {}).items():
        (root / "sources").mkdir(exist_ok=True)
        frame.to_csv(root / "sources" / f"{name}.csv", index=False)
    monkeypatch.setenv("SEQOPS_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / '.seqops' / 'mlflow.db'}")
    return root


def prepared_task(root: Path, task: str) -> tuple[Params, Path]:
    """The first stages of a retrain of `task` in the project at `root`: params loaded, raw data ingested and
    versioned with DVC, prepared. Returns the params and prepared/<task>."""
    from pipelines.config import load_params
    from pipelines.data import versioning
    from pipelines.data.ingest import ingest
    from pipelines.prepare.stage import prepare

    params = load_params(root)
    ingest(task, params, root)
    versioning.track(root)
    return params, prepare(root, task, params)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_project(make_project(tmp_path / "project", {"forecast": TINY_FORECAST}), monkeypatch)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """A real, temporary Prefect API (SQLite) for the whole session."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
