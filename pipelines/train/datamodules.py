"""LightningDataModules over prepared data, producing the batch dicts models/ expects.

Series, many_to_many: windows of one-step-ahead pairs from the training segment; validation is
every series' train+validation sequence with the loss masked to the validation steps, so the
network warms its state on the past exactly as it will at serving time.
Series, encoder_decoder: (context window, following horizon) pairs; validation pairs are those
whose horizon starts inside the validation segment.
Text, many_to_one: token ids (subwords or words, whichever encoder prepare fitted) right-padded to
the batch's longest text, with lengths, so the model packs them and reads each text's last real step.
The language model's token streams are pipelines/train/pretrain.py's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.prepare.features import SeriesTransform, horizon_windows, training_windows
from pipelines.prepare.text import encoder_path, load_encoder, read_base_log_proba


class _Dicts(Dataset):
    def __init__(self, **arrays: np.ndarray) -> None:
        # np.require copies only a read-only array (pandas' copy-on-write hands those out), which torch
        # would otherwise wrap with a warning.
        self.arrays = {k: torch.as_tensor(np.require(v, requirements="W")) for k, v in arrays.items()}
        self.length = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


def load_segments(prepared: Path, transform_file: str = "transform.json"
                  ) -> tuple[SeriesTransform, list[tuple[np.ndarray, int, int]]]:
    """The transform and, per series, (network-space values [T', F], n_train', n_validation), globally scaled and,
    under `scaling: series`, by the series' training statistics (`transform.scale_series`): window scaling
    (`transform.scale_windows`) is applied to each window the datamodule cuts."""
    transform = SeriesTransform.load(prepared / transform_file)
    series = pd.read_parquet(prepared / "series.parquet")
    segments = []
    for _, group in series.groupby("series_id", sort=False):
        z = transform.encode(group[list(transform.columns)].to_numpy())
        n_train = int((group["split"] == "train").sum()) - transform.lost_steps
        n_val = int((group["split"] == "validation").sum())
        segments.append((transform.scale_series(z, n_train), n_train, n_val))
    return transform, segments


class SeriesDataModule(pl.LightningDataModule):
    def __init__(self, prepared: Path, topology: str, window: int, stride: int, batch_size: int,
                 horizon: int, transform_file: str = "transform.json") -> None:
        super().__init__()
        self.prepared, self.topology, self.transform_file = prepared, topology, transform_file
        self.window, self.stride, self.batch_size, self.horizon = window, stride, batch_size, horizon

    def setup(self, stage: str | None = None) -> None:
        self.transform, segments = load_segments(self.prepared, self.transform_file)
        if self.topology == "many_to_many":
            self.train_set = self._many_to_many_train(segments)
            self.val_set = self._many_to_many_val(segments)
        elif self.topology == "encoder_decoder":
            self.train_set, self.val_set = self._encoder_decoder(segments)
        else:
            raise ValueError(f"series tasks support many_to_many and encoder_decoder, not {self.topology!r}")

    def _many_to_many_train(self, segments: list[tuple[np.ndarray, int, int]]) -> _Dicts:
        pairs = [training_windows(z[:n_train], self.window, self.stride) for z, n_train, _ in segments]
        length = min(p[0].shape[1] for p in pairs)
        x, y = self.transform.scale_windows(np.concatenate([p[0][:, -length:] for p in pairs]),
                                            np.concatenate([p[1][:, -length:] for p in pairs]))  # [N, W, F], [N, W, 1]
        return _Dicts(x=x, y=y)

    def _many_to_many_val(self, segments: list[tuple[np.ndarray, int, int]]) -> _Dicts:
        longest = max(n_train + n_val for _, n_train, n_val in segments) - 1
        features = segments[0][0].shape[1]
        x = np.zeros((len(segments), longest, features), np.float32)
        y = np.zeros((len(segments), longest, 1), np.float32)
        mask = np.zeros((len(segments), longest), bool)
        for i, (z, n_train, n_val) in enumerate(segments):
            seq = z[:n_train + n_val]
            if self.transform.scaling == "window":  # as served from the validation segment's first origin
                mean, std = self.transform.window_stats(z[:n_train])
                seq = ((seq - mean) / std).astype(np.float32)  # [n_train + n_val, F]
            offset = longest - (len(seq) - 1)  # right-align so every series ends at the last step
            x[i, offset:] = seq[:-1]
            y[i, offset:] = seq[1:, :1]
            mask[i, offset + n_train - 1:] = True
        return _Dicts(x=x, y=y, mask=mask)

    def _encoder_decoder(self, segments: list[tuple[np.ndarray, int, int]]) -> tuple[_Dicts, _Dicts]:
        train = [horizon_windows(z[:n_train], self.window, self.horizon, self.stride) for z, n_train, _ in segments]
        val = []
        for z, n_train, n_val in segments:
            start = max(0, n_train - self.window)
            val.append(horizon_windows(z[start:n_train + n_val], self.window, self.horizon, 1))
        train_x, train_y = self.transform.scale_windows(np.concatenate([t[0] for t in train]),
                                                        np.concatenate([t[1] for t in train]))  # [N, W, F], [N, H, 1]
        val_x, val_y = self.transform.scale_windows(np.concatenate([v[0] for v in val]),
                                                    np.concatenate([v[1] for v in val]))  # [M, W, F], [M, H, 1]
        return _Dicts(x=train_x, y=train_y), _Dicts(x=val_x, y=val_y)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)


class TextDataModule(pl.LightningDataModule):
    """Encoded texts of the training and validation splits; with `base`, each text also carries its base
    model's log-probabilities as the batch's `offset` (a `base: tfidf_logreg` variant corrects them)."""

    def __init__(self, prepared: Path, labels: list[str], max_length: int, batch_size: int, base: bool = False) -> None:
        super().__init__()
        self.prepared, self.labels = prepared, labels
        self.max_length, self.batch_size, self.base = max_length, batch_size, base

    def setup(self, stage: str | None = None) -> None:
        self.encoder = load_encoder(encoder_path(self.prepared))
        texts = pd.read_parquet(self.prepared / "texts.parquet")
        offsets = read_base_log_proba(self.prepared, self.labels) if self.base else None  # [N, C]
        index = {label: i for i, label in enumerate(self.labels)}
        self.sets = {}
        for split in ("train", "validation"):
            rows = (texts["split"] == split).to_numpy()
            part = texts[rows]
            ids, lengths = self.encoder.encode_batch(part["text"].tolist(), self.max_length)
            arrays = {"x": ids, "lengths": lengths, "y": part["label"].map(index).to_numpy(np.int64)}
            if offsets is not None:
                arrays["offset"] = offsets[rows]  # [N_split, C]
            self.sets[split] = _Dicts(**arrays)

    @staticmethod
    def _trim(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Stack a batch and cut its padding to the longest text in it: packing then skips less."""
        stacked = {k: torch.stack([item[k] for item in batch]) for k in batch[0]}
        longest = int(stacked["lengths"].max())
        stacked["x"] = stacked["x"][:, :longest]
        return stacked

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.sets["train"], batch_size=self.batch_size, shuffle=True, generator=generator,
                          collate_fn=self._trim)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["validation"], batch_size=self.batch_size * 2, collate_fn=self._trim)
