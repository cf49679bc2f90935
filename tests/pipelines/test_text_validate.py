"""Text tables: bad input is an error naming the column and rows; empty and repeated rows are dropped
and counted; the built-in tweets read offline and write the same bytes every time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data.atomic import write_atomic
from pipelines.data.sources import SourceError, read_source, read_table
from pipelines.data.validate import InvalidDataError, validate_text

LABELS = ["negative", "neutral", "positive"]


def _validate(frame: pd.DataFrame, duplicates: str = "drop") -> tuple[pd.DataFrame, dict[str, int]]:
    return validate_text(frame, text="text", label="label", labels=LABELS, duplicates=duplicates, name="t.csv")


def _frame(texts: list, labels: list) -> pd.DataFrame:
    return pd.DataFrame({"text": pd.Series(texts, dtype=object), "label": pd.Series(labels, dtype=object)})


@pytest.mark.parametrize("column", ["text", "label"])
def test_missing_text_or_label_column_is_named(column: str) -> None:
    frame = _frame(["good"], ["positive"]).rename(columns={column: "other"})
    with pytest.raises(InvalidDataError, match=f"missing column '{column}'"):
        _validate(frame)


def test_unknown_labels_name_their_rows_and_values() -> None:
    frame = _frame(["a", "b", "c", "d"], ["positive", "happy", "neutral", "sad"])
    with pytest.raises(InvalidDataError, match=r"column 'label' rows 2 \('happy'\), 4 \('sad'\): not one of "
                                              r"the declared labels"):
        _validate(frame)


def test_a_text_without_a_label_is_named_as_such() -> None:
    frame = _frame(["a", "b", "c"], ["positive", None, "  "])
    with pytest.raises(InvalidDataError, match=r"rows 2 \(None\), 3 \('  '\): no label \(a blank cell\)"):
        _validate(frame)


def test_a_row_with_neither_text_nor_label_is_dropped_as_empty() -> None:
    """A spreadsheet's trailing empty rows, or a blank line with commas."""
    clean, counts = _validate(_frame(["good", np.nan, ""], ["positive", np.nan, None]))
    assert clean.to_dict("records") == [{"text": "good", "label": "positive"}]
    assert counts["dropped_empty"] == 2


def test_labels_lose_surrounding_spaces_and_whole_floats_read_as_integers() -> None:
    """pandas reads an integer label column with one blank cell as floats; a spreadsheet leaves "positive "."""
    clean, _ = validate_text(_frame(["a", "b", "c"], [1.0, 0.0, 2.0]), text="text", label="label", labels=None,
                             duplicates="drop", name="t.csv")
    assert clean["label"].tolist() == ["1", "0", "2"]
    clean, _ = _validate(_frame(["a", "b"], ["positive ", " neutral"]))
    assert clean["label"].tolist() == ["positive", "neutral"]
    with pytest.raises(InvalidDataError, match=r"row 1 \(0\.5\): not one of the labels \(strings or whole"):
        validate_text(_frame(["a", "b"], [0.5, 1]), text="text", label="label", labels=None, duplicates="drop",
                      name="t.csv")


def test_inferred_labels_that_differ_only_in_case_are_refused() -> None:
    frame = _frame(["a", "b", "c"], ["positive", "Positive", "negative"])
    with pytest.raises(InvalidDataError, match=r"differ only in case: \[\['Positive', 'positive'\]\]"):
        validate_text(frame, text="text", label="label", labels=None, duplicates="drop", name="t.csv")


def test_only_the_first_few_bad_rows_are_listed() -> None:
    frame = _frame([f"t{i}" for i in range(9)], ["meh"] * 9)
    with pytest.raises(InvalidDataError, match=r"rows 1 \('meh'\), 2 .*, 5 \('meh'\) and 4 more"):
        _validate(frame)


def test_undecodable_bytes_name_their_rows() -> None:
    frame = _frame(["fine", "caf\xe9".encode("latin-1"), b"ok bytes"], ["neutral"] * 3)
    with pytest.raises(InvalidDataError, match=r"column 'text' row 2 \(b'caf\\xe9'\): not valid UTF-8"):
        _validate(frame)


def test_lone_surrogates_are_undecodable() -> None:
    frame = _frame(["fine", "bad \udce9"], ["neutral"] * 2)
    with pytest.raises(InvalidDataError, match=r"column 'text' row 2 .*not valid UTF-8"):
        _validate(frame)


def test_valid_utf8_bytes_are_decoded() -> None:
    clean, _ = _validate(_frame(["caf\xe9".encode("utf-8")], ["neutral"]))
    assert clean["text"].tolist() == ["caf\xe9"]


def test_numbers_in_text_name_their_rows() -> None:
    frame = _frame(["fine", 42, 3.5], ["neutral"] * 3)
    with pytest.raises(InvalidDataError, match=r"column 'text' rows 2 \(42\), 3 \(3.5\): not text"):
        _validate(frame)


def test_empty_whitespace_and_missing_text_are_dropped_and_counted() -> None:
    frame = _frame(["keep me", "", "  \t\n", np.nan, None, "me too"], ["positive"] * 5 + ["negative"])
    clean, counts = _validate(frame)
    assert clean["text"].tolist() == ["keep me", "me too"]
    assert counts["dropped_empty"] == 4


def test_texts_of_invisible_characters_only_are_dropped_as_empty() -> None:
    """str.strip() keeps a zero-width space, a BOM or a joiner: such a text was kept and trained on as a word;
    serving refuses the same texts as empty (one rule, `blank_text`)."""
    frame = _frame(["keep me", "\u200b", " \ufeff\u200d ", "\u00ad", "ok\u200b"], ["positive"] * 4 + ["negative"])
    clean, counts = _validate(frame)
    assert clean["text"].tolist() == ["keep me", "ok\u200b"]
    assert counts["dropped_empty"] == 3


def test_duplicates_drop_keeps_the_first_after_whitespace_normalisation() -> None:
    frame = _frame(["good  day", "other", "good day ", "Good day"], ["positive", "neutral", "positive", "positive"])
    clean, counts = _validate(frame, duplicates="drop")
    assert clean["text"].tolist() == ["good  day", "other", "Good day"]
    assert counts == {"dropped_empty": 0, "dropped_duplicates": 1, "dropped_conflicting": 0}


def test_duplicates_keep_leaves_every_row() -> None:
    frame = _frame(["same", "same", "same"], ["positive", "positive", "negative"])
    clean, counts = _validate(frame, duplicates="keep")
    assert clean["label"].tolist() == ["positive", "positive", "negative"]
    assert counts == {"dropped_empty": 0, "dropped_duplicates": 0, "dropped_conflicting": 0}


def test_text_with_conflicting_labels_is_dropped_entirely() -> None:
    frame = _frame(["meh", "love it", "meh ", "meh", "hate it"], ["neutral", "positive", "negative", "neutral",
                                                                   "negative"])
    clean, counts = _validate(frame, duplicates="drop")
    assert clean["text"].tolist() == ["love it", "hate it"]
    assert counts["dropped_conflicting"] == 3


def test_output_is_text_and_label_in_input_order_with_a_fresh_index() -> None:
    frame = _frame(["b", "", "a"], ["neutral", "neutral", "positive"]).assign(extra=1)
    frame.index = [10, 20, 30]
    clean, _ = _validate(frame)
    assert list(clean.columns) == ["text", "label"]
    assert clean.index.tolist() == [0, 1]
    assert clean["text"].tolist() == ["b", "a"]


def test_unknown_duplicates_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown duplicates policy 'dedupe'"):
        _validate(_frame(["a"], ["neutral"]), duplicates="dedupe")


def test_latin1_csv_is_read_after_utf8_fails(tmp_path: Path) -> None:
    path = tmp_path / "tweets.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,positive\n".encode("latin-1"))
    assert read_table(path)["text"].tolist() == ["caf\xe9 au lait"]


def test_a_windows_1252_csv_keeps_its_quotes_and_euro_sign(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    text = "\u201cGreat\u201d trip, only 5\u20ac \u2013 loved it"
    path.write_bytes(f'text,label\n"{text}",positive\n'.encode("cp1252"))
    assert read_table(path)["text"].tolist() == [text]


def test_words_pandas_reads_as_missing_stay_text_in_a_text_table(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\nNA,neutral\nnull,negative\nNone,positive\n,neutral\n")
    assert read_table(path, strings=True)["text"].tolist()[:3] == ["NA", "null", "None"]
    assert pd.isna(read_table(path, strings=True)["text"].iloc[3])
    assert read_table(path)["text"].isna().all()  # series tables: "NA" is a missing value


def test_a_lone_carriage_return_stays_inside_its_cell(tmp_path: Path) -> None:
    """pandas' to_csv writes a text holding a lone CR unquoted; read by path, pandas ended the row there."""
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"stars": ["positive", "negative"], "review": ["super\rb nice", "fine"]}).to_csv(path, index=False)
    assert b"super\rb nice\n" in path.read_bytes()  # unquoted: what made the row break
    frame = read_table(path, strings=True)
    assert frame.to_dict("records") == [{"stars": "positive", "review": "super\rb nice"},
                                        {"stars": "negative", "review": "fine"}]
    path.write_bytes(b"stars,review\r\npositive,super\rb nice\r\nnegative,\"two\r\nlines\"\r\n")
    assert read_table(path, strings=True)["review"].tolist() == ["super\rb nice", "two\nlines"]
    path.write_bytes(b"stars,review\rpositive,good\rnegative,bad\r")  # carriage returns only: an old Mac export
    assert read_table(path, strings=True)["review"].tolist() == ["good", "bad"]


def test_a_file_mixing_utf8_with_another_encoding_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_bytes(b"body,rating\nutf8 caf\xc3\xa9 good,5\ncp1252 caf\xe9 bad,1\n")
    with pytest.raises(SourceError, match=r"line 3 is not UTF-8 \(b'\\xe9'\) where other lines are: the file mixes "
                                          r"encodings; re-save it as UTF-8"):
        read_table(path, strings=True)


def test_a_utf16_csv_is_read(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["caf\xe9 \U0001F600"], "stars": ["5"]}).to_csv(path, index=False, encoding="utf-16")
    assert read_table(path, strings=True).to_dict("records") == [{"review": "caf\xe9 \U0001F600", "stars": "5"}]


def test_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("review,stars,stars\nhello,positive,negative\n")
    with pytest.raises(SourceError, match=r"the header names column 'stars' more than once"):
        read_table(path, strings=True)


def test_a_ragged_row_is_named_by_its_line_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\n"one\nquoted",a\n"two\nquoted",b\nfine,a\nbad,row,here\n')
    with pytest.raises(SourceError, match=r"line 7 has 3 fields where the header has 2"):
        read_table(path, strings=True)


def test_text_task_cells_are_read_as_written_whatever_the_other_rows_hold(tmp_path: Path) -> None:
    """A column of numbers read as numbers made `007` the label 7 in one file and `007` in another."""
    path = tmp_path / "codes.csv"
    for other in ("1e3", "topic_a"):
        path.write_text(f"body,rating\n12,007\ncode b,{other}\ncode c,4.0\n")
        frame = validate_text(read_table(path, strings=True), text="body", label="rating", labels=None,
                              duplicates="keep", name="codes.csv")[0]
        assert frame["label"].tolist() == ["007", other, "4"] and frame["text"].tolist()[0] == "12"


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_with_another_separator_is_refused_saying_so(tmp_path: Path, separator: str) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text(f"text{separator}label\ngood, really{separator}positive\nbad{separator}negative\n")
    with pytest.raises(SourceError, match=r"header line is separated by (semicolons|tabs).*save it with commas") as info:
        read_table(path)
    assert str(info.value).count(str(path)) == 1  # named once, not "path: cannot be read as csv: path: ..."


def test_builtin_tweets_read_offline_with_three_labels() -> None:
    tweets = read_source("builtin:tweets", Path("."))
    assert list(tweets.columns) == ["text", "label"]
    assert set(tweets["label"]) == set(LABELS)
    assert len(tweets) == 38158


def test_builtin_tweets_write_the_same_bytes_twice(tmp_path: Path) -> None:
    digests = []
    for attempt in ("first", "second"):
        path = tmp_path / attempt / "raw.parquet"
        write_atomic(read_source("builtin:tweets", Path(".")), path)
        digests.append(hashlib.md5(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
