"""Audio encoders: log-mel spectrogram ``(batch, time, mels)`` -> embedding ``(batch, out_dim)``; and
:class:`models.hf_audio.HFAudioEncoder` (waveforms, any Hugging Face audio model).

:class:`CNN14Encoder` is the DCASE 2023 Task 6B baseline's audio encoder: the PANNs CNN14 body
(Kong et al., 2020) with a new linear projection. Its submodules carry the PANNs names (``bn0``,
``conv_block1..6.{conv1,bn1,conv2,bn2}``, ``fc1``), so the pretrained weights transfer by name
(``utils/pretrained/cnn14_transfer.py``, stage 4); only the projection ``fc2`` is new.

Build encoders through :func:`build_audio_encoder` (``conf.model.audio_enc.name``).
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.hf_audio import HFAudioEncoder
from utils.base.config import ConfigError
from utils.base.errors import DataError
from utils.base.fileio import read_torch_file

CNN14_CHANNELS = (64, 128, 256, 512, 1024, 2048)  # output channels of conv blocks 1..6 at width 1.0
MIN_FRAMES = 2 ** len(CNN14_CHANNELS)  # six 2x2 poolings need >= 64 frames (and >= 64 mel bands)
PROJECTION = "fc2"  # the only submodule that is not pretrained
TRANSFER_HINT = "run preprocessing/04_cnn14_transfer.py to make it"

def scaled_channels(width: float) -> list[int]:
    """CNN14's channel counts times ``width``, rounded, at least 1: width 0.125 -> [8, 16, ..., 256]."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [max(1, round(c * width)) for c in CNN14_CHANNELS]


def list_keys(keys: Iterable[str], limit: int = 12) -> str:
    """``'a, b, c'``, cut to ``limit`` names with a count of the rest (for error messages)."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _init_weights(module: nn.Module) -> None:
    """The baseline's init: Kaiming-normal conv/linear weights, zero biases; BatchNorm weight 1, bias 0."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _time_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``(batch,)`` lengths -> ``(batch, frames)`` bool, True on each clip's own frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> AvgPool2d(2) -> Dropout; names as PANNs' ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool = nn.AvgPool2d(kernel_size=2)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, in_channels, time, mels)`` -> ``(batch, out_channels, time // 2, mels // 2)``.

        ``valid``: ``(batch, 1, time, 1)`` 1.0 on each clip's own frames, 0.0 on padding. Each conv then sees
        zeros past a clip's end, as the conv's own zero padding gives the clip alone (eval mode only: in train
        mode BatchNorm's batch statistics would still see the padding).
        """
        if valid is not None:
            x = x * valid  # (batch, in_channels, time, mels), zeros past each clip's end
        x = F.relu(self.bn1(self.conv1(x)))  # (batch, out_channels, time, mels)
        if valid is not None:
            x = x * valid
        x = F.relu(self.bn2(self.conv2(x)))  # (batch, out_channels, time, mels)
        return self.dropout(self.pool(x))  # (batch, out_channels, time // 2, mels // 2)


class CNN14Encoder(nn.Module):
    """The DCASE 2023 baseline's CNN14 audio encoder: log-mels ``(batch, time, n_mels)`` -> ``(batch, out_dim)``.

    bn0 over the mel axis; six :class:`ConvBlock` (64 ... 2048 channels times ``width``), each pooling 2x2
    (the baseline pools block 6 too, where PANNs does not); mean over mels; max + mean over time;
    Dropout(0.5) -> ``fc1`` (C -> C) -> ReLU -> Dropout(0.5); projection ``fc2`` (C -> out_dim).
    The output is not normalised (the dual encoder does that).

    Clips shorter than 64 frames are zero-padded at the end to 64 frames inside :meth:`forward`: six 2x2
    poolings would otherwise shrink the time axis to nothing.

    ``dropout=False`` removes every dropout layer (no parameters change). For NHWC, convert the module with
    ``.to(memory_format=torch.channels_last)``; forward uses only layout-agnostic ops.
    """

    def __init__(self, out_dim: int = 300, width: float = 1.0, n_mels: int = 64, dropout: bool = True) -> None:
        super().__init__()
        if n_mels < MIN_FRAMES:
            raise ValueError(f"CNN14Encoder needs n_mels >= {MIN_FRAMES} (six 2x2 poolings), got {n_mels}")
        channels = scaled_channels(width)
        self.out_dim = out_dim
        self.width = width
        self.n_mels = n_mels
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.block_names = [f"conv_block{i}" for i in range(1, len(channels) + 1)]
        for name, c_in, c_out in zip(self.block_names, [1] + channels[:-1], channels, strict=True):
            self.add_module(name, ConvBlock(c_in, c_out, dropout=0.2 if dropout else 0.0))
        self.fc_dropout = nn.Dropout(p=0.5 if dropout else 0.0)
        self.fc1 = nn.Linear(channels[-1], channels[-1], bias=True)
        self.fc2 = nn.Linear(channels[-1], out_dim, bias=True)  # the projection (PROJECTION), never pretrained
        self.apply(_init_weights)

    @property
    def channels(self) -> list[int]:
        """Output channels of conv blocks 1..6."""
        return [self.get_submodule(name).conv1.out_channels for name in self.block_names]

    def pretrained_modules(self) -> list[nn.Module]:
        """The modules whose weights come from PANNs: bn0, conv_block1..6, fc1 (everything but fc2)."""
        return [self.bn0, *(self.get_submodule(name) for name in self.block_names), self.fc1]

    def transferable_keys(self) -> list[str]:
        """State-dict keys filled from a PANNs checkpoint (all but the projection's)."""
        return [k for k in self.state_dict() if not k.startswith(PROJECTION + ".")]

    def set_trainable(self, trainable: bool) -> None:
        """``False`` freezes bn0, the conv blocks and fc1, as the baseline does; fc2 always trains.

        BatchNorm running statistics still update in train mode (as in the baseline).
        """
        for module in self.pretrained_modules():
            for param in module.parameters():
                param.requires_grad_(trainable)
        for param in self.fc2.parameters():
            param.requires_grad_(True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mels ``(batch, time, n_mels)`` -> ``(batch, out_dim)``, not normalised.

        ``lengths``: ``(batch,)`` frames of each clip in a zero-padded batch, or None (every frame counts, as
        in the baseline's padded training batches). With lengths, each clip's output equals its output alone,
        unpadded, up to float rounding: frames past a clip's end (its length, at least 64) are zeroed before
        every conv, lengths follow the 2x2 poolings (floor division), and the time pooling skips them.
        """
        if x.dim() != 3 or x.shape[-1] != self.n_mels:
            raise ValueError(f"expected log-mels (batch, time, {self.n_mels}), got shape {tuple(x.shape)}")
        if lengths is not None:
            lengths = lengths.to(x.device)
            x = x * _time_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)  # zeros past the end, as alone
            lengths = lengths.clamp(min=MIN_FRAMES)  # a clip alone is padded to 64 frames below
        if x.shape[1] < MIN_FRAMES:
            x = F.pad(x, (0, 0, 0, MIN_FRAMES - x.shape[1]))  # (batch, 64, mels), zeros appended in time
        x = x.unsqueeze(1)  # (batch, 1, time, mels)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # bn0 normalises each mel band: (batch, 1, time, mels)
        for name in self.block_names:
            valid = None if lengths is None else _time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
            x = self.get_submodule(name)(x, valid)  # (batch, channels, time / 2^i, mels / 2^i)
            lengths = None if lengths is None else lengths // 2
        x = x.mean(dim=3)  # (batch, channels, time / 64)
        if lengths is None:
            x = x.amax(dim=2) + x.mean(dim=2)  # (batch, channels): max + mean over time
        else:
            keep = _time_mask(lengths, x.shape[2])[:, None, :]  # (batch, 1, time / 64)
            x = x.masked_fill(~keep, float("-inf")).amax(dim=2) \
                + x.masked_fill(~keep, 0.0).sum(dim=2) / lengths[:, None].to(x.dtype)  # over each clip's frames
        x = self.fc_dropout(F.relu(self.fc1(self.fc_dropout(x))))  # (batch, channels)
        return self.fc2(x)  # (batch, out_dim)

    def load_pretrained(self, path: str | PathLike) -> None:
        """Load the state dict written by stage 4 (``conf.pretrained.cnn14_weights``), fc2 included.

        Raises :class:`DataError` naming the file when it is missing, unreadable, or does not fit this
        encoder (other keys, or other shapes, e.g. made for another width or out_dim), listing the keys.
        """
        path = Path(path)
        state = read_torch_file(path, TRANSFER_HINT)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            raise DataError(f"{path} is a PANNs training checkpoint, not encoder weights; {TRANSFER_HINT}")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise DataError(f"{path} is not a state dict of tensors; {TRANSFER_HINT}")
        own = self.state_dict()
        problems = []
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [
            f"{k} {tuple(state[k].shape)} (encoder: {tuple(v.shape)})"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing:
            problems.append(f"missing keys: {list_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {list_keys(unexpected)}")
        if wrong:
            problems.append(f"shape mismatch: {list_keys(wrong)}")
        if problems:
            raise DataError(
                f"{path} does not fit CNN14Encoder(out_dim={self.out_dim}, width={self.width}): "
                + "; ".join(problems)
                + ". Was it made for another model.audio_enc.width or out_dim? "
                "Rerun preprocessing/04_cnn14_transfer.py with this config"
            )
        self.load_state_dict(state, strict=True)


AUDIO_ENCODERS: dict[str, type[nn.Module]] = {"CNN14Encoder": CNN14Encoder, "HFAudioEncoder": HFAudioEncoder}


def build_audio_encoder(name: str, **kwargs: Any) -> nn.Module:
    """``AUDIO_ENCODERS[name](**kwargs)``; an unknown ``name`` raises a :class:`ConfigError` listing the valid ones."""
    if name not in AUDIO_ENCODERS:
        raise ConfigError(f"model.audio_enc.name: unknown audio encoder '{name}'; valid names: {sorted(AUDIO_ENCODERS)}")
    return AUDIO_ENCODERS[name](**kwargs)
