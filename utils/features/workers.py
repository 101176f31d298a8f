"""Stage 2's parallel computation: clips decoded and turned into log-mels by a process pool (CPU), or decoded
by the pool and computed in same-sample-rate batches by torch (GPU). Each finished clip is saved as a part
(:mod:`utils.features.parts`) as soon as it is done.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.base.devices import single_thread_process
from utils.data.audio import AudioReadError, load_audio
from utils.features.logmel import (
    MelKey,
    checked_logmel,
    features_problem,
    logmel_torch_batch,
    prepare,
    rate_problem,
    use_mel_filters,
)
from utils.features.parts import part_path, save_part
from utils.features.waveform import waveform


@dataclass
class Clip:
    """One row of a stage-1 audio table."""

    fid: str  # clip ID: the HDF5 dataset name
    fname: str  # file name (skip reports are keyed by it)
    rel: str  # path as written in the table (relative to dataset_dir)
    path: Path  # resolved path
    sample_rate: int = 0  # as probed by stage 1 (0 = unknown); only used to precompute filters



def compute_clips(todo: list[Clip], parts_dir: Path, params: dict, workers: int, device: str, batched: bool | None,
         progress: bool, desc: str) -> list[tuple[Clip, int, str | None]]:
    """Compute ``todo``, saving a part per clip: ``[(clip, T, None) | (clip, 0, reason)]``."""
    if batched is None:
        batched = device != "cpu"
    workers = _n_workers(workers, len(todo))
    by_fid = {c.fid: c for c in todo}
    if params.get("kind") == "waveform":
        tasks = [(c.fid, str(c.path), str(part_path(parts_dir, c.fid)), params["sample_rate"]) for c in todo]
        batched, banks = False, {}
    else:
        banks = _warm_up({c.sample_rate for c in todo}, params) if workers > 1 else {}
        tasks = [(c.fid, str(c.path), str(part_path(parts_dir, c.fid)), params["n_mels"], params["win_sec"],
                  params["hop_sec"]) for c in todo]
    bar = tqdm(total=len(todo), desc=desc, unit="clip", disable=not progress, smoothing=0.1)
    out = []
    try:
        stream = (_run_batched(tasks, workers, device, banks) if batched else _run_per_clip(tasks, workers, banks))
        for fid, n_frames, reason in stream:
            out.append((by_fid[fid], n_frames, reason))
            bar.update()
    finally:
        bar.close()
    index = {c.fid: i for i, c in enumerate(todo)}
    return sorted(out, key=lambda item: index[item[0].fid])  # table order, whatever the completion order


def _warm_up(sample_rates: set[int], params: dict) -> dict[MelKey, np.ndarray]:
    """Build windows and mel filters once, here, and return the banks for the workers' initializer.

    Forked workers inherit them anyway; spawned (or forkserver) workers get them through
    :func:`_init_worker`, so that no worker pays ``librosa.filters``' import (1.0-1.3 s of CPU).
    """
    banks: dict[MelKey, np.ndarray] = {}
    for sr in sorted(sample_rates):
        try:
            banks.update(prepare(sr, params["n_mels"], params["win_sec"], params["hop_sec"]))
        except ValueError:
            continue  # reported per clip by the worker (sample rate 0: not probed; built there if needed)
    return banks


def _n_workers(workers: int, n_tasks: int) -> int:
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(workers, n_tasks))


def _chunksize(n_tasks: int, workers: int) -> int:
    """Small chunks: a 30 s clip takes ~30 ms against ~0.1 ms of IPC; the workers finish together."""
    return max(1, min(4, n_tasks // (workers * 64)))


def _init_worker(banks: dict[MelKey, np.ndarray]) -> None:
    """Pool initializer: one thread, and the mel banks the parent built."""
    single_thread_process()
    use_mel_filters(banks)


def worker_pool(workers: int, banks: dict[MelKey, np.ndarray] | None = None):
    """Worker processes with one thread each: the pool, not BLAS or torch, provides the parallelism."""
    return multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(banks or {},))


_pool = worker_pool


def _run_per_clip(tasks: list[tuple], workers: int,
                  banks: dict[MelKey, np.ndarray]) -> Iterator[tuple[str, int, str | None]]:
    if workers == 1:
        yield from map(_extract_one, tasks)
        return
    with _pool(workers, banks) as pool:
        yield from pool.imap_unordered(_extract_one, tasks, chunksize=_chunksize(len(tasks), workers))


def _extract_one(task: tuple) -> tuple[str, int, str | None]:
    """Worker: decode one clip, compute, save its part. ``(fid, T, None)`` or ``(fid, 0, reason)``.
    A task of 4 items is a waveform one: ``(fid, path, part, sample_rate)``."""
    fid, path, part = task[:3]
    try:
        y, sr = load_audio(path)
        if len(task) == 4:
            feat, problem = waveform(y, sr, task[3])  # (samples, 1) or None
        else:
            feat, problem = checked_logmel(y, sr, *task[3:])  # (T, mels) or None
    except AudioReadError as err:
        return fid, 0, err.reason
    except ValueError as err:  # a sample rate too low for the window
        return fid, 0, str(err)
    if problem:
        return fid, 0, problem
    save_part(Path(part), feat, sr)
    return fid, feat.shape[0], None


def _load_one(task: tuple) -> tuple[tuple, np.ndarray | None, int, str | None]:
    """Worker of the batched path: decode only."""
    try:
        y, sr = load_audio(task[1])
        problem = rate_problem(sr, *task[3:])
    except AudioReadError as err:
        return task, None, 0, err.reason
    except ValueError as err:  # a sample rate too low for the window
        return task, None, 0, str(err)
    return task, (None if problem else y), sr, problem


_BATCH_SAMPLES = 1 << 25  # samples per GPU batch (~25 clips of 30 s at 44.1 kHz; a 0.6 GB complex128 STFT)
_BATCH_CLIPS = 64  # clips per GPU batch


def _run_batched(tasks: list[tuple], workers: int, device: str,
                 banks: dict[MelKey, np.ndarray]) -> Iterator[tuple[str, int, str | None]]:
    """Decode in ``workers`` processes; compute same-sample-rate batches with torch on ``device``."""
    pending: dict[int, list[tuple[tuple, np.ndarray]]] = {}  # sr -> [(task, y)]

    def flush(sr: int) -> Iterator[tuple[str, int, str | None]]:
        group = pending.pop(sr)
        _, n_mels, win_sec, hop_sec = group[0][0][2:]
        feats = logmel_torch_batch([y for _, y in group], sr, device, n_mels, win_sec, hop_sec)
        for (task, _), feat in zip(group, feats, strict=True):
            if problem := features_problem(feat):
                yield task[0], 0, problem
                continue
            save_part(Path(task[2]), feat, sr)
            yield task[0], feat.shape[0], None

    # The pool is made before any CUDA call, so forked workers never inherit a CUDA context.
    pool = _pool(workers, banks) if workers > 1 else None
    try:
        loaded = bounded_imap(pool, _load_one, tasks, 4 * workers) if pool else map(_load_one, tasks)
        for task, y, sr, reason in loaded:
            if reason is not None:
                yield task[0], 0, reason
                continue
            group = pending.setdefault(sr, [])
            group.append((task, y))
            if len(group) >= _BATCH_CLIPS or sum(len(v) for _, v in group) >= _BATCH_SAMPLES:
                yield from flush(sr)
        for sr in list(pending):
            yield from flush(sr)
    finally:
        if pool is not None:
            pool.terminate()


def bounded_imap(pool, fn, tasks: list, window: int) -> Iterator:
    """``pool.imap`` with at most ``window`` tasks in flight, so decoded audio cannot pile up in memory."""
    queue: deque = deque()
    todo = iter(tasks)
    for task in itertools.islice(todo, window):
        queue.append(pool.apply_async(fn, (task,)))
    while queue:
        result = queue.popleft().get()
        for task in itertools.islice(todo, 1):
            queue.append(pool.apply_async(fn, (task,)))
        yield result
