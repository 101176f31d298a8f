"""Checks before a training run resumes: does ``last.pt`` fit the config, and is ``best.pt`` usable.

    model_settings_differ(ckpt["config"], to_dict(conf))  # "model.audio_enc.width=0.125 (the config says 0.25)"
    checkpoint_readable(path)                             # False for a missing, truncated or refused file
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.audio_encoders import read_torch_file
from utils.errors import DataError

# Settings the model's tensors depend on: a change makes the checkpoint's state dict not fit.
SHAPE_SECTIONS = ("model", "features.n_mels")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _pick(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def model_settings_differ(saved: dict | None, current: dict) -> str | None:
    """The model settings in which a checkpoint's config ``saved`` differs from ``current``, as
    ``"key=old (the config says new), ..."``; None when they agree or the checkpoint has no config."""
    if not isinstance(saved, dict):
        return None
    diffs = []
    for section in SHAPE_SECTIONS:
        old = _flatten(_pick(saved, section), section)
        new = _flatten(_pick(current, section), section)
        for key in sorted(set(old) | set(new)):
            if key.endswith(("finetune_lr", ".init")):
                continue  # a learning rate, or how weights start: neither changes the tensors
            if old.get(key) != new.get(key):
                diffs.append(f"{key}={old.get(key)!r} (the config says {new.get(key)!r})")
    return ", ".join(diffs) or None


def checkpoint_readable(path: Path) -> bool:
    """Whether ``path`` exists and loads with ``weights_only=True``."""
    try:
        read_torch_file(path, "")
    except DataError:
        return False
    return True
