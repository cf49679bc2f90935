"""Forecast quality on panels: several series of different scales in one task, each series its own id.

bench/quality.py runs one series per task; a user's file often holds many (stores, products, countries),
and a panel is where one scaling for the whole task fails: the network sees a small series beside a large
one as a flat line plus the large one's mean step. Each panel here is built from series that installed
packages ship (the same loaders as bench/quality.py, and statsmodels' macrodata), run as one five-line
task (kind, source, timestamp, target, series_id) with the ONE default configuration, through the real
stages in a throwaway project. Per panel it records the holdout MASE (per series, then averaged) and the
80 % coverage of every recurrent candidate (the task-wide scaling's lstm, gru and hybrid beside
`gru-series`, scaled per series: pipelines/tasks/defaults.py `default_variants`) and every baseline, which
candidate cross-validation chose and what the gate served; bench/results/panels.json.

`OMP_NUM_THREADS=1 .venv/bin/python -m bench.panels` (about 3 minutes on 2 cores); PANELS=name,name runs a
subset. Not part of `make test`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bench import quality
from bench.common import machine, pin_threads

RESULTS = Path(__file__).resolve().parent / "results" / "panels.json"


def _joined(*names: str) -> Callable[[], pd.DataFrame]:
    """bench/quality.py's series `names` (one calendar) stacked as one long table, their names the ids."""
    def load() -> pd.DataFrame:
        frames = [quality.SERIES[name][0]()[["date", "value"]].assign(series=name) for name in names]
        return pd.concat(frames, ignore_index=True)[["series", "date", "value"]]
    return load


def _macro() -> pd.DataFrame:
    """The twelve quarterly US series of statsmodels' macrodata, 1959-2009: GDP in billions beside rates in
    percent; its holdout holds the 2008 recession."""
    from statsmodels.datasets import macrodata

    data = macrodata.load_pandas().data
    columns = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
               "infl", "realint"]
    dates = quality._quarters(data)
    return pd.concat([pd.DataFrame({"series": c, "date": dates, "value": data[c]}) for c in columns],
                     ignore_index=True)


PANELS: dict[str, tuple[Callable[[], pd.DataFrame], str]] = {
    "consumption_interest_quarterly": (_joined("consumption_quarterly", "interest_quarterly"), "quarterly"),
    "elnino_unemployment_monthly": (_joined("elnino_monthly", "unemployment_monthly"), "monthly"),
    "nile_sunspots_yearly": (_joined("nile_yearly", "sunspots_yearly"), "yearly"),
    "macro_quarterly": (_macro, "quarterly"),
}


def main() -> None:
    from pipelines.project import metrics_file, raw_path

    pin_threads()
    chosen = [p for p in os.environ.get("PANELS", ",".join(PANELS)).split(",") if p]
    for name in chosen:
        quality.SERIES[name] = (PANELS[name][0], PANELS[name][1], {"series_id": "series"})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = quality.project(Path(tmp), chosen, {})
        for name in chosen:
            run = quality.run_series(root, name)
            metrics = json.loads(metrics_file(root, name).read_text())
            series = pd.read_parquet(raw_path(root, name))["series_id"].nunique()
            results[name] = {"frequency": PANELS[name][1], "series": int(series),
                             "cv_chosen": metrics["best_variant"], **run}
            r = results[name]
            print(f"{name:<32} " + "  ".join(f"{n} {m:.3f}" for n, m in r["recurrent_mase"].items())
                  + f"  | best baseline {r['best_baseline_mase']:.3f}  cv {r['cv_chosen']}  served {r['champion']}"
                  f" ({r['champion_type']})  {r['seconds']:.0f} s", flush=True)
            write(results)


def write(results: dict) -> None:
    ratios = [r["ratio_best_recurrent_to_best_baseline"] for r in results.values()]
    served = [r["ratio_champion_to_best_baseline"] for r in results.values() if math.isfinite(
        r["ratio_champion_to_best_baseline"])]
    summary = {"panels": len(results), "recurrent_wins": sum(x < 1 for x in ratios),
               "geometric_mean_ratio_best_recurrent_to_best_baseline": float(np.exp(np.mean(np.log(ratios)))),
               "geometric_mean_ratio_served_to_best_baseline": float(np.exp(np.mean(np.log(served)))) if served
               else math.nan}
    print(json.dumps(summary), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "threads": 1, "summary": summary, "panels": results},
                                  indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
