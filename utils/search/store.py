"""The search index on disk: append-only shards of embeddings, a manifest per shard, and a catalogue.

    <index>/meta.json                      format version, folder, model key, embedding width
    <index>/shards/<segment>.f32           float32 rows (n, E), appended by one writer (one indexing run, one rank)
    <index>/shards/<segment>.<seq>.json    a shard's manifest: the rows it commits, skipped files, dropped paths
    <index>/catalogue.json                 which manifests the catalogue covers, and where its arrays are
    <index>/cat-<stamp>/*.npy, paths.bin   every live file: segment, row, mtime, size, duration, path

A shard is committed when its manifest exists: the rows are appended and fsynced first, then the manifest is
written atomically (temp file, fsync, rename). A ``kill -9`` loses at most the shard being gathered; rows
appended without a manifest are never read (the next run writes a new segment). Manifests replay in name order,
the later entry of a path winning; ``dropped`` is a tombstone. The catalogue is the replay's result in arrays
that load memory-mapped; manifests it does not cover (an interrupted run) are replayed on top of it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.base.errors import PipelineError
from utils.base.fileio import atomic_write, fsync_path, remove_stale_temps

STORE_VERSION = 2  # version 1 was the single .npz of FolderIndex
FLUSH_FILES = 256  # a shard is committed after this many files...
FLUSH_SEC = 10.0  # ...or this many seconds, whichever comes first


@dataclass
class Entry:
    """One file of the index: embedded (``segment`` >= 0, at ``row``) or skipped (``reason``)."""

    mtime: int
    size: int
    duration: float = float("nan")  # seconds
    segment: str = ""
    row: int = -1
    reason: str = ""  # why it was skipped; empty for an embedded file


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically and durably."""
    with atomic_write(path, durable=True) as tmp:
        tmp.write_text(json.dumps(obj), encoding="utf-8")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PipelineError(f"cannot read {path} ({err}); rebuild the search index with --rebuild") from err


@dataclass
class Store:
    """One index directory."""

    root: Path

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def meta(self) -> dict | None:
        path = self.root / "meta.json"
        return read_json(path) if path.is_file() else None

    def prepare(self, folder: Path, model_key: str, dim: int, rebuild: bool) -> bool:
        """Make the directory hold an index of ``folder`` by ``model_key``; wipe it when it holds another
        (or ``rebuild``). True when it starts empty."""
        meta = {"version": STORE_VERSION, "folder": str(folder), "model_key": model_key, "dim": dim}
        if not rebuild and self.meta() == meta:
            remove_stale_temps(self.shards)
            return False
        if self.root.exists():
            for child in self.root.iterdir():
                if child.name in ("shards", "catalogue.json", "meta.json") or child.name.startswith("cat-"):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.shards.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "meta.json", meta)
        return True

    def manifests(self) -> list[str]:
        """Committed manifests, in replay order."""
        if not self.shards.is_dir():
            return []
        return sorted(n for n in os.listdir(self.shards) if n.endswith(".json") and not n.startswith("."))

    # ---- reading -----------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Entry], list[str]]:
        """Every file of the index (``{path: Entry}``) and the manifests that state covers."""
        files: dict[str, Entry] = {}
        covered: set[str] = set()
        cat = self.catalogue()
        if cat is not None:
            covered = set(cat.covered)
            files = cat.entries()
        names = self.manifests()
        for name in names:
            if name not in covered:
                apply_manifest(files, read_json(self.shards / name))
        return files, names

    def catalogue(self) -> Catalogue | None:
        path = self.root / "catalogue.json"
        if not path.is_file():
            return None
        head = read_json(path)
        return Catalogue.open(self.root / head["dir"], head)

    def segment_rows(self, files: dict[str, Entry]) -> dict[str, int]:
        """Rows to map of each segment the live files use."""
        rows: dict[str, int] = {}
        for e in files.values():
            if e.segment:
                rows[e.segment] = max(rows.get(e.segment, 0), e.row + 1)
        return rows

    # ---- writing -----------------------------------------------------------------------------

    def write_catalogue(self, files: dict[str, Entry], covered: list[str]) -> None:
        """Save ``files`` as the catalogue's arrays, then point ``catalogue.json`` at them (the commit)."""
        live = sorted((e.segment, e.row, p) for p, e in files.items() if e.segment)
        segments = sorted({s for s, _, _ in live})
        seg_no = {s: i for i, s in enumerate(segments)}
        stamp = f"cat-{time.time_ns()}-{os.getpid()}"
        out = self.root / stamp
        out.mkdir(parents=True)
        blobs = [p.encode("utf-8") for _, _, p in live]
        arrays = {
            "seg": np.array([seg_no[s] for s, _, _ in live], np.int32),
            "row": np.array([r for _, r, _ in live], np.int64),
            "mtime": np.array([files[p].mtime for _, _, p in live], np.int64),
            "size": np.array([files[p].size for _, _, p in live], np.int64),
            "duration": np.array([files[p].duration for _, _, p in live], np.float32),
            "path_end": np.cumsum([len(b) + 1 for b in blobs], dtype=np.int64) - 1,  # NUL-separated
        }
        for name, arr in arrays.items():
            np.save(out / f"{name}.npy", arr)
        (out / "paths.bin").write_bytes(b"\0".join(blobs))
        for child in out.iterdir():
            fsync_path(child)
        fsync_path(out)
        skipped = {p: [e.mtime, e.size, e.reason] for p, e in files.items() if not e.segment}
        seg_rows = self.segment_rows(files)
        write_json(self.root / "catalogue.json", {"dir": stamp, "covered": covered, "skipped": skipped,
                                                  "segments": [[s, seg_rows[s]] for s in segments]})
        for child in self.root.iterdir():
            if child.name.startswith("cat-") and child.name != stamp:
                shutil.rmtree(child, ignore_errors=True)

    def writer(self, rank: int = 0, flush_files: int = FLUSH_FILES, flush_sec: float = FLUSH_SEC) -> ShardWriter:
        return ShardWriter(self.shards, f"{time.time_ns():019d}-r{rank:03d}", flush_files, flush_sec)


def apply_manifest(files: dict[str, Entry], manifest: dict) -> None:
    """Replay one manifest onto ``files``."""
    seg, start = manifest["segment"], manifest["start"]
    for i, (path, mtime, size, duration) in enumerate(manifest["entries"]):
        files[path] = Entry(mtime, size, float("nan") if duration is None else duration, seg, start + i)
    for path, mtime, size, reason in manifest["skipped"]:
        files[path] = Entry(mtime, size, reason=reason)
    for path in manifest["dropped"]:
        files.pop(path, None)


@dataclass
class Catalogue:
    """The memory-mapped arrays of a catalogue."""

    root: Path
    covered: list[str]
    segments: list[tuple[str, int]]  # (segment, rows mapped)
    skipped: dict[str, tuple[int, int, str]]
    seg: np.ndarray  # (n,) int32 index into segments
    row: np.ndarray  # (n,) int64 row within the segment
    mtime: np.ndarray  # (n,) int64 ns
    size: np.ndarray  # (n,) int64 bytes
    duration: np.ndarray  # (n,) float32 seconds (NaN: unknown)
    path_end: np.ndarray  # (n,) int64 end of each path in paths.bin (paths are NUL-separated)
    blob: np.ndarray  # (bytes,) uint8 memory map of paths.bin

    @classmethod
    def open(cls, root: Path, head: dict) -> Catalogue:
        try:
            arrays = {n: np.load(root / f"{n}.npy", mmap_mode="r")
                      for n in ("seg", "row", "mtime", "size", "duration", "path_end")}
            size = (root / "paths.bin").stat().st_size
            blob = np.memmap(root / "paths.bin", np.uint8, "r") if size else np.zeros(0, np.uint8)
        except (OSError, ValueError) as err:
            raise PipelineError(f"the search index catalogue {root} is damaged ({err}); rebuild with --rebuild") from err
        skipped = {p: (int(m), int(s), str(r)) for p, (m, s, r) in head["skipped"].items()}
        return cls(root, head["covered"], [(s, int(n)) for s, n in head["segments"]], skipped, blob=blob, **arrays)

    def __len__(self) -> int:
        return len(self.seg)

    def path(self, i: int) -> str:
        start = int(self.path_end[i - 1]) + 1 if i else 0
        return bytes(self.blob[start:int(self.path_end[i])]).decode("utf-8")

    def all_paths(self) -> list[str]:
        """Every path (decodes the whole blob: for indexing and filters, not for opening the index)."""
        return bytes(self.blob).decode("utf-8").split("\0") if len(self) else []

    def entries(self) -> dict[str, Entry]:
        out = {p: Entry(mt, sz, du, self.segments[sg][0], rw) for p, sg, rw, mt, sz, du in zip(
            self.all_paths(), self.seg.tolist(), self.row.tolist(), self.mtime.tolist(), self.size.tolist(),
            self.duration.tolist(), strict=True)}
        out.update({p: Entry(m, s, reason=r) for p, (m, s, r) in self.skipped.items()})
        return out


@dataclass
class ShardWriter:
    """Appends embeddings to one segment and commits a manifest every ``flush_files`` files or ``flush_sec``."""

    folder: Path
    segment: str
    flush_files: int
    flush_sec: float
    committed: int = 0  # rows of the segment covered by manifests
    seq: int = 0
    rows: list[np.ndarray] = field(default_factory=list)
    entries: list[list] = field(default_factory=list)
    skipped: list[list] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    last: float = field(default_factory=time.monotonic)

    def add(self, emb: np.ndarray, entries: list[list]) -> None:
        """Rows ``emb`` ``(n, E)`` for ``entries`` ``[[path, mtime, size, duration]]``."""
        self.rows.append(np.ascontiguousarray(emb, np.float32))
        self.entries += entries
        self.maybe_flush()

    def skip(self, path: str, mtime: int, size: int, reason: str) -> None:
        self.skipped.append([path, mtime, size, reason])
        self.maybe_flush()

    def drop(self, paths: list[str]) -> None:
        self.dropped += paths

    def pending(self) -> int:
        return len(self.entries) + len(self.skipped) + len(self.dropped)

    def maybe_flush(self) -> None:
        if self.pending() >= self.flush_files or time.monotonic() - self.last >= self.flush_sec:
            self.flush()

    def flush(self) -> None:
        """Commit what is pending as one shard (rows fsynced, then the manifest renamed into place)."""
        self.last = time.monotonic()
        if not self.pending():
            return
        if self.rows:
            with open(self.folder / f"{self.segment}.f32", "ab") as stream:
                for block in self.rows:
                    stream.write(block.tobytes())
                stream.flush()
                os.fsync(stream.fileno())
        manifest = {"segment": self.segment, "start": self.committed, "entries": self.entries,
                    "skipped": self.skipped, "dropped": self.dropped}
        write_json(self.folder / f"{self.segment}.{self.seq:06d}.json", manifest)
        self.committed += len(self.entries)
        self.seq += 1
        self.rows, self.entries, self.skipped, self.dropped = [], [], [], []
