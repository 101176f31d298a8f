"""The run record: ``config.yaml`` and ``run_info.json`` of a run that starts or resumes (seed, git commit,
library versions, command, device, the training options, and a history of every start and resume)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import yaml

from utils.base.config import Config, to_dict
from utils.base.config_diff import config_changes
from utils.base.fileio import write_text_atomic
from utils.runs import config_file, run_file

VERSIONED_LIBRARIES = ("torch", "numpy", "h5py", "librosa", "soundfile", "sentence-transformers", "transformers")


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict:
    """Versions of the libraries that shape the numbers (read from package metadata, no imports)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def training_options(conf: Config) -> dict:
    """The encoders and every training option beyond the 2023 baseline's recipe, as ``run_info.json`` names them."""
    t, a, x = conf.train, conf.model.audio_enc, conf.model.text_enc
    return {
        "audio_encoder": a.name + (f" ({a.pretrained}, {a.pooling} pooling)" if a.pretrained else ""),
        "text_encoder": x.name + (f" ({x.pretrained}, {x.pooling} pooling)" if x.pretrained else ""),
        "features": conf.features.kind + (f" at {conf.features.sample_rate} Hz" if conf.features.kind == "waveform"
                                          else ""),
        "optimizer": f"{t.optimizer} (lr {t.lr}, weight decay {t.weight_decay})",
        "schedule": (f"cosine (warm-up {t.warmup_epochs} epochs, to {t.lr_min})" if t.schedule == "cosine"
                     else "plateau (ReduceLROnPlateau)"),
        "grad_clip": t.grad_clip or "off",
        "segment_sec": t.segment_sec or "whole clips",
        "specaugment": to_dict(t.specaugment),
        "temperature": f"{t.temperature} ({'learnable' if t.temperature_trainable else 'fixed'})",
    }


def write_run_info(run_dir: Path, conf: Config, device: torch.device, world_size: int, epoch: int = 0,
                   notes: dict | None = None) -> None:
    """``config.yaml`` and ``run_info.json`` of a run that starts (``epoch`` 0) or resumes after ``epoch``.

    ``run_info.json`` keeps a ``history``, one entry per start or resume (its commit, command, device, the
    config keys changed since the previous ``config.yaml``, and ``notes`` such as an allowed split overlap);
    the top-level fields repeat the latest entry.
    """
    path = run_file(run_dir, "run_info")
    history = _read_history(path)
    old_conf = _read_old_config(config_file(run_dir)) if history else {}
    new_conf = to_dict(conf)
    info = {
        "event": "resume" if epoch else "start",
        "after_epoch": epoch,
        "seed": conf.train.seed,
        "git_commit": git_commit(),
        "versions": library_versions(),
        "command": " ".join(sys.argv),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "world_size": world_size,
        "options": training_options(conf),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config_changes": {k: [old, new] for k, (old, new) in config_changes(old_conf, new_conf).items()},
        **(notes or {}),
    }
    write_text_atomic(config_file(run_dir), yaml.safe_dump(new_conf, sort_keys=False))
    write_text_atomic(path, json.dumps({**info, "history": history + [info]}, indent=2) + "\n")


def _read_history(path: Path) -> list[dict]:
    """The ``history`` of an existing ``run_info.json`` (a file of an older version: its one record)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    return list(old.get("history") or [{k: v for k, v in old.items() if k != "history"}])


def _read_old_config(path: Path) -> dict:
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return old if isinstance(old, dict) else {}
