import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, make_work_dir, write_config

from models.core import build_model
from utils.base.config import load_config
from utils.base.errors import DataError, PipelineError
from utils.data.datasets import load_split
from utils.training.ddp import Dist
from utils.training.loop import TrainingError, plateau_reached, train
from utils.training.setup import setup_training

MAIN = str(ROOT / "main.py")


def run_main(conf_path, *extra, env=None, timeout=600):
    return subprocess.run([sys.executable, MAIN, "--conf", str(conf_path), *extra], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_epoch_run_writes_every_artifact(tiny_work, tmp_path):
    run_dir = tmp_path / "runs" / "r"
    conf_path = write_config(tmp_path / "c.yaml", tiny_work, run_dir)
    proc = run_main(conf_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    n_pairs = 12 * 5
    assert records[-1]["step"] == 2 * -(-n_pairs // 8)
    for r in records:
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"])
        assert set(r["val_t2a"]) == {"mAP@10", "R@1", "R@5", "R@10"}
    for name in ["config.yaml", "run_info.json", "curves.png", "checkpoints/last.pt", "checkpoints/best.pt"]:
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and "torch" in info["versions"] and info["git_commit"]
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert last["state"]["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng"} <= set(last)
    best = torch.load(run_dir / "checkpoints/best.pt", weights_only=True)
    assert best["epoch"] == max(records, key=lambda r: r["val_t2a"]["mAP@10"])["epoch"]
    assert "epoch   2" in proc.stdout
    # Rerunning a finished run does nothing.
    again = run_main(conf_path)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_resume_after_kill_gives_same_steps_and_weights(tiny_work, tmp_path):
    extra = {"train": {"epochs": 4, "batch_size": 8, "num_workers": 0, "eval_batch_size": 16, "log_every": 1,
                       "device": "cpu", "early_stop": {"enabled": False}}}
    ref_dir = tmp_path / "runs" / "ref"
    ref = run_main(write_config(tmp_path / "ref.yaml", tiny_work, ref_dir, **extra))
    assert ref.returncode == 0, ref.stderr[-2000:]

    run_dir = tmp_path / "runs" / "killed"
    conf_path = write_config(tmp_path / "k.yaml", tiny_work, run_dir, **extra)
    proc = subprocess.Popen([sys.executable, MAIN, "--conf", str(conf_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-training, after 2 epochs were checkpointed
    proc.wait()
    done_before = len(read_metrics(run_dir))
    assert 2 <= done_before < 4, "the kill should land before the run finished"

    resumed = run_main(conf_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    a, b = read_metrics(ref_dir), read_metrics(run_dir)
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    assert b[-1]["step"] == a[-1]["step"]
    # CPU, no workers: the resumed run continues bit-for-bit (same batches, same dropout masks).
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-5)
    wa = torch.load(ref_dir / "checkpoints/last.pt", weights_only=True)["model"]
    wb = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_missing_features_fail_before_training(tiny_work, tmp_path):
    (tiny_work / "validation_audio_logmels.hdf5").unlink()
    proc = run_main(write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r"))
    assert proc.returncode == 2
    assert "validation_audio_logmels.hdf5" in proc.stderr and "02_audio_logmel.py" in proc.stderr
    assert not (tmp_path / "runs" / "r" / "checkpoints").exists()


def test_missing_embeddings_fail_before_training(tiny_work, tmp_path):
    (tiny_work / "sbert_embeds.hdf5").unlink()
    proc = run_main(write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r"))
    assert proc.returncode == 2 and "sbert_embeds.hdf5" in proc.stderr and "03_sbert_embeddings.py" in proc.stderr


def test_fid_without_features_is_named(tiny_work, tmp_path):
    import h5py

    with h5py.File(tiny_work / "development_audio_logmels.hdf5", "a") as f:
        del f["dev_0003"]
    conf = load_config(write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r"))
    with pytest.raises(DataError, match="dev_0003"):
        load_split(conf, "development")


def test_embeddings_from_another_caption_table_are_rejected(tiny_work, tmp_path):
    other = make_work_dir(tmp_path / "other", {"development": 12, "validation": 6}, seed=1)
    text = (other / "development_text.csv").read_text().replace("caption 1 of clip 0", "a different caption")
    (tiny_work / "development_text.csv").write_text(text)
    conf = load_config(write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r"))
    with pytest.raises(DataError, match="03_sbert_embeddings"):
        load_split(conf, "development")


def test_nan_loss_names_step_and_batch(tiny_work, tmp_path, monkeypatch):
    conf = load_config(write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r"))
    import utils.training.loop as tu

    real = tu.info_nce
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(tu, "info_nce", poisoned)
    with pytest.raises(TrainingError, match=r"optimizer step 3 \(epoch 1, batch 2\).*tids \['dev_"):
        train(conf)


def test_non_finite_validation_stops_training_and_keeps_best(tiny_work, tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "r"
    conf = load_config(write_config(tmp_path / "c.yaml", tiny_work, run_dir, train={
        "epochs": 3, "batch_size": 8, "num_workers": 0, "eval_batch_size": 16, "log_every": 2, "device": "cpu",
        "early_stop": {"enabled": False}}))
    import utils.training.loop as tu

    real = tu.embed_audio
    calls = {"n": 0}

    def diverged(*args, **kwargs):  # the second validation meets a model whose audio vectors are NaN
        calls["n"] += 1
        emb = real(*args, **kwargs)
        return emb * float("nan") if calls["n"] == 2 else emb

    monkeypatch.setattr(tu, "embed_audio", diverged)
    with pytest.raises(TrainingError, match=r"stopped in epoch 2: .*validation split 'validation'.*clip val_0000"
                                            r".*Kept: checkpoints/best.pt \(epoch 1"):
        train(conf)
    assert torch.load(run_dir / "checkpoints/best.pt", weights_only=True)["epoch"] == 1
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["state"]["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1]


def test_plateau_stopper():
    flat = [1.0] * 5 + [0.5] * 10
    assert not plateau_reached(flat[:12], std=0.001, num_results=10, grace_period=12)  # window not flat yet
    assert plateau_reached(flat, std=0.001, num_results=10, grace_period=12)
    assert not plateau_reached(flat, std=0.001, num_results=10, grace_period=60)
    assert not plateau_reached(list(np.linspace(1, 0, 15)), std=0.001, num_results=10, grace_period=5)


def test_early_stop_in_training(tiny_work, tmp_path):
    conf = load_config(write_config(
        tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r",
        train={"epochs": 6, "lr": 0.0, "batch_size": 8, "num_workers": 0, "device": "cpu", "log_every": 2,
               "early_stop": {"enabled": True, "std": 1.0, "num_results": 2, "grace_period": 3}}))
    state = train(conf)
    assert state.stopped_early and state.epoch == 3


def test_batch_size_must_split_over_processes(tiny_work, tmp_path):
    conf = load_config(write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r"))
    conf.train.batch_size = 9
    with pytest.raises(PipelineError, match="divisible"):
        setup_training(conf, Dist(rank=0, world=2))


def test_text_dim_follows_the_embeddings(tmp_path):
    work = make_work_dir(tmp_path / "w", {"development": 4, "validation": 2}, dim=384)
    conf = load_config(write_config(tmp_path / "c.yaml", work, tmp_path / "runs" / "r"))
    data = load_split(conf, "development")
    model = build_model(conf, data.text_embeds.shape[1])
    assert model.text_enc.fc.in_features == 384 and model.text_enc.fc.out_features == 300
    a, t = model(torch.randn(3, 80, 64), torch.from_numpy(data.text_embeds[:3]))
    assert a.shape == t.shape == (3, 300)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3))


def test_finetuned_text_encoder_trains_end_to_end(tiny_work, tmp_path):
    """Beyond the baseline: fine-tune the packaged all-MiniLM-L6-v2 instead of using frozen vectors."""
    (tiny_work / "sbert_embeds.hdf5").unlink()  # raw captions are used; no stage-3 file is needed
    conf = load_config(write_config(
        tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "ft",
        model={"audio_enc": {"width": 0.125, "init": "random"},
               "text_enc": {"name": "SentenceTransformerEncoder", "finetune_lr": 1e-4, "max_seq_length": 16}},
        text={"model": "all-MiniLM-L6-v2", "device": "cpu"},
        train={"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 3, "num_workers": 0, "device": "cpu",
               "log_every": 1, "early_stop": {"enabled": False}}))
    from utils.text.sbert import load_sbert, resolve_model_path

    before = {k: v.clone() for k, v in load_sbert(resolve_model_path("all-MiniLM-L6-v2"), "cpu").state_dict().items()}
    state = train(conf)
    assert state.step == 3 and len(state.history) == 1
    assert np.isfinite(state.history[0]["val_loss"])
    ckpt = torch.load(tmp_path / "runs" / "ft" / "checkpoints" / "last.pt", weights_only=True)
    after = {k[len("text_enc.sbert."):]: v for k, v in ckpt["model"].items() if k.startswith("text_enc.sbert.")}
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert len(after) == len(before) and changed, "the transformer's weights should be updated"
    groups = ckpt["optimizer"]["param_groups"]
    assert sorted(g["lr"] for g in groups) == [1e-4, 1e-3]


@pytest.mark.parametrize("masked", [False, True])
def test_masked_pooling_in_training_is_an_option_off_by_default(tiny_work, tmp_path, monkeypatch, masked):
    from models.audio_encoders import CNN14Encoder

    seen = []
    forward = CNN14Encoder.forward

    def recording(self, x, lengths=None):
        if self.training:
            seen.append(None if lengths is None else (lengths.tolist(), x.shape[1]))
        return forward(self, x, lengths)

    monkeypatch.setattr(CNN14Encoder, "forward", recording)
    train_keys = {"epochs": 1, "batch_size": 8, "num_workers": 0, "eval_batch_size": 16, "log_every": 1,
                  "device": "cpu", "max_steps_per_epoch": 2, "early_stop": {"enabled": False}}
    if masked:
        train_keys["masked_pooling"] = True
    train(load_config(write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r", train=train_keys)))
    assert len(seen) == 2
    if not masked:
        assert seen == [None, None]  # the baseline's zero-padded batches, padding in the pooling
    else:
        for lengths, padded in seen:  # each clip's own length, the batch padded to the longest
            assert len(lengths) == 8 and max(lengths) == padded and min(lengths) < padded
