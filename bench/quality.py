"""Forecast quality on real series nobody here tuned to: every candidate beside every baseline.

Eight public series shipped inside installed packages (statsmodels datasets, bokeh_sampledata),
weekly, monthly, quarterly, yearly and half-hourly, one with a covariate, each run as a five-line
task (kind, source, timestamp, target, [covariates]) with the ONE default configuration derived by
pipelines/tasks/defaults.py, through the real stages (ingest, DVC, prepare, train, evaluate,
promote) in a throwaway project. Per series it records the holdout MASE of every recurrent
candidate, every baseline and the champion, and the ratios best recurrent / best baseline and
champion / best baseline; it writes bench/results/quality.json.

Targets (issue 10): the best recurrent candidate beats the best baseline on >= 6 of 8 series, the
geometric mean of (best recurrent / best baseline) is <= 0.95, and the champion is never worse than
the best baseline. `make bench-quality` (OMP_NUM_THREADS=1; about 4 minutes on 2 cores, at most 20). SERIES=name,name
runs a subset.

`python -m bench.quality --options` is the ablation that chose the `prepare` defaults (issue 10 item 6):
the recurrent candidates of every series retrained under each entry of OPTIONS (OPTIONS=name,name runs
a subset), statsforecast baselines off (they do not depend on the option: their MASE is read from
quality.json), into bench/results/quality_options.json with per series and option the holdout MASE of
every recurrent candidate, and per option the geometric mean over the series of (its MASE / the
reference's), for the best recurrent candidate on the holdout and for the one cross-validation chose.
An option a series cannot take (log of a non-positive target) is recorded with its error and left out
of that option's means.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bench.common import machine, pin_threads

RESULTS = Path(__file__).resolve().parent / "results" / "quality.json"
OPTIONS_RESULTS = RESULTS.with_name("quality_options.json")

# The prepare options compared by --options: each entry sets all four keys (difference follows its derived
# default), so an entry means the same whatever SeriesPrepare's defaults are; `reference` is the first.
_PLAIN = {"transform": "none", "seasonal_difference": False, "smoothing": "none", "scaling": "global"}
OPTIONS: dict[str, dict] = {
    "difference": _PLAIN,
    "log": {**_PLAIN, "transform": "log"},
    "boxcox": {**_PLAIN, "transform": "boxcox"},
    "seasonal_difference": {**_PLAIN, "seasonal_difference": True},
    "window_scaling": {**_PLAIN, "scaling": "window"},
    "holt_winters": {**_PLAIN, "smoothing": "holt_winters"},
    "holt_winters_window": {**_PLAIN, "smoothing": "holt_winters", "scaling": "window"},
    "holt_winters_log": {**_PLAIN, "smoothing": "holt_winters", "transform": "log"},
}


def _co2() -> pd.DataFrame:
    from statsmodels.datasets import co2

    data = co2.load_pandas().data.dropna()
    return pd.DataFrame({"date": data.index.strftime("%Y-%m-%d"), "value": data["co2"].to_numpy()})


def _wide_months(frame: pd.DataFrame, year: str, months: list[str]) -> pd.DataFrame:
    long = frame.melt(id_vars=[year], value_vars=months, var_name="month", value_name="value")
    long["date"] = pd.to_datetime(long[year].astype(int).astype(str) + "-"
                                  + long["month"].map({m: i + 1 for i, m in enumerate(months)}).astype(str) + "-01")
    long = long.dropna().sort_values("date")
    return pd.DataFrame({"date": long["date"].dt.strftime("%Y-%m-%d"), "value": long["value"].astype(float)})


def _elnino() -> pd.DataFrame:
    from statsmodels.datasets import elnino

    data = elnino.load_pandas().data
    return _wide_months(data, "YEAR", list(data.columns[1:]))


def _unemployment() -> pd.DataFrame:
    path = importlib.resources.files("bokeh_sampledata") / "_data" / "unemployment1948.csv"
    data = pd.read_csv(path)
    return _wide_months(data, "Year", [c for c in data.columns if c not in ("Year", "Annual")])


def _quarters(frame: pd.DataFrame) -> pd.Series:
    return (frame["year"].astype(int).astype(str) + "-" + ((frame["quarter"].astype(int) - 1) * 3 + 1)
            .astype(str).str.zfill(2) + "-01")


def _consumption() -> pd.DataFrame:
    from statsmodels.datasets import macrodata

    data = macrodata.load_pandas().data
    return pd.DataFrame({"date": _quarters(data), "value": data["realcons"], "income": data["realdpi"]})


def _interest() -> pd.DataFrame:
    from statsmodels.datasets import interest_inflation

    data = interest_inflation.load_pandas().data
    return pd.DataFrame({"date": _quarters(data), "value": data["R"]})


def _years(module: str, year: str, column: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        import statsmodels.datasets as datasets

        data = getattr(datasets, module).load_pandas().data
        return pd.DataFrame({"date": data[year].astype(int).astype(str) + "-01-01", "value": data[column]})
    return load


def _sea_temperature() -> pd.DataFrame:
    path = importlib.resources.files("bokeh_sampledata") / "_data" / "sea_surface_temperature.csv.gz"
    data = pd.read_csv(path).drop_duplicates("time (UTC)").tail(4032)  # the last 12 weeks; the file repeats a reading
    return pd.DataFrame({"date": data["time (UTC)"], "value": data["temperature (celsius)"]})


# name: (loader, frequency in words, extra task keys: covariates only; nothing is tuned per series)
SERIES: dict[str, tuple[Callable[[], pd.DataFrame], str, dict]] = {
    "co2_weekly": (_co2, "weekly", {}),
    "elnino_monthly": (_elnino, "monthly", {}),
    "unemployment_monthly": (_unemployment, "monthly", {}),
    "consumption_quarterly": (_consumption, "quarterly", {"covariates": ["income"]}),
    "interest_quarterly": (_interest, "quarterly", {}),
    "sunspots_yearly": (_years("sunspots", "YEAR", "SUNACTIVITY"), "yearly", {}),
    "nile_yearly": (_years("nile", "year", "volume"), "yearly", {}),
    "sea_temperature_halfhourly": (_sea_temperature, "half-hourly", {}),
}


def run_series(root: Path, name: str) -> dict:
    """One series through the stages; its holdout MASE per candidate, baseline and champion."""
    from pipelines.config import load_params
    from pipelines.evaluate.stage import evaluate_task, load_prepared, score_model
    from pipelines.prepare.stage import prepare
    from pipelines.project import metrics_file
    from pipelines.registry import promote
    from pipelines.tasks.settings import task_spec
    from pipelines.train.stage import train_task

    params = load_params(root)
    started = time.monotonic()
    prepare(root, name, params)
    train_task(root, name, params)
    evaluate_task(root, name, params)
    spec = task_spec(root, name, params)
    prepared = load_prepared(root, name, spec)
    decision = promote(root, name, params,
                       lambda uri: float(score_model(spec, prepared, uri).metrics[params.promote.metric_for(
                           spec.kind).name]))
    metrics = json.loads(metrics_file(root, name).read_text())
    recurrent = {n: m["mase"] for n, m in metrics["variants"].items()}
    baselines = {n: m["mase"] for n, m in metrics["baselines"].items()}
    champion = {**recurrent, **baselines}[metrics["chosen"]] if decision.promoted else math.nan
    best_recurrent, best_baseline = min(recurrent.values()), min(baselines.values())
    candidates = {**metrics["variants"], **metrics["baselines"]}
    coverage = {n: {level: m.get(f"coverage_{level}", math.nan) for level in ("80", "95")} for n, m in candidates.items()}
    return {"coverage": coverage, "champion_coverage": coverage[metrics["chosen"]],
            "recurrent_mase": recurrent, "baseline_mase": baselines, "champion": metrics["chosen"],
            "champion_type": metrics["chosen_type"], "champion_mase": champion,
            "best_recurrent_mase": best_recurrent, "best_baseline_mase": best_baseline,
            "ratio_best_recurrent_to_best_baseline": best_recurrent / best_baseline,
            "ratio_champion_to_best_baseline": champion / best_baseline, "seconds": time.monotonic() - started}


def project(tmp: Path, chosen: list[str], extra: dict) -> Path:
    """A throwaway project with one five-line task per series (plus `extra` keys, the same for every
    series), its data ingested and versioned; SEQOPS_ROOT and MLflow point at it."""
    from pipelines.config import load_params
    from pipelines.data import versioning
    from pipelines.data.ingest import ingest
    from tests.conftest import make_project

    tasks = {name: {"kind": "timeseries", "source": f"sources/{name}.csv", "timestamp": "date",
                    "target": "value", **SERIES[name][2], **extra} for name in chosen}
    root = make_project(tmp / "project", tasks)
    os.environ["SEQOPS_ROOT"] = str(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / '.seqops' / 'mlflow.db'}"
    (root / "sources").mkdir()
    for name in chosen:
        SERIES[name][0]().to_csv(root / "sources" / f"{name}.csv", index=False)
        ingest(name, load_params(root), root)
    versioning.track(root)
    return root


def run_options(root: Path, name: str) -> dict:
    """One series' recurrent candidates under the project's prepare options: holdout MASE of each, the
    best, and the one cross-validation chose."""
    from pipelines.config import load_params
    from pipelines.errors import SeqopsError
    from pipelines.evaluate.stage import evaluate_task
    from pipelines.prepare.stage import prepare
    from pipelines.project import metrics_file
    from pipelines.train.stage import train_task

    params, started = load_params(root), time.monotonic()
    try:
        prepare(root, name, params)
    except SeqopsError as e:
        return {"error": str(e)}
    train_task(root, name, params)
    evaluate_task(root, name, params)
    metrics = json.loads(metrics_file(root, name).read_text())
    recurrent = {n: m["mase"] for n, m in metrics["variants"].items()}
    return {"recurrent_mase": recurrent, "best_recurrent_mase": min(recurrent.values()),
            "selection_score": {n: m[metrics["selection"].split()[0]] for n, m in metrics["variants"].items()},
            "cv_chosen": metrics["best_variant"], "cv_chosen_mase": recurrent[metrics["best_variant"]],
            "seconds": time.monotonic() - started}


def main_options() -> None:
    """The --options ablation (module docstring), written after each series."""
    pin_threads()
    chosen = [s for s in os.environ.get("SERIES", ",".join(SERIES)).split(",") if s]
    names = [o for o in os.environ.get("OPTIONS", ",".join(OPTIONS)).split(",") if o]
    previous = json.loads(OPTIONS_RESULTS.read_text()) if OPTIONS_RESULTS.exists() else {}
    results: dict[str, dict] = previous.get("series", {})
    baselines = json.loads(RESULTS.read_text())["series"]
    for option in names:
        with tempfile.TemporaryDirectory() as tmp:
            root = project(Path(tmp), chosen, {"prepare": OPTIONS[option],
                                               "evaluate": {"statistical_baselines": []}})
            for name in chosen:
                r = results.setdefault(name, {})[option] = run_options(root, name)
                print(f"{option:<22} {name:<28} " + (f"best {r['best_recurrent_mase']:.3f}  cv {r['cv_chosen']} "
                      f"{r['cv_chosen_mase']:.3f}  {r['seconds']:.0f} s" if "error" not in r else r["error"]),
                      flush=True)
                write_options(results, baselines)


def write_options(results: dict, baselines: dict) -> None:
    """bench/results/quality_options.json: per series and option the recurrent MASEs; per option the
    geometric means against the reference option and its wins over the best baseline of quality.json."""
    reference = next(iter(OPTIONS))
    summary = {}
    for option in OPTIONS:
        rows = {s: r[option] for s, r in results.items() if option in r and "error" not in r[option]
                and reference in r and "error" not in r[reference]}
        if not rows:
            continue
        summary[option] = {
            "series": len(rows), "not_applicable": sorted(s for s, r in results.items()
                                                          if option in r and "error" in r[option]),
            **{f"geometric_mean_ratio_{key}_to_{reference}": float(np.exp(np.mean(
                [np.log(r[f"{key}_mase"] / results[s][reference][f"{key}_mase"]) for s, r in rows.items()])))
               for key in ("best_recurrent", "cv_chosen")},
            "recurrent_wins_over_best_baseline": sum(
                r["best_recurrent_mase"] < baselines[s]["best_baseline_mase"] for s, r in rows.items()),
            "geometric_mean_ratio_best_recurrent_to_best_baseline": float(np.exp(np.mean(
                [np.log(r["best_recurrent_mase"] / baselines[s]["best_baseline_mase"]) for s, r in rows.items()]))),
        }
    OPTIONS_RESULTS.write_text(json.dumps({"machine": machine(), "threads": 1, "reference": reference,
                                           "options": OPTIONS, "summary": summary, "series": results},
                                          indent=2, sort_keys=True))


def main() -> None:
    pin_threads()
    chosen = [s for s in os.environ.get("SERIES", ",".join(SERIES)).split(",") if s]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = project(Path(tmp), chosen, {})
        for name in chosen:
            results[name] = {"frequency": SERIES[name][1], **run_series(root, name)}
            r = results[name]
            print(f"{name:<28} best recurrent {r['best_recurrent_mase']:.3f}  best baseline "
                  f"{r['best_baseline_mase']:.3f}  ratio {r['ratio_best_recurrent_to_best_baseline']:.3f}  "
                  f"champion {r['champion']} ({r['champion_type']})  {r['seconds']:.0f} s", flush=True)
            write(results)


def write(results: dict) -> None:
    """bench/results/quality.json with the summary over the series run so far (written after each)."""
    ratios = [r["ratio_best_recurrent_to_best_baseline"] for r in results.values()]
    summary = {"series": len(results), "recurrent_wins": sum(x < 1 for x in ratios),
               "geometric_mean_ratio": float(np.exp(np.mean(np.log(ratios)))),
               "champion_never_worse_than_best_baseline": all(
                   r["ratio_champion_to_best_baseline"] <= 1 + 1e-9 for r in results.values()),
               # issue 11: mean holdout coverage of every candidate's 80 % and 95 % intervals (targets 80 +/- 7, 95 +/- 4)
               **{f"mean_coverage_{level}": float(np.nanmean([c[level] for r in results.values()
                                                              for c in r["coverage"].values()])) for level in ("80", "95")}}
    print(json.dumps(summary), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "threads": 1, "summary": summary, "series": results},
                                  indent=2, sort_keys=True))

if __name__ == "__main__":
    main_options() if "--options" in sys.argv[1:] else main()
