"""The Hugging Face encoders through the real scripts on generated demo data: stage 2's waveform feature set
beside the log-mels, training (tiny random AST / CLAP audio tower, tiny random BERT, all loaded by local path),
resume, scoring and search; and the learning check: a tiny AST trained for a few epochs ranks above chance."""

import hashlib
import json
import os
import subprocess
import sys

import h5py
import pytest
import yaml
from conftest import ROOT
from hf_models import tiny_ast, tiny_bert, tiny_clap_audio
from test_end_to_end import run_script, write_demo_conf

pytestmark = pytest.mark.slow

N_CLIPS = 100  # 60 / 20 / 20 clips of 1-1.5 s


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Stages 0-3 on the demo data, with both feature sets (log-mels, then waveforms at 16 kHz)."""
    tmp = tmp_path_factory.mktemp("hf_demo")
    conf_path = write_demo_conf(tmp, batch_size=32)
    run_script("preprocessing/00_make_demo_dataset.py", conf_path, "--clips", str(N_CLIPS), "--duration-range",
               "1", "1.5")
    for script in ("01_clotho_dataset.py", "02_audio_logmel.py", "03_sbert_embeddings.py"):
        run_script(f"preprocessing/{script}", conf_path)
    data = tmp / "demo"
    logmel = {s: digest(data / f"{s}_audio_logmels.hdf5") for s in ("development", "validation", "evaluation")}
    wave = run_script("preprocessing/02_audio_logmel.py", conf_path, "--set", "features.kind=waveform")
    again = run_script("preprocessing/02_audio_logmel.py", conf_path, "--set", "features.kind=waveform")
    return {"tmp": tmp, "conf": conf_path, "data": data, "logmel": logmel, "logs": (wave.stdout, again.stdout)}


def test_waveforms_sit_beside_the_logmels(demo):
    data = demo["data"]
    for split, n in [("development", 60), ("validation", 20), ("evaluation", 20)]:
        assert digest(data / f"{split}_audio_logmels.hdf5") == demo["logmel"][split]  # untouched
        with h5py.File(data / f"{split}_audio_waveforms_16000hz.hdf5", "r") as h5:
            assert len(h5) == n and h5.attrs["kind"] == "waveform" and h5.attrs["sample_rate"] == 16000
            # 1-1.5 s at 16 kHz, whatever rate the file had (the demo writes some clips at 22.05 / 44.1 kHz)
            assert all(h5[k].shape[1] == 1 and 16000 <= h5[k].shape[0] <= 24100 for k in h5)
    assert "up to date" in demo["logs"][1]


def train_conf(demo, name, model, **train):
    conf = yaml.safe_load(demo["conf"].read_text())
    conf["features"].update(kind="waveform", sample_rate=16000)
    conf["model"].update(model)
    conf["train"].update(train)
    conf["run"]["name"] = name
    path = demo["tmp"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def test_hf_audio_and_text_train_resume_score_and_search(demo):
    clap, bert = tiny_clap_audio(demo["tmp"] / "clap"), tiny_bert(demo["tmp"] / "bert")
    model = {"audio_enc": {"name": "HFAudioEncoder", "pretrained": str(clap), "out_dim": 16},
             "text_enc": {"name": "HFTextEncoder", "pretrained": str(bert), "out_dim": 16, "pooling": "mean",
                          "normalize_captions": True}}
    extra = dict(max_steps_per_epoch=3, schedule="cosine", warmup_epochs=1, optimizer="adamw", weight_decay=0.01,
                 temperature_trainable=True, segment_sec=1.0, num_workers=1)
    one = run_script("main.py", train_conf(demo, "hf", model, epochs=1, **extra))
    assert "epoch   1" in one.stdout
    conf = train_conf(demo, "hf", model, epochs=2, **extra)
    two = run_script("main.py", conf)
    assert "resuming" in two.stdout and "epoch   2" in two.stdout
    run = demo["tmp"] / "runs" / "hf"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6] and "temperature" in records[-1]
    info = json.loads((run / "run_info.json").read_text())
    assert "HFAudioEncoder" in info["options"]["audio_encoder"] and info["options"]["segment_sec"] == 1.0
    run_script("postprocessing/01_xmodal_scores.py", conf, "--run", str(run))
    run_script("postprocessing/02_xmodal_retrieval.py", conf, "--run", str(run))
    metrics = json.loads((run / "eval" / "evaluation_metrics.json").read_text())
    assert 0 <= metrics["t2a"]["mAP@10"] <= 1
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    search = subprocess.run([sys.executable, str(ROOT / "search.py"), "--run", str(run), "--audio",
                             str(demo["data"] / "evaluation"), "-k", "3", "--json", "a bell rings"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert search.returncode == 0, search.stderr[-2000:]
    results = json.loads(search.stdout)[0]["results"]
    assert len(results) == 3 and all(r["path"].endswith(".wav") for r in results)


def test_tiny_ast_learns_on_the_demo(demo):
    ast = tiny_ast(demo["tmp"] / "ast", max_length=160)  # 1.6 s windows: a demo clip is one window
    model = {"audio_enc": {"name": "HFAudioEncoder", "pretrained": str(ast), "out_dim": 64},
             "text_enc": {"name": "SentBERTBaseEncoder", "out_dim": 64}}
    run_script("main.py", train_conf(demo, "ast", model, epochs=4, lr=1e-3))
    records = [json.loads(x) for x in (demo["tmp"] / "runs/ast/metrics.jsonl").read_text().splitlines()]
    chance = 1 / 20  # 20 validation clips
    best_r1 = max(r["val_t2a"]["R@1"] for r in records)
    curve = [(r["epoch"], round(r["train_loss"], 3), r["val_t2a"]["R@1"]) for r in records]
    assert best_r1 >= 3 * chance, f"best validation R@1 {best_r1:.3f} < 3x chance ({3 * chance:.3f}): {curve}"
    assert records[-1]["train_loss"] < records[0]["train_loss"], curve
