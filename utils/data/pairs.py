"""Stage 1 for users' own audio–caption data: a CSV of ``file_name,caption`` rows and a folder of clips.

A clip may have any number of captions (one row each; 1 for most own data, 5 for Clotho, 1 or 5 for
AudioCaps). A wide CSV with ``caption_1 ... caption_n`` columns is read too: every non-empty cell is a
caption. A split in this format is declared in the config under ``data.sources``::

    data:
      sources: {mine: {format: pairs, captions_csv: /data/mine/captions.csv, audio_dir: /data/mine/audio}}
      train_split: development+mine        # utils.data.split_mix

Its tables have the same columns and stable IDs as Clotho's: ``fid`` from the split and the canonical file
name (:func:`utils.data.clotho.make_fid`), ``tid = <fid>_<n>`` with n = 1, 2, ... in CSV order per clip. File names
are matched to the folder with :class:`utils.data.clotho.ClipIndex` (HTML entities, stray spaces, odd characters);
a name may include subfolders (``birds/robin.wav``). Missing, empty or unreadable clips, and clips without
captions, go to the skip report with the reason, as for Clotho.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from utils.base import paths
from utils.base.config import Config
from utils.base.errors import DataError
from utils.data.clotho import (
    ClipIndex,
    SplitTables,
    build_paired_split,
    build_query_split,
    make_fid,
    make_tid,
    name_key,
    normalize_text,
    probe_audio,
)

_CAPTION_COLUMN = re.compile(r"caption(_\d+)?$")


@dataclass
class _Clip:
    fname: str  # canonical name relative to the audio folder: 'a.wav' or 'sub/a.wav'
    captions: list[str] = field(default_factory=list)


def read_pairs_csv(path: Path) -> list[tuple[str, list[str]]]:
    """``file_name,caption`` rows (or ``file_name,caption_1..n``) -> ``[(file_name, [caption, ...]), ...]``."""
    if not path.is_file():
        raise DataError(f"caption file not found: {path}. Set data.sources.<split>.captions_csv to a CSV of "
                        "file_name,caption rows.")
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = [c.strip() for c in reader.fieldnames or []]
        columns = [c for c in header if _CAPTION_COLUMN.match(c)]
        if "file_name" not in header or not columns:
            raise DataError(f"{path} has columns {header}; expected file_name and caption (one row per "
                            "caption), or file_name and caption_1 ... caption_n")
        reader.fieldnames = header
        return [(row["file_name"] or "", [row[c] or "" for c in columns]) for row in reader]


def table_path(path: Path, dataset_dir: Path) -> str:
    """A clip's ``path`` column: relative to ``dataset_dir`` when inside it, else absolute (stage 2 joins
    ``dataset_dir / path``, which keeps an absolute path as it is)."""
    try:
        return str(path.relative_to(dataset_dir))
    except ValueError:
        return str(path.resolve())


def _find(csv_name: str, audio_dir: Path, indexes: dict[str, ClipIndex]) -> tuple[Path, str] | None:
    """The file of a CSV name (possibly ``sub/name.wav``) and its canonical name, or None."""
    sub, _, base = name_key(csv_name).replace("\\", "/").rpartition("/")
    sub = "/".join(p.strip() for p in sub.split("/") if p.strip() not in ("", "."))  # './a.wav' = 'a.wav'
    if sub not in indexes:
        indexes[sub] = ClipIndex.scan(audio_dir / sub if sub else audio_dir)
    path = indexes[sub].find(base)
    if path is None:
        return None
    return path, f"{sub}/{path.name}" if sub else path.name


def _group(entries: list[tuple[str, list[str]]], audio_dir: Path,
           indexes: dict[str, ClipIndex]) -> tuple[dict[Path, _Clip], Counter]:
    """Captions per clip (first-appearance order) and caption rows per CSV name without a file."""
    clips: dict[Path, _Clip] = {}
    missing: Counter = Counter()
    for csv_name, captions in entries:
        found = _find(csv_name, audio_dir, indexes)
        if found is None:
            missing[csv_name] += 1
            continue
        clip = clips.setdefault(found[0], _Clip(found[1]))
        clip.captions.extend(c.strip() for c in captions if c.strip())
    return clips, missing


def build_pairs_split(split: str, captions_csv: Path, audio_dir: Path, dataset_dir: Path) -> SplitTables:
    """Match a pairs CSV to its clips; bad or missing clips go to ``skipped``, the rest get stable IDs."""
    entries = read_pairs_csv(captions_csv)
    if not audio_dir.is_dir():
        raise DataError(f"audio folder not found: {audio_dir}. Set data.sources.{split}.audio_dir to the folder "
                        f"of the clips named in {captions_csv}.")
    indexes: dict[str, ClipIndex] = {}
    clips, missing = _group(entries, audio_dir, indexes)
    out = SplitTables(split)
    for csv_name, rows in missing.items():
        out.skipped.append({"fname": csv_name, "path": "", "reason": f"no matching audio file ({rows} caption "
                                                                      f"row{'s' if rows > 1 else ''})"})
    for path, clip in clips.items():
        rel = table_path(path, dataset_dir)
        if not clip.captions:
            out.skipped.append({"fname": clip.fname, "path": rel, "reason": "only empty captions in the CSV"})
            continue
        probe = probe_audio(path)
        if isinstance(probe, str):
            out.skipped.append({"fname": clip.fname, "path": rel, "reason": probe})
            continue
        fid = make_fid(split, clip.fname)
        out.audio_rows.append({"fid": fid, "fname": clip.fname, "path": rel, "duration": f"{probe[0]:.3f}",
                               "sample_rate": probe[1]})
        out.text_rows.extend({"tid": make_tid(fid, n), "fid": fid, "fname": clip.fname, "raw_text": raw,
                              "text": normalize_text(raw)} for n, raw in enumerate(clip.captions, start=1))
    for index in indexes.values():
        for path in index.by_key.values():
            if path not in clips:
                out.skipped.append({"fname": path.name, "path": table_path(path, dataset_dir),
                                    "reason": "audio file has no captions in the CSV"})
    return out


def build_clotho_split(split: str, captions_csv: Path, audio_dir: Path, dataset_dir: Path) -> SplitTables:
    """:func:`utils.data.clotho.build_paired_split`, also for a Clotho-format folder outside ``dataset_dir``."""
    try:
        audio_dir.relative_to(dataset_dir)
    except ValueError:
        root = audio_dir.resolve()
        tables = build_paired_split(split, captions_csv, root, root)
        for row in tables.audio_rows + tables.skipped:
            row["path"] = table_path(root / row["path"], dataset_dir) if row["path"] else ""
        return tables
    return build_paired_split(split, captions_csv, audio_dir, dataset_dir)


def build_split(conf: Config, split: str) -> SplitTables:
    """Stage 1 for one split of the config, in its format (``clotho``, ``pairs`` or a query split)."""
    dataset_dir = Path(conf.data.dataset_dir)
    fmt = paths.split_format(conf, split)
    if fmt == "query":
        return build_query_split(split, paths.query_csv(conf, split), paths.audio_dir(conf, split), dataset_dir)
    build = build_pairs_split if fmt == "pairs" else build_clotho_split
    return build(split, paths.captions_csv(conf, split), paths.audio_dir(conf, split), dataset_dir)
