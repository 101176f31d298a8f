"""postprocessing/03_compare.py: paired differences, intervals and p-values, on score files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference_metrics import naive_per_query
from test_postprocessing import load_script, run_script

from utils.base.config import Config
from utils.base.errors import DataError
from utils.base.tables import AUDIO_COLUMNS, TEXT_COLUMNS, write_rows
from utils.evaluation.compare import Group, compare_groups, compare_runs, group_name
from utils.evaluation.scoring import write_scores
from utils.runs import eval_file

COMPARE = load_script("03_compare.py")


def make_tables(work: Path, n_clips: int, caps: int) -> tuple[list[str], list[str]]:
    """The 'evaluation' caption and clip tables; returns (tids, fids)."""
    work.mkdir(parents=True, exist_ok=True)
    fids = [f"eva_{c:04d}" for c in range(n_clips)]
    audio = [{"fid": f, "fname": f"{f}.wav", "path": f"evaluation/{f}.wav", "duration": "2", "sample_rate": 16000}
             for f in fids]
    text = [{"tid": f"{f}_{k}", "fid": f, "fname": f"{f}.wav", "raw_text": f"caption {k} of {f}",
             "text": f"caption {k} of {f}"} for f in fids for k in range(1, caps + 1)]
    write_rows(work / "evaluation_text.csv", text, TEXT_COLUMNS)
    write_rows(work / "evaluation_audio.csv", audio, AUDIO_COLUMNS)
    return [r["tid"] for r in text], fids


def conf_for(tmp_path: Path, resamples: int = 1000) -> Config:
    conf = Config()
    conf.data.dataset_dir, conf.data.splits, conf.data.eval_splits = str(tmp_path / "work"), ["evaluation"], ["evaluation"]
    conf.run.dir = str(tmp_path / "runs")
    conf.eval.bootstrap_resamples = resamples
    return conf


def scored_run(tmp_path: Path, name: str, scores: np.ndarray, tids: list[str], fids: list[str]) -> Path:
    run = tmp_path / "runs" / name
    write_scores(eval_file(run, "evaluation", "scores"), scores, tids, fids)
    return run


def ranked_scores(ranks: list[int], n_clips: int) -> np.ndarray:
    """One caption per clip; caption i's own clip i is at 1-based rank ``ranks[i]``."""
    scores = np.zeros((len(ranks), n_clips))
    for i, r in enumerate(ranks):
        others = [j for j in range(n_clips) if j != i]
        order = others[:r - 1] + [i] + others[r - 1:]
        scores[i, order] = np.linspace(1, 0, n_clips)
    return scores


def test_hand_computed_difference_interval_and_p(tmp_path):
    tids, fids = make_tables(tmp_path / "work", 3, 1)
    a = scored_run(tmp_path, "A", ranked_scores([1, 2, 3], 3), tids, fids)
    b = scored_run(tmp_path, "B", ranked_scores([1, 1, 3], 3), tids, fids)
    result, _, _ = compare_runs(conf_for(tmp_path), [a], [b], "evaluation", resamples=20000, seed=0)
    r1, ap = result["metrics"]["t2a"]["R@1"], result["metrics"]["t2a"]["mAP@10"]
    assert (r1["a"], r1["b"], r1["diff"]) == pytest.approx((1 / 3, 2 / 3, 1 / 3))
    assert (ap["a"], ap["b"], ap["diff"]) == pytest.approx(((1 + 1 / 2 + 1 / 3) / 3, (1 + 1 + 1 / 3) / 3, 1 / 6))
    # per-query R@1 differences [0, 1, 0]: every sign flip keeps |sum| = 1, so p = 1; the resampled mean is k/3,
    # k ~ Binomial(3, 1/3): P(k = 0) = 0.30 and P(k = 3) = 0.037, both above 2.5 %, so the interval is [0, 1]
    assert r1["p"] == 1.0 and r1["ci95"] == [0.0, 1.0]
    assert result["n_queries"] == {"t2a": 3, "a2t": 3}
    assert r1["a_seeds"] == [pytest.approx(1 / 3)] and r1["a_std"] is None


def test_a_run_against_itself_differs_by_nothing(tmp_path, capsys):
    tids, fids = make_tables(tmp_path / "work", 12, 2)
    scores = np.random.default_rng(0).normal(size=(24, 12))
    a = scored_run(tmp_path, "A", scores, tids, fids)
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"data: {{dataset_dir: {tmp_path / 'work'}, splits: [evaluation], eval_splits: [evaluation]}}\n"
                    f"run: {{dir: {tmp_path / 'runs'}}}\n")
    run_script(COMPARE, ["--conf", str(conf), "--run", str(a), "--run", str(a)])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / "compare" / "A_vs_A" / "compare.json").read_text())
    for direction in ("t2a", "a2t"):
        for v in result["metrics"][direction].values():
            assert v["diff"] == 0 and v["ci95"] == [0, 0] and v["p"] == 1.0
    assert "1000 resamples, seed 0" in out and "*" not in out.split("\n* p")[0]
    assert (tmp_path / "runs" / "compare" / "A_vs_A" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert set(result) == {"split", "a", "b", "n_queries", "method", "metrics"}
    assert set(result["metrics"]["t2a"]["R@1"]) == {"a", "b", "diff", "ci95", "p", "a_seeds", "b_seeds", "a_std",
                                                    "b_std"}


def test_a_planted_improvement_gives_the_expected_difference(tmp_path, capsys):
    rng = np.random.default_rng(1)
    tids, fids = make_tables(tmp_path / "work", 20, 3)
    base = rng.normal(size=(60, 20))
    better = base.copy()
    true = np.repeat(np.arange(20), 3)
    better[np.arange(30), true[:30]] += 10  # the first 30 captions now find their clip first
    a = scored_run(tmp_path, "A", base, tids, fids)
    b = scored_run(tmp_path, "B", better, tids, fids)
    rel = np.zeros((60, 20), bool)
    rel[np.arange(60), true] = True
    ref_a, ref_b = naive_per_query(base, rel), naive_per_query(better, rel)
    run_script(COMPARE, ["--conf", str(_conf_file(tmp_path)), "--run", str(a), "--run", str(b),
                         "--out", str(tmp_path / "cmp")])
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    for name in ("mAP@10", "R@1", "R@5", "R@10"):
        v = result["metrics"]["t2a"][name]
        assert v["diff"] == pytest.approx(np.mean(ref_b[name] - ref_a[name]))
        assert v["a"] == pytest.approx(ref_a[name].mean()) and v["b"] == pytest.approx(ref_b[name].mean())
    r1 = result["metrics"]["t2a"]["R@1"]
    assert r1["diff"] == pytest.approx(np.mean(1 - ref_a["R@1"][:30]) / 2)  # only the planted half changed
    assert r1["p"] < 0.01 and r1["ci95"][0] > 0
    assert "*" in capsys.readouterr().out


def _conf_file(tmp_path: Path) -> Path:
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"data: {{dataset_dir: {tmp_path / 'work'}, splits: [evaluation], eval_splits: [evaluation]}}\n"
                    f"run: {{dir: {tmp_path / 'runs'}}}\n")
    return conf


def test_a_relevance_file_gives_the_multi_relevance_t2a_metrics(tmp_path):
    rng = np.random.default_rng(4)
    tids, fids = make_tables(tmp_path / "work", 8, 1)
    relevance = rng.random((8, 8)) < 0.3
    relevance[np.arange(8), np.arange(8)] = True  # each caption's own clip, and a few more
    rows = [f"caption 1 of {fids[i]},{fids[j]}.wav,1" for i, j in zip(*np.nonzero(relevance), strict=True)]
    (tmp_path / "work" / "rel.csv").write_text("caption,file_name,relevance\n" + "\n".join(rows) + "\n")
    conf = conf_for(tmp_path, resamples=200)
    conf.data.relevance, conf.eval.map_k = {"evaluation": "rel.csv"}, 16
    a_scores, b_scores = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    a = scored_run(tmp_path, "A", a_scores, tids, fids)
    b = scored_run(tmp_path, "B", b_scores, tids, fids)
    result, _, _ = compare_runs(conf, [a], [b], "evaluation", 200, 0)
    v = result["metrics"]["t2a"]["mAP@16"]
    ref_a, ref_b = (naive_per_query(s, relevance, map_k=16)["mAP@16"] for s in (a_scores, b_scores))
    assert (v["a"], v["b"]) == pytest.approx((ref_a.mean(), ref_b.mean()))
    assert "mAP@16" in result["metrics"]["a2t"]  # a2t keeps the pairing, with the same cut-offs


def test_groups_of_seeds_average_per_query_first(tmp_path, capsys):
    rng = np.random.default_rng(2)
    tids, fids = make_tables(tmp_path / "work", 10, 2)
    rel = np.zeros((20, 10), bool)
    rel[np.arange(20), np.repeat(np.arange(10), 2)] = True
    matrices = {f"{g}-seed{s}": rng.normal(size=(20, 10)) for g in "AB" for s in range(3)}
    for name, scores in matrices.items():
        scored_run(tmp_path, name, scores, tids, fids)
    run_script(COMPARE, ["--conf", str(_conf_file(tmp_path)), "--run", str(tmp_path / "runs" / "A-seed*"),
                         "--run", str(tmp_path / "runs" / "B-seed*")])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / "compare" / "A_vs_B" / "compare.json").read_text())
    assert [Path(r).name for r in result["a"]["runs"]] == ["A-seed0", "A-seed1", "A-seed2"]
    ap = {n: naive_per_query(m, rel)["mAP@10"] for n, m in matrices.items()}
    v = result["metrics"]["t2a"]["mAP@10"]
    a_mean = np.mean([ap[f"A-seed{s}"] for s in range(3)], axis=0)  # per query, over seeds
    b_mean = np.mean([ap[f"B-seed{s}"] for s in range(3)], axis=0)
    assert v["diff"] == pytest.approx(np.mean(b_mean - a_mean))
    assert v["a_std"] == pytest.approx(np.std([ap[f"A-seed{s}"].mean() for s in range(3)], ddof=1))
    assert "sd(A)" in out and f"{v['a_std']:.4f}" in out


def test_runs_scored_on_other_clips_are_refused(tmp_path):
    tids, fids = make_tables(tmp_path / "work", 6, 1)
    scores = np.random.default_rng(3).normal(size=(6, 6))
    a = scored_run(tmp_path, "A", scores, tids, fids)
    b = scored_run(tmp_path, "B", scores[:, :5], tids, fids[:5])
    with pytest.raises(DataError, match=r"A and .*B were scored on different clips of 'evaluation': 1 only in .*A "
                                        r"\(e.g. \['eva_0005'\]\)"):
        compare_runs(conf_for(tmp_path), [a], [b], "evaluation", 100, 0)
    c = scored_run(tmp_path, "C", scores[::-1], tids[::-1], fids)
    with pytest.raises(DataError, match="different captions .*another order"):
        compare_runs(conf_for(tmp_path), [a], [c], "evaluation", 100, 0)


def test_group_names():
    assert group_name([Path("runs/A-seed0"), Path("runs/A-seed1")]) == "A"
    assert group_name([Path("runs/A-seed1"), Path("runs/A-seed12")]) == "A"
    assert group_name([Path("x/base")]) == "base"


def _group(values: np.ndarray) -> Group:
    return Group("g", [Path("g")], {"t2a": {"m": values}}, {"t2a": {"m": [float(values.mean())]}}, None)


def test_p_uniform_and_interval_coverage_when_a_and_b_are_exchangeable():
    rng = np.random.default_rng(5)
    ps, covered = [], 0
    for s in range(300):
        shared = rng.beta(0.6, 1.4, 80)  # per-query difficulty, common to both runs (paired)
        a, b = shared + 0.1 * rng.normal(size=80), shared + 0.1 * rng.normal(size=80)
        v = compare_groups(_group(a), _group(b), "x", resamples=400, seed=s)["metrics"]["t2a"]["m"]
        ps.append(v["p"])
        covered += v["ci95"][0] <= 0 <= v["ci95"][1]  # the true difference is 0
    ps = np.sort(ps)
    assert np.max(np.abs(ps - np.arange(1, 301) / 300)) < 0.09  # KS 5 % critical value for 300 draws: 0.079
    assert 0.91 <= covered / 300 <= 0.985
