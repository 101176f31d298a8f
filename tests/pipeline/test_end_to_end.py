"""The real scripts, as subprocesses, on a generated demo dataset: stages 0-4, training, postprocessing,
search. Also the learning check: after a short CPU training, validation text->audio R@1 >= 3x chance."""

import csv
import json
import os
import subprocess
import sys

import h5py
import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow

N_CLIPS = 200  # 120 / 40 / 40 clips
EPOCHS = 5  # clips of 2-3 s, as in make demo


def run_script(script, conf, *extra, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(ROOT / script), "--conf", str(conf), *extra], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def write_demo_conf(tmp, **train):
    """``tmp/conf.yaml``: conf_demo.yaml with every path inside ``tmp``, on the CPU, ``train`` overriding."""
    conf = yaml.safe_load((ROOT / "conf_demo.yaml").read_text())
    conf["data"]["dataset_dir"] = str(tmp / "demo")
    conf["pretrained"] = {"panns_checkpoint": str(tmp / "stand_in.pth"), "cnn14_weights": str(tmp / "cnn14.pth")}
    conf["train"].update(device="cpu", **train)
    conf["text"]["device"] = "cpu"
    conf["run"] = {"dir": str(tmp / "runs"), "name": "demo"}
    conf_path = tmp / "conf.yaml"
    conf_path.write_text(yaml.safe_dump(conf))
    return conf_path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Stages 0-4 and a short training run with conf_demo.yaml, everything inside a temp folder."""
    tmp = tmp_path_factory.mktemp("e2e")
    conf_path = write_demo_conf(tmp, epochs=EPOCHS)
    out = {"tmp": tmp, "conf": conf_path, "data": tmp / "demo", "run": tmp / "runs" / "demo", "logs": {}}
    steps = [
        ("preprocessing/00_make_demo_dataset.py", "--clips", str(N_CLIPS), "--duration-range", "2", "3",
         "--panns-stand-in"),
        ("preprocessing/01_clotho_dataset.py",),
        ("preprocessing/02_audio_logmel.py",),
        ("preprocessing/03_sbert_embeddings.py",),
        ("preprocessing/04_cnn14_transfer.py",),
        ("main.py",),
    ]
    for script, *extra in steps:
        out["logs"][script] = run_script(script, conf_path, *extra).stdout
    return out


def test_preprocessing_outputs(demo):
    data = demo["data"]
    for split, n in [("development", 120), ("validation", 40), ("evaluation", 40)]:
        with open(data / f"{split}_text.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 5 * n and len({r["tid"] for r in rows}) == 5 * n
        with h5py.File(data / f"{split}_audio_logmels.hdf5", "r") as h5:
            assert set(h5.keys()) == {r["fid"] for r in rows}  # every clip, odd names included
            shapes = {h5[k].shape[1] for k in h5} | {str(h5[k].dtype) for k in h5}
            assert shapes == {64, "float32"}
    with h5py.File(data / "sbert_embeds.hdf5", "r") as h5:
        assert h5["development/embeds"].shape == (600, 384)  # all-MiniLM-L6-v2
    assert (demo["tmp"] / "cnn14.pth").is_file()
    assert "stand-in" in demo["logs"]["preprocessing/00_make_demo_dataset.py"].lower()


def test_training_learns_on_the_demo_data(demo):
    records = [json.loads(line) for line in (demo["run"] / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == EPOCHS
    chance = 1 / 40  # 40 validation clips
    best_r1 = max(r["val_t2a"]["R@1"] for r in records)
    assert best_r1 >= 3 * chance, f"best validation R@1 {best_r1:.3f} < 3x chance ({3 * chance:.3f})"
    assert records[-1]["train_loss"] < records[0]["train_loss"]


def test_postprocessing_and_search(demo):
    run_script("postprocessing/01_xmodal_scores.py", demo["conf"], "--run", str(demo["run"]))
    proc = run_script("postprocessing/02_xmodal_retrieval.py", demo["conf"], "--run", str(demo["run"]))
    metrics = json.loads((demo["run"] / "eval" / "evaluation_metrics.json").read_text())
    assert set(metrics) == {"t2a", "a2t", "ci95", "definitions"} and 0 <= metrics["t2a"]["mAP@10"] <= 1
    assert f"{metrics['t2a']['mAP@10']:.4f}" in proc.stdout
    with open(demo["run"] / "eval" / "evaluation.t2a_submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["caption"] + [f"file_name_{i}" for i in range(1, 11)] and len(rows) == 1 + 200
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    search = subprocess.run([sys.executable, str(ROOT / "search.py"), "--run", str(demo["run"]), "--audio",
                             str(demo["data"] / "evaluation"), "-k", "3", "a loud high whistle"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert search.returncode == 0, search.stderr[-2000:]
    assert ".wav" in search.stdout
