"""Inputs known over the horizon: future-known covariates and calendar features, read one step ahead.

The network predicts the target at t+1 from its input at t. A holiday or a temperature forecast for
t+1 moves the target at t+1, so the input at t carries the known values *of t+1* (the `@next`
columns); while forecasting, the input of each step after the history takes them from the request's
future values (`future_<name>`, one per horizon step) and from the calendar, instead of holding the
last observed value as covariates known only up to the origin are. Training (prepare) and serving
(pyfunc) build these columns with this one object, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import Tick

from pipelines.prepare.calendar_features import calendar_features, feature_names

LEAD = "@next"
FUTURE_PREFIX = "future_"


@dataclass(frozen=True)
class FutureInputs:
    """The task's calendar frequency, its known covariates and the calendar cycles its network reads; `anchor`,
    a timestamp of the training grid (ISO 8601), places a fixed-length frequency's slots ("h", "15min": an
    hourly grid may run at :30, UTC from local half-hour offsets) where the frequency alone cannot."""

    freq: str
    known: tuple[str, ...] = ()
    cycles: tuple[str, ...] = ()
    anchor: str | None = None

    @property
    def columns(self) -> list[str]:
        """The network's lead columns, after the target and the past-only covariates."""
        return [f"{name}{LEAD}" for name in [*self.known, *feature_names(list(self.cycles))]]

    @property
    def future_fields(self) -> list[str]:
        """Request fields that carry each known covariate's values over the horizon."""
        return [f"{FUTURE_PREFIX}{name}" for name in self.known]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FutureInputs":
        return cls(raw["freq"], tuple(raw.get("known", ())), tuple(raw.get("cycles", ())), raw.get("anchor"))

    def on_grid(self, stamp: pd.Timestamp) -> bool:
        """Whether `stamp` is a slot of the task's calendar. A fixed-length frequency's slots are whole steps
        from the anchor (any stamp is one of pandas' own "h" slots, so without an anchor every stamp passes,
        as it did for models logged before); a calendar frequency's ("MS", "W-SUN") are pandas' own days, at the
        anchor's time of day (pandas' own slots keep any time of day: 2021-08-01T13:45 was a month start)."""
        offset = to_offset(self.freq)
        if isinstance(offset, Tick):
            # integer nanoseconds: a Timedelta between stamps centuries apart overflows (1677 against a 2024 anchor)
            return self.anchor is None or (stamp.value - pd.Timestamp(self.anchor).value) % offset.nanos == 0
        if self.anchor is not None:
            anchor = pd.Timestamp(self.anchor)
            if stamp - stamp.normalize() != anchor - anchor.normalize():
                return False
        return self.history_stamps(stamp, 1)[-1] == stamp

    def _lead(self, stamps: pd.DatetimeIndex | None, known: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """[rows, len(columns)]: row t holds the known values and calendar features of step t + 1
        (`stamps` and `known` run from step 0 to step rows; stamps may be None without cycles)."""
        parts = [np.asarray(known[name], dtype=np.float64)[1:rows + 1, None] for name in self.known]  # [rows, 1]
        if self.cycles:
            parts.append(calendar_features(stamps[1:rows + 1], list(self.cycles)))  # [rows, 2C]
        return np.concatenate(parts, axis=1) if parts else np.empty((rows, 0))  # [rows, K + 2C]

    def training_columns(self, series: pd.DataFrame) -> pd.DataFrame:
        """The lead columns of one gap-filled series (rows in time order); the last row, never an input
        in training (it is only a target), repeats its own known values."""
        stamps = pd.DatetimeIndex(series["timestamp"])
        after = stamps[-1] + to_offset(self.freq)
        known = {name: np.append(series[name].to_numpy(dtype=np.float64), series[name].iloc[-1])
                 for name in self.known}
        lead = self._lead(stamps.append(pd.DatetimeIndex([after])), known, len(stamps))  # [T, K + 2C]
        return pd.DataFrame(lead, columns=self.columns, index=series.index)

    def history_stamps(self, last: pd.Timestamp, steps: int) -> pd.DatetimeIndex:
        """The `steps` grid slots that end at `last`."""
        return pd.date_range(end=last, periods=steps, freq=self.freq)

    def horizon_stamps(self, last: pd.Timestamp, steps: int) -> pd.DatetimeIndex:
        """The `steps` grid slots after `last`: the horizon's timestamps."""
        return pd.date_range(last, periods=steps + 1, freq=self.freq)[1:]

    def request_lead(self, last: pd.Timestamp | None, past: dict[str, np.ndarray],
                     future: dict[str, np.ndarray], length: int, horizon: int) -> np.ndarray:
        """[length + horizon - 1, len(columns)]: the lead columns of the history's rows and of the
        horizon's fed-back steps, from the request's known values (past then future) and the calendar."""
        stamps = None
        if self.cycles:
            stamps = self.history_stamps(last, length).append(self.horizon_stamps(last, horizon))  # [T + H]
        known = {name: np.concatenate([past[name], future[name]]) for name in self.known}  # [T + H] each
        return self._lead(stamps, known, length + horizon - 1)  # [T + H - 1, K + 2C]
