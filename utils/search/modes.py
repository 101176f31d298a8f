"""What ``search.py`` needs beyond :mod:`utils.search.retriever`: file lists as input, JSON as output."""

from __future__ import annotations

import os
from pathlib import Path

from utils.base.errors import DataError


def read_file_list(path: str | os.PathLike) -> list[Path]:
    """Audio files named in a text file, one per line; blank lines and ``#`` comments are ignored.

    Relative names are taken relative to the list's own folder, so a list travels with its files.
    """
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"file list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the file list {path} ({err}); it must be UTF-8 text, one path a line") from err
    files = []
    for line in lines:
        name = line.strip()
        if name and not name.startswith("#"):
            files.append(path.parent / Path(name).expanduser())  # an absolute name stays absolute
    if not files:
        raise DataError(f"the file list {path} names no files (one audio path a line)")
    return files


def results_json(query: str, kind: str, results: list[tuple[str, float]]) -> dict:
    """One query's results for ``--json``: ``{"query", "kind", "results": [{"rank", "score", "path"}]}``."""
    return {"query": query, "kind": kind,
            "results": [{"rank": i, "score": round(float(s), 6), "path": p} for i, (p, s) in enumerate(results, 1)]}
