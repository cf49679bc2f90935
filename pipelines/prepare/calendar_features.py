"""Calendar features: where a timestamp sits in the day, the week and the year, as sin/cos pairs.

They are known for every future step (the calendar is), so a forecaster may read them over the
horizon instead of guessing the season from the target alone. Which cycles a series gets follows
from its frequency: only cycles longer than one step say anything (monthly data gets the year,
hourly data the day, the week and the year). sin/cos rather than an index, so December sits next to
January.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Cycle name -> its length; a cycle is used when it spans at least two steps of the series.
CYCLES: dict[str, pd.Timedelta] = {"day": pd.Timedelta(days=1), "week": pd.Timedelta(days=7),
                                   "year": pd.Timedelta(days=365.25)}


def typical_step(freq: str) -> pd.Timedelta:
    """One step of the grid `freq` as a duration (a month is ~30 days), measured on the calendar itself."""
    stamps = pd.date_range("2001-01-01", periods=3, freq=freq)
    return (stamps[2] - stamps[0]) / 2


def calendar_cycles(freq: str) -> list[str]:
    """The cycles that carry information for a series on `freq` (in CYCLES' order)."""
    step = typical_step(freq)
    return [name for name, length in CYCLES.items() if length >= 2 * step]


def feature_names(cycles: list[str]) -> list[str]:
    """Column names of the features, a sin and a cos per cycle."""
    return [f"calendar_{cycle}_{part}" for cycle in cycles for part in ("sin", "cos")]


def _position(stamps: pd.DatetimeIndex, cycle: str) -> np.ndarray:
    """Fraction [0, 1) of `cycle` elapsed at each timestamp."""
    day = (stamps.hour * 3600 + stamps.minute * 60 + stamps.second).to_numpy() / 86400.0  # [T]
    if cycle == "day":
        return day
    if cycle == "week":
        return (stamps.dayofweek.to_numpy() + day) / 7.0
    return (stamps.dayofyear.to_numpy() - 1 + day) / np.where(stamps.is_leap_year, 366.0, 365.0)


def calendar_features(stamps: pd.DatetimeIndex, cycles: list[str]) -> np.ndarray:
    """[T, 2 * len(cycles)]: sin and cos of each cycle's position, in `feature_names` order."""
    columns = []
    for cycle in cycles:
        angle = 2 * np.pi * _position(pd.DatetimeIndex(stamps), cycle)  # [T]
        columns += [np.sin(angle), np.cos(angle)]
    return np.stack(columns, axis=1) if columns else np.empty((len(stamps), 0))  # [T, 2C]
