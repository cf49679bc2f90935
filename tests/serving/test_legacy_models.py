"""Models registered before the stage folders existed still load and answer.

tests/fixtures/legacy-layout-models.tar.gz holds a forecast and a sentiment pyfunc logged at commit
030bf1a (flat pipelines/ layout): their python_model.pkl names `pipelines.serving.ForecastModel`
and `pipelines.serving.SentimentModel`, and their code/ folder carries the old modules. They must
load both in a process that already imported today's `pipelines` (the gateway, evaluation) and in
a fresh one (`mlflow models serve`, a user's script), where MLflow puts their own code first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import REPO

ARCHIVE = REPO / "tests" / "fixtures" / "legacy-layout-models.tar.gz"
HISTORY = [330.0 + 0.05 * i for i in range(60)]


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("legacy")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


def test_legacy_models_pickle_the_old_module_names(legacy: Path) -> None:
    assert b"pipelines.serving" in (legacy / "forecast" / "python_model.pkl").read_bytes()
    assert (legacy / "forecast" / "code" / "pipelines" / "serving.py").is_file()


def test_legacy_forecast_loads_beside_todays_pipelines(legacy: Path) -> None:
    import pipelines.serving  # noqa: F401  (today's package is imported first, as in the gateway)

    model = mlflow.pyfunc.load_model(str(legacy / "forecast"))
    out = model.predict(pd.DataFrame({"series_id": ["a"], "history": [HISTORY]}), params={"horizon": 5})
    forecast = list(out["forecast"][0])
    assert len(forecast) == 5 and all(300 < v < 400 for v in forecast)


def test_legacy_sentiment_loads_beside_todays_pipelines(legacy: Path) -> None:
    model = mlflow.pyfunc.load_model(str(legacy / "sentiment"))
    out = model.predict(pd.DataFrame({"text": ["what a lovely flight", "my bag is lost"]}))
    assert set(out["label"]) <= {"negative", "neutral", "positive"}
    assert all(abs(sum(scores.values()) - 1.0) < 1e-5 for scores in out["scores"])


@pytest.mark.parametrize("name", ["forecast", "sentiment"])
def test_legacy_models_load_in_a_fresh_process(legacy: Path, name: str) -> None:
    """A fresh interpreter, as `mlflow models serve` or a user's script: nothing of pipelines imported first."""
    payload = ({"series_id": ["a"], "history": [HISTORY]} if name == "forecast" else {"text": ["so bad"]})
    script = ("import json, sys, mlflow, pandas as pd\n"
              "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "print(json.dumps(m.predict(pd.DataFrame(json.loads(sys.argv[2]))).to_dict('records')))\n")
    done = subprocess.run([sys.executable, "-c", script, str(legacy / name), json.dumps(payload)],
                          capture_output=True, text=True, timeout=120, cwd=legacy)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 1 and ("forecast" in rows[0] or "label" in rows[0])
