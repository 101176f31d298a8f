"""Stage 2's driver: one split's log-mels into one HDF5 file, resumable and atomic (see :func:`extract_split`).

The formula is :mod:`utils.features.logmel`; the process pool :mod:`utils.features.workers`; the part files of an unfinished
run :mod:`utils.features.parts`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from utils.base.config import ConfigError
from utils.base.errors import DataError, PipelineError
from utils.base.fileio import atomic_write, remove_stale_temps
from utils.base.tables import SKIPPED_COLUMNS, read_rows, write_rows
from utils.features.logmel import FORMULA, HOP_SEC, N_MELS, WIN_SEC, features_problem
from utils.features.parts import (
    finished_parts,
    load_part,
    open_parts_dir,
    part_path,
    parts_dir_for,
)
from utils.features.waveform import WAVEFORM_FORMULA
from utils.features.workers import Clip, compute_clips

FORMAT_VERSION = 1  # bump when the stored layout changes; older files and parts are then rebuilt
SKIP_PREFIX = "log-mel: "  # starts the reason of every skip-report row stage 2 writes


@dataclass
class ExtractSummary:
    """What :func:`extract_split` did."""

    out_path: Path
    n_clips: int  # clips in the table
    n_computed: int  # clips computed in this run
    n_reused: int  # clips taken from the existing HDF5 or from an interrupted run's parts
    skipped: list[dict] = field(default_factory=list)  # rows (fname, path, reason) that failed this run
    seconds: float = 0.0  # wall time of the call
    min_frames: int = 0  # shortest stored clip (frames)
    max_frames: int = 0  # longest stored clip (frames)
    up_to_date: bool = False  # the HDF5 already held every clip; nothing was done

    @property
    def n_stored(self) -> int:
        return self.n_computed + self.n_reused

    def describe(self) -> str:
        rate = self.n_computed / self.seconds if self.seconds > 0 else 0.0
        state = "up to date" if self.up_to_date else f"computed {self.n_computed} ({rate:.1f} clips/s)"
        return (f"{self.n_stored}/{self.n_clips} clips in {self.out_path.name}: {state}, reused {self.n_reused}, "
                f"skipped {len(self.skipped)}; {self.seconds:.1f} s; frames {self.min_frames}-{self.max_frames}")



def extract_split(audio_rows: Iterable[dict], dataset_dir: str | os.PathLike, out_path: str | os.PathLike,
                  skipped_path: str | os.PathLike, workers: int = 0, device: str = "cpu", progress: bool = True,
                  *, n_mels: int = N_MELS, win_sec: float = WIN_SEC, hop_sec: float = HOP_SEC,
                  batched: bool | None = None, desc: str = "log-mel", kind: str = "logmel",
                  sample_rate: int = 16000) -> ExtractSummary:
    """Write one ``(T, n_mels)`` float32 dataset per clip (named by fid) to the HDF5 ``out_path``; with
    ``kind='waveform'`` the clip's mono audio at ``sample_rate`` instead, ``(samples, 1)``
    (:mod:`utils.features.waveform`; always per clip on the CPU pool).

    ``audio_rows``: a stage-1 audio table (fid, fname, path relative to ``dataset_dir``, ...).
    ``workers``: processes (0 = all cores). ``device='cuda'`` decodes in ``workers`` processes and
    computes batches on the GPU; ``batched=True`` takes that path on any device (tests use the CPU).

    Resumable and atomic: each finished clip is saved at once, atomically, to
    ``<out_path>.parts/<fid>.npz`` (CRC-checked on reuse; a torn or corrupt part is recomputed).
    The HDF5 is assembled in a temporary file and renamed onto ``out_path``, so ``out_path`` is
    always absent, the previous complete file, or the new complete file. A rerun skips clips
    already in ``out_path`` or in the parts folder, and returns at once when ``out_path`` holds
    every clip. Unreadable clips are left out and reported in ``skipped_path`` (merged with the
    rows stage 1 wrote there); they are retried on the next run.
    """
    t0 = time.perf_counter()
    device = _check_device(device)
    out_path = Path(out_path)
    params = _params(n_mels, win_sec, hop_sec) if kind == "logmel" else _waveform_params(sample_rate)
    channels = _channels(params)
    clips = _clips(audio_rows, Path(dataset_dir))
    wanted = {c.fid for c in clips}
    parts_dir = parts_dir_for(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_path.parent, out_path.name)

    existing = _existing_frames(out_path, params)  # fid -> T of a valid existing HDF5, else None
    damaged = existing is not None and 0 in existing.values()  # non-finite clips: never "up to date"
    existing = None if existing is None else {fid: t for fid, t in existing.items() if t}
    if existing is not None and existing.keys() == wanted:
        if parts_dir.exists():
            shutil.rmtree(parts_dir)
        print(f"{out_path}: up to date ({len(wanted)} clips)")
        frames = list(existing.values())
        return ExtractSummary(out_path, len(clips), 0, len(clips), seconds=time.perf_counter() - t0,
                              min_frames=min(frames, default=0), max_frames=max(frames, default=0),
                              up_to_date=True)

    open_parts_dir(parts_dir, params)
    rebuild = existing is None or damaged  # no usable HDF5 in place: write one even if no clip succeeds
    existing = existing or {}
    done = {fid: t for fid, t in existing.items() if fid in wanted}  # fid -> T, already finished
    from_parts = finished_parts(parts_dir, [c.fid for c in clips if c.fid not in done], channels)
    done.update(from_parts)
    todo = [c for c in clips if c.fid not in done]

    computed: dict[str, int] = {}
    failed: list[dict] = []
    if todo:
        results = compute_clips(todo, parts_dir, params, workers, device, batched, progress, desc)
        for clip, n_frames, reason in results:
            if reason is None:
                computed[clip.fid] = n_frames
            else:
                failed.append({"fname": clip.fname, "path": clip.rel, "reason": f"{SKIP_PREFIX}{reason}"})
    done.update(computed)

    if not done and clips:
        _merge_skipped(Path(skipped_path), clips, failed)
        kept = f"{out_path} left as it was" if out_path.exists() else "nothing written"
        raise DataError(f"not one of the {len(clips)} clips could be turned into log-mels ({kept}); the reasons "
                        f"are in {skipped_path}, e.g. {failed[0]['fname']}: {failed[0]['reason']}")
    if rebuild or done.keys() != existing.keys():
        order = [c.fid for c in clips if c.fid in done]
        _assemble(out_path, order, existing, parts_dir, params)
    shutil.rmtree(parts_dir, ignore_errors=True)
    _merge_skipped(Path(skipped_path), clips, failed)
    frames = list(done.values())
    return ExtractSummary(out_path, len(clips), len(computed), len(done) - len(computed), skipped=failed,
                          seconds=time.perf_counter() - t0, min_frames=min(frames, default=0),
                          max_frames=max(frames, default=0))


def _params(n_mels: int, win_sec: float, hop_sec: float) -> dict:
    """Everything the stored features depend on; a stored file or parts folder with others is rebuilt."""
    return {"n_mels": int(n_mels), "win_sec": float(win_sec), "hop_sec": float(hop_sec), "formula": FORMULA,
            "format_version": FORMAT_VERSION}


def _waveform_params(sample_rate: int) -> dict:
    """Everything stored waveforms depend on (``features.kind: waveform``)."""
    return {"kind": "waveform", "sample_rate": int(sample_rate), "formula": WAVEFORM_FORMULA,
            "format_version": FORMAT_VERSION}


def _channels(params: dict) -> int:
    """Width of each stored ``(T, C)`` dataset: n_mels for log-mels, 1 for waveforms."""
    return 1 if params.get("kind") == "waveform" else int(params["n_mels"])


def _clips(audio_rows: Iterable[dict], dataset_dir: Path) -> list[Clip]:
    clips, seen = [], set()
    for row in audio_rows:
        fid = str(row["fid"])
        if not fid or "/" in fid or fid == ".":
            raise DataError(f"invalid fid {fid!r} in the audio table (fids are HDF5 dataset names: no '/')")
        if fid in seen:
            raise DataError(f"duplicate fid {fid!r} in the audio table; rerun preprocessing/01_clotho_dataset.py")
        seen.add(fid)
        sr = str(row.get("sample_rate", "")).strip()
        clips.append(Clip(fid, str(row["fname"]), str(row["path"]), dataset_dir / str(row["path"]),
                          int(sr) if sr.isdigit() else 0))
    return clips



def _check_device(device: str) -> str:
    device = str(device)
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise ConfigError(f"device (--device / features.device) must be 'cpu' or 'cuda[:N]', got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} (--device / features.device) asked for, but CUDA is not available; "
                          "use --device cpu")
    return device


def _existing_frames(out_path: Path, params: dict) -> dict[str, int] | None:
    """``fid -> T`` of the HDF5 at ``out_path``; None when it is absent, unreadable or made otherwise."""
    if not out_path.exists():
        return None
    try:
        with h5py.File(out_path, "r") as h5:
            stored = {k: _attr(h5.attrs.get(k)) for k in params}
            if stored != params:
                print(f"{out_path} was made with other settings or an older version; rebuilding it")
                return None
            return {fid: int(ds.shape[0]) * (features_problem(ds[()]) is None) for fid, ds in h5.items()
                    if isinstance(ds, h5py.Dataset) and ds.ndim == 2 and ds.shape[1] == _channels(params)
                    and ds.dtype == np.float32}  # T of a non-finite clip is 0: computed again
    except (OSError, RuntimeError, KeyError, ValueError) as err:  # truncated, or damaged metadata
        print(f"warning: {out_path} is unreadable ({err}); rebuilding it", file=sys.stderr)
        return None


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value



def _assemble(out_path: Path, order: list[str], existing: dict[str, int], parts_dir: Path, params: dict) -> None:
    """Write every clip of ``order`` (from the old HDF5 or from parts) to a temporary file, then rename it."""
    with atomic_write(out_path, durable=True) as tmp, h5py.File(tmp, "w") as dst:
        dst.attrs.update(params)
        old = h5py.File(out_path, "r") if any(fid in existing for fid in order) else None
        try:
            for fid in order:
                if old is not None and fid in existing:
                    src = old[fid]
                    dst.create_dataset(fid, data=src[()]).attrs.update(dict(src.attrs))
                    continue
                part = load_part(part_path(parts_dir, fid), _channels(params))
                if part is None:
                    raise PipelineError(f"part of clip {fid} in {parts_dir} vanished or was damaged during "
                                        "the run; rerun the same command to recompute it")
                dst.create_dataset(fid, data=part[0]).attrs["sr"] = part[1]
        finally:
            if old is not None:
                old.close()


def _merge_skipped(skipped_path: Path, clips: list[Clip], failed: list[dict]) -> None:
    """Rewrite stage 2's rows of the skip report (one per fname); keep every row stage 1 wrote."""
    rows = read_rows(skipped_path, SKIPPED_COLUMNS) if skipped_path.is_file() else []
    ours = {c.fname for c in clips}
    kept = [r for r in rows if not (r["reason"].startswith(SKIP_PREFIX) and r["fname"] in ours)]
    merged = kept + failed
    if merged != rows:
        write_rows(skipped_path, merged, SKIPPED_COLUMNS)
