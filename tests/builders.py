"""Builders shared by tests of several stages: a tiny config and run directory, tone folders, the search CLI."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from conftest import ROOT, TEXT_MODEL

from models.core import build_model
from utils.base.config import Config, QuerySplitConf, to_dict

TEXT_DIM = 24  # size of the synthetic "SBERT" vectors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_conf(work: Path, run_dir: Path, text_model: str | None = None, out_dim: int = 16) -> Config:
    conf = Config()
    conf.data.dataset_dir = str(work)
    conf.data.splits = ["evaluation"]
    conf.data.eval_splits = ["evaluation"]
    conf.data.query_splits = {"test": QuerySplitConf()}
    conf.text.model = text_model or str(work.parent / TEXT_MODEL)  # write_split's stand-in model
    conf.model.audio_enc.width = 0.125
    conf.model.audio_enc.init = "random"
    conf.model.audio_enc.out_dim = out_dim
    conf.model.text_enc.out_dim = out_dim
    conf.train.device = "cpu"
    conf.run.dir, conf.run.name = str(run_dir.parent), run_dir.name
    return conf


def make_run_dir(run_dir: Path, conf: Config, text_dim: int = TEXT_DIM, seed: int = 0) -> Path:
    """A run directory as main.py leaves it: config.yaml and checkpoints/best.pt (random weights)."""
    torch.manual_seed(seed)
    model = build_model(conf, text_dim, load_prior=False)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode differs from identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": to_dict(conf), "text_dim": text_dim, "epoch": 3,
                "val": {}}, run_dir / "checkpoints" / "best.pt")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(conf), sort_keys=False), encoding="utf-8")
    return run_dir


def load_search():
    spec = importlib.util.spec_from_file_location("search_cli", ROOT / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tone(freq: float, sr: int, seconds: float = 1.5, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    y = 0.3 * np.sin(2 * np.pi * freq * t) + noise * np.random.default_rng(seed).normal(size=t.size)
    return y.astype(np.float32)


def write_folder(folder: Path) -> dict[str, Path]:
    """Five clips of distinct content, rates and formats, one in a subfolder."""
    (folder / "sub").mkdir(parents=True)
    clips = {
        "low.wav": (tone(150, 16000), 16000),
        "high.wav": (tone(3000, 22050), 22050),
        "noise.flac": (tone(500, 44100, noise=0.5, seed=1), 44100),
        "sub/chirp.wav": (tone(900, 16000, seconds=2.0) * np.linspace(0, 1, 32000, dtype=np.float32), 16000),
        "sub/mid.ogg": (tone(1200, 16000, noise=0.05, seed=2), 16000),
    }
    for rel, (y, sr) in clips.items():
        sf.write(folder / rel, y, sr)
    (folder / "notes.txt").write_text("not audio")
    return {rel: folder / rel for rel in clips}


def load_script(path: str):
    """Import a script by its path from the repository root (numbered file names are not module names)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
