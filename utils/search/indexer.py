"""Bring a stored index (:mod:`utils.search.store`) up to date with a folder: decode in workers
(:mod:`utils.search.decode`), embed in the main process (:meth:`utils.search.embedder.Embedder.embed_features`,
which calls :func:`utils.evaluation.embedding.embed_audio`), append shards as it goes.

Under ``torchrun`` every rank computes the same plan from the same scan and store, takes every ``world``-th file
of what is to embed, and writes its own segment; rank 0 writes the tombstones of removed files and, once all
ranks are done, the catalogue (it reads the ranks' manifests, never their embeddings).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from utils.base.devices import one_thread
from utils.base.errors import warn
from utils.search.decode import cpu_cores, decoded, default_workers
from utils.search.embedder import Embedder
from utils.search.index import FolderIndex, IndexUpdate
from utils.search.ranks import Ranks
from utils.search.store import FLUSH_FILES, FLUSH_SEC, Store

EMBED_CLIPS = 32  # decoded clips embedded together (then a shard boundary may follow)


@dataclass
class IndexSettings:
    """Speed and durability settings of indexing: none of them changes a vector."""

    workers: int | None = None  # decoding processes (None: all cores but one; 0: decode in the main process)
    flush_files: int = FLUSH_FILES  # files per committed shard, at most
    flush_sec: float = FLUSH_SEC  # seconds between commits, at most
    ranks: Ranks = field(default_factory=Ranks)  # torchrun's processes (one alone)
    location: Path | None = None  # the index directory (None: the run's search_index/)


def plan(update: IndexUpdate, files: dict, found: dict[str, tuple[int, int]]) -> list[str]:
    """Fill ``update`` (reused, added, changed, removed) from the stored ``files`` and the scan; the files to embed."""
    todo = []
    for path, stat in found.items():
        old = files.get(path)
        if old is not None and (old.mtime, old.size) == stat:
            update.reused += bool(old.segment)  # an unchanged unreadable file is not retried either
            continue
        todo.append(path)
        (update.changed if old is not None else update.added).append(path)
    update.removed = sorted(p for p in files if p not in found)
    return todo


def update_index(embedder: Embedder, store: Store, folder: Path, found: dict[str, tuple[int, int]], model_key: str,
                 settings: IndexSettings, rebuild: bool, progress: bool) -> tuple[FolderIndex, IndexUpdate]:
    """Index ``found`` (relative path -> (mtime_ns, size)) of ``folder`` into ``store``; the opened index and what
    changed (summed over ranks)."""
    start = time.perf_counter()
    ranks = settings.ranks
    dim = embedder.conf.model.audio_enc.out_dim
    rebuilt = store.prepare(folder, model_key, dim, rebuild) if ranks.main else False
    ranks.barrier()
    files, _ = store.state()
    update = IndexUpdate(rebuilt=rebuilt)
    todo = plan(update, files, found)
    mine = todo[ranks.rank::ranks.world]
    writer = store.writer(ranks.rank, settings.flush_files, settings.flush_sec)
    if ranks.main and update.removed:
        writer.drop(update.removed)
        writer.flush()  # the tombstones: a shard of their own
    skipped = embed_files(embedder, writer, folder, mine, found, default_workers() if settings.workers is None else settings.workers, progress)
    writer.flush()
    update.skipped = sorted(p for part in ranks.gather(skipped) for p in part)
    bad = set(update.skipped)
    update.added = [p for p in update.added if p not in bad]
    update.changed = [p for p in update.changed if p not in bad]
    ranks.barrier()
    if ranks.main and (todo or update.removed or rebuilt):
        store.write_catalogue(*store.state())
    ranks.barrier()
    update.seconds = time.perf_counter() - start
    update.location = str(store.root)
    return FolderIndex.open(store), update


def embed_files(embedder: Embedder, writer, folder: Path, rels: list[str], found: dict[str, tuple[int, int]],
                workers: int, progress: bool) -> list[str]:
    """Decode (in ``workers`` processes; 0: here), embed and append ``rels`` to ``writer``; the unreadable ones
    (skipped with a warning)."""
    skipped: list[str] = []
    batch: list[tuple[str, object, float]] = []  # (rel, (time, n_mels) log-mels, seconds)
    bar = tqdm(total=len(rels), desc="index audio", unit="file", disable=not progress or not rels,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
    bar.set_postfix(skipped=0)

    def embed() -> None:
        emb = embedder.embed_features([m for _, m, _ in batch])  # (len(batch), E)
        writer.add(emb, [[rel, *found[rel], round(sec, 3)] for rel, _, sec in batch])
        bar.update(len(batch))
        batch.clear()

    # With a pool decoding on the other cores, the model on the CPU keeps to the core left: two threads
    # fighting the workers ran a clip 2-4x slower than one (BENCHMARKS.md, "Search at library scale").
    alone = embedder.device.type == "cpu" and workers >= 1 and cpu_cores() - workers <= 1
    with one_thread(alone):
        for rel, mel, seconds, reason in decoded(folder, rels, embedder.conf.features, min(workers, len(rels))):
            if mel is None:
                warn(f"skipping unreadable audio file {folder / rel}: {reason}")
                writer.skip(rel, *found[rel], reason)  # not retried until its mtime or size changes
                skipped.append(rel)
                bar.update(1)
                bar.set_postfix(skipped=len(skipped))
                continue
            batch.append((rel, mel, seconds))
            # A batch ends where a shard ends, so a kill loses at most one shard's files.
            if len(batch) >= min(EMBED_CLIPS, writer.flush_files - writer.pending()):
                embed()
        if batch:
            embed()
    bar.close()
    return skipped
