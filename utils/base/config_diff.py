"""What changed between two configs (as plain dicts): the run record's history and the resume check use it."""

from __future__ import annotations


def flatten_config(node, prefix: str = "") -> dict:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (lists and other values are leaves)."""
    if isinstance(node, dict):
        out: dict = {}
        for key, value in node.items():
            out.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted key -> ``(old value, new value)`` for every leaf that differs (nothing when ``old`` is empty)."""
    if not old:
        return {}
    a, b = flatten_config(old), flatten_config(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
