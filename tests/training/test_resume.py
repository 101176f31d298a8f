"""Resume only what it can continue (utils/training/resume.py): settings that change what the finished epochs
mean are refused by name; train.epochs and the like may change; the lr schedule and plateau stop survive it;
run_info.json keeps one history entry per start or resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_work_dir, write_config

from utils.base.config import load_config
from utils.base.errors import PipelineError
from utils.training.loop import train

TRAIN = {"epochs": 2, "batch_size": 8, "num_workers": 0, "eval_batch_size": 16, "log_every": 2, "device": "cpu",
         # ReduceLROnPlateau that reduces after every epoch (no loss improves by 100), and a plateau stop at 3
         "scheduler": {"patience": 0, "threshold": 100.0, "factor": 0.5, "min_lr": 1.0e-6},
         "early_stop": {"enabled": True, "std": 1.0e3, "num_results": 3, "grace_period": 3}}


def conf_at(tmp_path, work, name, **train_keys):
    return load_config(write_config(tmp_path / f"{name}.yaml", work, tmp_path / "runs" / name,
                                    train={**TRAIN, **train_keys}))


def lrs(run_dir):
    return [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_scheduler_and_plateau_stop_survive_a_resume(tiny_work, tmp_path):
    ref = train(conf_at(tmp_path, tiny_work, "ref", epochs=6))
    assert ref.stopped_early and ref.epoch == 3  # the plateau stopper fired at its grace period
    ref_lrs = lrs(tmp_path / "runs" / "ref")
    assert ref_lrs == pytest.approx([1e-3, 1e-3 * 0.5, 1e-3 * 0.25])  # reduced after every epoch but the first

    train(conf_at(tmp_path, tiny_work, "cut", epochs=2))
    resumed = train(conf_at(tmp_path, tiny_work, "cut", epochs=6))  # train.epochs may change
    assert resumed.stopped_early and resumed.epoch == 3
    assert lrs(tmp_path / "runs" / "cut") == pytest.approx(ref_lrs)
    a = torch.load(tmp_path / "runs" / "ref" / "checkpoints" / "last.pt", weights_only=True)["scheduler"]
    b = torch.load(tmp_path / "runs" / "cut" / "checkpoints" / "last.pt", weights_only=True)["scheduler"]
    assert {k: a[k] for k in ("best", "num_bad_epochs", "last_epoch")} == \
        {k: b[k] for k in ("best", "num_bad_epochs", "last_epoch")}

    info = json.loads((tmp_path / "runs" / "cut" / "run_info.json").read_text())
    assert [(h["event"], h["after_epoch"]) for h in info["history"]] == [("start", 0), ("resume", 2)]
    assert info["history"][1]["config_changes"] == {"train.epochs": [2, 6]}
    assert info["event"] == "resume"  # the top level repeats the latest entry


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    work = make_work_dir(root / "work", {"development": 12, "validation": 6})
    run_dir = root / "runs" / "r"
    train(load_config(write_config(root / "c.yaml", work, run_dir, train={**TRAIN, "epochs": 1})))
    return root, work, run_dir


@pytest.mark.parametrize(("section", "key", "value"), [
    ("train", "lr", 0.01), ("train", "temperature", 0.1), ("train", "batch_size", 4), ("train", "seed", 1),
    ("train", "scheduler", {"factor": 0.2}), ("data", "train_split", "validation"), ("features", "hop_sec", 0.01),
])
def test_resume_refuses_settings_that_change_the_earlier_epochs(one_epoch_run, tmp_path, section, key, value):
    root, work, run_dir = one_epoch_run
    changed = {"train": {**TRAIN, "epochs": 3}}
    if isinstance(value, dict):
        changed["train"][key] = {**TRAIN[key], **value}
        key = f"{key}.{next(iter(value))}"
    else:
        changed.setdefault(section, {})[key] = value
    if section == "data":
        changed["data"].update(dataset_dir=str(work), splits=["development", "validation"],
                               eval_splits=["validation"], allow_overlap=True)
    conf = load_config(write_config(tmp_path / "d.yaml", work, run_dir, **changed))
    with pytest.raises(PipelineError, match=rf"cannot resume .*{section}.{key}=.*--restart"):
        train(conf)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] == 1  # untouched


def test_restart_trains_anew_with_new_settings(one_epoch_run, tmp_path):
    root, work, _ = one_epoch_run
    run_dir = tmp_path / "runs" / "r2"
    train(load_config(write_config(tmp_path / "a.yaml", work, run_dir, train={**TRAIN, "epochs": 1})))
    conf = load_config(write_config(tmp_path / "b.yaml", work, run_dir, train={**TRAIN, "epochs": 1, "lr": 0.01}))
    with pytest.raises(PipelineError, match="train.lr=0.001 .the config says 0.01"):
        train(conf)
    assert train(conf, restart=True).epoch == 1
    assert lrs(run_dir) == [0.01]
