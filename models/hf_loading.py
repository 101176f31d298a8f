"""Loading Hugging Face ``transformers`` models and their processors by hub id or local folder, for
:class:`models.text_encoders.HFTextEncoder` and :class:`models.hf_audio.HFAudioEncoder`.

``transformers`` is imported by the callers inside their constructors: it takes seconds to import, and only
runs that use these encoders need it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.base.errors import DataError
from utils.text.sbert_download import PRETRAINED_DIR


def hf_source(name_or_path: str) -> str:
    """An existing folder (``~`` expanded), else ``pretrained_models/<name>/`` if it exists, else the hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    local = Path(PRETRAINED_DIR) / name_or_path
    return str(local) if local.is_dir() else name_or_path


def load_hf(loader: Callable[[str], Any], source: str, key: str) -> Any:
    """``loader(source)``; a model that cannot be found or read is a :class:`DataError` naming ``key``."""
    try:
        return loader(source)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(
            f"{key}: cannot load '{source}' ({str(err).splitlines()[0][:200]}). Give a local folder in the "
            "save_pretrained layout, or a hub id with hub access (offline, only the local hub cache is read)"
        ) from err
