"""Text-to-audio and audio-to-audio search with a trained run: index a folder or a file list, search it.

    r = Retriever.from_run("runs/baseline", checkpoint="best", device="auto")
    r.embed_audio(["a.wav", (y, sr), logmels])   # -> (n, E) float32 unit vectors
    r.embed_text(["a dog barks"])                 # -> (n, E) float32 unit vectors
    r.index_folder("my_sounds/")                  # features + embeddings of every audio file, cached
    r.index_files(["a.wav", "b/c.flac"])          # the same for a list of files (any folders)
    r.search("a dog barks while cars pass", k=10) # -> [(path, score), ...], best first
    r.search_audio("query.wav", k=10)             # the files that sound most like a clip

The folder index is stored at ``<run>/search_index/<sha1 of the absolute folder>_<checkpoint>/`` (or
``indexing.location``) as shards committed as they are made (:mod:`utils.search.store`; built by
:mod:`utils.search.indexer`, decoding in worker processes). Later calls re-embed only files that were added or
changed (mtime or size) and drop removed ones; a new checkpoint or feature setting rebuilds it. Unreadable files
are skipped with a warning on stderr and remembered, so they are not retried until they change.

Search is exact by default (``scores = E_audio @ q``, then :func:`utils.evaluation.metrics.top_k`: ties keep the lower
index first, as :mod:`utils.evaluation.metrics` ranks them). ``use_faiss=True`` uses FAISS (optional
dependency, imported only then): exact below :data:`utils.search.ann.ANN_MIN_FILES` files, an IVF index above.

"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from utils import runs
from utils.base.devices import one_thread
from utils.base.errors import PipelineError, warn
from utils.data.audio import AUDIO_EXTENSIONS
from utils.evaluation.metrics import top_k
from utils.features.logmel import FORMULA
from utils.search.embedder import AudioItem, Embedder, check_queries
from utils.search.index import FolderIndex, IndexUpdate, list_files, scan_audio_files
from utils.search.indexer import IndexSettings, update_index
from utils.search.store import Store

FEW_QUERIES = 16  # up to this many captions per search run single-threaded on the CPU (see utils.base.devices.one_thread)
THREADED_SCAN_FILES = 100_000  # an exact scan of an index this large runs BLAS on every core (memory-bound: 1M
#                                files took p95 165 ms on one thread, 93 ms on two; BENCHMARKS.md, search at scale)


class Retriever(Embedder):
    """A trained dual encoder plus (optionally) one indexed folder. Build it with :meth:`from_run`."""

    def __init__(self, run: runs.LoadedRun, batch_size: int | None = None):
        super().__init__(run, batch_size)
        self.index: FolderIndex | None = None
        self.indexing = IndexSettings()  # workers, shard size, torchrun ranks, where the index lives

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "auto",
                 batch_size: int | None = None) -> Retriever:
        """Load ``<run_dir>/config.yaml`` and ``checkpoints/<checkpoint>.pt`` (see :func:`utils.runs.load_run`)."""
        return cls(runs.load_run(run_dir, checkpoint, device), batch_size)

    # ---- folder index ----------------------------------------------------------------------

    def index_path(self, folder: str | os.PathLike, kind: str = "folder") -> Path:
        """Where the index of ``folder`` is stored: ``indexing.location`` when set (``search.py --index``), else
        ``<run>/search_index/<sha1(abs folder)>_<checkpoint>/`` (``kind='files'``: the index of a file list whose
        common folder is ``folder``, kept apart)."""
        name = str(Path(folder).resolve()) if kind == "folder" else f"{kind}:{Path(folder).resolve()}"
        key = hashlib.sha1(name.encode("utf-8")).hexdigest()
        if self.indexing.location is not None:
            return Path(self.indexing.location).resolve()
        return runs.run_file(self.run.run_dir, "search_index") / f"{key}_{self.run.checkpoint}"

    def model_key(self) -> str:
        """Identifies the embeddings: checkpoint file (path, mtime, size) and feature settings."""
        st = self.run.checkpoint_file.stat()
        f = self.conf.features
        feats = json.dumps([f.n_mels, f.win_sec, f.hop_sec, FORMULA] if f.kind == "logmel" else
                           ["waveform", f.sample_rate])
        return f"{self.run.checkpoint_file.resolve()}|{st.st_mtime_ns}|{st.st_size}|{feats}|{self.run.dtype}"

    def index_folder(self, folder: str | os.PathLike, progress: bool = True, rebuild: bool = False) -> IndexUpdate:
        """Index every audio file under ``folder`` (recursively), reusing the cache for unchanged files.

        Sets :attr:`index` (used by :meth:`search`) and returns what changed. Unreadable files are skipped
        with a warning. The cache is saved only when something changed.
        """
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise PipelineError(f"audio folder not found: {folder}")
        return self._index(folder, scan_audio_files(folder), self.index_path(folder), progress, rebuild)

    def index_files(self, files: Sequence[str | os.PathLike], progress: bool = True,
                    rebuild: bool = False) -> IndexUpdate:
        """Index a list of audio files (any folders) instead of a whole folder; see :meth:`index_folder`.

        The index's ``folder`` is the files' deepest common folder and its paths are relative to it. Listed
        files that do not exist are left out with a warning and reported in ``IndexUpdate.missing``.
        """
        root, found, missing = list_files(files)
        update = self._index(root, found, self.index_path(root, "files"), progress, rebuild)
        update.missing = missing
        return update

    def _index(self, folder: Path, found: dict[str, tuple[int, int]], location: Path, progress: bool,
               rebuild: bool) -> IndexUpdate:
        """Bring the stored index at ``location`` up to date with ``found`` (relative path -> (mtime_ns, size))."""
        old = location.with_name(location.name + ".npz")
        if old.is_file() and not (location / "meta.json").is_file():
            warn(f"{old} is a search index of an older version (one .npz), which this version does not read; "
                 f"building the new one in {location} (delete the .npz when done)")
        self.index, update = update_index(self, Store(location), folder, found, self.model_key(), self.indexing,
                                          rebuild, progress)
        return update

    # ---- search ----------------------------------------------------------------------------

    def search(self, query: str, k: int = 10, use_faiss: bool = False,
               allowed: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The ``k`` best files of the indexed folder for one caption: ``[(absolute path, score)]``, best first.
        ``allowed``: a boolean mask ``(n_files,)`` of the rows that may be returned (a filter); None: all."""
        return self.search_many([query], k, use_faiss, allowed)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, use_faiss: bool = False,
                    allowed: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
        """:meth:`search` for several captions (embedded in one batch)."""
        self._searchable(k)
        check_queries(list(queries))
        with one_thread(self.device.type == "cpu" and len(queries) <= FEW_QUERIES):
            q = self.embed_text(list(queries))
        with one_thread(len(self.index) < THREADED_SCAN_FILES and len(queries) <= FEW_QUERIES):
            return self.search_embeddings(q, k, use_faiss, allowed)

    def search_audio(self, item: AudioItem, k: int = 10, use_faiss: bool = False,
                     allowed: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The ``k`` files of the index that sound most like ``item`` (audio -> audio): ``[(absolute path,
        score)]``, best first; a clip of the index finds itself first (score 1).

        Args:
            item: an audio file path, a ``(y, sr)`` tuple or ``(time, n_mels)`` log-mels (as :meth:`embed_audio`).
        """
        self._searchable(k)
        if isinstance(item, np.ndarray) and item.ndim == 1:
            raise PipelineError("a bare waveform has no sample rate: pass (y, sr), a file path or log-mels")
        try:
            with one_thread(self.device.type == "cpu"):
                q = self.embed_audio([item])
            with one_thread(len(self.index) < THREADED_SCAN_FILES):
                return self.search_embeddings(q, k, use_faiss, allowed)[0]
        except ValueError as err:
            raise PipelineError(str(err)) from err

    def _searchable(self, k: int) -> FolderIndex:
        """The index, after checking that there is one with files and that ``k`` >= 1."""
        index = self.index
        if index is None:
            raise PipelineError("no folder indexed yet: call index_folder(DIR) first")
        if k < 1:
            raise PipelineError(f"k must be >= 1, got {k}")
        if not len(index):
            raise PipelineError(f"{index.folder} has no readable audio files ({', '.join(AUDIO_EXTENSIONS)})")
        return index

    def search_embeddings(self, q: np.ndarray, k: int = 10, use_faiss: bool = False,
                          allowed: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
        """The ``k`` best files for each query embedding ``q`` ``(n_queries, E)``: ``[[(path, score)]]``.
        With ``allowed`` (a filter), the search is exact, over the allowed rows only (fewer than ``k`` when fewer
        are allowed)."""
        index = self._searchable(k)
        k = min(k, len(index))
        q = np.asarray(q, dtype=np.float32).reshape(-1, index.embeddings.shape[1])  # (n_queries, E)
        if allowed is not None:
            all_scores = index.scores(q)  # (n_queries, n_files)
            all_scores[:, ~allowed] = -np.inf
            rows = top_k(all_scores, min(k, int(allowed.sum())))
            scores = np.take_along_axis(all_scores, rows, axis=1)
        elif use_faiss:
            scores, rows = index.faiss_index().search(np.ascontiguousarray(q), k)
        else:
            all_scores = index.scores(q)  # (n_queries, n_files)
            rows = top_k(all_scores, k)
            scores = np.take_along_axis(all_scores, rows, axis=1)
        return [list(zip(index.abs_paths(r[r >= 0]), map(float, s[r >= 0]), strict=True))  # -1: fewer found (IVF)
                for r, s in zip(rows, scores, strict=True)]
