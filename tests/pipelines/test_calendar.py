"""Calendar frequencies: monthly, quarterly, yearly, weekly, business-day and sub-daily series load onto
their grid with gaps found; offset-stamped timestamps are read as UTC; an irregular file names its row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.data.calendar import frequency_error, infer_frequency, parse_timestamp, to_utc_naive
from pipelines.data.validate import InvalidDataError, fill_gaps, validate_timeseries


def series(stamps: pd.DatetimeIndex | list, values: list[float] | None = None) -> pd.DataFrame:
    stamps = pd.DatetimeIndex(stamps)
    values = values if values is not None else [float(i) for i in range(len(stamps))]
    frame = pd.DataFrame({"date": stamps.astype(str), "y": values})
    return validate_timeseries(frame, timestamp="date", target="y", covariates=[], series_id=None, name="t.csv")


@pytest.mark.parametrize("freq", ["MS", "ME", "QS-JAN", "QE-DEC", "YS-JAN", "YE-DEC", "W-SUN", "W-WED", "B", "D",
                                  "h", "30min", "15min"])
def test_a_gapless_series_infers_its_alias(freq: str) -> None:
    start = "2001-01-03" if freq == "B" else "2000-01-01"
    stamps = pd.date_range(start, periods=40, freq=freq)
    assert infer_frequency(stamps) == pd.tseries.frequencies.to_offset(freq).freqstr


@pytest.mark.parametrize("freq", ["MS", "ME", "QS-JAN", "YS-JAN", "W-SUN", "B", "D", "h", "30min"])
def test_a_series_with_gaps_keeps_its_calendar_and_the_gaps_are_filled(freq: str) -> None:
    stamps = pd.date_range("2001-01-01", periods=60, freq=freq)
    kept = np.delete(np.arange(60), [5, 6, 30])
    clean = series(stamps[kept], [float(i) for i in kept])
    assert infer_frequency(pd.DatetimeIndex(clean["timestamp"])) == pd.tseries.frequencies.to_offset(freq).freqstr
    filled = fill_gaps(clean, ["y"], "interpolate")
    assert list(filled["timestamp"]) == list(stamps)
    assert np.allclose(filled["y"].to_numpy(), np.arange(60.0))


@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_a_fixed_step_is_inferred_at_any_timestamp_resolution(unit: str) -> None:
    """pandas 3 parses strings and datetimes to microseconds: the gap-tolerant step read the index's integers
    as nanoseconds, so hourly stamps with a gap became a '3600ms' grid."""
    stamps = pd.date_range("2001-01-01", periods=60, freq="h", unit=unit).delete([5, 6, 30])
    assert infer_frequency(stamps) == "h"


def test_irregular_timestamps_are_refused_as_irregular_saying_to_resample() -> None:
    minutes = np.cumsum(np.random.default_rng(0).integers(50, 71, 200))
    stamps = pd.Timestamp("2024-01-01") + pd.to_timedelta(minutes, unit="min")
    with pytest.raises(InvalidDataError, match=r"its timestamps are irregular: no frequency holds them \(the best, "
                                               r"'\d+min', holds \d+%; row 2 is .*resample the file"):
        fill_gaps(series(stamps), ["y"], "interpolate")


def test_monthly_data_is_not_refused_for_its_uneven_day_counts() -> None:
    stamps = pd.date_range("1990-01-01", periods=120, freq="MS")
    filled = fill_gaps(series(stamps), ["y"], "interpolate")
    assert len(filled) == 120


def test_a_declared_frequency_is_used_instead_of_the_inferred_one() -> None:
    stamps = pd.date_range("2001-01-01", periods=10, freq="2D")
    filled = fill_gaps(series(stamps), ["y"], "interpolate", freq="D")
    assert len(filled) == 19 and filled["y"].iloc[1] == pytest.approx(0.5)


def test_day_first_dates_read_month_first_are_refused_instead_of_interpolated() -> None:
    """01/02/2000 (1 February) read as 2 January: twelve days a year on a daily grid, the rest made up."""
    written = [f"01/{month:02d}/{year}" for year in range(2000, 2010) for month in range(1, 13)]
    frame = pd.DataFrame({"date": written, "y": np.arange(120.0)})
    clean = validate_timeseries(frame, timestamp="date", target="y", covariates=[], series_id=None, name="t.csv")
    with pytest.raises(InvalidDataError, match=r"its 120 timestamps fill 4% of the inferred frequency 'D' grid.*"
                                               r"The first read as 2000-01-01 00:00:00, 2000-01-02.*day-first"):
        fill_gaps(clean, ["y"], "interpolate")


def test_a_declared_frequency_far_finer_than_the_data_is_refused() -> None:
    stamps = pd.date_range("2001-01-01", periods=24, freq="MS")
    with pytest.raises(InvalidDataError, match=r"of the declared frequency 'h' grid.*set the task's `freq:`"):
        fill_gaps(series(stamps), ["y"], "interpolate", freq="h")


def test_a_duplicate_date_gets_no_daylight_saving_hint() -> None:
    stamps = list(pd.date_range("2001-01-01", periods=6, freq="MS").astype(str))
    stamps[3] = stamps[2]
    with pytest.raises(InvalidDataError, match=r"row 4: duplicate timestamp 2001-03-01 00:00:00$"):
        validate_timeseries(pd.DataFrame({"date": stamps, "y": np.arange(6.0)}), timestamp="date", target="y",
                            covariates=[], series_id=None, name="t.csv")


def test_an_irregular_file_names_its_first_bad_row_and_the_frequency() -> None:
    stamps = list(pd.date_range("2001-01-01", periods=30, freq="MS"))
    stamps[17] = pd.Timestamp("2002-06-15")
    with pytest.raises(InvalidDataError, match=r"row 18 \(2002-06-15 00:00:00\) is not on the inferred frequency 'MS'"):
        fill_gaps(series(stamps), ["y"], "interpolate")


def test_offset_stamped_hourly_data_is_read_as_utc() -> None:
    frame = pd.DataFrame({"date": ["2024-03-31T00:00:00+01:00", "2024-03-31T00:00:00Z", "2024-03-31T03:00:00+02:00",
                                   "2024-03-31T02:00:00+00:00"], "y": [1.0, 2.0, 3.0, 4.0]})
    clean = validate_timeseries(frame, timestamp="date", target="y", covariates=[], series_id=None, name="t.csv")
    assert [str(t) for t in clean["timestamp"]] == ["2024-03-30 23:00:00", "2024-03-31 00:00:00",
                                                    "2024-03-31 01:00:00", "2024-03-31 02:00:00"]
    assert len(fill_gaps(clean, ["y"], "interpolate")) == 4


def test_a_repeated_local_hour_is_refused_with_its_row_and_why() -> None:
    frame = pd.DataFrame({"date": ["2024-10-27 01:00", "2024-10-27 02:00", "2024-10-27 02:00", "2024-10-27 03:00"],
                          "y": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(InvalidDataError, match=r"row 3: duplicate timestamp .*daylight saving"):
        validate_timeseries(frame, timestamp="date", target="y", covariates=[], series_id=None, name="t.csv")


def test_naive_timestamps_are_kept_as_written() -> None:
    parsed = to_utc_naive(pd.Series(["2001-01-01 12:00", "not a date"]))
    assert str(parsed.iloc[0]) == "2001-01-01 12:00:00" and pd.isna(parsed.iloc[1])


@pytest.mark.parametrize("column, row, shown", [(["2024-01-01", "2024-01-02", "9999-12-31"], 3, "'9999-12-31'"),
                                               ([1700, 1701, 1500], 3, "1500")])
def test_a_timestamp_outside_the_stored_range_is_refused_naming_its_row(column: list, row: int, shown: str) -> None:
    frame = pd.DataFrame({"date": column, "y": [1.0] * len(column)})
    with pytest.raises(InvalidDataError, match=rf"row {row}: {shown} is outside the timestamps seqops can store "
                                               r"\(1677-09-21 to 2262-04-11\)"):
        validate_timeseries(frame, timestamp="date", target="y", covariates=[], series_id=None, name="t.csv")
    assert to_utc_naive(pd.Series(column)).isna().tolist() == [False, False, True]


def test_dates_at_local_midnight_keep_their_local_date_and_times_become_utc() -> None:
    """A monthly export from Paris (+01:00 in winter, +02:00 in summer) converted to UTC landed on 23:00 and
    22:00 of the evening before: 'irregular', with an hourly resample as the hint."""
    paris = ["2005-01-01T00:00:00+01:00", "2005-02-01T00:00:00+01:00", "2005-04-01T00:00:00+02:00"]
    assert to_utc_naive(pd.Series(paris)).tolist() == list(pd.to_datetime(["2005-01-01", "2005-02-01", "2005-04-01"]))
    zoned = pd.Series(pd.date_range("2005-01-01", periods=3, freq="MS", tz="Europe/Paris"))  # a Parquet column
    assert to_utc_naive(zoned).tolist() == list(pd.date_range("2005-01-01", periods=3, freq="MS"))
    hours = ["2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00"]  # hourly across the change: UTC, one apart
    assert to_utc_naive(pd.Series(hours)).tolist() == list(pd.to_datetime(["2024-03-31 00:00", "2024-03-31 01:00"]))


def test_a_parquet_timestamp_outside_the_range_and_a_blank_cell_are_named_as_such() -> None:
    stamps = pd.Series(pd.to_datetime(["2024-01-01", "2024-01-02", "9999-12-31"]).as_unit("us"))
    with pytest.raises(InvalidDataError, match=r"row 3: Timestamp\('9999-12-31 00:00:00'\) is outside the timestamps"):
        validate_timeseries(pd.DataFrame({"date": stamps, "y": [1.0] * 3}), timestamp="date", target="y",
                            covariates=[], series_id=None, name="t.parquet")
    with pytest.raises(InvalidDataError, match=r"row 2: 'June 1 2024' is not a timestamp"):  # in range, not ISO
        validate_timeseries(pd.DataFrame({"date": ["2024-01-01", "June 1 2024"], "y": [1.0] * 2}),
                            timestamp="date", target="y", covariates=[], series_id=None, name="t.csv")
    with pytest.raises(InvalidDataError, match=r"row 2: no timestamp \(a blank cell\)"):
        validate_timeseries(pd.DataFrame({"date": ["2024-01-01", None, "2024-01-03"], "y": [1.0] * 3}),
                            timestamp="date", target="y", covariates=[], series_id=None, name="t.csv")


@pytest.mark.parametrize("text", ["2024-06-01T00:00:00", "2024-06-01", "2024-06-01T05:00:00+02:00", "2024-06-01T05:30Z",
                                  "2024-06-01 05:30", "2024-06-01T00:00:00.123456789", "2024-06-01T07:00:00-0530",
                                  "junk", "2024-13-01", "", "NaT", "9999-01-01", "1500-01-01"])
def test_one_iso_timestamp_parses_as_a_column_of_it_does(text: str) -> None:
    column = to_utc_naive(pd.Series([text])).iloc[0]
    one = parse_timestamp(text)
    assert (one is None and pd.isna(column)) or (one == column and one.unit == "ns")


@pytest.mark.parametrize("text", ["08/01/2021", "Aug 1 2021", "20210801", "2024-06", "2024", "now"])
def test_a_request_timestamp_must_be_iso_8601(text: str) -> None:
    """pandas' scalar parser read these (08/01/2021 month-first) although the contract says ISO 8601."""
    assert parse_timestamp(text) is None


def test_a_column_reads_every_iso_form_after_its_first_values_fixed_the_format() -> None:
    """pandas infers a column's format from its first value: a later `2009-04-01 00:00:00` or an offset-stamped
    value was 'not a timestamp'; day-first dates after month-first ones are not guessed."""
    parsed = to_utc_naive(pd.Series(["2009-02-01", "2009-03-01", "2009-04-01 00:00:00", "2009-05-01T02:00:00+02:00"]))
    assert parsed.tolist() == list(pd.date_range("2009-02-01", periods=4, freq="MS"))
    assert pd.isna(to_utc_naive(pd.Series(["12/01/2023", "13/01/2023"])).iloc[1])


def test_an_unknown_alias_is_named_with_examples() -> None:
    assert frequency_error("MS") is None
    assert "not a pandas offset alias" in frequency_error("monthly")
