"""Everything training needs before its first step: device, data, model, optimizer, and a resumed state.

:func:`setup_training` is what ``main.py`` trains with (through :func:`utils.training.loop.train`) and what
``benchmarks/bench_train.py`` times, so the benchmark cannot drift from training.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from models.core import DualEncoderModel, build_model
from models.text_encoders import text_input_kind
from utils import runs
from utils.base import paths
from utils.base.config import Config
from utils.base.devices import amp_dtype, resolve_device, use_channels_last
from utils.base.errors import PipelineError
from utils.data.augment import TrainAugment
from utils.data.datasets import PairCollate, PairDataset, SplitData
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
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.LambdaLR  # train.schedule
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
    text_kind = text_input_kind(conf.model.text_enc.name)
    need_embeds = text_kind == "embedding"
    train = load_splits(conf, conf.data.train_split, need_embeds, conf.train.in_memory)
    val = load_splits(conf, conf.data.val_split, need_embeds, conf.train.in_memory)
    text_dim = int(train.text_embeds.shape[1]) if need_embeds else None
    if need_embeds and val.text_embeds.shape[1] != text_dim:
        raise PipelineError("training and validation SBERT vectors differ in size; re-run stage 3")
    fingerprint = check_vector_provenance(paths.text_embeds(conf), conf.text.model) if need_embeds else None
    return TrainData(train, val, text_kind, text_dim, check_split_overlap(conf), fingerprint)


def _trainable_ids(module: torch.nn.Module, method: str = "backbone_parameters") -> set[int]:
    return {id(p) for p in getattr(module, method)() if p.requires_grad} if hasattr(module, method) else set()


def build_optimizer(model: DualEncoderModel, conf: Config) -> torch.optim.Optimizer:
    """Adam (or AdamW, ``train.optimizer``) over trainable parameters. A pretrained text body gets
    ``model.text_enc.finetune_lr``, a pretrained audio body ``model.audio_enc.finetune_lr`` (0 = train.lr);
    a learnable temperature gets no weight decay."""
    text_body = _trainable_ids(model.text_enc)
    audio_lr = conf.model.audio_enc.finetune_lr
    audio_body = _trainable_ids(model.audio_enc) if audio_lr > 0 else set()
    temperature = {id(model.log_temperature)} if hasattr(model, "log_temperature") else set()
    special = text_body | audio_body | temperature
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in special], "lr": conf.train.lr}]
    for ids, group in ((text_body, {"lr": conf.model.text_enc.finetune_lr}), (audio_body, {"lr": audio_lr}),
                       (temperature, {"lr": conf.train.lr, "weight_decay": 0.0})):
        if ids:
            groups.append({"params": [p for p in params if id(p) in ids], **group})
    optimizer = torch.optim.AdamW if conf.train.optimizer == "adamw" else torch.optim.Adam
    return optimizer(groups, lr=conf.train.lr, weight_decay=conf.train.weight_decay)


def cosine_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """lr multiplier of optimizer step ``step`` (0-based): linear warm-up ``(step + 1) / warmup_steps``, then a
    cosine from 1 down to ``floor`` at the last step ``total_steps - 1`` (and ``floor`` after it)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(n_pairs: int, conf: Config, d: Dist) -> int:
    """Optimizer steps in one epoch: this rank's share of ``n_pairs`` in batches, capped by max_steps_per_epoch."""
    per_rank = conf.train.batch_size // d.world
    steps = math.ceil(math.ceil(n_pairs / d.world) / per_rank)
    cap = conf.train.max_steps_per_epoch
    return min(steps, cap) if cap > 0 else steps


def build_scheduler(optimizer: torch.optim.Optimizer, conf: Config, epoch_steps: int = 1):
    """``train.schedule``: ReduceLROnPlateau (stepped per epoch on the validation loss), or cosine: a
    LambdaLR of :func:`cosine_factor`, stepped after every optimizer step (``epoch_steps`` per epoch)."""
    t = conf.train
    if t.schedule == "cosine":
        warmup, total = round(t.warmup_epochs * epoch_steps), t.epochs * epoch_steps
        floor = t.lr_min / t.lr if t.lr > 0 else 0.0
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, warmup, total, floor))
    s = t.scheduler
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
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, collate_fn=PairCollate(dataset.prepare),
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
    dataset = PairDataset(data.train, data.text_kind, TrainAugment.from_config(conf),
                          getattr(model.audio_enc, "extractor", None))
    scheduler = build_scheduler(optimizer, conf, steps_per_epoch(len(dataset), conf, d))
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
    return TrainSetup(conf, d, device, dtype, data, dataset, model, train_model,
                      optimizer, scheduler, scaler, state, resuming)
