"""The model registry: register the retrain's chosen candidate, gate promotion, roll back.

The candidate is what evaluate chose: a variant, an ensemble, or the best baseline when no recurrent
candidate beat it. `champion` (what is served) moves only when the candidate beats the best baseline
and the current champion, re-scored on the same holdout, by params.promote.min_improvement;
`challenger` always points at the newest candidate. Every decision is written on the version as tags
with its reason, both scores and the candidate's type (`seqops.candidate_type`).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import Params
from pipelines.data.versioning import data_version, uncommitted
from pipelines.errors import SeqopsError
from pipelines.evaluate.intervals import GATE_LEVEL, level_key
from pipelines.project import metrics_file, params_path, train_record
from pipelines.signing import DECISION_TAG, PROMOTED, signature_tags
from pipelines.train.tracking import configure, registered_name

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "seqops.champion_history"
CANDIDATE_TYPE_TAG = "seqops.candidate_type"  # variant | ensemble | baseline
UNCOMMITTED_TAG = "code.uncommitted"  # tracked files differing from data.git_sha at registration, ", "-joined
SERVING_TAG = "seqops.serving"  # the task's serving settings the version was logged with (its limits)
OUTPUTS_TAG = "seqops.outputs"  # what the version answers with (TaskKind.outputs: a text model's labels)
SPLIT_TAG = "seqops.split"  # how the version's holdout was drawn (TaskKind.holdout_split), where the kind says


class RegistryError(SeqopsError):
    """A registry operation cannot be done (no champion, nothing to roll back to, ...)."""


@dataclass(frozen=True)
class Decision:
    version: str
    promoted: bool
    reason: str
    candidate_score: float
    champion_score: float | None
    champion_version: str | None


def _file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version `champion` points at; None only when the registry says there is none (no registered model, or
    no alias). Any other failure (credentials refused, the server down) is raised: read as "no champion", it made
    `seqops serve` blame a missing champion and would let promote crown a candidate without comparing it."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                e.error_code == "INVALID_PARAMETER_VALUE" and "alias" in str(e) and "not found" in str(e)):
            return None
        raise


def decide(candidate: float, champion: float | None, min_improvement: float,
           goal: str = "minimize") -> tuple[bool, str]:
    """Whether the candidate earned `champion`: better by a relative margin in the metric's direction.

    A NaN or infinite candidate never wins; a missing or NaN champion always loses.
    """
    if math.isnan(candidate) or math.isinf(candidate):
        return False, f"candidate score is {candidate}: a failed or diverged model is never promoted"
    if champion is None:
        return True, "no champion yet: the first candidate becomes champion"
    if math.isnan(champion):
        return True, "the champion's score on this holdout is NaN"
    if goal == "minimize":
        threshold = champion - abs(champion) * min_improvement
        wins, needs = candidate < threshold, "<"
    else:
        threshold = champion + abs(champion) * min_improvement
        wins, needs = candidate > threshold, ">"
    verdict = "beats" if wins else "does not beat"
    return wins, (f"candidate {candidate:.6g} {verdict} champion {champion:.6g} by the required "
                  f"{min_improvement:.1%} ({goal}: needs {needs} {threshold:.6g})")


def _set_champion(client: MlflowClient, name: str, version: str, previous: str | None) -> None:
    if previous is not None:
        history = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join(filter(None, [history, previous])))
    client.set_registered_model_alias(name, CHAMPION, version)


def _candidate(metrics: dict, record: dict) -> tuple[str, dict[str, str], dict[str, float]]:
    """(name, {type, run_id, model_uri}, holdout metrics) of what evaluate chose; metrics files written
    before baselines were candidates name only `best_variant`, a variant of the train record."""
    name = metrics.get("chosen", metrics["best_variant"])
    if "models" in metrics:
        entry = metrics["models"][name]
    else:
        found = next(v for v in record["variants"] if v["variant"] == name)
        entry = {"type": "variant", "run_id": found["run_id"], "model_uri": found["model_uri"]}
    scores = {**metrics.get("baselines", {}), **metrics["variants"]}[name]
    return name, entry, scores


def baseline_check(candidate_type: str, scores: dict[str, float], metric: str, goal: str) -> tuple[bool, str]:
    """Whether a recurrent candidate beats the best baseline on the holdout (`baseline_<metric>`); a
    baseline, or a candidate scored without one, passes. Never promote what loses to a baseline."""
    baseline = scores.get(f"baseline_{metric}")
    if candidate_type == "baseline" or baseline is None:
        return True, ""
    wins, reason = decide(float(scores.get(metric, math.nan)), float(baseline), 0.0, goal)
    return wins, "" if wins else f"loses to the best baseline on the holdout: {reason.replace('champion', 'baseline')}"


def coverage_check(scores: dict[str, float], floor: float) -> tuple[bool, str]:
    """Whether a forecast candidate's 80 % interval covered at least `floor` of the holdout actuals
    (promote.coverage_floor): intervals that promise more than they keep are not served. A candidate
    without interval metrics (a text model, an old metrics file) passes."""
    key = f"coverage_{level_key(GATE_LEVEL)}"
    if key not in scores:
        return True, ""
    coverage = float(scores[key])
    if math.isfinite(coverage) and coverage >= floor:
        return True, ""
    return False, (f"its {level_key(GATE_LEVEL)} % prediction interval covered {coverage:.1%} of the holdout, "
                   f"below the floor promote.coverage_floor = {floor:.0%}")


def _required_inputs(model_uri: str) -> set[str]:
    """The input columns a logged model's signature requires (empty without a signature)."""
    signature = mlflow.models.get_model_info(model_uri).signature
    if signature is None or signature.inputs is None:
        return set()
    return {spec.name for spec in signature.inputs.inputs if spec.name and getattr(spec, "required", True)}


def _not_comparable(name: str, current: str, tags: dict[str, str], split: str | None, candidate_uri: str,
                    outputs: str | None) -> str | None:
    """Why champion v`current` (its version tags `tags`) cannot be scored fairly on this retrain's holdout, or
    None when it can.

    Three reasons: its holdout was drawn otherwise (another seed or fractions, or from before the split tag), so
    it may have trained on this holdout and its score there would be inflated for good; it reads an input
    this retrain's data no longer has (a covariate removed or renamed), so it cannot be scored at all; or it
    answers with other outputs than the task now has (a label added to a text task: it can never predict it,
    and kept on its score it would serve a task it no longer matches). Either way a champion that cannot be
    compared would block every retrain; the candidate must still beat the baseline.
    """
    if outputs is not None and OUTPUTS_TAG in tags and tags[OUTPUTS_TAG] != outputs:
        return (f"champion v{current} answers with {tags[OUTPUTS_TAG]}, this retrain's data with {outputs}: it "
                "cannot answer for this task as it now is")
    champion_split = tags.get(SPLIT_TAG)
    if split is not None and champion_split != split:
        return (f"champion v{current}'s holdout was drawn {champion_split or 'before splits were recorded'}, "
                f"this one {split}: it may have trained on this holdout")
    missing = _required_inputs(f"models:/{name}@{CHAMPION}") - _required_inputs(candidate_uri)
    if missing:
        return (f"champion v{current} reads {', '.join(sorted(missing))}, which this retrain's data does not have: "
                f"it cannot be scored on this holdout")
    return None


def _versions_of_run(client: MlflowClient, name: str, run_id: str) -> list:
    """Every version of `name` registered from `run_id`, newest first."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(versions, key=lambda v: -int(v.version))


def _undecided_versions(client: MlflowClient, name: str, run_id: str) -> list[str]:
    """Versions of `name` registered from `run_id` that the gate never decided on (a promote that crashed
    after registering), newest first: the next promote of the same candidate decides on one of them rather
    than registering the candidate again."""
    return [str(v.version) for v in _versions_of_run(client, name, run_id) if DECISION_TAG not in v.tags]


def decided(root: Path, task: str) -> bool:
    """Whether the gate has decided on the candidate evaluate chose last (a version of its run carries the
    decision tag); False when a promote failed or was killed after evaluate, so the next run promotes again
    even though no stage is stale."""
    if not metrics_file(root, task).exists() or not train_record(root, task).exists():
        return True
    client = configure(root)
    _, entry, _ = _candidate(json.loads(metrics_file(root, task).read_text()),
                             json.loads(train_record(root, task).read_text()))
    try:
        versions = _versions_of_run(client, registered_name(task), entry["run_id"])
    except MlflowException:
        return False
    return any(DECISION_TAG in v.tags for v in versions)


def promote(root: Path, task: str, params: Params, rescore, split: str | None = None,
            outputs: str | None = None, serving: str | None = None) -> Decision:
    """Register the retrain's chosen candidate (a variant, an ensemble, or the best baseline when no
    recurrent candidate beat it) and move `champion` if it earned it: it must beat the best baseline
    and the current champion, both on this retrain's holdout.

    `rescore(model_uri) -> float` scores a model on this retrain's holdout with the task kind's metric.
    `split` says how this retrain drew its holdout (TaskKind.holdout_split; None where the kind does not
    track it); `outputs` what its models answer with (TaskKind.outputs); `serving` the task's serving settings
    (JSON), which a model carries from its logging: a rejected candidate's reason says when the champion's
    differ, since they then take effect only with the next promoted version. A champion whose splits were drawn
    otherwise (another seed or fractions, or from before the tag) may have trained on this holdout: its score
    there would be inflated for good, and it would never be replaced, so it is not compared; nor is one that
    reads an input today's data lacks or answers with other labels (`_not_comparable`), nor one that refuses
    this holdout's requests (data moved to another calendar: month ends after month starts).
    The candidate must still beat the baseline. A version of the same candidate that a crashed promote
    registered without a decision is decided on rather than registered again.
    """
    client = configure(root)
    name = registered_name(task)
    metrics = json.loads(metrics_file(root, task).read_text())
    record = json.loads(train_record(root, task).read_text())
    best, entry, scores = _candidate(metrics, record)
    metric = params.promote.metric_for(params.task(task).kind)
    candidate_score = float(scores.get(metric.name, math.nan))

    undecided = _undecided_versions(client, name, entry["run_id"])
    version = undecided[0] if undecided else str(mlflow.register_model(entry["model_uri"], name).version)
    current = champion_version(client, name)
    champion_tags = client.get_model_version(name, current).tags if current is not None else {}
    not_compared = (_not_comparable(name, current, champion_tags, split, entry["model_uri"], outputs)
                    if current is not None else None)
    champion_score = None
    if current is not None and not not_compared:
        try:
            champion_score = rescore(f"models:/{name}@{CHAMPION}")
        except MlflowException as e:
            if e.error_code != "INVALID_PARAMETER_VALUE":  # a refused request, not a failure to score
                raise
            not_compared = f"champion v{current} refuses this retrain's holdout ({e.message})"
    promoted, reason = baseline_check(entry["type"], scores, metric.name, metric.goal)
    if promoted:
        promoted, reason = coverage_check(scores, params.promote.coverage_floor)
    if promoted:
        promoted, reason = decide(candidate_score, champion_score, params.promote.min_improvement, metric.goal)
        if promoted and not_compared:
            reason = f"{not_compared}, so it is not compared; the candidate beats the baseline"
    if not promoted and serving is not None and champion_tags.get(SERVING_TAG, serving) != serving:
        reason += (f"; the task's serving settings changed since champion v{current} was logged, and it keeps its "
                   "own: they take effect with the next promoted version")

    dv = data_version(root)
    dirty = uncommitted(root)
    if dirty is not None:  # the run writes these two, and their md5 tags record them
        dirty = [path for path in dirty if path not in ("data.dvc", "dvc.lock")]
    tags = {
        **dv.as_tags(), "run_id": entry["run_id"],
        UNCOMMITTED_TAG: "unknown" if dirty is None else ", ".join(dirty),
        "variant": best, CANDIDATE_TYPE_TAG: entry["type"],
        "dvc_lock.md5": _file_md5(root / "dvc.lock"), "params.md5": _file_md5(params_path(root)),
        DECISION_TAG: PROMOTED if promoted else "rejected", "promotion.reason": reason,
        "promotion.metric": f"{metric.name} ({metric.goal})", "promotion.candidate_score": repr(candidate_score),
        "promotion.champion_score": repr(champion_score), "promotion.champion_version": str(current),
        **({SPLIT_TAG: split} if split is not None else {}),
        **({OUTPUTS_TAG: outputs} if outputs is not None else {}),
        **({SERVING_TAG: serving} if serving is not None else {}),
    }
    if promoted:  # signed before `champion` moves: servers load only what the gate signed
        tags.update(signature_tags(name, version, root))
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted:
        _set_champion(client, name, version, current)
    return Decision(version, promoted, reason, candidate_score, champion_score, current)


def rollback(root: Path, task: str) -> tuple[str, str]:
    """Move `champion` back to the version it pointed at before the last promotion: (from, to)."""
    client = configure(root)
    name = registered_name(task)
    current = champion_version(client, name)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    history = [v for v in client.get_registered_model(name).tags.get(HISTORY_TAG, "").split(",") if v]
    if not history:
        raise RegistryError(f"{name}: champion v{current} has no earlier champion to roll back to")
    previous = history.pop()
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    client.set_model_version_tag(name, current, "rollback", f"champion moved back to v{previous}")
    return current, previous


@dataclass(frozen=True)
class Lineage:
    name: str
    version: str
    aliases: list[str]
    run_id: str
    data_md5: str
    git_sha: str
    dvc_lock_md5: str
    params: dict[str, str]
    decision: str
    data_committed: bool
    # tracked files that differed from git_sha when the model was registered; None: not recorded (older versions)
    uncommitted: list[str] | None = None

    def restore_commands(self) -> list[str]:
        """How to get the exact training data back into a checkout."""
        if not self.data_committed:
            # data.dvc was modified but not committed when this model trained: its md5 is the only record.
            return [f"sed -i 's/md5: .*\\.dir/md5: {self.data_md5}/' data.dvc", "dvc pull data.dvc"]
        return [f"git checkout {self.git_sha} -- data.dvc", "dvc checkout data.dvc",
                "dvc pull data.dvc   # when the cache does not hold it: fetch from the DVC remote"]


def lineage(root: Path, task: str, version: str | None = None) -> Lineage:
    """Model version -> training run -> data version -> code version -> params (default: the champion)."""
    client = configure(root)
    name = registered_name(task)
    try:
        model_version = (client.get_model_version(name, version) if version is not None
                         else client.get_model_version_by_alias(name, CHAMPION))
    except MlflowException:
        which = f"version {version}" if version is not None else "a champion"
        raise RegistryError(f"{name} has no {which}: see `seqops run` or the MLflow UI's Models page") from None
    tags = model_version.tags
    run = client.get_run(model_version.run_id)
    data_md5, sha = tags.get("data.md5", "unknown"), tags.get("data.git_sha", "unknown")
    return Lineage(
        name=name, version=str(model_version.version), aliases=list(model_version.aliases),
        run_id=model_version.run_id, data_md5=data_md5,
        git_sha=sha, dvc_lock_md5=tags.get("dvc_lock.md5", "unknown"),
        params=dict(sorted(run.data.params.items())),
        decision=f"{tags.get('promotion.decision', 'unknown')}: {tags.get('promotion.reason', '')}",
        data_committed=committed_data_md5(root, sha) == data_md5,
        uncommitted=None if tags.get(UNCOMMITTED_TAG, "unknown") == "unknown" else
        [path for path in tags[UNCOMMITTED_TAG].split(", ") if path],
    )


def committed_data_md5(root: Path, sha: str) -> str | None:
    """The md5 data.dvc records at commit `sha`, or None when git cannot show it."""
    shown = subprocess.run(["git", "show", f"{sha}:data.dvc"], cwd=root, capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    return yaml.safe_load(shown.stdout)["outs"][0]["md5"]
