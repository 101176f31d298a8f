"""The project's figures: training curves (``<run>/curves.png``), rank histograms (``<run>/eval/``) and paired
comparisons (``compare.png`` of ``postprocessing/03_compare.py``).

All are written atomically; matplotlib is the only plotting dependency, with the Agg backend (no display).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from utils.base.fileio import atomic_write  # noqa: E402


def _save(fig, path: Path, dpi: int) -> Path:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss (train, validation) and validation t2a metrics per epoch, from ``metrics.jsonl`` records."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="InfoNCE loss", title="Loss")
    ax1.legend()
    for key in ("mAP@10", "R@1", "R@10"):
        ax2.plot(epochs, [h["val_t2a"][key] for h in history], "o-", label=f"t2a {key}")
    ax2.set(xlabel="epoch", ylabel="score", title="Validation text→audio", ylim=(0, None))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def plot_ranks(path: Path, ranks: np.ndarray, n_clips: int, split: str) -> Path:
    """Histogram of the true clip's rank on log-spaced bins, with the median in the title."""
    edges = np.unique(np.round(np.geomspace(1, n_clips + 1, num=min(40, n_clips + 1)))) - 0.5  # around integer ranks
    median = float(np.median(ranks))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(ranks, bins=edges, color="#4c72b0", edgecolor="white")
    ax.set_xscale("log")
    ax.axvline(median, color="#c44e52", linestyle="--", label=f"median {median:g}")
    ax.axvline(10.5, color="0.4", linestyle=":", label="top 10")
    ax.set_xlabel(f"rank of the true clip among {n_clips} (log scale)")
    ax.set_ylabel("captions")
    ax.set_title(f"{split}: text-to-audio rank of the true clip (median {median:g}, {len(ranks)} captions)")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def plot_comparison(path: Path, a: np.ndarray, b: np.ndarray, names: tuple[str, str], metric: str,
                    split: str) -> Path:
    """Per-query values of run B against run A (one dot per query, the diagonal = no change), and the
    histogram of the per-query differences B - A with their mean."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = b - a
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.scatter(a, b, s=12, alpha=0.5, color="#4c72b0", edgecolors="none")
    ax1.plot([0, 1], [0, 1], color="0.4", linestyle=":", label="no change")
    ax1.set(xlabel=f"{names[0]}: {metric}", ylabel=f"{names[1]}: {metric}", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
            title=f"{split}: per-query {metric} ({len(a)} queries)")
    ax1.set_aspect("equal")
    ax1.legend(loc="upper left")
    ax2.hist(diff, bins=np.linspace(-1, 1, 41), color="#4c72b0", edgecolor="white")
    ax2.axvline(0, color="0.4", linestyle=":")
    ax2.axvline(float(diff.mean()), color="#c44e52", linestyle="--", label=f"mean {diff.mean():+.4f}")
    ax2.set(xlabel=f"{metric}: {names[1]} - {names[0]}", ylabel="queries", title="Per-query difference")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi=100)
