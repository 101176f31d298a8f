"""Text encoders. Each declares ``input_kind``: ``"embedding"`` (precomputed SBERT vectors) or ``"text"``."""

from __future__ import annotations

import torch
import torch.nn as nn

from utils.base.config import ConfigError
from utils.text.sbert import load_sbert


def _init_linear(layer: nn.Linear) -> nn.Linear:
    nn.init.kaiming_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class SentBERTBaseEncoder(nn.Module):
    """The baseline's text encoder: frozen precomputed SBERT vectors -> trainable linear projection."""

    input_kind = "embedding"

    def __init__(self, in_dim: int = 768, out_dim: int = 300):
        super().__init__()
        self.fc = _init_linear(nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_dim)`` SBERT vectors -> ``(batch, out_dim)``."""
        return self.fc(x)


class SentenceTransformerEncoder(nn.Module):
    """Beyond the baseline: fine-tune a sentence-transformers model end to end, then project.

    Args:
        model_path: a sentence-transformers model directory (see ``utils.text.sbert.resolve_model_path``).
        out_dim: output size.
        max_seq_length: tokens kept per caption.
    """

    input_kind = "text"

    def __init__(self, model_path: str, out_dim: int = 300, max_seq_length: int = 64):
        super().__init__()
        self.sbert = load_sbert(model_path, device="cpu")
        self.sbert.max_seq_length = max_seq_length
        get_dim = getattr(self.sbert, "get_embedding_dimension", None) or self.sbert.get_sentence_embedding_dimension
        in_dim = get_dim()
        self.fc = _init_linear(nn.Linear(in_dim, out_dim))

    def backbone_parameters(self):
        return self.sbert.parameters()

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``batch`` raw captions -> ``(batch, out_dim)``."""
        device = self.fc.weight.device
        prepare = getattr(self.sbert, "preprocess", None) or self.sbert.tokenize
        features = prepare(list(texts))
        features = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in features.items()}
        pooled = self.sbert(features)["sentence_embedding"]  # (batch, in_dim)
        return self.fc(pooled)


TEXT_ENCODERS = {
    "SentBERTBaseEncoder": SentBERTBaseEncoder,
    "SentenceTransformerEncoder": SentenceTransformerEncoder,
}


def _encoder_class(name: str) -> type[nn.Module]:
    if name not in TEXT_ENCODERS:
        raise ConfigError(f"model.text_enc.name: unknown text encoder '{name}'; valid choices: {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name]


def text_input_kind(name: str) -> str:
    """``'embedding'`` (precomputed SBERT vectors, stage 3) or ``'text'`` (raw captions) for encoder ``name``."""
    return _encoder_class(name).input_kind


def build_text_encoder(name: str, **kwargs) -> nn.Module:
    return _encoder_class(name)(**kwargs)
