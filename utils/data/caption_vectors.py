"""The stage-3 caption-vector file: one HDF5 file with a group per split (``tids``, ``embeds``).

Each group is fingerprinted by the split's caption table, so a reader knows the vectors belong to the captions it
loaded, and a re-run only encodes splits whose table changed. Reading needs no torch or sentence-transformers.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from utils.base.errors import DataError
from utils.base.fileio import atomic_write

STAGE3 = "preprocessing/03_sbert_embeddings.py"


def text_table_sha1(rows: Sequence[dict]) -> str:
    """Fingerprint of a caption table: SHA1 over ``tid \\t raw_text \\n`` of each row, in table order."""
    digest = hashlib.sha1()
    for row in rows:
        digest.update(f"{row['tid']}\t{row['raw_text']}\n".encode())
    return digest.hexdigest()


def update_text_embeddings(path: str | os.PathLike, tables: dict[str, Sequence[dict]], model_name: str,
                           encode_fn: Callable[[list[str]], np.ndarray], fingerprint: str | None = None) -> dict[str, str]:
    """Write the embeddings of every split in ``tables`` (split -> text-table rows) to ``path``.

    ``fingerprint``: of the model's weights (:func:`utils.text.fingerprint.weights_fingerprint`), stored with
    ``model_name`` as the file's attributes ``model`` and ``model_fingerprint``; training, scoring and search
    refuse a file without it. A split whose group in the existing file has the same table fingerprint and model
    (name and weights) is copied, not re-encoded; the others get ``encode_fn(raw_texts) -> (N, D) float32``. Groups of splits not in ``tables``
    are kept when the model is the same. The new file is written beside ``path`` and renamed onto it.
    Returns split -> ``'encoded'`` or ``'unchanged'``.
    """
    path = Path(path)
    old = None
    if path.is_file():
        try:
            old = h5py.File(path, "r")
        except OSError as err:  # unreadable (e.g. a crash of an old version): rebuilt from scratch
            print(f"warning: cannot read {path} ({err}); every split will be re-encoded", file=sys.stderr)
    try:
        same_model = (old is not None and old.attrs.get("model") == model_name
                      and old.attrs.get("model_fingerprint") == fingerprint)
        status: dict[str, str] = {}
        fresh: dict[str, tuple[list[str], np.ndarray]] = {}
        for split, rows in tables.items():
            sha = text_table_sha1(rows)
            if same_model and split in old and old[split].attrs.get("table_sha1") == sha:
                status[split] = "unchanged"
            else:
                texts = [row["raw_text"] for row in rows]
                fresh[split] = ([row["tid"] for row in rows], np.asarray(encode_fn(texts), dtype=np.float32))
                status[split] = "encoded"
        dim = _common_dim(path, fresh, int(old.attrs["dim"]) if same_model else None)
        _write_file(path, old if same_model else None, tables, fresh, model_name, dim, fingerprint)
    finally:
        if old is not None:
            old.close()
    return status


def _common_dim(path: Path, fresh: dict, old_dim: int | None) -> int:
    """The one embedding size of the new and kept groups; :class:`DataError` if they disagree."""
    dims = {e.shape[1] for _, e in fresh.values() if e.ndim == 2 and len(e)}
    if old_dim is not None:
        dims.add(old_dim)
    if len(dims) > 1:
        raise DataError(f"embedding sizes disagree ({sorted(dims)}) between the new splits and those kept in "
                        f"{path}; delete {path} and re-run {STAGE3}")
    return dims.pop() if dims else 0


def _write_file(path: Path, old, tables: dict, fresh: dict, model_name: str, dim: int,
                fingerprint: str | None) -> None:
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as out:
        out.attrs["model"] = model_name
        if fingerprint is not None:
            out.attrs["model_fingerprint"] = fingerprint
        out.attrs["dim"] = dim
        keep = [] if old is None else [s for s in old if s not in fresh]
        for split in keep:
            old.copy(old[split], out, name=split)
        for split, (tids, embeds) in fresh.items():
            group = out.create_group(split)
            group.create_dataset("tids", data=np.array(tids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            group.create_dataset("embeds", data=embeds.reshape(len(tids), dim))  # (N, D) float32
            group.attrs["table_sha1"] = text_table_sha1(tables[split])


def _open_embeddings(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"caption embeddings not found: {path}. Run {STAGE3} first.")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"cannot read caption embeddings {path} ({err}); delete it and re-run {STAGE3}") from err


def embedding_model_name(path: str | os.PathLike) -> str:
    """The sentence-transformers model that made the embedding file at ``path``."""
    with _open_embeddings(path) as h5:
        return str(h5.attrs["model"])


def embedding_provenance(path: str | os.PathLike) -> tuple[str, str | None]:
    """``(model name, weights fingerprint or None)`` recorded in the embedding file at ``path``."""
    with _open_embeddings(path) as h5:
        fingerprint = h5.attrs.get("model_fingerprint")
        return str(h5.attrs.get("model", "?")), None if fingerprint is None else str(fingerprint)


def embedding_dim(path: str | os.PathLike) -> int:
    """The embedding size ``D`` of the file at ``path``."""
    with _open_embeddings(path) as h5:
        return int(h5.attrs["dim"])


def embedding_splits(path: str | os.PathLike) -> list[str]:
    """The splits stored in the embedding file at ``path``."""
    with _open_embeddings(path) as h5:
        return sorted(h5.keys())


def load_text_embeddings(path: str | os.PathLike, split: str, rows: Sequence[dict]) -> np.ndarray:
    """Embeddings of ``split`` as float32 ``(len(rows), D)``; row ``i`` belongs to ``rows[i]``.

    ``rows`` is the split's whole text table as read by :func:`utils.base.tables.read_text_table` (select subsets
    afterwards). Raises :class:`DataError` when the file or split is missing, or when the embeddings were
    made from a different caption table (fingerprint or tid mismatch).
    """
    with _open_embeddings(path) as h5:
        if split not in h5:
            raise DataError(f"{path} has no embeddings for split '{split}' (it has {sorted(h5.keys())}); "
                            f"re-run stage 3: python {STAGE3} with '{split}' in data.splits")
        group = h5[split]
        stale = f"the embeddings of split '{split}' in {path} were made from a different caption table"
        if group.attrs.get("table_sha1") != text_table_sha1(rows):
            raise DataError(f"{stale} (fingerprint mismatch); re-run stage 3: python {STAGE3}")
        tids = [t.decode() if isinstance(t, bytes) else t for t in group["tids"][()]]
        if tids != [row["tid"] for row in rows]:
            raise DataError(f"{stale} (tid mismatch); re-run stage 3: python {STAGE3}")
        return np.asarray(group["embeds"][()], dtype=np.float32)  # (N, D)
