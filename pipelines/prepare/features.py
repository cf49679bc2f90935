"""Feature transforms that travel with a model: fitted on the training split, applied at serving.

Series: optional first differencing (CO2 trends out of its training range, a level-trained
network would have to extrapolate), then standard scaling per feature. The same object turns a
raw history into network inputs and a network forecast back into raw units, so training,
evaluation and the REST endpoint cannot drift apart.

Text: a tweet-aware tokenizer and a word vocabulary fitted on the training split; the vocabulary (with
its tokenizer settings) is saved as JSON next to the model so the server encodes text the same way.
Subword (byte-level BPE) encoding over the same tweet tokens lives in pipelines/prepare/text.py; the
word vocabulary stays here, where models registered before it pickled their reference to it.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class SeriesTransform:
    """Difference (optional) then standardise; feature 0 is the target, the rest covariates."""

    columns: tuple[str, ...]
    difference: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, train_values: list[np.ndarray], columns: list[str], difference: bool) -> "SeriesTransform":
        """Fit on the training segments of every series ([T, F] each), never on validation or holdout."""
        parts = [np.diff(v, axis=0) if difference else v for v in train_values]
        stacked = np.concatenate(parts, axis=0)
        mean = stacked.mean(axis=0)
        std = stacked.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(columns), difference, tuple(float(m) for m in mean), tuple(float(s) for s in std))

    @property
    def num_features(self) -> int:
        return len(self.columns)

    @property
    def lost_steps(self) -> int:
        """Steps a history loses to differencing."""
        return 1 if self.difference else 0

    def to_inputs(self, values: np.ndarray) -> np.ndarray:
        """Raw [T, F] -> network space [T - lost_steps, F]."""
        values = np.asarray(values, dtype=np.float64)
        if self.difference:
            values = np.diff(values, axis=0)
        return ((values - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def to_target(self, predicted: np.ndarray, last_value: float) -> np.ndarray:
        """Network-space target predictions [H] -> raw units, continuing from the last observed value."""
        raw = np.asarray(predicted, dtype=np.float64) * self.std[0] + self.mean[0]
        return last_value + np.cumsum(raw) if self.difference else raw

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "SeriesTransform":
        raw = json.loads(Path(path).read_text())
        return cls(tuple(raw["columns"]), raw["difference"], tuple(raw["mean"]), tuple(raw["std"]))


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Repeat the last observed season: the baseline every forecast is measured against."""
    last = np.asarray(history, dtype=np.float64)[-season:]
    return np.array([last[h % season] for h in range(horizon)])


def training_windows(z: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """One-step-ahead pairs from a network-space series [T, F]: x [N, W, F], y [N, W, 1] (next target)."""
    if len(z) < 2:
        return np.empty((0, window, z.shape[1]), np.float32), np.empty((0, window, 1), np.float32)
    length = min(window, len(z) - 1)
    starts = list(range(0, len(z) - 1 - length + 1, stride))
    if starts[-1] != len(z) - 1 - length:
        starts.append(len(z) - 1 - length)
    xs = np.stack([z[s:s + length] for s in starts])
    ys = np.stack([z[s + 1:s + length + 1, :1] for s in starts])
    return xs.astype(np.float32), ys.astype(np.float32)


def horizon_windows(z: np.ndarray, window: int, horizon: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder-decoder pairs: x [N, W, F] of context, y [N, H, 1] of the target that follows it."""
    starts = list(range(0, len(z) - window - horizon + 1, stride))
    if not starts:
        return np.empty((0, window, z.shape[1]), np.float32), np.empty((0, horizon, 1), np.float32)
    xs = np.stack([z[s:s + window] for s in starts])
    ys = np.stack([z[s + window:s + window + horizon, :1] for s in starts])
    return xs.astype(np.float32), ys.astype(np.float32)


URL_TOKEN = "<url>"
USER_TOKEN = "<user>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1

# Alternatives are tried left to right at each position, so a URL or emoticon wins over the words
# inside it. Text is lowercased first, so ":D" and ":d" are one token. Eyes are only ":;=" (not "x"
# or "8", which start words and numbers) and mouths exclude digits, so "10:30" stays two numbers.
_TOKEN_PATTERN = re.compile(r"""
    (?P<url>(?:https?://|www\.)\S+)
  | (?P<user>@\w+)
  | (?P<emoticon>[:;=][-'^]?[()\[\]dpo/\\|*]+|<3)
  | (?P<hashtag>\#\w+)
  | (?P<word>[^\W_]+(?:['’][^\W_]+)*)
  | (?P<mark>[!?])
""", re.VERBOSE)


def pad_batch(encoded: Sequence[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists -> ids int64 [B, T] right-padded with `<pad>` (T = the longest) and lengths int64 [B]."""
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    batch = np.full((len(encoded), int(lengths.max(initial=0))), PAD_ID, dtype=np.int64)
    for row, ids in enumerate(encoded):
        batch[row, :len(ids)] = ids
    return batch, lengths


@dataclass(frozen=True)
class Tokenizer:
    """Tweet tokens: words (with inner apostrophes), #hashtags, emoticons, "!" and "?".

    HTML entities are unescaped first (tweet exports carry `&amp;`, `&lt;3`). Every URL becomes
    `<url>` and every @mention `<user>`: their exact strings are nearly all unique and would only
    fill the vocabulary. Other punctuation and symbols are dropped; underscores split words, so
    mojibake such as `cars_Ñ_` yields `cars` and `ñ`.
    """

    lowercase: bool = True

    def __call__(self, text: str) -> list[str]:
        text = html.unescape(text)
        if self.lowercase:
            text = text.lower()
        tokens = []
        for match in _TOKEN_PATTERN.finditer(text):
            if match.lastgroup == "url":
                tokens.append(URL_TOKEN)
            elif match.lastgroup == "user":
                tokens.append(USER_TOKEN)
            else:
                tokens.append(match.group())
        return tokens


@dataclass(frozen=True)
class Vocabulary:
    """Token <-> id, with `<pad>` = 0 and `<unk>` = 1 (any token not seen often enough in training)."""

    tokens: tuple[str, ...]
    tokenizer: Tokenizer = Tokenizer()
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tokens[:2] != (PAD_TOKEN, UNK_TOKEN):
            raise ValueError(f"a vocabulary starts with {PAD_TOKEN!r}, {UNK_TOKEN!r}; got {list(self.tokens[:2])}")
        object.__setattr__(self, "_ids", {token: i for i, token in enumerate(self.tokens)})

    @classmethod
    def fit(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None,
            tokenizer: Tokenizer = Tokenizer()) -> "Vocabulary":
        """Fit on the TRAINING texts only: a validation or holdout word must look unseen, as at serving.

        Keeps tokens seen at least `min_freq` times, most frequent first, ties by token so the ids do
        not depend on input order; `max_size` caps the whole table including `<pad>` and `<unk>`
        (it is the embedding's row count).
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be >= 2 (room for {PAD_TOKEN} and {UNK_TOKEN}), got {max_size}")
        counts = Counter(token for text in texts for token in tokenizer(text))
        kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size - 2]
        return cls((PAD_TOKEN, UNK_TOKEN, *kept), tokenizer)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_length: int) -> list[int]:
        """Ids of the first `max_length` tokens (the rest is cut off); `[<unk>]` when no token is left,
        so every sequence has length >= 1 and a recurrent model always has a last state to read."""
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        ids = [self._ids.get(token, UNK_ID) for token in self.tokenizer(text)[:max_length]]
        return ids or [UNK_ID]

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [B, T] right-padded with `<pad>` (T = the longest in the batch) and lengths int64 [B]."""
        return pad_batch([self.encode(text, max_length) for text in texts])

    def save(self, path: Path) -> None:
        payload = {"tokenizer": asdict(self.tokenizer), "tokens": list(self.tokens)}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(tuple(raw["tokens"]), Tokenizer(**raw["tokenizer"]))


SPLITS = ("train", "validation", "holdout")


def stratified_split(labels: Sequence[str], validation: float, holdout: float, seed: int) -> np.ndarray:
    """Split name ("train" | "validation" | "holdout") per row, each split keeping every label's share.

    Text rows are exchangeable (unlike a series), so the split is random but stratified: a minority
    class (positive tweets are 18%) gets the same share of holdout as of train. Holdout is cut first,
    then validation from the rest; the same labels and seed give the same split on every machine.
    """
    if not (0 < validation < 1 and 0 < holdout < 1 and validation + holdout < 1):
        raise ValueError(f"validation ({validation}) and holdout ({holdout}) must be fractions in (0, 1) "
                         f"that leave rows for training")
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    try:
        rest, held = train_test_split(rows, test_size=holdout, stratify=labels, random_state=seed)
        train, valid = train_test_split(rest, test_size=validation / (1 - holdout), stratify=labels[rest],
                                        random_state=seed)
    except ValueError as e:
        names, counts = np.unique(labels, return_counts=True)
        raise ValueError(f"cannot stratify {len(labels)} rows with label counts "
                         f"{dict(zip(names.tolist(), counts.tolist()))}: {e}") from None
    split = np.empty(len(labels), dtype=object)
    split[train], split[valid], split[held] = SPLITS
    return split.astype(str)
