"""Decoding and log-mels of the files to index, in worker processes, with bounded memory.

:func:`decoded` yields ``(rel, mel | None, duration, reason)`` in the order of the files given, from a pool of
one-threaded workers (:func:`utils.features.workers.worker_pool`) with at most a few clips per worker in flight,
so a million-file folder holds no more decoded audio than a ten-file one. Unreadable files come back with their
reason, never as an exception.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from utils.base.config import FeatureConf
from utils.base.errors import DataError
from utils.features.workers import bounded_imap, worker_pool
from utils.search.embedder import file_features

IN_FLIGHT_PER_WORKER = 4  # decoded clips waiting per worker: keeps every worker busy, memory bounded

Decoded = tuple[str, np.ndarray | None, float, str]  # (relative path, (time, n_mels) log-mels, seconds, reason)


def cpu_cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """All the cores but one (left to the main process, which embeds); 0 (decode in the main process) on one core."""
    return cpu_cores() - 1


def decode_one(task: tuple[str, str, FeatureConf]) -> Decoded:
    """Worker: one file's log-mels and duration, or its reason for being unreadable."""
    rel, path, features = task
    try:
        mel, seconds = file_features(path, features)
    except (DataError, OSError, ValueError) as err:
        return rel, None, 0.0, str(err)[:500]
    return rel, mel, seconds, ""


def decoded(folder: Path, rels: Iterable[str], features: FeatureConf, workers: int) -> Iterator[Decoded]:
    """:func:`decode_one` of every file of ``rels`` (relative to ``folder``), in order, from ``workers`` processes
    (0: decoded in this process)."""
    tasks = ((rel, str(folder / rel), features) for rel in rels)
    if workers <= 0:
        yield from map(decode_one, tasks)
        return
    pool = worker_pool(workers)
    try:
        yield from bounded_imap(pool, decode_one, tasks, IN_FLIGHT_PER_WORKER * workers)
    finally:
        pool.terminate()
