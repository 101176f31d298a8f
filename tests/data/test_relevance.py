"""Multi-relevance evaluation (DCASE 2025 style): relevance files, configurable cut-offs, definitions, top-k CSV.

Every expected number below is computed by hand in the comment next to it.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from utils.base.config import Config, ConfigError, load_config
from utils.base.errors import DataError
from utils.base.tables import AUDIO_COLUMNS, TEXT_COLUMNS, write_rows
from utils.data.relevance import read_relevance
from utils.evaluation.metrics import t2a_metrics, xmodal_metrics
from utils.evaluation.retrieval import evaluate_split
from utils.evaluation.scoring import write_scores

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("xmodal_retrieval", ROOT / "postprocessing" / "02_xmodal_retrieval.py")
RETRIEVAL = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RETRIEVAL)

FNAMES = ["a.wav", "b, with comma.wav", "c.wav", "d.wav", "e.wav"]
CAPTIONS = ["Dogs bark.", "Rain falls.", "A car passes."]
# 3 captions x 5 clips. Caption 0 ranks the clips a, b, c, d, e; caption 1 e, d, c, b, a; caption 2 ties all.
SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                   [0.1, 0.2, 0.3, 0.4, 0.5],
                   [0.5, 0.5, 0.5, 0.5, 0.5]], dtype=np.float32)


def write_relevance(path: Path, rows: list[tuple], header=("caption", "file_name", "relevance")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------
# Metrics by hand
# --------------------------------------------------------------------------------------------


def test_several_relevant_clips():
    rel = np.zeros((1, 5), bool)
    rel[0, [0, 2, 4]] = True  # caption 0 finds them at ranks 1, 3, 5
    m = t2a_metrics(SCORES[:1], rel, ks=[1, 3, 5], map_k=16)
    # AP@16 = (1/1 + 2/3 + 3/5) / 3; R@1 = 1/3, R@3 = 2/3, R@5 = 3/3
    assert m == pytest.approx({"mAP@16": (1 + 2 / 3 + 3 / 5) / 3, "R@1": 1 / 3, "R@3": 2 / 3, "R@5": 1.0})


def test_a_relevant_clip_at_exactly_rank_k():
    rel = np.zeros((1, 5), bool)
    rel[0, 2] = True  # rank 3 for caption 0
    at_k = t2a_metrics(SCORES[:1], rel, ks=[2, 3], map_k=3)
    assert at_k == pytest.approx({"mAP@3": 1 / 3, "R@2": 0.0, "R@3": 1.0})  # rank 3 <= k = 3 counts
    below = t2a_metrics(SCORES[:1], rel, ks=[2], map_k=2)
    assert below == {"mAP@2": 0.0, "R@2": 0.0}  # rank 3 > k = 2 does not


def test_ties_rank_the_lower_clip_first():
    rel = np.zeros((1, 5), bool)
    rel[0, [1, 3]] = True  # caption 2 scores every clip 0.5: clip order decides, so ranks 2 and 4
    m = t2a_metrics(SCORES[2:], rel, ks=[1, 2], map_k=10)
    assert m == pytest.approx({"mAP@10": (1 / 2 + 2 / 4) / 2, "R@1": 0.0, "R@2": 0.5})


def test_relevance_replaces_the_pairing_for_t2a_only():
    t2a = np.array([0, 4, 1])  # the one-clip pairing: caption 0 -> a, 1 -> e, 2 -> b
    rel = np.zeros((3, 5), bool)
    rel[0, [0, 2]] = True  # caption 0: ranks 1, 3 -> AP = (1 + 2/3) / 2 = 5/6, R@1 = 1/2
    rel[1, 1] = True  # caption 1 ranks b 4th -> AP = 1/4, R@1 = 0
    # caption 2 has no relevant clip: left out of the t2a metrics
    m = xmodal_metrics(SCORES, t2a, ks=[1], map_k=10, t2a_relevance=rel)
    assert m["t2a"] == pytest.approx({"mAP@10": (5 / 6 + 1 / 4) / 2, "R@1": (1 / 2 + 0) / 2})
    assert m["a2t"] == xmodal_metrics(SCORES, t2a, ks=[1], map_k=10)["a2t"]  # a2t keeps the pairing


# --------------------------------------------------------------------------------------------
# Relevance files
# --------------------------------------------------------------------------------------------


def test_read_relevance(tmp_path):
    path = write_relevance(tmp_path / "rel.csv", [
        ("Dogs bark.", "a.wav", "1"), (" Dogs bark. ", "b, with comma.wav", "0.5"),  # spaces ignored
        ("Rain falls.", "e.wav", "0"),  # relevance 0: not relevant
        ("Rain falls.", "d.wav", ""),  # empty: relevant
    ])
    rel = read_relevance(path, CAPTIONS + ["Dogs bark."], FNAMES)  # caption 3 repeats caption 0's text
    expected = np.zeros((4, 5), bool)
    expected[[0, 3], 0] = expected[[0, 3], 1] = True
    expected[1, 3] = True
    assert np.array_equal(rel, expected)
    two_columns = write_relevance(tmp_path / "two.csv", [("A car passes.", "c.wav")], header=("caption", "file_name"))
    assert read_relevance(two_columns, CAPTIONS, FNAMES)[2].tolist() == [False, False, True, False, False]


@pytest.mark.parametrize("rows, header, needle", [
    ([("Dogs bark.", "zzz.wav", "1")], ("caption", "file_name", "relevance"), "line 2: file_name 'zzz.wav'"),
    ([("A cat meows.", "a.wav", "1")], ("caption", "file_name", "relevance"), "line 2: caption 'A cat meows.'"),
    ([("Dogs bark.", "a.wav", "high")], ("caption", "file_name", "relevance"), "line 2: relevance 'high'"),
    ([("Dogs bark.", "a.wav")], ("query", "file_name"), "['caption']"),
    ([("Dogs bark.", "a.wav", "0")], ("caption", "file_name", "relevance"), "marks no clip as relevant"),
])
def test_bad_relevance_files_name_the_problem(tmp_path, rows, header, needle):
    path = write_relevance(tmp_path / "rel.csv", rows, header)
    with pytest.raises(DataError, match="rel.csv") as info:
        read_relevance(path, CAPTIONS, FNAMES)
    assert needle in str(info.value)
    with pytest.raises(DataError, match="not found"):
        read_relevance(tmp_path / "absent.csv", CAPTIONS, FNAMES)


# --------------------------------------------------------------------------------------------
# Configuration and stage 02
# --------------------------------------------------------------------------------------------


def test_cut_offs_are_checked_at_load_time(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("eval: {map_k: 16, recall_ks: [1, 16]}\n")
    loaded = load_config(conf)
    assert loaded.eval.map_k == 16 and loaded.eval.recall_ks == [1, 16]
    assert Config().eval.map_k == 10 and Config().eval.recall_ks == [1, 5, 10]
    with pytest.raises(ConfigError, match="eval.map_k"):
        load_config(conf, ["eval.map_k=0"])
    with pytest.raises(ConfigError, match="recall_ks"):
        load_config(conf, ["eval.recall_ks=[]"])


def tiny_split(work: Path, run_dir: Path, split: str = "evaluation", paired: bool = True) -> None:
    """Tables of 3 captions x 5 clips (caption i written for clip [0, 4, 1][i]) and the score file."""
    fids = [f"f{j}" for j in range(5)]
    pairing = [0, 4, 1]
    text_rows = [{"tid": f"t{i}", "fid": fids[pairing[i]] if paired else "", "fname": FNAMES[pairing[i]] if paired
                  else "", "raw_text": c, "text": c.lower()} for i, c in enumerate(CAPTIONS)]
    write_rows(work / f"{split}_text.csv", text_rows, TEXT_COLUMNS)
    write_rows(work / f"{split}_audio.csv", [{"fid": f, "fname": n, "path": n, "duration": "1.0", "sample_rate": 16000}
                                             for f, n in zip(fids, FNAMES, strict=True)], AUDIO_COLUMNS)
    write_scores(run_dir / "eval" / f"{split}_xmodal_scores.hdf5", SCORES, [r["tid"] for r in text_rows], fids)


def test_stage_02_uses_the_relevance_file_and_config_cut_offs(tmp_path):
    work, run_dir = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    tiny_split(work, run_dir)
    write_relevance(work / "rel.csv", [("Dogs bark.", "a.wav", 1), ("Dogs bark.", "c.wav", 2),
                                       ("Rain falls.", "b, with comma.wav", 1)])
    conf = Config()
    conf.data.dataset_dir, conf.data.splits = str(work), ["evaluation"]
    conf.data.relevance = {"evaluation": "rel.csv"}
    conf.eval.map_k, conf.eval.recall_ks, conf.eval.top_k = 3, [1, 3], 3
    report = evaluate_split(conf, run_dir, "evaluation")
    metrics = json.loads((run_dir / "eval" / "evaluation_metrics.json").read_text())
    # caption 0: relevant a, c at ranks 1, 3 -> AP@3 = (1 + 2/3) / 2, R@1 = 1/2, R@3 = 1
    # caption 1: relevant b at rank 4 -> AP@3 = 0, R@1 = R@3 = 0; caption 2: no relevant clip, left out
    assert metrics["t2a"] == pytest.approx({"mAP@3": (5 / 6 + 0) / 2, "R@1": 1 / 4, "R@3": 1 / 2})
    assert set(metrics["a2t"]) == {"mAP@3", "R@1", "R@3"}
    assert "rel.csv" in metrics["definitions"]["t2a"] and "mAP@3" in metrics["definitions"]
    assert "not whether any caption was found" in metrics["definitions"]["R@k"]
    assert report.metrics == {k: v for k, v in metrics.items() if k not in ("definitions", "ci95")}
    assert report.ci95 == metrics["ci95"]
    with open(run_dir / "eval" / "evaluation.t2a_submission.csv", newline="", encoding="utf-8") as f:
        dcase2023 = list(csv.reader(f))  # the 2023 format, top 10 (here all 5 clips)
    assert dcase2023[0] == ["caption"] + [f"file_name_{i}" for i in range(1, 6)]
    assert dcase2023[1] == ["Dogs bark."] + FNAMES
    with open(run_dir / "eval" / "evaluation.t2a_submission_top3.csv", newline="", encoding="utf-8") as f:
        top3 = list(csv.reader(f))
    assert top3 == [["caption", "file_name_1", "file_name_2", "file_name_3"], ["Dogs bark."] + FNAMES[:3],
                    ["Rain falls.", "e.wav", "d.wav", "c.wav"], ["A car passes."] + FNAMES[:3]]


def test_query_split_with_relevance_gets_t2a_metrics(tmp_path, capsys):
    work, run_dir = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    tiny_split(work, run_dir, "test", paired=False)
    write_relevance(work / "rel.csv", [("A car passes.", "d.wav", 1)])  # all tied: rank 4 -> AP@10 = 1/4
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump({"data": {"dataset_dir": str(work), "splits": [], "eval_splits": ["test"],
                                             "relevance": {"test": "rel.csv"}}}))
    RETRIEVAL.run(RETRIEVAL.main, RETRIEVAL.parser, ["--conf", str(conf), "--run", str(run_dir)])
    metrics = json.loads((run_dir / "eval" / "test_metrics.json").read_text())
    assert metrics["t2a"] == pytest.approx({"mAP@10": 1 / 4, "R@1": 0.0, "R@5": 1.0, "R@10": 1.0})
    assert set(metrics) == {"t2a", "ci95", "definitions"} and set(metrics["ci95"]) == {"t2a"}
    assert "relevance file" in capsys.readouterr().out
    assert not (run_dir / "eval" / "test.t2a_submission_top10.csv").exists()  # top_k = 10: the 2023 file only
