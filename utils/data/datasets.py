"""Training and evaluation data: log-mel features from HDF5, caption tables, SBERT vectors.

Item and batch schemas:
    PairDataset[i] -> (audio (T, C) float32 tensor, text (D,) tensor or str, clip index int, pair index int)
    collate_pairs  -> Batch(audio (B, T_max, C) zero-padded, text (B, D) or list[str], clip (B,), index (B,),
                            lengths (B,))
C is 64 mel bands (log-mels) or 1 (waveforms, ``features.kind: waveform``, T = samples).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.base import paths
from utils.base.config import Config
from utils.base.errors import DataError, warn
from utils.base.tables import SKIPPED_COLUMNS, read_rows, read_text_table
from utils.data.augment import TrainAugment
from utils.data.caption_vectors import load_text_embeddings


class LogmelStore:
    """Read-only access to one split's ``<split>_audio_logmels.hdf5``.

    The file is opened lazily, once per process, so DataLoader workers each get their own handle
    instead of re-opening the file for every item. ``in_memory=True`` loads every clip up front.
    """

    def __init__(self, path: str | Path, in_memory: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"log-mel features not found: {self.path}. Run preprocessing/02_audio_logmel.py first.")
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        try:
            with h5py.File(self.path, "r") as f:
                self._shapes = {k: f[k].shape for k in f.keys()}
                self._cache = {k: f[k][()] for k in f.keys()} if in_memory else None
        except (OSError, RuntimeError, KeyError, ValueError) as err:  # truncated, or damaged metadata
            raise DataError(f"log-mel features {self.path} are unreadable ({str(err).splitlines()[0][:200]}); "
                            "re-run preprocessing/02_audio_logmel.py, which rebuilds it") from err

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __contains__(self, fid: str) -> bool:
        return fid in self._shapes

    def __getitem__(self, fid: str) -> np.ndarray:
        """``(time, mels)`` float32."""
        if self._cache is not None:
            return self._cache[fid]
        return self._file()[fid][()]

    def n_frames(self, fid: str) -> int:
        return self._shapes[fid][0]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None  # h5py handles cannot cross process boundaries
        return state


@dataclass
class SplitData:
    """One split's captions, clips, features and (optionally) SBERT vectors, aligned by index."""

    split: str
    text_rows: list[dict]  # caption table rows
    fids: list[str]  # clips that have captions, in first-appearance order
    text_to_audio: np.ndarray  # (n_texts,) index into fids
    features: LogmelStore
    text_embeds: np.ndarray | None  # (n_texts, D) float32, None when the text encoder reads raw text

    @property
    def texts(self) -> list[str]:
        return [r["raw_text"] for r in self.text_rows]


def read_captions(conf: Config, split: str) -> list[dict]:
    """The caption table of ``split``; :class:`DataError` when it is missing or empty."""
    rows = read_text_table(paths.text_table(conf, split))
    if not rows:
        raise DataError(f"{paths.text_table(conf, split)} has no captions; check stage 1's output for '{split}'")
    return rows


def open_features(conf: Config, split: str, rows: list[dict], table: Path,
                  in_memory: bool = False) -> tuple[LogmelStore, list[dict]]:
    """The log-mels of ``split`` and the ``rows`` (of ``table``) that have them: rows of clips that stage 2
    listed as unreadable are left out (:func:`drop_skipped_clips`); any other clip without features is a
    :class:`DataError`."""
    store = LogmelStore(paths.features(conf, split), in_memory=in_memory)
    rows = drop_skipped_clips(conf, split, rows, store)
    missing = [r["fid"] for r in rows if r["fid"] not in store]
    if missing:
        raise DataError(
            f"{len(missing)} clip(s) of {table} have no features in {store.path} "
            f"(e.g. fid {missing[0]}). Re-run preprocessing/02_audio_logmel.py; if it lists them in "
            f"{paths.skipped_table(conf, split).name} they are unreadable: fix or remove those clips, then re-run "
            "stages 1 and 2."
        )
    return store, rows


def drop_skipped_clips(conf: Config, split: str, rows: list[dict], store: LogmelStore) -> list[dict]:
    """``rows`` without the clips that have no features because the skip report lists them as unreadable
    (stage 2 could not decode them, or their log-mels were not finite); warns how many were left out."""
    report = paths.skipped_table(conf, split)
    if all(r["fid"] in store for r in rows) or not report.is_file():
        return rows
    reasons = {r["fname"]: r["reason"] for r in read_rows(report, SKIPPED_COLUMNS)}
    dropped = {r["fid"]: r["fname"] for r in rows if r["fid"] not in store and r["fname"] in reasons}
    if not dropped:
        return rows
    kept = [r for r in rows if r["fid"] not in dropped]
    if not kept:
        raise DataError(f"every clip of '{split}' is listed as unreadable in {report}; fix the clips, then re-run "
                        "preprocessing stages 1 and 2")
    example = next(iter(dropped.values()))
    warn(f"leaving out {len(dropped)} clip(s) of '{split}' ({len(rows) - len(kept)} captions) that stage 2 "
         f"skipped, listed with the reason in {report} (e.g. {example}: {reasons[example]})")
    return kept


def load_split(conf: Config, split: str, need_embeds: bool = True, in_memory: bool = False) -> SplitData:
    """Load and cross-check a paired split; raise :class:`DataError` naming the file and the fix."""
    all_rows = read_captions(conf, split)
    store, rows = open_features(conf, split, all_rows, paths.text_table(conf, split), in_memory)
    fid_index: dict[str, int] = {}
    for r in rows:
        fid_index.setdefault(r["fid"], len(fid_index))
    embeds = None
    if need_embeds:
        embeds = load_text_embeddings(paths.text_embeds(conf), split, all_rows)  # (n_all, D)
        if len(rows) < len(all_rows):
            kept = {id(r) for r in rows}
            embeds = embeds[[i for i, r in enumerate(all_rows) if id(r) in kept]]  # (n_texts, D)
    return SplitData(split, rows, list(fid_index), np.array([fid_index[r["fid"]] for r in rows]), store, embeds)


class PairDataset(Dataset):
    """Caption-level pairs: every caption with its clip (the baseline's training items); ``augment`` (training
    only) crops and masks each clip's features as it is read; ``prepare`` (HFAudioEncoder's windowed feature
    extractor) turns a batch's clips into model inputs in :class:`PairCollate`."""

    def __init__(self, data: SplitData, text_kind: str = "embedding", augment: TrainAugment | None = None,
                 prepare: Callable[[list[np.ndarray]], Any] | None = None):
        self.data = data
        self.text_kind = text_kind
        self.augment = augment
        self.prepare = prepare  # the audio encoder's own feature extraction, run by PairCollate in the workers

    def __len__(self) -> int:
        return len(self.data.text_rows)

    def __getitem__(self, i: int):
        clip = int(self.data.text_to_audio[i])
        audio = torch.from_numpy(np.asarray(self.data.features[self.data.fids[clip]], dtype=np.float32))
        if self.augment is not None:
            audio = self.augment(audio)  # (T', C)
        if self.text_kind == "embedding":
            text = torch.from_numpy(self.data.text_embeds[i])
        else:
            text = self.data.text_rows[i]["raw_text"]
        return audio, text, clip, i


@dataclass
class Batch:
    audio: Any  # (B, T_max, C) zero-padded tensor, or what PairDataset.prepare made of the clips
    text: torch.Tensor | list[str]  # (B, D) or captions
    clip: torch.Tensor  # (B,) clip index, for the InfoNCE mask
    index: torch.Tensor  # (B,) pair index into the split's caption table
    lengths: torch.Tensor | None = None  # (B,) frames of each clip before padding

    def pin_memory(self) -> Batch:
        text = self.text.pin_memory() if isinstance(self.text, torch.Tensor) else self.text
        lengths = None if self.lengths is None else self.lengths.pin_memory()
        return Batch(self.audio.pin_memory(), text, self.clip.pin_memory(), self.index.pin_memory(), lengths)


def pad_stack(arrays: list[torch.Tensor]) -> torch.Tensor:
    """``[(T_i, M)]`` -> ``(B, max T_i, M)``, zero-padded at the end of time (the baseline's padding)."""
    t_max = max(a.shape[0] for a in arrays)
    out = arrays[0].new_zeros((len(arrays), t_max, arrays[0].shape[1]))
    for k, a in enumerate(arrays):
        out[k, : a.shape[0]] = a
    return out


class PairCollate:
    """:func:`collate_pairs`, with the clips turned into model inputs by ``prepare`` when given (in the workers)."""

    def __init__(self, prepare: Callable[[list[np.ndarray]], Any] | None = None):
        self.prepare = prepare

    def __call__(self, items) -> Batch:
        batch = collate_pairs(items)
        if self.prepare is not None:
            batch.audio = self.prepare([item[0].numpy() for item in items])
        return batch


def collate_pairs(items) -> Batch:
    audio, text, clip, index = zip(*items, strict=True)
    text = torch.stack(text) if isinstance(text[0], torch.Tensor) else list(text)
    lengths = torch.tensor([a.shape[0] for a in audio])
    return Batch(pad_stack(list(audio)), text, torch.tensor(clip), torch.tensor(index), lengths)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (little padding), longest first."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
