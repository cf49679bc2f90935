"""`seqops data add`: new data is validated, merged, versioned with DVC and committed, or changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect.logging import disable_run_logger
from typer.testing import CliRunner

from pipelines.config import load_params
from pipelines.data import ingest, versioning
from pipelines.data.add import add_data
from pipelines.data.validate import InvalidDataError
from pipelines.project import raw_path
from tests.conftest import TINY_FORECAST, git, make_project

COMMIT = ("-c", "user.email=t@example.invalid", "-c", "user.name=t")


def versioned(root: Path) -> Path:
    """The project after its first retrain's data step: raw data ingested, data.dvc committed."""
    params = load_params(root)
    for task in params.tasks:
        ingest.ingest(task, params, root)
    versioning.track(root)
    git(root, *COMMIT, "add", "data.dvc")
    git(root, *COMMIT, "commit", "-qm", "data")
    git(root, "config", "user.email", "t@example.invalid")
    git(root, "config", "user.name", "t")
    return root


def state(root: Path, task: str) -> tuple[bytes, str, str]:
    """Everything a rejected file must leave as it was: raw bytes, data.dvc, HEAD."""
    return (raw_path(root, task).read_bytes(), (root / "data.dvc").read_text(),
            git(root, "rev-parse", "HEAD").strip())


def weeks_after(root: Path, count: int, offset: int = 1) -> pd.DataFrame:
    raw = pd.read_parquet(raw_path(root, "forecast"))
    start = raw["timestamp"].max() + pd.Timedelta(weeks=offset)
    return pd.DataFrame({"date": pd.date_range(start, periods=count, freq="7D").strftime("%Y-%m-%d"),
                         "co2": [372.0 + 0.01 * i for i in range(count)]})


@pytest.fixture
def forecast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = versioned(make_project(tmp_path / "project", {"forecast": TINY_FORECAST}))
    monkeypatch.setenv("SEQOPS_ROOT", str(root))
    return root


def test_appended_weeks_become_a_new_pushed_and_committed_data_version(forecast: Path, tmp_path: Path) -> None:
    before = versioning.data_version(forecast)
    rows_before = len(pd.read_parquet(raw_path(forecast, "forecast")))
    file = tmp_path / "new.csv"
    weeks_after(forecast, 8).to_csv(file, index=False)

    added = add_data(forecast, "forecast", file, load_params(forecast))

    raw = pd.read_parquet(raw_path(forecast, "forecast"))
    assert len(raw) == rows_before + 8 and raw["timestamp"].is_monotonic_increasing
    assert added.changed and added.version.md5 != before.md5
    assert yaml.safe_load((forecast / "data.dvc").read_text())["outs"][0]["md5"] == added.version.md5
    assert git(forecast, "log", "-1", "--format=%s").strip() == (
        f"data(forecast): append new.csv (8 rows) -> data version {added.version.md5}")
    assert git(forecast, "show", "--name-only", "--format=", "HEAD").split() == ["data.dvc"]
    assert added.commit == added.version.git_sha == git(forecast, "rev-parse", "HEAD").strip()
    remote = forecast / ".seqops" / "dvc-remote" / "files" / "md5"
    assert (remote / added.version.md5[:2] / added.version.md5[2:]).is_file()


@pytest.mark.parametrize("make_file, message", [
    (lambda root: weeks_after(root, 4, offset=-1), "is not after the last timestamp"),
    (lambda root: weeks_after(root, 4).assign(date=lambda f: f["date"] + "T03:00"),
     r"after appending, series 'main': row 1 \(.*\) is not on the inferred frequency .W-SAT."),
    (lambda root: weeks_after(root, 4).rename(columns={"co2": "ppm"}), "missing column 'co2'"),
    (lambda root: weeks_after(root, 4).assign(co2=["372", "x", "373", "374"]), "row 2: 'x' is not a number"),
])
def test_a_rejected_file_changes_nothing(forecast: Path, tmp_path: Path, make_file, message: str) -> None:
    file = tmp_path / "bad.csv"
    make_file(forecast).to_csv(file, index=False)
    unchanged = state(forecast, "forecast")

    with pytest.raises(InvalidDataError, match=message):
        add_data(forecast, "forecast", file, load_params(forecast))

    assert state(forecast, "forecast") == unchanged
    assert git(forecast, "status", "--porcelain", "--", "data.dvc") == ""


def test_replace_makes_the_file_the_tasks_data(forecast: Path, tmp_path: Path) -> None:
    file = tmp_path / "fresh.parquet"
    frame = pd.DataFrame({"date": pd.date_range("2020-01-05", periods=300, freq="7D"),
                          "co2": [410.0 + 0.04 * i for i in range(300)]})
    frame.to_parquet(file, index=False)

    added = add_data(forecast, "forecast", file, load_params(forecast), mode="replace")

    raw = pd.read_parquet(raw_path(forecast, "forecast"))
    assert len(raw) == 300 and raw["timestamp"].min() == pd.Timestamp("2020-01-05")
    assert added.rows_before == 2284 and added.rows_after == 300 and added.commit


def test_a_series_too_short_for_prepare_is_refused_before_anything_is_written(forecast: Path,
                                                                              tmp_path: Path) -> None:
    file = tmp_path / "short.csv"
    pd.DataFrame({"date": pd.date_range("2020-01-04", periods=60, freq="7D").strftime("%Y-%m-%d"),
                  "co2": [410.0 + 0.04 * i for i in range(60)]}).to_csv(file, index=False)
    unchanged = state(forecast, "forecast")

    with pytest.raises(InvalidDataError, match=r"forecast with short.csv as its data: series .* has 60 steps; "
                                                r"prepare needs at least 157"):
        add_data(forecast, "forecast", file, load_params(forecast), mode="replace")

    assert state(forecast, "forecast") == unchanged


def test_adding_the_same_data_again_is_no_new_version(forecast: Path, tmp_path: Path) -> None:
    file = tmp_path / "same.parquet"
    pd.read_parquet(raw_path(forecast, "forecast")).rename(
        columns={"timestamp": "date"}).drop(columns="series_id").to_parquet(file, index=False)
    head = git(forecast, "rev-parse", "HEAD").strip()

    added = add_data(forecast, "forecast", file, load_params(forecast), mode="replace")

    assert not added.changed and added.commit is None
    assert git(forecast, "rev-parse", "HEAD").strip() == head


TEXT_TASK = {"kind": "text", "source": "seed.csv", "labels": ["negative", "positive"], "duplicates": "drop",
             "variants": [{"name": "gru", "cell": "gru", "hidden_size": 8}]}


def test_appended_texts_follow_the_tasks_duplicate_policy(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    pd.DataFrame({"text": ["good flight", "bad food", "lovely crew", "rude staff", "late again", "nice view"],
                  "label": ["positive", "negative", "positive", "negative", "negative", "positive"]}
                 ).to_csv(root / "seed.csv", index=False)
    root = versioned(make_project(root, {"reviews": TEXT_TASK}))
    file = tmp_path / "more.csv"
    pd.DataFrame({"text": ["good  flight", "lost bag", "bad food", "lost bag", " "],
                  "label": ["positive", "negative", "positive", "negative", "positive"]}).to_csv(file, index=False)

    added = add_data(root, "reviews", file, load_params(root))

    raw = pd.read_parquet(raw_path(root, "reviews"))
    # "good  flight" repeats an existing text (dropped); "bad food" now carries two labels (all dropped); the
    # file's own repeat of "lost bag" and its blank text are dropped by validation, and counted with the rest
    assert raw.to_dict("records") == [{"text": "good flight", "label": "positive"},
                                      {"text": "lovely crew", "label": "positive"},
                                      {"text": "rude staff", "label": "negative"},
                                      {"text": "late again", "label": "negative"},
                                      {"text": "nice view", "label": "positive"},
                                      {"text": "lost bag", "label": "negative"}]
    assert added.dropped == {"dropped_duplicates": 2, "dropped_conflicting": 2, "dropped_empty": 1}


def test_an_appended_file_that_breaks_the_task_names_the_users_columns(tmp_path: Path) -> None:
    """The merge re-validates the old rows with the file's under the raw table's own names ('text', 'label'):
    a case-variant label across the two was reported in a column the user does not have."""
    root = tmp_path / "project"
    root.mkdir()
    pd.DataFrame({"review": ["good flight", "bad food", "lovely crew"],
                  "stars": ["good", "bad", "good"]}).to_csv(root / "seed.csv", index=False)
    task = {"kind": "text", "source": "seed.csv", "text": "review", "label": "stars",
            "variants": [{"name": "gru", "cell": "gru", "hidden_size": 8}]}
    root = versioned(make_project(root, {"reviews": task}))
    file = tmp_path / "more.csv"
    pd.DataFrame({"review": ["lost bag"], "stars": ["Good"]}).to_csv(file, index=False)

    with pytest.raises(InvalidDataError, match=r"column 'stars' has labels that differ only in case"):
        add_data(root, "reviews", file, load_params(root))


def test_an_added_label_too_rare_to_split_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Accepted and committed, it failed the next run's prepare: every label needs a text in each split."""
    root = tmp_path / "project"
    root.mkdir()
    pd.DataFrame({"text": [f"text {i}" for i in range(8)],
                  "label": ["positive", "negative"] * 4}).to_csv(root / "seed.csv", index=False)
    root = versioned(make_project(root, {"reviews": {**TEXT_TASK, "labels": None}}))
    before = raw_path(root, "reviews").read_bytes()
    file = tmp_path / "newlabel.csv"
    pd.DataFrame({"text": ["a superb one"], "label": ["superb"]}).to_csv(file, index=False)

    with pytest.raises(InvalidDataError, match=r"reviews with newlabel.csv added: label counts \{'negative': 4, "
                                               r"'positive': 4, 'superb': 1\}: every label needs at least 3 texts.*"
                                               r"rare labels \(superb\)"):
        add_data(root, "reviews", file, load_params(root))
    assert raw_path(root, "reviews").read_bytes() == before


def test_cli_rejects_a_bad_file_with_one_line_naming_the_row(forecast: Path, tmp_path: Path) -> None:
    from pipelines.cli import app

    file = tmp_path / "old.csv"
    weeks_after(forecast, 2, offset=-3).to_csv(file, index=False)
    unchanged = state(forecast, "forecast")

    result = CliRunner().invoke(app, ["data", "add", "forecast", str(file)])

    assert result.exit_code == 2
    assert "row 1" in result.output and "is not after the last timestamp" in result.output
    assert "Traceback" not in result.output
    assert state(forecast, "forecast") == unchanged


def test_cli_refuses_a_missing_file_as_a_usage_error(forecast: Path, tmp_path: Path) -> None:
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["data", "add", "forecast", str(tmp_path / "missing.csv")])

    assert result.exit_code == 2
    assert "does not exist" in result.output and "a bug in seqops" not in result.output


def test_cli_reports_the_new_version_and_commit(forecast: Path, tmp_path: Path) -> None:
    from pipelines.cli import app

    file = tmp_path / "new.csv"
    weeks_after(forecast, 3).to_csv(file, index=False)

    result = CliRunner().invoke(app, ["data", "add", "forecast", str(file), "--mode", "append"])

    assert result.exit_code == 0, result.output
    md5 = versioning.data_version(forecast).md5
    assert f"data version {md5}" in result.output
    assert f"committed data.dvc as {git(forecast, 'rev-parse', 'HEAD').strip()[:12]}" in result.output


def test_dvc_remote_url_redirects_the_push_without_touching_the_committed_config(
        forecast: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    committed = (forecast / ".dvc" / "config").read_text()
    elsewhere = tmp_path / "shared-remote"
    monkeypatch.setenv("DVC_REMOTE_URL", str(elsewhere))
    monkeypatch.setenv("DVC_S3_ENDPOINT_URL", "")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    file = tmp_path / "new.csv"
    weeks_after(forecast, 2).to_csv(file, index=False)

    added = add_data(forecast, "forecast", file, load_params(forecast))

    md5 = added.version.md5
    assert (elsewhere / "files" / "md5" / md5[:2] / md5[2:]).is_file()
    assert versioning.default_remote(forecast) == (str(elsewhere), None)
    assert (forecast / ".dvc" / "config").read_text() == committed
    assert git(forecast, "status", "--porcelain", "--", ".dvc").strip() == ""


def test_cli_says_which_derived_settings_a_short_new_series_changes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A forecast task's derived horizon and splits follow its shortest series: one short new series moves
    them for every series, with nothing changed in params.yaml, so `data add` says so."""
    from pipelines.cli import app

    root = tmp_path / "project"
    root.mkdir()
    days = pd.date_range("2020-01-01", periods=400, freq="D").strftime("%Y-%m-%d")
    pd.DataFrame({"date": [*days, *days], "store": ["a"] * 400 + ["b"] * 400,
                  "sales": [10.0 + (i % 7) for i in range(800)]}).to_csv(root / "sales.csv", index=False)
    task = {"kind": "timeseries", "source": "sales.csv", "timestamp": "date", "target": "sales", "series_id": "store"}
    root = versioned(make_project(root, {"sales": task}))
    monkeypatch.setenv("SEQOPS_ROOT", str(root))
    file = tmp_path / "new-store.csv"
    pd.DataFrame({"date": days[:100], "store": "c", "sales": [12.0 + (i % 7) for i in range(100)]}).to_csv(
        file, index=False)

    result = CliRunner().invoke(app, ["data", "add", "sales", str(file)])

    assert result.exit_code == 0, result.output
    assert ("the next prepare derives horizon 10 (was 14), evaluate.horizon 10 (was 14), prepare.holdout 20 (was 28), "
            "prepare.validation 20 (was 28)") in result.output, result.output


def test_a_workspace_without_the_raw_data_gets_the_recorded_version_back_not_a_fresh_ingest(
        forecast: Path, tmp_path: Path) -> None:
    """A fresh clone or a new worker volume has data.dvc but no data/: the run ingested the sources again and
    versioned data without the rows `seqops data add` had added (they survived only in git history)."""
    from pipelines.orchestration.flows import version_data

    file = tmp_path / "new.csv"
    weeks_after(forecast, 8).to_csv(file, index=False)
    added = add_data(forecast, "forecast", file, load_params(forecast))
    raw = raw_path(forecast, "forecast").read_bytes()
    shutil.rmtree(forecast / "data")
    shutil.rmtree(forecast / ".dvc" / "cache")  # a new machine: only the remote holds the bytes

    with disable_run_logger():
        version = version_data.fn(str(forecast), ["forecast"])

    assert raw_path(forecast, "forecast").read_bytes() == raw  # the added weeks included
    assert version["md5"] == added.version.md5 and git(forecast, "status", "--porcelain", "data.dvc") == ""


def test_without_a_remote_copy_the_sources_are_ingested_as_before(forecast: Path) -> None:
    from pipelines.orchestration.flows import version_data

    before = raw_path(forecast, "forecast").read_bytes()
    shutil.rmtree(forecast / "data")
    shutil.rmtree(forecast / ".dvc" / "cache")
    shutil.rmtree(forecast / ".seqops" / "dvc-remote", ignore_errors=True)  # nothing anywhere to pull

    with disable_run_logger():
        version_data.fn(str(forecast), ["forecast"])

    assert raw_path(forecast, "forecast").read_bytes() == before  # the built-in source ingested again


def test_an_add_interrupted_after_writing_is_finished_by_its_retry(forecast: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between writing the rows and `dvc add`, the add left them unversioned and uncommitted, and its retry
    was refused: the rows were no longer after the raw data's end."""
    file = tmp_path / "night.csv"
    weeks_after(forecast, 4).to_csv(file, index=False)
    head = git(forecast, "rev-parse", "HEAD").strip()

    def killed(root: Path, target: str = "data") -> None:
        raise KeyboardInterrupt  # the moment a SIGKILL or Ctrl-C can land: rows written, not versioned
    with monkeypatch.context() as patched:
        patched.setattr(versioning, "track", killed)
        with pytest.raises(KeyboardInterrupt):
            add_data(forecast, "forecast", file, load_params(forecast))
    written = raw_path(forecast, "forecast").read_bytes()
    assert git(forecast, "rev-parse", "HEAD").strip() == head  # nothing versioned or committed

    retried = add_data(forecast, "forecast", file, load_params(forecast))

    assert retried.resumed and retried.commit == git(forecast, "rev-parse", "HEAD").strip() != head
    assert raw_path(forecast, "forecast").read_bytes() == written  # the rows once, not twice
    assert yaml.safe_load((forecast / "data.dvc").read_text())["outs"][0]["md5"] == retried.version.md5
    again = add_data(forecast, "forecast", file, load_params(forecast))
    assert again.resumed and not again.changed and again.commit is None  # done: nothing left to do


def test_an_append_that_leaves_steps_without_rows_says_which(forecast: Path, tmp_path: Path) -> None:
    """A lost night's file: the next file was appended with a week missing, filled at prepare without a word,
    and append could never add that week later."""
    file = tmp_path / "late.csv"
    weeks_after(forecast, 6).iloc[2:].to_csv(file, index=False)  # the first two weeks after the end are missing
    last = pd.read_parquet(raw_path(forecast, "forecast"))["timestamp"].max()

    added = add_data(forecast, "forecast", file, load_params(forecast))

    assert added.gaps == [f"2 steps without a row after the raw data's last one ({last}), from "
                          f"{last + pd.Timedelta(weeks=1)} to {last + pd.Timedelta(weeks=2)}: prepare fills them "
                          f"(interpolate); append cannot add them later, so add those rows now if you have them"]
    file = tmp_path / "next.csv"
    weeks_after(forecast, 1).to_csv(file, index=False)
    assert add_data(forecast, "forecast", file, load_params(forecast)).gaps == []  # right after the end: none
    from pipelines.cli import app

    file = tmp_path / "gap.csv"
    weeks_after(forecast, 4).iloc[3:].to_csv(file, index=False)
    result = CliRunner().invoke(app, ["data", "add", "forecast", str(file)])
    assert result.exit_code == 0 and "  warning: 3 steps without a row after the raw data's last one" in result.output
