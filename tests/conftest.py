"""Shared fixtures: tiny Clotho-shaped work directories made on the fly (no real data, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from utils.base.tables import AUDIO_COLUMNS, TEXT_COLUMNS, write_rows
from utils.data.caption_vectors import update_text_embeddings
from utils.text.fingerprint import weights_fingerprint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


TEXT_MODEL = "text-model"  # the folder, inside a work dir, of the stand-in text model that "made" its vectors


def fake_text_model(root: Path, seed: int = 0) -> tuple[str, str]:
    """A folder with a weight file (random bytes) standing for the text model that made a work dir's vectors:
    training and scoring check its fingerprint. Returns ``(folder, fingerprint)``."""
    folder = Path(root) / TEXT_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        weights.write_bytes(np.random.default_rng(seed).bytes(256))
    return str(folder), weights_fingerprint(str(folder))


def make_work_dir(root: Path, clips: dict[str, int], dim: int = 32, frames=(70, 140), n_mels: int = 64,
                  seed: int = 0, captions_per_clip: int = 5) -> Path:
    """Tables, log-mel HDF5s and an SBERT-vector file for each split, with a learnable pairing:
    each clip has a random 'concept' that shapes both its features and its captions' vectors."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    model, fingerprint = fake_text_model(root)
    mel_basis = rng.normal(size=(8, n_mels)).astype(np.float32)
    text_basis = rng.normal(size=(8, dim)).astype(np.float32)
    for split, n in clips.items():
        text_rows, audio_rows = [], []
        embeds = []
        with h5py.File(root / f"{split}_audio_logmels.hdf5", "w") as h5:
            for c in range(n):
                fid = f"{split[:3]}_{c:04d}"
                concept = rng.normal(size=8).astype(np.float32)
                t = int(rng.integers(*frames))
                feats = rng.normal(size=(t, n_mels)).astype(np.float32) * 0.5 + concept @ mel_basis
                h5[fid] = feats.astype(np.float32)
                fname = f"clip {c}, take ({c % 3}).wav"
                audio_rows.append({"fid": fid, "fname": fname, "path": f"{split}/{fname}", "duration": "2.0",
                                   "sample_rate": 16000})
                for k in range(1, captions_per_clip + 1):
                    text_rows.append({"tid": f"{fid}_{k}", "fid": fid, "fname": fname,
                                      "raw_text": f"caption {k} of clip {c}", "text": f"caption {k} of clip {c}"})
                    embeds.append(concept @ text_basis + 0.3 * rng.normal(size=dim).astype(np.float32))
        write_rows(root / f"{split}_text.csv", text_rows, TEXT_COLUMNS)
        write_rows(root / f"{split}_audio.csv", audio_rows, AUDIO_COLUMNS)
        vectors = np.stack(embeds).astype(np.float32)
        update_text_embeddings(root / "sbert_embeds.hdf5", {split: text_rows}, model, lambda texts, v=vectors: v,
                               fingerprint)
    return root


def write_config(path: Path, work: Path, run_dir: Path, **sections) -> Path:
    """A small training config for the tiny work dir; ``sections`` override/extend the defaults."""
    conf = {
        "data": {"dataset_dir": str(work), "splits": ["development", "validation"],
                 "eval_splits": ["validation"]},
        "model": {"audio_enc": {"width": 0.125, "init": "random"}},
        "text": {"model": str(Path(work) / TEXT_MODEL)},  # made by make_work_dir
        "train": {"epochs": 2, "batch_size": 8, "num_workers": 0, "eval_batch_size": 16, "log_every": 2,
                  "device": "cpu", "early_stop": {"enabled": False}},
        "run": {"dir": str(run_dir.parent), "name": run_dir.name},
    }
    for section, values in sections.items():
        conf.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture
def tiny_work(tmp_path) -> Path:
    return make_work_dir(tmp_path / "work", {"development": 12, "validation": 6})
