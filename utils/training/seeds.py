"""Several seeds of one recipe, one run each (``main.py --seeds 0,1,2``).

Seed ``k`` trains the ordinary run ``<run.name>-seed<k>`` with ``train.seed = k``, one after the other in one
process (one process group under ``torchrun``). Each is resumable on its own, so rerunning the same command
after a kill skips the finished seeds, resumes the interrupted one and trains the rest.
"""

from __future__ import annotations

import dataclasses

from utils import runs
from utils.base.config import Config, ConfigError
from utils.base.config_checks import RANGES
from utils.training.ddp import close_distributed, init_distributed
from utils.training.loop import fit
from utils.training.setup import setup_training


def parse_seeds(text: str) -> list[int]:
    """``'0,1,2'`` -> ``[0, 1, 2]``; a :class:`ConfigError` for anything else (non-integers, repeats, range)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    allowed = RANGES["train.seed"]
    if not seeds or len(set(seeds)) != len(seeds) or not all(allowed.contains(s) for s in seeds):
        raise ConfigError(f"--seeds '{text}': give distinct integer seeds separated by commas (e.g. --seeds 0,1,2), "
                          f"each {allowed.describe()}")
    return seeds


def seed_name(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


def seed_configs(conf: Config, seeds: list[int]) -> list[Config]:
    """One config per seed: ``run.name = <run.name>-seed<k>`` and ``train.seed = k``."""
    return [dataclasses.replace(conf, run=dataclasses.replace(conf.run, name=seed_name(conf.run.name, k)),
                                train=dataclasses.replace(conf.train, seed=k)) for k in seeds]


def train_seeds(conf: Config, seeds: list[int], restart: bool = False) -> list[runs.TrainState]:
    """Train (or resume, or skip when finished) the run of every seed in turn; returns their final states."""
    d = init_distributed(conf.train.device)
    states = []
    try:
        for i, seed_conf in enumerate(seed_configs(conf, seeds)):
            if d.main:
                print(f"seed {seed_conf.train.seed} ({i + 1} of {len(seeds)}): {seed_conf.run_dir}")
            states.append(fit(setup_training(seed_conf, d, restart)))
    finally:
        close_distributed(d)
    return states
