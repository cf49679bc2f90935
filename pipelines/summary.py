"""The table that ends `seqops run`: per task, every candidate beside its baselines, and the gate's verdict.

It reads what the stages wrote (metrics/<task>.json from evaluate@<task>) and the decision the
flow returns for the task (pipelines.registry.Decision as a dict, or None when nothing was
retrained), so the table says exactly what the gate saw. The holdout metric shown is the gate's
(params.promote.metrics for the task's kind); beside it, for forecasts, the holdout coverage of the
80 % prediction interval (the gate's floor is promote.coverage_floor). `chosen` marks what promote
registers: metrics["chosen"], which may be a baseline (older files name only `best_variant`).

metrics/<task>.json: `best_variant`, `selection`, `variants` {name: {metric: value, `baseline_<metric>`:
value, ...}}, and optionally `baselines` {name: {metric: value}}; without `baselines`, the
`baseline_<metric>` value of the variants is the one baseline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipelines.evaluate.intervals import GATE_LEVEL, level_key

BASELINE_PREFIX = "baseline_"
COVERAGE = f"coverage_{level_key(GATE_LEVEL)}"  # the gate's coverage key (pipelines/registry.py)


def _value(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _baselines(evaluated: dict[str, Any], metric: str) -> dict[str, tuple[float, float]]:
    """{name: (metric, coverage)} of the baselines."""
    if evaluated.get("baselines"):
        return {name: (_value(scores, metric), _value(scores, COVERAGE))
                for name, scores in evaluated["baselines"].items()}
    first = next(iter(evaluated["variants"].values()), {})
    key = f"{BASELINE_PREFIX}{metric}"
    return {"baseline": (_value(first, key), math.nan)} if key in first else {}


def verdict(decision: dict[str, Any] | None) -> str:
    """The gate's decision in one line: promoted or not, and why."""
    if decision is None:
        return "not retrained: data, params and code unchanged since the last run"
    if decision["promoted"]:
        return f"promoted: v{decision['version']} is the champion ({decision['reason']})"
    kept = f"v{decision['champion_version']} stays champion" if decision.get("champion_version") else "no champion"
    return f"not promoted: v{decision['version']} registered, {kept} ({decision['reason']})"


def table(task: str, evaluated: dict[str, Any], decision: dict[str, Any] | None, metric: str, goal: str) -> list[str]:
    """Lines of the task's table: a header, one row per variant and baseline, the verdict."""
    better = "lower" if goal == "minimize" else "higher"
    chosen = evaluated.get("chosen", evaluated.get("best_variant"))
    rows = [(name, _value(scores, metric), _value(scores, COVERAGE), "")
            for name, scores in sorted(evaluated["variants"].items())]
    rows += [(name, value, coverage, "baseline")
             for name, (value, coverage) in sorted(_baselines(evaluated, metric).items())]
    rows = [(name, value, coverage, ", ".join(filter(None, [note, "chosen" if name == chosen else ""])))
            for name, value, coverage, note in rows]
    shows_coverage = any(math.isfinite(coverage) for _, _, coverage, _ in rows)
    width = max([len("candidate"), *(len(name) for name, _, _, _ in rows)]) + 2
    header = f"  {'candidate':<{width}}{metric:>10}" + (f"{'cover 80%':>11}" if shows_coverage else "")
    lines = [f"{task}: holdout {metric} ({better} is better); variant chosen by {evaluated.get('selection', '?')}",
             header]
    lines += [(f"  {name:<{width}}{value:>10.4f}" + (f"{coverage:>11.1%}" if shows_coverage else "")
               + f"  {note}").rstrip() for name, value, coverage, note in rows]
    lines.append(f"  {verdict(decision)}")
    return lines


def task_summary(metrics_path: Path, task: str, decision: dict[str, Any] | None, metric: str, goal: str) -> list[str]:
    """The table from the task's metrics file (just the verdict when evaluate never wrote one)."""
    if not metrics_path.is_file():
        return [f"{task}: no {metrics_path.name} yet", f"  {verdict(decision)}"]
    return table(task, json.loads(metrics_path.read_text()), decision, metric, goal)
