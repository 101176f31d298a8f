"""Allowed ranges of every numeric setting, checked when a config is loaded (before any work starts).

    range_problem(conf)   # None, or a one-line message naming the first key out of range and its allowed range

A setting outside its range would otherwise fail late (a traceback after an epoch of training) or, worse,
"succeed" with a degenerate result (``features.hop_sec=0`` used to replace a good HDF5 with an empty one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

INF = math.inf


@dataclass(frozen=True)
class Range:
    """``low <= value <= high``; ``open_low`` / ``open_high`` make that end strict."""

    low: float = -INF
    high: float = INF
    open_low: bool = False
    open_high: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        lo = "" if self.low == -INF else f"{_num(self.low)} {'<' if self.open_low else '<='} "
        hi = "" if self.high == INF else f" {'<' if self.open_high else '<='} {_num(self.high)}"
        return f"{lo}value{hi}" if lo or hi else "a finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def positive() -> Range:
    return Range(0, open_low=True)


def at_least(low: float) -> Range:
    return Range(low)


# Dotted key -> allowed range. Every int / float setting of utils.base.config is listed here (a test checks that).
RANGES: dict[str, Range] = {
    "features.n_mels": at_least(1),
    "features.win_sec": Range(0, 10, open_low=True),  # seconds
    "features.hop_sec": Range(0, 10, open_low=True),  # seconds
    "features.workers": at_least(0),  # 0 = all cores
    "features.sample_rate": Range(1000, 192000),  # Hz
    "text.batch_size": at_least(1),
    "model.audio_enc.out_dim": at_least(1),
    "model.audio_enc.width": Range(0, 16, open_low=True),
    "model.audio_enc.window_sec": Range(0, 600),  # seconds; 0 = the model's own window
    "model.audio_enc.finetune_lr": at_least(0),  # 0 = train.lr
    "model.text_enc.out_dim": at_least(1),
    "model.text_enc.finetune_lr": at_least(0),
    "model.text_enc.max_seq_length": at_least(1),
    "train.epochs": at_least(1),
    "train.batch_size": at_least(2),  # a contrastive loss needs negatives
    "train.lr": at_least(0),  # 0 freezes the weights (tests, sanity checks)
    "train.weight_decay": at_least(0),
    "train.warmup_epochs": at_least(0),
    "train.lr_min": at_least(0),
    "train.grad_clip": at_least(0),  # 0 = off
    "train.segment_sec": Range(0, 600),  # seconds; 0 = whole clips
    "train.specaugment.time_masks": Range(0, 100),
    "train.specaugment.time_width": at_least(0),  # frames
    "train.specaugment.freq_masks": Range(0, 100),
    "train.specaugment.freq_width": at_least(0),  # mel bands
    "train.temperature": positive(),
    "train.seed": Range(0, 2 ** 32 - 1),  # numpy seeds are 32-bit
    "train.scheduler.factor": Range(0, 1, open_low=True, open_high=True),  # the lr must shrink
    "train.scheduler.patience": at_least(0),
    "train.scheduler.threshold": at_least(0),
    "train.scheduler.min_lr": at_least(0),
    "train.early_stop.std": at_least(0),
    "train.early_stop.num_results": at_least(1),
    "train.early_stop.grace_period": at_least(0),
    "train.num_workers": at_least(0),
    "train.eval_batch_size": at_least(1),
    "train.log_every": at_least(1),
    "train.max_steps_per_epoch": at_least(0),  # 0 = full epochs
    "eval.batch_size": at_least(1),
    "eval.top_k": at_least(1),
    "eval.map_k": at_least(1),
    "eval.bootstrap_resamples": at_least(10),
    "eval.bootstrap_seed": Range(0, 2 ** 63 - 1),
}


def _get(conf: Any, dotted: str) -> Any:
    node = conf
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def range_problem(conf: Any) -> str | None:
    """The first setting of :data:`RANGES` outside its range, as a one-line message; None when all fit."""
    for key, allowed in RANGES.items():
        value = _get(conf, key)
        if not allowed.contains(float(value)):
            return f"config key '{key}' = {value!r} is out of range: allowed {allowed.describe()}"
    if conf.features.hop_sec > conf.features.win_sec:
        return (f"config key 'features.hop_sec' ({conf.features.hop_sec}) must not exceed features.win_sec "
                f"({conf.features.win_sec}): frames would skip audio")
    return None
