"""Search with an ensemble run (``search.py --run runs/ens-ABC``): rank by the mean of the members' similarities.

An ensemble's clip embedding is its members' embeddings side by side, divided by sqrt(M), and so is a query's;
both stay unit vectors, and their dot product is exactly the mean of the M members' dot products
(``(1/M) Σ_m a_m · q_m``). So the :class:`~utils.search.retriever.Retriever` index, top-k, audio-to-audio search and
the listening page work unchanged on an :class:`EnsembleRetriever`. Its index is cached in the ensemble's own
``search_index/``; it is rebuilt when any member's checkpoint changes.

    r = open_retriever("runs/ens-ABC")   # an EnsembleRetriever for an ensemble directory, else Retriever.from_run
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from utils import runs
from utils.evaluation.ensemble import check_members_agree
from utils.search.retriever import Retriever


class EnsembleRetriever(Retriever):
    """A :class:`Retriever` over the concatenated, rescaled embeddings of several member runs."""

    def __init__(self, ensemble_dir: str | os.PathLike, members: list[Retriever], batch_size: int | None = None):
        first = members[0]
        super().__init__(dataclasses.replace(first.run, run_dir=Path(ensemble_dir)), batch_size)
        self.members = members
        width = sum(m.conf.model.audio_enc.out_dim for m in members)  # the index's embedding size
        audio_enc = dataclasses.replace(first.conf.model.audio_enc, out_dim=width)
        self.conf = dataclasses.replace(first.conf, model=dataclasses.replace(first.conf.model, audio_enc=audio_enc))

    def _join(self, parts: list[np.ndarray]) -> np.ndarray:
        """Members' ``(n, E_m)`` unit vectors -> ``(n, Σ E_m)`` unit vectors."""
        return (np.concatenate(parts, axis=1) / np.sqrt(len(parts))).astype(np.float32)

    def model_key(self) -> str:
        return "ensemble:" + "||".join(m.model_key() for m in self.members)

    def embed_features(self, mels: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        return self._join([m.embed_features(mels, progress) for m in self.members])

    def embed_text(self, texts: Sequence[str] | str) -> np.ndarray:
        return self._join([m.embed_text(texts) for m in self.members])

    def load_text_model(self) -> None:
        for m in self.members:
            m.load_text_model()


def open_retriever(run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "auto",
                   batch_size: int | None = None) -> Retriever:
    """:class:`EnsembleRetriever` of an ensemble directory (``ensemble.json``), else :meth:`Retriever.from_run`.
    Members that disagree on the features or the text model are refused, naming them."""
    members = runs.ensemble_members(run_dir)
    if members is None:
        return Retriever.from_run(run_dir, checkpoint, device, batch_size)
    loaded = [runs.load_run(m, checkpoint, device) for m in members]
    check_members_agree(loaded)
    return EnsembleRetriever(run_dir, [Retriever(run, batch_size) for run in loaded], batch_size)
