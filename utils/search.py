"""Text-to-audio search with a trained run: embed clips and captions, index a folder, search it.

    r = Retriever.from_run("runs/baseline", checkpoint="best", device="auto")
    r.embed_audio(["a.wav", (y, sr), logmels])   # -> (n, E) float32 unit vectors
    r.embed_text(["a dog barks"])                 # -> (n, E) float32 unit vectors
    r.index_folder("my_sounds/")                  # features + embeddings of every audio file, cached
    r.search("a dog barks while cars pass", k=10) # -> [(path, score), ...], best first

The folder index is cached at ``<run>/search_index/<sha1 of the absolute folder>_<checkpoint>.npz`` (see
:class:`utils.search_index.FolderIndex` for its arrays). Later calls re-embed only files that were added or
changed (mtime or size) and drop removed ones; a new checkpoint or feature setting rebuilds it. Unreadable files
are skipped with a warning on stderr and remembered, so they are not retried until they change.

Search is exact by default (``scores = E_audio @ q``, then :func:`utils.metrics.top_k`: ties keep the lower
index first, as :mod:`utils.metrics` ranks them). ``use_faiss=True`` uses a ``faiss.IndexFlatIP`` (optional
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
from utils.audio import AUDIO_EXTENSIONS, load_audio
from utils.config import FeatureConf
from utils.devices import one_thread
from utils.errors import DataError, PipelineError, warn
from utils.inference import TEXT_VECTOR_BATCH, embed_audio, embed_text
from utils.logmel import FORMULA, logmel
from utils.metrics import top_k
from utils.sbert import encode, load_sbert
from utils.search_index import FolderIndex, IndexUpdate, scan_audio_files

CHUNK_FILES = 32  # files whose features are held in memory at once while indexing
FEW_QUERIES = 16  # up to this many captions per search run single-threaded on the CPU (see utils.devices.one_thread)

AudioItem = str | os.PathLike | tuple | np.ndarray | torch.Tensor  # path, (y, sr), or (time, mels) log-mels


def clip_features(item: AudioItem, features: FeatureConf) -> np.ndarray:
    """Stage 2's log-mels of one clip: ``(time, n_mels)`` float32.

    Args:
        item: an audio file path (any format and sample rate soundfile / librosa read), a ``(y, sr)``
            tuple (mono or ``(samples, channels)`` waveform), or log-mels ``(time, n_mels)`` used as they are.
    """
    if isinstance(item, (str, os.PathLike)):
        y, sr = load_audio(item)
    elif isinstance(item, tuple) and len(item) == 2:
        y, sr = np.asarray(item[0], dtype=np.float32), int(item[1])
        if y.ndim == 2:
            y = y.mean(axis=1)  # (samples, channels) -> mono, as load_audio does
    else:
        mel = np.asarray(item.cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        if mel.ndim != 2 or mel.shape[1] != features.n_mels:
            raise ValueError(f"expected a path, a (y, sr) tuple or log-mels (time, {features.n_mels}); "
                             f"got an array of shape {mel.shape}")
        return mel
    return logmel(y, sr, features.n_mels, features.win_sec, features.hop_sec)  # (time, n_mels)


class Retriever:
    """A trained dual encoder plus (optionally) one indexed folder. Build it with :meth:`from_run`."""

    def __init__(self, run: runs.LoadedRun, batch_size: int | None = None):
        self.run = run
        self.model = run.model
        self.conf = run.conf
        self.batch_size = batch_size or run.conf.eval.batch_size
        self.index: FolderIndex | None = None
        self._sbert = None

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "auto",
                 batch_size: int | None = None) -> Retriever:
        """Load ``<run_dir>/config.yaml`` and ``checkpoints/<checkpoint>.pt`` (see :func:`utils.runs.load_run`)."""
        return cls(runs.load_run(run_dir, checkpoint, device), batch_size)

    @property
    def device(self) -> torch.device:
        return self.run.device

    # ---- embeddings ------------------------------------------------------------------------

    def embed_features(self, mels: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        """``[(time, n_mels)]`` log-mels -> ``(n, E)`` float32 unit vectors.

        Only clips of equal length share a batch, so no clip is zero-padded and each embedding is the model's
        output on that clip alone, whatever else is embedded with it (an index refresh gives the same vectors
        as a rebuild).
        """
        out = np.empty((len(mels), self.conf.model.audio_enc.out_dim), np.float32)
        lengths = np.array([m.shape[0] for m in mels], dtype=np.int64)
        groups = [np.flatnonzero(lengths == n) for n in np.unique(lengths)]
        for idx in tqdm(groups, desc="embed audio", unit="length", disable=not progress or len(groups) < 2,
                        leave=False, file=sys.stderr):
            emb = embed_audio(self.model, lambda k, idx=idx: mels[idx[k]], [int(lengths[idx[0]])] * len(idx),
                              self.batch_size, self.device, self.run.dtype)  # (len(idx), E)
            out[idx] = emb.numpy()
        return out

    def embed_audio(self, items: Sequence[AudioItem] | AudioItem, progress: bool = False) -> np.ndarray:
        """Clips -> ``(n, E)`` float32 unit vectors.

        Args:
            items: file paths (any format / sample rate), ``(y, sr)`` tuples or ``(time, n_mels)`` log-mels.
                A single path is accepted too. Unreadable files raise :class:`utils.errors.DataError`.
        """
        if isinstance(items, (str, os.PathLike)):
            items = [items]
        mels = [clip_features(item, self.conf.features) for item in items]
        return self.embed_features(mels, progress=progress)

    def embed_text(self, texts: Sequence[str] | str) -> np.ndarray:
        """Captions -> ``(n, E)`` float32 unit vectors: the run's SBERT model (``text.model``) and the
        trained projection, or the fine-tuned text encoder on the raw strings."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_queries(texts)
        if self.model.text_input_kind == "text":
            emb = embed_text(self.model, texts, self.conf.text.batch_size, self.device, self.run.dtype)
        else:
            vectors = self.text_vectors(texts)  # (n, D)
            if self.run.text_dim is not None and vectors.shape[1] != self.run.text_dim:
                raise PipelineError(
                    f"text.model '{self.conf.text.model}' gives {vectors.shape[1]}-d vectors but the run's text "
                    f"projection expects {self.run.text_dim}-d; was config.yaml's text.model changed after training?"
                )
            emb = embed_text(self.model, vectors, TEXT_VECTOR_BATCH, self.device, self.run.dtype)
        return emb.numpy().astype(np.float32, copy=False)

    def load_text_model(self) -> None:
        """Load the SBERT model ``conf.text.model`` now rather than on the first query (no-op when the run
        fine-tuned its own text encoder, which is part of the checkpoint)."""
        if self._sbert is None and self.model.text_input_kind == "embedding":
            self._sbert = load_sbert(self.conf.text.model, str(self.device))  # DataError says how to get it

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """Raw SBERT vectors ``(n, D)`` float32 from ``conf.text.model`` (loaded once)."""
        self.load_text_model()
        vectors = encode(self._sbert, texts, self.conf.text.batch_size, str(self.device), progress=False)
        return np.asarray(vectors, dtype=np.float32)  # (n, D)

    # ---- folder index ----------------------------------------------------------------------

    def index_path(self, folder: str | os.PathLike) -> Path:
        """Where the index of ``folder`` is cached: ``<run>/search_index/<sha1(abs folder)>_<checkpoint>.npz``."""
        key = hashlib.sha1(str(Path(folder).resolve()).encode("utf-8")).hexdigest()
        return runs.run_file(self.run.run_dir, "search_index") / f"{key}_{self.run.checkpoint}.npz"

    def model_key(self) -> str:
        """Identifies the embeddings: checkpoint file (path, mtime, size) and feature settings."""
        st = self.run.checkpoint_file.stat()
        f = self.conf.features
        feats = json.dumps([f.n_mels, f.win_sec, f.hop_sec, FORMULA])
        return f"{self.run.checkpoint_file.resolve()}|{st.st_mtime_ns}|{st.st_size}|{feats}"

    def index_folder(self, folder: str | os.PathLike, progress: bool = True, rebuild: bool = False) -> IndexUpdate:
        """Index every audio file under ``folder`` (recursively), reusing the cache for unchanged files.

        Sets :attr:`index` (used by :meth:`search`) and returns what changed. Unreadable files are skipped
        with a warning. The cache is saved only when something changed.
        """
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise PipelineError(f"audio folder not found: {folder}")
        cache = self.index_path(folder)
        key = self.model_key()
        old = None if rebuild else FolderIndex.load(cache)
        update = IndexUpdate()
        if old is None or old.model_key != key or old.folder != folder:
            update.rebuilt = True
            old = FolderIndex(folder, key, [], np.empty(0, np.int64), np.empty(0, np.int64),
                              np.empty((0, self.conf.model.audio_enc.out_dim), np.float32))
        found = scan_audio_files(folder)

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
        index = self.index
        if index is None:
            raise PipelineError("no folder indexed yet: call index_folder(DIR) first")
        if k < 1:
            raise PipelineError(f"k must be >= 1, got {k}")
        check_queries(list(queries))
        if not len(index):
            raise PipelineError(f"{index.folder} has no readable audio files ({', '.join(AUDIO_EXTENSIONS)})")
        k = min(k, len(index))
        with one_thread(self.device.type == "cpu" and len(queries) <= FEW_QUERIES):
            q = self.embed_text(list(queries))  # (n_queries, E)
            if use_faiss:
                scores, rows = index.faiss_index().search(np.ascontiguousarray(q, dtype=np.float32), k)
            else:
                all_scores = q @ index.embeddings.T  # (n_queries, n_files)
                rows = top_k(all_scores, k)
                scores = np.take_along_axis(all_scores, rows, axis=1)
        return [list(zip(index.abs_paths(r), map(float, s), strict=True)) for r, s in zip(rows, scores, strict=True)]


def check_queries(texts: Sequence[str]) -> None:
    """Raise :class:`PipelineError` for no captions or an empty / whitespace-only caption."""
    if not texts:
        raise PipelineError("no query given: pass a caption such as \"a dog barks while cars pass\"")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise PipelineError(f"query {i + 1} is empty: pass a caption such as \"a dog barks while cars pass\"")
