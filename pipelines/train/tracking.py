"""MLflow: one experiment per task, a parent run per retrain, a child run per variant.

Every run carries the data version it saw (as tags and as an MLflow dataset input whose digest is
the DVC md5), so a metric in the UI can always be traced back to bytes in the DVC remote.

Each experiment is tagged as model training (`mlflow.experimentKind`): without the tag MLflow 3's
UI opens an experiment on its GenAI traces overview instead of the runs table.
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
from pipelines.orchestration.recovery import owner_tags
from pipelines.project import artifact_root, tracking_uri

NAME_PREFIX = "seqops-"  # of experiments and registered models
# The tag and value MLflow 3's UI reads to open an experiment on its runs table (mlflow/server/js:
# ExperimentKind.CUSTOM_MODEL_DEVELOPMENT).
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_name(task: str) -> str:
    return f"{NAME_PREFIX}{task}"


def registered_name(task: str) -> str:
    return f"{NAME_PREFIX}{task}"


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
        if found.tags.get(KIND_TAG) is None:
            client.set_experiment_tag(found.experiment_id, KIND_TAG, TRAINING_KIND)
        return found.experiment_id
    location = artifact_root(root) if tracking_uri(root).startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: TRAINING_KIND})


def mark_training_experiments(root: Path) -> list[str]:
    """Tag the store's seqops experiments that lack an experiment kind as model training; their names.

    Experiments created before the tag existed (or by an older seqops) would open on the traces page.
    """
    client = configure(root)
    marked = []
    for experiment in client.search_experiments(filter_string=f"name LIKE '{NAME_PREFIX}%'"):
        if experiment.tags.get(KIND_TAG) is None:
            client.set_experiment_tag(experiment.experiment_id, KIND_TAG, TRAINING_KIND)
            marked.append(experiment.name)
    return marked


def log_data_version(version: DataVersion, task: str) -> None:
    """Tag the active run with the data version and record it as a dataset input (digest = DVC md5)."""
    mlflow.set_tags(version.as_tags())
    source = LocalArtifactDatasetSource(f"{version.path}/{task}/raw.parquet@{version.git_sha}")
    mlflow.log_input(MetaDataset(source=source, name=f"{task}-raw", digest=version.md5[:36]), context="training")


@contextmanager
def parent_run(task: str, root: Path, version: DataVersion) -> Iterator[str]:
    """The retrain's parent run, which groups its variants in the UI."""
    # The owner is a tag of the run from its creation on: a run killed at any moment can be told dead.
    with mlflow.start_run(experiment_id=ensure_experiment(task, root), run_name=f"retrain-{task}",
                          tags={"seqops.task": task, **owner_tags()}) as run:
        log_data_version(version, task)
        yield run.info.run_id


@contextmanager
def child_run(variant: str, task: str, version: DataVersion) -> Iterator[str]:
    """A variant's run, nested under the active parent so the UI groups and compares them."""
    parent = mlflow.active_run()
    experiment_id = parent.info.experiment_id if parent else None
    with mlflow.start_run(run_name=variant, nested=True, experiment_id=experiment_id,
                          tags={"seqops.task": task, "seqops.variant": variant, **owner_tags()}) as run:
        log_data_version(version, task)
        yield run.info.run_id
