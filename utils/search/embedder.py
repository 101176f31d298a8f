"""Embed clips and captions with a trained run: the half of :class:`utils.search.retriever.Retriever` that needs no index.

    e = Embedder(runs.load_run("runs/baseline"))
    e.embed_audio(["a.wav", (y, sr), logmels])   # -> (n, E) float32 unit vectors
    e.embed_text(["a dog barks"])                 # -> (n, E) float32 unit vectors
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from utils import runs
from utils.base.config import FeatureConf
from utils.base.errors import DataError, PipelineError
from utils.data.audio import load_audio
from utils.evaluation.embedding import TEXT_VECTOR_BATCH, embed_audio, embed_text
from utils.features.logmel import checked_logmel
from utils.features.waveform import waveform
from utils.text.fingerprint import weights_fingerprint
from utils.text.sbert import encode, load_sbert

AudioItem = str | os.PathLike | tuple | np.ndarray | torch.Tensor  # path, (y, sr), or (time, mels) log-mels


def file_features(path: str | os.PathLike, features: FeatureConf) -> tuple[np.ndarray, float]:
    """Stage 2's log-mels ``(time, n_mels)`` float32 of an audio file, and its duration in seconds; an unreadable
    file raises :class:`DataError` (:class:`utils.data.audio.AudioReadError`)."""
    y, sr = load_audio(path)
    mel, problem = checked_logmel(y, sr, features.n_mels, features.win_sec, features.hop_sec)  # (time, n_mels)
    if problem:
        raise DataError(problem)
    return mel, len(y) / sr


def clip_features(item: AudioItem, features: FeatureConf) -> np.ndarray:
    """Stage 2's features of one clip: log-mels ``(time, n_mels)`` float32 (waveforms ``(samples, 1)`` with
    ``features.kind: waveform``).

    Args:
        item: an audio file path (any format and sample rate soundfile / librosa read), a ``(y, sr)``
            tuple (mono or ``(samples, channels)`` waveform), or log-mels ``(time, n_mels)`` used as they are.
    """
    if isinstance(item, (str, os.PathLike)):
        return file_features(item, features)[0]
    if isinstance(item, tuple) and len(item) == 2:
        y, sr = np.asarray(item[0], dtype=np.float32), int(item[1])
        if y.ndim == 2:
            y = y.mean(axis=1)  # (samples, channels) -> mono, as load_audio does
    else:
        mel = np.asarray(item.cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)
        if features.kind == "waveform":  # stored waveforms at features.sample_rate: (samples,) or (samples, 1)
            return mel.reshape(-1, 1)
        if mel.ndim != 2 or mel.shape[1] != features.n_mels:
            raise ValueError(f"expected a path, a (y, sr) tuple or log-mels (time, {features.n_mels}); "
                             f"got an array of shape {mel.shape}")
        return mel
    if features.kind == "waveform":
        mel, problem = waveform(y, sr, features.sample_rate)  # (samples, 1)
    else:
        mel, problem = checked_logmel(y, sr, features.n_mels, features.win_sec, features.hop_sec)  # (time, n_mels)
    if problem:
        raise DataError(problem)
    return mel


class Embedder:
    """A trained dual encoder that turns clips and captions into unit vectors of one space."""

    def __init__(self, run: runs.LoadedRun, batch_size: int | None = None):
        self.run = run
        self.model = run.model
        self.conf = run.conf
        self.batch_size = batch_size or run.conf.eval.batch_size
        self._sbert = None

    @property
    def device(self) -> torch.device:
        return self.run.device

    def embed_features(self, mels: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        """``[(time, n_mels)]`` log-mels -> ``(n, E)`` float32 unit vectors.

        Each embedding is the model's output on that clip alone, unpadded (:func:`embed_audio`'s protocol),
        whatever else is embedded with it: an index refresh gives the same vectors as a rebuild.
        """
        if not mels:
            return np.empty((0, self.conf.model.audio_enc.out_dim), np.float32)
        emb = embed_audio(self.model, lambda k: mels[k], [m.shape[0] for m in mels], self.batch_size, self.device,
                          self.run.dtype, progress=progress, desc="embed audio")  # (n, E)
        return emb.numpy().astype(np.float32, copy=False)

    def embed_audio(self, items: Sequence[AudioItem] | AudioItem, progress: bool = False) -> np.ndarray:
        """Clips -> ``(n, E)`` float32 unit vectors.

        Args:
            items: file paths (any format / sample rate), ``(y, sr)`` tuples or ``(time, n_mels)`` log-mels.
                A single path is accepted too. Unreadable files raise :class:`utils.base.errors.DataError`.
        """
        if isinstance(items, (str, os.PathLike)):
            items = [items]
        mels = [clip_features(item, self.conf.features) for item in items]
        return self.embed_features(mels, progress=progress)

    def embed_text(self, texts: Sequence[str] | str) -> np.ndarray:
        """Captions -> ``(n, E)`` float32 unit vectors: the run's SBERT model (``text.model``) and the
        trained projection, or the fine-tuned text encoder on the raw strings."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_queries(texts)
        if self.model.text_input_kind == "text":
            emb = embed_text(self.model, texts, self.conf.text.batch_size, self.device, self.run.dtype)
        else:
            vectors = self.text_vectors(texts)  # (n, D)
            if self.run.text_dim is not None and vectors.shape[1] != self.run.text_dim:
                raise PipelineError(
                    f"text.model '{self.conf.text.model}' gives {vectors.shape[1]}-d vectors but the run's text "
                    f"projection expects {self.run.text_dim}-d; was config.yaml's text.model changed after training?"
                )
            emb = embed_text(self.model, vectors, TEXT_VECTOR_BATCH, self.device, self.run.dtype)
        return emb.numpy().astype(np.float32, copy=False)

    def load_text_model(self) -> None:
        """Load the SBERT model ``conf.text.model`` now rather than on the first query (no-op when the run
        fine-tuned its own text encoder, which is part of the checkpoint)."""
        if self._sbert is None and self.model.text_input_kind == "embedding":
            self._sbert = load_sbert(self.conf.text.model, str(self.device))  # DataError says how to get it
            trained_on = self.run.text_fingerprint
            if trained_on is not None and weights_fingerprint(self.conf.text.model) != trained_on:
                self._sbert = None
                raise PipelineError(
                    f"text.model '{self.conf.text.model}' is not the text model whose caption vectors "
                    f"{self.run.checkpoint_file} was trained on (weights {trained_on[:19]}...): queries would be "
                    "embedded by another model. Restore that model, or re-run preprocessing/03_sbert_embeddings.py "
                    "with this one and train again")

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """Raw SBERT vectors ``(n, D)`` float32 from ``conf.text.model`` (loaded once)."""
        self.load_text_model()
        vectors = encode(self._sbert, texts, self.conf.text.batch_size, str(self.device), progress=False)
        return np.asarray(vectors, dtype=np.float32)  # (n, D)


def check_queries(texts: Sequence[str]) -> None:
    """Raise :class:`PipelineError` for no captions or an empty / whitespace-only caption."""
    if not texts:
        raise PipelineError("no query given: pass a caption such as \"a dog barks while cars pass\"")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise PipelineError(f"query {i + 1} is empty: pass a caption such as \"a dog barks while cars pass\"")
