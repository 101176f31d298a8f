"""Resuming a training run from ``checkpoints/last.pt``, and the checks that make a resume safe.

    state = resume(run_dir, conf, model, optimizer, scheduler, scaler, restore_rng=True)

A ``last.pt`` that is damaged, was trained with settings that change what its epochs mean (named in the
message: :func:`settings_differ`; ``train.epochs``, logging, workers, device and ``eval.*`` may change) or does not fit
the code is one :class:`~utils.base.errors.PipelineError` line with the ``--restart`` hint; a missing or damaged
``best.pt`` (a kill under older code, a disk error) is rebuilt from ``last.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path

from utils import runs
from utils.base.config import Config, ConfigError, from_dict, to_dict
from utils.base.config_diff import config_changes
from utils.base.errors import DataError, PipelineError, warn
from utils.base.fileio import read_torch_file

RESTART = "train from scratch with --restart"


def resume(run_dir: str | os.PathLike, conf: Config, model, optimizer, scheduler, scaler,
           restore_rng: bool, rank: int = 0, world: int = 1) -> runs.TrainState:
    """Load ``last.pt`` into the training objects (after checking it fits ``conf``); returns its state.

    ``restore_rng``: set this process's RNGs to those saved for ``rank`` (every rank's are saved; with another
    number of processes than ``world`` was, only rank 0 gets its own back, and the others keep their fresh seed).
    """
    path = runs.checkpoint_file(run_dir, "last")
    try:
        ckpt = read_torch_file(path, RESTART, RESTART)
    except DataError as err:
        raise PipelineError(f"cannot resume: {err}") from err
    if differ := settings_differ(ckpt.get("config"), to_dict(conf)):
        raise PipelineError(f"cannot resume from {path}: its epochs were trained with {differ}; restore that "
                            f"setting, choose another run.name, or {RESTART}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = runs.TrainState(**ckpt["state"])
        if restore_rng:
            ranks = ckpt.get("rng_ranks")
            if isinstance(ranks, list) and len(ranks) == world:
                runs.set_rng_state(ranks[rank])
            elif rank == 0:
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


# Settings a resume may change: they do not change what the finished epochs mean (how long to train, logging,
# speed and device knobs, where files are, evaluation). Every other key (data splits, features, text model, model,
# loss, temperature, lr and its schedule, the plateau stop, batch size, seed, steps per epoch) must stay.
RESUMABLE = ("train.epochs", "train.log_every", "train.wandb", "train.num_workers", "train.device", "train.amp",
             "train.channels_last", "train.compile", "train.in_memory", "train.eval_batch_size", "eval.", "run.",
             "data.dataset_dir", "data.work_dir", "data.splits", "data.query_splits", "data.eval_splits",
             "data.relevance", "data.allow_overlap", "features.workers", "features.device", "text.batch_size",
             "text.device", "pretrained.", "model.audio_enc.init")


def resumable(key: str) -> bool:
    """Whether dotted config ``key`` may differ between a checkpoint and the config that resumes it."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def settings_differ(saved: dict | None, current: dict) -> str | None:
    """The settings that change what the earlier epochs mean in which a checkpoint's config ``saved`` differs
    from ``current``, as ``"key=old (the config says new), ..."``; None when they agree or there is no config."""
    if not isinstance(saved, dict):
        return None
    try:
        saved = to_dict(from_dict(saved))  # keys added since the checkpoint was written take their defaults
    except ConfigError:
        pass  # compared as saved
    diffs = [f"{key}={old!r} (the config says {new!r})"
             for key, (old, new) in config_changes(saved, current).items() if not resumable(key)]
    return ", ".join(diffs) or None


def checkpoint_readable(path: Path) -> bool:
    """Whether ``path`` exists and loads with ``weights_only=True``."""
    try:
        read_torch_file(path, "")
    except DataError:
        return False
    return True
