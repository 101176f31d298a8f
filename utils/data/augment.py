"""Training-time augmentation of one clip's features: a random crop (``train.segment_sec``) and SpecAugment
(``train.specaugment``). Only the training dataset applies it (:class:`utils.data.datasets.PairDataset` with
``augment``); validation, scoring and search always see the whole, unmasked clip.

    aug = TrainAugment.from_config(conf)   # None when every option is off
    x = aug(x)                             # (time, channels) -> (time', channels), time' <= time

Randomness comes from torch's global generator, which DataLoader seeds per worker from the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.base.config import Config, SpecAugmentConf


def random_crop(x: torch.Tensor, length: int) -> torch.Tensor:
    """A random ``length``-step segment of ``x`` ``(time, channels)``; ``x`` itself when not longer."""
    if length <= 0 or x.shape[0] <= length:
        return x
    start = int(torch.randint(0, x.shape[0] - length + 1, ()))
    return x[start:start + length]


def _mask(x: torch.Tensor, dim: int, count: int, width: int, fill: torch.Tensor) -> None:
    """``count`` masks of uniform width ``0..width`` along ``dim`` of ``x`` (in place), set to ``fill``."""
    size = x.shape[dim]
    for _ in range(count):
        w = int(torch.randint(0, min(width, size) + 1, ()))
        if w == 0:
            continue
        start = int(torch.randint(0, size - w + 1, ()))
        x.narrow(dim, start, w).copy_(fill.expand_as(x.narrow(dim, start, w)))


def spec_augment(x: torch.Tensor, conf: SpecAugmentConf) -> torch.Tensor:
    """Time and frequency masks on log-mels ``(time, mels)``, filled with the clip's mean (a copy)."""
    x = x.clone()
    fill = x.mean()
    _mask(x, 0, conf.time_masks, conf.time_width, fill)
    _mask(x, 1, conf.freq_masks, conf.freq_width, fill)
    return x


@dataclass
class TrainAugment:
    """Crop to ``segment`` steps (0 = off), then SpecAugment (``spec`` None = off)."""

    segment: int
    spec: SpecAugmentConf | None

    @classmethod
    def from_config(cls, conf: Config) -> TrainAugment | None:
        """The training augmentation ``conf.train`` asks for; None when every option is off (the baseline)."""
        segment = round(conf.train.segment_sec * conf.features.frames_per_sec)
        s = conf.train.specaugment
        spec = s if (s.time_masks and s.time_width) or (s.freq_masks and s.freq_width) else None
        return cls(segment, spec) if segment or spec else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = random_crop(x, self.segment)  # (time', channels)
        return spec_augment(x, self.spec) if self.spec is not None else x
