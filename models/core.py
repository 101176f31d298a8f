"""The dual encoder: audio and text branches, L2-normalised, scored by dot product."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.audio_encoders import build_audio_encoder
from models.text_encoders import build_text_encoder
from utils.base.config import Config, ConfigError
from utils.text.sbert import resolve_model_path


class DualEncoderModel(nn.Module):
    """``temperature``: when given, a learnable InfoNCE temperature starting there (``log_temperature``, part of
    the state dict); None = the fixed ``train.temperature`` (the baseline, no extra parameter)."""

    def __init__(self, audio_enc: nn.Module, text_enc: nn.Module, temperature: float | None = None):
        super().__init__()
        self.audio_enc = audio_enc
        self.text_enc = text_enc
        if temperature is not None:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def temperature(self, fixed: float) -> torch.Tensor | float:
        """The learnable temperature (a scalar tensor, at least 1e-3), else ``fixed``."""
        if hasattr(self, "log_temperature"):
            return self.log_temperature.exp().clamp(min=1e-3)
        return fixed

    @property
    def text_input_kind(self) -> str:
        return self.text_enc.input_kind

    def audio_branch(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, time, mels)`` log-mels or ``(batch, samples, 1)`` waveforms -> ``(batch, E)`` unit vectors.

        ``lengths`` ``(batch,)``: each clip's time steps in a zero-padded batch; each clip's vector is then its
        vector alone, unpadded (the audio encoder masks the padding). None: every step counts (training's
        baseline batches).
        """
        emb = self.audio_enc(audio) if lengths is None else self.audio_enc(audio, lengths)
        return F.normalize(emb.float(), p=2.0, dim=-1)

    def text_branch(self, text) -> torch.Tensor:
        """``(batch, D)`` SBERT vectors or a list of captions -> ``(batch, E)`` unit vectors."""
        return F.normalize(self.text_enc(text).float(), p=2.0, dim=-1)

    def forward(self, audio: torch.Tensor, text, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches; ``lengths`` as :meth:`audio_branch` (training passes it with train.masked_pooling,
        and always to encoders that read waveforms, ``takes_lengths``)."""
        return self.audio_branch(audio, lengths), self.text_branch(text)

    @staticmethod
    def score(audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """``(n_audio, E) x (n_text, E)`` -> ``(n_text, n_audio)`` dot-product scores."""
        return text_embeds @ audio_embeds.t()


MODELS = {"DualEncoderModel": DualEncoderModel}


def build_model(conf: Config, text_dim: int | None = None, load_prior: bool = True) -> DualEncoderModel:
    """Build the model named in ``conf.model``.

    Args:
        conf: the run's config.
        text_dim: size of the precomputed SBERT vectors (768 mpnet, 384 MiniLM); needed by
            ``SentBERTBaseEncoder``.
        load_prior: load the transferred CNN14 weights when ``model.audio_enc.init == 'prior'``
            (False when a checkpoint will overwrite them anyway).
    """
    mconf = conf.model
    if mconf.name not in MODELS:
        raise ConfigError(f"model.name: unknown model '{mconf.name}'; valid choices: {sorted(MODELS)}")
    a = mconf.audio_enc
    reads = "waveform" if a.name == "HFAudioEncoder" else "logmel"
    if conf.features.kind != reads:
        raise ConfigError(f"model.audio_enc.name {a.name} reads features.kind {reads}, but features.kind is "
                          f"'{conf.features.kind}'; set --set features.kind={reads} (and run "
                          "preprocessing/02_audio_logmel.py with it)")
    if a.name == "HFAudioEncoder":  # its pretrained weights come with it (model.audio_enc.pretrained)
        audio_enc = build_audio_encoder(a.name, pretrained=a.pretrained, out_dim=a.out_dim,
                                        sample_rate=conf.features.sample_rate, pooling=a.pooling,
                                        window_sec=a.window_sec, trainable=a.trainable)
    else:
        audio_enc = build_audio_encoder(a.name, out_dim=a.out_dim, width=a.width, n_mels=conf.features.n_mels,
                                        dropout=a.dropout)
        if a.init == "prior" and load_prior:
            audio_enc.load_pretrained(conf.pretrained.cnn14_weights)
        audio_enc.set_trainable(a.trainable)

    t = mconf.text_enc
    if t.name == "HFTextEncoder":
        text_enc = build_text_encoder(t.name, pretrained=t.pretrained, out_dim=t.out_dim, pooling=t.pooling,
                                      max_seq_length=t.max_seq_length, normalize_captions=t.normalize_captions,
                                      trainable=t.trainable)
    elif t.name == "SentenceTransformerEncoder":
        text_enc = build_text_encoder(t.name, model_path=resolve_model_path(conf.text.model), out_dim=t.out_dim,
                                      max_seq_length=t.max_seq_length)
    else:
        if text_dim is None:
            raise ValueError("text_dim (the SBERT embedding size) is required for " + t.name)
        text_enc = build_text_encoder(t.name, in_dim=text_dim, out_dim=t.out_dim)
    temperature = conf.train.temperature if conf.train.temperature_trainable else None
    return MODELS[mconf.name](audio_enc, text_enc, temperature)
