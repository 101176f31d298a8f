"""Everything training needs before its first step: device, data, model, optimizer, and a resumed state.

:func:`setup_training` is what ``main.py`` trains with (through :func:`utils.training.loop.train`) and what
``benchmarks/bench_train.py`` times, so the benchmark cannot drift from training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from models.core import DualEncoderModel, build_model
from utils import runs
from utils.base import paths
from utils.base.config import Config
from utils.base.devices import amp_dtype, resolve_device, use_channels_last
from utils.base.errors import PipelineError
from utils.data.datasets import PairDataset, SplitData, collate_pairs
from utils.data.overlap import check_split_overlap
from utils.data.split_mix import load_splits
from utils.text.fingerprint import check_vector_provenance
from utils.training.ddp import Dist
from utils.training.resume import resume


@dataclass
class TrainData:
    """The training and validation splits, and how captions enter the model."""

    train: SplitData
    val: SplitData
    text_kind: str  # 'embedding' (frozen SBERT vectors) or 'text' (a fine-tuned text encoder)
    text_dim: int | None  # SBERT vector size (None for 'text')
    overlap: list[str] = field(default_factory=list)  # training clips also validated / evaluated on (allowed)
    text_fingerprint: str | None = None  # weights of the text model that made the vectors (utils.text.fingerprint)


@dataclass
class TrainSetup:
    """A model ready to train, with its optimizer, data and (possibly resumed) state."""

    conf: Config
    d: Dist
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = float32
    data: TrainData
    dataset: PairDataset  # the training pairs
    model: DualEncoderModel  # the bare model (state dicts, validation)
    train_model: torch.nn.Module  # what the training step calls: the model, wrapped in DDP and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    state: runs.TrainState
    resumed: bool  # True when the state came from checkpoints/last.pt

    @property
    def run_dir(self) -> Path:
        return self.conf.run_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_device(conf: Config, d: Dist) -> torch.device:
    """This rank's GPU under DDP on CUDA, else ``train.device`` resolved."""
    if d.enabled and torch.cuda.is_available() and conf.train.device != "cpu":
        return torch.device(f"cuda:{d.local_rank}")
    return resolve_device(conf.train.device)


def load_training_data(conf: Config) -> TrainData:
    """Both splits; every missing or inconsistent file is reported before any training starts, and training clips
    that are also validation or evaluation clips stop it (:func:`utils.data.overlap.check_split_overlap`)."""
    text_kind = "text" if conf.model.text_enc.name == "SentenceTransformerEncoder" else "embedding"
    need_embeds = text_kind == "embedding"
    train = load_splits(conf, conf.data.train_split, need_embeds, conf.train.in_memory)
    val = load_splits(conf, conf.data.val_split, need_embeds, conf.train.in_memory)
    text_dim = int(train.text_embeds.shape[1]) if need_embeds else None
    if need_embeds and val.text_embeds.shape[1] != text_dim:
        raise PipelineError("training and validation SBERT vectors differ in size; re-run stage 3")
    fingerprint = check_vector_provenance(paths.text_embeds(conf), conf.text.model) if need_embeds else None
    return TrainData(train, val, text_kind, text_dim, check_split_overlap(conf), fingerprint)


def build_optimizer(model: DualEncoderModel, conf: Config) -> torch.optim.Optimizer:
    """Adam over trainable parameters; a fine-tuned text transformer gets its own (smaller) lr."""
    backbone = set()
    if hasattr(model.text_enc, "backbone_parameters"):
        backbone = {id(p) for p in model.text_enc.backbone_parameters()}
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone]
    groups = [{"params": main, "lr": conf.train.lr}]
    tuned = [p for p in model.parameters() if p.requires_grad and id(p) in backbone]
    if tuned:
        groups.append({"params": tuned, "lr": conf.model.text_enc.finetune_lr})
    return torch.optim.Adam(groups, lr=conf.train.lr, weight_decay=conf.train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, conf: Config) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    s = conf.train.scheduler
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=s.factor, patience=s.patience, threshold=s.threshold,
        threshold_mode=s.threshold_mode, min_lr=s.min_lr)


def make_loader(dataset: PairDataset, conf: Config, d: Dist, epoch: int, device: torch.device) -> DataLoader:
    per_rank = conf.train.batch_size // d.world
    if d.enabled:
        sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True,
                                     seed=conf.train.seed, drop_last=False)
        sampler.set_epoch(epoch)
    else:
        gen = torch.Generator().manual_seed(conf.train.seed * 100_003 + epoch)  # same order after a resume
        sampler = RandomSampler(dataset, generator=gen)
    workers = conf.train.num_workers
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, collate_fn=collate_pairs,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=False, prefetch_factor=4 if workers > 0 else None)


def setup_training(conf: Config, d: Dist, restart: bool = False, data: TrainData | None = None) -> TrainSetup:
    """Device, seed, data (``data``, else :func:`load_training_data`), model, optimizer, scheduler, scaler,
    and the state of ``checkpoints/last.pt`` unless ``restart`` or there is none."""
    if conf.train.batch_size % d.world:
        raise PipelineError(f"train.batch_size ({conf.train.batch_size}) must be divisible by the number of "
                            f"processes ({d.world})")
    device = training_device(conf, d)
    dtype = amp_dtype(conf.train.amp, device)
    seed_everything(conf.train.seed + d.rank)
    data = data or load_training_data(conf)

    resuming = runs.checkpoint_file(conf.run_dir, "last").is_file() and not restart
    model = build_model(conf, data.text_dim, load_prior=not resuming).to(device)
    if use_channels_last(conf.train.channels_last, device):
        model.audio_enc.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, conf)
    scheduler = build_scheduler(optimizer, conf)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    state = runs.TrainState()
    if resuming:
        state = resume(conf.run_dir, conf, model, optimizer, scheduler, scaler, restore_rng=True, rank=d.rank,
                       world=d.world)

    ddp_model = model
    if d.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = torch.compile(ddp_model, dynamic=True) if conf.train.compile else ddp_model
    return TrainSetup(conf, d, device, dtype, data, PairDataset(data.train, data.text_kind), model, train_model,
                      optimizer, scheduler, scaler, state, resuming)
