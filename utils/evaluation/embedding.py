"""Batched embedding of clips and captions: used by validation, postprocessing and search alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from utils.base.devices import autocast
from utils.data.datasets import length_sorted_batches, pad_stack

TEXT_VECTOR_BATCH = 65536  # SBERT vectors per text-branch call (a linear layer: one call in practice)


CPU_BATCH_FRAMES = 8192  # on CPU, padded frames per batch at CNN14 width 0.125 (about 7 Clotho clips), scaled by
# 0.125 / width (width 1.0: one clip per batch) so a batch's activations stay about the same size; BENCHMARKS.md


def frame_budget_batches(batches: list[list[int]], lengths: Sequence[int], max_frames: int) -> list[list[int]]:
    """Split length-sorted ``batches`` so that no part pads to more than ``max_frames`` frames (one clip at least)."""
    out = []
    for batch in batches:
        part: list[int] = []
        for k in batch:  # longest first: the first clip of a part sets its padded length
            if part and (len(part) + 1) * lengths[part[0]] > max_frames:
                out.append(part)
                part = []
            part.append(k)
        out.append(part)
    return out


@torch.no_grad()
def embed_audio(model, get_clip: Callable[[int], np.ndarray], lengths: Sequence[int], batch_size: int,
                device: torch.device, dtype: torch.dtype | None = None, progress: bool = False,
                desc: str = "embed audio", exact: bool = True) -> torch.Tensor:
    """Embed ``len(lengths)`` clips, batched by similar length so padding stays small.

    The baseline's protocol: each clip's vector is the one the model gives that clip alone, unpadded, whatever
    the batch size, device or clip order (the encoder masks each clip's padding: ``audio_branch(x, lengths)``,
    tested to 1e-5 in ``tests/evaluation/test_embed_audio.py``). ``exact=False`` lets the zero-padded frames
    enter the pooling, as training's batches do (for benchmarks only: results then depend on the batch).

    On the CPU a batch also holds at most :data:`CPU_BATCH_FRAMES` padded frames (at width 0.125; fewer
    at larger widths): CNN14's activations for a batch of 64 long clips fall out of the caches, and the
    batch then runs slower per clip than one clip at a time (BENCHMARKS.md, "Audio embedding on the CPU").

    Args:
        model: a ``DualEncoderModel`` (eval mode is set by the caller).
        get_clip: ``k -> (time, mels)`` log-mels of clip k.
        lengths: frames of each clip.

    Returns:
        ``(n_clips, E)`` float32 unit vectors on the CPU, in input order.
    """
    out = torch.empty((len(lengths), 0))
    batches = length_sorted_batches(list(lengths), batch_size)
    if device.type == "cpu":
        width = float(getattr(getattr(model, "audio_enc", None), "width", 1.0))
        batches = frame_budget_batches(batches, lengths, int(CPU_BATCH_FRAMES * 0.125 / width))
    takes_lengths = getattr(getattr(model, "audio_enc", None), "takes_lengths", False)

    def extra(idx: list[int]) -> tuple:  # (lengths (batch,),) for encoders that use them (HFAudioEncoder)
        return (torch.tensor([lengths[k] for k in idx]),) if takes_lengths else ()

    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        audio = pad_stack([torch.from_numpy(np.asarray(get_clip(k), dtype=np.float32)) for k in idx])  # (B, T, M)
        frames = torch.as_tensor([lengths[k] for k in idx]) if exact else None  # (B,)
        with autocast(device, dtype):
            emb = model.audio_branch(audio.to(device, non_blocking=True), frames).float().cpu()
        if out.shape[1] == 0:
            out = torch.empty((len(lengths), emb.shape[1]))
        out[idx] = emb
    return out


@torch.no_grad()
def embed_text(model, text: np.ndarray | Sequence[str], batch_size: int, device: torch.device,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Embed captions: ``(n, D)`` SBERT vectors, or raw strings for a fine-tuned text model.

    Returns:
        ``(n, E)`` float32 unit vectors on the CPU.
    """
    chunks = []
    for start in range(0, len(text), batch_size):
        part = text[start:start + batch_size]
        if isinstance(part, np.ndarray):
            part = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32)).to(device, non_blocking=True)
        else:
            part = list(part)
        with autocast(device, dtype):
            chunks.append(model.text_branch(part).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty((0, 0))
