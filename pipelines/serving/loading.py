"""What the gateway serves: a registered version, verified, loaded and ready to swap in whole.

The gateway (pipelines/serving/gateway.py) handles requests; this module decides what answers them.
A version is found by alias or number, its files are downloaded once, checked against the gate's
signature (pipelines/signing.py) and loaded from those very files, so what was verified is what
runs. Everything a request needs from the model (its input rules, a predict callable) is built here,
before the swap, so a reload never leaves a half-loaded model in front of a request.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import SeqopsError
from pipelines.serving.requests import ModelInputs
from pipelines.signing import CHAMPION, check_promoted, download, verify, verify_key


class GatewayError(SeqopsError):
    """The gateway cannot start (no champion, a model that does not load); the message says why."""


@dataclass(frozen=True)
class GatewayConfig:
    """What a worker needs to serve a task; travels to uvicorn's worker processes as JSON."""

    task: str
    model_name: str
    tracking_uri: str
    max_body_bytes: int = 2 * 1024 * 1024
    request_timeout_s: float = 10.0
    poll_interval_s: float = 10.0
    concurrency: int = 1
    threads: int = 1
    batching: bool = True
    batch_wait_ms: float = 1.0
    max_batch_records: int = 256
    max_records: int = 1000
    max_request_steps: int = 1_000_000
    max_queue: int = 64
    read_timeout_s: float = 5.0
    max_connections: int = 256

    @classmethod
    def from_params(cls, task: str, model_name: str, tracking_uri: str, serving: Any) -> "GatewayConfig":
        """From params.yaml's `serving` section (pipelines.config.Serving)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"task", "model_name", "tracking_uri"}
        return cls(task, model_name, tracking_uri, **{n: getattr(serving, n) for n in names})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


@dataclass(frozen=True)
class Served:
    """One loaded registry version, with everything a request needs from it."""

    version: str
    run_id: str | None
    inputs: ModelInputs
    predict: Any  # (DataFrame, params) -> predictions
    loaded_at: float
    # How the model states its uncertainty (interval method, probability calibration), for /version.
    uncertainty: dict[str, str] = dataclasses.field(default_factory=dict)
    scorer: Any = None  # our PythonModel when it scores prepared requests (its `batching` flag), else None

    @property
    def header(self) -> bytes:
        return self.version.encode()


def load_served(config: GatewayConfig, version: str | None = None) -> Served:
    """Load a registered version (default: the current champion) fully, ready to swap in; UnverifiedModel
    unless the gate promoted and signed it (pipelines/signing.py)."""
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.tracking_uri)
    client = MlflowClient(config.tracking_uri, config.tracking_uri)
    try:
        found = (client.get_model_version_by_alias(config.model_name, CHAMPION) if version is None
                 else client.get_model_version(config.model_name, version))
    except MlflowException:
        which = f"no version {version}" if version else f"no `{CHAMPION}` alias"
        raise GatewayError(f"{config.model_name} has {which} in {config.tracking_uri}: "
                           f"run `seqops run --task {config.task}` first") from None
    uri = f"models:/{config.model_name}/{found.version}"
    # Verified, then loaded from the very files that were checked (signing.py says why); the tags first,
    # so an unsigned version is refused before anything is downloaded or a key is needed.
    check_promoted(config.model_name, str(found.version), found.tags, config.task)
    # The download lives only until the model is in memory: every reload and every worker made one, and none
    # was removed, so a server polling a moving champion filled its disk.
    folder = Path(tempfile.mkdtemp(prefix="seqops-model-"))
    try:
        files = download(config.model_name, str(found.version), folder)
        verify(config.model_name, str(found.version), found.tags, files, verify_key(), config.task)
        try:
            model = mlflow.pyfunc.load_model(str(files))
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise GatewayError(f"{uri} does not load: {type(e).__name__}: {first}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    torch.set_num_threads(config.threads)
    impl = model._model_impl
    python_model, context = getattr(impl, "python_model", None), getattr(impl, "context", None)
    if python_model is not None and "params" in inspect.signature(python_model.predict).parameters:
        def predict(frame: Any, params: Any) -> Any:
            return python_model.predict(context, frame, params)
    else:  # not one of our PythonModels: MLflow's predict (with its schema enforcement)
        def predict(frame: Any, params: Any) -> Any:
            return model.predict(frame, params=params)
    return Served(str(found.version), found.run_id, ModelInputs.from_metadata(model.metadata), predict, time.time(),
                  dict(getattr(python_model, "uncertainty", None) or {}),
                  python_model if getattr(python_model, "batching", False) else None)
