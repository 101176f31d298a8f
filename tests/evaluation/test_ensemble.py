"""01_xmodal_scores.py --ensemble: an ensemble run whose scores are the mean of its members', used like any run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_postprocessing import (
    RETRIEVAL,
    SCORES,
    direct_scores,
    make_run_dir,
    run_script,
    tiny_conf,
    write_split,
)

from utils.base.errors import PipelineError
from utils.evaluation.ensemble import check_members_agree
from utils.evaluation.scoring import read_scores
from utils.runs import ensemble_members, load_run

SCORE_FILE = ("eval", "evaluation_xmodal_scores.hdf5")


@pytest.fixture
def members(tmp_path):
    """Three runs with other random weights on one paired 'evaluation' split (12 clips x 2 captions)."""
    work = tmp_path / "work"
    work.mkdir()
    write_split(work, "evaluation", 12, np.random.default_rng(0))
    run_dir = make_run_dir(tmp_path / "runs" / "tiny", tiny_conf(work, tmp_path / "runs" / "tiny"))
    dirs = [run_dir]
    for seed in (1, 2):
        other = run_dir.parent / f"m{seed}"
        dirs.append(make_run_dir(other, tiny_conf(work, other), seed=seed))
    return work, dirs


def test_an_ensemble_of_one_is_that_run(members):
    work, (run_dir, *_) = members
    run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation"])
    ens = run_dir.parent / "ens1"
    run_script(SCORES, ["--ensemble", str(run_dir), "--out", str(ens), "--splits", "evaluation",
                        "--set", f"data.dataset_dir={work}"])
    np.testing.assert_allclose(read_scores(ens.joinpath(*SCORE_FILE)).scores,
                               read_scores(run_dir.joinpath(*SCORE_FILE)).scores, atol=1e-6)
    assert ensemble_members(ens) == [run_dir.resolve()]


def test_ensemble_scores_are_the_mean_of_the_members(members, capsys):
    work, dirs = members
    ens = dirs[0].parent / "ens"
    run_script(SCORES, ["--ensemble", str(dirs[0].parent / "m*"), str(dirs[0]), "--out", str(ens),
                        "--splits", "evaluation", "--set", f"data.dataset_dir={work}", "--set", "eval.batch_size=1"])
    sf = read_scores(ens.joinpath(*SCORE_FILE))
    assert json.loads((ens / "ensemble.json").read_text())["members"] == ["../m1", "../m2", "../tiny"]
    pairs = [(0, 0), (5, 2), (23, 11), (7, 9)]
    expected = np.mean([direct_scores(d, work, "evaluation", pairs, sf.text_ids, sf.audio_ids) for d in dirs], axis=0)
    np.testing.assert_allclose([sf.scores[i, j] for i, j in pairs], expected, atol=1e-5)
    one = direct_scores(dirs[0], work, "evaluation", pairs, sf.text_ids, sf.audio_ids)
    assert np.abs(one - expected).max() > 1e-3  # the members differ, so the mean is not any one of them

    # Stage 02 and the submission work on it like on any run (its config.yaml is the members').
    run_script(RETRIEVAL, ["--run", str(ens), "--splits", "evaluation"])
    metrics = json.loads((ens / "eval" / "evaluation_metrics.json").read_text())
    assert set(metrics) == {"t2a", "a2t", "ci95", "definitions"}
    assert (ens / "eval" / "evaluation.t2a_submission.csv").is_file()
    with pytest.raises(PipelineError, match="is an ensemble"):
        load_run(ens)


def test_members_must_share_the_features(members):
    work, dirs = members
    odd = dirs[0].parent / "odd"
    conf = tiny_conf(work, odd)
    conf.features.hop_sec = 0.01
    make_run_dir(odd, conf)
    with pytest.raises(SystemExit):
        run_script(SCORES, ["--ensemble", str(dirs[0]), str(odd), "--out", str(odd.parent / "e"),
                            "--set", f"data.dataset_dir={work}"])
    with pytest.raises(PipelineError, match=r"disagree on features.hop_sec: .*tiny has 0.02, .*odd has 0.01"):
        check_members_agree([load_run(dirs[0], device="cpu"), load_run(odd, device="cpu")])
    assert not (odd.parent / "e" / "eval" / "evaluation_xmodal_scores.hdf5").exists()
