"""The training loop behind ``main.py``: one pass of training per epoch, then validation
(loss + text->audio metrics), checkpoints, resume, plateau stop, and DistributedDataParallel.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from models.audio_encoders import read_torch_file
from models.core import DualEncoderModel, build_model
from utils.config import Config, from_dict, to_dict
from utils.criterion_utils import info_nce
from utils.data_utils import PairDataset, SplitData, collate_pairs, load_split
from utils.errors import PipelineError
from utils.inference import amp_dtype, autocast, embed_audio, embed_text, resolve_device, use_channels_last
from utils.metrics import xmodal_metrics


class TrainingError(PipelineError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and batch."""


# --------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_spec: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank)


def gather_batch(local: torch.Tensor, d: Dist) -> torch.Tensor:
    """All ranks' rows, concatenated; gradients flow only into this rank's slice."""
    if not d.enabled:
        return local
    parts = [torch.empty_like(local) for _ in range(d.world)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[d.rank] = local
    return torch.cat(parts)


def gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------
# Reproducibility and run records
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state as tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it
    back without an allow-list."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict:
    """Versions of the libraries that shape the numbers (read from package metadata, no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("torch", "numpy", "h5py", "librosa", "soundfile", "sentence-transformers", "transformers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def write_run_info(run_dir: Path, conf: Config, device: torch.device, d: Dist) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(conf), sort_keys=False), encoding="utf-8")
    info = {
        "seed": conf.train.seed,
        "git_commit": git_commit(),
        "versions": library_versions(),
        "command": " ".join(sys.argv),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "world_size": d.world,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temp file, then rename: a kill never leaves a truncated checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise PipelineError(f"{path} not found: is {run_dir} a run directory made by main.py?")
    return from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------------------------
# Plateau stop (Ray Tune's TrialPlateauStopper, without Ray)
# --------------------------------------------------------------------------------------------


def plateau_reached(history: list[float], std: float, num_results: int, grace_period: int) -> bool:
    """True once ``grace_period`` results exist and the last ``num_results`` vary by less than ``std``."""
    if len(history) < max(grace_period, num_results):
        return False
    return float(np.std(history[-num_results:])) < std


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="InfoNCE loss", title="Loss")
    ax1.legend()
    for key in ("mAP@10", "R@1", "R@10"):
        ax2.plot(epochs, [h["val_t2a"][key] for h in history], "o-", label=f"t2a {key}")
    ax2.set(xlabel="epoch", ylabel="score", title="Validation text→audio", ylim=(0, None))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_map: float = -1.0
    best_epoch: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


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


def build_scheduler(optimizer, conf: Config):
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


def _describe_batch(batch, data: SplitData) -> str:
    idx = batch.index.tolist()
    tids = [data.text_rows[i]["tid"] for i in idx[:4]]
    return f"batch of {len(idx)} pairs starting with tids {tids}"


def train_one_epoch(model, ddp_model, loader, optimizer, scaler, conf: Config, state: TrainState, data: SplitData,
                    device: torch.device, dtype, d: Dist) -> float:
    """One pass over the training pairs; returns the mean training loss (averaged over ranks)."""
    model.train()
    ddp_model.train()
    total = torch.zeros((), device=device)
    recent: deque = deque(maxlen=max(conf.train.log_every, 1))  # (step, batch index, loss, description)
    n_steps = len(loader)
    if conf.train.max_steps_per_epoch > 0:
        n_steps = min(n_steps, conf.train.max_steps_per_epoch)
    bar = tqdm(total=n_steps, desc=f"epoch {state.epoch + 1}/{conf.train.epochs}", disable=not d.main,
               leave=False, dynamic_ncols=True)
    done = 0
    for b, batch in enumerate(loader):
        if b >= n_steps:
            break
        audio = batch.audio.to(device, non_blocking=True)
        text = batch.text.to(device, non_blocking=True) if isinstance(batch.text, torch.Tensor) else batch.text
        clip = batch.clip.to(device, non_blocking=True)
        with autocast(device, dtype):
            audio_emb, text_emb = ddp_model(audio, text)
        # Similarities and loss in float32, over the global batch of every rank.
        loss = info_nce(gather_batch(audio_emb.float(), d), gather_batch(text_emb.float(), d),
                        gather_batch(clip, d), conf.train.temperature)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * d.world).backward()  # DDP averages gradients; x world = gradient of the global loss
        scaler.step(optimizer)
        scaler.update()
        state.step += 1
        done += 1
        total += loss.detach()
        recent.append((state.step, b, loss.detach(), batch))
        if done % conf.train.log_every == 0 or done == n_steps:
            _check_finite(recent, data, state)
            if d.main:
                bar.set_postfix(loss=f"{total.item() / done:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        bar.update(1)
    bar.close()
    mean = total / max(done, 1)
    if d.enabled:
        dist.all_reduce(mean)
        mean /= d.world
    return float(mean)


def _check_finite(recent: deque, data: SplitData, state: TrainState) -> None:
    """One device sync every ``log_every`` steps; names the first step whose loss was not finite."""
    losses = torch.stack([r[2] for r in recent])
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        step, b, loss, batch = recent[int(bad[0])]
        raise TrainingError(
            f"non-finite loss ({float(loss)}) at optimizer step {step} (epoch {state.epoch + 1}, batch {b}): "
            f"{_describe_batch(batch, data)}. Check those clips' features, or lower train.lr / set train.amp=off."
        )


def _shard(n: int, d: Dist) -> list[int]:
    return list(range(d.rank, n, d.world))


@torch.no_grad()
def validate(model: DualEncoderModel, data: SplitData, conf: Config, device, dtype, d: Dist,
             progress: bool = False) -> dict:
    """Embed every validation clip and caption once, then the validation loss (fixed batches of
    ``train.batch_size`` pairs, as the baseline averages batch losses) and the text->audio / audio->text
    metrics. Under DDP each rank embeds a shard and the shards are gathered."""
    model.eval()
    clips = _shard(len(data.fids), d)
    audio_part = embed_audio(model, lambda k: data.features[data.fids[clips[k]]],
                             [data.features.n_frames(data.fids[c]) for c in clips],
                             conf.train.eval_batch_size, device, dtype, progress=progress and d.main,
                             desc="validate")
    texts = _shard(len(data.text_rows), d)
    text_input = data.text_embeds[texts] if data.text_embeds is not None else [data.texts[i] for i in texts]
    text_part = embed_text(model, text_input, conf.train.eval_batch_size, device, dtype)
    audio_emb = _assemble(gather_objects((clips, audio_part), d), len(data.fids))
    text_emb = _assemble(gather_objects((texts, text_part), d), len(data.text_rows))

    order = np.random.default_rng(conf.train.seed).permutation(len(data.text_rows))  # same batches every epoch
    t2a = torch.as_tensor(data.text_to_audio)
    losses = []
    for start in range(0, len(order), conf.train.batch_size):
        idx = torch.as_tensor(order[start:start + conf.train.batch_size])
        losses.append(float(info_nce(audio_emb[t2a[idx]], text_emb[idx], t2a[idx], conf.train.temperature)))
    scores = (text_emb @ audio_emb.t()).numpy()  # (n_texts, n_clips)
    metrics = xmodal_metrics(scores, data.text_to_audio)
    return {"val_loss": float(np.mean(losses)), "val_t2a": metrics["t2a"], "val_a2t": metrics["a2t"]}


def _assemble(parts: list, n: int) -> torch.Tensor:
    dim = next(p[1].shape[1] for p in parts if len(p[0]))
    out = torch.empty((n, dim))
    for idx, emb in parts:
        if len(idx):
            out[torch.as_tensor(idx)] = emb
    return out


def _checkpoint(model, optimizer, scheduler, scaler, state: TrainState, conf: Config, text_dim) -> dict:
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


def train(conf: Config, restart: bool = False) -> TrainState:
    """Train (or resume) the run ``conf.run.dir/conf.run.name``; returns the final state."""
    d = init_distributed(conf.train.device)
    try:
        return _train(conf, restart, d)
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(conf: Config, restart: bool, d: Dist) -> TrainState:
    if conf.train.batch_size % d.world:
        raise PipelineError(f"train.batch_size ({conf.train.batch_size}) must be divisible by the number of "
                            f"processes ({d.world})")
    device = torch.device(f"cuda:{d.local_rank}") if d.enabled and torch.cuda.is_available() and \
        conf.train.device != "cpu" else resolve_device(conf.train.device)
    dtype = amp_dtype(conf.train.amp, device)
    seed_everything(conf.train.seed + d.rank)
    run_dir = conf.run_dir
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"

    # Data first: every missing or inconsistent file is reported before any training starts.
    text_kind = "text" if conf.model.text_enc.name == "SentenceTransformerEncoder" else "embedding"
    need_embeds = text_kind == "embedding"
    train_data = load_split(conf, conf.data.train_split, need_embeds, conf.train.in_memory)
    val_data = load_split(conf, conf.data.val_split, need_embeds, conf.train.in_memory)
    text_dim = int(train_data.text_embeds.shape[1]) if need_embeds else None
    if need_embeds and val_data.text_embeds.shape[1] != text_dim:
        raise PipelineError("training and validation SBERT vectors differ in size; re-run stage 3")

    resuming = last_path.is_file() and not restart
    model = build_model(conf, text_dim, load_prior=not resuming).to(device)
    if use_channels_last(conf.train.channels_last, device):
        model.audio_enc.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, conf)
    scheduler = build_scheduler(optimizer, conf)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    state = TrainState()
    if resuming:
        ckpt = read_torch_file(last_path, "train again with --restart")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = TrainState(**ckpt["state"])
        if d.rank == 0:
            set_rng_state(ckpt["rng"])
        if d.main:
            print(f"resuming {run_dir} after epoch {state.epoch} (step {state.step})")
    if state.stopped_early or state.epoch >= conf.train.epochs:
        if d.main:
            print(f"{run_dir} already finished ({state.epoch} epochs); use --restart to train again")
        return state

    if d.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(run_dir, conf, device, d)
        _rewrite_metrics(run_dir / "metrics.jsonl", state.history)
    wandb_run = _maybe_wandb(conf, d)

    ddp_model = model
    if d.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = torch.compile(ddp_model, dynamic=True) if conf.train.compile else ddp_model
    dataset = PairDataset(train_data, text_kind)
    if d.main:
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"training on {device} ({d.world} process{'es' if d.enabled else ''}), amp={dtype}, "
              f"{len(dataset)} pairs / {len(train_data.fids)} clips, {n_params / 1e6:.1f}M trainable parameters")

    while state.epoch < conf.train.epochs:
        t0 = time.time()
        loader = make_loader(dataset, conf, d, state.epoch, device)
        train_loss = train_one_epoch(model, train_model, loader, optimizer, scaler, conf, state, train_data,
                                     device, dtype, d)
        t_train = time.time() - t0
        val = validate(model, val_data, conf, device, dtype, d)
        scheduler.step(val["val_loss"])
        state.epoch += 1
        record = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss, **val,
                  "lr": optimizer.param_groups[0]["lr"], "train_time_s": round(t_train, 2),
                  "epoch_time_s": round(time.time() - t0, 2)}
        state.history.append(record)
        improved = val["val_t2a"]["mAP@10"] > state.best_map
        if improved:
            state.best_map, state.best_epoch = val["val_t2a"]["mAP@10"], state.epoch
        e = conf.train.early_stop
        if e.enabled and plateau_reached([h["val_loss"] for h in state.history], e.std, e.num_results,
                                         e.grace_period):
            state.stopped_early = True
        if d.main:
            ckpt = _checkpoint(model, optimizer, scheduler, scaler, state, conf, text_dim)
            atomic_save(ckpt, last_path)
            if improved:
                atomic_save({"model": ckpt["model"], "config": ckpt["config"], "text_dim": text_dim,
                             "epoch": state.epoch, "val": val}, ckpt_dir / "best.pt")
            _append_jsonl(run_dir / "metrics.jsonl", record)
            plot_curves(state.history, run_dir / "curves.png")
            t2a = val["val_t2a"]
            print(f"epoch {state.epoch:3d} | train {train_loss:.4f} | val {val['val_loss']:.4f} | "
                  f"t2a mAP@10 {t2a['mAP@10']:.4f} R@1 {t2a['R@1']:.4f} R@10 {t2a['R@10']:.4f} | "
                  f"lr {record['lr']:.1e} | {record['epoch_time_s']:.1f}s" + ("  *best" if improved else ""))
            if wandb_run is not None:
                wandb_run.log({"epoch": state.epoch, "train_loss": train_loss, "val_loss": val["val_loss"],
                               **{f"val_t2a/{k}": v for k, v in val["val_t2a"].items()}, "lr": record["lr"]})
        if d.enabled:
            dist.barrier()
        if state.stopped_early:
            if d.main:
                print(f"validation loss plateaued: stopping after epoch {state.epoch}")
            break
    if d.main:
        print(f"done: best validation t2a mAP@10 {state.best_map:.4f} at epoch {state.best_epoch}; "
              f"checkpoints in {ckpt_dir}")
        if wandb_run is not None:
            wandb_run.finish()
    return state


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def _rewrite_metrics(path: Path, history: list[dict]) -> None:
    """metrics.jsonl = exactly the epochs in the checkpoint (drops lines of an epoch lost to a kill)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
    os.replace(tmp, path)


def _maybe_wandb(conf: Config, d: Dist):
    if not (conf.train.wandb and d.main):
        return None
    try:
        import wandb
    except ImportError:
        print("train.wandb is true but wandb is not installed; continuing without it (pip install wandb)")
        return None
    return wandb.init(project="audio-retrieval", name=conf.run.name, config=to_dict(conf),
                      dir=str(conf.run_dir), resume="allow")
