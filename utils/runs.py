"""The run directory: its layout, the checkpoint dict, the run record, and loading a trained run.

Training (:mod:`utils.training.loop`) writes a run; scoring (:mod:`utils.evaluation.scoring`, :mod:`utils.evaluation.retrieval`) and
search (:mod:`utils.search.retriever`) read it. All of them go through this module, never through each other::

    <run>/config.yaml               the resolved config (utils.base.config.to_dict)
    <run>/run_info.json             seed, git commit, versions, device, options, history (utils.run_record)
    <run>/metrics.jsonl             one JSON line per finished epoch (exactly the epochs in last.pt)
    <run>/curves.png                loss and validation metrics per epoch
    <run>/checkpoints/last.pt       everything to resume: model, optimizer, scheduler, scaler, state, RNG
    <run>/checkpoints/best.pt       model, config, text_dim, epoch and validation metrics of the best epoch
    <run>/eval/<split>_...          postprocessing outputs (EVAL_FILES below)
    <run>/search_index/             search.py's cached folder indexes
    <run>/ensemble.json             only in an ensemble (01_xmodal_scores.py --ensemble): its member runs
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from models.core import DualEncoderModel, build_model
from utils.base.config import Config, from_dict, to_dict
from utils.base.devices import amp_dtype, resolve_device
from utils.base.errors import DataError, PipelineError, warn
from utils.base.fileio import read_torch_file, save_torch_file, write_text_atomic
from utils.base.text_files import load_yaml_mapping

CHECKPOINTS = ("best", "last")


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


RUN_FILES = {  # kind -> path inside the run directory
    "config": "config.yaml", "run_info": "run_info.json", "metrics": "metrics.jsonl", "curves": "curves.png",
    "checkpoints": "checkpoints", "search_index": "search_index", "eval": "eval", "ensemble": "ensemble.json",
}
EVAL_FILES = {  # kind -> file name after "<split>" inside <run>/eval/
    "scores": "_xmodal_scores.hdf5", "metrics": "_metrics.json", "submission": ".t2a_submission.csv",
    "ranks": "_ranks.csv", "ranks_plot": "_ranks.png",
}


def run_file(run_dir: str | os.PathLike, kind: str) -> Path:
    """``<run_dir>/<RUN_FILES[kind]>``, e.g. ``run_file(run, "config")`` -> ``<run>/config.yaml``."""
    return Path(run_dir) / RUN_FILES[kind]


def eval_file(run_dir: str | os.PathLike, split: str, kind: str) -> Path:
    """``<run_dir>/eval/<split><EVAL_FILES[kind]>``, e.g. ``eval_file(run, "evaluation", "scores")``."""
    return run_file(run_dir, "eval") / f"{split}{EVAL_FILES[kind]}"


def config_file(run_dir: str | os.PathLike) -> Path:
    return run_file(run_dir, "config")


def checkpoint_file(run_dir: str | os.PathLike, checkpoint: str) -> Path:
    """``<run_dir>/checkpoints/<checkpoint>.pt`` (whether or not it exists)."""
    return run_file(run_dir, "checkpoints") / f"{checkpoint}.pt"


# --------------------------------------------------------------------------------------------
# Training state and the checkpoint dict
# --------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_map: float = -1.0
    best_epoch: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


def rng_state() -> dict:
    """Every RNG's state as tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it
    back without an allow-list."""
    version_, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version_, list(internal), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version_, internal, gauss = state["python"]
    random.setstate((version_, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def last_checkpoint(model, optimizer, scheduler, scaler, state: TrainState, conf: Config,
                    text_dim: int | None) -> dict:
    """``last.pt``: everything :func:`utils.training.resume.resume` needs, as tensors and plain values."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "state": state.__dict__,
        "rng": rng_state(),
        "config": to_dict(conf),
        "text_dim": text_dim,
    }


def best_checkpoint(last: dict, epoch: int, val: dict) -> dict:
    """``best.pt``: the model of ``last`` with its config, text size, epoch and validation metrics."""
    return {"model": last["model"], "config": last["config"], "text_dim": last["text_dim"], "epoch": epoch, "val": val,
            "text_fingerprint": last.get("text_fingerprint")}


def save_checkpoint(ckpt: dict, run_dir: str | os.PathLike, checkpoint: str) -> Path:
    """Write ``checkpoints/<checkpoint>.pt`` atomically."""
    return save_torch_file(ckpt, checkpoint_file(run_dir, checkpoint))


def checkpoint_path(run_dir: str | os.PathLike, checkpoint: str = "best") -> Path:
    """``<run_dir>/checkpoints/<checkpoint>.pt``; raises :class:`PipelineError` when it is missing."""
    if checkpoint not in CHECKPOINTS:
        raise PipelineError(f"checkpoint must be one of {list(CHECKPOINTS)}, got '{checkpoint}'")
    run_dir = Path(run_dir)
    path = checkpoint_file(run_dir, checkpoint)
    if not path.is_file() and ensemble_members(run_dir):
        raise PipelineError(f"{run_dir} is an ensemble ({run_file(run_dir, 'ensemble')}), not a trained run: score it "
                            "with postprocessing/01_xmodal_scores.py --ensemble MEMBER ... --out DIR")
    if not path.is_file():
        where = "is not a directory" if not run_dir.is_dir() else f"has no checkpoints/{checkpoint}.pt"
        raise PipelineError(
            f"no checkpoints/{checkpoint}.pt in {run_dir} ({run_dir} {where}): train first with "
            f"python main.py --conf CONF --set run.dir={run_dir.parent} --set run.name={run_dir.name}"
        )
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``main.py`` (``weights_only=True``); :class:`DataError` when it is not one."""
    ckpt = read_torch_file(path, "train first with python main.py",
                           "train again or use the other checkpoint (--checkpoint best|last)")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DataError(f"{path} is not a checkpoint written by main.py (no 'model' state dict)")
    return ckpt


def append_metrics(run_dir: Path, record: dict) -> None:
    """Add one epoch's line to ``metrics.jsonl`` (flushed to disk)."""
    with open(run_file(run_dir, "metrics"), "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def rewrite_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl = exactly the epochs in the checkpoint (drops lines of an epoch lost to a kill)."""
    write_text_atomic(run_file(run_dir, "metrics"), "".join(json.dumps(h) + "\n" for h in history))


def load_run_config(run_dir: str | os.PathLike) -> Config:
    """The resolved config saved in a run directory."""
    path = config_file(run_dir)
    if not path.is_file():
        raise PipelineError(f"{path} not found: is {run_dir} a run directory made by main.py?")
    return from_dict(load_yaml_mapping(path, "run config", "restore it, or delete it to use the checkpoint's copy"))


def write_ensemble_record(out: Path, members: list[Path], checkpoint: str, conf: Config) -> None:
    """An ensemble's ``ensemble.json`` (members as paths relative to ``out``, the checkpoint, when) and its
    ``config.yaml`` (``conf``, the first member's settings, named after ``out``)."""
    record = {"members": [os.path.relpath(Path(m).resolve(), Path(out).resolve()) for m in members],
              "checkpoint": checkpoint, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_text_atomic(run_file(out, "ensemble"), json.dumps(record, indent=2) + "\n")
    named = dict(to_dict(conf), run={"dir": str(Path(out).parent), "name": Path(out).name})
    write_text_atomic(config_file(out), yaml.safe_dump(named, sort_keys=False))


def ensemble_members(run_dir: str | os.PathLike) -> list[Path] | None:
    """The member runs of an ensemble directory, or None when ``run_dir`` is not one."""
    path = run_file(run_dir, "ensemble")
    if not path.is_file():
        return None
    try:
        members = json.loads(path.read_text(encoding="utf-8"))["members"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not an ensemble record ({err}); re-run 01_xmodal_scores.py --ensemble") from err
    return [(Path(run_dir) / m).resolve() for m in members]


# --------------------------------------------------------------------------------------------
# Loading a trained run
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A trained model with the config it was trained with."""

    model: DualEncoderModel  # in eval mode, on ``device``
    conf: Config  # the run's resolved config (config.yaml, else the checkpoint's copy)
    run_dir: Path
    checkpoint: str  # 'best' or 'last'
    checkpoint_file: Path
    text_dim: int | None  # SBERT vector size the text projection expects (None for a fine-tuned text model)
    epoch: int | None
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype (eval.amp), None = float32 (the default)
    text_fingerprint: str | None = None  # weights of the text model whose vectors it was trained on (if recorded)


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "auto") -> LoadedRun:
    """Load ``<run_dir>/config.yaml`` and ``checkpoints/<checkpoint>.pt`` into an eval-mode model.

    Raises :class:`PipelineError` naming the file when the run has no checkpoint, or when the checkpoint
    does not fit the config (e.g. another width or text model).
    """
    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(path)
    if config_file(run_dir).is_file():
        try:
            conf = load_run_config(run_dir)
        except PipelineError as err:
            if not isinstance(ckpt.get("config"), dict):
                raise
            warn(f"{err}; using the config saved in {path} instead")
            conf = from_dict(ckpt["config"])
    elif isinstance(ckpt.get("config"), dict):
        conf = from_dict(ckpt["config"])
    else:
        raise PipelineError(f"{run_dir} has neither config.yaml nor a config in {path}")
    dev = resolve_device(device)
    text_dim = ckpt.get("text_dim")
    try:
        model = build_model(conf, text_dim, load_prior=False)
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError) as err:
        raise PipelineError(
            f"{path} does not fit {config_file(run_dir)} ({str(err).splitlines()[0][:300]}); "
            "was config.yaml edited after training?"
        ) from err
    model.to(dev).eval()
    epoch = ckpt.get("epoch", (ckpt.get("state") or {}).get("epoch"))
    return LoadedRun(model, conf, run_dir, checkpoint, path, text_dim, epoch, dev, amp_dtype(conf.eval.amp, dev),
                     ckpt.get("text_fingerprint"))
