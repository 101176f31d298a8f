"""Text encoders. Each declares ``input_kind``: ``"embedding"`` (precomputed SBERT vectors) or ``"text"``."""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from models.hf_loading import hf_source, load_hf
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


def normalize_caption(text: str) -> str:
    """d25_t6's caption normalisation: lower case, punctuation removed, whitespace folded."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(batch, tokens, H)`` hidden states -> ``(batch, H)``: the first token (``cls``), or the mean over the
    tokens that ``mask`` ``(batch, tokens)`` marks as real (``mean``; padding never counts)."""
    if pooling == "cls":
        return hidden[:, 0]
    weight = mask.to(hidden.dtype).unsqueeze(-1)  # (batch, tokens, 1)
    return (hidden * weight).sum(1) / weight.sum(1).clamp(min=1.0)


class HFTextEncoder(nn.Module):
    """Any ``transformers`` text model (BERT, RoBERTa, GTE, ...), pooled and projected to ``out_dim``.

    Args:
        pretrained: hub id or local folder holding the model and its tokenizer (save_pretrained layout).
        pooling: ``cls`` (first token) or ``mean`` (over the caption's tokens).
        max_seq_length: tokens kept per caption.
        normalize_captions: lower case and strip punctuation first (:func:`normalize_caption`, as d25_t6).
        trainable: False freezes the transformer (kept in eval mode: no dropout); the projection always trains.
    """

    input_kind = "text"

    def __init__(self, pretrained: str, out_dim: int = 300, pooling: str = "cls", max_seq_length: int = 64,
                 normalize_captions: bool = False, trainable: bool = True):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer  # seconds to import: only when this encoder is used

        source = hf_source(pretrained)
        self.tokenizer = load_hf(AutoTokenizer.from_pretrained, source, "model.text_enc.pretrained")
        self.body = load_hf(AutoModel.from_pretrained, source, "model.text_enc.pretrained")
        self.pooling, self.max_seq_length, self.normalize = pooling, max_seq_length, normalize_captions
        self.trainable = trainable
        self.body.requires_grad_(trainable)
        self.fc = _init_linear(nn.Linear(self.body.config.hidden_size, out_dim))

    def backbone_parameters(self):
        return self.body.parameters()

    def train(self, mode: bool = True) -> HFTextEncoder:
        super().train(mode)
        if not self.trainable:
            self.body.eval()
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Captions (normalised if configured) -> padded ``input_ids`` / ``attention_mask`` ``(batch, tokens)``."""
        texts = [normalize_caption(t) if self.normalize else t for t in texts]
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                   return_tensors="pt"))

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``batch`` raw captions -> ``(batch, out_dim)``."""
        tokens = {k: v.to(self.fc.weight.device, non_blocking=True) for k, v in self.tokenize(list(texts)).items()}
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.body(**tokens).last_hidden_state  # (batch, tokens, H)
        return self.fc(pool_tokens(hidden, tokens["attention_mask"], self.pooling))


TEXT_ENCODERS = {
    "SentBERTBaseEncoder": SentBERTBaseEncoder,
    "SentenceTransformerEncoder": SentenceTransformerEncoder,
    "HFTextEncoder": HFTextEncoder,
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
