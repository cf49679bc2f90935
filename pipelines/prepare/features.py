"""Feature transforms that travel with a model: fitted on the training split, applied at serving.

Series (SeriesTransform): a log or Box-Cox target, seasonal and/or first differencing or the
innovations of an exponential-smoothing filter (the M4 winner's hybrid), then standard scaling per
feature, optionally per input window; each option a params.yaml `prepare` key (README "Forecasting
options"). The same object turns a raw history into network inputs and a network forecast back into
raw units, so training, evaluation and the REST endpoint cannot drift apart.

Text: a tweet-aware tokenizer and a word vocabulary fitted on the training split; the vocabulary (with
its tokenizer settings) is saved as JSON next to the model so the server encodes text the same way.
Subword (byte-level BPE) encoding over the same tweet tokens lives in pipelines/prepare/text.py; the
word vocabulary stays here, where models registered before it pickled their reference to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import SeqopsError


@dataclass(frozen=True)
class SeriesTransform:
    """What the network reads of a series, and the way back; feature 0 is the target, the rest covariates.

    In order (each step optional, each fitted on the training segments only):
    1. `target_transform` on the target: `log`, or `boxcox` with its lambda fitted on the training split
       (multiplicative seasonality becomes additive; the target must be positive).
    2. either differencing of every feature, seasonal (lag `season`; none for a season of 1) and/or
       first, or `smoothing: holt_winters`: the target's one-step innovations against an additive
       Holt-Winters level and season (additive in log / Box-Cox space is multiplicative in raw units),
       alpha and gamma fitted on the training split, the states re-run over each history. The network
       models what exponential smoothing leaves (the M4 winner's hybrid); its forecast is rolled forward
       through the same filter.
    3. standard scaling per feature with the training statistics (`mean`, `std`), then with `scaling:
       window` each input window is normalised again by its own last `window` steps (RevIN-style) and
       the forecast de-normalised by the same statistics, so a level never seen in training looks familiar;
       with `scaling: series` each series is normalised again by the statistics of its whole history (in
       training its training split, at serving the request's history), so in a task whose series differ in
       scale (GDP in billions beside an interest rate in percent) each one reaches the network at unit
       scale, as it would in a task of its own, instead of the small ones reading as flat lines.

    Fields after `std` were added later; a transform.json without them loads as step 3's global scaling
    after optional first differencing, as every model registered before them was trained.
    """

    columns: tuple[str, ...]
    difference: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    target_transform: str = "none"          # none | log | boxcox
    boxcox_lambda: float = 1.0
    season: int = 1
    seasonal_difference: bool = False
    smoothing: str = "none"                 # none | holt_winters
    alpha: float = 0.0
    gamma: float = 0.0
    scaling: str = "global"                 # global | series | window
    window: int = 0

    @classmethod
    def fit(cls, train_values: list[np.ndarray], columns: list[str], difference: bool, *,
            target_transform: str = "none", season: int = 1, seasonal_difference: bool = False,
            smoothing: str = "none", scaling: str = "global", window: int = 0,
            series_ids: Sequence[str] | None = None) -> "SeriesTransform":
        """Fit on the training segments of every series ([T, F] each), never on validation or holdout.

        Raises TransformError when log / Box-Cox meets a non-positive target (naming the series and the
        value) or smoothing meets a training segment shorter than two seasons.
        """
        if smoothing == "holt_winters" and (difference or seasonal_difference):
            raise TransformError("smoothing: holt_winters replaces differencing: set prepare.difference and "
                                 "prepare.seasonal_difference to false")
        ids = list(series_ids) if series_ids is not None else [str(i) for i in range(len(train_values))]
        targets = [np.asarray(v, dtype=np.float64)[:, 0] for v in train_values]
        if target_transform != "none":
            for sid, target in zip(ids, targets):
                bad = np.flatnonzero(target <= 0)
                if len(bad):
                    raise TransformError(
                        f"prepare.transform: {target_transform} needs a positive target, but series {sid!r} has "
                        f"{target[bad[0]]:g} at training step {int(bad[0]) + 1}: use prepare.transform: none")
        lam = 1.0
        if target_transform == "boxcox":
            from scipy.stats import boxcox_normmax

            lam = float(np.clip(boxcox_normmax(np.concatenate(targets), method="mle"), *BOXCOX_BOUNDS))
        alpha = gamma = 0.0
        if smoothing == "holt_winters":
            short = [sid for sid, t in zip(ids, targets) if len(t) < smoothing_min_steps(season)]
            if short:
                raise TransformError(f"prepare.smoothing: holt_winters needs {smoothing_min_steps(season)} training "
                                     f"steps (two seasons and two more); series {short[0]!r} has fewer: use "
                                     f"prepare.smoothing: none")
            alpha, gamma = _fit_smoothing([_power(t, target_transform, lam) for t in targets], season)
        unscaled = cls(tuple(columns), difference, (0.0,) * len(columns), (1.0,) * len(columns), target_transform,
                       lam, season, seasonal_difference and season > 1, smoothing, alpha, gamma)
        stacked = np.concatenate([unscaled.encode(np.asarray(v, dtype=np.float64)) for v in train_values], axis=0)
        mean, std = stacked.mean(axis=0), stacked.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return dataclasses.replace(unscaled, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                                   scaling=scaling, window=int(window))

    @property
    def num_features(self) -> int:
        return len(self.columns)

    @property
    def lost_steps(self) -> int:
        """Steps a history loses before its first network input (`lost_steps`)."""
        return lost_steps(self.season, self.difference, self.seasonal_difference, self.smoothing)

    @property
    def positive(self) -> bool:
        """Whether the target must be positive (log / Box-Cox)."""
        return self.target_transform != "none"

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Raw [T, F] -> network space [T - lost_steps, F] with the global scaling only (no window scaling)."""
        values = np.asarray(values, dtype=np.float64)
        if len(values) <= self.lost_steps:
            return np.empty((0, values.shape[1]), np.float32)
        values = values.copy()
        values[:, 0] = _power(values[:, 0], self.target_transform, self.boxcox_lambda)
        m = self.season
        if self.smoothing == "holt_winters":
            innovations = _smooth(values[:, 0], m, self.alpha, self.gamma)[0]  # [T - m]
            values = np.column_stack([innovations, values[m:, 1:]])  # [T - m, F]
        else:
            if self.seasonal_difference:
                values = values[m:] - values[:-m]  # [T - m, F]
            if self.difference:
                values = np.diff(values, axis=0)  # [T' - 1, F]
        return ((values - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def window_stats(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and std [F] of network-space z [T', F] (std guarded) that `scaling` normalises by:
        its last `window` rows (window), or all of it (series: z is the series' history)."""
        part = np.asarray(z, dtype=np.float64)
        if self.scaling == "window" and self.window:
            part = part[-self.window:]
        mean, std = _moments(part, axis=0)  # [1, F] each
        return mean[0], std[0]

    @property
    def rescales(self) -> bool:
        """Whether inputs are normalised again after the global scaling (`scaling` window or series)."""
        return self.scaling in ("window", "series")

    def scale_series(self, z: np.ndarray, n_train: int) -> np.ndarray:
        """`scaling: series`: one series' network-space values z [T', F] normalised by the statistics of its first
        `n_train` rows (its training split), as the statistics of a request's history normalise it at serving;
        z unchanged otherwise."""
        if self.scaling != "series":
            return z
        mean, std = self.window_stats(z[:max(1, n_train)])
        return ((z - mean) / std).astype(np.float32)  # [T', F]

    def to_inputs(self, values: np.ndarray, context: int | None = None) -> np.ndarray:
        """Raw [T, F] -> network space [T - lost_steps, F].

        With `scaling: window` every feature is normalised by the statistics of the `window` network steps
        ending at raw row `context` (default: the last row; a caller that appends future rows passes the
        history's length so the statistics never see them); with `scaling: series` by those of every step
        up to there.
        """
        z = self.encode(values)  # [T', F]
        if not self.rescales:
            return z
        end = len(z) if context is None else max(1, context - self.lost_steps)
        mean, std = self.window_stats(z[:end])
        return ((z - mean) / std).astype(np.float32)

    def scale_windows(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training pairs in global network space, x [N, W, F] and y [N, S, 1], each normalised by its own
        input window's statistics (identity under `scaling: global`), as to_inputs does at serving."""
        if self.scaling != "window" or len(x) == 0:
            return x, y
        mean, std = _moments(x[:, -self.window:] if self.window else x, axis=1)  # [N, 1, F] each
        return ((x - mean) / std).astype(np.float32), ((y - mean[..., :1]) / std[..., :1]).astype(np.float32)

    def to_target(self, predicted: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Network-space target predictions [H] (or sample paths [N, H]) -> raw units of the same shape,
        continuing the raw target `history` [T] the network read: its last values, last season or smoothing
        states, and window statistics, computed once for every path."""
        history = np.asarray(history, dtype=np.float64)
        r = np.asarray(predicted, dtype=np.float64)  # [..., H]
        if self.rescales:
            single = dataclasses.replace(self, columns=self.columns[:1], mean=self.mean[:1], std=self.std[:1])
            mean, std = self.window_stats(single.encode(history[:, None]))
            r = r * std[0] + mean[0]
        r = r * self.std[0] + self.mean[0]
        u = _power(history, self.target_transform, self.boxcox_lambda)  # [T]
        m, future = self.season, np.empty_like(r)  # [..., H]
        if self.smoothing == "holt_winters":
            _, last_level, last_seasonal = _smooth(u, m, self.alpha, self.gamma)
            level = np.full(r.shape[:-1], float(last_level))  # [...]
            seasonal = np.broadcast_to(last_seasonal, (*r.shape[:-1], m)).copy()  # [..., m]
            for h in range(r.shape[-1]):
                i = (len(u) + h) % m
                future[..., h] = level + seasonal[..., i] + r[..., h]
                level, seasonal[..., i] = _update(level, seasonal[..., i], r[..., h], future[..., h],
                                                  self.alpha, self.gamma)
        else:
            base = u[m:] - u[:-m] if self.seasonal_difference else u
            steps = base[-1] + np.cumsum(r, axis=-1) if self.difference else r  # [..., H]
            if self.seasonal_difference:
                for h in range(r.shape[-1]):
                    future[..., h] = steps[..., h] + (u[len(u) + h - m] if h < m else future[..., h - m])
            else:
                future = steps
        return _unpower(future, self.target_transform, self.boxcox_lambda)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "SeriesTransform":
        raw = json.loads(Path(path).read_text())
        later = {f.name: raw[f.name] for f in dataclasses.fields(cls)[4:] if f.name in raw}
        return cls(tuple(raw["columns"]), raw["difference"], tuple(raw["mean"]), tuple(raw["std"]), **later)


class TransformError(SeqopsError, ValueError):
    """A prepare option the training data cannot take (a log of a non-positive target, too short a series)."""


# Box-Cox lambdas beyond these overflow the inverse on forecasts past the training range.
BOXCOX_BOUNDS = (-1.0, 2.0)
# Smoothing parameters searched (one pair for every series of a task, least squares of the one-step innovations).
ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
GAMMAS = (0.01, 0.05, 0.1, 0.2, 0.4)


def lost_steps(season: int, difference: bool, seasonal_difference: bool, smoothing: str) -> int:
    """Steps a history loses before its first network input: to differencing (a season for seasonal
    differencing, none when the season is 1; one for first differences), or to the first season that
    initialises exponential smoothing. The fitted transform and the params check (config.py) both ask."""
    if smoothing == "holt_winters":
        return season
    return (season if seasonal_difference and season > 1 else 0) + int(difference)


def _moments(part: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of `part` along `axis` (kept, length 1), a near-constant std replaced by 1: the window
    statistics training (`scale_windows`) and serving (`window_stats`) normalise by."""
    std = part.std(axis=axis, keepdims=True)
    return part.mean(axis=axis, keepdims=True), np.where(std > 1e-6, std, 1.0)


def smoothing_min_steps(season: int) -> int:
    """Training steps a series needs for `smoothing: holt_winters`: a season to start the states on, a
    season of transient the fit skips, and two innovations to fit on."""
    return 2 * season + 2


def _power(y: np.ndarray, kind: str, lam: float) -> np.ndarray:
    """The target transform: y [T] -> log(y), Box-Cox(y; lam), or y."""
    if kind == "log":
        return np.log(y)
    if kind == "boxcox":
        return np.log(y) if abs(lam) < 1e-9 else (np.power(y, lam) - 1.0) / lam
    return y


def _unpower(w: np.ndarray, kind: str, lam: float) -> np.ndarray:
    """The inverse of `_power` [H], clipped where a forecast leaves the transform's range."""
    if kind == "log":
        return np.exp(np.minimum(w, 700.0))
    if kind == "boxcox":
        if abs(lam) < 1e-9:
            return np.exp(np.minimum(w, 700.0))
        return np.power(np.maximum(lam * w + 1.0, 1e-12), 1.0 / lam)
    return w


def _update(level: Any, seasonal: Any, innovation: Any, value: Any, alpha: Any, gamma: Any) -> tuple[Any, Any]:
    """One additive Holt-Winters step after observing `value` with one-step error `innovation`."""
    level = level + alpha * innovation
    return level, seasonal + gamma * (value - level - seasonal)


def _smooth(u: np.ndarray, m: int, alpha: Any, gamma: Any) -> tuple[np.ndarray, Any, np.ndarray]:
    """Additive Holt-Winters without trend over u [T] (T > m), initialised on its first season; alpha and
    gamma scalars or arrays [K] of candidates. Returns the one-step innovations [T - m] (or [K, T - m]), the
    last level and the seasonal indices by position t % m ([m] or [K, m])."""
    alpha, gamma = np.asarray(alpha, dtype=np.float64), np.asarray(gamma, dtype=np.float64)
    gamma = gamma if m > 1 else np.zeros_like(gamma)
    level = np.full(alpha.shape, u[:m].mean())  # [] or [K]
    seasonal = np.broadcast_to(u[:m] - u[:m].mean(), (*alpha.shape, m)).copy()  # [m] or [K, m]
    innovations = np.empty((*alpha.shape, len(u) - m))
    for t in range(m, len(u)):
        i = t % m
        e = u[t] - level - seasonal[..., i]
        innovations[..., t - m] = e
        level, seasonal[..., i] = _update(level, seasonal[..., i], e, u[t], alpha, gamma)
    return innovations, level, seasonal


def _fit_smoothing(targets: list[np.ndarray], m: int) -> tuple[float, float]:
    """(alpha, gamma) minimising the squared one-step innovations over every training target [T] after
    its first two seasons (the initialisation's transient)."""
    grid = [(a, g) for a in ALPHAS for g in (GAMMAS if m > 1 else (0.0,))]
    alphas, gammas = np.array([a for a, _ in grid]), np.array([g for _, g in grid])  # [K]
    loss = np.zeros(len(grid))
    for u in targets:
        innovations = _smooth(u, m, alphas, gammas)[0]  # [K, T - m]
        loss += np.sum(innovations[:, m:] ** 2, axis=1)
    best = int(np.argmin(loss))
    return float(alphas[best]), float(gammas[best])


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
  | (?P<symbol>[\u2190-\u21ff\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff])
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
    """Tweet tokens: words (with inner apostrophes), #hashtags, emoticons, "!", "?" and, with `symbols`,
    emoji and pictographs (arrows, dingbats, ♥), one token each.

    HTML entities are unescaped first (tweet exports carry `&amp;`, `&lt;3`). Every URL becomes
    `<url>` and every @mention `<user>`: their exact strings are nearly all unique and would only
    fill the vocabulary. Other punctuation and symbols are dropped; underscores split words, so
    mojibake such as `cars_Ñ_` yields `cars` and `ñ`. `symbols` is False in a tokenizer saved before
    it existed (those dropped emoji), so a model reads text as it was trained; prepare uses
    TWEET_TOKENS.
    """

    lowercase: bool = True
    symbols: bool = False

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
            elif match.lastgroup == "symbol" and not self.symbols:
                continue
            else:
                tokens.append(match.group())
        return tokens


TWEET_TOKENS = Tokenizer(symbols=True)
"""The tokenizer prepare fits with: emoji are tokens (a strong sentiment cue)."""


@dataclass(frozen=True)
class Vocabulary:
    """Token <-> id, with `<pad>` = 0 and `<unk>` = 1 (any token not seen often enough in training)."""

    tokens: tuple[str, ...]
    tokenizer: Tokenizer = TWEET_TOKENS
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tokens[:2] != (PAD_TOKEN, UNK_TOKEN):
            raise ValueError(f"a vocabulary starts with {PAD_TOKEN!r}, {UNK_TOKEN!r}; got {list(self.tokens[:2])}")
        object.__setattr__(self, "_ids", {token: i for i, token in enumerate(self.tokens)})

    @classmethod
    def fit(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None,
            tokenizer: Tokenizer = TWEET_TOKENS) -> "Vocabulary":
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


def text_split(texts: Sequence[str], labels: Sequence[str], validation: float, holdout: float,
               seed: int) -> np.ndarray:
    """Split name ("train" | "validation" | "holdout") per text, decided by the text itself.

    Why keyed on the text and not on its row: evaluate re-scores the champion on today's holdout, and a
    row-based draw reshuffles every split as soon as a text is added or removed, putting texts the champion
    trained on into the holdout (it then looks far better than a new model and is never replaced). Here a
    text's split is a keyed hash of it (`seed` is the key) against fixed thresholds, so it keeps its split
    whatever else the corpus gains or loses, on every machine; a text repeated under two labels has one split.
    Each label gets `holdout` and `validation` of its texts in expectation, and at least one text in every
    split: a label a split would miss takes the text of smallest hash from its largest split, which moves a
    text into the holdout only while the label has none there.
    """
    if not (0 < validation < 1 and 0 < holdout < 1 and validation + holdout < 1):
        raise ValueError(f"validation ({validation}) and holdout ({holdout}) must be fractions in (0, 1) "
                         f"that leave rows for training")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    key = seed.to_bytes(8, "little", signed=True)
    unit = np.array([int.from_bytes(hashlib.blake2b(str(text).encode("utf-8"), digest_size=8, key=key).digest(),
                                    "little") for text in texts], dtype=np.float64) / 2.0 ** 64  # [N] in [0, 1)
    split = np.where(unit < holdout, 2, np.where(unit < holdout + validation, 1, 0))  # [N] index into SPLITS
    labels = np.asarray(labels, dtype=object)
    names, counts = np.unique(labels.astype(str), return_counts=True)
    if (counts < len(SPLITS)).any():
        from pipelines.data.validate import InvalidDataError

        raise InvalidDataError(f"cannot split {len(labels)} texts with label counts "
                               f"{dict(zip(names.tolist(), counts.tolist()))} into train, validation and holdout: "
                               f"every label needs at least {len(SPLITS)} texts, one for each; add texts of the "
                               f"rare labels")
    for name in names:
        rows = np.flatnonzero(labels.astype(str) == name)
        for missing in (0, 2, 1):  # train first: a label must be learnt; then the holdout it is judged on
            if (split[rows] == missing).any():
                continue
            sizes = np.bincount(split[rows], minlength=len(SPLITS))  # [3]
            donors = rows[split[rows] == int(sizes.argmax())]
            split[donors[unit[donors].argmin()]] = missing
    return np.asarray(SPLITS, dtype=object)[split].astype(str)
