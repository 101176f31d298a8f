"""One training epoch, side by side: our trainer against a naive copy of the DCASE 2023 Task 6B baseline's loop.

    .venv/bin/python benchmarks/bench_train.py --width 0.125 --clips 32                 # complete small epoch, CPU
    .venv/bin/python benchmarks/bench_train.py --clips 16 --max-steps 1 --warmup 1      # real CNN14, extrapolated
    .venv/bin/python benchmarks/bench_train.py --full --device cuda                     # Clotho-sized, on a GPU

Both sides train the same model (``models.core.build_model``: CNN14 on 64-band log-mels + a 768 -> 300 linear
over frozen SBERT vectors, L2-normalised, InfoNCE at temperature 0.07, Adam lr 1e-3, batches of 32
caption-clip pairs padded to the longest clip) on the same synthetic Clotho-shaped data, written to a
temporary HDF5 first. What differs is the loop around it:

* **baseline** (the reference, defined in this file): a DataLoader with ``shuffle=True``, no workers and no
  pinned memory over a Dataset that reads ``h5[fid][()]`` per item; a collate that pads with a Python loop
  of ``F.pad``; fp32; a loss with a Python loop over the batch; then, every epoch, three extra forward passes
  (model.eval, no_grad, batch 32, same loss) over the training, validation and evaluation pairs.
* **ours**: ``utils.training.setup.setup_training`` and ``utils.training.loop`` as ``main.py`` runs them: ``make_loader`` /
  ``train_one_epoch`` / ``validate``
  (each validation clip and caption embedded once, then the loss and retrieval metrics), with bf16 autocast,
  channels_last, DataLoader workers and pinned memory on CUDA, fp32 on CPU.

Each side runs in a fresh subprocess, so its peak host RSS is its own. ``--max-steps K`` times K training
steps and K batches of every evaluation pass after the warm-up, and extrapolates to a full epoch (the output
says so). A markdown table goes to stdout and a JSON record to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_name  # benchmarks/machine.py (this folder is on sys.path when run as a script)
from torch.utils.data import DataLoader, Dataset, Subset

from models.core import build_model
from utils.base.config import Config, from_dict, to_dict
from utils.base.devices import resolve_device, use_channels_last
from utils.data.datasets import LogmelStore, SplitData
from utils.run_record import git_commit
from utils.training.ddp import Dist
from utils.training.infonce import info_nce
from utils.training.loop import train_one_epoch, validate
from utils.training.setup import TrainData, make_loader, setup_training

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SPLITS = ("development", "validation", "evaluation")  # train, validation, evaluation
CLOTHO_CLIPS = {"development": 3839, "validation": 1045, "evaluation": 1045}  # Clotho v2.1
CAPTIONS_PER_CLIP = 5
N_MELS = 64
FRAMES = (750, 1500)  # clip length range in frames (15 to 30 s at a 20 ms hop), drawn uniformly
TEXT_DIM = 768  # SBERT all-mpnet-base-v2 vector size
BATCH_SIZE = 32  # caption-clip pairs per batch, both sides
EPOCHS = 80  # for the projected training time
DATA_SEED = 0


# --------------------------------------------------------------------------------------------
# Synthetic Clotho-shaped data
# --------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    development: int
    validation: int
    evaluation: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sizes:
        if args.full:
            return cls(**CLOTHO_CLIPS)
        n = args.clips
        other = max(2, round(n * CLOTHO_CLIPS["validation"] / CLOTHO_CLIPS["development"]))
        return cls(n, other, other)

    def clips(self, split: str) -> int:
        return getattr(self, split)


def fids_of(split: str, n_clips: int) -> list[str]:
    return [f"{split[:3]}_{k:05d}.wav" for k in range(n_clips)]


def caption_rows(split: str, n_clips: int) -> list[dict]:
    """Caption-table rows, five per clip in clip order (as Clotho's tables)."""
    return [{"tid": f"{fid}_{k}", "fid": fid, "raw_text": f"caption {k} of {fid}"}
            for fid in fids_of(split, n_clips) for k in range(1, CAPTIONS_PER_CLIP + 1)]


def write_synthetic_data(data_dir: Path, sizes: Sizes) -> None:
    """``<split>_audio_logmels.hdf5`` (one ``(frames, 64)`` float32 dataset per fid) and ``text_embeds.hdf5``
    (one ``(n_captions, 768)`` unit-vector dataset per split). Reused when ``meta.json`` matches."""
    meta = {"sizes": asdict(sizes), "frames": list(FRAMES), "n_mels": N_MELS, "text_dim": TEXT_DIM, "seed": DATA_SEED}
    meta_path = data_dir / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text(encoding="utf-8")) == meta:
        print(f"reusing synthetic data in {data_dir}")
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(DATA_SEED)
    t0 = time.perf_counter()
    with h5py.File(data_dir / "text_embeds.hdf5", "w") as text_h5:
        for split in SPLITS:
            n = sizes.clips(split)
            with h5py.File(data_dir / f"{split}_audio_logmels.hdf5", "w") as h5:
                for fid in fids_of(split, n):
                    frames = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
                    h5[fid] = rng.standard_normal((frames, N_MELS), dtype=np.float32)  # (time, mels)
            vectors = rng.standard_normal((n * CAPTIONS_PER_CLIP, TEXT_DIM), dtype=np.float32)
            text_h5[split] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (n_captions, 768)
    meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    print(f"wrote synthetic data ({asdict(sizes)} clips) to {data_dir} in {time.perf_counter() - t0:.1f} s")


def text_vectors(data_dir: Path, split: str) -> np.ndarray:
    """``(n_captions, 768)`` float32, in caption-row order."""
    with h5py.File(data_dir / "text_embeds.hdf5", "r") as h5:
        return h5[split][()]


def load_split_data(data_dir: Path, split: str, n_clips: int, in_memory: bool) -> SplitData:
    """Our :class:`SplitData` over the synthetic files (what ``utils.data.datasets.load_split`` returns)."""
    rows = caption_rows(split, n_clips)
    store = LogmelStore(data_dir / f"{split}_audio_logmels.hdf5", in_memory=in_memory)
    text_to_audio = np.repeat(np.arange(n_clips), CAPTIONS_PER_CLIP)
    return SplitData(split, rows, fids_of(split, n_clips), text_to_audio, store, text_vectors(data_dir, split))


def first_clips(data: SplitData, n_clips: int) -> SplitData:
    """The first ``n_clips`` clips of a split with all their captions."""
    keep = np.flatnonzero(data.text_to_audio < n_clips)
    return SplitData(data.split, [data.text_rows[i] for i in keep], data.fids[:n_clips],
                     data.text_to_audio[keep], data.features, data.text_embeds[keep])


# --------------------------------------------------------------------------------------------
# REFERENCE: a plain re-implementation of the baseline's training loop (xieh97/dcase2023-audio-retrieval).
# Deliberately naive; do not optimise it.
# --------------------------------------------------------------------------------------------


class NaiveAudioTextDataset(Dataset):
    """The baseline's dataset: an h5py.File held open, one ``h5[fid][()]`` read per item."""

    def __init__(self, h5_path: Path, rows: list[dict], vectors: np.ndarray):
        self.audio_data = h5py.File(h5_path, "r")
        self.rows = rows
        self.vectors = vectors  # the baseline kept SBERT vectors in memory (as an embedding table)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        item = self.rows[index]
        audio_vec = torch.as_tensor(self.audio_data[item["fid"]][()])  # (time, mels)
        text_vec = torch.as_tensor(self.vectors[index])  # (768,)
        return item, audio_vec, text_vec


def naive_collate(batch):
    """Pad every clip to the longest with a Python loop of ``F.pad``; -> (items, (B, T_max, mels), (B, 768))."""
    items, audios, texts = [], [], []
    for item, audio, text in batch:
        items.append(item)
        audios.append(audio)
        texts.append(text)
    longest = max(a.shape[0] for a in audios)
    padded = []
    for a in audios:
        padded.append(F.pad(a, (0, 0, 0, longest - a.shape[0])))
    return items, torch.stack(padded).to(torch.float), torch.stack(texts)


class NaiveLogSoftmaxLoss(torch.nn.Module):
    """The baseline's InfoNCE: per anchor i, candidates are every j of another clip plus i itself;
    cross-entropy against a float one-hot target, audio->text and text->audio; summed, divided by N."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor, items: list[dict]) -> torch.Tensor:
        n = audio_embeds.size(0)  # audio_embeds, text_embeds: (N, E)
        loss = torch.tensor(0.0, device=audio_embeds.device, requires_grad=True)
        for i in range(n):
            candidates = [j for j in range(n) if items[j]["fid"] != items[i]["fid"]]
            candidates.append(i)
            s_text_to_audios = torch.matmul(audio_embeds[candidates], text_embeds[i]) / self.temperature  # (N',)
            s_audio_to_texts = torch.matmul(audio_embeds[i], text_embeds[candidates].t()) / self.temperature
            target = torch.as_tensor([float(j == i) for j in candidates], dtype=torch.float,
                                     device=audio_embeds.device)  # (N',) one-hot
            loss = loss + F.cross_entropy(s_text_to_audios, target) + F.cross_entropy(s_audio_to_texts, target)
        return loss / n


def naive_train(model, loader, criterion, optimizer, device, max_steps: int = 0, check_first: bool = False) -> None:
    """The baseline's ``model_utils.train``: one pass, fp32, no loss read back."""
    model.train()
    for b, (items, audio, text) in enumerate(loader):
        if max_steps and b >= max_steps:
            break
        audio, text = audio.to(device), text.to(device)
        optimizer.zero_grad()
        audio_embeds, text_embeds = model(audio, text)
        loss = criterion(audio_embeds, text_embeds, items)
        if check_first and b == 0:
            check_loss_agreement(audio_embeds.detach(), text_embeds.detach(), [r["fid"] for r in items], loss,
                                 criterion.temperature)
        loss.backward()
        optimizer.step()


def naive_eval(model, loader, criterion, device, max_batches: int = 0) -> float:
    """The baseline's ``model_utils.eval``: mean batch loss over a split, model.eval, no_grad."""
    model.eval()
    eval_loss, eval_steps = 0.0, 0
    with torch.no_grad():
        for b, (items, audio, text) in enumerate(loader):
            if max_batches and b >= max_batches:
                break
            audio, text = audio.to(device), text.to(device)
            audio_embeds, text_embeds = model(audio, text)
            eval_loss += criterion(audio_embeds, text_embeds, items).cpu().numpy()
            eval_steps += 1
    return float(eval_loss / max(eval_steps, 1))


# --------------------------------------------------------------------------------------------
# Apples to apples: the naive loop's loss equals utils.training.infonce.info_nce
# --------------------------------------------------------------------------------------------


def check_loss_agreement(audio: torch.Tensor, text: torch.Tensor, fids: list[str],
                         naive: torch.Tensor | None = None, temperature: float = 0.07, tol: float = 1e-4) -> float:
    """Assert ``|naive loss - info_nce| <= tol`` on one batch of ``(N, E)`` embeddings; return info_nce."""
    if naive is None:
        naive = NaiveLogSoftmaxLoss(temperature)(audio, text, [{"fid": f} for f in fids])
    naive_value, ours = float(naive.detach()), float(info_nce(audio, text, fids, temperature))
    if not abs(naive_value - ours) <= tol:  # an explicit raise: survives python -O
        raise AssertionError(f"naive baseline loss {naive_value:.6f} != info_nce {ours:.6f} "
                             f"(|diff| {abs(naive_value - ours):.2e} > {tol}): the comparison is not like for like")
    return ours


def check_loss_on_random_batch() -> float:
    """The two losses on 32 random unit vectors from 12 clips (so same-clip pairs must be masked)."""
    gen = torch.Generator().manual_seed(0)
    audio = F.normalize(torch.randn(BATCH_SIZE, 300, generator=gen), dim=-1)
    text = F.normalize(torch.randn(BATCH_SIZE, 300, generator=gen), dim=-1)
    fids = [f"clip{int(k)}" for k in torch.randint(0, 12, (BATCH_SIZE,), generator=gen)]
    return check_loss_agreement(audio, text, fids)


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class TimedLoader:
    """Wraps a DataLoader (same ``len`` and batches) and records, after a device sync, when it hands out its
    first batch (``first``) and when the consumer asks for batch ``steps`` (``last``: the first ``steps``
    steps are done). The fixed start-up (worker processes, first read) is thus told apart from the per-step
    time, and neither the extra fetch nor the worker shutdown after a truncated pass is counted as steps."""

    def __init__(self, loader: DataLoader, device: torch.device, steps: int):
        self.loader, self.device, self.steps = loader, device, steps or len(loader)  # 0 = the whole pass
        self.first: float | None = None
        self.last: float | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for k, batch in enumerate(self.loader):
            if k == 0:
                self.first = now(self.device)
            yield batch
            if k + 1 == self.steps:
                self.last = now(self.device)

    def epoch_seconds(self, t0: float, t_end: float, n_items: int) -> float:
        """A full pass: ``t_end - t0`` as measured. A truncated one: start-up + per-step time x
        ``n_items / BATCH_SIZE`` steps (a short last batch counts as a fraction of a step)."""
        if self.steps >= len(self.loader) or self.first is None or self.last is None:
            return t_end - t0
        return (self.first - t0) + (self.last - self.first) / self.steps * (n_items / BATCH_SIZE)


def timed_steps(max_steps: int, total: int) -> int:
    """Steps to time: ``max_steps`` when it is below ``total``, else all (0 = all)."""
    return max_steps if 0 < max_steps < total else total


# --------------------------------------------------------------------------------------------
# The two sides (each runs in its own subprocess)
# --------------------------------------------------------------------------------------------


def make_config(args: argparse.Namespace, device: torch.device) -> Config:
    """The repo's default (baseline) config with the benchmark's model width and our runtime options."""
    conf = Config()
    conf.model.audio_enc.width = args.width
    conf.model.audio_enc.init = "random"  # no pretrained weights needed to time an epoch
    conf.train.device = str(device)
    conf.train.amp = args.amp
    conf.train.num_workers = args.workers
    conf.train.compile = args.compile
    conf.train.in_memory = args.in_memory
    conf.train.batch_size = BATCH_SIZE
    return from_dict(to_dict(conf))  # type-checks every value


def run_ours(args: argparse.Namespace, data_dir: Path, sizes: Sizes, device: torch.device) -> dict:
    conf = make_config(args, device)
    conf.run.dir, conf.run.name = str(data_dir), "ours"  # nothing to resume there
    data = TrainData(load_split_data(data_dir, SPLITS[0], sizes.development, conf.train.in_memory),
                     load_split_data(data_dir, SPLITS[1], sizes.validation, conf.train.in_memory), "embedding", TEXT_DIM)
    s = setup_training(conf, Dist(), restart=True, data=data)  # exactly main.py's setup
    model, train_model, optimizer, scaler, dtype, d, state = (s.model, s.train_model, s.optimizer, s.scaler, s.dtype,
                                                               s.d, s.state)
    dataset, train_data, val_data = s.dataset, data.train, data.val

    def train_part(steps: int, epoch: int) -> float:
        """Train ``steps`` steps (0 = a full epoch) through the real code path; return the epoch time."""
        conf.train.max_steps_per_epoch = steps
        loader = TimedLoader(make_loader(dataset, conf, d, epoch, device), device, steps)
        t0 = now(device)
        train_one_epoch(model, train_model, loader, optimizer, scaler, conf, state, train_data, device, dtype, d)
        return loader.epoch_seconds(t0, now(device), len(dataset))

    t_warm = now(device)
    if args.warmup:
        train_part(args.warmup, epoch=0)
        validate(model, first_clips(val_data, 2), conf, device, dtype, d)
    warmup_s = now(device) - t_warm

    n_steps = math.ceil(len(dataset) / BATCH_SIZE)
    k = timed_steps(args.max_steps, n_steps)
    train_s = train_part(k if k < n_steps else 0, epoch=1)

    n_val = len(val_data.fids)
    n_sub = min(n_val, args.max_steps * conf.train.eval_batch_size) if args.max_steps else n_val
    t0 = now(device)
    val = validate(model, first_clips(val_data, n_sub), conf, device, dtype, d)
    eval_s = (now(device) - t0) * n_val / n_sub
    return {"train_s": train_s, "eval_s": eval_s, "warmup_s": warmup_s,
            "train_steps_timed": k, "train_steps": n_steps, "val_clips_timed": n_sub, "val_clips": n_val,
            "extrapolated": k < n_steps or n_sub < n_val, "val_loss": val["val_loss"],
            "settings": {"amp": str(dtype).replace("torch.", "") if dtype else "fp32",
                         "channels_last": use_channels_last(conf.train.channels_last, device),
                         "workers": conf.train.num_workers, "pin_memory": device.type == "cuda",
                         "compile": conf.train.compile, "in_memory": conf.train.in_memory}}


def run_baseline(args: argparse.Namespace, data_dir: Path, sizes: Sizes, device: torch.device) -> dict:
    conf = make_config(args, device)
    torch.manual_seed(0)
    model = build_model(conf, TEXT_DIM, load_prior=False).to(device)  # the same network as ours
    optimizer = torch.optim.Adam(model.parameters(), lr=conf.train.lr)
    criterion = NaiveLogSoftmaxLoss(conf.train.temperature)
    datasets = {s: NaiveAudioTextDataset(data_dir / f"{s}_audio_logmels.hdf5", caption_rows(s, sizes.clips(s)),
                                         text_vectors(data_dir, s)) for s in SPLITS}
    loaders = {s: DataLoader(ds, batch_size=BATCH_SIZE, shuffle=True, collate_fn=naive_collate)
               for s, ds in datasets.items()}

    t_warm = now(device)
    if args.warmup:
        naive_train(model, loaders[SPLITS[0]], criterion, optimizer, device, args.warmup, check_first=True)
        warm_eval = DataLoader(Subset(datasets[SPLITS[1]], range(2 * CAPTIONS_PER_CLIP)), batch_size=BATCH_SIZE,
                               collate_fn=naive_collate)
        naive_eval(model, warm_eval, criterion, device)
    warmup_s = now(device) - t_warm

    n_steps = len(loaders[SPLITS[0]])
    k = timed_steps(args.max_steps, n_steps)
    loader = TimedLoader(loaders[SPLITS[0]], device, k)
    t0 = now(device)
    naive_train(model, loader, criterion, optimizer, device, k if k < n_steps else 0)
    train_s = loader.epoch_seconds(t0, now(device), len(datasets[SPLITS[0]]))

    eval_parts, losses, extrapolated = {}, {}, k < n_steps
    for split in SPLITS:
        n_batches = len(loaders[split])
        kb = timed_steps(args.max_steps, n_batches)
        loader = TimedLoader(loaders[split], device, kb)
        t0 = now(device)
        losses[split] = naive_eval(model, loader, criterion, device, kb if kb < n_batches else 0)
        eval_parts[split] = loader.epoch_seconds(t0, now(device), len(datasets[split]))
        extrapolated |= kb < n_batches
    return {"train_s": train_s, "eval_s": sum(eval_parts.values()), "eval_parts_s": eval_parts,
            "warmup_s": warmup_s, "train_steps_timed": k, "train_steps": n_steps, "extrapolated": extrapolated,
            "eval_losses": losses,
            "settings": {"amp": "fp32", "channels_last": False, "workers": 0, "pin_memory": False,
                         "compile": False, "in_memory": False}}


def peak_memory(device: torch.device) -> dict:
    """Peak host RSS of this process and of its largest reaped child (DataLoader workers), and peak GPU memory."""
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib
    out = {"rss_self_mib": self_rss, "rss_children_mib": child_rss, "rss_mib": self_rss + child_rss}
    if device.type == "cuda":
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu_name"] = torch.cuda.get_device_name(device)
    return out


def worker_main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sizes = Sizes.from_args(args)
    load_before = os.getloadavg()[0]
    side = run_ours if args.worker == "ours" else run_baseline
    result = side(args, Path(args.data_dir), sizes, device)
    result.update(peak_memory(device), side=args.worker, load_before=load_before, load_after=os.getloadavg()[0])
    Path(args.result_file).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Driver: data, one subprocess per side, the report
# --------------------------------------------------------------------------------------------


def machine_info(device: torch.device, gpu_name: str | None) -> dict:
    """CPU model and cores, and the GPU's name as the worker processes reported it (the driver never
    initialises CUDA itself)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu_name(), "cores": cores, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": str(device), "python": platform.python_version()}
    if gpu_name:
        info["gpu"] = gpu_name
    return info


def spawn_side(side: str, data_dir: Path, out_dir: Path) -> dict:
    """Run one side in a fresh interpreter with this script's arguments; return its result record."""
    result_file = out_dir / f"{side}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--worker", side,
           "--data-dir", str(data_dir), "--result-file", str(result_file)]
    print(f"\n--- {side}: running in a fresh process ---", flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0 or not result_file.is_file():
        raise SystemExit(f"the {side} side failed (exit code {proc.returncode}); see its output above")
    return json.loads(result_file.read_text(encoding="utf-8"))


def summarise(res: dict, sizes: Sizes, side: str) -> dict:
    """Derived numbers: epoch time, throughputs and the projected training time."""
    epoch_s = res["train_s"] + res["eval_s"]
    if side == "baseline":  # the baseline evaluates before the first epoch too (its epoch 0)
        total_s = EPOCHS * res["train_s"] + (EPOCHS + 1) * res["eval_s"]
    else:
        total_s = EPOCHS * epoch_s
    n_pairs = sizes.development * CAPTIONS_PER_CLIP
    return {"epoch_s": epoch_s, "clips_per_s": sizes.development / epoch_s, "pairs_per_s": n_pairs / res["train_s"],
            f"projected_{EPOCHS}_epochs_h": total_s / 3600}


def fmt_s(seconds: float) -> str:
    return f"{seconds:,.1f}" if seconds < 1000 else f"{seconds:,.0f}"


def markdown_report(record: dict) -> str:
    m, a, sizes = record["machine"], record["args"], Sizes(**record["sizes"])
    base, ours = record["baseline"], record["ours"]
    hw = f"{m['cpu']}, {m['cores']} cores" + (f"; GPU {m['gpu']}" if "gpu" in m else "")
    so = ours["settings"]
    extrapolated = base["extrapolated"] or ours["extrapolated"]
    lines = [
        "## One training epoch: ours vs. the DCASE 2023 Task 6B baseline loop",
        "",
        f"Machine: {hw}; torch {m['torch']} ({m['torch_threads']} threads); device `{m['device']}`.",
        f"Data: synthetic Clotho-shaped log-mels ({FRAMES[0]}-{FRAMES[1]} frames x {N_MELS} mels), "
        f"{sizes.development} training clips ({sizes.development * CAPTIONS_PER_CLIP} pairs), "
        f"{sizes.validation} validation and {sizes.evaluation} evaluation clips; CNN14 width {a['width']}; "
        f"batch {BATCH_SIZE}.",
        f"Ours: {so['amp']}, channels_last {'on' if so['channels_last'] else 'off'}, {so['workers']} workers, "
        f"pinned memory {'on' if so['pin_memory'] else 'off'}, compile {'on' if so['compile'] else 'off'}. "
        "Baseline: fp32, no workers, no pinned memory.",
    ]
    if extrapolated:
        lines.append(f"**Extrapolated**: timed {ours['train_steps_timed']} of {ours['train_steps']} training steps "
                     f"and at most {a['max_steps']} batch(es) per evaluation pass "
                     f"({ours['val_clips_timed']} of {ours['val_clips']} validation clips for ours), "
                     "scaled to a full epoch.")
    else:
        lines.append("Complete epoch, measured (nothing extrapolated).")
    lines += [
        "",
        f"| side | train (s) | eval (s) | epoch (s) | clips/s | train pairs/s | {EPOCHS} epochs (h) "
        "| peak RSS (MiB) | peak GPU (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("baseline loop", base), ("ours", ours)):
        gpu = f"{r['gpu_peak_mib']:,.0f}" if "gpu_peak_mib" in r else "n/a"
        lines.append(f"| {name} | {fmt_s(r['train_s'])} | {fmt_s(r['eval_s'])} | {fmt_s(r['epoch_s'])} | "
                     f"{r['clips_per_s']:.3g} | {r['pairs_per_s']:.3g} | {r[f'projected_{EPOCHS}_epochs_h']:.3g} | "
                     f"{r['rss_mib']:,.0f} | {gpu} |")
    ratio = record["ratio"]
    lines += [
        f"| **baseline / ours** | **{ratio['train']:.2f}x** | **{ratio['eval']:.1f}x** | **{ratio['epoch']:.2f}x** "
        "| | | | | |",
        "",
        "train = one pass of training steps; eval = the baseline's three loss passes (train "
        f"{fmt_s(base['eval_parts_s'][SPLITS[0]])} s, validation {fmt_s(base['eval_parts_s'][SPLITS[1]])} s, "
        f"evaluation {fmt_s(base['eval_parts_s'][SPLITS[2]])} s) vs. our validation (embeddings once, loss, metrics). "
        "clips/s = training clips / epoch time; train pairs/s = training pairs / train time. "
        f"{EPOCHS} epochs: ours {EPOCHS} x epoch; baseline {EPOCHS} x train + {EPOCHS + 1} x eval (it also "
        "evaluates before training). Peak RSS = the side's process + its largest DataLoader worker. "
        f"Warm-up ({a['warmup']} step(s), not timed): baseline {base['warmup_s']:.1f} s, ours {ours['warmup_s']:.1f} s. "
        f"Load average during the runs: baseline {base['load_before']:.1f}->{base['load_after']:.1f}, "
        f"ours {ours['load_before']:.1f}->{ours['load_after']:.1f}.",
    ]
    return "\n".join(lines)


def driver_main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    sizes = Sizes.from_args(args)
    check_loss_on_random_batch()
    print("naive baseline loss == info_nce on a random batch with same-clip pairs (|diff| <= 1e-4)")
    tmp = None
    if args.data_dir:
        data_dir = Path(args.data_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="bench_train_")
        data_dir = Path(tmp)
    try:
        write_synthetic_data(data_dir, sizes)
        with tempfile.TemporaryDirectory(prefix="bench_train_results_") as out:
            results = {side: spawn_side(side, data_dir, Path(out)) for side in ("baseline", "ours")}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for side, res in results.items():
        res.update(summarise(res, sizes, side))
    base, ours = results["baseline"], results["ours"]
    record = {
        "benchmark": "bench_train", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "git_commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args),
        "machine": machine_info(device, ours.get("gpu_name")), "sizes": asdict(sizes), **results,
        "ratio": {"train": base["train_s"] / ours["train_s"], "eval": base["eval_s"] / ours["eval_s"],
                  "epoch": base["epoch_s"] / ours["epoch_s"]},
    }
    report = markdown_report(record)
    print("\n" + report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tag = f"{device.type}-w{args.width}-{'full' if args.full else f'c{args.clips}'}"
    path = RESULTS_DIR / f"bench_train_{tag}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({**record, "markdown": report}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=64,
                   help="training clips (x5 captions = pairs); validation and evaluation get 1045/3839 of it "
                        "(default: 64)")
    p.add_argument("--full", action="store_true", help="Clotho sizes: 3839 training, 1045 + 1045 clips")
    p.add_argument("--width", type=float, default=1.0,
                   help="CNN14 channel multiplier; 1.0 = the real CNN14, 0.125 for quick CPU runs (default: 1.0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="our autocast: auto = bf16 on CUDA, off on CPU (the baseline is always fp32)")
    p.add_argument("--workers", type=int, default=None,
                   help="our DataLoader workers (default: 4 on CUDA as conf.yaml, 0 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (as train.compile)")
    p.add_argument("--in-memory", action="store_true", help="our features held in RAM (as train.in_memory)")
    p.add_argument("--max-steps", type=int, default=0,
                   help="time this many training steps and batches per evaluation pass, then extrapolate to a "
                        "full epoch (default: 0 = time complete epochs)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps before timing (default: 2)")
    p.add_argument("--data-dir", default=None,
                   help="keep the synthetic data here and reuse it on the next run (default: a temp dir)")
    p.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.clips < 2 or args.width <= 0 or args.max_steps < 0 or args.warmup < 0:
        p.error("--clips must be >= 2, --width > 0, --max-steps and --warmup >= 0")
    try:
        device = resolve_device(args.device)
    except RuntimeError as err:
        p.error(str(err))
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args)
    else:
        driver_main(args)


if __name__ == "__main__":
    main()
