"""Retrieval metrics computed the slow, obvious way, as an independent reference for the tests."""

from __future__ import annotations

import numpy as np


def naive_per_query(scores: np.ndarray, relevance: np.ndarray, ks=(1, 5, 10), map_k: int = 10) -> dict:
    """Each query's AP@k and R@k by walking its stable descending ranking, one item at a time."""
    out = {f"mAP@{map_k}": [], **{f"R@{k}": [] for k in ks}}
    for row, rel in zip(scores, relevance, strict=True):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        hits, ap, found = 0, 0.0, []
        for position, j in enumerate(order, start=1):
            if rel[j]:
                hits += 1
                found.append(position)
                if position <= map_k:
                    ap += hits / position
        out[f"mAP@{map_k}"].append(ap / rel.sum())
        for k in ks:
            out[f"R@{k}"].append(sum(p <= k for p in found) / rel.sum())
    return {name: np.array(v) for name, v in out.items()}
