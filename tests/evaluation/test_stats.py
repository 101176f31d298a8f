"""Per-query metrics, bootstrap intervals and the sign-flip test, against hand-computed cases and simulations."""

from __future__ import annotations

import numpy as np
import pytest
from reference_metrics import naive_per_query

from utils.evaluation.metrics import format_table, per_query_metrics, relevance_matrix, xmodal_per_query
from utils.evaluation.stats import (
    bootstrap_ci,
    bootstrap_means,
    percentile_interval,
    resample_counts,
    sign_flip_p,
    xmodal_ci,
)


def test_per_query_metrics_match_a_naive_walk():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(30, 25)).astype(float)  # many ties
    relevance = rng.random((30, 25)) < 0.15
    relevance[np.arange(30), rng.integers(0, 25, 30)] = True
    ours, ref = per_query_metrics(scores, relevance), naive_per_query(scores, relevance)
    assert set(ours) == set(ref)
    for name in ref:
        np.testing.assert_allclose(ours[name], ref[name], atol=1e-12)


def test_xmodal_per_query_has_one_value_per_caption_and_per_clip():
    rng = np.random.default_rng(1)
    t2a = np.array([0, 0, 1, 1, 1, 3])  # clip 2 has no caption: not an a2t query
    scores = rng.normal(size=(6, 4))
    pq = xmodal_per_query(scores, t2a)
    assert len(pq["t2a"]["R@1"]) == 6 and len(pq["a2t"]["R@1"]) == 3
    rel = relevance_matrix(t2a, 4).T[[0, 1, 3]]
    np.testing.assert_allclose(pq["a2t"]["mAP@10"], naive_per_query(scores.T[[0, 1, 3]], rel)["mAP@10"])


def test_resample_counts_are_draws_with_replacement_fixed_by_the_seed():
    counts = resample_counts(7, 500, seed=3)
    assert counts.shape == (500, 7) and (counts.sum(axis=1) == 7).all()
    assert (counts > 1).any() and (counts == 0).any()  # with replacement, not a permutation
    np.testing.assert_array_equal(counts, resample_counts(7, 500, seed=3))
    assert not np.array_equal(counts, resample_counts(7, 500, seed=4))
    # each query is drawn n/n = once per resample on average (binomial(7, 1/7))
    assert counts.mean(axis=0) == pytest.approx(np.ones(7), abs=0.15)


def test_hand_computed_interval_of_a_tiny_case():
    # values [0, 0, 0, 1]: the resampled mean is k/4 with k ~ Binomial(4, 1/4). P(k = 0) = 0.316 > 2.5 %, so the
    # lower end is 0; P(k >= 3) = 0.051 > 2.5 % and P(k = 4) = 0.004 < 2.5 %, so the upper end is 3/4.
    ci = bootstrap_ci({"R@1": np.array([0.0, 0, 0, 1])}, resamples=20000, seed=0)
    assert ci == {"R@1": [0.0, 0.75]}
    # three queries all improved by 1: of the 8 sign patterns, 2 reach |sum| = 3, so p = 1/4
    assert sign_flip_p(np.ones(3), resamples=20000, seed=0) == pytest.approx(0.25, abs=0.01)


def test_metrics_share_resamples_and_match_a_loop():
    rng = np.random.default_rng(2)
    values = rng.random((40, 3))
    means = bootstrap_means(values, 200, seed=5)
    counts = resample_counts(40, 200, seed=5)
    loop = np.array([[np.repeat(values[:, m], counts[b].astype(int)).mean() for m in range(3)] for b in range(200)])
    np.testing.assert_allclose(means, loop, atol=1e-12)
    lo, hi = percentile_interval(means)
    ranked = np.sort(means, axis=0)  # 2.5 % of 199 gaps = position 4.975, 97.5 % = position 194.025
    np.testing.assert_allclose(lo, ranked[4] + 0.975 * (ranked[5] - ranked[4]))
    np.testing.assert_allclose(hi, ranked[194] + 0.025 * (ranked[195] - ranked[194]))
    ci = bootstrap_ci({"a": values[:, 0], "b": values[:, 1]}, 200, seed=5)
    assert ci["a"] == pytest.approx([lo[0], hi[0]]) and ci["b"] == pytest.approx([lo[1], hi[1]])


@pytest.mark.parametrize("kind", ["hits", "ap"])
def test_interval_covers_the_true_mean_about_95_percent_of_the_time(kind):
    rng = np.random.default_rng(11)
    n, sims, truth = 120, 4000, 0.3  # 4000 test sets of 120 queries, one per column
    if kind == "hits":  # R@1-like: 0/1 per query
        values = (rng.random((n, sims)) < truth).astype(float)
    else:  # AP-like: skewed values in [0, 1] with mean 0.3
        values = rng.beta(0.6, 1.4, (n, sims))
    lo, hi = percentile_interval(bootstrap_means(values, 500, seed=0))  # (sims,) each
    coverage = np.mean((lo <= truth) & (truth <= hi))
    # binomial standard error of a 95 % coverage over 4000 sets: 0.34 points; 90 % or 99 % intervals fall outside
    assert 0.935 <= coverage <= 0.965


def test_sign_flip_p_is_about_uniform_for_exchangeable_runs():
    rng = np.random.default_rng(7)
    ps = []
    for s in range(300):
        a, b = rng.random(60), rng.random(60)  # the same distribution: no real difference
        ps.append(sign_flip_p(b - a, resamples=400, seed=s))
    ps = np.sort(ps)
    ks_distance = np.max(np.abs(ps - np.arange(1, 301) / 300))
    assert ks_distance < 0.09  # Kolmogorov-Smirnov 5 % critical value for 300 draws: 0.079 (+ p's resolution)
    assert 0.02 <= np.mean(ps < 0.05) <= 0.09


def test_sign_flip_p_of_no_difference_and_of_a_clear_one():
    assert sign_flip_p(np.zeros(50), 1000, seed=0) == 1.0
    rng = np.random.default_rng(0)
    clear = 0.2 + 0.05 * rng.normal(size=50)
    assert sign_flip_p(clear, 1000, seed=0) == pytest.approx(1 / 1001)
    both = sign_flip_p(np.stack([np.zeros(50), clear], axis=1), 1000, seed=0)
    np.testing.assert_allclose(both, [1.0, 1 / 1001])


def test_xmodal_ci_and_the_printed_table():
    rng = np.random.default_rng(3)
    t2a = np.repeat(np.arange(10), 3)
    pq = xmodal_per_query(rng.normal(size=(30, 10)), t2a)
    ci = xmodal_ci(pq, 300, seed=0)
    assert set(ci) == {"t2a", "a2t"} and set(ci["t2a"]) == {"mAP@10", "R@1", "R@5", "R@10"}
    for d in ci:
        for name, (lo, hi) in ci[d].items():
            assert lo <= np.mean(pq[d][name]) <= hi
    metrics = {d: {n: float(np.mean(v)) for n, v in pq[d].items()} for d in pq}
    table = format_table(metrics, ci).splitlines()
    assert table[2].startswith("95% CI") and f"[{ci['t2a']['R@5'][0]:.3f}, {ci['t2a']['R@5'][1]:.3f}]" in table[2]
    assert len(format_table(metrics).splitlines()) == 3  # without intervals: no interval lines
