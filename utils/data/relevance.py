"""Relevance files: several relevant clips per caption, as DCASE 2025 evaluates retrieval.

One CSV per split, declared in the config (``data.relevance: {evaluation: relevance_evaluation.csv}``, relative
to ``data.dataset_dir``), with a header and one row per (caption, clip) pair::

    caption,file_name,relevance
    A dog barks twice.,dog_park.wav,1
    A dog barks twice.,kennel.wav,0.5

``relevance`` is optional (a missing column or empty cell means relevant); any value > 0 counts as relevant,
0 or less as not. Captions are matched to the split's caption table by their original text (``raw_text``,
surrounding spaces ignored; every table row with that text gets the row's clips), clips by their original
file name. Captions without a relevant clip are left out of the text->audio metrics.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from utils.base.config import Config
from utils.base.errors import DataError


def relevance_file(conf: Config, split: str) -> Path | None:
    """The relevance CSV declared for ``split`` (``data.relevance``), or None."""
    name = conf.data.relevance.get(split)
    return None if name is None else Path(conf.data.dataset_dir) / name


def _relevant(value: str | None, path: Path, line: int) -> bool:
    if value is None or not value.strip():
        return True
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if math.isnan(number):
        raise DataError(f"{path}, line {line}: relevance '{value}' is not a number; use a number (> 0 = relevant)")
    return number > 0


def read_relevance(path: str | Path, captions: list[str], fnames: list[str]) -> np.ndarray:
    """Boolean ``(n_captions, n_clips)``: ``[i, j]`` when clip ``fnames[j]`` is relevant to ``captions[i]``.

    Raises :class:`DataError` naming the file (and line) when it is missing, lacks the ``caption`` or
    ``file_name`` column, or names a caption or file that the split does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"relevance file not found: {path}; fix data.relevance in the config or make the file")
    rows_of: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        rows_of.setdefault(caption.strip(), []).append(i)
    column = {name: j for j, name in enumerate(fnames)}
    relevance = np.zeros((len(captions), len(fnames)), dtype=bool)
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        missing = {"caption", "file_name"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path} has no {sorted(missing)} column(s); its header must be "
                            "caption,file_name[,relevance]")
        for line, row in enumerate(reader, start=2):
            caption, fname = (row["caption"] or "").strip(), row["file_name"] or ""
            if caption not in rows_of:
                raise DataError(f"{path}, line {line}: caption '{caption[:80]}' is not in the split's caption table")
            if fname not in column:
                raise DataError(f"{path}, line {line}: file_name '{fname}' is not a clip of the split")
            if _relevant(row.get("relevance"), path, line):
                relevance[rows_of[caption], column[fname]] = True
    if not relevance.any():
        raise DataError(f"{path} marks no clip as relevant (every relevance is <= 0)")
    return relevance
