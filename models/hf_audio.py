"""Any Hugging Face audio model as the audio encoder: waveforms ``(batch, samples, 1)`` -> ``(batch, out_dim)``.

:class:`HFAudioEncoder` loads what ``transformers`` loads with its feature extractor: AST, the CLAP audio tower
(HTSAT, ``ClapAudioModel``; a full ``ClapModel`` gives its ``audio_model``), the Whisper encoder, the wav2vec2 /
HuBERT family. It pools the last hidden states (``cls`` or ``mean``) and projects them to ``out_dim``.

Long clips are cut into windows of the model's own length (AST: its ``max_length`` frames of 10 ms, CLAP:
``nb_max_samples``, Whisper: 30 s; wav2vec2 / HuBERT: none, the whole clip) or ``window_sec``. Windows start
every window length; the last one ends at the clip's end (so every window is full), and the clip's embedding is
the mean of its windows'. Each window goes through the feature extractor alone, and only windows whose inputs
have the same shape share a forward pass, so a clip's embedding never depends on the others in its batch.
This happens inside the encoder, so training, validation, scoring and search all window the same way.

:class:`WindowedExtractor` (windows + feature extractor, picklable) runs in the DataLoader workers during training
(:class:`utils.data.datasets.PairCollate`) and gives a :class:`PreparedAudio`, which :meth:`HFAudioEncoder.forward`
takes as well as raw waveforms.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.hf_loading import hf_source, load_hf
from utils.base.config import ConfigError

MIN_SAMPLES = 1024  # shorter clips are zero-padded to this (AST's fbank and wav2vec2's convolutions need ~400)


@dataclass
class PreparedAudio:
    """Model inputs of a batch's windows: ``groups`` of ``(inputs, window indices)``, windows of equal input shape
    stacked; ``clip_of_window`` ``(n_windows,)`` says which clip each window belongs to."""

    groups: list[tuple[dict[str, torch.Tensor], torch.Tensor]]
    clip_of_window: torch.Tensor  # (n_windows,) int64
    n_clips: int

    def to(self, device, non_blocking: bool = False) -> PreparedAudio:
        groups = [({k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}, idx)
                  for inputs, idx in self.groups]
        return PreparedAudio(groups, self.clip_of_window, self.n_clips)

    def pin_memory(self) -> PreparedAudio:
        return PreparedAudio([({k: v.pin_memory() for k, v in inputs.items()}, idx) for inputs, idx in self.groups],
                             self.clip_of_window, self.n_clips)


def window_starts(n_samples: int, window: int) -> list[int]:
    """Starts of the windows of a clip: every ``window`` samples, the last ending at the clip's end; ``[0]`` when
    the clip fits one window (or ``window`` is 0)."""
    if window <= 0 or n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window, window))
    return starts + [n_samples - window]


class WindowedExtractor:
    """Waveforms -> :class:`PreparedAudio`: cut into windows, each through the model's feature extractor alone."""

    def __init__(self, feature_extractor, window: int, input_names: set[str]):
        self.feature_extractor = feature_extractor
        self.window = window  # samples; 0 = whole clips
        self.input_names = input_names  # the keyword arguments the model's forward accepts
        self.sample_rate = int(feature_extractor.sampling_rate)

    def windows(self, y: np.ndarray) -> list[np.ndarray]:
        if len(y) < MIN_SAMPLES:
            y = np.pad(y, (0, MIN_SAMPLES - len(y)))
        return [y[s:s + self.window] if self.window else y for s in window_starts(len(y), self.window)]

    def __call__(self, clips: list[np.ndarray]) -> PreparedAudio:
        """``clips``: mono float32 waveforms ``(samples,)`` or ``(samples, 1)`` at :attr:`sample_rate`."""
        per_window, owner = [], []
        for c, y in enumerate(clips):
            for w in self.windows(np.asarray(y, dtype=np.float32).reshape(-1)):
                out = self.feature_extractor(w, sampling_rate=self.sample_rate, return_tensors="pt")
                per_window.append({k: v for k, v in out.items() if k in self.input_names
                                   and isinstance(v, torch.Tensor)})
                owner.append(c)
        by_shape: dict[tuple, list[int]] = {}
        for i, inputs in enumerate(per_window):
            by_shape.setdefault(tuple((k, tuple(v.shape)) for k, v in sorted(inputs.items())), []).append(i)
        groups = [({k: torch.cat([per_window[i][k] for i in idx]) for k in per_window[idx[0]]},
                   torch.tensor(idx)) for idx in by_shape.values()]
        return PreparedAudio(groups, torch.tensor(owner), len(clips))

    def from_padded(self, x: torch.Tensor, lengths: torch.Tensor | None) -> PreparedAudio:
        """Padded waveforms ``(batch, samples[, 1])`` and their ``lengths`` ``(batch,)`` (None = unpadded)."""
        x = x.reshape(x.shape[0], -1).float().cpu().numpy()  # (batch, samples)
        n = lengths.tolist() if lengths is not None else [x.shape[1]] * len(x)
        return self([x[b, :int(n[b])] for b in range(len(x))])


def _audio_body(model: nn.Module) -> nn.Module:
    """The audio tower of a loaded model: ClapModel -> audio_model, an encoder-decoder (Whisper) -> its encoder."""
    if hasattr(model, "audio_model"):
        return model.audio_model
    if getattr(model.config, "is_encoder_decoder", False):
        return model.get_encoder()
    return model


def _model_window(fe, window_sec: float, sr: int) -> int:
    if window_sec > 0:
        return round(window_sec * sr)
    if hasattr(fe, "nb_max_samples"):  # CLAP
        return int(fe.nb_max_samples)
    if hasattr(fe, "n_samples"):  # Whisper: 30 s
        return int(fe.n_samples)
    if type(fe).__name__ == "ASTFeatureExtractor":  # max_length frames, 10 ms apart
        return int(fe.max_length) * sr // 100
    return 0  # wav2vec2 / HuBERT: any length


class HFAudioEncoder(nn.Module):
    """A ``transformers`` audio model, pooled, projected to ``out_dim``; see the module docstring.

    Args:
        pretrained: hub id or local folder holding the model and its feature extractor (save_pretrained layout).
        sample_rate: rate of the waveforms it is given (``features.sample_rate``); must be the extractor's.
        pooling: ``cls`` (first token) or ``mean`` over time; 4-d hidden states (HTSAT) are averaged over
            frequency and time (``mean`` only).
        window_sec: window length for long clips; 0 = the model's own.
    """

    takes_lengths = True

    def __init__(self, pretrained: str, out_dim: int = 300, sample_rate: int = 16000, pooling: str = "mean",
                 window_sec: float = 0.0, trainable: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, ClapAudioModel  # slow import

        source = hf_source(pretrained)
        key = "model.audio_enc.pretrained"
        fe = load_hf(AutoFeatureExtractor.from_pretrained, source, key)
        config = load_hf(AutoConfig.from_pretrained, source, key)
        loader = ClapAudioModel if config.model_type == "clap_audio_model" else AutoModel
        self.body = _audio_body(load_hf(loader.from_pretrained, source, key))
        if int(fe.sampling_rate) != sample_rate:
            raise ConfigError(f"features.sample_rate is {sample_rate} Hz but {pretrained} expects "
                              f"{fe.sampling_rate} Hz; set --set features.sample_rate={fe.sampling_rate} and rerun "
                              "preprocessing/02_audio_logmel.py")
        names = set(inspect.signature(self.body.forward).parameters)
        self.extractor = WindowedExtractor(fe, _model_window(fe, window_sec, sample_rate), names)
        self.pooling, self.trainable = pooling, trainable
        self.body.requires_grad_(trainable)
        with torch.no_grad():
            dim = self._pooled(self.extractor([np.zeros(MIN_SAMPLES, np.float32)]).groups[0][0]).shape[1]
        self.fc = nn.Linear(dim, out_dim)

    @property
    def window(self) -> int:
        """Window length in samples (0 = whole clips)."""
        return self.extractor.window

    def backbone_parameters(self):
        return self.body.parameters()

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = trainable
        self.body.requires_grad_(trainable)

    def train(self, mode: bool = True) -> HFAudioEncoder:
        super().train(mode)
        if not self.trainable:
            self.body.eval()
        return self

    def _pooled(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Model inputs of ``n`` windows -> ``(n, H)``."""
        hidden = self.body(**inputs).last_hidden_state  # (n, time, H), or (n, H, freq, time) for HTSAT
        if hidden.dim() == 4:
            if self.pooling == "cls":
                raise ConfigError("model.audio_enc.pooling: cls needs a model with tokens; this one (HTSAT) "
                                  "gives a feature map: use mean")
            return hidden.mean(dim=(2, 3))  # (n, H)
        return hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)  # (n, H)

    def forward(self, x: torch.Tensor | PreparedAudio, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: waveforms ``(batch, samples, 1)`` zero-padded, with ``lengths`` ``(batch,)`` (None = no
        padding), or a :class:`PreparedAudio` -> ``(batch, out_dim)``, each clip the mean of its windows."""
        if not isinstance(x, PreparedAudio):
            x = self.extractor.from_padded(x, lengths)
        device = self.fc.weight.device
        x = x.to(device)
        pooled = None
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            for inputs, idx in x.groups:
                part = self._pooled(inputs).float()  # (len(idx), H)
                if pooled is None:
                    pooled = part.new_zeros((len(x.clip_of_window), part.shape[1]))
                pooled = pooled.index_copy(0, idx.to(device), part)
        owner = x.clip_of_window.to(device)
        counts = torch.bincount(owner, minlength=x.n_clips).clamp(min=1).unsqueeze(1)  # (batch, 1)
        clips = pooled.new_zeros((x.n_clips, pooled.shape[1])).index_add(0, owner, pooled) / counts  # (batch, H)
        return self.fc(clips.to(self.fc.weight.dtype))
