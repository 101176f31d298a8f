"""Item 1 of issue 20: training crops, SpecAugment, AdamW, the cosine schedule, gradient clipping and a
learnable temperature; every option off by default (conf.yaml builds exactly the 2023 baseline)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, write_config

from models.audio_encoders import CNN14Encoder
from models.core import build_model
from models.text_encoders import SentBERTBaseEncoder
from utils.base.config import ConfigError, load_config
from utils.data.augment import TrainAugment
from utils.training.ddp import Dist
from utils.training.loop import fit, train, validate
from utils.training.setup import build_optimizer, build_scheduler, setup_training


def conf_for(tmp_path, work, name="r", **train):
    base = {"epochs": 2, "batch_size": 8, "num_workers": 0, "eval_batch_size": 16, "log_every": 2,
            "device": "cpu", "early_stop": {"enabled": False}}
    base.update(train)
    return load_config(write_config(tmp_path / f"{name}.yaml", work, tmp_path / "runs" / name, train=base))


def test_conf_yaml_builds_exactly_the_baseline_model_and_optimizer():
    conf = load_config(ROOT / "conf.yaml")
    model = build_model(conf, text_dim=768, load_prior=False)
    # Built independently, as the baseline is: CNN14 (width 1, dropout) + linear 768 -> 300, nothing else.
    ref = {**{f"audio_enc.{k}": v.shape for k, v in CNN14Encoder(300, 1.0, 64, dropout=True).state_dict().items()},
           **{f"text_enc.{k}": v.shape for k, v in SentBERTBaseEncoder(768, 300).state_dict().items()}}
    assert {k: v.shape for k, v in model.state_dict().items()} == ref
    assert model.temperature(conf.train.temperature) == 0.07
    opt = build_optimizer(model, conf)
    assert type(opt) is torch.optim.Adam
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[0]["weight_decay"] == 0.0
    assert sum(p.numel() for p in opt.param_groups[0]["params"]) == sum(p.numel() for p in model.parameters())
    sched = build_scheduler(opt, conf, 120)
    assert type(sched) is torch.optim.lr_scheduler.ReduceLROnPlateau
    assert (sched.factor, sched.patience, sched.threshold, sched.threshold_mode) == (0.1, 5, 0.005, "abs")
    assert TrainAugment.from_config(conf) is None
    assert conf.train.grad_clip == 0 and conf.train.segment_sec == 0 and conf.features.kind == "logmel"


def test_crops_change_training_items_never_evaluation(tiny_work, tmp_path):
    conf = conf_for(tmp_path, tiny_work, segment_sec=0.6)  # 0.6 s / 20 ms hop = 30 frames
    s = setup_training(conf, Dist())
    store = s.data.train.features
    starts = set()
    for i in range(10):
        x = s.dataset[i][0].numpy()
        full = store[s.data.train.fids[s.data.train.text_to_audio[i]]]
        assert x.shape == (30, 64) and full.shape[0] >= 70
        match = [t for t in range(full.shape[0] - 29) if np.array_equal(full[t:t + 30], x)]
        assert len(match) == 1  # a contiguous segment of the stored clip
        starts.add(match[0])
    assert len(starts) > 3  # random, not always the start
    seen = []
    real = s.model.audio_enc.forward
    # Frames that are not padding (the features are never exactly zero): each clip's whole length.
    def counting(a, lengths=None):  # validation passes each clip's length (the exact protocol)
        seen.extend((a.abs().sum(-1) != 0).sum(1).tolist())
        return real(a, lengths)

    s.model.audio_enc.forward = counting
    validate(s.model, s.data.val, conf, s.device, None, s.d)
    assert sorted(seen) == sorted(s.data.val.features.n_frames(f) for f in s.data.val.fids)


def test_specaugment_masks_training_items_only(tiny_work, tmp_path):
    conf = conf_for(tmp_path, tiny_work, specaugment={"time_masks": 2, "time_width": 10, "freq_masks": 2,
                                                      "freq_width": 8})
    s = setup_training(conf, Dist())
    changed = 0
    for i in range(20):
        x = s.dataset[i][0].numpy()
        full = store_clip(s, i)
        assert x.shape == full.shape
        diff = x != full
        if diff.any():
            changed += 1
            rows, cols = np.flatnonzero(diff.all(axis=1)), np.flatnonzero(diff.all(axis=0))
            masked = np.zeros_like(diff)
            masked[rows] = True
            masked[:, cols] = True
            assert (diff <= masked).all()  # only whole frames and whole bands change
            assert len(cols) <= 16 and len(rows) <= 20
            assert np.allclose(x[diff], full.mean())  # filled with the clip's mean
    assert changed >= 15
    plain = conf_for(tmp_path, tiny_work, name="plain")
    p = setup_training(plain, Dist())
    for i in range(5):
        assert np.array_equal(p.dataset[i][0].numpy(), store_clip(p, i))


def store_clip(s, i):
    data = s.data.train
    return np.asarray(data.features[data.fids[data.text_to_audio[i]]])


def test_specaugment_refused_on_waveforms(tiny_work, tmp_path):
    with pytest.raises(ConfigError, match="specaugment"):
        load_config(write_config(tmp_path / "c.yaml", tiny_work, tmp_path / "runs" / "r",
                                 features={"kind": "waveform"},
                                 model={"audio_enc": {"name": "HFAudioEncoder", "pretrained": "x"}},
                                 train={"specaugment": {"time_masks": 1, "time_width": 4}}))


def test_cosine_schedule_warms_up_then_decays_to_lr_min(tiny_work, tmp_path):
    conf = conf_for(tmp_path, tiny_work, epochs=3, lr=1e-3, schedule="cosine", warmup_epochs=1, lr_min=1e-5,
                    optimizer="adamw", weight_decay=0.01)
    s = setup_training(conf, Dist())
    assert type(s.optimizer) is torch.optim.AdamW and s.optimizer.param_groups[0]["weight_decay"] == 0.01
    per_epoch = 8  # 60 pairs / batch 8
    lrs = []
    for _ in range(3 * per_epoch):
        lrs.append(s.optimizer.param_groups[0]["lr"])
        s.optimizer.step()
        s.scheduler.step()
    w, t = per_epoch, 3 * per_epoch
    for i, lr in enumerate(lrs):
        expect = 1e-3 * (i + 1) / w if i < w else \
            1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (i - w) / (t - 1 - w)))
        assert lr == pytest.approx(expect, rel=1e-9)
    assert lrs[w - 1] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert (np.diff(lrs[w:]) < 0).all()  # strictly down after the warm-up


def test_training_steps_cosine_per_step_and_names_options(tiny_work, tmp_path):
    conf = conf_for(tmp_path, tiny_work, epochs=2, lr=1e-3, schedule="cosine", warmup_epochs=1, lr_min=1e-5,
                    max_steps_per_epoch=2)
    train(conf)
    run_dir = tmp_path / "runs" / "r"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # After epoch 1 (2 steps): the lr of step 2, the first after warm-up: 1e-3. After epoch 2: step 4 = past the end.
    assert records[0]["lr"] == pytest.approx(1e-3) and records[1]["lr"] == pytest.approx(1e-5)
    options = json.loads((run_dir / "run_info.json").read_text())["options"]
    assert options["schedule"].startswith("cosine") and options["optimizer"].startswith("adam ")


def test_grad_clip_bounds_the_gradient_norm(tiny_work, tmp_path):
    norms = {}
    for clip in (0.0, 0.05):
        conf = conf_for(tmp_path, tiny_work, name=f"g{clip}", epochs=1, grad_clip=clip, max_steps_per_epoch=3)
        s = setup_training(conf, Dist())
        seen = []
        params = [p for g in s.optimizer.param_groups for p in g["params"]]
        s.optimizer.register_step_pre_hook(
            lambda *_, params=params, seen=seen: seen.append(float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])))))
        fit(s)
        norms[clip] = seen
    assert max(norms[0.0]) > 0.1  # unclipped gradients are larger than the clip
    assert max(norms[0.05]) <= 0.05 * (1 + 1e-4)


def test_learnable_temperature_trains_saves_and_resumes(tiny_work, tmp_path):
    extra = {"epochs": 3, "lr": 1e-2, "temperature": 0.2, "temperature_trainable": True, "max_steps_per_epoch": 2}
    ref = conf_for(tmp_path, tiny_work, name="ref", **extra)
    train(ref)
    rec = [json.loads(x) for x in (tmp_path / "runs/ref/metrics.jsonl").read_text().splitlines()]
    temps = [r["temperature"] for r in rec]
    assert all(abs(t - 0.2) > 5e-4 for t in temps) and min(np.abs(np.diff(temps))) > 5e-4  # it moves every epoch
    last = torch.load(tmp_path / "runs/ref/checkpoints/last.pt", weights_only=True)
    assert math.exp(float(last["model"]["log_temperature"])) == pytest.approx(temps[-1], rel=1e-6)
    # Two epochs, then resumed for the third: the same temperature as the uninterrupted run.
    part = conf_for(tmp_path, tiny_work, name="part", **{**extra, "epochs": 2})
    train(part)
    resumed = conf_for(tmp_path, tiny_work, name="part", **extra)
    state = train(resumed)
    assert state.epoch == 3
    rec2 = [json.loads(x) for x in (tmp_path / "runs/part/metrics.jsonl").read_text().splitlines()]
    assert [r["temperature"] for r in rec2] == pytest.approx(temps, rel=1e-5)
    fixed = conf_for(tmp_path, tiny_work, name="fixed")
    assert "log_temperature" not in build_model(fixed, 32, load_prior=False).state_dict()
