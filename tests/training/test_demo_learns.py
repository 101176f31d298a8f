"""The demo recipe learns: conf_demo.yaml on a tiny generated demo dataset, stages 1-4 and a short training run
in-process, then text->audio R@1 on the training clips well above chance (1 / clips).

At this scale (36 training clips) unseen attribute combinations cannot be learnt, so the check is that the
recipe fits its own caption-clip pairs; tests/pipeline/test_end_to_end.py checks held-out clips at the demo's size."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT

from utils.base.config import load_config
from utils.demo.dataset import make_demo_dataset
from utils.pretrained.cnn14_transfer import write_stand_in_checkpoint
from utils.training.loop import train

N_CLIPS = 60  # 36 / 12 / 12
EPOCHS = 5  # training-clip R@1 0.69 (25x chance) after 5 epochs, 0.39 after 4 (seed 0, no dropout)
DURATIONS = (1.5, 2.5)  # seconds: short clips keep this test fast


def load_script(path: str):
    spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage(path: str, conf, *argv: str) -> None:
    module = load_script(path)
    module.main(module.parser.parse_args(["--conf", str(ROOT / "conf_demo.yaml"), *argv]), conf)


def test_demo_recipe_learns(tmp_path):
    data, runs = tmp_path / "demo", tmp_path / "runs"
    conf = load_config(ROOT / "conf_demo.yaml", [
        f"data.dataset_dir={data}", f"run.dir={runs}", f"train.epochs={EPOCHS}", "features.workers=1",
        "data.val_split=development", "data.allow_overlap=true",  # a learning check on the training clips
        f"pretrained.panns_checkpoint={data / 'stand_in.pth'}", f"pretrained.cnn14_weights={data / 'cnn14.pth'}"])
    counts = make_demo_dataset(data, n_clips=N_CLIPS, seed=0, progress=False, duration_range=DURATIONS)
    write_stand_in_checkpoint(conf.pretrained.panns_checkpoint, conf.model.audio_enc.width, seed=conf.train.seed)
    run_stage("preprocessing/01_clotho_dataset.py", conf)
    run_stage("preprocessing/02_audio_logmel.py", conf, "--no-progress")
    run_stage("preprocessing/03_sbert_embeddings.py", conf)
    run_stage("preprocessing/04_cnn14_transfer.py", conf)
    train(conf)

    records = [json.loads(line) for line in (runs / "demo" / "metrics.jsonl").read_text().splitlines()]
    chance = 1 / counts["development"]
    best = max(r["val_t2a"]["R@1"] for r in records)
    assert best >= 5 * chance, f"best training-clip R@1 {best:.3f} < 5x chance ({5 * chance:.3f})"
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.3
