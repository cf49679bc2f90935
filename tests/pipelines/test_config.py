"""params.yaml is validated on load, and errors name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, load_params

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_project_params_are_valid() -> None:
    params = load_params(REPO)
    assert "forecast" in params.tasks


def test_unknown_cell_names_the_key_and_the_allowed_values(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r["tasks"]["forecast"]["variants"][0].update(cell="transformer"))
    with pytest.raises(ConfigError, match=r"tasks\.forecast\.variants\.0\.cell: Input should be 'rnn', 'lstm' or 'gru'"):
        load_params(path)


def test_a_task_without_kind_is_told_the_key_and_its_values(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r["tasks"].update(reviews={"source": "reviews.csv"}))
    with pytest.raises(ConfigError, match=r"tasks\.reviews: missing key 'kind'.*\['timeseries', 'text'\]"):
        load_params(path)


def test_misspelled_key_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r["clipping"].update(max_nrom=1.0))
    with pytest.raises(ConfigError, match=r"clipping\.max_nrom: Extra inputs are not permitted"):
        load_params(path)


def test_k2_below_k1_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r["tasks"]["forecast"]["variants"][0].update(k1=50, k2=10))
    with pytest.raises(ConfigError, match=r"k2 \(10\) must be >= k1 \(50\)"):
        load_params(path)


def test_override_sets_a_nested_key() -> None:
    params = load_params(REPO, overrides=["tasks.forecast.variants.0.hidden_size=7", "promote.min_improvement=0.1"])
    assert params.task("forecast").variants[0].hidden_size == 7
    assert params.promote.min_improvement == 0.1


def test_override_of_unknown_section_names_it() -> None:
    with pytest.raises(ConfigError, match="'nope' is not a section"):
        load_params(REPO, overrides=["nope.x=1"])
    with pytest.raises(ConfigError, match="'tasks.weather' is not a section"):
        load_params(REPO, overrides=["tasks.weather.serving.max_history=1"])


def test_override_of_a_section_left_at_its_defaults_creates_it_and_a_wrong_key_names_the_override(
        tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"tasks": {"sensor": {"kind": "timeseries", "source": "sensor.csv", "target": "y"}}}))
    params = load_params(tmp_path, overrides=["tasks.sensor.serving.max_history=20000"])
    assert params.task("sensor").serving.max_history == 20000
    with pytest.raises(ConfigError, match=r"params.yaml with --set tasks.sensor.serving.nope=1 is invalid:\n"
                                          r"  tasks.sensor.serving.nope: Extra inputs"):
        load_params(tmp_path, overrides=["tasks.sensor.serving.nope=1"])


def test_unknown_task_lists_the_defined_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'weather'.*forecast"):
        load_params(REPO).task("weather")


def test_whole_number_labels_in_params_are_the_strings_ingest_reads(tmp_path: Path) -> None:
    reviews = {"kind": "text", "source": "stars.csv", "text": "body", "label": "rating"}
    path = _write(tmp_path, lambda r: r["tasks"].update(stars={**reviews, "labels": [1, 2, 3, 4, 5]}))
    assert load_params(path).tasks["stars"].labels == ["1", "2", "3", "4", "5"]
    path = _write(tmp_path, lambda r: r["tasks"].update(stars={**reviews, "labels": [True, False]}))
    with pytest.raises(ConfigError, match=r"tasks\.stars\.labels\.0: Input should be a valid string"):
        load_params(path)


def test_text_and_label_naming_one_column_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: r["tasks"].update(
        stars={"kind": "text", "source": "stars.csv", "text": "body", "label": "body"}))
    with pytest.raises(ConfigError, match=r"text and label both name column 'body': the labels need a column of"):
        load_params(path)
