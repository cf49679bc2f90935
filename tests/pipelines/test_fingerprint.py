"""The source's fingerprint: a moved or edited source is re-ingested (and says why); rows added with
`seqops data add` are never dropped by it silently."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_params
from pipelines.data import versioning
from pipelines.data.add import add_data
from pipelines.data.fingerprint import SourceChangedError, fingerprint, read_record, reingest_reason
from pipelines.data.ingest import ingest
from pipelines.data.validate import InvalidDataError
from pipelines.project import raw_path
from pipelines.tasks import kind_for
from tests.conftest import git, make_project

COMMIT = ("-c", "user.email=t@example.invalid", "-c", "user.name=t")
TASK = {"kind": "timeseries", "source": "sales.csv", "timestamp": "month", "target": "sales"}


def months(start: str, count: int, level: float = 100.0) -> pd.DataFrame:
    stamps = pd.date_range(start, periods=count, freq="MS")
    return pd.DataFrame({"month": stamps.strftime("%Y-%m-%d"), "sales": level + np.arange(count, dtype=float)})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git+DVC project with a CSV-sourced monthly task, ingested and its data.dvc committed."""
    root = make_project(tmp_path / "project", {"sales": TASK})
    months("2000-01-01", 120).to_csv(root / "sales.csv", index=False)
    ingest("sales", load_params(root), root)
    versioning.track(root)
    git(root, *COMMIT, "add", "data.dvc")
    git(root, *COMMIT, "commit", "-qm", "data")
    git(root, "config", "user.email", "t@example.invalid")
    git(root, "config", "user.name", "t")
    monkeypatch.setenv("SEQOPS_ROOT", str(root))
    return root


def rows(root: Path) -> int:
    return len(pd.read_parquet(raw_path(root, "sales")))


def read_by(root: Path, **changes: object) -> dict:
    """The settings the task reads its source by (`TaskKind.read_settings`), with `changes`."""
    return {**kind_for(load_params(root).task("sales")).read_settings(), **changes}


def test_ingest_records_the_source_path_and_content_hash_tracked_with_the_data(project: Path) -> None:
    record = read_record(project, "sales")
    assert record["source"] == "sales.csv" and len(record["sha256"]) == 64 and record["added"] == []
    assert reingest_reason(project, "sales", "sales.csv", read_by(project)) is None
    assert (project / "data" / "sales" / "source.json").is_file()


def test_changed_bytes_are_re_ingested_and_the_reason_says_so(project: Path) -> None:
    months("2000-01-01", 130).to_csv(project / "sales.csv", index=False)
    assert reingest_reason(project, "sales", "sales.csv", read_by(project)) == "sales.csv changed since it was ingested"
    ingest("sales", load_params(project), project)
    assert rows(project) == 130 and reingest_reason(project, "sales", "sales.csv", read_by(project)) is None


def test_a_source_pointing_elsewhere_is_re_ingested(project: Path) -> None:
    months("2005-01-01", 90).to_csv(project / "other.csv", index=False)
    reason = reingest_reason(project, "sales", "other.csv", read_by(project))
    assert reason == "source changed from 'sales.csv' to 'other.csv'"


def test_added_rows_are_never_dropped_silently_by_a_changed_source(project: Path, tmp_path: Path) -> None:
    later = tmp_path / "later.csv"
    months("2010-01-01", 6, level=300.0).to_csv(later, index=False)
    add_data(project, "sales", later, load_params(project))
    assert rows(project) == 126 and read_record(project, "sales")["added"][0]["rows"] == 6
    assert reingest_reason(project, "sales", "sales.csv", read_by(project)) is None  # the source itself did not change

    months("2000-01-01", 125).to_csv(project / "sales.csv", index=False)
    with pytest.raises(SourceChangedError, match=r"later\.csv \(append, 6 rows\).*--mode replace"):
        reingest_reason(project, "sales", "sales.csv", read_by(project))
    assert rows(project) == 126

    add_data(project, "sales", project / "sales.csv", load_params(project), mode="replace")
    assert rows(project) == 125 and read_record(project, "sales")["added"] == []
    assert reingest_reason(project, "sales", "sales.csv", read_by(project)) is None


def test_a_built_in_source_is_fingerprinted_by_its_package_version(tmp_path: Path) -> None:
    assert fingerprint("builtin:co2", tmp_path, {"target": "co2"}) == {
        "source": "builtin:co2", "package": "statsmodels", "version": version("statsmodels"),
        "columns": {"target": "co2"}}


def test_a_task_reading_another_column_is_re_ingested_and_the_reason_names_it(project: Path) -> None:
    """Pointing `target:` (a text task's `text:` or `label:`) at another column of the same file used to keep
    the raw data read by the old one and train on it."""
    reason = reingest_reason(project, "sales", "sales.csv", read_by(project, target="units"))
    assert reason == "the settings it is read by changed (target 'sales' -> 'units')"
    params = load_params(project)
    params.tasks["sales"] = params.tasks["sales"].model_copy(update={"target": "units"})
    with pytest.raises(InvalidDataError, match=r"missing column 'units'"):
        ingest("sales", params, project)
    assert rows(project) == 120  # the raw data read by the old settings stays until a source reads


def test_a_record_from_before_settings_were_recorded_takes_today_s(project: Path) -> None:
    path = project / "data" / "sales" / "source.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "columns"}))
    assert reingest_reason(project, "sales", "sales.csv", read_by(project)) is None
    assert read_record(project, "sales")["columns"] == read_by(project)
