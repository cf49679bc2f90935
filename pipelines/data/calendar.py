"""Calendar frequencies: which regular grid a series lives on, and where a file leaves it.

A fixed step (the most common spacing) cannot describe monthly, quarterly or yearly data: months
have 28 to 31 days, so a monthly file looks irregular by `Timedelta`. Pandas offset aliases
(`MS`, `ME`, `QS-JAN`, `W-SUN`, `B`, `h`, `30min`) do, and `pd.date_range(first, last, freq)`
rebuilds the grid, gaps included. A task may name its alias (`freq:` in params.yaml); otherwise it
is inferred: `pandas.infer_freq` when the series has no gaps, else the coarsest candidate grid
that holds every timestamp (the one with the fewest slots, so daily data with a missing week is
still daily, and weekday-only data is business-daily rather than daily with gaps).

Timestamps with a UTC offset or `Z` are converted to UTC and stored without a zone, so one file
mixing offsets (a daylight-saving change exported as +01:00 then +02:00) lands on one grid.
"""

from __future__ import annotations

import datetime
import re
import warnings

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


_ISO_8601 = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?",
                       re.IGNORECASE)


_OFFSET = re.compile(r"(?<=\d)(?:Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)  # a trailing UTC offset after a time


def to_utc_naive(values: pd.Series) -> pd.Series:
    """Parse timestamps; offset-stamped ones become UTC, naive ones stay as written. Unparseable, or outside
    the nanosecond range the pipeline stores (`outside_range`): NaT. Offset-stamped ones that are all at
    their local midnight are dates (a daily or monthly export from Paris writes 2005-01-01T00:00:00+01:00):
    they keep their local date, which UTC would move to 23:00 the evening before.

    pandas fixes a column's format from its first value, so `2009-04-01 00:00:00` among `2009-04-01` rows,
    or an offset-stamped value after naive ones, would be NaT: values the inferred format misses are read
    again as ISO 8601 in any of its forms (never by guessing, which would read `13/01` day-first after
    `12/01` month-first). A numeric column is read as years when every value is a whole number from 1000 to
    2999 (yearly files write `1987`, which pandas would otherwise take as nanoseconds since 1970); any other
    number is not a timestamp.
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce")
        years = numbers.where((numbers % 1 == 0) & numbers.between(1000, 2999))
        text = years.map(lambda y: f"{int(y)}-01-01", na_action="ignore")
        return _nanoseconds(pd.to_datetime(text, errors="coerce"))
    utc = _nanoseconds(_parsed(values).dt.tz_localize(None))
    local = _local_wall_time(values)
    if local is not None and _midnights(local) and not _midnights(utc):
        return local  # dates at local midnight, written with their offset: converting would move them a day
    return utc


def _parsed(values: pd.Series) -> pd.Series:
    """`values` parsed to UTC, format inferred from the first value, the values it misses read as ISO 8601."""
    with warnings.catch_warnings():  # "Could not infer format ...": a column of non-ISO strings, read one by one
        warnings.filterwarnings("ignore", message="Could not infer format", category=UserWarning)
        parsed = pd.to_datetime(values, errors="coerce", utc=True)
        missed = parsed.isna() & values.map(lambda v: isinstance(v, str) and bool(v.strip()))
        if missed.any():
            parsed[missed] = pd.to_datetime(values[missed], errors="coerce", utc=True, format="ISO8601")
    return parsed


def _local_wall_time(values: pd.Series) -> pd.Series | None:
    """The timestamps as their writer's clock read them (offsets dropped, not applied); None when none has one."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return _nanoseconds(values.dt.tz_localize(None))
    if not values.map(lambda v: isinstance(v, str) and bool(_OFFSET.search(v.strip()))).any():
        return None
    return _nanoseconds(_parsed(values.map(lambda v: _OFFSET.sub("", v.strip()) if isinstance(v, str) else v))
                        .dt.tz_localize(None))


def _midnights(stamps: pd.Series) -> bool:
    """Every parsed stamp is at midnight (and there is one): the file holds dates, daily or coarser."""
    present = stamps.dropna()
    return bool(len(present)) and bool((present == present.dt.normalize()).all())


def _nanoseconds(parsed: pd.Series) -> pd.Series:
    """`parsed` as datetime64[ns]: pandas parses `9999-12-31` (an open end some exports write) or a year
    before 1677 at a coarser unit, and the cast to nanoseconds would raise OutOfBoundsDatetime on it."""
    return parsed.where(parsed.between(pd.Timestamp.min, pd.Timestamp.max)).astype("datetime64[ns]")


def outside_range(value: object) -> bool:
    """Whether `value` is a timestamp that `to_utc_naive` reads as NaT only because it lies outside
    pd.Timestamp.min .. max (1677-09-21 .. 2262-04-11), so an error can say that instead of "not a timestamp"."""
    if isinstance(value, np.generic) and not isinstance(value, np.datetime64):
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        value = f"{int(value)}-01-01"  # a year, as to_utc_naive reads a numeric column
    if not isinstance(value, (str, np.datetime64, datetime.date)):  # a Parquet timestamp cell is a date
        return False
    try:
        stamp = pd.Timestamp(value)  # any unit: pandas parses 9999-12-31 at seconds
    except (ValueError, OverflowError):
        return False
    if stamp is pd.NaT:
        return False
    stamp = stamp.tz_convert(None) if stamp.tz is not None else stamp
    return not pd.Timestamp.min <= stamp <= pd.Timestamp.max


def parse_timestamp(value: object, local: bool = False) -> pd.Timestamp | None:
    """One ISO 8601 timestamp string (a date, a time to the minute or finer, an offset or `Z`) read as
    `to_utc_naive` reads a column (offset-stamped: UTC; naive: as written), or None when it is not one:
    what a forecast request's `last_timestamp` must be (`08/01/2021` would be read month-first, whatever the
    client meant). pandas' scalar parser takes microseconds where `to_utc_naive` on a one-row Series took
    most of a millisecond guessing the column's format, once per forecast record. `local`: an offset is
    dropped rather than applied (the writer's clock, as `to_utc_naive` keeps dates at local midnight)."""
    if not isinstance(value, str) or not _ISO_8601.fullmatch(value.strip()):
        return None
    try:
        stamp = pd.Timestamp(value)
        if stamp is pd.NaT:
            return None
        if stamp.tz is not None:
            stamp = (stamp if local else stamp.tz_convert("UTC")).tz_localize(None)
        return stamp.as_unit("ns")
    except (ValueError, OverflowError):  # unparseable, or outside the nanosecond range to_utc_naive keeps
        return None


def frequency_error(freq: str) -> str | None:
    """None when `freq` is a pandas offset alias, else a message saying what to write instead."""
    try:
        to_offset(freq)
    except (ValueError, TypeError):
        return (f"{freq!r} is not a pandas offset alias; use e.g. min, 30min, h, D, B, W-SUN, MS, ME, "
                "QS, QE, YS or YE")
    return None


def _grid(first: pd.Timestamp, last: pd.Timestamp, freq: str) -> pd.DatetimeIndex:
    return pd.date_range(first, last, freq=freq)


def _on_grid(stamps: pd.DatetimeIndex, freq: str) -> int:
    """How many timestamps are slots of the grid `freq` anchored at the first one (0 if it cannot start there)."""
    grid = _grid(stamps[0], stamps[-1], freq)
    return int(stamps.isin(grid).sum()) if len(grid) and grid[0] == stamps[0] else 0


def _candidates(stamps: pd.DatetimeIndex) -> list[str]:
    """Calendar aliases anchored where this series starts, then the most common fixed step (calendar
    aliases win a tie: weekly data on Sundays is W-SUN, not 7D)."""
    month, weekday = MONTHS[stamps[0].month - 1], WEEKDAYS[stamps[0].weekday()]
    nanoseconds = stamps.as_unit("ns").asi8  # [T]: asi8 counts in the index's own unit (pandas 3: often us)
    step = pd.Timedelta(int(pd.Series(np.diff(nanoseconds)).mode().iloc[0]), "ns")
    fixed = to_offset(f"{step.days}D" if step % pd.Timedelta(days=1) == pd.Timedelta(0) else step).freqstr
    return [f"YS-{month}", f"YE-{month}", f"QS-{month}", f"QE-{month}", "MS", "ME", f"W-{weekday}", "B", fixed]


def infer_frequency(stamps: pd.DatetimeIndex) -> str:
    """The series' offset alias: exact when it has no gaps, else the coarsest grid holding every timestamp.

    When no candidate holds them all (an irregular file), the one holding the most, so that
    `first_off_grid` names the row that breaks the calendar the rest of the file follows.
    """
    if len(stamps) < 2:
        return "D"
    if len(stamps) >= 3:
        with pd.option_context("future.infer_freq_returns_offset", True):
            exact = pd.infer_freq(stamps)
        if exact is not None:
            return exact.freqstr
    candidates = _candidates(stamps)
    scored = [(-_on_grid(stamps, c), len(_grid(stamps[0], stamps[-1], c)), rank, c)
              for rank, c in enumerate(candidates)]
    return min(scored)[3]


def first_off_grid(stamps: pd.DatetimeIndex, freq: str) -> int | None:
    """Position of the first timestamp that is not a slot of the grid `freq` anchored at the first one."""
    grid = _grid(stamps[0], stamps[-1], freq)
    if len(grid) == 0 or grid[0] != stamps[0]:
        return 0
    off = np.flatnonzero(~stamps.isin(grid))
    return int(off[0]) if len(off) else None


def calendar_grid(stamps: pd.DatetimeIndex, freq: str) -> pd.DatetimeIndex:
    """Every slot from the first to the last timestamp: missing slots become gaps to fill."""
    return _grid(stamps[0], stamps[-1], freq)
