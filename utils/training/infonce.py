"""Symmetric InfoNCE loss of the DCASE 2023 Task 6B baseline, vectorised."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def clip_codes(clip_ids: Sequence | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Clip IDs (ints or strings) -> integer codes ``(N,)``; equal IDs get equal codes."""
    if isinstance(clip_ids, torch.Tensor):
        return clip_ids.to(device)
    _, codes = np.unique(np.asarray(clip_ids), return_inverse=True)
    return torch.as_tensor(codes.reshape(-1), device=device)


def info_nce(audio_embeds: torch.Tensor, text_embeds: torch.Tensor, clip_ids: Sequence | torch.Tensor,
             temperature: float) -> torch.Tensor:
    """``(1/N) Σ_i [CE(text_i -> audios) + CE(audio_i -> texts)]`` over a batch of N caption-clip pairs.

    Args:
        audio_embeds: ``(N, E)`` audio embeddings (row i is the clip of pair i).
        text_embeds: ``(N, E)`` caption embeddings.
        clip_ids: length-N clip identities. For anchor i the candidates are i itself and every j
            with ``clip_ids[j] != clip_ids[i]``: other captions of the same clip are never negatives.
        temperature: logits are ``dot products / temperature``.

    Returns:
        A scalar tensor. Computed in float32 even under autocast.
    """
    n = audio_embeds.shape[0]
    codes = clip_codes(clip_ids, audio_embeds.device)
    logits = audio_embeds.float() @ text_embeds.float().t() / temperature  # (N audios, N texts)
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    excluded = (codes[:, None] == codes[None, :]) & ~eye  # same clip, not the anchor itself
    logits = logits.masked_fill(excluded, float("-inf"))
    positives = logits.diagonal()
    loss_a2t = torch.logsumexp(logits, dim=1) - positives  # audio i -> its candidate texts
    loss_t2a = torch.logsumexp(logits, dim=0) - positives  # text i -> its candidate audios
    return (loss_a2t + loss_t2a).mean()
