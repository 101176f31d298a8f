"""Stage 2's part files: each finished clip saved at once, atomically, to ``<out>.parts/<fid>.npz``.

An interrupted run leaves its finished clips here; the next run reuses every part that loads (CRC-checked) and
recomputes torn or corrupt ones. ``params.json`` records the settings: a folder made with others is emptied.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from urllib.parse import quote

import numpy as np

from utils.base.errors import warn
from utils.base.fileio import atomic_write, remove_stale_temps, write_text_atomic


def parts_dir_for(out_path: str | os.PathLike) -> Path:
    """The sidecar folder holding finished clips of an unfinished run: ``<out_path>.parts/``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".parts")



def part_path(parts_dir: Path, fid: str) -> Path:
    name = quote(fid, safe="")
    if len(name) > 200:
        name = hashlib.sha1(fid.encode()).hexdigest()
    return parts_dir / f"{name}.npz"


def open_parts_dir(parts_dir: Path, params: dict) -> None:
    """Create the parts folder, or empty it when it was written with other settings."""
    marker = parts_dir / "params.json"
    if parts_dir.exists():
        try:
            same = json.loads(marker.read_text(encoding="utf-8")) == params
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parts_dir)
    if not marker.exists():
        write_text_atomic(marker, json.dumps(params))


def save_part(path: Path, feat: np.ndarray, sr: int) -> None:
    """Write atomically: a killed writer leaves only a temporary file, never a torn part."""
    with atomic_write(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, feat=feat, sr=np.int64(sr))


def load_part(path: Path, n_mels: int) -> tuple[np.ndarray, int] | None:
    """``(feat (T, n_mels) float32, sr)``, or None when the part is missing, torn or corrupt (CRC)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            feat, sr = z["feat"], int(z["sr"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if feat.dtype != np.float32 or feat.ndim != 2 or feat.shape[1] != n_mels or feat.shape[0] < 1:
        return None
    return feat, sr


def finished_parts(parts_dir: Path, fids: list[str], n_mels: int) -> dict[str, int]:
    """``fid -> T`` of the clips whose part is complete; bad parts are deleted (and recomputed)."""
    found = {}
    for fid in fids:
        path = part_path(parts_dir, fid)
        if not path.exists():
            continue
        part = load_part(path, n_mels)
        if part is None:
            warn(f"discarding a damaged part {path}; it will be recomputed")
            path.unlink()
        else:
            found[fid] = part[0].shape[0]
    return found
