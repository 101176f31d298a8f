"""Split hygiene: the training clips must not be validation or evaluation clips, by identity, not by split name.

A clip's identity is its audio file (the resolved path in the split's stage-1 audio table) and its content (a
BLAKE2 hash of its stage-2 log-mels, so a copy under another name or folder is found too). Training calls
:func:`check_split_overlap` before any work; ``data.allow_overlap: true`` lets it pass with a warning.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np

from utils.base import paths
from utils.base.config import Config
from utils.base.errors import DataError, warn
from utils.base.tables import read_audio_table
from utils.data.split_mix import split_names

SHOWN = 3  # overlapping clips named in the error


def logmel_hash(mel: np.ndarray) -> str:
    """BLAKE2b-128 of a ``(time, mels)`` float32 array's shape and bytes: equal audio gives equal log-mels."""
    mel = np.ascontiguousarray(mel, dtype=np.float32)
    digest = hashlib.blake2b(str(mel.shape).encode(), digest_size=16)
    digest.update(mel.tobytes())
    return digest.hexdigest()


def clip_identities(conf: Config, split: str) -> dict[str, tuple[str, str | None]]:
    """fid -> (resolved audio path, log-mel hash or None) of every clip in ``split``'s audio table.

    An unprepared split (no audio table) gives ``{}``; clips without features get no hash.
    """
    table = paths.audio_table(conf, split)
    if not table.is_file():
        return {}
    rows = read_audio_table(table)
    hashes: dict[str, str] = {}
    if paths.logmels(conf, split).is_file():
        try:
            with h5py.File(paths.logmels(conf, split), "r") as h5:
                hashes = {r["fid"]: logmel_hash(h5[r["fid"]][()]) for r in rows if r["fid"] in h5}
        except OSError as err:
            raise DataError(f"cannot read {paths.logmels(conf, split)} ({err}); "
                            "re-run preprocessing/02_audio_logmel.py") from err
    root = Path(conf.data.dataset_dir).expanduser()
    return {r["fid"]: (str((root / Path(r["path"]).expanduser()).resolve()), hashes.get(r["fid"])) for r in rows}


def overlapping_clips(train: dict[str, tuple[str, str | None]],
                      other: dict[str, tuple[str, str | None]]) -> list[tuple[str, str]]:
    """``(training file, other split's file)`` of every training clip with the same file or log-mels."""
    by_path = {path: path for path, _ in other.values()}
    by_hash = {h: path for path, h in other.values() if h is not None}
    found = []
    for path, h in train.values():
        match = by_path.get(path) or (by_hash.get(h) if h is not None else None)
        if match is not None:
            found.append((path, match))
    return found


def check_split_overlap(conf: Config) -> list[str]:
    """Raise :class:`DataError` when a clip of ``data.train_split`` is also in ``data.val_split`` or a split
    of ``data.eval_splits`` (same file, or same log-mels under another name), listing the count and the first
    few files; with ``data.allow_overlap`` warn instead. Returns the overlap found, one line per split."""
    train_splits = split_names(conf.data.train_split)
    train: dict[str, tuple[str, str | None]] = {}
    for split in train_splits:
        train.update(clip_identities(conf, split))
    others = [s for s in split_names(conf.data.val_split) + list(conf.data.eval_splits)]
    report = []
    for split in dict.fromkeys(others):
        found = overlapping_clips(train, clip_identities(conf, split))
        if not found:
            continue
        shown = "; ".join(a if a == b else f"{a} = {b}" for a, b in found[:SHOWN])
        line = (f"{len(found)} training clip(s) of '{conf.data.train_split}' are also in split '{split}' "
                f"(the same file or the same audio), e.g. {shown}")
        report.append(line)
    if report and not conf.data.allow_overlap:
        raise DataError(f"{'; '.join(report)}. Train on clips that are not validated or evaluated on (check "
                        "data.train_split, data.val_split, data.eval_splits), or pass --set data.allow_overlap=true "
                        "to allow it (the run record says so)")
    for line in report:
        warn(f"{line}: allowed by data.allow_overlap, and recorded in run_info.json")
    return report
