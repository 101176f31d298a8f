"""Training or validating on several paired splits at once: ``data.train_split: development+mine``.

Each split keeps its own stage-1 tables, log-mel file and caption vectors; :func:`load_splits` reads them
with :func:`utils.data.datasets.load_split` and joins them into one :class:`SplitData`. Clip IDs carry their
split (:func:`utils.data.clotho.make_fid`), so they never collide, and the InfoNCE mask, built from clip
indices, never treats two captions of one clip as negatives, whatever each split's caption count.
"""

from __future__ import annotations

import numpy as np

from utils.base.config import Config
from utils.base.errors import DataError
from utils.data.datasets import LogmelStore, SplitData, load_split

SEPARATOR = "+"


def split_names(spec: str) -> list[str]:
    """``'development+mine'`` -> ``['development', 'mine']``."""
    return [name.strip() for name in spec.split(SEPARATOR)]


class MultiStore:
    """The log-mel stores of several splits read as one, by fid (the interface of :class:`LogmelStore`)."""

    def __init__(self, stores: list[LogmelStore], fids: list[list[str]]):
        self.stores = stores
        self._where = {fid: i for i, part in enumerate(fids) for fid in part}

    def __contains__(self, fid: str) -> bool:
        return fid in self._where

    def __getitem__(self, fid: str) -> np.ndarray:
        """``(time, mels)`` float32."""
        return self.stores[self._where[fid]][fid]

    def n_frames(self, fid: str) -> int:
        return self.stores[self._where[fid]].n_frames(fid)


def combine_splits(parts: list[SplitData]) -> SplitData:
    """One :class:`SplitData` over several splits: captions and clips concatenated in the given order."""
    fids = [fid for part in parts for fid in part.fids]
    if len(set(fids)) != len(fids):
        raise DataError(f"splits {[p.split for p in parts]} share clip IDs; list each split once")
    mels = {part.split: part.features[part.fids[0]].shape[1] for part in parts if part.fids}  # (time, mels)
    if len(set(mels.values())) > 1:
        raise DataError(f"the splits' log-mels have different mel counts {mels}; re-run "
                        "preprocessing/02_audio_logmel.py with one features config")
    offsets = np.cumsum([0] + [len(part.fids) for part in parts[:-1]])
    text_to_audio = np.concatenate([part.text_to_audio + off for part, off in zip(parts, offsets, strict=True)])
    embeds = None
    if parts[0].text_embeds is not None:
        dims = {part.split: part.text_embeds.shape[1] for part in parts}
        if len(set(dims.values())) > 1:
            raise DataError(f"the splits' caption vectors differ in size {dims}; re-run "
                            "preprocessing/03_sbert_embeddings.py")
        embeds = np.concatenate([part.text_embeds for part in parts])  # (n_texts, D)
    rows = [row for part in parts for row in part.text_rows]
    store = MultiStore([part.features for part in parts], [part.fids for part in parts])
    return SplitData(SEPARATOR.join(p.split for p in parts), rows, fids, text_to_audio, store, embeds)


def load_splits(conf: Config, spec: str, need_embeds: bool = True, in_memory: bool = False) -> SplitData:
    """:func:`load_split` for one split name, or for several joined by ``+``."""
    parts = [load_split(conf, name, need_embeds, in_memory) for name in split_names(spec)]
    return parts[0] if len(parts) == 1 else combine_splits(parts)
