"""Retrieval metrics (mAP@10, R@k) with the baseline's definitions. The only metrics module:
training's validation and postprocessing both call it.

For each query with ``rel`` relevant items, ranked by descending score (ties: lower index first):
``R@k = (relevant in top k) / rel`` and
``AP@10 = Σ_{relevant at position p <= 10} (relevant in top p) / p / rel``; both are averaged over queries.
The cut-offs are arguments (``eval.map_k``, ``eval.recall_ks``), and metric names carry them (``mAP@16``).
:func:`metric_definitions` states these definitions in words for the metrics JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from utils.base.errors import PipelineError

KS = (1, 5, 10)
MAP_K = 10


class NonFiniteError(PipelineError):
    """A NaN or infinite embedding or score: it would rank as anything (an all-NaN matrix scores R@k = 1)."""


def require_finite(values, what: str, row_names: Sequence[str] | None = None, row_kind: str = "row",
                   col_names: Sequence[str] | None = None, col_kind: str = "column") -> None:
    """Raise :class:`NonFiniteError` when ``values`` (``(n, ...)``: scores or embeddings) holds a NaN or an
    infinity, naming ``what`` (e.g. "validation split 'validation' scores"), the count and the first bad row
    (and column) by name when names are given."""
    values = np.asarray(values)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = np.argwhere(bad)[0]
    where = f"{row_kind} {row_names[first[0]] if row_names is not None else first[0]}"
    if values.ndim > 1 and (col_names is not None or row_names is None):  # an embedding's dimension: no name
        where += f", {col_kind} {col_names[first[1]] if col_names is not None else first[1]}"
    raise NonFiniteError(f"{what} hold {int(bad.sum())} non-finite value(s) (NaN or inf), the first at {where}; "
                         "no metrics from them: check the model (did training diverge?) and the features named")


def relevant_ranks(scores: np.ndarray, relevance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of every relevant (query, item) pair.

    Args:
        scores: ``(n_queries, n_items)``.
        relevance: boolean ``(n_queries, n_items)``.

    Returns:
        ``(query_index, rank)``, one entry per relevant pair. Ties are broken by item index (stable).
    """
    q_idx, j_idx = np.nonzero(relevance)
    out = np.empty(len(q_idx), dtype=np.int64)
    items = np.arange(scores.shape[1])
    step = max(1, 2_000_000 // max(scores.shape[1], 1))  # bound the temporary (step, n_items) arrays
    for start in range(0, len(q_idx), step):
        q, j = q_idx[start:start + step], j_idx[start:start + step]
        rows = scores[q]  # (step, n_items)
        s = rows[np.arange(len(q)), j][:, None]
        better = (rows > s).sum(axis=1)
        tied_before = ((rows == s) & (items[None, :] < j[:, None])).sum(axis=1)
        out[start:start + step] = better + tied_before + 1
    return q_idx, out


def retrieval_metrics(scores: np.ndarray, relevance: np.ndarray, ks=KS, map_k: int = MAP_K) -> dict[str, float]:
    """``{"mAP@10": ..., "R@1": ..., "R@5": ..., "R@10": ...}`` averaged over queries.

    Args:
        scores: ``(n_queries, n_items)`` similarity scores.
        relevance: boolean ``(n_queries, n_items)``; every query needs at least one relevant item.
    """
    return {name: float(values.mean()) for name, values in per_query_metrics(scores, relevance, ks, map_k).items()}


def per_query_metrics(scores: np.ndarray, relevance: np.ndarray, ks=KS, map_k: int = MAP_K) -> dict[str, np.ndarray]:
    """Each query's AP@k and R@k, before averaging: ``{"mAP@10": (n_queries,), "R@1": (n_queries,), ...}``
    (their means are :func:`retrieval_metrics`; the bootstrap of :mod:`utils.evaluation.stats` resamples them)."""
    scores = np.asarray(scores, dtype=np.float64)
    relevance = np.asarray(relevance, dtype=bool)
    n_rel = relevance.sum(axis=1)
    if scores.shape != relevance.shape:
        raise ValueError(f"scores {scores.shape} and relevance {relevance.shape} differ in shape")
    if (n_rel == 0).any():
        raise ValueError(f"{int((n_rel == 0).sum())} queries have no relevant item")
    require_finite(scores, "the scores", row_kind="query", col_kind="item")
    q_idx, ranks = relevant_ranks(scores, relevance)
    order = np.lexsort((ranks, q_idx))  # group by query, ascending rank
    q_idx, ranks = q_idx[order], ranks[order]
    first = np.searchsorted(q_idx, q_idx, side="left")
    hits_so_far = np.arange(len(q_idx)) - first + 1  # relevant items at or above this one
    n_queries = scores.shape[0]
    precision = np.where(ranks <= map_k, hits_so_far / ranks, 0.0)
    result = {f"mAP@{map_k}": np.bincount(q_idx, weights=precision, minlength=n_queries) / n_rel}
    for k in ks:
        hits = np.bincount(q_idx, weights=(ranks <= k).astype(float), minlength=n_queries)
        result[f"R@{k}"] = hits / n_rel
    return result


def relevance_matrix(text_to_audio: np.ndarray, n_audio: int) -> np.ndarray:
    """Boolean ``(n_texts, n_audio)``: caption i is relevant to clip ``text_to_audio[i]``."""
    rel = np.zeros((len(text_to_audio), n_audio), dtype=bool)
    rel[np.arange(len(text_to_audio)), text_to_audio] = True
    return rel


def xmodal_metrics(scores: np.ndarray, text_to_audio: np.ndarray, ks=KS, map_k: int = MAP_K,
                   t2a_relevance: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Text->audio and audio->text metrics from one score matrix.

    Args:
        scores: ``(n_texts, n_audio)``; row i is caption i, column j is clip j.
        text_to_audio: ``(n_texts,)`` index of each caption's clip.
        ks, map_k: the R@k cut-offs and the mAP@k cut-off (names carry k: ``R@5``, ``mAP@16``).
        t2a_relevance: boolean ``(n_texts, n_audio)`` from a relevance file; when given, t2a uses it instead
            of the one-clip pairing, over the captions with at least one relevant clip.

    Returns:
        ``{"t2a": {...}, "a2t": {...}}``. t2a has one relevant clip per caption (mAP@10 = MRR@10) unless
        ``t2a_relevance`` is given; a2t has every caption of the clip as relevant.
    """
    return mean_over_queries(xmodal_per_query(scores, text_to_audio, ks, map_k, t2a_relevance))


def xmodal_per_query(scores: np.ndarray, text_to_audio: np.ndarray, ks=KS, map_k: int = MAP_K,
                     t2a_relevance: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    """:func:`xmodal_metrics` before averaging: t2a one value per caption (with a relevant clip), a2t one per
    clip (with a caption), as :func:`per_query_metrics`."""
    rel = relevance_matrix(np.asarray(text_to_audio), scores.shape[1])
    keep = rel.any(axis=0)  # clips without captions cannot be a2t queries
    return {
        "t2a": t2a_per_query(scores, rel if t2a_relevance is None else t2a_relevance, ks, map_k),
        "a2t": per_query_metrics(scores.T[keep], rel.T[keep], ks, map_k),
    }


def mean_over_queries(per_query: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """``{direction: {metric: mean}}`` of :func:`xmodal_per_query`-shaped per-query values."""
    return {d: {name: float(np.mean(v)) for name, v in values.items()} for d, values in per_query.items()}


def t2a_metrics(scores: np.ndarray, relevance: np.ndarray, ks=KS, map_k: int = MAP_K) -> dict[str, float]:
    """:func:`retrieval_metrics` over the captions (rows) that have a relevant clip."""
    return mean_over_queries({"t2a": t2a_per_query(scores, relevance, ks, map_k)})["t2a"]


def t2a_per_query(scores: np.ndarray, relevance: np.ndarray, ks=KS, map_k: int = MAP_K) -> dict[str, np.ndarray]:
    """:func:`per_query_metrics` over the captions (rows) that have a relevant clip."""
    has_rel = np.asarray(relevance, dtype=bool).any(axis=1)
    return per_query_metrics(np.asarray(scores)[has_rel], np.asarray(relevance)[has_rel], ks, map_k)


PAIRED = "the clip the caption was written for"  # t2a's relevant clip without a relevance file


def metric_definitions(ks=KS, map_k: int = MAP_K, t2a_relevant: str = PAIRED) -> dict[str, str]:
    """Plain-language definitions of :func:`xmodal_metrics`' numbers (stored next to them in metrics JSON)."""
    return {
        "t2a": f"text->audio: each caption queries the split's clips; relevant clips: {t2a_relevant}",
        "a2t": "audio->text: each clip queries the split's captions; relevant captions: the clip's own captions",
        "R@k": f"k in {list(ks)}: the fraction of a query's relevant items that are in its top k, averaged over "
               "queries. For a2t this is the fraction of the clip's captions found (as the DCASE 2023 baseline), "
               "not whether any caption was found",
        f"mAP@{map_k}": f"mean over queries of AP@{map_k} = sum, over the relevant items at rank p <= {map_k}, of "
                        "(relevant items in the top p) / p, divided by the query's number of relevant items",
        "ties": "items with equal scores are ranked in table order (lower clip or caption index first)",
    }


def t2a_ranks(scores: np.ndarray, text_to_audio: np.ndarray) -> np.ndarray:
    """1-based rank of each caption's true clip, ``(n_texts,)``."""
    rel = relevance_matrix(np.asarray(text_to_audio), scores.shape[1])
    q_idx, ranks = relevant_ranks(np.asarray(scores, dtype=np.float64), rel)
    out = np.empty(scores.shape[0], dtype=np.int64)
    out[q_idx] = ranks
    return out


def format_table(metrics: dict[str, dict[str, float]], ci95: dict[str, dict[str, list[float]]] | None = None) -> str:
    """A small text table of ``xmodal_metrics`` output; with ``ci95`` (``{direction: {metric: [lo, hi]}}``) a
    ``95% CI`` line under each direction."""
    names = list(next(iter(metrics.values())).keys())
    width = 9 if ci95 is None else 16
    lines = ["      " + "".join(f"{n:>{width}}" for n in names)]
    for direction, values in metrics.items():
        lines.append(f"{direction:<6}" + "".join(f"{values[n]:>{width}.4f}" for n in names))
        if ci95 is not None and direction in ci95:
            cells = (f"[{ci95[direction][n][0]:.3f}, {ci95[direction][n][1]:.3f}]" for n in names)
            lines.append("95% CI" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; equal scores keep the lower index first.

    Args:
        scores: ``(n,)`` or ``(n_queries, n)``.

    Returns:
        ``(min(k, n),)`` or ``(n_queries, min(k, n))`` int64. Same order as a stable descending argsort
        (and as :func:`utils.evaluation.metrics.relevant_ranks`), in O(n) per query plus O(k log k).
    """
    scores = np.asarray(scores)
    if scores.ndim == 1:
        return top_k(scores[None, :], k)[0]
    n = scores.shape[1]
    k = min(int(k), n)
    if k <= 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64)
    if k == n:
        return np.argsort(-scores, axis=1, kind="stable")
    cand = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)  # (q, k) the k best, by index
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    out = np.take_along_axis(cand, np.argsort(-cand_scores, axis=1, kind="stable"), axis=1)
    # Rows where the k-th score is tied with an item left out: pick the lowest indices among the ties.
    kth = cand_scores.min(axis=1)
    tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
    for q in tied:
        out[q] = np.argsort(-scores[q], kind="stable")[:k]
    return out.astype(np.int64)
