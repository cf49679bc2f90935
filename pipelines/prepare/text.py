"""Subword encoding of text: a byte-level BPE learned on the training split, over the tweet tokens.

The tweet tokenizer (features.Tokenizer: lowercase, `<url>`, `<user>`, emoticons, hashtags) decides
what a word is; a byte-level BPE from the `tokenizers` library then splits each word into subwords
learned from the training texts. A rare or misspelt word ("sooooo", "delayd") becomes pieces the
model has seen instead of `<unk>`, and no byte is ever out of vocabulary. The whole encoder is one
JSON file (`tokenizer.json`) that travels with the model; a model registered before it carries the
word vocabulary (`vocabulary.json`) and `load_encoder` reads either.

Ids 0 and 1 are `<pad>` and `<unk>` in both encoders. In a language model's token stream `<pad>`
also marks the boundary between two texts (see `stream`): its embedding row is zero and never
learned, so a boundary reads as "no input", and predicting it teaches the model where texts end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer as BPE
from tokenizers import decoders, models, pre_tokenizers, trainers

from pipelines.prepare.features import (
    PAD_ID,
    PAD_TOKEN,
    TWEET_TOKENS,
    UNK_ID,
    UNK_TOKEN,
    URL_TOKEN,
    USER_TOKEN,
    Tokenizer,
    Vocabulary,
    pad_batch,
)

TOKENIZER_FILE = "tokenizer.json"
VOCABULARY_FILE = "vocabulary.json"
BASE_MODEL_FILE = "base_model.pkl"  # TF-IDF + logistic regression, for `base: tfidf_logreg` variants
BASE_LOG_PROBA_FILE = "base_log_proba.parquet"
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN, URL_TOKEN, USER_TOKEN]
FORMAT = "byte-level-bpe"


class TextEncoder(Protocol):
    """What training, serving and pretraining need of an encoder, whichever format it was saved in."""

    def __len__(self) -> int: ...

    def encode(self, text: str, max_length: int) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]: ...


class SubwordTokenizer:
    """Tweet tokens, then byte-level BPE subwords; `<pad>` = 0, `<unk>` = 1 (a text with no token)."""

    def __init__(self, bpe: BPE, words: Tokenizer = TWEET_TOKENS) -> None:
        self.bpe, self.words = bpe, words

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int, min_frequency: int,
            words: Tokenizer = TWEET_TOKENS) -> SubwordTokenizer:
        """Learn the merges on the TRAINING texts only: a holdout word must look as new as at serving.

        `vocab_size` caps the table (special tokens and the 256 byte symbols included); a merge must be
        seen `min_frequency` times. The result does not depend on the order of `texts`."""
        bpe = BPE(models.BPE())
        # Words are already split (and `<url>`/`<user>` kept whole as special tokens): split on the spaces
        # between them, then map each word's bytes, with a leading space so a word start is its own symbol.
        bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        bpe.train_from_iterator(sorted(" ".join(words(text)) for text in texts), trainer)
        return cls(bpe, words)

    def __len__(self) -> int:
        return self.bpe.get_vocab_size()

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Every token id of each text, uncut."""
        return [e.ids for e in self.bpe.encode_batch([" ".join(self.words(t)) for t in texts])]

    def encode(self, text: str, max_length: int) -> list[int]:
        """Ids of the first `max_length` subwords; `[<unk>]` when the text has no token, so every
        sequence has a last state to read."""
        return self._cut(self.ids([text])[0], max_length)

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [B, T] right-padded with `<pad>` and lengths int64 [B], each text cut to `max_length`."""
        return pad_batch([self._cut(ids, max_length) for ids in self.ids(texts)])

    @staticmethod
    def _cut(ids: list[int], max_length: int) -> list[int]:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        return ids[:max_length] or [UNK_ID]

    def save(self, path: Path) -> None:
        payload = {"format": FORMAT, "words": asdict(self.words), "bpe": json.loads(self.bpe.to_str())}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> SubwordTokenizer:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(BPE.from_str(json.dumps(raw["bpe"])), Tokenizer(**raw["words"]))


def load_encoder(path: Path) -> TextEncoder:
    """The encoder saved at `path`: a `tokenizer.json` (subwords) or a `vocabulary.json` (words, the format
    of models registered before subwords), told apart by their content, not their name."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return SubwordTokenizer.load(path) if raw.get("format") == FORMAT else Vocabulary.load(path)


def encoder_path(prepared: Path) -> Path:
    """The encoder file a prepared directory holds (subwords if prepare learned them, else words)."""
    subwords = prepared / TOKENIZER_FILE
    return subwords if subwords.exists() else prepared / VOCABULARY_FILE


def write_base(prepared: Path, pipeline: object, log_proba: np.ndarray, labels: list[str]) -> None:
    """The base model of `base: tfidf_logreg` variants (pickled, for the served pyfunc) and its
    log-probabilities [N, C] of every prepared text, in texts.parquet's row order, a column per label."""
    import pickle

    import pandas as pd

    from pipelines.data.atomic import write_atomic, write_bytes_atomic

    write_bytes_atomic(pickle.dumps(pipeline), prepared / BASE_MODEL_FILE)
    write_atomic(pd.DataFrame(log_proba, columns=labels), prepared / BASE_LOG_PROBA_FILE)


def read_base_model(prepared: Path) -> object | None:
    """`write_base`'s model, or None when no variant asked prepare for one."""
    import pickle

    path = prepared / BASE_MODEL_FILE
    return pickle.loads(path.read_bytes()) if path.exists() else None


def read_base_log_proba(prepared: Path, labels: list[str]) -> np.ndarray:
    """`write_base`'s log-probabilities [N, C], columns in `labels` order."""
    import pandas as pd

    path = prepared / BASE_LOG_PROBA_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: a `base: tfidf_logreg` variant needs prepare to fit its base "
                                "model; rerun `seqops run` (prepare fits it when a variant asks for it)")
    return pd.read_parquet(path)[labels].to_numpy(np.float32, copy=True)  # [N, C]


def stream(encoder: TextEncoder, texts: Sequence[str], max_length: int) -> np.ndarray:
    """One long token stream int64 [N]: each text's ids (cut to `max_length`), each followed by `<pad>`
    as the boundary; what a language model is trained on. The order of `texts` is kept."""
    ids, lengths = encoder.encode_batch(texts, max_length)
    pieces = [np.append(row[:n], PAD_ID) for row, n in zip(ids, lengths)]
    return np.concatenate(pieces) if pieces else np.empty(0, np.int64)
