"""The training loop behind ``main.py``: one pass of training per epoch, then validation
(loss + text->audio metrics), checkpoints, plateau stop, and DistributedDataParallel.

The setup before the first step (data, model, optimizer, resume) is :mod:`utils.training.setup`; the run
directory's files are :mod:`utils.runs`.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch
from tqdm import tqdm

from models.core import DualEncoderModel
from utils import run_record, runs
from utils.base.config import Config, to_dict
from utils.base.devices import amp_dtype, autocast
from utils.base.errors import PipelineError
from utils.base.fileio import ensure_writable, remove_stale_temps
from utils.base.plots import plot_curves
from utils.data.datasets import SplitData
from utils.evaluation.embedding import embed_audio, embed_text
from utils.evaluation.metrics import NonFiniteError, require_finite, xmodal_metrics
from utils.evaluation.scoring import check_embeddings
from utils.training.ddp import (
    Dist,
    barrier,
    broadcast_buffers,
    close_distributed,
    gather_batch,
    gather_objects,
    init_distributed,
    mean_over_ranks,
    shard,
)
from utils.training.infonce import info_nce
from utils.training.resume import repair_best
from utils.training.setup import TrainSetup, make_loader, setup_training


class TrainingError(PipelineError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and batch."""


def plateau_reached(history: list[float], std: float, num_results: int, grace_period: int) -> bool:
    """True once ``grace_period`` results exist and the last ``num_results`` vary by less than ``std``
    (Ray Tune's TrialPlateauStopper, without Ray)."""
    if len(history) < max(grace_period, num_results):
        return False
    return float(np.std(history[-num_results:])) < std


def _describe_batch(batch, data: SplitData) -> str:
    idx = batch.index.tolist()
    tids = [data.text_rows[i]["tid"] for i in idx[:4]]
    return f"batch of {len(idx)} pairs starting with tids {tids}"


def train_one_epoch(model, ddp_model, loader, optimizer, scaler, conf: Config, state: runs.TrainState,
                    data: SplitData, device: torch.device, dtype, d: Dist, step_scheduler=None) -> float:
    """One pass over the training pairs; returns the mean training loss (averaged over ranks).

    ``step_scheduler``: a per-step lr scheduler (``train.schedule: cosine``), stepped after every optimizer step.
    """
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
        masked = conf.train.masked_pooling or getattr(model.audio_enc, "takes_lengths", False)  # waveform encoders
        lengths = batch.lengths.to(device, non_blocking=True) if masked else None  # (B,)
        with autocast(device, dtype):
            audio_emb, text_emb = ddp_model(audio, text, lengths)  # lengths None: the baseline's padded batches
        # Similarities and loss in float32, over the global batch of every rank.
        loss = info_nce(gather_batch(audio_emb.float(), d), gather_batch(text_emb.float(), d),
                        gather_batch(clip, d), model.temperature(conf.train.temperature))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * d.world).backward()  # DDP averages gradients; x world = gradient of the global loss
        if conf.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), conf.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if step_scheduler is not None:
            step_scheduler.step()
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
    return float(mean_over_ranks(total / max(done, 1), d))


def _check_finite(recent: deque, data: SplitData, state: runs.TrainState) -> None:
    """One device sync every ``log_every`` steps; names the first step whose loss was not finite."""
    losses = torch.stack([r[2] for r in recent])
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        step, b, loss, batch = recent[int(bad[0])]
        raise TrainingError(
            f"non-finite loss ({float(loss)}) at optimizer step {step} (epoch {state.epoch + 1}, batch {b}): "
            f"{_describe_batch(batch, data)}. Check those clips' features, or lower train.lr / set train.amp=off."
        )


@torch.no_grad()
def validate(model: DualEncoderModel, data: SplitData, conf: Config, device, dtype, d: Dist,
             progress: bool = False) -> dict:
    """Embed every validation clip and caption once, then the validation loss (fixed batches of
    ``train.batch_size`` pairs, as the baseline averages batch losses) and the text->audio / audio->text
    metrics. Under DDP each rank embeds a shard and the shards are gathered."""
    model.eval()
    broadcast_buffers(model, d)  # every rank validates with the BatchNorm statistics that are saved (rank 0's)
    clips = shard(len(data.fids), d)
    audio_part = embed_audio(model, lambda k: data.features[data.fids[clips[k]]],
                             [data.features.n_frames(data.fids[c]) for c in clips],
                             conf.train.eval_batch_size, device, dtype, progress=progress and d.main,
                             desc="validate")
    texts = shard(len(data.text_rows), d)
    text_input = data.text_embeds[texts] if data.text_embeds is not None else [data.texts[i] for i in texts]
    text_part = embed_text(model, text_input, conf.train.eval_batch_size, device, dtype)
    audio_emb = _assemble(gather_objects((clips, audio_part), d), len(data.fids))
    text_emb = _assemble(gather_objects((texts, text_part), d), len(data.text_rows))
    where = f"validation split '{conf.data.val_split}'"  # the same on every rank: all stop together
    check_embeddings(where, audio_emb, data.fids, text_emb, [r["tid"] for r in data.text_rows])

    order = np.random.default_rng(conf.train.seed).permutation(len(data.text_rows))  # same batches every epoch
    t2a = torch.as_tensor(data.text_to_audio)
    losses = []
    temperature = float(model.temperature(conf.train.temperature))
    for start in range(0, len(order), conf.train.batch_size):
        idx = torch.as_tensor(order[start:start + conf.train.batch_size])
        losses.append(float(info_nce(audio_emb[t2a[idx]], text_emb[idx], t2a[idx], temperature)))
    require_finite(losses, f"the validation losses of {where}", row_kind="batch")
    scores = (text_emb @ audio_emb.t()).numpy()  # (n_texts, n_clips)
    require_finite(scores, f"the scores of {where}", [r["tid"] for r in data.text_rows], "caption", data.fids, "clip")
    metrics = xmodal_metrics(scores, data.text_to_audio)
    return {"val_loss": float(np.mean(losses)), "val_t2a": metrics["t2a"], "val_a2t": metrics["a2t"]}


def _assemble(parts: list, n: int) -> torch.Tensor:
    dim = next(p[1].shape[1] for p in parts if len(p[0]))
    out = torch.empty((n, dim))
    for idx, emb in parts:
        if len(idx):
            out[torch.as_tensor(idx)] = emb
    return out


def train(conf: Config, restart: bool = False) -> runs.TrainState:
    """Train (or resume) the run ``conf.run.dir/conf.run.name``; returns the final state."""
    d = init_distributed(conf.train.device)
    try:
        return fit(setup_training(conf, d, restart))
    finally:
        close_distributed(d)


def fit(s: TrainSetup) -> runs.TrainState:
    """Train ``s`` until ``train.epochs`` (or a plateau), writing checkpoints and records on the main rank."""
    conf, d, state = s.conf, s.d, s.state
    if s.resumed and d.main:
        repair_best(s.run_dir, state)
        print(f"resuming {s.run_dir} after epoch {state.epoch} (step {state.step})")
    if state.stopped_early or state.epoch >= conf.train.epochs:
        if d.main:
            _tidy_run(s)  # a kill may have struck after the last epoch's checkpoint
            print(f"{s.run_dir} already finished ({state.epoch} epochs); use --restart to train again")
        return state
    if d.main:
        ensure_writable(runs.run_file(s.run_dir, "checkpoints"), "checkpoints")  # before an epoch of work
        notes = {"text_model_fingerprint": s.data.text_fingerprint}
        if s.data.overlap:
            notes.update(allow_overlap=True, split_overlap=s.data.overlap)
        run_record.write_run_info(s.run_dir, conf, s.device, d.world, state.epoch, notes)
        _tidy_run(s)
        n_params = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    wandb_run = _maybe_wandb(conf, d)
    if d.main:
        print(f"training on {s.device} ({d.world} process{'es' if d.enabled else ''}), amp={s.dtype}, "
              f"{len(s.dataset)} pairs / {len(s.data.train.fids)} clips, {n_params / 1e6:.1f}M trainable parameters")

    while state.epoch < conf.train.epochs:
        record, improved = _one_epoch(s)
        rng_ranks = gather_objects(runs.rng_state(), d)  # every rank's RNG state, saved in last.pt by rank 0
        if d.main:
            _save_epoch(s, record, improved, rng_ranks)
            if wandb_run is not None:
                wandb_run.log({"epoch": state.epoch, "train_loss": record["train_loss"], "val_loss": record["val_loss"],
                               **{f"val_t2a/{k}": v for k, v in record["val_t2a"].items()}, "lr": record["lr"]})
        barrier(d)
        if state.stopped_early:
            if d.main:
                print(f"validation loss plateaued: stopping after epoch {state.epoch}")
            break
    if d.main:
        print(f"done: best validation t2a mAP@10 {state.best_map:.4f} at epoch {state.best_epoch}; "
              f"checkpoints in {runs.run_file(s.run_dir, 'checkpoints')}")
        if wandb_run is not None:
            wandb_run.finish()
    return state


def _one_epoch(s: TrainSetup) -> tuple[dict, bool]:
    """Train and validate one epoch; updates ``s.state`` and returns ``(metrics record, improved)``."""
    conf, state = s.conf, s.state
    t0 = time.time()
    loader = make_loader(s.dataset, conf, s.d, state.epoch, s.device)
    per_step = s.scheduler if conf.train.schedule == "cosine" else None
    train_loss = train_one_epoch(s.model, s.train_model, loader, s.optimizer, s.scaler, conf, state, s.data.train,
                                 s.device, s.dtype, s.d, per_step)
    t_train = time.time() - t0
    try:
        val = validate(s.model, s.data.val, conf, s.device, amp_dtype(conf.eval.amp, s.device), s.d)  # float32 by default
    except NonFiniteError as err:
        kept = (f"checkpoints/best.pt (epoch {state.best_epoch}, validation t2a mAP@10 {state.best_map:.4f})"
                if state.best_epoch else "no best.pt (no epoch validated yet)")
        raise TrainingError(f"training stopped in epoch {state.epoch + 1}: {err}. Kept: {kept} and last.pt of epoch "
                            f"{state.epoch}; nothing of epoch {state.epoch + 1} was saved") from err
    if per_step is None:
        s.scheduler.step(val["val_loss"])
    state.epoch += 1
    record = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss, **val,
              "lr": s.optimizer.param_groups[0]["lr"], "train_time_s": round(t_train, 2),
              "epoch_time_s": round(time.time() - t0, 2)}
    if conf.train.temperature_trainable:
        record["temperature"] = float(torch.as_tensor(s.model.temperature(conf.train.temperature)).detach())
    state.history.append(record)
    improved = val["val_t2a"]["mAP@10"] > state.best_map
    if improved:
        state.best_map, state.best_epoch = val["val_t2a"]["mAP@10"], state.epoch
    e = conf.train.early_stop
    if e.enabled and plateau_reached([h["val_loss"] for h in state.history], e.std, e.num_results, e.grace_period):
        state.stopped_early = True
    return record, improved


def _save_epoch(s: TrainSetup, record: dict, improved: bool, rng_ranks: list[dict]) -> None:
    """Checkpoints, the metrics line, the curves and the console line of one finished epoch."""
    last = runs.last_checkpoint(s.model, s.optimizer, s.scheduler, s.scaler, s.state, s.conf, s.data.text_dim)
    last["rng_ranks"] = rng_ranks  # rank r's RNG state at [r] (last["rng"] is rank 0's)
    last["text_fingerprint"] = s.data.text_fingerprint  # which text model's vectors it learnt (search checks)
    if improved:  # best.pt before the last.pt that records it: a kill between them loses nothing
        val = {k: record[k] for k in ("val_loss", "val_t2a", "val_a2t")}
        runs.save_checkpoint(runs.best_checkpoint(last, s.state.epoch, val), s.run_dir, "best")
    runs.save_checkpoint(last, s.run_dir, "last")
    runs.append_metrics(s.run_dir, record)
    plot_curves(s.state.history, runs.run_file(s.run_dir, "curves"))
    t2a = record["val_t2a"]
    print(f"epoch {s.state.epoch:3d} | train {record['train_loss']:.4f} | val {record['val_loss']:.4f} | "
          f"t2a mAP@10 {t2a['mAP@10']:.4f} R@1 {t2a['R@1']:.4f} R@10 {t2a['R@10']:.4f} | "
          f"lr {record['lr']:.1e} | {record['epoch_time_s']:.1f}s" + ("  *best" if improved else ""))


def _tidy_run(s: TrainSetup) -> None:
    """``metrics.jsonl`` = exactly the epochs of ``last.pt`` (drops a line a kill left unrecorded), and no
    ``.NAME.tmp-PID`` files of killed writes."""
    runs.rewrite_metrics(s.run_dir, s.state.history)
    remove_stale_temps(s.run_dir)
    remove_stale_temps(runs.run_file(s.run_dir, "checkpoints"))


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
