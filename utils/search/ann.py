"""Approximate search for large indexes (``search.py --faiss``): a FAISS inverted-file index (IVF-Flat).

Why IVF and not HNSW: on this 2-core CPU HNSW (M=32) took 14 s to insert 20,000 vectors of 300-d, about 12 min
for a million, and its graph adds ~256 bytes a vector; IVF-Flat trains k-means on a sample and adds a million
vectors in about a minute, keeps the vectors as they are, and trades recall for speed with one number
(``nprobe``) that is chosen at build time against exact search (README, "Search your own sounds").

:func:`build_ivf` picks ``nprobe`` by measuring recall@10 against exact search on queries made from the
index's own vectors (the mean of two random rows, so no query is a row) and doubling ``nprobe`` until the
recall reaches :data:`RECALL_TARGET`; the measured recall is returned and printed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from utils.base.errors import PipelineError

ANN_MIN_FILES = 100_000  # below this, --faiss searches exactly (IndexFlatIP): the exact scan is fast enough
RECALL_TARGET = 0.95  # recall@10 the chosen nprobe must reach against exact search (or nprobe = nlist)
RECALL_QUERIES = 200  # queries the recall is measured on
LISTS_PER_SQRT = 2  # inverted lists = 2 sqrt(n): 2000 at 1M (k-means on 80,000 vectors, about a minute here)
TRAIN_PER_LIST = 40  # k-means training vectors per inverted list (faiss warns below 39)


def import_faiss():
    """``faiss``, or a :class:`PipelineError` saying how to get it."""
    try:
        import faiss
    except ImportError as err:
        raise PipelineError("FAISS search was requested but the faiss package is not installed: "
                            "pip install faiss-cpu (or faiss-gpu), or search without --faiss") from err
    return faiss


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k found in the approximate top-k: ``(n_queries, k)`` row ids each."""
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(approx, exact, strict=True)]))


def probe_queries(get_rows: Callable[[np.ndarray], np.ndarray], n: int, n_queries: int, seed: int = 0) -> np.ndarray:
    """``(n_queries, E)`` unit vectors: the normalised mean of two random stored rows each."""
    rng = np.random.default_rng(seed)
    a, b = get_rows(rng.integers(0, n, n_queries)), get_rows(rng.integers(0, n, n_queries))
    q = a + b
    return (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def build_ivf(chunks: Callable, get_rows: Callable[[np.ndarray], np.ndarray], n: int, dim: int,
              exact_top: Callable[[np.ndarray, int], np.ndarray], k: int = 10, seed: int = 0):
    """An IVF-Flat inner-product index of ``n`` rows and its measured recall@``k``: ``(index, recall)``.

    Args:
        chunks: ``() -> iterator of (first row, (rows, E) block)`` over every row, in order.
        get_rows: ``row ids -> (len, E)`` vectors.
        exact_top: ``((q, E), k) -> (q, k)`` row ids of exact search (the reference).
    """
    faiss = import_faiss()
    nlist = max(1, min(int(LISTS_PER_SQRT * math.sqrt(n)), n // TRAIN_PER_LIST))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, TRAIN_PER_LIST * nlist), replace=False))
    index.train(np.ascontiguousarray(get_rows(sample), np.float32))
    for _, block in chunks():
        index.add(np.ascontiguousarray(block, np.float32))
    q = probe_queries(get_rows, n, RECALL_QUERIES, seed)
    exact = exact_top(q, k)  # (n_queries, k)
    nprobe = 1
    while True:
        index.nprobe = nprobe
        recall = recall_at(index.search(q, k)[1], exact)
        if recall >= RECALL_TARGET or nprobe >= nlist:
            return index, recall
        nprobe = min(2 * nprobe, nlist)
