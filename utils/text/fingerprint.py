"""Which text model made the caption vectors: a fingerprint of a sentence-transformers model's weights, and the
check that training, scoring and search make before they use stored vectors (issue #16 part 5).

The fingerprint is a SHA-256 over the model's weight files (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, their
paths inside the model folder and their bytes, in sorted order): deterministic, and computed without torch or
sentence-transformers (about 1 s for all-mpnet-base-v2). Stage 3 stores it, with the model's name, in
``sbert_embeds.hdf5``.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from utils.base.errors import DataError
from utils.data.caption_vectors import STAGE3, embedding_provenance
from utils.text.sbert import how_to_get, resolve_model_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def model_folder(name: str) -> Path | None:
    """The local folder of sentence-transformers model ``name``: :func:`resolve_model_path`, else the Hugging Face
    cache (no download); None when there is no local copy."""
    path = Path(resolve_model_path(name)).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download  # a dependency of sentence-transformers
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    for repo in (name, f"sentence-transformers/{name}"):
        try:
            return Path(snapshot_download(repo, local_files_only=True))
        except (LocalEntryNotFoundError, ValueError, OSError):
            continue
    return None


def weights_fingerprint(name: str) -> str:
    """``sha256:<hex>`` of the weight files of text model ``name``; :class:`DataError` when it has no local copy or
    no weight file."""
    folder = model_folder(name)
    if folder is None:
        raise DataError(f"cannot fingerprint text model '{name}': no local copy. To fix: {how_to_get(name)}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise DataError(f"text model '{name}' ({folder}) has no weight file ({', '.join(WEIGHT_SUFFIXES)})")
    return _hash_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files), str(folder))


@lru_cache(maxsize=8)
def _hash_files(files: tuple[tuple[str, int, int], ...], folder: str) -> str:
    """Cached by (path, size, mtime) of each file: a changed file is hashed again."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(os.path.relpath(path, folder).encode() + b"\0")
        with open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def check_vector_provenance(path: str | os.PathLike, text_model: str) -> str:
    """Refuse caption vectors at ``path`` that ``text_model`` (``text.model``) did not make: another fingerprint,
    or none (a file of an older stage 3). Returns the fingerprint."""
    made_by, fingerprint = embedding_provenance(path)
    fix = f"re-run stage 3 with it: python {STAGE3} --conf CONF --set text.model={text_model}"
    if fingerprint is None:
        raise DataError(f"{path} does not record which text model's weights made it (an older stage 3; model "
                        f"'{made_by}'), so it cannot be checked against text.model '{text_model}'; {fix}")
    expected = weights_fingerprint(text_model)
    if fingerprint != expected:
        raise DataError(f"{path} was made by text model '{made_by}' ({fingerprint[:19]}...) but text.model is "
                        f"'{text_model}' ({expected[:19]}...), whose weights differ; {fix}")
    return fingerprint
