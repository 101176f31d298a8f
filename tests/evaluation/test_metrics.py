import numpy as np
import pytest

from utils.evaluation.metrics import relevance_matrix, retrieval_metrics, t2a_ranks, xmodal_metrics


def one_query(order_of_relevant, n_items=20, n_rel=None):
    """Scores for one query where the relevant items sit at the given 1-based positions."""
    scores = np.linspace(1.0, 0.0, n_items)[None, :]  # item j is at position j + 1
    rel = np.zeros((1, n_items), bool)
    for p in order_of_relevant:
        rel[0, p - 1] = True
    return scores, rel


def test_single_relevant_hit_at_rank_1_and_3():
    s, r = one_query([1])
    assert retrieval_metrics(s, r) == {"mAP@10": 1.0, "R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    s, r = one_query([3])
    m = retrieval_metrics(s, r)
    assert m["mAP@10"] == pytest.approx(1 / 3) and m["R@1"] == 0 and m["R@5"] == 1


def test_hit_exactly_at_rank_10_counts_and_11_does_not():
    m10 = retrieval_metrics(*one_query([10]))
    assert m10["mAP@10"] == pytest.approx(0.1) and m10["R@10"] == 1.0 and m10["R@5"] == 0
    m11 = retrieval_metrics(*one_query([11]))
    assert m11 == {"mAP@10": 0.0, "R@1": 0.0, "R@5": 0.0, "R@10": 0.0}


def test_multiple_relevant_items():
    # relevant at positions 1, 4, 12 (of 3 relevant): AP@10 = (1/1 + 2/4) / 3, R@5 = 2/3, R@10 = 2/3
    m = retrieval_metrics(*one_query([1, 4, 12]))
    assert m["mAP@10"] == pytest.approx((1 + 0.5) / 3)
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@5"] == pytest.approx(2 / 3) and m["R@10"] == pytest.approx(2 / 3)
    # five relevant, as in audio->text: positions 2, 3, 7, 10, 15
    m = retrieval_metrics(*one_query([2, 3, 7, 10, 15]))
    assert m["mAP@10"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 7 + 4 / 10) / 5)
    assert m["R@10"] == pytest.approx(4 / 5)


def test_ties_are_broken_by_item_order():
    scores = np.array([[0.5, 0.5, 0.5, 0.1]])
    first = retrieval_metrics(scores, np.array([[True, False, False, False]]))
    last = retrieval_metrics(scores, np.array([[False, False, True, False]]))
    assert first["R@1"] == 1.0
    assert last["R@1"] == 0.0 and last["mAP@10"] == pytest.approx(1 / 3)


def test_average_over_queries_and_matches_argsort_reference():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 30))
    t2a = rng.integers(0, 30, size=50)
    ours = retrieval_metrics(scores, relevance_matrix(t2a, 30))
    ranks = []
    for q in range(50):  # plain reference: stable descending sort
        order = np.argsort(-scores[q], kind="stable")
        ranks.append(int(np.where(order == t2a[q])[0][0]) + 1)
    ranks = np.array(ranks)
    assert ours["mAP@10"] == pytest.approx(np.mean(np.where(ranks <= 10, 1 / ranks, 0)))
    for k in (1, 5, 10):
        assert ours[f"R@{k}"] == pytest.approx(np.mean(ranks <= k))
    np.testing.assert_array_equal(t2a_ranks(scores, t2a), ranks)


def test_xmodal_metrics_both_directions():
    # 2 clips, 4 captions (2 per clip); perfect scores
    t2a = np.array([0, 0, 1, 1])
    scores = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float)
    m = xmodal_metrics(scores, t2a)
    assert m["t2a"]["R@1"] == 1.0 and m["a2t"]["mAP@10"] == 1.0


def test_query_without_relevant_item_is_an_error():
    with pytest.raises(ValueError, match="no relevant"):
        retrieval_metrics(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], bool))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_never_become_metrics(bad):
    from utils.evaluation.metrics import NonFiniteError

    s, r = one_query([1])
    with pytest.raises(NonFiniteError, match="non-finite"):
        retrieval_metrics(np.full_like(s, np.nan), r)  # all NaN: once read as R@k = mAP@10 = 1.0
    s[0, 7] = bad
    with pytest.raises(NonFiniteError, match=r"1 non-finite value.*query 0, item 7"):
        retrieval_metrics(s, r)
    with pytest.raises(NonFiniteError):
        xmodal_metrics(np.where(np.eye(4, dtype=bool), bad, 0.5), np.arange(4))
