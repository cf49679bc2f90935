"""The task-kind protocol: everything the stages need from a kind, and nothing about which kind it is.

A kind object is bound to one task's spec (`kind_for(spec)`); the stages pass it paths and frames
and get back frames, metrics and logged models. Each method is one place where kinds differ
(validation rules, splits and fitted transforms, batches, heads, the served pyfunc, metrics,
baselines, plots, how new rows merge); everything the kinds share stays in the stage modules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import pandas as pd

from pipelines.config import Params, TaskTraining, Variant

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from models import SequenceModel


class TaskSpec(Protocol):
    """What the stages read of a task's params.yaml section, whatever its kind (config.py's task classes)."""

    kind: str
    source: str
    topology: str
    training: TaskTraining
    variants: list[Variant]


@dataclass(frozen=True)
class Scored:
    """One model's (or baseline's) score on a segment: flat metrics, named as MLflow logs them, and
    the kind's own record of what was predicted (forecasts per series, a confusion matrix) for its plot."""

    metrics: dict[str, float]
    details: Any = None


@dataclass(frozen=True)
class Calibration:
    """What a kind fitted on a model's validation predictions to make its uncertainty honest (conformal
    residuals for a series, a temperature for text): `payload` travels inside the logged model as
    calibration.json, `metrics` are logged with the run, `details` feed `plot_calibration`."""

    payload: dict[str, Any]
    metrics: dict[str, float]
    details: Any = None


class TaskKind(Protocol):
    """One task kind (time series, text, ...): constructed with its task's spec, called by every stage.

    `prepared` is always the task's prepared/<task>/ directory, `frame` what `load_prepared` returned.
    """

    name: str
    # How a validation score is made, for the summary: "rolling-origin cross-validation", "the validation split"
    selection_method: str

    def __init__(self, spec: Any) -> None: ...

    def validate(self, frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
        """A source table -> the clean raw table and counts of rows dropped by documented rules.

        Raises InvalidDataError naming `name` (the file), the column and the row; nothing is written."""
        ...

    def merge(self, existing: pd.DataFrame, new: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
        """`seqops data add --mode append`: validated new rows onto the raw table, by the kind's rules
        (series only grow forward in time; texts are deduplicated as a whole). Returns the merged
        table and the dropped-row counts of the merge."""
        ...

    def appended_gaps(self, existing: pd.DataFrame, merged: pd.DataFrame) -> list[str]:
        """`seqops data add --mode append`: one line per place where the appended rows leave steps without data
        that prepare will make up (a lost night's file); empty when nothing is missing or the kind has no grid."""
        ...

    def check_preparable(self, raw: pd.DataFrame, name: str) -> None:
        """InvalidDataError when prepare would refuse this raw table (checked by `seqops data add` before it
        writes, so an added file cannot break the next run)."""
        ...

    def derived_settings(self, raw: pd.DataFrame) -> dict[str, Any]:
        """The settings prepare would derive from this raw table (dotted keys, as prepare prints them):
        `seqops data add` says which ones the added file changes, since no setting in params.yaml moved."""
        ...

    def read_settings(self) -> dict[str, Any]:
        """The task's settings `validate` reads the source by (column names; text: declared labels and the
        duplicate policy): recorded with the source's fingerprint, so that changing one re-ingests the source
        instead of training on what the old ones read."""
        ...

    def holdout_split(self) -> str | None:
        """How prepare draws the holdout, as a tag the registry compares (pipelines/registry.py, SPLIT_TAG):
        a champion drawn otherwise may have trained on today's holdout. None: nothing to compare (a series'
        holdout is its latest steps, which an earlier champion never saw)."""
        ...

    def outputs(self) -> str | None:
        """What this task's models answer with, as a tag the registry compares (pipelines/registry.py,
        OUTPUTS_TAG): a champion answering with other outputs is not compared. None: nothing to compare."""
        ...

    def prepare(self, raw: pd.DataFrame, prepared: Path) -> None:
        """Split the raw table and fit every transform on the training split only, writing the
        prepared files (rows with their split, fitted transforms, splits.json) into `prepared`."""
        ...

    def load_prepared(self, prepared: Path) -> pd.DataFrame:
        """The prepared rows with their split, as `score` and `example_request` take them."""
        ...

    def datamodule(self, prepared: Path, variant: Variant) -> pl.LightningDataModule:
        """The set-up datamodule `variant` trains on (cached per kind object: variants share data)."""
        ...

    def model_config(self, variant: Variant, params: Params, datamodule: pl.LightningDataModule) -> dict[str, Any]:
        """models.ModelConfig's keys for `variant`: `shared_model_config` plus the kind's input and head."""
        ...

    def pretrain(self, root: Path, task: str, params: Params) -> dict[str, Any] | None:
        """Train what every variant of this retrain starts from (text: language models on the training
        texts), inside the retrain's parent run and before any variant; None when the kind starts from
        scratch. Its files live where every variant's process can read them (project.pretrained_dir)."""
        ...

    def warm_start(self, root: Path, task: str, network: SequenceModel, variant: Variant) -> list[str]:
        """Load what `pretrain` left into a variant's fresh network; returns the loaded tensor names."""
        ...

    def selection_score(self, prepared: Path, variant: Variant, config: dict[str, Any], metric: str
                        ) -> Callable[[SequenceModel], float] | None:
        """`metric` of a network in training on the validation split, scored as evaluate will score it,
        for train to keep the best epoch by (and stop early on); None: the one-step val_loss does."""
        ...

    def log_model(self, prepared: Path, directory: Path, network: SequenceModel, config: dict[str, Any],
                  variant: Variant | None = None) -> str:
        """Log the pyfunc users will be served (network, fitted transforms, signature, input example)
        to the active MLflow run, staging files in `directory`; returns its model URI. `variant` (the
        one trained) picks its own fitted transforms where it has them (series: its prepare options)."""
        ...

    def score(self, frame: pd.DataFrame, model: Any, segment: str) -> Scored:
        """Metrics of a loaded pyfunc on `segment` ("validation" | "holdout"), through its predict."""
        ...

    def calibrate(self, frame: pd.DataFrame, model: Any, validation: Scored) -> Calibration:
        """Fit the model's uncertainty on the validation segment through its (uncalibrated) pyfunc, reusing
        what `score` predicted there (`validation`) where it can: the evaluate stage writes the payload
        into the logged model before it scores the holdout and before registration, so every candidate,
        and whichever is served, carries it."""
        ...

    def plot_calibration(self, run_id: str, title: str, calibration: Calibration) -> None:
        """Log the kind's calibration plot (a reliability diagram), if it draws one, to run `run_id`."""
        ...

    def baselines(self, prepared: Path, seed: int) -> dict[str, Callable[[Path], str]]:
        """Each non-recurrent baseline by name, as a function that fits it on the training split, logs it
        as a pyfunc with the served contract to the active MLflow run (staging files in the directory it
        is given) and returns its model URI. The evaluate stage logs each in a child run of the retrain
        and scores it exactly as it scores a variant, so a baseline can win the gate and be served."""
        ...

    def ensemble(self, prepared: Path, ranked: list[str]) -> Callable[[Path], str] | None:
        """A candidate combining the recurrent models `ranked` (model URIs, best cross-validation score
        first), as a logger like `baselines`'; None when the kind builds none (or too few are ranked)."""
        ...

    def plot(self, run_id: str, title: str, scored: Scored, baselines: dict[str, Scored]) -> None:
        """Log the kind's evaluation plot (forecast vs actual, confusion matrix) to run `run_id`."""
        ...

    def example_request(self, prepared: Path) -> dict[str, Any]:
        """A REST body (MLflow's `dataframe_records` format) the served champion answers with a 200."""
        ...


def shared_model_config(variant: Variant, spec: TaskSpec, params: Params) -> dict[str, Any]:
    """The model keys every kind sets the same way: variant keys over task and global defaults.

    TBPTT applies to many_to_many only, where a sequence is long enough to cut; k2 defaults to k1.
    """
    topology = variant.topology or spec.topology
    tbptt = topology == "many_to_many"
    return {
        "cell": variant.cell,
        "hidden_size": variant.hidden_size,
        "num_layers": variant.num_layers,
        "bidirectional": variant.bidirectional,
        "dropout": variant.dropout,
        "topology": topology,
        "k1": variant.k1 if tbptt else None,
        "k2": (variant.k2 or variant.k1) if tbptt else None,
        "clip_algorithm": params.clipping.algorithm,
        "clip_value": variant.clip or params.clipping.max_norm,
        "lr": variant.lr,
        "teacher_forcing": variant.teacher_forcing,
        "target_index": 0,
        "memory_steps": variant.memory_steps,
    }


def write_counts(counts: pd.DataFrame, path: Path) -> None:
    """splits.json: a two-level count table ({row: {column: n}}), the prepared data's summary DVC diffs."""
    path.write_text(json.dumps({str(r): {str(k): int(v) for k, v in row.items()} for r, row in counts.iterrows()},
                               indent=2))
