"""Where the project and its runtime state live, and the process environment of the embedded defaults.

The only place that knows paths and environment defaults. Entry points (the CLI, the stage runner,
the gateway) call `apply_environment` before Prefect or MLflow are imported, because Prefect reads
its settings on first import. Anything the user already set wins.

SEQOPS_ROOT    the project checkout (params.yaml, dvc.yaml, data/); default: the current directory
               when it holds params.yaml, else the checkout this package was installed from
SEQOPS_PARAMS  the params file; default: <root>/params.yaml
SEQOPS_HOME    runtime state (MLflow SQLite DB and artifacts, Prefect home, DVC remote, run logs);
               default: <root>/.seqops
MLFLOW_TRACKING_URI   default: sqlite:///<home>/mlflow.db
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout holding models/ and pipelines/
PARAMS_FILE = "params.yaml"
DATA_DIR = "data"
RAW_FILE = "raw.parquet"


def project_root() -> Path:
    if os.environ.get("SEQOPS_ROOT"):
        return Path(os.environ["SEQOPS_ROOT"]).resolve()
    cwd = Path.cwd()
    return cwd if (cwd / PARAMS_FILE).is_file() else PACKAGE_ROOT


def params_path(root: Path | None = None) -> Path:
    """params.yaml of `root` (default: the project's), or $SEQOPS_PARAMS when no root is given."""
    if root is None and os.environ.get("SEQOPS_PARAMS"):
        return Path(os.environ["SEQOPS_PARAMS"])
    return (root or project_root()) / PARAMS_FILE


def seqops_home(root: Path | None = None) -> Path:
    home = Path(os.environ.get("SEQOPS_HOME") or (root or project_root()) / ".seqops").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def logs_dir(root: Path | None = None) -> Path:
    path = seqops_home(root) / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{seqops_home(root) / 'mlflow.db'}"


def artifact_root(root: Path | None = None) -> str:
    """Where new experiments put artifacts on the embedded defaults (a server decides for itself)."""
    return (seqops_home(root) / "mlartifacts").as_uri()


def raw_path(root: Path, task: str) -> Path:
    return root / DATA_DIR / task / RAW_FILE


def prepared_dir(root: Path, task: str) -> Path:
    return root / "prepared" / task


def train_record(root: Path, task: str) -> Path:
    return root / "artifacts" / task / "train.json"


def pretrained_dir(root: Path, task: str) -> Path:
    """The language models train@<task> pretrains before its variants (text tasks), read by every variant."""
    return root / "artifacts" / task / "pretrained"


def metrics_file(root: Path, task: str) -> Path:
    return root / "metrics" / f"{task}.json"


ENVIRONMENT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DVC_NO_ANALYTICS": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    # One thread per process: on 2-core machines more threads stall rather than speed up.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_environment(root: Path | None = None) -> None:
    """Set the embedded defaults (Prefect home, MLflow store, quiet libraries, threads) unless already set."""
    home = seqops_home(root)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(root))
    for key, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
