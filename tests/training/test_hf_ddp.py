"""HFAudioEncoder (a tiny random AST, loaded by path) under 2-process DistributedDataParallel on gloo, with the
options of the modern recipe on: the steps of one process, one record per epoch, a learnable temperature."""

import json
import subprocess
import sys

import pytest
import torch
from builders import free_port
from conftest import ROOT, make_work_dir, write_config
from hf_models import add_waveforms, tiny_ast


def test_hf_audio_encoder_trains_under_torchrun_gloo(tmp_path):
    work = make_work_dir(tmp_path / "work", {"development": 12, "validation": 6})
    add_waveforms(work)
    ast = tiny_ast(tmp_path / "ast")
    run_dir = tmp_path / "runs" / "ddp"
    conf_path = write_config(
        tmp_path / "c.yaml", work, run_dir, features={"kind": "waveform"},
        model={"audio_enc": {"name": "HFAudioEncoder", "pretrained": str(ast), "out_dim": 16},
               "text_enc": {"out_dim": 16}},
        train={"epochs": 2, "batch_size": 8, "num_workers": 0, "eval_batch_size": 4, "log_every": 2,
               "device": "cpu", "early_stop": {"enabled": False}, "schedule": "cosine", "warmup_epochs": 1,
               "optimizer": "adamw", "weight_decay": 0.01, "grad_clip": 1.0, "temperature_trainable": True,
               "segment_sec": 1.5, "max_steps_per_epoch": 3, "lr": 1e-2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "main.py"), "--conf", str(conf_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 6
    assert "2 processes" in proc.stdout
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert abs(float(last["model"]["log_temperature"].exp()) - 0.07) > 1e-4  # it learned
    assert float(last["model"]["log_temperature"].exp()) == pytest.approx(records[-1]["temperature"], rel=1e-6)
