"""The search index of one audio folder: which files it holds, and their embeddings.

:class:`FolderIndex` is an index in memory or opened from its store (:mod:`utils.search.store`, memory-mapped);
:class:`IndexUpdate` reports what a refresh changed;
:func:`scan_audio_files` lists a folder, :func:`list_files` a list of files. Building the embeddings is :class:`utils.search.retriever.Retriever`'s job.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.base.errors import PipelineError, warn
from utils.data.audio import AUDIO_EXTENSIONS
from utils.evaluation.metrics import top_k
from utils.search.ann import ANN_MIN_FILES, build_ivf, import_faiss
from utils.search.store import Catalogue, Store

EXACT_QUERIES = 16  # queries scored together when many are searched exactly (16 x n float32 scores)
SAVE_SHARD = 1 << 16  # files per shard when a whole index is written at once (FolderIndex.save)
SCORE_CHUNK = 1 << 17  # rows per matrix product in exact search (64 MB of scores for 128 queries)


def scan_audio_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every audio file under ``folder`` (recursively; hidden files and folders left out):
    ``{relative posix path: (mtime_ns, size)}``, sorted by path. Plain strings, no pathlib: ~10 ms for 5000 files."""
    found: dict[str, tuple[int, int]] = {}
    stack = [(str(folder), "")]  # (absolute dir, its relative posix prefix)
    while stack:
        current, prefix = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as err:
            warn(f"cannot list {current}: {err}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in AUDIO_EXTENSIONS:
                    st = entry.stat()
                    found[prefix + entry.name] = (st.st_mtime_ns, st.st_size)
            except OSError as err:
                warn(f"cannot read {entry.path}: {err}")
    return dict(sorted(found.items()))


def list_files(files: Sequence[str | os.PathLike]) -> tuple[Path, dict[str, tuple[int, int]], list[str]]:
    """A list of audio files as an index sees them: ``(root, {path relative to root: (mtime_ns, size)}, missing)``,
    where ``root`` is the deepest folder holding them all; listed files that do not exist are warned about and
    returned in ``missing`` (absolute paths)."""
    present, missing = [], []
    for f in files:
        path = Path(os.path.abspath(Path(f).expanduser()))
        (present if path.is_file() else missing).append(path)
    for path in missing:
        warn(f"listed audio file not found: {path}")
    if not present:
        raise PipelineError(f"none of the {len(missing)} listed audio files exist"
                            + (f" (first: {missing[0]})" if missing else ""))
    root = Path(os.path.commonpath([str(p.parent) for p in present]))
    found = {}
    for path in present:
        st = path.stat()
        found[path.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size)
    return root, dict(sorted(found.items())), [str(p) for p in missing]


class RowMatrix:
    """The embeddings of a stored index, ``(n, E)`` float32, without copying them: catalogue rows in order,
    each segment's rows memory-mapped. Supports ``shape``, ``len``, ``m[rows]`` and :meth:`chunks`."""

    def __init__(self, blocks: list[tuple[np.ndarray, np.ndarray | None]], dim: int):
        self.blocks = blocks  # [(segment memmap (rows, E), live local rows in order, or None for all)]
        sizes = [len(m) if live is None else len(live) for m, live in blocks]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.shape = (int(self.starts[-1]), dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows)
        flat = np.atleast_1d(rows).astype(np.int64)
        out = np.empty((len(flat), self.shape[1]), np.float32)
        block = np.searchsorted(self.starts, flat, side="right") - 1
        for b in np.unique(block):
            m, live = self.blocks[b]
            local = flat[block == b] - self.starts[b]
            out[block == b] = m[local if live is None else live[local]]
        return out[0] if rows.ndim == 0 else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.concatenate([np.asarray(m if live is None else m[live]) for m, live in self.blocks]) \
            if self.blocks else np.empty((0, self.shape[1]), np.float32)
        return out if dtype is None else out.astype(dtype)

    def chunks(self, rows: int = SCORE_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, (<= rows, E) block)`` in order: memory-mapped slices, copied only for gaps."""
        for (m, live), start in zip(self.blocks, self.starts, strict=False):
            n = len(m) if live is None else len(live)
            for a in range(0, n, rows):
                b = min(a + rows, n)
                yield int(start) + a, (m[a:b] if live is None else m[live[a:b]])


def chunks_of(matrix) -> Iterator[tuple[int, np.ndarray]]:
    """:meth:`RowMatrix.chunks` of a matrix or an in-memory array."""
    if isinstance(matrix, RowMatrix):
        yield from matrix.chunks()
        return
    for a in range(0, len(matrix), SCORE_CHUNK):
        yield a, matrix[a:a + SCORE_CHUNK]


@dataclass
class FolderIndex:
    """Audio embeddings of one folder, aligned by row: in memory, or opened from a :class:`utils.search.store.Store`
    with :meth:`open` (embeddings memory-mapped, paths decoded on demand)."""

    folder: Path
    model_key: str
    paths: Sequence[str]  # relative posix paths
    mtimes: np.ndarray  # (n,) int64
    sizes: np.ndarray  # (n,) int64
    embeddings: np.ndarray | RowMatrix  # (n, E) float32 unit vectors
    skipped: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # path -> (mtime_ns, size, reason)
    durations: np.ndarray | None = None  # (n,) float32 seconds, NaN where unknown
    location: Path | None = None  # the store it was opened from
    _faiss: object = field(default=None, repr=False)
    _rows: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def open(cls, store: Store) -> FolderIndex:
        """The index a store holds, its catalogue memory-mapped (replaying manifests it does not cover, then
        saving the new catalogue, after an interrupted run)."""
        meta = store.meta()
        if meta is None:
            raise PipelineError(f"no search index in {store.root}: index a folder first")
        cat = store.catalogue()
        names = store.manifests()
        if cat is None or set(cat.covered) != set(names):
            files, names = store.state()
            try:
                store.write_catalogue(files, names)
            except OSError as err:
                raise PipelineError(f"cannot update the catalogue of the search index {store.root} ({err}); make "
                                    "it writable, or index again from an account that can write it") from err
            cat = store.catalogue()
        blocks = []
        seg = np.asarray(cat.seg)
        bounds = np.searchsorted(seg, np.arange(len(cat.segments) + 1))
        for i, (name, n_rows) in enumerate(cat.segments):
            m = np.memmap(store.shards / f"{name}.f32", np.float32, "r", shape=(n_rows, meta["dim"]))
            live = np.asarray(cat.row[bounds[i]:bounds[i + 1]])
            blocks.append((m, None if len(live) == n_rows else live))
        return cls(Path(meta["folder"]), meta["model_key"], LazyPaths(cat), cat.mtime, cat.size,
                   RowMatrix(blocks, meta["dim"]), cat.skipped, cat.duration, store.root)

    def save(self, location: str | os.PathLike, flush_files: int = SAVE_SHARD) -> Store:
        """Write this (in-memory) index as a new store at ``location``, replacing what is there: benchmarks and
        imports of embeddings made elsewhere."""
        store = Store(Path(location))
        store.prepare(self.folder, self.model_key, self.embeddings.shape[1], rebuild=True)
        writer = store.writer(flush_files=flush_files, flush_sec=float("inf"))
        durations = np.full(len(self), np.nan) if self.durations is None else np.asarray(self.durations)
        paths, mtimes, sizes = list(self.paths), np.asarray(self.mtimes).tolist(), np.asarray(self.sizes).tolist()
        for a in range(0, len(self), flush_files):
            b = min(a + flush_files, len(self))
            writer.add(np.asarray(self.embeddings[a:b]), [
                [paths[i], mtimes[i], sizes[i], None if np.isnan(durations[i]) else float(durations[i])]
                for i in range(a, b)])
        for p, (m, sz, reason) in self.skipped.items():
            writer.skip(p, m, sz, reason)
        writer.flush()
        store.write_catalogue(*store.state())
        return store

    def abs_paths(self, rows: Sequence[int]) -> list[str]:
        return [str(self.folder / self.paths[j]) for j in rows]

    def row_of(self, rel: str) -> int | None:
        """The row of a relative path (a dict built on first use), None when it is not indexed."""
        if self._rows is None:
            self._rows = {p: i for i, p in enumerate(self.paths)}
        return self._rows.get(rel)

    def scores(self, q: np.ndarray) -> np.ndarray:
        """``q`` ``(n_queries, E)`` -> ``(n_queries, n)`` inner products, computed a chunk of rows at a time."""
        out = np.empty((len(q), len(self)), np.float32)
        for start, block in chunks_of(self.embeddings):
            out[:, start:start + len(block)] = q @ block.T
        return out

    def exact_top(self, q: np.ndarray, k: int) -> np.ndarray:
        """Row ids ``(n_queries, k)`` of exact search, a few queries at a time (bounded score memory)."""
        return np.concatenate([top_k(self.scores(q[a:a + EXACT_QUERIES]), k) for a in range(0, len(q), EXACT_QUERIES)])

    def faiss_index(self):
        """The FAISS index (built once per loaded index): exact ``IndexFlatIP`` below
        :data:`utils.search.ann.ANN_MIN_FILES` files, else an approximate IVF-Flat whose recall@10 against exact
        search is measured and printed as it is built."""
        if self._faiss is None:
            dim = self.embeddings.shape[1]
            if len(self) < ANN_MIN_FILES:
                index = import_faiss().IndexFlatIP(dim)
                for _, block in chunks_of(self.embeddings):
                    index.add(np.ascontiguousarray(block, dtype=np.float32))
            else:
                start = time.perf_counter()
                index, recall = build_ivf(lambda: chunks_of(self.embeddings), lambda r: self.embeddings[r],
                                          len(self), dim, self.exact_top)
                print(f"approximate index (FAISS IVF-Flat, {index.nlist} lists, nprobe {index.nprobe}) over "
                      f"{len(self)} files in {time.perf_counter() - start:.1f} s: recall@10 {recall:.3f} "
                      "against exact search", file=sys.stderr)
            self._faiss = index
        return self._faiss


class LazyPaths(Sequence):
    """The paths of a catalogue, decoded one at a time (all at once only when iterated)."""

    def __init__(self, cat: Catalogue):
        self.cat = cat

    def __len__(self) -> int:
        return len(self.cat)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.cat.path(j) for j in range(*i.indices(len(self)))]
        return self.cat.path(int(i) + len(self) if i < 0 else int(i))

    def __iter__(self) -> Iterator[str]:
        return iter(self.cat.all_paths())

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, LazyPaths)) else NotImplemented

    __hash__ = None


@dataclass
class IndexUpdate:
    """What :meth:`Retriever.index_folder` did."""

    reused: int = 0  # files whose cached embedding was kept
    added: list[str] = field(default_factory=list)  # new files embedded
    changed: list[str] = field(default_factory=list)  # files re-embedded because mtime or size changed
    removed: list[str] = field(default_factory=list)  # files gone from the folder
    skipped: list[str] = field(default_factory=list)  # files found unreadable in this update
    missing: list[str] = field(default_factory=list)  # index_files: listed files that do not exist
    rebuilt: bool = False  # the cache was missing or made with another checkpoint / feature settings
    seconds: float = 0.0  # how long the update took
    location: str = ""  # the index directory

    def closing_line(self, files: int) -> str:
        """What a person reads when indexing ends: files, time, reused / added / skipped, where the index lives."""
        return (f"indexed {files} files in {self.seconds:.1f} s: {self.reused} reused, {len(self.added)} added, "
                f"{len(self.changed)} re-embedded, {len(self.removed)} dropped, {len(self.skipped)} skipped; "
                f"index at {self.location}")

    @property
    def embedded(self) -> list[str]:
        return self.added + self.changed

    def summary(self) -> str:
        parts = [f"{self.reused} cached"] + [f"{len(v)} {name}" for name, v in
                                             (("added", self.added), ("changed", self.changed),
                                              ("removed", self.removed), ("unreadable", self.skipped)) if v]
        return ", ".join(parts)
