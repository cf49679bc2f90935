"""A user's own monthly series as a five-line task, from a fresh project: `seqops run --task NAME` derives
every setting, trains, evaluates and registers a champion that answers the usual REST request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from statsmodels.datasets import elnino

from tests.conftest import make_project

FIVE_LINES = {"kind": "timeseries", "source": "elnino.csv", "timestamp": "month", "target": "sst"}


def elnino_csv(path: Path) -> pd.DataFrame:
    """Monthly sea surface temperature (statsmodels' El Nino table, one row a year) as month, sst rows."""
    wide = elnino.load_pandas().data
    long = wide.melt(id_vars="YEAR", var_name="name", value_name="sst")
    long["month"] = pd.to_datetime(long["YEAR"].astype(int).astype(str) + "-" + long["name"], format="%Y-%b")
    frame = long.sort_values("month")[["month", "sst"]]
    frame.assign(month=frame["month"].dt.strftime("%Y-%m-%d")).to_csv(path, index=False)
    return frame


@pytest.mark.slow
def test_a_five_line_monthly_task_runs_and_serves_its_champion(tmp_path: Path) -> None:
    root = make_project(tmp_path / "fresh", {"elnino": FIVE_LINES})
    series = elnino_csv(root / "elnino.csv")
    uri = f"sqlite:///{root / '.seqops' / 'mlflow.db'}"
    env = {**os.environ, "SEQOPS_ROOT": str(root), "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    seqops = Path(sys.executable).parent / "seqops"
    done = subprocess.run([str(seqops), "run", "--task", "elnino", "--no-serve-check"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    settings = json.loads((root / "prepared" / "elnino" / "settings.json").read_text())
    assert settings["derived"]["freq"] == "MS" and settings["derived"]["prepare.season"] == 12
    horizon = settings["task"]["serving"]["default_horizon"]

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/seqops-elnino@champion")
    history = series["sst"].tolist()[-60:]
    out = model.predict(pd.DataFrame({"history": [history]}), params={"horizon": horizon})
    forecast = np.asarray(out["forecast"][0])
    assert len(forecast) == horizon and np.isfinite(forecast).all()
    assert 15.0 < forecast.mean() < 35.0  # degrees Celsius, where the series lives
