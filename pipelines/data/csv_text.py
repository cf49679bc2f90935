"""A CSV file's bytes as the text pandas parses: its encoding found, its line ends made one, its header checked.

pandas, given a path, guesses less than users' files need: a carriage return alone inside an unquoted cell
(pandas' own `to_csv` writes one so) ends its row there, and the rest of the cell becomes a row of its own
or is dropped as empty; a column named twice silently becomes `name.1`; a file that is UTF-8 but for one
Windows-1252 cell decodes whole as Windows-1252, every other accented letter garbled; a UTF-16 file (what
Excel's "Unicode" export writes) reads as columns of `\\x00`. Decoding here first keeps a lone carriage
return inside its cell, and each of the others is refused with what to do.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import Counter
from pathlib import Path

ENCODINGS = ("utf-8", "cp1252", "latin-1")  # after UTF-8, what spreadsheets on Windows save; latin-1 decodes any byte
# A multi-byte UTF-8 sequence (RFC 3629): in a file that is not valid UTF-8, one of these means the file mixes
# encodings rather than being Windows-1252 throughout, where such byte pairs spell mojibake like "Ã©".
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
                            rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
                            rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}")


class CsvTextError(ValueError):
    """A CSV file whose bytes cannot be read as one text; the message says why and what to do."""


def csv_text(path: Path) -> str:
    """The file's text with "\\n" line ends (CRLF, and a file of carriage returns only, converted); a carriage
    return alone inside a line stays, as part of its cell. Refused: a header naming a column twice."""
    text = _normalised(_decoded(path.read_bytes()))
    if duplicated := duplicate_columns(text):
        raise CsvTextError(f"the header names column{'s' if len(duplicated) > 1 else ''} "
                           f"{', '.join(map(repr, duplicated))} more than once; rename or remove the copies")
    return text


def _decoded(raw: bytes) -> str:
    """UTF-8 (a BOM dropped), UTF-16 with its BOM, else Windows-1252, else latin-1: the first that decodes."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise CsvTextError(f"it starts as UTF-16 but is not valid UTF-16 ({e.reason}); re-save it as UTF-8") \
                from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if _UTF8_SEQUENCE.search(raw):
            line = raw.count(b"\n", 0, e.start) + 1
            raise CsvTextError(f"line {line} is not UTF-8 ({raw[e.start:e.start + 1]!r}) where other lines are: the "
                               "file mixes encodings; re-save it as UTF-8") from None
    for encoding in ENCODINGS[1:]:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any byte")


def _normalised(text: str) -> str:
    if "\n" not in text:
        return text.replace("\r", "\n")  # an old Mac export: carriage returns end the lines
    return text.replace("\r\n", "\n")


def duplicate_columns(text: str) -> list[str]:
    """The names the header line (the first record) gives more than one column, in order, spaces around a name
    not counted (`date, value` names `value`: what the reader makes of it)."""
    header = [name.strip() for name in next(csv.reader(io.StringIO(text)), [])]
    return [name for name, count in Counter(header).items() if count > 1]


def ragged_line(text: str) -> str | None:
    """`line 7 has 3 fields where the header has 2`: the first record whose field count differs from the
    header's, by its line in the file (pandas counts records, so a quoted newline above shifts its number)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    for record in reader:
        if record and len(record) > len(header):
            return f"line {reader.line_num} has {len(record)} fields where the header has {len(header)}"
    return None
