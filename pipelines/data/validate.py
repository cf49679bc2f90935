"""Schema checks for raw tables, run before anything is written.

Every error names the column and the first offending row (1-based, counting data rows as a
spreadsheet does below its header), because the person reading it has to go and fix that file.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

from pipelines.data.calendar import calendar_grid, first_off_grid, infer_frequency, outside_range, to_utc_naive
from pipelines.errors import SeqopsError

DEFAULT_SERIES = "main"


class InvalidDataError(SeqopsError, ValueError):
    """The raw table breaks the task's schema; nothing has been written."""


def _first_row(mask: pd.Series | np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0]) + 1


def validate_timeseries(frame: pd.DataFrame, *, timestamp: str, target: str, covariates: list[str],
                        series_id: str | None, name: str) -> pd.DataFrame:
    """Check and normalise a time-series table.

    Returns columns [series_id, timestamp, target, *covariates]: timestamps parsed, values float64,
    rows in file order. NaN values are allowed (they are gaps, filled later by params.gap_fill);
    anything that is neither a number nor empty is an error.
    """
    if frame.empty:
        raise InvalidDataError(f"{name}: the table has no rows")
    required = [timestamp, target, *covariates] + ([series_id] if series_id else [])
    for column in required:
        if column not in frame.columns:
            raise InvalidDataError(f"{name}: missing column {column!r} (found columns: {list(frame.columns)})")

    out = pd.DataFrame(index=frame.index)
    if series_id:
        ids = frame[series_id].map(_series_name)
        if (blank := ids.isna()).any():
            raise InvalidDataError(f"{name}: column {series_id!r} row {_first_row(blank)}: no series id (a blank "
                                   "cell); every row needs the id of its series")
        out["series_id"] = ids
    else:
        out["series_id"] = DEFAULT_SERIES
    stamps = to_utc_naive(frame[timestamp])
    bad = stamps.isna()
    if bad.any():
        row = _first_row(bad)
        value = frame[timestamp].iloc[row - 1]
        value = value.item() if isinstance(value, np.generic) else value  # 1500, not np.int64(1500)
        if _blank(value):
            raise InvalidDataError(f"{name}: column {timestamp!r} row {row}: no timestamp (a blank cell)")
        stored = f"{pd.Timestamp.min:%Y-%m-%d} to {pd.Timestamp.max:%Y-%m-%d}"
        why = f"is outside the timestamps seqops can store ({stored})" if outside_range(value) else "is not a timestamp"
        raise InvalidDataError(f"{name}: column {timestamp!r} row {row}: {value!r} {why}{_day_first_hint(value)}")
    out["timestamp"] = stamps.to_numpy()

    for column in [target, *covariates]:
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna()
        if bad.any():
            row = _first_row(bad)
            raise InvalidDataError(f"{name}: column {column!r} row {row}: {raw.iloc[row - 1]!r} is not a number")
        infinite = np.isinf(values.to_numpy(dtype=float))
        if infinite.any():
            row = _first_row(infinite)
            raise InvalidDataError(f"{name}: column {column!r} row {row}: infinite value")
        huge = (values.abs() > MAX_MAGNITUDE).to_numpy()
        if huge.any():
            row = _first_row(huge)
            raise InvalidDataError(f"{name}: column {column!r} row {row}: {values.iloc[row - 1]:g} is too large to "
                                   f"learn from (at most {MAX_MAGNITUDE:.0e} in magnitude: its statistics overflow); "
                                   "rescale the column")
        out[column] = values.astype("float64")
        if out[column].isna().all():
            raise InvalidDataError(f"{name}: column {column!r} has no values at all")

    for sid, group in out.groupby("series_id", sort=False):
        diffs = group["timestamp"].diff().iloc[1:]
        where = f" (series {sid!r})" if series_id else ""
        if group[target].isna().all():
            raise InvalidDataError(f"{name}: column {target!r} has no values in series {sid!r} (rows "
                                   f"{group.index[0] + 1} to {group.index[-1] + 1} are blank there): fill the series "
                                   "or remove its rows")
        duplicate = (diffs == pd.Timedelta(0)).to_numpy()
        if duplicate.any():
            row = int(group.index[np.flatnonzero(duplicate)[0] + 1]) + 1
            stamp = group["timestamp"].loc[group.index[np.flatnonzero(duplicate)[0] + 1]]
            clock = stamp != stamp.normalize() or ((diffs > pd.Timedelta(0)) & (diffs < pd.Timedelta(days=1))).any()
            hint = (" (local times repeat an hour when daylight saving ends: export timestamps with their UTC "
                    "offset, e.g. 2024-10-27T02:30:00+01:00)") if clock else ""
            raise InvalidDataError(f"{name}: column {timestamp!r} row {row}: duplicate timestamp {stamp}{where}{hint}")
        unsorted = (diffs < pd.Timedelta(0)).to_numpy()
        if unsorted.any():
            row = int(group.index[np.flatnonzero(unsorted)[0] + 1]) + 1
            raise InvalidDataError(f"{name}: column {timestamp!r} row {row}: timestamps are not sorted "
                                  f"ascending{where}")
    return out.reset_index(drop=True)


MAX_MAGNITUDE = 1e100  # a series value beyond it: scaling statistics (squares, sums of squares) overflow float64
MAX_GAP_SHARE_FACTOR = 2  # a grid may be at most twice as long as the series' timestamps: at most half gaps
IRREGULAR_SHARE = 0.9  # an inferred grid holding fewer of the timestamps than this: the file is not on a grid


def regular_grid(group: pd.DataFrame, freq: str | None = None) -> pd.DataFrame:
    """Reindex one series onto its calendar grid (`freq`, or the inferred one), so missing rows become NaN.

    A series with a timestamp off that grid is an error naming its row (the group's index is the row's
    position in the file, or a label saying where the row is) rather than a silent resample; so is a grid
    more than half gaps, which is a misread timestamp or a `freq` finer than the data far more often than a
    recording: day-first monthly dates read month-first became 12 days a year on a daily grid, 97 % of it
    interpolated; or one placeholder date at an end (`_stray_end`), which is named.
    """
    stamps = pd.DatetimeIndex(group["timestamp"])
    if len(stamps) < 2:
        return group
    declared = freq is not None
    freq = freq or infer_frequency(stamps)
    off = first_off_grid(stamps, freq)
    grid = calendar_grid(stamps, freq)
    share = stamps.isin(grid).mean() if off is not None else 1.0  # of the timestamps on the grid
    if not declared and share < IRREGULAR_SHARE:
        raise InvalidDataError(
            f"series {group['series_id'].iloc[0]!r}: its timestamps are irregular: no frequency holds them (the "
            f"best, {freq!r}, holds {share:.0%}; {_row(group.index[off])} is "
            f"{stamps[off]}). seqops forecasts on a regular grid: resample the file to one first (for instance "
            f"pandas' df.resample('h', on='timestamp').mean()), then set the task's `freq:` to it")
    if off is not None:
        raise InvalidDataError(
            f"series {group['series_id'].iloc[0]!r}: {_row(group.index[off])} ({stamps[off]}) is not on "
            f"the {'declared' if declared else 'inferred'} frequency {freq!r} of a grid starting at {stamps[0]}; "
            f"set the task's `freq:` to the pandas offset alias of the data, or fix that row")
    if len(grid) > MAX_GAP_SHARE_FACTOR * len(stamps):
        if (alone := _stray_end(stamps, freq)) is not None:
            neighbour = stamps[1] if alone == 0 else stamps[-2]
            raise InvalidDataError(
                f"series {group['series_id'].iloc[0]!r}: {_row(group.index[alone])} ({stamps[alone]}) lies "
                f"far {'before' if alone == 0 else 'after'} the others (the {'next' if alone == 0 else 'previous'} "
                f"is {neighbour}): its grid would be more than half made-up values. A placeholder for an open "
                f"{'start' if alone == 0 else 'end'} (such as {'1900-01-01' if alone == 0 else '2099-12-31'})? "
                f"Remove that row, or fix its date")
        first = ", ".join(str(stamp) for stamp in stamps[:3])
        raise InvalidDataError(
            f"series {group['series_id'].iloc[0]!r}: its {len(stamps)} timestamps fill {len(stamps) / len(grid):.0%} "
            f"of the {'declared' if declared else 'inferred'} frequency {freq!r} grid from {stamps[0]} to "
            f"{stamps[-1]} ({len(grid)} steps): the rest would be made up by gap filling. The first read as "
            f"{first}: if those are not the data's dates, the timestamps were misread (day-first dates such as "
            f"01/02/2000 read month-first: write them as 2000-02-01); else set the task's `freq:` to the data's "
            f"frequency")
    filled = group.set_index("timestamp").reindex(grid)
    filled["series_id"] = group["series_id"].iloc[0]
    return filled.rename_axis("timestamp").reset_index()[group.columns]


_DAY_FIRST = re.compile(r"(\d{1,2})[/.-](\d{1,2})[/.-]\d{2,4}(?:\s.*)?")


def _day_first_hint(value: object) -> str:
    """`: read day first it is 13 January 2020 ...` for a value whose first number cannot be a month, where the
    column's earlier values (`12/01/2020`) were read month first, as pandas reads a first value that allows it."""
    match = _DAY_FIRST.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or not 12 < int(match[1]) <= 31 or int(match[2]) > 12:
        return ""
    day_first = pd.to_datetime(value, dayfirst=True, errors="coerce")
    if pd.isna(day_first):
        return ""
    return (f": read day first it is {day_first.day} {day_first:%B %Y}, but the column's first values were read "
            f"month first; write the dates as YYYY-MM-DD ({day_first:%Y-%m-%d}), which has one reading")


def _row(label: object) -> str:
    """`row 7` for the index label 6 (a position in the file); a string label names the row itself."""
    return label if isinstance(label, str) else f"row {int(label) + 1}"


def _stray_end(stamps: pd.DatetimeIndex, freq: str) -> int | None:
    """The position (0 or the last) of the one timestamp whose removal brings the grid within
    MAX_GAP_SHARE_FACTOR of the rest: a placeholder date at an end, not a misread column."""
    for position in (len(stamps) - 1, 0):
        rest = stamps.delete(position)
        if len(rest) >= 2 and first_off_grid(rest, freq) is None \
                and len(calendar_grid(rest, freq)) <= MAX_GAP_SHARE_FACTOR * len(rest):
            return position
    return None


def fill_gaps(frame: pd.DataFrame, value_columns: list[str], method: str, freq: str | None = None,
              observed: str | None = None) -> pd.DataFrame:
    """Put every series on its calendar grid, then fill gaps by `method` (interpolate | ffill | drop).
    `observed`: a boolean column of that name says which steps had a first value column (the target) before
    filling, so scores compare forecasts with what was measured, not with what filling made up."""
    parts = []
    for _, group in frame.groupby("series_id", sort=False):
        group = regular_grid(group, freq).reset_index(drop=True)
        if observed is not None:
            group[observed] = group[value_columns[0]].notna()
        if method == "interpolate":
            group[value_columns] = group[value_columns].interpolate(method="linear", limit_direction="both")
        elif method == "ffill":
            group[value_columns] = group[value_columns].ffill().bfill()
        elif method == "drop":
            group = group.dropna(subset=value_columns)
        else:
            raise ValueError(f"unknown gap_fill {method!r}")
        parts.append(group)
    return pd.concat(parts, ignore_index=True)


DUPLICATE_POLICIES = ("keep", "drop")
_SHOWN_ROWS = 5


def _series_name(value: object) -> str | None:
    """A series id cell as the name the series goes by: surrounding spaces dropped, a whole float by its digits
    (a numeric id column with one blank cell reads as floats: `1.0` is series `1`); None for a blank cell."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip() or None


def _short(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


_WHOLE_DECIMAL = re.compile(r"-?\d+\.0+")


def _label(value: object) -> str | None:
    """A label cell as a string: strings without surrounding spaces, integers (a Parquet column of 0/1 labels)
    by their digits, whole floats too, in a string (`4.0`, what pandas writes for an integer column with one
    blank cell) or not; None for a blank cell or anything else. Each cell by itself: `007` stays `007`."""
    if isinstance(value, str):
        value = value.strip()
        return (value.split(".")[0] if _WHOLE_DECIMAL.fullmatch(value) else value) or None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return None


def blank_text(text: str) -> bool:
    """True for a text with nothing to read: empty, or only whitespace and invisible characters (zero-width space
    U+200B, joiners, BOM, soft hyphen: Unicode format characters, Cf; controls, Cc). str.strip() keeps those. One
    rule for ingest (such a row is dropped as empty) and serving (such a record is refused as empty)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cf", "Cc") for c in text)


def _blank(value: object) -> bool:
    """A cell `_as_text` reads as empty or whitespace: what a blank spreadsheet cell becomes."""
    text = _as_text(value)
    return text is not None and not text.strip()


def _alike(labels: list[str]) -> list[list[str]]:
    """Groups of labels equal but for case ('Positive', 'positive'): one label spelt two ways, almost always."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), []).append(label)
    return [group for group in groups.values() if len(group) > 1]


def _rows(mask: pd.Series | np.ndarray, values: pd.Series) -> str:
    """`rows 3 ('x'), 7 ('y') and 4 more`: the first few offending rows (1-based) with their values."""
    positions = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(f"{p + 1} ({_short(values.iloc[p])})" for p in positions[:_SHOWN_ROWS])
    more = f" and {len(positions) - _SHOWN_ROWS} more" if len(positions) > _SHOWN_ROWS else ""
    return f"row{'s' if len(positions) > 1 else ''} {shown}{more}"


def _as_text(value: object) -> str | None:
    """A cell as text; None for a cell that is not text at all.

    NaN/None are empty text (a blank CSV cell). Bytes must be valid UTF-8, and strings must encode
    to UTF-8 (no lone surrogates, which `surrogateescape` decoding leaves behind), because Parquet and
    the JSON vocabulary both store UTF-8.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return value
    return None


def validate_text(frame: pd.DataFrame, *, text: str, label: str, labels: list[str] | None, duplicates: str,
                  name: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Check and normalise a text-classification table.

    Returns columns [text, label] in input order (index reset) and the counts of dropped rows:
    `dropped_empty` (empty, whitespace-only or missing text: nothing to classify), and with
    duplicates="drop" also `dropped_duplicates` (same text and label after collapsing whitespace; the
    first is kept) and `dropped_conflicting` (every row of a text that carries more than one label:
    keeping any of them would teach noise, and a copy could land in holdout with another label).
    duplicates="keep" keeps repeats and conflicts as the source has them. Text that is not a string
    (a number, a bool), bytes that are not UTF-8, and labels outside `labels` are errors, since
    guessing would change the data silently; `labels=None` (a task that declares none) takes every
    string or integer label cell as a label, and only missing or other labels are errors.
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"unknown duplicates policy {duplicates!r}; use one of {list(DUPLICATE_POLICIES)}")
    if frame.empty:
        raise InvalidDataError(f"{name}: the table has no rows")
    for column in (text, label):
        if column not in frame.columns:
            raise InvalidDataError(f"{name}: missing column {column!r} (found columns: {list(frame.columns)})")

    raw_text = frame[text].astype(object)
    texts = raw_text.map(_as_text)
    not_text = texts.isna()
    undecodable = not_text & raw_text.map(lambda v: isinstance(v, (bytes, str)))
    if undecodable.any():
        raise InvalidDataError(f"{name}: column {text!r} {_rows(undecodable, raw_text)}: not valid UTF-8 "
                              f"(fix the file's encoding, or re-save it as UTF-8)")
    if not_text.any():
        raise InvalidDataError(f"{name}: column {text!r} {_rows(not_text, raw_text)}: not text")

    keys = texts.map(lambda s: " ".join(s.split())).to_numpy(dtype=object)  # [N] whitespace collapsed
    empty = texts.map(blank_text).to_numpy(dtype=bool)  # [N]: nothing to classify, whatever the label
    raw_label = frame[label].astype(object)
    label_values = raw_label.map(_label)
    missing = ~empty & raw_label.map(_blank).to_numpy(dtype=bool)
    if missing.any():
        raise InvalidDataError(f"{name}: column {label!r} {_rows(missing, raw_label)}: no label (a blank cell); "
                              f"label these texts or remove them")
    declared = labels is not None
    if labels is None:  # inferred from the data: every string or integer cell is a label, sorted
        labels = sorted(set(label_values[~empty].dropna()))
    unknown = ~empty & ~label_values.isin(labels).to_numpy()
    if unknown.any():
        what = "declared labels" if declared else "labels (strings or whole numbers)"
        raise InvalidDataError(f"{name}: column {label!r} {_rows(unknown, raw_label)}: not one of the "
                              f"{what} {labels}")
    if not declared and (alike := _alike(labels)):
        raise InvalidDataError(f"{name}: column {label!r} has labels that differ only in case: {alike}; make "
                               f"them one label in the file, or declare `labels` to keep them apart")

    out = pd.DataFrame({"text": texts.to_numpy(dtype=object), "label": label_values.to_numpy(dtype=object)})
    key = pd.Series(keys, index=out.index)
    counts = {"dropped_empty": int(empty.sum()), "dropped_duplicates": 0, "dropped_conflicting": 0}
    out, key = out[~empty], key[~empty]
    if duplicates == "drop":
        conflicting = key.map(out.groupby(key)["label"].nunique()) > 1
        counts["dropped_conflicting"] = int(conflicting.sum())
        out, key = out[~conflicting], key[~conflicting]
        repeated = pd.DataFrame({"key": key, "label": out["label"]}).duplicated(keep="first")
        counts["dropped_duplicates"] = int(repeated.sum())
        out = out[~repeated]
    if out.empty:
        raise InvalidDataError(f"{name}: no rows left after dropping {counts}")
    return out.astype(str).reset_index(drop=True), counts
