"""Process environment for the embedded defaults, applied before Prefect or MLflow are imported.

Prefect reads its settings when first imported, so this runs first in every entry point.
Anything already set by the user (a Prefect server's PREFECT_API_URL, an MLflow server's
MLFLOW_TRACKING_URI) wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.paths import seqops_home, tracking_uri


def apply(root: Path) -> None:
    home = seqops_home(root)
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "MLFLOW_TRACKING_URI": tracking_uri(root),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "GIT_PYTHON_REFRESH": "quiet",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
