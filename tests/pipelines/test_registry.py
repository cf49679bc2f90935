"""The promotion gate, rollback and lineage, on a real MLflow store and registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from typer.testing import CliRunner

from pipelines import registry
from pipelines.config import load_params
from pipelines.data import versioning
from pipelines.data.ingest import ingest
from pipelines.project import metrics_file, train_record
from pipelines.train.tracking import configure, ensure_experiment


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture
def store(project: Path) -> Path:
    ingest("forecast", load_params(project), project)
    versioning.track(project)
    configure(project)
    return project


def _candidate(root: Path, holdout_score: float, inputs: tuple[str, ...] = ()) -> None:
    """A retrain's outputs as evaluate leaves them: one logged model (its signature requiring `inputs`, if any)
    and its holdout score on the gate's metric."""
    signature = infer_signature(pd.DataFrame({name: [1.0] for name in inputs})) if inputs else None
    with mlflow.start_run(experiment_id=ensure_experiment("forecast", root)) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=["mlflow"],
                                       signature=signature)
    train_record(root, "forecast").parent.mkdir(parents=True, exist_ok=True)
    train_record(root, "forecast").write_text(json.dumps({"variants": [
        {"variant": "lstm", "run_id": run.info.run_id, "model_uri": info.model_uri, "val_loss": 0.1}]}))
    metrics_file(root, "forecast").parent.mkdir(parents=True, exist_ok=True)
    metric = load_params(root).promote.metric_for("timeseries").name
    metrics_file(root, "forecast").write_text(json.dumps({"best_variant": "lstm",
                                                          "variants": {"lstm": {metric: holdout_score}}}))


def _promote(root: Path, candidate: float, champion: float, min_improvement: float = 0.0) -> registry.Decision:
    _candidate(root, candidate)
    params = load_params(root, overrides=[f"promote.min_improvement={min_improvement}"])
    return registry.promote(root, "forecast", params, rescore=lambda uri: champion)


def _promote_split(root: Path, candidate: float, champion: float, split: str | None) -> tuple[registry.Decision, list]:
    """`_promote` for a kind that tags how it drew its holdout; also returns the models it re-scored."""
    _candidate(root, candidate)
    rescored: list[str] = []
    decision = registry.promote(root, "forecast", load_params(root),
                                rescore=lambda uri: rescored.append(uri) or champion, split=split)
    return decision, rescored


def _champion(root: Path) -> str | None:
    return registry.champion_version(configure(root), "seqops-forecast")


def test_first_candidate_becomes_champion(store: Path) -> None:
    decision = _promote(store, candidate=1.0, champion=math.nan)
    assert decision.promoted and decision.champion_version is None
    assert _champion(store) == "1"


def test_better_candidate_is_promoted_and_the_decision_is_tagged(store: Path) -> None:
    _promote(store, candidate=1.0, champion=math.nan)
    decision = _promote(store, candidate=0.8, champion=1.0)
    assert decision.promoted and _champion(store) == "2"
    tags = configure(store).get_model_version("seqops-forecast", "2").tags
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.candidate_score"] == "0.8" and tags["promotion.champion_score"] == "1.0"
    assert tags["data.md5"] == versioning.data_version(store).md5


@pytest.mark.parametrize("candidate, champion, margin", [
    (1.2, 1.0, 0.0),      # worse
    (0.97, 1.0, 0.05),    # better, but within the required margin
    (1.0, 1.0, 0.0),      # a tie is not an improvement
    (math.nan, 1.0, 0.0), # a diverged candidate
])
def test_champion_stays_when_the_candidate_has_not_earned_it(store: Path, candidate, champion, margin) -> None:
    _promote(store, candidate=1.0, champion=math.nan)
    decision = _promote(store, candidate=candidate, champion=champion, min_improvement=margin)
    assert not decision.promoted
    assert _champion(store) == "1"
    client = configure(store)
    assert str(client.get_model_version_by_alias("seqops-forecast", "challenger").version) == "2"
    assert client.get_model_version("seqops-forecast", "2").tags["promotion.decision"] == "rejected"


def test_a_champion_whose_holdout_was_drawn_otherwise_is_not_compared_on_this_one(store: Path) -> None:
    """A text champion from before splits were keyed on the text (or drawn with another seed) may have trained
    on today's holdout: re-scored there it looked far better than any new model and was never replaced."""
    _promote(store, candidate=1.0, champion=math.nan)  # v1: no split recorded
    decision, rescored = _promote_split(store, candidate=0.9, champion=0.1, split="by text hash (seed 13)")
    assert decision.promoted and _champion(store) == "2" and rescored == []
    assert "before splits were recorded" in decision.reason and "not compared" in decision.reason
    tags = configure(store).get_model_version("seqops-forecast", "2").tags
    assert tags["seqops.split"] == "by text hash (seed 13)"

    decision, rescored = _promote_split(store, candidate=0.9, champion=0.1, split="by text hash (seed 13)")
    assert not decision.promoted and rescored == ["models:/seqops-forecast@champion"]  # the same draw: compared
    decision, _ = _promote_split(store, candidate=0.9, champion=0.1, split="by text hash (seed 14)")
    assert decision.promoted and "drawn by text hash (seed 13), this one by text hash (seed 14)" in decision.reason


def test_a_champion_reading_an_input_the_data_no_longer_has_is_not_compared(store: Path) -> None:
    """A covariate removed from the task: re-scoring the champion failed on schema enforcement, so promote
    crashed on every retrain and the task could never promote again."""
    _candidate(store, 1.0, inputs=("history", "humidity"))
    registry.promote(store, "forecast", load_params(store), rescore=lambda uri: math.nan)
    _candidate(store, 0.9, inputs=("history",))
    rescored: list[str] = []
    decision = registry.promote(store, "forecast", load_params(store), rescore=lambda uri: rescored.append(uri) or 0.1)
    assert decision.promoted and _champion(store) == "2" and rescored == []
    assert "champion v1 reads humidity, which this retrain's data does not have" in decision.reason

    _candidate(store, 0.9, inputs=("history", "humidity"))  # a candidate reading more than the champion: compared
    decision = registry.promote(store, "forecast", load_params(store), rescore=lambda uri: rescored.append(uri) or 0.1)
    assert not decision.promoted and rescored == ["models:/seqops-forecast@champion"]


def test_a_champion_that_refuses_this_holdouts_requests_is_not_compared(store: Path) -> None:
    """Data moved from month starts to month ends: the champion refused every holdout record as off its calendar,
    and promote crashed on every retrain, leaving an undecided version each time."""
    _promote(store, candidate=1.0, champion=math.nan)

    def off_calendar(uri: str) -> float:
        raise MlflowException.invalid_parameter_value("record 0: field 'last_timestamp' '2018-08-31T00:00:00' is not "
                                                      "on the model's calendar (frequency 'MS')")
    _candidate(store, 0.9)
    decision = registry.promote(store, "forecast", load_params(store), rescore=off_calendar)
    assert decision.promoted and _champion(store) == "2"
    assert decision.reason == ("champion v1 refuses this retrain's holdout (record 0: field 'last_timestamp' "
                               "'2018-08-31T00:00:00' is not on the model's calendar (frequency 'MS')), so it is not "
                               "compared; the candidate beats the baseline")

    def broken(uri: str) -> float:
        raise MlflowException("the artifact store is unreachable")
    _candidate(store, 0.8)
    with pytest.raises(MlflowException, match="unreachable"):  # not a refusal: the promote fails, to run again
        registry.promote(store, "forecast", load_params(store), rescore=broken)
    assert _champion(store) == "2"


def test_a_champion_answering_with_other_labels_is_not_compared(store: Path) -> None:
    """A label added to a text task: the champion could never predict it, and kept on its score it went on
    serving a task it no longer matched."""
    two, three = "labels ['negative', 'positive']", "labels ['negative', 'neutral', 'positive']"
    _candidate(store, 1.0)
    registry.promote(store, "forecast", load_params(store), rescore=lambda uri: math.nan, outputs=two)
    assert configure(store).get_model_version("seqops-forecast", "1").tags["seqops.outputs"] == two
    _candidate(store, 1.0)
    rescored: list[str] = []
    decision = registry.promote(store, "forecast", load_params(store), rescore=lambda uri: rescored.append(uri) or 0.1,
                                outputs=three)
    assert decision.promoted and _champion(store) == "2" and rescored == []
    assert decision.reason.startswith(f"champion v1 answers with {two}, this retrain's data with {three}")
    _candidate(store, 1.0)
    decision = registry.promote(store, "forecast", load_params(store), rescore=lambda uri: rescored.append(uri) or 0.1,
                                outputs=three)  # the same labels: compared, and kept
    assert not decision.promoted and rescored == ["models:/seqops-forecast@champion"]


def test_a_rejected_candidate_says_when_the_champion_keeps_older_serving_settings(store: Path) -> None:
    """serving limits changed and retrained: the candidate lost, the champion kept serving its own limits, and
    nothing said so."""
    _candidate(store, 1.0)
    registry.promote(store, "forecast", load_params(store), rescore=lambda uri: math.nan,
                     serving='{"max_records": 100}')
    _candidate(store, 2.0)
    decision = registry.promote(store, "forecast", load_params(store), rescore=lambda uri: 1.0,
                                serving='{"max_records": 3}')
    assert not decision.promoted and decision.reason.endswith(
        "; the task's serving settings changed since champion v1 was logged, and it keeps its own: they take effect "
        "with the next promoted version")
    _candidate(store, 2.0)
    decision = registry.promote(store, "forecast", load_params(store), rescore=lambda uri: 1.0,
                                serving='{"max_records": 100}')
    assert not decision.promoted and "serving settings" not in decision.reason


def test_a_promote_that_failed_after_registering_is_decided_by_the_next_run(store: Path) -> None:
    """No stage is stale after a promote that crashed past `register_model`: `decided` tells the flow to promote
    again, and that promote decides on the version already registered instead of registering a second."""
    _candidate(store, 1.0)
    assert not registry.decided(store, "forecast")

    def crash(uri: str) -> float:
        raise RuntimeError("killed")

    _promote(store, candidate=1.0, champion=math.nan)  # v1, champion
    _candidate(store, 0.8)
    with pytest.raises(RuntimeError):
        registry.promote(store, "forecast", load_params(store), rescore=crash)
    assert not registry.decided(store, "forecast")
    decision = registry.promote(store, "forecast", load_params(store), rescore=lambda uri: 1.0)
    assert decision.promoted and decision.version == "2" and _champion(store) == "2"
    assert registry.decided(store, "forecast")
    assert sorted(str(v.version) for v in configure(store).search_model_versions("name = 'seqops-forecast'")) == ["1", "2"]


def test_maximized_metrics_promote_in_their_own_direction() -> None:
    assert registry.decide(0.80, 0.75, 0.0, "maximize")[0]
    assert not registry.decide(0.76, 0.75, 0.05, "maximize")[0]


def test_rollback_returns_champion_to_the_previous_version(store: Path) -> None:
    _promote(store, candidate=1.0, champion=math.nan)
    _promote(store, candidate=0.5, champion=1.0)
    assert registry.rollback(store, "forecast") == ("2", "1")
    assert _champion(store) == "1"
    with pytest.raises(registry.RegistryError, match="no earlier champion"):
        registry.rollback(store, "forecast")


def test_rollback_without_champion_is_a_clear_error(store: Path) -> None:
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.rollback(store, "forecast")


def test_lineage_traces_version_to_run_data_and_code(store: Path) -> None:
    _promote(store, candidate=1.0, champion=math.nan)
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["lineage", "forecast"])
    assert result.exit_code == 0, result.output
    version = versioning.data_version(store)
    assert "seqops-forecast v1 (challenger, champion)" in result.output
    assert f"md5 {version.md5}" in result.output and f"git {version.git_sha}" in result.output
    assert "git checkout" not in result.output  # data.dvc was never committed in this project
    assert f"md5: {version.md5}" in result.output and "dvc pull data.dvc" in result.output


def test_lineage_says_when_tracked_files_were_uncommitted_at_registration(store: Path) -> None:
    from pipelines.cli import app

    _promote(store, candidate=1.0, champion=math.nan)
    clean = CliRunner().invoke(app, ["lineage", "forecast"])
    (store / "params.yaml").write_text((store / "params.yaml").read_text() + "\n# tuned by hand\n")
    _promote(store, candidate=0.5, champion=1.0)
    dirty = CliRunner().invoke(app, ["lineage", "forecast"])

    assert clean.exit_code == dirty.exit_code == 0, clean.output + dirty.output
    assert "uncommitted" not in clean.output
    assert "seqops-forecast v2" in dirty.output
    assert "with uncommitted changes to params.yaml: git " in dirty.output


def test_lineage_of_a_missing_version_says_so(store: Path) -> None:
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["lineage", "forecast", "--version", "7"])
    assert result.exit_code == 2
    assert "seqops-forecast has no version 7" in result.output
