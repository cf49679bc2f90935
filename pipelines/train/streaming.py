"""Stateful streaming TBPTT for series tasks (`training.mode: stateful`, many_to_many).

Enters: prepared/<task>/series.parquet and transform.json. Leaves: batches of the contract in
models/module.py ({"x", "y", "mask", "reset"}), for training and for validation.

Why: window mode cuts every series into windows that start from a zero state, so nothing longer than
a window is learned and the window array grows with the series. Here the training pairs of every
series are laid end to end on one line, cut into B contiguous rows (B = batch size), and batch j holds
the next `steps` pairs of every row: the state is carried from batch to batch (models/ keeps it), and
TBPTT(k1, k2) inside a batch detaches it at its chunk boundaries, so one pass reads every step in
context. A row whose piece of a series ends pads the rest of that batch (mask False) and starts its
next piece from a zero state (the batch's `reset` mask). Epoch 0 cuts the line at 0; every later epoch
rotates it by a seeded offset, which moves every cut: the only shuffling that keeps order.

Streaming from disk: setup converts series.parquet to network space in a float32 file (temporary),
reading the Parquet file record batch by record batch with pyarrow; batches then read their rows from
it (StreamFile). Training memory is bounded by one record batch and one batch of B x steps pairs,
whatever the series' length.

Validation warms each series' state over its whole training history before scoring its validation
steps, as serving does: series in groups of B rows, WARMUP_STEPS at a time, the loss masked to the
validation targets (models/module.py does not score a batch that has no scored step).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from models import WARMUP_STEPS
from pipelines.errors import SeqopsError
from pipelines.prepare.features import SeriesTransform

READ_ROWS = 1 << 16  # rows per Parquet record batch while building the stream file


class StreamError(SeqopsError, ValueError):
    """The prepared series cannot fill the stateful stream (too few training steps for the batch)."""


@dataclass(frozen=True)
class SeriesSpan:
    """One series in the stream file: its first row, training steps and validation steps (network space)."""

    start: int
    n_train: int
    n_val: int


@dataclass(frozen=True)
class Piece:
    """Contiguous training pairs [start, stop) of one series, as stream rows: pair a is (x = row a, y = row a + 1)."""

    start: int
    stop: int


class StreamFile:
    """The stream's float32 rows [N, F] in a file, read by row slice with `os.pread`.

    Why not a memory map: every page a map touches stays in this process's resident set until it is
    unmapped, so one pass over a 10^7-step series would leave the whole file resident and the peak would grow
    with the length. Read this way, the rows pass through the page cache (shared, reclaimable) and the
    process holds only the slice it asked for.
    """

    def __init__(self, path: Path, rows: int, features: int) -> None:
        self.path, self.shape = path, (rows, features)
        self._file = path.open("rb", buffering=0)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice | tuple[Any, ...]) -> np.ndarray:
        """Rows `key[0]` (a slice with step 1), then numpy indexing by the rest of `key` on them."""
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"a StreamFile is read by contiguous row slices, got {rows!r}")
        start, stop, _ = rows.indices(self.shape[0])
        width = self.shape[1] * np.dtype(np.float32).itemsize
        data = os.pread(self._file.fileno(), max(0, stop - start) * width, start * width)
        return np.frombuffer(data, np.float32).reshape(-1, self.shape[1])[(slice(None), *rest)]  # [r, F] or less

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)


def write_stream(parquet: Path, transform: SeriesTransform, path: Path) -> tuple[StreamFile, list[SeriesSpan]]:
    """Network-space inputs of every series' training and validation rows, as float32 rows in a file at `path`.

    Reads `parquet` (prepare's series.parquet: series_id, split and the transform's columns, each series'
    rows contiguous and in time order) READ_ROWS at a time and appends to the file, so neither side holds
    more than one record batch; differencing (first and seasonal) carries the last `lost_steps` raw rows
    across record batches, so the rows equal one transform of the whole series. Holdout
    rows are skipped: training never reads them. Pre-buffering is off: with it, pyarrow keeps every row
    group it has read until the reader is closed (the whole file by the end).
    """
    source = pq.ParquetFile(parquet, pre_buffer=False)
    columns, lost = list(transform.columns), transform.lost_steps
    spans: list[SeriesSpan] = []
    cursor, current, previous, counts = 0, None, None, [0, 0]

    def close() -> None:
        if current is not None:
            spans.append(SeriesSpan(start, counts[0] - lost, counts[1]))

    with path.open("wb") as out:
        for batch in source.iter_batches(batch_size=READ_ROWS, columns=["series_id", "split", *columns]):
            ids = batch.column("series_id")
            ids = ids.dictionary_decode() if pa.types.is_dictionary(ids.type) else ids
            train = pc.equal(batch.column("split"), "train").to_numpy(zero_copy_only=False)  # [R]
            kept = train | pc.equal(batch.column("split"), "validation").to_numpy(zero_copy_only=False)  # [R]
            values = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in columns])  # [R, F]
            changed = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
            cuts = np.flatnonzero(changed) + 1  # series boundaries inside the batch, without a Python string per row
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(ids)]):
                if ids[int(a)].as_py() != current:
                    close()
                    current, previous, counts, start = ids[int(a)].as_py(), None, [0, 0], cursor
                rows = values[a:b][kept[a:b]]  # [r, F]
                counts[0] += int(train[a:b].sum())
                counts[1] += int((kept[a:b] & ~train[a:b]).sum())
                if len(rows) == 0:
                    continue
                lead = rows if previous is None else np.concatenate([previous, rows])  # [lost + r, F]
                z = np.ascontiguousarray(transform.to_inputs(lead), np.float32)  # [len(lead) - lost, F]
                out.write(z.tobytes())
                cursor, previous = cursor + len(z), (lead[max(0, len(lead) - lost):] if lost else None)
    close()
    return StreamFile(path, cursor, len(columns)), spans


def plan_rows(spans: list[SeriesSpan], rows: int, offset: int) -> list[list[Piece]]:
    """The pieces of each of `rows` contiguous rows: every series' training pairs laid end to end on one
    line, rotated by `offset`, cut into `rows` rows of equal length (the last may be shorter)."""
    pieces = [(s.start, s.start + s.n_train - 1) for s in spans if s.n_train > 1]
    total = sum(b - a for a, b in pieces)
    if total < rows:
        raise StreamError(f"the training segments hold {total} step pairs, fewer than training.batch_size={rows} "
                          f"stateful rows: lower training.batch_size or use training.mode: window")
    length = -(-total // rows)
    ends = np.cumsum([b - a for a, b in pieces])  # [S]
    plan = []
    for r in range(rows):
        row: list[Piece] = []
        for lo, hi in _wrapped(offset + r * length, offset + min((r + 1) * length, total), total):
            while lo < hi:
                s = int(np.searchsorted(ends, lo, side="right"))
                begin = pieces[s][0] + lo - (int(ends[s - 1]) if s else 0)
                stop = min(pieces[s][1], begin + hi - lo)
                row.append(Piece(begin, stop))
                lo += stop - begin
        plan.append(row)
    return plan


def _wrapped(lo: int, hi: int, total: int) -> list[tuple[int, int]]:
    """[lo, hi) on a circular line of length `total`, as one or two plain intervals."""
    lo, hi = lo % total, lo % total + hi - lo
    return [(lo, hi)] if hi <= total else [(lo, total), (0, hi - total)]


def _fill(values: StreamFile, x: np.ndarray, y: np.ndarray, row: int, start: int, stop: int) -> None:
    """Row `row` of a batch takes pairs [start, stop) of the stream."""
    n = stop - start
    rows = values[start:stop + 1]  # [n + 1, F]: one read for inputs and next-step targets
    x[row, :n] = rows[:n]  # [n, F]
    y[row, :n, 0] = rows[1:, 0]  # [n]


class StreamBatches(IterableDataset):
    """Training batches of the stateful stream, one epoch per iteration (each iteration rotates the line)."""

    def __init__(self, values: StreamFile, spans: list[SeriesSpan], rows: int, steps: int, seed: int) -> None:
        self.values, self.spans, self.rows, self.steps, self.seed = values, spans, rows, steps, seed
        self.epoch = 0

    def offset(self, epoch: int) -> int:
        """Where epoch `epoch` cuts the line: 0 first, then a seeded shift."""
        total = sum(max(0, s.n_train - 1) for s in self.spans)
        return 0 if epoch == 0 else int(np.random.default_rng([self.seed, epoch]).integers(total))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = plan_rows(self.spans, self.rows, self.offset(self.epoch))
        self.epoch += 1
        cursors = [(0, row[0].start) if row else None for row in plan]
        features, first = self.values.shape[1], True
        while any(c is not None for c in cursors):
            x = np.zeros((self.rows, self.steps, features), np.float32)  # [B, steps, F]
            y = np.zeros((self.rows, self.steps, 1), np.float32)  # [B, steps, 1]
            mask = np.zeros((self.rows, self.steps), bool)  # [B, steps]
            reset = np.ones(self.rows, bool)  # [B]
            for r, cursor in enumerate(cursors):
                if cursor is None:
                    continue
                index, at = cursor
                piece = plan[r][index]
                stop = min(piece.stop, at + self.steps)
                _fill(self.values, x, y, r, at, stop)
                mask[r, :stop - at] = True
                reset[r] = at == piece.start
                if stop < piece.stop:
                    cursors[r] = (index, stop)
                elif index + 1 < len(plan[r]):
                    cursors[r] = (index + 1, plan[r][index + 1].start)
                else:
                    cursors[r] = None
            yield {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "mask": torch.from_numpy(mask),
                   "reset": True if first else torch.from_numpy(reset)}
            first = False


class WarmupBatches(IterableDataset):
    """Validation: each series from its first step, B series a batch, WARMUP_STEPS pairs at a time; only
    pairs whose target is a validation step are scored."""

    def __init__(self, values: StreamFile, spans: list[SeriesSpan], rows: int) -> None:
        self.values, self.spans, self.rows = values, spans, rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        features = self.values.shape[1]
        for g in range(0, len(self.spans), self.rows):
            group = self.spans[g:g + self.rows]
            longest = max(s.n_train + s.n_val - 1 for s in group)
            for at in range(0, longest, WARMUP_STEPS):
                steps = min(WARMUP_STEPS, longest - at)
                x = np.zeros((len(group), steps, features), np.float32)  # [G, steps, F]
                y = np.zeros((len(group), steps, 1), np.float32)  # [G, steps, 1]
                mask = np.zeros((len(group), steps), bool)  # [G, steps]
                for r, span in enumerate(group):
                    stop = min(span.n_train + span.n_val - 1, at + steps)
                    if stop <= at:
                        continue
                    _fill(self.values, x, y, r, span.start + at, span.start + stop)
                    scored = np.arange(at, stop) >= span.n_train - 1  # [stop - at]: the target is a validation step
                    mask[r, :stop - at] = scored
                yield {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "mask": torch.from_numpy(mask),
                       "reset": at == 0}


class StatefulSeriesDataModule(pl.LightningDataModule):
    """The stateful stream over prepared/<task>/: `steps` pairs per row and batch (prepare.window),
    `batch_size` rows; `seed` shifts the line from the second epoch on."""

    def __init__(self, prepared: Path, steps: int, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.prepared, self.steps, self.batch_size, self.seed = prepared, steps, batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "values"):
            return
        self.transform = SeriesTransform.load(self.prepared / "transform.json")
        self._scratch = tempfile.TemporaryDirectory(prefix="seqops-stream-")
        self.values, self.spans = write_stream(self.prepared / "series.parquet", self.transform,
                                               Path(self._scratch.name) / "stream.f32")
        plan_rows(self.spans, self.batch_size, 0)  # fail at setup, naming the key, when the rows cannot be filled

    def train_dataloader(self) -> DataLoader:
        """A fresh stream per fit, so every variant sharing this data module sees the same epochs."""
        return DataLoader(StreamBatches(self.values, self.spans, self.batch_size, self.steps, self.seed),
                          batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(WarmupBatches(self.values, self.spans, self.batch_size), batch_size=None)
