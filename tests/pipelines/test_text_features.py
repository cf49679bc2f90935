"""Text features: tweet tokens, a vocabulary fitted on train only with reserved ids, and a reproducible split
that a text keeps when the corpus grows or shrinks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.data.validate import InvalidDataError
from pipelines.prepare.features import PAD_ID, TWEET_TOKENS, UNK_ID, Tokenizer, Vocabulary, text_split


def test_urls_and_mentions_become_placeholder_tokens() -> None:
    tokens = Tokenizer()("@united lost my bag http://t.co/Ab12 see www.example.com/x")
    assert tokens == ["<user>", "lost", "my", "bag", "<url>", "see", "<url>"]


def test_tokens_are_lowercased_and_keep_emoticons_hashtags_and_contractions() -> None:
    tokens = Tokenizer()("I DON'T like #DeflateGate :( but :D &lt;3!!")
    assert tokens == ["i", "don't", "like", "#deflategate", ":(", "but", ":d", "<3", "!", "!"]


def test_times_are_not_read_as_emoticons() -> None:
    assert Tokenizer()("at 10:30") == ["at", "10", "30"]


def test_emoji_are_tokens_of_the_tokenizer_prepare_fits_with() -> None:
    assert TWEET_TOKENS("Loved it 😀😍 ♥!") == ["loved", "it", "😀", "😍", "♥", "!"]
    assert TWEET_TOKENS("😡") != TWEET_TOKENS("😀")


def test_a_tokenizer_saved_before_emoji_were_tokens_still_drops_them(tmp_path: Path) -> None:
    """A served model reads text as it was trained: its saved tokenizer has no `symbols` field."""
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"tokenizer": {"lowercase": True}, "tokens": ["<pad>", "<unk>", "good"]}))
    vocab = Vocabulary.load(path)
    assert vocab.tokenizer("good 😀") == ["good"]
    assert vocab.encode("good 😀", 5) == vocab.encode("good", 5)


def test_word_seen_only_in_validation_maps_to_unk() -> None:
    train, validation = ["good flight", "bad flight"], ["awful flight"]
    vocab = Vocabulary.fit(train)
    assert vocab.encode(validation[0], max_length=10) == [UNK_ID, vocab.encode("flight", 10)[0]]


def test_pad_and_unk_have_reserved_ids() -> None:
    vocab = Vocabulary.fit(["a b"])
    assert vocab.tokens[PAD_ID] == "<pad>" and PAD_ID == 0
    assert vocab.tokens[UNK_ID] == "<unk>" and UNK_ID == 1


def test_ids_follow_frequency_then_alphabetical_order() -> None:
    vocab = Vocabulary.fit(["b c a", "c b", "c"])
    assert vocab.tokens == ("<pad>", "<unk>", "c", "b", "a")


def test_min_freq_drops_rare_tokens() -> None:
    vocab = Vocabulary.fit(["common rare", "common"], min_freq=2)
    assert vocab.tokens == ("<pad>", "<unk>", "common")


def test_max_size_caps_the_whole_table_including_reserved_ids() -> None:
    vocab = Vocabulary.fit(["a a a b b c"], max_size=4)
    assert vocab.tokens == ("<pad>", "<unk>", "a", "b")


def test_encode_truncates_to_max_length() -> None:
    vocab = Vocabulary.fit(["one two three four"])
    assert len(vocab.encode("one two three four", max_length=2)) == 2
    assert vocab.encode("one two three four", max_length=2) == vocab.encode("one two", max_length=2)


def test_text_without_tokens_encodes_as_one_unk() -> None:
    assert Vocabulary.fit(["a"]).encode("... ,,,", max_length=5) == [UNK_ID]


def test_batch_is_right_padded_with_lengths() -> None:
    vocab = Vocabulary.fit(["a b c"])
    ids, lengths = vocab.encode_batch(["a b c", "b", ""], max_length=10)
    assert ids.dtype == np.int64 and ids.shape == (3, 3)
    assert lengths.tolist() == [3, 1, 1]
    assert ids[1].tolist() == [vocab.encode("b", 10)[0], PAD_ID, PAD_ID]


def test_save_load_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary.fit(["caf\xe9 :) @x http://y", "caf\xe9 ok"], tokenizer=Tokenizer(lowercase=False))
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded == vocab
    assert loaded.encode("Caf\xe9 ok", 5) == vocab.encode("Caf\xe9 ok", 5)


def _corpus(n: int, offset: int = 0) -> tuple[list[str], list[str]]:
    labels = ["negative", "neutral", "positive"]
    return [f"text number {k}" for k in range(offset, offset + n)], [labels[k % 5 % 3] for k in range(offset, offset + n)]


def test_split_gives_each_label_its_share() -> None:
    texts, labels = _corpus(3000)
    split = text_split(texts, labels, validation=0.1, holdout=0.2, seed=7)
    for label in ("negative", "neutral", "positive"):
        mine = split[np.asarray(labels) == label]
        total = len(mine)  # 1200 / 1200 / 600
        for name, share in (("holdout", 0.2), ("validation", 0.1)):
            spread = 4 * (total * share * (1 - share)) ** 0.5  # 4 standard deviations of a binomial count
            assert abs((mine == name).sum() - share * total) < spread, (label, name)
    assert set(split) == {"train", "validation", "holdout"}


def test_split_is_deterministic_for_a_seed() -> None:
    texts, labels = _corpus(100)
    first = text_split(texts, labels, 0.2, 0.2, seed=3)
    assert (first == text_split(texts, labels, 0.2, 0.2, seed=3)).all()
    assert (first != text_split(texts, labels, 0.2, 0.2, seed=4)).any()


def test_a_text_keeps_its_split_when_texts_are_added_removed_or_reordered() -> None:
    """evaluate re-scores the champion on today's holdout: none of the texts it trained on may move there."""
    texts, labels = _corpus(600)
    before = dict(zip(texts, text_split(texts, labels, 0.1, 0.1, seed=13)))
    more_texts, more_labels = _corpus(40, offset=600)
    order = np.random.default_rng(0).permutation(640 - 100)  # append 40, drop the first 100, shuffle
    grown_texts = np.asarray(texts + more_texts)[100:][order].tolist()
    grown_labels = np.asarray(labels + more_labels)[100:][order].tolist()
    after = dict(zip(grown_texts, text_split(grown_texts, grown_labels, 0.1, 0.1, seed=13)))
    assert all(after[text] == split for text, split in before.items() if text in after)


def test_a_label_with_three_texts_gets_one_in_every_split() -> None:
    texts, labels = _corpus(300)
    texts, labels = texts + ["rare one", "rare two", "rare three"], labels + ["sarcastic"] * 3
    split = text_split(texts, labels, 0.1, 0.1, seed=0)
    assert sorted(split[-3:]) == ["holdout", "train", "validation"]


def test_a_label_with_fewer_texts_than_splits_is_refused_with_the_counts() -> None:
    texts, labels = _corpus(300)
    with pytest.raises(InvalidDataError, match=r"'sarcastic': 2.*at least 3 texts"):
        text_split(texts + ["a", "b"], labels + ["sarcastic"] * 2, 0.1, 0.1, seed=0)


def test_split_fractions_must_leave_training_rows() -> None:
    with pytest.raises(ValueError, match="leave rows for training"):
        text_split(*_corpus(20), validation=0.5, holdout=0.5, seed=0)
