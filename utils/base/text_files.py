"""Reading text files that may be damaged or in a foreign encoding, with one-line errors.

    describe_yaml_error(err)                  # one line: "is not valid YAML (line 3, column 1: ...)"
    load_yaml_mapping(path, what, hint)       # a YAML mapping, or one DataError line naming the file
    read_text_guess_encoding(path, what)      # str; UTF-8, UTF-16/32 (BOM or NUL pattern) or Windows-1252
"""

from __future__ import annotations

import codecs
import os
import sys
from pathlib import Path

import yaml

from utils.base.errors import DataError


def describe_yaml_error(err: Exception) -> str:
    """A YAML or decoding error as one line, for "config file X {...}"."""
    if isinstance(err, UnicodeDecodeError):
        return (f"is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                "save it as UTF-8")
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"is not valid YAML ({where}{problem})"


def load_yaml_mapping(path: Path, what: str, hint: str) -> dict:
    """``yaml.safe_load`` of a file that must hold a mapping; a damaged file is one :class:`DataError` line."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} {describe_yaml_error(err)}; {hint}") from err
    except OSError as err:
        raise DataError(f"{what} {path} cannot be read ({err.strerror or err}); {hint}") from err
    if not isinstance(raw, dict):
        raise DataError(f"{what} {path} does not hold a mapping (damaged?); {hint}")
    return raw


_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def guess_encoding(data: bytes) -> str:
    """The encoding of a text file: a BOM, UTF-16 without BOM (NUL bytes at odd or even offsets), UTF-8,
    else Windows-1252 (which decodes Latin-1 text too). Raises :class:`DataError` when none fits."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    head = data[:4096]
    if head and head.count(0) > len(head) // 4:
        return "utf-16-le" if head[1::2].count(0) > head[0::2].count(0) else "utf-16-be"
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        data.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def read_text_guess_encoding(path: str | os.PathLike, what: str = "file") -> str:
    """The text of ``path``, decoded as :func:`guess_encoding` says; a warning on stderr when it is not UTF-8."""
    path = Path(path)
    data = path.read_bytes()
    encoding = guess_encoding(data)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {path} looks like {encoding} but does not decode as it ({err.reason} at byte "
                        f"{err.start}); save it as UTF-8") from err
    if encoding not in ("utf-8", "utf-8-sig"):
        print(f"warning: {what} {path} is not UTF-8; read it as {encoding}", file=sys.stderr)
    return text.lstrip("\ufeff")
