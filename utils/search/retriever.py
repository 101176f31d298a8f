"""Text-to-audio and audio-to-audio search with a trained run: index a folder or a file list, search it.

    r = Retriever.from_run("runs/baseline", checkpoint="best", device="auto")
    r.embed_audio(["a.wav", (y, sr), logmels])   # -> (n, E) float32 unit vectors
    r.embed_text(["a dog barks"])                 # -> (n, E) float32 unit vectors
    r.index_folder("my_sounds/")                  # features + embeddings of every audio file, cached
    r.index_files(["a.wav", "b/c.flac"])          # the same for a list of files (any folders)
    r.search("a dog barks while cars pass", k=10) # -> [(path, score), ...], best first
    r.search_audio("query.wav", k=10)             # the files that sound most like a clip

The folder index is cached at ``<run>/search_index/<sha1 of the absolute folder>_<checkpoint>.npz`` (see
:class:`utils.search.index.FolderIndex` for its arrays). Later calls re-embed only files that were added or
changed (mtime or size) and drop removed ones; a new checkpoint or feature setting rebuilds it. Unreadable files
are skipped with a warning on stderr and remembered, so they are not retried until they change.

Search is exact by default (``scores = E_audio @ q``, then :func:`utils.evaluation.metrics.top_k`: ties keep the lower
index first, as :mod:`utils.evaluation.metrics` ranks them). ``use_faiss=True`` uses a ``faiss.IndexFlatIP`` (optional
dependency, imported only then).

"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils import runs
from utils.base.devices import one_thread
from utils.base.errors import DataError, PipelineError, warn
from utils.data.audio import AUDIO_EXTENSIONS
from utils.evaluation.metrics import top_k
from utils.features.logmel import FORMULA
from utils.search.embedder import AudioItem, Embedder, check_queries, clip_features
from utils.search.index import FolderIndex, IndexUpdate, list_files, scan_audio_files

CHUNK_FILES = 32  # files whose features are held in memory at once while indexing
FEW_QUERIES = 16  # up to this many captions per search run single-threaded on the CPU (see utils.base.devices.one_thread)


class Retriever(Embedder):
    """A trained dual encoder plus (optionally) one indexed folder. Build it with :meth:`from_run`."""

    def __init__(self, run: runs.LoadedRun, batch_size: int | None = None):
        super().__init__(run, batch_size)
        self.index: FolderIndex | None = None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "auto",
                 batch_size: int | None = None) -> Retriever:
        """Load ``<run_dir>/config.yaml`` and ``checkpoints/<checkpoint>.pt`` (see :func:`utils.runs.load_run`)."""
        return cls(runs.load_run(run_dir, checkpoint, device), batch_size)

    # ---- folder index ----------------------------------------------------------------------

    def index_path(self, folder: str | os.PathLike, kind: str = "folder") -> Path:
        """Where the index of ``folder`` is cached: ``<run>/search_index/<sha1(abs folder)>_<checkpoint>.npz``
        (``kind='files'``: the index of a file list whose common folder is ``folder``, kept apart)."""
        name = str(Path(folder).resolve()) if kind == "folder" else f"{kind}:{Path(folder).resolve()}"
        key = hashlib.sha1(name.encode("utf-8")).hexdigest()
        return runs.run_file(self.run.run_dir, "search_index") / f"{key}_{self.run.checkpoint}.npz"

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

    def _index(self, folder: Path, found: dict[str, tuple[int, int]], cache: Path, progress: bool,
               rebuild: bool) -> IndexUpdate:
        """Bring the cached index at ``cache`` up to date with ``found`` (relative path -> (mtime_ns, size))."""
        key = self.model_key()
        old = None if rebuild else FolderIndex.load(cache)
        update = IndexUpdate()
        if old is None or old.model_key != key or old.folder != folder:
            update.rebuilt = True
            old = FolderIndex(folder, key, [], np.empty(0, np.int64), np.empty(0, np.int64),
                              np.empty((0, self.conf.model.audio_enc.out_dim), np.float32))

        keep_rows, old_stat = [], {}
        for row, p in enumerate(old.paths):
            old_stat[p] = (int(old.mtimes[row]), int(old.sizes[row]))
            if found.get(p) == old_stat[p]:
                keep_rows.append(row)
        skipped = {p: v for p, v in old.skipped.items() if found.get(p) == v[:2]}
        update.reused = len(keep_rows)
        update.removed = sorted(p for p in set(old.paths) | set(old.skipped) if p not in found)
        kept = {old.paths[r] for r in keep_rows}
        todo = [p for p in found if p not in kept and p not in skipped]
        update.changed = [p for p in todo if p in old_stat or p in old.skipped]
        update.added = [p for p in todo if p not in old_stat and p not in old.skipped]

        new_paths, new_emb = self._embed_files(folder, todo, found, skipped, update, progress)
        unreadable = set(update.skipped)
        update.added = [p for p in update.added if p not in unreadable]
        update.changed = [p for p in update.changed if p not in unreadable]
        paths = [old.paths[r] for r in keep_rows] + new_paths
        emb = np.concatenate([old.embeddings[keep_rows], new_emb]) if paths else old.embeddings[:0]
        order = np.argsort(np.array(paths, dtype=str), kind="stable") if paths else np.empty(0, np.int64)
        paths = [paths[i] for i in order]
        index = FolderIndex(folder, key, paths, np.array([found[p][0] for p in paths], np.int64),
                            np.array([found[p][1] for p in paths], np.int64),
                            np.ascontiguousarray(emb[order], dtype=np.float32), skipped)
        if update.rebuilt or update.embedded or update.removed or update.skipped:
            try:
                index.save(cache)
            except OSError as err:
                warn(f"could not save the search index to {cache} ({err}); it will be rebuilt next time")
        self.index = index
        return update

    def _embed_files(self, folder: Path, todo: list[str], found: dict[str, tuple[int, int]], skipped: dict,
                     update: IndexUpdate, progress: bool) -> tuple[list[str], np.ndarray]:
        """Features and embeddings of ``todo`` (relative paths), in chunks; unreadable ones go to ``skipped``."""
        done, chunks = [], []
        bar = tqdm(total=len(todo), desc="index audio", unit="file", disable=not progress or not todo,
                   file=sys.stderr)
        for start in range(0, len(todo), CHUNK_FILES):
            names, mels = [], []
            for rel in todo[start:start + CHUNK_FILES]:
                path = folder / rel
                try:
                    mels.append(clip_features(path, self.conf.features))
                    names.append(rel)
                except (DataError, OSError, ValueError) as err:
                    warn(f"skipping unreadable audio file {path}: {err}")
                    skipped[rel] = (*found[rel], str(err)[:500])  # not retried until its mtime or size changes
                    update.skipped.append(rel)
            chunks.append(self.embed_features(mels))
            done += names
            bar.update(len(todo[start:start + CHUNK_FILES]))  # after the embedding, which dominates
        bar.close()
        emb = np.concatenate(chunks) if chunks else np.empty((0, self.conf.model.audio_enc.out_dim), np.float32)
        return done, emb

    # ---- search ----------------------------------------------------------------------------

    def search(self, query: str, k: int = 10, use_faiss: bool = False) -> list[tuple[str, float]]:
        """The ``k`` best files of the indexed folder for one caption: ``[(absolute path, score)]``, best first."""
        return self.search_many([query], k, use_faiss)[0]

    def search_many(self, queries: Sequence[str], k: int = 10,
                    use_faiss: bool = False) -> list[list[tuple[str, float]]]:
        """:meth:`search` for several captions (embedded in one batch)."""
        self._searchable(k)
        check_queries(list(queries))
        with one_thread(self.device.type == "cpu" and len(queries) <= FEW_QUERIES):
            return self.search_embeddings(self.embed_text(list(queries)), k, use_faiss)

    def search_audio(self, item: AudioItem, k: int = 10, use_faiss: bool = False) -> list[tuple[str, float]]:
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
                return self.search_embeddings(self.embed_audio([item]), k, use_faiss)[0]
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

    def search_embeddings(self, q: np.ndarray, k: int = 10,
                          use_faiss: bool = False) -> list[list[tuple[str, float]]]:
        """The ``k`` best files for each query embedding ``q`` ``(n_queries, E)``: ``[[(path, score)]]``."""
        index = self._searchable(k)
        k = min(k, len(index))
        q = np.asarray(q, dtype=np.float32).reshape(-1, index.embeddings.shape[1])  # (n_queries, E)
        if use_faiss:
            scores, rows = index.faiss_index().search(np.ascontiguousarray(q), k)
        else:
            all_scores = q @ index.embeddings.T  # (n_queries, n_files)
            rows = top_k(all_scores, k)
            scores = np.take_along_axis(all_scores, rows, axis=1)
        return [list(zip(index.abs_paths(r), map(float, s), strict=True)) for r, s in zip(rows, scores, strict=True)]
