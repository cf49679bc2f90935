"""Text features: tweet tokens, a vocabulary fitted on train only with reserved ids, and a stratified,
reproducible split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.prepare.features import PAD_ID, UNK_ID, Tokenizer, Vocabulary, stratified_split


def test_urls_and_mentions_become_placeholder_tokens() -> None:
    tokens = Tokenizer()("@united lost my bag http://t.co/Ab12 see www.example.com/x")
    assert tokens == ["<user>", "lost", "my", "bag", "<url>", "see", "<url>"]


def test_tokens_are_lowercased_and_keep_emoticons_hashtags_and_contractions() -> None:
    tokens = Tokenizer()("I DON'T like #DeflateGate :( but :D &lt;3!!")
    assert tokens == ["i", "don't", "like", "#deflategate", ":(", "but", ":d", "<3", "!", "!"]


def test_times_are_not_read_as_emoticons() -> None:
    assert Tokenizer()("at 10:30") == ["at", "10", "30"]


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


def test_split_keeps_each_labels_share() -> None:
    labels = ["negative"] * 500 + ["neutral"] * 300 + ["positive"] * 200
    split = stratified_split(labels, validation=0.1, holdout=0.2, seed=7)
    for label, total in (("negative", 500), ("neutral", 300), ("positive", 200)):
        mine = split[np.asarray(labels) == label]
        assert (mine == "holdout").sum() == pytest.approx(0.2 * total, abs=1)
        assert (mine == "validation").sum() == pytest.approx(0.1 * total, abs=1)
    assert set(split) == {"train", "validation", "holdout"}


def test_split_is_deterministic_for_a_seed() -> None:
    labels = ["a", "b"] * 50
    first = stratified_split(labels, 0.2, 0.2, seed=3)
    assert (first == stratified_split(labels, 0.2, 0.2, seed=3)).all()
    assert (first != stratified_split(labels, 0.2, 0.2, seed=4)).any()


def test_split_fractions_must_leave_training_rows() -> None:
    with pytest.raises(ValueError, match="leave rows for training"):
        stratified_split(["a", "b"] * 10, validation=0.5, holdout=0.5, seed=0)
