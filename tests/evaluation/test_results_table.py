"""postprocessing/04_results_table.py: one row per run or per seed group, from run files written here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml
from test_postprocessing import load_script, run_script

from utils.base.config import Config, to_dict

TABLE = load_script("04_results_table.py")


def make_run(runs: Path, name: str, map10: float, r1: float, epochs: int = 3, **changes) -> Path:
    """A run directory as training and 02 leave it: config.yaml, run_info.json, metrics.jsonl, eval metrics."""
    run = runs / name
    (run / "eval").mkdir(parents=True)
    conf = to_dict(Config())
    conf["run"]["name"] = name
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        conf[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(conf))
    (run / "run_info.json").write_text(json.dumps({"seed": conf["train"]["seed"], "device": "cpu"}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "epoch_time_s": 30.0}) + "\n"
                                               for e in range(epochs)))
    metrics = {"t2a": {"mAP@10": map10, "R@1": r1}, "a2t": {"mAP@10": 0.1, "R@1": 0.1},
               "ci95": {"t2a": {"mAP@10": [map10 - 0.05, map10 + 0.04], "R@1": [r1 - 0.1, r1 + 0.1]}}}
    (run / "eval" / "evaluation_metrics.json").write_text(json.dumps(metrics))
    return run


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_one_row_per_run_with_intervals_and_what_differs(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "A", 0.30, 0.20)
    make_run(runs, "B", 0.35, 0.25, epochs=5, train__lr=1e-4, train__batch_size=64)
    (runs / "compare").mkdir()  # not a run: left out
    run_script(TABLE, [str(runs / "A"), str(runs / "B"), str(runs / "compare"), "--out", str(tmp_path / "t")])
    out = capsys.readouterr().out
    rows = read_csv(tmp_path / "t.csv")
    assert [r["run"] for r in rows] == ["A", "B"]
    a, b = rows
    assert a["mAP@10"] == "0.3000 [0.250, 0.340]" and b["R@1"] == "0.2500 [0.150, 0.350]"
    assert a["what differs"] == "(reference)" and b["what differs"] == "train.batch_size=64; train.lr=0.0001"
    assert (a["epochs"], a["training time"], a["device"]) == ("3", "1.5 min", "cpu") and b["epochs"] == "5"
    assert a["split"] == "evaluation"
    assert out.startswith("| run | split | mAP@10 | R@1 | epochs |") and "| B | evaluation | 0.3500 [0.300, 0.390]" in out
    assert (tmp_path / "t.md").read_text() in out

    run_script(TABLE, [str(runs / "A"), str(runs / "B"), "--reference", str(runs / "B"), "--out", str(tmp_path / "u")])
    a, b = read_csv(tmp_path / "u.csv")
    assert a["what differs"] == "train.batch_size=32; train.lr=0.001" and b["what differs"] == "(reference)"


def test_seed_groups_give_mean_and_std_over_seeds(tmp_path, capsys):
    runs = tmp_path / "runs"
    values = {"base": [0.30, 0.34, 0.32], "wide": [0.40, 0.36]}
    for name, maps in values.items():
        for k, v in enumerate(maps):
            changes = {"train__seed": k} | ({"model__audio_enc": {**to_dict(Config())["model"]["audio_enc"],
                                                                   "width": 2.0}} if name == "wide" else {})
            make_run(runs, f"{name}-seed{k}", v, 0.1, **changes)
    run_script(TABLE, sorted(str(p) for p in runs.iterdir()) + ["--group-seeds", "--out", str(tmp_path / "t")])
    rows = read_csv(tmp_path / "t.csv")
    assert [r["run"] for r in rows] == ["base-seed* (3 seeds)", "wide-seed* (2 seeds)"]
    for row, maps in zip(rows, values.values(), strict=True):
        assert row["mAP@10"] == f"{np.mean(maps):.4f} ± {np.std(maps, ddof=1):.4f}"
    assert rows[0]["what differs"] == "(reference)" and rows[1]["what differs"] == "model.audio_enc.width=2.0"
    assert rows[0]["epochs"] == "3/3/3"


def test_no_metrics_is_a_clear_error(tmp_path, capsys):
    run = make_run(tmp_path / "runs", "A", 0.3, 0.2)
    (run / "eval" / "evaluation_metrics.json").unlink()
    try:
        run_script(TABLE, [str(run), "--out", str(tmp_path / "t")])
    except SystemExit as exit_info:
        assert exit_info.code == 2
    err = capsys.readouterr().err
    assert "skipping" in err and "error: none of the 1 folders given has evaluation metrics" in err
