"""Where things live on the embedded defaults, and the environment variables that move them.

SEQOPS_ROOT    the project checkout (params.yaml, dvc.yaml, data/); default: the current directory
               when it holds params.yaml, else the checkout this package was installed from
SEQOPS_HOME    runtime state (MLflow SQLite DB and artifacts, Prefect home, DVC remote);
               default: <root>/.seqops
MLFLOW_TRACKING_URI   default: sqlite:///<home>/mlflow.db
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config import PARAMS_FILE, PROJECT_ROOT


def project_root() -> Path:
    if os.environ.get("SEQOPS_ROOT"):
        return Path(os.environ["SEQOPS_ROOT"]).resolve()
    cwd = Path.cwd()
    return cwd if (cwd / PARAMS_FILE).is_file() else PROJECT_ROOT


def seqops_home(root: Path | None = None) -> Path:
    home = Path(os.environ.get("SEQOPS_HOME") or (root or project_root()) / ".seqops").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{seqops_home(root) / 'mlflow.db'}"


def artifact_root(root: Path | None = None) -> str:
    """Where new experiments put artifacts on the embedded defaults (a server decides for itself)."""
    return (seqops_home(root) / "mlartifacts").as_uri()


def prepared_dir(root: Path, task: str) -> Path:
    return root / "prepared" / task


def train_record(root: Path, task: str) -> Path:
    return root / "artifacts" / task / "train.json"


def metrics_file(root: Path, task: str) -> Path:
    return root / "metrics" / f"{task}.json"
