"""Resuming a training run from ``checkpoints/last.pt``, and the checks that make a resume safe.

    state = resume(run_dir, conf, model, optimizer, scheduler, scaler, restore_rng=True)

A ``last.pt`` that is damaged, was trained with other model settings (named in the message) or does not fit
the code is one :class:`~utils.base.errors.PipelineError` line with the ``--restart`` hint; a missing or damaged
``best.pt`` (a kill under older code, a disk error) is rebuilt from ``last.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from utils import runs
from utils.base.config import Config, ConfigError, from_dict, to_dict
from utils.base.errors import DataError, PipelineError, warn
from utils.base.fileio import read_torch_file

# Settings the model's tensors depend on: a change makes the checkpoint's state dict not fit.
SHAPE_SECTIONS = ("model", "features.n_mels", "features.kind", "features.sample_rate", "train.temperature_trainable")
RESTART = "train from scratch with --restart"


def resume(run_dir: str | os.PathLike, conf: Config, model, optimizer, scheduler, scaler,
           restore_rng: bool) -> runs.TrainState:
    """Load ``last.pt`` into the training objects (after checking it fits ``conf``); returns its state."""
    path = runs.checkpoint_file(run_dir, "last")
    try:
        ckpt = read_torch_file(path, RESTART, RESTART)
    except DataError as err:
        raise PipelineError(f"cannot resume: {err}") from err
    if differ := model_settings_differ(ckpt.get("config"), to_dict(conf)):
        raise PipelineError(f"cannot resume from {path}: it was trained with {differ}; restore that setting, "
                            f"choose another run.name, or {RESTART}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = runs.TrainState(**ckpt["state"])
        if restore_rng:
            runs.set_rng_state(ckpt["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"cannot resume from {path}: it does not fit this config or code "
                            f"({str(err).splitlines()[0][:200]}); {RESTART}") from err
    return state


def repair_best(run_dir: str | os.PathLike, state: runs.TrainState) -> None:
    """A run whose ``best.pt`` is missing or damaged gets ``last.pt``'s model as ``best.pt``, and that epoch's
    score as the best, so that later epochs replace it only if they are better."""
    best = runs.checkpoint_file(run_dir, "best")
    if state.epoch == 0 or checkpoint_readable(best):
        return
    if state.best_epoch != state.epoch:
        warn(f"{best} is missing or damaged; saving the model of epoch {state.epoch} (last.pt) as best.pt "
             f"instead of epoch {state.best_epoch}'s")
        state.best_map = state.history[-1]["val_t2a"]["mAP@10"] if state.history else -1.0
        state.best_epoch = state.epoch
    last = runs.load_checkpoint(runs.checkpoint_file(run_dir, "last"))
    val = state.history[-1] if state.history else {}
    runs.save_checkpoint(runs.best_checkpoint(last, state.epoch, val), run_dir, "best")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _pick(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def model_settings_differ(saved: dict | None, current: dict) -> str | None:
    """The model settings in which a checkpoint's config ``saved`` differs from ``current``, as
    ``"key=old (the config says new), ..."``; None when they agree or the checkpoint has no config."""
    if not isinstance(saved, dict):
        return None
    try:
        saved = to_dict(from_dict(saved))  # keys added since the checkpoint was written take their defaults
    except ConfigError:
        pass  # compared as saved
    diffs = []
    for section in SHAPE_SECTIONS:
        old = _flatten(_pick(saved, section), section)
        new = _flatten(_pick(current, section), section)
        for key in sorted(set(old) | set(new)):
            if key.endswith(("finetune_lr", ".init")):
                continue  # a learning rate, or how weights start: neither changes the tensors
            if old.get(key) != new.get(key):
                diffs.append(f"{key}={old.get(key)!r} (the config says {new.get(key)!r})")
    return ", ".join(diffs) or None


def checkpoint_readable(path: Path) -> bool:
    """Whether ``path`` exists and loads with ``weights_only=True``."""
    try:
        read_torch_file(path, "")
    except DataError:
        return False
    return True
