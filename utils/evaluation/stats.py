"""Uncertainty over queries: percentile-bootstrap confidence intervals and the paired sign-flip test.

    ci = bootstrap_ci({"mAP@10": ap, "R@1": hit1}, resamples=1000, seed=0)   # {"mAP@10": [lo, hi], ...}
    ci = xmodal_ci(xmodal_per_query(...), resamples=1000, seed=0)            # {"t2a": {...}, "a2t": {...}}
    p = sign_flip_p(b - a, resamples=1000, seed=0)                           # paired test of B against A

The unit of resampling is the query (a caption for t2a, a clip for a2t): the test set is one draw of queries, and
the interval says how much a metric's mean over queries could move with another draw of the same size. Every
resample draws ``n`` queries with replacement; a metric's bootstrap values are its means over the resamples, and
the interval is their 2.5th and 97.5th percentiles (numpy's linear interpolation). All metrics of a direction
share the same resamples. Resamples are query counts, so one matrix product averages every metric of every
resample at once (1000 resamples of 5000 captions: ``(1000, 5000) @ (5000, n_metrics)``).
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95  # the confidence level of every interval


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` queries is drawn in each bootstrap resample: ``(resamples, n)`` float64, rows
    summing to ``n``; the same ``(n, resamples, seed)`` always gives the same counts."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n, size=(resamples, n))  # (resamples, n) query indices
    flat = (drawn + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``values`` ``(n,)`` or ``(n, n_metrics)`` over bootstrap resamples of its rows:
    ``(resamples,)`` or ``(resamples, n_metrics)``."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("no queries to resample")
    return resample_counts(len(values), resamples, seed) @ values / len(values)


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """``(2, ...)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``samples`` along axis 0."""
    tail = 100 * (1 - level) / 2
    return np.percentile(samples, [tail, 100 - tail], axis=0)


def bootstrap_ci(per_query: dict[str, np.ndarray], resamples: int, seed: int,
                 level: float = LEVEL) -> dict[str, list[float]]:
    """``{metric: [lo, hi]}``: the percentile-bootstrap interval of each metric's mean over queries.

    Args:
        per_query: ``{metric: (n_queries,)}``, every array over the same queries (e.g.
            :func:`utils.evaluation.metrics.per_query_metrics`).
    """
    names = list(per_query)
    values = np.stack([np.asarray(per_query[n], dtype=np.float64) for n in names], axis=1)  # (n_queries, n_metrics)
    lo, hi = percentile_interval(bootstrap_means(values, resamples, seed), level)
    return {n: [float(lo[i]), float(hi[i])] for i, n in enumerate(names)}


def xmodal_ci(per_query: dict[str, dict[str, np.ndarray]], resamples: int, seed: int,
              level: float = LEVEL) -> dict[str, dict[str, list[float]]]:
    """:func:`bootstrap_ci` of each direction of :func:`utils.evaluation.metrics.xmodal_per_query` output."""
    return {direction: bootstrap_ci(values, resamples, seed, level) for direction, values in per_query.items()}


def sign_flip_p(diffs: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Two-sided p-value of a paired randomization test that the mean of ``diffs`` is 0.

    Under the null hypothesis (A and B exchangeable on each query) each query's difference is as likely to
    have either sign. Each resample flips the signs at random; ``p = (1 + #{|mean of flipped| >= |mean|}) /
    (1 + resamples)``, so p is never 0, and is 1 when every difference is 0.

    Args:
        diffs: ``(n,)`` or ``(n, n_metrics)`` per-query differences B - A.

    Returns:
        ``()`` or ``(n_metrics,)`` float64.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(resamples, len(diffs))) * 2.0 - 1.0  # (resamples, n)
    flipped = np.abs(signs @ diffs)  # (resamples, ...) n times the flipped means
    observed = np.abs(diffs.sum(axis=0))
    at_least = (flipped >= observed * (1 - 1e-9) - 1e-12).sum(axis=0)  # ties within rounding count as extreme
    return (1.0 + at_least) / (1.0 + resamples)


def ci_definition(resamples: int, seed: int, level: float = LEVEL) -> str:
    """The method, in words, for the ``definitions`` of a metrics JSON."""
    return (f"ci95: the {level:.0%} percentile-bootstrap interval [lo, hi] of each metric: {resamples} resamples "
            f"of the queries with replacement (t2a: captions, a2t: clips; numpy default_rng seed {seed}), the "
            "metric's mean over each resample, and the 2.5th and 97.5th percentiles of those means")
