"""The model registry: register the retrain's best variant, gate promotion, roll back.

`champion` (what is served) moves only when the candidate beats the current champion, re-scored
on the same holdout, by params.promote.min_improvement; `challenger` always points at the newest
candidate. Every decision is written on the version as tags with its reason and both scores.
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
from pipelines.data.versioning import data_version
from pipelines.errors import SeqopsError
from pipelines.project import metrics_file, params_path, train_record
from pipelines.train.tracking import configure, registered_name

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "seqops.champion_history"


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
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


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


def promote(root: Path, task: str, params: Params, rescore) -> Decision:
    """Register the retrain's best variant and move `champion` if it earned it.

    `rescore(model_uri) -> float` scores a model on this retrain's holdout with the task kind's metric.
    """
    client = configure(root)
    name = registered_name(task)
    metrics = json.loads(metrics_file(root, task).read_text())
    record = json.loads(train_record(root, task).read_text())
    best = metrics["best_variant"]
    entry = next(v for v in record["variants"] if v["variant"] == best)
    metric = params.promote.metric_for(params.task(task).kind)
    candidate_score = float(metrics["variants"][best].get(metric.name, math.nan))

    version = str(mlflow.register_model(entry["model_uri"], name).version)
    current = champion_version(client, name)
    champion_score = rescore(f"models:/{name}@{CHAMPION}") if current is not None else None
    promoted, reason = decide(candidate_score, champion_score, params.promote.min_improvement, metric.goal)

    dv = data_version(root)
    tags = {
        **dv.as_tags(), "run_id": entry["run_id"], "variant": best,
        "dvc_lock.md5": _file_md5(root / "dvc.lock"), "params.md5": _file_md5(params_path(root)),
        "promotion.decision": "promoted" if promoted else "rejected", "promotion.reason": reason,
        "promotion.metric": f"{metric.name} ({metric.goal})", "promotion.candidate_score": repr(candidate_score),
        "promotion.champion_score": repr(champion_score), "promotion.champion_version": str(current),
    }
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
    )


def committed_data_md5(root: Path, sha: str) -> str | None:
    """The md5 data.dvc records at commit `sha`, or None when git cannot show it."""
    shown = subprocess.run(["git", "show", f"{sha}:data.dvc"], cwd=root, capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    return yaml.safe_load(shown.stdout)["outs"][0]["md5"]
