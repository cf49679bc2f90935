"""Ingest rejects bad tables with the column and first bad row named, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_params
from pipelines.data.ingest import ingest
from pipelines.data.sources import SourceError, read_table
from pipelines.data.validate import InvalidDataError, fill_gaps, validate_timeseries
from pipelines.project import raw_path

GOOD = pd.DataFrame({"date": pd.date_range("2020-01-04", periods=6, freq="W-SAT").astype(str),
                     "co2": [1.0, 2.0, None, 4.0, 5.0, 6.0]})


def _validate(frame: pd.DataFrame) -> pd.DataFrame:
    return validate_timeseries(frame, timestamp="date", target="co2", covariates=[], series_id=None, name="f.csv")


def test_missing_target_column_is_named() -> None:
    with pytest.raises(InvalidDataError, match="missing column 'co2'"):
        _validate(GOOD.rename(columns={"co2": "ppm"}))


def test_non_numeric_value_names_column_and_first_bad_row() -> None:
    bad = GOOD.astype({"co2": object})
    bad.loc[3, "co2"] = "n/a"
    bad.loc[5, "co2"] = "x"
    with pytest.raises(InvalidDataError, match=r"column 'co2' row 4: 'n/a' is not a number"):
        _validate(bad)


def test_unsorted_timestamps_name_first_bad_row() -> None:
    bad = GOOD.copy()
    bad.loc[[2, 3], "date"] = bad.loc[[3, 2], "date"].to_numpy()
    with pytest.raises(InvalidDataError, match=r"column 'date' row 4: timestamps are not sorted"):
        _validate(bad)


def test_duplicate_timestamps_name_first_bad_row() -> None:
    bad = GOOD.copy()
    bad.loc[2, "date"] = bad.loc[1, "date"]
    with pytest.raises(InvalidDataError, match=r"column 'date' row 3: duplicate timestamp"):
        _validate(bad)


def test_unparseable_timestamp_is_named() -> None:
    bad = GOOD.copy()
    bad.loc[1, "date"] = "not a date"
    with pytest.raises(InvalidDataError, match=r"column 'date' row 2: 'not a date' is not a timestamp"):
        _validate(bad)


def test_a_day_first_date_after_month_first_readings_says_so() -> None:
    """pandas reads a column month first when its first value allows it; `13/01/2020` was only "not a timestamp"."""
    days = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=20, freq="D").strftime("%d/%m/%Y"),
                         "co2": np.arange(20.0)})
    with pytest.raises(InvalidDataError, match=r"row 13: '13/01/2020' is not a timestamp: read day first it is 13 "
                                               r"January 2020, .* write the dates as YYYY-MM-DD \(2020-01-13\)"):
        _validate(days)
    with pytest.raises(InvalidDataError, match=r"'2020-13-45' is not a timestamp$"):
        _validate(GOOD.assign(date=GOOD["date"].where(GOOD.index != 2, "2020-13-45")))


@pytest.mark.parametrize("row, stamp, where", [(30, "2099-12-31", "after"), (1, "1900-01-01", "before")])
def test_a_placeholder_date_at_an_end_is_named(row: int, stamp: str, where: str) -> None:
    """An open end written as 2099-12-31 was blamed on misread dates or a wrong `freq:`, the row unnamed."""
    dates = pd.date_range("2020-01-01", periods=30, freq="D").strftime("%Y-%m-%d").tolist()
    dates[row - 1] = stamp
    frame = _validate(pd.DataFrame({"date": dates, "co2": np.arange(30.0)}))
    with pytest.raises(InvalidDataError, match=rf"row {row} \({stamp} 00:00:00\) lies far {where} the others"):
        fill_gaps(frame, ["co2"], "interpolate")


def _stores(ids: list, values: list) -> pd.DataFrame:
    dates = pd.date_range("2020-01-04", periods=3, freq="W-SAT").astype(str).tolist()
    return pd.DataFrame({"store": ids, "date": dates * (len(ids) // 3), "co2": values})


def _validate_stores(frame: pd.DataFrame) -> pd.DataFrame:
    return validate_timeseries(frame, timestamp="date", target="co2", covariates=[], series_id="store", name="f.csv")


def test_a_blank_series_id_is_refused_naming_its_row() -> None:
    """It was read as the series 'nan' and dropped at prepare without a word."""
    with pytest.raises(InvalidDataError, match=r"column 'store' row 5: no series id \(a blank cell\)"):
        _validate_stores(_stores(["a", "a", "a", "b", None, "b"], [1.0] * 6))


def test_series_ids_are_named_as_written_without_spaces_or_a_float_point() -> None:
    """A numeric id column with one blank cell read as floats, so series '1' became '1.0' beside an earlier '1'."""
    frame = _validate_stores(_stores([1.0, 1.0, 1.0, " b", "b ", "b"], [1.0] * 6))
    assert frame["series_id"].tolist() == ["1"] * 3 + ["b"] * 3


def test_a_series_without_values_is_refused_naming_it() -> None:
    """Training on it raised a NaN loss (GradientExplosionError) after ingest and prepare had both passed."""
    with pytest.raises(InvalidDataError, match=r"column 'co2' has no values in series 'b' \(rows 4 to 6 are blank"):
        _validate_stores(_stores(["a", "a", "a", "b", "b", "b"], [1.0, 2.0, 3.0, None, None, None]))


def test_a_value_whose_statistics_overflow_is_refused() -> None:
    bad = GOOD.copy()
    bad.loc[4, "co2"] = 1e200
    with pytest.raises(InvalidDataError, match=r"column 'co2' row 5: 1e\+200 is too large to learn from"):
        _validate(bad)


def test_a_header_with_spaces_after_its_commas_names_its_columns_without_them(tmp_path: Path) -> None:
    """`date, co2` named the column ' co2': "missing column 'co2'" for a file that has it."""
    path = tmp_path / "weekly.csv"
    path.write_text("date, co2\n2020-01-04, 1.0\n2020-01-11, 2.5\n2020-01-18, 3.0\n")
    frame = _validate(read_table(path))
    assert frame["co2"].tolist() == [1.0, 2.5, 3.0]
    assert frame["timestamp"].dt.strftime("%Y-%m-%d").tolist() == ["2020-01-04", "2020-01-11", "2020-01-18"]
    path.write_text("date,co2, co2\n2020-01-04,1.0,2.0\n")
    with pytest.raises(SourceError, match=r"the header names column 'co2' more than once"):
        read_table(path)


def test_gaps_are_kept_as_nan_and_filled_by_interpolation() -> None:
    clean = _validate(GOOD.drop(index=4))
    assert clean["co2"].isna().sum() == 1
    filled = fill_gaps(clean, ["co2"], "interpolate")
    assert len(filled) == 6  # the dropped week is back on the grid
    assert filled["co2"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@pytest.mark.parametrize("mutate", [
    lambda f: f.rename(columns={"co2": "ppm"}),
    lambda f: f.assign(co2=["1", "2", "three", "4", "5", "6"]),
    lambda f: f.iloc[::-1],
])
def test_rejected_file_leaves_existing_raw_data_untouched(project: Path, tmp_path: Path, mutate) -> None:
    params = load_params(project)
    target = raw_path(project, "forecast")
    ingest("forecast", params, project)
    before = target.read_bytes()
    bad = tmp_path / "bad.csv"
    mutate(GOOD).to_csv(bad, index=False)
    with pytest.raises(InvalidDataError):
        ingest("forecast", params, project, source_file=bad)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["raw.parquet", "source.json"]


def test_unreadable_file_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    params = load_params(project)
    with pytest.raises(SourceError, match="no such file"):
        ingest("forecast", params, project, source_file=tmp_path / "missing.csv")
    bad = tmp_path / "data.xlsx"
    bad.write_text("x")
    with pytest.raises(SourceError, match="unsupported format"):
        ingest("forecast", params, project, source_file=bad)
    assert not raw_path(project, "forecast").exists()
