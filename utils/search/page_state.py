"""What the listening page (:mod:`utils.search.page`) serves: the retriever and its index, the evaluation split's
captions, and how to refresh them; built by :func:`open_page`. No HTTP here."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import soundfile as sf

from utils.base import paths
from utils.base.errors import PipelineError
from utils.base.tables import TEXT_COLUMNS, read_rows
from utils.search.index import FolderIndex, IndexUpdate
from utils.search.retriever import Retriever
from utils.search.thumbs import ThumbCache

DEFAULT_UPLOAD_MB = 20.0  # uploaded query clips larger than this are refused (413)
STATUS_SKIPPED = 200  # skipped files listed by /api/status (the count is always given)


@dataclass
class EvalCaption:
    """One caption of the evaluation split and the index row of its clip."""

    text: str
    tid: str
    fname: str
    row: int  # row of the true clip in the index


@dataclass
class PageState:
    """Everything the page serves: the retriever with its index, how to refresh it, and the evaluation split."""

    retriever: Retriever
    refresh_index: Callable[[], IndexUpdate]  # re-scans the folder / file list and updates retriever.index
    source: str  # what was indexed, as the user named it (folder or file list)
    split: str | None = None
    captions: list[EvalCaption] = field(default_factory=list)
    captions_left_out: int = 0  # captions of the split whose clip is not in the index
    max_upload_bytes: int = int(DEFAULT_UPLOAD_MB * 1e6)
    use_faiss: bool = False  # search.py --faiss
    last_update: IndexUpdate | None = None
    refreshed: float = 0.0  # time.time() of the last refresh
    lock: threading.Lock = field(default_factory=threading.Lock)  # one model call at a time
    durations: dict[str, float | None] = field(default_factory=dict)  # read from headers (indexes without them)
    folders: tuple[list[str], np.ndarray] | None = None  # (subfolders, (n_files,) int32 subfolder of each row)
    thumbs: ThumbCache | None = None
    upload_dir: tempfile.TemporaryDirectory = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="search-page-uploads-"))

    def refresh(self) -> IndexUpdate:
        with self.lock:
            self.last_update = self.refresh_index()
            self.retriever.index = inside_only(self.retriever.index)
            self.refreshed = time.time()
            self.durations, self.folders = {}, None
            location = self.retriever.index.location
            self.thumbs = ThumbCache(Path(location) / "thumbs" if location else Path(self.upload_dir.name) / "thumbs")
            if self.split:
                self.load_split(self.split)
        return self.last_update

    def load_split(self, split: str) -> None:
        """Read ``<work_dir>/<split>_text.csv`` and match each caption's clip (``fname``) to the index."""
        conf = self.retriever.conf
        table = paths.text_table(conf, split)
        rows = read_rows(table, TEXT_COLUMNS, hint=f"run stage 1 for split '{split}' first "
                         f"(python preprocessing/01_clotho_dataset.py) or pick another --split")
        by_name: dict[str, int] = {}
        for row, rel in enumerate(self.retriever.index.paths):
            by_name.setdefault(rel, row)
            by_name.setdefault(rel.rsplit("/", 1)[-1], row)
        self.captions = [EvalCaption(r["raw_text"] or r["text"], r["tid"], r["fname"], by_name[r["fname"]])
                         for r in rows if r["fname"] in by_name]
        self.captions_left_out = len(rows) - len(self.captions)
        if rows and not self.captions:
            raise PipelineError(f"none of the clips of {table} are in {self.retriever.index.folder}: serve the "
                                f"split's audio folder (e.g. --audio {paths.audio_dir(conf, split)})")
        self.split = split

    def folder_rows(self) -> tuple[list[str], np.ndarray]:
        """Every subfolder holding indexed files ('' for the top) and the subfolder of each row (made once per
        refresh: the one pass over all paths the page makes)."""
        if self.folders is None:
            parents = [p.rpartition("/")[0] for p in self.retriever.index.paths]
            names, codes = np.unique(np.array(parents, dtype=object), return_inverse=True)
            self.folders = ([str(n) for n in names], codes.astype(np.int32))
        return self.folders

    def allowed(self, folder: str, low: float | None, high: float | None) -> np.ndarray | None:
        """The rows inside ``folder`` (and its subfolders) lasting ``low`` to ``high`` seconds; None: no filter.
        Files of unknown duration pass only when no duration is asked for."""
        if not folder and low is None and high is None:
            return None
        index = self.retriever.index
        mask = np.ones(len(index), bool)
        if folder:
            names, codes = self.folder_rows()
            inside = np.array([n == folder or n.startswith(folder + "/") for n in names], bool)
            mask &= inside[codes]
        if low is not None or high is not None:
            seconds = self.all_durations()
            with np.errstate(invalid="ignore"):
                mask &= (seconds >= (low or 0.0)) & (seconds <= (np.inf if high is None else high))
        return mask

    def all_durations(self) -> np.ndarray:
        """``(n_files,)`` seconds: stored in the index, else read from each header (small indexes only)."""
        index = self.retriever.index
        if index.durations is not None:
            return np.asarray(index.durations, np.float32)
        return np.array([np.nan if (d := self.duration(p)) is None else d for p in index.paths], np.float32)

    def duration(self, rel: str) -> float | None:
        """Seconds of an indexed file: stored in the index, else read from its header once; None when unknown."""
        index = self.retriever.index
        if index.durations is not None and (row := index.row_of(rel)) is not None \
                and np.isfinite(index.durations[row]):
            return round(float(index.durations[row]), 2)
        if rel not in self.durations:
            try:
                self.durations[rel] = round(float(sf.info(str(self.retriever.index.folder / rel)).duration), 2)
            except (RuntimeError, OSError, sf.LibsndfileError):
                self.durations[rel] = None
        return self.durations[rel]

    def result(self, rank: int, rel: str, score: float) -> dict:
        return {"rank": rank, "score": round(float(score), 4), "path": rel, "name": rel.rsplit("/", 1)[-1],
                "duration": self.duration(rel), "url": "/audio/" + quote(rel), "thumb": "/thumb/" + quote(rel)}

    def results(self, hits: Sequence[tuple[str, float]]) -> list[dict]:
        folder = self.retriever.index.folder
        return [self.result(i, Path(p).relative_to(folder).as_posix(), s) for i, (p, s) in enumerate(hits, 1)]

    def status(self) -> dict:
        index = self.retriever.index
        update = self.last_update
        run = self.retriever.run
        return {
            "source": self.source, "folder": str(index.folder), "files": len(index),
            "skipped": [{"path": p, "reason": v[2]} for p, v in sorted(index.skipped.items())[:STATUS_SKIPPED]],
            "skipped_count": len(index.skipped),
            "missing": list(update.missing) if update else [],
            "refreshed": datetime.fromtimestamp(self.refreshed, timezone.utc).isoformat(timespec="seconds"),
            "last_refresh": update.summary() if update else "",
            "run": str(run.run_dir), "checkpoint": run.checkpoint, "epoch": run.epoch,
            "text_model": self.retriever.conf.text.model,
            "split": self.split, "captions": len(self.captions), "captions_left_out": self.captions_left_out,
            "max_upload_mb": round(self.max_upload_bytes / 1e6, 2),
        }


def open_page(retriever: Retriever, refresh_index: Callable[[], IndexUpdate], source: str,
              split: str | None = None, max_upload_mb: float = DEFAULT_UPLOAD_MB,
              use_faiss: bool = False) -> PageState:
    """Index (``refresh_index``), then read the evaluation split: the state :func:`utils.search.page.make_app` serves."""
    if max_upload_mb <= 0:
        raise PipelineError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    state = PageState(retriever, refresh_index, source, max_upload_bytes=int(max_upload_mb * 1e6),
                      use_faiss=use_faiss)
    state.refresh()
    if split:
        state.load_split(split)
    return state


def inside_only(index: FolderIndex) -> FolderIndex:
    """``index`` without the files whose real path is outside its folder (symlinks pointing out): the page
    neither ranks nor streams them; they are listed as skipped, with the reason. Each subfolder is resolved once
    and each file only when it is a link, so a million files cost a million ``lstat`` calls, not ``realpath``."""
    folder = os.path.realpath(index.folder)
    inside: dict[str, bool] = {}  # subfolder -> its real path lies inside the folder
    out = []
    for i, p in enumerate(index.paths):
        full = os.path.join(folder, p)
        parent = os.path.dirname(full)
        if parent not in inside:
            inside[parent] = os.path.commonpath([folder, os.path.realpath(parent)]) == folder
        if not inside[parent] or (os.path.islink(full)
                                  and os.path.commonpath([folder, os.path.realpath(full)]) != folder):
            out.append(i)
    if not out:
        return index
    keep = np.setdiff1d(np.arange(len(index)), out)
    skipped = dict(index.skipped)
    for i in out:
        skipped[index.paths[i]] = (int(index.mtimes[i]), int(index.sizes[i]),
                                   "a link to a file outside the indexed folder: not served")
    durations = None if index.durations is None else np.asarray(index.durations)[keep]
    return FolderIndex(index.folder, index.model_key, [index.paths[i] for i in keep], np.asarray(index.mtimes)[keep],
                       np.asarray(index.sizes)[keep], index.embeddings[keep], skipped, durations, index.location)
