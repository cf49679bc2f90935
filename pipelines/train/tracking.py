"""MLflow: one experiment per task, a parent run per retrain, a child run per variant.

Every run carries the data version it saw (as tags and as an MLflow dataset input whose digest is
the DVC md5), so a metric in the UI can always be traced back to bytes in the DVC remote.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.tracking import MlflowClient

from pipelines.data.versioning import DataVersion
from pipelines.project import artifact_root, tracking_uri


def experiment_name(task: str) -> str:
    return f"seqops-{task}"


def registered_name(task: str) -> str:
    return f"seqops-{task}"


def configure(root: Path) -> MlflowClient:
    """Point MLflow at the project's store (SQLite under .seqops/ unless MLFLOW_TRACKING_URI says otherwise)."""
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def ensure_experiment(task: str, root: Path) -> str:
    """The task's experiment id; created with artifacts under .seqops/ on the embedded store."""
    client = configure(root)
    name = experiment_name(task)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = artifact_root(root) if tracking_uri(root).startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)


def log_data_version(version: DataVersion, task: str) -> None:
    """Tag the active run with the data version and record it as a dataset input (digest = DVC md5)."""
    mlflow.set_tags(version.as_tags())
    source = LocalArtifactDatasetSource(f"{version.path}/{task}/raw.parquet@{version.git_sha}")
    mlflow.log_input(MetaDataset(source=source, name=f"{task}-raw", digest=version.md5[:36]), context="training")


@contextmanager
def parent_run(task: str, root: Path, version: DataVersion) -> Iterator[str]:
    """The retrain's parent run, which groups its variants in the UI."""
    with mlflow.start_run(experiment_id=ensure_experiment(task, root), run_name=f"retrain-{task}") as run:
        mlflow.set_tag("seqops.task", task)
        log_data_version(version, task)
        yield run.info.run_id


@contextmanager
def child_run(variant: str, task: str, version: DataVersion) -> Iterator[str]:
    """A variant's run, nested under the active parent so the UI groups and compares them."""
    parent = mlflow.active_run()
    experiment_id = parent.info.experiment_id if parent else None
    with mlflow.start_run(run_name=variant, nested=True, experiment_id=experiment_id) as run:
        mlflow.set_tags({"seqops.task": task, "seqops.variant": variant})
        log_data_version(version, task)
        yield run.info.run_id
