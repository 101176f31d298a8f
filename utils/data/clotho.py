"""Stage 1: Clotho caption CSVs + audio folders -> caption tables with stable IDs.

Real Clotho file names contain commas, parentheses, ``#``, HTML entities (``&amp;``, ``&#39;``)
and stray spaces, spelled differently in the CSV and on disk. :func:`name_key` folds those
differences away so the two sides can be matched.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from utils.base.errors import DataError
from utils.base.text_files import read_text_guess_encoding
from utils.data.audio import AUDIO_EXTENSIONS

CAPTION_COLUMNS = [f"caption_{i}" for i in range(1, 6)]
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


# --------------------------------------------------------------------------------------------
# Names and IDs
# --------------------------------------------------------------------------------------------


def name_key(name: str) -> str:
    """Canonical form of a clip name: HTML-unescaped (repeatedly), NFC, whitespace-collapsed, stripped.

    Trailing spaces before the extension (``"a .wav"``) are folded too.
    """
    prev = None
    while prev != name:  # '&amp;#39;' -> '&#39;' -> "'"
        prev, name = name, html.unescape(name)
    name = unicodedata.normalize("NFC", name)
    name = re.sub(r"\s+", " ", name).strip()
    stem, dot, ext = name.rpartition(".")
    if dot and ext.lower() in {s[1:] for s in AUDIO_EXTENSIONS}:
        name = f"{stem.strip()}.{ext}"
    return name


def loose_key(name: str) -> str:
    """A looser key (letters and digits only, lower case) used only when it is unambiguous."""
    return re.sub(r"[^0-9a-z]", "", name_key(name).lower())


def make_fid(split: str, fname: str) -> str:
    """Stable clip ID: the same split and (canonical) file name give the same ID on every machine."""
    digest = hashlib.sha1(f"{split}/{name_key(fname)}".encode()).hexdigest()
    return f"{split[:3]}_{digest[:12]}"


def make_tid(fid: str, caption_index: int) -> str:
    """Stable caption ID: ``<fid>_<1..5>``."""
    return f"{fid}_{caption_index}"


def make_query_tid(split: str, row: int, caption: str) -> str:
    """Stable ID of a query caption in an unpaired split."""
    digest = hashlib.sha1(f"{split}/{row}/{caption}".encode()).hexdigest()
    return f"{split[:3]}_q{row:05d}_{digest[:6]}"


def normalize_text(raw: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (the baseline's ``text`` column)."""
    return " ".join(raw.lower().translate(_PUNCT).split())


# --------------------------------------------------------------------------------------------
# Matching CSV names to files on disk
# --------------------------------------------------------------------------------------------


@dataclass
class ClipIndex:
    """The audio files of one folder, looked up by canonical name."""

    folder: Path
    by_key: dict[str, Path] = field(default_factory=dict)
    by_loose: dict[str, list[Path]] = field(default_factory=dict)

    @classmethod
    def scan(cls, folder: Path) -> ClipIndex:
        index = cls(folder)
        if not folder.is_dir():
            return index
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
                index.by_key.setdefault(name_key(path.name), path)
                index.by_loose.setdefault(loose_key(path.name), []).append(path)
        return index

    def find(self, csv_name: str) -> Path | None:
        """The file for a CSV name: exact canonical match first, then an unambiguous loose match."""
        path = self.by_key.get(name_key(csv_name))
        if path is not None:
            return path
        candidates = self.by_loose.get(loose_key(csv_name), [])
        return candidates[0] if len(candidates) == 1 else None

    def __len__(self) -> int:
        return len(self.by_key)


def probe_audio(path: Path) -> tuple[float, int] | str:
    """``(duration_s, sample_rate)`` of a readable clip, else the reason it is unusable."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        return f"unreadable: {err}"
    if info.frames <= 0 or info.samplerate <= 0:
        return "zero-length audio"
    return info.frames / info.samplerate, int(info.samplerate)


# --------------------------------------------------------------------------------------------
# Building the tables
# --------------------------------------------------------------------------------------------


@dataclass
class SplitTables:
    """Stage-1 result for one split."""

    split: str
    text_rows: list[dict] = field(default_factory=list)  # tid, fid, fname, raw_text, text
    audio_rows: list[dict] = field(default_factory=list)  # fid, fname, path, duration, sample_rate
    skipped: list[dict] = field(default_factory=list)  # fname, path, reason


def read_captions_csv(path: Path) -> list[tuple[str, list[str]]]:
    """``clotho_captions_<split>.csv`` -> ``[(file_name, [caption_1..5]), ...]``."""
    if not path.is_file():
        raise DataError(
            f"caption file not found: {path}. Download Clotho v2.1 and set data.dataset_dir "
            "(or run preprocessing/00_make_demo_dataset.py for the demo data)."
        )
    with io.StringIO(read_text_guess_encoding(path, "caption file"), newline="") as stream:
        reader = csv.DictReader(stream)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ["file_name", *CAPTION_COLUMNS] if c not in header]
        if missing:
            raise DataError(f"{path} lacks column(s) {missing}; expected file_name, caption_1 ... caption_5")
        reader.fieldnames = header
        return [(row["file_name"] or "", [row[c] or "" for c in CAPTION_COLUMNS]) for row in reader]


def build_paired_split(split: str, captions_csv: Path, audio_dir: Path, dataset_dir: Path) -> SplitTables:
    """Match a Clotho split's captions to its clips; bad or missing clips go to ``skipped``."""
    entries = read_captions_csv(captions_csv)
    if not audio_dir.is_dir():
        raise DataError(f"audio folder not found: {audio_dir}. Expected the split's clips there.")
    index = ClipIndex.scan(audio_dir)
    out = SplitTables(split)
    seen: set[Path] = set()
    for csv_name, captions in entries:
        path = index.find(csv_name)
        if path is None:
            out.skipped.append({"fname": csv_name, "path": "", "reason": "no matching audio file"})
            continue
        if path in seen:
            out.skipped.append({"fname": csv_name, "path": str(path), "reason": "duplicate CSV row"})
            continue
        seen.add(path)
        probe = probe_audio(path)
        rel = str(path.relative_to(dataset_dir))
        if isinstance(probe, str):
            out.skipped.append({"fname": path.name, "path": rel, "reason": probe})
            continue
        duration, sr = probe
        fid = make_fid(split, path.name)
        out.audio_rows.append(
            {"fid": fid, "fname": path.name, "path": rel, "duration": f"{duration:.3f}", "sample_rate": sr}
        )
        for i, raw in enumerate(captions, start=1):
            raw = raw.strip()
            if raw:
                out.text_rows.append(
                    {"tid": make_tid(fid, i), "fid": fid, "fname": path.name, "raw_text": raw,
                     "text": normalize_text(raw)}
                )
    for path in index.by_key.values():
        if path not in seen:
            out.skipped.append({"fname": path.name, "path": str(path.relative_to(dataset_dir)),
                                "reason": "audio file has no captions in the CSV"})
    return out


def read_query_csv(path: Path) -> list[str]:
    """A challenge query file: one caption per row in a ``caption`` column (or the first column)."""
    if not path.is_file():
        raise DataError(f"query caption file not found: {path}. Set data.query_splits.<split>.captions_csv.")
    with io.StringIO(read_text_guess_encoding(path, "query caption file"), newline="") as stream:
        reader = csv.DictReader(stream)
        header = [c.strip() for c in reader.fieldnames or []]
        if not header:
            raise DataError(f"{path} is empty; expected a header with a 'caption' column")
        column = "caption" if "caption" in header else header[0]
        reader.fieldnames = header
        return [(row[column] or "").strip() for row in reader]


def build_query_split(split: str, query_csv: Path, audio_dir: Path, dataset_dir: Path) -> SplitTables:
    """An unpaired split: every readable clip in ``audio_dir`` plus the query captions (no fid)."""
    if not audio_dir.is_dir():
        raise DataError(f"audio folder not found: {audio_dir}. Set data.query_splits.{split}.audio_dir.")
    out = SplitTables(split)
    for _, path in sorted(ClipIndex.scan(audio_dir).by_key.items()):
        probe = probe_audio(path)
        rel = str(path.relative_to(dataset_dir))
        if isinstance(probe, str):
            out.skipped.append({"fname": path.name, "path": rel, "reason": probe})
            continue
        fid = make_fid(split, path.name)
        out.audio_rows.append({"fid": fid, "fname": path.name, "path": rel,
                               "duration": f"{probe[0]:.3f}", "sample_rate": probe[1]})
    for row, raw in enumerate(read_query_csv(query_csv)):
        if raw:
            out.text_rows.append({"tid": make_query_tid(split, row, raw), "fid": "", "fname": "",
                                  "raw_text": raw, "text": normalize_text(raw)})
    return out


def split_stats(tables: SplitTables) -> dict:
    """Clips, captions, words, vocabulary and duration range of one split."""
    words = [w for row in tables.text_rows for w in row["text"].split()]
    durations = [float(r["duration"]) for r in tables.audio_rows]
    return {
        "clips": len(tables.audio_rows),
        "captions": len(tables.text_rows),
        "skipped": len(tables.skipped),
        "words": len(words),
        "vocabulary": len(set(words)),
        "mean_caption_words": round(len(words) / max(len(tables.text_rows), 1), 2),
        "duration_min_s": round(min(durations), 3) if durations else None,
        "duration_max_s": round(max(durations), 3) if durations else None,
        "duration_total_h": round(sum(durations) / 3600, 3),
    }


def overall_vocabulary(all_tables: list[SplitTables]) -> int:
    return len(Counter(w for t in all_tables for r in t.text_rows for w in r["text"].split()))
