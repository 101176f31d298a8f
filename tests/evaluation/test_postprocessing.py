"""Postprocessing: score matrices (01), metrics / submission / ranks (02), on a tiny run made here."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from builders import TEXT_DIM, make_run_dir, tiny_conf
from conftest import TEXT_MODEL, fake_text_model
from reference_metrics import naive_per_query

from utils.base.config import to_dict
from utils.base.errors import PipelineError
from utils.base.tables import AUDIO_COLUMNS, TEXT_COLUMNS, read_text_table, write_rows
from utils.data.caption_vectors import update_text_embeddings
from utils.evaluation.metrics import top_k
from utils.evaluation.scoring import read_scores, write_scores
from utils.evaluation.stats import bootstrap_ci
from utils.runs import load_run
from utils.search.retriever import Retriever

ROOT = Path(__file__).resolve().parents[2]
N_MELS = 64


def load_script(name: str):
    """Import a numbered script (its file name is not a module name)."""
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), ROOT / "postprocessing" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCORES = load_script("01_xmodal_scores.py")
RETRIEVAL = load_script("02_xmodal_retrieval.py")


def run_script(module, argv: list[str]) -> None:
    module.run(module.main, module.parser, argv)


# --------------------------------------------------------------------------------------------
# A tiny dataset and run
# --------------------------------------------------------------------------------------------


def fname_of(split: str, c: int) -> str:
    """Original-looking Clotho names: commas, quotes, parentheses, spaces."""
    return [f'clip {c}, "take" ({split}).wav', f"rain & wind #{c}.wav", f"plain_{c}.wav"][c % 3]


def write_split(work: Path, split: str, n_clips: int, rng: np.random.Generator, paired: bool = True,
                frames: tuple[int, int] = (64, 130), caps_per_clip: int = 2) -> list[dict]:
    """Tables, features and SBERT vectors of one split; returns its caption rows."""
    text_rows, audio_rows = [], []
    with h5py.File(work / f"{split}_audio_logmels.hdf5", "w") as h5:
        for c in range(n_clips):
            fid = f"{split[:3]}_{c:04d}"
            h5[fid] = rng.normal(size=(int(rng.integers(*frames)), N_MELS)).astype(np.float32)
            fname = fname_of(split, c)
            audio_rows.append({"fid": fid, "fname": fname, "path": f"{split}/{fname}", "duration": "2.0",
                               "sample_rate": 16000})
            if paired:
                for k in range(1, caps_per_clip + 1):
                    raw = f'Clip {c}, caption {k}: a "dog" barks' if k == 1 else f"caption {k} of clip {c}"
                    text_rows.append({"tid": f"{fid}_{k}", "fid": fid, "fname": fname, "raw_text": raw,
                                      "text": raw.lower()})
    if not paired:
        for q in range(2 * n_clips):
            raw = f"query {q}, with a comma and \"quotes\""
            text_rows.append({"tid": f"{split[:3]}_q{q:05d}", "fid": "", "fname": "", "raw_text": raw, "text": raw})
    write_rows(work / f"{split}_text.csv", text_rows, TEXT_COLUMNS)
    write_rows(work / f"{split}_audio.csv", audio_rows, AUDIO_COLUMNS)
    vectors = rng.normal(size=(len(text_rows), TEXT_DIM)).astype(np.float32)
    model, fingerprint = fake_text_model(work.parent)  # the stand-in text model that "made" the vectors
    update_text_embeddings(work / "sbert_embeds.hdf5", {split: text_rows}, model, lambda texts: vectors, fingerprint)
    return text_rows


@pytest.fixture
def tiny(tmp_path):
    """A work dir with a paired 'evaluation' split (12 clips x 2 captions) and a query split 'test'."""
    rng = np.random.default_rng(0)
    work = tmp_path / "work"
    work.mkdir()
    write_split(work, "evaluation", 12, rng)
    write_split(work, "test", 11, rng, paired=False)
    run_dir = tmp_path / "runs" / "tiny"
    conf = tiny_conf(work, run_dir)
    make_run_dir(run_dir, conf)
    return work, run_dir, conf


def direct_scores(run_dir: Path, work: Path, split: str, pairs: list[tuple[int, int]], text_ids, audio_ids):
    """The scores of ``pairs`` (row, column) from single-item forward passes (no batching, no padding)."""
    from utils.data.caption_vectors import load_text_embeddings

    loaded = load_run(run_dir, "best", "cpu")
    rows = read_text_table(work / f"{split}_text.csv")
    vectors = load_text_embeddings(work / "sbert_embeds.hdf5", split, rows)
    by_tid = {r["tid"]: i for i, r in enumerate(rows)}
    audio, text = {}, {}
    with h5py.File(work / f"{split}_audio_logmels.hdf5", "r") as h5, torch.no_grad():
        for i, j in pairs:
            if j not in audio:
                audio[j] = loaded.model.audio_branch(torch.from_numpy(h5[audio_ids[j]][()])[None])[0]  # (E,)
            if i not in text:
                text[i] = loaded.model.text_branch(torch.from_numpy(vectors[by_tid[text_ids[i]]])[None])[0]  # (E,)
    return np.array([float(audio[j] @ text[i]) for i, j in pairs])


# --------------------------------------------------------------------------------------------
# 01: scores
# --------------------------------------------------------------------------------------------


def test_scores_equal_a_direct_forward_pass(tiny):
    work, run_dir, _ = tiny
    run_script(SCORES, ["--run", str(run_dir), "--set", "eval.batch_size=1", "--splits", "evaluation"])
    sf = read_scores(run_dir / "eval" / "evaluation_xmodal_scores.hdf5")
    rows = read_text_table(work / "evaluation_text.csv")
    assert sf.scores.dtype == np.float32 and sf.scores.shape == (24, 12)
    assert sf.text_ids == [r["tid"] for r in rows]  # row i = caption i of the table
    assert sf.audio_ids == [f"eva_{c:04d}" for c in range(12)]
    pairs = [(0, 0), (5, 2), (23, 11), (7, 9), (12, 4)]
    expected = direct_scores(run_dir, work, "evaluation", pairs, sf.text_ids, sf.audio_ids)
    np.testing.assert_allclose([sf.scores[i, j] for i, j in pairs], expected, atol=1e-5)
    assert not any(p.name.startswith(".") for p in (run_dir / "eval").iterdir()), "temp files left behind"

    # Length-sorted batches of clips of 64-130 frames (padded): the same scores as clip by clip.
    run_script(SCORES, ["--run", str(run_dir), "--set", "eval.batch_size=5", "--splits", "evaluation"])
    batched = read_scores(run_dir / "eval" / "evaluation_xmodal_scores.hdf5").scores
    np.testing.assert_allclose(batched, sf.scores, atol=1e-5, rtol=0)


def test_scoring_is_float32_unless_eval_amp_asks(tmp_path):
    """A run trained with train.amp=bf16 scores in float32 (as the baseline); --set eval.amp=bf16 autocasts."""
    rng = np.random.default_rng(2)
    work = tmp_path / "work"
    work.mkdir()
    write_split(work, "evaluation", 6, rng)
    conf = tiny_conf(work, tmp_path / "runs" / "r")
    conf.train.amp = "bf16"
    run_dir = make_run_dir(tmp_path / "runs" / "r", conf)
    assert load_run(run_dir, "best", "cpu").dtype is None
    out = run_dir / "eval" / "evaluation_xmodal_scores.hdf5"
    run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation"])
    fp32 = read_scores(out).scores
    pairs = [(i, j) for i in range(12) for j in range(6)]
    expected = direct_scores(run_dir, work, "evaluation", pairs, read_scores(out).text_ids, read_scores(out).audio_ids)
    np.testing.assert_allclose(fp32.ravel(), expected, atol=1e-5)
    run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation", "--set", "eval.amp=bf16"])
    bf16 = read_scores(out).scores
    assert 1e-4 < np.abs(bf16 - fp32).max() < 0.1  # bf16 rounding shows, so the setting took effect


def test_nan_embedding_stops_scoring_naming_split_and_clip(tiny, capsys):
    work, run_dir, _ = tiny
    with h5py.File(work / "evaluation_audio_logmels.hdf5", "a") as h5:
        feats = h5["eva_0003"][()]
        feats[5, 3] = np.nan
        del h5["eva_0003"]
        h5["eva_0003"] = feats
    with pytest.raises(SystemExit):
        run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("error:")
    assert "split 'evaluation'" in err and "clip eva_0003" in err and "non-finite" in err
    assert not (run_dir / "eval" / "evaluation_xmodal_scores.hdf5").exists()


def test_nan_scores_file_gives_no_metrics(tiny, capsys):
    work, run_dir, _ = tiny
    run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation"])
    path = run_dir / "eval" / "evaluation_xmodal_scores.hdf5"
    sf = read_scores(path)
    write_scores(path, np.full_like(sf.scores, np.nan), sf.text_ids, sf.audio_ids)
    with pytest.raises(SystemExit):
        run_script(RETRIEVAL, ["--run", str(run_dir)])
    err = capsys.readouterr().err
    assert "split 'evaluation'" in err and f"caption {sf.text_ids[0]}" in err
    assert not (run_dir / "eval" / "evaluation_metrics.json").exists()


def test_batching_is_exact_for_equal_length_clips(tmp_path):
    rng = np.random.default_rng(1)
    work = tmp_path / "work"
    work.mkdir()
    write_split(work, "evaluation", 7, rng, frames=(90, 91))  # every clip has 90 frames: no padding
    run_dir = make_run_dir(tmp_path / "runs" / "r", tiny_conf(work, tmp_path / "runs" / "r"))
    run_script(SCORES, ["--run", str(run_dir), "--set", "eval.batch_size=3", "--splits", "evaluation"])
    sf = read_scores(run_dir / "eval" / "evaluation_xmodal_scores.hdf5")
    pairs = [(i, j) for i in range(0, 14, 3) for j in range(7)]
    expected = direct_scores(run_dir, work, "evaluation", pairs, sf.text_ids, sf.audio_ids)
    np.testing.assert_allclose([sf.scores[i, j] for i, j in pairs], expected, atol=1e-5)


def test_several_runs_and_globs(tiny, capsys):
    work, run_dir, _ = tiny
    seeds = []
    for k in (0, 1):
        seed_dir = run_dir.parent / f"s-seed{k}"
        seeds.append(make_run_dir(seed_dir, tiny_conf(work, seed_dir), seed=k + 1))
    run_script(SCORES, ["--run", str(run_dir.parent / "s-seed*"), "--splits", "evaluation"])
    a, b = (read_scores(r / "eval" / "evaluation_xmodal_scores.hdf5").scores for r in seeds)
    assert a.shape == b.shape == (24, 12) and np.abs(a - b).max() > 1e-3  # each run scored with its own model
    assert not (run_dir / "eval").exists()
    capsys.readouterr()
    run_script(RETRIEVAL, ["--run", str(seeds[0]), "--run", str(seeds[1]), "--splits", "evaluation"])
    out = capsys.readouterr().out
    for r in seeds:
        m = json.loads((r / "eval" / "evaluation_metrics.json").read_text())
        assert f"run {r}" in out and f"{m['t2a']['mAP@10']:.4f}" in out
    with pytest.raises(SystemExit):
        run_script(RETRIEVAL, ["--run", str(run_dir.parent / "nothing-*")])
    assert "matches no run directory" in capsys.readouterr().err


def test_missing_features_name_the_file_and_stage(tiny, capsys):
    work, run_dir, _ = tiny
    (work / "evaluation_audio_logmels.hdf5").unlink()
    with pytest.raises(SystemExit) as exit_info:
        run_script(SCORES, ["--run", str(run_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "evaluation_audio_logmels.hdf5" in err and "02_audio_logmel.py" in err and err.startswith("error:")
    assert not (run_dir / "eval" / "evaluation_xmodal_scores.hdf5").exists()


def test_run_dir_without_checkpoint_is_a_clear_error(tiny, tmp_path, capsys):
    work, _, conf = tiny
    empty = tmp_path / "runs" / "untrained"
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text(yaml.safe_dump(to_dict(conf)))
    with pytest.raises(PipelineError, match=r"no checkpoints/best.pt in .*untrained.*python main.py"):
        Retriever.from_run(empty)
    with pytest.raises(SystemExit):
        run_script(SCORES, ["--run", str(empty)])
    assert "no checkpoints/best.pt" in capsys.readouterr().err


def test_score_file_write_is_atomic(tmp_path):
    path = tmp_path / "eval" / "x_xmodal_scores.hdf5"
    write_scores(path, np.ones((2, 3), np.float32), ["a", "b"], ["f1", "f2", "f3"])
    with pytest.raises(TypeError):  # fails half-way through writing
        write_scores(path, np.zeros((2, 3), np.float32), ["a", "b"], ["f1", "f2", "f3"], attrs={"bad": object()})
    assert read_scores(path).scores.sum() == 6  # the previous complete file is untouched
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# --------------------------------------------------------------------------------------------
# 02: metrics, ranks, submission
# --------------------------------------------------------------------------------------------


def brute_force_metrics(scores: np.ndarray, t2a: np.ndarray, k: int = 10) -> dict:
    """mAP@10 and R@1/5/10 both ways, by sorting each query's row and walking down it (the baseline's definitions:
    ties by index; a2t relevant = the clip's captions, R@k = fraction of them found)."""
    def one_way(rows: np.ndarray, relevant: list[set]) -> dict:
        out = {f"mAP@{k}": [], "R@1": [], "R@5": [], "R@10": []}
        for row, rel in zip(rows, relevant, strict=True):
            ranking = sorted(range(len(row)), key=lambda j: (-row[j], j))
            hits, ap = 0, 0.0
            for position, item in enumerate(ranking, start=1):
                if item in rel:
                    hits += 1
                    ap += hits / position if position <= k else 0.0
            out[f"mAP@{k}"].append(ap / len(rel))
            for cut in (1, 5, 10):
                out[f"R@{cut}"].append(len(rel & set(ranking[:cut])) / len(rel))
        return {name: float(np.mean(v)) for name, v in out.items()}

    clips = sorted(set(t2a.tolist()))
    return {"t2a": one_way(scores, [{int(c)} for c in t2a]),
            "a2t": one_way(scores.T[clips], [set(np.flatnonzero(t2a == c).tolist()) for c in clips])}


def test_metrics_ranks_and_submission(tiny, capsys):
    work, run_dir, _ = tiny
    run_script(SCORES, ["--run", str(run_dir)])
    run_script(RETRIEVAL, ["--run", str(run_dir)])
    out = capsys.readouterr().out
    ev = run_dir / "eval"
    sf = read_scores(ev / "evaluation_xmodal_scores.hdf5")
    rows = read_text_table(work / "evaluation_text.csv")
    t2a = np.array([sf.audio_ids.index(r["fid"]) for r in rows])

    metrics = json.loads((ev / "evaluation_metrics.json").read_text())
    assert "fraction of the clip's captions found" in metrics.pop("definitions")["R@k"]
    metrics.pop("ci95")  # checked in test_metrics_json_intervals
    expected = brute_force_metrics(sf.scores, t2a)  # an independent loop, not xmodal_metrics
    assert set(metrics["t2a"]) == {"mAP@10", "R@1", "R@5", "R@10"}
    for direction in ("t2a", "a2t"):
        assert metrics[direction] == pytest.approx(expected[direction], abs=1e-9), direction
    assert f"{expected['t2a']['mAP@10']:.4f}" in out and "a2t" in out
    n_clips = len(sf.audio_ids)
    assert f"R@1 = 1/{n_clips} = {1 / n_clips:.3f}" in out  # the chance line, after the metrics

    with open(ev / "evaluation_ranks.csv", newline="") as f:
        ranks = list(csv.DictReader(f))
    assert [r["tid"] for r in ranks] == sf.text_ids and [r["fid"] for r in ranks] == [r["fid"] for r in rows]
    by_sorting = [sorted(range(n_clips), key=lambda j, row=row: (-row[j], j)).index(int(t2a[i])) + 1
                  for i, row in enumerate(sf.scores)]
    assert [int(r["rank"]) for r in ranks] == by_sorting
    assert (ev / "evaluation_ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Submission: DCASE header, original captions and file names (commas, quotes), best first.
    with open(ev / "evaluation.t2a_submission.csv", newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["caption"] + [f"file_name_{i}" for i in range(1, 11)]
    assert len(table) == 1 + len(rows) and all(len(r) == 11 for r in table)
    fid_of = {fname_of("evaluation", c): f"eva_{c:04d}" for c in range(12)}
    for i, row in enumerate(table[1:]):
        assert row[0] == rows[i]["raw_text"]
        cols = [sf.audio_ids.index(fid_of[name]) for name in row[1:]]
        assert cols == np.argsort(-sf.scores[i], kind="stable")[:10].tolist()
    assert any('"' in r[0] and "," in r[0] for r in table[1:]) and any("," in n for r in table[1:] for n in r[1:])


def test_metrics_json_intervals(tiny, capsys):
    """ci95: the bootstrap of per-query values computed here by hand (naive walks), not by the metrics module."""
    work, run_dir, _ = tiny
    run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation"])
    run_script(RETRIEVAL, ["--run", str(run_dir), "--splits", "evaluation", "--set", "eval.bootstrap_resamples=300",
                           "--set", "eval.bootstrap_seed=4"])
    out = capsys.readouterr().out
    metrics = json.loads((run_dir / "eval" / "evaluation_metrics.json").read_text())
    sf = read_scores(run_dir / "eval" / "evaluation_xmodal_scores.hdf5")
    rows = read_text_table(work / "evaluation_text.csv")
    rel = np.zeros(sf.scores.shape, bool)
    rel[np.arange(len(rows)), [sf.audio_ids.index(r["fid"]) for r in rows]] = True
    expected = {"t2a": bootstrap_ci(naive_per_query(sf.scores, rel), 300, 4),
                "a2t": bootstrap_ci(naive_per_query(sf.scores.T, rel.T), 300, 4)}
    assert set(metrics["ci95"]) == {"t2a", "a2t"}
    for direction in ("t2a", "a2t"):
        assert list(metrics["ci95"][direction]) == list(metrics[direction])
        for name, (lo, hi) in metrics["ci95"][direction].items():
            assert [lo, hi] == pytest.approx(expected[direction][name])
            assert lo <= metrics[direction][name] <= hi
    assert "300 resamples" in metrics["definitions"]["ci95"] and "seed 4" in metrics["definitions"]["ci95"]
    lo, hi = metrics["ci95"]["t2a"]["mAP@10"]
    assert f"[{lo:.3f}, {hi:.3f}]" in out and "95% CI" in out


def test_id_mismatch_is_a_clear_error(tiny, capsys):
    work, run_dir, _ = tiny
    run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation"])
    rows = read_text_table(work / "evaluation_text.csv")
    write_rows(work / "evaluation_text.csv", rows[1:] + rows[:1], TEXT_COLUMNS)  # another caption order
    with pytest.raises(SystemExit) as exit_info:
        run_script(RETRIEVAL, ["--run", str(run_dir), "--splits", "evaluation"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "scores were made from another caption table; re-run" in err and "01_xmodal_scores.py" in err


def test_query_split_gets_a_submission_and_no_metrics(tiny, capsys):
    work, run_dir, _ = tiny
    run_script(SCORES, ["--run", str(run_dir), "--splits", "test"])
    sf = read_scores(run_dir / "eval" / "test_xmodal_scores.hdf5")
    assert sf.scores.shape == (22, 11)  # every query x every clip of the audio table
    run_script(RETRIEVAL, ["--run", str(run_dir), "--splits", "test"])
    assert "no ground truth" in capsys.readouterr().out
    ev = run_dir / "eval"
    assert sorted(p.name for p in ev.iterdir()) == ["test.t2a_submission.csv", "test_xmodal_scores.hdf5"]
    with open(ev / "test.t2a_submission.csv", newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    names = [fname_of("test", c) for c in range(11)]
    assert table[0][:2] == ["caption", "file_name_1"] and len(table) == 23
    for i, row in enumerate(table[1:]):
        assert row[0] == read_text_table(work / "test_text.csv")[i]["raw_text"]
        assert [names[j] for j in top_k(sf.scores[i], 10)] == row[1:]


def test_conf_overrides_data_paths(tiny, tmp_path):
    work, run_dir, _ = tiny
    moved = tmp_path / "moved"
    os.rename(work, moved)
    with pytest.raises(SystemExit):  # the run's config still points at the old place
        run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation"])
    run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation", "--set", f"data.dataset_dir={moved}"])
    assert read_scores(run_dir / "eval" / "evaluation_xmodal_scores.hdf5").scores.shape == (24, 12)


def test_top_k_is_a_stable_descending_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(40, 30)).astype(np.float32)  # many ties
    for k in (1, 5, 10, 30, 50):
        ref = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        assert np.array_equal(top_k(scores, k), ref)
        assert np.array_equal(top_k(scores[3], k), ref[3])


def test_scoring_refuses_vectors_of_another_text_model(tiny, tmp_path, capsys):
    work, run_dir, conf = tiny
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another model of the same width")
    conf.text.model = str(other)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(conf), sort_keys=False), encoding="utf-8")
    with pytest.raises(SystemExit):
        run_script(SCORES, ["--run", str(run_dir), "--splits", "evaluation"])
    err = capsys.readouterr().err
    assert f"made by text model '{work.parent / TEXT_MODEL}'" in err and f"text.model is '{other}'" in err
    assert "03_sbert_embeddings.py" in err
