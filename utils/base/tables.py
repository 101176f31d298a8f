"""Small CSV tables (caption tables, clip tables, skip reports) read and written without pandas.

Every value is a string, so IDs and file names round-trip exactly; writes are atomic.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from utils.base.errors import DataError
from utils.base.fileio import atomic_write

TEXT_COLUMNS = ["tid", "fid", "fname", "raw_text", "text"]
AUDIO_COLUMNS = ["fid", "fname", "path", "duration", "sample_rate"]
SKIPPED_COLUMNS = ["fname", "path", "reason"]


def write_rows(path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    """Write ``rows`` as CSV with a header, atomically (a crash never leaves a half-written table)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def read_rows(path: str | os.PathLike, required: Sequence[str] = (), hint: str = "") -> list[dict[str, str]]:
    """Read a CSV into a list of dicts; a missing file or missing columns raise :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}. {hint}".strip())
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path} lacks column(s) {missing}; found {header}")
        reader.fieldnames = header
        return [{k: (v if v is not None else "") for k, v in row.items()} for row in reader]


def read_text_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """A stage-1 caption table: rows with ``tid, fid, fname, raw_text, text`` (fid empty for query splits)."""
    return read_rows(path, TEXT_COLUMNS, hint="Run preprocessing/01_clotho_dataset.py first.")


def read_audio_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """A stage-1 clip table: rows with ``fid, fname, path, duration, sample_rate`` (path relative to dataset_dir)."""
    return read_rows(path, AUDIO_COLUMNS, hint="Run preprocessing/01_clotho_dataset.py first.")
